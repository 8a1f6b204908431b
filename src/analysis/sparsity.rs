//! Activation sparsity (definitions.md §1–4): which MLP channels each token uses, under each
//! convention the literature reports. Every function here works on plain row-major
//! `[tokens, channels]` slices; [`measure`] wires them to a model's captured activations.
//!
//! Names: `s` is the activation-function output (`act(x W_gate)` for gated MLPs, the hidden
//! activation otherwise), `u = x W_up` (gated MLPs only), `a = s ⊙ u` (or `s`) is what
//! `mlp.hook_post` captures and `W_down` reads.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use serde::Serialize;

use crate::model::hooks::glob_matches;
use crate::model::{HookSpec, ModelError, NoObserver, Transformer};

/// A sparsity convention and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Method {
    /// Lazy Neuron / ProSparse: a channel is active iff its value is not exactly zero.
    Zero,
    /// Active iff `|value| ≥ eps` (FAT-ε style, one global ε).
    Eps { eps: f64 },
    /// CATS: per-layer threshold `t = Quantile_k(|s|)` from a calibration text; `s` is zeroed
    /// where `|s| < t`.
    Cats { k: f64 },
    /// CHESS: per-channel thresholds `t_i = τ / m_i` with `m_i = E|u_i|`, `τ = Quantile_k(|s|·m)`.
    Chess { k: f64 },
    /// CETT: per layer the largest ε (of 65 536 candidates) with mean CETT ≤ `target`; neuron `i`
    /// is inactive iff `‖n_i‖ < ε`.
    Cett { target: f64 },
    /// CETT at a given ε: neuron `i` is inactive iff `‖n_i‖ = |a_i|·‖W_down[:, i]‖ < ε`.
    CettEps { eps: f64 },
}

impl Method {
    /// Whether the method needs the MLP's internals (and so only applies to MLP layers).
    pub fn needs_mlp(&self) -> bool {
        !matches!(self, Method::Zero | Method::Eps { .. })
    }

    /// Whether the method needs a calibration text.
    pub fn needs_calibration(&self) -> bool {
        matches!(self, Method::Cats { .. } | Method::Chess { .. })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Zero => write!(f, "zero"),
            Method::Eps { eps } => write!(f, "eps:{eps}"),
            Method::Cats { k } => write!(f, "cats:{k}"),
            Method::Chess { k } => write!(f, "chess:{k}"),
            Method::Cett { target } => write!(f, "cett:{target}"),
            Method::CettEps { eps } => write!(f, "cett-eps:{eps}"),
        }
    }
}

impl FromStr for Method {
    type Err = String;

    /// `zero`, `eps:E`, `cats:K`, `chess:K`, `cett:C` or `cett-eps:E`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let number = |what: &str, lo: f64, hi: f64| -> Result<f64, String> {
            let v: f64 = value
                .ok_or_else(|| format!("method {name} needs a value: {name}:{what}"))?
                .parse()
                .map_err(|_| format!("method {s}: {what} must be a number"))?;
            if !(lo..=hi).contains(&v) {
                return Err(format!("method {s}: {what} must lie in [{lo}, {hi}]"));
            }
            Ok(v)
        };
        Ok(match name {
            "zero" if value.is_none() => Method::Zero,
            "eps" => Method::Eps {
                eps: number("E", 0.0, f64::MAX)?,
            },
            "cats" => Method::Cats {
                k: number("K", 0.0, 1.0)?,
            },
            "chess" => Method::Chess {
                k: number("K", 0.0, 1.0)?,
            },
            "cett" => Method::Cett {
                target: number("C", 0.0, 1.0)?,
            },
            "cett-eps" => Method::CettEps {
                eps: number("E", 0.0, f64::MAX)?,
            },
            _ => {
                return Err(format!(
                    "unknown sparsity method {s:?} (zero, eps:E, cats:K, chess:K, cett:C, cett-eps:E)"
                ));
            }
        })
    }
}

