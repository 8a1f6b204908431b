//! Causal attention on host slices: scores, softmax and the weighted sum of values, fused per
//! head and split across threads. For prompts of tens to hundreds of tokens these are many tiny
//! matrix products, where per-op dispatch would cost more than the arithmetic.
//!
//! Layouts follow TransformerLens: `q: [b, t, heads, d_head]`, `k, v: [b, keys, kv_heads,
//! d_head]`, scores and pattern `[b, heads, t, keys]`, `z: [b, t, heads, d_head]`. Query head `h`
//! reads KV head `h / (heads / kv_heads)`. The `t` queries are the last `t` of the `keys`
//! positions: all of them in a full pass, the new ones in a step over cached keys.

use rayon::prelude::*;

use super::packed::{PackedMatrix, Panels};

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    /// Queries.
    pub t: usize,
    /// Keys and values (`≥ t`; query `i` sits at position `keys − t + i`).
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
}

/// Masking and scaling of `q·k`.
#[derive(Clone, Copy, Debug)]
pub struct ScoreRule {
    pub scale: f32,
    /// `tanh(s / cap) · cap` before masking (Gemma 2 style).
    pub softcap: Option<f32>,
    /// Keys further back than this are masked.
    pub window: Option<usize>,
}

/// Queries per task of [`scores`] and [`weighted_values`]. A block of queries reads only the
/// keys up to its last query's position, so the products skip most of the masked upper
/// triangle (at 256 tokens, blocks of 64 compute 62.5 % of the full square), and the
/// `(batch, KV head, block)` tasks are enough to keep both cores busy (three KV heads alone
/// were three tasks for two threads).
const QUERY_BLOCK: usize = 64;

/// The keys a block of queries can see: up to (excluding) the position after its last query.
fn keys_seen(s: Shape, first_query: usize, queries: usize) -> usize {
    s.keys - s.t + first_query + queries
}

/// One task of the blockwise attention: queries `first..first + rows` of every head of KV head
/// `kv`'s group in batch row `batch`.
#[derive(Clone, Copy, Debug)]
struct Task {
    batch: usize,
    kv: usize,
    first: usize,
    rows: usize,
}

/// Every task of a shape, in the order their results are laid out: by batch, KV head, block.
fn tasks(s: Shape) -> Vec<Task> {
    let mut tasks = Vec::new();
    for batch in 0..s.b {
        for kv in 0..s.kv_heads {
            for first in (0..s.t).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(s.t - first);
                tasks.push(Task {
                    batch,
                    kv,
                    first,
                    rows,
                });
            }
        }
    }
    tasks
}

/// `scores[b, h, i, j] = rule(q[b, i, h] · k[b, j, kv(h)])`, `−∞` where masked (keys after the
/// query's position, and beyond the sliding window).
///
/// Each `(batch, KV head, block of queries)` is one matrix product through the packed kernel:
/// the block's queries of the group's heads stacked `[group·rows, d_head]` times the keys it
/// can see `[seen, d_head]`ᵀ. What is masked inside the block's square is computed and
/// discarded; at kernel speed that is cheaper than skipping it.
pub fn scores(q: &[f32], k: &[f32], s: Shape, rule: ScoreRule) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    assert!(t <= n_keys, "attention: more queries than keys");
    assert!(q.len() == s.b * t * s.heads * dh && k.len() == s.b * n_keys * s.kv_heads * dh);
    let offset = n_keys - t;
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; s.b * s.heads * t * n_keys];
    // Each (batch, head)'s rows cut into blocks, then each task takes its block of every head
    // of its group: disjoint slices, written in parallel.
    let mut blocks: Vec<Vec<Option<&mut [f32]>>> = out
        .chunks_mut((t * n_keys).max(1))
        .map(|rows| {
            rows.chunks_mut(QUERY_BLOCK * n_keys.max(1))
                .map(Some)
                .collect()
        })
        .collect();
    let with_rows: Vec<(Task, Vec<&mut [f32]>)> = tasks(s)
        .into_iter()
        .map(|task| {
            let heads = (task.kv * group..(task.kv + 1) * group)
                .filter_map(|head| {
                    let of_head = blocks.get_mut(task.batch * s.heads + head)?;
                    of_head.get_mut(task.first / QUERY_BLOCK)?.take()
                })
                .collect();
            (task, heads)
        })
        .collect();
    let keys = packed_keys(k, s);
    with_rows.into_par_iter().for_each(|(task, mut heads)| {
        let (first, rows) = (task.first, task.rows);
        let seen = keys_seen(s, first, rows);
        let raw = block_scores(q, &keys, s, task);
        let out_rows = heads.iter_mut().flat_map(|h| h.chunks_exact_mut(n_keys));
        for (row_index, (row, raw_row)) in out_rows.zip(raw.chunks_exact(seen)).enumerate() {
            let i = offset + first + row_index % rows;
            row[seen..].fill(f32::NEG_INFINITY);
            row[..seen].copy_from_slice(raw_row);
            mask_row(&mut row[..seen], i, rule);
        }
    });
    out
}

