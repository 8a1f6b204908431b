//! The store reader: a named thread that owns the open corpus stores (`describe::Store`) and
//! answers the app's [`StoreCommand`]s with [`StoreEvent`]s over bounded channels, so reading a
//! unit's examples or searching never waits for a model pass (or blocks a frame). Dropping the
//! [`StoreHandle`] stops and joins the thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::Wake;
use crate::describe::explanations;
use crate::describe::store::{ScanRecord, SearchHit, SourceInfo, TokenHit};
use crate::describe::{Store, UnitReport};

/// A unit of a store: its source (`blocks.3.mlp.hook_post`, `sae:<folder>`) and index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitRef {
    pub source: String,
    pub unit: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreCommand {
    /// The model `model` was opened: open the stores among `remembered` that belong to it
    /// (quietly skipping the others).
    ModelOpened {
        model: PathBuf,
        remembered: Vec<PathBuf>,
    },
    /// Open a store the user chose for `model` (refused, with a reason, if it is another
    /// model's).
    Open {
        path: PathBuf,
        model: PathBuf,
    },
    Close {
        path: PathBuf,
    },
    /// A unit's report from the first open store that has its source.
    Report(UnitRef),
    Search {
        query: String,
        limit: usize,
    },
    SetDescription {
        unit: UnitRef,
        text: String,
    },
    /// Import an explanation file into `source` of the store that has it.
    Import {
        file: PathBuf,
        source: String,
        force: bool,
    },
}