/// Per token (row), the fraction of its `channels` for which `active(channel, value)` holds.
pub fn per_token_frac_active(
    values: &[f32],
    channels: usize,
    active: impl Fn(usize, f32) -> bool,
) -> Vec<f64> {
    values
        .chunks_exact(channels.max(1))
        .map(|row| {
            let n = row
                .iter()
                .enumerate()
                .filter(|&(i, &v)| active(i, v))
                .count();
            n as f64 / channels as f64
        })
        .collect()
}

/// Mean of a slice (0 for an empty one).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// CATS threshold at target sparsity `k`, with the CATS repository's convention: a histogram
/// of `|s|` over edges `[−∞, linspace(−1, 1, 1001), +∞]`, normalised, and
/// `t = edge[searchsorted(cumsum, k, side=right)]` (the left edge of the first bin whose
/// cumulative share exceeds `k`). Thresholds are thus multiples of 0.002, capped at 1.
pub fn cats_threshold(abs_values: impl IntoIterator<Item = f32>, k: f64) -> f64 {
    const BINS: usize = 1000;
    let edge = |i: usize| -> f64 {
        // edges[0] = −∞, edges[1..=1001] = linspace(−1, 1, 1001), edges[1002] = +∞.
        match i {
            0 => f64::NEG_INFINITY,
            i if i > BINS + 1 => f64::INFINITY,
            i => -1.0 + (i - 1) as f64 * (2.0 / BINS as f64),
        }
    };
    let mut counts = vec![0u64; BINS + 2];
    let mut total = 0u64;
    for v in abs_values {
        let v = v.abs() as f64;
        let bin = if v >= 1.0 {
            BINS + 1
        } else {
            // Bin j ≥ 1 covers [edge(j), edge(j+1)).
            let j = ((v + 1.0) / (2.0 / BINS as f64)).floor() as usize + 1;
            // Guard the float rounding at bin boundaries against the exact edges.
            if v < edge(j) {
                j - 1
            } else if v >= edge(j + 1) {
                j + 1
            } else {
                j
            }
        };
        counts[bin] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let mut cumulative = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        cumulative += c;
        if cumulative as f64 / total as f64 > k {
            return edge(i);
        }
    }
    edge(BINS + 2)
}

/// One calibration sequence for CHESS: `s` and (gated MLPs) `u`, both `[tokens, channels]`.
pub struct ChessSequence<'a> {
    pub s: &'a [f32],
    pub u: Option<&'a [f32]>,
}