/// Each `(batch, KV head)`'s keys packed once as the kernel reads them (`[keys, d_head]`, in
/// task order's batch-then-head order): every block of queries reads a prefix of them.
fn packed_keys(k: &[f32], s: Shape) -> Vec<PackedMatrix> {
    let (n_keys, dh) = (s.keys, s.d_head);
    (0..s.b * s.kv_heads)
        .into_par_iter()
        .map(|of| {
            let (batch, kv) = (of / s.kv_heads, of % s.kv_heads);
            let keys: Vec<f32> = head_rows(k, s, batch, kv).flatten().copied().collect();
            PackedMatrix::from_rows(&keys, n_keys, dh)
        })
        .collect()
}

/// KV head `kv`'s `d_head` values at each key position of batch row `batch` of `x: [b, keys,
/// kv_heads, d_head]` (the keys or the values), in order.
fn head_rows(x: &[f32], s: Shape, batch: usize, kv: usize) -> impl Iterator<Item = &[f32]> {
    let first = (batch * s.keys * s.kv_heads + kv) * s.d_head;
    x[first..]
        .chunks(s.kv_heads * s.d_head)
        .take(s.keys)
        .map(move |row| &row[..s.d_head])
}

/// One task's raw `q·k`: the block's queries `first..first + rows` of every head of KV head
/// `kv`'s group, stacked `[group·rows, d_head]`, times the keys they can see `[seen, d_head]`ᵀ
/// (`keys`: [`packed_keys`]).
fn block_scores(q: &[f32], keys: &[PackedMatrix], s: Shape, task: Task) -> Vec<f32> {
    let Task {
        batch,
        kv,
        first,
        rows,
    } = task;
    let (t, dh, group) = (s.t, s.d_head, s.heads / s.kv_heads);
    let seen = keys_seen(s, first, rows);
    let mut queries = Vec::with_capacity(group * rows * dh);
    for head in kv * group..(kv + 1) * group {
        for i in first..first + rows {
            queries.extend_from_slice(&q[((batch * t + i) * s.heads + head) * dh..][..dh]);
        }
    }
    keys[batch * s.kv_heads + kv]
        .first_rows(seen)
        .matmul_t_unpacked(&queries, group * rows, None)
}

/// Scales (and soft-caps) query position `i`'s raw scores over keys `0..row.len()` in place,
/// `−∞` for the keys it cannot see.
fn mask_row(row: &mut [f32], i: usize, rule: ScoreRule) {
    let end = (i + 1).min(row.len());
    let from = rule
        .window
        .map_or(0, |w| (i + 1).saturating_sub(w))
        .min(end);
    row[..from].fill(f32::NEG_INFINITY);
    row[end..].fill(f32::NEG_INFINITY);
    for score in &mut row[from..end] {
        *score *= rule.scale;
    }
    if let Some(cap) = rule.softcap {
        row[from..end]
            .iter_mut()
            .for_each(|x| *x = (*x / cap).tanh() * cap);
    }
}

