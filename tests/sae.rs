//! SAEs against the reference libraries: every architecture and format in
//! `tests/fixtures/sae/` (made by `scripts/make_sae_fixtures.py` with sae_lens 6.54.12 and
//! eai-sparsify 1.3.3) encodes and reconstructs as the library did; saved SAEs load back
//! identically; SAEs that do not fit a model, and broken files, are clear errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::fixtures;
use dendrite::sae::{self, Activation, Normalization, SaeError, SaeFormat};

fn case(name: &str) -> PathBuf {
    fixtures().join("sae").join(name)
}

fn reference(dir: &Path) -> HashMap<String, Vec<f32>> {
    let file = if dir.is_dir() {
        dir
    } else {
        dir.parent().unwrap()
    };
    let file = if file.join("reference.safetensors").exists() {
        file.join("reference.safetensors")
    } else {
        file.parent().unwrap().join("reference.safetensors")
    };
    candle_core::safetensors::load(&file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

/// Encodes the case's inputs and checks latents and reconstruction against the library's.
fn check(path: &Path, hook: Option<&str>, suffix: &str) -> sae::Sae {
    let sae = sae::open_with_hook(path, hook).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = reference(path);
    let x = &r["x"];
    let n = x.len() / sae.cfg.d_in;
    let (encoded, out) = sae.forward(x, n).unwrap();
    let features = &r[&format!("feature_acts{suffix}")];
    let expected_out = &r[&format!("sae_out{suffix}")];
    let (df, dout) = (
        max_diff(&encoded.features, features),
        max_diff(&out, expected_out),
    );
    assert!(
        df < 1e-5 && dout < 1e-5,
        "{}: latents differ by {df:e}, reconstruction by {dout:e}",
        path.display()
    );
    // Which latents fire must agree exactly, not just their values.
    let active = |f: &[f32]| f.iter().map(|v| *v > 0.0).collect::<Vec<_>>();
    assert_eq!(
        active(&encoded.features),
        active(features),
        "{}",
        path.display()
    );
    sae
}

#[test]
fn every_sae_lens_architecture_matches_sae_lens() {
    for (name, architecture) in [
        ("standard", "standard"),
        ("standard_no_bdec", "standard"),
        ("topk", "topk"),
        ("topk_rescale_dec_norm", "topk"),
        ("jumprelu", "jumprelu"),
        ("gated", "gated"),
        ("transcoder", "transcoder"),
        ("skip_transcoder", "skip_transcoder"),
        ("jumprelu_transcoder", "jumprelu_transcoder"),
        ("jumprelu_skip_transcoder", "jumprelu_skip_transcoder"),
        ("norm_constant_norm_rescale", "standard"),
        ("norm_layer_norm", "standard"),
    ] {
        let sae = check(&case(name), None, "");
        assert_eq!(sae.cfg.format, SaeFormat::SaeLens, "{name}");
        assert_eq!(sae.cfg.architecture, architecture, "{name}");
    }
    let topk = sae::open(case("topk")).unwrap();
    assert_eq!(topk.cfg.activation, Activation::TopK { k: 4 });
    assert_eq!(topk.cfg.hook_name, "blocks.0.hook_mlp_out");
    // Row 6 of the topk case has only 2 positive pre-activations: L0 = 2 < k.
    let r = reference(&case("topk"));
    let encoded = topk.encode(&r["x"], 8).unwrap();
    assert_eq!(encoded.l0()[6], 2);
    assert!(encoded.l0().iter().all(|&l| l <= 4));
    let layer_norm = sae::open(case("norm_layer_norm")).unwrap();
    assert_eq!(layer_norm.cfg.normalization, Normalization::LayerNorm);
    let transcoder = sae::open(case("transcoder")).unwrap();
    assert!(transcoder.cfg.transcoder);
    assert_eq!(transcoder.cfg.hook_name, "blocks.0.ln2.hook_normalized");
    assert_eq!(
        transcoder.cfg.hook_name_out.as_deref(),
        Some("blocks.0.hook_mlp_out")
    );
}

#[test]
fn skip_transcoders_decode_without_the_skip_term() {
    for name in ["skip_transcoder", "jumprelu_skip_transcoder"] {
        let sae = sae::open(case(name)).unwrap();
        let r = reference(&case(name));
        let encoded = sae.encode(&r["x"], 8).unwrap();
        assert!(
            max_diff(&sae.decode(&encoded), &r["decode_out"]) < 1e-5,
            "{name}"
        );
    }
}

#[test]
fn legacy_gemma_scope_and_sparsify_formats_match_their_libraries() {
    let legacy = check(&case("legacy_flat"), None, "");
    assert_eq!(legacy.cfg.format, SaeFormat::SaeLensLegacy);
    assert_eq!(legacy.cfg.hook_name, "blocks.1.hook_resid_pre");
    assert!(
        legacy
            .cfg
            .notes
            .iter()
            .any(|n| n.contains("scaling_factor"))
    );
    let v5 = check(&case("legacy_v5_topk"), None, "");
    assert_eq!(v5.cfg.activation, Activation::TopK { k: 4 });

    // Gemma Scope files do not name their hook outside the release's folder layout.
    let npz = case("gemma_scope").join("params.npz");
    let err = sae::open(&npz).unwrap_err();
    assert!(err.to_string().contains("give the hook"), "{err}");
    let gemma = check(&npz, Some("blocks.0.hook_resid_post"), "");
    assert_eq!(gemma.cfg.format, SaeFormat::GemmaScope);
    assert_eq!(gemma.cfg.activation, Activation::JumpRelu);
    assert!(!gemma.cfg.apply_b_dec_to_input);

    let sparsify = check(&case("sparsify/layers.0"), None, "");
    assert_eq!(sparsify.cfg.format, SaeFormat::Sparsify);
    assert_eq!(sparsify.cfg.hook_name, "blocks.0.hook_resid_post");
    // The run folder holds one SAE per hookpoint: the error names them.
    let err = sae::open(case("sparsify")).unwrap_err();
    assert!(err.to_string().contains("layers.0"), "{err}");
}

#[test]
fn a_training_checkpoints_scaling_factor_is_folded_in() {
    let sae = check(&case("norm_expected_average_only_in"), None, "_folded");
    assert!(
        sae.cfg
            .notes
            .iter()
            .any(|n| n.contains("activation_scaler.json"))
    );
}

#[test]
fn a_saved_sae_loads_back_identically() {
    let out = tempfile::tempdir().unwrap();
    for name in [
        "standard",
        "topk",
        "jumprelu",
        "gated",
        "skip_transcoder",
        "norm_layer_norm",
    ] {
        let sae = sae::open(case(name)).unwrap();
        let dir = out.path().join(name);
        sae::save(&sae, &dir, &sae::SaveMetadata::default()).unwrap();
        let back = sae::open(&dir).unwrap();
        let mut expected = sae.cfg.clone();
        expected.path = dir.clone();
        expected.notes.clear();
        expected.model_name = Some(String::new());
        assert_eq!(back.cfg, expected, "{name}");
        let (a, b) = (sae.params(), back.params());
        assert_eq!(
            (a.w_enc, a.b_enc, a.w_dec, a.b_dec),
            (b.w_enc, b.b_enc, b.w_dec, b.b_dec),
            "{name}"
        );
        assert_eq!(
            (a.threshold, a.gated, a.w_skip),
            (b.threshold, b.gated, b.w_skip),
            "{name}"
        );
    }
}

#[test]
fn training_densities_in_sparsity_safetensors_are_read_written_and_checked() {
    let out = tempfile::tempdir().unwrap();
    let sae = sae::open(case("topk")).unwrap();
    let d_sae = sae.cfg.d_sae;
    assert!(sae.log10_density().is_none());
    let density: Vec<f32> = (0..d_sae).map(|j| -1.0 - j as f32 / d_sae as f32).collect();
    let file = out.path().join("x/sparsity.safetensors");
    let sae = sae.with_log10_density(density.clone(), &file).unwrap();
    let dir = out.path().join("with");
    sae::save(&sae, &dir, &sae::SaveMetadata::default()).unwrap();
    // SAELens' layout: one tensor "sparsity" of d_sae values.
    let raw =
        candle_core::safetensors::load(dir.join("sparsity.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(raw["sparsity"].dims(), [d_sae]);
    assert_eq!(sae::open(&dir).unwrap().log10_density(), Some(&density[..]));

    // Saving an SAE without densities over that folder removes the stale file.
    let plain = sae::open(case("topk")).unwrap();
    sae::save(&plain, &dir, &sae::SaveMetadata::default()).unwrap();
    assert!(!dir.join("sparsity.safetensors").exists());
    assert!(sae::open(&dir).unwrap().log10_density().is_none());

    // A file for another width, or values that are no log10 frequency, are clear errors.
    let write = |values: Vec<f32>| {
        let n = values.len();
        let t = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("sparsity".to_string(), t)]),
            dir.join("sparsity.safetensors"),
        )
        .unwrap();
    };
    write(vec![-2.0; d_sae + 1]);
    let e = sae::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("sparsity.safetensors") && e.contains("sparsity"),
        "{e}"
    );
    assert!(e.contains(&format!("[{}]", d_sae + 1)), "{e}");
    write(vec![3.0; d_sae]);
    let e = sae::open(&dir).err().unwrap().to_string();
    assert!(e.contains("not a log10 frequency"), "{e}");
}

