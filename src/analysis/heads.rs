//! Attention-head scores on repeated sequences (definitions.md §6).
//!
//! Patterns are `[batch][head][query][key]` row-major slices of one layer (`attn.hook_pattern`).

use serde::Serialize;

use crate::model::{HookSpec, ModelError, NoObserver, Transformer};
use crate::rng::Rng;

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

/// Mean attention from each second-copy query to its earlier copy `i − L`: queries
/// `i ∈ [L, 2L−1]`, or `[L+1, 2L]` when a BOS comes first.
pub fn duplicate_token_score(pattern: &[f32], s: PatternShape, len: usize, bos: bool) -> Vec<f64> {
    let first = len + bos as usize;
    let pairs: Vec<(usize, usize)> = (first..first + len).map(|i| (i, i - len)).collect();
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

/// Induction stripe on `[BOS, r_1..r_L, r_1..r_L]`: queries `i ∈ [L+1, 2L]` (the exact second
/// half) attend to `i−L+1`. With `library_diagonal`, TL's `pattern.diagonal(1−L)` instead: all
/// queries `i ∈ [L−1, 2L]`, which includes two first-half rows (definitions.md §6a).
pub fn induction_score_with_bos(
    pattern: &[f32],
    s: PatternShape,
    len: usize,
    library_diagonal: bool,
) -> Vec<f64> {
    let first = if library_diagonal { len - 1 } else { len + 1 };
    let pairs: Vec<(usize, usize)> = (first..=2 * len).map(|i| (i, i + 1 - len)).collect();
    mean_over(pattern, s, &pairs)
}

/// Options of TL's `detect_head`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DetectOptions {
    /// Zero attention to position 0 first.
    pub exclude_bos: bool,
    /// Zero attention to the query itself first.
    pub exclude_current_token: bool,
}

/// TL `detect_head(…, "induction_head", error_measure="mul")`: per head, the mean over
/// sequences of `ΣA⊙D / ΣA`, where `D[i,j] = 1` iff `j ≤ i`, `tok[j−1] = tok[i]` and `j−1 ≠ i`.
pub fn induction_score_mul(
    pattern: &[f32],
    s: PatternShape,
    tokens: &[Vec<u32>],
    options: DetectOptions,
) -> Vec<f64> {
    (0..s.heads)
        .map(|h| {
            let per_seq: Vec<f64> = tokens
                .iter()
                .enumerate()
                .take(s.batch)
                .map(|(b, toks)| {
                    let (mut hit, mut all) = (0.0, 0.0);
                    for i in 0..s.t.min(toks.len()) {
                        for j in 0..=i {
                            if (options.exclude_bos && j == 0)
                                || (options.exclude_current_token && j == i)
                            {
                                continue;
                            }
                            let a = at(pattern, s, b, h, i, j);
                            all += a;
                            if j >= 1 && j - 1 != i && toks[j - 1] == toks[i] {
                                hit += a;
                            }
                        }
                    }
                    if all > 0.0 { hit / all } else { 0.0 }
                })
                .collect();
            per_seq.iter().sum::<f64>() / per_seq.len().max(1) as f64
        })
        .collect()
}

/// In-context-learning score (Olsson et al.): the mean over documents of `ℓ_late − ℓ_early`,
/// where `ℓ_t` is the loss predicting token `t+1` from tokens `0..=t` (0-based context index,
/// counting every token the model saw, BOS included if the caller added one). Documents too
/// short to have `ℓ_late` are skipped. `None` if none is long enough. Negative = the model uses
/// its context.
pub fn icl_score(per_token_nll: &[Vec<f32>], early: usize, late: usize) -> Option<(f64, usize)> {
    let diffs: Vec<f64> = per_token_nll
        .iter()
        .filter(|nll| nll.len() > late.max(early))
        .map(|nll| nll[late] as f64 - nll[early] as f64)
        .collect();
    if diffs.is_empty() {
        None
    } else {
        Some((diffs.iter().sum::<f64>() / diffs.len() as f64, diffs.len()))
    }
}

/// Every head score of one batched pass over repeated sequences, `[layer][head]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadScores {
    pub repeat_len: usize,
    pub n_sequences: usize,
    pub bos: bool,
    /// TL stripe; with a BOS the exact second half `i ∈ [L+1, 2L]`.
    pub induction_score: Vec<Vec<f64>>,
    /// With a BOS: TL's `diagonal(1−L)` rows `i ∈ [L−1, 2L]` as the library computes it.
    pub induction_score_library_diagonal: Option<Vec<Vec<f64>>>,
    /// TL `detect_head` "mul", nothing excluded.
    pub induction_score_mul: Vec<Vec<f64>>,
    /// TL `detect_head` "mul" with `exclude_bos` (column 0 zeroed).
    pub induction_score_mul_exclude_bos: Vec<Vec<f64>>,
    pub prev_token_score: Vec<Vec<f64>>,
    pub duplicate_token_score: Vec<Vec<f64>>,
    pub prefix_matching_score: Vec<Vec<f64>>,
    /// Mean over sequences of the loss predicting token `p+1`, per position `p`.
    pub per_position_nll: Vec<f64>,
    /// Mean loss predicting the first copy's tokens 2..L (the first cannot be predicted).
    pub first_half_nll: f64,
    /// Mean loss predicting the second copy's tokens 2..L (which can be copied).
    pub repeated_half_nll: f64,
}

