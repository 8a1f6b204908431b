//! A changed intervention reruns only from the earliest affected layer (and, when it touches
//! only positions ≥ p, only those rows), and gives what a full rerun gives.

mod common;

use common::{fixtures, max_abs_diff, real_model};
use dendrite::model::{
    self, AblationMode, HookSpec, Intervention, LayerDone, LayerObserver, ModelError, NoObserver,
    PatternMode, ValueOp,
};

fn clamp(layer: usize, value: f32) -> Intervention {
    Intervention::neurons(
        format!("blocks.{layer}.mlp.hook_post"),
        vec![7],
        ValueOp::Set(value),
    )
}

fn check_incremental(model: &model::Model, tokens: Vec<Vec<u32>>, layer: usize) {
    let t = &model.transformer;
    let capture = HookSpec::capture(["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"]);
    let mut cache = None;
    let first = t
        .forward_cached(&tokens, &capture, &mut cache, &mut NoObserver)
        .unwrap();
    assert_eq!(first.recomputed_from, -1);

    let steps = [
        capture.clone().with_intervention(clamp(layer, 10.0)),
        capture.clone().with_intervention(clamp(layer, -3.0)),
        capture
            .clone()
            .with_intervention(clamp(layer, -3.0))
            .with_intervention(Intervention::ablate_head(layer + 1, 0, AblationMode::Mean)),
        capture
            .clone()
            .with_intervention(clamp(layer, -3.0))
            .with_intervention(Intervention::pattern(
                layer + 1,
                1,
                PatternMode::PreviousToken { strength: 0.9 },
            )),
        capture.clone(),
    ];
    for spec in &steps {
        let incremental = t
            .forward_cached(&tokens, spec, &mut cache, &mut NoObserver)
            .unwrap();
        assert!(
            incremental.recomputed_from >= layer as isize,
            "recomputed from {}",
            incremental.recomputed_from
        );
        let full = t.forward(&tokens, spec, &mut NoObserver).unwrap();
        let diff = max_abs_diff(&incremental.logits, &full.logits);
        assert!(
            diff <= 1e-5,
            "incremental differs from full rerun by {diff}"
        );
        assert_eq!(
            incremental.captures.keys().collect::<Vec<_>>(),
            full.captures.keys().collect::<Vec<_>>()
        );
        for (name, tensor) in &full.captures {
            let diff = max_abs_diff(
                &incremental.captures[name].contiguous().unwrap(),
                &tensor.contiguous().unwrap(),
            );
            assert!(diff <= 1e-5, "{name} differs by {diff}");
        }
    }
    // New tokens mean a full pass.
    let other: Vec<Vec<u32>> = tokens
        .iter()
        .map(|r| r.iter().map(|&x| (x + 1) % 200).collect())
        .collect();
    let out = t
        .forward_cached(&other, &capture, &mut cache, &mut NoObserver)
        .unwrap();
    assert_eq!(out.recomputed_from, -1);
}

#[test]
fn incremental_equals_full_rerun_on_tiny_models() {
    for arch in ["gpt2", "llama", "gpt_neox", "gemma3"] {
        let model = model::open(fixtures().join("tiny").join(arch)).unwrap();
        check_incremental(
            &model,
            vec![(0..12).map(|i| (i * 7 % 50) as u32).collect()],
            0,
        );
    }
}

#[test]
fn incremental_equals_full_rerun_on_smollm2() {
    let model = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let tokens = vec![
        model
            .encode(
                "The capital of France is Paris, and the capital of Italy is",
                false,
            )
            .unwrap(),
    ];
    check_incremental(&model, tokens.clone(), 15);
    check_position_incremental(&model, tokens, 15);
}

struct Recorder {
    layers: Vec<usize>,
    cancel_after: Option<usize>,
}

impl LayerObserver for Recorder {
    fn layer_done(&mut self, done: &LayerDone<'_>) {
        assert!(
            done.captures
                .contains_key(&format!("blocks.{}.hook_resid_post", done.layer))
        );
        self.layers.push(done.layer);
    }
    fn is_cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.layers.len() >= n)
    }
}

