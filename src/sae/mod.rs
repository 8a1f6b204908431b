//! Sparse autoencoders and transcoders: the common formats (SAELens v6 and older, Gemma Scope
//! `params.npz`, EleutherAI sparsify), encode and decode exactly as the reference libraries do
//! (`definitions.md` §7–8; the formulas per architecture are in `tests/fixtures/sae/README.md`,
//! checked against sae_lens outputs), evaluation metrics, and training.
//!
//! Row vectors throughout: `W_enc` is `[d_in, d_sae]`, `W_dec` is `[d_sae, d_out]`. The
//! encoder is held packed (`model::packed`), the product behind every linear layer, so
//! encoding a prompt's tokens costs one weight-stationary matmul; decoding walks only the
//! active latents.

pub mod apply;
pub mod error;
pub mod eval;
pub mod format;
pub mod metrics;
mod npz;
pub mod steer;
pub mod train;

use std::path::{Path, PathBuf};

pub use error::{Result, SaeError};
pub use format::{SaveMetadata, looks_like_sae, open, open_with_hook, save};

use crate::model::ValueOp;
use crate::model::packed::PackedMatrix;
use crate::model::transformer::Transformer;

/// How latents are computed from pre-activations.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Activation {
    /// `ReLU(pre)` (SAELens `standard`, `transcoder`).
    Relu,
    /// The `k` largest pre-activations, then ReLU on the kept values; the rest are 0.
    TopK { k: usize },
    /// `ReLU(pre) · 1[pre > θ]` with a learned threshold per latent (strict `>`).
    JumpRelu,
    /// Gated SAE: `1[x W_enc + b_gate > 0] · ReLU(x (W_enc ⊙ exp(r_mag)) + b_mag)`.
    Gated,
}

/// Input normalisation SAELens applies before encoding and inverts after decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    None,
    /// `x · √d_in / ‖x‖` per token; the output is divided by the same factor.
    ConstantNormRescale,
    /// `(x − μ) / (σ + 1e-5)` per token (σ with the N−1 divisor); the output is `y·σ + μ`.
    LayerNorm,
}

/// Where an SAE came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaeFormat {
    /// SAELens 6 (`metadata.hook_name`, …).
    SaeLens,
    /// SAELens before version 6 (flat `hook_point`, `activation_fn_str`, …).
    SaeLensLegacy,
    GemmaScope,
    Sparsify,
}

/// What an SAE is, as read from its files.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SaeConfig {
    /// The SAELens architecture name (`standard`, `topk`, `jumprelu`, `gated`, `transcoder`,
    /// `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder`).
    pub architecture: String,
    pub activation: Activation,
    /// Reads `hook_name` and writes an estimate of `hook_name_out` (never subtracts `b_dec`
    /// from its input).
    pub transcoder: bool,
    /// The hook whose activations are encoded.
    pub hook_name: String,
    /// A transcoder's target hook.
    pub hook_name_out: Option<String>,
    pub d_in: usize,
    pub d_sae: usize,
    pub d_out: usize,
    pub apply_b_dec_to_input: bool,
    pub normalization: Normalization,
    /// TopK selects on `pre · ‖W_dec[j]‖` and decodes `f / ‖W_dec[j]‖`.
    pub rescale_acts_by_decoder_norm: bool,
    pub format: SaeFormat,
    /// The directory or file it was opened from.
    pub path: PathBuf,
    /// The model it was trained on, when its files say.
    pub model_name: Option<String>,
    /// What loading did beyond reading the weights (folded scaling factors, …).
    pub notes: Vec<String>,
}

/// Extra parameters of gated SAEs.
#[derive(Debug)]
struct GatedParams {
    b_gate: Vec<f32>,
    r_mag: Vec<f32>,
    b_mag: Vec<f32>,
    /// `(W_enc ⊙ exp(r_mag))ᵀ`, packed.
    magnitude: PackedMatrix,
}

