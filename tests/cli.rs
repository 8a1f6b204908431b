//! The CLI's flags and JSON keys, which other tools rely on.

mod common;

use std::process::Command;

use common::{fixtures, real_model};

fn dendrite(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = dendrite(args);
    assert!(ok, "dendrite {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn info_json() {
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let info = json(&["info", smol.to_str().unwrap(), "--json"]);
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["n_layers"], 30);
    assert_eq!(info["d_model"], 576);
    assert_eq!(info["n_heads"], 9);
    assert_eq!(info["n_kv_heads"], 3);
    assert_eq!(info["d_mlp"], 1536);
    assert_eq!(info["d_vocab"], 49152);
    let params = info["n_params"].as_u64().unwrap();
    assert!((134_000_000..136_000_000).contains(&params), "{params}");
    assert!(info["source_dtype"].as_str().unwrap().contains("Q4_1"));

    let tiny = fixtures().join("tiny/gpt_neox");
    let info = json(&["info", tiny.to_str().unwrap(), "--json"]);
    assert_eq!(info["architecture"], "gpt_neox");
    assert_eq!(info["format"], "safetensors");
}

#[test]
fn tokenize_json_adds_the_bos_exactly_as_hf_does() {
    let gemma = real_model("gemma-3-270m-q4_k_m.gguf");
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ids = |model: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "tokenize",
            model.to_str().unwrap(),
            "--text",
            "Hello world",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&args)["token_ids"].clone()
    };
    // Gemma's tokenizer adds its BOS (add_bos_token), SmolLM2's does not.
    assert_eq!(ids(&gemma, &[]), serde_json::json!([2, 9259, 1902]));
    assert_eq!(
        ids(&gemma, &["--bos", "no"]),
        serde_json::json!([9259, 1902])
    );
    assert_eq!(
        ids(&gemma, &["--add-special"]),
        serde_json::json!([2, 9259, 1902])
    );
    let plain = json(&[
        "tokenize",
        gemma.to_str().unwrap(),
        "--text",
        "Hello world",
        "--bos",
        "no",
        "--json",
    ]);
    assert_eq!(plain["tokens"], serde_json::json!(["Hello", "▁world"]));
    assert_eq!(ids(&smol, &[]), ids(&smol, &["--bos", "no"]));
    let forced = ids(&smol, &["--bos", "yes"]);
    assert_eq!(forced[0], 1, "SmolLM2's BOS is id 1: {forced}");
    let (ok, _, stderr) = dendrite(&[
        "tokenize",
        gemma.to_str().unwrap(),
        "--text",
        "x",
        "--bos",
        "maybe",
    ]);
    assert!(!ok && stderr.contains("auto, yes or no"), "{stderr}");
}

#[test]
fn run_json_with_interventions_and_saved_activations() {
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let smol = smol.to_str().unwrap();
    let base = json(&[
        "run",
        smol,
        "--prompt",
        "The capital of France is",
        "--json",
    ]);
    let n = base["token_ids"].as_array().unwrap().len();
    assert_eq!(base["logits_last"].as_array().unwrap().len(), 49152);
    assert_eq!(base["per_token_nll"].as_array().unwrap().len(), n - 1);
    let layers = base["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    assert!(layers.iter().all(|l| {
        l["mlp_frac_active"]
            .as_f64()
            .is_some_and(|f| (0.0..=1.0).contains(&f))
    }));
    assert_eq!(base["top_k"][0]["token"], " Paris");

    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("acts.safetensors");
    let ids: Vec<String> = base["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let changed = json(&[
        "run",
        smol,
        "--token-ids",
        &ids.join(","),
        "--clamp",
        "blocks.15.mlp.hook_post:123=10",
        "--ablate-head",
        "3.1:mean",
        "--ablate-head",
        "4.0",
        "--save-activations",
        saved.to_str().unwrap(),
        "--hooks",
        "blocks.*.mlp.hook_post",
        "--hooks",
        "blocks.2.attn.hook_pattern",
        "--json",
    ]);
    assert_eq!(changed["token_ids"], base["token_ids"]);
    assert_ne!(changed["logits_last"], base["logits_last"]);
    let tensors = candle_core::safetensors::load(&saved, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors.len(), 31);
    assert_eq!(tensors["blocks.0.mlp.hook_post"].dims(), &[1, n, 1536]);
    assert_eq!(tensors["blocks.2.attn.hook_pattern"].dims(), &[1, 9, n, n]);
    let clamped: Vec<f32> = tensors["blocks.15.mlp.hook_post"]
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(clamped[123], 10.0);

    // One hook as NumPy's .npy, as numpy.load reads it; several hooks cannot be one array.
    let npy = tmp.path().join("l15.npy");
    let ids = ids.join(",");
    let args = |out: &std::path::Path, hook: &'static str| {
        vec![
            "run".to_string(),
            smol.to_string(),
            "--token-ids".into(),
            ids.clone(),
            "--clamp".into(),
            "blocks.15.mlp.hook_post:123=10".into(),
            "--save-activations".into(),
            out.to_str().unwrap().into(),
            "--hooks".into(),
            hook.into(),
        ]
    };
    let run = |v: Vec<String>| dendrite(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, stderr) = run(args(&npy, "blocks.15.mlp.hook_post"));
    assert!(ok, "{stderr}");
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, numpy as np; a = np.load(sys.argv[1]); print(a.dtype, a.shape, a[0, 0, 123])",
        ])
        .arg(&npy)
        .output()
        .expect("the venv's python (scripts/test.sh prepares .cache/venv)");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("float32 (1, {n}, 1536) 10.0"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (ok, _, stderr) = run(args(&npy, "blocks.*.mlp.hook_post"));
    assert!(!ok && stderr.contains("matched 30"), "{stderr}");
}

