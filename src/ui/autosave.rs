//! Crash recovery: every change to the session is written, debounced, to this process's own
//! recovery file (`session-<pid>.dendrite` in the recovery folder) by a named thread, atomically
//! (temporary file + rename, see [`crate::export::write_atomically`]). While the app runs it holds an
//! exclusive lock on `session-<pid>.lock`; a recovery file whose lock nobody holds belongs to a
//! process that died (a crash, `kill -9`), and the next launch offers to restore it. A clean exit
//! moves the file to `last.dendrite` (*Open last session*).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::session::{self, SessionFile};

/// Quiet time after a change before it is written (a slider drag writes once it rests) ...
const DEBOUNCE: Duration = Duration::from_millis(500);
/// ... but never longer than this behind while changes keep coming.
const MAX_DELAY: Duration = Duration::from_secs(3);

/// The session a clean exit leaves behind.
pub const LAST_SESSION: &str = "last.dendrite";

/// Where recovery files go: `DENDRITE_RECOVERY_DIR`, else `recovery` in the app's data folder.
pub fn default_dir() -> Option<PathBuf> {
    match std::env::var_os("DENDRITE_RECOVERY_DIR") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => eframe::storage_dir("Dendrite").map(|d| d.join("recovery")),
    }
}

/// A session another process left behind when it died.
#[derive(Clone, Debug, PartialEq)]
pub struct Orphan {
    pub path: PathBuf,
    pub modified: SystemTime,
    pub session: SessionFile,
}

/// Recovery files in `dir` whose process is gone, newest first (unreadable ones are skipped:
/// a file cut off mid-write cannot happen with atomic writes, but a foreign file can).
pub fn orphans(dir: &Path) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Orphan> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("session-") && n.ends_with(".dendrite"))
        })
        .filter(|p| !held(&p.with_extension("lock")))
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            let session = session::read(&path).ok()?;
            Some(Orphan {
                path,
                modified,
                session,
            })
        })
        .collect();
    found.sort_by_key(|o| std::cmp::Reverse(o.modified));
    found
}

