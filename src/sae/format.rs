//! Reading SAEs from the formats people publish them in, and writing SAELens v6 directories.
//!
//! - **SAELens 6**: `cfg.json` (`metadata.hook_name`, `architecture`, `k`, …) +
//!   `sae_weights.safetensors` (`W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`, `b_gate`,
//!   `r_mag`, `b_mag`, `W_skip`). `sparsity.safetensors` (`sparsity`: `log10` of each latent's
//!   firing frequency during training) is optional; read and written when present.
//! - **SAELens before 6**: flat keys (`hook_point`, `activation_fn_str`,
//!   `activation_fn_kwargs.k`, boolean `normalize_activations`), read the way sae_lens 6 upgrades
//!   them.
//! - **Gemma Scope**: `params.npz` (`W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`), JumpReLU,
//!   no `b_dec` subtraction. The hook comes from the release's path
//!   (`gemma-scope-…-res/layer_12/…`) or is given.
//! - **EleutherAI sparsify**: `<hookpoint>/cfg.json` + `sae.safetensors` (`encoder.weight`
//!   `[d_sae, d_in]` = `W_encᵀ`, `encoder.bias`, `W_dec` `[d_sae, d_in]`, `b_dec`); TopK; the
//!   hook comes from the directory's hookpoint name (`layers.6` = `blocks.6.hook_resid_post`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::{Activation, Normalization, Result, Sae, SaeConfig, SaeError, SaeFormat, SaeParams};

/// Whether `path` looks like an SAE (rather than a model): what drag-and-drop decides by.
pub fn looks_like_sae(path: &Path) -> bool {
    if path.is_dir() {
        path.join("sae_weights.safetensors").exists()
            || path.join("sae.safetensors").exists()
            || path.join("params.npz").exists()
    } else {
        path.extension().is_some_and(|e| e == "npz")
            || path
                .file_name()
                .is_some_and(|n| n == "sae_weights.safetensors" || n == "sae.safetensors")
    }
}

/// Opens an SAE directory or file; its hook comes from its own files.
pub fn open(path: impl AsRef<Path>) -> Result<Sae> {
    open_with_hook(path, None)
}

/// Refuses an SAE whose weights would not fit in the memory available: its weight files,
/// twice over (f16 and bf16 files become f32).
fn check_memory(path: &Path) -> Result<()> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let weights = |p: &Path| {
        p.extension()
            .is_some_and(|e| e == "safetensors" || e == "npz")
    };
    let bytes: u64 = if path.is_dir() {
        // The folder's own weight files, and one level down (a sparsify run's hookpoints).
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .map(|p| {
                        if p.is_dir() {
                            std::fs::read_dir(&p).map_or(0, |inner| {
                                inner
                                    .filter_map(|e| e.ok().map(|e| e.path()))
                                    .filter(|p| weights(p))
                                    .map(|p| size(&p))
                                    .max()
                                    .unwrap_or(0)
                            })
                        } else if weights(&p) {
                            size(&p)
                        } else {
                            0
                        }
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    } else {
        size(path)
    };
    crate::memory::check(
        bytes.saturating_mul(2),
        crate::memory::available_bytes(),
        &format!("the SAE {}", path.display()),
        "close other programs, or detach SAEs you do not need",
    )
    .map_err(SaeError::NotEnoughMemory)
}

/// Opens an SAE, attaching it at `hook` when given (required for files that do not name their
/// hook, e.g. a Gemma Scope `params.npz` outside its release's folder layout).
pub fn open_with_hook(path: impl AsRef<Path>, hook: Option<&str>) -> Result<Sae> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(SaeError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let (dir, file) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let parent = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (parent, path.file_name().and_then(|n| n.to_str()))
    };
    check_memory(path)?;
    let mut sae = if file.is_some_and(|f| f.ends_with(".npz")) {
        open_gemma_scope(path, hook)?
    } else if dir.join("params.npz").exists() && file.is_none() {
        open_gemma_scope(&dir.join("params.npz"), hook)?
    } else if dir.join("sae_weights.safetensors").exists() {
        open_sae_lens(&dir)?
    } else if dir.join("sae.safetensors").exists() {
        open_sparsify(&dir, hook)?
    } else {
        // A sparsify run saves one folder per hookpoint: name them.
        let inner: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("sae.safetensors").exists())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let hint = if inner.is_empty() {
            String::new()
        } else {
            format!(
                "; it holds one SAE per hook, open one of them: {}",
                inner.join(", ")
            )
        };
        return Err(SaeError::UnknownFormat {
            path: path.to_path_buf(),
            hint,
        });
    };
    if let Some(hook) = hook {
        sae.cfg.hook_name = hook.to_string();
    }
    Ok(sae)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| SaeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| SaeError::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(SaeError::Config {
            path: path.to_path_buf(),
            reason: "expected a JSON object".into(),
        });
    }
    Ok(value)
}