/// Runs `tokens` (each `[BOS?] + prefix + prefix` with prefix length `len`) in one batched pass
/// and scores every head.
pub fn score_heads(
    model: &Transformer,
    tokens: &[Vec<u32>],
    len: usize,
    bos: bool,
) -> Result<HeadScores, ModelError> {
    let t = 2 * len + bos as usize;
    if len < 2 || tokens.is_empty() || tokens.iter().any(|s| s.len() != t) {
        return Err(ModelError::InvalidInput(format!(
            "head scores need sequences of 2·L{} = {t} tokens with L ≥ 2",
            if bos { " + 1 (BOS)" } else { "" }
        )));
    }
    let spec = HookSpec::capture(["blocks.*.attn.hook_pattern"]);
    let out = model.forward(tokens, &spec, &mut NoObserver)?;
    let shape = PatternShape {
        batch: tokens.len(),
        heads: model.dims.n_heads,
        t,
    };
    let layers = model.n_layers();
    let mut scores = HeadScores {
        repeat_len: len,
        n_sequences: tokens.len(),
        bos,
        induction_score: Vec::with_capacity(layers),
        induction_score_library_diagonal: bos.then(Vec::new),
        induction_score_mul: Vec::with_capacity(layers),
        induction_score_mul_exclude_bos: Vec::with_capacity(layers),
        prev_token_score: Vec::with_capacity(layers),
        duplicate_token_score: Vec::with_capacity(layers),
        prefix_matching_score: Vec::with_capacity(layers),
        per_position_nll: vec![0.0; t - 1],
        first_half_nll: 0.0,
        repeated_half_nll: 0.0,
    };
    for l in 0..layers {
        let name = format!("blocks.{l}.attn.hook_pattern");
        let pattern: Vec<f32> = out
            .captures
            .get(&name)
            .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))?
            .flatten_all()?
            .to_vec1()?;
        scores.induction_score.push(if bos {
            induction_score_with_bos(&pattern, shape, len, false)
        } else {
            induction_score(&pattern, shape, len)
        });
        if let Some(diag) = &mut scores.induction_score_library_diagonal {
            diag.push(induction_score_with_bos(&pattern, shape, len, true));
        }
        let mul = |exclude_bos| {
            let options = DetectOptions {
                exclude_bos,
                exclude_current_token: false,
            };
            induction_score_mul(&pattern, shape, tokens, options)
        };
        scores.induction_score_mul.push(mul(false));
        scores.induction_score_mul_exclude_bos.push(mul(true));
        scores
            .prev_token_score
            .push(previous_token_score(&pattern, shape));
        scores
            .duplicate_token_score
            .push(duplicate_token_score(&pattern, shape, len, bos));
        scores
            .prefix_matching_score
            .push(prefix_matching_score(&pattern, shape, tokens));
    }
    for (row, seq) in tokens.iter().enumerate() {
        for (p, x) in scores
            .per_position_nll
            .iter_mut()
            .zip(out.per_token_nll(seq, row)?)
        {
            *p += x as f64 / tokens.len() as f64;
        }
    }
    // Position p predicts token p+1; the first copy starts at token `bos`.
    let b = bos as usize;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    scores.first_half_nll = avg(&scores.per_position_nll[b..b + len - 1]);
    scores.repeated_half_nll = avg(&scores.per_position_nll[b + len..]);
    Ok(scores)
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
        assert_eq!(duplicate_token_score(&p, s, 3, false), vec![0.0, 0.0]);
        let toks = vec![vec![1, 2, 3, 1, 2, 3]];
        assert_eq!(prefix_matching_score(&p, s, &toks), vec![1.0, 0.0]);
    }

    /// definitions.md §6a with BOS, L = 3: [BOS,a,b,c,a,b,c]; queries 4,5,6 → keys 2,3,4.
    #[test]
    fn induction_with_bos_worked_example() {
        let s = PatternShape {
            batch: 1,
            heads: 1,
            t: 7,
        };
        let mut p = vec![0f32; 49];
        for i in 0..7 {
            // Induction from the second copy on; BOS before.
            let target = if i >= 4 { i - 2 } else { 0 };
            p[i * 7 + target] = 1.0;
        }
        assert_eq!(induction_score_with_bos(&p, s, 3, false), vec![1.0]);
        // The library diagonal also averages rows 2 (key 0 = BOS, attended here) and 3 (key 1,
        // not attended): 4 of 5.
        assert!((induction_score_with_bos(&p, s, 3, true)[0] - 0.8).abs() < 1e-12);
        // detect_head "mul": rows 4..6 put all mass on induction targets, rows 0..3 on BOS.
        let toks = vec![vec![0, 1, 2, 3, 1, 2, 3]];
        let mul = induction_score_mul(&p, s, &toks, DetectOptions::default());
        assert!((mul[0] - 3.0 / 7.0).abs() < 1e-12);
        let no_bos = DetectOptions {
            exclude_bos: true,
            ..Default::default()
        };
        assert_eq!(induction_score_mul(&p, s, &toks, no_bos), vec![1.0]);
    }

    #[test]
    fn icl_score_is_late_minus_early_loss() {
        let long: Vec<f32> = (0..600).map(|t| if t < 100 { 5.0 } else { 3.0 }).collect();
        let short = vec![1.0f32; 400];
        let (score, n) = icl_score(&[long.clone(), short, long], 50, 500).unwrap();
        assert_eq!((score, n), (-2.0, 2));
        assert!(icl_score(&[vec![0.0; 500]], 50, 500).is_none());
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
