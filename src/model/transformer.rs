//! The one decoder-only transformer every architecture loads into, and its hooked forward pass.
//!
//! Architecture files (`arch/*.rs`) translate a checkpoint's config and tensor names into these
//! parts; everything they share — norms, rotary attention with grouped KV heads, gated and plain
//! MLPs, sequential and parallel residuals, sandwich norms — lives here once, so a hook name
//! means the same thing in every model.

use std::sync::Arc;

use candle_core::{D, Device, Tensor};
use rayon::prelude::*;

use super::attention;
use super::error::{ModelError, Result};
use super::hooks::{Captures, HookSpec, HookState, hook_stage};
use super::packed::PackedMatrix;

// ── parts ──────────────────────────────────────────────────────────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match self.kind {
            NormKind::RmsNorm => candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?,
            NormKind::LayerNorm => {
                let bias = match &self.bias {
                    Some(b) => b.clone(),
                    None => self.weight.zeros_like()?,
                };
                candle_nn::ops::layer_norm(&x, &self.weight, &bias, self.eps)?
            }
        })
    }
}

/// `y = x Wᵀ + b`, with `W` (PyTorch's `[out, in]`) packed once for the matmul kernel.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Arc<PackedMatrix>,
    pub bias: Option<Arc<[f32]>>,
}

impl Linear {
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::from_packed(PackedMatrix::pack(weight)?, bias)
    }

    pub fn from_packed(weight: PackedMatrix, bias: Option<&Tensor>) -> Result<Self> {
        let bias = match bias {
            Some(b) => Some(b.to_vec1::<f32>()?.into()),
            None => None,
        };
        Ok(Linear {
            weight: Arc::new(weight),
            bias,
        })
    }

    /// The rows of layers that read the same input, one after another (`[W_q; W_k; W_v]`,
    /// `[W_gate; W_up]`): one matmul computes every part's outputs, so each layer makes fewer,
    /// larger kernel calls. A part without a bias gets zeros in the stacked bias.
    pub fn stack(parts: Vec<Linear>) -> Result<Self> {
        let cols = parts.first().map_or(0, |p| p.weight.cols());
        if let Some(odd) = parts.iter().find(|p| p.weight.cols() != cols) {
            return Err(ModelError::InvalidInput(format!(
                "stacked layers must read the same input width: {cols} and {}",
                odd.weight.cols()
            )));
        }
        let matrices: Vec<&PackedMatrix> = parts.iter().map(|p| &*p.weight).collect();
        let weight = Arc::new(PackedMatrix::stack(&matrices));
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| {
            parts
                .iter()
                .flat_map(|p| match &p.bias {
                    Some(b) => b.to_vec(),
                    None => vec![0.0; p.out_dim()],
                })
                .collect()
        });
        Ok(Linear { weight, bias })
    }

    pub fn out_dim(&self) -> usize {
        self.weight.rows()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_dim = self.weight.cols();
        let dims = x.dims().to_vec();
        if dims.last() != Some(&in_dim) {
            return Err(ModelError::InvalidInput(format!(
                "linear layer expects inputs of width {in_dim}, got shape {dims:?}"
            )));
        }
        let rows = x.elem_count() / in_dim.max(1);
        let y = with_f32_slice(x, |data| {
            self.weight.matmul_t(data, rows, self.bias.as_deref())
        })?;
        let mut out_shape = dims;
        if let Some(last) = out_shape.last_mut() {
            *last = self.weight.rows();
        }
        Ok(Tensor::from_vec(y, out_shape, x.device())?)
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor without copying it.
pub(crate) fn with_f32_slice<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            Ok(f(&data[start..start + x.elem_count()]))
        }
        _ => Err(ModelError::InvalidInput(
            "tensors must live on the CPU".into(),
        )),
    }
}

/// The token embedding: its own table, or the output head's packed matrix when tied.
#[derive(Clone, Debug)]
pub enum Embedding {
    Table(Tensor),
    Tied(Arc<PackedMatrix>),
}

impl Embedding {
    pub fn vocab(&self) -> usize {
        match self {
            Embedding::Table(t) => t.dims()[0],
            Embedding::Tied(p) => p.rows(),
        }
    }

    fn lookup(&self, ids: &[u32], d_model: usize) -> Result<Tensor> {
        let device = Device::Cpu;
        match self {
            Embedding::Table(t) => {
                let ids = Tensor::new(ids, &device)?;
                Ok(t.index_select(&ids, 0)?)
            }
            Embedding::Tied(p) => {
                let data: Vec<f32> = ids.iter().flat_map(|&id| p.row(id as usize)).collect();
                Ok(Tensor::from_vec(data, (ids.len(), d_model), &device)?)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// Exact GELU (erf).
    Gelu,
    /// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    /// `act(gate) ⊙ linear`, SiLU's in one pass over both (no intermediate tensor).
    pub fn gated(self, gate: &Tensor, linear: &Tensor) -> Result<Tensor> {
        if self != Activation::Silu || gate.shape() != linear.shape() {
            return Ok((self.forward(gate)? * linear)?);
        }
        let y = with_f32_slice(gate, |g| {
            with_f32_slice(linear, |u| {
                g.par_iter()
                    .zip(u.par_iter())
                    .with_min_len(4096)
                    .map(|(&g, &u)| silu(g) * u)
                    .collect::<Vec<f32>>()
            })
        })??;
        Ok(Tensor::from_vec(y, gate.shape(), gate.device())?)
    }

    /// `act(gate) ⊙ linear` from `[.., 2·width]` inputs holding `gate` then `linear` in each
    /// row (a stacked `[W_gate; W_up]`'s output), without splitting them first.
    pub fn gated_halves(self, inputs: &Tensor, width: usize) -> Result<Tensor> {
        let mut shape = inputs.dims().to_vec();
        if shape.last() != Some(&(2 * width)) {
            return Err(ModelError::InvalidInput(format!(
                "gated inputs must be {} wide, got shape {shape:?}",
                2 * width
            )));
        }
        if let Some(last) = shape.last_mut() {
            *last = width;
        }
        if self != Activation::Silu {
            let half = |i: usize| inputs.narrow(D::Minus1, i * width, width);
            return Ok((self.forward(&half(0)?)? * half(1)?)?);
        }
        let y = with_f32_slice(inputs, |x| {
            let mut y = vec![0f32; x.len() / 2];
            y.par_chunks_mut(width.max(1))
                .zip(x.par_chunks(2 * width.max(1)))
                .with_min_len((4096 / width.max(1)).max(1))
                .for_each(|(out, row)| {
                    let (gate, linear) = row.split_at(width);
                    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(linear) {
                        *o = silu(g) * u;
                    }
                });
            y
        })?;
        Ok(Tensor::from_vec(y, shape, inputs.device())?)
    }

    /// The activation over plain values, as [`Activation::forward`] computes it (SiLU and
    /// ReLU directly, the GELUs through candle's kernels so every value stays the same).
    pub fn apply_in_place(self, values: &mut [f32]) -> Result<()> {
        match self {
            Activation::Silu => values
                .par_iter_mut()
                .with_min_len(16_384)
                .for_each(|v| *v = silu(*v)),
            Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Gelu | Activation::GeluTanh => {
                let x = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
                let y: Vec<f32> = self.forward(&x)?.to_vec1()?;
                values.copy_from_slice(&y);
            }
        }
        Ok(())
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Silu => x.silu()?,
        })
    }
}

/// candle's SiLU, `v / (1 + e^-v)`, to the bit.
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// Rotary position embedding in HF's half-split ("rotate_half") layout over the first
/// `rotary_dim` dimensions of each head.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotary {
    pub rotary_dim: usize,
    /// Inverse frequencies, `rotary_dim / 2` of them, after any rope scaling.
    pub inv_freq: Vec<f32>,
    /// Multiplier on cos/sin (HF's `attention_scaling`; 1 for every scaling we support).
    pub attention_scaling: f32,
}

