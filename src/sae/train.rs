//! Training TopK SAEs (Gao et al. 2024; SAELens `topk`) on a model's activations at one hook,
//! streamed from a text corpus (`dendrite train-sae`).
//!
//! **Data.** Documents are tokenized one at a time (no special tokens, except the prefix the
//! tokenizer adds with `add_special`, e.g. a BOS) and cut into sequences of `context` tokens
//! (each document's tail is covered by a last window ending at its end; documents shorter than
//! a window are skipped). Batches of sequences run through the model, stopping after the layer
//! that holds the hook; rows at special tokens (BOS/EOS, `Tokenizer::is_special`) are dropped,
//! the rest go into a bounded shuffle buffer (at most `buffer_rows` rows, refilled to full
//! whenever it falls below half), from which training batches are drawn uniformly at random
//! without replacement. Documents are visited in a seeded random order, epoch after epoch.
//!
//! **Model.** `pre = (x − b_dec) W_enc + b_enc`; the top `k` entries of each row are chosen on
//! the detached values, `f = ReLU(pre) ⊙ mask` (gradients flow through the kept entries; computed
//! as `pre ⊙ mask'` with `mask'` the kept entries that are positive);
//! `x̂ = f W_dec + b_dec`. Init: `W_dec` rows random unit vectors, `W_enc = W_decᵀ`,
//! `b_enc = 0`, `b_dec` = the mean of the first buffer of activations.
//!
//! **Loss.** `L = mean_t ‖x − x̂‖² / σ²`, where `σ² = E‖x − E x‖²` is the total variance of the
//! first buffer (a constant, so `L` is a fixed multiple of the MSE and reads like `1 − FVE`).
//! AuxK (SAELens `calculate_topk_aux_loss`): a latent is dead when it has not fired in the last
//! `dead_window_tokens` training tokens; `e = x − x̂` (detached), `z_aux` keeps the
//! `min(k_aux, n_dead)` largest raw pre-activations among dead latents (no ReLU, as SAELens),
//! `L_aux = min(n_dead / k_aux, 1) · mean_t ‖e − z_aux W_dec‖² / σ²`; total `L + α L_aux`.
//!
//! **Optimiser.** Adam (candle-nn `AdamW`, weight decay 0, β = (0.9, 0.999)); the learning rate
//! warms up linearly over the first 5% of steps and decays linearly to 0 over the last 20%.
//! Before each step the component of `W_dec`'s gradient parallel to each row is removed; after
//! it the rows are renormalised to unit norm. Deterministic for a seed on a given machine.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rayon::prelude::*;
use serde::Serialize;

use super::metrics::FiringCounter;
use super::{Activation, Normalization, Sae, SaeConfig, SaeFormat, SaeParams, SaveMetadata};
use crate::model::{HookSpec, LayerDone, LayerObserver, Model, ModelError};
use crate::rng::Rng;

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainOptions {
    /// The hook whose activations are encoded (e.g. `blocks.0.hook_resid_post`).
    pub hook: String,
    /// A `.txt` file (its last 5% held out for evaluation) or a directory of `.txt` files
    /// (every 20th document, index `i % 20 == 7` in name order, held out).
    pub corpus: PathBuf,
    /// Output directory (SAELens `cfg.json` + `sae_weights.safetensors`, `training.json`,
    /// `training_curves.png`).
    pub out: PathBuf,
    /// Latents kept per token.
    pub k: usize,
    /// `d_sae`.
    pub width: usize,
    pub steps: usize,
    /// Activation rows per training batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub seed: u64,
    /// Tokens per sequence; `None`: `min(128, n_ctx)`.
    pub context: Option<usize>,
    /// Most rows the shuffle buffer holds (capped at `steps × batch`).
    pub buffer_rows: usize,
    /// Sequences per model forward pass.
    pub model_batch: usize,
    /// `None`: `d_in / 2` (SAELens).
    pub k_aux: Option<usize>,
    /// α, the AuxK coefficient.
    pub aux_coef: f64,
    /// A latent is dead after this many training tokens without firing. `None`:
    /// `min(10M, steps × batch / 4)`.
    pub dead_window_tokens: Option<usize>,
    /// Curve points are means over this many steps; 0: `max(1, steps / 200)`.
    pub log_every: usize,
    /// Held-out tokens for the final evaluation.
    pub eval_tokens: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            hook: "blocks.0.hook_resid_post".into(),
            corpus: PathBuf::from(".cache/corpus/shakespeare"),
            out: PathBuf::from("sae"),
            k: 32,
            width: 2048,
            steps: 2000,
            batch: 1024,
            lr: 2e-3,
            seed: 0,
            context: None,
            buffer_rows: 1 << 18,
            model_batch: 32,
            k_aux: None,
            aux_coef: 1.0 / 32.0,
            dead_window_tokens: None,
            log_every: 0,
            eval_tokens: 100_000,
        }
    }
}

