//! The embedded sample model (trained by `dendrite train-sample`): it opens through the
//! ordinary HF-directory path, has induction heads on the probe (`dendrite heads
//! sample_models/… --repeat-len 20 --batch 4 --seed 0`), and its ReLU layers are sparse.

use dendrite::analysis::heads::{repeated_random_tokens, score_heads};
use dendrite::model::{self, HookSpec, NoObserver};

#[test]
fn sample_model_has_induction_heads_and_sparse_relu_layers() {
    let dir = dendrite::sample::path().expect("the embedded sample model is written");
    let model = model::open(&dir).unwrap();
    assert_eq!(model.info.architecture, "gpt2");
    assert!(model.info.dims.n_layers >= 2);

    // The probe `dendrite heads` runs: 4 sequences of 20 random tokens repeated, seed 0.
    let vocab = model.info.dims.d_vocab as u32;
    let tokens = repeated_random_tokens(20, 4, 0, 1, vocab);
    let scores = score_heads(&model.transformer, &tokens, 20, false).unwrap();
    let best = scores
        .induction_score
        .iter()
        .flatten()
        .fold(0f64, |m, &x| m.max(x));
    assert!(best >= 0.5, "best induction score {best:.3} < 0.5");
    assert!(
        scores.first_half_nll - scores.repeated_half_nll >= 2.0,
        "first half {:.2} nats, repeated half {:.2}",
        scores.first_half_nll,
        scores.repeated_half_nll
    );

    // ReLU MLPs on text: a large share of exact zeros (the Lazy Neuron phenomenon).
    let ids = model
        .encode(
            "Now is the winter of our discontent made glorious summer",
            false,
        )
        .unwrap();
    let out = model
        .transformer
        .forward(
            &[ids],
            &HookSpec::capture(["blocks.0.mlp.hook_post"]),
            &mut NoObserver,
        )
        .unwrap();
    let values: Vec<f32> = out.captures["blocks.0.mlp.hook_post"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let zeros = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
    assert!(zeros > 0.5, "only {:.1}% exact zeros", zeros * 100.0);
}

#[test]
fn sample_models_fit_in_ten_megabytes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_models");
    let mut total = 0;
    for entry in walk(&root) {
        total += std::fs::metadata(entry).unwrap().len();
    }
    assert!(
        total <= 10 * 1024 * 1024,
        "sample_models/ holds {total} bytes"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