impl Rotary {
    pub fn new(rotary_dim: usize, theta: f32) -> Self {
        // As HF: base ** (arange(0, dim, 2) / dim), in f32.
        let inv_freq = (0..rotary_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        Rotary {
            rotary_dim,
            inv_freq,
            attention_scaling: 1.0,
        }
    }

    /// cos/sin for positions `first..first + t`.
    fn tables(&self, first: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in first..first + t {
            for f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos() * self.attention_scaling);
                sin.push(angle.sin() * self.attention_scaling);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    }

    /// `x`: `[b, t, heads, d_head]`.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d_head = x.dim(D::Minus1)?;
        if self.rotary_dim == d_head {
            return Ok(candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin)?);
        }
        let rotated = x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?;
        let rotated = candle_nn::rotary_emb::rope_thd(&rotated, cos, sin)?;
        let pass = x.narrow(D::Minus1, self.rotary_dim, d_head - self.rotary_dim)?;
        Ok(Tensor::cat(&[&rotated, &pass], D::Minus1)?)
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    /// `[W_q; W_k; W_v]` stacked ([`Linear::stack`]): outputs `n_heads · d_head` queries,
    /// then `n_kv_heads · d_head` keys and as many values.
    pub qkv: Linear,
    pub o: Linear,
    /// Per-head RMS norms on queries and keys (Gemma 3, Qwen 3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub rotary: Option<Rotary>,
    /// Multiplier on `q·k` (usually `d_head^-0.5`).
    pub scale: f64,
    /// Keys further back than this are masked (sliding-window layers).
    pub sliding_window: Option<usize>,
    pub logit_softcap: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Mlp {
    /// `W_in`; for gated MLPs (`act(x W_gate) ⊙ (x W_in)`) `[W_gate; W_in]` stacked
    /// ([`Linear::stack`]), so both come from one matmul.
    pub w_in: Linear,
    pub gated: bool,
    pub down: Linear,
    pub act: Activation,
}

impl Mlp {
    /// `act(x W_gate) ⊙ (x W_up)` (`gate` present) or `act(x W_in)`, the layer's inputs stacked
    /// into one matrix.
    pub fn new(gate: Option<Linear>, up: Linear, down: Linear, act: Activation) -> Result<Self> {
        let gated = gate.is_some();
        let w_in = match gate {
            Some(gate) => Linear::stack(vec![gate, up])?,
            None => up,
        };
        Ok(Mlp {
            w_in,
            gated,
            down,
            act,
        })
    }

    /// Neurons per layer (`d_mlp`).
    pub fn width(&self) -> usize {
        self.down.weight.cols()
    }
}

#[derive(Clone, Debug)]
pub struct Block {
    pub ln1: Norm,
    pub attn: Attention,
    /// Gemma's norm on the attention output before it joins the residual.
    pub attn_post_norm: Option<Norm>,
    pub ln2: Norm,
    pub mlp: Mlp,
    pub mlp_post_norm: Option<Norm>,
    /// GPT-NeoX / GPT-J: `x + attn(ln1(x)) + mlp(ln2(x))`.
    pub parallel_residual: bool,
}

/// Sizes shared by all architectures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Dims {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    /// Longest prompt the model accepts (its position table or trained context).
    pub n_ctx: usize,
}

#[derive(Clone, Debug)]
pub struct Transformer {
    pub dims: Dims,
    pub embed: Embedding,
    pub pos_embed: Option<Tensor>,
    /// Gemma multiplies embeddings by `sqrt(d_model)`.
    pub embed_scale: Option<f32>,
    pub blocks: Vec<Block>,
    pub ln_final: Norm,
    /// `[vocab, d_model]` (+ bias); shares its matrix with `embed` when tied.
    pub unembed: Linear,
    pub final_logit_softcap: Option<f64>,
}

// ── forward ────────────────────────────────────────────────────────────────────────────────

/// What a layer reports when it completes (the worker streams from this).
pub struct LayerDone<'a> {
    pub layer: usize,
    pub n_layers: usize,
    /// This pass's captures so far (every captured hook of layers `≤ layer`).
    pub captures: &'a Captures,
}

