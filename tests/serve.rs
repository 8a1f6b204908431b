//! `dendrite serve` answers the real `openai` Python client (installed by scripts/test.sh into
//! .cache/pylib): models, chat whole and streamed, logprobs, completions, steering through the
//! `dendrite` extension field, OpenAI-style errors, an API key, and a client that disconnects
//! stopping its generation. Greedy answers are the tokens the library's `generate` makes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, real_model};
use dendrite::model::generate::{GenerateOptions, Stops, generate};
use dendrite::model::{BosMode, HookSpec, chat::Message};
use serde_json::Value;

const KEY: &str = "test-key";

fn serve(model: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--api-key", KEY];
    args.extend_from_slice(extra);
    common::serve(model, &args)
}

/// The installed `openai` package (scripts/test.sh puts it in .cache/pylib).
fn pylib() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/pylib");
    assert!(
        dir.join("openai").exists(),
        "the openai Python package is missing from {}: run scripts/test.sh (it installs it), or \
         python3 -m pip install --target .cache/pylib openai==3.57.0",
        dir.display()
    );
    dir
}

fn client(server: &Server, mode: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&server.base, KEY, mode])
        .env("PYTHONPATH", pylib())
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .expect("python3 runs (needed for the openai client)");
    assert!(
        out.status.success(),
        "the openai client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The library's greedy continuation (EOS left out of the text, as the server does).
fn greedy(
    model: &dendrite::model::Model,
    prompt: &[u32],
    max_new: usize,
    spec: &HookSpec,
) -> String {
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        stops: Stops {
            eos: model.info.eos_token_ids.clone(),
            strings: vec![],
        },
        ..GenerateOptions::default()
    };
    let decode = |ids: &[u32]| model.tokenizer.decode(ids);
    let g = generate(
        &model.transformer,
        prompt,
        spec,
        &opts,
        &decode,
        &mut |_| true,
    )
    .unwrap();
    let mut ids = g.generated_ids();
    if ids.last().is_some_and(|id| opts.stops.eos.contains(id)) {
        ids.pop();
    }
    decode(&ids)
}