#[test]
fn run_on_every_fixture_architecture() {
    for arch in ["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"] {
        let dir = fixtures().join("tiny").join(arch);
        let out = json(&[
            "run",
            dir.to_str().unwrap(),
            "--prompt",
            "hello there",
            "--json",
        ]);
        assert_eq!(out["layers"].as_array().unwrap().len(), 2, "{arch}");
        assert_eq!(out["logits_last"].as_array().unwrap().len(), 300, "{arch}");
    }
}

#[test]
fn errors_are_readable_and_exit_nonzero() {
    let (ok, _, stderr) = dendrite(&["info", "/no/such/model.gguf"]);
    assert!(!ok);
    assert!(
        stderr.contains("/no/such/model.gguf") && stderr.contains("no such file"),
        "{stderr}"
    );
    let dir = fixtures().join("tiny/gpt2");
    let (ok, _, stderr) = dendrite(&[
        "run",
        dir.to_str().unwrap(),
        "--token-ids",
        "1,2",
        "--clamp",
        "blocks.0.mlp.hook_post:nope=1",
        "--json",
    ]);
    assert!(!ok);
    assert!(stderr.contains("bad neuron index"), "{stderr}");
    let (ok, _, stderr) = dendrite(&[
        "run",
        dir.to_str().unwrap(),
        "--token-ids",
        "1,2",
        "--ablate-head",
        "7.0",
        "--json",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown hook"), "{stderr}");
}

/// `dendrite heads` on SmolLM2 against the same scores computed from HF transformers' eager
/// attentions on the same tokens (`scripts/make_fixtures.py --only heads`).
#[test]
fn heads_on_smollm2_match_hf() {
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let tokens = fixtures().join("real/smollm2_heads_tokens.txt");
    let ours = json(&[
        "heads",
        smol.to_str().unwrap(),
        "--token-ids-file",
        tokens.to_str().unwrap(),
        "--repeat-len",
        "20",
        "--json",
    ]);
    let text = std::fs::read_to_string(fixtures().join("real/smollm2_heads.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "induction_score",
        "prev_token_score",
        "duplicate_token_score",
        "prefix_matching_score",
        "induction_score_mul",
        "induction_score_mul_exclude_bos",
    ] {
        let (a, b) = (
            ours[key].as_array().unwrap(),
            reference[key].as_array().unwrap(),
        );
        assert_eq!(a.len(), 30, "{key}");
        for (l, (ra, rb)) in a.iter().zip(b).enumerate() {
            for (h, (x, y)) in ra
                .as_array()
                .unwrap()
                .iter()
                .zip(rb.as_array().unwrap())
                .enumerate()
            {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-3, "{key} L{l}H{h}: ours {x}, HF {y}");
            }
        }
    }
    let (a, b) = (
        ours["per_position_nll"].as_array().unwrap(),
        reference["per_position_nll"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 39);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-3 * y.abs().max(1.0),
            "per-position loss: ours {x}, HF {y}"
        );
    }
}

#[test]
fn sae_json_lists_every_active_latent_per_token() {
    let model = fixtures().join("tiny/gpt2");
    let sae = fixtures().join("sae/topk");
    let out = json(&[
        "sae",
        model.to_str().unwrap(),
        "--sae",
        sae.to_str().unwrap(),
        "--token-ids",
        "5,9,12,5,9",
        "--json",
    ]);
    assert_eq!(out["hook"], "blocks.0.hook_mlp_out");
    assert_eq!(out["d_sae"], 64);
    let features = out["features"].as_array().unwrap();
    let l0 = out["l0"].as_array().unwrap();
    assert_eq!((features.len(), l0.len()), (5, 5));
    for (token, l0) in features.iter().zip(l0) {
        let acts: Vec<f64> = token
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                let index = pair[0].as_u64().unwrap();
                assert!(index < 64);
                pair[1].as_f64().unwrap()
            })
            .collect();
        assert_eq!(acts.len() as u64, l0.as_u64().unwrap());
        assert!(!acts.is_empty() && acts.len() <= 4, "k = 4");
        assert!(acts.iter().all(|a| *a > 0.0));
        assert!(acts.windows(2).all(|w| w[0] >= w[1]), "highest first");
    }
    // MSE is the mean of the per-token squared errors.
    let errors: Vec<f64> = out["squared_error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!((out["mse"].as_f64().unwrap() - mean).abs() < 1e-3 * mean.max(1.0));
    assert!(out["fve"].is_number());

    // An SAE attached where the widths differ is an error naming both.
    let (ok, _, stderr) = dendrite(&[
        "sae",
        model.to_str().unwrap(),
        "--sae",
        sae.to_str().unwrap(),
        "--hook",
        "blocks.0.mlp.hook_post",
        "--prompt",
        "hi",
    ]);
    assert!(!ok);
    assert!(stderr.contains("32") && stderr.contains("64"), "{stderr}");
}

