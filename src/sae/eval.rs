//! An SAE evaluated over a corpus (`definitions.md` §7, "Evaluation metrics"): reconstruction
//! (L0, L1, MSE, normalised MSE, FVE, cosine, norm ratio, reconstruction bias), the downstream
//! loss with the reconstruction spliced in against zero- and mean-ablation (CE loss recovered,
//! KL score), firing frequencies over the window, and the dark-matter R².
//!
//! Two passes over the sequences: the first measures the hook's mean activation (what
//! mean-ablation writes); the second runs each sequence clean, then three times more from the
//! SAE's layer on (reusing the clean pass's residual stream): with `x̂` spliced in at
//! non-special positions, with the hook zeroed, and with it set to the mean. Special tokens
//! (BOS/EOS) are left out of the reconstruction metrics and of the splice; the loss is over
//! every next-token prediction.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Serialize;

use super::metrics::{
    self, DarkMatter, FiringCounter, FiringSummary, ReconstructionStats, ReconstructionSummary,
};
use super::{Result, Sae, SaeError};
use crate::model::{
    HookSpec, Intervention, InterventionKind, Model, NoObserver, ResidCache, RowEdit, ValueOp,
};

#[derive(Clone, Debug, Serialize)]
pub struct EvalOptions {
    /// Tokens per dark-matter split (fit and held-out each); the paper uses 150k.
    pub dark_matter_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            dark_matter_tokens: 20_000,
        }
    }
}

/// How far an evaluation has got.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalProgress {
    /// 1 (the mean) or 2 (the metrics).
    pub pass: u8,
    pub sequences_done: usize,
    pub sequences: usize,
}

/// Loss with the SAE against a baseline ablation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Downstream {
    /// Mean next-token cross-entropy (nats) of the clean model, with `x̂` spliced in, with the
    /// hook zeroed and with the hook set to its corpus mean.
    pub ce_clean: f64,
    pub ce_sae: f64,
    pub ce_zero_ablation: f64,
    pub ce_mean_ablation: f64,
    /// `(CE_abl − CE_sae) / (CE_abl − CE_clean)` against each ablation.
    pub ce_loss_recovered_zero: Option<f64>,
    pub ce_loss_recovered_mean: Option<f64>,
    /// Mean `KL(p_clean ‖ p_·)` per position (nats).
    pub kl_sae: f64,
    pub kl_zero_ablation: f64,
    pub kl_mean_ablation: f64,
    /// `(KL_abl − KL_sae) / KL_abl`.
    pub kl_score_zero: Option<f64>,
    pub kl_score_mean: Option<f64>,
    /// Next-token predictions the losses average over.
    pub n_predictions: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub hook: String,
    pub sequences: usize,
    /// Tokens in the sequences, and those left out of the reconstruction metrics as special.
    pub tokens: usize,
    pub special_tokens: usize,
    pub reconstruction: Option<ReconstructionSummary>,
    pub downstream: Option<Downstream>,
    /// Firing frequencies over every non-special token seen (the window is `n_tokens`).
    pub firing: Option<FiringSummary>,
    pub dark_matter: Option<DarkMatter>,
}

fn model_error(e: impl std::fmt::Display) -> SaeError {
    SaeError::InvalidInput(e.to_string())
}

/// A cancelled evaluation.
fn cancelled() -> SaeError {
    SaeError::InvalidInput("the evaluation was cancelled".into())
}

