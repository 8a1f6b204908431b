//! An OpenAI-compatible chat client for explainers and scorers: any endpoint (OpenAI, Ollama,
//! llama.cpp's server, vLLM, `dendrite serve`), with a timeout per request, retries with
//! exponential backoff on what may pass (connection failures, 429, 5xx; never other 4xx), a
//! budget of requests per run, and bounded concurrency ([`map_concurrent`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::prompts::Msg;

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The API's base, e.g. `http://127.0.0.1:8080/v1` (`/chat/completions` is appended).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Further attempts after a failure that may pass.
    pub retries: u32,
    /// Requests (attempts) this run may make at most.
    pub max_requests: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatOptions {
    pub max_tokens: usize,
    pub temperature: f32,
    /// Ask for log-probabilities with this many alternatives per token.
    pub top_logprobs: Option<usize>,
}

/// A token of the answer with its log-probability and the alternatives'.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub text: String,
    /// When the endpoint returned them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub attempts: u32,
    pub duration_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the run's budget of {0} requests is spent")]
    Budget(usize),
    #[error("{url} answered HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} did not answer with a chat completion: {message}")]
    Malformed { url: String, message: String },
}

impl ClientError {
    /// Worth another attempt.
    fn may_pass(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub struct ChatClient {
    endpoint: Endpoint,
    agent: ureq::Agent,
    requests: AtomicUsize,
    /// Backoff before the first retry (doubling after each).
    first_backoff: Duration,
}

impl ChatClient {
    pub fn new(endpoint: Endpoint) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(endpoint.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        ChatClient {
            endpoint,
            agent,
            requests: AtomicUsize::new(0),
            first_backoff: Duration::from_millis(500),
        }
    }

    /// Shorter backoffs (tests).
    pub fn with_first_backoff(mut self, backoff: Duration) -> Self {
        self.first_backoff = backoff;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Requests made so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.endpoint.base_url.trim_end_matches('/')
        )
    }

    /// One chat completion, retried as [`Endpoint::retries`] allows.
    pub fn chat(&self, messages: &[Msg], opts: &ChatOptions) -> Result<Reply, ClientError> {
        let started = Instant::now();
        let mut body = json!({
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
        });
        if let Some(n) = opts.top_logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(n);
        }
        let body = body.to_string();
        let mut backoff = self.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.attempt(&body);
            match result {
                Ok((text, logprobs)) => {
                    return Ok(Reply {
                        text,
                        logprobs,
                        attempts: attempt,
                        duration_ms: started.elapsed().as_secs_f64() * 1e3,
                    });
                }
                Err(e) if e.may_pass() && attempt <= self.endpoint.retries => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn attempt(&self, body: &str) -> Result<(String, Option<Vec<TokenLogprob>>), ClientError> {
        let max = self.endpoint.max_requests;
        if self.requests.fetch_add(1, Ordering::SeqCst) >= max {
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Err(ClientError::Budget(max));
        }
        let url = self.url();
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.endpoint.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let transport = |e: ureq::Error| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        };
        let response = request.send(body).map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().map_err(transport)?;
        if !(200..300).contains(&status) {
            // OpenAI-style bodies carry a message; anything else is shown as it came.
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(ClientError::Http {
                url,
                status,
                message,
            });
        }
        parse_reply(&text).map_err(|message| ClientError::Malformed { url, message })
    }
}

/// The answer's text and logprobs from a chat completion body.
fn parse_reply(body: &str) -> Result<(String, Option<Vec<TokenLogprob>>), String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| "no choices[0].message.content".to_string())?
        .to_string();
    let logprobs = choice["logprobs"]["content"].as_array().map(|items| {
        items
            .iter()
            .map(|t| TokenLogprob {
                token: t["token"].as_str().unwrap_or_default().to_string(),
                logprob: t["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                top: t["top_logprobs"]
                    .as_array()
                    .map(|top| {
                        top.iter()
                            .map(|a| {
                                (
                                    a["token"].as_str().unwrap_or_default().to_string(),
                                    a["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    });
    Ok((text, logprobs))
}

/// `f` over `items` on at most `workers` threads, results in the items' order. `f` sees each
/// item's index.
pub fn map_concurrent<T: Send, R: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(usize, T) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let (tx, rx) = crossbeam_channel::unbounded();
    for item in items.into_iter().enumerate() {
        let _ = tx.send(item);
    }
    drop(tx);
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            let (rx, out_tx, f) = (rx.clone(), out_tx.clone(), &f);
            scope.spawn(move || {
                for (i, item) in rx {
                    let _ = out_tx.send((i, f(i, item)));
                }
            });
        }
    });
    drop(out_tx);
    let mut results: Vec<(usize, R)> = out_rx.into_iter().collect();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_text_and_logprobs() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"[1, 0]"},
            "logprobs":{"content":[{"token":"[","logprob":-0.1,"top_logprobs":[{"token":"[","logprob":-0.1}]}]}}]}"#;
        let (text, lp) = parse_reply(body).unwrap();
        assert_eq!(text, "[1, 0]");
        let lp = lp.unwrap();
        assert_eq!(lp[0].token, "[");
        assert_eq!(lp[0].top, vec![("[".to_string(), -0.1)]);
        assert!(parse_reply("{}").is_err());
        assert!(parse_reply("<html>").is_err());
    }

    #[test]
    fn concurrent_maps_keep_the_order() {
        let out = map_concurrent((0..20).collect(), 3, |i, x: i32| {
            std::thread::sleep(Duration::from_millis((20 - i as u64) % 4));
            x * 2
        });
        assert_eq!(out, (0..20).map(|x| x * 2).collect::<Vec<_>>());
        assert!(map_concurrent(Vec::<i32>::new(), 4, |_, x| x).is_empty());
    }

    #[test]
    fn an_endpoint_that_is_down_is_retried_then_reported_and_the_budget_holds() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = ChatClient::new(Endpoint {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(5),
            retries: 2,
            max_requests: 4,
        })
        .with_first_backoff(Duration::from_millis(1));
        let opts = ChatOptions {
            max_tokens: 4,
            temperature: 0.0,
            top_logprobs: None,
        };
        let err = client.chat(&[Msg::new("user", "hi")], &opts).unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
        assert!(err.to_string().contains("cannot reach"), "{err}");
        assert_eq!(client.requests(), 3, "one attempt and two retries");
        // One request is left in the budget of 4; the second of this call is refused.
        let err = client.chat(&[Msg::new("user", "hi")], &opts).unwrap_err();
        assert!(matches!(err, ClientError::Budget(4)), "{err}");
        assert_eq!(client.requests(), 4);
    }
}
