//! The sample model embedded in the binary: a 2-layer ReLU GPT-2 trained on Shakespeare by
//! `dendrite train-sample` (see `sample_models/shakespeare-gpt2-relu/README.md`). The app opens
//! it when no other model is given; its files are written once to the cache directory so it
//! opens through the ordinary HF-directory path.

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

/// A short fingerprint of the embedded files, so a new build never reuses old files.
fn fingerprint() -> String {
    // FNV-1a over every byte: fast enough for a few MB once per launch.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, bytes) in FILES {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
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
    // A folder per build's files, holding one named after the model (the app shows the name).
    let dir = cache_root()
        .join(format!("sample-{}", fingerprint()))
        .join(NAME);
    let complete = FILES.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    });
    if !complete {
        std::fs::create_dir_all(&dir).ok()?;
        for (name, bytes) in FILES {
            // Write then rename, so a crash never leaves a truncated file behind.
            let tmp = dir.join(format!("{name}.partial"));
            std::fs::write(&tmp, bytes).ok()?;
            std::fs::rename(&tmp, dir.join(name)).ok()?;
        }
    }
    Some(dir)
}

/// SAEs the app attaches when it opens `model`: the sample SAE for the sample model.
pub fn default_saes(model: &std::path::Path) -> Vec<PathBuf> {
    let is_sample = path().is_some_and(|p| p == model);
    let sae = crate::sample::sae_path();
    match (is_sample, sae) {
        (true, Some(sae)) => vec![sae],
        _ => Vec::new(),
    }
}

/// The sample SAE (not shipped yet).
pub fn sae_path() -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_model_is_written_once_and_opens() {
        let dir = super::path().unwrap();
        let model = crate::model::open(&dir).unwrap();
        assert_eq!(model.info.architecture, "gpt2");
        assert_eq!(super::path().unwrap(), dir);
    }
}