/// Evaluates `sae` on `sequences` (token ids; each within the model's context).
pub fn evaluate(
    model: &Model,
    sae: &Arc<Sae>,
    sequences: &[Vec<u32>],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(EvalProgress) -> ControlFlow<()>,
) -> Result<EvalReport> {
    let t = &model.transformer;
    sae.check_fits(t, &model.info.name)?;
    let cfg = &sae.cfg;
    let (d_in, d_out) = (cfg.d_in, cfg.d_out);
    let target_hook = cfg.hook_name_out.clone().unwrap_or(cfg.hook_name.clone());
    let special = |id: u32| model.tokenizer.is_special(id);
    let n = sequences.len();

    // Pass 1: the mean of what the splice replaces, over non-special tokens.
    let mut sum = vec![0f64; d_out];
    let mut count = 0usize;
    // Reports progress; a break from the caller cancels.
    let mut report = |pass: u8, sequences_done: usize| -> Result<()> {
        let p = EvalProgress {
            pass,
            sequences_done,
            sequences: n,
        };
        if progress(p).is_break() {
            return Err(cancelled());
        }
        Ok(())
    };
    for (i, ids) in sequences.iter().enumerate() {
        report(1, i)?;
        // Stops after the hook's layer; special tokens are left out.
        let mut y = Vec::new();
        count += super::train::run_hook(model, &target_hook, std::slice::from_ref(ids), &mut y)
            .map_err(model_error)?;
        for row in y.chunks_exact(d_out) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
        }
    }
    let mean: Arc<[f32]> = sum
        .iter()
        .map(|s| (s / count.max(1) as f64) as f32)
        .collect();

    // Pass 2.
    let mut stats = ReconstructionStats::new();
    let mut firing = FiringCounter::new(cfg.d_sae);
    let (mut dm_x, mut dm_e) = (Vec::new(), Vec::new());
    let dm_rows = 2 * opts.dark_matter_tokens;
    let mut ce = [0f64; 4];
    let mut kl = [0f64; 3];
    let (mut n_predictions, mut tokens, mut special_tokens) = (0usize, 0usize, 0usize);
    let hooks: Vec<String> = super::apply::hooks(sae);
    for (i, ids) in sequences.iter().enumerate() {
        report(2, i)?;
        tokens += ids.len();
        let keep: Vec<usize> = (0..ids.len()).filter(|&p| !special(ids[p])).collect();
        special_tokens += ids.len() - keep.len();
        let mut cache: Option<ResidCache> = None;
        let clean = t
            .forward_cached(
                std::slice::from_ref(ids),
                &HookSpec::capture(hooks.clone()),
                &mut cache,
                &mut NoObserver,
            )
            .map_err(model_error)?;
        let x = super::apply::hook_rows(&clean.captures, &cfg.hook_name, 0)?.0;
        let y = if cfg.hook_name_out.is_some() {
            super::apply::hook_rows(&clean.captures, &target_hook, 0)?.0
        } else {
            x.clone()
        };
        let rows_of = |v: &[f32], w: usize| -> Vec<f32> {
            keep.iter()
                .flat_map(|&p| v[p * w..(p + 1) * w].to_vec())
                .collect()
        };
        let (xk, yk) = (rows_of(&x, d_in), rows_of(&y, d_out));
        let (encoded, y_hat) = sae.forward(&xk, keep.len())?;
        stats.add(&yk, &y_hat, d_out);
        stats.add_features(&encoded.features, cfg.d_sae);
        firing.add(&encoded.features);
        for (k, _) in keep.iter().enumerate() {
            if dm_x.len() / d_in >= dm_rows {
                break;
            }
            dm_x.extend_from_slice(&xk[k * d_in..(k + 1) * d_in]);
            dm_e.extend(
                yk[k * d_out..(k + 1) * d_out]
                    .iter()
                    .zip(&y_hat[k * d_out..(k + 1) * d_out])
                    .map(|(a, b)| a - b),
            );
        }

        // The downstream passes rerun from the SAE's layer on, over the clean residuals.
        // The rerun from the SAE's layer sees the clean input at the SAE's hook (nothing
        // upstream changes), so the reconstruction spliced in is the one computed above: at
        // the hook for an SAE, at its output hook for a transcoder.
        let reconstruction: Arc<[f32]> = y_hat.clone().into();
        let on_target = |kind: InterventionKind, positions: Option<Vec<usize>>| Intervention {
            hook: target_hook.clone(),
            positions,
            kind,
        };
        let sae_edit = on_target(
            InterventionKind::Rows(RowEdit {
                key: "sae-splice".into(),
                edit: Arc::new(move |rows: &mut [f32], _width: usize| {
                    if rows.len() != reconstruction.len() {
                        return Err("the splice's rows do not match the reconstruction".into());
                    }
                    rows.copy_from_slice(&reconstruction);
                    Ok(())
                }),
            }),
            Some(keep.clone()),
        );
        let variants = [
            sae_edit,
            on_target(
                InterventionKind::Neurons {
                    indices: Vec::new(),
                    op: ValueOp::Set(0.0),
                },
                None,
            ),
            on_target(
                InterventionKind::Rows(RowEdit {
                    key: "mean-ablation".into(),
                    edit: {
                        let mean = mean.clone();
                        Arc::new(move |rows: &mut [f32], width: usize| {
                            for row in rows.chunks_exact_mut(width.max(1)) {
                                row.copy_from_slice(&mean);
                            }
                            Ok(())
                        })
                    },
                }),
                None,
            ),
        ];
        let vocab = clean.logits.dim(2).map_err(model_error)?;
        let logits_of = |out: &crate::model::ForwardOutput| -> Result<Vec<f32>> {
            out.logits
                .get(0)
                .and_then(|l| l.flatten_all())
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(model_error)
        };
        let clean_logits = logits_of(&clean)?;
        let n_pred = ids.len().saturating_sub(1);
        let predicting = |logits: &[f32]| -> f64 {
            metrics::mean_ce(&logits[..n_pred * vocab], &ids[1..], vocab).unwrap_or(0.0)
                * n_pred as f64
        };
        ce[0] += predicting(&clean_logits);
        for (v, edit) in variants.into_iter().enumerate() {
            let mut spec = HookSpec::capture(Vec::<String>::new());
            spec.interventions = vec![edit];
            let mut c = cache.clone();
            let out = t
                .forward_cached(std::slice::from_ref(ids), &spec, &mut c, &mut NoObserver)
                .map_err(model_error)?;
            let logits = logits_of(&out)?;
            ce[v + 1] += predicting(&logits);
            kl[v] += metrics::mean_kl_divergence(
                &clean_logits[..n_pred * vocab],
                &logits[..n_pred * vocab],
                vocab,
            )
            .unwrap_or(0.0)
                * n_pred as f64;
        }
        n_predictions += n_pred;
    }
    // Finished: a late cancel changes nothing.
    let _ = report(2, n);
    let per = |s: f64| s / n_predictions.max(1) as f64;
    let downstream = (n_predictions > 0).then(|| {
        let (ce_clean, ce_sae, ce_zero, ce_mean) = (per(ce[0]), per(ce[1]), per(ce[2]), per(ce[3]));
        let (kl_sae, kl_zero, kl_mean) = (per(kl[0]), per(kl[1]), per(kl[2]));
        Downstream {
            ce_clean,
            ce_sae,
            ce_zero_ablation: ce_zero,
            ce_mean_ablation: ce_mean,
            ce_loss_recovered_zero: metrics::ce_loss_recovered(ce_clean, ce_sae, ce_zero),
            ce_loss_recovered_mean: metrics::ce_loss_recovered(ce_clean, ce_sae, ce_mean),
            kl_sae,
            kl_zero_ablation: kl_zero,
            kl_mean_ablation: kl_mean,
            kl_score_zero: metrics::kl_score(kl_sae, kl_zero),
            kl_score_mean: metrics::kl_score(kl_sae, kl_mean),
            n_predictions,
        }
    });
    // Dark matter: alternate rows into the fit and held-out sets (consecutive tokens of one
    // sequence are correlated; alternating keeps both sets spread over the whole corpus).
    let dark_matter = (d_in == d_out).then(|| {
        let rows = dm_x.len() / d_in;
        let split = |v: &[f32], parity: usize| -> Vec<f32> {
            (0..rows)
                .filter(|r| r % 2 == parity)
                .flat_map(|r| v[r * d_in..(r + 1) * d_in].to_vec())
                .collect()
        };
        metrics::dark_matter_r2(
            &split(&dm_x, 0),
            &split(&dm_e, 0),
            &split(&dm_x, 1),
            &split(&dm_e, 1),
            d_in,
        )
    });
    Ok(EvalReport {
        hook: cfg.hook_name.clone(),
        sequences: n,
        tokens,
        special_tokens,
        reconstruction: stats.finish(),
        downstream,
        firing: firing.summary(),
        dark_matter: dark_matter.flatten(),
    })
}