/// Tensors of one file, as f32 with their shapes.
struct TensorFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl TensorFile {
    fn safetensors(path: &Path) -> Result<Self> {
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| SaeError::Corrupt {
                path: path.to_path_buf(),
                reason: root_cause(&e),
            })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The arrays `names` of an `.npz` (the others are not read).
    fn npz(path: &Path, names: &[&str]) -> Result<Self> {
        let tensors = super::npz::read(path, names).map_err(|reason| SaeError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name` with `shape`, as f32 values.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.get_opt(name, shape)?
            .ok_or_else(|| SaeError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        if t.dims() != shape {
            return Err(SaeError::Shape {
                path: self.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        let corrupt = |e: candle_core::Error| SaeError::Corrupt {
            path: self.path.clone(),
            reason: format!("tensor {name}: {e}"),
        };
        let values = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(corrupt)?;
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(SaeError::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor {name} holds a non-finite value at index {bad}"),
            });
        }
        Ok(Some(values))
    }

    fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }
}

fn root_cause(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } => inner.to_string(),
        other => other.to_string(),
    }
}

/// A config reader that names the file in its errors.
/// The widest SAE a config may declare (2³¹: well beyond any published one, and small enough
/// that `d_in × d_sae` cannot overflow).
const MAX_SAE_WIDTH: usize = 1 << 31;

/// A TopK SAE's `k`: at least 1 and at most its number of latents.
fn topk_k(cfg: &Cfg<'_>, k: u64, d_sae: usize) -> Result<usize> {
    if k == 0 || k > d_sae as u64 {
        return Err(cfg.error(format!(
            "\"k\" = {k}: a TopK SAE keeps between 1 and its d_sae = {d_sae} latents"
        )));
    }
    Ok(k as usize)
}

struct Cfg<'a> {
    path: &'a Path,
    value: &'a Value,
}

impl Cfg<'_> {
    /// Key `name` at the top level or under `metadata` (SAELens 6 moved several there).
    fn get(&self, name: &str) -> Option<&Value> {
        self.value.get(name).filter(|v| !v.is_null()).or_else(|| {
            self.value
                .get("metadata")?
                .get(name)
                .filter(|v| !v.is_null())
        })
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.get(name)?.as_str()
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.get(name)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.error(format!("\"{name}\" is missing or not a whole number")))
    }

    /// A width (`d_in`, `d_sae`): at least 1 and at most [`MAX_SAE_WIDTH`], so that no size
    /// computed from it overflows and no empty SAE divides by zero later.
    fn width(&self, name: &str) -> Result<usize> {
        let value = self.usize(name)?;
        if value == 0 {
            return Err(self.error(format!("\"{name}\" is 0: an SAE needs at least one")));
        }
        if value > MAX_SAE_WIDTH {
            return Err(self.error(format!(
                "\"{name}\" = {value} is beyond any SAE (at most {MAX_SAE_WIDTH})"
            )));
        }
        Ok(value)
    }

    fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("\"{name}\" is not true or false"))),
        }
    }

    fn error(&self, reason: impl Into<String>) -> SaeError {
        SaeError::Config {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

fn open_sae_lens(dir: &Path) -> Result<Sae> {
    let cfg_path = dir.join("cfg.json");
    let value = read_json(&cfg_path)?;
    let cfg = Cfg {
        path: &cfg_path,
        value: &value,
    };
    // sae_lens 6 treats a config without a version as older and upgrades its keys.
    let v6 = cfg.get("sae_lens_version").is_some();
    let hook_name = cfg
        .str("hook_name")
        .or_else(|| cfg.str("hook_point"))
        .ok_or_else(|| cfg.error("no hook name (\"metadata.hook_name\" or \"hook_point\")"))?
        .to_string();
    let head_index = cfg
        .get("hook_head_index")
        .or_else(|| cfg.get("hook_point_head_index"));
    if head_index.is_some() {
        return Err(SaeError::Unsupported {
            path: cfg_path.clone(),
            reason: "SAEs on a single attention head (hook_head_index) are not supported".into(),
        });
    }
    let (d_in, d_sae) = (cfg.width("d_in")?, cfg.width("d_sae")?);
    let legacy_fn = cfg
        .str("activation_fn")
        .or_else(|| cfg.str("activation_fn_str"));
    let architecture = match (cfg.str("architecture"), legacy_fn) {
        (Some("standard") | None, Some("topk")) => "topk".to_string(),
        (Some(a), _) => a.to_string(),
        (None, _) => "standard".to_string(),
    };
    if let Some(f) = legacy_fn
        && !matches!(f, "relu" | "topk")
    {
        return Err(SaeError::Unsupported {
            path: cfg_path.clone(),
            reason: format!("activation function \"{f}\""),
        });
    }
    let transcoder = architecture.contains("transcoder");
    let skip = architecture.contains("skip");
    let activation = match architecture.as_str() {
        "standard" | "transcoder" | "skip_transcoder" => Activation::Relu,
        "jumprelu" | "jumprelu_transcoder" | "jumprelu_skip_transcoder" => Activation::JumpRelu,
        "gated" => Activation::Gated,
        "topk" => {
            let k = cfg
                .get("k")
                .or_else(|| cfg.get("activation_fn_kwargs")?.get("k"))
                .and_then(Value::as_u64)
                .ok_or_else(|| cfg.error("a topk SAE needs \"k\""))?;
            Activation::TopK {
                k: topk_k(&cfg, k, d_sae)?,
            }
        }
        other => {
            return Err(SaeError::Unsupported {
                path: cfg_path.clone(),
                reason: format!(
                    "architecture \"{other}\" (supported: standard, topk, jumprelu, gated, transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder)"
                ),
            });
        }
    };
    let d_out = if transcoder {
        cfg.get("d_out")
            .and_then(Value::as_u64)
            .map_or(d_in, |v| v as usize)
    } else {
        d_in
    };
    let mut notes = Vec::new();
    let normalization = match cfg.get("normalize_activations") {
        None => Normalization::None,
        Some(Value::Bool(false)) => Normalization::None,
        Some(Value::Bool(true)) => Normalization::None,
        Some(Value::String(s)) => match s.as_str() {
            "none" | "expected_average_only_in" | "covariance_whitening" => Normalization::None,
            "constant_norm_rescale" => Normalization::ConstantNormRescale,
            "layer_norm" => Normalization::LayerNorm,
            other => {
                return Err(cfg.error(format!("unknown normalize_activations \"{other}\"")));
            }
        },
        Some(other) => return Err(cfg.error(format!("normalize_activations = {other}"))),
    };
    if let Some(reshape) = cfg.str("reshape_activations")
        && reshape != "none"
        && reshape != "hook_z"
    {
        return Err(SaeError::Unsupported {
            path: cfg_path.clone(),
            reason: format!("reshape_activations \"{reshape}\""),
        });
    }
    let weights = TensorFile::safetensors(&dir.join("sae_weights.safetensors"))?;
    let b_dec_len = if transcoder { d_out } else { d_in };
    let mut params = SaeParams {
        w_enc: weights.get("W_enc", &[d_in, d_sae])?,
        b_enc: if activation == Activation::Gated {
            Vec::new()
        } else {
            weights.get("b_enc", &[d_sae])?
        },
        w_dec: weights.get("W_dec", &[d_sae, d_out])?,
        b_dec: weights.get("b_dec", &[b_dec_len])?,
        threshold: match activation {
            Activation::JumpRelu => Some(weights.get("threshold", &[d_sae])?),
            _ => None,
        },
        gated: match activation {
            Activation::Gated => Some((
                weights.get("b_gate", &[d_sae])?,
                weights.get("r_mag", &[d_sae])?,
                weights.get("b_mag", &[d_sae])?,
            )),
            _ => None,
        },
        w_skip: if skip {
            Some(weights.get("W_skip", &[d_out, d_in])?)
        } else {
            None
        },
    };
    // Old SAELens stored a fine-tuning scale on the latents; sae_lens 6 drops it when it is all
    // ones and refuses otherwise. So do we.
    if let Some(scale) = weights.get_opt("scaling_factor", &[d_sae])? {
        if scale.iter().any(|s| *s != 1.0) {
            return Err(SaeError::Unsupported {
                path: weights.path.clone(),
                reason: "a scaling_factor other than all ones (a fine-tuned SAE); sae_lens 6 refuses these too".into(),
            });
        }
        notes.push("dropped an all-ones scaling_factor (legacy SAELens)".into());
    }
    // A training checkpoint of `expected_average_only_in` keeps its scale beside the weights:
    // fold it in as SAELens does at the end of training.
    let scaler = dir.join("activation_scaler.json");
    if cfg.str("normalize_activations") == Some("expected_average_only_in") && scaler.exists() {
        let s = read_json(&scaler)?
            .get("scaling_factor")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| SaeError::Config {
                path: scaler.clone(),
                reason: "no positive \"scaling_factor\"".into(),
            })? as f32;
        params.w_enc.iter_mut().for_each(|w| *w *= s);
        params.w_dec.iter_mut().for_each(|w| *w /= s);
        params.b_dec.iter_mut().for_each(|b| *b /= s);
        notes.push(format!(
            "folded the activation scaling factor {s} from activation_scaler.json into the weights"
        ));
    }
    let config = SaeConfig {
        architecture,
        activation,
        transcoder,
        hook_name,
        hook_name_out: cfg.str("hook_name_out").map(str::to_string),
        d_in,
        d_sae,
        d_out,
        apply_b_dec_to_input: !transcoder && cfg.bool_or("apply_b_dec_to_input", true)?,
        normalization,
        rescale_acts_by_decoder_norm: cfg.bool_or("rescale_acts_by_decoder_norm", false)?,
        format: if v6 {
            SaeFormat::SaeLens
        } else {
            SaeFormat::SaeLensLegacy
        },
        path: dir.to_path_buf(),
        model_name: cfg.str("model_name").map(str::to_string),
        notes,
    };
    let sae = Sae::new(config, params)?;
    let sparsity_path = dir.join(SPARSITY_FILE);
    if !sparsity_path.exists() {
        return Ok(sae);
    }
    let values = TensorFile::safetensors(&sparsity_path)?.get("sparsity", &[d_sae])?;
    sae.with_log10_density(values, &sparsity_path)
}

/// SAELens' file of per-latent training densities.
const SPARSITY_FILE: &str = "sparsity.safetensors";

/// The hook a Gemma Scope release path names: `…-res/layer_12/…` → `blocks.12.hook_resid_post`.
fn gemma_scope_hook(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_lowercase())
        .collect();
    let layer: usize = parts
        .iter()
        .find_map(|p| p.strip_prefix("layer_")?.parse().ok())?;
    let site = parts.iter().find_map(|p| {
        if p.ends_with("-res") || p.contains("-res-") || p.ends_with("_res") {
            Some("hook_resid_post")
        } else if p.ends_with("-mlp") || p.contains("-mlp-") {
            Some("hook_mlp_out")
        } else if p.ends_with("-att") || p.contains("-att-") {
            Some("attn.hook_z")
        } else {
            None
        }
    })?;
    Some(format!("blocks.{layer}.{site}"))
}

fn open_gemma_scope(file: &Path, hook: Option<&str>) -> Result<Sae> {
    // Gemma Scope names them W_enc…; some copies use lower case.
    const ARRAYS: [&str; 7] = [
        "W_enc",
        "w_enc",
        "b_enc",
        "W_dec",
        "w_dec",
        "b_dec",
        "threshold",
    ];
    let weights = TensorFile::npz(file, &ARRAYS)?;
    // Gemma Scope names them W_enc…; some copies use lower case.
    let name = |n: &str| -> String {
        if weights.contains(n) {
            n.to_string()
        } else {
            n.to_lowercase()
        }
    };
    let (d_in, d_sae) = match weights.dims(&name("W_enc")) {
        Some(&[d_in, d_sae]) => (d_in, d_sae),
        Some(other) => {
            return Err(SaeError::Shape {
                path: file.to_path_buf(),
                name: "W_enc".into(),
                expected: vec![0, 0],
                found: other.to_vec(),
            });
        }
        None => {
            return Err(SaeError::MissingTensor {
                path: file.to_path_buf(),
                name: "W_enc".into(),
            });
        }
    };
    let hook_name = hook
        .map(str::to_string)
        .or_else(|| gemma_scope_hook(file))
        .ok_or_else(|| SaeError::Config {
            path: file.to_path_buf(),
            reason: "a params.npz does not name its hook and its path is not a Gemma Scope release layout (…-res/layer_N/…): give the hook".into(),
        })?;
    let params = SaeParams {
        w_enc: weights.get(&name("W_enc"), &[d_in, d_sae])?,
        b_enc: weights.get(&name("b_enc"), &[d_sae])?,
        w_dec: weights.get(&name("W_dec"), &[d_sae, d_in])?,
        b_dec: weights.get(&name("b_dec"), &[d_in])?,
        threshold: Some(weights.get(&name("threshold"), &[d_sae])?),
        gated: None,
        w_skip: None,
    };
    let cfg = SaeConfig {
        architecture: "jumprelu".into(),
        activation: Activation::JumpRelu,
        transcoder: false,
        hook_name,
        hook_name_out: None,
        d_in,
        d_sae,
        d_out: d_in,
        apply_b_dec_to_input: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        format: SaeFormat::GemmaScope,
        path: file.to_path_buf(),
        model_name: None,
        notes: Vec::new(),
    };
    Sae::new(cfg, params)
}

/// The hooks a sparsify hookpoint (an HF module path) reads and writes.
fn sparsify_hooks(hookpoint: &str, transcode: bool) -> Option<(String, Option<String>)> {
    let rest = hookpoint
        .strip_prefix("layers.")
        .or_else(|| hookpoint.strip_prefix("model.layers."))
        .or_else(|| hookpoint.strip_prefix("transformer.h."))
        .or_else(|| hookpoint.strip_prefix("gpt_neox.layers."))?;
    let (layer, module) = rest.split_once('.').unwrap_or((rest, ""));
    let layer: usize = layer.parse().ok()?;
    let site = |s: &str| format!("blocks.{layer}.{s}");
    match (module, transcode) {
        ("", false) => Some((site("hook_resid_post"), None)),
        ("mlp", false) => Some((site("hook_mlp_out"), None)),
        ("mlp", true) => Some((site("ln2.hook_normalized"), Some(site("hook_mlp_out")))),
        ("self_attn" | "attn" | "attention", false) => Some((site("hook_attn_out"), None)),
        _ => None,
    }
}

fn open_sparsify(dir: &Path, hook: Option<&str>) -> Result<Sae> {
    let cfg_path = dir.join("cfg.json");
    let value = read_json(&cfg_path)?;
    let cfg = Cfg {
        path: &cfg_path,
        value: &value,
    };
    if let Some(a) = cfg.str("activation")
        && a != "topk"
    {
        return Err(SaeError::Unsupported {
            path: cfg_path.clone(),
            reason: format!("sparsify activation \"{a}\" (only topk is supported)"),
        });
    }
    let transcode = cfg.bool_or("transcode", false)?;
    let weights = TensorFile::safetensors(&dir.join("sae.safetensors"))?;
    let (d_sae, d_in) = match weights.dims("encoder.weight") {
        Some(&[d_sae, d_in]) => (d_sae, d_in),
        _ => {
            return Err(SaeError::MissingTensor {
                path: weights.path.clone(),
                name: "encoder.weight [num_latents, d_in]".into(),
            });
        }
    };
    if let Ok(d) = cfg.usize("d_in")
        && d != d_in
    {
        return Err(cfg.error(format!("d_in = {d} but encoder.weight has {d_in} columns")));
    }
    let d_out = weights
        .dims("W_dec")
        .and_then(|d| d.get(1).copied())
        .unwrap_or(d_in);
    let k = topk_k(&cfg, cfg.usize("k")? as u64, d_sae)?;
    let hookpoint = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let (hook_name, hook_name_out) = match hook {
        Some(h) => (h.to_string(), None),
        None => sparsify_hooks(&hookpoint, transcode).ok_or_else(|| {
            cfg.error(format!(
                "cannot tell the hook from the hookpoint folder name \"{hookpoint}\" (expected layers.N[.mlp]): give the hook"
            ))
        })?,
    };
    let w_enc_t = weights.get("encoder.weight", &[d_sae, d_in])?;
    let skip = cfg.bool_or("skip_connection", false)?;
    let params = SaeParams {
        w_enc: super::transpose(&w_enc_t, d_sae, d_in),
        b_enc: weights.get("encoder.bias", &[d_sae])?,
        w_dec: weights.get("W_dec", &[d_sae, d_out])?,
        b_dec: weights.get("b_dec", &[d_out])?,
        threshold: None,
        gated: None,
        w_skip: if skip {
            Some(weights.get("W_skip", &[d_out, d_in])?)
        } else {
            None
        },
    };
    let transcoder = transcode || skip;
    let config = SaeConfig {
        architecture: match (transcoder, skip) {
            (true, true) => "skip_transcoder",
            (true, false) => "transcoder",
            _ => "topk",
        }
        .into(),
        activation: Activation::TopK { k },
        transcoder,
        hook_name,
        hook_name_out,
        d_in,
        d_sae,
        d_out,
        apply_b_dec_to_input: !transcoder,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        format: SaeFormat::Sparsify,
        path: dir.to_path_buf(),
        model_name: None,
        notes: Vec::new(),
    };
    Sae::new(config, params)
}

/// Training provenance written into a saved SAE's `metadata`.
#[derive(Clone, Debug, Default)]
pub struct SaveMetadata {
    pub model_name: String,
    pub context_size: usize,
    pub dataset_path: String,
    pub prepend_bos: bool,
}

/// The SAELens format version our `cfg.json` follows (sae_lens reads the layout by it).
const SAE_LENS_FORMAT_VERSION: &str = "6.54.12";

/// Writes `sae` as a SAELens 6 directory (`cfg.json` + `sae_weights.safetensors`), the
/// layout `SAE.load_from_disk` reads.
pub fn save(sae: &Sae, dir: &Path, meta: &SaveMetadata) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SaeError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let c = &sae.cfg;
    let mut metadata = json!({
        "sae_lens_version": SAE_LENS_FORMAT_VERSION,
        "sae_lens_training_version": SAE_LENS_FORMAT_VERSION,
        "model_name": meta.model_name,
        "hook_name": c.hook_name,
        "hook_head_index": null,
        "model_class_name": "HookedTransformer",
        "prepend_bos": meta.prepend_bos,
        "context_size": meta.context_size,
        "dataset_path": meta.dataset_path,
        "neuronpedia_id": null,
    });
    let mut cfg = json!({
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": match c.normalization {
            Normalization::None => "none",
            Normalization::ConstantNormRescale => "constant_norm_rescale",
            Normalization::LayerNorm => "layer_norm",
        },
        "reshape_activations": "none",
        "architecture": c.architecture,
    });
    if let Activation::TopK { k } = c.activation {
        cfg["k"] = json!(k);
        cfg["rescale_acts_by_decoder_norm"] = json!(c.rescale_acts_by_decoder_norm);
    }
    if c.transcoder {
        cfg["d_out"] = json!(c.d_out);
        metadata["hook_name_out"] = json!(c.hook_name_out);
        metadata["hook_head_index_out"] = Value::Null;
    }
    cfg["metadata"] = metadata;
    let cfg_path = dir.join("cfg.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| SaeError::Config {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text).map_err(io(&cfg_path))?;

    let p = sae.params();
    let (d_in, d_sae, d_out) = (c.d_in, c.d_sae, c.d_out);
    let mut tensors: Vec<(&str, Vec<f32>, Vec<usize>)> = vec![
        ("W_enc", p.w_enc, vec![d_in, d_sae]),
        ("W_dec", p.w_dec, vec![d_sae, d_out]),
    ];
    let b_dec_len = p.b_dec.len();
    tensors.push(("b_dec", p.b_dec, vec![b_dec_len]));
    if !p.b_enc.is_empty() {
        tensors.push(("b_enc", p.b_enc, vec![d_sae]));
    }
    if let Some(t) = p.threshold {
        tensors.push(("threshold", t, vec![d_sae]));
    }
    if let Some((b_gate, r_mag, b_mag)) = p.gated {
        tensors.push(("b_gate", b_gate, vec![d_sae]));
        tensors.push(("r_mag", r_mag, vec![d_sae]));
        tensors.push(("b_mag", b_mag, vec![d_sae]));
    }
    if let Some(w) = p.w_skip {
        tensors.push(("W_skip", w, vec![d_out, d_in]));
    }
    let weights_path = dir.join("sae_weights.safetensors");
    let map: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, data, shape)| {
            Tensor::from_vec(data, shape, &Device::Cpu).map(|t| (name.to_string(), t))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(|e| SaeError::Corrupt {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
    write_safetensors(&map, &weights_path)?;
    let sparsity_path = dir.join(SPARSITY_FILE);
    match sae.log10_density() {
        Some(density) => {
            let t = Tensor::from_slice(density, density.len(), &Device::Cpu).map_err(|e| {
                SaeError::Corrupt {
                    path: sparsity_path.clone(),
                    reason: e.to_string(),
                }
            })?;
            write_safetensors(
                &HashMap::from([("sparsity".to_string(), t)]),
                &sparsity_path,
            )?;
        }
        // A stale file from an earlier save would describe other latents.
        None if sparsity_path.exists() => {
            std::fs::remove_file(&sparsity_path).map_err(io(&sparsity_path))?
        }
        None => {}
    }
    Ok(())
}

fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| SaeError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("writing: {e}"),
    })
}
