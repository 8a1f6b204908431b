//! The corpus stores as the window sees them: which are open for the current model, the unit
//! reports the inspector shows (a small cache), the search box and its results, and the
//! stores remembered per model fingerprint. Pure state: [`StoresState::apply`] takes the store
//! reader's events; every method that needs the reader returns the requests it should get (the
//! app state hands them on as [`super::Effect::Store`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::worker::stores::{
    ReportReady, SearchResults, StoreCommand, StoreEvent, StoreSummary, UnitRef,
};

/// Reports kept for units the user has looked at (reselecting one shows it at once).
const REPORTS_KEPT: usize = 16;
/// Search results asked for.
pub const SEARCH_LIMIT: usize = 50;

/// An import the store refused until the user confirms it.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedImport {
    pub file: PathBuf,
    pub source: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoresState {
    /// Stores open for the current model, in the order they opened.
    pub open: Vec<StoreSummary>,
    /// Reports received, oldest first.
    pub reports: Vec<ReportReady>,
    /// Units whose reports were asked for and have not arrived.
    pub requested: BTreeSet<UnitRef>,
    pub search_query: String,
    pub search: Option<SearchResults>,
    pub refused_import: Option<RefusedImport>,
    /// Store paths by the fingerprint of the model they were scanned from.
    pub remembered: BTreeMap<String, Vec<PathBuf>>,
}

/// What a store event changed that the window must act on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreUpdate {
    /// A one-line notice to show.
    pub notice: Option<String>,
    /// A request for the store reader (a search to run again).
    pub request: Option<StoreCommand>,
}