/// A loaded SAE or transcoder, ready to encode.
#[derive(Debug)]
pub struct Sae {
    pub cfg: SaeConfig,
    /// `W_encᵀ` (`[d_sae, d_in]`), packed: `x W_enc = matmul_t(x)`.
    encoder: PackedMatrix,
    /// `[d_sae]`; zeros for gated SAEs, which have none.
    b_enc: Vec<f32>,
    /// `[d_sae, d_out]` row-major.
    w_dec: Vec<f32>,
    /// `[d_in]` for SAEs, `[d_out]` for transcoders.
    b_dec: Vec<f32>,
    threshold: Option<Vec<f32>>,
    gated: Option<GatedParams>,
    /// Skip transcoders: `[d_out, d_in]`, added as `x W_skipᵀ`.
    w_skip: Option<PackedMatrix>,
    /// `‖W_dec[j]‖` when the activation is rescaled by it.
    decoder_norms: Option<Vec<f32>>,
    /// `log10(firing frequency + 1e-10)` per latent during training, from SAELens'
    /// `sparsity.safetensors` (or our own training).
    log10_density: Option<Vec<f32>>,
}

/// Per-token statistics of the input normalisation, needed to invert it on the output.
#[derive(Clone, Debug, PartialEq)]
enum RowScales {
    None,
    /// The factor each row was multiplied by.
    Rescale(Vec<f32>),
    /// Each row's mean and standard deviation.
    LayerNorm(Vec<(f32, f32)>),
}

/// Latents of a batch of tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// `[n_tokens, d_sae]` row-major.
    pub features: Vec<f32>,
    pub n_tokens: usize,
    pub d_sae: usize,
    scales: RowScales,
}

impl Encoded {
    pub fn row(&self, t: usize) -> &[f32] {
        &self.features[t * self.d_sae..(t + 1) * self.d_sae]
    }

    /// Every nonzero latent of token `t` as `(index, activation)`, highest first (ties by
    /// index).
    pub fn active(&self, t: usize) -> Vec<(usize, f32)> {
        let mut active: Vec<(usize, f32)> = self
            .row(t)
            .iter()
            .enumerate()
            .filter(|(_, a)| **a != 0.0)
            .map(|(i, a)| (i, *a))
            .collect();
        active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        active
    }

    /// Number of latents above zero, per token.
    pub fn l0(&self) -> Vec<usize> {
        metrics::l0_per_token(&self.features, self.d_sae)
    }
}

/// The raw parameters of an SAE, as the formats store them (row-major, SAELens layout).
#[derive(Clone, Debug, Default)]
pub struct SaeParams {
    /// `[d_in, d_sae]`.
    pub w_enc: Vec<f32>,
    /// `[d_sae]` (empty for gated SAEs).
    pub b_enc: Vec<f32>,
    /// `[d_sae, d_out]`.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    pub threshold: Option<Vec<f32>>,
    /// Gated: `(b_gate, r_mag, b_mag)`.
    pub gated: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// `[d_out, d_in]`.
    pub w_skip: Option<Vec<f32>>,
}

/// `m` rows of `[rows, cols]` row-major transposed to `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

