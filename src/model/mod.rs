//! Opening real model files and running them with hooks.
//!
//! [`open`] takes an HF model directory (or its `config.json`) or a GGUF file and returns the
//! loaded [`Model`]: the transformer, its tokenizer and a [`ModelInfo`] summary.

pub mod arch;
pub mod attention;
pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod packed;
pub mod prune;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use error::{ModelError, Result};
pub use hooks::{
    AblationMode, Captures, HookSpec, Intervention, InterventionKind, PatternMode, ProjectionMode,
    RowEdit, ValueOp,
};
pub use tokenizer::{BosMode, Tokenizer};
pub use transformer::{
    ForwardOutput, KvCache, LayerDone, LayerObserver, NoObserver, PassOutput, ResidCache,
    StepOutput, Transformer, UNEMBED_BLOCK_ROWS, Unembed,
};

use gguf::{GgufFile, GgufSource};
pub use weights::LoadProgress;
use weights::{SafetensorsSource, TensorSource as _, Weights};

/// What a model is, for `dendrite info` and the app's title bar.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    #[serde(flatten)]
    pub dims: transformer::Dims,
    pub n_params: usize,
    /// "safetensors" or "gguf".
    pub format: String,
    /// Stored tensor types, e.g. "F32" or "Q4_1×210, F32×61, Q8_0×1" (computation is f32).
    pub source_dtype: String,
    /// The tokenizer's BOS token, and whether HF's tokenizer adds it to plain text.
    pub bos_token_id: Option<u32>,
    pub adds_bos: bool,
    /// Tokens that end generation (`generation_config.json`, else `config.json`; GGUF
    /// `tokenizer.ggml.eos_token_id`).
    pub eos_token_ids: Vec<u32>,
    /// The MLP's activation function (ReLU makes exact zeros; SiLU and GELU almost never do).
    pub activation: transformer::Activation,
}

pub struct Model {
    pub transformer: Transformer,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish()
    }
}

/// What a path holds, decided before anything heavy is read.
enum Source {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

fn classify(path: &Path) -> Result<Source> {
    if !path.exists() {
        return Err(ModelError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        return Ok(Source::HfDir(path.to_path_buf()));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(ext.as_str(), "bin" | "pt" | "pth" | "pkl" | "ckpt") {
        return Err(ModelError::PickleRefused {
            path: path.to_path_buf(),
        });
    }
    if ext == "gguf" || file_starts_with(path, b"GGUF") {
        return Ok(Source::Gguf(path.to_path_buf()));
    }
    let parent = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    match path.file_name().and_then(|n| n.to_str()) {
        Some("config.json") => Ok(Source::HfDir(parent)),
        _ if ext == "safetensors" || ext == "json" => Ok(Source::HfDir(parent)),
        _ => Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: "not a model: expected an HF model directory, its config.json, or a .gguf file"
                .into(),
        }),
    }
}

fn file_starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut buf = vec![0u8; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok_and(|_| buf == magic)
}

/// Opens a model and its tokenizer.
pub fn open(path: impl AsRef<Path>) -> Result<Model> {
    open_with_progress(path, &Arc::new(LoadProgress::default()))
}

/// Like [`open`], counting loaded weights into `progress` (another thread may poll it).
pub fn open_with_progress(path: impl AsRef<Path>, progress: &Arc<LoadProgress>) -> Result<Model> {
    let model = match classify(path.as_ref())? {
        Source::HfDir(dir) => open_hf_dir(&dir, progress),
        Source::Gguf(file) => open_gguf(&file, progress),
    };
    crate::release_freed_memory();
    model
}

/// Opens only the tokenizer of a model path (a GGUF holding just a vocabulary works too).
pub fn open_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    match classify(path.as_ref())? {
        Source::HfDir(dir) => hf_tokenizer(&dir),
        Source::Gguf(file) => {
            let gguf = GgufFile::open(&file)?;
            Tokenizer::from_gguf(&file, &gguf.content)
        }
    }
}

/// Refuses a model whose weights do not fit in the memory available (the open model stays).
fn check_memory(elements: u64, path: &Path) -> Result<()> {
    crate::memory::check(
        crate::memory::model_bytes(elements),
        crate::memory::available_bytes(),
        &format!(
            "{} ({:.0} M weights in f32)",
            path.display(),
            elements as f64 / 1e6
        ),
        "close other programs, or open a smaller model",
    )
    .map_err(ModelError::NotEnoughMemory)
}

fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(ModelError::MissingTokenizer {
            path,
            reason: "no tokenizer.json in the model directory".into(),
        });
    }
    Tokenizer::from_file(&path)
}

fn read_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(&path, format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ModelError::config(&path, "expected a JSON object"));
    }
    Ok((path, value))
}

