//! Activation sparsity applied, not only measured (definitions §1–5): during the forward, each
//! MLP's activations are cut as a method says — Lazy Neuron's top-k per token, CATS and CHESS
//! thresholds calibrated on a text, CETT's inference rule, FATReLU — and the model runs on.
//! Each layer's rule becomes an intervention: rules on the activation output `s` zero the gate's
//! pre-activation where `s` is cut (every activation here maps 0 to 0, so `s` becomes exactly 0
//! there), CETT's rule zeroes `a` (`mlp.hook_post`) directly.

use std::sync::Arc;

use serde::Serialize;

use super::sparsity::{
    ChessSequence, Method, cats_threshold, chess_thresholds, measure_mlp_layer, mlp_hooks,
};
use crate::model::hooks::RowEdit;
use crate::model::transformer::Activation;
use crate::model::{
    Captures, HookSpec, Intervention, InterventionKind, ModelError, NoObserver, Transformer,
};

/// How activations are cut.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum SparsifyMethod {
    /// Lazy Neuron: per token, the `k` largest |s| kept.
    TopK { k: usize },
    /// CATS: per layer t = Quantile_k(|s|) on the calibration text; |s| < t cut.
    Cats { k: f64 },
    /// CHESS: per channel t_i = τ/m_i (τ = Quantile_k(|s|·m), m_i = E|u_i|); |s_i| < t_i cut.
    Chess { k: f64 },
    /// CETT's inference rule: per layer the ε reaching mean CETT `c` on the calibration text;
    /// a_i cut where |a_i|·‖W_out[:, i]‖ < ε.
    Cett { c: f64 },
    /// FATReLU: s kept where s ≥ t, else cut.
    FatRelu { t: f64 },
}

impl std::fmt::Display for SparsifyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SparsifyMethod::TopK { k } => write!(f, "topk:{k}"),
            SparsifyMethod::Cats { k } => write!(f, "cats:{k}"),
            SparsifyMethod::Chess { k } => write!(f, "chess:{k}"),
            SparsifyMethod::Cett { c } => write!(f, "cett:{c}"),
            SparsifyMethod::FatRelu { t } => write!(f, "fatrelu:{t}"),
        }
    }
}

impl std::str::FromStr for SparsifyMethod {
    type Err = String;
    /// `topk:K`, `cats:S`, `chess:S`, `cett:C` or `fatrelu:T`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s.split_once(':').ok_or_else(|| {
            format!("{s}: give method:value (topk:K, cats:S, chess:S, cett:C, fatrelu:T)")
        })?;
        let number = |lo: f64, hi: f64| -> Result<f64, String> {
            let v: f64 = value
                .parse()
                .map_err(|_| format!("{s}: {value:?} is not a number"))?;
            if !(lo..=hi).contains(&v) {
                return Err(format!("{s}: the value must lie in [{lo}, {hi}]"));
            }
            Ok(v)
        };
        Ok(match name {
            "topk" => SparsifyMethod::TopK {
                k: value
                    .parse()
                    .map_err(|_| format!("{s}: K must be a whole number"))?,
            },
            "cats" => SparsifyMethod::Cats {
                k: number(0.0, 1.0)?,
            },
            "chess" => SparsifyMethod::Chess {
                k: number(0.0, 1.0)?,
            },
            "cett" => SparsifyMethod::Cett {
                c: number(0.0, 1.0)?,
            },
            "fatrelu" => SparsifyMethod::FatRelu {
                t: number(0.0, f64::MAX)?,
            },
            _ => {
                return Err(format!(
                    "unknown method {name:?} (topk:K, cats:S, chess:S, cett:C, fatrelu:T)"
                ));
            }
        })
    }
}

impl SparsifyMethod {
    /// The same method with another parameter (the PPL-p% search moves it).
    pub fn with_value(self, v: f64) -> Self {
        match self {
            SparsifyMethod::TopK { .. } => SparsifyMethod::TopK {
                k: v.round().max(0.0) as usize,
            },
            SparsifyMethod::Cats { .. } => SparsifyMethod::Cats { k: v },
            SparsifyMethod::Chess { .. } => SparsifyMethod::Chess { k: v },
            SparsifyMethod::Cett { .. } => SparsifyMethod::Cett { c: v },
            SparsifyMethod::FatRelu { .. } => SparsifyMethod::FatRelu { t: v },
        }
    }