/// `z` as [`scores`], [`softmax_causal`] and [`weighted_values`] give it, for a pass where no
/// hook reads or edits the scores or the pattern: each `(batch, KV head, block of queries)`
/// task takes its scores, their softmax and their weighted sum of values in turn on a tile of
/// `[group·rows, seen]` that stays in cache, and no `[heads, t, keys]` array is made (at 256
/// tokens it was 2.4 MB per layer, written, read and rewritten by the three steps).
pub fn attend(q: &[f32], k: &[f32], v: &[f32], s: Shape, rule: ScoreRule) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    assert!(t <= n_keys, "attention: more queries than keys");
    assert!(
        q.len() == s.b * t * s.heads * dh
            && k.len() == s.b * n_keys * s.kv_heads * dh
            && v.len() == k.len()
    );
    let offset = n_keys - t;
    let avx512 = super::packed::has_avx512();
    if s.b * s.heads * t <= FEW_QUERY_ROWS {
        return attend_few(q, k, v, s, rule, avx512);
    }
    let keys = packed_keys(k, s);
    let per_task: Vec<Vec<f32>> = tasks(s)
        .into_par_iter()
        .map(|task| {
            let (first, rows) = (task.first, task.rows);
            let seen = keys_seen(s, first, rows);
            let mut tile = block_scores(q, &keys, s, task);
            for (row_index, row) in tile.chunks_exact_mut(seen).enumerate() {
                let i = offset + first + row_index % rows;
                mask_row(row, i, rule);
                softmax_prefix(row, i + 1, avx512);
            }
            values_times(&tile, v, s, task, seen)
        })
        .collect();
    scatter_z(&per_task, s)
}

/// Query rows (over every batch row and head) up to which [`attend`] takes the direct path of
/// [`attend_few`]: a generated token's or a last-position rerun's one query per head.
const FEW_QUERY_ROWS: usize = 64;

/// [`attend`] for a few queries (a step over cached keys), on one thread: each KV head's keys
/// transposed once into 16-wide panels that its query heads share, then per query 16 scores
/// at a time, the mask and softmax, and `z` as a running sum of value rows. Through the
/// blocked path a 64-key step took 63 µs per layer (now 13), mostly packing, three tasks on
/// two threads and their hand-offs.
///
/// Bit for bit the blocked path's result: every sum runs in the kernel's order (over
/// `d_head` for a score, over keys for `z`, each from zero), fused multiply-adds where the
/// kernel fuses them. A rerun of the last positions must equal the full pass exactly (a patch
/// that changes nothing gives exactly 0, §16).
fn attend_few(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: Shape,
    rule: ScoreRule,
    avx512: bool,
) -> Vec<f32> {
    let qkv = (q, k, v);
    #[cfg(target_arch = "x86_64")]
    {
        if avx512 {
            // Safety: the caller detected AVX-512F at runtime.
            return unsafe { attend_few_avx512(qkv, s, rule) };
        }
        if super::packed::kernel_fuses() {
            // Safety: the kernel fuses only where AVX2 and FMA were detected at runtime.
            return unsafe { attend_few_fma(qkv, s, rule) };
        }
    }
    attend_few_in::<false>(qkv, s, rule, avx512)
}

/// Queries, keys and values, laid out as [`attend`] takes them.
type Qkv<'a> = (&'a [f32], &'a [f32], &'a [f32]);

/// [`attend_few_in`] compiled for AVX-512 (the crate targets baseline x86-64; AVX-512F has
/// the fused multiply-add).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_few_avx512(qkv: Qkv<'_>, s: Shape, rule: ScoreRule) -> Vec<f32> {
    attend_few_in::<true>(qkv, s, rule, true)
}

/// [`attend_few_in`] compiled for AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_few_fma(qkv: Qkv<'_>, s: Shape, rule: ScoreRule) -> Vec<f32> {
    attend_few_in::<true>(qkv, s, rule, false)
}

/// `a · b + c`, fused (`FUSED`, as the AVX kernels' FMAs) or rounded twice (as the portable
/// kernel's `c += a · b`).
#[inline(always)]
fn multiply_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { c + a * b }
}

