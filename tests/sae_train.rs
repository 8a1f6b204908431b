//! TopK SAE training (`dendrite::sae::train`): a tiny run on the tiny GPT-2 fixture learns,
//! keeps its decoder rows unit-norm and saves an SAELens directory that loads back exactly; bad
//! inputs are clear errors; the shipped sample SAE fits the embedded sample model and
//! reconstructs held-out Shakespeare.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use common::fixtures;
use dendrite::sae::train::{
    Cancelled, TrainOptions, evaluate, hook_activations, init_params, train,
};
use dendrite::sae::{self, Activation};

const HOOK: &str = "blocks.0.hook_resid_post";

fn tiny() -> PathBuf {
    fixtures().join("tiny/gpt2")
}

/// A small corpus file: varied sentences, so activations are not all alike.
fn corpus(dir: &std::path::Path) -> PathBuf {
    let words = [
        "the", "king", "of", "Britain", "sleeps", "while", "a", "queen", "plots", "and", "her",
        "son", "rides", "to", "Rome", "with", "gold", "rings", "night", "falls",
    ];
    let mut rng = dendrite::rng::Rng::new(5);
    let mut text = String::new();
    for line in 0..400 {
        for _ in 0..6 + line % 5 {
            text.push_str(words[rng.below(words.len())]);
            text.push(' ');
        }
        text.push_str(".\n");
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn tiny_opts(dir: &std::path::Path) -> TrainOptions {
    TrainOptions {
        hook: HOOK.into(),
        corpus: corpus(dir),
        out: dir.join("sae"),
        k: 4,
        width: 128,
        steps: 120,
        batch: 128,
        lr: 5e-3,
        seed: 1,
        context: Some(32),
        buffer_rows: 4096,
        log_every: 10,
        eval_tokens: 1000,
        // Short, so that some latents count as dead and AuxK runs.
        dead_window_tokens: Some(256),
        ..TrainOptions::default()
    }
}

#[test]
fn tiny_topk_sae_learns_and_saves_what_it_trained() {
    let dir = tempfile::tempdir().unwrap();
    let opts = tiny_opts(dir.path());
    let (mut calls, mut aux_steps) = (0, 0);
    let (trained, report) = train(&tiny(), &opts, &mut |p| {
        calls += 1;
        aux_steps += usize::from(p.aux_loss > 0.0);
        assert!(p.l0 <= 4.0 + 1e-9 && p.fve.is_finite() && p.tokens_per_s > 0.0);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(calls, opts.steps);
    assert!(aux_steps > 0, "AuxK never ran");
    assert_eq!(report.tokens_seen, opts.steps * opts.batch);

    // The loss goes down.
    let first = report.curves.first().unwrap().loss;
    let last = report.curves.last().unwrap().loss;
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    assert!(
        report.eval.fve > 0.3 && report.eval.l0 <= 4.0,
        "{:?}",
        report.eval
    );

    // Decoder rows are unit-norm after training.
    let p = trained.params();
    for row in p.w_dec.chunks_exact(trained.cfg.d_in) {
        let norm = row.iter().map(|w| w * w).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row norm {norm}");
    }

    // The saved directory loads back with the same parameters and encodes identically.
    let loaded = sae::open(&opts.out).unwrap();
    assert_eq!(loaded.cfg.architecture, "topk");
    assert_eq!(loaded.cfg.activation, Activation::TopK { k: 4 });
    assert_eq!(loaded.cfg.hook_name, HOOK);
    assert_eq!((loaded.cfg.d_in, loaded.cfg.d_sae), (32, 128));
    let q = loaded.params();
    assert_eq!(p.w_enc, q.w_enc);
    assert_eq!(p.b_enc, q.b_enc);
    assert_eq!(p.w_dec, q.w_dec);
    assert_eq!(p.b_dec, q.b_dec);
    let model = dendrite::model::open(tiny()).unwrap();
    loaded.check_fits(&model.transformer, "tiny").unwrap();
    let text = vec!["the queen of Rome rides with gold while the king sleeps".to_string()];
    let (x, n) = hook_activations(&model, HOOK, &text, 32, 100).unwrap();
    assert!(n > 5);
    let a = trained.encode(&x, n).unwrap();
    let b = loaded.encode(&x, n).unwrap();
    assert_eq!(a.features, b.features);
    // The report's held-out numbers are the inference path's.
    let e = evaluate(&loaded, &x, n).unwrap();
    assert!(e.l0 <= 4.0 && e.fve.is_finite());

    // Training densities as SAELens writes them: per latent log10(frequency + 1e-10) over the
    // last window; the frequencies sum to the mean number of latents firing per token, at
    // most k.
    let density = loaded.log10_density().expect("sparsity.safetensors");
    assert_eq!(density, trained.log10_density().unwrap());
    assert_eq!(density.len(), 128);
    let firing_per_token: f64 = density.iter().map(|&d| 10f64.powf(d as f64)).sum();
    assert!(
        (2.0..=4.0 + 1e-3).contains(&firing_per_token),
        "{firing_per_token}"
    );

    for file in [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "training.json",
        "training_curves.png",
    ] {
        assert!(opts.out.join(file).exists(), "{file} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(opts.out.join("training.json")).unwrap())
            .unwrap();
    assert!(json["eval"]["fve"].as_f64().is_some());
    assert!(json["curves"].as_array().is_some_and(|c| c.len() >= 10));
}

#[test]
fn init_sets_b_dec_to_the_data_mean_and_tied_unit_directions() {
    let (n, d, m) = (5, 3, 8);
    let rows: Vec<f32> = (0..n * d)
        .map(|i| (i as f32 * 0.7).sin() * 3.0 + 1.0)
        .collect();
    let p = init_params(&rows, n, d, m, 9);
    for i in 0..d {
        let mean = (0..n).map(|t| rows[t * d + i] as f64).sum::<f64>() / n as f64;
        assert!((p.b_dec[i] as f64 - mean).abs() < 1e-6);
    }
    assert_eq!(p.b_enc, vec![0.0; m]);
    for j in 0..m {
        let row = &p.w_dec[j * d..(j + 1) * d];
        let norm = row.iter().map(|w| w * w).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        for (i, w) in row.iter().enumerate() {
            assert_eq!(p.w_enc[i * m + j], *w, "W_enc = W_decᵀ");
        }
    }
    // Seeded.
    assert_eq!(init_params(&rows, n, d, m, 9).w_dec, p.w_dec);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_opts(dir.path());
    let run = |opts: TrainOptions| {
        train(&tiny(), &opts, &mut |_| ControlFlow::Continue(()))
            .err()
            .map(|e| format!("{e:#}"))
            .expect("an error")
    };
    let e = run(TrainOptions {
        hook: "blocks.7.hook_resid_post".into(),
        ..base.clone()
    });
    assert!(e.contains("not in model"), "{e}");
    let e = run(TrainOptions {
        k: 129,
        ..base.clone()
    });
    assert!(e.contains("k = 129"), "{e}");
    let e = run(TrainOptions {
        corpus: dir.path().join("nope.txt"),
        ..base.clone()
    });
    assert!(e.contains("does not exist"), "{e}");

    // Cancelling returns `Cancelled` and writes nothing.
    let err = train(&tiny(), &base, &mut |p| {
        if p.step == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .err()
    .unwrap();
    assert_eq!(err.downcast_ref::<Cancelled>().map(|c| c.step), Some(3));
    assert!(!base.out.exists());
}

#[test]
fn cli_rejects_other_architectures_and_missing_corpora() {
    let bin = env!("CARGO_BIN_EXE_dendrite");
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path());
    let out = std::process::Command::new(bin)
        .args([
            "train-sae",
            tiny().to_str().unwrap(),
            "--hook",
            HOOK,
            "--corpus",
        ])
        .arg(&c)
        .args(["--arch", "jumprelu", "--k", "4", "--width", "64", "--out"])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only topk"), "{err}");
    assert!(!err.contains("panicked"));
    let out = std::process::Command::new(bin)
        .args(["train-sae", tiny().to_str().unwrap(), "--hook", HOOK])
        .args([
            "--corpus",
            "/nonexistent/corpus",
            "--k",
            "4",
            "--width",
            "64",
            "--out",
        ])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// The shipped sample SAE (`sample_models/shakespeare-gpt2-relu-sae`) on held-out Shakespeare
/// (`tests/fixtures/text/cymbeline_heldout.txt`, a play of the validation split).
#[test]
fn sample_sae_fits_the_sample_model_and_reconstructs_held_out_text() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample_models/shakespeare-gpt2-relu-sae");
    let sae = sae::open(&dir).unwrap();
    assert_eq!(sae.cfg.hook_name, HOOK);
    let model = dendrite::model::open(dendrite::sample::path().unwrap()).unwrap();
    sae.check_fits(&model.transformer, &model.info.name)
        .unwrap();
    let Activation::TopK { k } = sae.cfg.activation else {
        panic!("not a TopK SAE: {:?}", sae.cfg.activation);
    };
    assert!(k <= 32);
    let text = std::fs::read_to_string(fixtures().join("text/cymbeline_heldout.txt")).unwrap();
    let context = dendrite::sae::train::context_for(&model, None).unwrap();
    let (x, n) = hook_activations(&model, HOOK, &[text], context, usize::MAX).unwrap();
    assert!(n > 2000, "{n} tokens");
    let e = evaluate(&sae, &x, n).unwrap();
    assert!(e.fve >= 0.8 && e.l0 <= 32.0, "{e:?}");
}