#[test]
fn saes_that_do_not_fit_the_model_are_clear_errors() {
    let model = dendrite::model::open(fixtures().join("tiny/gpt2")).unwrap();
    let t = &model.transformer;
    // The fixtures read the tiny GPT-2's d_model = 32 sites.
    sae::open(case("standard"))
        .unwrap()
        .check_fits(t, "tiny")
        .unwrap();
    sae::open(case("transcoder"))
        .unwrap()
        .check_fits(t, "tiny")
        .unwrap();
    let wrong_hook =
        sae::open_with_hook(case("standard"), Some("blocks.7.hook_resid_post")).unwrap();
    assert!(matches!(
        wrong_hook.check_fits(t, "tiny"),
        Err(SaeError::UnknownHook { .. })
    ));
    // An MLP site of this model is 64 wide: the message names both widths.
    let wrong_width =
        sae::open_with_hook(case("standard"), Some("blocks.0.mlp.hook_post")).unwrap();
    let err = wrong_width.check_fits(t, "tiny").unwrap_err().to_string();
    assert!(
        err.contains("32") && err.contains("64") && err.contains("blocks.0.mlp.hook_post"),
        "{err}"
    );
}

#[test]
fn broken_sae_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["cfg.json", "sae_weights.safetensors"] {
            std::fs::copy(case("standard").join(f), to.join(f)).unwrap();
        }
        to
    };
    // Truncated weights.
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("sae_weights.safetensors")).unwrap();
    std::fs::write(
        truncated.join("sae_weights.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = sae::open(&truncated).unwrap_err();
    assert!(matches!(err, SaeError::Corrupt { .. }), "{err}");
    // A config whose width disagrees with the weights.
    let wrong = copy("wrong_width");
    let cfg = std::fs::read_to_string(wrong.join("cfg.json")).unwrap();
    std::fs::write(
        wrong.join("cfg.json"),
        cfg.replace("\"d_sae\": 64", "\"d_sae\": 65"),
    )
    .unwrap();
    let err = sae::open(&wrong).unwrap_err();
    assert!(matches!(err, SaeError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("W_enc"), "{err}");
    // Not JSON, an unknown architecture, a missing directory, a folder of something else.
    let garbage = copy("garbage");
    std::fs::write(garbage.join("cfg.json"), "{not json").unwrap();
    assert!(matches!(sae::open(&garbage), Err(SaeError::Config { .. })));
    let unknown = copy("unknown");
    let cfg = std::fs::read_to_string(unknown.join("cfg.json")).unwrap();
    std::fs::write(
        unknown.join("cfg.json"),
        cfg.replace("\"standard\"", "\"matching_pursuit\""),
    )
    .unwrap();
    let err = sae::open(&unknown).unwrap_err().to_string();
    assert!(err.contains("matching_pursuit"), "{err}");
    assert!(matches!(
        sae::open(dir.path().join("nope")),
        Err(SaeError::NotFound { .. })
    ));
    assert!(matches!(
        sae::open(fixtures().join("tiny/gpt2")),
        Err(SaeError::UnknownFormat { .. })
    ));
}

#[test]
fn clamping_a_latent_changes_only_its_contribution() {
    use dendrite::model::ValueOp;
    // x' − x = (v − f_j) · W_dec[j] for a plain SAE, × σ under layer-norm normalisation.
    for name in ["standard", "norm_layer_norm", "topk"] {
        let sae = sae::open(case(name)).unwrap();
        let r = reference(&case(name));
        let x = r["x"][..2 * 32].to_vec();
        let encoded = sae.encode(&x, 2).unwrap();
        let j = encoded.active(0)[0].0;
        let mut edited = x.clone();
        sae.edit_latent(&mut edited, 2, j, ValueOp::Set(7.5))
            .unwrap();
        let dir = sae.decoder_direction(j).unwrap();
        for t in 0..2 {
            let f = encoded.row(t)[j];
            let row = &x[t * 32..(t + 1) * 32];
            let sigma = if name == "norm_layer_norm" {
                let mu = row.iter().sum::<f32>() / 32.0;
                (row.iter().map(|v| (v - mu).powi(2)).sum::<f32>() / 31.0).sqrt()
            } else {
                1.0
            };
            for k in 0..32 {
                let expected = row[k] + (7.5 - f) * dir[k] * sigma;
                let got = edited[t * 32 + k];
                assert!(
                    (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                    "{name} t{t} k{k}: {got} vs {expected}"
                );
            }
        }
    }
    let transcoder = sae::open(case("transcoder")).unwrap();
    let mut x = vec![0.5f32; 32];
    assert!(
        transcoder
            .edit_latent(&mut x, 1, 0, ValueOp::Set(1.0))
            .is_err()
    );
}

#[test]
fn corpus_evaluation_is_consistent_with_direct_measurements() {
    use dendrite::sae::eval::{EvalOptions, evaluate};
    use std::ops::ControlFlow;
    use std::sync::Arc;
    let model = dendrite::model::open(fixtures().join("tiny/gpt2")).unwrap();
    let sae = Arc::new(sae::open(case("topk")).unwrap());
    let sequences: Vec<Vec<u32>> = vec![(1..20).collect(), (30..50).rev().collect()];
    let mut seen = Vec::new();
    let report = evaluate(
        &model,
        &sae,
        &sequences,
        &EvalOptions {
            dark_matter_tokens: 100,
        },
        &mut |p| {
            seen.push((p.pass, p.sequences_done));
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(seen.first(), Some(&(1, 0)));
    assert_eq!(seen.last(), Some(&(2, 2)));
    assert_eq!(report.tokens, 39);
    // The clean loss is the model's own mean next-token loss.
    let mut nll = Vec::new();
    for ids in &sequences {
        let out = model
            .transformer
            .forward(
                std::slice::from_ref(ids),
                &dendrite::model::HookSpec::capture(Vec::<String>::new()),
                &mut dendrite::model::NoObserver,
            )
            .unwrap();
        nll.extend(out.per_token_nll(ids, 0).unwrap());
    }
    let clean = nll.iter().map(|v| *v as f64).sum::<f64>() / nll.len() as f64;
    let d = report.downstream.as_ref().unwrap();
    assert_eq!(d.n_predictions, 37);
    assert!(
        (d.ce_clean - clean).abs() < 1e-4,
        "{} vs {clean}",
        d.ce_clean
    );
    // Ablations and the splice change the loss; KL is non-negative.
    assert!(d.ce_sae != d.ce_clean && d.ce_zero_ablation != d.ce_clean);
    assert!(d.kl_sae >= 0.0 && d.kl_zero_ablation > 0.0 && d.kl_mean_ablation > 0.0);
    let recovered = (d.ce_zero_ablation - d.ce_sae) / (d.ce_zero_ablation - d.ce_clean);
    assert!((d.ce_loss_recovered_zero.unwrap() - recovered).abs() < 1e-12);
    // Reconstruction metrics over every token: k = 4 bounds L0; the window is every token.
    let r = report.reconstruction.as_ref().unwrap();
    assert_eq!(r.n_tokens, 39);
    assert!(r.l0.unwrap() <= 4.0 && r.l0.unwrap() > 0.0);
    let firing = report.firing.as_ref().unwrap();
    assert_eq!(firing.n_tokens, 39);
    assert!(report.dark_matter.is_some());
    // Cancelling stops it.
    let err = evaluate(
        &model,
        &sae,
        &sequences,
        &EvalOptions::default(),
        &mut |_| ControlFlow::Break(()),
    );
    assert!(err.is_err());
}

/// SAEs we save load in SAELens itself and reproduce the library's own outputs (the real
/// sae_lens, in the venv `scripts/test.sh` prepares).
#[test]
fn saved_saes_load_in_sae_lens() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let has_sae_lens = std::process::Command::new(&python)
        .args(["-c", "import sae_lens"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_sae_lens,
        "sae_lens is not installed in .cache/venv: run scripts/test.sh (it installs it), or \
         python3 -m venv .cache/venv && .cache/venv/bin/pip install sae-lens==6.54.12"
    );
    let out = tempfile::tempdir().unwrap();
    for name in [
        "topk",
        "gated",
        "jumprelu_skip_transcoder",
        "norm_layer_norm",
    ] {
        let sae = sae::open(case(name)).unwrap();
        let dir = out.path().join(name);
        sae::save(&sae, &dir, &sae::SaveMetadata::default()).unwrap();
        let check = std::process::Command::new(&python)
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sae_lens_check.py"))
            .arg(&dir)
            .args(["--hook", &sae.cfg.hook_name, "--inputs"])
            .arg(case(name).join("reference.safetensors"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
