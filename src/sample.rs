//! The sample model the app opens by default.

use std::path::PathBuf;

/// The sample model's directory, if it is present.
pub fn path() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample_models");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").exists())
        .collect();
    entries.sort();
    entries.into_iter().next()
}
