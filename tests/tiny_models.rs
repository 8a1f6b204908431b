//! Every architecture against HF transformers on tiny random checkpoints
//! (`tests/fixtures/tiny/*`, made by `scripts/make_fixtures.py`).

mod common;

use common::{clamp_spec, fixtures, load_reference, max_abs_diff};
use dendrite::model::{self, AblationMode, HookSpec, Intervention, NoObserver};

const ARCHS: &[&str] = &["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"];
const TOL: f32 = 1e-4;

fn token_batch(
    reference: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Vec<Vec<u32>> {
    let ids = reference["input_ids"].to_vec2::<i64>().unwrap();
    ids.into_iter()
        .map(|row| row.into_iter().map(|i| i as u32).collect())
        .collect()
}

#[test]
fn logits_and_hooks_match_hf() {
    for arch in ARCHS {
        let dir = fixtures().join("tiny").join(arch);
        let model = model::open(&dir).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let reference = load_reference(&dir.join("reference.safetensors"));
        let tokens = token_batch(&reference);
        let spec = HookSpec::capture([
            "blocks.*.hook_resid_post",
            "blocks.*.mlp.hook_post",
            "blocks.*.attn.hook_z",
            "blocks.*.attn.hook_pattern",
        ]);
        let out = model
            .transformer
            .forward(&tokens, &spec, &mut NoObserver)
            .unwrap();
        let diff = max_abs_diff(&out.logits, &reference["logits"]);
        assert!(diff <= TOL, "{arch}: logits differ by {diff}");
        for (name, expected) in &reference {
            if !name.starts_with("blocks.") {
                continue;
            }
            let ours = out
                .captures
                .get(name)
                .unwrap_or_else(|| panic!("{arch}: {name} not captured"));
            let diff = max_abs_diff(&ours.contiguous().unwrap(), expected);
            assert!(diff <= TOL, "{arch}: {name} differs by {diff}");
        }
    }
}

#[test]
fn interventions_match_hf() {
    for arch in ARCHS {
        let dir = fixtures().join("tiny").join(arch);
        let model = model::open(&dir).unwrap();
        let reference = load_reference(&dir.join("reference.safetensors"));
        let tokens = token_batch(&reference);
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let clamp = &cases["clamp"];
        let spec = clamp_spec(clamp);
        let out = model
            .transformer
            .forward(&tokens, &spec, &mut NoObserver)
            .unwrap();
        let diff = max_abs_diff(&out.logits, &reference["clamp.logits"]);
        assert!(diff <= TOL, "{arch}: clamped logits differ by {diff}");
        assert!(
            max_abs_diff(&out.logits, &reference["logits"]) > 1e-3,
            "{arch}: clamp had no effect"
        );

        let ablate = &cases["ablate_head"];
        let spec = HookSpec::default().with_intervention(Intervention::ablate_head(
            ablate["layer"].as_u64().unwrap() as usize,
            ablate["head"].as_u64().unwrap() as usize,
            AblationMode::Zero,
        ));
        let out = model
            .transformer
            .forward(&tokens, &spec, &mut NoObserver)
            .unwrap();
        let diff = max_abs_diff(&out.logits, &reference["ablate.logits"]);
        assert!(diff <= TOL, "{arch}: ablated logits differ by {diff}");
    }
}

#[test]
fn sharded_checkpoint_opens_like_a_single_file() {
    let src = fixtures().join("tiny/llama");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let all =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&tensors, tmp.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let single = model::open(&src).unwrap();
    let sharded = model::open(tmp.path()).unwrap();
    let tokens = vec![vec![1, 2, 3, 4, 5]];
    let a = single
        .transformer
        .forward(&tokens, &HookSpec::default(), &mut NoObserver)
        .unwrap();
    let b = sharded
        .transformer
        .forward(&tokens, &HookSpec::default(), &mut NoObserver)
        .unwrap();
    assert_eq!(max_abs_diff(&a.logits, &b.logits), 0.0);
    assert_eq!(single.info.n_params, sharded.info.n_params);
}

/// The pruning slider's incremental pruner gives exactly one-shot magnitude pruning's weights
/// and report (per matrix and global) at every sparsity, moving up and down, on every
/// architecture; a clone of its
/// model taken before a move keeps the weights it had, and its masked views run the same
/// forward pass as the pruned weights written out.
#[test]
fn the_incremental_pruner_equals_one_shot_magnitude_pruning() {
    use dendrite::model::Transformer;
    use dendrite::model::prune::{MagnitudePruner, PruneMethod, PruneScope, prune};
    let weights = |t: &Transformer| -> Vec<Vec<f32>> {
        t.blocks
            .iter()
            .flat_map(|b| [&b.attn.qkv, &b.attn.o, &b.mlp.w_in, &b.mlp.down])
            .map(|l| (0..l.weight.rows()).flat_map(|r| l.weight.row(r)).collect())
            .collect()
    };
    for arch in ARCHS {
        let dense = model::open(fixtures().join("tiny").join(arch)).unwrap();
        let t = &dense.transformer;
        for scope in PruneScope::ALL {
            let mut pruner = MagnitudePruner::new(t, scope).unwrap();
            assert_eq!(weights(pruner.model()), weights(t), "{arch}: starts dense");
            let mut before = None;
            let moves = [0.5, 0.2, 0.9, 0.0, 0.37, 1.0, 0.63]
                .map(|s| (PruneMethod::Magnitude, s))
                .into_iter()
                .chain([0.3, 0.81, 0.0, 1.0, 0.45].map(|s| (PruneMethod::MagnitudeGlobal, s)));
            for (method, s) in moves {
                let held = pruner.model().clone();
                let report = pruner.set_sparsity(t, method, s).unwrap();
                let (expected, expected_report) = prune(t, method, scope, s).unwrap();
                assert_eq!(
                    weights(pruner.model()),
                    weights(&expected),
                    "{arch} {scope:?} {method} at {s}"
                );
                assert_eq!(report, expected_report, "{arch} {scope:?} {method} at {s}");
                // The masked matmul gives what the written-out pruned weights give.
                let tokens = vec![vec![1u32, 5, 9, 2, 7, 3, 11, 4]];
                let run = |t: &Transformer| {
                    t.forward(&tokens, &HookSpec::default(), &mut NoObserver)
                        .unwrap()
                        .logits
                };
                assert_eq!(
                    max_abs_diff(&run(pruner.model()), &run(&expected)),
                    0.0,
                    "{arch} {scope:?} {method} at {s}: logits"
                );
                if let Some(w) = before.take() {
                    assert_eq!(weights(&held), w, "{arch}: a held clone is not changed");
                }
                before = Some(weights(pruner.model()));
            }
        }
    }
}
