//! An SAE run on a prompt's activations: its latents per token and how well it reconstructs
//! them. The CLI (`dendrite sae`) and the worker's streamed feature maps both come from here.

use candle_core::Tensor;
use serde::Serialize;

use super::metrics;
use super::{Result, Sae, SaeError};
use crate::model::Captures;

/// What an SAE makes of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SaeSummary {
    pub hook: String,
    pub n_tokens: usize,
    pub d_sae: usize,
    /// Every nonzero latent of each token as `(index, activation)`, highest first.
    pub features: Vec<Vec<(u32, f32)>>,
    /// Latents above zero, per token.
    pub l0: Vec<u32>,
    /// `‖y − ŷ‖²` per token (`y` = the input, or a transcoder's target).
    pub squared_error: Vec<f32>,
    /// `‖y‖²` per token (for relative errors).
    pub squared_norm: Vec<f32>,
    /// Fraction of variance explained over the prompt's tokens (textbook, about the mean);
    /// `None` for fewer than two distinct tokens.
    pub fve: Option<f64>,
    /// `mean_t ‖y − ŷ‖²` (summed over dimensions, not divided by d).
    pub mse: Option<f64>,
}

/// Rows of batch row `row` of a captured hook, `[t, width]` row-major.
fn rows(captures: &Captures, hook: &str, row: usize) -> Result<(Vec<f32>, usize)> {
    let t: &Tensor = captures
        .get(hook)
        .ok_or_else(|| SaeError::InvalidInput(format!("{hook} was not captured")))?;
    let t = t
        .get(row)
        .and_then(|t| t.flatten_from(1))
        .map_err(|e| SaeError::InvalidInput(format!("{hook}: {e}")))?;
    let n = t
        .dim(0)
        .map_err(|e| SaeError::InvalidInput(format!("{hook}: {e}")))?;
    let values = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| SaeError::InvalidInput(format!("{hook}: {e}")))?;
    Ok((values, n))
}

/// The hooks a pass must capture for `sae`.
pub fn hooks(sae: &Sae) -> Vec<String> {
    std::iter::once(sae.cfg.hook_name.clone())
        .chain(sae.cfg.hook_name_out.clone())
        .collect()
}

/// Runs `sae` on batch row `row` of a pass's captures.
pub fn summarize(sae: &Sae, captures: &Captures, row: usize) -> Result<SaeSummary> {
    let (x, n) = rows(captures, &sae.cfg.hook_name, row)?;
    let target = match &sae.cfg.hook_name_out {
        Some(out) => rows(captures, out, row)?.0,
        None => x.clone(),
    };
    summarize_rows(sae, &x, &target, n)
}

/// Runs `sae` on `n` input rows `x` against `target` rows (the input itself for SAEs).
pub fn summarize_rows(sae: &Sae, x: &[f32], target: &[f32], n: usize) -> Result<SaeSummary> {
    let d_out = sae.cfg.d_out;
    if target.len() != n * d_out {
        return Err(SaeError::InvalidInput(format!(
            "target has {} values, expected {n} rows of width {d_out}",
            target.len()
        )));
    }
    let (encoded, reconstruction) = sae.forward(x, n)?;
    let squared_error = metrics::squared_error_per_token(target, &reconstruction, d_out);
    Ok(SaeSummary {
        hook: sae.cfg.hook_name.clone(),
        n_tokens: n,
        d_sae: sae.cfg.d_sae,
        features: (0..n)
            .map(|t| {
                encoded
                    .active(t)
                    .into_iter()
                    .map(|(j, a)| (j as u32, a))
                    .collect()
            })
            .collect(),
        l0: encoded.l0().into_iter().map(|l| l as u32).collect(),
        squared_error: squared_error.iter().map(|e| *e as f32).collect(),
        squared_norm: target
            .chunks_exact(d_out)
            .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() as f32)
            .collect(),
        fve: metrics::fve(target, &reconstruction, d_out),
        mse: metrics::mse_per_token_sum(target, &reconstruction, d_out),
    })
}
