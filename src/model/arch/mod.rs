//! One file per architecture. Each parses its HF `config.json` (serde `Config`) and loads the
//! checkpoint's tensors into the shared [`Transformer`](super::transformer::Transformer).

pub mod gemma3;
pub mod gpt2;
pub mod gpt_neox;
pub mod llama;
pub mod qwen2;

use std::path::Path;

use serde::Deserialize;

use super::error::{ModelError, Result};
use super::transformer::{Rotary, Transformer};
use super::weights::Weights;

pub const SUPPORTED: &[&str] = &[
    "gpt2",
    "llama",
    "qwen2",
    "gpt_neox",
    "gemma3",
    "gemma3_text",
];

/// Builds the model named by `config["model_type"]`.
pub fn load(config: &serde_json::Value, config_path: &Path, w: &Weights) -> Result<Transformer> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ModelError::config(config_path, "no \"model_type\""))?;
    match model_type {
        "gpt2" => gpt2::load(w, &parse(config, config_path)?, config_path),
        "llama" => llama::load(w, &parse(config, config_path)?, config_path),
        "qwen2" => qwen2::load(w, &parse(config, config_path)?, config_path),
        "gpt_neox" => gpt_neox::load(w, &parse(config, config_path)?, config_path),
        // A multimodal Gemma 3 config nests the language model under `text_config`.
        "gemma3" if config.get("text_config").is_some() => {
            let text = parse(&config["text_config"], config_path)?;
            gemma3::load(&w.pp("language_model"), &text, config_path)
        }
        "gemma3" | "gemma3_text" => gemma3::load(w, &parse(config, config_path)?, config_path),
        other => Err(ModelError::UnknownArchitecture {
            path: config_path.to_path_buf(),
            model_type: other.to_string(),
        }),
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(config: &serde_json::Value, path: &Path) -> Result<T> {
    T::deserialize(config).map_err(|e| ModelError::config(path, e))
}

/// RoPE settings as HF writes them: transformers ≥ 5 nests them in `rope_parameters`, older
/// configs use top-level `rope_theta` and `rope_scaling`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f32>,
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    pub factor: Option<f32>,
    pub low_freq_factor: Option<f32>,
    pub high_freq_factor: Option<f32>,
    pub original_max_position_embeddings: Option<f32>,
    pub partial_rotary_factor: Option<f32>,
}

impl RopeParameters {
    /// Merges the legacy top-level keys with `rope_parameters`.
    pub fn resolve(
        rope_parameters: Option<&RopeParameters>,
        rope_theta: Option<f32>,
        rope_scaling: Option<&RopeParameters>,
    ) -> RopeParameters {
        let mut p = rope_parameters
            .cloned()
            .or_else(|| rope_scaling.cloned())
            .unwrap_or_default();
        if p.rope_theta.is_none() {
            p.rope_theta = rope_theta;
        }
        p
    }

    /// The rotary embedding these parameters describe, for heads of `rotary_dim` dimensions.
    pub fn rotary(&self, rotary_dim: usize, default_theta: f32, path: &Path) -> Result<Rotary> {
        let mut rotary = Rotary::new(rotary_dim, self.rope_theta.unwrap_or(default_theta));
        match self.rope_type.as_deref().unwrap_or("default") {
            "default" => {}
            "linear" => {
                let factor = self.factor.unwrap_or(1.0);
                rotary.inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let factor = self.factor.unwrap_or(8.0);
                let low = self.low_freq_factor.unwrap_or(1.0);
                let high = self.high_freq_factor.unwrap_or(4.0);
                let old_ctx = self.original_max_position_embeddings.unwrap_or(8192.0);
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                for f in rotary.inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                    *f = if medium {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            other => {
                return Err(ModelError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "rope scaling type \"{other}\" (supported: default, linear, llama3)"
                    ),
                });
            }
        }
        Ok(rotary)
    }
}

pub(crate) fn activation(name: &str, path: &Path) -> Result<super::transformer::Activation> {
    super::transformer::Activation::from_hf(name).ok_or_else(|| ModelError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("activation function \"{name}\""),
    })
}

pub(crate) fn check_heads(path: &Path, n_heads: usize, n_kv_heads: usize) -> Result<()> {
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(ModelError::config(
            path,
            format!("{n_heads} attention heads cannot share {n_kv_heads} key/value heads"),
        ));
    }
    Ok(())
}
