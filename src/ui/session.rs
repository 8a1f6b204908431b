//! Session files on disk: reading (size checked before reading, version before fields) and
//! writing (atomic: a temporary file renamed over the old one, so a crash mid-write leaves
//! the previous version whole). What a session holds is [`crate::ui::state::session`].

use std::path::Path;

use anyhow::Context as _;

use crate::analysis::sparsity::Method;
pub use crate::ui::state::session::{
    EXTENSION, FORMAT_VERSION, FileRef, SavedSae, SessionFile, SessionPrompt,
};

/// Files larger than this are refused before they are read (a session is a few KiB; its
/// prompt is the only part that grows).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a session file: size checked before reading, JSON parsed, version checked.
pub fn read(path: &Path) -> anyhow::Result<SessionFile> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= MAX_FILE_BYTES,
        "{} is {size} bytes: not a Dendrite session (those are a few KiB; at most {MAX_FILE_BYTES})",
        path.display()
    );
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("reading the session {}", path.display()))
}

/// Parses a session file's bytes.
pub fn parse(bytes: &[u8]) -> anyhow::Result<SessionFile> {
    // The version first, so that a newer file says so rather than failing on a field.
    #[derive(serde::Deserialize)]
    struct Version {
        dendrite_session: u32,
    }
    let version: Version = serde_json::from_slice(bytes)
        .context("not a Dendrite session file (JSON with a \"dendrite_session\" version)")?;
    anyhow::ensure!(
        version.dendrite_session >= 1 && version.dendrite_session <= FORMAT_VERSION,
        "the session has format version {}; this Dendrite reads versions 1 to {FORMAT_VERSION} \
         (a newer Dendrite wrote it)",
        version.dendrite_session
    );
    let file: SessionFile = serde_json::from_slice(bytes).context("the session is malformed")?;
    file.sparsity
        .parse::<Method>()
        .map_err(|e| anyhow::anyhow!("the session's sparsity method: {e}"))?;
    Ok(file)
}

/// Writes `session` to `path` atomically: into a temporary file beside it, flushed to disk,
/// then renamed over `path`.
pub fn write(path: &Path, session: &SessionFile) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(session).context("writing the session as JSON")?;
    crate::export::write_atomically(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::state::session::tests::built;

    #[test]
    fn bad_session_files_are_refused_with_the_reason() {
        let file = built().session();
        let json = serde_json::to_string(&file).unwrap();
        let error = |bytes: &[u8]| format!("{:#}", parse(bytes).unwrap_err());
        assert!(error(b"").contains("not a Dendrite session"));
        assert!(error(b"\x89PNG\r\n").contains("not a Dendrite session"));
        assert!(error(&json.as_bytes()[..json.len() / 2]).contains("not a Dendrite session"));
        let newer = json.replace("\"dendrite_session\":1", "\"dendrite_session\":2");
        assert!(error(newer.as_bytes()).contains("newer Dendrite"));
        let zero = json.replace("\"dendrite_session\":1", "\"dendrite_session\":0");
        assert!(error(zero.as_bytes()).contains("version 0"));
        let method = json.replace("cett:0.2", "cett:lots");
        assert!(error(method.as_bytes()).contains("sparsity method"));
        let kind = json.replace("\"kind\":\"neuron\"", "\"kind\":\"teleport\"");
        assert!(error(kind.as_bytes()).contains("malformed"));

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.dendrite");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        assert!(format!("{:#}", read(&big).unwrap_err()).contains("not a Dendrite session"));
        assert!(read(&dir.path().join("missing.dendrite")).is_err());
    }

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.dendrite");
        let mut state = built();
        write(&path, &state.session()).unwrap();
        state.prompt = "changed".into();
        write(&path, &state.session()).unwrap();
        assert_eq!(read(&path).unwrap().prompt, "changed");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A folder that does not exist is an error, not a panic.
        assert!(write(&dir.path().join("no/such/s.dendrite"), &state.session()).is_err());
    }
}
