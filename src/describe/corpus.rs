//! Corpora for a scan: a UTF-8 `.txt` file (one document), a `.jsonl` file of `{"text": …}`
//! rows (a document each), or a folder of those, read recursively in path order. Each document
//! is tokenized on its own and cut into consecutive windows (`definitions.md` §11).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::model::Tokenizer;

/// The files of a corpus, in the order their documents are numbered.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    /// sha256 over every file's path (relative to the root) and bytes.
    pub fingerprint: String,
    pub total_bytes: u64,
}

fn is_corpus_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("txt" | "jsonl")
    )
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading folder {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if is_corpus_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Corpus {
    /// Lists and fingerprints the corpus at `path` (reads every byte once, holds none).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "corpus {} does not exist (a .txt or .jsonl file, or a folder of them)",
                path.display()
            );
        }
        let mut files = Vec::new();
        if path.is_dir() {
            collect_files(path, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!(
                    "corpus folder {} holds no .txt or .jsonl files",
                    path.display()
                );
            }
        } else {
            files.push(path.to_path_buf());
        }
        let mut hasher = Sha256::new();
        let mut total_bytes = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for file in &files {
            let rel = file.strip_prefix(path).unwrap_or(file);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0u8]);
            let mut f = std::fs::File::open(file)
                .with_context(|| format!("opening corpus file {}", file.display()))?;
            loop {
                let n = f
                    .read(&mut buf)
                    .with_context(|| format!("reading corpus file {}", file.display()))?;
                if n == 0 {
                    break;
                }
                total_bytes += n as u64;
                hasher.update(&buf[..n]);
            }
            hasher.update([0u8]);
        }
        if total_bytes == 0 {
            bail!("corpus {} is empty", path.display());
        }
        Ok(Corpus {
            root: path.to_path_buf(),
            files,
            fingerprint: format!("{:x}", hasher.finalize()),
            total_bytes,
        })
    }

    /// The documents of file `index`, in order.
    pub fn documents(&self, index: usize) -> Result<Vec<String>> {
        let path = &self.files[index];
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading corpus file {}", path.display()))?;
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => bail!(
                "corpus file {} is not UTF-8: invalid byte at offset {}",
                path.display(),
                e.valid_up_to()
            ),
        };
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            return Ok(vec![text.to_string()]);
        }
        let mut docs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), n + 1))?;
            match row.get("text") {
                Some(serde_json::Value::String(t)) => docs.push(t.clone()),
                _ => bail!(
                    "{}:{}: expected an object with a \"text\" string",
                    path.display(),
                    n + 1
                ),
            }
        }
        Ok(docs)
    }
}

/// One window of a scan: `ids` (BOS first when the scan adds one) and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Numbered from 0 in corpus order, over every shard.
    pub index: u64,
    /// Document number in corpus order.
    pub doc: u64,
    /// Offset of the window's first corpus token within its document's tokens.
    pub doc_offset: u64,
    pub ids: Vec<u32>,
}

/// Which windows a scan takes: every `count`-th starting at `index` (`--shard I/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("\"{s}\": expected I/N, e.g. 0/4"))?;
        let index: u64 = i.trim().parse().map_err(|_| format!("\"{s}\": bad I"))?;
        let count: u64 = n.trim().parse().map_err(|_| format!("\"{s}\": bad N"))?;
        if count == 0 || index >= count {
            return Err(format!("\"{s}\": need 0 ≤ I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn takes(&self, window: u64) -> bool {
        window % self.count == self.index
    }
}

/// Yields a corpus's windows in order: documents tokenized one at a time with no special
/// tokens, cut into consecutive windows of `body` tokens (a final partial window is dropped),
/// each after `prefix` (the BOS or nothing).
pub struct Windows<'a> {
    corpus: &'a Corpus,
    tokenizer: &'a Tokenizer,
    prefix: Vec<u32>,
    body: usize,
    /// Windows numbered at or above this are not produced (`--tokens`).
    end: Option<u64>,
    file: usize,
    docs: std::vec::IntoIter<String>,
    doc: u64,
    pending: std::collections::VecDeque<Window>,
    next_index: u64,
}