impl Sae {
    /// An SAE from its configuration and parameters; checks every length against the config.
    pub fn new(cfg: SaeConfig, params: SaeParams) -> Result<Self> {
        let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.d_out);
        let check = |name: &str, len: usize, expected: &[usize]| -> Result<()> {
            if len != expected.iter().product::<usize>() {
                return Err(SaeError::Shape {
                    path: cfg.path.clone(),
                    name: name.into(),
                    expected: expected.to_vec(),
                    found: vec![len],
                });
            }
            Ok(())
        };
        check("W_enc", params.w_enc.len(), &[d_in, d_sae])?;
        check("W_dec", params.w_dec.len(), &[d_sae, d_out])?;
        let b_dec_len = if cfg.transcoder { d_out } else { d_in };
        check("b_dec", params.b_dec.len(), &[b_dec_len])?;
        let gated = match (&cfg.activation, params.gated) {
            (Activation::Gated, Some((b_gate, r_mag, b_mag))) => {
                check("b_gate", b_gate.len(), &[d_sae])?;
                check("r_mag", r_mag.len(), &[d_sae])?;
                check("b_mag", b_mag.len(), &[d_sae])?;
                let mut scaled = params.w_enc.clone();
                for row in scaled.chunks_exact_mut(d_sae) {
                    for (w, r) in row.iter_mut().zip(&r_mag) {
                        *w *= r.exp();
                    }
                }
                let magnitude =
                    PackedMatrix::from_rows(&transpose(&scaled, d_in, d_sae), d_sae, d_in);
                Some(GatedParams {
                    b_gate,
                    r_mag,
                    b_mag,
                    magnitude,
                })
            }
            (Activation::Gated, None) => {
                return Err(SaeError::MissingTensor {
                    path: cfg.path.clone(),
                    name: "b_gate".into(),
                });
            }
            _ => None,
        };
        let b_enc = if gated.is_some() {
            vec![0.0; d_sae]
        } else {
            check("b_enc", params.b_enc.len(), &[d_sae])?;
            params.b_enc
        };
        let threshold = match (&cfg.activation, params.threshold) {
            (Activation::JumpRelu, Some(t)) => {
                check("threshold", t.len(), &[d_sae])?;
                Some(t)
            }
            (Activation::JumpRelu, None) => {
                return Err(SaeError::MissingTensor {
                    path: cfg.path.clone(),
                    name: "threshold".into(),
                });
            }
            _ => None,
        };
        if let Activation::TopK { k } = cfg.activation
            && (k == 0 || k > d_sae)
        {
            return Err(SaeError::Config {
                path: cfg.path.clone(),
                reason: format!("k = {k} must be between 1 and d_sae = {d_sae}"),
            });
        }
        let w_skip = match params.w_skip {
            Some(w) => {
                check("W_skip", w.len(), &[d_out, d_in])?;
                Some(PackedMatrix::from_rows(&w, d_out, d_in))
            }
            None => None,
        };
        let decoder_norms = cfg.rescale_acts_by_decoder_norm.then(|| {
            params
                .w_dec
                .chunks_exact(d_out)
                .map(|row| row.iter().map(|w| w * w).sum::<f32>().sqrt())
                .collect()
        });
        let encoder = PackedMatrix::from_rows(&transpose(&params.w_enc, d_in, d_sae), d_sae, d_in);
        Ok(Sae {
            cfg,
            encoder,
            b_enc,
            w_dec: params.w_dec,
            b_dec: params.b_dec,
            threshold,
            gated,
            w_skip,
            decoder_norms,
            log10_density: None,
        })
    }

    /// Attaches per-latent training densities (`log10(frequency + 1e-10)`, SAELens'
    /// `sparsity.safetensors`); `source` names their file in errors.
    pub fn with_log10_density(mut self, values: Vec<f32>, source: &Path) -> Result<Self> {
        if values.len() != self.cfg.d_sae {
            return Err(SaeError::Shape {
                path: source.to_path_buf(),
                name: "sparsity".into(),
                expected: vec![self.cfg.d_sae],
                found: vec![values.len()],
            });
        }
        // A frequency is at most 1: log10 ≤ 0 (rounding aside).
        if let Some(bad) = values.iter().position(|v| !v.is_finite() || *v > 1e-3) {
            return Err(SaeError::Corrupt {
                path: source.to_path_buf(),
                reason: format!("sparsity[{bad}] = {} is not a log10 frequency", values[bad]),
            });
        }
        self.log10_density = Some(values);
        Ok(self)
    }

    /// Per-latent `log10` training densities, when the SAE came with them.
    pub fn log10_density(&self) -> Option<&[f32]> {
        self.log10_density.as_deref()
    }

    /// The parameters back in the SAELens layout (for saving).
    pub fn params(&self) -> SaeParams {
        let (d_in, d_sae) = (self.cfg.d_in, self.cfg.d_sae);
        let w_enc_t: Vec<f32> = (0..d_sae).flat_map(|j| self.encoder.row(j)).collect();
        SaeParams {
            w_enc: transpose(&w_enc_t, d_sae, d_in),
            b_enc: if self.gated.is_some() {
                Vec::new()
            } else {
                self.b_enc.clone()
            },
            w_dec: self.w_dec.clone(),
            b_dec: self.b_dec.clone(),
            threshold: self.threshold.clone(),
            gated: self
                .gated
                .as_ref()
                .map(|g| (g.b_gate.clone(), g.r_mag.clone(), g.b_mag.clone())),
            w_skip: self
                .w_skip
                .as_ref()
                .map(|w| (0..self.cfg.d_out).flat_map(|r| w.row(r)).collect()),
        }
    }

    /// Decoder row `j`: the direction latent `j` writes (`[d_out]`).
    pub fn decoder_direction(&self, j: usize) -> Option<&[f32]> {
        let d = self.cfg.d_out;
        self.w_dec.get(j * d..(j + 1) * d)
    }

    pub fn b_dec(&self) -> &[f32] {
        &self.b_dec
    }

    /// Checks that the SAE fits a model: its hooks exist there with the right widths.
    pub fn check_fits(&self, model: &Transformer, model_name: &str) -> Result<()> {
        let fits = |hook: &str, width: usize| -> Result<()> {
            match model.hook_width(hook) {
                None => Err(SaeError::UnknownHook {
                    hook: hook.into(),
                    model: model_name.into(),
                }),
                Some(w) if w != width => Err(SaeError::WidthMismatch {
                    hook: hook.into(),
                    model: model_name.into(),
                    sae_width: width,
                    model_width: w,
                }),
                Some(_) => Ok(()),
            }
        };
        fits(&self.cfg.hook_name, self.cfg.d_in)?;
        if let Some(out) = &self.cfg.hook_name_out {
            fits(out, self.cfg.d_out)?;
        }
        Ok(())
    }

    /// Normalises `x` (`[n, d_in]`) in place; returns what is needed to undo it.
    fn normalize(&self, x: &mut [f32]) -> RowScales {
        let d = self.cfg.d_in;
        match self.cfg.normalization {
            Normalization::None => RowScales::None,
            Normalization::ConstantNormRescale => RowScales::Rescale(
                x.chunks_exact_mut(d)
                    .map(|row| {
                        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                        // A zero vector stays zero (SAELens divides by zero here).
                        let c = if norm > 0.0 {
                            ((d as f64).sqrt() / norm) as f32
                        } else {
                            1.0
                        };
                        row.iter_mut().for_each(|v| *v *= c);
                        c
                    })
                    .collect(),
            ),
            Normalization::LayerNorm => RowScales::LayerNorm(
                x.chunks_exact_mut(d)
                    .map(|row| {
                        let n = row.len() as f64;
                        let mu = row.iter().map(|v| *v as f64).sum::<f64>() / n;
                        let var = row.iter().map(|v| (*v as f64 - mu).powi(2)).sum::<f64>()
                            / (n - 1.0).max(1.0);
                        let sigma = var.sqrt();
                        for v in row.iter_mut() {
                            *v = ((*v as f64 - mu) / (sigma + 1e-5)) as f32;
                        }
                        (mu as f32, sigma as f32)
                    })
                    .collect(),
            ),
        }
    }

    /// Latents of `n_tokens` input rows (`x`: `[n_tokens, d_in]` row-major).
    pub fn encode(&self, x: &[f32], n_tokens: usize) -> Result<Encoded> {
        let (d_in, d_sae) = (self.cfg.d_in, self.cfg.d_sae);
        if x.len() != n_tokens * d_in {
            return Err(SaeError::InvalidInput(format!(
                "{} values are not {n_tokens} rows of width {d_in}",
                x.len()
            )));
        }
        let mut input = x.to_vec();
        let scales = self.normalize(&mut input);
        if self.cfg.apply_b_dec_to_input && !self.cfg.transcoder {
            for row in input.chunks_exact_mut(d_in) {
                row.iter_mut().zip(&self.b_dec).for_each(|(v, b)| *v -= b);
            }
        }
        let mut features = match &self.gated {
            Some(g) => {
                let gate = self.encoder.matmul_t(&input, n_tokens, Some(&g.b_gate));
                let mut magnitude = g.magnitude.matmul_t(&input, n_tokens, Some(&g.b_mag));
                for (m, gate) in magnitude.iter_mut().zip(&gate) {
                    *m = if *gate > 0.0 { m.max(0.0) } else { 0.0 };
                }
                magnitude
            }
            None => self.encoder.matmul_t(&input, n_tokens, Some(&self.b_enc)),
        };
        match self.cfg.activation {
            Activation::Relu | Activation::Gated => {
                if self.gated.is_none() {
                    features.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
            Activation::JumpRelu => {
                let threshold = self.threshold.as_deref().unwrap_or(&[]);
                for row in features.chunks_exact_mut(d_sae) {
                    for (v, t) in row.iter_mut().zip(threshold) {
                        if !(*v > *t && *v > 0.0) {
                            *v = 0.0;
                        }
                    }
                }
            }
            Activation::TopK { k } => {
                use rayon::prelude::*;
                let norms = self.decoder_norms.as_deref();
                features.par_chunks_mut(d_sae).for_each(|row| {
                    if let Some(norms) = norms {
                        row.iter_mut().zip(norms).for_each(|(v, n)| *v *= n);
                    }
                    let kept = crate::analysis::top_k_by_value(row, k);
                    row.fill(0.0);
                    for (j, v) in kept {
                        row[j] = v.max(0.0);
                    }
                });
            }
        }
        Ok(Encoded {
            features,
            n_tokens,
            d_sae,
            scales,
        })
    }

    /// `f W_dec + b_dec` of latents `features` (`[n, d_sae]`), walking only the nonzero ones;
    /// no output normalisation and no skip term. With decoder-norm rescaling, latents are
    /// divided by their decoder norms first (as SAELens decodes).
    pub fn decode_features(&self, features: &[f32], n_tokens: usize) -> Vec<f32> {
        let (d_sae, d_out) = (self.cfg.d_sae, self.cfg.d_out);
        let mut out = Vec::with_capacity(n_tokens * d_out);
        for row in features.chunks_exact(d_sae).take(n_tokens) {
            let mut y = self.b_dec[..d_out.min(self.b_dec.len())].to_vec();
            y.resize(d_out, 0.0);
            for (j, &f) in row.iter().enumerate() {
                if f == 0.0 {
                    continue;
                }
                let f = match &self.decoder_norms {
                    Some(n) if n[j] > 0.0 => f / n[j],
                    _ => f,
                };
                let w = &self.w_dec[j * d_out..(j + 1) * d_out];
                y.iter_mut().zip(w).for_each(|(y, w)| *y += f * w);
            }
            out.extend_from_slice(&y);
        }
        out
    }

    /// SAELens `decode`: [`Self::decode_features`], then the inverse of the input
    /// normalisation (SAEs only; transcoders' outputs are not renormalised).
    pub fn decode(&self, encoded: &Encoded) -> Vec<f32> {
        let d_out = self.cfg.d_out;
        let mut out = self.decode_features(&encoded.features, encoded.n_tokens);
        if self.cfg.transcoder {
            return out;
        }
        match &encoded.scales {
            RowScales::None => {}
            RowScales::Rescale(c) => {
                for (row, c) in out.chunks_exact_mut(d_out).zip(c) {
                    row.iter_mut().for_each(|v| *v /= c);
                }
            }
            RowScales::LayerNorm(stats) => {
                for (row, (mu, sigma)) in out.chunks_exact_mut(d_out).zip(stats) {
                    row.iter_mut().for_each(|v| *v = *v * sigma + mu);
                }
            }
        }
        out
    }

    /// The full reconstruction (SAELens `forward`): decode(encode(x)), plus `x W_skipᵀ` for
    /// skip transcoders.
    pub fn forward(&self, x: &[f32], n_tokens: usize) -> Result<(Encoded, Vec<f32>)> {
        let encoded = self.encode(x, n_tokens)?;
        let mut out = self.decode(&encoded);
        if let Some(skip) = &self.w_skip {
            let s = skip.matmul_t(x, n_tokens, None);
            out.iter_mut().zip(&s).for_each(|(o, s)| *o += s);
        }
        Ok((encoded, out))
    }

    /// Edits latent `latent` of every row of `x` (`[n, d_in]`) by `op` and writes the result
    /// back to `x` as `x + decode(f') − decode(f)`: only that latent's contribution changes and
    /// the SAE's reconstruction error stays in (Templeton et al.'s feature clamping).
    pub fn edit_latent(&self, x: &mut [f32], n: usize, latent: usize, op: ValueOp) -> Result<()> {
        if self.cfg.transcoder {
            return Err(SaeError::InvalidInput(
                "clamping a transcoder latent needs the MLP replaced by the transcoder; only SAE latents can be clamped".into(),
            ));
        }
        if latent >= self.cfg.d_sae {
            return Err(SaeError::InvalidInput(format!(
                "latent {latent} out of range (the SAE has {})",
                self.cfg.d_sae
            )));
        }
        let encoded = self.encode(x, n)?;
        let mut edited = encoded.clone();
        for row in edited.features.chunks_exact_mut(self.cfg.d_sae) {
            let v = &mut row[latent];
            *v = match op {
                ValueOp::Set(a) => a,
                ValueOp::Scale(a) => *v * a,
                ValueOp::Add(a) => *v + a,
            };
        }
        let (before, after) = (self.decode(&encoded), self.decode(&edited));
        for ((x, a), b) in x.iter_mut().zip(&after).zip(&before) {
            *x += a - b;
        }
        Ok(())
    }
}