/// Observes a pass layer by layer and may cancel it between layers.
pub trait LayerObserver {
    fn layer_done(&mut self, _done: &LayerDone<'_>) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// An observer that does nothing.
pub struct NoObserver;
impl LayerObserver for NoObserver {}

pub struct ForwardOutput {
    /// `[batch, positions, vocab]`.
    pub logits: Tensor,
    pub captures: Captures,
    /// The first stage that was recomputed (−1 = everything, `n_layers + 1` = nothing; see
    /// `hooks::hook_stage`).
    pub recomputed_from: isize,
    /// The first position recomputed in those stages (0 = every position).
    pub recomputed_from_position: usize,
}

impl ForwardOutput {
    /// Next-token negative log-likelihood (nats) at positions `0..t−1` of batch row `row`.
    ///
    /// Computed as the worker computes it for the app (`ln Σ e^x − x_target`, the sum in f64),
    /// on the logits in place: a log-softmax tensor of them was 48 MiB at 256 tokens.
    pub fn per_token_nll(&self, tokens: &[u32], row: usize) -> Result<Vec<f32>> {
        let logits = self.logits.get(row)?;
        let (positions, vocab) = logits.dims2()?;
        let t = tokens.len();
        if t < 2 {
            return Ok(Vec::new());
        }
        if t > positions {
            return Err(ModelError::InvalidInput(format!(
                "{t} tokens for logits at {positions} positions"
            )));
        }
        let logits = logits.narrow(0, 0, t - 1)?;
        with_f32_slice(&logits, |values| {
            values
                .par_chunks(vocab.max(1))
                .zip(tokens[1..].par_iter())
                .map(|(row, &target)| {
                    let (max, z) = attention::softmax_normalizer(row);
                    let logit = row.get(target as usize).ok_or_else(|| {
                        ModelError::InvalidInput(format!(
                            "token {target} is outside the vocabulary of {vocab}"
                        ))
                    })?;
                    Ok((max as f64 + z.ln() - *logit as f64) as f32)
                })
                .collect()
        })?
    }

    /// Logits at the last position of batch row `row`.
    pub fn logits_last(&self, row: usize) -> Result<Vec<f32>> {
        let logits = self.logits.get(row)?;
        let t = logits.dim(0)?;
        Ok(logits.get(t - 1)?.to_vec1()?)
    }
}

/// How a pass hands out its logits.
pub enum Unembed<'a> {
    /// Every position's logits in one `[batch, positions, vocab]` tensor (HF's output).
    All,
    /// One sequence's recomputed rows, [`UNEMBED_BLOCK_ROWS`] at a time, as `(position of the
    /// block's first row, [rows, vocab] logits)`; none is kept. The app needs each row's top
    /// tokens and loss, not a `positions × vocab` tensor (48 MiB at 256 tokens on SmolLM2,
    /// which a rerun of the last positions would also copy to merge its new rows in).
    Blocks(&'a mut dyn FnMut(usize, &[f32]) -> Result<()>),
    /// No logits: the last position's final-norm output (`ln_final.hook_normalized`), for a
    /// caller that needs only a few of its logits ([`Transformer::logits_of`]; patching reads
    /// two). Left `None` when the pass recomputed nothing.
    LastNormalized(&'a mut Option<Vec<f32>>),
}

/// Rows unembedded at once by [`Unembed::Blocks`]: four of the kernel's 12-row tiles, 9 MiB
/// of logits for a 49 152-token vocabulary.
pub const UNEMBED_BLOCK_ROWS: usize = 48;

/// What [`Transformer::forward_cached_with`] returns.
pub struct PassOutput {
    /// `[batch, positions, vocab]` with [`Unembed::All`]; `None` with [`Unembed::Blocks`].
    pub logits: Option<Tensor>,
    pub captures: Captures,
    /// As [`ForwardOutput::recomputed_from`].
    pub recomputed_from: isize,
    /// As [`ForwardOutput::recomputed_from_position`]: with [`Unembed::Blocks`], the rows
    /// from here on are the ones handed out.
    pub recomputed_from_position: usize,
}

impl PassOutput {
    /// The output of a pass run with [`Unembed::All`].
    fn with_logits(self) -> Result<ForwardOutput> {
        Ok(ForwardOutput {
            logits: self.logits.ok_or_else(|| {
                ModelError::InvalidInput("a pass asked for every logit returned none".into())
            })?,
            captures: self.captures,
            recomputed_from: self.recomputed_from,
            recomputed_from_position: self.recomputed_from_position,
        })
    }
}

/// Residual-stream cache of the last pass, so a changed intervention set reruns only from the
/// earliest stage it affects.
///
/// A rerun of only the last positions writes their rows into the cached tensors in place, so
/// tensors taken from a pass over this cache ([`PassOutput::captures`],
/// [`ResidCache::captures`]) show the next such rerun's rows; copy what must outlive it. A
/// clone owns its tensors: reruns on one never change the other.
pub struct ResidCache {
    tokens: Vec<Vec<u32>>,
    spec: HookSpec,
    /// `inputs[l]` is block `l`'s input before its `hook_resid_pre` site; `inputs[n]` is the
    /// final residual before `ln_final`.
    inputs: Vec<Tensor>,
    captures: Captures,
    /// Every layer's keys and values (one sequence only), so a change at positions ≥ p reruns
    /// only those rows.
    kv: Option<KvCache>,
    /// `[batch, positions, vocab]`, when the pass returned them ([`Unembed::All`]).
    logits: Option<Tensor>,
}

impl ResidCache {
    /// What the cached pass captured.
    pub fn captures(&self) -> &Captures {
        &self.captures
    }
}

impl Clone for ResidCache {
    fn clone(&self) -> Self {
        // Deep copies (a candle clone shares storage), since reruns write rows in place.
        let owned = |t: &Tensor| t.force_contiguous().unwrap_or_else(|_| t.clone());
        Self {
            tokens: self.tokens.clone(),
            spec: self.spec.clone(),
            inputs: self.inputs.iter().map(owned).collect(),
            captures: self
                .captures
                .iter()
                .map(|(name, t)| (name.clone(), owned(t)))
                .collect(),
            kv: self.kv.clone(),
            logits: self.logits.as_ref().map(owned),
        }
    }
}

/// Rows a position rerun overwrote in a cached tensor, kept to put back if the rerun fails.
struct OverwrittenRows {
    tensor: Tensor,
    dim: usize,
    from: usize,
    rows: Tensor,
}

/// Writes `rows` into `cached` from index `from` of `dim` in place, keeping what they replace in
/// `overwritten`; `None` when `cached` cannot be written in place (a strided view, or `rows`
/// shares its storage), for the caller to join a copy instead.
fn overwrite_rows(
    cached: &Tensor,
    rows: &Tensor,
    dim: usize,
    from: usize,
    overwritten: &mut Vec<OverwrittenRows>,
) -> Result<Option<Tensor>> {
    let fits = cached.is_contiguous()
        && cached.rank() == rows.rank()
        && cached.dims().get(dim).and_then(|&d| d.checked_sub(from))
            == rows.dims().get(dim).copied()
        && (0..cached.rank()).all(|d| d == dim || cached.dim(d).ok() == rows.dim(d).ok());
    if !fits {
        return Ok(None);
    }
    let n = rows.dim(dim)?;
    // `force_contiguous` copies just these rows (`copy` would copy the whole storage).
    let before = cached.narrow(dim, from, n)?.force_contiguous()?;
    // candle checks everything, storage shared with `rows` included, before it writes.
    if cached.slice_set(&rows.contiguous()?, dim, from).is_err() {
        return Ok(None);
    }
    overwritten.push(OverwrittenRows {
        tensor: cached.clone(),
        dim,
        from,
        rows: before,
    });
    Ok(Some(cached.clone()))
}

/// Undoes [`overwrite_rows`], latest first (two cached tensors may share storage).
fn restore_overwritten(overwritten: Vec<OverwrittenRows>) -> Result<()> {
    for o in overwritten.into_iter().rev() {
        o.tensor.slice_set(&o.rows, o.dim, o.from)?;
    }
    Ok(())
}

/// The keys and values of the positions stepped passes have run (one sequence), so each new
/// token costs one position ([`Transformer::forward_step`]).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    tokens: Vec<u32>,
    /// Per layer: keys (after rotary and any key norm) and values, each `[positions, kv_heads,
    /// d_head]` row-major.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens at the positions held.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    fn layer(&mut self, l: usize) -> &mut (Vec<f32>, Vec<f32>) {
        if self.layers.len() <= l {
            self.layers.resize_with(l + 1, Default::default);
        }
        &mut self.layers[l]
    }

    /// Removes the tokens at `positions..` and those rows of layers `first_layer..`, returning
    /// them for [`KvCache::restore_rows`].
    fn split_off_rows(
        &mut self,
        first_layer: usize,
        positions: usize,
        row_width: usize,
    ) -> SplitRows {
        let tokens = self.tokens.split_off(positions.min(self.tokens.len()));
        let at = positions * row_width;
        let layers = self
            .layers
            .iter_mut()
            .skip(first_layer)
            .map(|(k, v)| {
                let split = |x: &mut Vec<f32>| x.split_off(at.min(x.len()));
                (split(k), split(v))
            })
            .collect();
        SplitRows {
            first_layer,
            positions,
            row_width,
            tokens,
            layers,
        }
    }

    /// Puts back what [`KvCache::split_off_rows`] removed, dropping any rows added since (a
    /// rerun of those rows that failed half-way).
    fn restore_rows(&mut self, split: SplitRows) {
        self.tokens.truncate(split.positions);
        self.tokens.extend(split.tokens);
        let at = split.positions * split.row_width;
        for ((k, v), (old_k, old_v)) in self
            .layers
            .iter_mut()
            .skip(split.first_layer)
            .zip(split.layers)
        {
            k.truncate(at);
            v.truncate(at);
            k.extend(old_k);
            v.extend(old_v);
        }
    }

    /// Keeps the first `positions` (undoes a step that failed half-way).
    fn truncate(&mut self, positions: usize, row_width: usize) {
        self.tokens.truncate(positions);
        for (k, v) in &mut self.layers {
            k.truncate(positions * row_width);
            v.truncate(positions * row_width);
        }
    }
}

/// Rows [`KvCache::split_off_rows`] set aside.
struct SplitRows {
    first_layer: usize,
    positions: usize,
    row_width: usize,
    tokens: Vec<u32>,
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

/// What a step returns.
#[derive(Debug)]
pub struct StepOutput {
    /// Logits at the step's last position.
    pub logits_last: Vec<f32>,
    /// The step's captures (its positions only).
    pub captures: Captures,
}

impl Transformer {
    /// A model from its parts, sizes read off them; optional parts (positions, embedding
    /// scale, logit soft-capping) start unset for the caller to fill in.
    pub fn from_parts(
        blocks: Vec<Block>,
        embed: Embedding,
        unembed: Linear,
        ln_final: Norm,
        n_ctx: usize,
    ) -> Result<Self> {
        let first = blocks
            .first()
            .ok_or_else(|| ModelError::InvalidInput("a model needs at least one layer".into()))?;
        let dims = Dims {
            n_layers: blocks.len(),
            d_model: ln_final.weight.dim(0)?,
            n_heads: first.attn.n_heads,
            n_kv_heads: first.attn.n_kv_heads,
            d_head: first.attn.d_head,
            d_mlp: first.mlp.width(),
            d_vocab: unembed.out_dim(),
            n_ctx,
        };
        Ok(Transformer {
            dims,
            embed,
            pos_embed: None,
            embed_scale: None,
            blocks,
            ln_final,
            unembed,
            final_logit_softcap: None,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Parameter count; a tied output head counts once.
    pub fn n_params(&self) -> usize {
        let n = |t: &Tensor| t.elem_count();
        let opt = |t: &Option<Tensor>| t.as_ref().map_or(0, n);
        let lin =
            |l: &Linear| l.weight.rows() * l.weight.cols() + l.bias.as_ref().map_or(0, |b| b.len());
        let nrm = |x: &Norm| n(&x.weight) + opt(&x.bias);
        let onrm = |x: &Option<Norm>| x.as_ref().map_or(0, nrm);
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                let a = &b.attn;
                nrm(&b.ln1)
                    + lin(&a.qkv)
                    + lin(&a.o)
                    + onrm(&a.q_norm)
                    + onrm(&a.k_norm)
                    + onrm(&b.attn_post_norm)
                    + nrm(&b.ln2)
                    + lin(&b.mlp.w_in)
                    + lin(&b.mlp.down)
                    + onrm(&b.mlp_post_norm)
            })
            .sum();
        let embed = match &self.embed {
            Embedding::Table(t) => n(t),
            Embedding::Tied(_) => 0,
        };
        embed + opt(&self.pos_embed) + blocks + nrm(&self.ln_final) + lin(&self.unembed)
    }

    /// Every hook name this model exposes, in forward order.
    pub fn hook_names(&self) -> Vec<String> {
        let mut names = vec!["hook_embed".to_string()];
        if self.pos_embed.is_some() {
            names.push("hook_pos_embed".into());
        }
        for (l, block) in self.blocks.iter().enumerate() {
            let mut site = |s: &str| names.push(format!("blocks.{l}.{s}"));
            site("hook_resid_pre");
            site("ln1.hook_normalized");
            site("attn.hook_q");
            site("attn.hook_k");
            site("attn.hook_v");
            site("attn.hook_attn_scores");
            site("attn.hook_pattern");
            site("attn.hook_z");
            site("hook_attn_out");
            if !block.parallel_residual {
                site("hook_resid_mid");
            }
            site("ln2.hook_normalized");
            site("mlp.hook_pre");
            if block.mlp.gated {
                site("mlp.hook_pre_linear");
            }
            site("mlp.hook_post");
            site("hook_mlp_out");
            site("hook_resid_post");
        }
        names.push("ln_final.hook_normalized".into());
        names
    }

    /// Width of one position's vector at hook `name` (`None` for hooks that are not one vector
    /// per position, like attention scores, or that this model does not have).
    pub fn hook_width(&self, name: &str) -> Option<usize> {
        if !self.hook_names().iter().any(|n| n == name) {
            return None;
        }
        let d = &self.dims;
        let site = name.rsplit_once("blocks.").map_or(name, |(_, rest)| {
            rest.split_once('.').map_or(rest, |(_, site)| site)
        });
        match site {
            "attn.hook_attn_scores" | "attn.hook_pattern" => None,
            "attn.hook_q" | "attn.hook_z" => Some(d.n_heads * d.d_head),
            "attn.hook_k" | "attn.hook_v" => Some(d.n_kv_heads * d.d_head),
            s if s.starts_with("mlp.") => Some(d.d_mlp),
            _ => Some(d.d_model),
        }
    }

    /// Checks a spec against this model: every intervention names a real hook, every capture
    /// pattern matches at least one.
    pub fn validate(&self, spec: &HookSpec) -> Result<()> {
        let names = self.hook_names();
        // The worker names a hundred hooks one by one: looked up, not each matched against
        // every name (that took 1.5 ms of every rerun).
        let known: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        for i in &spec.interventions {
            if !known.contains(i.hook.as_str()) {
                return Err(ModelError::UnknownHook(i.hook.clone()));
            }
        }
        for pattern in &spec.capture {
            if !super::hooks::matches_any(pattern, &known, &names) {
                return Err(ModelError::UnknownHook(pattern.clone()));
            }
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &[Vec<u32>]) -> Result<()> {
        let t = tokens.first().map(Vec::len).unwrap_or(0);
        if t == 0 {
            return Err(ModelError::InvalidInput(
                "empty prompt: no tokens to run".into(),
            ));
        }
        if tokens.iter().any(|row| row.len() != t) {
            return Err(ModelError::InvalidInput(
                "batch rows have different lengths".into(),
            ));
        }
        if t > self.dims.n_ctx {
            return Err(ModelError::InvalidInput(format!(
                "prompt has {t} tokens; this model accepts at most {}",
                self.dims.n_ctx
            )));
        }
        let vocab = self.embed.vocab();
        if let Some(bad) = tokens.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
    }

    /// A full pass.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        observer: &mut dyn LayerObserver,
    ) -> Result<ForwardOutput> {
        self.check_tokens(tokens)?;
        self.validate(spec)?;
        // Nothing is kept for a later pass: no layer inputs, keys or values are held.
        self.forward_full(
            tokens,
            spec,
            &mut None,
            observer,
            -1,
            false,
            &mut Unembed::All,
        )?
        .with_logits()
    }

    /// A pass that reuses `cache` from the previous pass where it can: with the same tokens,
    /// only stages at or after the earliest changed intervention (or newly captured hook) are
    /// recomputed. The cache is replaced only when the pass completes.
    pub fn forward_cached(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        cache: &mut Option<ResidCache>,
        observer: &mut dyn LayerObserver,
    ) -> Result<ForwardOutput> {
        self.forward_cached_with(tokens, spec, cache, observer, &mut Unembed::All)?
            .with_logits()
    }

    /// [`Transformer::forward_cached`], its logits handed out as `unembed` says. With
    /// [`Unembed::Blocks`] only the recomputed rows are unembedded (none when nothing
    /// changed), and the cache keeps no logits.
    pub fn forward_cached_with(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        cache: &mut Option<ResidCache>,
        observer: &mut dyn LayerObserver,
        unembed: &mut Unembed,
    ) -> Result<PassOutput> {
        self.check_tokens(tokens)?;
        self.validate(spec)?;
        let n = self.n_layers();
        // The earliest stage that differs from the cached pass (`Some(None)`: none does).
        let differing = cache
            .as_ref()
            .filter(|c| c.tokens == tokens)
            .map(|c| self.first_differing_stage(c, spec));
        let all = matches!(unembed, Unembed::All);
        // Nothing differs (a new sparsity method on the same pass, say): everything, the
        // logits included, is the cached pass's. A cache kept without logits reruns only its
        // final stage for a caller that wants them.
        if let (Some(None), Some(c)) = (differing, cache.as_ref())
            && (!all || c.logits.is_some())
        {
            return Ok(PassOutput {
                logits: c.logits.clone().filter(|_| all),
                captures: c.captures.clone(),
                recomputed_from: n as isize + 1,
                recomputed_from_position: tokens[0].len(),
            });
        }
        let start = match differing {
            Some(Some(stage)) => stage,
            Some(None) => n as isize,
            None => -1,
        };
        if let Some(p) = cache
            .as_ref()
            .filter(|c| c.tokens == tokens && (!all || c.logits.is_some()))
            .and_then(|c| self.first_changed_position(c, spec, start))
        {
            return self.forward_from_position(
                tokens,
                spec,
                cache,
                observer,
                start as usize,
                p,
                unembed,
            );
        }
        self.forward_full(tokens, spec, cache, observer, start, true, unembed)
    }

    /// Every position of stages `start..` (`start < 0`: the embeddings too), the earlier
    /// stages from `cache`. With `keep`, the pass replaces `cache` when it completes.
    #[allow(clippy::too_many_arguments)]
    fn forward_full(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        cache: &mut Option<ResidCache>,
        observer: &mut dyn LayerObserver,
        start: isize,
        keep: bool,
        unembed: &mut Unembed,
    ) -> Result<PassOutput> {
        let n = self.n_layers();
        let mut hooks = HookState::new(spec, tokens);
        let mut inputs: Vec<Tensor> = Vec::with_capacity(n + 1);
        let mut x = if start < 0 {
            self.embed_forward(tokens, 0, &mut hooks)?
        } else {
            // Stages before `start` are unchanged: reuse their inputs and captures.
            let c = cache.as_ref().ok_or(ModelError::Cancelled)?;
            inputs.extend(c.inputs[..start as usize].iter().cloned());
            for (name, t) in &c.captures {
                if hook_stage(name, n).is_some_and(|s| s < start) && hooks.wants(name) {
                    hooks.captures.insert(name.clone(), t.clone());
                }
            }
            c.inputs[start as usize].clone()
        };
        let first_layer = start.max(0) as usize;
        // One sequence records its keys and values (reusing the cached ones of the layers it
        // does not rerun), for a later rerun of only some positions.
        let t = tokens[0].len();
        let mut kv = if tokens.len() != 1 || !keep {
            None
        } else if start > 0 {
            cache
                .as_ref()
                .and_then(|c| c.kv.as_ref())
                .and_then(|old| old.layers.get(..first_layer))
                .map(|layers| KvCache {
                    tokens: Vec::new(),
                    layers: layers.to_vec(),
                })
        } else {
            Some(KvCache::new())
        };
        let mut tables = match kv.as_mut() {
            Some(kv) => PassTables::step(t, kv),
            None => PassTables::new(t),
        };
        for l in first_layer..n {
            if observer.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            if keep {
                inputs.push(x.clone());
            }
            x = self.block_forward(l, &x, &mut tables, &mut hooks)?;
            observer.layer_done(&LayerDone {
                layer: l,
                n_layers: n,
                captures: &hooks.captures,
            });
        }
        if keep {
            inputs.push(x.clone());
        }
        drop(tables);
        let logits = self.final_forward(&x, 0, &mut hooks, unembed)?;
        let captures = hooks.captures;
        if let Some(kv) = kv.as_mut() {
            kv.tokens = tokens[0].clone();
        }
        if keep {
            *cache = Some(ResidCache {
                tokens: tokens.to_vec(),
                spec: spec.clone(),
                inputs,
                captures: captures.clone(),
                kv,
                logits: logits.clone(),
            });
        }
        Ok(PassOutput {
            logits,
            captures,
            recomputed_from: start,
            recomputed_from_position: 0,
        })
    }

    /// The first position a rerun from stage `start` must recompute, when that is not the
    /// first: one sequence, nothing newly captured, and every changed intervention (before and
    /// after the change) confined to positions ≥ p, with none at or after `start` that mixes
    /// positions (mean ablation). `None`: rerun every position.
    fn first_changed_position(
        &self,
        cache: &ResidCache,
        spec: &HookSpec,
        start: isize,
    ) -> Option<usize> {
        use super::hooks::{AblationMode, InterventionKind};
        let n = self.n_layers();
        let t = cache.tokens.first()?.len();
        if cache.tokens.len() != 1 || cache.kv.is_none() || start < 0 {
            return None;
        }
        let capture = super::hooks::CaptureMatcher::new(&spec.capture);
        let newly_captured = self
            .hook_names()
            .into_iter()
            .any(|name| capture.matches(&name) && !cache.captures.contains_key(&name));
        if newly_captured {
            return None;
        }
        let mixes_positions = spec.interventions.iter().any(|i| {
            hook_stage(&i.hook, n).is_some_and(|s| s >= start)
                && matches!(
                    i.kind,
                    InterventionKind::HeadAblation {
                        mode: AblationMode::Mean,
                        ..
                    }
                )
        });
        if mixes_positions {
            return None;
        }
        let (old, new) = (&cache.spec.interventions, &spec.interventions);
        let mut first = t;
        for hook in old.iter().chain(new).map(|i| i.hook.as_str()) {
            let (before, after) = (interventions_on(old, hook), interventions_on(new, hook));
            if before == after {
                continue;
            }
            for i in before.iter().chain(&after) {
                let positions = i.positions.as_deref()?;
                // An empty or out-of-range list is the full pass's to report.
                if positions.is_empty() || positions.iter().any(|&p| p >= t) {
                    return None;
                }
                first = first.min(positions.iter().copied().min()?);
            }
        }
        (first > 0 && first < t).then_some(first)
    }

    /// Reruns stages `start..` at positions `p..` only: earlier rows of every layer's input,
    /// capture and logits are the cached pass's, and their keys and values are what the
    /// rerun rows attend to (as a generation step does).
    #[allow(clippy::too_many_arguments)]
    fn forward_from_position(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        cache: &mut Option<ResidCache>,
        observer: &mut dyn LayerObserver,
        start: usize,
        p: usize,
        unembed: &mut Unembed,
    ) -> Result<PassOutput> {
        let row_width = self.dims.n_kv_heads * self.dims.d_head;
        // The cached keys and values are taken, not copied (at 256 tokens a copy of every
        // layer's was 12 MB per rerun): the rows the rerun replaces are set aside and put back
        // if it fails, so the cache stays whole.
        let mut kv = cache
            .as_mut()
            .and_then(|c| c.kv.take())
            .ok_or(ModelError::Cancelled)?;
        let replaced = kv.split_off_rows(start, p, row_width);
        let old = cache.as_ref().ok_or(ModelError::Cancelled)?;
        let mut overwritten = Vec::new();
        let rerun = self.rerun_rows(
            tokens,
            spec,
            old,
            &mut kv,
            observer,
            start,
            p,
            unembed,
            &mut overwritten,
        );
        match rerun {
            Ok((inputs, captures, logits)) => {
                // Same tokens: only the rows after them were recomputed.
                kv.tokens.extend(replaced.tokens);
                *cache = Some(ResidCache {
                    tokens: tokens.to_vec(),
                    spec: spec.clone(),
                    inputs,
                    captures: captures.clone(),
                    kv: Some(kv),
                    logits: logits.clone(),
                });
                Ok(PassOutput {
                    logits,
                    captures,
                    recomputed_from: start as isize,
                    recomputed_from_position: p,
                })
            }
            Err(e) => {
                kv.restore_rows(replaced);
                // Rows already written in place go back; if even that fails, the cache is
                // dropped (the next pass is a full one) rather than kept half-changed.
                if restore_overwritten(overwritten).is_err() {
                    *cache = None;
                } else if let Some(c) = cache.as_mut() {
                    c.kv = Some(kv);
                }
                Err(e)
            }
        }
    }

    /// [`Transformer::forward_from_position`]'s pass over `kv` (holding rows `..p` of stages
    /// `start..`): the new cache's inputs, captures and logits (with [`Unembed::All`]). Rows
    /// `p..` of the cached inputs and captures are overwritten in place (copying every row of
    /// each per layer was a third of a last-position rerun at 256 tokens), what they held
    /// recorded in `overwritten`.
    #[allow(clippy::too_many_arguments)]
    fn rerun_rows(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        old: &ResidCache,
        kv: &mut KvCache,
        observer: &mut dyn LayerObserver,
        start: usize,
        p: usize,
        unembed: &mut Unembed,
        overwritten: &mut Vec<OverwrittenRows>,
    ) -> Result<(Vec<Tensor>, Captures, Option<Tensor>)> {
        let n = self.n_layers();
        let t = tokens[0].len();
        let mut hooks = HookState::step(spec, tokens, p);
        for (name, c) in &old.captures {
            if hook_stage(name, n).is_some_and(|s| s < start as isize) && hooks.wants(name) {
                hooks.captures.insert(name.clone(), c.clone());
            }
        }
        // Earlier rows from the cached tensor, these rows from the rerun: written into it in
        // place where it allows, else a joined copy.
        let joined = |old_tensor: &Tensor, rows: &Tensor, dim: usize| -> Result<Tensor> {
            Ok(Tensor::cat(&[&old_tensor.narrow(dim, 0, p)?, rows], dim)?)
        };
        let written = |old_tensor: &Tensor,
                       rows: &Tensor,
                       dim: usize,
                       overwritten: &mut Vec<OverwrittenRows>|
         -> Result<Tensor> {
            match overwrite_rows(old_tensor, rows, dim, p, overwritten)? {
                Some(t) => Ok(t),
                None => joined(old_tensor, rows, dim),
            }
        };
        let position_dim = |name: &str| {
            if name.ends_with("hook_pattern") || name.ends_with("hook_attn_scores") {
                2
            } else {
                1
            }
        };
        let merge_stage = |hooks: &mut HookState,
                           stage: isize,
                           overwritten: &mut Vec<OverwrittenRows>|
         -> Result<()> {
            let names: Vec<String> = hooks
                .captures
                .keys()
                .filter(|name| hook_stage(name, n) == Some(stage))
                .cloned()
                .collect();
            for name in names {
                let earlier = old.captures.get(&name).ok_or(ModelError::Cancelled)?;
                let rows = &hooks.captures[&name];
                let merged = written(earlier, rows, position_dim(&name), overwritten)?;
                hooks.captures.insert(name, merged);
            }
            Ok(())
        };
        let mut inputs: Vec<Tensor> = old.inputs[..start].to_vec();
        let mut x = old.inputs[start].narrow(1, p, t - p)?.contiguous()?;
        let mut tables = PassTables::step(t - p, kv);
        for l in start..n {
            if observer.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            // The first rerun stage's input is unchanged (its rows are the cached ones).
            inputs.push(if l == start {
                old.inputs[l].clone()
            } else {
                written(&old.inputs[l], &x, 1, overwritten)?
            });
            x = self.block_forward(l, &x, &mut tables, &mut hooks)?;
            merge_stage(&mut hooks, l as isize, overwritten)?;
            observer.layer_done(&LayerDone {
                layer: l,
                n_layers: n,
                captures: &hooks.captures,
            });
        }
        drop(tables);
        inputs.push(written(&old.inputs[n], &x, 1, overwritten)?);
        let rows_logits = self.final_forward(&x, p, &mut hooks, unembed)?;
        merge_stage(&mut hooks, n as isize, overwritten)?;
        let logits = match (rows_logits, &old.logits) {
            (Some(rows), Some(earlier)) => Some(joined(earlier, &rows, 1)?),
            // Callers that want every logit rerun rows only over a cache that has them.
            (Some(_), None) => return Err(ModelError::Cancelled),
            (None, _) => None,
        };
        Ok((inputs, hooks.captures, logits))
    }

    /// Runs `new` tokens after the positions `cache` holds (one sequence) and appends their
    /// keys and values: a generated token costs one position. Interventions name positions in
    /// the whole sequence; those outside `new` belong to other steps and are skipped, so the
    /// caller checks them once against the whole length. Logits are computed for the last
    /// position only. On an error the cache is left as it was.
    pub fn forward_step(
        &self,
        new: &[u32],
        cache: &mut KvCache,
        spec: &HookSpec,
    ) -> Result<StepOutput> {
        let new_rows = [new.to_vec()];
        self.check_tokens(&new_rows)?;
        let total = cache.len() + new.len();
        if total > self.dims.n_ctx {
            return Err(ModelError::InvalidInput(format!(
                "the sequence would have {total} tokens; this model accepts at most {}",
                self.dims.n_ctx
            )));
        }
        self.validate(spec)?;
        let first = cache.len();
        let row_width = self.dims.n_kv_heads * self.dims.d_head;
        let all = [cache
            .tokens
            .iter()
            .chain(new)
            .copied()
            .collect::<Vec<u32>>()];
        let result = (|| {
            let mut hooks = HookState::step(spec, &all, first);
            let mut x = self.embed_forward(&new_rows, first, &mut hooks)?;
            let mut tables = PassTables::step(new.len(), cache);
            for l in 0..self.n_layers() {
                x = self.block_forward(l, &x, &mut tables, &mut hooks)?;
            }
            let normed = hooks.site("ln_final.hook_normalized", self.ln_final.forward(&x)?)?;
            let last = normed.narrow(1, new.len() - 1, 1)?;
            let logits_last = self.unembed_normalized(&last)?.flatten_all()?.to_vec1()?;
            Ok(StepOutput {
                logits_last,
                captures: hooks.captures,
            })
        })();
        match result {
            Ok(out) => {
                cache.tokens.extend_from_slice(new);
                Ok(out)
            }
            Err(e) => {
                cache.truncate(first, row_width);
                Err(e)
            }
        }
    }

    /// A pass that stops as soon as every hook `spec` captures has been recorded: layers after
    /// the last captured one, and the unembedding, are not run (corpus scans, SAE inputs).
    pub fn forward_captures(
        &self,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
        observer: &mut dyn LayerObserver,
    ) -> Result<Captures> {
        self.check_tokens(tokens)?;
        self.validate(spec)?;
        let n = self.n_layers();
        let capture = super::hooks::CaptureMatcher::new(&spec.capture);
        let last = self
            .hook_names()
            .iter()
            .filter(|name| capture.matches(name))
            .filter_map(|name| hook_stage(name, n))
            .max()
            .unwrap_or(-1);
        let mut hooks = HookState::new(spec, tokens);
        let mut x = self.embed_forward(tokens, 0, &mut hooks)?;
        let mut tables = PassTables::new(tokens[0].len());
        for l in 0..n.min((last + 1).max(0) as usize) {
            if observer.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            x = self.block_forward(l, &x, &mut tables, &mut hooks)?;
            observer.layer_done(&LayerDone {
                layer: l,
                n_layers: n,
                captures: &hooks.captures,
            });
        }
        if last >= n as isize {
            hooks.site("ln_final.hook_normalized", self.ln_final.forward(&x)?)?;
        }
        Ok(hooks.captures)
    }

    /// The cached pass's captures when `spec` on `tokens` would recompute no layer (only the
    /// logits, which come from the last layer's output).
    pub fn unchanged_captures<'c>(
        &self,
        cache: &'c ResidCache,
        tokens: &[Vec<u32>],
        spec: &HookSpec,
    ) -> Option<&'c Captures> {
        (cache.tokens == tokens && self.first_differing_stage(cache, spec).is_none())
            .then_some(&cache.captures)
    }