#[test]
fn layers_stream_in_order_and_cancel_between_layers() {
    let model = model::open(fixtures().join("tiny/llama")).unwrap();
    let t = &model.transformer;
    let tokens = vec![vec![1, 2, 3, 4]];
    let spec = HookSpec::capture(["blocks.*.hook_resid_post"]);
    let mut cache = None;
    let mut rec = Recorder {
        layers: vec![],
        cancel_after: None,
    };
    t.forward_cached(&tokens, &spec, &mut cache, &mut rec)
        .unwrap();
    assert_eq!(rec.layers, vec![0, 1]);

    // Cancelled after the first layer: an error, and the previous cache is kept intact.
    let changed = spec.clone().with_intervention(clamp(0, 4.0));
    let mut rec = Recorder {
        layers: vec![],
        cancel_after: Some(1),
    };
    let e = t
        .forward_cached(&tokens, &changed, &mut cache, &mut rec)
        .err()
        .unwrap();
    assert!(matches!(e, ModelError::Cancelled));
    assert_eq!(rec.layers, vec![0]);
    let again = t
        .forward_cached(&tokens, &spec, &mut cache, &mut NoObserver)
        .unwrap();
    assert_eq!(
        again.recomputed_from, 3,
        "nothing reruns for an unchanged spec, not even the unembedding"
    );
    assert_eq!(again.recomputed_from_position, tokens[0].len());
    let full = t.forward(&tokens, &spec, &mut NoObserver).unwrap();
    assert!(max_abs_diff(&again.logits, &full.logits) <= 1e-6);
}

/// Interventions on one hook apply in order: reordering them is a change.
#[test]
fn reordering_interventions_on_one_hook_reruns() {
    let model = model::open(fixtures().join("tiny/llama")).unwrap();
    let t = &model.transformer;
    let tokens = vec![vec![5, 6, 7, 8]];
    let set = Intervention::neurons("blocks.1.mlp.hook_post", vec![2], ValueOp::Set(5.0));
    let scale = Intervention::neurons("blocks.1.mlp.hook_post", vec![2], ValueOp::Scale(2.0));
    let a = HookSpec::default()
        .with_intervention(set.clone())
        .with_intervention(scale.clone());
    let b = HookSpec::default()
        .with_intervention(scale)
        .with_intervention(set);
    let mut cache = None;
    t.forward_cached(&tokens, &a, &mut cache, &mut NoObserver)
        .unwrap();
    let reordered = t
        .forward_cached(&tokens, &b, &mut cache, &mut NoObserver)
        .unwrap();
    assert_eq!(reordered.recomputed_from, 1);
    let full = t.forward(&tokens, &b, &mut NoObserver).unwrap();
    assert!(max_abs_diff(&reordered.logits, &full.logits) <= 1e-6);
}

/// A change confined to positions ≥ p reruns only those rows of the affected layers, and
/// gives what a full rerun gives (every capture, logits at every position).
fn check_position_incremental(model: &model::Model, tokens: Vec<Vec<u32>>, layer: usize) {
    let t = &model.transformer;
    let n = tokens[0].len();
    let capture = HookSpec::capture([
        "blocks.*.hook_resid_post",
        "blocks.*.mlp.hook_post",
        "blocks.*.attn.hook_pattern",
        "blocks.*.attn.hook_k",
        "ln_final.hook_normalized",
    ]);
    let at = |value: f32, positions: Vec<usize>| clamp(layer, value).at_positions(positions);
    let mut cache = None;
    t.forward_cached(&tokens, &capture, &mut cache, &mut NoObserver)
        .unwrap();
    // (spec, first position expected to be recomputed; 0 = every position).
    let steps = [
        (
            capture.clone().with_intervention(at(10.0, vec![n - 1])),
            n - 1,
        ),
        (
            capture.clone().with_intervention(at(-4.0, vec![n - 1])),
            n - 1,
        ),
        // Moving the clamp earlier reruns from the earlier of the two positions.
        (
            capture.clone().with_intervention(at(-4.0, vec![5, n - 2])),
            5,
        ),
        // An unchanged clamp stays; a new one later in the sequence reruns only its rows.
        (
            capture
                .clone()
                .with_intervention(at(-4.0, vec![5, n - 2]))
                .with_intervention(
                    Intervention::pattern(
                        layer + 1,
                        0,
                        PatternMode::PreviousToken { strength: 0.7 },
                    )
                    .at_positions(vec![n - 3, n - 1]),
                ),
            n - 3,
        ),
        // Mean ablation mixes positions: every row reruns.
        (
            capture
                .clone()
                .with_intervention(at(-4.0, vec![5, n - 2]))
                .with_intervention(
                    Intervention::ablate_head(layer + 1, 1, AblationMode::Mean)
                        .at_positions(vec![n - 1]),
                ),
            0,
        ),
        // A clamp at every position reruns every row.
        (capture.clone().with_intervention(clamp(layer, 2.0)), 0),
        (capture.clone(), 0),
    ];
    for (spec, expected_first) in &steps {
        let incremental = t
            .forward_cached(&tokens, spec, &mut cache, &mut NoObserver)
            .unwrap();
        assert_eq!(
            incremental.recomputed_from_position, *expected_first,
            "{:?}",
            spec.interventions
        );
        let full = t.forward(&tokens, spec, &mut NoObserver).unwrap();
        let diff = max_abs_diff(&incremental.logits, &full.logits);
        assert!(diff <= 1e-5, "logits differ from a full rerun by {diff}");
        assert_eq!(
            incremental.captures.keys().collect::<Vec<_>>(),
            full.captures.keys().collect::<Vec<_>>()
        );
        for (name, tensor) in &full.captures {
            let mine = &incremental.captures[name];
            assert_eq!(mine.dims(), tensor.dims(), "{name}");
            let diff = max_abs_diff(&mine.contiguous().unwrap(), &tensor.contiguous().unwrap());
            assert!(diff <= 1e-5, "{name} differs by {diff}");
        }
    }
}

