//! Reading a text corpus and splitting off its held-out part (SAE training and evaluation,
//! the sample model's training, corpus losses).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Text split into training and held-out parts.
pub struct Corpus {
    pub train: Vec<String>,
    pub validation: Vec<String>,
}

/// Reads `path`: a directory of `.txt` files (the sample trainer's split) or one text file (its
/// last 5%, from a line break, held out).
pub fn read_corpus(path: &Path) -> Result<Corpus> {
    if !path.exists() {
        bail!(
            "corpus {} does not exist (a .txt file or a directory of .txt files)",
            path.display()
        );
    }
    if path.is_dir() {
        let (train, validation) = read_txt_dir(path)?;
        return Ok(Corpus { train, validation });
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
    let mut cut = text.len() - text.len() / 20;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    // Start the held-out part at a line break when there is one near.
    if let Some(nl) = text[cut..].find('\n').filter(|n| *n < 2000) {
        cut += nl + 1;
    }
    let (train, validation) = text.split_at(cut);
    if train.trim().is_empty() {
        bail!("corpus {} is empty", path.display());
    }
    Ok(Corpus {
        train: vec![train.to_string()],
        validation: vec![validation.to_string()],
    })
}

/// Every `.txt` under `dir`, sorted by name: every 20th document is held out for validation.
pub fn read_txt_dir(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading corpus {} (run scripts/fetch_corpus.sh)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    if files.len() < 2 {
        bail!("corpus {} has fewer than 2 .txt files", dir.display());
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        if i % 20 == 7 {
            validation.push(text)
        } else {
            train.push(text)
        }
    }
    Ok((train, validation))
}
