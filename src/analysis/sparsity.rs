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
use rayon::prelude::*;
use serde::Serialize;

use crate::model::hooks::glob_matches;
use crate::model::packed::{PackedMatrix, Segment};
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
    /// Temporal sparsity (Delta Activation, §13): a channel is "active" at token t iff it
    /// changed by more than θ since the token before (`|a_t − a_{t−1}| > θ`, strict).
    Delta { theta: f64 },
    /// CoreInfer's token-wise core (§12): a channel is "active" at token t iff it is among the
    /// round(α·|positive|) strongest positive activations of that token.
    Core { alpha: f64 },
}

impl Method {
    /// Whether the method needs the MLP's internals (and so only applies to MLP layers).
    pub fn needs_mlp(&self) -> bool {
        !matches!(
            self,
            Method::Zero | Method::Eps { .. } | Method::Delta { .. } | Method::Core { .. }
        )
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
            Method::Delta { theta } => write!(f, "delta:{theta}"),
            Method::Core { alpha } => write!(f, "core:{alpha}"),
        }
    }
}

impl FromStr for Method {
    type Err = String;

    /// `zero`, `eps:E`, `cats:K`, `chess:K`, `cett:C`, `cett-eps:E`, `delta:θ` or `core:α`.
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
            "delta" => Method::Delta {
                theta: number("θ", 0.0, f64::MAX)?,
            },
            "core" => Method::Core {
                alpha: number("α", 0.0, 1.0)?,
            },
            _ => {
                return Err(format!(
                    "unknown sparsity method {s:?} (zero, eps:E, cats:K, chess:K, cett:C, \
                     cett-eps:E, delta:θ, core:α)"
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
    // Every method's per-token shares go through here, for every layer a run shows: compiled
    // for the widest vectors this CPU has (the crate targets baseline x86-64), same answer.
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        // Safety: AVX-512F and BW were detected at runtime.
        return unsafe { per_token_frac_active_avx512(values, channels, active) };
    }
    per_token_frac_active_in(values, channels, active)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn per_token_frac_active_avx512(
    values: &[f32],
    channels: usize,
    active: impl Fn(usize, f32) -> bool,
) -> Vec<f64> {
    per_token_frac_active_in(values, channels, active)
}

#[inline(always)]
fn per_token_frac_active_in(
    values: &[f32],
    channels: usize,
    active: impl Fn(usize, f32) -> bool,
) -> Vec<f64> {
    // Plain loops: an iterator's `collect` or `sum` is a function of its own, compiled
    // without the caller's vector features.
    let mut shares = Vec::with_capacity(values.len() / channels.max(1));
    for row in values.chunks_exact(channels.max(1)) {
        // A sum of 0/1 in 32-bit lanes rather than a filtered count (a branch per channel):
        // it vectorises.
        let mut n = 0u32;
        for (i, &v) in row.iter().enumerate() {
            n += u32::from(active(i, v));
        }
        shares.push(n as f64 / channels as f64);
    }
    shares
}

/// Temporal sparsity's rows (§13): per token t, the share ρ_t of `channels` that changed by
/// more than `theta` since token t − 1, and the layer's mean of ρ over the tokens that have a
/// delta (those after `first_scored`: a BOS row before it is not part of the text, and the
/// first scored token has no token before it). Those first rows report their share of nonzero
/// channels instead, what a delta layer sends for its first frame; the mean leaves them out.
pub fn delta_frac_changed(
    values: &[f32],
    channels: usize,
    theta: f64,
    first_scored: usize,
) -> (Vec<f64>, f64) {
    let channels = channels.max(1);
    let rows: Vec<&[f32]> = values.chunks_exact(channels).collect();
    let per_token: Vec<f64> = (0..rows.len())
        .map(|t| {
            let changed = if t > first_scored {
                rows[t]
                    .iter()
                    .zip(rows[t - 1])
                    .filter(|&(&a, &b)| ((a - b).abs() as f64) > theta)
                    .count()
            } else {
                rows[t].iter().filter(|&&a| a != 0.0).count()
            };
            changed as f64 / channels as f64
        })
        .collect();
    let with_delta = per_token.get(first_scored + 1..).unwrap_or(&[]);
    let mean_changed = mean(with_delta);
    (per_token, mean_changed)
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
pub fn cats_threshold(abs_values: &[f32], k: f64) -> f64 {
    const BINS: usize = 1000;
    // edges[0] = −∞, edges[1..=1001] = linspace(−1, 1, 1001), edges[1002] = +∞.
    let edges: Vec<f64> = (0..=BINS + 2)
        .map(|i| match i {
            0 => f64::NEG_INFINITY,
            i if i > BINS + 1 => f64::INFINITY,
            i => -1.0 + (i - 1) as f64 * (2.0 / BINS as f64),
        })
        .collect();
    let bin_of = |v: f32| -> usize {
        let v = v.abs() as f64;
        if v >= 1.0 {
            return BINS + 1;
        }
        // Bin j ≥ 1 covers [edge(j), edge(j+1)). (The product is positive: truncation is its
        // floor, without a libm call on CPUs lacking SSE4.1's `round`; the checks below settle
        // any rounding at an edge against the exact edges.)
        let j = ((v + 1.0) * (BINS as f64 / 2.0)) as usize + 1;
        if v < edges[j] {
            j - 1
        } else if v >= edges[j + 1] {
            j + 1
        } else {
            j
        }
    };
    // Counted in parallel: a method change histograms every layer's activations.
    let counts = abs_values
        .par_chunks(16_384)
        .map(|chunk| {
            let mut counts = vec![0u64; BINS + 2];
            for &v in chunk {
                counts[bin_of(v)] += 1;
            }
            counts
        })
        .reduce(
            || vec![0u64; BINS + 2],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let total = abs_values.len() as u64;
    if total == 0 {
        return 0.0;
    }
    let mut cumulative = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        cumulative += c;
        if cumulative as f64 / total as f64 > k {
            return edges[i];
        }
    }
    edges[BINS + 2]
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

/// Candidates of the CETT threshold search (definitions.md §4).
const CETT_CANDIDATES: usize = 65_536;
/// Boundaries per refinement step of the search, spread evenly over the candidates left ...
const EVEN_BOUNDARIES: usize = 8;
/// ... and at quantiles of the neurons left, so each step leaves few of either.
const QUANTILE_BOUNDARIES: usize = 8;
/// Values sampled (before keeping those in range) to place the first step's quantile
/// boundaries.
const FIRST_SAMPLE: usize = 8192;
/// Buckets of the norms-only estimate that places the search's first range.
const ESTIMATE_BUCKETS: usize = 512;
/// The first range spans where the estimate reaches these fractions of the target. The
/// estimate ignores how the neurons' writes align; on SmolLM2 the true CETT at the estimate's
/// ε was 0.78–1.0 of the target, so this range nearly always holds the answer (when it does
/// not, the search goes on outside it, as exact as ever, only slower). Every neuron in the
/// range is summed in the first step, so the range is kept just wide enough: on SmolLM2 at 64
/// tokens (0.6, 1.15) held ≈ 17.7 k (token, neuron) pairs per layer, (0.74, 1.02) ≈ 9 k, and
/// the search took 7–13 % less.
const ESTIMATE_RANGE: (f64, f64) = (0.72, 1.05);

/// CETT (Sparsing Law §2.2) of one layer's neurons on a prompt: `n_ti = a_ti · W_down[:, i]`,
/// `CETT_t(ε) = ‖Σ_{‖n_ti‖ < ε} n_ti‖ / ‖Σ_i n_ti‖`.
///
/// Every CETT here is a sum of what a set of neurons writes, computed straight from the packed
/// `W_down` ([`PackedMatrix::group_sums`]): one read of the matrix serves all tokens and every
/// threshold being tried at once. With the FFN's whole output `Σ_i n_ti` at hand (the forward
/// pass computed it), the sum below a threshold is also the whole minus the sum above, so the
/// search only reads the neurons above the range it starts in: about a third of them.
pub struct Cett<'a> {
    /// `[tokens, channels]`.
    a: &'a [f32],
    down: &'a PackedMatrix,
    tokens: usize,
    /// `‖n_ti‖ = |a_ti| · ‖W_down[:, i]‖`, `[tokens, channels]`.
    norms: Vec<f32>,
    /// `Σ_i n_ti`, `[tokens, d_model]`: the FFN output without its bias.
    total: Vec<f32>,
    /// `‖Σ_i n_ti‖` per token.
    total_norms: Vec<f64>,
}

/// One refinement step of the CETT search: per token, the norm of what its neurons below each
/// boundary write, and the sums behind them (to carry forward the ones below the boundary
/// the search keeps).
struct Step {
    /// `[tokens, bounds]`: `‖Σ_{neurons of t below bound j}‖`.
    norms: Vec<f64>,
    bounds: usize,
    /// What each token's neurons below the first boundary write (`[tokens, d_model]`), when
    /// the step took it as the whole minus the groups above; otherwise it is the `base` given.
    floor: Option<Vec<f32>>,
    /// Per token, its summed nonempty groups: `(group, row of sums)`; group `j` holds the
    /// neurons between boundaries `j − 1` and `j`.
    groups: Vec<Vec<(usize, usize)>>,
    /// `[segments, d_model]`.
    sums: Vec<f32>,
    d_model: usize,
    /// Per token, its live neurons grouped (`bounds + 1` groups, the last above every
    /// boundary), for the next step.
    by_group: Vec<Grouped>,
}

/// Runs of neurons [`Grouped::sort`] counts and places side by side.
const SORT_LANES: usize = 4;

/// One token's live neurons in ascending order within each group: group `g` is
/// `neurons[starts[g]..starts[g + 1]]`. One allocation per token, not one per group.
struct Grouped {
    neurons: Vec<u32>,
    starts: Vec<u32>,
}

impl Grouped {
    /// A counting sort of `neurons` (ascending) into `groups` groups by `group_of`, keeping
    /// each group ascending.
    ///
    /// Consecutive neurons mostly share a group, and a single counter incremented through
    /// memory waits out the previous increment's store each time (`perf` put a fifth of the
    /// search's own time there). So the neurons are cut into [`SORT_LANES`] runs, each with
    /// its own counters, and the runs are counted and placed side by side: independent chains
    /// the CPU overlaps. Within a group, run 0's neurons (the lowest) come first, so each
    /// group stays ascending.
    #[inline(always)]
    fn sort(neurons: &[u32], group_of: &[u8], groups: usize) -> Self {
        let len = neurons.len().min(group_of.len());
        let run = len / SORT_LANES;
        // counts[g · SORT_LANES + r]: run r's neurons in group g (the last run also takes the
        // remainder).
        let mut counts = vec![0u32; groups * SORT_LANES];
        for j in 0..run {
            for r in 0..SORT_LANES {
                counts[group_of[r * run + j] as usize * SORT_LANES + r] += 1;
            }
        }
        for &g in &group_of[SORT_LANES * run..len] {
            counts[g as usize * SORT_LANES + SORT_LANES - 1] += 1;
        }
        // Then where run r's next neuron of group g goes, in the same layout.
        let mut starts = vec![0u32; groups + 1];
        let mut next = counts;
        let mut at = 0u32;
        for (g, runs) in next.chunks_exact_mut(SORT_LANES).enumerate() {
            starts[g] = at;
            for slot in runs {
                let count = *slot;
                *slot = at;
                at += count;
            }
        }
        starts[groups] = at;
        let mut sorted = vec![0u32; len];
        for j in 0..run {
            for r in 0..SORT_LANES {
                let i = r * run + j;
                let slot = &mut next[group_of[i] as usize * SORT_LANES + r];
                sorted[*slot as usize] = neurons[i];
                *slot += 1;
            }
        }
        for i in SORT_LANES * run..len {
            let slot = &mut next[group_of[i] as usize * SORT_LANES + SORT_LANES - 1];
            sorted[*slot as usize] = neurons[i];
            *slot += 1;
        }
        Grouped {
            neurons: sorted,
            starts,
        }
    }

    fn group(&self, g: usize) -> &[u32] {
        &self.neurons[self.starts[g] as usize..self.starts[g + 1] as usize]
    }
}

/// The smallest `f32` at or above `b`: for any `f32` `n`, `n as f64 >= b` exactly when
/// `n >= f32_at_or_above(b)`, so neurons are split by `f32` comparisons that vectorise.
fn f32_at_or_above(b: f64) -> f32 {
    let c = b as f32;
    if (c as f64) < b { c.next_up() } else { c }
}

impl Step {
    /// `base` (`[tokens, d_model]`) plus every token's groups up to and including `bound`.
    #[inline(always)]
    fn carry(&self, base: &mut [f32], bound: usize) {
        if let Some(floor) = &self.floor {
            base.copy_from_slice(floor);
        }
        for (t, groups) in self.groups.iter().enumerate() {
            let base_t = &mut base[t * self.d_model..(t + 1) * self.d_model];
            for &(_, row) in groups.iter().take_while(|(g, _)| *g <= bound) {
                let sum = &self.sums[row * self.d_model..(row + 1) * self.d_model];
                base_t.iter_mut().zip(sum).for_each(|(b, s)| *b += s);
            }
        }
    }
}

/// `‖v‖` summed in `f64`, in eight interleaved partial sums (one running sum waits out each
/// addition's latency: it was a tenth of the CETT search).
#[inline(always)]
fn norm(v: &[f32]) -> f64 {
    let mut sums = [0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for chunk in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(chunk) {
            *s += (x as f64) * (x as f64);
        }
    }
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum();
    (sums.iter().sum::<f64>() + rest).sqrt()
}

impl<'a> Cett<'a> {
    /// `a`: `[tokens, channels]`; `down`: `W_down` as the model packs it (`[d_model, channels]`);
    /// `total`: `a · W_downᵀ` (`[tokens, d_model]`, the down projection's output without its
    /// bias) when the forward pass kept it, else computed here.
    pub fn new(
        a: &'a [f32],
        down: &'a PackedMatrix,
        total: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        let channels = down.cols();
        if !a.len().is_multiple_of(channels.max(1)) {
            return Err(ModelError::InvalidInput(format!(
                "CETT: activations of length {} are not rows of {channels}, as W_down expects",
                a.len()
            )));
        }
        let tokens = a.len() / channels.max(1);
        let d_model = down.rows();
        let total = match total {
            Some(total) if total.len() == tokens * d_model => total,
            Some(total) => {
                return Err(ModelError::InvalidInput(format!(
                    "CETT: the FFN output has {} values, not {tokens} × {d_model}",
                    total.len()
                )));
            }
            None => down.matmul_t(a, tokens, None),
        };
        let column_norms = down.column_norms();
        // Row by row into one buffer (a `flat_map` collect did not vectorise).
        let mut norms = vec![0f32; a.len()];
        for (out, row) in norms
            .chunks_exact_mut(channels.max(1))
            .zip(a.chunks_exact(channels.max(1)))
        {
            for ((o, &x), &w) in out.iter_mut().zip(row).zip(column_norms) {
                *o = x.abs() * w;
            }
        }
        let total_norms = total.chunks_exact(d_model.max(1)).map(norm).collect();
        Ok(Cett {
            a,
            down,
            tokens,
            norms,
            total,
            total_norms,
        })
    }

    fn channels(&self) -> usize {
        self.down.cols()
    }

    fn norms_of(&self, token: usize) -> &[f32] {
        let c = self.channels();
        &self.norms[token * c..(token + 1) * c]
    }

    fn all_live(&self) -> Vec<Vec<u32>> {
        (0..self.tokens)
            .map(|_| (0..self.channels() as u32).collect())
            .collect()
    }

    /// Splits each token's `live` neurons at `bounds` (by `‖n‖`) and sums the groups below
    /// the last boundary through the packed `W_down`, on top of `base`. `from_total` (with
    /// every neuron live) instead sums the groups above the first boundary and takes what the
    /// first group writes as the whole minus them.
    #[inline(always)]
    fn step(&self, live: &[Vec<u32>], base: &[f32], bounds: &[f64], from_total: bool) -> Step {
        let summed = if from_total {
            1..bounds.len() + 1
        } else {
            0..bounds.len()
        };
        let channels = self.channels();
        let mut members = Vec::new();
        let mut segments = Vec::new();
        let mut groups = Vec::with_capacity(self.tokens);
        let mut by_group = Vec::with_capacity(self.tokens);
        // Per token: whether its first group writes anything (exact zeros write nothing, and a
        // difference of sums would leave rounding noise where CETT is exactly 0).
        let mut first_writes = Vec::with_capacity(self.tokens);
        let bounds_f32: Vec<f32> = bounds.iter().map(|&b| f32_at_or_above(b)).collect();
        let mut group_of: Vec<u8> = Vec::new();
        let mut live_norms: Vec<f32> = Vec::new();
        for (t, live) in live.iter().enumerate() {
            let norms = self.norms_of(t);
            // Each neuron's group: how many boundaries are at or below its ‖n‖ (a `u8`: a step
            // tries at most a few dozen boundaries), counted bound by bound over all the
            // neurons (that loop vectorises; one neuron at a time over the bounds did not).
            live_norms.clear();
            if live.len() == norms.len() {
                live_norms.extend_from_slice(norms);
            } else {
                live_norms.extend(live.iter().map(|&i| norms[i as usize]));
            }
            group_of.clear();
            group_of.resize(live.len(), 0);
            for &b in &bounds_f32 {
                for (g, &n) in group_of.iter_mut().zip(&live_norms) {
                    *g += (b <= n) as u8;
                }
            }
            let split = Grouped::sort(live, &group_of, bounds.len() + 1);
            let mut token_groups = Vec::new();
            for g in summed.clone() {
                let list = split.group(g);
                if list.is_empty() {
                    continue;
                }
                token_groups.push((g, segments.len()));
                let start = members.len() as u32;
                members.extend_from_slice(list);
                segments.push(Segment {
                    row: t as u32,
                    start,
                    end: members.len() as u32,
                });
            }
            if from_total {
                let a = &self.a[t * channels..(t + 1) * channels];
                first_writes.push(
                    live.iter()
                        .zip(&group_of)
                        .any(|(&i, &g)| g == 0 && a[i as usize] != 0.0),
                );
            }
            groups.push(token_groups);
            by_group.push(split);
        }
        let d_model = self.down.rows();
        let sums = self
            .down
            .group_sums(self.a, self.tokens, &members, &segments);
        let row_of = |row: usize| &sums[row * d_model..(row + 1) * d_model];
        let floor = from_total.then(|| {
            let mut floor = vec![0f32; self.tokens * d_model];
            for (t, token_groups) in groups.iter().enumerate() {
                if !first_writes[t] {
                    continue;
                }
                let floor_t = &mut floor[t * d_model..(t + 1) * d_model];
                floor_t.copy_from_slice(&self.total[t * d_model..(t + 1) * d_model]);
                for &(_, row) in token_groups {
                    floor_t
                        .iter_mut()
                        .zip(row_of(row))
                        .for_each(|(f, s)| *f -= s);
                }
            }
            floor
        });
        let start = floor.as_deref().unwrap_or(base);
        let mut norms = vec![0f64; self.tokens * bounds.len()];
        for (t, token_groups) in groups.iter().enumerate() {
            let mut running = start[t * d_model..(t + 1) * d_model].to_vec();
            let mut now = norm(&running);
            let mut next = token_groups.iter().peekable();
            for j in 0..bounds.len() {
                if let Some(&(_, row)) = next.next_if(|(g, _)| *g == j) {
                    running
                        .iter_mut()
                        .zip(row_of(row))
                        .for_each(|(r, s)| *r += s);
                    now = norm(&running);
                }
                norms[t * bounds.len() + j] = now;
            }
        }
        Step {
            norms,
            bounds: bounds.len(),
            floor,
            groups,
            sums,
            d_model,
            by_group,
        }
    }

    /// Per token: CETT at `eps`.
    pub fn per_token(&self, eps: f64) -> Vec<f64> {
        let base = vec![0f32; self.tokens * self.down.rows()];
        // Sum whichever side of `eps` has fewer neurons.
        let above = self.norms.iter().filter(|&&n| n as f64 >= eps).count();
        let from_total = above < self.norms.len() - above;
        let step = self.step(&self.all_live(), &base, &[eps], from_total);
        (0..self.tokens)
            .map(|t| ratio(step.norms[t], self.total_norms[t]))
            .collect()
    }

    /// Per token: the fraction of neurons with `‖n_i‖ ≥ eps` (active).
    pub fn per_token_frac_active(&self, eps: f64) -> Vec<f64> {
        per_token_frac_active(&self.norms, self.channels(), |_, n| n as f64 >= eps)
    }

    /// The largest of 65 536 candidates on `linspace(min‖n‖, q0.99(‖n‖))` whose mean CETT is
    /// at most `target` (CETT grows with ε; the smallest candidate if none is), and each
    /// token's CETT there.
    ///
    /// The same answer as a binary search over the candidates, in a few refinement steps:
    /// each step tries up to 18 candidates of the range left at once (one
    /// [`PackedMatrix::group_sums`] over the neurons between the range's ends), keeps the
    /// range between the last one within target and the next, and carries the sums below it
    /// forward, so later steps read only the few neurons inside the range. The first step
    /// tries candidates around where the norms alone put the answer, and reads only the
    /// neurons above them.
    pub fn search(&self, target: f64) -> (f64, Vec<f64>) {
        // The search's own loops (splitting neurons by their norms, the estimate's buckets,
        // the running sums' norms) compiled for the widest vectors this CPU has: the crate is
        // built for baseline x86-64 (SSE2), where they ran four lanes wide. Same code, same
        // order of every floating-point operation, so the same answer.
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                // Safety: AVX-512F and BW were detected at runtime.
                return unsafe { self.search_avx512(target) };
            }
            if is_x86_feature_detected!("avx2") {
                // Safety: AVX2 was detected at runtime.
                return unsafe { self.search_avx2(target) };
            }
        }
        self.search_in(target)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,bmi2,popcnt")]
    unsafe fn search_avx512(&self, target: f64) -> (f64, Vec<f64>) {
        self.search_in(target)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi2,popcnt")]
    unsafe fn search_avx2(&self, target: f64) -> (f64, Vec<f64>) {
        self.search_in(target)
    }

    /// [`Cett::search`], inlined into each instruction set's wrapper.
    #[inline(always)]
    fn search_in(&self, target: f64) -> (f64, Vec<f64>) {
        if self.norms.is_empty() {
            return (0.0, vec![0.0; self.tokens]);
        }
        let lo_value = self.norms.iter().fold(f32::INFINITY, |m, &n| m.min(n)) as f64;
        let hi_value = quantile(&self.norms, 0.99);
        let candidate =
            |i: usize| lo_value + (hi_value - lo_value) * i as f64 / (CETT_CANDIDATES - 1) as f64;
        // Candidates [low, high] are left; `low` is within target (or the first, taken when
        // none is). `base`: per token, what its neurons below candidate `low` write.
        let (mut low, mut high) = (0usize, CETT_CANDIDATES - 1);
        let mut base = vec![0f32; self.tokens * self.down.rows()];
        let mut at_low: Option<Vec<f64>> = None;
        let mut live = self.all_live();
        let mut first = true;
        while low < high {
            let tried = if first {
                self.first_boundaries(target, lo_value, hi_value, &candidate)
            } else {
                let count = live.iter().map(Vec::len).sum();
                let norms = live
                    .iter()
                    .enumerate()
                    .flat_map(|(t, list)| list.iter().map(move |&i| self.norms_of(t)[i as usize]));
                boundaries(sample_of(norms, count), low, high, &candidate)
            };
            let bounds: Vec<f64> = tried.iter().map(|&i| candidate(i)).collect();
            let step = self.step(&live, &base, &bounds, first);
            first = false;
            let cett_at = |j: usize| -> Vec<f64> {
                (0..self.tokens)
                    .map(|t| ratio(step.norms[t * step.bounds + j], self.total_norms[t]))
                    .collect()
            };
            // The last boundary within target (CETT is monotone in ε).
            let within = (0..tried.len())
                .rev()
                .map(|j| (j, cett_at(j)))
                .find(|(_, cett)| mean(cett) <= target);
            let next_group = match within {
                Some((j, cett)) => {
                    low = tried[j];
                    high = tried.get(j + 1).map_or(high, |&i| i - 1);
                    at_low = Some(cett);
                    step.carry(&mut base, j);
                    j + 1
                }
                None => {
                    high = tried[0] - 1;
                    0
                }
            };
            live = step
                .by_group
                .iter()
                .map(|groups| groups.group(next_group).to_vec())
                .collect();
        }
        let eps = candidate(low);
        let per_token = at_low.unwrap_or_else(|| self.per_token(eps));
        (eps, per_token)
    }

    /// The first step's candidates: the range where the estimate
    /// `mean_t sqrt(Σ_{‖n_ti‖ < ε} ‖n_ti‖²) / ‖FFN_t‖` (what CETT would be if the neurons wrote in
    /// unrelated directions) crosses [`ESTIMATE_RANGE`] of the target, its ends, and
    /// boundaries inside it as every later step places them.
    #[inline(always)]
    fn first_boundaries(
        &self,
        target: f64,
        lo_value: f64,
        hi_value: f64,
        candidate: &dyn Fn(usize) -> f64,
    ) -> Vec<usize> {
        let last = CETT_CANDIDATES - 1;
        let width = (hi_value - lo_value) / ESTIMATE_BUCKETS as f64;
        if width.is_nan() || width <= 0.0 {
            return vec![last];
        }
        // Per token, Σ‖n‖² per bucket of the candidates' range (norms above it are never
        // below a candidate, so they are left out).
        let channels = self.channels();
        let mut below = vec![0f32; ESTIMATE_BUCKETS];
        // An estimate: buckets from `f32` arithmetic are close enough.
        let (lo_f32, per_width) = (lo_value as f32, (1.0 / width) as f32);
        let mut squares = vec![0f32; ESTIMATE_BUCKETS];
        for (t, norms) in self.norms.chunks_exact(channels.max(1)).enumerate() {
            squares.iter_mut().for_each(|s| *s = 0.0);
            for &n in norms {
                let bucket = ((n - lo_f32) * per_width) as usize;
                if let Some(s) = squares.get_mut(bucket) {
                    *s += n * n;
                }
            }
            // Prefix sums first, then the square roots in a loop of their own (it vectorises).
            let mut running = 0.0;
            for s in squares.iter_mut() {
                running += *s;
                *s = running;
            }
            let inverse = ratio(1.0, self.total_norms[t]) as f32;
            for (b, s) in below.iter_mut().zip(&squares) {
                *b += s.sqrt() * inverse;
            }
        }
        let tokens = self.tokens.max(1) as f64;
        // The first bucket whose upper edge reaches `fraction` of the target.
        let reaches = |fraction: f64| {
            below
                .iter()
                .position(|&sum| sum as f64 / tokens >= fraction * target)
                .unwrap_or(ESTIMATE_BUCKETS - 1)
        };
        let (from, to) = (reaches(ESTIMATE_RANGE.0), reaches(ESTIMATE_RANGE.1));
        // The candidates at the range's ends: the lower edge of `from`, the upper of `to`.
        let low = (from * last / ESTIMATE_BUCKETS).max(1);
        let high = ((to + 1) * last)
            .div_ceil(ESTIMATE_BUCKETS)
            .clamp(low, last);
        let (lo_n, hi_n) = (
            lo_value + width * from as f64,
            lo_value + width * (to + 1) as f64,
        );
        // Boundaries at quantiles of the neurons in range, from a strided sample of all of
        // them (counting and filtering all ~10⁵ first was a tenth of the search).
        let (lo_n, hi_n) = (lo_n as f32, hi_n as f32);
        let stride = (self.norms.len() / FIRST_SAMPLE).max(1);
        let sample: Vec<f32> = self
            .norms
            .iter()
            .step_by(stride)
            .copied()
            .filter(|&n| lo_n <= n && n < hi_n)
            .collect();
        let mut tried = boundaries(sample, low, high, candidate);
        tried.push(low);
        tried.sort_unstable();
        tried.dedup();
        tried
    }
}

/// At most ~4096 of `count` values, evenly strided: plenty to place quantiles.
fn sample_of(values: impl Iterator<Item = f32>, count: usize) -> Vec<f32> {
    values.step_by(count.div_ceil(4096).max(1)).collect()
}

/// The candidates one step tries in `(low, high]`: evenly spaced, and at quantiles of the
/// live neurons' norms `sample` (so that a range holding most neurons is split among them).
fn boundaries(
    mut sample: Vec<f32>,
    low: usize,
    high: usize,
    candidate: &dyn Fn(usize) -> f64,
) -> Vec<usize> {
    if low >= high {
        return vec![high];
    }
    let span = high - low;
    let mut tried: Vec<usize> = (1..=EVEN_BOUNDARIES)
        .map(|u| low + (span * u).div_ceil(EVEN_BOUNDARIES))
        .collect();
    let (lo_value, step) = (candidate(0), candidate(1) - candidate(0));
    if step > 0.0 && !sample.is_empty() {
        sample.sort_unstable_by(f32::total_cmp);
        for q in 1..=QUANTILE_BOUNDARIES {
            let value = sample[(sample.len() - 1) * q / (QUANTILE_BOUNDARIES + 1)] as f64;
            let i = ((value - lo_value) / step).ceil();
            if i.is_finite() {
                tried.push((i.max(0.0) as usize).clamp(low + 1, high));
            }
        }
    }
    tried.sort_unstable();
    tried.dedup();
    tried
}

/// `part / whole`, 0 when `whole` is (a token whose FFN writes nothing).
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// Linear-interpolation quantile (numpy's default) of unsorted values, without sorting them
/// all: the two order statistics it needs are found among the values above a sampled bound.
pub fn quantile(values: &[f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let (rank, frac) = (pos.floor() as usize, pos - pos.floor());
    // The values at ranks ≥ `rank` (ascending), from a bound a sample puts safely below it.
    let stride = (n / 2048).max(1);
    let mut sample: Vec<f32> = values.iter().copied().step_by(stride).collect();
    sample.sort_unstable_by(f32::total_cmp);
    let margin = sample.len() / 64 + 2;
    let guess = rank * sample.len() / n;
    let bound = sample[guess.saturating_sub(margin)];
    let mut top: Vec<f32> = values.iter().copied().filter(|&v| v >= bound).collect();
    let below = n - top.len();
    if below > rank {
        // The sample misled (it cannot be far off, but exactness first): use every value.
        top = values.to_vec();
    }
    let below = n - top.len();
    let i = rank - below;
    let (_, &mut at, rest) = top.select_nth_unstable_by(i, f32::total_cmp);
    let at = at as f64;
    match rest.iter().copied().reduce(f32::min) {
        Some(next) => at + (next as f64 - at) * frac,
        None => at,
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
    with_rows(t, |values, channels| (values.to_vec(), channels))
}

/// [`rows`] read in place: `f(values, channels)`.
fn with_rows<T>(t: &Tensor, f: impl FnOnce(&[f32], usize) -> T) -> Result<T, ModelError> {
    let t = t.get(0)?;
    let tokens = t.dim(0)?;
    crate::model::transformer::with_f32_slice(&t, |values| f(values, values.len() / tokens.max(1)))
}

fn captured<'a>(c: &'a crate::model::Captures, name: &str) -> Result<&'a Tensor, ModelError> {
    c.get(name)
        .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))
}

/// Sparsity of `tokens` under `method`, for every hook matching `hook_glob` (`zero`, `eps`) or
/// every MLP layer whose `mlp.hook_post` matches it (the other methods, which read the MLP's
/// internals). `calibration` sequences set the CATS and CHESS thresholds; CETT's ε search runs
/// on the prompt itself. Rows before `first_scored` (a BOS) are not part of the text: temporal
/// sparsity starts after them (the other methods measure every row).
pub fn measure(
    model: &Transformer,
    tokens: &[u32],
    calibration: &[Vec<u32>],
    method: Method,
    hook_glob: &str,
    first_scored: usize,
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
            let (per_token, frac_active, threshold) =
                activity(&values, channels, method, first_scored);
            result.push(LayerSparsity {
                layer: layer_of(&name),
                hook: name,
                frac_active,
                per_token_frac_active: per_token,
                threshold,
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
        .map(|&l| measure_mlp_layer(model, l, &out.captures, &calibration, method, first_scored))
        .collect()
}

/// The hooks [`measure_mlp_layer`] reads for layer `l` (`hook_mlp_out`: CETT's whole FFN
/// output, which a capture keeps for free).
pub fn mlp_hooks(model: &Transformer, l: usize) -> Vec<String> {
    let mut v = vec![
        format!("blocks.{l}.mlp.hook_pre"),
        format!("blocks.{l}.mlp.hook_post"),
        format!("blocks.{l}.hook_mlp_out"),
    ];
    if model.blocks.get(l).is_some_and(|b| b.mlp.gated) {
        v.push(format!("blocks.{l}.mlp.hook_pre_linear"));
    }
    v
}

/// Per token and overall, the share of channels a method that reads only the values themselves
/// (zero, eps, delta) counts as active, and its threshold.
fn activity(
    values: &[f32],
    channels: usize,
    method: Method,
    first_scored: usize,
) -> (Vec<f64>, f64, Option<f64>) {
    match method {
        Method::Delta { theta } => {
            let (per_token, changed) = delta_frac_changed(values, channels, theta, first_scored);
            (per_token, changed, Some(theta))
        }
        Method::Eps { eps } => {
            let f = per_token_frac_active(values, channels, |_, v| (v.abs() as f64) >= eps);
            let m = mean(&f);
            (f, m, Some(eps))
        }
        Method::Core { alpha } => {
            // Rows before `first_scored` (a BOS) are not tokens of the text: shown, not averaged.
            let f: Vec<f64> = values
                .chunks_exact(channels.max(1))
                .map(|row| {
                    crate::analysis::core_neurons::token_core(row, alpha).len() as f64
                        / channels.max(1) as f64
                })
                .collect();
            let m = mean(f.get(first_scored..).unwrap_or(&[]));
            (f, m, Some(alpha))
        }
        _ => {
            let f = per_token_frac_active(values, channels, |_, v| v != 0.0);
            let m = mean(&f);
            (f, m, None)
        }
    }
}

/// Sparsity of MLP layer `l` from a pass that captured [`mlp_hooks`] (batch row 0), with CATS
/// and CHESS thresholds calibrated on `calibration` passes (ignored by the other methods).
/// Rows before `first_scored` are a BOS (see [`measure`]).
pub fn measure_mlp_layer(
    model: &Transformer,
    l: usize,
    captures: &crate::model::Captures,
    calibration: &[&crate::model::Captures],
    method: Method,
    first_scored: usize,
) -> Result<LayerSparsity, ModelError> {
    let block = model
        .blocks
        .get(l)
        .ok_or_else(|| ModelError::InvalidInput(format!("no layer {l}")))?;
    let hook = format!("blocks.{l}.mlp.hook_post");
    // s = act(hook_pre): the activation-function output CATS and CHESS threshold.
    let s_of = |c: &crate::model::Captures| -> Result<(Vec<f32>, usize), ModelError> {
        let (mut pre, channels) = rows(captured(c, &format!("blocks.{l}.mlp.hook_pre"))?)?;
        block.mlp.act.apply_in_place(&mut pre)?;
        Ok((pre, channels))
    };
    let u_of = |c: &crate::model::Captures| -> Result<Option<Vec<f32>>, ModelError> {
        if !block.mlp.gated {
            return Ok(None);
        }
        Ok(Some(
            rows(captured(c, &format!("blocks.{l}.mlp.hook_pre_linear"))?)?.0,
        ))
    };
    // A calibration pass's `s`; `None` for the prompt calibrating itself (the worker's
    // baseline), whose `s` is at hand.
    let calibration_s = |c: &&crate::model::Captures| -> Result<Option<Vec<f32>>, ModelError> {
        if std::ptr::eq(*c, captures) {
            Ok(None)
        } else {
            Ok(Some(s_of(c)?.0))
        }
    };
    let (per_token, threshold, mean_cett) = match method {
        Method::Zero | Method::Eps { .. } | Method::Delta { .. } | Method::Core { .. } => {
            let (per_token, frac_active, threshold) =
                with_rows(captured(captures, &hook)?, |a, channels| {
                    activity(a, channels, method, first_scored)
                })?;
            // Temporal sparsity's mean leaves out the rows with no delta.
            return Ok(LayerSparsity {
                hook,
                layer: Some(l),
                frac_active,
                per_token_frac_active: per_token,
                threshold,
                mean_cett: None,
            });
        }
        Method::Cats { k } => {
            let (s, channels) = s_of(captures)?;
            let parts = calibration
                .iter()
                .map(calibration_s)
                .collect::<Result<Vec<_>, _>>()?;
            let t = match parts.as_slice() {
                [None] => cats_threshold(&s, k),
                _ => {
                    let all: Vec<f32> = parts
                        .iter()
                        .flat_map(|part| part.as_deref().unwrap_or(&s))
                        .copied()
                        .collect();
                    cats_threshold(&all, k)
                }
            };
            let f = per_token_frac_active(&s, channels, |_, v| (v.abs() as f64) >= t);
            (f, Some(t), None)
        }
        Method::Chess { k } => {
            let (s, channels) = s_of(captures)?;
            let mut data = Vec::new();
            for c in calibration {
                data.push((calibration_s(c)?, u_of(c)?));
            }
            let seqs: Vec<ChessSequence<'_>> = data
                .iter()
                .map(|(s_c, u)| ChessSequence {
                    s: s_c.as_deref().unwrap_or(&s),
                    u: u.as_deref(),
                })
                .collect();
            let t = chess_thresholds(&seqs, channels, k);
            let f = per_token_frac_active(&s, channels, |i, v| (v.abs() as f64) >= t[i]);
            (f, None, None)
        }
        Method::Cett { target } => cett_layer(block, l, captures, &hook, Err(target))?,
        Method::CettEps { eps } => cett_layer(block, l, captures, &hook, Ok(eps))?,
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
    l: usize,
    captures: &crate::model::Captures,
    hook: &str,
    eps_or_target: Result<f64, f64>,
) -> Result<LayerResult, ModelError> {
    let (a, _) = rows(captured(captures, hook)?)?;
    let down = &block.mlp.down;
    // The FFN output without its bias, from the pass when it kept it: `hook_mlp_out` is the
    // down projection's output plus its bias unless a norm follows the MLP (Gemma's).
    let total = match captures.get(&format!("blocks.{l}.hook_mlp_out")) {
        Some(out) if block.mlp_post_norm.is_none() => {
            let (mut out, _) = rows(out)?;
            if let Some(bias) = &down.bias {
                for row in out.chunks_exact_mut(bias.len().max(1)) {
                    row.iter_mut().zip(bias.iter()).for_each(|(o, b)| *o -= b);
                }
            }
            Some(out)
        }
        _ => None,
    };
    let cett = Cett::new(&a, &down.weight, total)?;
    let (eps, per_token) = match eps_or_target {
        Ok(eps) => (eps, cett.per_token(eps)),
        Err(target) => cett.search(target),
    };
    let f = cett.per_token_frac_active(eps);
    Ok((f, Some(eps), Some(mean(&per_token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linear-interpolation quantile of sorted values (numpy/torch default).
    fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
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
        let t = cats_threshold(&s, 0.5);
        assert!((t - 0.1).abs() < 1e-9, "t = {t}");
        let frac = per_token_frac_active(&s, 6, |_, v| (v.abs() as f64) >= t);
        assert_eq!(frac, vec![0.5]);
        // Another k moves the threshold to the next value's bin.
        assert!((cats_threshold(&s, 0.7) - 0.3).abs() < 1e-9);
        // Values ≥ 1 share the top bin: the threshold caps at 1.
        assert_eq!(cats_threshold(&[2.0f32, 3.0], 0.5), 1.0);
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
        // W_down [d_model = 2, channels = 4]: channel i writes (1, 0) or (0, 1).
        let w_down = PackedMatrix::from_rows(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 2, 4);
        let cett = Cett::new(&a, &w_down, None).unwrap();
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
        let (eps, at_eps) = cett.search(0.1);
        assert!(eps > 0.2 && eps <= 1.0, "{eps}");
        assert!(mean(&cett.per_token(eps)) <= 0.1);
        // The search sums from the other side of ε than `per_token` here: the same
        // values up to f32 rounding.
        for (x, y) in at_eps.iter().zip(&cett.per_token(eps)) {
            assert!((x - y).abs() < 1e-7, "{x} vs {y}");
        }
    }

    /// The stepwise search finds what a plain binary search over the 65 536 candidates finds
    /// (definitions.md §4), on layers shaped like a real model's and on awkward ones.
    #[test]
    fn cett_search_matches_a_binary_search() {
        let mut seed = 0x2545_f491_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for &(tokens, channels, d_model) in &[(7, 96, 40), (3, 33, 5), (12, 200, 64), (1, 1, 1)] {
            let w: Vec<f32> = (0..d_model * channels)
                .map(|_| (next() - 0.5) as f32)
                .collect();
            // Heavy-tailed activations (most near zero), some exact zeros, as SiLU·up gives.
            let a: Vec<f32> = (0..tokens * channels)
                .map(|i| {
                    if i % 11 == 0 {
                        0.0
                    } else {
                        ((next() - 0.5) * (-4.0 * next().max(1e-9).ln())) as f32
                    }
                })
                .collect();
            let down = PackedMatrix::from_rows(&w, d_model, channels);
            let cett = Cett::new(&a, &down, None).unwrap();
            for target in [0.0, 0.05, 0.2, 0.5, 0.9, 1.0] {
                let (eps, at_eps) = cett.search(target);
                // definitions.md's binary search, CETT evaluated afresh at each candidate.
                let mut norms: Vec<f64> = cett.norms.iter().map(|&n| n as f64).collect();
                norms.sort_by(f64::total_cmp);
                let (lo_v, hi_v) = (norms[0], quantile_sorted(&norms, 0.99));
                let cand = |i: usize| lo_v + (hi_v - lo_v) * i as f64 / 65_535.0;
                let ok = |i: usize| mean(&cett.per_token(cand(i))) <= target;
                let (mut lo, mut hi) = (0usize, 65_536usize);
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    if mid < 65_536 && ok(mid) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                assert_eq!(
                    eps,
                    cand(lo),
                    "{tokens}x{channels}x{d_model} target {target}"
                );
                let fresh = cett.per_token(eps);
                for (x, y) in at_eps.iter().zip(&fresh) {
                    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                }
            }
        }
    }

    /// The counting sort's runs (any length, a remainder past the last whole run, empty
    /// groups) keep every group's neurons, ascending.
    #[test]
    fn counting_sort_keeps_each_group_ascending() {
        for len in [0usize, 1, 3, 4, 5, 17, 1536] {
            let neurons: Vec<u32> = (0..len as u32).map(|i| i * 3 + 1).collect();
            let group_of: Vec<u8> = (0..len).map(|i| ((i * 7 + i / 5) % 5) as u8).collect();
            let split = Grouped::sort(&neurons, &group_of, 6);
            for g in 0..6 {
                let expected: Vec<u32> = neurons
                    .iter()
                    .zip(&group_of)
                    .filter(|&(_, &h)| h as usize == g)
                    .map(|(&i, _)| i)
                    .collect();
                assert_eq!(split.group(g), expected.as_slice(), "len {len}, group {g}");
            }
        }
    }

    #[test]
    fn quantile_without_sorting_matches_the_sorted_one() {
        let values: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919) % 10_007) as f32 * 0.5)
            .collect();
        let mut sorted: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.3, 0.5, 0.99, 0.999, 1.0] {
            assert_eq!(quantile(&values, q), quantile_sorted(&sorted, q), "q = {q}");
        }
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert!((quantile_sorted(&v, 0.99) - 3.97).abs() < 1e-12);
    }
}
