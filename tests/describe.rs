//! The corpus scan, its store, explanation import and search: against HF transformers'
//! activations on SmolLM2 (`scripts/make_scan_fixtures.py`), and on the sample model for
//! shards, resume and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, real_model, real_reference};
use dendrite::describe::corpus::Shard;
use dendrite::describe::explanations::{self, Format};
use dendrite::describe::{ScanOptions, Store, UnitReport};

fn sample_model() -> dendrite::model::Model {
    dendrite::model::open(dendrite::sample::path().expect("the sample model is embedded")).unwrap()
}

fn corpus() -> PathBuf {
    fixtures().join("text/cymbeline_heldout.txt")
}

fn never() -> bool {
    false
}

fn sample_opts(out: &Path) -> ScanOptions {
    let mut opts = ScanOptions::new(corpus(), out);
    opts.hooks = vec!["blocks.*.mlp.hook_post".into()];
    opts.saes = vec![dendrite::sample::sae_path().unwrap()];
    opts.context = 16;
    opts.top_k = 5;
    opts.batch = 4;
    opts.max_tokens = Some(16 * 40);
    opts
}

/// definitions.md §11 on SmolLM2: our top windows, peaks and statistics equal HF's.
#[test]
fn scan_of_smollm2_matches_hf_activations() {
    let r = real_reference("smollm2_scan");
    let model = dendrite::model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol.sqlite");
    let mut opts = ScanOptions::new(corpus(), &out);
    let layers = r["layers"].as_array().unwrap();
    opts.hooks = layers
        .iter()
        .map(|l| l["hook"].as_str().unwrap().to_string())
        .collect();
    opts.context = r["context"].as_u64().unwrap() as usize;
    opts.top_k = r["top_k"].as_u64().unwrap() as usize;
    let windows = r["windows"].as_u64().unwrap();
    opts.max_tokens = Some(windows * opts.context as u64);
    let summary = dendrite::describe::scan(&model, &opts, &mut |_| {}, &never).unwrap();
    assert!(summary.complete);
    assert_eq!(summary.windows, windows);
    let store = Store::open_existing(&out).unwrap();
    let (mut checked, mut order_swaps) = (0, 0);
    for layer in layers {
        let hook = layer["hook"].as_str().unwrap();
        for u in layer["units"].as_array().unwrap() {
            let unit = u["unit"].as_u64().unwrap() as usize;
            let report = store.unit_report(hook, unit, None).unwrap();
            let want_windows = common::json_ids(&u["top_windows"]);
            let want_max: Vec<f64> = u["top_max"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let scale = u["max"].as_f64().unwrap().abs().max(1.0);
            let got: Vec<u32> = report.examples.iter().map(|e| e.window as u32).collect();
            assert_eq!(got.len(), want_windows.len());
            for (k, e) in report.examples.iter().enumerate() {
                assert!(
                    (e.max_act as f64 - want_max[k]).abs() < 2e-3 * scale,
                    "{hook} {unit} rank {k}: {} vs {}",
                    e.max_act,
                    want_max[k]
                );
            }
            if got != want_windows {
                // Only near-ties may differ (the maxima at every rank matched above).
                order_swaps += 1;
            }
            let top_acts: Vec<f64> = u["top_acts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            if got.first() == want_windows.first() {
                // Stored as f16: half a unit in the 11th bit on top of the engine's error.
                for (a, b) in report.examples[0].acts.iter().zip(&top_acts) {
                    let tol = 2e-3 * scale + b.abs() / 1024.0;
                    assert!((*a as f64 - b).abs() < tol, "{hook} {unit}: {a} vs {b}");
                }
                // The peak position may differ only between two near-equal activations.
                let (ours, theirs) = (
                    report.examples[0].max_pos as usize,
                    u["top_pos"][0].as_u64().unwrap() as usize,
                );
                if ours != theirs {
                    let gap = (top_acts[ours] - top_acts[theirs]).abs();
                    assert!(gap < 2e-3 * scale, "{hook} {unit}: peak {ours} vs {theirs}");
                }
            }
            let n = (windows * opts.context as u64) as f64;
            assert_eq!(report.tokens_scanned as f64, n);
            let density = u["density"].as_f64().unwrap();
            assert!(
                (report.density - density).abs() <= 2.0 / n,
                "{hook} {unit}: density {} vs {density}",
                report.density
            );
            assert!((report.mean - u["mean"].as_f64().unwrap()).abs() < 1e-3 * scale);
            assert!((report.max.unwrap() as f64 - u["max"].as_f64().unwrap()).abs() < 2e-3 * scale);
            assert_eq!(
                report.histogram.counts.iter().sum::<u64>() + report.histogram.nonpositive,
                n as u64
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 96);
    assert!(
        order_swaps <= 5,
        "{order_swaps} units ranked differently from HF"
    );
    // The windows the store holds are HF's token ids.
    let window_ids = r["window_ids"].as_array().unwrap();
    let report = store
        .unit_report(layers[0]["hook"].as_str().unwrap(), 0, Some(1))
        .unwrap();
    let w = report.examples[0].window as usize;
    assert_eq!(
        report.examples[0].token_ids,
        common::json_ids(&window_ids[w])
    );
}

fn reports(store: &Path) -> Vec<UnitReport> {
    let store = Store::open_existing(store).unwrap();
    let mut out = Vec::new();
    for source in store.sources().unwrap() {
        for unit in (0..source.width).step_by(37) {
            out.push(store.unit_report(&source.name, unit, None).unwrap());
        }
    }
    out
}

/// Top-k, histograms, densities and means of merged shards equal one scan's.
fn assert_same_statistics(a: &[UnitReport], b: &[UnitReport]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.source, x.unit), (&y.source, y.unit));
        assert_eq!(x.tokens_scanned, y.tokens_scanned);
        assert_eq!(x.examples, y.examples, "{} {}", x.source, x.unit);
        assert_eq!(x.histogram, y.histogram, "{} {}", x.source, x.unit);
        assert_eq!(x.density, y.density);
        assert_eq!(x.max, y.max);
        assert!((x.mean - y.mean).abs() < 1e-9);
        for q in &x.quantiles {
            for e in &q.examples {
                assert!(e.max_act > q.lo && e.max_act <= q.hi * (1.0 + 1e-6));
            }
        }
    }
}

