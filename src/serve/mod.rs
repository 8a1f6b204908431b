//! `dendrite serve`: an OpenAI-compatible HTTP server on one model, with interventions per
//! request in a `dendrite` extension field, so that a steered model can be driven from any
//! OpenAI client. `GET /v1/models`, `POST /v1/chat/completions` and `/v1/completions` (whole
//! answers or server-sent events), `GET /dendrite/status`. Requests queue (bounded) for the
//! one engine thread that owns the model; a client that disconnects stops its generation.

pub mod api;
pub mod engine;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};

use crate::edits::{self, NamedSae};
use crate::model::generate::{GenerateOptions, Sampling, Stops};
use crate::model::{BosMode, Model, chat::Message};
use api::{ApiError, ChatRequest, CompletionLogprobs, CompletionRequest, PromptField, Settings};
use engine::{Engine, Finished, Job, JobEvent};

/// Completion tokens when a request does not say (OpenAI's `/v1/completions` default is 16;
/// chat has none, which would run to the context's end).
const DEFAULT_MAX_TOKENS: usize = 256;
const DEFAULT_MAX_TOKENS_COMPLETIONS: usize = 16;
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 4 << 20;

pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub saes: Vec<PathBuf>,
    pub api_key: Option<String>,
    /// Requests waiting at most (beyond: 503).
    pub queue: usize,
    /// The model's id in the API (default: the file or folder name).
    pub name: Option<String>,
}

struct AppState {
    model: Arc<Model>,
    id: String,
    saes: Vec<NamedSae>,
    engine: Engine,
    api_key: Option<String>,
    created: u64,
    next_id: AtomicU64,
}

/// Loads the model and its SAEs, binds, prints the address, and serves until Ctrl+C.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let model = Arc::new(crate::model::open(&opts.model)?);
    let mut saes = Vec::new();
    for path in &opts.saes {
        let sae = crate::sae::open(path)?;
        sae.check_fits(&model.transformer, &model.info.name)?;
        let name = file_name(path);
        if saes.iter().any(|s: &NamedSae| s.name == name) {
            anyhow::bail!("two SAEs are named {name}: give them folders with different names");
        }
        saes.push(NamedSae {
            name,
            sae: Arc::new(sae),
        });
    }
    if opts.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dendrite-serve-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                anyhow::anyhow!("{addr} is in use (another server?): choose another --port")
            }
            _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
        })?;
    let local: SocketAddr = listener.local_addr()?;
    if !local.ip().is_loopback() && opts.api_key.is_none() {
        eprintln!(
            "warning: listening on {local} without --api-key: anyone who can reach this \
             machine can use the model"
        );
    }
    let state = Arc::new(AppState {
        id: opts.name.clone().unwrap_or_else(|| model_id(&opts.model)),
        engine: Engine::spawn(model.clone(), opts.queue)?,
        model,
        saes,
        api_key: opts.api_key,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        next_id: AtomicU64::new(1),
    });
    // The line a script (or a test) waits for.
    println!(
        "dendrite serve: {} at http://{local}/v1 (model id \"{}\")",
        state.model.info.name, state.id
    );
    let app = router(state);
    runtime.block_on(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/dendrite/status", get(status))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct.Q4_1`; a folder: its name.
fn model_id(path: &std::path::Path) -> String {
    let name = file_name(path);
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body())).into_response()
    }
}

fn error(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
        kind,
        param: None,
        code: None,
    }
}

async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let mut e = error(
                401,
                "invalid_request_error",
                "missing or wrong API key (Authorization: Bearer KEY)",
            );
            e.code = Some("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    error(
        404,
        "invalid_request_error",
        "no such endpoint: this server has GET /v1/models, POST /v1/chat/completions, \
         POST /v1/completions and GET /dendrite/status",
    )
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.id,
            "object": "model",
            "created": state.created,
            "owned_by": "dendrite",
        }],
    }))
    .into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "model": state.id,
        "saes": state.saes.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "engine": state.engine.stats(),
    }))
    .into_response()
}

/// The body as JSON of type `T`, or an OpenAI-style 400 saying what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// What the engine runs for a request, and how to answer.
struct Prepared {
    job: Job,
    receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    settings: Settings,
    id: String,
    /// Alternatives per token when logprobs were asked for.
    logprobs: Option<usize>,
}

