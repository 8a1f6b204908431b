//! Causal attention on host slices: scores, softmax and the weighted sum of values, fused per
//! head and split across threads. For prompts of tens to hundreds of tokens these are many tiny
//! matrix products, where per-op dispatch would cost more than the arithmetic.
//!
//! Layouts follow TransformerLens: `q: [b, t, heads, d_head]`, `k, v: [b, t, kv_heads, d_head]`,
//! scores and pattern `[b, heads, query, key]`, `z: [b, t, heads, d_head]`. Query head `h` reads
//! KV head `h / (heads / kv_heads)`.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
}

impl Shape {
    fn kv_of(&self, head: usize) -> usize {
        head / (self.heads / self.kv_heads)
    }
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

impl ScoreRule {
    fn visible(&self, i: usize, j: usize) -> bool {
        j <= i && self.window.is_none_or(|w| i - j < w)
    }
}

/// `scores[b, h, i, j] = rule(q[b, i, h] · k[b, j, kv(h)])`, `−∞` where masked.
pub fn scores(q: &[f32], k: &[f32], s: Shape, rule: ScoreRule) -> Vec<f32> {
    let (t, dh) = (s.t, s.d_head);
    assert!(q.len() == s.b * t * s.heads * dh && k.len() == s.b * t * s.kv_heads * dh);
    let mut out = vec![f32::NEG_INFINITY; s.b * s.heads * t * t];
    let simd = Simd::detect();
    out.par_chunks_mut(t * t).enumerate().for_each(|(bh, block)| {
        let (batch, head) = (bh / s.heads, bh % s.heads);
        // Keys transposed to [d_head][t], so each query's scores are built by axpys over
        // contiguous keys (vectorises without horizontal sums).
        let kv = s.kv_of(head);
        let mut k_t = vec![0f32; dh * t];
        for j in 0..t {
            let kj = &k[((batch * t + j) * s.kv_heads + kv) * dh..][..dh];
            for (d, &x) in kj.iter().enumerate() {
                k_t[d * t + j] = x;
            }
        }
        for i in 0..t {
            let qi = &q[((batch * t + i) * s.heads + head) * dh..][..dh];
            let first = rule.window.map_or(0, |w| (i + 1).saturating_sub(w));
            let row = &mut block[i * t + first..=i * t + i];
            row.fill(0.0);
            for (d, &qd) in qi.iter().enumerate() {
                simd.axpy(qd, &k_t[d * t + first..=d * t + i], row);
            }
            for score in row.iter_mut() {
                *score *= rule.scale;
                if let Some(cap) = rule.softcap {
                    *score = (*score / cap).tanh() * cap;
                }
            }
        }
    });
    out
}

/// Row-wise softmax over the last axis (`−∞` entries become 0).
pub fn softmax_rows(x: &mut [f32], row_len: usize) {
    x.par_chunks_mut(row_len.max(1) * 64).for_each(|rows| {
        for row in rows.chunks_mut(row_len.max(1)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

/// `z[b, i, h] = Σ_j pattern[b, h, i, j] · v[b, j, kv(h)]`.
pub fn weighted_values(pattern: &[f32], v: &[f32], s: Shape) -> Vec<f32> {
    let (t, dh) = (s.t, s.d_head);
    assert!(pattern.len() == s.b * s.heads * t * t && v.len() == s.b * t * s.kv_heads * dh);
    let mut z = vec![0f32; s.b * t * s.heads * dh];
    let simd = Simd::detect();
    let stride = s.kv_heads * dh;
    z.par_chunks_mut(s.heads * dh).enumerate().for_each(|(bi, row)| {
        let (batch, i) = (bi / t, bi % t);
        for head in 0..s.heads {
            let kv = s.kv_of(head);
            let weights = &pattern[((batch * s.heads + head) * t + i) * t..][..t];
            // Keys after the query have weight 0 (causal); skip them.
            let values = &v[(batch * t) * stride + kv * dh..];
            simd.weighted_sum(&weights[..=i], values, stride, &mut row[head * dh..(head + 1) * dh]);
        }
    });
    z
}

/// The widest vector instructions this CPU has, for the inner loops.
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        Simd::Portable
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        match self {
            // Safety: the feature was detected at runtime.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { axpy_avx512(alpha, x, y) },
            Simd::Portable => axpy(alpha, x, y),
        }
    }

    fn weighted_sum(self, weights: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
        match self {
            // Safety: the feature was detected at runtime.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { weighted_sum_avx512(weights, values, stride, out) },
            Simd::Portable => weighted_sum(weights, values, stride, out),
        }
    }
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out = Σ_j weights[j] · values[j·stride ..][..out.len()]`, accumulated 16 lanes at a time in
/// registers.
#[inline(always)]
fn weighted_sum(weights: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    const LANES: usize = 16;
    let full = out.len() / LANES * LANES;
    for start in (0..full).step_by(LANES) {
        // A fixed-width accumulator the compiler keeps in one vector register.
        let mut acc = [0f32; LANES];
        for (j, &w) in weights.iter().enumerate() {
            let v: &[f32; LANES] = values[j * stride + start..][..LANES].try_into().unwrap_or(&[0.0; LANES]);
            for l in 0..LANES {
                acc[l] += w * v[l];
            }
        }
        out[start..start + LANES].copy_from_slice(&acc);
    }
    for (d, o) in out.iter_mut().enumerate().skip(full) {
        *o = weights.iter().enumerate().map(|(j, &w)| w * values[j * stride + d]).sum();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy(alpha, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_avx512(weights: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    weighted_sum(weights, values, stride, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_causal_attention_matches_naive() {
        let s = Shape {
            b: 2,
            t: 5,
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