    /// The earliest stage whose interventions or captures differ from the cached pass's.
    fn first_differing_stage(&self, cache: &ResidCache, spec: &HookSpec) -> Option<isize> {
        let n = self.n_layers();
        let mut start = n as isize + 1;
        // Interventions on one hook apply in list order, so compare each hook's ordered list.
        let (old, new) = (&cache.spec.interventions, &spec.interventions);
        for hook in old.iter().chain(new).map(|i| i.hook.as_str()) {
            if interventions_on(old, hook) != interventions_on(new, hook) {
                start = start.min(hook_stage(hook, n).unwrap_or(-1));
            }
        }
        // Hooks captured now but not then must be recomputed to be recorded.
        let capture = super::hooks::CaptureMatcher::new(&spec.capture);
        for name in self.hook_names() {
            if capture.matches(&name) && !cache.captures.contains_key(&name) {
                start = start.min(hook_stage(&name, n).unwrap_or(-1));
            }
        }
        (start <= n as isize).then_some(start)
    }

    /// Embeddings of `tokens`, which sit at positions `first..`.
    fn embed_forward(
        &self,
        tokens: &[Vec<u32>],
        first: usize,
        hooks: &mut HookState,
    ) -> Result<Tensor> {
        let (b, t) = (tokens.len(), tokens[0].len());
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let mut x =
            self.embed
                .lookup(&ids, self.dims.d_model)?
                .reshape((b, t, self.dims.d_model))?;
        if let Some(scale) = self.embed_scale {
            x = (x * scale as f64)?;
        }
        x = hooks.site("hook_embed", x)?;
        if let Some(pos) = &self.pos_embed {
            let p =
                pos.narrow(0, first, t)?
                    .unsqueeze(0)?
                    .broadcast_as((b, t, self.dims.d_model))?;
            let p = hooks.site("hook_pos_embed", p.contiguous()?)?;
            x = (x + p)?;
        }
        Ok(x)
    }

