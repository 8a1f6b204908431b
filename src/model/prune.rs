//! One-shot weight pruning of an open model without touching its file (definitions §14):
//! magnitude (per matrix or one global threshold), random (seeded) and N:M, over the attention
//! matrices, the MLP matrices or both. The pruned model is a copy of the [`Transformer`] whose
//! pruned matrices are new (one extra copy of those at most); everything else — embeddings,
//! norms, biases, the unembedding — is shared with the original, which stays as it was.

use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use super::packed::{MagnitudeMask, PackedMatrix};
use super::transformer::{Linear, Transformer};
use super::{ModelError, Result};
use crate::rng::Rng;

/// How weights are chosen for removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum PruneMethod {
    /// Per matrix: the round(s·n) smallest |w| (ties: the lower row-major index first).
    Magnitude,
    /// One threshold over every pruned matrix pooled (layers end up unequally sparse).
    MagnitudeGlobal,
    /// Per matrix, round((1 − s)·n) weights kept, drawn without replacement from the seed (one
    /// stream over the matrices in layer order).
    Random { seed: u64 },
    /// In each group of `m` consecutive inputs of an output row, the `n` largest |w| kept.
    NM { n: usize, m: usize },
}

impl PruneMethod {
    /// Whether it cuts along the weights' magnitude order, so a [`MagnitudePruner`] moves it
    /// without writing weights.
    pub fn has_magnitude_order(self) -> bool {
        matches!(self, PruneMethod::Magnitude | PruneMethod::MagnitudeGlobal)
    }
}

impl std::fmt::Display for PruneMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneMethod::Magnitude => write!(f, "magnitude"),
            PruneMethod::MagnitudeGlobal => write!(f, "magnitude-global"),
            PruneMethod::Random { seed } => write!(f, "random:{seed}"),
            PruneMethod::NM { n, m } => write!(f, "nm:{n}:{m}"),
        }
    }
}

impl std::str::FromStr for PruneMethod {
    type Err = String;
    /// `magnitude`, `magnitude-global`, `random:SEED` or `nm:N:M`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let number = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("{s}: {t:?} is not a whole number"))
        };
        match parts.as_slice() {
            ["magnitude"] => Ok(PruneMethod::Magnitude),
            ["magnitude-global"] => Ok(PruneMethod::MagnitudeGlobal),
            ["random", seed] => Ok(PruneMethod::Random {
                seed: number(seed)?,
            }),
            ["nm", n, m] => {
                let (n, m) = (number(n)? as usize, number(m)? as usize);
                if m == 0 || n > m || m > 1024 {
                    return Err(format!("{s}: N:M needs 0 ≤ N ≤ M, 1 ≤ M ≤ 1024"));
                }
                Ok(PruneMethod::NM { n, m })
            }
            _ => Err(format!(
                "unknown pruning method {s:?} (magnitude, magnitude-global, random:SEED, nm:N:M)"
            )),
        }
    }
}

/// Which block weights are pruned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// W_in (W_gate, W_up) and W_out.
    Mlp,
    /// W_Q, W_K, W_V, W_O.
    Attn,
    #[default]
    All,
}

impl PruneScope {
    pub const ALL: [PruneScope; 3] = [PruneScope::Mlp, PruneScope::Attn, PruneScope::All];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PruneScope::Mlp => "mlp",
            PruneScope::Attn => "attn",
            PruneScope::All => "all",
        }
    }
}

impl std::str::FromStr for PruneScope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mlp" => Ok(PruneScope::Mlp),
            "attn" => Ok(PruneScope::Attn),
            "all" => Ok(PruneScope::All),
            _ => Err(format!("unknown scope {s:?} (mlp, attn, all)")),
        }
    }
}

