//! Attention-head scores on repeated sequences (definitions.md §6).
//!
//! Patterns are `[batch][head][query][key]` row-major slices of one layer (`attn.hook_pattern`).

use crate::train::Rng;

/// `batch` sequences, each `len` random tokens from `[low, high)` repeated twice (no BOS).
pub fn repeated_random_tokens(
    len: usize,
    batch: usize,
    seed: u64,
    low: u32,
    high: u32,
) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..batch)
        .map(|_| {
            let half: Vec<u32> = (0..len)
                .map(|_| low + rng.below((high - low) as usize) as u32)
                .collect();
            half.iter().chain(&half).copied().collect()
        })
        .collect()
}

/// Shape of one layer's pattern tensor.
#[derive(Clone, Copy, Debug)]
pub struct PatternShape {
    pub batch: usize,
    pub heads: usize,
    pub t: usize,
}

fn at(p: &[f32], s: PatternShape, b: usize, h: usize, i: usize, j: usize) -> f64 {
    p[((b * s.heads + h) * s.t + i) * s.t + j] as f64
}

fn mean_over(p: &[f32], s: PatternShape, pairs: &[(usize, usize)]) -> Vec<f64> {
    (0..s.heads)
        .map(|h| {
            let total: f64 = (0..s.batch)
                .flat_map(|b| pairs.iter().map(move |&(i, j)| (b, i, j)))
                .map(|(b, i, j)| at(p, s, b, h, i, j))
                .sum();
            total / (s.batch * pairs.len()).max(1) as f64
        })
        .collect()
}

/// TL Main-Demo induction stripe on `[r_1..r_L, r_1..r_L]` (no BOS): per head, the mean over
/// sequences and queries `i ∈ [L, 2L−1]` of `A[i, i−L+1]` (the token after the earlier copy).
pub fn induction_score(pattern: &[f32], s: PatternShape, len: usize) -> Vec<f64> {
    let pairs: Vec<(usize, usize)> = (len..2 * len).map(|i| (i, i + 1 - len)).collect();
    mean_over(pattern, s, &pairs)
}

/// Mean attention from each query `i ≥ 1` to `i − 1`.
pub fn previous_token_score(pattern: &[f32], s: PatternShape) -> Vec<f64> {
    let pairs: Vec<(usize, usize)> = (1..s.t).map(|i| (i, i - 1)).collect();
    mean_over(pattern, s, &pairs)
}

/// Mean attention from each second-copy query `i ∈ [L, 2L−1]` to its earlier copy `i − L`.
pub fn duplicate_token_score(pattern: &[f32], s: PatternShape, len: usize) -> Vec<f64> {
    let pairs: Vec<(usize, usize)> = (len..2 * len).map(|i| (i, i - len)).collect();
    mean_over(pattern, s, &pairs)
}

/// Prefix matching (Olsson et al.): per head, the attention mass a query puts on tokens that
/// follow earlier copies of its own token (`j` with `tok[j−1] = tok[i]`, `j ≤ i`), summed, then
/// averaged over queries that have an earlier copy and over sequences.
pub fn prefix_matching_score(pattern: &[f32], s: PatternShape, tokens: &[Vec<u32>]) -> Vec<f64> {
    (0..s.heads)
        .map(|h| {
            let (mut total, mut count) = (0.0, 0usize);
            for (b, toks) in tokens.iter().enumerate().take(s.batch) {
                for i in 1..s.t.min(toks.len()) {
                    let targets: Vec<usize> = (1..=i)
                        .filter(|&j| toks[j - 1] == toks[i] && j - 1 != i)
                        .collect();
                    if targets.is_empty() {
                        continue;
                    }
                    total += targets
                        .iter()
                        .map(|&j| at(pattern, s, b, h, i, j))
                        .sum::<f64>();
                    count += 1;
                }
            }
            if count == 0 {
                0.0
            } else {
                total / count as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// definitions.md §6a, L = 3 without BOS: [a,b,c,a,b,c]; queries 3,4,5 → keys 1,2,3.
    #[test]
    fn induction_stripe_worked_example() {
        let s = PatternShape {
            batch: 1,
            heads: 2,
            t: 6,
        };
        let mut p = vec![0f32; 2 * 36];
        for i in 0..6 {
            // head 0: a perfect induction head from the second copy on; head 1: previous token.
            let target = if i >= 3 { i - 2 } else { i };
            p[i * 6 + target] = 1.0;
            p[36 + i * 6 + i.saturating_sub(1)] = 1.0;
        }
        let scores = induction_score(&p, s, 3);
        assert_eq!(scores, vec![1.0, 0.0]);
        let prev = previous_token_score(&p, s);
        assert_eq!(prev, vec![0.0, 1.0]);
        assert_eq!(duplicate_token_score(&p, s, 3), vec![0.0, 0.0]);
        let toks = vec![vec![1, 2, 3, 1, 2, 3]];
        assert_eq!(prefix_matching_score(&p, s, &toks), vec![1.0, 0.0]);
    }

    #[test]
    fn repeated_tokens_repeat() {
        let seqs = repeated_random_tokens(5, 3, 0, 10, 20);
        assert_eq!(seqs.len(), 3);
        for s in &seqs {
            assert_eq!(s[..5], s[5..]);
            assert!(s.iter().all(|&t| (10..20).contains(&t)));
        }
    }
}