    pub fn value(self) -> f64 {
        match self {
            SparsifyMethod::TopK { k } => k as f64,
            SparsifyMethod::Cats { k } | SparsifyMethod::Chess { k } => k,
            SparsifyMethod::Cett { c } => c,
            SparsifyMethod::FatRelu { t } => t,
        }
    }

    fn needs_calibration(self) -> bool {
        matches!(
            self,
            SparsifyMethod::Cats { .. }
                | SparsifyMethod::Chess { .. }
                | SparsifyMethod::Cett { .. }
        )
    }
}

/// One layer's cut.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerRule {
    /// Per token, the `k` largest |s| kept.
    TopK(usize),
    /// |s_i| < t_i cut (one t for every channel when the slice has one value).
    BelowAbs(Arc<[f32]>),
    /// s < t cut (FATReLU).
    Below(f32),
    /// a_i cut where |a_i| < limit_i (CETT: ε/‖W_out[:, i]‖).
    PostBelowAbs(Arc<[f32]>),
}

/// Keeps the `k` largest |values| of a row (ties: the lower index kept); returns which were cut.
fn top_k_mask(s: &[f32], k: usize) -> Vec<bool> {
    let mut cut = vec![true; s.len()];
    if k >= s.len() {
        return vec![false; s.len()];
    }
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.select_nth_unstable_by(k.saturating_sub(1).min(s.len() - 1), |&a, &b| {
        s[b].abs().total_cmp(&s[a].abs()).then(a.cmp(&b))
    });
    for &i in order.iter().take(k) {
        cut[i] = false;
    }
    cut
}

impl LayerRule {
    /// Whether channel `i` of a row with activation outputs `s` is cut.
    fn cut(&self, s: &[f32]) -> Vec<bool> {
        match self {
            LayerRule::TopK(k) => top_k_mask(s, *k),
            LayerRule::BelowAbs(t) | LayerRule::PostBelowAbs(t) => s
                .iter()
                .enumerate()
                .map(|(i, v)| v.abs() < t[if t.len() == 1 { 0 } else { i }])
                .collect(),
            LayerRule::Below(t) => s.iter().map(|v| v < t).collect(),
        }
    }
}

