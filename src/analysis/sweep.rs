//! Loss curves over a sparsity knob. Weight pruning's sweep gives essential sparsity's knee
//! (definitions §14); activation sparsification's sweep gives each method's loss against the
//! sparsity it reaches and the Sparsing Law's PPL-p% point (§1–5). `dendrite prune --sweep`,
//! `dendrite sparsify --ppl-p` and the app's sweep jobs all run these.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::sparsify::{SparsifyMethod, achieved_sparsity, calibrate, interventions};
use crate::model::prune::{MagnitudePruner, PruneMethod, PruneScope, knee, prune};
use crate::model::{BosMode, HookSpec, Model, NoObserver, Transformer};

/// The text a loss is measured on.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossText {
    Prompt {
        text: String,
        bos: BosMode,
    },
    /// The first `tokens` tokens of a text file, in windows of at most 256.
    Corpus {
        path: PathBuf,
        tokens: usize,
    },
}

/// Bytes read from a corpus per token asked for: tokens rarely span more, and a huge file is
/// never read whole.
const BYTES_PER_TOKEN: u64 = 32;

/// The token sequences `text` stands for (a prompt is one; a corpus is cut into windows of at
/// most 256 tokens and the model's context).
pub fn sequences(model: &Model, text: &LossText) -> Result<Vec<Vec<u32>>> {
    let (path, tokens) = match text {
        LossText::Prompt { text, bos } => {
            let ids = model.encode_prompt(text, *bos)?;
            if ids.len() < 2 {
                bail!("the prompt needs at least 2 tokens to have a loss");
            }
            return Ok(vec![ids]);
        }
        LossText::Corpus { path, tokens } => (path, *tokens),
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take((tokens as u64).saturating_mul(BYTES_PER_TOKEN))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    // The cut may split a character: the lossy decoding drops only that one.
    let text = String::from_utf8_lossy(&bytes);
    let mut ids = model.encode(&text, false)?;
    ids.truncate(tokens);
    let window = model.info.dims.n_ctx.clamp(2, 256);
    let seqs: Vec<Vec<u32>> = ids
        .chunks(window)
        .filter(|c| c.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    if seqs.is_empty() {
        bail!("{} has fewer than 2 tokens", path.display());
    }
    Ok(seqs)
}

/// Mean next-token loss (nats) over every predicted token of `seqs`, run with `spec`.
pub fn mean_loss(t: &Transformer, seqs: &[Vec<u32>], spec: &HookSpec) -> Result<f64> {
    Ok(loss_and_sparsity(t, seqs, spec, None)?.0)
}

/// The mean loss, and with `first_scored` the sparsity the pass reached (every layer's
/// `mlp.hook_post` captured, rows before `first_scored(seq)` left out), from one pass per
/// sequence.
fn loss_and_sparsity(
    t: &Transformer,
    seqs: &[Vec<u32>],
    spec: &HookSpec,
    first_scored: Option<FirstScored>,
) -> Result<(f64, f64)> {
    let mut spec = spec.clone();
    if first_scored.is_some() {
        spec.capture = vec!["blocks.*.mlp.hook_post".into()];
    }
    let (mut sum, mut n, mut sparsity) = (0f64, 0usize, 0f64);
    for seq in seqs {
        let out = t.forward(std::slice::from_ref(seq), &spec, &mut NoObserver)?;
        for nll in out.per_token_nll(seq, 0)? {
            sum += nll as f64;
            n += 1;
        }
        if let Some(first) = first_scored {
            sparsity += achieved_sparsity(t, &out.captures, first(seq))?;
        }
    }
    Ok((sum / n.max(1) as f64, sparsity / seqs.len().max(1) as f64))
}

/// The first row of a sequence whose sparsity counts (rows of a BOS are not scored).
pub type FirstScored<'a> = &'a dyn Fn(&[u32]) -> usize;

/// One point of a curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// The knob: the sparsity asked of pruning, a sparsification method's parameter.
    pub parameter: f64,
    /// The sparsity reached (zero weights among the prunable ones; exact zeros in
    /// `mlp.hook_post`).
    pub sparsity: f64,
    pub mean_loss: f64,
}

/// A pruning sweep: the loss at each sparsity and essential sparsity's knee.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PruneSweep {
    pub method: PruneMethod,
    pub scope: PruneScope,
    pub dense_mean_loss: f64,
    pub tokens: usize,
    pub points: Vec<SweepPoint>,
    /// The last swept sparsity within `KNEE_EPSILON` of the dense loss (and every lower one).
    pub knee: Option<f64>,
}