impl AppState {
    fn prepare(
        &self,
        prompt: Vec<u32>,
        settings: Settings,
        extension: api::Extension,
        logprobs: Option<usize>,
        default_max: usize,
        id_prefix: &str,
    ) -> Result<Prepared, ApiError> {
        let n_ctx = self.model.transformer.dims.n_ctx;
        if prompt.is_empty() {
            return Err(ApiError::bad_request("the prompt is empty"));
        }
        if prompt.len() >= n_ctx {
            return Err(ApiError::bad_request(format!(
                "the prompt has {} tokens; this model's context is {n_ctx} tokens",
                prompt.len()
            )));
        }
        let max_tokens = match settings.max_tokens {
            Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1")),
            Some(m) if prompt.len() + m > n_ctx => {
                return Err(ApiError::bad_request(format!(
                    "this model's context is {n_ctx} tokens: the prompt has {} and max_tokens \
                     asks for {m} more",
                    prompt.len()
                ))
                .param("max_tokens"));
            }
            Some(m) => m,
            None => default_max.min(n_ctx - prompt.len()),
        };
        let (descriptions, at) = extension.descriptions()?;
        let interventions =
            edits::build(&descriptions, &self.saes, at, prompt.len(), max_tokens)
                .map_err(|e| ApiError::bad_request(format!("dendrite: {e:#}")).param("dendrite"))?;
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: Sampling {
                temperature: settings.temperature,
                top_k: settings.top_k,
                top_p: settings.top_p,
                seed: settings.seed,
            },
            stops: Stops {
                eos: self.model.info.eos_token_ids.clone(),
                strings: settings.stop.clone(),
            },
            top_logprobs: logprobs.unwrap_or(0),
        };
        let (job, receiver) = Job::new(prompt, interventions, opts);
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        Ok(Prepared {
            job,
            receiver,
            settings,
            id: format!("{id_prefix}-{n}"),
            logprobs,
        })
    }

    fn check_model(&self, requested: &str) -> Result<(), ApiError> {
        if requested == self.id {
            return Ok(());
        }
        let mut e = error(
            404,
            "invalid_request_error",
            format!(
                "the model \"{requested}\" is not served here; this server serves \"{}\"",
                self.id
            ),
        );
        e.param = Some("model");
        e.code = Some("model_not_found");
        Err(e)
    }

    /// Queues the job (refused with a 503 when the queue is full).
    fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.engine.submit(job).map_err(|busy| {
            error(
                503,
                "server_error",
                format!(
                    "the server is busy: {} requests are already waiting; retry later",
                    busy.capacity
                ),
            )
        })
    }
}