/// What a pruning did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PruneReport {
    /// The share asked for (for N:M, 1 − N/M).
    pub sparsity: f64,
    /// Zero weights among the prunable ones afterwards (weights already zero count).
    pub achieved_sparsity: f64,
    pub prunable_weights: usize,
    /// Each pruned matrix: `(name, its achieved sparsity)`, `blocks.3.attn.W_Q` style.
    pub matrices: Vec<(String, f64)>,
}

/// One prunable matrix: rows `rows` of a (possibly stacked) linear layer, `[out, in]`.
struct Part {
    name: String,
    layer: usize,
    /// Which linear layer of the block.
    slot: Slot,
    rows: Range<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Qkv,
    O,
    In,
    Out,
}

fn linear(t: &Transformer, layer: usize, slot: Slot) -> &Linear {
    let b = &t.blocks[layer];
    match slot {
        Slot::Qkv => &b.attn.qkv,
        Slot::O => &b.attn.o,
        Slot::In => &b.mlp.w_in,
        Slot::Out => &b.mlp.down,
    }
}

fn linear_mut(t: &mut Transformer, layer: usize, slot: Slot) -> &mut Linear {
    let b = &mut t.blocks[layer];
    match slot {
        Slot::Qkv => &mut b.attn.qkv,
        Slot::O => &mut b.attn.o,
        Slot::In => &mut b.mlp.w_in,
        Slot::Out => &mut b.mlp.down,
    }
}

/// The prunable matrices of `scope`, in layer order, each stacked layer split into its parts.
fn parts(t: &Transformer, scope: PruneScope) -> Vec<Part> {
    let mut out = Vec::new();
    for (l, b) in t.blocks.iter().enumerate() {
        let name = |m: &str| format!("blocks.{l}.{m}");
        if scope != PruneScope::Mlp {
            let (q, kv) = (
                b.attn.n_heads * b.attn.d_head,
                b.attn.n_kv_heads * b.attn.d_head,
            );
            for (m, rows) in [
                ("attn.W_Q", 0..q),
                ("attn.W_K", q..q + kv),
                ("attn.W_V", q + kv..q + 2 * kv),
            ] {
                out.push(Part {
                    name: name(m),
                    layer: l,
                    slot: Slot::Qkv,
                    rows,
                });
            }
            out.push(Part {
                name: name("attn.W_O"),
                layer: l,
                slot: Slot::O,
                rows: 0..b.attn.o.weight.rows(),
            });
        }
        if scope != PruneScope::Attn {
            let d_mlp = b.mlp.width();
            if b.mlp.gated {
                out.push(Part {
                    name: name("mlp.W_gate"),
                    layer: l,
                    slot: Slot::In,
                    rows: 0..d_mlp,
                });
                out.push(Part {
                    name: name("mlp.W_in"),
                    layer: l,
                    slot: Slot::In,
                    rows: d_mlp..2 * d_mlp,
                });
            } else {
                out.push(Part {
                    name: name("mlp.W_in"),
                    layer: l,
                    slot: Slot::In,
                    rows: 0..b.mlp.w_in.weight.rows(),
                });
            }
            out.push(Part {
                name: name("mlp.W_out"),
                layer: l,
                slot: Slot::Out,
                rows: 0..b.mlp.down.weight.rows(),
            });
        }
    }
    out
}

/// k = round(s·n), half to even (as PyTorch's `prune` rounds, with Python's `round`).
fn count_of(share: f64, n: usize) -> usize {
    ((share * n as f64).round_ties_even() as usize).min(n)
}

/// Zeroes the `k` smallest |w| of `values` (ties: the lower index first).
pub fn prune_smallest(values: &mut [f32], k: usize) {
    if k == 0 {
        return;
    }
    let k = k.min(values.len());
    // The k-th smallest magnitude; everything below it goes, then ties in index order.
    let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    let (_, &mut threshold, _) = magnitudes.select_nth_unstable_by(k - 1, f32::total_cmp);
    let below = values.iter().filter(|v| v.abs() < threshold).count();
    let mut ties = k - below;
    for v in values.iter_mut() {
        let a = v.abs();
        if a < threshold {
            *v = 0.0;
        } else if a == threshold && ties > 0 {
            *v = 0.0;
            ties -= 1;
        }
    }
}