/// Essential sparsity's tolerance: 1 % above the dense loss.
pub const KNEE_EPSILON: f64 = 0.01;

/// How far a sweep has got: `(done, total, what was just measured)`; `Break` stops it.
pub type Step<'a> = dyn FnMut(usize, usize, &str) -> ControlFlow<()> + 'a;

/// Prunes `t` at each of `levels` and measures the loss on `seqs`; `None` when `step` stopped
/// it.
pub fn prune_sweep(
    t: &Transformer,
    method: PruneMethod,
    scope: PruneScope,
    levels: &[f64],
    seqs: &[Vec<u32>],
    step: &mut Step,
) -> Result<Option<PruneSweep>> {
    let total = levels.len() + 1;
    let dense = mean_loss(t, seqs, &HookSpec::default())?;
    if step(1, total, &format!("dense loss {dense:.4}")).is_break() {
        return Ok(None);
    }
    let mut points = Vec::with_capacity(levels.len());
    // Magnitude pruning orders each matrix once and views it masked at every level (the
    // pruning slider's way); random and N:M prune afresh per level.
    let mut pruner = if method.has_magnitude_order() {
        Some(MagnitudePruner::new(t, scope)?)
    } else {
        None
    };
    for (i, &s) in levels.iter().enumerate() {
        let (pruned, report) = match pruner.as_mut() {
            Some(pruner) => {
                let report = pruner.set_sparsity(t, method, s)?;
                (pruner.model().clone(), report)
            }
            None => prune(t, method, scope, s)?,
        };
        let loss = mean_loss(&pruned, seqs, &HookSpec::default())?;
        drop(pruned);
        points.push(SweepPoint {
            parameter: report.sparsity,
            sparsity: report.achieved_sparsity,
            mean_loss: loss,
        });
        let said = format!("sparsity {:.2}: loss {loss:.4}", report.sparsity);
        if step(i + 2, total, &said).is_break() {
            return Ok(None);
        }
    }
    let curve: Vec<(f64, f64)> = points.iter().map(|p| (p.parameter, p.mean_loss)).collect();
    Ok(Some(PruneSweep {
        method,
        scope,
        dense_mean_loss: dense,
        tokens: tokens(seqs),
        knee: knee(&curve, dense, KNEE_EPSILON),
        points,
    }))
}

fn tokens(seqs: &[Vec<u32>]) -> usize {
    seqs.iter().map(|s| s.len().saturating_sub(1)).sum()
}

/// What a sparsification sweep measures on.
pub struct SparsifyText<'a> {
    pub seqs: &'a [Vec<u32>],
    /// CATS, CHESS and CETT's thresholds come from these.
    pub calibration: &'a [Vec<u32>],
    /// The first row of a sequence whose sparsity counts (after a BOS).
    pub first_scored: FirstScored<'a>,
}

/// Loss and the sparsity reached with `method` calibrated on the text's calibration.
pub fn evaluate_sparsify(
    t: &Transformer,
    method: SparsifyMethod,
    text: &SparsifyText,
) -> Result<SweepPoint> {
    let rules = calibrate(t, method, text.calibration)?;
    let spec = HookSpec {
        interventions: interventions(t, &rules, &method.to_string()),
        ..HookSpec::default()
    };
    let (mean_loss, sparsity) = loss_and_sparsity(t, text.seqs, &spec, Some(text.first_scored))?;
    Ok(SweepPoint {
        parameter: method.value(),
        sparsity,
        mean_loss,
    })
}