#[inline(always)]
fn attend_few_in<const FUSED: bool>(
    (q, k, v): Qkv<'_>,
    s: Shape,
    rule: ScoreRule,
    avx512: bool,
) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    let (offset, group) = (n_keys - t, s.heads / s.kv_heads);
    let mut z = vec![0f32; s.b * t * s.heads * dh];
    let mut row = vec![0f32; n_keys];
    // One KV head's keys transposed in panels of 16, `[keys / 16, d_head, 16]`: a score per
    // lane, each lane's sum over `d_head` in the kernel's order. (One `[d_head, keys]` array
    // put its rows 1 KiB apart at 256 keys, where its columns fought over the same cache
    // sets: 180 µs per step instead of 83.)
    let panel_len = dh * LANES;
    let mut keys_t = vec![0f32; n_keys.div_ceil(LANES) * panel_len];
    for batch in 0..s.b {
        for kv in 0..s.kv_heads {
            for (j, key) in head_rows(k, s, batch, kv).enumerate() {
                let panel = &mut keys_t[(j / LANES) * panel_len..][..panel_len];
                for (d, &x) in key.iter().enumerate() {
                    panel[d * LANES + j % LANES] = x;
                }
            }
            for head in kv * group..(kv + 1) * group {
                for i in 0..t {
                    let position = offset + i;
                    let at = ((batch * t + i) * s.heads + head) * dh;
                    let query = &q[at..at + dh];
                    let row = &mut row[..position + 1];
                    for (scores, panel) in row.chunks_mut(LANES).zip(keys_t.chunks_exact(panel_len))
                    {
                        // All 16 lanes (past the keys, the panel holds zeros or keys this
                        // query cannot see); the row takes those it has.
                        let mut acc = [0f32; LANES];
                        for (&a, column) in query.iter().zip(panel.chunks_exact(LANES)) {
                            for lane in 0..LANES {
                                acc[lane] = multiply_add::<FUSED>(a, column[lane], acc[lane]);
                            }
                        }
                        scores.copy_from_slice(&acc[..scores.len()]);
                    }
                    mask_row(row, position, rule);
                    softmax_prefix(row, position + 1, avx512);
                    let out = &mut z[at..at + dh];
                    // A zero weight adds exactly nothing (the kernel's `0 · x + sum` is `sum`).
                    for (&p, value) in row.iter().zip(head_rows(v, s, batch, kv)) {
                        if p != 0.0 {
                            out.iter_mut()
                                .zip(value)
                                .for_each(|(o, &x)| *o = multiply_add::<FUSED>(p, x, *o));
                        }
                    }
                }
            }
        }
    }
    z
}

/// `pattern_rows [m, seen] · v[task's batch, 0..seen, its KV head]` through the packed kernel
/// (`[m, d_head]`).
fn values_times(pattern_rows: &[f32], v: &[f32], s: Shape, task: Task, seen: usize) -> Vec<f32> {
    let (batch, kv, n_keys, dh) = (task.batch, task.kv, s.keys, s.d_head);
    let m = pattern_rows.len() / seen.max(1);
    // Vᵀ as the "weight", read in place where `d_head` is whole panels (every model we load).
    let row_stride = s.kv_heads * dh;
    let head_values = &v[(batch * n_keys * s.kv_heads + kv) * dh..];
    if let Some(v_t) = Panels::columns_of(head_values, dh, seen, row_stride) {
        return v_t.matmul_t_unpacked(pattern_rows, m, None);
    }
    // Otherwise transposed: row d holds value dimension d of every key seen.
    let mut v_t = vec![0f32; dh * seen];
    for (j, vj) in head_rows(v, s, batch, kv).take(seen).enumerate() {
        for (d, &x) in vj.iter().enumerate() {
            v_t[d * seen + j] = x;
        }
    }
    PackedMatrix::from_rows(&v_t, dh, seen).matmul_t_unpacked(pattern_rows, m, None)
}

/// `z: [b, t, heads, d_head]` from each `(batch, KV head, block)` task's `[group·rows, d_head]`
/// rows, in task order.
fn scatter_z(per_task: &[Vec<f32>], s: Shape) -> Vec<f32> {
    let (t, dh, group) = (s.t, s.d_head, s.heads / s.kv_heads);
    let mut z = vec![0f32; s.b * t * s.heads * dh];
    for (task, values) in tasks(s).into_iter().zip(per_task) {
        let (batch, kv, first, rows) = (task.batch, task.kv, task.first, task.rows);
        for (row_index, zrow) in values.chunks_exact(dh).enumerate() {
            let (g, i) = (row_index / rows, first + row_index % rows);
            let head = kv * group + g;
            z[((batch * t + i) * s.heads + head) * dh..][..dh].copy_from_slice(zrow);
        }
    }
    z
}

