//! Shared by the targets: the fuzzer's bytes written as one file of a real fixture folder.

use std::path::{Path, PathBuf};

/// `tests/fixtures/<dir>`, copied into a fresh temporary folder with `file` replaced by
/// `data`; returns the folder (kept alive by the guard).
pub fn fixture_with(dir: &str, file: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(dir);
    let tmp = tempfile::tempdir().expect("a temporary folder");
    if let Ok(entries) = std::fs::read_dir(&src) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let _ = std::fs::copy(&path, tmp.path().join(entry.file_name()));
            }
        }
    }
    std::fs::write(tmp.path().join(file), data).expect("writing the input");
    let path = tmp.path().to_path_buf();
    (tmp, path)
}
