//! One error type for everything that can go wrong while opening or running a model.
//! Every variant that comes from a file names the file, so the UI and the CLI can show
//! "which file, and why" without extra context.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid config: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },

    #[error(
        "{}: unknown architecture \"{model_type}\" (supported: gpt2, llama, qwen2, gpt_neox, gemma3)",
        path.display()
    )]
    UnknownArchitecture { path: PathBuf, model_type: String },

    #[error("{}: {reason}", path.display())]
    MissingTokenizer { path: PathBuf, reason: String },

    #[error("{}: corrupt or truncated safetensors file: {reason}", path.display())]
    CorruptSafetensors { path: PathBuf, reason: String },

    #[error("{}: corrupt or truncated GGUF file: {reason}", path.display())]
    CorruptGguf { path: PathBuf, reason: String },

    #[error("{}: tensor \"{name}\" is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: tensor \"{name}\" has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "{}: refusing to read a pickle checkpoint (pickle can execute code); convert it to safetensors first",
        path.display()
    )]
    PickleRefused { path: PathBuf },

    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("{}: tokenizer: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("unknown hook \"{0}\"")]
    UnknownHook(String),

    #[error("cancelled")]
    Cancelled,

    /// Refused by the memory guard ([`crate::memory`]): what it needs, and what to do.
    #[error("{0}")]
    NotEnoughMemory(String),

    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound { path }
        } else {
            ModelError::Io { path, source }
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        ModelError::InvalidConfig {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