/// Row-wise softmax over the last axis (`−∞` entries become 0).
pub fn softmax_rows(x: &mut [f32], row_len: usize) {
    softmax_rows_up_to(x, row_len, |_| row_len);
}

/// [`softmax_rows`] of causal scores `[b, heads, t, keys]`: each row's entries after its
/// query's position are masked, so they are set to 0 without an `exp` each (half the work
/// of a full-length prompt's rows).
pub fn softmax_causal(x: &mut [f32], s: Shape) {
    let (t, offset) = (s.t.max(1), s.keys - s.t);
    softmax_rows_up_to(x, s.keys, |row| offset + row % t + 1);
}

/// Softmax of each row's first `len(row)` entries (`row` counted from 0 over all of `x`); the
/// rest of the row is set to 0.
fn softmax_rows_up_to(x: &mut [f32], row_len: usize, len: impl Fn(usize) -> usize + Sync) {
    let row_len = row_len.max(1);
    let avx512 = super::packed::has_avx512();
    x.par_chunks_mut(row_len * 64)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (r, row) in rows.chunks_mut(row_len).enumerate() {
                softmax_prefix(row, len(chunk * 64 + r), avx512);
            }
        });
}

/// Softmax of `row[..len]` (`−∞` entries become 0), the rest of `row` set to 0.
fn softmax_prefix(row: &mut [f32], len: usize, avx512: bool) {
    let (live, masked) = row.split_at_mut(len.min(row.len()));
    masked.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // Safety: the caller detected AVX-512F at runtime.
        unsafe { softmax_row_avx512(live) };
        return;
    }
    let _ = avx512;
    softmax_row(live);
}

/// `z[b, i, h] = Σ_j pattern[b, h, i, j] · v[b, j, kv(h)]`: per `(batch, KV head, block of
/// queries)` the block's pattern rows of the group's heads `[group·rows, seen]` times the
/// values `[seen, d_head]`, through the packed kernel. With `causal` (the pattern is 0 after
/// each query's position, as [`softmax_causal`] leaves it) a block reads only the keys it can
/// see; otherwise (a hook edited the pattern) every key.
pub fn weighted_values(pattern: &[f32], v: &[f32], s: Shape, causal: bool) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    assert!(
        pattern.len() == s.b * s.heads * t * n_keys && v.len() == s.b * n_keys * s.kv_heads * dh
    );
    let group = s.heads / s.kv_heads;
    let per_task: Vec<Vec<f32>> = tasks(s)
        .into_par_iter()
        .map(|task| {
            let (batch, kv, first, rows) = (task.batch, task.kv, task.first, task.rows);
            let seen = if causal {
                keys_seen(s, first, rows)
            } else {
                n_keys
            };
            let mut x = Vec::with_capacity(group * rows * seen);
            for head in kv * group..(kv + 1) * group {
                let head_rows = &pattern[(batch * s.heads + head) * t * n_keys..][..t * n_keys];
                for i in first..first + rows {
                    x.extend_from_slice(&head_rows[i * n_keys..][..seen]);
                }
            }
            values_times(&x, v, s, task, seen)
        })
        .collect();
    scatter_z(&per_task, s)
}

/// Lanes of the lane-wise reductions (one AVX-512 vector of f32).
const LANES: usize = 16;

/// The largest value, reduced lane-wise so it vectorises.
#[inline(always)]
fn lane_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    chunks.remainder().iter().fold(
        lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        |m, &x| m.max(x),
    )
}

/// A softmax's normaliser: `(max, Σ e^(x − max))`, the sum accumulated in f64 (over a
/// vocabulary of 10⁵ logits f32 partial sums would lose digits of the loss).
pub fn softmax_normalizer(row: &[f32]) -> (f32, f64) {
    #[cfg(target_arch = "x86_64")]
    if super::packed::has_avx512() {
        // Safety: AVX-512F was detected at runtime.
        return unsafe { softmax_normalizer_avx512(row) };
    }
    softmax_normalizer_lanes(row)
}

