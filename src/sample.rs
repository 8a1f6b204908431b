//! The sample model embedded in the binary: a 2-layer ReLU GPT-2 trained on Shakespeare by
//! `dendrite train-sample` (see `sample_models/shakespeare-gpt2-relu/README.md`). The app opens
//! it when no other model is given; its files are written once to the cache directory so it
//! opens through the ordinary HF-directory path. The sample SAE (a TopK SAE on its residual
//! stream, `sample_models/shakespeare-gpt2-relu-sae`) is embedded the same way and attached by
//! default.

use std::path::PathBuf;

/// The sample model's folder name under `sample_models/`.
pub const NAME: &str = "shakespeare-gpt2-relu";

const FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../sample_models/shakespeare-gpt2-relu/config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../sample_models/shakespeare-gpt2-relu/tokenizer.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../sample_models/shakespeare-gpt2-relu/model.safetensors"),
    ),
];

/// The sample SAE's folder name under `sample_models/`.
pub const SAE_NAME: &str = "shakespeare-gpt2-relu-sae";

const SAE_FILES: [(&str, &[u8]); 2] = [
    (
        "cfg.json",
        include_bytes!("../sample_models/shakespeare-gpt2-relu-sae/cfg.json"),
    ),
    (
        "sae_weights.safetensors",
        include_bytes!("../sample_models/shakespeare-gpt2-relu-sae/sae_weights.safetensors"),
    ),
];

/// A short fingerprint of embedded files, so a new build never reuses old files.
fn fingerprint(files: &[(&str, &[u8])]) -> String {
    // FNV-1a over every byte: fast enough for a few MB once per launch.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, bytes) in files {
        for &b in bytes.iter() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// `files` written once under the cache directory as `<prefix>-<fingerprint>/<name>/`.
fn materialize(prefix: &str, name: &str, files: &[(&str, &[u8])]) -> Option<PathBuf> {
    // A folder per build's files, holding one named after the model (the app shows the name).
    let dir = cache_root()
        .join(format!("{prefix}-{}", fingerprint(files)))
        .join(name);
    let complete = files.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    });
    if !complete {
        std::fs::create_dir_all(&dir).ok()?;
        for (name, bytes) in files {
            // Whole or not at all: two threads or processes writing at once (tests do) each
            // rename a whole file.
            crate::export::write_atomically(&dir.join(name), bytes).ok()?;
        }
    }
    Some(dir)
}

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("dendrite")
}

/// The embedded sample model as a folder on disk (written on first use).
pub fn path() -> Option<PathBuf> {
    materialize("sample", NAME, &FILES)
}

/// The embedded sample SAE as a SAELens folder on disk (written on first use).
pub fn sae_path() -> Option<PathBuf> {
    materialize("sample-sae", SAE_NAME, &SAE_FILES)
}

/// SAEs the app attaches when it opens `model`: the sample SAE for the sample model.
pub fn default_saes(model: &std::path::Path) -> Vec<PathBuf> {
    let is_sample = path().is_some_and(|p| p == model);
    match (is_sample, sae_path()) {
        (true, Some(sae)) => vec![sae],
        _ => Vec::new(),
    }
}

/// Corpus stores the app opens with `model`: the sample store for the sample model.
pub fn default_stores(model: &std::path::Path) -> Vec<PathBuf> {
    let is_sample = path().is_some_and(|p| p == model);
    match (is_sample, store_path()) {
        (true, Some(store)) => vec![store],
        _ => Vec::new(),
    }
}

/// The sample store: a scan of the sample model and its SAE over held-out plays
/// (`sample_models/shakespeare-gpt2-relu/descriptions.sqlite`), written once to the cache
/// directory. Unlike the model it is never rewritten once there: the user's own
/// descriptions go into that copy.
pub fn store_path() -> Option<PathBuf> {
    let dir = cache_root().join(format!("sample-store-{}", fingerprint(&STORE)));
    let path = dir.join("descriptions.sqlite");
    if !path.exists() {
        std::fs::create_dir_all(&dir).ok()?;
        // This writer's own temporary name (threads and processes may materialize at once),
        // linked into place only if no other writer got there first: a store someone already
        // opened is never replaced under them.
        static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            "descriptions.sqlite.{}-{n}.partial",
            std::process::id()
        ));
        std::fs::write(&tmp, STORE[0].1).ok()?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        if linked.is_err() && !path.exists() {
            return None;
        }
    }
    Some(path)
}

const STORE: [(&str, &[u8]); 1] = [(
    "descriptions.sqlite",
    include_bytes!("../sample_models/shakespeare-gpt2-relu/descriptions.sqlite"),
)];

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_model_is_written_once_and_opens() {
        let dir = super::path().unwrap();
        let model = crate::model::open(&dir).unwrap();
        assert_eq!(model.info.architecture, "gpt2");
        assert_eq!(super::path().unwrap(), dir);
    }

    #[test]
    fn the_embedded_sae_fits_the_sample_model_and_is_attached_by_default() {
        let model = crate::model::open(super::path().unwrap()).unwrap();
        let sae_dir = super::sae_path().unwrap();
        let sae = crate::sae::open(&sae_dir).unwrap();
        sae.check_fits(&model.transformer, "sample").unwrap();
        assert_eq!(super::default_saes(&super::path().unwrap()), vec![sae_dir]);
        assert!(super::default_saes(std::path::Path::new("/elsewhere")).is_empty());
    }
}
