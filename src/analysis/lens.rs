//! Logit lens (the final norm and unembedding applied to every layer's residual stream) and
//! direct logit attribution (each head's and each MLP neuron's share of one token's logit).
//!
//! DLA follows TransformerLens' `apply_ln_to_stack`: components are divided by the final norm's
//! scale at that position (LayerNorm components are also centred), so the attributions plus the
//! norm's and unembedding's biases sum to the logit exactly. Gemma's post-attention and
//! post-MLP norms are linear given the norm of the whole layer output, so each head and neuron
//! is scaled by that layer's factor too. Values are in logit units before any final softcap.

use candle_core::Tensor;
use serde::Serialize;

use crate::model::transformer::{Norm, NormKind, Transformer};
use crate::model::{Captures, ModelError};

type Result<T> = std::result::Result<T, ModelError>;

/// One predicted token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub logit: f32,
    pub prob: f64,
}

/// Top `k` predictions of one position's logits, highest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    next_token(logits, None, k).0
}

/// Top `k` predictions of one position's logits (highest first, ties by lower id) and the
/// loss `−log p(target)`, sharing one softmax normaliser: two passes over the vocabulary and no
/// allocation beyond the k kept (this runs for every position of every pass and lens layer).
pub fn next_token(logits: &[f32], target: Option<u32>, k: usize) -> (Vec<Prediction>, Option<f32>) {
    let (max, z) = crate::model::attention::softmax_normalizer(logits);
    let best = super::top_k_by_value(logits, k);
    let max = max as f64;
    let top = best
        .into_iter()
        .map(|(i, l)| Prediction {
            id: i as u32,
            logit: l,
            prob: (l as f64 - max).exp() / z,
        })
        .collect();
    let nll = target
        .and_then(|t| logits.get(t as usize))
        .map(|&l| (max + z.ln() - l as f64) as f32);
    (top, nll)
}

/// [`next_token`] for every row of `logits` (`[rows, vocab]`): row `p`'s target is
/// `tokens[p + 1]` (the last row has none). Rows are split across threads.
pub fn next_tokens(
    logits: &[f32],
    vocab: usize,
    tokens: &[u32],
    k: usize,
) -> (Vec<Vec<Prediction>>, Vec<f32>) {
    let rows: Vec<&[f32]> = logits.chunks(vocab.max(1)).collect();
    let out = super::par_map(rows.len(), |p| {
        next_token(rows[p], tokens.get(p + 1).copied(), k)
    });
    let nll = out.iter().filter_map(|(_, nll)| *nll).collect();
    (out.into_iter().map(|(top, _)| top).collect(), nll)
}

/// Hooks [`logit_lens`] reads.
pub const LENS_HOOKS: &[&str] = &["blocks.*.hook_resid_post"];

/// Hooks [`direct_logit_attribution`] reads.
pub const DLA_HOOKS: &[&str] = &[
    // hook_embed and, where the model has one, hook_pos_embed.
    "hook_*embed",
    "blocks.*.attn.hook_z",
    "blocks.*.mlp.hook_post",
    "blocks.*.hook_resid_post",
];

fn capture<'a>(captures: &'a Captures, name: &str) -> Result<&'a Tensor> {
    captures
        .get(name)
        .ok_or_else(|| ModelError::InvalidInput(format!("{name} was not captured")))
}

/// Logit lens of batch row `row`: `[layer][position]` → top `k` predictions of
/// `unembed(ln_final(resid_post))`. The last layer's entry equals the model's own prediction.
pub fn logit_lens(
    model: &Transformer,
    captures: &Captures,
    row: usize,
    k: usize,
) -> Result<Vec<Vec<Vec<Prediction>>>> {
    (0..model.n_layers())
        .map(|l| logit_lens_layer(model, captures, row, k, l))
        .collect()
}

/// Layer `layer`'s row of [`logit_lens`]: `[position]` → top `k` predictions.
pub fn logit_lens_layer(
    model: &Transformer,
    captures: &Captures,
    row: usize,
    k: usize,
    layer: usize,
) -> Result<Vec<Vec<Prediction>>> {
    let resid = capture(captures, &format!("blocks.{layer}.hook_resid_post"))?.get(row)?;
    let logits = model.unembed_residual(&resid)?;
    let vocab = logits.dim(1)?;
    let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    Ok(next_tokens(&logits, vocab, &[], k).0)
}

