//! `dendrite explain` end to end: SmolLM2-135M-Instruct behind `dendrite serve` explains ten
//! latents of the sample SAE from the sample store and scores the explanations by detection
//! and fuzzing, two of them also by simulation; the explanations, their scores and every
//! request land in the store, where the inspector's report finds them. An endpoint that is down is reported, never scored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{real_model, serve};
use dendrite::describe::store::Store;

/// A writable copy of the sample store.
fn sample_store(dir: &Path) -> PathBuf {
    let store = dendrite::sample::store_path().expect("the sample store");
    let copy = dir.join("store.sqlite");
    std::fs::copy(&store, &copy).unwrap();
    copy
}

fn sae_source() -> String {
    let sae = dendrite::sample::sae_path().expect("the sample SAE");
    format!("sae:{}", dendrite::describe::scan::sae_folder_name(&sae))
}

fn explain(store: &Path, endpoint: &str, model: &str, extra: &[&str]) -> std::process::Output {
    let subject = dendrite::sample::path().expect("the sample model");
    Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .arg("explain")
        .arg(store)
        .args([
            "--source",
            &sae_source(),
            "--endpoint",
            endpoint,
            "--model",
            model,
        ])
        .arg("--subject-model")
        .arg(subject)
        .arg("--subject-sae")
        .arg(dendrite::sample::sae_path().expect("the sample SAE"))
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("running dendrite explain")
}

