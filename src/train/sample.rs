//! `dendrite train-sample`: the small GPT-2 the app opens on a fresh machine.
//!
//! Byte-level BPE trained on the corpus, then a ReLU GPT-2 (so exact-zero sparsity is visible)
//! trained with AdamW. Part of every batch repeats a segment (text, or random tokens) so that
//! induction heads form. Deterministic for a seed on a given machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;

use super::gpt2::{Config, Gpt2};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Options {
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    pub seed: u64,
    /// Fraction of sequences that repeat a text segment.
    pub repeat_text: f64,
    /// Fraction of sequences that repeat a segment of random tokens.
    pub repeat_random: f64,
    /// Initialise position embeddings with sinusoids (relative offsets are then linear maps,
    /// which lets previous-token heads, and so induction heads, form much sooner).
    pub sinusoidal_positions: bool,
}

impl Default for Options {
    /// The recipe of `sample_models/shakespeare-gpt2-relu` (its README has the curves).
    fn default() -> Self {
        Options {
            corpus: PathBuf::from(".cache/corpus/shakespeare"),
            out: PathBuf::from("sample_models/shakespeare-gpt2-relu"),
            vocab_size: 2048,
            n_layer: 2,
            n_embd: 128,
            n_head: 4,
            seq_len: 48,
            batch: 16,
            steps: 14_000,
            lr: 3e-3,
            seed: 0,
            repeat_text: 0.3,
            repeat_random: 0.5,
            sinusoidal_positions: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Report {
    pub steps: usize,
    pub tokens_seen: usize,
    pub train_tokens: usize,
    pub validation_tokens: usize,
    pub final_train_loss: f64,
    pub final_validation_loss: f64,
    /// (step, mean training loss over the last `log_every` steps).
    pub train_curve: Vec<(usize, f64)>,
    /// (step, validation loss).
    pub validation_curve: Vec<(usize, f64)>,
    /// (step, mean loss on the first half, mean loss on the repeated half, best head's
    /// induction score) on the repeated-random-token probe (L = 20, batch 4, seed 0): the
    /// induction phase change.
    #[serde(default)]
    pub induction_curve: Vec<(usize, f64, f64, f64)>,
    pub duration_s: f64,
    pub seed: u64,
}

/// Trains a byte-level BPE tokenizer and writes `tokenizer.json` to `out`.
fn train_tokenizer(train: &[String], vocab_size: usize, out: &Path) -> Result<PathBuf> {
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, NormalizerWrapper, TokenizerBuilder};

    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| anyhow::anyhow!("building tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, train.iter())
        .map_err(|e| anyhow::anyhow!("training tokenizer: {e}"))?;
    let path = out.join("tokenizer.json");
    tokenizer
        .save(&path, true)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Length of each half of the induction probe logged during training.
const PROBE_LEN: usize = 20;

/// The end-of-text token separating documents.
pub const EOT: &str = "<|endoftext|>";

fn encode_all(tokenizer: &crate::model::Tokenizer, docs: &[String], eot: u32) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for doc in docs {
        ids.extend(tokenizer.encode(doc, false)?);
        ids.push(eot);
    }
    Ok(ids)
}

/// One training sequence of `len + 1` tokens (inputs and shifted targets).
fn sample_sequence(
    rng: &mut Rng,
    ids: &[u32],
    len: usize,
    opts: &Options,
    vocab: usize,
) -> Vec<u32> {
    let window = |rng: &mut Rng, n: usize| -> Vec<u32> {
        let start = rng.below(ids.len() - n);
        ids[start..start + n].to_vec()
    };
    let r = rng.uniform();
    if r < opts.repeat_text + opts.repeat_random {
        // A prefix of natural text, then a segment (of text, or of random tokens), then the
        // same segment again: random tokens' second copy can be predicted only by induction.
        let seg = 8 + rng.below(len / 2 - 8);
        let segment: Vec<u32> = if r < opts.repeat_text {
            window(rng, seg)
        } else {
            (0..seg).map(|_| rng.below(vocab) as u32).collect()
        };
        let mut seq = window(rng, len + 1 - 2 * seg);
        seq.extend(&segment);
        seq.extend(&segment);
        seq
    } else {
        window(rng, len + 1)
    }
}

fn batch_tensors(seqs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
    let len = seqs[0].len() - 1;
    let inputs: Vec<u32> = seqs.iter().flat_map(|s| s[..len].iter().copied()).collect();
    let targets: Vec<u32> = seqs.iter().flat_map(|s| s[1..].iter().copied()).collect();
    Ok((
        Tensor::from_vec(inputs, (seqs.len(), len), &Device::Cpu)?,
        Tensor::from_vec(targets, seqs.len() * len, &Device::Cpu)?,
    ))
}

fn loss(model: &Gpt2, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = model.forward(inputs)?;
    let (b, t, v) = logits.dims3()?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.reshape((b * t, v))?,
        targets,
    )?)
}

/// Fixed validation windows (natural text only).
fn validation_batches(
    ids: &[u32],
    len: usize,
    batch: usize,
    n_batches: usize,
) -> Vec<Vec<Vec<u32>>> {
    let stride = (ids.len().saturating_sub(len + 1) / (batch * n_batches).max(1)).max(1);
    (0..n_batches)
        .map(|b| {
            (0..batch)
                .map(|i| {
                    let start = ((b * batch + i) * stride).min(ids.len() - len - 1);
                    ids[start..start + len + 1].to_vec()
                })
                .collect()
        })
        .collect()
}

/// Trains the sample model into `opts.out`. `progress(step, loss, probe)` is called after every
/// step; `probe` is the induction probe's (first-half loss, repeated-half loss, best induction
/// score) when it was measured.
pub fn train(
    opts: &Options,
    mut progress: impl FnMut(usize, f64, Option<(f64, f64, f64)>),
) -> Result<Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let (train_docs, validation_docs) = crate::corpus::read_txt_dir(&opts.corpus)?;
    let tokenizer_path = train_tokenizer(&train_docs, opts.vocab_size, &opts.out)?;
    let tokenizer = crate::model::Tokenizer::from_file(&tokenizer_path)?;
    let eot = tokenizer
        .token_to_id(EOT)
        .context("trained tokenizer lacks the end-of-text token")?;
    let vocab = tokenizer.vocab_size();
    let train_ids = encode_all(&tokenizer, &train_docs, eot)?;
    let validation_ids = encode_all(&tokenizer, &validation_docs, eot)?;
    if train_ids.len() < 10 * opts.seq_len || validation_ids.len() < 2 * opts.seq_len {
        bail!("corpus too small for sequences of {} tokens", opts.seq_len);
    }