impl<'a> Windows<'a> {
    pub fn new(
        corpus: &'a Corpus,
        tokenizer: &'a Tokenizer,
        prefix: Vec<u32>,
        body: usize,
        max_corpus_tokens: Option<u64>,
    ) -> Self {
        Windows {
            corpus,
            tokenizer,
            prefix,
            body,
            end: max_corpus_tokens.map(|n| n / body.max(1) as u64),
            file: 0,
            docs: Vec::new().into_iter(),
            doc: 0,
            pending: Default::default(),
            next_index: 0,
        }
    }

    /// Windows the scan covers at most (when `--tokens` bounds it).
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// Corpus files read so far.
    pub fn files_done(&self) -> usize {
        self.file
    }

    /// The next window, or `None` after the last.
    pub fn next_window(&mut self) -> Result<Option<Window>> {
        loop {
            if self.end.is_some_and(|end| self.next_index >= end) {
                return Ok(None);
            }
            if let Some(w) = self.pending.pop_front() {
                self.next_index = w.index + 1;
                return Ok(Some(w));
            }
            let Some(text) = self.docs.next() else {
                if self.file == self.corpus.files.len() {
                    return Ok(None);
                }
                self.docs = self.corpus.documents(self.file)?.into_iter();
                self.file += 1;
                continue;
            };
            let doc = self.doc;
            self.doc += 1;
            let ids = self.tokenizer.encode(&text, false)?;
            let first = self.next_index + self.pending.len() as u64;
            for (index, (k, chunk)) in (first..).zip(ids.chunks_exact(self.body).enumerate()) {
                let mut w = self.prefix.clone();
                w.extend_from_slice(chunk);
                self.pending.push_back(Window {
                    index,
                    doc,
                    doc_offset: (k * self.body) as u64,
                    ids: w,
                });
            }
        }
    }
}

/// Streams a file's bytes into a hash: a model's identity for a store is its size and the hash
/// of its first MiB (the header, which names and places every tensor).
pub fn model_fingerprint(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if path.is_dir() {
        for name in ["config.json", "tokenizer.json"] {
            files.push(path.join(name));
        }
        let mut weights: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
            .collect();
        weights.sort();
        files.extend(weights);
    } else {
        files.push(path.to_path_buf());
    }
    let mut total = 0u64;
    for file in files.iter().filter(|f| f.exists()) {
        let mut f =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let size = f
            .metadata()
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        total += size;
        let mut head = Vec::with_capacity(1 << 20);
        (&mut f)
            .take(1 << 20)
            .read_to_end(&mut head)
            .with_context(|| format!("reading {}", file.display()))?;
        hasher.update(size.to_le_bytes());
        hasher.update(&head);
    }
    Ok(format!("{total}-{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        let s: Shard = "1/3".parse().unwrap();
        assert!(s.takes(1) && s.takes(4) && !s.takes(3));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn non_utf8_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"hello \xff world").unwrap();
        let corpus = Corpus::open(&path).unwrap();
        let err = corpus.documents(0).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("offset 6"), "{err}");
    }

    #[test]
    fn folders_are_read_recursively_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/x.txt"), "second").unwrap();
        std::fs::write(
            dir.path().join("a.jsonl"),
            "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.bin"), "zzz").unwrap();
        let corpus = Corpus::open(dir.path()).unwrap();
        assert_eq!(corpus.files.len(), 2);
        assert_eq!(corpus.documents(0).unwrap(), vec!["one", "two"]);
        assert_eq!(corpus.documents(1).unwrap(), vec!["second"]);
        std::fs::write(dir.path().join("c.jsonl"), "{\"txt\": 1}\n").unwrap();
        let corpus = Corpus::open(dir.path()).unwrap();
        let err = corpus.documents(2).unwrap_err().to_string();
        assert!(err.contains("c.jsonl:1"), "{err}");
    }

    #[test]
    fn empty_corpora_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Corpus::open(dir.path()).is_err());
        std::fs::write(dir.path().join("e.txt"), "").unwrap();
        let err = Corpus::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