fn open_hf_dir(dir: &Path, progress: &Arc<LoadProgress>) -> Result<Model> {
    let (config_path, config) = read_config(dir)?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let source = if single.exists() {
        SafetensorsSource::open(&[single])?
    } else if index.exists() {
        SafetensorsSource::open_index(&index)?
    } else if dir.join("pytorch_model.bin").exists() {
        return Err(ModelError::PickleRefused {
            path: dir.join("pytorch_model.bin"),
        });
    } else {
        return Err(ModelError::NotFound { path: single });
    };
    let source_dtype = source.dtype_summary();
    let tokenizer = hf_tokenizer(dir)?;
    check_memory(source.total_elements(), dir)?;
    let weights = Weights::with_progress(Arc::new(source), progress.clone());
    let transformer = arch::load(&config, &config_path, &weights)?;
    let name = config
        .get("_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let architecture = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string();
    let mut info = model_info(
        &transformer,
        &tokenizer,
        name,
        dir,
        architecture,
        "safetensors",
        source_dtype,
    );
    info.eos_token_ids = hf_eos_ids(dir, &config)?;
    Ok(Model {
        transformer,
        tokenizer,
        info,
    })
}

fn open_gguf(path: &Path, progress: &Arc<LoadProgress>) -> Result<Model> {
    let gguf = GgufFile::open(path)?;
    if gguf.content.tensor_infos.is_empty() {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: "this GGUF holds only a vocabulary (no tensors); it opens as a tokenizer"
                .into(),
        });
    }
    let architecture = gguf.architecture().unwrap_or_default();
    if !matches!(architecture.as_str(), "llama" | "gemma3") {
        return Err(ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            model_type: architecture,
        });
    }
    let tokenizer = Tokenizer::from_gguf(path, &gguf.content)?;
    let eos = gguf::metadata_u32(&gguf.content.metadata, "tokenizer.ggml.eos_token_id");
    let config = gguf.hf_config()?;
    let n_heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let n_kv = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
    let name = gguf::metadata_str(&gguf.content.metadata, "general.name")
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let source_dtype = gguf.quantization_summary();
    let source = GgufSource::new(gguf, n_heads, n_kv);
    check_memory(source.total_elements(), path)?;
    let weights = Weights::with_progress(Arc::new(source), progress.clone());
    let transformer = arch::load(&config, path, &weights)?;
    let mut info = model_info(
        &transformer,
        &tokenizer,
        name,
        path,
        architecture,
        "gguf",
        source_dtype,
    );
    info.eos_token_ids = eos.into_iter().collect();
    Ok(Model {
        transformer,
        tokenizer,
        info,
    })
}

fn model_info(
    t: &Transformer,
    tokenizer: &Tokenizer,
    name: String,
    path: &Path,
    architecture: String,
    format: &str,
    source_dtype: String,
) -> ModelInfo {
    ModelInfo {
        name,
        path: path.to_path_buf(),
        architecture,
        dims: t.dims.clone(),
        n_params: t.n_params(),
        format: format.to_string(),
        source_dtype,
        bos_token_id: tokenizer.bos_id(),
        adds_bos: tokenizer.adds_bos(),
        eos_token_ids: Vec::new(),
        activation: t
            .blocks
            .first()
            .map_or(transformer::Activation::Relu, |b| b.mlp.act),
    }
}

/// `eos_token_id` (a number or a list) from `generation_config.json`, which HF's `generate`
/// reads, else from `config.json`.
fn hf_eos_ids(dir: &Path, config: &serde_json::Value) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    let generation: Option<serde_json::Value> = if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| ModelError::config(&path, format!("not valid JSON: {e}")))?,
        )
    } else {
        None
    };
    let value = generation
        .as_ref()
        .and_then(|g| g.get("eos_token_id"))
        .or_else(|| config.get("eos_token_id"));
    let ids = match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).collect(),
        _ => Vec::new(),
    };
    Ok(ids
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
        .collect())
}

impl Model {
    /// The model's chat template with its BOS and EOS texts, when it ships one.
    pub fn chat_template(&self) -> Option<chat::ChatTemplate> {
        let name = |id: Option<u32>| {
            id.and_then(|id| self.tokenizer.token_name(id))
                .unwrap_or_default()
        };
        Some(chat::ChatTemplate {
            source: self.tokenizer.chat_template()?.to_string(),
            bos_token: name(self.tokenizer.bos_id()),
            eos_token: name(self.info.eos_token_ids.first().copied()),
        })
    }

    /// A conversation's token ids, ending where the assistant's reply starts: the chat
    /// template rendered, then tokenized without added special tokens (transformers'
    /// `apply_chat_template(..., add_generation_prompt=True)`).
    pub fn encode_chat(&self, messages: &[chat::Message]) -> Result<Vec<u32>> {
        let template = self.chat_template().ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "{} has no chat template (tokenizer.chat_template in a GGUF, chat_template in \
                 tokenizer_config.json): give a plain --prompt instead",
                self.info.name
            ))
        })?;
        let text = template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_special)
    }

    /// A prompt's token ids, with the BOS `bos` asks for (see [`Tokenizer::encode_prompt`]).
    pub fn encode_prompt(&self, text: &str, bos: BosMode) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(text, bos)
    }

    /// One token named by the user: `id:N`, or text that is exactly one token (" Mary").
    pub fn single_token(&self, token: &str) -> Result<u32> {
        let vocab = self.info.dims.d_vocab;
        if let Some(id) = token.strip_prefix("id:") {
            let id: u32 = id
                .parse()
                .map_err(|_| ModelError::InvalidInput(format!("bad token id {id:?}")))?;
            if id as usize >= vocab {
                return Err(ModelError::InvalidInput(format!(
                    "id:{id} is outside the vocabulary ({vocab} tokens)"
                )));
            }
            return Ok(id);
        }
        match self.encode(token, false)?.as_slice() {
            [id] => Ok(*id),
            ids => Err(ModelError::InvalidInput(format!(
                "{token:?} is {} tokens ({ids:?}); give one token's text or id:N",
                ids.len()
            ))),
        }
    }
}