/// What the progress callback sees after every step.
#[derive(Clone, Debug, Serialize)]
pub struct TrainProgress {
    pub step: usize,
    pub steps: usize,
    pub tokens_seen: usize,
    /// `mean_t ‖x − x̂‖² / σ²` on this batch.
    pub loss: f64,
    /// `L_aux` (unweighted by α; 0 when no latent is dead).
    pub aux_loss: f64,
    /// Mean number of active latents per token on this batch.
    pub l0: f64,
    /// `1 − Σ‖x − x̂‖² / Σ‖x − mean_batch(x)‖²` on this batch.
    pub fve: f64,
    pub dead_frac: f64,
    /// Training tokens per second of wall time so far (model passes included).
    pub tokens_per_s: f64,
}

/// One logged point: means over the last `log_every` steps (dead fraction at the step).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    pub tokens: usize,
    pub loss: f64,
    pub aux_loss: f64,
    pub l0: f64,
    pub fve: f64,
    pub dead_frac: f64,
}

/// Reconstruction quality on held-out activations, computed with [`Sae::forward`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct EvalMetrics {
    pub tokens: usize,
    /// `1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)`, dataset-level means (f64).
    pub fve: f64,
    /// Mean number of latents above zero per token.
    pub l0: f64,
    /// `E‖x − x̂‖²` (summed over the `d_in` dimensions).
    pub mse: f64,
    /// `mse / d_in`.
    pub mse_per_dim: f64,
    /// `E‖x‖² − ‖E x‖²`.
    pub total_variance: f64,
    /// Fraction of latents that fired on none of these tokens.
    pub frac_latents_silent: f64,
}

/// What a finished run did (also written to `training.json`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub model: String,
    pub d_in: usize,
    pub context: usize,
    pub k_aux: usize,
    pub dead_window_tokens: usize,
    /// `σ²`, the loss normaliser (total variance of the first buffer).
    pub loss_normalizer: f64,
    pub buffer_rows: usize,
    pub train_documents: usize,
    pub validation_documents: usize,
    pub tokens_seen: usize,
    /// The last curve point (means over the last `log_every` steps).
    pub final_train: Option<CurvePoint>,
    pub curves: Vec<CurvePoint>,
    pub eval: EvalMetrics,
    /// Training tokens per second of training wall time (model passes included, evaluation
    /// and saving not).
    pub tokens_per_s: f64,
    pub train_s: f64,
    pub wall_s: f64,
}

/// Returned (inside `anyhow::Error`) when the progress callback breaks: nothing is written.
#[derive(Debug, thiserror::Error)]
#[error("SAE training cancelled at step {step}")]
pub struct Cancelled {
    pub step: usize,
}

use crate::corpus::read_corpus;

/// Tokenizes documents lazily into sequences of `context` tokens.
struct Sequences<'a> {
    model: &'a Model,
    docs: &'a [String],
    context: usize,
    prefix: Vec<u32>,
    /// `Some`: shuffle the document order each epoch and loop forever.
    rng: Option<Rng>,
    order: Vec<usize>,
    next_doc: usize,
    pending: VecDeque<Vec<u32>>,
    /// Sequences produced in the current epoch.
    epoch_sequences: usize,
}

impl<'a> Sequences<'a> {
    fn new(model: &'a Model, docs: &'a [String], context: usize, rng: Option<Rng>) -> Result<Self> {
        let prefix = model.tokenizer.encode("", true)?;
        if prefix.len() >= context {
            bail!("context {context} leaves no room after the tokenizer's special prefix");
        }
        let mut s = Sequences {
            model,
            docs,
            context,
            prefix,
            rng,
            order: (0..docs.len()).collect(),
            next_doc: 0,
            pending: VecDeque::new(),
            epoch_sequences: 0,
        };
        s.shuffle();
        Ok(s)
    }

    fn shuffle(&mut self) {
        if let Some(rng) = &mut self.rng {
            for i in (1..self.order.len()).rev() {
                self.order.swap(i, rng.below(i + 1));
            }
        }
    }

