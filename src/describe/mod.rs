//! What units mean: a corpus scan into an SQLite store (top-activating windows, quantile
//! samples, density, histogram per unit of any hook or SAE), explanations imported from
//! Neuronpedia or OpenAI files or written by the user, and search over them.
//!
//! - [`corpus`]: reading corpora and cutting them into windows;
//! - [`stats`]: what a scan keeps per unit (pure, mergeable);
//! - [`scan`]: the scan itself, resumable and shardable, and merging shard stores;
//! - [`store`]: the SQLite store (schema, commits, queries), [`blob`] its binary columns;
//! - [`explanations`]: importing explanation files.

pub mod blob;
pub mod corpus;
pub mod explanations;
pub mod facets;
pub mod interp;
pub mod scan;
pub mod stats;
pub mod store;

pub use scan::{ScanOptions, ScanPhases, ScanProgress, ScanSummary, merge, scan};
pub use store::{Store, UnitReport};

/// Where the app puts a new store by default: `$XDG_DATA_HOME/dendrite/stores` (or
/// `~/.local/share/…`), named after the model and the corpus.
pub fn default_store_path(model_name: &str, corpus: &std::path::Path) -> std::path::PathBuf {
    let slug = |s: &str| {
        s.to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
    };
    let corpus_name = corpus
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into());
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".local").join("share"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("dendrite")
        .join("stores")
        .join(format!(
            "{}-{}.sqlite",
            slug(model_name),
            slug(&corpus_name)
        ))
}