/// Each component's direct contribution to one logit.
#[derive(Clone, Debug, Serialize)]
pub struct Attribution {
    pub position: usize,
    pub target: u32,
    /// The model's logit for `target` at `position` (before any final softcap).
    pub logit: f64,
    pub embed: f64,
    pub pos_embed: f64,
    /// `[layer][head]`.
    pub heads: Vec<Vec<f64>>,
    /// The attention output bias per layer.
    pub attn_bias: Vec<f64>,
    /// `[layer][neuron]`.
    pub neurons: Vec<Vec<f64>>,
    /// The MLP output bias per layer.
    pub mlp_bias: Vec<f64>,
    /// The final norm's bias and the unembedding's bias.
    pub final_bias: f64,
}

impl Attribution {
    /// Sum of every component: equals `logit` up to float error.
    pub fn total(&self) -> f64 {
        let sum2 = |v: &[Vec<f64>]| v.iter().flatten().sum::<f64>();
        self.embed
            + self.pos_embed
            + sum2(&self.heads)
            + self.attn_bias.iter().sum::<f64>()
            + sum2(&self.neurons)
            + self.mlp_bias.iter().sum::<f64>()
            + self.final_bias
    }
}

fn dot(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum()
}

/// The denominator a norm divides `x` by.
fn norm_scale(norm: &Norm, x: &[f32]) -> f64 {
    let n = x.len().max(1) as f64;
    let eps = norm.eps as f64;
    match norm.kind {
        NormKind::RmsNorm => (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n + eps).sqrt(),
        NormKind::LayerNorm => {
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            (var + eps).sqrt()
        }
    }
}

/// `Wᵀ u` for a linear layer's `[out, in]` weight: what each input channel writes along `u`.
fn read_back(weight: &crate::model::packed::PackedMatrix, u: &[f64]) -> Vec<f64> {
    let mut out = vec![0f64; weight.cols()];
    for (r, &ur) in u.iter().enumerate() {
        for (o, w) in out.iter_mut().zip(weight.row(r)) {
            *o += w as f64 * ur;
        }
    }
    out
}

fn vector_at(t: &Tensor, row: usize, position: usize) -> Result<Vec<f32>> {
    let t = t.get(row)?.get(position)?;
    Ok(t.flatten_all()?.to_vec1()?)
}

/// Direct logit attribution of `target` at `position` of batch row `row`, from a pass that
/// captured [`DLA_HOOKS`].
pub fn direct_logit_attribution(
    model: &Transformer,
    captures: &Captures,
    row: usize,
    position: usize,
    target: u32,
) -> Result<Attribution> {
    let n = model.n_layers();
    if target as usize >= model.dims.d_vocab {
        return Err(ModelError::InvalidInput(format!(
            "target token {target} is outside the vocabulary ({})",
            model.dims.d_vocab
        )));
    }
    let final_resid = vector_at(
        capture(captures, &format!("blocks.{}.hook_resid_post", n - 1))?,
        row,
        position,
    )?;
    let ln = &model.ln_final;
    let sigma = norm_scale(ln, &final_resid);
    let w_ln: Vec<f32> = ln.weight.to_vec1()?;
    let w_u = model.unembed.weight.row(target as usize);
    // Direction in the residual stream that the target's logit reads, divided by σ.
    let mut u: Vec<f64> = w_u
        .iter()
        .zip(&w_ln)
        .map(|(&a, &b)| a as f64 * b as f64)
        .collect();
    if ln.kind == NormKind::LayerNorm {
        let m = u.iter().sum::<f64>() / u.len() as f64;
        u.iter_mut().for_each(|x| *x -= m);
    }
    u.iter_mut().for_each(|x| *x /= sigma);
    let mut final_bias = model
        .unembed
        .bias
        .as_ref()
        .map_or(0.0, |b| b[target as usize] as f64);
    if let Some(b) = &ln.bias {
        let b: Vec<f32> = b.to_vec1()?;
        final_bias += b
            .iter()
            .zip(&w_u)
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum::<f64>();
    }

    let at =
        |name: &str| -> Result<Vec<f32>> { vector_at(capture(captures, name)?, row, position) };
    let embed = dot(&at("hook_embed")?, &u);
    let pos_embed = match model.pos_embed {
        Some(_) => dot(&at("hook_pos_embed")?, &u),
        None => 0.0,
    };
    // A post-norm scales a whole layer output `y` by `w / scale(y)`: fold that into `u`.
    let through_post_norm = |post: &Option<Norm>, y_pre: &Tensor| -> Result<Vec<f64>> {
        Ok(match post {
            None => u.clone(),
            Some(norm) => {
                let y: Vec<f32> = y_pre.flatten_all()?.to_vec1()?;
                let s = norm_scale(norm, &y);
                let w: Vec<f32> = norm.weight.to_vec1()?;
                u.iter()
                    .zip(&w)
                    .map(|(&x, &wi)| x * wi as f64 / s)
                    .collect()
            }
        })
    };
    let (mut heads, mut attn_bias, mut neurons, mut mlp_bias) = (vec![], vec![], vec![], vec![]);
    for (l, block) in model.blocks.iter().enumerate() {
        let attn = &block.attn;
        let z = at(&format!("blocks.{l}.attn.hook_z"))?;
        let z_t = Tensor::from_vec(z.clone(), (1, z.len()), &candle_core::Device::Cpu)?;
        let u_attn = through_post_norm(&block.attn_post_norm, &attn.o.forward(&z_t)?)?;
        let v = read_back(&attn.o.weight, &u_attn);
        heads.push(
            z.chunks_exact(attn.d_head)
                .zip(v.chunks_exact(attn.d_head))
                .map(|(zh, vh)| dot(zh, vh))
                .collect(),
        );
        attn_bias.push(attn.o.bias.as_ref().map_or(0.0, |b| dot(b, &u_attn)));

        let mlp = &block.mlp;
        let a = at(&format!("blocks.{l}.mlp.hook_post"))?;
        let a_t = Tensor::from_vec(a.clone(), (1, a.len()), &candle_core::Device::Cpu)?;
        let u_mlp = through_post_norm(&block.mlp_post_norm, &mlp.down.forward(&a_t)?)?;
        let w = read_back(&mlp.down.weight, &u_mlp);
        neurons.push(a.iter().zip(&w).map(|(&ai, &wi)| ai as f64 * wi).collect());
        mlp_bias.push(mlp.down.bias.as_ref().map_or(0.0, |b| dot(b, &u_mlp)));
    }
    let final_t = Tensor::from_vec(
        final_resid.clone(),
        (1, final_resid.len()),
        &candle_core::Device::Cpu,
    )?;
    let logits = model.unembed_residual(&final_t)?;
    // Attribution is linear only before a softcap; report the raw logit to compare against.
    let logit = match model.final_logit_softcap {
        None => logits.get(0)?.get(target as usize)?.to_scalar::<f32>()? as f64,
        Some(cap) => {
            let capped = logits.get(0)?.get(target as usize)?.to_scalar::<f32>()? as f64;
            (capped / cap).clamp(-1.0 + 1e-12, 1.0 - 1e-12).atanh() * cap
        }
    };
    Ok(Attribution {
        position,
        target,
        logit,
        embed,
        pos_embed,
        heads,
        attn_bias,
        neurons,
        mlp_bias,
        final_bias,
    })
}