impl StoresState {
    /// Every remembered store (the reader opens those of the model it is given).
    pub fn remembered_paths(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.remembered.values().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    /// A new model: nothing of the old one's stores stays.
    pub fn model_changed(&mut self) {
        self.open.clear();
        self.reports.clear();
        self.requested.clear();
        self.search = None;
        self.refused_import = None;
    }

    /// The newest open store that has `source` (the one the store reader answers from).
    pub fn store_with(&self, source: &str) -> Option<PathBuf> {
        self.open
            .iter()
            .rev()
            .find(|s| s.sources.iter().any(|x| x.name == source))
            .map(|s| s.path.clone())
    }

    pub fn has_source(&self, source: &str) -> bool {
        self.open
            .iter()
            .any(|s| s.sources.iter().any(|x| x.name == source))
    }

    pub fn report(&self, unit: &UnitRef) -> Option<&ReportReady> {
        self.reports.iter().rev().find(|r| &r.unit == unit)
    }

    /// The unit's best description, for tooltips.
    /// (From the newest store that has the unit's source, as the store reader answers.)
    pub fn description(&self, unit: &UnitRef) -> Option<&str> {
        self.open
            .iter()
            .rev()
            .find(|s| s.sources.iter().any(|x| x.name == unit.source))?
            .descriptions
            .get(unit)
            .map(String::as_str)
    }

    /// The description as a tooltip's extra line ("" when the unit has none).
    pub fn description_line(&self, unit: &UnitRef) -> String {
        self.description(unit)
            .map(|d| format!("\n“{d}”"))
            .unwrap_or_default()
    }

    /// Asks for the reports of `units` that some open store has and that are neither here
    /// nor on their way.
    pub fn request(&mut self, units: &[UnitRef]) -> Vec<StoreCommand> {
        let mut requests = Vec::new();
        for unit in units {
            if self.has_source(&unit.source)
                && self.report(unit).is_none()
                && !self.requested.contains(unit)
            {
                self.requested.insert(unit.clone());
                requests.push(StoreCommand::Report(unit.clone()));
            }
        }
        requests
    }

    /// Sets the search box's query; returns the search to run (none for an empty query).
    pub fn search(&mut self, query: String) -> Option<StoreCommand> {
        self.search_query = query.clone();
        if query.trim().is_empty() {
            self.search = None;
            return None;
        }
        Some(StoreCommand::Search {
            query,
            limit: SEARCH_LIMIT,
        })
    }

    /// Applies a store reader event (errors go to the caller's error list through
    /// [`StoreEvent::Error`]).
    pub fn apply(&mut self, event: StoreEvent) -> StoreUpdate {
        let notice = |notice: String| StoreUpdate {
            notice: Some(notice),
            request: None,
        };
        match event {
            StoreEvent::Opened(summary) => {
                let path = summary.path.clone();
                let known = self
                    .remembered
                    .entry(summary.scan.model_fingerprint.clone())
                    .or_default();
                if !known.contains(&path) {
                    known.push(path.clone());
                }
                let message = format!(
                    "Opened store {} ({} tokens of {}, {} sources)",
                    path.display(),
                    summary.scan.tokens_scanned,
                    summary.scan.corpus_path,
                    summary.sources.len()
                );
                self.open.retain(|s| s.path != path);
                self.open.push(summary);
                // Units that had no store may have one now.
                self.reports.retain(|r| r.report.is_some());
                notice(message)
            }
            StoreEvent::Closed { path } => {
                self.open.retain(|s| s.path != path);
                self.reports.clear();
                for paths in self.remembered.values_mut() {
                    paths.retain(|p| p != &path);
                }
                StoreUpdate::default()
            }
            StoreEvent::Report(r) => {
                self.requested.remove(&r.unit);
                self.reports.retain(|x| x.unit != r.unit);
                self.reports.push(r);
                if self.reports.len() > REPORTS_KEPT {
                    self.reports.remove(0);
                }
                StoreUpdate::default()
            }
            StoreEvent::Search(results) => {
                if results.query == self.search_query {
                    self.search = Some(results);
                }
                StoreUpdate::default()
            }
            StoreEvent::Described { summary, message } => {
                // Descriptions changed: reports read before are stale.
                self.reports.clear();
                self.refused_import = None;
                match self.open.iter_mut().find(|s| s.path == summary.path) {
                    Some(s) => *s = summary,
                    None => self.open.push(summary),
                }
                StoreUpdate {
                    notice: Some(message),
                    request: self.search(self.search_query.clone()),
                }
            }
            StoreEvent::ImportRefused {
                file,
                source,
                message,
            } => {
                self.refused_import = Some(RefusedImport {
                    file,
                    source,
                    message,
                });
                StoreUpdate::default()
            }
            StoreEvent::Error { .. } => {
                // A failed report is not retried on every frame: forget the requests.
                self.requested.clear();
                StoreUpdate::default()
            }
        }
    }
}

/// The store source of layer `layer`'s MLP neurons.
pub fn neuron_source(layer: usize) -> String {
    format!("blocks.{layer}.mlp.hook_post")
}

/// The layer of an MLP-neuron source (`blocks.3.mlp.hook_post` → 3).
pub fn neuron_layer(source: &str) -> Option<usize> {
    source
        .strip_prefix("blocks.")?
        .strip_suffix(".mlp.hook_post")?
        .parse()
        .ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::describe::store::{ScanRecord, SourceInfo};
    use std::collections::HashMap;
    use std::sync::Arc;

    /// A store of layer 0's neurons (other tests use it too).
    pub(crate) fn summary(path: &str, fingerprint: &str) -> StoreSummary {
        StoreSummary {
            path: path.into(),
            scan: ScanRecord {
                model_name: "m".into(),
                model_path: "/m".into(),
                model_fingerprint: fingerprint.into(),
                corpus_path: "c.txt".into(),
                corpus_fingerprint: "c".into(),
                context: 64,
                top_k: 32,
                per_quantile: 5,
                bos_id: None,
                max_tokens: None,
                shard_index: 0,
                shard_count: 1,
                seed: 0,
                params: "{}".into(),
                next_window: 0,
                windows_scanned: 1,
                tokens_scanned: 64,
                complete: true,
                started_at: String::new(),
                updated_at: String::new(),
            },
            sources: vec![SourceInfo {
                name: neuron_source(0),
                kind: "hook".into(),
                hook: neuron_source(0),
                width: 8,
                sae_path: None,
            }],
            descriptions: Arc::new(HashMap::from([(
                unit(0, 3),
                "closing brackets".to_string(),
            )])),
        }
    }

    fn unit(layer: usize, u: usize) -> UnitRef {
        UnitRef {
            source: neuron_source(layer),
            unit: u,
        }
    }

    #[test]
    fn reports_are_asked_for_once_and_only_where_a_store_has_the_source() {
        let mut s = StoresState::default();
        assert!(s.request(&[unit(0, 1)]).is_empty(), "no store open yet");
        s.apply(StoreEvent::Opened(summary("/a.sqlite", "fp")));
        assert_eq!(s.remembered["fp"], vec![PathBuf::from("/a.sqlite")]);
        assert_eq!(
            s.request(&[unit(0, 1), unit(1, 1)]),
            vec![StoreCommand::Report(unit(0, 1))]
        );
        assert!(s.request(&[unit(0, 1)]).is_empty(), "on its way");
        s.apply(StoreEvent::Report(ReportReady {
            unit: unit(0, 1),
            report: None,
            store: None,
            duration_ms: 1.0,
        }));
        assert!(s.requested.is_empty());
        assert!(s.request(&[unit(0, 1)]).is_empty(), "cached");
        assert_eq!(s.description(&unit(0, 3)), Some("closing brackets"));
        assert_eq!(s.description(&unit(0, 4)), None);
    }

    #[test]
    fn described_units_drop_stale_reports_and_refresh_the_search() {
        let mut s = StoresState::default();
        s.apply(StoreEvent::Opened(summary("/a.sqlite", "fp")));
        s.apply(StoreEvent::Report(ReportReady {
            unit: unit(0, 1),
            report: None,
            store: None,
            duration_ms: 1.0,
        }));
        assert!(s.search("brackets".into()).is_some());
        let update = s.apply(StoreEvent::Described {
            summary: summary("/a.sqlite", "fp"),
            message: "Saved".into(),
        });
        assert_eq!(update.notice.as_deref(), Some("Saved"));
        assert!(s.reports.is_empty());
        assert_eq!(
            update.request,
            Some(StoreCommand::Search {
                query: "brackets".into(),
                limit: SEARCH_LIMIT
            })
        );
        // Late results of an older query are dropped.
        s.apply(StoreEvent::Search(SearchResults {
            query: "old".into(),
            hits: vec![],
            token_hits: vec![],
        }));
        assert!(s.search.is_none());
    }

    #[test]
    fn neuron_sources_name_their_layer() {
        assert_eq!(neuron_layer(&neuron_source(12)), Some(12));
        assert_eq!(neuron_layer("blocks.x.mlp.hook_post"), None);
        assert_eq!(neuron_layer("sae:foo"), None);
    }
}
