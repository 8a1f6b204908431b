//! Llama (SmolLM2, TinyLlama, Llama 2/3.x): RMSNorm, rotary attention with grouped KV heads,
//! SwiGLU MLP. <https://arxiv.org/abs/2302.13971>

use std::path::Path;

use serde::Deserialize;

use super::RopeParameters;
use crate::model::error::Result;
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
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub rope_theta: Option<f32>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f32 {
    1e-6
}
fn default_ctx() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// Options the Llama-shaped families differ in.
pub(crate) struct Variant {
    pub qkv_bias: bool,
    pub sliding_window: Option<(usize, usize)>,
}

pub fn load(w: &Weights, cfg: &Config, config_path: &Path) -> Result<Transformer> {
    let variant = Variant {
        qkv_bias: cfg.attention_bias,
        sliding_window: None,
    };
    load_variant(w, cfg, config_path, &variant)
}

/// Llama-shaped loading shared with Qwen2 (`qkv_bias`, optional sliding-window layers given as
/// `(window, first_sliding_layer)`).
pub(crate) fn load_variant(
    w: &Weights,
    cfg: &Config,
    config_path: &Path,
    variant: &Variant,
) -> Result<Transformer> {
    let d = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let nkv = cfg.num_key_value_heads.unwrap_or(nh);
    super::check_heads(config_path, nh, nkv)?;
    let dh = cfg.head_dim.unwrap_or(d / nh);
    let rope = RopeParameters::resolve(
        cfg.rope_parameters.as_ref(),
        cfg.rope_theta,
        cfg.rope_scaling.as_ref(),
    );
    let rotary = rope.rotary(dh, 10_000.0, config_path)?;
    let act = super::activation(&cfg.hidden_act, config_path)?;
    let model = w.pp("model");
    let eps = cfg.rms_norm_eps;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let lw = model.pp(format!("layers.{l}"));
        let sliding_window = variant
            .sliding_window
            .and_then(|(window, first)| (l >= first).then_some(window));
        blocks.push(Block {
            ln1: norm(&lw, "input_layernorm", NormKind::RmsNorm, d, eps, false)?,
            attn: Attention {
                qkv: Linear::stack(vec![
                    linear(&lw, "self_attn.q_proj", nh * dh, d, variant.qkv_bias)?,
                    linear(&lw, "self_attn.k_proj", nkv * dh, d, variant.qkv_bias)?,
                    linear(&lw, "self_attn.v_proj", nkv * dh, d, variant.qkv_bias)?,
                ])?,
                o: linear(&lw, "self_attn.o_proj", d, nh * dh, false)?,
                q_norm: None,
                k_norm: None,
                n_heads: nh,
                n_kv_heads: nkv,
                d_head: dh,
                rotary: Some(rotary.clone()),
                scale: (dh as f64).powf(-0.5),
                sliding_window,
                logit_softcap: None,
            },
            attn_post_norm: None,
            ln2: norm(
                &lw,
                "post_attention_layernorm",
                NormKind::RmsNorm,
                d,
                eps,
                false,
            )?,
            mlp: Mlp::new(
                Some(linear(
                    &lw,
                    "mlp.gate_proj",
                    cfg.intermediate_size,
                    d,
                    cfg.mlp_bias,
                )?),
                linear(&lw, "mlp.up_proj", cfg.intermediate_size, d, cfg.mlp_bias)?,
                linear(&lw, "mlp.down_proj", d, cfg.intermediate_size, cfg.mlp_bias)?,
                act,
            )?,
            mlp_post_norm: None,
            parallel_residual: false,
        });
    }
    let (embed, unembed) = embeddings(
        (&model, "embed_tokens.weight"),
        (w, "lm_head.weight"),
        (cfg.vocab_size, d),
        cfg.tie_word_embeddings,
    )?;
    let ln_final = norm(&model, "norm", NormKind::RmsNorm, d, eps, false)?;
    Transformer::from_parts(
        blocks,
        embed,
        unembed,
        ln_final,
        cfg.max_position_embeddings,
    )
}