    /// The final norm (and its hook site) and the unembedding of `x`, whose rows sit at
    /// positions `first..`.
    fn final_forward(
        &self,
        x: &Tensor,
        first: usize,
        hooks: &mut HookState,
        unembed: &mut Unembed,
    ) -> Result<Option<Tensor>> {
        let normed = hooks.site("ln_final.hook_normalized", self.ln_final.forward(x)?)?;
        let on_rows = match unembed {
            Unembed::All => return Ok(Some(self.unembed_normalized(&normed)?)),
            Unembed::LastNormalized(out) => {
                let (_, t, _) = normed.dims3()?;
                **out = Some(normed.get(0)?.get(t - 1)?.to_vec1::<f32>()?);
                return Ok(None);
            }
            Unembed::Blocks(on_rows) => on_rows,
        };
        let (batch, t, _) = normed.dims3()?;
        if batch != 1 {
            return Err(ModelError::InvalidInput(format!(
                "logits in blocks are for one sequence, not {batch}"
            )));
        }
        for from in (0..t).step_by(UNEMBED_BLOCK_ROWS) {
            let rows = UNEMBED_BLOCK_ROWS.min(t - from);
            let logits = self.unembed_normalized(&normed.narrow(1, from, rows)?)?;
            with_f32_slice(&logits, |values| on_rows(first + from, values))??;
        }
        Ok(None)
    }