/// Whether a running process holds the lock file at `path`.
fn held(path: &Path) -> bool {
    let Ok(file) = File::options().read(true).write(true).open(path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Moves an orphan out of the way once the user has restored or discarded it (to
/// `previous.dendrite`, so a discard can still be opened by hand), with its lock file.
pub fn retire(orphan: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(orphan.with_extension("lock"));
    let dir = orphan.parent().unwrap_or(Path::new("."));
    std::fs::rename(orphan, dir.join("previous.dendrite"))
}

enum Job {
    Write(Vec<u8>),
    /// Moves the recovery file to [`LAST_SESSION`] and stops.
    Finish,
}

/// This process's recovery file and the thread that writes it.
pub struct Autosave {
    file: PathBuf,
    /// Held for the process's life: tells other launches this file is not an orphan.
    _lock: File,
    jobs: Option<Sender<Job>>,
    errors: Receiver<String>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What was last handed to the writer, and when the session first differed from it.
    written: Option<SessionFile>,
    changed_since: Option<Instant>,
    last_seen: Option<SessionFile>,
    last_change: Instant,
}

impl Autosave {
    /// Takes this process's recovery file in `dir` (created if needed) and starts the writer.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pid = std::process::id();
        let lock_path = dir.join(format!("session-{pid}.lock"));
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.try_lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let file = dir.join(format!("session-{pid}.dendrite"));
        let (jobs, inbox) = crossbeam_channel::unbounded::<Job>();
        let (report, errors) = crossbeam_channel::bounded(8);
        let target = file.clone();
        let last = dir.join(LAST_SESSION);
        let thread = std::thread::Builder::new()
            .name("dendrite-autosave".into())
            .spawn(move || writer(&target, &last, &inbox, &report))
            .context("starting the autosave thread")?;
        Ok(Autosave {
            file,
            _lock: lock,
            jobs: Some(jobs),
            errors,
            thread: Some(thread),
            written: None,
            changed_since: None,
            last_seen: None,
            last_change: Instant::now(),
        })
    }

    /// This process's recovery file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Called every frame with the session as it stands: hands it to the writer once it has
    /// rested for [`DEBOUNCE`] (or changed for [`MAX_DELAY`]). Returns a write error to show.
    pub fn update(&mut self, session: SessionFile, now: Instant) -> Option<String> {
        if self.last_seen.as_ref() != Some(&session) {
            self.last_change = now;
            self.last_seen = Some(session);
        }
        let current = self.last_seen.as_ref()?;
        if self.written.as_ref() == Some(current) {
            self.changed_since = None;
        } else {
            let since = *self.changed_since.get_or_insert(now);
            let rested = now.duration_since(self.last_change) >= DEBOUNCE;
            if rested || now.duration_since(since) >= MAX_DELAY {
                let json = serde_json::to_vec_pretty(current).ok()?;
                if let Some(jobs) = &self.jobs {
                    let _ = jobs.send(Job::Write(json));
                }
                self.written = Some(current.clone());
                self.changed_since = None;
            }
        }
        self.errors.try_recv().ok()
    }

    /// Whether a change is waiting to be written (the app keeps repainting until it is).
    pub fn pending(&self) -> bool {
        self.last_seen.is_some() && self.written != self.last_seen
    }
}

impl Drop for Autosave {
    /// A clean exit: what is waiting is written, and the file becomes [`LAST_SESSION`].
    fn drop(&mut self) {
        if let (Some(current), Some(jobs)) = (&self.last_seen, &self.jobs)
            && self.written.as_ref() != Some(current)
            && let Ok(json) = serde_json::to_vec_pretty(current)
        {
            let _ = jobs.send(Job::Write(json));
        }
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.send(Job::Finish);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(self.file.with_extension("lock"));
    }
}

/// The writer thread: writes the newest waiting session, skipping older ones.
fn writer(target: &Path, last: &Path, inbox: &Receiver<Job>, report: &Sender<String>) {
    while let Ok(first) = inbox.recv() {
        let (mut newest, mut finish) = (None, false);
        for job in std::iter::once(first).chain(inbox.try_iter()) {
            match job {
                Job::Write(bytes) => newest = Some(bytes),
                Job::Finish => finish = true,
            }
        }
        if let Some(bytes) = newest
            && let Err(e) = crate::export::write_atomically(target, &bytes)
        {
            let _ = report.try_send(format!("Autosave failed: {e:#}"));
        }
        if finish {
            if target.exists() {
                let _ = std::fs::rename(target, last);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::state::AppState;

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Changes are written once they rest, the file is this process's and not an orphan while
    /// it runs, and a clean exit leaves it as the last session.
    #[test]
    fn changes_are_written_after_a_rest_and_a_clean_exit_keeps_the_last_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = AppState::default();
        state.prompt = "first".into();
        let mut autosave = Autosave::start(dir.path()).unwrap();
        let t0 = Instant::now();
        assert_eq!(autosave.update(state.session(), t0), None);
        // Still changing: nothing written before the rest.
        state.prompt = "second".into();
        autosave.update(state.session(), t0 + Duration::from_millis(100));
        assert!(autosave.pending());
        assert!(!autosave.path().exists());
        autosave.update(state.session(), t0 + Duration::from_millis(700));
        assert!(!autosave.pending());
        let file = autosave.path().to_path_buf();
        wait_for("the recovery file", || {
            session::read(&file).is_ok_and(|s| s.prompt == "second")
        });
        assert!(
            orphans(dir.path()).is_empty(),
            "a live process's file is no orphan"
        );
        // A change that never rested is still written on a clean exit.
        state.prompt = "third".into();
        autosave.update(state.session(), t0 + Duration::from_millis(800));
        drop(autosave);
        assert!(!file.exists());
        let last = session::read(&dir.path().join(LAST_SESSION)).unwrap();
        assert_eq!(last.prompt, "third");
        assert!(orphans(dir.path()).is_empty());
    }

    /// A recovery file whose lock nobody holds is an orphan; retiring it moves it aside.
    #[test]
    fn a_file_without_its_process_is_an_orphan_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = AppState::default();
        state.prompt = "lost work".into();
        let orphan = dir.path().join("session-999999.dendrite");
        session::write(&orphan, &state.session()).unwrap();
        std::fs::write(dir.path().join("session-999999.lock"), b"").unwrap();
        std::fs::write(dir.path().join("session-1.dendrite"), b"{not json").unwrap();
        let found = orphans(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].session.prompt, "lost work");
        retire(&found[0].path).unwrap();
        assert!(orphans(dir.path()).is_empty());
        assert!(dir.path().join("previous.dendrite").exists());
    }
}