    let cfg = Config::new(
        vocab,
        2 * opts.seq_len,
        opts.n_embd,
        opts.n_layer,
        opts.n_head,
        4 * opts.n_embd,
        "relu",
    );
    let model = Gpt2::new(cfg.clone(), opts.seed, opts.sinusoidal_positions)?;
    let mut optimizer = AdamW::new(
        model.varmap.all_vars(),
        ParamsAdamW {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    )?;
    let mut rng = Rng::new(opts.seed.wrapping_add(1));
    let validation = validation_batches(&validation_ids, opts.seq_len, opts.batch, 4);
    let evaluate = |model: &Gpt2| -> Result<f64> {
        let mut total = 0.0;
        for batch in &validation {
            let (x, y) = batch_tensors(batch)?;
            total += loss(model, &x, &y)?.to_scalar::<f32>()? as f64;
        }
        Ok(total / validation.len() as f64)
    };

    let probe = crate::analysis::heads::repeated_random_tokens(PROBE_LEN, 4, 0, 1, vocab as u32);
    // (first-half loss, repeated-half loss, best induction score) on the probe.
    let probe_model = |model: &Gpt2| -> Result<(f64, f64, f64)> {
        let flat: Vec<u32> = probe.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (probe.len(), 2 * PROBE_LEN), &Device::Cpu)?;
        let mut patterns = Vec::new();
        let logits = model.forward_with_patterns(&x, Some(&mut patterns))?;
        let logp =
            candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.to_vec3::<f32>()?;
        let (mut first, mut second) = (0.0, 0.0);
        for (seq, rows) in probe.iter().zip(&logp) {
            for i in 0..2 * PROBE_LEN - 1 {
                let nll = -rows[i][seq[i + 1] as usize] as f64;
                // Predictions of tokens 1..L-1 use only the first copy; L+1..2L-1 can copy.
                if i + 1 < PROBE_LEN {
                    first += nll;
                } else if i + 1 > PROBE_LEN {
                    second += nll;
                }
            }
        }
        let n = (probe.len() * (PROBE_LEN - 1)) as f64;
        let shape = crate::analysis::heads::PatternShape {
            batch: probe.len(),
            heads: opts.n_head,
            t: 2 * PROBE_LEN,
        };
        let mut best = 0f64;
        for p in &patterns {
            let p: Vec<f32> = p.flatten_all()?.to_vec1()?;
            let scores = crate::analysis::heads::induction_score(&p, shape, PROBE_LEN);
            best = scores.into_iter().fold(best, f64::max);
        }
        Ok((first / n, second / n, best))
    };
    let mut induction_curve = Vec::new();

