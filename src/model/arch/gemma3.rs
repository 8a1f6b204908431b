//! Gemma 3 (text): RMSNorm with `(1 + w)` weights, sandwich norms around attention and MLP,
//! per-head QK RMS norms, GeGLU (tanh) MLP, embeddings scaled by `sqrt(d_model)`, and
//! interleaved sliding-window (local, rope base 10 000) and global layers.
//! <https://arxiv.org/abs/2503.19786>

use std::path::Path;

use serde::Deserialize;

use super::RopeParameters;
use crate::model::error::{ModelError, Result};
use crate::model::transformer::{
    Attention, Block, Linear, Mlp, NormKind, Transformer, embeddings, linear, norm,
};
use crate::model::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub rope_theta: Option<f32>,
    pub rope_local_base_freq: Option<f32>,
    pub rope_scaling: Option<RopeParameters>,
    /// transformers ≥ 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    pub rope_parameters: Option<serde_json::Value>,
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default = "default_window")]
    pub sliding_window: usize,
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: usize,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "tied")]
    pub tie_word_embeddings: bool,
}

fn default_head_dim() -> usize {
    256
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_ctx() -> usize {
    131_072
}
fn tied() -> bool {
    true
}
fn default_eps() -> f32 {
    1e-6
}
fn default_window() -> usize {
    4096
}
fn default_pattern() -> usize {
    6
}

impl Config {
    fn is_sliding(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
            None => !(layer + 1).is_multiple_of(self.sliding_window_pattern.max(1)),
        }
    }

    fn rope(
        &self,
        layer_type: &str,
        legacy_theta: Option<f32>,
        legacy_scaling: Option<&RopeParameters>,
        path: &Path,
    ) -> Result<RopeParameters> {
        let nested = match &self.rope_parameters {
            Some(v) => {
                let entry = v.get(layer_type).unwrap_or(v);
                Some(RopeParameters::deserialize(entry).map_err(|e| ModelError::config(path, e))?)
            }
            None => None,
        };
        Ok(RopeParameters::resolve(
            nested.as_ref(),
            legacy_theta,
            legacy_scaling,
        ))
    }
}

pub fn load(w: &Weights, cfg: &Config, config_path: &Path) -> Result<Transformer> {
    let d = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let nkv = cfg.num_key_value_heads.unwrap_or(nh);
    super::check_heads(config_path, nh, nkv)?;
    let dh = cfg.head_dim;
    let eps = cfg.rms_norm_eps;
    let act = super::activation(&cfg.hidden_activation, config_path)?;
    // Global layers use rope_theta (+ rope_scaling); local layers the local base, unscaled.
    let global = cfg
        .rope(
            "full_attention",
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            config_path,
        )?
        .rotary(dh, 1_000_000.0, config_path)?;
    let local = cfg
        .rope(
            "sliding_attention",
            cfg.rope_local_base_freq,
            None,
            config_path,
        )?
        .rotary(dh, 10_000.0, config_path)?;
    let scale = cfg.query_pre_attn_scalar.unwrap_or(dh as f64).powf(-0.5);
    let model = w.pp("model");
    let rms =
        |lw: &Weights, name: &str, dim: usize| norm(lw, name, NormKind::RmsNorm, dim, eps, true);
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let lw = model.pp(format!("layers.{l}"));
        let sliding = cfg.is_sliding(l);
        let bias = cfg.attention_bias;
        blocks.push(Block {
            ln1: rms(&lw, "input_layernorm", d)?,
            attn: Attention {
                qkv: Linear::stack(vec![
                    linear(&lw, "self_attn.q_proj", nh * dh, d, bias)?,
                    linear(&lw, "self_attn.k_proj", nkv * dh, d, bias)?,
                    linear(&lw, "self_attn.v_proj", nkv * dh, d, bias)?,
                ])?,
                o: linear(&lw, "self_attn.o_proj", d, nh * dh, bias)?,
                q_norm: Some(rms(&lw, "self_attn.q_norm", dh)?),
                k_norm: Some(rms(&lw, "self_attn.k_norm", dh)?),
                n_heads: nh,
                n_kv_heads: nkv,
                d_head: dh,
                rotary: Some(if sliding {
                    local.clone()
                } else {
                    global.clone()
                }),
                scale,
                sliding_window: sliding.then_some(cfg.sliding_window),
                logit_softcap: cfg.attn_logit_softcapping,
            },
            attn_post_norm: Some(rms(&lw, "post_attention_layernorm", d)?),
            ln2: rms(&lw, "pre_feedforward_layernorm", d)?,
            mlp: Mlp::new(
                Some(linear(
                    &lw,
                    "mlp.gate_proj",
                    cfg.intermediate_size,
                    d,
                    false,
                )?),
                linear(&lw, "mlp.up_proj", cfg.intermediate_size, d, false)?,
                linear(&lw, "mlp.down_proj", d, cfg.intermediate_size, false)?,
                act,
            )?,
            mlp_post_norm: Some(rms(&lw, "post_feedforward_layernorm", d)?),
            parallel_residual: false,
        });
    }
    let (embed, unembed) = embeddings(
        (&model, "embed_tokens.weight"),
        (w, "lm_head.weight"),
        (cfg.vocab_size, d),
        cfg.tie_word_embeddings,
    )?;
    Ok(Transformer {
        // As HF, the scale is rounded to the weights' dtype (f32) before multiplying.
        embed_scale: Some((d as f32).sqrt()),
        final_logit_softcap: cfg.final_logit_softcapping,
        ..Transformer::from_parts(
            blocks,
            embed,
            unembed,
            rms(&model, "norm", d)?,
            cfg.max_position_embeddings,
        )?
    })
}
