//! SAE evaluation metrics (definitions.md §7, "Evaluation metrics").
//!
//! Pure functions over row-major `f32` slices: inputs `x` and reconstructions `x_hat` are
//! `[tokens][d]`, latents `features` are `[tokens][m]`, logits are `[tokens][vocab]`. Every sum
//! accumulates in `f64`. The caller chooses the tokens: definitions.md evaluates over
//! non-special tokens only (no BOS), so drop those rows before calling.
//!
//! Means over zero tokens are undefined and come back as `None`, as do ratios whose denominator
//! vanishes; no function returns a silent NaN for those cases.
//!
//! Corpus-level numbers stream: [`ReconstructionStats`] and [`FiringCounter`] take the corpus
//! batch by batch and hold O(d) and O(m) state, so the corpus itself is never held.

use rayon::prelude::*;
use serde::Serialize;

/// `data` as rows of `width`, checking the shape.
fn rows(data: &[f32], width: usize) -> std::slice::ChunksExact<'_, f32> {
    assert!(width > 0, "row width must be positive");
    assert_eq!(
        data.len() % width,
        0,
        "slice length {} is not a multiple of row width {width}",
        data.len()
    );
    data.chunks_exact(width)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += a·x`.
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn mean_of(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// `num/den`, or `None` when the denominator is zero or the ratio is not finite.
fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den != 0.0 && r.is_finite()).then_some(r)
}

// ---------------------------------------------------------------------------------------------
// Sparsity
// ---------------------------------------------------------------------------------------------

/// Number of active latents (`f > 0`) in each token's row of `features` (`[tokens][m]`).
pub fn l0_per_token(features: &[f32], m: usize) -> Vec<usize> {
    rows(features, m)
        .map(|row| row.iter().filter(|&&f| f > 0.0).count())
        .collect()
}

/// L0 = mean over tokens of `#{j: f_tj > 0}`; `None` for no tokens.
pub fn l0(features: &[f32], m: usize) -> Option<f64> {
    let per_token = l0_per_token(features, m);
    mean_of(
        per_token.iter().sum::<usize>() as f64,
        per_token.len() as u64,
    )
}

/// L1 = mean over tokens of `Σ_j f_tj`; `None` for no tokens.
///
/// The plain (signed) sum of definitions.md and SAELens; every supported encoder ends in a
/// ReLU, so for real SAE latents this equals `Σ_j |f_tj|`.
pub fn l1(features: &[f32], m: usize) -> Option<f64> {
    let mut n = 0u64;
    let mut sum = 0.0;
    for row in rows(features, m) {
        n += 1;
        sum += row.iter().map(|&f| f as f64).sum::<f64>();
    }
    mean_of(sum, n)
}

// ---------------------------------------------------------------------------------------------
// Reconstruction
// ---------------------------------------------------------------------------------------------

/// The per-token sums every reconstruction metric is built from.
struct TokenTerms {
    sq_err: f64,
    sq_norm_x: f64,
    sq_norm_x_hat: f64,
    dot: f64,
}

fn token_terms(x: &[f32], x_hat: &[f32]) -> TokenTerms {
    let mut t = TokenTerms {
        sq_err: 0.0,
        sq_norm_x: 0.0,
        sq_norm_x_hat: 0.0,
        dot: 0.0,
    };
    for (&a, &b) in x.iter().zip(x_hat) {
        let (a, b) = (a as f64, b as f64);
        t.sq_err += (a - b) * (a - b);
        t.sq_norm_x += a * a;
        t.sq_norm_x_hat += b * b;
        t.dot += a * b;
    }
    t
}

/// Per-token squared error `‖x_t − x̂_t‖²` (summed over the `d` dimensions).
pub fn squared_error_per_token(x: &[f32], x_hat: &[f32], d: usize) -> Vec<f64> {
    assert_eq!(x.len(), x_hat.len(), "x and x_hat differ in shape");
    rows(x, d)
        .zip(rows(x_hat, d))
        .map(|(x, x_hat)| token_terms(x, x_hat).sq_err)
        .collect()
}

/// MSE as `mean_t ‖x_t − x̂_t‖²`: summed over dimensions, averaged over tokens (not divided
/// by d). `None` for no tokens.
pub fn mse_per_token_sum(x: &[f32], x_hat: &[f32], d: usize) -> Option<f64> {
    let per_token = squared_error_per_token(x, x_hat, d);
    mean_of(per_token.iter().sum(), per_token.len() as u64)
}

/// MSE per element: [`mse_per_token_sum`] / d, the mean over all `tokens × d` entries (what
/// `torch.nn.functional.mse_loss` reports). `None` for no tokens.
pub fn mse_per_element(x: &[f32], x_hat: &[f32], d: usize) -> Option<f64> {
    mse_per_token_sum(x, x_hat, d).map(|mse| mse / d as f64)
}

/// Normalized MSE (OpenAI `loss.py`) = `mean_t ‖x_t − x̂_t‖² / ‖x_t‖²`.
///
/// Tokens with `‖x_t‖ = 0` have no defined ratio and are left out of the mean (their count is
/// [`ReconstructionSummary::n_zero_norm_tokens`]); `None` when no token remains.
pub fn normalized_mse(x: &[f32], x_hat: &[f32], d: usize) -> Option<f64> {
    ReconstructionStats::of(x, x_hat, d)?.normalized_mse
}

/// Fraction of variance explained (FVE) =
/// `1 − E_t‖x − x̂‖² / (E_t‖x‖² − ‖E_t x‖²)`, with dataset-level means over all given tokens.
///
/// The denominator is the variance of `x` about its mean, as in the textbook and definitions.md.
/// SAELens 6.18 `evals.py` subtracts `(mean_i E[x_i²])²` instead of `‖E x‖²`, and the common
/// "about zero" shortcut subtracts nothing; both disagree with this whenever `x` has a large
/// common offset (as residual streams do). `None` for no tokens or zero variance.
pub fn fve(x: &[f32], x_hat: &[f32], d: usize) -> Option<f64> {
    ReconstructionStats::of(x, x_hat, d)?.fve
}

/// Cosine similarity between one input row `x` and its reconstruction `x_hat`.
///
/// `None` when `‖x‖ = 0` (no direction to match). A zero reconstruction of a nonzero `x` scores
/// 0: it carries no direction at all, which matches the eps-clamped cosine of PyTorch.
pub fn cosine_similarity(x: &[f32], x_hat: &[f32]) -> Option<f64> {
    assert_eq!(x.len(), x_hat.len(), "x and x_hat differ in length");
    let t = token_terms(x, x_hat);
    cosine_of(&t)
}

fn cosine_of(t: &TokenTerms) -> Option<f64> {
    if t.sq_norm_x == 0.0 {
        None
    } else if t.sq_norm_x_hat == 0.0 {
        Some(0.0)
    } else {
        Some(t.dot / (t.sq_norm_x.sqrt() * t.sq_norm_x_hat.sqrt()))
    }
}

