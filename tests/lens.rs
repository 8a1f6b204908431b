//! Logit lens and direct logit attribution on every architecture's tiny checkpoint: the lens
//! of the last layer is the model's own prediction, and the attributions sum to the logit.

mod common;

use common::fixtures;
use dendrite::analysis::lens::{
    DLA_HOOKS, LENS_HOOKS, direct_logit_attribution, logit_lens, top_k,
};
use dendrite::model::{self, HookSpec, NoObserver};

const ARCHS: &[&str] = &["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"];

#[test]
fn last_layer_lens_is_the_models_prediction() {
    for arch in ARCHS {
        let m = model::open(fixtures().join("tiny").join(arch)).unwrap();
        let tokens = vec![vec![3u32, 17, 9, 4, 22, 8]];
        let out = m
            .transformer
            .forward(
                &tokens,
                &HookSpec::capture(LENS_HOOKS.iter().copied()),
                &mut NoObserver,
            )
            .unwrap();
        let lens = logit_lens(&m.transformer, &out.captures, 0, 5).unwrap();
        assert_eq!(lens.len(), m.transformer.n_layers());
        let logits: Vec<Vec<f32>> = out.logits.get(0).unwrap().to_vec2().unwrap();
        for (p, row) in logits.iter().enumerate() {
            let expected = top_k(row, 5);
            let got = &lens[lens.len() - 1][p];
            for (e, g) in expected.iter().zip(got) {
                assert_eq!(e.id, g.id, "{arch} position {p}");
                assert!((e.prob - g.prob).abs() < 1e-5, "{arch} position {p}");
            }
        }
        // Earlier layers give a different (usually worse) guess, but a proper distribution.
        let p_sum: f64 = lens[0][0].iter().map(|x| x.prob).sum();
        assert!(p_sum > 0.0 && p_sum <= 1.0 + 1e-9, "{arch}");
    }
}

#[test]
fn attributions_sum_to_the_logit() {
    for arch in ARCHS {
        let m = model::open(fixtures().join("tiny").join(arch)).unwrap();
        let tokens = vec![vec![5u32, 11, 2, 30, 7, 7, 19]];
        let out = m
            .transformer
            .forward(
                &tokens,
                &HookSpec::capture(DLA_HOOKS.iter().copied()),
                &mut NoObserver,
            )
            .unwrap();
        for (position, target) in [(6usize, 3u32), (2, 40)] {
            let dla = direct_logit_attribution(&m.transformer, &out.captures, 0, position, target)
                .unwrap();
            let logit = out
                .logits
                .get(0)
                .unwrap()
                .get(position)
                .unwrap()
                .get(target as usize);
            let logit = logit.unwrap().to_scalar::<f32>().unwrap() as f64;
            assert!(
                (dla.total() - logit).abs() < 1e-3 * (1.0 + logit.abs()),
                "{arch}: components sum to {} but the logit is {logit}",
                dla.total()
            );
            assert!((dla.logit - logit).abs() < 1e-4, "{arch}");
            assert_eq!(dla.heads.len(), m.transformer.n_layers());
            assert_eq!(dla.heads[0].len(), m.info.dims.n_heads);
            assert_eq!(dla.neurons[0].len(), m.info.dims.d_mlp);
            // Heads and neurons both carry part of the logit.
            assert!(
                dla.heads.iter().flatten().any(|&x| x.abs() > 1e-6),
                "{arch}"
            );
            assert!(
                dla.neurons.iter().flatten().any(|&x| x.abs() > 1e-6),
                "{arch}"
            );
        }
        let bad = direct_logit_attribution(&m.transformer, &out.captures, 0, 0, 1 << 30);
        assert!(bad.is_err());
    }
}