    /// The logits of tokens `ids` for one final-norm output row (as [`Unembed::LastNormalized`]
    /// hands out): their unembedding rows only, the softcap applied.
    pub fn logits_of(&self, normed: &[f32], ids: &[u32]) -> Result<Vec<f32>> {
        let w = &self.unembed.weight;
        if normed.len() != w.cols() {
            return Err(ModelError::InvalidInput(format!(
                "a final-norm row of width {} for an unembedding of width {}",
                normed.len(),
                w.cols()
            )));
        }
        ids.iter()
            .map(|&id| {
                let r = id as usize;
                if r >= w.rows() {
                    return Err(ModelError::InvalidInput(format!(
                        "token {id} is outside the vocabulary ({} tokens)",
                        w.rows()
                    )));
                }
                let dot: f64 = w
                    .row(r)
                    .iter()
                    .zip(normed)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                let mut logit = dot as f32 + self.unembed.bias.as_ref().map_or(0.0, |b| b[r]);
                if let Some(cap) = self.final_logit_softcap {
                    logit = (logit as f64 / cap).tanh() as f32 * cap as f32;
                }
                Ok(logit)
            })
            .collect()
    }

    /// Logits for residual-stream vectors `[…, d_model]`: final norm, unembedding, softcap
    /// (the logit lens applies this to every layer).
    pub fn unembed_residual(&self, x: &Tensor) -> Result<Tensor> {
        self.unembed_normalized(&self.ln_final.forward(x)?)
    }