/// Mean over tokens of [`cosine_similarity`]`(x_t, x̂_t)`, skipping tokens with `‖x_t‖ = 0`;
/// `None` when no token remains.
pub fn mean_cosine_similarity(x: &[f32], x_hat: &[f32], d: usize) -> Option<f64> {
    ReconstructionStats::of(x, x_hat, d)?.mean_cosine
}

/// Streaming accumulator for corpus-level reconstruction and sparsity metrics.
///
/// Feed batches with [`add`](Self::add) (and optionally [`add_features`](Self::add_features)
/// for L0/L1), then read [`finish`](Self::finish). State is O(d): FVE's dataset-level mean is
/// tracked per dimension with Chan et al.'s pairwise merge of (mean, sum of squared deviations),
/// which avoids the cancellation of `E‖x‖² − ‖E x‖²` when `x` has a large offset.
#[derive(Clone, Debug, Default)]
pub struct ReconstructionStats {
    /// Row width; 0 until the first non-empty batch.
    d: usize,
    n_tokens: u64,
    sum_sq_err: f64,
    sum_sq_norm_x_hat: f64,
    sum_dot: f64,
    /// Tokens with `‖x‖ > 0`, over which the per-token ratios below are averaged.
    n_nonzero_x: u64,
    sum_normalized_sq_err: f64,
    sum_cosine: f64,
    sum_norm_ratio: f64,
    /// Per-dimension mean of `x` so far.
    mean_x: Vec<f64>,
    /// Per-dimension `Σ_t (x_ti − mean_i)²`; its sum over i is N·(E‖x‖² − ‖E x‖²).
    scatter_x: Vec<f64>,
    n_feature_tokens: u64,
    n_active: u64,
    sum_features: f64,
}

/// Corpus-level metrics from a [`ReconstructionStats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReconstructionSummary {
    /// Tokens given to [`ReconstructionStats::add`].
    pub n_tokens: u64,
    /// Dimension of `x`.
    pub d: usize,
    /// Tokens with `‖x‖ = 0`, left out of the per-token ratio metrics.
    pub n_zero_norm_tokens: u64,
    /// Mean active latents per token; `None` if no features were added.
    pub l0: Option<f64>,
    /// Mean `Σ_j f_tj` per token; `None` if no features were added.
    pub l1: Option<f64>,
    /// `mean_t ‖x − x̂‖²` (summed over dimensions).
    pub mse_per_token_sum: f64,
    /// `mse_per_token_sum / d`.
    pub mse_per_element: f64,
    /// `mean_t ‖x − x̂‖²/‖x‖²` over tokens with `‖x‖ > 0`.
    pub normalized_mse: Option<f64>,
    /// `E_t‖x − Ex‖²`, the FVE denominator.
    pub variance_x: f64,
    /// `1 − E‖x − x̂‖² / E‖x − Ex‖²`; `None` for zero variance.
    pub fve: Option<f64>,
    /// Mean cosine(x, x̂) over tokens with `‖x‖ > 0`.
    pub mean_cosine: Option<f64>,
    /// Mean `‖x̂‖/‖x‖` over tokens with `‖x‖ > 0` (below 1 means shrinkage).
    pub mean_norm_ratio: Option<f64>,
    /// `E‖x̂‖² / E⟨x, x̂⟩` (Rajamanoharan et al. eq. 10); 1 is unbiased, below 1 shrinks.
    pub relative_reconstruction_bias: Option<f64>,
}

