//! GPT-NeoX (Pythia): LayerNorm, parallel attention + MLP residual, rotary embedding on a
//! fraction of each head, fused QKV laid out per head as `[q; k; v]`, untied output head.
//! <https://arxiv.org/abs/2204.06745>

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
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Older configs: `rotary_pct`; newer: `partial_rotary_factor` (also in `rope_parameters`).
    pub rotary_pct: Option<f32>,
    pub partial_rotary_factor: Option<f32>,
    pub rotary_emb_base: Option<f32>,
    pub rope_theta: Option<f32>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_ctx() -> usize {
    2048
}
fn default_eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}

/// Splits the fused `query_key_value` projection, whose output rows are ordered
/// `[head][q|k|v][d_head]`, into separate Q, K and V projections.
fn split_qkv(w: &Weights, nh: usize, dh: usize, d: usize, bias: bool) -> Result<[Linear; 3]> {
    let name = "attention.query_key_value";
    let weight = w
        .get(&format!("{name}.weight"), (3 * d, d))?
        .reshape((nh, 3, dh, d))?;
    let bias = match bias {
        true => Some(
            w.get(&format!("{name}.bias"), 3 * d)?
                .reshape((nh, 3, dh))?,
        ),
        false => None,
    };
    let part = |i: usize| -> Result<Linear> {
        let wi = weight
            .narrow(1, i, 1)?
            .contiguous()?
            .reshape((nh * dh, d))?;
        let bi = match &bias {
            Some(b) => Some(b.narrow(1, i, 1)?.contiguous()?.reshape(nh * dh)?),
            None => None,
        };
        Linear::new(&wi, bi.as_ref())
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

pub fn load(w: &Weights, cfg: &Config, config_path: &Path) -> Result<Transformer> {
    let d = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    super::check_heads(config_path, nh, nh)?;
    let dh = d / nh;
    let rope = RopeParameters::resolve(
        cfg.rope_parameters.as_ref(),
        cfg.rope_theta.or(cfg.rotary_emb_base),
        cfg.rope_scaling.as_ref(),
    );
    let fraction = rope
        .partial_rotary_factor
        .or(cfg.partial_rotary_factor)
        .or(cfg.rotary_pct)
        .unwrap_or(0.25);
    let rotary_dim = (dh as f32 * fraction) as usize;
    let rotary = rope.rotary(rotary_dim, 10_000.0, config_path)?;
    let act = super::activation(&cfg.hidden_act, config_path)?;
    let base = w.pp("gpt_neox");
    let eps = cfg.layer_norm_eps;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let lw = base.pp(format!("layers.{l}"));
        let [q, k, v] = split_qkv(&lw, nh, dh, d, cfg.attention_bias)?;
        let qkv = Linear::stack(vec![q, k, v])?;
        blocks.push(Block {
            ln1: norm(&lw, "input_layernorm", NormKind::LayerNorm, d, eps, false)?,
            attn: Attention {
                qkv,
                o: linear(&lw, "attention.dense", d, d, cfg.attention_bias)?,
                q_norm: None,
                k_norm: None,
                n_heads: nh,
                n_kv_heads: nh,
                d_head: dh,
                rotary: Some(rotary.clone()),
                scale: (dh as f64).powf(-0.5),
                sliding_window: None,
                logit_softcap: None,
            },
            attn_post_norm: None,
            ln2: norm(
                &lw,
                "post_attention_layernorm",
                NormKind::LayerNorm,
                d,
                eps,
                false,
            )?,
            mlp: Mlp::new(
                None,
                linear(&lw, "mlp.dense_h_to_4h", cfg.intermediate_size, d, true)?,
                linear(&lw, "mlp.dense_4h_to_h", d, cfg.intermediate_size, true)?,
                act,
            )?,
            mlp_post_norm: None,
            parallel_residual: cfg.use_parallel_residual,
        });
    }
    let (embed, unembed) = embeddings(
        (&base, "embed_in.weight"),
        (w, "embed_out.weight"),
        (cfg.vocab_size, d),
        cfg.tie_word_embeddings,
    )?;
    let ln_final = norm(
        &base,
        "final_layer_norm",
        NormKind::LayerNorm,
        d,
        eps,
        false,
    )?;
    Transformer::from_parts(
        blocks,
        embed,
        unembed,
        ln_final,
        cfg.max_position_embeddings,
    )
}