#[test]
fn position_incremental_equals_full_rerun_on_tiny_models() {
    for arch in ["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"] {
        let model = model::open(fixtures().join("tiny").join(arch)).unwrap();
        check_position_incremental(
            &model,
            vec![(0..12).map(|i| (i * 7 % 50) as u32).collect()],
            0,
        );
    }
}

/// A rerun of only the last rows that is cancelled half-way leaves the cache whole: its keys
/// and values are taken for the rerun and must be put back, so the next position-incremental
/// pass still equals a full rerun.
#[test]
fn cancelled_position_rerun_keeps_the_cache() {
    let model = model::open(fixtures().join("tiny/llama")).unwrap();
    let t = &model.transformer;
    let tokens = vec![(0..12).map(|i| (i * 7 % 50) as u32).collect::<Vec<u32>>()];
    let n = tokens[0].len();
    let capture = HookSpec::capture(["blocks.*.hook_resid_post", "blocks.*.attn.hook_k"]);
    let mut cache = None;
    t.forward_cached(&tokens, &capture, &mut cache, &mut NoObserver)
        .unwrap();
    let at_last = |value: f32| {
        capture
            .clone()
            .with_intervention(clamp(0, value).at_positions(vec![n - 1]))
    };
    let mut rec = Recorder {
        layers: vec![],
        cancel_after: Some(1),
    };
    let e = t
        .forward_cached(&tokens, &at_last(7.0), &mut cache, &mut rec)
        .err()
        .unwrap();
    assert!(matches!(e, ModelError::Cancelled));
    assert_eq!(rec.layers, vec![0]);
    for value in [7.0, -3.0] {
        let spec = at_last(value);
        let incremental = t
            .forward_cached(&tokens, &spec, &mut cache, &mut NoObserver)
            .unwrap();
        assert_eq!(incremental.recomputed_from_position, n - 1);
        let full = t.forward(&tokens, &spec, &mut NoObserver).unwrap();
        assert!(max_abs_diff(&incremental.logits, &full.logits) <= 1e-5);
        for (name, tensor) in &full.captures {
            let mine = &incremental.captures[name];
            let diff = max_abs_diff(&mine.contiguous().unwrap(), &tensor.contiguous().unwrap());
            assert!(diff <= 1e-5, "{name} differs by {diff}");
        }
    }
}