impl ReconstructionStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// The summary of a single batch; `None` for no tokens.
    fn of(x: &[f32], x_hat: &[f32], d: usize) -> Option<ReconstructionSummary> {
        let mut stats = Self::new();
        stats.add(x, x_hat, d);
        stats.finish()
    }

    /// Adds a batch of inputs and reconstructions (`[tokens][d]` each).
    ///
    /// Panics if the shapes disagree or `d` differs from an earlier batch.
    pub fn add(&mut self, x: &[f32], x_hat: &[f32], d: usize) {
        assert_eq!(x.len(), x_hat.len(), "x and x_hat differ in shape");
        let n_batch = rows(x, d).len();
        if n_batch == 0 {
            return;
        }
        if self.d == 0 {
            self.d = d;
            self.mean_x = vec![0.0; d];
            self.scatter_x = vec![0.0; d];
        }
        assert_eq!(self.d, d, "row width changed between batches");

        for (x, x_hat) in rows(x, d).zip(rows(x_hat, d)) {
            let t = token_terms(x, x_hat);
            self.sum_sq_err += t.sq_err;
            self.sum_sq_norm_x_hat += t.sq_norm_x_hat;
            self.sum_dot += t.dot;
            if t.sq_norm_x > 0.0 {
                self.n_nonzero_x += 1;
                self.sum_normalized_sq_err += t.sq_err / t.sq_norm_x;
                self.sum_cosine += cosine_of(&t).unwrap_or(0.0);
                self.sum_norm_ratio += (t.sq_norm_x_hat / t.sq_norm_x).sqrt();
            }
        }

        // Batch mean and scatter per dimension (two passes over the batch), then Chan's merge.
        let mut batch_mean = vec![0.0; d];
        for row in rows(x, d) {
            for (m, &v) in batch_mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        batch_mean.iter_mut().for_each(|m| *m /= n_batch as f64);
        let mut batch_scatter = vec![0.0; d];
        for row in rows(x, d) {
            for ((s, &v), m) in batch_scatter.iter_mut().zip(row).zip(&batch_mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        let (n_a, n_b) = (self.n_tokens as f64, n_batch as f64);
        let n = n_a + n_b;
        for i in 0..d {
            let delta = batch_mean[i] - self.mean_x[i];
            self.mean_x[i] += delta * n_b / n;
            self.scatter_x[i] += batch_scatter[i] + delta * delta * n_a * n_b / n;
        }
        self.n_tokens += n_batch as u64;
    }

    /// Adds a batch of latent activations (`[tokens][m]`) for L0 and L1.
    pub fn add_features(&mut self, features: &[f32], m: usize) {
        for row in rows(features, m) {
            self.n_feature_tokens += 1;
            self.n_active += row.iter().filter(|&&f| f > 0.0).count() as u64;
            self.sum_features += row.iter().map(|&f| f as f64).sum::<f64>();
        }
    }

    /// The metrics over everything added so far; `None` before any input token.
    pub fn finish(&self) -> Option<ReconstructionSummary> {
        let n = self.n_tokens;
        let mse_per_token_sum = mean_of(self.sum_sq_err, n)?;
        let variance_x = self.scatter_x.iter().sum::<f64>() / n as f64;
        let nz = self.n_nonzero_x;
        Some(ReconstructionSummary {
            n_tokens: n,
            d: self.d,
            n_zero_norm_tokens: n - nz,
            l0: mean_of(self.n_active as f64, self.n_feature_tokens),
            l1: mean_of(self.sum_features, self.n_feature_tokens),
            mse_per_token_sum,
            mse_per_element: mse_per_token_sum / self.d as f64,
            normalized_mse: mean_of(self.sum_normalized_sq_err, nz),
            variance_x,
            fve: ratio(mse_per_token_sum, variance_x).map(|r| 1.0 - r),
            mean_cosine: mean_of(self.sum_cosine, nz),
            mean_norm_ratio: mean_of(self.sum_norm_ratio, nz),
            relative_reconstruction_bias: ratio(self.sum_sq_norm_x_hat, self.sum_dot),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Downstream loss
// ---------------------------------------------------------------------------------------------

/// CE loss recovered = `(CE_abl − CE_sae) / (CE_abl − CE_clean)`: 1 when splicing in the SAE
/// costs nothing, 0 when it is as bad as the ablation.
///
/// `ce_ablated` is CE with the hooked activation zeroed (definitions.md's CE_zero) or replaced
/// by its mean (mean-ablation); the formula is the same. `None` when the ablation does not
/// change the loss (`CE_abl = CE_clean`), where the score is undefined.
pub fn ce_loss_recovered(ce_clean: f64, ce_sae: f64, ce_ablated: f64) -> Option<f64> {
    ratio(ce_ablated - ce_sae, ce_ablated - ce_clean)
}

/// KL score = `(KL_abl − KL_sae) / KL_abl`, each KL measured from the clean next-token
/// distribution. `None` when `KL_abl = 0` (the ablation changes nothing).
pub fn kl_score(kl_sae: f64, kl_ablated: f64) -> Option<f64> {
    ratio(kl_ablated - kl_sae, kl_ablated)
}

/// `log softmax(logits)`, computed as `l − max − ln Σ exp(l − max)` so large logits cannot
/// overflow.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&l| l as f64 - max - log_sum).collect()
}

/// `KL(p_clean ‖ p_other)` in nats for one position, from the two logit rows (over the same
/// vocabulary), via log-softmax so it is exact for large or shifted logits.
pub fn kl_divergence_per_token(logits_clean: &[f32], logits_other: &[f32]) -> f64 {
    assert_eq!(
        logits_clean.len(),
        logits_other.len(),
        "vocabularies differ"
    );
    let log_p = log_softmax(logits_clean);
    let log_q = log_softmax(logits_other);
    log_p
        .iter()
        .zip(&log_q)
        .map(|(&lp, &lq)| {
            let p = lp.exp();
            // 0·log(0/q) = 0, also when a masked logit makes lp = −∞.
            if p == 0.0 { 0.0 } else { p * (lp - lq) }
        })
        .sum()
}

/// Mean over positions of [`kl_divergence_per_token`] (rows `[tokens][vocab]`); `None` for no
/// positions.
pub fn mean_kl_divergence(logits_clean: &[f32], logits_other: &[f32], vocab: usize) -> Option<f64> {
    assert_eq!(
        logits_clean.len(),
        logits_other.len(),
        "logit shapes differ"
    );
    let mut n = 0u64;
    let mut sum = 0.0;
    for (p, q) in rows(logits_clean, vocab).zip(rows(logits_other, vocab)) {
        n += 1;
        sum += kl_divergence_per_token(p, q);
    }
    mean_of(sum, n)
}

/// Cross-entropy `−log softmax(logits)[target]` in nats for one position.
///
/// Panics if `target` is outside the vocabulary.
pub fn cross_entropy_per_token(logits: &[f32], target: u32) -> f64 {
    -log_softmax(logits)[target as usize]
}

/// Mean cross-entropy over positions: row t of `logits` (`[tokens][vocab]`) scored against
/// `targets[t]`.
///
/// Rows and targets must already be aligned for next-token prediction: logits at positions
/// `0..T−1` with the tokens at `1..T` (the last position has no target). `None` for no rows.
pub fn mean_ce(logits: &[f32], targets: &[u32], vocab: usize) -> Option<f64> {
    let rows = rows(logits, vocab);
    assert_eq!(rows.len(), targets.len(), "one target per logit row");
    let sum: f64 = rows
        .zip(targets)
        .map(|(row, &target)| cross_entropy_per_token(row, target))
        .sum();
    mean_of(sum, targets.len() as u64)
}

// ---------------------------------------------------------------------------------------------
// Firing frequency
// ---------------------------------------------------------------------------------------------

/// Below this firing frequency a latent is "ultra-low" (definitions.md; SAELens logs the count
/// below 1e−6). Resolving it needs a window of N ≳ 10⁷ tokens.
pub const ULTRA_LOW_FREQUENCY: f64 = 1e-6;

/// SAELens's other logged cut: the count of latents firing below 1e−5.
pub const LOW_FREQUENCY: f64 = 1e-5;

/// Above this firing frequency a latent is "dense" (the common `dense_threshold = 1/10`).
pub const DENSE_FREQUENCY: f64 = 0.1;

/// Added before taking log10 so dead latents plot at −10 instead of −∞ (definitions.md).
pub const LOG_FREQUENCY_EPSILON: f64 = 1e-10;

/// `log10(p + 1e−10)`, the usual axis for firing-frequency histograms.
pub fn log10_frequency(p: f64) -> f64 {
    (p + LOG_FREQUENCY_EPSILON).log10()
}

/// Per-latent counts of `f > 0` over a window of tokens, fed batch by batch.
#[derive(Clone, Debug, PartialEq)]
pub struct FiringCounter {
    counts: Vec<u64>,
    n_tokens: u64,
}

/// Firing-frequency census of a [`FiringCounter`]. Each class is a strict inequality on
/// `p_j = count_j / n_tokens`; the low classes nest (dead ⊂ ultra-low ⊂ below-1e−5).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FiringSummary {
    /// The window: tokens the frequencies were measured over. "Dead" means dead over this
    /// window (Gao et al. use 10M tokens).
    pub n_tokens: u64,
    pub n_latents: usize,
    /// Smallest nonzero frequency this window can show (`1/n_tokens`). When it exceeds
    /// [`ULTRA_LOW_FREQUENCY`], ultra-low and dead cannot be told apart.
    pub frequency_resolution: f64,
    /// Latents with `p = 0`.
    pub n_dead: usize,
    /// Latents with `p <` [`ULTRA_LOW_FREQUENCY`] (dead included).
    pub n_ultra_low: usize,
    /// Latents with `p <` [`LOW_FREQUENCY`] (dead and ultra-low included).
    pub n_below_1e5: usize,
    /// Latents with `p >` [`DENSE_FREQUENCY`].
    pub n_dense: usize,
    pub frac_dead: f64,
    pub frac_ultra_low: f64,
    pub frac_below_1e5: f64,
    pub frac_dense: f64,
}

impl FiringCounter {
    /// An empty window over `n_latents` latents.
    pub fn new(n_latents: usize) -> Self {
        Self {
            counts: vec![0; n_latents],
            n_tokens: 0,
        }
    }

    /// A window with known counts (e.g. restored from disk). Panics if a count exceeds
    /// `n_tokens`.
    pub fn from_counts(counts: Vec<u64>, n_tokens: u64) -> Self {
        assert!(
            counts.iter().all(|&c| c <= n_tokens),
            "a latent fired on more tokens than the window has"
        );
        Self { counts, n_tokens }
    }

    /// Adds a batch of latent activations, `[tokens][n_latents]`.
    pub fn add(&mut self, features: &[f32]) {
        for row in rows(features, self.counts.len()) {
            self.n_tokens += 1;
            for (c, &f) in self.counts.iter_mut().zip(row) {
                *c += (f > 0.0) as u64;
            }
        }
    }

    /// Adds another window over the same latents (e.g. from another worker).
    pub fn merge(&mut self, other: &FiringCounter) {
        assert_eq!(
            self.counts.len(),
            other.counts.len(),
            "latent counts differ"
        );
        self.n_tokens += other.n_tokens;
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
    }

    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }

    pub fn n_latents(&self) -> usize {
        self.counts.len()
    }

    /// Tokens on which each latent fired.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// `p_j = #{t: f_tj > 0} / N`; `None` for an empty window.
    pub fn frequencies(&self) -> Option<Vec<f64>> {
        (self.n_tokens > 0).then(|| {
            let n = self.n_tokens as f64;
            self.counts.iter().map(|&c| c as f64 / n).collect()
        })
    }

    /// Dead / ultra-low / dense census; `None` for an empty window.
    pub fn summary(&self) -> Option<FiringSummary> {
        let p = self.frequencies()?;
        let count = |pred: fn(f64) -> bool| p.iter().filter(|&&p| pred(p)).count();
        let n_dead = count(|p| p == 0.0);
        let n_ultra_low = count(|p| p < ULTRA_LOW_FREQUENCY);
        let n_below_1e5 = count(|p| p < LOW_FREQUENCY);
        let n_dense = count(|p| p > DENSE_FREQUENCY);
        let frac = |k: usize| {
            if p.is_empty() {
                0.0
            } else {
                k as f64 / p.len() as f64
            }
        };
        Some(FiringSummary {
            n_tokens: self.n_tokens,
            n_latents: p.len(),
            frequency_resolution: 1.0 / self.n_tokens as f64,
            n_dead,
            n_ultra_low,
            n_below_1e5,
            n_dense,
            frac_dead: frac(n_dead),
            frac_ultra_low: frac(n_ultra_low),
            frac_below_1e5: frac(n_below_1e5),
            frac_dense: frac(n_dense),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Dark matter (Engels et al. 2024)
// ---------------------------------------------------------------------------------------------

/// Ridge added to the normal equations, relative to the mean eigenvalue (`trace/d`) of the
/// centered scatter matrix: small enough not to move a well-posed fit (relative change ~1e−8),
/// large enough that collinear or constant input dimensions (common in residual streams) still
/// give a positive-definite system for the Cholesky solve.
pub const RIDGE_RELATIVE: f64 = 1e-8;

/// Tokens per block when accumulating the scatter matrices (a block of centered rows stays in
/// cache while every matrix row is updated from it).
const SCATTER_BLOCK_TOKENS: usize = 256;

/// Fills `out` with target row `t` (so derived targets such as `‖e_t‖` need not be stored).
type TargetRow<'a> = &'a (dyn Fn(usize, &mut [f64]) + Sync);

/// A least-squares affine map `y ≈ x W + b` (i.e. `y ≈ [x, 1] A`).
///
/// Solved as centered normal equations: with fit-set means `μ_x, μ_y`,
/// `(C_xx + λI) W = C_xy` where `C` are the centered scatter matrices, and `b = μ_y − μ_x W`.
/// This is the same least-squares problem as regressing on `[x, 1]` with the intercept left
/// unpenalised, but centering first keeps a large common offset in `x` from wrecking the
/// conditioning of the normal equations. `λ =` [`RIDGE_RELATIVE`]`·trace(C_xx)/d_in`
/// (or 1 when `x` is constant, where every slope is 0 anyway). The system is solved by Cholesky
/// in `f64`; building it costs `O(n·d_in·(d_in + d_out))` and solving `O(d_in³)`.
#[derive(Clone, Debug)]
pub struct AffineFit {
    d_in: usize,
    d_out: usize,
    mean_x: Vec<f64>,
    mean_y: Vec<f64>,
    /// `[d_out][d_in]`: output j's slopes, contiguous for the prediction dot product.
    slopes: Vec<f64>,
}

impl AffineFit {
    /// Fits `y ≈ x W + b` to rows `x` (`[n][d_in]`) and `y` (`[n][d_out]`); `None` for no
    /// rows or a numerically singular system.
    pub fn least_squares(x: &[f32], y: &[f32], d_in: usize, d_out: usize) -> Option<Self> {
        let n = rows(x, d_in).len();
        assert_eq!(rows(y, d_out).len(), n, "x and y differ in rows");
        Self::fit(x, d_in, d_out, &|t, out| {
            widen(&y[t * d_out..(t + 1) * d_out], out)
        })
    }

    fn fit(x: &[f32], d_in: usize, d_out: usize, target: TargetRow) -> Option<Self> {
        let n = rows(x, d_in).len();
        if n == 0 {
            return None;
        }
        let (mut mean_x, mut mean_y) = (vec![0.0; d_in], vec![0.0; d_out]);
        let mut y_row = vec![0.0; d_out];
        for (t, row) in rows(x, d_in).enumerate() {
            for (m, &v) in mean_x.iter_mut().zip(row) {
                *m += v as f64;
            }
            target(t, &mut y_row);
            axpy(&mut mean_y, 1.0, &y_row);
        }
        mean_x
            .iter_mut()
            .chain(&mut mean_y)
            .for_each(|m| *m /= n as f64);

        // Upper triangle of C_xx and all of C_xy, row i updated from a block of centered rows.
        let mut c_xx = vec![0.0; d_in * d_in];
        let mut c_xy = vec![0.0; d_in * d_out];
        let mut zx = vec![0.0; SCATTER_BLOCK_TOKENS * d_in];
        let mut zy = vec![0.0; SCATTER_BLOCK_TOKENS * d_out];
        for start in (0..n).step_by(SCATTER_BLOCK_TOKENS) {
            let len = SCATTER_BLOCK_TOKENS.min(n - start);
            let (zx, zy) = (&mut zx[..len * d_in], &mut zy[..len * d_out]);
            zx.par_chunks_mut(d_in)
                .zip(zy.par_chunks_mut(d_out))
                .enumerate()
                .for_each(|(k, (rx, ry))| {
                    let t = start + k;
                    center(&x[t * d_in..(t + 1) * d_in], &mean_x, rx);
                    target(t, ry);
                    axpy(ry, -1.0, &mean_y);
                });
            let (zx, zy) = (&*zx, &*zy);
            c_xx.par_chunks_mut(d_in)
                .zip(c_xy.par_chunks_mut(d_out))
                .enumerate()
                .for_each(|(i, (cxx_i, cxy_i))| {
                    for (rx, ry) in zx.chunks_exact(d_in).zip(zy.chunks_exact(d_out)) {
                        let a = rx[i];
                        if a != 0.0 {
                            axpy(&mut cxx_i[i..], a, &rx[i..]);
                            axpy(cxy_i, a, ry);
                        }
                    }
                });
        }
        for i in 0..d_in {
            for j in 0..i {
                c_xx[i * d_in + j] = c_xx[j * d_in + i];
            }
        }
        let trace: f64 = (0..d_in).map(|i| c_xx[i * d_in + i]).sum();
        let ridge = if trace > 0.0 {
            RIDGE_RELATIVE * trace / d_in as f64
        } else {
            1.0
        };
        for i in 0..d_in {
            c_xx[i * d_in + i] += ridge;
        }
        cholesky_in_place(&mut c_xx, d_in)?;
        let mut slopes = transpose(&c_xy, d_in, d_out);
        cholesky_solve(&c_xx, d_in, &mut slopes);
        Some(Self {
            d_in,
            d_out,
            mean_x,
            mean_y,
            slopes,
        })
    }

    /// Output j's slope vector (column j of W), length `d_in`.
    pub fn slopes(&self, j: usize) -> &[f64] {
        &self.slopes[j * self.d_in..(j + 1) * self.d_in]
    }

    /// Output j's intercept `b_j`.
    pub fn intercept(&self, j: usize) -> f64 {
        self.mean_y[j] - dot(self.slopes(j), &self.mean_x)
    }

    /// Writes the prediction for one input row into `out` (length `d_out`).
    pub fn predict(&self, x_row: &[f32], out: &mut [f64]) {
        let mut z = vec![0.0; self.d_in];
        center(x_row, &self.mean_x, &mut z);
        self.predict_centered(&z, out);
    }

    fn predict_centered(&self, z: &[f64], out: &mut [f64]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.mean_y[j] + dot(self.slopes(j), z);
        }
    }

    /// Coefficient of determination of each output on rows `x`, `y` (typically held out):
    /// `R²_j = 1 − Σ_t (y_tj − ŷ_tj)² / Σ_t (y_tj − ȳ_j)²` with `ȳ` the mean of these rows (as
    /// sklearn's `r2_score`). Negative when the fit is worse than that mean. `None` for an
    /// output that is constant over these rows, where R² is undefined.
    pub fn r2_per_output(&self, x: &[f32], y: &[f32]) -> Vec<Option<f64>> {
        let d_out = self.d_out;
        assert_eq!(
            rows(y, d_out).len(),
            rows(x, self.d_in).len(),
            "x and y differ in rows"
        );
        self.r2(x, &|t, out| widen(&y[t * d_out..(t + 1) * d_out], out))
    }

    fn r2(&self, x: &[f32], target: TargetRow) -> Vec<Option<f64>> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let n = rows(x, d_in).len();
        let mut mean = vec![0.0; d_out];
        let mut y_row = vec![0.0; d_out];
        for t in 0..n {
            target(t, &mut y_row);
            axpy(&mut mean, 1.0, &y_row);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);

        let zeros = || vec![0.0; d_out];
        let (ss_res, ss_tot) = (0..n)
            .into_par_iter()
            .fold(
                || (zeros(), zeros(), zeros(), zeros(), vec![0.0; d_in]),
                |(mut res, mut tot, mut y, mut pred, mut z), t| {
                    center(&x[t * d_in..(t + 1) * d_in], &self.mean_x, &mut z);
                    self.predict_centered(&z, &mut pred);
                    target(t, &mut y);
                    for j in 0..d_out {
                        res[j] += (y[j] - pred[j]).powi(2);
                        tot[j] += (y[j] - mean[j]).powi(2);
                    }
                    (res, tot, y, pred, z)
                },
            )
            .map(|(res, tot, ..)| (res, tot))
            .reduce(
                || (zeros(), zeros()),
                |(mut res, mut tot), (r, s)| {
                    axpy(&mut res, 1.0, &r);
                    axpy(&mut tot, 1.0, &s);
                    (res, tot)
                },
            );
        ss_res
            .iter()
            .zip(&ss_tot)
            .map(|(&res, &tot)| ratio(res, tot).map(|r| 1.0 - r))
            .collect()
    }
}

fn widen(src: &[f32], out: &mut [f64]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = v as f64;
    }
}

/// `out = row − mean`.
fn center(row: &[f32], mean: &[f64], out: &mut [f64]) {
    for ((o, &v), m) in out.iter_mut().zip(row).zip(mean) {
        *o = v as f64 - m;
    }
}

/// `[rows][cols]` → `[cols][rows]`.
fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// Overwrites the lower triangle of the symmetric `n×n` row-major `a` with its Cholesky factor
/// L (`a = L Lᵀ`); the strict upper triangle is left as it was. `None` if `a` is not
/// (numerically) positive definite.
fn cholesky_in_place(a: &mut [f64], n: usize) -> Option<()> {
    assert_eq!(a.len(), n * n);
    for j in 0..n {
        let (top, below) = a.split_at_mut((j + 1) * n);
        let row_j = &mut top[j * n..];
        let pivot = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if !(pivot > 0.0 && pivot.is_finite()) {
            return None;
        }
        let l_jj = pivot.sqrt();
        row_j[j] = l_jj;
        let row_j = &*row_j;
        below.par_chunks_mut(n).with_min_len(32).for_each(|row_i| {
            row_i[j] = (row_i[j] - dot(&row_i[..j], &row_j[..j])) / l_jj;
        });
    }
    Some(())
}

/// Solves `L Lᵀ w = b` for each right-hand side in `rhs` (`[k][n]`, each contiguous), in place,
/// with L the lower triangle of `l` from [`cholesky_in_place`].
fn cholesky_solve(l: &[f64], n: usize, rhs: &mut [f64]) {
    // Lᵀ as its own row-major upper triangle, so back substitution reads contiguous rows.
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..=i {
            u[k * n + i] = l[i * n + k];
        }
    }
    rhs.par_chunks_mut(n).for_each(|w| {
        for i in 0..n {
            w[i] = (w[i] - dot(&l[i * n..i * n + i], &w[..i])) / l[i * n + i];
        }
        for i in (0..n).rev() {
            w[i] = (w[i] - dot(&u[i * n + i + 1..(i + 1) * n], &w[i + 1..])) / u[i * n + i];
        }
    });
}

/// How much of the SAE error is linearly predictable from the input (Engels et al. 2024).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DarkMatter {
    /// `R²_vec`: per-dimension held-out R² of `e ≈ [x, 1]A`, averaged over the dimensions
    /// where it is defined. The paper finds ≈ 0.5.
    pub r2_vec: Option<f64>,
    /// Held-out R² of `‖e‖ ≈ [x, 1]a`. The paper finds > 0.9.
    pub r2_norm: Option<f64>,
    /// The per-dimension R² behind `r2_vec`; `None` for a dimension whose error is constant on
    /// the evaluation set.
    pub r2_per_dim: Vec<Option<f64>>,
    /// Tokens the regression was fitted on.
    pub n_fit: usize,
    /// Held-out tokens it was scored on.
    pub n_eval: usize,
}

/// Linear predictability of the SAE error `e_t = x_t − x̂_t` from `x_t` (Engels et al. 2024):
/// fits `e ≈ [x, 1]A` and `‖e‖ ≈ [x, 1]a` by least squares ([`AffineFit`]) on the fit set and
/// reports R² on the held-out evaluation set. All rows are `[tokens][d]`.
///
/// The paper fits on 150k shuffled tokens and evaluates on the next 150k. `None` when either
/// set is empty or the system is singular.
pub fn dark_matter_r2(
    fit_x: &[f32],
    fit_e: &[f32],
    eval_x: &[f32],
    eval_e: &[f32],
    d: usize,
) -> Option<DarkMatter> {
    let (n_fit, n_eval) = (rows(fit_x, d).len(), rows(eval_x, d).len());
    assert_eq!(
        rows(fit_e, d).len(),
        n_fit,
        "fit_x and fit_e differ in rows"
    );
    assert_eq!(
        rows(eval_e, d).len(),
        n_eval,
        "eval_x and eval_e differ in rows"
    );
    if n_eval == 0 {
        return None;
    }
    // Targets: the d error components, then ‖e‖ (least squares decouples across outputs, so one
    // solve serves both regressions).
    let fit = AffineFit::fit(fit_x, d, d + 1, &error_and_norm(fit_e, d))?;
    let mut r2 = fit.r2(eval_x, &error_and_norm(eval_e, d));
    let r2_norm = r2.pop().flatten();
    let scored: Vec<f64> = r2.iter().flatten().copied().collect();
    Some(DarkMatter {
        r2_vec: mean_of(scored.iter().sum(), scored.len() as u64),
        r2_norm,
        r2_per_dim: r2,
        n_fit,
        n_eval,
    })
}

/// Target rows for [`dark_matter_r2`]: the `d` error components, then `‖e‖`. Least squares
/// decouples across outputs, so one solve serves both regressions.
fn error_and_norm(e: &[f32], d: usize) -> impl Fn(usize, &mut [f64]) + Sync + '_ {
    move |t, out| {
        let row = &e[t * d..(t + 1) * d];
        widen(row, &mut out[..d]);
        out[d] = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[track_caller]
    fn assert_close(actual: f64, expected: f64, tol: f64) {
        assert!(
            close(actual, expected, tol),
            "{actual} != {expected} (tol {tol})"
        );
    }

    #[test]
    fn l0_and_l1_by_hand() {
        // m = 3. Rows: [0, 1.5, 0] → 1 active, Σ = 1.5; [2, 0.5, 0.25] → 3 active, Σ = 2.75;
        // [0, 0, 0] → 0 active, Σ = 0. L0 = 4/3, L1 = 4.25/3.
        let f = [0.0, 1.5, 0.0, 2.0, 0.5, 0.25, 0.0, 0.0, 0.0];
        assert_eq!(l0_per_token(&f, 3), vec![1, 3, 0]);
        assert_close(l0(&f, 3).unwrap(), 4.0 / 3.0, 1e-12);
        assert_close(l1(&f, 3).unwrap(), 4.25 / 3.0, 1e-12);
        assert_eq!(l0(&[], 3), None);
    }

    /// d = 2, three tokens:
    /// x = (3,4), x̂ = (3,3): err 1, ‖x‖² 25, ‖x̂‖² 18, ⟨x,x̂⟩ 21
    /// x = (0,0), x̂ = (1,1): err 2, ‖x‖² 0,  ‖x̂‖² 2,  ⟨x,x̂⟩ 0  (zero-norm: skipped in ratios)
    /// x = (1,0), x̂ = (0,0): err 1, ‖x‖² 1,  ‖x̂‖² 0,  ⟨x,x̂⟩ 0
    const X: [f32; 6] = [3.0, 4.0, 0.0, 0.0, 1.0, 0.0];
    const X_HAT: [f32; 6] = [3.0, 3.0, 1.0, 1.0, 0.0, 0.0];

    #[test]
    fn reconstruction_metrics_by_hand() {
        assert_eq!(squared_error_per_token(&X, &X_HAT, 2), vec![1.0, 2.0, 1.0]);
        // MSE = (1 + 2 + 1)/3 = 4/3 per token; /d = 2/3 per element.
        assert_close(mse_per_token_sum(&X, &X_HAT, 2).unwrap(), 4.0 / 3.0, 1e-12);
        assert_close(mse_per_element(&X, &X_HAT, 2).unwrap(), 2.0 / 3.0, 1e-12);
        // NMSE over the two nonzero tokens: (1/25 + 1/1)/2 = 0.52.
        assert_close(normalized_mse(&X, &X_HAT, 2).unwrap(), 0.52, 1e-12);
        // Cosine: 21/(5·√18) = 0.989949..., and 0 for the zero reconstruction; mean 0.494975.
        let cos1 = 21.0 / (5.0 * 18f64.sqrt());
        assert_close(cos1, 0.98994949, 1e-8);
        assert_close(
            mean_cosine_similarity(&X, &X_HAT, 2).unwrap(),
            cos1 / 2.0,
            1e-12,
        );
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), None);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 0.0]), Some(0.0));
        assert_close(
            cosine_similarity(&[1.0, 0.0], &[-2.0, 0.0]).unwrap(),
            -1.0,
            1e-12,
        );
        // FVE: E‖x‖² = 26/3, E x = (4/3, 4/3), ‖E x‖² = 32/9, variance = 78/9 − 32/9 = 46/9;
        // E‖e‖² = 4/3 = 12/9, so FVE = 1 − 12/46 = 17/23.
        assert_close(fve(&X, &X_HAT, 2).unwrap(), 17.0 / 23.0, 1e-12);

        let mut stats = ReconstructionStats::new();
        stats.add(&X, &X_HAT, 2);
        let s = stats.finish().unwrap();
        assert_eq!((s.n_tokens, s.d, s.n_zero_norm_tokens), (3, 2, 1));
        assert_eq!((s.l0, s.l1), (None, None));
        assert_close(s.variance_x, 46.0 / 9.0, 1e-12);
        // ‖x̂‖/‖x‖: √18/5 = 0.848528 and 0/1; mean 0.424264.
        assert_close(s.mean_norm_ratio.unwrap(), 18f64.sqrt() / 10.0, 1e-12);
        // Relative bias: E‖x̂‖² = (18 + 2 + 0)/3, E⟨x,x̂⟩ = 21/3, ratio 20/21.
        assert_close(s.relative_reconstruction_bias.unwrap(), 20.0 / 21.0, 1e-12);
    }

    #[test]
    fn fve_is_variance_about_the_mean_not_about_zero() {
        // d = 2, four tokens around a common offset (100, 100), deviations (±1, ±1):
        // x = (101,99), (99,101), (101,101), (99,99). x̂ = (100,100) + 0.5·(x − (100,100)).
        // Each token: error (±0.5, ±0.5), ‖e‖² = 0.5, so E‖e‖² = 0.5.
        // E‖x‖² = (20002 + 20002 + 20402 + 19602)/4 = 20002, ‖E x‖² = 20000.
        // Textbook: 1 − 0.5/(20002 − 20000) = 0.75.
        // About zero:  1 − 0.5/20002 = 0.999975...
        // SAELens 6.18: mean_i E[x_i²] = 10001, so 1 − 0.5/(20002 − 10001²) = 1.000000005.
        let x = [101.0, 99.0, 99.0, 101.0, 101.0, 101.0, 99.0, 99.0];
        let x_hat = [100.5, 99.5, 99.5, 100.5, 100.5, 100.5, 99.5, 99.5];
        let ours = fve(&x, &x_hat, 2).unwrap();
        assert_close(ours, 0.75, 1e-9);
        let about_zero = 1.0 - 0.5 / 20002.0;
        let saelens = 1.0 - 0.5 / (20002.0 - 10001f64.powi(2));
        assert!(!close(ours, about_zero, 1e-3) && !close(ours, saelens, 1e-3));

        // Streamed in uneven batches, the dataset-level means are unchanged.
        let mut stats = ReconstructionStats::new();
        stats.add(&x[..2], &x_hat[..2], 2);
        stats.add(&[], &[], 2);
        stats.add(&x[2..], &x_hat[2..], 2);
        let s = stats.finish().unwrap();
        assert_close(s.fve.unwrap(), 0.75, 1e-9);
        assert_close(s.variance_x, 2.0, 1e-9);
        // Zero variance (every token identical): FVE undefined.
        assert_eq!(fve(&[1.0, 2.0, 1.0, 2.0], &[1.0, 2.0, 1.0, 2.0], 2), None);
    }

    #[test]
    fn streamed_summary_matches_one_batch() {
        let mut rng = Rng::new(7);
        let d = 5;
        let x: Vec<f32> = (0..40 * d).map(|_| (rng.normal() + 3.0) as f32).collect();
        let x_hat: Vec<f32> = x
            .iter()
            .map(|&v| 0.9 * v + 0.1 * rng.normal() as f32)
            .collect();
        let f: Vec<f32> = (0..40 * 8)
            .map(|_| (rng.normal() as f32).max(0.0))
            .collect();
        let mut whole = ReconstructionStats::new();
        whole.add(&x, &x_hat, d);
        whole.add_features(&f, 8);
        let mut parts = ReconstructionStats::new();
        for (k, (xb, hb)) in x.chunks(7 * d).zip(x_hat.chunks(7 * d)).enumerate() {
            parts.add(xb, hb, d);
            parts.add_features(&f[k * 7 * 8..(k * 7 * 8 + xb.len() / d * 8)], 8);
        }
        let (a, b) = (whole.finish().unwrap(), parts.finish().unwrap());
        assert_close(a.fve.unwrap(), b.fve.unwrap(), 1e-12);
        assert_close(a.variance_x, b.variance_x, 1e-9);
        assert_close(a.mse_per_token_sum, b.mse_per_token_sum, 1e-12);
        assert_close(a.l0.unwrap(), l0(&f, 8).unwrap(), 1e-12);
        assert_close(b.l1.unwrap(), l1(&f, 8).unwrap(), 1e-9);
        assert_eq!(ReconstructionStats::new().finish(), None);
    }

    #[test]
    fn ce_loss_recovered_worked_example() {
        // definitions.md: 3.0 clean, 3.2 SAE, 8.0 zero-ablated → (8 − 3.2)/(8 − 3) = 0.96.
        assert_close(ce_loss_recovered(3.0, 3.2, 8.0).unwrap(), 0.96, 1e-12);
        // Mean-ablation baseline 4.0: (4 − 3.2)/(4 − 3) = 0.8.
        assert_close(ce_loss_recovered(3.0, 3.2, 4.0).unwrap(), 0.8, 1e-12);
        assert_eq!(ce_loss_recovered(3.0, 3.2, 3.0), None);
        // KL score: (2 − 0.1)/2 = 0.95.
        assert_close(kl_score(0.1, 2.0).unwrap(), 0.95, 1e-12);
        assert_eq!(kl_score(0.1, 0.0), None);
    }

    #[test]
    fn kl_and_ce_from_logits_by_hand() {
        // Clean logits (0, ln 3) → p = (1/4, 3/4); other (0, 0) → q = (1/2, 1/2).
        // KL = 1/4·ln(1/2) + 3/4·ln(3/2) = 0.75·0.4054651 − 0.25·0.6931472 = 0.1308120.
        let ln3 = 3f32.ln();
        let kl = kl_divergence_per_token(&[0.0, ln3], &[0.0, 0.0]);
        assert_close(kl, 0.75 * 1.5f64.ln() - 0.25 * 2f64.ln(), 1e-7);
        assert_close(kl, 0.1308120, 1e-6);
        // Shifting all logits by 1000 must not change anything (stability).
        let kl_shifted = kl_divergence_per_token(&[1000.0, 1000.0 + ln3], &[-1000.0, -1000.0]);
        assert_close(kl_shifted, kl, 1e-4);
        assert_eq!(kl_divergence_per_token(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        // Masked clean logit: p = (0, 1), q = (1/2, 1/2) → KL = ln 2.
        let kl_masked = kl_divergence_per_token(&[f32::NEG_INFINITY, 0.0], &[0.0, 0.0]);
        assert_close(kl_masked, 2f64.ln(), 1e-12);
        let rows = [0.0, ln3, 0.0, ln3];
        let mean_kl = mean_kl_divergence(&rows, &[0.0, 0.0, 0.0, ln3], 2).unwrap();
        assert_close(mean_kl, kl / 2.0, 1e-7);

        // CE with p = (1/4, 3/4): target 1 → −ln(3/4) = 0.2876821; target 0 → ln 4 = 1.3862944.
        assert_close(cross_entropy_per_token(&[0.0, ln3], 1), 0.2876821, 1e-6);
        let mean = mean_ce(&rows, &[1, 0], 2).unwrap();
        assert_close(mean, (0.2876821 + 1.3862944) / 2.0, 1e-6);
        assert_eq!(mean_ce(&[], &[], 2), None);
    }

    #[test]
    fn firing_counter_by_hand() {
        // 4 latents, 3 tokens: latent 1 fires on all 3, latent 3 on the first only.
        let mut counter = FiringCounter::new(4);
        assert_eq!(counter.summary(), None);
        counter.add(&[0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 0.0]);
        counter.add(&[0.0, 0.5, -1.0, 0.0]);
        assert_eq!(counter.counts(), &[0, 3, 0, 1]);
        assert_eq!(
            counter.frequencies().unwrap(),
            vec![0.0, 1.0, 0.0, 1.0 / 3.0]
        );
        let s = counter.summary().unwrap();
        assert_eq!((s.n_tokens, s.n_dead, s.n_dense), (3, 2, 2));
        assert_close(s.frac_dead, 0.5, 0.0);
        assert_close(s.frequency_resolution, 1.0 / 3.0, 1e-15);

        let mut other = FiringCounter::new(4);
        other.add(&[1.0, 0.0, 0.0, 0.0]);
        counter.merge(&other);
        assert_eq!(
            (counter.n_tokens(), counter.counts()),
            (4, &[1, 3, 0, 1][..])
        );
    }

    #[test]
    fn firing_classes_over_ten_million_tokens() {
        // N = 10⁷. p = 0 (dead), 5e−7 (ultra-low), 5e−6 (below 1e−5), 5e−5, 0.2 (dense), and
        // exactly 0.1 (not dense: the cut is strict). Dead 1/6, ultra-low 2/6 (dead included),
        // below 1e−5 3/6, dense 1/6.
        let counter =
            FiringCounter::from_counts(vec![0, 5, 50, 500, 2_000_000, 1_000_000], 10_000_000);
        let s = counter.summary().unwrap();
        assert_eq!(
            (s.n_dead, s.n_ultra_low, s.n_below_1e5, s.n_dense),
            (1, 2, 3, 1)
        );
        assert_close(s.frac_ultra_low, 2.0 / 6.0, 1e-15);
        assert_close(s.frac_below_1e5, 0.5, 1e-15);
        assert_close(s.frac_dense, 1.0 / 6.0, 1e-15);
        // log10(0 + 1e−10) = −10; log10(0.1 + 1e−10) ≈ −1.
        assert_close(log10_frequency(0.0), -10.0, 1e-12);
        assert_close(log10_frequency(0.1), -1.0, 1e-8);
    }

    #[test]
    fn cholesky_by_hand() {
        // [[4,2,2],[2,5,3],[2,3,6]] = L Lᵀ with L = [[2,0,0],[1,2,0],[1,1,2]].
        let mut a = vec![4.0, 2.0, 2.0, 2.0, 5.0, 3.0, 2.0, 3.0, 6.0];
        cholesky_in_place(&mut a, 3).unwrap();
        for (i, j, l) in [
            (0, 0, 2.0),
            (1, 0, 1.0),
            (1, 1, 2.0),
            (2, 0, 1.0),
            (2, 1, 1.0),
            (2, 2, 2.0),
        ] {
            assert_close(a[i * 3 + j], l, 1e-12);
        }
        // A w = (8, 10, 11) has w = (1, 1, 1): 4+2+2, 2+5+3, 2+3+6.
        let mut w = vec![8.0, 10.0, 11.0];
        cholesky_solve(&a, 3, &mut w);
        for v in w {
            assert_close(v, 1.0, 1e-12);
        }
        assert_eq!(cholesky_in_place(&mut [1.0, 2.0, 2.0, 1.0], 2), None);
    }

    #[test]
    fn dark_matter_one_dimension_by_hand() {
        // Fit: x = 0,1,2,3, e = 1,3,4,8. x̄ = 1.5, ē = 4, Sxx = 5,
        // Sxe = (−1.5)(−3) + (−0.5)(−1) + 0.5·0 + 1.5·4 = 11 → slope 2.2, intercept 4 − 3.3 = 0.7.
        // Held out: x = 0,1,2, e = 1,2,6. ê = 0.7, 2.9, 5.1; residuals 0.3, −0.9, 0.9 →
        // SS_res = 1.71; ē = 3 → SS_tot = 4 + 1 + 9 = 14; R² = 1 − 1.71/14 = 0.87785714.
        // All e > 0, so ‖e‖ = e and the norm regression gives the same R².
        let (fit_x, fit_e) = ([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 4.0, 8.0]);
        let (eval_x, eval_e) = ([0.0, 1.0, 2.0], [1.0, 2.0, 6.0]);
        let fit = AffineFit::least_squares(&fit_x, &fit_e, 1, 1).unwrap();
        assert_close(fit.slopes(0)[0], 2.2, 1e-6);
        assert_close(fit.intercept(0), 0.7, 1e-6);
        let mut pred = [0.0];
        fit.predict(&[2.0], &mut pred);
        assert_close(pred[0], 5.1, 1e-6);
        let dm = dark_matter_r2(&fit_x, &fit_e, &eval_x, &eval_e, 1).unwrap();
        assert_close(dm.r2_vec.unwrap(), 1.0 - 1.71 / 14.0, 1e-6);
        assert_close(dm.r2_norm.unwrap(), 1.0 - 1.71 / 14.0, 1e-6);
        assert_eq!((dm.n_fit, dm.n_eval), (4, 3));
    }

    /// `n` rows of `d` standard normals plus `offset`.
    fn normal_rows(rng: &mut Rng, n: usize, d: usize, offset: f64) -> Vec<f32> {
        (0..n * d).map(|_| (rng.normal() + offset) as f32).collect()
    }

    #[test]
    fn dark_matter_linear_error_is_predictable() {
        // e = x M + c + 0.01·noise on inputs with a large offset (50): R²_vec ≈ 1 − 1e−4/Var.
        let (d, n) = (4, 600);
        let mut rng = Rng::new(1);
        let m: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
        let x = normal_rows(&mut rng, 2 * n, d, 50.0);
        let e: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| {
                let noise: Vec<f64> = (0..d).map(|_| 0.01 * rng.normal()).collect();
                (0..d)
                    .map(|j| {
                        let lin: f64 = (0..d).map(|i| row[i] as f64 * m[i * d + j]).sum();
                        (lin + j as f64 + noise[j]) as f32
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let (fx, ex) = x.split_at(n * d);
        let (fe, ee) = e.split_at(n * d);
        let dm = dark_matter_r2(fx, fe, ex, ee, d).unwrap();
        assert!(dm.r2_vec.unwrap() > 0.999, "{dm:?}");

        // e = (a·x + 10)·u for a fixed unit u: ‖e‖ = a·x + 10 is exactly linear.
        let a = [0.5, -0.3, 0.2, 0.1];
        let u = [0.5f64, 0.5, 0.5, 0.5];
        let x = normal_rows(&mut rng, 2 * n, d, 0.0);
        let e: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| {
                let s: f64 = 10.0 + row.iter().zip(&a).map(|(&v, a)| v as f64 * a).sum::<f64>();
                u.map(|u| (s * u) as f32)
            })
            .collect();
        let dm = dark_matter_r2(&x[..n * d], &e[..n * d], &x[n * d..], &e[n * d..], d).unwrap();
        assert!(dm.r2_norm.unwrap() > 0.9999, "{dm:?}");
        assert!(dm.r2_vec.unwrap() > 0.9999, "{dm:?}");
    }

    #[test]
    fn dark_matter_independent_error_is_not_predictable() {
        // e independent of x: held-out R² ≈ −(d+1)/n ≈ 0 for both versions.
        let (d, n) = (4, 2000);
        let mut rng = Rng::new(2);
        let x = normal_rows(&mut rng, 2 * n, d, 0.0);
        let e = normal_rows(&mut rng, 2 * n, d, 0.0);
        let dm = dark_matter_r2(&x[..n * d], &e[..n * d], &x[n * d..], &e[n * d..], d).unwrap();
        assert!(dm.r2_vec.unwrap().abs() < 0.02, "{dm:?}");
        assert!(dm.r2_norm.unwrap().abs() < 0.02, "{dm:?}");
        assert_eq!(dm.r2_per_dim.len(), d);
        assert_eq!(dark_matter_r2(&x[..n * d], &e[..n * d], &[], &[], d), None);
    }
}
