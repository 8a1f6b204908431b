//! Before and after the interventions: next-token probabilities, loss and sparsity changes.

use super::AppState;
use crate::worker::TokenPrediction;

/// Before/after of the current interventions.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// At the last position: tokens in either top list, with (baseline, intervened)
    /// probability (0 where a token is outside that pass's top list).
    pub next_token: Vec<(String, f64, f64)>,
    pub mean_loss_before: f64,
    pub mean_loss_after: f64,
    /// Intervened − baseline loss per predicted token.
    pub loss_change: Vec<f32>,
    /// Intervened − baseline active fraction per layer (where both are in).
    pub sparsity_change: Vec<Option<f64>>,
}

impl AppState {
    pub fn comparison(&self) -> Option<Comparison> {
        let after = self.runs.intervened.as_ref()?;
        let (fb, fa) = (
            self.runs.baseline.finished.as_ref()?,
            after.finished.as_ref()?,
        );
        let (lb, la) = (fb.predictions.last()?, fa.predictions.last()?);
        let mut next_token: Vec<(String, f64, f64)> = Vec::new();
        for p in lb.iter().chain(la) {
            if next_token.iter().any(|(t, _, _)| *t == p.token) {
                continue;
            }
            let prob = |list: &[TokenPrediction]| {
                list.iter().find(|x| x.id == p.id).map_or(0.0, |x| x.prob)
            };
            next_token.push((p.token.clone(), prob(lb), prob(la)));
        }
        next_token.sort_by(|a, b| b.2.max(b.1).total_cmp(&a.2.max(a.1)));
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        Some(Comparison {
            next_token,
            mean_loss_before: mean(&fb.per_token_nll),
            mean_loss_after: mean(&fa.per_token_nll),
            loss_change: fa
                .per_token_nll
                .iter()
                .zip(&fb.per_token_nll)
                .map(|(a, b)| a - b)
                .collect(),
            sparsity_change: (0..self.runs.baseline.layers.len())
                .map(|l| {
                    Some(
                        after.layer(l)?.sparsity.frac_active
                            - self.runs.baseline.layer(l)?.sparsity.frac_active,
                    )
                })
                .collect(),
        })
    }
}
