//! Sparsity (every method) and the logit lens on SmolLM2 against the same definitions computed
//! from HF transformers' MLP activations and hidden states (`scripts/make_fixtures.py
//! --only sparsity`).

mod common;

use common::{json_ids, real_model, real_reference};
use dendrite::analysis::lens::{LENS_HOOKS, logit_lens};
use dendrite::analysis::sparsity::{Method, measure};
use dendrite::model::{self, HookSpec, NoObserver};

fn reference() -> serde_json::Value {
    real_reference("smollm2_sparsity")
}

#[test]
fn sparsity_matches_hf_for_every_method() {
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = reference();
    let tokens = json_ids(&r["token_ids"]);
    assert_eq!(
        m.encode(r["prompt"].as_str().unwrap(), false).unwrap(),
        tokens
    );
    let methods = r["methods"].as_object().unwrap();
    assert_eq!(methods.len(), 7);
    for (name, rows) in methods {
        let method: Method = name.parse().unwrap();
        let ours = measure(
            &m.transformer,
            &tokens,
            std::slice::from_ref(&tokens),
            method,
            "blocks.*.mlp.hook_post",
            m.tokenizer.first_scored(&tokens),
        )
        .unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(ours.len(), rows.len(), "{name}");
        for (l, (o, row)) in ours.iter().zip(rows).enumerate() {
            let frac = row["frac_active"].as_f64().unwrap();
            assert!(
                (o.frac_active - frac).abs() <= 1e-3,
                "{name} layer {l}: ours {}, HF {frac}",
                o.frac_active
            );
            // Thresholds agree too where the method has a scalar one (CHESS reports τ in the
            // reference only).
            if let (Some(t), Some(expected)) = (o.threshold, row["threshold"].as_f64()) {
                assert!(
                    (t - expected).abs() <= 1e-3 * (1.0 + expected.abs()),
                    "{name} layer {l}: threshold {t} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn logit_lens_matches_hf() {
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = reference();
    let tokens = json_ids(&r["token_ids"]);
    let out = m
        .transformer
        .forward(
            std::slice::from_ref(&tokens),
            &HookSpec::capture(LENS_HOOKS.iter().copied()),
            &mut NoObserver,
        )
        .unwrap();
    let lens = logit_lens(&m.transformer, &out.captures, 0, 5).unwrap();
    let expected = r["lens_top5"].as_array().unwrap();
    assert_eq!(lens.len(), expected.len());
    let mut top1_agree = 0;
    let mut cells = 0;
    for (l, (ours, theirs)) in lens.iter().zip(expected).enumerate() {
        let (ids_ref, probs_ref) = (
            theirs["ids"].as_array().unwrap(),
            theirs["probs"].as_array().unwrap(),
        );
        for (p, cell) in ours.iter().enumerate() {
            let top_ref = ids_ref[p].as_array().unwrap();
            let prob_ref = probs_ref[p].as_array().unwrap();
            // The top-1 probability matches; the ids agree unless two candidates tie closely.
            let (p0, r0) = (cell[0].prob, prob_ref[0].as_f64().unwrap());
            assert!(
                (p0 - r0).abs() <= 1e-3,
                "layer {l} position {p}: {p0} vs {r0}"
            );
            cells += 1;
            if cell[0].id as u64 == top_ref[0].as_u64().unwrap() {
                top1_agree += 1;
            }
        }
    }
    assert!(
        top1_agree * 100 >= cells * 99,
        "{top1_agree}/{cells} top-1 agree"
    );
}

/// CoreInfer's core neurons (definitions §12) on SmolLM2 against the same definition computed
/// from HF transformers' MLP activations (`scripts/make_fixtures.py --only core`). A neuron
/// whose activation is within float noise of another's at the cut can swap places with it, so
/// sets are held to a Jaccard overlap, sizes (which count positive activations) to one.
#[test]
fn core_neurons_match_hf() {
    use dendrite::analysis::core_neurons::{CoreOptions, SentenceRule, jaccard, measure};
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = real_reference("smollm2_core");
    let ids: Vec<Vec<u32>> = r["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(json_ids)
        .collect();
    let prompts = r["prompts"].as_array().unwrap();
    for (text, ids) in prompts.iter().zip(&ids) {
        assert_eq!(&m.encode(text.as_str().unwrap(), false).unwrap(), ids);
    }
    let opts = CoreOptions::default();
    let set = |v: &serde_json::Value| {
        json_ids(v)
            .into_iter()
            .map(|x| x as usize)
            .collect::<Vec<_>>()
    };
    let ours = measure(&m.transformer, &ids[0], "blocks.*.mlp.hook_post", 0, opts).unwrap();
    let other = measure(&m.transformer, &ids[1], "blocks.*.mlp.hook_post", 0, opts).unwrap();
    let variant = measure(
        &m.transformer,
        &ids[0],
        "blocks.*.mlp.hook_post",
        0,
        CoreOptions {
            rule: SentenceRule::Frequency,
            ..opts
        },
    )
    .unwrap();
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(ours.len(), layers.len());
    let mut worst = 1.0f64;
    for (l, row) in layers.iter().enumerate() {
        let hf_core = set(&row["core"]);
        worst = worst.min(jaccard(&ours[l].core.core, &hf_core));
        worst = worst.min(jaccard(&other[l].core.core, &set(&row["compare_core"])));
        worst = worst.min(jaccard(
            &variant[l].core.core,
            &set(&row["core_frequency_variant"]),
        ));
        let hf_jaccard = row["jaccard"].as_f64().unwrap();
        let our_jaccard = jaccard(&ours[l].core.core, &other[l].core.core);
        assert!(
            (our_jaccard - hf_jaccard).abs() <= 0.01,
            "layer {l}: Jaccard ours {our_jaccard}, HF {hf_jaccard}"
        );
        for (t, (core, hf)) in ours[l]
            .core
            .token_cores
            .iter()
            .zip(row["token_cores"].as_array().unwrap())
            .enumerate()
        {
            let hf = set(hf);
            assert!(
                core.len().abs_diff(hf.len()) <= 1,
                "layer {l} token {t}: {} vs HF {}",
                core.len(),
                hf.len()
            );
            let mut a = core.clone();
            let mut b = hf.clone();
            a.sort_unstable();
            b.sort_unstable();
            worst = worst.min(jaccard(&a, &b));
        }
    }
    eprintln!("worst set overlap with HF: {worst:.4}");
    assert!(worst >= 0.98, "worst Jaccard with HF {worst}");
}

/// Activation patching (definitions §16) on SmolLM2 against plain HF hooks doing the same
/// (`scripts/make_fixtures.py --only patching`): every site, both directions for resid_pre,
/// each cell within 1e-3; and the exact cells the definition names.
#[test]
fn patching_matches_hf() {
    use dendrite::analysis::patching::{Direction, PatchRequest, Site, patch};
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = real_reference("smollm2_patching");
    let clean = json_ids(&r["clean_ids"]);
    let corrupt = json_ids(&r["corrupt_ids"]);
    assert_eq!(
        m.encode(r["clean"].as_str().unwrap(), false).unwrap(),
        clean
    );
    assert_eq!(
        m.encode(r["corrupt"].as_str().unwrap(), false).unwrap(),
        corrupt
    );
    let token = |key: &str| {
        let ids = m.encode(r[key].as_str().unwrap(), false).unwrap();
        assert_eq!(ids.len(), 1);
        ids[0]
    };
    let first_differing = clean
        .iter()
        .zip(&corrupt)
        .position(|(a, b)| a != b)
        .unwrap();
    for (key, rows) in r["sites"].as_object().unwrap() {
        let (site, direction) = key.split_once(':').unwrap();
        let site: Site = site.parse().unwrap();
        let direction: Direction = direction.parse().unwrap();
        let result = patch(
            &m.transformer,
            &PatchRequest {
                clean: clean.clone(),
                corrupt: corrupt.clone(),
                answer: token("answer"),
                wrong: token("wrong"),
                site,
                direction,
            },
            &|_, _| true,
        )
        .unwrap();
        for (name, ours) in [
            ("metric_clean", result.metric_clean),
            ("metric_corrupt", result.metric_corrupt),
        ] {
            let hf = r[name].as_f64().unwrap();
            assert!((ours - hf).abs() <= 1e-3, "{name}: ours {ours}, HF {hf}");
        }
        let rows = rows.as_array().unwrap();
        assert_eq!(result.values.len(), rows.len(), "{key}");
        let mut worst = 0f64;
        for (l, (ours, hf)) in result.values.iter().zip(rows).enumerate() {
            let hf = hf.as_array().unwrap();
            assert_eq!(ours.len(), hf.len(), "{key} layer {l}");
            for (c, (o, h)) in ours.iter().zip(hf).enumerate() {
                let h = h.as_f64().unwrap();
                worst = worst.max((o - h).abs());
                assert!(
                    (o - h).abs() <= 1e-3,
                    "{key} layer {l} cell {c}: ours {o}, HF {h}"
                );
                // Under denoising, cells before the first differing token change nothing:
                // exactly 0, as are layer-0 resid_pre cells wherever the tokens agree.
                let unchanged = c < first_differing
                    || (l == 0 && site == Site::ResidPre && clean[c] == corrupt[c]);
                if direction == Direction::Denoise && site != Site::Z && unchanged {
                    assert_eq!(*o, 0.0, "{key} layer {l} cell {c}");
                }
            }
        }
        eprintln!("{key}: worst |ours − HF| = {worst:.2e}");
    }
}

/// Patching a whole layer's resid_pre (every position at once) restores the clean run: the
/// definition's third exact check, through the same intervention path the sweep uses.
#[test]
fn patching_every_position_of_a_layer_restores_the_clean_run() {
    use dendrite::model::hooks::RowEdit;
    use dendrite::model::{Intervention, InterventionKind};
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let clean = m
        .encode(
            "When Mary and John went to the store, John gave a drink to",
            false,
        )
        .unwrap();
    let corrupt = m
        .encode(
            "When Mary and John went to the store, Mary gave a drink to",
            false,
        )
        .unwrap();
    let hook = "blocks.7.hook_resid_pre";
    let clean_out = m
        .transformer
        .forward(
            std::slice::from_ref(&clean),
            &HookSpec::capture([hook]),
            &mut NoObserver,
        )
        .unwrap();
    let values: std::sync::Arc<[f32]> = clean_out.captures[hook]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into();
    let spec = HookSpec::default().with_intervention(Intervention {
        hook: hook.into(),
        positions: None,
        kind: InterventionKind::Rows(RowEdit {
            key: "whole layer".into(),
            edit: std::sync::Arc::new(move |rows: &mut [f32], _| {
                rows.copy_from_slice(&values);
                Ok(())
            }),
        }),
    });
    let patched = m
        .transformer
        .forward(&[corrupt], &spec, &mut NoObserver)
        .unwrap();
    assert_eq!(
        patched.logits_last(0).unwrap(),
        clean_out.logits_last(0).unwrap()
    );
}

/// One-shot pruning (definitions §14) of every block matrix of SmolLM2, per method at three
/// sparsities: the mean loss on a prompt against HF with the same weights removed
/// (`scripts/make_fixtures.py --only pruning`, which draws the random masks from the same
/// seeded stream), and the achieved sparsity exactly.
#[test]
fn pruned_model_losses_match_hf() {
    use dendrite::model::prune::{PruneScope, prune};
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = real_reference("smollm2_pruning");
    let ids = json_ids(&r["token_ids"]);
    assert_eq!(m.encode(r["prompt"].as_str().unwrap(), false).unwrap(), ids);
    let loss = |t: &dendrite::model::Transformer| {
        let out = t
            .forward(
                std::slice::from_ref(&ids),
                &HookSpec::default(),
                &mut NoObserver,
            )
            .unwrap();
        let nll = out.per_token_nll(&ids, 0).unwrap();
        nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64
    };
    let dense = r["dense_mean_loss"].as_f64().unwrap();
    assert!((loss(&m.transformer) - dense).abs() <= 1e-3);
    for case in r["cases"].as_array().unwrap() {
        let method = case["method"].as_str().unwrap().parse().unwrap();
        let s = case["sparsity"].as_f64().unwrap();
        let (pruned, report) = prune(&m.transformer, method, PruneScope::All, s).unwrap();
        let hf_achieved = case["achieved_sparsity"].as_f64().unwrap();
        assert!(
            (report.achieved_sparsity - hf_achieved).abs() < 1e-9,
            "{method} {s}: achieved {} vs HF {hf_achieved}",
            report.achieved_sparsity
        );
        let (ours, hf) = (loss(&pruned), case["mean_loss"].as_f64().unwrap());
        eprintln!("{method} {s}: loss ours {ours:.5}, HF {hf:.5}");
        assert!(
            (ours - hf).abs() <= 1e-3,
            "{method} {s}: loss ours {ours}, HF {hf}"
        );
    }
    // The original is untouched: pruning made a copy.
    assert!((loss(&m.transformer) - dense).abs() <= 1e-3);
}

/// Activation sparsity applied during the forward (definitions §1–5), calibrated on the prompt
/// itself, on SmolLM2 against HF with the same cuts made by hooks (`scripts/make_fixtures.py
/// --only sparsify`): each layer's threshold (to 1e-3 relative), the share of zeros reached
/// (1e-3) and the mean loss (0.05: see below).
#[test]
fn sparsified_forwards_match_hf() {
    use dendrite::analysis::sparsify::{
        LayerRule, SparsifyMethod, achieved_sparsity, calibrate, interventions,
    };
    let m = model::open(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let r = real_reference("smollm2_sparsify");
    let ids = json_ids(&r["token_ids"]);
    let seqs = [ids.clone()];
    for (name, hf) in r["methods"].as_object().unwrap() {
        let method: SparsifyMethod = name.parse().unwrap();
        let rules = calibrate(&m.transformer, method, &seqs).unwrap();
        // The rules are HF's: each layer's CATS t and CETT ε.
        for (l, hf_t) in hf["thresholds"].as_array().unwrap().iter().enumerate() {
            let hf_t = hf_t.as_f64().unwrap();
            let ours = match &rules[l] {
                LayerRule::BelowAbs(t) => t[0] as f64,
                LayerRule::PostBelowAbs(limits) => {
                    let norm = m.transformer.blocks[l].mlp.down.weight.column_norms()[0];
                    limits[0] as f64 * norm as f64
                }
                other => panic!("{name}: {other:?}"),
            };
            assert!(
                (ours - hf_t).abs() <= 1e-3 * hf_t.abs().max(1.0),
                "{name} layer {l}: threshold {ours} vs HF {hf_t}"
            );
        }
        let mut spec = HookSpec::capture(["blocks.*.mlp.hook_post"]);
        spec.interventions = interventions(&m.transformer, &rules, name);
        let out = m
            .transformer
            .forward(std::slice::from_ref(&ids), &spec, &mut NoObserver)
            .unwrap();
        let nll = out.per_token_nll(&ids, 0).unwrap();
        let loss = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
        let sparsity = achieved_sparsity(&m.transformer, &out.captures, 0).unwrap();
        let (hf_loss, hf_sparsity) = (
            hf["mean_loss"].as_f64().unwrap(),
            hf["sparsity"].as_f64().unwrap(),
        );
        eprintln!(
            "{name}: loss {loss:.5} (HF {hf_loss:.5}), sparsity {sparsity:.5} (HF {hf_sparsity:.5})"
        );
        // A cut at a threshold flips values that lie within float noise (or, for CETT, within
        // a step of the 65 536-candidate grid, whose ends come from a quantile) of it, and each
        // flip changes what later layers see: losses agree to a few hundredths, the share cut
        // to 1e-3.
        assert!(
            (loss - hf_loss).abs() <= 0.05,
            "{name}: loss {loss} vs HF {hf_loss}"
        );
        assert!(
            (sparsity - hf_sparsity).abs() <= 1e-3,
            "{name}: sparsity {sparsity} vs HF {hf_sparsity}"
        );
    }
}
