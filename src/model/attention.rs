//! Causal attention on host slices: scores, softmax and the weighted sum of values, fused per
//! head and split across threads. For prompts of tens to hundreds of tokens these are many tiny
//! matrix products, where per-op dispatch would cost more than the arithmetic.
//!
//! Layouts follow TransformerLens: `q: [b, t, heads, d_head]`, `k, v: [b, keys, kv_heads,
//! d_head]`, scores and pattern `[b, heads, t, keys]`, `z: [b, t, heads, d_head]`. Query head `h`
//! reads KV head `h / (heads / kv_heads)`. The `t` queries are the last `t` of the `keys`
//! positions: all of them in a full pass, the new ones in a step over cached keys.

use rayon::prelude::*;

use super::packed::PackedMatrix;

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

/// `scores[b, h, i, j] = rule(q[b, i, h] · k[b, j, kv(h)])`, `−∞` where masked (keys after the
/// query's position, and beyond the sliding window).
///
/// Each `(batch, KV head)` group is one matrix product through the packed kernel: the queries
/// of the group's heads stacked `[group·t, d_head]` times the keys `[keys, d_head]`ᵀ. The masked
/// upper triangle is computed and discarded; at kernel speed that is cheaper than skipping it.
pub fn scores(q: &[f32], k: &[f32], s: Shape, rule: ScoreRule) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    assert!(t <= n_keys, "attention: more queries than keys");
    assert!(q.len() == s.b * t * s.heads * dh && k.len() == s.b * n_keys * s.kv_heads * dh);
    let offset = n_keys - t;
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; s.b * s.heads * t * n_keys];
    out.par_chunks_mut(group * t * n_keys)
        .enumerate()
        .for_each(|(bkv, block)| {
            let (batch, kv) = (bkv / s.kv_heads, bkv % s.kv_heads);
            let mut keys = Vec::with_capacity(n_keys * dh);
            for j in 0..n_keys {
                keys.extend_from_slice(&k[((batch * n_keys + j) * s.kv_heads + kv) * dh..][..dh]);
            }
            let mut queries = Vec::with_capacity(group * t * dh);
            for head in kv * group..(kv + 1) * group {
                for i in 0..t {
                    queries.extend_from_slice(&q[((batch * t + i) * s.heads + head) * dh..][..dh]);
                }
            }
            let raw =
                PackedMatrix::from_rows(&keys, n_keys, dh).matmul_t(&queries, group * t, None);
            for (row_index, (row, raw_row)) in block
                .chunks_exact_mut(n_keys)
                .zip(raw.chunks_exact(n_keys))
                .enumerate()
            {
                let i = offset + row_index % t;
                let first = rule.window.map_or(0, |w| (i + 1).saturating_sub(w));
                row[..first].fill(f32::NEG_INFINITY);
                row[i + 1..].fill(f32::NEG_INFINITY);
                for (score, &x) in row[first..=i].iter_mut().zip(&raw_row[first..=i]) {
                    *score = x * rule.scale;
                }
                if let Some(cap) = rule.softcap {
                    row[first..=i]
                        .iter_mut()
                        .for_each(|x| *x = (*x / cap).tanh() * cap);
                }
            }
        });
    out
}

/// Row-wise softmax over the last axis (`−∞` entries become 0).
pub fn softmax_rows(x: &mut [f32], row_len: usize) {
    let row_len = row_len.max(1);
    let avx512 = super::packed::has_avx512();
    x.par_chunks_mut(row_len * 64).for_each(|rows| {
        for row in rows.chunks_mut(row_len) {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // Safety: AVX-512F was detected at runtime.
                unsafe { softmax_row_avx512(row) };
                continue;
            }
            let _ = avx512;
            softmax_row(row);
        }
    });
}