    let warmup = (opts.steps / 20).max(1);
    let log_every = 50;
    let (mut train_curve, mut validation_curve) = (Vec::new(), Vec::new());
    let (mut window_sum, mut window_n, mut last_train) = (0.0, 0usize, f64::NAN);
    for step in 1..=opts.steps {
        // Linear warm-up, then cosine decay to 10% of the peak rate.
        let lr = if step <= warmup {
            opts.lr * step as f64 / warmup as f64
        } else {
            let progress = (step - warmup) as f64 / (opts.steps - warmup).max(1) as f64;
            opts.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        };
        optimizer.set_learning_rate(lr);
        let seqs: Vec<Vec<u32>> = (0..opts.batch)
            .map(|_| sample_sequence(&mut rng, &train_ids, opts.seq_len, opts, vocab))
            .collect();
        let (x, y) = batch_tensors(&seqs)?;
        let l = loss(&model, &x, &y)?;
        optimizer.backward_step(&l)?;
        let value = l.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            bail!("training diverged at step {step} (loss {value})");
        }
        window_sum += value;
        window_n += 1;
        let mut probed = None;
        if step % 250 == 0 || step == opts.steps {
            let (first, second, best) = probe_model(&model)?;
            induction_curve.push((step, first, second, best));
            probed = Some((first, second, best));
        }
        progress(step, value, probed);
        if step % log_every == 0 || step == opts.steps {
            last_train = window_sum / window_n as f64;
            train_curve.push((step, last_train));
            window_sum = 0.0;
            window_n = 0;
        }
        if step % 500 == 0 || step == opts.steps {
            validation_curve.push((step, evaluate(&model)?));
        }
    }
    let final_validation_loss = validation_curve.last().map(|v| v.1).unwrap_or(f64::NAN);

    model.varmap.save(opts.out.join("model.safetensors"))?;
    let config_json = cfg.hf_json(eot);
    std::fs::write(
        opts.out.join("config.json"),
        serde_json::to_string_pretty(&config_json)? + "\n",
    )?;
    let report = Report {
        steps: opts.steps,
        tokens_seen: opts.steps * opts.batch * opts.seq_len,
        train_tokens: train_ids.len(),
        validation_tokens: validation_ids.len(),
        final_train_loss: last_train,
        final_validation_loss,
        train_curve,
        validation_curve,
        induction_curve,
        duration_s: started.elapsed().as_secs_f64(),
        seed: opts.seed,
    };
    std::fs::write(
        opts.out.join("training.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    plot(&report, &opts.out)?;
    Ok(report)
}

/// Draws `loss_curve.png` (train and validation loss) and `induction_probe.png` (loss on each
/// half of repeated random tokens) into `dir`.
pub fn plot(report: &Report, dir: &Path) -> Result<()> {
    use crate::export::plot::{PALETTE, Series, line_plot};
    let xy =
        |v: &[(usize, f64)]| -> Vec<(f64, f64)> { v.iter().map(|&(s, l)| (s as f64, l)).collect() };
    let (train, validation) = (xy(&report.train_curve), xy(&report.validation_curve));
    line_plot(
        &dir.join("loss_curve.png"),
        "Sample model: next-token loss",
        "step",
        "cross-entropy (nats)",
        &[
            Series {
                label: "train (mean of 50 steps)",
                points: &train,
                color: PALETTE[0],
            },
            Series {
                label: "validation (held-out plays)",
                points: &validation,
                color: PALETTE[1],
            },
        ],
        (900, 500),
    )?;
    if report.induction_curve.is_empty() {
        return Ok(());
    }
    let first: Vec<(f64, f64)> = report
        .induction_curve
        .iter()
        .map(|c| (c.0 as f64, c.1))
        .collect();
    let second: Vec<(f64, f64)> = report
        .induction_curve
        .iter()
        .map(|c| (c.0 as f64, c.2))
        .collect();
    line_plot(
        &dir.join("induction_probe.png"),
        "Repeated random tokens (L = 20): loss per half",
        "step",
        "cross-entropy (nats)",
        &[
            Series {
                label: "first copy",
                points: &first,
                color: PALETTE[0],
            },
            Series {
                label: "repeated copy",
                points: &second,
                color: PALETTE[2],
            },
        ],
        (900, 500),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_sequences_repeat_their_segment() {
        let ids: Vec<u32> = (0..10_000).collect();
        let opts = Options {
            repeat_text: 1.0,
            repeat_random: 0.0,
            ..Options::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let seq = sample_sequence(&mut rng, &ids, 64, &opts, 100);
            assert_eq!(seq.len(), 65);
            // The last 2·seg tokens are a segment twice over, for some seg >= 8.
            let repeats = (8..=32).any(|seg| seq[65 - seg..] == seq[65 - 2 * seg..65 - seg]);
            assert!(repeats, "{seq:?}");
        }
    }
}