/// Keeps exactly `keep` of `values`, drawn without replacement with `rng`: each weight gets
/// the next number of the stream as its key, and the `n − keep` with the smallest keys go
/// (sorting i.i.d. keys is a uniform random order; a script can draw the same keys).
pub fn prune_random(values: &mut [f32], keep: usize, rng: &mut Rng) {
    let n = values.len();
    let remove = n - keep.min(n);
    let mut keyed: Vec<(u64, u32)> = (0..n as u32).map(|i| (rng.next_u64(), i)).collect();
    if remove == 0 {
        return;
    }
    keyed.select_nth_unstable(remove - 1);
    for &(_, i) in &keyed[..remove] {
        values[i as usize] = 0.0;
    }
}

/// N:M along each row of `cols` inputs: in every whole group of `m`, the `n` largest |w| kept
/// (ties: the lower index kept); a trailing partial group stays dense.
pub fn prune_n_m(values: &mut [f32], cols: usize, n: usize, m: usize) {
    for row in values.chunks_exact_mut(cols.max(1)) {
        for group in row.chunks_exact_mut(m) {
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| group[b].abs().total_cmp(&group[a].abs()).then(a.cmp(&b)));
            for &i in &order[n..] {
                group[i] = 0.0;
            }
        }
    }
}

/// Bytes a pruning of `scope` takes beside the model: the pruned matrices' packed copies, and
/// while they are made, their values unpacked (with a magnitude order's working copy).
pub fn bytes_needed(t: &Transformer, scope: PruneScope) -> u64 {
    prunable_weights(t, scope) * 4 * 3
}

fn prunable_weights(t: &Transformer, scope: PruneScope) -> u64 {
    parts(t, scope)
        .iter()
        .map(|p| (p.rows.len() * linear(t, p.layer, p.slot).weight.cols()) as u64)
        .sum()
}

/// The parts of each linear layer, in order, as index ranges into `parts` (a stacked layer's
/// parts follow each other), with the layer they belong to.
fn by_linear(parts: &[Part]) -> impl Iterator<Item = (usize, Slot, Range<usize>)> + '_ {
    let mut start = 0;
    parts
        .chunk_by(|a, b| a.layer == b.layer && a.slot == b.slot)
        .map(move |group| {
            let range = start..start + group.len();
            start = range.end;
            (group[0].layer, group[0].slot, range)
        })
}