/// `z[b, i, h] = Σ_j pattern[b, h, i, j] · v[b, j, kv(h)]`: per `(batch, KV head)` the
/// group's pattern rows `[group·t, keys]` times the values `[keys, d_head]`, through the packed
/// kernel.
pub fn weighted_values(pattern: &[f32], v: &[f32], s: Shape) -> Vec<f32> {
    let (t, n_keys, dh) = (s.t, s.keys, s.d_head);
    assert!(
        pattern.len() == s.b * s.heads * t * n_keys && v.len() == s.b * n_keys * s.kv_heads * dh
    );
    let group = s.heads / s.kv_heads;
    let per_group: Vec<Vec<f32>> = (0..s.b * s.kv_heads)
        .into_par_iter()
        .map(|bkv| {
            let (batch, kv) = (bkv / s.kv_heads, bkv % s.kv_heads);
            // Vᵀ as the "weight": row d holds value dimension d of every key.
            let mut v_t = vec![0f32; dh * n_keys];
            for j in 0..n_keys {
                let vj = &v[((batch * n_keys + j) * s.kv_heads + kv) * dh..][..dh];
                for (d, &x) in vj.iter().enumerate() {
                    v_t[d * n_keys + j] = x;
                }
            }
            let rows =
                &pattern[(batch * s.heads + kv * group) * t * n_keys..][..group * t * n_keys];
            PackedMatrix::from_rows(&v_t, dh, n_keys).matmul_t(rows, group * t, None)
        })
        .collect();
    let mut z = vec![0f32; s.b * t * s.heads * dh];
    for (bkv, values) in per_group.iter().enumerate() {
        let (batch, kv) = (bkv / s.kv_heads, bkv % s.kv_heads);
        for (row_index, zrow) in values.chunks_exact(dh).enumerate() {
            let (g, i) = (row_index / t, row_index % t);
            let head = kv * group + g;
            z[((batch * t + i) * s.heads + head) * dh..][..dh].copy_from_slice(zrow);
        }
    }
    z
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

/// `e^x` for `x ≤ 0` to within 2 ulp (Cephes' `expf`), written so it vectorises.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.max(-87.33);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let poly = p * r * r + r + 1.0;
    // 2ⁿ from the bits of n + 127 (an integer in [1, 127] here): adding 2²³ puts it in the low
    // mantissa bits, and the shift moves those into the exponent. A float-to-int cast would
    // not vectorise (Rust's saturating cast is scalar code).
    let biased = (n + 127.0 + 8_388_608.0).to_bits();
    poly * f32::from_bits(biased << 23)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(row: &mut [f32]) {
    softmax_row(row)
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

    #[test]
    fn grouped_causal_attention_matches_naive() {
        let s = Shape {
            b: 2,
            t: 5,
            keys: 5,
            heads: 4,
            kv_heads: 2,
            d_head: 19,
        };
        let n = |h: usize| s.b * s.t * h * s.d_head;
        let q: Vec<f32> = (0..n(4))
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let k: Vec<f32> = (0..n(2))
            .map(|i| ((i * 7 % 31) as f32 - 15.0) / 11.0)
            .collect();
        let v: Vec<f32> = (0..n(2))
            .map(|i| ((i * 5 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let rule = ScoreRule {
            scale: 0.3,
            softcap: None,
            window: Some(3),
        };
        let mut p = scores(&q, &k, s, rule);
        softmax_rows(&mut p, s.t);
        let z = weighted_values(&p, &v, s);
        for b in 0..s.b {
            for h in 0..s.heads {
                let kv = h / 2;
                for i in 0..s.t {
                    let visible: Vec<usize> = (0..=i).filter(|&j| i - j < 3).collect();
                    let raw: Vec<f64> = visible
                        .iter()
                        .map(|&j| {
                            (0..s.d_head)
                                .map(|d| {
                                    q[((b * s.t + i) * 4 + h) * s.d_head + d] as f64
                                        * k[((b * s.t + j) * 2 + kv) * s.d_head + d] as f64
                                })
                                .sum::<f64>()
                                * 0.3
                        })
                        .collect();
                    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = raw.iter().map(|r| (r - max).exp()).sum();
                    for (idx, &j) in visible.iter().enumerate() {
                        let expected = (raw[idx] - max).exp() / total;
                        let ours = p[((b * 4 + h) * s.t + i) * s.t + j] as f64;
                        assert!((ours - expected).abs() < 1e-5);
                    }
                    assert!(
                        i < 3 || p[((b * 4 + h) * s.t + i) * s.t] == 0.0,
                        "window masks key 0"
                    );
                    for d in 0..s.d_head {
                        let expected: f64 = visible
                            .iter()
                            .enumerate()
                            .map(|(idx, &j)| {
                                (raw[idx] - max).exp() / total
                                    * v[((b * s.t + j) * 2 + kv) * s.d_head + d] as f64
                            })
                            .sum();
                        let ours = z[((b * s.t + i) * 4 + h) * s.d_head + d] as f64;
                        assert!((ours - expected).abs() < 1e-5);
                    }
                }
            }
        }
    }
}