    /// The next sequence; `None` at the end of the documents (held-out mode only).
    fn next(&mut self) -> Result<Option<Vec<u32>>> {
        loop {
            if let Some(seq) = self.pending.pop_front() {
                self.epoch_sequences += 1;
                return Ok(Some(seq));
            }
            if self.next_doc == self.order.len() {
                if self.rng.is_none() {
                    return Ok(None);
                }
                if self.epoch_sequences == 0 {
                    bail!(
                        "no training document has {} tokens; use a smaller --context",
                        self.context - self.prefix.len()
                    );
                }
                self.epoch_sequences = 0;
                self.next_doc = 0;
                self.shuffle();
            }
            let doc = &self.docs[self.order[self.next_doc]];
            self.next_doc += 1;
            let ids = self.model.tokenizer.encode(doc, false)?;
            let body = self.context - self.prefix.len();
            if ids.len() < body {
                continue;
            }
            let mut starts: Vec<usize> = (0..=ids.len() - body).step_by(body).collect();
            if starts.last() != Some(&(ids.len() - body)) {
                starts.push(ids.len() - body);
            }
            for s in starts {
                let mut seq = self.prefix.clone();
                seq.extend_from_slice(&ids[s..s + body]);
                self.pending.push_back(seq);
            }
        }
    }
}

/// Stops a pass once the hook has been captured (no need to run later layers).
struct StopAfter<'a> {
    hook: &'a str,
    got: Option<Tensor>,
}

impl LayerObserver for StopAfter<'_> {
    fn layer_done(&mut self, done: &LayerDone<'_>) {
        if self.got.is_none() {
            self.got = done.captures.get(self.hook).cloned();
        }
    }
    fn is_cancelled(&self) -> bool {
        self.got.is_some()
    }
}

