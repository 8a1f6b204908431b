//! The OpenAI wire format: request bodies (with the `dendrite` extension field), response
//! bodies and chunks, and OpenAI-style error bodies. Plain serde types and pure functions; the
//! handlers in `mod.rs` move them between HTTP and the engine.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::edits::{At, EditDescription, EditFlag};
use crate::model::generate::{GeneratedToken, StopReason};

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}` with an HTTP
/// status.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// `"stop"`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    fn strings(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One intervention of the extension: exactly one of the command line's edit flags, with the
/// flag's value; `sae` names the SAE a latent edit means when the server has several.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionEdit {
    pub clamp: Option<String>,
    pub ablate_head: Option<String>,
    pub steer_latent: Option<String>,
    pub clamp_latent: Option<String>,
    pub sae: Option<String>,
}

/// `"dendrite": {"interventions": [...], "at": "all" | "generated"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    #[serde(default)]
    pub interventions: Vec<ExtensionEdit>,
    pub at: Option<String>,
}

impl Extension {
    /// The edits as descriptions and where they apply.
    pub fn descriptions(&self) -> Result<(Vec<EditDescription>, At), ApiError> {
        let mut out = Vec::new();
        for (i, e) in self.interventions.iter().enumerate() {
            let given: Vec<(EditFlag, &String)> = [
                (EditFlag::Clamp, &e.clamp),
                (EditFlag::AblateHead, &e.ablate_head),
                (EditFlag::SteerLatent, &e.steer_latent),
                (EditFlag::ClampLatent, &e.clamp_latent),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
            .collect();
            let [(kind, value)] = given[..] else {
                return Err(ApiError::bad_request(format!(
                    "dendrite.interventions[{i}]: give exactly one of clamp, ablate_head, \
                     steer_latent, clamp_latent (found {})",
                    given.len()
                ))
                .param("dendrite"));
            };
            if e.sae.is_some() && !matches!(kind, EditFlag::SteerLatent | EditFlag::ClampLatent) {
                return Err(ApiError::bad_request(format!(
                    "dendrite.interventions[{i}]: \"sae\" goes with steer_latent or clamp_latent"
                ))
                .param("dendrite"));
            }
            out.push(EditDescription {
                kind,
                value: value.clone(),
                sae: e.sae.clone(),
            });
        }
        let at = match &self.at {
            None => At::All,
            Some(s) => s.parse().map_err(|e| {
                ApiError::bad_request(format!("dendrite.at: {e:#}")).param("dendrite")
            })?,
        };
        Ok((out, at))
    }
}

/// What both endpoints take.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not OpenAI's, but vLLM's and llama.cpp's.
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub n: Option<usize>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub dendrite: Option<Value>,
}

/// Settings checked and ready for the engine.
#[derive(Debug, PartialEq)]
pub struct Settings {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// At most this many stop strings (as OpenAI).
const MAX_STOPS: usize = 4;
/// At most this many alternatives per token (as OpenAI's chat endpoint).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Common {
    /// Checks what we support; the extension parsed strictly (an unknown field is a 400).
    pub fn settings(self) -> Result<(Settings, Extension), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("only n = 1 is supported").param("n"));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::bad_request(format!(
                    "{name} is not supported (give 0)"
                )));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::bad_request("logit_bias is not supported").param("logit_bias"));
        }
        // OpenAI's default temperature is 1; the seed makes sampling reproducible.
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::bad_request(format!(
                "temperature {temperature} is not in [0, 2]"
            ))
            .param("temperature"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::bad_request(format!("top_p {p} is not in (0, 1]")).param("top_p"));
        }
        let stop = self.stop.map(StopField::strings).unwrap_or_default();
        if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad_request(format!(
                "stop takes at most {MAX_STOPS} non-empty strings"
            ))
            .param("stop"));
        }
        let extension = match self.dendrite {
            None | Some(Value::Null) => Extension::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| ApiError::bad_request(format!("dendrite: {e}")).param("dendrite"))?,
        };
        Ok((
            Settings {
                max_tokens: self.max_tokens,
                temperature,
                top_p: self.top_p.filter(|p| *p < 1.0),
                top_k: self.top_k.filter(|k| *k > 0),
                seed: self.seed.unwrap_or(0),
                stop,
                stream: self.stream,
                include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            },
            extension,
        ))
    }
}

/// A chat message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

impl ChatMessage {
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::bad_request(format!(
                        "message content of type \"{kind}\" is not supported (text only)"
                    ))
                    .param("messages")),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

impl ChatRequest {
    /// How many alternatives per token (`None`: no logprobs).
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs, self.top_logprobs) {
            (false, Some(n)) if n > 0 => {
                Err(ApiError::bad_request("top_logprobs needs logprobs: true")
                    .param("top_logprobs"))
            }
            (_, Some(n)) if n > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(format!(
                "top_logprobs {n} is more than {MAX_TOP_LOGPROBS}"
            ))
            .param("top_logprobs")),
            (true, n) => Ok(Some(n.unwrap_or(0))),
            (false, _) => Ok(None),
        }
    }

    pub fn check_supported(&self) -> Result<(), ApiError> {
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::bad_request("tools are not supported").param("tools"));
        }
        if let Some(f) = &self.response_format
            && f.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(
                ApiError::bad_request("only response_format {\"type\": \"text\"}")
                    .param("response_format"),
            );
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages is empty").param("messages"));
        }
        Ok(())
    }
}