/// CHESS per-channel thresholds `t_i = τ / m_i` at target sparsity `k`.
///
/// `m_i = E_t |u_ti|` over every calibration token (1 for ungated MLPs, where nothing multiplies
/// `s`); `τ` is the `⌊k·n⌋`-th smallest importance `|s_ti|·m_i` of each sequence (torch's
/// `kthvalue`, at least the first), averaged over sequences as the CHESS code does.
pub fn chess_thresholds(calibration: &[ChessSequence<'_>], channels: usize, k: f64) -> Vec<f64> {
    let mut m = vec![0f64; channels];
    let mut tokens = 0usize;
    for seq in calibration {
        if let Some(u) = seq.u {
            for row in u.chunks_exact(channels) {
                for (mi, &x) in m.iter_mut().zip(row) {
                    *mi += x.abs() as f64;
                }
            }
        }
        tokens += seq.s.len() / channels.max(1);
    }
    let gated = calibration.iter().any(|s| s.u.is_some());
    for mi in &mut m {
        *mi = if gated {
            *mi / tokens.max(1) as f64
        } else {
            1.0
        };
    }
    let mut taus = Vec::new();
    for seq in calibration {
        let mut scores: Vec<f64> = seq
            .s
            .chunks_exact(channels)
            .flat_map(|row| row.iter().zip(&m).map(|(&s, &mi)| s.abs() as f64 * mi))
            .collect();
        if scores.is_empty() {
            continue;
        }
        let kth = ((k * scores.len() as f64).floor() as usize).clamp(1, scores.len());
        let (_, tau, _) = scores.select_nth_unstable_by(kth - 1, f64::total_cmp);
        taus.push(*tau);
    }
    let tau = mean(&taus);
    m.iter()
        .map(|&mi| if mi > 0.0 { tau / mi } else { f64::INFINITY })
        .collect()
}

/// Lanes of the CETT accumulators: wide enough for the compiler to vectorise the sums.
const LANES: usize = 16;

/// `p += a·w`, returning `‖p‖²` of the updated `p` (one pass; lane-wise partial sums so the
/// loop vectorises).
fn axpy_norm2(p: &mut [f32], a: f32, w: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let mut p_chunks = p.chunks_exact_mut(LANES);
    let mut w_chunks = w.chunks_exact(LANES);
    for (pc, wc) in (&mut p_chunks).zip(&mut w_chunks) {
        for l in 0..LANES {
            pc[l] += a * wc[l];
            acc[l] += pc[l] * pc[l];
        }
    }
    let mut tail = 0f32;
    for (pv, &wv) in p_chunks
        .into_remainder()
        .iter_mut()
        .zip(w_chunks.remainder())
    {
        *pv += a * wv;
        tail += *pv * *pv;
    }
    acc.iter().map(|&x| x as f64).sum::<f64>() + tail as f64
}

/// One token's CETT table: `‖n_i‖` ascending, and the CETT after dropping each prefix of
/// them. f32 sums (CETT is a ratio of norms; 1e-6 relative is far below what it is read at).
fn cett_token(
    row: &[f32],
    norms: &[f32],
    w_down_rows: &[f32],
    d_model: usize,
) -> (Vec<f32>, Vec<f64>) {
    let mut order: Vec<(f32, usize)> = row
        .iter()
        .zip(norms)
        .enumerate()
        .map(|(i, (&ai, &w))| (ai.abs() * w, i))
        .collect();
    // Ties need no order: a threshold drops all of them or none, so every prefix CETT is
    // read at lands after the whole tie.
    order.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
    let mut ffn = vec![0f32; d_model];
    let mut ffn_norm2 = 0.0;
    for (i, &ai) in row.iter().enumerate() {
        if ai != 0.0 {
            ffn_norm2 = axpy_norm2(&mut ffn, ai, &w_down_rows[i * d_model..(i + 1) * d_model]);
        }
    }
    let ffn_norm = ffn_norm2.sqrt();
    let mut partial = vec![0f32; d_model];
    let mut norm2 = 0.0;
    let mut cett = Vec::with_capacity(row.len() + 1);
    cett.push(0.0);
    for &(_, i) in &order {
        let ai = row[i];
        // A silent neuron leaves the partial sum (and its norm) as it was.
        if ai != 0.0 {
            norm2 = axpy_norm2(
                &mut partial,
                ai,
                &w_down_rows[i * d_model..(i + 1) * d_model],
            );
        }
        cett.push(if ffn_norm > 0.0 {
            norm2.sqrt() / ffn_norm
        } else {
            0.0
        });
    }
    (order.into_iter().map(|(n, _)| n).collect(), cett)
}

/// `‖W_down[:, i]‖₂` for each hidden channel `i`, from `w_down` stored as `[channels, d_model]`
/// rows (row `i` is what channel `i` writes).
pub fn output_norms(w_down_rows: &[f32], d_model: usize) -> Vec<f32> {
    w_down_rows
        .chunks_exact(d_model)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect()
}

/// CETT (Sparsing Law §2.2) for one layer, precomputed so that any ε is cheap: per token the
/// neurons sorted by `‖n_i‖` and `‖Σ_{first j} n_i‖ / ‖FFN(x)‖` for every prefix `j`.
pub struct Cett {
    /// Per token: `‖n_i‖` ascending.
    sorted_norms: Vec<Vec<f32>>,
    /// Per token: CETT when the first `j` neurons (by `‖n_i‖`) are dropped, `j = 0..=channels`.
    prefix_cett: Vec<Vec<f64>>,
    channels: usize,
}

impl Cett {
    /// `a`: `[tokens, channels]`; `w_down_rows`: `[channels, d_model]` (row `i` = `W_down[:, i]`).
    /// Tokens are independent: they are split over the machine's threads.
    pub fn new(a: &[f32], channels: usize, w_down_rows: &[f32], d_model: usize) -> Self {
        let norms = output_norms(w_down_rows, d_model);
        let rows: Vec<&[f32]> = a.chunks_exact(channels).collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rows.len().max(1));
        let per_thread = rows.len().div_ceil(threads.max(1)).max(1);
        let results: Vec<(Vec<f32>, Vec<f64>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = rows
                .chunks(per_thread)
                .map(|chunk| {
                    let norms = &norms;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|row| cett_token(row, norms, w_down_rows, d_model))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| match w.join() {
                    Ok(rows) => rows,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        let (sorted_norms, prefix_cett) = results.into_iter().unzip();
        Cett {
            sorted_norms,
            prefix_cett,
            channels,
        }
    }

    fn dropped(&self, token: usize, eps: f64) -> usize {
        self.sorted_norms[token].partition_point(|&n| (n as f64) < eps)
    }

    /// Per token: CETT at `eps`.
    pub fn per_token(&self, eps: f64) -> Vec<f64> {
        (0..self.sorted_norms.len())
            .map(|t| self.prefix_cett[t][self.dropped(t, eps)])
            .collect()
    }

    /// Per token: the fraction of neurons with `‖n_i‖ ≥ eps` (active).
    pub fn per_token_frac_active(&self, eps: f64) -> Vec<f64> {
        (0..self.sorted_norms.len())
            .map(|t| 1.0 - self.dropped(t, eps) as f64 / self.channels as f64)
            .collect()
    }

    /// The largest of 65 536 candidates on `linspace(min‖n‖, q0.99(‖n‖))` whose mean CETT is
    /// at most `target` (binary search; CETT grows with ε). The smallest candidate if none is.
    pub fn threshold_for(&self, target: f64) -> f64 {
        let mut all: Vec<f64> = self
            .sorted_norms
            .iter()
            .flatten()
            .map(|&n| n as f64)
            .collect();
        if all.is_empty() {
            return 0.0;
        }
        all.sort_by(f64::total_cmp);
        let lo_value = all[0];
        let hi_value = quantile_sorted(&all, 0.99);
        const N: usize = 65_536;
        let candidate = |i: usize| lo_value + (hi_value - lo_value) * i as f64 / (N - 1) as f64;
        let ok = |i: usize| mean(&self.per_token(candidate(i))) <= target;
        // Largest i with ok(i); ok is monotone (true then false).
        let (mut lo, mut hi) = (0usize, N);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if mid < N && ok(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        candidate(lo)
    }
}

/// Linear-interpolation quantile of sorted values (numpy/torch default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(&next) => sorted[i] + (next - sorted[i]) * frac,
        None => sorted[i],
    }
}

/// One layer's (or hook's) sparsity on a prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerSparsity {
    pub hook: String,
    pub layer: Option<usize>,
    /// Mean over tokens of the fraction of active channels (1 − sparsity).
    pub frac_active: f64,
    pub per_token_frac_active: Vec<f64>,
    /// The layer's scalar threshold: ε (eps, cett-eps), CATS `t`, CHESS `τ`, or the ε CETT
    /// search found.
    pub threshold: Option<f64>,
    /// Mean CETT over tokens at the threshold (CETT methods).
    pub mean_cett: Option<f64>,
}

fn layer_of(hook: &str) -> Option<usize> {
    hook.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `[tokens, channels]` values of a captured `[1, tokens, …]` hook.
fn rows(t: &Tensor) -> Result<(Vec<f32>, usize), ModelError> {
    let t = t.get(0)?;
    let tokens = t.dim(0)?;
    let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok((values.clone(), values.len() / tokens.max(1)))
}

fn captured<'a>(c: &'a crate::model::Captures, name: &str) -> Result<&'a Tensor, ModelError> {
    c.get(name)
        .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))
}