#[inline(always)]
fn softmax_normalizer_lanes(row: &[f32]) -> (f32, f64) {
    let max = lane_max(row);
    if max == f32::NEG_INFINITY {
        return (max, 0.0);
    }
    // f32 lanes over blocks of 1 024 values (vectorised), each block's sum added in f64.
    let mut total = 0f64;
    let mut blocks = row.chunks_exact(1024);
    for block in &mut blocks {
        let mut sums = [0f32; LANES];
        for c in block.chunks_exact(LANES) {
            for l in 0..LANES {
                sums[l] += exp(c[l] - max);
            }
        }
        total += sums.iter().map(|&s| s as f64).sum::<f64>();
    }
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&x| exp(x - max) as f64)
        .sum();
    (max, total + tail)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_normalizer_avx512(row: &[f32]) -> (f32, f64) {
    softmax_normalizer_lanes(row)
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    // Lane-wise max and sum so both reductions vectorise.
    let max = lane_max(row);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    for v in row.iter_mut() {
        // exp(−∞) is exactly 0 (masked keys).
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            exp(*v - max)
        };
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            sums[l] += c[l];
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// [`exp`]'s constants (Cephes' `expf`), shared with its AVX-512 lanes: inputs below the floor
/// underflow; ln 2 split in two for the range reduction; the polynomial's coefficients,
/// highest degree first.
const EXP_FLOOR: f32 = -87.33;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for `x ≤ 0` to within 2 ulp (Cephes' `expf`), written so it vectorises.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.max(EXP_FLOOR);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..]
        .iter()
        .fold(EXP_POLY[0], |p, &coefficient| p * r + coefficient);
    let poly = p * r * r + r + 1.0;
    // 2ⁿ from the bits of n + 127 (an integer in [1, 127] here): adding 2²³ puts it in the low
    // mantissa bits, and the shift moves those into the exponent. A float-to-int cast would
    // not vectorise (Rust's saturating cast is scalar code).
    let biased = (n + 127.0 + 8_388_608.0).to_bits();
    poly * f32::from_bits(biased << 23)
}

/// [`softmax_row`] in AVX-512, the row's tail (its last `len % 16` entries) in masked vector
/// ops. The compiler vectorises `softmax_row` but finishes each of its passes with a scalar
/// loop, and the attention core's rows are short and of every length (query `i` sees `i + 1`
/// keys): at 256 tokens those tails were most of the softmax's time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = row.len();
    let full = len - len % LANES;
    let tail: __mmask16 = ((1u32 << (len - full)) - 1) as __mmask16;
    let p = row.as_mut_ptr();
    // Safety (whole body): AVX-512F was detected by the caller; every unmasked access is at
    // `i + 16 ≤ full ≤ len`, and the masked ones touch only lanes below `len − full`.
    unsafe {
        let mut lanes_max = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(LANES) {
            lanes_max = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), lanes_max);
        }
        // Masked-off lanes keep the running maximum.
        let last = _mm512_mask_loadu_ps(lanes_max, tail, p.add(full));
        let max = _mm512_reduce_max_ps(_mm512_max_ps(last, lanes_max));
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        let max = _mm512_set1_ps(max);
        let mut sums = _mm512_setzero_ps();
        for i in (0..full).step_by(LANES) {
            let e = exp_lanes(_mm512_loadu_ps(p.add(i)), max);
            _mm512_storeu_ps(p.add(i), e);
            sums = _mm512_add_ps(sums, e);
        }
        let e = _mm512_maskz_mov_ps(
            tail,
            exp_lanes(_mm512_maskz_loadu_ps(tail, p.add(full)), max),
        );
        _mm512_mask_storeu_ps(p.add(full), tail, e);
        sums = _mm512_add_ps(sums, e);
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sums));
        for i in (0..full).step_by(LANES) {
            _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
        }
        let last = _mm512_maskz_loadu_ps(tail, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), tail, _mm512_mul_ps(last, inv));
    }
}