async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&body)?;
    request.check_supported()?;
    state.check_model(&request.common.model)?;
    let logprobs = request.logprobs()?;
    let messages = request
        .messages
        .iter()
        .map(|m| Ok(Message::new(m.role.clone(), m.text()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prompt = state
        .model
        .encode_chat(&messages)
        .map_err(|e| ApiError::bad_request(format!("{e}")).param("messages"))?;
    let max_completion = request.max_completion_tokens;
    let (mut settings, extension) = request.common.settings()?;
    settings.max_tokens = settings.max_tokens.or(max_completion);
    respond(state, Kind::Chat, prompt, settings, extension, logprobs).await
}

/// Which endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Queues the request's generation and answers it, whole or streamed.
async fn respond(
    state: Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    settings: Settings,
    extension: api::Extension,
    logprobs: Option<usize>,
) -> Result<Response, ApiError> {
    let (default_max, prefix) = match kind {
        Kind::Chat => (DEFAULT_MAX_TOKENS, "chatcmpl"),
        Kind::Completion => (DEFAULT_MAX_TOKENS_COMPLETIONS, "cmpl"),
    };
    let p = state.prepare(prompt, settings, extension, logprobs, default_max, prefix)?;
    let (stream, include_usage) = (p.settings.stream, p.settings.include_usage);
    let Prepared {
        job,
        receiver,
        id,
        logprobs,
        ..
    } = p;
    state.submit(job)?;
    let logprobs = logprobs.is_some();
    Ok(match (kind, stream) {
        (Kind::Chat, true) => {
            chat_stream(state, receiver, id, logprobs, include_usage).into_response()
        }
        (Kind::Completion, true) => {
            completion_stream(state, receiver, id, logprobs, include_usage).into_response()
        }
        (Kind::Chat, false) => chat_whole(&state, receiver, id, logprobs)
            .await?
            .into_response(),
        (Kind::Completion, false) => completion_whole(&state, receiver, id, logprobs)
            .await?
            .into_response(),
    })
}

/// The closing chunks of a stream: the finish reason, then (when asked) the usage, with no
/// choices, as OpenAI sends it. `chunk(finish_reason, usage)` shapes one.
fn closing_chunks(
    f: &Finished,
    include_usage: bool,
    mut chunk: impl FnMut(Value, Option<Value>) -> Value,
) -> Vec<Value> {
    let mut out = vec![chunk(json!(api::finish_reason(f.stop)), None)];
    if include_usage {
        let mut last = chunk(
            Value::Null,
            Some(api::usage(f.prompt_tokens, f.completion_tokens)),
        );
        last["choices"] = json!([]);
        out.push(last);
    }
    out
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    request.check_supported()?;
    state.check_model(&request.common.model)?;
    let prompt = match &request.prompt {
        PromptField::Ids(ids) => {
            let vocab = state.model.transformer.dims.d_vocab;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::bad_request(format!(
                    "token id {bad} is outside the vocabulary ({vocab})"
                ))
                .param("prompt"));
            }
            ids.clone()
        }
        PromptField::Text(text) => encode(&state.model, text)?,
        PromptField::Texts(texts) => match &texts[..] {
            [one] => encode(&state.model, one)?,
            _ => {
                return Err(
                    ApiError::bad_request("give one prompt (batches are not supported)")
                        .param("prompt"),
                );
            }
        },
    };
    let logprobs = request.logprobs;
    let (settings, extension) = request.common.settings()?;
    respond(
        state,
        Kind::Completion,
        prompt,
        settings,
        extension,
        logprobs,
    )
    .await
}

/// A completion prompt's ids: the BOS as HF's tokenizer adds it.
fn encode(model: &Model, text: &str) -> Result<Vec<u32>, ApiError> {
    model
        .encode_prompt(text, BosMode::Auto)
        .map_err(|e| ApiError::bad_request(format!("{e}")).param("prompt"))
}

/// Waits for a job's events up to its end; the receiver's drop (the client went away while
/// waiting) stops the job.
async fn collect(
    receiver: &mut tokio::sync::mpsc::Receiver<JobEvent>,
    mut on_token: impl FnMut(engine::TokenOut),
) -> Result<Finished, ApiError> {
    while let Some(event) = receiver.recv().await {
        match event {
            JobEvent::Token(t) => on_token(t),
            JobEvent::Done(f) => return Ok(f),
            JobEvent::Failed(message) => return Err(generation_error(message)),
        }
    }
    Err(error(
        500,
        "server_error",
        "the generation stopped unexpectedly",
    ))
}

/// Engine failures are the request's fault (bad edits for this model, …) unless internal.
fn generation_error(message: String) -> ApiError {
    if message.starts_with("internal error") {
        error(500, "server_error", message)
    } else {
        ApiError::bad_request(message)
    }
}

async fn chat_whole(
    state: &AppState,
    mut receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    id: String,
    logprobs: bool,
) -> Result<axum::Json<Value>, ApiError> {
    let mut content = Vec::new();
    let finished = collect(&mut receiver, |t| {
        if logprobs && t.visible {
            content.push(api::chat_logprob(&t.token, &t.text, &t.top_texts));
        }
    })
    .await?;
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": state.id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": finished.text},
            "logprobs": if logprobs { json!({"content": content}) } else { Value::Null },
            "finish_reason": api::finish_reason(finished.stop),
        }],
        "usage": api::usage(finished.prompt_tokens, finished.completion_tokens),
        "dendrite": timing(&finished),
    })))
}