#[test]
fn merged_shards_equal_one_scan() {
    let model = sample_model();
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.sqlite");
    dendrite::describe::scan(&model, &sample_opts(&whole), &mut |_| {}, &never).unwrap();
    let mut shards = Vec::new();
    for i in 0..3 {
        let path = dir.path().join(format!("shard{i}.sqlite"));
        let mut opts = sample_opts(&path);
        opts.shard = Shard { index: i, count: 3 };
        let s = dendrite::describe::scan(&model, &opts, &mut |_| {}, &never).unwrap();
        assert!(s.complete);
        shards.push(path);
    }
    let merged = dir.path().join("merged.sqlite");
    let err = dendrite::describe::merge(&merged, &shards[..2]).unwrap_err();
    assert!(err.to_string().contains("exactly once"), "{err}");
    dendrite::describe::merge(&merged, &shards).unwrap();
    assert_same_statistics(&reports(&merged), &reports(&whole));
    let r = Store::open_existing(&merged)
        .unwrap()
        .scan()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.shard_index, r.shard_count, r.windows_scanned),
        (0, 1, 40)
    );
    // Quantile groups hold up to 5 windows each, drawn from the shards' candidates.
    let report = Store::open_existing(&merged)
        .unwrap()
        .unit_report("blocks.1.mlp.hook_post", 3, None)
        .unwrap();
    assert!(report.quantiles.iter().all(|q| q.examples.len() <= 5));
    assert!(
        report
            .quantiles
            .iter()
            .map(|q| q.examples.len())
            .sum::<usize>()
            > 0
    );
}

fn dendrite_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .args(args)
        .output()
        .unwrap()
}

