//! What can go wrong opening, attaching or saving a sparse autoencoder. Every variant from a
//! file names the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },

    /// Refused by the memory guard ([`crate::memory`]).
    #[error("{0}")]
    NotEnoughMemory(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: not an SAE: expected a SAELens directory (cfg.json + sae_weights.safetensors), an EleutherAI sparsify directory (cfg.json + sae.safetensors) or a Gemma Scope params.npz{hint}",
        path.display()
    )]
    UnknownFormat { path: PathBuf, hint: String },

    #[error("{}: invalid SAE config: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    #[error("{}: corrupt or truncated weights: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("{}: tensor \"{name}\" is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: tensor \"{name}\" has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("the SAE reads hook {hook}, which the open model ({model}) does not have")]
    UnknownHook { hook: String, model: String },

    #[error(
        "the SAE expects {hook} vectors of width {sae_width}, but the open model ({model}) has width {model_width} there"
    )]
    WidthMismatch {
        hook: String,
        model: String,
        sae_width: usize,
        model_width: usize,
    },

    #[error("invalid input: {0}")]
    InvalidInput(String),
}

pub type Result<T> = std::result::Result<T, SaeError>;