async fn completion_whole(
    state: &AppState,
    mut receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    id: String,
    logprobs: bool,
) -> Result<axum::Json<Value>, ApiError> {
    let mut lp = CompletionLogprobs::default();
    let mut offset = 0;
    let finished = collect(&mut receiver, |t| {
        if logprobs && t.visible {
            lp.push(&t.token, &t.text, &t.top_texts, offset);
            offset += t.text.len();
        }
    })
    .await?;
    Ok(axum::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": state.id,
        "choices": [{
            "index": 0,
            "text": finished.text,
            "logprobs": if logprobs { json!(lp) } else { Value::Null },
            "finish_reason": api::finish_reason(finished.stop),
        }],
        "usage": api::usage(finished.prompt_tokens, finished.completion_tokens),
        "dendrite": timing(&finished),
    })))
}

fn timing(f: &Finished) -> Value {
    json!({"prefill_ms": f.prefill_ms, "decode_ms": f.decode_ms})
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sse_data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

type SseStream =
    Sse<std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send>>>;

/// Server-sent events from a job: `make` turns each job event into the chunks to send
/// (`None`: the stream ends after them); `[DONE]` comes last. When the client goes away, the
/// stream (and with it the receiver) is dropped, which stops the job.
fn sse(
    receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    first: Vec<Value>,
    make: impl FnMut(JobEvent) -> (Vec<Value>, bool) + Send + 'static,
) -> SseStream {
    let opening = stream::iter(first.iter().map(sse_data).map(Ok).collect::<Vec<_>>());
    let events = stream::unfold(Some((receiver, make)), |state| async move {
        let (mut receiver, mut make) = state?;
        let (chunks, more) = match receiver.recv().await {
            Some(event) => make(event),
            None => (
                vec![generation_error("the generation stopped unexpectedly".into()).body()],
                false,
            ),
        };
        let mut out: Vec<Result<SseEvent, std::convert::Infallible>> =
            chunks.iter().map(|c| Ok(sse_data(c))).collect();
        if !more {
            out.push(Ok(SseEvent::default().data("[DONE]")));
        }
        Some((stream::iter(out), more.then_some((receiver, make))))
    });
    use futures_util::StreamExt as _;
    let all = opening.chain(events.flatten());
    Sse::new(Box::pin(all) as std::pin::Pin<Box<dyn Stream<Item = _> + Send>>)
}

fn chat_stream(
    state: Arc<AppState>,
    receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    id: String,
    logprobs: bool,
    include_usage: bool,
) -> SseStream {
    let created = now();
    let chunk = move |delta: Value, lp: Value, finish: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.id,
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        c
    };
    let first = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
        None,
    )];
    let make = move |event: JobEvent| match event {
        JobEvent::Token(t) => {
            let lp = if logprobs && t.visible {
                json!({"content": [api::chat_logprob(&t.token, &t.text, &t.top_texts)]})
            } else {
                Value::Null
            };
            if t.delta.is_empty() && lp.is_null() {
                return (vec![], true);
            }
            (
                vec![chunk(json!({"content": t.delta}), lp, Value::Null, None)],
                true,
            )
        }
        JobEvent::Done(f) => (
            closing_chunks(&f, include_usage, |finish, usage| {
                chunk(json!({}), Value::Null, finish, usage)
            }),
            false,
        ),
        JobEvent::Failed(message) => (vec![generation_error(message).body()], false),
    };
    sse(receiver, first, make)
}

fn completion_stream(
    state: Arc<AppState>,
    receiver: tokio::sync::mpsc::Receiver<JobEvent>,
    id: String,
    logprobs: bool,
    include_usage: bool,
) -> SseStream {
    let created = now();
    let mut offset = 0;
    let chunk = move |text: &str, lp: Value, finish: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": state.id,
            "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        c
    };
    let make = move |event: JobEvent| match event {
        JobEvent::Token(t) => {
            let lp = if logprobs && t.visible {
                let mut one = CompletionLogprobs::default();
                one.push(&t.token, &t.text, &t.top_texts, offset);
                offset += t.text.len();
                json!(one)
            } else {
                Value::Null
            };
            if t.delta.is_empty() && lp.is_null() {
                return (vec![], true);
            }
            (vec![chunk(&t.delta, lp, Value::Null, None)], true)
        }
        JobEvent::Done(f) => (
            closing_chunks(&f, include_usage, |finish, usage| {
                chunk("", Value::Null, finish, usage)
            }),
            false,
        ),
        JobEvent::Failed(message) => (vec![generation_error(message).body()], false),
    };
    sse(receiver, vec![], make)
}