/// A completion prompt: text, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// How many alternatives per token (OpenAI: 0–5; here up to 20).
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<usize>,
    #[serde(flatten)]
    pub common: Common,
}

impl CompletionRequest {
    pub fn check_supported(&self) -> Result<(), ApiError> {
        if self.echo {
            return Err(ApiError::bad_request("echo is not supported").param("echo"));
        }
        if self.suffix.is_some() {
            return Err(ApiError::bad_request("suffix is not supported").param("suffix"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::bad_request("only best_of = 1 is supported").param("best_of"));
        }
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(ApiError::bad_request(format!(
                "logprobs {n} is more than {MAX_TOP_LOGPROBS}"
            ))
            .param("logprobs"));
        }
        Ok(())
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::Length | StopReason::Cancelled => "length",
    }
}

/// One token of a chat completion's `logprobs.content`.
pub fn chat_logprob(token: &GeneratedToken, text: &str, top_texts: &[String]) -> Value {
    let entry = |text: &str, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    let mut item = entry(text, token.logprob);
    item["top_logprobs"] = token
        .top
        .iter()
        .zip(top_texts)
        .map(|(&(_, lp), t)| entry(t, lp))
        .collect();
    item
}

/// A completion's `logprobs` (the legacy layout) over its tokens.
#[derive(Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Adds a token at byte `offset` of the completion.
    pub fn push(
        &mut self,
        token: &GeneratedToken,
        text: &str,
        top_texts: &[String],
        offset: usize,
    ) {
        self.tokens.push(text.to_string());
        self.token_logprobs.push(token.logprob);
        self.top_logprobs.push(
            token
                .top
                .iter()
                .zip(top_texts)
                .map(|(&(_, lp), t)| (t.clone(), json!(lp)))
                .collect(),
        );
        self.text_offset.push(offset);
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(extra: Value) -> Common {
        let mut v = json!({"model": "m"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_extension_takes_the_command_lines_descriptions_and_refuses_unknown_fields() {
        let (s, ext) = common(json!({
            "temperature": 0,
            "stop": "\n",
            "dendrite": {"interventions": [
                {"clamp": "blocks.1.mlp.hook_post:3=4"},
                {"steer_latent": "12:8", "sae": "x"}
            ], "at": "generated"}
        }))
        .settings()
        .unwrap();
        assert_eq!(s.temperature, 0.0);
        assert_eq!(s.stop, vec!["\n".to_string()]);
        let (edits, at) = ext.descriptions().unwrap();
        assert_eq!(at, At::Generated);
        assert_eq!(edits[0].kind, EditFlag::Clamp);
        assert_eq!(edits[1].sae.as_deref(), Some("x"));

        let err = common(json!({"dendrite": {"interventions": [{"clamp": "a:1=2", "bogus": 1}]}}))
            .settings()
            .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("bogus"), "{}", err.message);
        assert_eq!(err.body()["error"]["param"], "dendrite");
        let err = common(json!({"dendrite": {"steering": []}}))
            .settings()
            .unwrap_err();
        assert!(err.message.contains("steering"), "{}", err.message);
        let (_, ext) = common(
            json!({"dendrite": {"interventions": [{"clamp": "a:1=2", "ablate_head": "1.2"}]}}),
        )
        .settings()
        .unwrap();
        assert!(
            ext.descriptions()
                .unwrap_err()
                .message
                .contains("exactly one")
        );
        let (_, ext) = common(json!({"dendrite": {"at": "later"}}))
            .settings()
            .unwrap();
        assert!(ext.descriptions().is_err());
    }

    #[test]
    fn unsupported_settings_are_refused_not_ignored() {
        for extra in [
            json!({"n": 2}),
            json!({"frequency_penalty": 0.5}),
            json!({"logit_bias": {"12": 5}}),
            json!({"temperature": 3.0}),
            json!({"top_p": 0.0}),
            json!({"stop": ["a", "b", "c", "d", "e"]}),
        ] {
            let err = common(extra.clone()).settings().unwrap_err();
            assert_eq!(err.status, 400, "{extra}");
        }
        let (s, _) = common(json!({})).settings().unwrap();
        assert_eq!(s.temperature, 1.0, "OpenAI's default");
        assert_eq!(s.top_p, None);
    }

    #[test]
    fn chat_logprobs_need_logprobs_true_and_at_most_twenty() {
        let chat = |extra: Value| -> ChatRequest {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(chat(json!({})).logprobs().unwrap(), None);
        assert_eq!(
            chat(json!({"logprobs": true, "top_logprobs": 3}))
                .logprobs()
                .unwrap(),
            Some(3)
        );
        assert!(chat(json!({"top_logprobs": 3})).logprobs().is_err());
        assert!(
            chat(json!({"logprobs": true, "top_logprobs": 21}))
                .logprobs()
                .is_err()
        );
        let parts: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        }))
        .unwrap();
        assert_eq!(parts.messages[0].text().unwrap(), "ab");
    }

    #[test]
    fn finish_reasons_are_openais() {
        assert_eq!(finish_reason(StopReason::Eos), "stop");
        assert_eq!(finish_reason(StopReason::StopString), "stop");
        assert_eq!(finish_reason(StopReason::MaxTokens), "length");
    }
}