    fn unembed_normalized(&self, normed: &Tensor) -> Result<Tensor> {
        let mut logits = self.unembed.forward(normed)?;
        if let Some(cap) = self.final_logit_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    fn block_forward(
        &self,
        l: usize,
        x: &Tensor,
        tables: &mut PassTables,
        hooks: &mut HookState,
    ) -> Result<Tensor> {
        let block = &self.blocks[l];
        let name = |s: &str| format!("blocks.{l}.{s}");
        let resid_pre = hooks.site(&name("hook_resid_pre"), x.clone())?;
        let normed = hooks.site(&name("ln1.hook_normalized"), block.ln1.forward(&resid_pre)?)?;
        let mut attn_out = block.attn.forward(l, &normed, tables, hooks)?;
        if let Some(norm) = &block.attn_post_norm {
            attn_out = norm.forward(&attn_out)?;
        }
        let attn_out = hooks.site(&name("hook_attn_out"), attn_out)?;
        let (mlp_in, resid_mid) = if block.parallel_residual {
            (resid_pre.clone(), None)
        } else {
            let mid = hooks.site(&name("hook_resid_mid"), (&resid_pre + &attn_out)?)?;
            (mid.clone(), Some(mid))
        };
        let normed = hooks.site(&name("ln2.hook_normalized"), block.ln2.forward(&mlp_in)?)?;
        let mut mlp_out = block.mlp.forward(l, &normed, hooks)?;
        if let Some(norm) = &block.mlp_post_norm {
            mlp_out = norm.forward(&mlp_out)?;
        }
        let mlp_out = hooks.site(&name("hook_mlp_out"), mlp_out)?;
        let resid_post = match resid_mid {
            Some(mid) => (mid + mlp_out)?,
            None => ((mlp_out + attn_out)? + resid_pre)?,
        };
        hooks.site(&name("hook_resid_post"), resid_post)
    }
}

/// The interventions on `hook`, in the order they apply.
fn interventions_on(
    list: &[super::hooks::Intervention],
    hook: &str,
) -> Vec<super::hooks::Intervention> {
    list.iter().filter(|i| i.hook == hook).cloned().collect()
}

impl Mlp {
    fn forward(&self, l: usize, x: &Tensor, hooks: &mut HookState) -> Result<Tensor> {
        let name = |s: &str| format!("blocks.{l}.mlp.{s}");
        let inputs = self.w_in.forward(x)?;
        let post = if self.gated {
            let (pre_name, linear_name) = (name("hook_pre"), name("hook_pre_linear"));
            let d_mlp = self.width();
            if hooks.wants(&pre_name) || hooks.wants(&linear_name) {
                let half = |i: usize| inputs.narrow(D::Minus1, i * d_mlp, d_mlp)?.contiguous();
                let pre = hooks.site(&pre_name, half(0)?)?;
                let linear = hooks.site(&linear_name, half(1)?)?;
                self.act.gated(&pre, &linear)?
            } else {
                self.act.gated_halves(&inputs, d_mlp)?
            }
        } else {
            let pre = hooks.site(&name("hook_pre"), inputs)?;
            self.act.forward(&pre)?
        };
        let post = hooks.site(&name("hook_post"), post)?;
        self.down.forward(&post)
    }
}

/// What every layer of one pass shares: its positions, rotary tables (built once per setting)
/// and, in a step over a KV cache, the cache.
struct PassTables<'c> {
    /// Positions this pass computes: `first..first + t`.
    first: usize,
    t: usize,
    rotary: Vec<(Rotary, Tensor, Tensor)>,
    kv: Option<&'c mut KvCache>,
}

impl<'c> PassTables<'c> {
    fn new(t: usize) -> Self {
        PassTables {
            first: 0,
            t,
            rotary: Vec::new(),
            kv: None,
        }
    }