/// A copy of `t` with its `scope` weights pruned to `sparsity` by `method` (ignored by N:M,
/// whose sparsity is 1 − N/M).
pub fn prune(
    t: &Transformer,
    method: PruneMethod,
    scope: PruneScope,
    sparsity: f64,
) -> Result<(Transformer, PruneReport)> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(ModelError::InvalidInput(format!(
            "sparsity must lie in [0, 1], not {sparsity}"
        )));
    }
    let parts = parts(t, scope);
    // Each part's weights, row-major `[out, in]`.
    let mut values: Vec<Vec<f32>> = parts
        .iter()
        .map(|p| {
            let w = &linear(t, p.layer, p.slot).weight;
            p.rows.clone().flat_map(|r| w.row(r)).collect()
        })
        .collect();
    let cols = |p: &Part| linear(t, p.layer, p.slot).weight.cols();
    let asked = match method {
        PruneMethod::NM { n, m } => 1.0 - n as f64 / m as f64,
        _ => sparsity,
    };
    match method {
        PruneMethod::Magnitude => {
            for v in &mut values {
                let k = count_of(sparsity, v.len());
                prune_smallest(v, k);
            }
        }
        PruneMethod::MagnitudeGlobal => {
            // One pool: the k smallest of all, ties to the earlier matrix and index.
            let total: usize = values.iter().map(Vec::len).sum();
            let mut pooled: Vec<f32> = Vec::with_capacity(total);
            for v in &values {
                pooled.extend_from_slice(v);
            }
            prune_smallest(&mut pooled, count_of(sparsity, total));
            let mut at = 0;
            for v in &mut values {
                let n = v.len();
                v.copy_from_slice(&pooled[at..at + n]);
                at += n;
            }
        }
        PruneMethod::Random { seed } => {
            let mut rng = Rng::new(seed);
            for v in &mut values {
                let keep = count_of(1.0 - sparsity, v.len());
                prune_random(v, keep, &mut rng);
            }
        }
        PruneMethod::NM { n, m } => {
            for (p, v) in parts.iter().zip(&mut values) {
                prune_n_m(v, cols(p), n, m);
            }
        }
    }
    // The new matrices: the parts of a stacked layer cover its rows in order, so their pruned
    // values one after another are its new weights, packed once.
    let mut pruned = t.clone();
    let mut zeros = 0usize;
    let mut total = 0usize;
    let mut matrices = Vec::with_capacity(parts.len());
    for (layer, slot, members) in by_linear(&parts) {
        let original = linear(t, layer, slot);
        let (rows, k) = (original.weight.rows(), original.weight.cols());
        let mut all: Vec<f32> = Vec::with_capacity(rows * k);
        for i in members {
            all.extend_from_slice(&values[i]);
            let z = values[i].iter().filter(|&&w| w == 0.0).count();
            matrices.push((
                parts[i].name.clone(),
                z as f64 / values[i].len().max(1) as f64,
            ));
            zeros += z;
            total += values[i].len();
        }
        if all.len() != rows * k {
            return Err(ModelError::InvalidInput(format!(
                "pruning blocks.{layer}: its parts hold {} weights, the layer {}",
                all.len(),
                rows * k
            )));
        }
        *linear_mut(&mut pruned, layer, slot) = Linear {
            weight: Arc::new(PackedMatrix::from_rows(&all, rows, k)),
            bias: original.bias.clone(),
        };
    }
    Ok((
        pruned,
        PruneReport {
            sparsity: asked,
            achieved_sparsity: zeros as f64 / total.max(1) as f64,
            prunable_weights: total,
            matrices,
        },
    ))
}

/// Magnitude pruning, per matrix or global, that moves (the pruning slider): each matrix's
/// weights kept in order of magnitude, so that any sparsity's cuts are found at once, and the
/// pruned model's matrices are views of the dense ones with a [`MagnitudeMask`] each (no weight
/// is copied or written: a move of any size costs a few numbers per row). Gives exactly
/// [`prune`]'s `Magnitude` and `MagnitudeGlobal` weights at every sparsity. Memory: a `u32`
/// per weight.
pub struct MagnitudePruner {
    scope: PruneScope,
    parts: Vec<Part>,
    /// Each part's weights by increasing |w| (ties: the lower row-major index first), as
    /// offsets into its matrix's packed values.
    order: Vec<Vec<u32>>,
    /// Weights already zero in each part (the first in its order).
    zeros: Vec<usize>,
    /// How many of each part's order are dropped in `model` now.
    cut: Vec<usize>,
    sparsity: f64,
    /// The pruned model (everything outside the scope shared with the dense model, the
    /// scope's matrices masked views of the dense ones).
    model: Transformer,
}

/// Row-major indices of `values` by increasing |v|, ties in index order: a stable LSD radix
/// sort on the magnitude's bits (for non-negative floats, bit order is value order; NaN sorts
/// last, as `total_cmp` puts it).
fn magnitude_order(values: &[f32]) -> Vec<u32> {
    const DIGIT: u32 = 16;
    let keys: Vec<u32> = values.iter().map(|v| v.to_bits() & 0x7fff_ffff).collect();
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    let mut next = vec![0u32; values.len()];
    for shift in [0, DIGIT] {
        let mut starts = vec![0usize; (1 << DIGIT) + 1];
        for &k in &keys {
            starts[((k >> shift) & 0xffff) as usize + 1] += 1;
        }
        for d in 1..starts.len() {
            starts[d] += starts[d - 1];
        }
        for &i in &order {
            let d = ((keys[i as usize] >> shift) & 0xffff) as usize;
            next[starts[d]] = i;
            starts[d] += 1;
        }
        std::mem::swap(&mut order, &mut next);
    }
    order
}