/// Appends the hook's rows at non-special positions of `seqs` (equal lengths) to `rows`;
/// returns how many. The pass stops after the hook's layer.
pub(crate) fn run_hook(
    model: &Model,
    hook: &str,
    seqs: &[Vec<u32>],
    rows: &mut Vec<f32>,
) -> Result<usize> {
    let spec = HookSpec::capture([hook]);
    let mut stop = StopAfter { hook, got: None };
    let result = model.transformer.forward(seqs, &spec, &mut stop);
    let acts = match (result, stop.got.take()) {
        (Ok(mut out), _) => out
            .captures
            .remove(hook)
            .with_context(|| format!("{hook} was not captured"))?,
        (Err(ModelError::Cancelled), Some(t)) => t,
        (Err(e), _) => return Err(e.into()),
    };
    // Per-head sites (`attn.hook_z`, …) count as one vector per position.
    let (b, t, d) = acts.flatten_from(2)?.dims3()?;
    let values: Vec<f32> = acts.flatten_all()?.to_vec1()?;
    let mut n = 0;
    for (i, seq) in seqs.iter().enumerate().take(b) {
        for (p, &id) in seq.iter().enumerate().take(t) {
            if !model.tokenizer.is_special(id) {
                let at = (i * t + p) * d;
                rows.extend_from_slice(&values[at..at + d]);
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The sequence length used for `model`: `context`, or `min(128, n_ctx)`.
pub fn context_for(model: &Model, context: Option<usize>) -> Result<usize> {
    let n_ctx = model.info.dims.n_ctx;
    let c = context.unwrap_or(128.min(n_ctx));
    if c < 2 || c > n_ctx {
        bail!("context {c} must be between 2 and the model's {n_ctx} positions");
    }
    Ok(c)
}

/// The width of `hook` in `model`, or a clear error.
pub fn check_hook(model: &Model, hook: &str) -> Result<usize> {
    match model.transformer.hook_width(hook) {
        Some(w) => Ok(w),
        None => {
            let names = model.transformer.hook_names();
            let known = names.iter().any(|n| n == hook);
            if known {
                bail!("hook {hook} is not one vector per position; choose e.g. a residual hook");
            }
            let examples: Vec<&str> = names
                .iter()
                .filter(|n| n.ends_with("hook_resid_post") || n.ends_with("mlp.hook_post"))
                .take(4)
                .map(String::as_str)
                .collect();
            bail!(
                "hook {hook} is not in model {} (hooks look like {})",
                model.info.name,
                examples.join(", ")
            )
        }
    }
}

/// Token sequences of `context` tokens from `texts`, in order, until `max_tokens` (for
/// evaluations over held-out text).
pub fn token_sequences(
    model: &Model,
    texts: &[String],
    context: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut seqs = Sequences::new(model, texts, context, None)?;
    let (mut out, mut tokens) = (Vec::new(), 0);
    while tokens < max_tokens {
        match seqs.next()? {
            Some(s) => {
                tokens += s.len();
                out.push(s);
            }
            None => break,
        }
    }
    Ok(out)
}

/// The hook's activations at the non-special tokens of `texts`, in order, up to `max_rows`
/// rows: `([n, d] row-major, n)`.
pub fn hook_activations(
    model: &Model,
    hook: &str,
    texts: &[String],
    context: usize,
    max_rows: usize,
) -> Result<(Vec<f32>, usize)> {
    let d = check_hook(model, hook)?;
    let mut seqs = Sequences::new(model, texts, context, None)?;
    let mut rows = Vec::new();
    let mut n = 0;
    while n < max_rows {
        let mut group = Vec::new();
        while group.len() < 32 {
            match seqs.next()? {
                Some(s) => group.push(s),
                None => break,
            }
        }
        if group.is_empty() {
            break;
        }
        n += run_hook(model, hook, &group, &mut rows)?;
    }
    let n = n.min(max_rows);
    rows.truncate(n * d);
    Ok((rows, n))
}

/// Held-out metrics of `sae` on rows `x` (`[n, d_in]`), through [`Sae::forward`].
pub fn evaluate(sae: &Sae, x: &[f32], n: usize) -> Result<EvalMetrics> {
    let d = sae.cfg.d_in;
    if n == 0 {
        bail!("no held-out tokens to evaluate on");
    }
    let mut stats = super::metrics::ReconstructionStats::new();
    let mut firing = FiringCounter::new(sae.cfg.d_sae);
    for (chunk, rows) in x.chunks(4096 * d).zip((0..n).step_by(4096)) {
        let m = (n - rows).min(4096);
        let (enc, out) = sae.forward(chunk, m)?;
        stats.add(chunk, &out, d);
        stats.add_features(&enc.features, sae.cfg.d_sae);
        firing.add(&enc.features);
    }
    let (Some(r), Some(f)) = (stats.finish(), firing.summary()) else {
        bail!("no held-out tokens to evaluate on");
    };
    Ok(EvalMetrics {
        tokens: n,
        fve: r.fve.unwrap_or(f64::NAN),
        l0: r.l0.unwrap_or(0.0),
        mse: r.mse_per_token_sum,
        mse_per_dim: r.mse_per_element,
        total_variance: r.variance_x,
        frac_latents_silent: f.frac_dead,
    })
}

/// The TopK initialisation: `W_dec` rows random unit vectors (seeded), `W_enc = W_decᵀ`,
/// `b_enc = 0`, `b_dec` = the mean of the `n` rows of `first_rows` (`[n, d_in]`).
pub fn init_params(
    first_rows: &[f32],
    n: usize,
    d_in: usize,
    d_sae: usize,
    seed: u64,
) -> SaeParams {
    let mut rng = Rng::new(seed);
    let mut w_dec = vec![0f32; d_sae * d_in];
    for row in w_dec.chunks_exact_mut(d_in) {
        let v: Vec<f64> = (0..d_in).map(|_| rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut()
            .zip(&v)
            .for_each(|(w, x)| *w = (x / norm) as f32);
    }
    let mut w_enc = vec![0f32; d_in * d_sae];
    for j in 0..d_sae {
        for i in 0..d_in {
            w_enc[i * d_sae + j] = w_dec[j * d_in + i];
        }
    }
    let mut b_dec = vec![0f64; d_in];
    for row in first_rows.chunks_exact(d_in).take(n) {
        b_dec.iter_mut().zip(row).for_each(|(m, x)| *m += *x as f64);
    }
    SaeParams {
        w_enc,
        b_enc: vec![0.0; d_sae],
        w_dec,
        b_dec: b_dec.iter().map(|m| (m / n.max(1) as f64) as f32).collect(),
        ..SaeParams::default()
    }
}

/// A bounded buffer of activation rows, drawn from at random.
struct ShuffleBuffer {
    rows: Vec<f32>,
    d: usize,
    capacity: usize,
}

impl ShuffleBuffer {
    fn len(&self) -> usize {
        self.rows.len() / self.d
    }

    /// Runs the model on new sequences until the buffer is full.
    fn fill(
        &mut self,
        model: &Model,
        hook: &str,
        seqs: &mut Sequences,
        group: usize,
    ) -> Result<()> {
        while self.len() < self.capacity {
            let mut batch = Vec::with_capacity(group);
            for _ in 0..group {
                if let Some(s) = seqs.next()? {
                    batch.push(s);
                }
            }
            if batch.is_empty() {
                bail!("the corpus ran out of sequences");
            }
            run_hook(model, hook, &batch, &mut self.rows)?;
        }
        self.rows.truncate(self.capacity * self.d);
        Ok(())
    }

    /// `n` rows removed at random (swap-remove), as `[n, d]`.
    fn draw(&mut self, n: usize, rng: &mut Rng) -> Vec<f32> {
        let d = self.d;
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let len = self.len();
            let i = rng.below(len);
            out.extend_from_slice(&self.rows[i * d..(i + 1) * d]);
            if i != len - 1 {
                let (head, tail) = self.rows.split_at_mut((len - 1) * d);
                head[i * d..(i + 1) * d].copy_from_slice(&tail[..d]);
            }
            self.rows.truncate((len - 1) * d);
        }
        out
    }
}

/// The top `k` entries of each row of `values` (`[rows, m]`) among `candidates` (all when
/// `None`): a 0/1 mask, or the raw values at kept entries when `keep_values`.
fn topk_rows(
    values: &[f32],
    m: usize,
    k: usize,
    candidates: Option<&[usize]>,
    keep_values: bool,
) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(m)
        .zip(values.par_chunks(m))
        .for_each_init(Vec::new, |order: &mut Vec<usize>, (o, row)| {
            order.clear();
            match candidates {
                Some(c) => order.extend_from_slice(c),
                None => order.extend(0..m),
            }
            let k = k.min(order.len());
            if k == 0 {
                return;
            }
            let by_value = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            if k < order.len() {
                order.select_nth_unstable_by(k - 1, by_value);
            }
            for &j in &order[..k] {
                o[j] = if keep_values { row[j] } else { 1.0 };
            }
        });
    out
}

/// The learning rate at `step` (1-based): linear warm-up over 5% of the steps, constant, then
/// linear decay to 0 over the last 20%.
fn learning_rate(opts: &TrainOptions, step: usize) -> f64 {
    let warmup = (opts.steps / 20).max(1);
    let decay = (opts.steps / 5).max(1);
    let s = step as f64;
    if step <= warmup {
        opts.lr * s / warmup as f64
    } else if step + decay > opts.steps {
        opts.lr * ((opts.steps - step + 1) as f64 / decay as f64)
    } else {
        opts.lr
    }
}

/// Opens the model at `model_path` and trains (see [`train_with_model`]).
pub fn train(
    model_path: &Path,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainProgress) -> ControlFlow<()>,
) -> Result<(Sae, TrainReport)> {
    let model = crate::model::open(model_path)
        .with_context(|| format!("opening model {}", model_path.display()))?;
    train_with_model(&model, opts, progress)
}

/// Trains a TopK SAE on `model`'s activations at `opts.hook` and saves it (SAELens format) with
/// `training.json` and `training_curves.png` into `opts.out`. `progress` is called after every
/// step; `ControlFlow::Break` cancels: the run returns a [`Cancelled`] error and writes nothing.
pub fn train_with_model(
    model: &Model,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainProgress) -> ControlFlow<()>,
) -> Result<(Sae, TrainReport)> {
    let started = Instant::now();
    let d_in = check_hook(model, &opts.hook)?;
    let m = opts.width;
    if opts.k == 0 || opts.k > m {
        bail!("k = {} must be between 1 and the width {m}", opts.k);
    }
    if opts.steps == 0 || opts.batch == 0 {
        bail!("steps and batch must be at least 1");
    }
    let context = context_for(model, opts.context)?;
    let corpus = read_corpus(&opts.corpus)?;
    let k_aux = opts.k_aux.unwrap_or(d_in / 2).max(1);
    let total_tokens = opts.steps * opts.batch;
    let dead_window = opts
        .dead_window_tokens
        .unwrap_or((total_tokens / 4).min(10_000_000))
        .max(opts.batch);
    let log_every = if opts.log_every == 0 {
        (opts.steps / 200).max(1)
    } else {
        opts.log_every
    };

    // The first buffer: b_dec and the loss normaliser come from it.
    let capacity = opts.buffer_rows.min(total_tokens).max(opts.batch);
    let mut sequences = Sequences::new(model, &corpus.train, context, Some(Rng::new(opts.seed)))?;
    let mut buffer = ShuffleBuffer {
        rows: Vec::with_capacity(capacity * d_in),
        d: d_in,
        capacity,
    };
    buffer.fill(model, &opts.hook, &mut sequences, opts.model_batch.max(1))?;
    let n0 = buffer.len();
    let params = init_params(&buffer.rows, n0, d_in, m, opts.seed.wrapping_add(1));
    let sigma2 = {
        let mut sq = 0f64;
        for row in buffer.rows.chunks_exact(d_in) {
            for (x, mu) in row.iter().zip(&params.b_dec) {
                sq += ((*x - *mu) as f64).powi(2);
            }
        }
        (sq / n0 as f64).max(1e-12)
    };

    let dev = Device::Cpu;
    let w_enc = Var::from_tensor(&Tensor::from_vec(params.w_enc, (d_in, m), &dev)?)?;
    let b_enc = Var::from_tensor(&Tensor::from_vec(params.b_enc, m, &dev)?)?;
    let w_dec = Var::from_tensor(&Tensor::from_vec(params.w_dec, (m, d_in), &dev)?)?;
    let b_dec = Var::from_tensor(&Tensor::from_vec(params.b_dec, d_in, &dev)?)?;
    let mut optimizer = AdamW::new(
        vec![w_enc.clone(), b_enc.clone(), w_dec.clone(), b_dec.clone()],
        ParamsAdamW {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;

    let mut rng = Rng::new(opts.seed.wrapping_add(2));
    let mut since_fired = vec![0usize; m];
    // Firing frequencies for `sparsity.safetensors`, over windows of `dead_window` tokens
    // (SAELens: its feature-sampling window); the file gets the last full window and the
    // partial one after it.
    let mut density = DensityWindows::new(m, dead_window);
    let mut curves = Vec::new();
    let mut window = [0f64; 4];
    let mut window_n = 0usize;
    let mut tokens_seen = 0usize;
    let train_started = Instant::now();
    for step in 1..=opts.steps {
        if buffer.len() < buffer.capacity / 2 || buffer.len() < opts.batch {
            buffer.fill(model, &opts.hook, &mut sequences, opts.model_batch.max(1))?;
        }
        let b = opts.batch;
        let xs = buffer.draw(b, &mut rng);
        // Σ‖x − mean_batch(x)‖², for the batch FVE.
        let batch_var = {
            let mut mean = vec![0f64; d_in];
            for row in xs.chunks_exact(d_in) {
                mean.iter_mut().zip(row).for_each(|(s, x)| *s += *x as f64);
            }
            mean.iter_mut().for_each(|s| *s /= b as f64);
            xs.chunks_exact(d_in)
                .map(|row| {
                    row.iter()
                        .zip(&mean)
                        .map(|(x, mu)| (*x as f64 - mu).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
        };
        optimizer.set_learning_rate(learning_rate(opts, step));
        let x = Tensor::from_vec(xs, (b, d_in), &dev)?;
        let pre = x
            .broadcast_sub(b_dec.as_tensor())?
            .matmul(w_enc.as_tensor())?
            .broadcast_add(b_enc.as_tensor())?;
        let pre_values: Vec<f32> = pre.flatten_all()?.to_vec1()?;
        // Kept and positive: `pre ⊙ mask` is then `ReLU(pre) ⊙ TopK-mask`, with the same
        // gradient, in one pass.
        let mut mask = topk_rows(&pre_values, m, opts.k, None, false);
        let (mut active, mut fired) = (0usize, vec![false; m]);
        for (row_mask, row) in mask.chunks_exact_mut(m).zip(pre_values.chunks_exact(m)) {
            for (j, (mk, v)) in row_mask.iter_mut().zip(row).enumerate() {
                if *mk > 0.0 && *v > 0.0 {
                    active += 1;
                    fired[j] = true;
                    density.fire(j);
                } else {
                    *mk = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, m), &dev)?;
        let f = (&pre * mask)?;
        let x_hat = f
            .matmul(w_dec.as_tensor())?
            .broadcast_add(b_dec.as_tensor())?;
        let err = (&x - &x_hat)?;
        let loss = (err.sqr()?.sum_keepdim(1)?.mean_all()? / sigma2)?;

        // AuxK on latents dead before this batch.
        let dead: Vec<usize> = (0..m).filter(|&j| since_fired[j] >= dead_window).collect();
        let aux = if dead.is_empty() {
            None
        } else {
            let kk = k_aux.min(dead.len());
            let scale = (dead.len() as f64 / k_aux as f64).min(1.0);
            let z = topk_rows(&pre_values, m, kk, Some(&dead), false);
            let z = (pre.clone() * Tensor::from_vec(z, (b, m), &dev)?)?;
            let e_hat = z.matmul(w_dec.as_tensor())?;
            let aux = ((err.detach() - e_hat)?.sqr()?.sum_keepdim(1)?.mean_all()? / sigma2)?;
            Some((aux, scale))
        };
        let total = match &aux {
            Some((a, scale)) => (&loss + (a * (opts.aux_coef * scale))?)?,
            None => loss.clone(),
        };
        let mut grads = total.backward()?;
        // Remove the gradient's component along each (unit) decoder row.
        if let Some(g) = grads.get(w_dec.as_tensor()) {
            let w = w_dec.as_tensor();
            let dot = (g * w)?.sum_keepdim(1)?;
            let g = (g - w.broadcast_mul(&dot)?)?;
            grads.insert(w_dec.as_tensor(), g);
        }
        optimizer.step(&grads)?;
        let w = w_dec.as_tensor();
        let norms = w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        w_dec.set(&w.broadcast_div(&norms)?)?;

        for (s, f) in since_fired.iter_mut().zip(&fired) {
            *s = if *f { 0 } else { *s + b };
        }
        density.tokens(b);
        tokens_seen += b;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            bail!("training diverged at step {step} (loss {loss_v}); try a lower --lr");
        }
        let aux_v = match &aux {
            Some((a, _)) => a.to_scalar::<f32>()? as f64,
            None => 0.0,
        };
        let l0 = active as f64 / b as f64;
        let fve = 1.0 - loss_v * sigma2 * b as f64 / batch_var.max(1e-30);
        let dead_frac = since_fired.iter().filter(|s| **s >= dead_window).count() as f64 / m as f64;
        for (w, v) in window.iter_mut().zip([loss_v, aux_v, l0, fve]) {
            *w += v;
        }
        window_n += 1;
        if step.is_multiple_of(log_every) || step == opts.steps {
            let n = window_n as f64;
            curves.push(CurvePoint {
                step,
                tokens: tokens_seen,
                loss: window[0] / n,
                aux_loss: window[1] / n,
                l0: window[2] / n,
                fve: window[3] / n,
                dead_frac,
            });
            window = [0.0; 4];
            window_n = 0;
        }
        let report = TrainProgress {
            step,
            steps: opts.steps,
            tokens_seen,
            loss: loss_v,
            aux_loss: aux_v,
            l0,
            fve,
            dead_frac,
            tokens_per_s: tokens_seen as f64 / train_started.elapsed().as_secs_f64().max(1e-9),
        };
        if progress(&report).is_break() {
            return Err(Cancelled { step }.into());
        }
    }
    let train_s = train_started.elapsed().as_secs_f64();
    drop(buffer);

    let to_vec = |v: &Var| -> Result<Vec<f32>> { Ok(v.as_tensor().flatten_all()?.to_vec1()?) };
    let cfg = SaeConfig {
        architecture: "topk".into(),
        activation: Activation::TopK { k: opts.k },
        transcoder: false,
        hook_name: opts.hook.clone(),
        hook_name_out: None,
        d_in,
        d_sae: m,
        d_out: d_in,
        apply_b_dec_to_input: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        format: SaeFormat::SaeLens,
        path: opts.out.clone(),
        model_name: Some(model.info.name.clone()),
        notes: Vec::new(),
    };
    let sae = Sae::new(
        cfg,
        SaeParams {
            w_enc: to_vec(&w_enc)?,
            b_enc: to_vec(&b_enc)?,
            w_dec: to_vec(&w_dec)?,
            b_dec: to_vec(&b_dec)?,
            ..SaeParams::default()
        },
    )?
    .with_log10_density(density.log10(), &opts.out.join("sparsity.safetensors"))?;

    let (xv, nv) = hook_activations(
        model,
        &opts.hook,
        &corpus.validation,
        context,
        opts.eval_tokens,
    )?;
    let eval = evaluate(&sae, &xv, nv).context("evaluating on the held-out text")?;

    super::save(
        &sae,
        &opts.out,
        &SaveMetadata {
            model_name: model.info.name.clone(),
            context_size: context,
            dataset_path: opts.corpus.display().to_string(),
            prepend_bos: !model.tokenizer.encode("", true)?.is_empty(),
        },
    )?;
    let report = TrainReport {
        options: opts.clone(),
        model: model.info.name.clone(),
        d_in,
        context,
        k_aux,
        dead_window_tokens: dead_window,
        loss_normalizer: sigma2,
        buffer_rows: capacity,
        train_documents: corpus.train.len(),
        validation_documents: corpus.validation.len(),
        tokens_seen,
        final_train: curves.last().cloned(),
        curves,
        eval,
        tokens_per_s: tokens_seen as f64 / train_s.max(1e-9),
        train_s,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let path = opts.out.join("training.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    plot(
        &report.curves,
        opts.k,
        &opts.out.join("training_curves.png"),
    )?;
    Ok((sae, report))
}

/// Per-latent firing counts over consecutive windows of tokens.
struct DensityWindows {
    window_tokens: usize,
    /// The window being filled (counted here: training knows which latents fired, not their
    /// values as [`FiringCounter::add`] takes them).
    current: Vec<u64>,
    current_tokens: usize,
    /// The last full window.
    previous: FiringCounter,
}

impl DensityWindows {
    fn new(latents: usize, window_tokens: usize) -> Self {
        DensityWindows {
            window_tokens: window_tokens.max(1),
            current: vec![0; latents],
            current_tokens: 0,
            previous: FiringCounter::new(latents),
        }
    }

    fn fire(&mut self, latent: usize) {
        self.current[latent] += 1;
    }

    fn current(&self) -> FiringCounter {
        FiringCounter::from_counts(self.current.clone(), self.current_tokens as u64)
    }

    /// `n` more tokens were seen; starts a new window once this one is full.
    fn tokens(&mut self, n: usize) {
        self.current_tokens += n;
        if self.current_tokens >= self.window_tokens {
            self.previous = self.current();
            self.current.iter_mut().for_each(|c| *c = 0);
            self.current_tokens = 0;
        }
    }

    /// `log10(frequency + 1e-10)` per latent over the last full window and the partial one
    /// after it (SAELens' `_log_feature_sparsity`).
    fn log10(&self) -> Vec<f32> {
        let mut seen = self.previous.clone();
        seen.merge(&self.current());
        seen.frequencies()
            .unwrap_or_else(|| vec![0.0; seen.n_latents()])
            .iter()
            .map(|p| (p + 1e-10).log10() as f32)
            .collect()
    }
}

/// Draws loss, L0 / k, FVE and dead fraction (all in [0, 1]) over steps.
pub fn plot(curves: &[CurvePoint], k: usize, path: &Path) -> Result<()> {
    use crate::export::plot::{PALETTE, Series, line_plot};
    let series = |f: &dyn Fn(&CurvePoint) -> f64| -> Vec<(f64, f64)> {
        curves.iter().map(|c| (c.step as f64, f(c))).collect()
    };
    let loss = series(&|c| c.loss);
    let l0 = series(&|c| c.l0 / k as f64);
    let fve = series(&|c| c.fve);
    let dead = series(&|c| c.dead_frac);
    let l0_label = format!("L0 / k (k = {k})");
    line_plot(
        path,
        "TopK SAE training (means over logging windows)",
        "step",
        "value",
        &[
            Series {
                label: "loss (MSE / total variance)",
                points: &loss,
                color: PALETTE[0],
            },
            Series {
                label: &l0_label,
                points: &l0,
                color: PALETTE[1],
            },
            Series {
                label: "FVE (batch)",
                points: &fve,
                color: PALETTE[2],
            },
            Series {
                label: "dead fraction",
                points: &dead,
                color: PALETTE[3],
            },
        ],
        (900, 500),
    )
}

#[cfg(test)]
mod tests {
    use super::DensityWindows;

    #[test]
    fn densities_cover_the_last_full_window_and_the_partial_one_after_it() {
        let mut d = DensityWindows::new(3, 10);
        // A first window, then forgotten.
        (0..9).for_each(|_| d.fire(2));
        d.tokens(10);
        // The last full window: latent 0 fires 5 times in 10 tokens.
        (0..5).for_each(|_| d.fire(0));
        d.tokens(10);
        // The partial window after it: latent 1 fires twice in 4 tokens.
        (0..2).for_each(|_| d.fire(1));
        d.tokens(4);
        let got = d.log10();
        let want = [(5.0f64 / 14.0).log10(), (2.0f64 / 14.0).log10(), -10.0];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?}");
        }
    }
}