/// Sparsity of `tokens` under `method`, for every hook matching `hook_glob` (`zero`, `eps`) or
/// every MLP layer whose `mlp.hook_post` matches it (the other methods, which read the MLP's
/// internals). `calibration` sequences set the CATS and CHESS thresholds; CETT's ε search runs
/// on the prompt itself.
pub fn measure(
    model: &Transformer,
    tokens: &[u32],
    calibration: &[Vec<u32>],
    method: Method,
    hook_glob: &str,
) -> Result<Vec<LayerSparsity>, ModelError> {
    let prompt = [tokens.to_vec()];
    if !method.needs_mlp() {
        let out = model.forward(&prompt, &HookSpec::capture([hook_glob]), &mut NoObserver)?;
        let mut result = Vec::new();
        for name in model.hook_names() {
            let Some(t) = out.captures.get(&name) else {
                continue;
            };
            let (values, channels) = rows(t)?;
            let per_token = match method {
                Method::Eps { eps } => {
                    per_token_frac_active(&values, channels, |_, v| (v.abs() as f64) >= eps)
                }
                _ => per_token_frac_active(&values, channels, |_, v| v != 0.0),
            };
            result.push(LayerSparsity {
                layer: layer_of(&name),
                hook: name,
                frac_active: mean(&per_token),
                per_token_frac_active: per_token,
                threshold: match method {
                    Method::Eps { eps } => Some(eps),
                    _ => None,
                },
                mean_cett: None,
            });
        }
        return Ok(result);
    }

    let layers: Vec<usize> = (0..model.n_layers())
        .filter(|l| glob_matches(hook_glob, &format!("blocks.{l}.mlp.hook_post")))
        .collect();
    if layers.is_empty() {
        return Err(ModelError::InvalidInput(format!(
            "{method} measures MLP layers: --hook {hook_glob:?} matches no blocks.N.mlp.hook_post"
        )));
    }
    let spec = HookSpec::capture(layers.iter().flat_map(|&l| mlp_hooks(model, l)));
    let out = model.forward(&prompt, &spec, &mut NoObserver)?;
    let calibration_out = if method.needs_calibration() {
        calibration
            .iter()
            .map(|seq| model.forward(std::slice::from_ref(seq), &spec, &mut NoObserver))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let calibration: Vec<&crate::model::Captures> =
        calibration_out.iter().map(|o| &o.captures).collect();
    layers
        .iter()
        .map(|&l| measure_mlp_layer(model, l, &out.captures, &calibration, method))
        .collect()
}

/// The hooks [`measure_mlp_layer`] reads for layer `l`.
pub fn mlp_hooks(model: &Transformer, l: usize) -> Vec<String> {
    let mut v = vec![
        format!("blocks.{l}.mlp.hook_pre"),
        format!("blocks.{l}.mlp.hook_post"),
    ];
    if model.blocks.get(l).is_some_and(|b| b.mlp.gate.is_some()) {
        v.push(format!("blocks.{l}.mlp.hook_pre_linear"));
    }
    v
}

/// Sparsity of MLP layer `l` from a pass that captured [`mlp_hooks`] (batch row 0), with CATS
/// and CHESS thresholds calibrated on `calibration` passes (ignored by the other methods).
pub fn measure_mlp_layer(
    model: &Transformer,
    l: usize,
    captures: &crate::model::Captures,
    calibration: &[&crate::model::Captures],
    method: Method,
) -> Result<LayerSparsity, ModelError> {
    let block = model
        .blocks
        .get(l)
        .ok_or_else(|| ModelError::InvalidInput(format!("no layer {l}")))?;
    let hook = format!("blocks.{l}.mlp.hook_post");
    // s = act(hook_pre): the activation-function output CATS and CHESS threshold.
    let s_of = |c: &crate::model::Captures| -> Result<(Vec<f32>, usize), ModelError> {
        let pre = captured(c, &format!("blocks.{l}.mlp.hook_pre"))?;
        rows(&block.mlp.act.forward(pre)?)
    };
    let u_of = |c: &crate::model::Captures| -> Result<Option<Vec<f32>>, ModelError> {
        if block.mlp.gate.is_none() {
            return Ok(None);
        }
        Ok(Some(
            rows(captured(c, &format!("blocks.{l}.mlp.hook_pre_linear"))?)?.0,
        ))
    };
    let (per_token, threshold, mean_cett) = match method {
        Method::Zero | Method::Eps { .. } => {
            let (a, channels) = rows(captured(captures, &hook)?)?;
            let eps = match method {
                Method::Eps { eps } => Some(eps),
                _ => None,
            };
            let f = match eps {
                Some(e) => per_token_frac_active(&a, channels, |_, v| (v.abs() as f64) >= e),
                None => per_token_frac_active(&a, channels, |_, v| v != 0.0),
            };
            (f, eps, None)
        }
        Method::Cats { k } => {
            let (s, channels) = s_of(captures)?;
            let mut abs = Vec::new();
            for c in calibration {
                abs.extend(s_of(c)?.0);
            }
            let t = cats_threshold(abs, k);
            let f = per_token_frac_active(&s, channels, |_, v| (v.abs() as f64) >= t);
            (f, Some(t), None)
        }
        Method::Chess { k } => {
            let (s, channels) = s_of(captures)?;
            let mut data = Vec::new();
            for c in calibration {
                data.push((s_of(c)?.0, u_of(c)?));
            }
            let seqs: Vec<ChessSequence<'_>> = data
                .iter()
                .map(|(s, u)| ChessSequence { s, u: u.as_deref() })
                .collect();
            let t = chess_thresholds(&seqs, channels, k);
            let f = per_token_frac_active(&s, channels, |i, v| (v.abs() as f64) >= t[i]);
            (f, None, None)
        }
        Method::Cett { target } => cett_layer(block, captures, &hook, Err(target))?,
        Method::CettEps { eps } => cett_layer(block, captures, &hook, Ok(eps))?,
    };
    Ok(LayerSparsity {
        hook,
        layer: Some(l),
        frac_active: mean(&per_token),
        per_token_frac_active: per_token,
        threshold,
        mean_cett,
    })
}

type LayerResult = (Vec<f64>, Option<f64>, Option<f64>);

/// CETT at a given ε (`Ok`) or at the ε reaching a target CETT (`Err`).
fn cett_layer(
    block: &crate::model::transformer::Block,
    captures: &crate::model::Captures,
    hook: &str,
    eps_or_target: Result<f64, f64>,
) -> Result<LayerResult, ModelError> {
    let (a, channels) = rows(captured(captures, hook)?)?;
    let down = &block.mlp.down.weight;
    // Rows of W_downᵀ: what each hidden channel writes.
    let w_rows: Vec<f32> = down.to_tensor()?.t()?.flatten_all()?.to_vec1()?;
    let cett = Cett::new(&a, channels, &w_rows, down.rows());
    let eps = eps_or_target.unwrap_or_else(|target| cett.threshold_for(target));
    let f = cett.per_token_frac_active(eps);
    Ok((f, Some(eps), Some(mean(&cett.per_token(eps)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_print() {
        for s in [
            "zero",
            "eps:0.1",
            "cats:0.5",
            "chess:0.7",
            "cett:0.2",
            "cett-eps:0.05",
        ] {
            let m: Method = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
        }
        for bad in ["zero:1", "eps", "cats:1.5", "chess:x", "topk:3", "cett:-1"] {
            assert!(bad.parse::<Method>().is_err(), "{bad}");
        }
    }

    /// definitions.md §1: % nonzero per token.
    #[test]
    fn lazy_neuron_counts_exact_zeros() {
        let a = [0.0, 1.0, 0.0, 2.0, /* token 2 */ 0.0, 0.0, 0.0, -0.5];
        let f = per_token_frac_active(&a, 4, |_, v| v != 0.0);
        assert_eq!(f, vec![0.5, 0.25]);
    }

    /// definitions.md §2 worked example: |s| = {.01,.02,.05,.1,.3,.8}, k = .5 → t = .1, zeroing
    /// .01, .02 and .05 (sparsity 50%).
    #[test]
    fn cats_worked_example() {
        let s = [0.01f32, -0.02, 0.05, 0.1, -0.3, 0.8];
        let t = cats_threshold(s, 0.5);
        assert!((t - 0.1).abs() < 1e-9, "t = {t}");
        let frac = per_token_frac_active(&s, 6, |_, v| (v.abs() as f64) >= t);
        assert_eq!(frac, vec![0.5]);
        // Another k moves the threshold to the next value's bin.
        assert!((cats_threshold(s, 0.7) - 0.3).abs() < 1e-9);
        // Values ≥ 1 share the top bin: the threshold caps at 1.
        assert_eq!(cats_threshold([2.0f32, 3.0], 0.5), 1.0);
    }

    /// definitions.md §3: t_i = τ / m_i with τ the k-quantile of |s|·m.
    #[test]
    fn chess_worked_example() {
        // Two channels; |u| means m = (1, 4). Scores |s|·m per token: (1, 4), (2, 8).
        let s = [1.0f32, 1.0, 2.0, 2.0];
        let u = [1.0f32, 2.0, -1.0, 6.0];
        let seq = ChessSequence { s: &s, u: Some(&u) };
        let t = chess_thresholds(&[seq], 2, 0.5);
        // Sorted scores 1, 2, 4, 8; the ⌊0.5·4⌋ = 2nd smallest is 2, so τ = 2.
        assert_eq!(t, vec![2.0, 0.5]);
        // Zeroing |s_i| < t_i drops exactly the entries scoring below τ: token 0, channel 0.
        let frac = per_token_frac_active(&s, 2, |i, v| (v.abs() as f64) >= t[i]);
        assert_eq!(frac, vec![0.5, 1.0]);
        // τ averages over sequences.
        let seq2 = ChessSequence {
            s: &[4.0, 4.0],
            u: Some(&[1.0, 6.0]),
        };
        let both = chess_thresholds(&[ChessSequence { s: &s, u: Some(&u) }, seq2], 2, 0.5);
        // m = (1, 14/3) over 3 tokens; τ1 from scores (1, 14/3, 2, 28/3) → 2nd smallest = 2,
        // τ2 from (4, 56/3) → 1st = 4; τ = 3.
        assert!((both[0] - 3.0).abs() < 1e-12 && (both[1] - 9.0 / 14.0).abs() < 1e-12);
    }

    /// definitions.md §4 worked example: n₁=(.1,0), n₂=(0,.2), n₃=(1,0), n₄=(0,2); ε = .25 gives
    /// CETT = ‖(.1,.2)‖/2.46 = .091 and 50% sparsity.
    #[test]
    fn cett_worked_example() {
        let a = [0.1f32, 0.2, 1.0, 2.0];
        let w_down_rows = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let cett = Cett::new(&a, 4, &w_down_rows, 2);
        let c = cett.per_token(0.25)[0];
        let expected = (0.1f64.powi(2) + 0.2f64.powi(2)).sqrt() / (1.1f64.hypot(2.2));
        assert!(
            (c - expected).abs() < 1e-7 && (c - 0.091).abs() < 5e-4,
            "{c}"
        );
        assert_eq!(cett.per_token_frac_active(0.25), vec![0.5]);
        // ε below every norm drops nothing; above every norm drops everything.
        assert_eq!(cett.per_token(0.05)[0], 0.0);
        assert!((cett.per_token(10.0)[0] - 1.0).abs() < 1e-7);
        // The threshold search finds the largest candidate ε with CETT ≤ target: with target
        // 0.1 it may drop n₁ and n₂ (CETT .091) but not n₃ (CETT ≥ .41).
        let eps = cett.threshold_for(0.1);
        assert!(eps > 0.2 && eps <= 1.0, "{eps}");
        assert!(mean(&cett.per_token(eps)) <= 0.1);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert!((quantile_sorted(&v, 0.99) - 3.97).abs() < 1e-12);
    }
}