    /// A step of `t` new positions after the ones `kv` holds.
    fn step(t: usize, kv: &'c mut KvCache) -> Self {
        PassTables {
            first: kv.len(),
            t,
            rotary: Vec::new(),
            kv: Some(kv),
        }
    }

    fn rotary(&mut self, rotary: &Rotary, device: &Device) -> Result<(Tensor, Tensor)> {
        let found = self.rotary.iter().find(|(r, _, _)| r == rotary);
        if let Some((_, cos, sin)) = found {
            return Ok((cos.clone(), sin.clone()));
        }
        let (cos, sin) = rotary.tables(self.first, self.t, device)?;
        self.rotary.push((rotary.clone(), cos.clone(), sin.clone()));
        Ok((cos, sin))
    }
}

impl Attention {
    fn forward(
        &self,
        l: usize,
        x: &Tensor,
        tables: &mut PassTables,
        hooks: &mut HookState,
    ) -> Result<Tensor> {
        let name = |s: &str| format!("blocks.{l}.attn.{s}");
        let t = tables.t;
        let b = x.dim(0)?;
        let (nh, nkv, dh) = (self.n_heads, self.n_kv_heads, self.d_head);
        let qkv = self.qkv.forward(x)?;
        let part = |start: usize, heads: usize| {
            qkv.narrow(D::Minus1, start * dh, heads * dh)?
                .reshape((b, t, heads, dh))
        };
        let mut q = part(0, nh)?;
        let mut k = part(nh, nkv)?;
        let v = part(nh + nkv, nkv)?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k)?;
        }
        let q = hooks.site(&name("hook_q"), q)?;
        let k = hooks.site(&name("hook_k"), k)?;
        let v = hooks.site(&name("hook_v"), v)?;
        let (q, k) = match &self.rotary {
            Some(rotary) => {
                let (cos, sin) = tables.rotary(rotary, x.device())?;
                (rotary.apply(&q, &cos, &sin)?, rotary.apply(&k, &cos, &sin)?)
            }
            None => (q, k),
        };
        let rule = attention::ScoreRule {
            scale: self.scale as f32,
            softcap: self.logit_softcap.map(|c| c as f32),
            window: self.sliding_window,
        };
        let shape = |keys: usize| attention::Shape {
            b,
            t,
            keys,
            heads: nh,
            kv_heads: nkv,
            d_head: dh,
        };
        // A step attends to the cached keys and values too: this step's are appended first,
        // and the cache is read where it lies (a tensor of it was a copy of every cached key
        // and value, per layer and step).
        let z = with_f32_slice(&q, |q| match tables.kv.as_deref_mut() {
            Some(cache) => {
                let layer = cache.layer(l);
                with_f32_slice(&k, |k| layer.0.extend_from_slice(k))?;
                with_f32_slice(&v, |v| layer.1.extend_from_slice(v))?;
                let keys = layer.0.len() / (nkv * dh).max(1);
                self.core(l, q, (&layer.0, &layer.1), shape(keys), rule, hooks)
            }
            None => with_f32_slice(&k, |k| {
                with_f32_slice(&v, |v| self.core(l, q, (k, v), shape(t), rule, hooks))
            })??,
        })??;
        let z = hooks.site(
            &name("hook_z"),
            Tensor::from_vec(z, (b, t, nh, dh), x.device())?,
        )?;
        self.o.forward(&z.reshape((b, t, nh * dh))?)
    }

    /// Layer `l`'s `z: [b, t, heads, d_head]` from its queries, keys and values: fused when no
    /// hook reads or edits the scores or the pattern, else through both, each a hook site.
    fn core(
        &self,
        l: usize,
        q: &[f32],
        (k, v): (&[f32], &[f32]),
        shape: attention::Shape,
        rule: attention::ScoreRule,
        hooks: &mut HookState,
    ) -> Result<Vec<f32>> {
        let name = |s: &str| format!("blocks.{l}.attn.{s}");
        let scores_name = name("hook_attn_scores");
        let pattern_name = name("hook_pattern");
        if !hooks.wants(&scores_name) && !hooks.wants(&pattern_name) {
            // No hook reads or edits the scores or the pattern: none is made.
            return Ok(attention::attend(q, k, v, shape, rule));
        }
        let (b, nh, t, keys) = (shape.b, shape.heads, shape.t, shape.keys);
        let mut scores = attention::scores(q, k, shape, rule);
        // Scores become a tensor only when someone reads or edits them.
        if hooks.wants(&scores_name) {
            let edited = hooks.site(
                &scores_name,
                Tensor::from_vec(scores, (b, nh, t, keys), &Device::Cpu)?,
            )?;
            scores = edited.flatten_all()?.to_vec1()?;
            // An edit may have unmasked a key (TransformerLens' softmax would then see it).
            attention::softmax_rows(&mut scores, keys);
        } else {
            attention::softmax_causal(&mut scores, shape);
        }
        // Blocks of queries skip the keys after their last one unless an edit of the
        // pattern may have given those weight.
        let causal = !hooks.edits(&pattern_name);
        let pattern = hooks.site(
            &pattern_name,
            Tensor::from_vec(scores, (b, nh, t, keys), &Device::Cpu)?,
        )?;
        with_f32_slice(&pattern, |p| {
            attention::weighted_values(p, v, shape, causal)
        })
    }
}

/// Loads `[out, in]` weights (and an optional bias) as a [`Linear`].
pub fn linear(
    w: &super::weights::Weights,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
) -> Result<Linear> {
    let weight = w.get_packed(&format!("{name}.weight"), (out_dim, in_dim))?;
    let bias = if bias {
        Some(w.get(&format!("{name}.bias"), out_dim)?)
    } else {
        w.get_opt(&format!("{name}.bias"), out_dim)?
    };
    Linear::from_packed(weight, bias.as_ref())
}

/// The token embedding `embed` and the output head `head` (each a prefix and a tensor name),
/// `[vocab, d_model]` both. The head shares the embedding's packed matrix when the config ties
/// them or the checkpoint has no head; a tied embedding is loaded straight into its packed form.
pub fn embeddings(
    (embed_weights, embed_name): (&super::weights::Weights, &str),
    (head_weights, head_name): (&super::weights::Weights, &str),
    (vocab, d_model): (usize, usize),
    tied: bool,
) -> Result<(Embedding, Linear)> {
    if !tied && head_weights.contains(head_name) {
        let table = embed_weights.get(embed_name, (vocab, d_model))?;
        let head = head_weights.get_packed(head_name, (vocab, d_model))?;
        return Ok((Embedding::Table(table), Linear::from_packed(head, None)?));
    }
    let unembed = Linear::from_packed(
        embed_weights.get_packed(embed_name, (vocab, d_model))?,
        None,
    )?;
    Ok((Embedding::Tied(unembed.weight.clone()), unembed))
}

/// Loads a norm's weight (and bias for LayerNorm). `unit_offset` stores Gemma's `1 + w`.
pub fn norm(
    w: &super::weights::Weights,
    name: &str,
    kind: NormKind,
    dim: usize,
    eps: f32,
    unit_offset: bool,
) -> Result<Norm> {
    let mut weight = w.get(&format!("{name}.weight"), dim)?;
    if unit_offset {
        weight = (weight + 1.0)?;
    }
    let bias = match kind {
        NormKind::LayerNorm => w.get_opt(&format!("{name}.bias"), dim)?,
        NormKind::RmsNorm => None,
    };
    Ok(Norm {
        kind,
        weight,
        bias,
        eps,
    })
}
