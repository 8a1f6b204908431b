//! GPT-2: learned positions, pre-LayerNorm blocks, fused QKV stored as `Conv1D` (`[in, out]`
//! weights, transposed here), tied output head.
//! <https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf>

use std::path::Path;

use serde::{Deserialize, Serialize};

use candle_core::Tensor;

use crate::model::error::{ModelError, Result};
use crate::model::transformer::{
    Attention, Block, Linear, Mlp, NormKind, Transformer, embeddings, norm,
};
use crate::model::weights::Weights;

/// HF's `GPT2Config` (the keys Dendrite reads; training writes the same).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "tied")]
    pub tie_word_embeddings: bool,
}

impl Config {
    /// A GPT-2 of these sizes with HF's defaults for the rest (what training builds).
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
        n_inner: usize,
        activation_function: &str,
    ) -> Self {
        Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: Some(n_inner),
            activation_function: activation_function.into(),
            layer_norm_epsilon: default_eps(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
        }
    }

    /// The MLP's hidden width (HF: `n_inner`, else 4 × `n_embd`).
    pub fn d_mlp(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// HF `config.json` for this model.
    pub fn hf_json(&self, bos_eos: u32) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("model_type".into(), "gpt2".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["GPT2LMHeadModel"]),
            );
            o.insert("bos_token_id".into(), bos_eos.into());
            o.insert("eos_token_id".into(), bos_eos.into());
        }
        v
    }
}

fn default_act() -> String {
    "gelu_new".into()
}
fn tied() -> bool {
    true
}
fn default_eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}

/// A `Conv1D` (`x W + b`, `W: [in, out]`) as `[out, in]` weight and bias tensors.
fn conv1d(w: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<(Tensor, Tensor)> {
    let weight = w
        .get(&format!("{name}.weight"), (in_dim, out_dim))?
        .t()?
        .contiguous()?;
    Ok((weight, w.get(&format!("{name}.bias"), out_dim)?))
}

fn conv1d_linear(w: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
    let (weight, bias) = conv1d(w, name, in_dim, out_dim)?;
    Linear::new(&weight, Some(&bias))
}

pub fn load(w: &Weights, cfg: &Config, config_path: &Path) -> Result<Transformer> {
    let d = cfg.n_embd;
    let nh = cfg.n_head;
    super::check_heads(config_path, nh, nh)?;
    if !d.is_multiple_of(nh) {
        return Err(ModelError::config(
            config_path,
            format!("n_embd {d} is not divisible by n_head {nh}"),
        ));
    }
    let dh = d / nh;
    let d_mlp = cfg.d_mlp();
    let act = super::activation(&cfg.activation_function, config_path)?;
    // GPT2LMHeadModel checkpoints prefix everything with `transformer.`; GPT2Model ones do not.
    let base = if w.contains("transformer.wte.weight") {
        w.pp("transformer")
    } else {
        w.clone()
    };
    let eps = cfg.layer_norm_epsilon;
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let lw = base.pp(format!("h.{l}"));
        let mut scale = if cfg.scale_attn_weights {
            (dh as f64).powf(-0.5)
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (l + 1) as f64;
        }
        blocks.push(Block {
            ln1: norm(&lw, "ln_1", NormKind::LayerNorm, d, eps, false)?,
            attn: Attention {
                // `c_attn` already stacks queries, keys and values.
                qkv: conv1d_linear(&lw, "attn.c_attn", d, 3 * d)?,
                o: conv1d_linear(&lw, "attn.c_proj", d, d)?,
                q_norm: None,
                k_norm: None,
                n_heads: nh,
                n_kv_heads: nh,
                d_head: dh,
                rotary: None,
                scale,
                sliding_window: None,
                logit_softcap: None,
            },
            attn_post_norm: None,
            ln2: norm(&lw, "ln_2", NormKind::LayerNorm, d, eps, false)?,
            mlp: Mlp::new(
                None,
                conv1d_linear(&lw, "mlp.c_fc", d, d_mlp)?,
                conv1d_linear(&lw, "mlp.c_proj", d_mlp, d)?,
                act,
            )?,
            mlp_post_norm: None,
            parallel_residual: false,
        });
    }
    let (embed, unembed) = embeddings(
        (&base, "wte.weight"),
        (w, "lm_head.weight"),
        (cfg.vocab_size, d),
        cfg.tie_word_embeddings,
    )?;
    Ok(Transformer {
        pos_embed: Some(base.get("wpe.weight", (cfg.n_positions, d))?),
        ..Transformer::from_parts(
            blocks,
            embed,
            unembed,
            norm(&base, "ln_f", NormKind::LayerNorm, d, eps, false)?,
            cfg.n_positions,
        )?
    })
}
