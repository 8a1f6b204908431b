//! The corpus stores as the window sees them: which are open for the current model, the unit
//! reports the inspector shows (a small cache), the search box and its results, and the
//! stores remembered per model fingerprint. Pure state: [`StoresState::apply`] takes the store
//! reader's events, and requests for it wait in [`StoresState::outbox`] until the app sends
//! them.

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
    /// Requests for the store reader, sent by the app after each action.
    pub outbox: Vec<StoreCommand>,
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
    pub fn request(&mut self, units: &[UnitRef]) {
        for unit in units {
            if self.has_source(&unit.source)
                && self.report(unit).is_none()
                && !self.requested.contains(unit)
            {
                self.requested.insert(unit.clone());
                self.outbox.push(StoreCommand::Report(unit.clone()));
            }
        }
    }

    pub fn search(&mut self, query: String) {
        self.search_query = query.clone();
        if query.trim().is_empty() {
            self.search = None;
            return;
        }
        self.outbox.push(StoreCommand::Search {
            query,
            limit: SEARCH_LIMIT,
        });
    }

    /// Applies a store reader event; returns a notice to show, if any (errors go to the
    /// caller's error list through [`StoreEvent::Error`]).
    pub fn apply(&mut self, event: StoreEvent) -> Option<String> {
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
                let notice = format!(
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
                Some(notice)
            }
            StoreEvent::Closed { path } => {
                self.open.retain(|s| s.path != path);
                self.reports.clear();
                for paths in self.remembered.values_mut() {
                    paths.retain(|p| p != &path);
                }
                None
            }
            StoreEvent::Report(r) => {
                self.requested.remove(&r.unit);
                self.reports.retain(|x| x.unit != r.unit);
                self.reports.push(r);
                if self.reports.len() > REPORTS_KEPT {
                    self.reports.remove(0);
                }
                None
            }
            StoreEvent::Search(results) => {
                if results.query == self.search_query {
                    self.search = Some(results);
                }
                None
            }
            StoreEvent::Described { summary, message } => {
                // Descriptions changed: reports read before are stale.
                self.reports.clear();
                self.refused_import = None;
                match self.open.iter_mut().find(|s| s.path == summary.path) {
                    Some(s) => *s = summary,
                    None => self.open.push(summary),
                }
                if !self.search_query.trim().is_empty() {
                    let q = self.search_query.clone();
                    self.search(q);
                }
                Some(message)
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
                None
            }
            StoreEvent::Error { .. } => {
                // A failed report is not retried on every frame: forget the requests.
                self.requested.clear();
                None
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
        s.request(&[unit(0, 1)]);
        assert!(s.outbox.is_empty(), "no store open yet");
        s.apply(StoreEvent::Opened(summary("/a.sqlite", "fp")));
        assert_eq!(s.remembered["fp"], vec![PathBuf::from("/a.sqlite")]);
        s.request(&[unit(0, 1), unit(1, 1)]);
        s.request(&[unit(0, 1)]);
        assert_eq!(s.outbox, vec![StoreCommand::Report(unit(0, 1))]);
        s.apply(StoreEvent::Report(ReportReady {
            unit: unit(0, 1),
            report: None,
            store: None,
            duration_ms: 1.0,
        }));
        assert!(s.requested.is_empty());
        s.outbox.clear();
        s.request(&[unit(0, 1)]);
        assert!(s.outbox.is_empty(), "cached");
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
        s.search("brackets".into());
        s.outbox.clear();
        let notice = s.apply(StoreEvent::Described {
            summary: summary("/a.sqlite", "fp"),
            message: "Saved".into(),
        });
        assert_eq!(notice.as_deref(), Some("Saved"));
        assert!(s.reports.is_empty());
        assert_eq!(
            s.outbox,
            vec![StoreCommand::Search {
                query: "brackets".into(),
                limit: SEARCH_LIMIT
            }]
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