/// The parameters a sweep tries for each method, from least to most cutting.
pub fn default_grid(method: SparsifyMethod, d_mlp: usize) -> Vec<SparsifyMethod> {
    let values: Vec<f64> = match method {
        SparsifyMethod::TopK { .. } => [0.9, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05]
            .iter()
            .map(|f| (f * d_mlp as f64).round().max(1.0))
            .collect(),
        SparsifyMethod::Cats { .. } | SparsifyMethod::Chess { .. } => {
            vec![0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
        }
        SparsifyMethod::Cett { .. } => vec![0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
        SparsifyMethod::FatRelu { .. } => vec![0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
    };
    values.into_iter().map(|v| method.with_value(v)).collect()
}

/// Every sparsification method once, with a placeholder parameter (names and grids).
pub const METHODS: [SparsifyMethod; 5] = [
    SparsifyMethod::TopK { k: 0 },
    SparsifyMethod::Cats { k: 0.0 },
    SparsifyMethod::Chess { k: 0.0 },
    SparsifyMethod::Cett { c: 0.0 },
    SparsifyMethod::FatRelu { t: 0.0 },
];

/// A method's short name (`topk`, `cats`, …).
pub fn method_name(method: SparsifyMethod) -> &'static str {
    match method {
        SparsifyMethod::TopK { .. } => "topk",
        SparsifyMethod::Cats { .. } => "cats",
        SparsifyMethod::Chess { .. } => "chess",
        SparsifyMethod::Cett { .. } => "cett",
        SparsifyMethod::FatRelu { .. } => "fatrelu",
    }
}

/// The loss a perplexity `p` % above dense allows: ln(1 + p/100) nats more.
pub fn allowed_loss(dense: f64, p: f64) -> f64 {
    dense + (1.0 + p / 100.0).ln()
}

/// The Sparsing Law's PPL-p% point of `method`: a binary search for the most cutting
/// parameter whose loss stays within [`allowed_loss`]. FATReLU's threshold has no bound to
/// search within.
pub fn ppl_p_search(
    t: &Transformer,
    method: SparsifyMethod,
    p: f64,
    dense: f64,
    text: &SparsifyText,
    step: &mut dyn FnMut(&SweepPoint) -> ControlFlow<()>,
) -> Result<Option<SweepPoint>> {
    if !(p > 0.0 && p.is_finite()) {
        bail!("PPL-p% needs a positive number of percent, not {p}");
    }
    let allowed = allowed_loss(dense, p);
    let d_mlp = t.blocks.first().map_or(1, |b| b.mlp.width());
    // Parameters that cut more go the other way for top-k (fewer kept).
    let (mut lo, mut hi, tolerance, more_cuts_up) = match method {
        SparsifyMethod::TopK { .. } => (1.0, d_mlp as f64, 1.0, false),
        SparsifyMethod::FatRelu { .. } => bail!("PPL-p% searches topk, cats, chess or cett"),
        _ => (0.0, 1.0, 0.001, true),
    };
    while hi - lo > tolerance {
        let mid = (lo + hi) / 2.0;
        let point = evaluate_sparsify(t, method.with_value(mid), text)?;
        if step(&point).is_break() {
            return Ok(None);
        }
        if (point.mean_loss <= allowed) == more_cuts_up {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let best = method.with_value(if more_cuts_up { lo } else { hi });
    Ok(Some(evaluate_sparsify(t, best, text)?))
}

/// One method's curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SparsifyCurve {
    /// `topk`, `cats`, `chess`, `cett` or `fatrelu`.
    pub method: String,
    pub points: Vec<SweepPoint>,
}

/// A sparsification sweep: each method's loss against its sparsity, and one method's PPL-p%
/// point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SparsifySweep {
    pub dense_mean_loss: f64,
    pub tokens: usize,
    pub curves: Vec<SparsifyCurve>,
    /// PPL-p%'s p and the method searched (`cett` by default).
    pub ppl_p: f64,
    pub searched: String,
    /// The searched method's point; `None` when the search could not run (FATReLU).
    pub found: Option<SweepPoint>,
}

/// Sweeps `methods` over their [`default_grid`]s and searches `search`'s PPL-p% point; `None`
/// when `step` stopped it.
pub fn sparsify_sweep(
    t: &Transformer,
    methods: &[SparsifyMethod],
    search: SparsifyMethod,
    p: f64,
    text: &SparsifyText,
    step: &mut Step,
) -> Result<Option<SparsifySweep>> {
    let d_mlp = t.blocks.first().map_or(1, |b| b.mlp.width());
    let grids: Vec<Vec<SparsifyMethod>> = methods.iter().map(|&m| default_grid(m, d_mlp)).collect();
    // The search's evaluations: about log2 of its range over its tolerance.
    let searching = !matches!(search, SparsifyMethod::FatRelu { .. });
    let search_steps = match search {
        SparsifyMethod::TopK { .. } => (d_mlp as f64).log2().ceil() as usize + 1,
        _ => 11,
    };
    let total = 1 + grids.iter().map(Vec::len).sum::<usize>() + search_steps * searching as usize;
    let dense = mean_loss(t, text.seqs, &HookSpec::default())?;
    let mut done = 1;
    if step(done, total, &format!("dense loss {dense:.4}")).is_break() {
        return Ok(None);
    }
    let mut curves = Vec::with_capacity(methods.len());
    for grid in &grids {
        let mut points = Vec::with_capacity(grid.len());
        for &m in grid {
            let point = evaluate_sparsify(t, m, text)?;
            done += 1;
            let said = format!(
                "{m}: sparsity {:.3}, loss {:.4}",
                point.sparsity, point.mean_loss
            );
            points.push(point);
            if step(done, total, &said).is_break() {
                return Ok(None);
            }
        }
        if let Some(&first) = grid.first() {
            curves.push(SparsifyCurve {
                method: method_name(first).into(),
                points,
            });
        }
    }
    let found = if searching {
        let mut stopped = false;
        let found = ppl_p_search(t, search, p, dense, text, &mut |point| {
            done = (done + 1).min(total);
            let said = format!(
                "PPL-{p}% search, {}: loss {:.4}",
                search.with_value(point.parameter),
                point.mean_loss
            );
            let flow = step(done, total, &said);
            stopped = flow.is_break();
            flow
        })?;
        if stopped {
            return Ok(None);
        }
        found
    } else {
        None
    };
    Ok(Some(SparsifySweep {
        dense_mean_loss: dense,
        tokens: tokens(text.seqs),
        curves,
        ppl_p: p,
        searched: method_name(search).into(),
        found,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppl_p_allows_ln_of_one_plus_p_more_nats() {
        assert!((allowed_loss(2.0, 1.0) - (2.0 + 1.01f64.ln())).abs() < 1e-12);
        // PPL ratio exp(allowed − dense) is exactly 1 + p/100.
        assert!(((allowed_loss(3.5, 5.0) - 3.5).exp() - 1.05).abs() < 1e-12);
    }

    #[test]
    fn grids_run_from_least_to_most_cutting() {
        let topk = default_grid(SparsifyMethod::TopK { k: 0 }, 1000);
        let ks: Vec<f64> = topk.iter().map(|m| m.value()).collect();
        assert!(ks.windows(2).all(|w| w[0] > w[1]), "{ks:?}");
        for m in &METHODS[1..] {
            let vs: Vec<f64> = default_grid(*m, 1000).iter().map(|m| m.value()).collect();
            assert!(vs.windows(2).all(|w| w[0] < w[1]), "{m}: {vs:?}");
            assert_eq!(
                method_name(*m),
                m.to_string().split(':').next().unwrap_or("")
            );
        }
    }
}