impl MagnitudePruner {
    /// Bytes it holds for `t`'s `scope`: the orders (a `u32` per weight).
    pub fn bytes_needed(t: &Transformer, scope: PruneScope) -> u64 {
        prunable_weights(t, scope) * 4
    }

    /// At sparsity 0 (the model equals the dense one).
    pub fn new(t: &Transformer, scope: PruneScope) -> Result<Self> {
        use rayon::prelude::*;
        let parts = parts(t, scope);
        if let Some(p) = parts
            .iter()
            .find(|p| linear(t, p.layer, p.slot).weight.values().len() > u32::MAX as usize)
        {
            return Err(ModelError::InvalidInput(format!(
                "{} has more than 2^32 weights: too large to prune here",
                p.name
            )));
        }
        let ordered: Vec<(Vec<u32>, usize)> = parts
            .par_iter()
            .map(|p| {
                let w = &linear(t, p.layer, p.slot).weight;
                let values: Vec<f32> = p.rows.clone().flat_map(|r| w.row(r)).collect();
                let zeros = values.iter().filter(|&&v| v == 0.0).count();
                // Kept as offsets into the packed values: a cut's boundary weight is then read
                // without unpacking its row.
                let k = w.cols().max(1);
                let mut order = magnitude_order(&values);
                for j in &mut order {
                    let i = *j as usize;
                    *j = w.offset(p.rows.start + i / k, i % k) as u32;
                }
                (order, zeros)
            })
            .collect();
        let (order, zeros): (Vec<_>, Vec<_>) = ordered.into_iter().unzip();
        Ok(MagnitudePruner {
            scope,
            cut: vec![0; parts.len()],
            parts,
            order,
            zeros,
            sparsity: 0.0,
            model: t.clone(),
        })
    }

    pub fn scope(&self) -> PruneScope {
        self.scope
    }

    /// The pruned model (cheap to clone: its matrices are shared).
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// Moves the cuts to `sparsity` by `method` (magnitude per matrix or global; `dense` is
    /// the model it was made from, whose matrices the pruned model views). Clones of
    /// [`MagnitudePruner::model`] taken before keep their weights.
    pub fn set_sparsity(
        &mut self,
        dense: &Transformer,
        method: PruneMethod,
        sparsity: f64,
    ) -> Result<PruneReport> {
        if !(0.0..=1.0).contains(&sparsity) {
            return Err(ModelError::InvalidInput(format!(
                "sparsity must lie in [0, 1], not {sparsity}"
            )));
        }
        // Every boundary is read from `dense`: it must be the model the orders came from.
        for (p, order) in self.parts.iter().zip(&self.order) {
            let fits = dense.blocks.get(p.layer).is_some_and(|_| {
                let w = &linear(dense, p.layer, p.slot).weight;
                p.rows.end <= w.rows() && p.rows.len() * w.cols() == order.len()
            });
            if !fits {
                return Err(ModelError::InvalidInput(format!(
                    "pruning {}: not the model the pruner was made from",
                    p.name
                )));
            }
        }
        let magnitude = |i: usize, j: usize| {
            let p = &self.parts[i];
            let bits =
                linear(dense, p.layer, p.slot).weight.values()[self.order[i][j] as usize].to_bits();
            bits & 0x7fff_ffff
        };
        let cuts: Vec<usize> = match method {
            PruneMethod::Magnitude => self
                .order
                .iter()
                .map(|o| count_of(sparsity, o.len()))
                .collect(),
            PruneMethod::MagnitudeGlobal => {
                let total: usize = self.order.iter().map(Vec::len).sum();
                global_cuts(&self.order, &magnitude, count_of(sparsity, total))
            }
            other => {
                return Err(ModelError::InvalidInput(format!(
                    "{other} pruning has no magnitude order to move along"
                )));
            }
        };
        for (layer, slot, members) in by_linear(&self.parts) {
            let original = &linear(dense, layer, slot).weight;
            // One mask covers the parts of a (stacked) linear layer.
            let mut mask = MagnitudeMask::keep_all(original.rows());
            for i in members {
                let boundary = self.order[i].get(cuts[i]).map(|&o| o as usize);
                cut_mask(&mut mask, self.parts[i].rows.clone(), original, boundary);
                self.cut[i] = cuts[i];
            }
            let view = original
                .with_mask(Arc::new(mask))
                .map_err(ModelError::InvalidInput)?;
            linear_mut(&mut self.model, layer, slot).weight = Arc::new(view);
        }
        self.sparsity = sparsity;
        Ok(self.report())
    }