#[test]
fn ten_sae_latents_are_explained_and_scored_against_dendrite_serve() {
    let server = serve(&real_model("SmolLM2-135M-Instruct.Q4_1.gguf"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let store_path = sample_store(dir.path());
    let out = explain(
        &store_path,
        &server.base,
        "SmolLM2-135M-Instruct.Q4_1",
        &[
            "--units",
            "0-9",
            "--prompt",
            "openai",
            "--batch",
            "1",
            "--test-examples",
            "2",
            "--explain-examples",
            "4",
            "--window-tokens",
            "16",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "explain failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("requests (budget"),
        "the estimate: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let units = summary["units"].as_array().unwrap();
    assert_eq!(units.len(), 10);

    let store = Store::open_existing(&store_path).unwrap();
    let source = sae_source();
    let mut explained = 0;
    let mut requests = 0;
    let mut scores_stored = 0;
    for u in units {
        let unit = u["unit"].as_u64().unwrap() as usize;
        requests += store.interp_requests(&source, unit).unwrap();
        let Some(text) = u["explanation"].as_str() else {
            // No explanation: the reason is recorded (never a made-up one).
            assert!(!u["problems"].as_array().unwrap().is_empty(), "{u}");
            continue;
        };
        explained += 1;
        // The inspector's report shows it, with the explainer and prompt kind.
        let report = store.unit_report(&source, unit, Some(1)).unwrap();
        let e = report
            .explanations
            .iter()
            .find(|e| e.origin == "auto-interp")
            .unwrap_or_else(|| panic!("unit {unit}: {:?}", report.explanations));
        assert_eq!(e.description, text);
        assert_eq!(
            e.explainer_model.as_deref(),
            Some("SmolLM2-135M-Instruct.Q4_1")
        );
        assert_eq!(e.type_name.as_deref(), Some("openai"));
        // Its scores beside it: one per scorer with any parsed answer, a balanced accuracy
        // in [0, 1] over those answers; a scorer none of whose answers parsed has no score and
        // says so (SmolLM2-135M rarely answers in the list format: no score is made up).
        let stored = store.explanation_scores(&source, unit).unwrap();
        let results = u["scores"].as_array().unwrap();
        assert_eq!(results.len(), 2, "detection and fuzzing ran: {u}");
        let scored: Vec<&serde_json::Value> = results
            .iter()
            .filter(|r| !r["scores"]["balanced_accuracy"].is_null())
            .collect();
        assert_eq!(stored.len(), scored.len(), "{u}");
        for r in &results[..] {
            let s = &r["scores"];
            let parsed = s["n"].as_u64().unwrap();
            assert_eq!(
                parsed > 0,
                !s["balanced_accuracy"].is_null(),
                "a score exactly when answers parsed: {s}"
            );
            if s["unparsed"].as_u64().unwrap() > 0 {
                let problems = u["problems"].to_string();
                assert!(problems.contains("not a list"), "{u}");
            }
        }
        for (_, scorer, accuracy, all) in &stored {
            assert!(["detection", "fuzzing"].contains(&scorer.as_str()));
            assert!((0.0..=1.0).contains(accuracy), "{all}");
        }
        scores_stored += stored.len();
    }
    println!("{scores_stored} scores stored for {explained} explanations");
    assert_eq!(explained, 10, "every latent got an explanation: {summary}");
    assert_eq!(requests, summary["requests"].as_u64().unwrap() as usize);

    // OpenAI's simulation score on two of them: one request per sequence (two held-out
    // activating examples, two random windows), levels read from the answer's logprobs.
    let out = explain(
        &store_path,
        &server.base,
        "SmolLM2-135M-Instruct.Q4_1",
        &[
            "--units",
            "0-1",
            "--prompt",
            "openai",
            "--scorer",
            "simulation",
            "--test-examples",
            "2",
            "--explain-examples",
            "4",
            "--window-tokens",
            "8",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "explain --scorer simulation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("simulation: {summary}");
    // 2 units × (1 explanation + 4 sequences).
    assert_eq!(summary["estimated_requests"], 10, "{summary}");
    for u in summary["units"].as_array().unwrap() {
        let unit = u["unit"].as_u64().unwrap() as usize;
        if u["explanation"].is_null() {
            assert!(!u["problems"].as_array().unwrap().is_empty(), "{u}");
            continue;
        }
        let results = u["scores"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{u}");
        assert_eq!(results[0]["scorer"], "simulation");
        let s = &results[0]["scores"];
        let (sequences, unparsed) = (
            s["sequences"].as_u64().unwrap(),
            s["unparsed"].as_u64().unwrap(),
        );
        assert_eq!(sequences + unparsed, 4, "{s}");
        if sequences > 0 {
            // dendrite serve returns logprobs: every parsed level is an expected value.
            assert_eq!(
                s["from_logprobs"].as_u64().unwrap(),
                s["tokens"].as_u64().unwrap(),
                "{s}"
            );
        }
        // A correlation exactly when one is defined; stored beside the explanation, where the
        // inspector's report shows it.
        let report = store.unit_report(&source, unit, Some(1)).unwrap();
        let e = report
            .explanations
            .iter()
            .find(|e| e.description == u["explanation"].as_str().unwrap())
            .unwrap();
        let stored: Vec<_> = e
            .scores
            .iter()
            .filter(|s| s.scorer == "simulation")
            .collect();
        match s["correlation"].as_f64() {
            Some(r) => {
                assert!((-1.0..=1.0).contains(&r), "{s}");
                assert_eq!(stored.len(), 1, "{e:?}");
                assert!((stored[0].score - r).abs() < 1e-12);
            }
            None => assert!(stored.is_empty(), "no correlation, no score: {e:?}"),
        }
    }
}

#[test]
fn an_endpoint_that_is_down_is_an_error_and_nothing_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = sample_store(dir.path());
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = explain(
        &store_path,
        &format!("http://127.0.0.1:{port}/v1"),
        "m",
        &["--unit", "3", "--retries", "1"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let store = Store::open_existing(&store_path).unwrap();
    let source = sae_source();
    assert!(store.explanation_scores(&source, 3).unwrap().is_empty());
    assert!(
        store
            .unit_report(&source, 3, Some(1))
            .unwrap()
            .explanations
            .iter()
            .all(|e| e.origin != "auto-interp")
    );
    // The failed request is in the audit.
    assert_eq!(store.interp_requests(&source, 3).unwrap(), 1);
}