/// The thresholds of `method` for every layer, calibrated on `calibration` (token sequences;
/// CATS, CHESS and CETT need them, the others ignore them).
pub fn calibrate(
    model: &Transformer,
    method: SparsifyMethod,
    calibration: &[Vec<u32>],
) -> Result<Vec<LayerRule>, ModelError> {
    let n = model.n_layers();
    let passes: Vec<Captures> = if method.needs_calibration() {
        if calibration.is_empty() {
            return Err(ModelError::InvalidInput(format!(
                "{method} needs a calibration text"
            )));
        }
        let spec = HookSpec::capture((0..n).flat_map(|l| mlp_hooks(model, l)));
        calibration
            .iter()
            .map(|seq| {
                model
                    .forward(std::slice::from_ref(seq), &spec, &mut NoObserver)
                    .map(|o| o.captures)
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let rows = |c: &Captures, name: &str| -> Result<Vec<f32>, ModelError> {
        let t = c
            .get(name)
            .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    (0..n)
        .map(|l| {
            let block = &model.blocks[l];
            let act = block.mlp.act;
            let s_of = |c: &Captures| -> Result<Vec<f32>, ModelError> {
                let mut s = rows(c, &format!("blocks.{l}.mlp.hook_pre"))?;
                act.apply_in_place(&mut s)?;
                Ok(s)
            };
            Ok(match method {
                SparsifyMethod::TopK { k } => LayerRule::TopK(k),
                SparsifyMethod::FatRelu { t } => LayerRule::Below(t as f32),
                SparsifyMethod::Cats { k } => {
                    let mut all = Vec::new();
                    for c in &passes {
                        all.extend(s_of(c)?.iter().map(|v| v.abs()));
                    }
                    LayerRule::BelowAbs(Arc::from([cats_threshold(&all, k) as f32]))
                }
                SparsifyMethod::Chess { k } => {
                    let channels = block.mlp.width();
                    let mut data = Vec::new();
                    for c in &passes {
                        let u = if block.mlp.gated {
                            Some(rows(c, &format!("blocks.{l}.mlp.hook_pre_linear"))?)
                        } else {
                            None
                        };
                        data.push((s_of(c)?, u));
                    }
                    let seqs: Vec<ChessSequence<'_>> = data
                        .iter()
                        .map(|(s, u)| ChessSequence { s, u: u.as_deref() })
                        .collect();
                    let t = chess_thresholds(&seqs, channels, k);
                    LayerRule::BelowAbs(t.iter().map(|&x| x as f32).collect())
                }
                SparsifyMethod::Cett { c } => {
                    // ε from the calibration passes' CETT search (the first one: the prompt,
                    // or the calibration text's first window).
                    let measured = measure_mlp_layer(
                        model,
                        l,
                        &passes[0],
                        &[],
                        Method::Cett { target: c },
                        0,
                    )?;
                    let eps = measured.threshold.unwrap_or(0.0) as f32;
                    let norms = block.mlp.down.weight.column_norms();
                    LayerRule::PostBelowAbs(
                        norms
                            .iter()
                            .map(|&w| if w > 0.0 { eps / w } else { f32::INFINITY })
                            .collect(),
                    )
                }
            })
        })
        .collect()
}

/// The interventions that apply `rules` (one per layer).
pub fn interventions(model: &Transformer, rules: &[LayerRule], key: &str) -> Vec<Intervention> {
    rules
        .iter()
        .enumerate()
        .map(|(l, rule)| {
            let act: Activation = model.blocks[l].mlp.act;
            let rule = rule.clone();
            let post = matches!(rule, LayerRule::PostBelowAbs(_));
            let edit: Arc<crate::model::hooks::RowEditFn> =
                Arc::new(move |rows: &mut [f32], width: usize| {
                    for row in rows.chunks_exact_mut(width.max(1)) {
                        // The rule reads s = act(gate pre-activation), or a itself.
                        let mut s = row.to_vec();
                        if !post {
                            act.apply_in_place(&mut s).map_err(|e| e.to_string())?;
                        }
                        for (v, cut) in row.iter_mut().zip(rule.cut(&s)) {
                            if cut {
                                *v = 0.0;
                            }
                        }
                    }
                    Ok(())
                });
            Intervention {
                hook: format!(
                    "blocks.{l}.mlp.{}",
                    if post { "hook_post" } else { "hook_pre" }
                ),
                positions: None,
                kind: InterventionKind::Rows(RowEdit {
                    key: format!("sparsify {key} L{l}"),
                    edit,
                }),
            }
        })
        .collect()
}

/// The share of exact zeros in every layer's `mlp.hook_post` of a pass, averaged over layers
/// (rows before `first_scored` left out): the sparsity a method reached.
pub fn achieved_sparsity(
    model: &Transformer,
    captures: &Captures,
    first_scored: usize,
) -> Result<f64, ModelError> {
    let n = model.n_layers();
    let mut total = 0.0;
    for l in 0..n {
        let name = format!("blocks.{l}.mlp.hook_post");
        let t = captures
            .get(&name)
            .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))?
            .get(0)?;
        let (tokens, width) = t.dims2()?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let scored = &values[first_scored.min(tokens) * width..];
        total += scored.iter().filter(|&&v| v == 0.0).count() as f64 / scored.len().max(1) as f64;
    }
    Ok(total / n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_magnitudes_ties_to_the_lower_index() {
        assert_eq!(
            top_k_mask(&[0.1, -3.0, 2.0, 0.5], 2),
            vec![true, false, false, true]
        );
        assert_eq!(top_k_mask(&[1.0, 1.0, 1.0], 2), vec![false, false, true]);
        assert_eq!(top_k_mask(&[1.0, 2.0], 5), vec![false, false]);
    }

    #[test]
    fn cats_example_cuts_what_lies_below_its_threshold() {
        // Definitions §2: |s| = .01 … .8, k = .5 → t = .1, cutting .01, .02, .05.
        let s = [0.01f32, 0.02, 0.05, 0.1, 0.3, 0.8];
        let t = cats_threshold(&s, 0.5) as f32;
        let rule = LayerRule::BelowAbs(Arc::from([t]));
        assert_eq!(rule.cut(&s), vec![true, true, true, false, false, false]);
    }

    #[test]
    fn fatrelu_keeps_what_reaches_its_threshold() {
        let rule = LayerRule::Below(0.5);
        assert_eq!(
            rule.cut(&[0.4, 0.5, -2.0, 3.0]),
            vec![true, false, true, false]
        );
    }

    #[test]
    fn methods_parse_and_print_alike() {
        for m in [
            "topk:64",
            "cats:0.5",
            "chess:0.5",
            "cett:0.2",
            "fatrelu:0.01",
        ] {
            assert_eq!(m.parse::<SparsifyMethod>().unwrap().to_string(), m);
        }
        assert!("cats:2".parse::<SparsifyMethod>().is_err());
        assert!("topk".parse::<SparsifyMethod>().is_err());
    }
}