/// A position rerun writes its rows into the cached tensors in place: a clone of the cache
/// taken before it keeps the earlier pass's values, and a rerun on that clone still equals a
/// full pass.
#[test]
fn a_cloned_cache_keeps_its_rows_when_the_original_reruns_positions() {
    let model = model::open(fixtures().join("tiny/llama")).unwrap();
    let t = &model.transformer;
    let tokens = vec![(0..12).map(|i| (i * 5 % 50) as u32).collect::<Vec<u32>>()];
    let n = tokens[0].len();
    let capture = HookSpec::capture(["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post"]);
    let at_last = |value: f32| {
        capture
            .clone()
            .with_intervention(clamp(0, value).at_positions(vec![n - 1]))
    };
    let mut cache = None;
    t.forward_cached(&tokens, &at_last(2.0), &mut cache, &mut NoObserver)
        .unwrap();
    let mut kept = cache.clone();
    let before: Vec<(String, Vec<f32>)> = cache
        .as_ref()
        .unwrap()
        .captures()
        .iter()
        .map(|(name, x)| (name.clone(), x.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let changed = t
        .forward_cached(&tokens, &at_last(-9.0), &mut cache, &mut NoObserver)
        .unwrap();
    assert_eq!(changed.recomputed_from_position, n - 1);
    let clone_captures = kept.as_ref().unwrap().captures();
    for (name, values) in &before {
        let now: Vec<f32> = clone_captures[name]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&now, values, "{name} changed in the clone");
    }
    // The original's rows did change (the rerun wrote them).
    let post = "blocks.0.mlp.hook_post";
    let original: Vec<f32> = changed.captures[post]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(original, before.iter().find(|(n, _)| n == post).unwrap().1);
    let again = t
        .forward_cached(&tokens, &at_last(4.0), &mut kept, &mut NoObserver)
        .unwrap();
    assert_eq!(again.recomputed_from_position, n - 1);
    let full = t.forward(&tokens, &at_last(4.0), &mut NoObserver).unwrap();
    assert!(max_abs_diff(&again.logits, &full.logits) <= 1e-5);
    for (name, tensor) in &full.captures {
        let diff = max_abs_diff(&again.captures[name], tensor);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
}

/// Logits handed out in blocks (as the worker takes them: no `positions × vocab` tensor kept)
/// are the full pass's, row for row: on a fresh pass (several blocks), on a rerun of the last
/// position (that row alone), on a pass that changes nothing (no rows); and a caller that
/// wants every logit afterwards gets them right from the cache kept without logits.
#[test]
fn logits_in_blocks_equal_every_logit() {
    for arch in ["gpt2", "llama", "gemma3"] {
        let model = model::open(fixtures().join("tiny").join(arch)).unwrap();
        let t = &model.transformer;
        let n = t.dims.n_ctx.min(2 * model::UNEMBED_BLOCK_ROWS + 5);
        let vocab = t.dims.d_vocab;
        let tokens = vec![(0..n).map(|i| (i * 7 % 50) as u32).collect::<Vec<u32>>()];
        let capture = HookSpec::capture(["blocks.*.hook_resid_post"]);
        let at_last = |value: f32| {
            capture
                .clone()
                .with_intervention(clamp(0, value).at_positions(vec![n - 1]))
        };
        let mut cache = None;
        let pass = |spec: &HookSpec, cache: &mut Option<model::ResidCache>| {
            let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
            let mut on_rows = |first: usize, logits: &[f32]| {
                rows.push((first, logits.to_vec()));
                Ok(())
            };
            let out = t
                .forward_cached_with(
                    &tokens,
                    spec,
                    cache,
                    &mut NoObserver,
                    &mut model::Unembed::Blocks(&mut on_rows),
                )
                .unwrap();
            assert!(out.logits.is_none());
            let full = t.forward(&tokens, spec, &mut NoObserver).unwrap();
            let full_logits: Vec<f32> = full.logits.flatten_all().unwrap().to_vec1().unwrap();
            let mut next = out.recomputed_from_position;
            for (first, logits) in &rows {
                assert_eq!(*first, next, "{arch}: blocks out of order");
                let want = &full_logits[first * vocab..first * vocab + logits.len()];
                let diff = want
                    .iter()
                    .zip(logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= 1e-5, "{arch}: rows from {first} differ by {diff}");
                next += logits.len() / vocab;
            }
            assert_eq!(next, n, "{arch}: every recomputed row handed out");
            (out.recomputed_from_position, rows.len())
        };
        let (from, blocks) = pass(&capture, &mut cache);
        assert_eq!((from, blocks), (0, n.div_ceil(model::UNEMBED_BLOCK_ROWS)));
        assert_eq!(pass(&at_last(5.0), &mut cache), (n - 1, 1));
        assert_eq!(pass(&at_last(5.0), &mut cache), (n, 0));
        for spec in [at_last(5.0), at_last(-2.0)] {
            let all = t
                .forward_cached(&tokens, &spec, &mut cache, &mut NoObserver)
                .unwrap();
            let full = t.forward(&tokens, &spec, &mut NoObserver).unwrap();
            assert!(max_abs_diff(&all.logits, &full.logits) <= 1e-5, "{arch}");
        }
    }
}