/// What the store reader knows about one open store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSummary {
    pub path: PathBuf,
    pub scan: ScanRecord,
    pub sources: Vec<SourceInfo>,
    /// The best description of every described unit (the user's first, then by score), for
    /// tooltips in the maps.
    pub descriptions: Arc<HashMap<UnitRef, String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportReady {
    pub unit: UnitRef,
    /// `None` when no open store has the unit's source.
    pub report: Option<Arc<UnitReport>>,
    pub store: Option<PathBuf>,
    pub duration_ms: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchResults {
    pub query: String,
    pub hits: Vec<SearchHit>,
    /// Units whose top examples peak on a token spelled like the query.
    pub token_hits: Vec<TokenHit>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    Opened(StoreSummary),
    Closed {
        path: PathBuf,
    },
    Report(ReportReady),
    Search(SearchResults),
    /// A description was saved or explanations imported: the store's descriptions changed.
    Described {
        summary: StoreSummary,
        message: String,
    },
    /// An import that needs the user's confirmation (another model's file, indices beyond
    /// the source); [`StoreCommand::Import`] with `force` imports it.
    ImportRefused {
        file: PathBuf,
        source: String,
        message: String,
    },
    Error {
        context: String,
        message: String,
    },
}

const COMMAND_CAPACITY: usize = 64;
const EVENT_CAPACITY: usize = 256;

pub struct StoreHandle {
    commands: Sender<StoreCommand>,
    events: Option<Receiver<StoreEvent>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreHandle {
    pub fn spawn(wake: impl Wake) -> std::io::Result<Self> {
        let (command_tx, command_rx) = bounded::<StoreCommand>(COMMAND_CAPACITY);
        let (event_tx, event_rx) = bounded::<StoreEvent>(EVENT_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("dendrite-stores".into())
            .spawn(move || {
                let mut reader = Reader::default();
                serve(&mut reader, command_rx, event_tx, wake)
            })?;
        Ok(StoreHandle {
            commands: command_tx,
            events: Some(event_rx),
            thread: Some(thread),
        })
    }

    /// Queues a command; false if the thread has stopped.
    pub fn send(&self, command: StoreCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    pub fn try_recv(&self) -> Option<StoreEvent> {
        self.events.as_ref()?.try_recv().ok()
    }

    /// The event channel (tests block on it with a timeout).
    pub fn events(&self) -> Option<&Receiver<StoreEvent>> {
        self.events.as_ref()
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        // Closing the event channel makes the thread's next send fail; dropping the command
        // sender (after this) ends its receive loop.
        self.events.take();
        let (dead, _) = bounded(0);
        drop(std::mem::replace(&mut self.commands, dead));
        if let Some(thread) = self.thread.take() {
            super::join_within(thread, "the store reader");
        }
    }
}

fn serve(
    reader: &mut Reader,
    commands: Receiver<StoreCommand>,
    events: Sender<StoreEvent>,
    wake: impl Wake,
) {
    loop {
        let Ok(first) = commands.recv() else { return };
        let mut pending = vec![first];
        while let Ok(c) = commands.try_recv() {
            pending.push(c);
        }
        for command in coalesce(pending) {
            for event in reader.handle(command) {
                if events.send(event).is_err() {
                    return;
                }
                wake.wake();
            }
        }
    }
}

/// Of waiting report requests and searches only the newest of each matter (the user has
/// moved on from the others); everything else runs in order.
fn coalesce(mut pending: Vec<StoreCommand>) -> Vec<StoreCommand> {
    let last_report = pending
        .iter()
        .rposition(|c| matches!(c, StoreCommand::Report(_)));
    let last_search = pending
        .iter()
        .rposition(|c| matches!(c, StoreCommand::Search { .. }));
    let mut i = 0;
    pending.retain(|c| {
        let keep = match c {
            StoreCommand::Report(_) => Some(i) == last_report,
            StoreCommand::Search { .. } => Some(i) == last_search,
            _ => true,
        };
        i += 1;
        keep
    });
    pending
}

/// An open store and the names of its sources (fixed once scanned; kept so finding the store
/// of a unit costs no query).
struct OpenStore {
    store: Store,
    sources: Vec<String>,
}

/// The open stores, in the order they were opened.
#[derive(Default)]
pub struct Reader {
    stores: Vec<OpenStore>,
}

fn error(context: impl Into<String>, e: anyhow::Error) -> StoreEvent {
    StoreEvent::Error {
        context: context.into(),
        message: format!("{e:#}"),
    }
}

impl Reader {
    pub fn handle(&mut self, command: StoreCommand) -> Vec<StoreEvent> {
        match command {
            StoreCommand::ModelOpened { model, remembered } => {
                self.stores.clear();
                let mut out = vec![];
                let Ok(fingerprint) = crate::describe::corpus::model_fingerprint(&model) else {
                    return out;
                };
                for path in remembered {
                    // Stores of other models are skipped quietly (they are remembered for
                    // those models), and so are stores that are gone; a store that is there
                    // but unreadable is an error the user should see.
                    if !path.exists() {
                        continue;
                    }
                    let opened = Store::open_existing(&path).and_then(|store| {
                        let scan = store.scan()?;
                        Ok((store, scan))
                    });
                    match opened {
                        Ok((store, Some(scan))) if scan.model_fingerprint == fingerprint => {
                            out.extend(self.add(store))
                        }
                        Ok(_) => {}
                        Err(e) => out.push(error(format!("opening store {}", path.display()), e)),
                    }
                }
                out
            }
            StoreCommand::Open { path, model } => {
                let context = format!("opening store {}", path.display());
                match open_for(&path, &model) {
                    Ok(store) => {
                        self.stores.retain(|s| s.store.path() != path);
                        self.add(store)
                    }
                    Err(e) => vec![error(context, e)],
                }
            }
            StoreCommand::Close { path } => {
                self.stores.retain(|s| s.store.path() != path);
                vec![StoreEvent::Closed { path }]
            }
            StoreCommand::Report(unit) => vec![self.report(unit)],
            StoreCommand::Search { query, limit } => {
                let mut hits = Vec::new();
                let mut token_hits = Vec::new();
                for OpenStore { store, .. } in &self.stores {
                    match store.search(&query, None, limit) {
                        Ok(h) => hits.extend(h),
                        Err(e) => return vec![error("searching descriptions", e)],
                    }
                    match store.search_token(&query, None, limit) {
                        Ok(h) => token_hits.extend(h),
                        Err(e) => return vec![error("searching tokens", e)],
                    }
                }
                hits.truncate(limit);
                token_hits.truncate(limit);
                vec![StoreEvent::Search(SearchResults {
                    query,
                    hits,
                    token_hits,
                })]
            }
            StoreCommand::SetDescription { unit, text } => {
                let context = format!("saving the description of {} {}", unit.source, unit.unit);
                let Some(i) = self.store_of(&unit.source) else {
                    return vec![error(
                        context,
                        anyhow::anyhow!("no open store has {}", unit.source),
                    )];
                };
                let store = &mut self.stores[i].store;
                let result = store
                    .set_user_description(&unit.source, unit.unit, &text)
                    .and_then(|()| summarize(store));
                match result {
                    Ok(summary) => vec![
                        StoreEvent::Described {
                            summary,
                            message: format!(
                                "Saved the description of {} {}",
                                unit.source, unit.unit
                            ),
                        },
                        self.report(unit),
                    ],
                    Err(e) => vec![error(context, e)],
                }
            }
            StoreCommand::Import {
                file,
                source,
                force,
            } => {
                let context = format!("importing {}", file.display());
                let Some(i) = self.store_of(&source) else {
                    return vec![error(
                        context,
                        anyhow::anyhow!("no open store has {source}"),
                    )];
                };
                let imported =
                    explanations::import(&mut self.stores[i].store, &file, &source, None, force);
                let report = match imported {
                    Ok(report) => report,
                    // Another model's file, or indices beyond the source: the user confirms.
                    Err(e) if !force && format!("{e:#}").contains("--force") => {
                        return vec![StoreEvent::ImportRefused {
                            file,
                            source,
                            message: format!("{e:#}"),
                        }];
                    }
                    Err(e) => return vec![error(context, e)],
                };
                match summarize(&self.stores[i].store) {
                    Ok(summary) => vec![StoreEvent::Described {
                        summary,
                        message: report.summary(&source),
                    }],
                    Err(e) => vec![error(context, e)],
                }
            }
        }
    }

    fn add(&mut self, store: Store) -> Vec<StoreEvent> {
        let context = format!("opening store {}", store.path().display());
        match summarize(&store) {
            Ok(summary) => {
                let sources = summary.sources.iter().map(|s| s.name.clone()).collect();
                self.stores.push(OpenStore { store, sources });
                vec![StoreEvent::Opened(summary)]
            }
            Err(e) => vec![error(context, e)],
        }
    }

    /// The store that answers for `source`: the newest opened that has it (a corpus just
    /// scanned wins over the sample store or an older scan).
    fn store_of(&self, source: &str) -> Option<usize> {
        self.stores
            .iter()
            .rposition(|s| s.sources.iter().any(|x| x == source))
    }

    fn report(&self, unit: UnitRef) -> StoreEvent {
        let started = Instant::now();
        let Some(i) = self.store_of(&unit.source) else {
            return StoreEvent::Report(ReportReady {
                unit,
                report: None,
                store: None,
                duration_ms: 0.0,
            });
        };
        let store = &self.stores[i].store;
        match store.unit_report(&unit.source, unit.unit, None) {
            Ok(report) => StoreEvent::Report(ReportReady {
                unit,
                report: Some(Arc::new(report)),
                store: Some(store.path().to_path_buf()),
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
            }),
            Err(e) => error(format!("reading {} {}", unit.source, unit.unit), e),
        }
    }
}

/// Opens `path` if it holds a scan of `model`; otherwise says whose it is.
pub fn open_for(path: &Path, model: &Path) -> anyhow::Result<Store> {
    let store = Store::open_existing(path)?;
    let scan = store.held_scan()?;
    let fingerprint = crate::describe::corpus::model_fingerprint(model)?;
    if scan.model_fingerprint != fingerprint {
        anyhow::bail!(
            "{} holds a scan of {} ({}), not of the open model {}; open that model to use it",
            path.display(),
            scan.model_name,
            scan.model_path,
            model.display()
        );
    }
    Ok(store)
}

fn summarize(store: &Store) -> anyhow::Result<StoreSummary> {
    let scan = store.held_scan()?;
    let descriptions = store
        .best_descriptions()?
        .into_iter()
        .map(|(source, unit, text)| (UnitRef { source, unit }, text))
        .collect();
    Ok(StoreSummary {
        path: store.path().to_path_buf(),
        scan,
        sources: store.sources()?,
        descriptions: Arc::new(descriptions),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_report_and_search_are_kept() {
        let r = |u| {
            StoreCommand::Report(UnitRef {
                source: "s".into(),
                unit: u,
            })
        };
        let s = |q: &str| StoreCommand::Search {
            query: q.into(),
            limit: 5,
        };
        let close = StoreCommand::Close { path: "x".into() };
        let out = coalesce(vec![r(1), s("a"), close.clone(), r(2), s("b")]);
        assert_eq!(out, vec![close, r(2), s("b")]);
    }
}
