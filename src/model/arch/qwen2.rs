//! Qwen2 / Qwen2.5: Llama's shape with biases on the Q/K/V projections and optional
//! sliding-window attention on the upper layers. <https://arxiv.org/abs/2407.10671>

use std::path::Path;

use serde::Deserialize;

use super::llama::{self, Variant};
use crate::model::error::Result;
use crate::model::transformer::Transformer;
use crate::model::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    pub max_window_layers: Option<usize>,
}

pub fn load(w: &Weights, cfg: &Config, config_path: &Path) -> Result<Transformer> {
    // HF: layer l slides iff use_sliding_window and l >= max_window_layers.
    let sliding_window = match (cfg.use_sliding_window, cfg.sliding_window) {
        (true, Some(window)) => Some((window, cfg.max_window_layers.unwrap_or(0))),
        _ => None,
    };
    let variant = Variant {
        qkv_bias: true,
        sliding_window,
    };
    llama::load_variant(w, &cfg.base, config_path, &variant)
}