/// A scan killed mid-way keeps what it committed; `--resume` finishes it to the same result
/// as an uninterrupted scan.
#[test]
fn a_killed_scan_resumes_to_the_same_store() {
    let model_path = dendrite::sample::path().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = model_path.to_str().unwrap().to_string();
    // The held-out play four times over: long enough (~2 s) that the kill lands mid-scan.
    let long = dir.path().join("cymbeline4.txt");
    std::fs::write(&long, std::fs::read_to_string(corpus()).unwrap().repeat(4)).unwrap();
    let corpus = long.to_str().unwrap().to_string();
    let args = |out: &Path| -> Vec<String> {
        [
            "scan",
            &model,
            "--corpus",
            &corpus,
            "--hooks",
            "blocks.*.mlp.hook_post",
            "--context",
            "16",
            "--top-k",
            "5",
            "--batch",
            "1",
            "--commit-every",
            "0",
            "--tokens",
            "8000",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = dir.path().join("whole.sqlite");
    let out = dendrite_cli(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = dir.path().join("killed.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few commits, then kill -9.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let done = Store::open_existing(&killed)
            .ok()
            .and_then(|s| s.scan().ok().flatten())
            .map_or(0, |r| r.windows_scanned);
        if done >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scan never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = Store::open_existing(&killed)
        .unwrap()
        .scan()
        .unwrap()
        .unwrap();
    assert!(!partial.complete, "killed before it finished");
    // Without --resume the store is refused; with it the scan finishes.
    let again = dendrite_cli(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let mut resume = args(&killed);
    resume.push("--resume".into());
    let out = dendrite_cli(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = reports(&killed);
    let b = reports(&whole);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.tokens_scanned, y.tokens_scanned);
        assert_eq!(x.histogram, y.histogram);
        assert_eq!(x.density, y.density);
        let wx: Vec<u64> = x.examples.iter().map(|e| e.window).collect();
        let wy: Vec<u64> = y.examples.iter().map(|e| e.window).collect();
        assert_eq!(wx, wy, "{} {}", x.source, x.unit);
    }
    // A scan of another corpus into the same store names both.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "Some other words. ".repeat(100)).unwrap();
    let mut wrong = args(&killed);
    wrong[3] = other.to_str().unwrap().to_string();
    wrong.push("--resume".into());
    let out = dendrite_cli(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cymbeline") && err.contains("other.txt"),
        "{err}"
    );
}

#[test]
fn examples_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.sqlite");
    dendrite::describe::scan(&sample_model(), &sample_opts(&out), &mut |_| {}, &never).unwrap();
    let o = dendrite_cli(&[
        "examples",
        out.to_str().unwrap(),
        "--source",
        "blocks.0.mlp.hook_post",
        "--unit",
        "7",
        "--top",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "source",
        "unit",
        "tokens_scanned",
        "density",
        "max",
        "mean",
        "quantiles",
        "histogram",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    let examples = v["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 3);
    let maxes: Vec<f64> = examples
        .iter()
        .map(|e| e["max_act"].as_f64().unwrap())
        .collect();
    assert!(maxes.windows(2).all(|w| w[0] >= w[1]), "{maxes:?}");
    for e in examples {
        let ids = e["token_ids"].as_array().unwrap();
        let acts = e["acts"].as_array().unwrap();
        assert_eq!(ids.len(), 16);
        assert_eq!(acts.len(), 16);
        let pos = e["max_pos"].as_u64().unwrap() as usize;
        let peak = acts[pos].as_f64().unwrap();
        assert!((peak - e["max_act"].as_f64().unwrap()).abs() < 1e-2 * peak.abs().max(1.0));
    }
    assert_eq!(v["histogram"]["counts"].as_array().unwrap().len(), 50);
    assert_eq!(v["quantiles"].as_array().unwrap().len(), 10);
    // An SAE's latents are a source of their own.
    let o = dendrite_cli(&[
        "examples",
        out.to_str().unwrap(),
        "--source",
        "sae:shakespeare-gpt2-relu-sae",
        "--unit",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = dendrite_cli(&[
        "examples",
        out.to_str().unwrap(),
        "--source",
        "blocks.9.mlp.hook_post",
        "--unit",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("blocks.0.mlp.hook_post"));
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(5));
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Neuronpedia exports (gzipped JSONL batches and the older JSON array) and OpenAI explanation
/// files, shaped as those projects write them; then full-text and token search.
#[test]
fn explanations_import_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.sqlite");
    dendrite::describe::scan(&sample_model(), &sample_opts(&out), &mut |_| {}, &never).unwrap();
    let mut store = Store::open_existing(&out).unwrap();
    let sae = "sae:shakespeare-gpt2-relu-sae";
    let np = [
        r#"{"id": "clzq3r8ul00aa2xoqwd2q0z9f", "modelId": "shakespeare-gpt2-relu", "layer": "0-res-topk", "index": "204", "authorId": "clsxqq2xd0000vvp2k5itlhqj", "description": " closing quotation marks after dialogue", "embedding": null, "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini", "umap_x": 0.0, "umap_y": 0.0, "umap_cluster": 0, "umap_log_feature_sparsity": 0.0}"#,
        r#"{"id": "cm1b7x0c40f3k8ab1n5t2yq7e", "modelId": "shakespeare-gpt2-relu", "layer": "0-res-topk", "index": "1000", "authorId": "clsxqq2xd0000vvp2k5itlhqj", "description": " names of kings", "embedding": "[0.0213,-0.0871,0.0045]", "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini", "umap_x": 3.41, "umap_y": -1.27, "umap_cluster": 12, "umap_log_feature_sparsity": -2.95}"#,
        r#"{"id": "cm1b7x0c40f3k8ab1n5t2yq7f", "modelId": "shakespeare-gpt2-relu", "layer": "0-res-topk", "index": 204, "description": "quotes", "typeName": "np_max-act", "explanationModelName": "claude-3-5-haiku", "createdAt": "2025-01-15T10:20:30.123456"}"#,
    ]
    .join("\n");
    let file = dir.path().join("batch-0.jsonl.gz");
    std::fs::write(&file, gz(np.as_bytes())).unwrap();
    let report = explanations::import(&mut store, &file, sae, None, false).unwrap();
    assert_eq!(report.imported, 3);
    let ex = store.explanations(sae, 204).unwrap();
    assert_eq!(ex.len(), 2, "several explanations per unit are kept");
    assert_eq!(ex[0].description, "closing quotation marks after dialogue");
    assert_eq!(ex[0].explainer_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(ex[0].origin, "neuronpedia");

    // The older API export: one JSON array, for another model → refused without --force.
    let array = r#"[{"modelId": "gemma-2-2b", "layer": "20-gemmascope-mlp-16k", "index": "46", "description": " LaTeX formatting elements", "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
                    {"modelId": "gemma-2-2b", "layer": "20-gemmascope-mlp-16k", "index": "99999", "description": " negations", "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"}]"#;
    let file = dir.path().join("export.json");
    std::fs::write(&file, array).unwrap();
    let err = explanations::import(&mut store, &file, sae, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gemma-2-2b") && err.contains("99999") && err.contains("--force"),
        "{err}"
    );
    assert!(
        store.explanations(sae, 46).unwrap().is_empty(),
        "nothing imported"
    );
    let report =
        explanations::import(&mut store, &file, sae, Some(Format::Neuronpedia), true).unwrap();
    assert_eq!(
        (report.imported, report.out_of_range.clone()),
        (1, vec![99999])
    );

    // OpenAI neuron-explainer files: {layer}/{neuron}.jsonl, one NeuronSimulationResults each.
    let root = dir.path().join("explanations");
    std::fs::create_dir_all(root.join("1")).unwrap();
    std::fs::create_dir_all(root.join("0")).unwrap();
    std::fs::write(
        root.join("1/12.jsonl"),
        r#"{"dataclass_name":"NeuronSimulationResults","neuron_id":{"dataclass_name":"NeuronId","layer_index":1,"neuron_index":12},"scored_explanations":[{"dataclass_name":"ScoredExplanation","explanation":" references to Roman people and places","scored_simulation":{"dataclass_name":"ScoredSimulation","scored_sequence_simulations":[{"dataclass_name":"ScoredSequenceSimulation","simulation":{"dataclass_name":"SequenceSimulation","tokens":["The"," Roman"],"expected_activations":[0.02,6.81],"activation_scale":"simulated_normalized_activations","distribution_values":[[0,1],[0,5]],"distribution_probabilities":[[0.98,0.02],[0.5,0.5]],"uncalibrated_simulation":null},"true_activations":[0.0,3.42],"ev_correlation_score":0.91,"rsquared_score":0.35,"absolute_dev_explained_score":0.22}],"ev_correlation_score":0.78,"rsquared_score":0.41,"absolute_dev_explained_score":0.3}}]}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("1/13.jsonl"),
        r#"{"neuron_id":{"layer_index":1,"neuron_index":13},"scored_explanations":[{"explanation":" citations, especially biblical and legal","scored_simulation":{"scored_sequence_simulations":[],"ev_correlation_score":NaN,"rsquared_score":null,"absolute_dev_explained_score":null}}]}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("0/5.jsonl"),
        r#"{"neuron_id":{"layer_index":0,"neuron_index":5},"scored_explanations":[{"explanation":" commas","scored_simulation":{"scored_sequence_simulations":[],"ev_correlation_score":0.2}}]}"#,
    )
    .unwrap();
    let report =
        explanations::import(&mut store, &root, "blocks.1.mlp.hook_post", None, false).unwrap();
    assert_eq!((report.imported, report.other_layers), (2, 1));
    let ex = store.explanations("blocks.1.mlp.hook_post", 12).unwrap();
    assert_eq!(ex[0].description, "references to Roman people and places");
    assert_eq!(ex[0].score, Some(0.78));
    assert_eq!(ex[0].origin, "openai");
    assert_eq!(
        store.explanations("blocks.1.mlp.hook_post", 13).unwrap()[0].score,
        None
    );

    // Full-text search, best match first, optionally within one source.
    store
        .set_user_description(sae, 7, "kings and queens, by name")
        .unwrap();
    let hits = store.search("kings", None, 10).unwrap();
    let units: Vec<usize> = hits.iter().map(|h| h.unit).collect();
    assert_eq!(units.len(), 2);
    assert!(units.contains(&1000) && units.contains(&7));
    assert!(
        store
            .search("kings", Some("blocks.0.mlp.hook_post"), 10)
            .unwrap()
            .is_empty()
    );
    let o = dendrite_cli(&["search", out.to_str().unwrap(), "quotation marks", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["unit"], 204);
    assert_eq!(v[0]["source"], sae);
    for key in ["source", "unit", "description", "origin", "score"] {
        assert!(v[0].get(key).is_some(), "{key}");
    }

    // By token: the units whose top examples peak on it.
    let report = store
        .unit_report("blocks.0.mlp.hook_post", 7, Some(1))
        .unwrap();
    let e = &report.examples[0];
    let token = e.tokens[e.max_pos as usize].clone();
    let hits = store.search_token(&token, None, 100).unwrap();
    assert!(
        hits.iter()
            .any(|h| h.source == "blocks.0.mlp.hook_post" && h.unit == 7),
        "{token:?}: {hits:?}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = sample_model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.sqlite");
    let scan = |opts: &ScanOptions| {
        dendrite::describe::scan(&model, opts, &mut |_| {}, &never)
            .unwrap_err()
            .to_string()
    };
    let mut opts = sample_opts(&out);
    opts.hooks = vec!["blocks.*.mlp.nothing".into()];
    let err = scan(&opts);
    assert!(
        err.contains("matches no hook") && err.contains("blocks.0.mlp.hook_post"),
        "{err}"
    );

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"Good text, then \xfe\xff bytes").unwrap();
    let mut opts = sample_opts(&dir.path().join("b.sqlite"));
    opts.corpus = bad;
    let err = scan(&opts);
    assert!(
        err.contains("bad.txt") && err.contains("offset 16"),
        "{err}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut opts = sample_opts(&dir.path().join("c.sqlite"));
    opts.corpus = empty;
    assert!(scan(&opts).contains("no .txt or .jsonl"));

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let mut opts = sample_opts(&dir.path().join("d.sqlite"));
    opts.corpus = short;
    assert!(scan(&opts).contains("no window"), "{}", scan(&opts));

    // An SAE of another model.
    let mut opts = sample_opts(&dir.path().join("e.sqlite"));
    opts.saes = vec![fixtures().join("sae/topk")];
    let err = scan(&opts);
    assert!(err.contains("SAE"), "{err}");

    // A corrupt store, and one locked by a writer.
    let corrupt = dir.path().join("corrupt.sqlite");
    std::fs::write(&corrupt, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&corrupt).err().unwrap().to_string();
    assert!(
        err.contains("corrupt.sqlite") && err.contains("not a Dendrite store"),
        "{err}"
    );
    let mut opts = sample_opts(&corrupt);
    opts.hooks = vec!["blocks.0.mlp.hook_post".into()];
    assert!(scan(&opts).contains("not a Dendrite store"));

    let locked = dir.path().join("locked.sqlite");
    drop(Store::open(&locked).unwrap());
    let holder = rusqlite::Connection::open(&locked).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = Store::open(&locked).err().unwrap().to_string();
    assert!(err.contains("locked"), "{err}");
    holder.execute_batch("ROLLBACK").unwrap();

    // Imports into a source the store does not have list the ones it has.
    let mut opts = sample_opts(&dir.path().join("f.sqlite"));
    opts.saes.clear();
    opts.max_tokens = Some(64);
    dendrite::describe::scan(&model, &opts, &mut |_| {}, &never).unwrap();
    let mut store = Store::open_existing(&dir.path().join("f.sqlite")).unwrap();
    let file = dir.path().join("x.jsonl");
    std::fs::write(
        &file,
        r#"{"modelId": "m", "index": "1", "description": "d"}"#,
    )
    .unwrap();
    let err = explanations::import(&mut store, &file, "sae:nope", None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.1.mlp.hook_post"), "{err}");
    std::fs::write(&file, "not json\n").unwrap();
    let err = explanations::import(&mut store, &file, "blocks.0.mlp.hook_post", None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.jsonl:1"), "{err}");
}

/// `dendrite facets` clusters a unit's top windows from a store scanned with the sample model
/// (the store names the model): every window in exactly one facet, sizes and labels given,
/// the same split again with the same seed, and a given k honoured.
#[test]
fn facets_split_a_units_top_windows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.sqlite");
    dendrite::describe::scan(&sample_model(), &sample_opts(&out), &mut |_| {}, &never).unwrap();
    let store = out.to_str().unwrap();
    let facets = |k: Option<&str>| {
        let mut args = vec![
            "facets",
            store,
            "--source",
            "blocks.1.mlp.hook_post",
            "--unit",
            "3",
            "--json",
        ];
        if let Some(k) = k {
            args.extend(["--k", k]);
        }
        let o = dendrite_cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = facets(None);
    let report = dendrite::describe::store::Store::open_existing(&out)
        .unwrap()
        .unit_report("blocks.1.mlp.hook_post", 3, None)
        .unwrap();
    let positive = report.examples.iter().filter(|e| e.max_act > 0.0).count();
    assert!(positive >= 3, "the unit needs a few windows");
    let list = v["facets"].as_array().unwrap();
    let k = v["k"].as_u64().unwrap() as usize;
    assert_eq!(list.len(), k);
    assert!((2..=6).contains(&k), "{v}");
    let mut windows: Vec<u64> = list
        .iter()
        .flat_map(|f| {
            f["windows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_u64().unwrap())
        })
        .collect();
    assert_eq!(windows.len(), positive);
    windows.sort_unstable();
    windows.dedup();
    assert_eq!(windows.len(), positive, "each window in one facet");
    for f in list {
        assert_eq!(
            f["size"].as_u64().unwrap() as usize,
            f["windows"].as_array().unwrap().len()
        );
        assert!(f["label"].as_str().unwrap().contains('×'));
    }
    assert_eq!(v["hook"], "blocks.1.hook_resid_post");
    assert_eq!(facets(None), v, "seeded");
    assert_eq!(facets(Some("2"))["k"], 2);
}