/// The `n` largest entries of a `[layer][unit]` table as `(layer, unit, value)`, by |value|.
pub fn largest(table: &[Vec<f64>], n: usize) -> Vec<(usize, usize, f64)> {
    let mut all: Vec<(usize, usize, f64)> = table
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(i, &v)| (l, i, v)))
        .collect();
    all.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_logit_with_probabilities() {
        let t = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(t.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1, 3, 2]);
        let z = 1.0 + 2.0 * 2f64.exp() + 1f64.exp();
        assert!((t[0].prob - 2f64.exp() / z).abs() < 1e-6);
        assert_eq!(
            top_k(&[1.0, 1.0, 1.0], 2)
                .iter()
                .map(|x| x.id)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn next_tokens_match_a_direct_log_softmax() {
        // Two positions over a vocabulary of 3: loss of tokens[1] = 2 and tokens[2] = 0.
        let logits = [1.0f32, 2.0, 3.0, 0.5, -1.0, 0.0];
        let (top, nll) = next_tokens(&logits, 3, &[9, 2, 0], 2);
        let lse = |r: &[f64]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((nll[0] as f64 - (lse(&[1.0, 2.0, 3.0]) - 3.0)).abs() < 1e-6);
        assert!((nll[1] as f64 - (lse(&[0.5, -1.0, 0.0]) - 0.5)).abs() < 1e-6);
        assert_eq!(top[0].iter().map(|p| p.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(top[1].iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 2]);
        // The last row of a prompt has no target.
        assert_eq!(next_tokens(&logits, 3, &[9, 2], 1).1.len(), 1);
    }

    #[test]
    fn norm_scales() {
        let norm = |kind| Norm {
            kind,
            weight: Tensor::ones(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            bias: None,
            eps: 0.0,
        };
        assert!((norm_scale(&norm(NormKind::RmsNorm), &[3.0, 4.0]) - 12.5f64.sqrt()).abs() < 1e-9);
        assert!((norm_scale(&norm(NormKind::LayerNorm), &[1.0, 3.0]) - 1.0).abs() < 1e-9);
    }
}