    /// What the current cuts do ([`prune`]'s report for the method and sparsity last set).
    pub fn report(&self) -> PruneReport {
        let mut matrices = Vec::with_capacity(self.parts.len());
        let (mut zeros, mut total) = (0usize, 0usize);
        for (i, p) in self.parts.iter().enumerate() {
            let n = self.order[i].len();
            let z = self.cut[i].max(self.zeros[i]);
            matrices.push((p.name.clone(), z as f64 / n.max(1) as f64));
            zeros += z;
            total += n;
        }
        PruneReport {
            sparsity: self.sparsity,
            achieved_sparsity: zeros as f64 / total.max(1) as f64,
            prunable_weights: total,
            matrices,
        }
    }
}

/// Each part's cut when the `k` smallest weights of all parts pooled go, ties to the earlier
/// part and then the lower index (as [`prune`]'s `MagnitudeGlobal`): the pooled order's `k`-th
/// magnitude is found by bisecting on the magnitude's bits, counting each part's weights below
/// a candidate by bisecting its own order; `magnitude(i, j)` is the bits of part `i`'s `j`-th.
fn global_cuts(
    orders: &[Vec<u32>],
    magnitude: &dyn Fn(usize, usize) -> u32,
    k: usize,
) -> Vec<usize> {
    // Weights of part `i` whose magnitude's bits are below `bits`.
    let below = |i: usize, bits: u64| {
        let (mut lo, mut hi) = (0, orders[i].len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if (magnitude(i, mid) as u64) < bits {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let count_below = |bits: u64| (0..orders.len()).map(|i| below(i, bits)).sum::<usize>();
    // The smallest magnitude `t` with more than `k` weights at or below it: the first weight
    // kept has it (none when `k` is every weight).
    let (mut lo, mut hi) = (0u64, 1u64 << 31);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if count_below(mid + 1) > k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t = lo;
    let mut ties = k.saturating_sub(count_below(t));
    (0..orders.len())
        .map(|i| {
            let (first, end) = (below(i, t), below(i, t + 1));
            let taken = ties.min(end - first);
            ties -= taken;
            first + taken
        })
        .collect()
}

/// Sets `rows`' floors in `mask` so that the weights before `boundary` in the (|w|, row-major
/// index) order are dropped and the rest kept; `boundary` is the first kept weight's offset in
/// `w`'s packed values, `None` when every weight goes.
fn cut_mask(
    mask: &mut MagnitudeMask,
    rows: Range<usize>,
    w: &PackedMatrix,
    boundary: Option<usize>,
) {
    let Some(offset) = boundary else {
        mask.set_rows(rows, MagnitudeMask::DROP_ALL);
        return;
    };
    let (row, col) = w.position(offset);
    let magnitude = w.values()[offset];
    let (above, from) = (
        MagnitudeMask::floor_of(magnitude, false),
        MagnitudeMask::floor_of(magnitude, true),
    );
    // Ties with the boundary's magnitude go in index order: the rows before its row drop
    // them, the rows after keep them, and its row keeps them from its column on.
    mask.set_rows(rows.start..row, above);
    mask.set_rows(row + 1..rows.end, from);
    mask.set_rows(row..row + 1, above);
    mask.switch(row, col, from);
}

/// Essential sparsity's knee (definitions §14, without fine-tuning): the last sparsity whose
/// loss, and every lower one's, is within `(1 + ε)` of the dense loss (`points` as
/// `(sparsity, mean loss)`, in increasing sparsity; the dense loss is `dense`).
pub fn knee(points: &[(f64, f64)], dense: f64, epsilon: f64) -> Option<f64> {
    let tolerance = (1.0 + epsilon) * dense;
    points
        .iter()
        .take_while(|(_, loss)| *loss <= tolerance)
        .last()
        .map(|(s, _)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Definitions §14's examples.
    #[test]
    fn magnitude_per_matrix_and_global() {
        let (a, b) = (vec![0.1f32, -0.5, 0.3, 0.9], vec![2.0f32, -1.5, 0.05, 1.0]);
        let (mut pa, mut pb) = (a.clone(), b.clone());
        prune_smallest(&mut pa, count_of(0.5, 4));
        prune_smallest(&mut pb, count_of(0.5, 4));
        assert_eq!(pa, vec![0.0, -0.5, 0.0, 0.9]);
        assert_eq!(pb, vec![2.0, -1.5, 0.0, 0.0]);
        let mut pooled: Vec<f32> = a.iter().chain(&b).copied().collect();
        prune_smallest(&mut pooled, count_of(0.5, 8));
        assert_eq!(pooled, vec![0.0, 0.0, 0.0, 0.9, 2.0, -1.5, 0.0, 1.0]);
    }

    #[test]
    fn two_of_four_keeps_the_two_largest_of_each_group() {
        let mut w = vec![0.3f32, -0.8, 0.1, 0.5, 0.2, 0.2, -0.9, 0.0];
        prune_n_m(&mut w, 8, 2, 4);
        assert_eq!(w, vec![0.0, -0.8, 0.0, 0.5, 0.2, 0.0, -0.9, 0.0]);
        // A trailing partial group stays dense.
        let mut w = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        prune_n_m(&mut w, 6, 2, 4);
        assert_eq!(w, vec![0.0, 0.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn ties_go_to_the_lower_index_and_rounding_is_half_to_even() {
        let mut w = vec![1.0f32; 5];
        prune_smallest(&mut w, count_of(0.5, 5)); // 2.5 → 2
        assert_eq!(w, vec![0.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn random_keeps_exactly_its_share_and_repeats_with_the_seed() {
        let w: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        let run = |seed| {
            let mut v = w.clone();
            prune_random(&mut v, count_of(0.3, 100), &mut Rng::new(seed));
            v
        };
        assert_eq!(run(7).iter().filter(|&&x| x != 0.0).count(), 30);
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_knee_is_the_last_sparsity_within_one_percent() {
        let points: Vec<(f64, f64)> = [3.00, 3.00, 3.01, 3.02, 3.05, 3.40]
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as f64 * 0.1, l))
            .collect();
        assert_eq!(knee(&points, 3.00, 0.01), Some(0.30000000000000004));
    }

    #[test]
    fn methods_parse_and_print_alike() {
        for m in ["magnitude", "magnitude-global", "random:7", "nm:2:4"] {
            assert_eq!(m.parse::<PruneMethod>().unwrap().to_string(), m);
        }
        assert!("nm:5:4".parse::<PruneMethod>().is_err());
        assert!("nm:2:0".parse::<PruneMethod>().is_err());
        assert!("lottery".parse::<PruneMethod>().is_err());
    }
}