/// [`exp`]`(x − max)` in each lane, by the same operations in the same order (so the same
/// values), and exactly 0 where `x` is `−∞` (a masked key).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_lanes(
    x: std::arch::x86_64::__m512,
    max: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let masked = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, _mm512_set1_ps(f32::NEG_INFINITY));
    let c = _mm512_set1_ps;
    // `f32::max(x, −87.33)` gives −87.33 for a NaN `x`; `max_ps` gives its second operand.
    let x = _mm512_max_ps(_mm512_sub_ps(x, max), c(EXP_FLOOR));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
        _mm512_mul_ps(x, c(std::f32::consts::LOG2_E)),
        c(0.5),
    ));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, c(LN2_HI))),
        _mm512_mul_ps(n, c(LN2_LO)),
    );
    let mut poly = c(EXP_POLY[0]);
    for &coefficient in &EXP_POLY[1..] {
        poly = _mm512_add_ps(_mm512_mul_ps(poly, r), c(coefficient));
    }
    let poly = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(poly, r), r), r),
        c(1.0),
    );
    let biased = _mm512_castps_si512(_mm512_add_ps(_mm512_add_ps(n, c(127.0)), c(8_388_608.0)));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
    _mm512_maskz_mov_ps(!masked, _mm512_mul_ps(poly, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_normalizer_matches_the_naive_sum_in_f64() {
        let mut rng = 12345u64;
        let row: Vec<f32> = (0..49_157)
            .map(|_| {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((rng >> 40) as f32 / (1u64 << 24) as f32) * 30.0 - 20.0
            })
            .collect();
        let (max, z) = softmax_normalizer(&row);
        let naive_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let naive: f64 = row.iter().map(|&x| ((x - naive_max) as f64).exp()).sum();
        assert_eq!(max, naive_max);
        assert!((z - naive).abs() <= 1e-6 * naive, "{z} vs {naive}");
        assert_eq!(softmax_normalizer(&[f32::NEG_INFINITY; 3]).1, 0.0);
    }

    /// The softmax this CPU runs (AVX-512 where it has it) against the naive one in `f64`, on
    /// rows of every length up to three vectors and a half, masked entries included.
    #[test]
    fn softmax_rows_match_the_naive_softmax() {
        let avx512 = crate::model::packed::has_avx512();
        for len in 0..56 {
            let original: Vec<f32> = (0..len)
                .map(|j| match j % 7 {
                    3 => f32::NEG_INFINITY,
                    _ => ((j * 37 % 23) as f32 - 11.0) * 0.9,
                })
                .collect();
            let live = original.iter().filter(|x| x.is_finite());
            let max = live
                .clone()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let total: f64 = live.map(|&x| (x as f64 - max).exp()).sum();
            let mut row = original.clone();
            // Two trailing entries past `len` are the masked tail `softmax_prefix` zeroes.
            row.extend([5.0, 6.0]);
            softmax_prefix(&mut row, len, avx512);
            for (j, (&ours, &x)) in row.iter().zip(&original).enumerate() {
                let expected = if x.is_finite() {
                    (x as f64 - max).exp() / total
                } else {
                    0.0
                };
                assert!(
                    (ours as f64 - expected).abs() <= 1e-6 * expected.max(1e-30) + 1e-12,
                    "len {len}, entry {j}: {ours} vs {expected}"
                );
            }
            assert_eq!(&row[len..], &[0.0, 0.0]);
        }
    }

    #[test]
    fn fast_exp_is_within_two_ulp() {
        for i in 0..20_000 {
            let x = -87.0 * i as f32 / 20_000.0;
            let (ours, std) = (exp(x), x.exp());
            assert!(
                (ours - std).abs() <= 2.0 * f32::EPSILON * std,
                "exp({x}) = {ours}, std {std}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
    }

    /// Shapes with one block of queries and several (a 70-token prompt), a sliding window,
    /// and a step's queries over cached keys (`keys > t`).
    #[test]
    fn grouped_causal_attention_matches_naive() {
        // `d_head` 19 takes the transposed values, 64 (two whole panels) reads them in place.
        for (t, keys, window, d_head) in [
            (5, 5, Some(3), 19),
            (70, 70, None, 19),
            (70, 70, Some(20), 19),
            (3, 9, None, 19),
            (70, 70, None, 64),
            (3, 9, Some(4), 64),
            (1, 70, None, 64),
            (1, 70, Some(16), 64),
        ] {
            grouped_causal_attention_case(
                Shape {
                    b: 2,
                    t,
                    keys,
                    heads: 4,
                    kv_heads: 2,
                    d_head,
                },
                window,
            );
        }
    }

    fn grouped_causal_attention_case(s: Shape, window: Option<usize>) {
        let (heads, dh, offset) = (s.heads, s.d_head, s.keys - s.t);
        let q: Vec<f32> = (0..s.b * s.t * heads * dh)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let k: Vec<f32> = (0..s.b * s.keys * s.kv_heads * dh)
            .map(|i| ((i * 7 % 31) as f32 - 15.0) / 11.0)
            .collect();
        let v: Vec<f32> = (0..s.b * s.keys * s.kv_heads * dh)
            .map(|i| ((i * 5 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let rule = ScoreRule {
            scale: 0.3,
            softcap: None,
            window,
        };
        let mut p = scores(&q, &k, s, rule);
        let mut full = p.clone();
        softmax_causal(&mut p, s);
        softmax_rows(&mut full, s.keys);
        let z = weighted_values(&p, &v, s, true);
        // The causal shortcuts change nothing for an unedited pattern.
        let z_full = weighted_values(&full, &v, s, false);
        for (a, b) in p.iter().zip(&full) {
            assert!((a - b).abs() < 1e-6, "softmax {a} vs {b}");
        }
        for (a, b) in z.iter().zip(&z_full) {
            assert!((a - b).abs() < 1e-5, "values {a} vs {b}");
        }
        // Nor does leaving the pattern out altogether.
        let z_fused = attend(&q, &k, &v, s, rule);
        for (a, b) in z.iter().zip(&z_fused) {
            assert!((a - b).abs() < 1e-6, "fused {a} vs {b}");
        }
        // The direct path for a few queries, on every shape (`attend` takes it for small ones
        // only): bit for bit, as a rerun of the last positions must equal the full pass; and
        // within rounding without AVX-512 (another softmax).
        let avx512 = crate::model::packed::has_avx512();
        let z_few = attend_few(&q, &k, &v, s, rule, avx512);
        assert_eq!(z_few, z, "few queries");
        if avx512 {
            let z_few = attend_few(&q, &k, &v, s, rule, false);
            for (a, b) in z.iter().zip(&z_few) {
                assert!((a - b).abs() < 1e-5, "few queries, no AVX-512 {a} vs {b}");
            }
        }
        let group = heads / s.kv_heads;
        for b in 0..s.b {
            for h in 0..heads {
                let kv = h / group;
                for qi in 0..s.t {
                    let i = offset + qi;
                    let visible: Vec<usize> = (0..=i)
                        .filter(|&j| window.is_none_or(|w| i - j < w))
                        .collect();
                    let raw: Vec<f64> = visible
                        .iter()
                        .map(|&j| {
                            (0..dh)
                                .map(|d| {
                                    q[((b * s.t + qi) * heads + h) * dh + d] as f64
                                        * k[((b * s.keys + j) * s.kv_heads + kv) * dh + d] as f64
                                })
                                .sum::<f64>()
                                * 0.3
                        })
                        .collect();
                    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = raw.iter().map(|r| (r - max).exp()).sum();
                    let row = &p[((b * heads + h) * s.t + qi) * s.keys..][..s.keys];
                    for (j, &ours) in row.iter().enumerate() {
                        let expected = visible
                            .iter()
                            .position(|&x| x == j)
                            .map_or(0.0, |idx| (raw[idx] - max).exp() / total);
                        assert!((ours as f64 - expected).abs() < 1e-5, "pattern {qi} {j}");
                    }
                    for d in 0..dh {
                        let expected: f64 = visible
                            .iter()
                            .enumerate()
                            .map(|(idx, &j)| {
                                (raw[idx] - max).exp() / total
                                    * v[((b * s.keys + j) * s.kv_heads + kv) * dh + d] as f64
                            })
                            .sum();
                        let ours = z[((b * s.t + qi) * heads + h) * dh + d] as f64;
                        assert!((ours - expected).abs() < 1e-5, "z {qi} {d}");
                    }
                }
            }
        }
    }
}
