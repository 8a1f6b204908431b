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

impl SaeSummary {
    /// Latent `latent`'s activation at every token (0 where it does not fire).
    pub fn latent_activations(&self, latent: u32) -> Vec<f32> {
        self.features
            .iter()
            .map(|f| {
                f.iter()
                    .find(|(j, _)| *j == latent)
                    .map_or(0.0, |(_, a)| *a)
            })
            .collect()
    }

    /// The latents that fire anywhere on the prompt, by peak activation (highest first, ties
    /// by index), at most `max`.
    pub fn strongest_latents(&self, max: usize) -> Vec<u32> {
        let mut peak: std::collections::HashMap<u32, f32> = std::collections::HashMap::new();
        for (j, a) in self.features.iter().flatten() {
            let p = peak.entry(*j).or_insert(0.0);
            *p = p.max(*a);
        }
        let mut latents: Vec<(u32, f32)> = peak.into_iter().collect();
        latents.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        latents.into_iter().take(max).map(|(j, _)| j).collect()
    }

    /// `‖y − ŷ‖² / ‖y‖²` per token (`None` where `y = 0`).
    pub fn relative_error(&self) -> Vec<Option<f32>> {
        self.squared_error
            .iter()
            .zip(&self.squared_norm)
            .map(|(e, n)| (*n > 0.0).then(|| e / n))
            .collect()
    }
}

/// Rows of batch row `row` of a captured hook, `[t, width]` row-major, and `t`.
pub(crate) fn hook_rows(captures: &Captures, hook: &str, row: usize) -> Result<(Vec<f32>, usize)> {
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
    let (x, n) = hook_rows(captures, &sae.cfg.hook_name, row)?;
    let target = match &sae.cfg.hook_name_out {
        Some(out) => hook_rows(captures, out, row)?.0,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> SaeSummary {
        SaeSummary {
            hook: "h".into(),
            n_tokens: 3,
            d_sae: 8,
            features: vec![vec![(5, 2.0), (1, 0.5)], vec![], vec![(1, 3.0), (7, 2.0)]],
            l0: vec![2, 0, 2],
            squared_error: vec![1.0, 0.0, 2.0],
            squared_norm: vec![4.0, 0.0, 8.0],
            fve: None,
            mse: None,
        }
    }

    #[test]
    fn columns_and_per_token_views() {
        let s = summary();
        assert_eq!(s.latent_activations(1), vec![0.5, 0.0, 3.0]);
        // Peaks: 1 → 3.0, 5 → 2.0, 7 → 2.0 (tie: lower index first).
        assert_eq!(s.strongest_latents(10), vec![1, 5, 7]);
        assert_eq!(s.strongest_latents(2), vec![1, 5]);
        assert_eq!(s.relative_error(), vec![Some(0.25), None, Some(0.25)]);
    }
}