#[test]
fn the_openai_client_chats_streams_gets_logprobs_and_steers_smollm2() {
    let path = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let server = serve(&path, &[]);
    let out = client(&server, "chat");
    assert_eq!(out["model"], "SmolLM2-135M-Instruct.Q4_1");

    let model = dendrite::model::open(&path).unwrap();
    let messages = [Message::new("user", "What is the capital of France?")];
    let chat_ids = model.encode_chat(&messages).unwrap();
    let expected = greedy(&model, &chat_ids, 24, &HookSpec::default());
    let chat = &out["chat"];
    assert_eq!(chat["content"], expected.as_str(), "greedy chat = generate");
    assert!(expected.contains("Paris"), "{expected}");
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["finish_reason"], "stop", "ended at <|im_end|>");
    assert_eq!(chat["usage"]["prompt_tokens"], chat_ids.len());

    // Streamed: the same text, in more than one piece, and the same usage.
    let stream = &out["chat_stream"];
    let pieces: Vec<&str> = stream["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), expected);
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["usage"], chat["usage"]);

    // Logprobs: greedy picks the most likely token; three alternatives each.
    let lp = out["chat_logprobs"].as_array().unwrap();
    assert!(!lp.is_empty() && lp.len() <= 8);
    let joined: String = lp.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(
        joined,
        out["chat_logprobs_content"].as_str().unwrap(),
        "one entry per token shown"
    );
    for t in lp {
        let top = t["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0][0], t["token"]);
        assert!((top[0][1].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Steered through the extension: the library's continuation under the same clamp.
    let clamp = dendrite::edits::parse_clamp("blocks.3.mlp.hook_post:12=40").unwrap();
    let steered = greedy(
        &model,
        &chat_ids,
        24,
        &HookSpec::default().with_intervention(clamp),
    );
    assert_eq!(out["steered"], steered.as_str());
    assert_ne!(steered, expected, "the clamp changes the answer");

    // A completion from text (the BOS as HF adds it: none for SmolLM2), whole and streamed.
    let ids = model
        .encode_prompt("The capital of France is", BosMode::Auto)
        .unwrap();
    let completion = &out["completion"];
    assert_eq!(
        completion["text"],
        greedy(&model, &ids, 8, &HookSpec::default()).as_str()
    );
    assert_eq!(completion["tokens"].as_array().unwrap().len(), 8);
    assert_eq!(completion["finish_reason"], "length");
    assert_eq!(out["completion_stream"], completion["text"]);

    // Errors come back as OpenAI's, with the status the client maps to its exceptions.
    let errors = &out["errors"];
    let check = |name: &str, status: u64, class: &str, says: &str| {
        let e = &errors[name];
        assert_eq!(e["status"], status, "{name}: {e}");
        assert_eq!(e["class"], class, "{name}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{name}: {e}");
    };
    check("unknown_extension_field", 400, "BadRequestError", "clampp");
    check("bad_clamp", 400, "BadRequestError", "99999");
    check("wrong_model", 404, "NotFoundError", "gpt-9");
    check("too_many_tokens", 400, "BadRequestError", "context");
    check("n_2", 400, "BadRequestError", "n = 1");
    check("wrong_key", 401, "AuthenticationError", "API key");

    // The disconnected stream was stopped, not run to its 2000 tokens.
    let d = &out["disconnect"];
    let engine = &d["engine"];
    assert!(
        engine["cancelled"].as_u64().unwrap() > d["cancelled_before"].as_u64().unwrap(),
        "{d}"
    );
    assert_eq!(engine["running"], 0, "{d}");
    assert!(engine["tokens_generated"].as_u64().unwrap() < 1000, "{d}");
}

#[test]
fn latents_of_a_served_sae_are_steered_and_clamped_per_request() {
    let model_path = dendrite::sample::path().expect("the sample model");
    let sae_path = dendrite::sample::sae_path().expect("the sample SAE");
    let server = serve(&model_path, &["--sae", sae_path.to_str().unwrap()]);
    let out = client(&server, "sae");
    let runs = &out["sae"];
    assert_ne!(runs["steered"], runs["baseline"], "{runs}");
    assert_ne!(runs["clamped"], runs["baseline"], "{runs}");

    // The clamp is the library's latent clamp.
    let model = dendrite::model::open(&model_path).unwrap();
    let sae = std::sync::Arc::new(dendrite::sae::open(&sae_path).unwrap());
    let ids = model
        .encode_prompt("To be, or not to be", BosMode::Auto)
        .unwrap();
    let name = sae_path.file_name().unwrap().to_string_lossy().into_owned();
    let interventions = dendrite::edits::build(
        &[dendrite::edits::EditDescription {
            kind: dendrite::edits::EditFlag::ClampLatent,
            value: "5=30".into(),
            sae: None,
        }],
        &[dendrite::edits::NamedSae { name, sae }],
        dendrite::edits::At::All,
        ids.len(),
        12,
    )
    .unwrap();
    let spec = HookSpec {
        interventions,
        ..HookSpec::default()
    };
    assert_eq!(runs["clamped"], greedy(&model, &ids, 12, &spec).as_str());
    let missing = &out["sae_missing"];
    assert_eq!(missing["status"], 400, "{missing}");
    assert!(
        missing["message"].as_str().unwrap().contains("nope"),
        "{missing}"
    );
}

/// The queue is bounded: with one job running and one waiting, a third is refused at once;
/// dropping a request's receiver (its client went away) stops its job and the next one runs.
#[test]
fn a_full_queue_refuses_and_a_dropped_request_stops_its_job() {
    use dendrite::serve::engine::{Engine, Job, JobEvent};
    let model = std::sync::Arc::new(
        dendrite::model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap(),
    );
    let ids = model
        .encode_prompt("Once upon a time", BosMode::Auto)
        .unwrap();
    let engine = Engine::spawn(model.clone(), 1).unwrap();
    let job = |max| {
        Job::new(
            ids.clone(),
            vec![],
            GenerateOptions {
                max_new_tokens: max,
                ..GenerateOptions::default()
            },
        )
    };
    // Never read: the engine runs it until its events back up, then waits on it.
    let (a, a_events) = job(500);
    engine.submit(a).unwrap();
    let started = std::time::Instant::now();
    while engine.stats().running == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (b, mut b_events) = job(3);
    engine.submit(b).unwrap();
    let (c, _c_events) = job(3);
    assert!(engine.submit(c).is_err(), "the queue holds one");
    assert_eq!(engine.stats().queued, 1);
    drop(a_events);
    let mut tokens = 0;
    loop {
        match b_events.blocking_recv() {
            Some(JobEvent::Token(_)) => tokens += 1,
            Some(JobEvent::Done(f)) => {
                assert_eq!(f.completion_tokens, 3);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(tokens, 3);
    // The engine counts a job after its last event.
    let started = std::time::Instant::now();
    while engine.stats().completed == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = engine.stats();
    assert_eq!((stats.cancelled, stats.completed), (1, 1));
    assert!(stats.tokens_generated < 500);
}