#[test]
fn sae_eval_reports_every_metric_for_the_sample_sae() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_models/shakespeare-gpt2-relu");
    let sae = model.with_file_name("shakespeare-gpt2-relu-sae");
    let text = fixtures().join("text/cymbeline_heldout.txt");
    let out = json(&[
        "sae-eval",
        model.to_str().unwrap(),
        "--sae",
        sae.to_str().unwrap(),
        "--corpus",
        text.to_str().unwrap(),
        "--tokens",
        "400",
        "--json",
    ]);
    let r = &out["reconstruction"];
    assert!(r["fve"].as_f64().unwrap() > 0.8, "{r}");
    assert!((r["l0"].as_f64().unwrap() - 16.0).abs() < 1e-9);
    let d = &out["downstream"];
    let recovered = d["ce_loss_recovered_zero"].as_f64().unwrap();
    assert!(recovered > 0.5 && recovered <= 1.05, "{d}");
    assert!(d["kl_score_mean"].is_number());
    assert!(d["ce_zero_ablation"].as_f64().unwrap() > d["ce_clean"].as_f64().unwrap());
    assert_eq!(out["firing"]["n_tokens"], out["tokens"]);
    assert!(out["dark_matter"]["r2_norm"].is_number());
}

#[test]
fn sae_commands_fail_cleanly_on_bad_input() {
    let model = fixtures().join("tiny/gpt2");
    let m = model.to_str().unwrap();
    let standard = fixtures().join("sae/standard");
    let text = fixtures().join("text/cymbeline_heldout.txt");
    let (standard, text) = (standard.to_str().unwrap(), text.to_str().unwrap());
    let cases: [(&[&str], &str); 4] = [
        (
            &["sae", m, "--sae", "/nonexistent/sae", "--prompt", "hi"],
            "no such file",
        ),
        (&["sae", m, "--sae", m, "--prompt", "hi"], "not an SAE"),
        (
            &[
                "sae-eval",
                m,
                "--sae",
                standard,
                "--corpus",
                "/nonexistent/corpus",
            ],
            "does not exist",
        ),
        (
            &[
                "train-sae",
                m,
                "--hook",
                "blocks.9.hook_resid_post",
                "--corpus",
                text,
                "--k",
                "4",
                "--width",
                "64",
                "--out",
                "/tmp/never",
            ],
            "blocks.9.hook_resid_post",
        ),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = dendrite(args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `generate --json`: the continuation under a clamp beside the baseline (HF's greedy tokens
/// for both, from `tests/fixtures/generate.json`), where they part, and a chat prompt that
/// ends at the model's EOS.
#[test]
fn generate_json_with_a_baseline_and_a_chat() {
    let text = std::fs::read_to_string(fixtures().join("generate.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"].as_str().unwrap().starts_with("real/"))
        .unwrap();
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ids: Vec<String> = case["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let clamp = format!(
        "{}:{}={}",
        case["clamp"]["hook"].as_str().unwrap(),
        case["clamp"]["neuron"],
        case["clamp"]["value"]
    );
    let out = json(&[
        "generate",
        smol.to_str().unwrap(),
        "--token-ids",
        &ids.join(","),
        "--max-new-tokens",
        "12",
        "--clamp",
        &clamp,
        "--json",
    ]);
    assert_eq!(out["generated_ids"], case["clamp_generated_ids"]);
    assert_eq!(out["baseline"]["generated_ids"], case["generated_ids"]);
    assert_eq!(out["text"], case["clamp_text"]);
    assert_eq!(out["baseline"]["first_difference"], 2);
    assert_eq!(out["stop"], "max_tokens");
    assert!(out["timing"]["decode_ms"].as_f64().unwrap() > 0.0);

    let chat = json(&[
        "generate",
        smol.to_str().unwrap(),
        "--chat",
        "What is the capital of France?",
        "--max-new-tokens",
        "40",
        "--top-logprobs",
        "3",
        "--json",
    ]);
    // Greedy: each step's token is its most likely one.
    let tops = chat["top_logprobs"].as_array().unwrap();
    for (step, id) in tops.iter().zip(chat["generated_ids"].as_array().unwrap()) {
        assert_eq!(step.as_array().unwrap().len(), 3);
        assert_eq!(&step[0]["token_id"], id);
    }
    assert_eq!(chat["stop"], "eos");
    assert!(chat["text"].as_str().unwrap().contains("Paris"), "{chat}");
    assert!(!chat["text"].as_str().unwrap().contains("<|im_end|>"));
    assert!(
        chat.get("baseline").is_none(),
        "no interventions, no baseline"
    );
    let (ok, _, stderr) = dendrite(&[
        "generate",
        real_model("gemma-3-270m-q4_k_m.gguf").to_str().unwrap(),
        "--chat",
        "hi",
    ]);
    assert!(!ok && stderr.contains("no chat template"), "{stderr}");
}

/// `generate --sae` steers along a latent's decoder direction or clamps a latent; the
/// baseline is the plain continuation.
#[test]
fn generate_with_sae_steering_and_latent_clamps() {
    let model = dendrite::sample::path().unwrap();
    let sae = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_models/shakespeare-gpt2-relu-sae");
    let (model, sae) = (model.to_str().unwrap(), sae.to_str().unwrap());
    let base = [
        "generate",
        model,
        "--prompt",
        "ROMEO: What light",
        "--max-new-tokens",
        "20",
    ];
    let plain = json(&[&base[..], &["--json"]].concat());
    for edit in [["--steer-latent", "5:8"], ["--clamp-latent", "5=6"]] {
        let out = json(&[&base[..], &["--sae", sae], &edit[..], &["--json"]].concat());
        assert_eq!(out["baseline"]["generated_ids"], plain["generated_ids"]);
        assert_ne!(
            out["generated_ids"], plain["generated_ids"],
            "{edit:?} changes the text"
        );
        assert!(out["baseline"]["first_difference"].as_u64().is_some());
    }
    let (ok, _, stderr) =
        dendrite(&[&base[..], &["--sae", sae, "--steer-latent", "99999:1"]].concat());
    assert!(!ok && stderr.contains("out of range"), "{stderr}");
}

#[test]
fn bench_json_has_every_timing_of_the_documented_shape() {
    let model = fixtures().join("tiny/llama");
    let report = json(&[
        "bench",
        model.to_str().unwrap(),
        "--tokens",
        "4,9",
        "--repeats",
        "2",
        "--clamp-layers",
        "0,1",
        "--json",
    ]);
    assert!(report["model"].is_string() && report["cpu"].is_string());
    assert!(report["threads"].as_u64().unwrap() >= 1);
    let results = report["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["tokens"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![4, 9]
    );
    let timing = |t: &serde_json::Value| {
        let (median, min, max) = (
            t["median"].as_f64().unwrap(),
            t["min"].as_f64().unwrap(),
            t["max"].as_f64().unwrap(),
        );
        assert!(min <= median && median <= max && min >= 0.0, "{t}");
    };
    for r in results {
        for key in [
            "load_ms",
            "forward_ms",
            "capture_ms",
            "lens_ms",
            "heads_ms",
            "matmul_ms",
        ] {
            timing(&r[key]);
        }
        for key in ["clamp_ms", "clamp_last_position_ms"] {
            let by_layer = r[key].as_object().unwrap();
            assert_eq!(
                by_layer.keys().collect::<Vec<_>>(),
                vec!["L0", "L1"],
                "{key}"
            );
            by_layer.values().for_each(timing);
        }
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    // A layer the model does not have, or a prompt longer than its context: clear errors.
    let (ok, _, stderr) = dendrite(&["bench", model.to_str().unwrap(), "--clamp-layers", "99"]);
    assert!(!ok && stderr.contains("beyond the model's"), "{stderr}");
    let (ok, _, stderr) = dendrite(&["bench", model.to_str().unwrap(), "--tokens", "100000"]);
    assert!(!ok && stderr.contains("context"), "{stderr}");
}

/// `dendrite prune` and `dendrite sparsify` print the JSON keys issue 14 documents, one
/// sparsity or a sweep with its knee, one method or its PPL-p% point; a corpus file is read
/// only as far as the tokens asked for.
#[test]
fn prune_and_sparsify_json_have_the_documented_keys() {
    let tiny = fixtures().join("tiny/llama");
    let model = tiny.to_str().unwrap();
    let prompt = "hello world, hello there, hello again";
    let one = json(&[
        "prune",
        model,
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--prompt",
        prompt,
        "--json",
    ]);
    for key in [
        "sparsity",
        "achieved_sparsity",
        "mean_loss",
        "dense_mean_loss",
    ] {
        assert!(one[key].is_number(), "{key}: {one}");
    }
    assert_eq!(one["sparsity"], 0.5);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the cat sat on the mat. ".repeat(400)).unwrap();
    let sweep = json(&[
        "prune",
        model,
        "--method",
        "nm:2:4",
        "--sweep",
        "0,0.5",
        "--scope",
        "mlp",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "300",
        "--json",
    ]);
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    // N:M's sparsity is 1 − N/M whatever the level.
    assert!(points.iter().all(|p| p["sparsity"] == 0.5), "{sweep}");
    // 300 tokens in windows of the model's context: each window predicts all but its first.
    let tokens = sweep["tokens"].as_u64().unwrap();
    assert!((290..300).contains(&tokens), "{sweep}");
    assert!(sweep.get("knee").is_some() && sweep["dense_mean_loss"].is_number());

    let cut = json(&[
        "sparsify", model, "--method", "topk:4", "--prompt", prompt, "--json",
    ]);
    assert_eq!(cut["method"], "topk:4");
    for key in ["sparsity", "mean_loss", "dense_mean_loss"] {
        assert!(cut[key].is_number(), "{key}: {cut}");
    }
    let found = json(&[
        "sparsify", model, "--method", "cett:0.1", "--prompt", prompt, "--ppl-p", "5", "--json",
    ]);
    assert_eq!(found["ppl_p"], 5.0);
    let (loss, dense) = (
        found["mean_loss"].as_f64().unwrap(),
        found["dense_mean_loss"].as_f64().unwrap(),
    );
    assert!(loss <= dense + 1.05f64.ln() + 1e-9, "{found}");
    assert!(found["parameter"].is_number());
    let (ok, _, stderr) = dendrite(&[
        "sparsify",
        model,
        "--method",
        "fatrelu:0.1",
        "--prompt",
        prompt,
        "--ppl-p",
        "1",
    ]);
    assert!(!ok && stderr.contains("searches"), "{stderr}");
}
