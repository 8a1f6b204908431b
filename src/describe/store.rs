//! The corpus store: one SQLite file (WAL) holding a scan's parameters, the windows it read,
//! each unit's statistics and examples, and explanations. The schema is below (`SCHEMA`) and
//! in the README; `meta.schema_version` says which one a file has, and a file from a newer
//! schema is refused rather than misread.
//!
//! Units are named by source (`blocks.3.mlp.hook_post`, or `sae:<folder>` for an SAE's
//! latents) and index. Binary columns (token ids, histograms, a unit's examples) are laid out
//! as [`super::blob`] describes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use super::blob::u32_bytes;
use super::blob::{decode_counts, decode_examples, encode_counts, encode_examples, u32_from_bytes};
use super::stats::{Example, HIST_BUCKETS, Keep, N_QUANTILES, SourceStats, UnitStats};

/// Version 2 keeps a unit's examples in one row (version 1, never released, kept a row per
/// example and is refused with a request to rescan).
/// 3: explanation scores hold each scorer's headline in `score` (was `balanced_accuracy`,
/// which simulation scores are not).
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One scan per store: what was scanned, how, and how far it got.
CREATE TABLE IF NOT EXISTS scan (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model_name TEXT NOT NULL,
    model_path TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    corpus_path TEXT NOT NULL,
    corpus_fingerprint TEXT NOT NULL,
    context INTEGER NOT NULL,
    top_k INTEGER NOT NULL,
    per_quantile INTEGER NOT NULL,
    bos_id INTEGER,
    max_tokens INTEGER,
    shard_index INTEGER NOT NULL,
    shard_count INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    -- The options a resume must match (sources, SAE paths), as JSON.
    params TEXT NOT NULL,
    -- Windows below this number are done (those of this shard).
    next_window INTEGER NOT NULL,
    windows_scanned INTEGER NOT NULL,
    tokens_scanned INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('hook', 'sae')),
    hook TEXT NOT NULL,
    width INTEGER NOT NULL,
    sae_path TEXT,
    tokens_scanned INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    doc INTEGER NOT NULL,
    doc_offset INTEGER NOT NULL,
    token_ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
-- Rows of a few hundred bytes to kilobytes: rowid tables (WITHOUT ROWID suits small rows
-- only, and would spill these into half-empty overflow pages).
CREATE TABLE IF NOT EXISTS unit_stats (
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    unit INTEGER NOT NULL,
    n_positive INTEGER NOT NULL,
    sum_act REAL NOT NULL,
    max_act REAL,
    hist_top INTEGER NOT NULL,
    -- Fine histogram counts down from bucket hist_top (varints, zero runs collapsed).
    hist BLOB NOT NULL,
    hist_below INTEGER NOT NULL,
    UNIQUE (source_id, unit)
);
-- A unit's top-K windows (largest first) and quantile candidates, in one blob.
CREATE TABLE IF NOT EXISTS unit_examples (
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    unit INTEGER NOT NULL,
    examples BLOB NOT NULL,
    UNIQUE (source_id, unit)
);
-- The tokens a unit's top examples peak on: how many of them, and their largest maximum.
-- Rebuilt when a scan finishes or stops (not at every intermediate commit).
CREATE TABLE IF NOT EXISTS peaks (
    token INTEGER NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    unit INTEGER NOT NULL,
    n_examples INTEGER NOT NULL,
    max_act REAL NOT NULL,
    PRIMARY KEY (token, source_id, unit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS explanations (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    unit INTEGER NOT NULL,
    description TEXT NOT NULL,
    -- 'neuronpedia', 'openai', 'user', ...
    origin TEXT NOT NULL,
    file TEXT,
    explainer_model TEXT,
    type_name TEXT,
    score REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS explanations_by_unit ON explanations (source, unit);
-- Auto-interpretation: each run, every request it made (prompt and answer, for audit), and
-- the scores of the explanations it wrote.
CREATE TABLE IF NOT EXISTS interp_runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    endpoint TEXT NOT NULL,
    explainer_model TEXT NOT NULL,
    prompt_kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS interp_requests (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES interp_runs(id),
    source TEXT NOT NULL,
    unit INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    messages TEXT NOT NULL,
    answer TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS interp_requests_by_unit ON interp_requests (source, unit);
CREATE TABLE IF NOT EXISTS explanation_scores (
    id INTEGER PRIMARY KEY,
    explanation_id INTEGER NOT NULL REFERENCES explanations(id),
    run_id INTEGER REFERENCES interp_runs(id),
    scorer TEXT NOT NULL,
    -- The scorer's headline: balanced accuracy (detection, fuzzing) or the pooled correlation
    -- (simulation).
    score REAL NOT NULL,
    -- Every metric (precision, recall, F1, AUC, counts; or the simulation's) as JSON.
    scores TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS explanation_scores_by_explanation ON explanation_scores (explanation_id);
CREATE VIRTUAL TABLE IF NOT EXISTS explanations_fts USING fts5 (
    description, content = 'explanations', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS explanations_ai AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts (rowid, description) VALUES (new.id, new.description);
END;
CREATE TRIGGER IF NOT EXISTS explanations_ad AFTER DELETE ON explanations BEGIN
    INSERT INTO explanations_fts (explanations_fts, rowid, description)
        VALUES ('delete', old.id, old.description);
END;
CREATE TRIGGER IF NOT EXISTS explanations_au AFTER UPDATE ON explanations BEGIN
    INSERT INTO explanations_fts (explanations_fts, rowid, description)
        VALUES ('delete', old.id, old.description);
    INSERT INTO explanations_fts (rowid, description) VALUES (new.id, new.description);
END;
";

/// The scan a store holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    pub model_name: String,
    pub model_path: String,
    pub model_fingerprint: String,
    pub corpus_path: String,
    pub corpus_fingerprint: String,
    pub context: usize,
    pub top_k: usize,
    pub per_quantile: usize,
    pub bos_id: Option<u32>,
    pub max_tokens: Option<u64>,
    pub shard_index: u64,
    pub shard_count: u64,
    pub seed: u64,
    pub params: String,
    pub next_window: u64,
    pub windows_scanned: u64,
    pub tokens_scanned: u64,
    pub complete: bool,
    pub started_at: String,
    pub updated_at: String,
}

impl ScanRecord {
    /// How many examples the scan keeps per unit.
    pub fn keep(&self) -> Keep {
        Keep {
            top_k: self.top_k,
            per_quantile: self.per_quantile,
        }
    }
}

/// A source of units in a store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub name: String,
    /// "hook" or "sae".
    pub kind: String,
    /// The hook the source reads (an SAE's input hook).
    pub hook: String,
    pub width: usize,
    pub sae_path: Option<String>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, m, s) = crate::export::utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

impl Store {
    /// Opens (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let existed = path.exists();
        let conn =
            Connection::open(path).with_context(|| format!("opening store {}", path.display()))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.init(existed).map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("not a database") || text.contains("malformed") {
                anyhow!(
                    "store {} is not a Dendrite store or is corrupt ({text})",
                    path.display()
                )
            } else if text.contains("locked") || text.contains("busy") {
                anyhow!(
                    "store {} is locked by another process (a scan still running?)",
                    path.display()
                )
            } else {
                e
            }
        })?;
        Ok(store)
    }

    /// Opens an existing store without creating one.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("store {} does not exist", path.display());
        }
        Self::open(path)
    }

    /// Version 2 stores differ only in the name of the explanation scores' headline column.
    fn migrate_from_v2(&self) -> Result<()> {
        let old_column: bool = self.conn.query_row(
            "SELECT count(*) FROM pragma_table_info('explanation_scores')
             WHERE name = 'balanced_accuracy'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if old_column {
            self.conn.execute(
                "ALTER TABLE explanation_scores RENAME COLUMN balanced_accuracy TO score",
                [],
            )?;
        }
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [SCHEMA_VERSION.to_string()],
        )?;
        Ok(())
    }

    fn init(&self, existed: bool) -> Result<()> {
        self.conn.busy_timeout(std::time::Duration::from_secs(3))?;
        if !existed {
            // Most rows are a unit's examples, kilobytes each: with 64 KiB pages they sit in
            // their leaf page instead of a chain of overflow pages (a commit writes less).
            self.conn.pragma_update(None, "page_size", 65_536)?;
        }
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .context("setting WAL mode")?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A scan's commit rewrites many units' examples in one transaction: a 256 MiB page
        // cache keeps those pages in memory instead of looking each up in the WAL again.
        self.conn.pragma_update(None, "cache_size", -262_144)?;
        if existed {
            let has_meta: bool = self.conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if has_meta {
                let version: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT value FROM meta WHERE key = 'schema_version'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                let version: i64 = version.and_then(|v| v.parse().ok()).unwrap_or(0);
                if version > SCHEMA_VERSION {
                    bail!(
                        "store {} has schema version {version}, written by a newer Dendrite; \
                         this build reads version {SCHEMA_VERSION}",
                        self.path.display()
                    );
                }
                if version == 2 {
                    self.migrate_from_v2()?;
                } else if version < SCHEMA_VERSION {
                    bail!(
                        "store {} has schema version {version}, an older development format \
                         this build does not read; scan again into a new store",
                        self.path.display()
                    );
                }
            } else {
                let tables: i64 = self.conn.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )?;
                if tables > 0 {
                    bail!(
                        "{} is an SQLite file but not a Dendrite store",
                        self.path.display()
                    );
                }
            }
        }
        self.conn.execute_batch(SCHEMA)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION.to_string()],
        )?;
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', ?1)",
            [format!("dendrite {}", env!("CARGO_PKG_VERSION"))],
        )?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn scan(&self) -> Result<Option<ScanRecord>> {
        let row = self
            .conn
            .query_row(
                "SELECT model_name, model_path, model_fingerprint, corpus_path, corpus_fingerprint,
                        context, top_k, bos_id, max_tokens, shard_index, shard_count, seed, params,
                        next_window, windows_scanned, tokens_scanned, complete, started_at,
                        updated_at, per_quantile FROM scan WHERE id = 1",
                [],
                |r| {
                    Ok(ScanRecord {
                        model_name: r.get(0)?,
                        model_path: r.get(1)?,
                        model_fingerprint: r.get(2)?,
                        corpus_path: r.get(3)?,
                        corpus_fingerprint: r.get(4)?,
                        context: r.get::<_, i64>(5)? as usize,
                        top_k: r.get::<_, i64>(6)? as usize,
                        bos_id: r.get::<_, Option<i64>>(7)?.map(|v| v as u32),
                        max_tokens: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                        shard_index: r.get::<_, i64>(9)? as u64,
                        shard_count: r.get::<_, i64>(10)? as u64,
                        seed: r.get::<_, i64>(11)? as u64,
                        params: r.get(12)?,
                        next_window: r.get::<_, i64>(13)? as u64,
                        windows_scanned: r.get::<_, i64>(14)? as u64,
                        tokens_scanned: r.get::<_, i64>(15)? as u64,
                        complete: r.get::<_, i64>(16)? != 0,
                        started_at: r.get(17)?,
                        updated_at: r.get(18)?,
                        per_quantile: r.get::<_, i64>(19)? as usize,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Every row of `sql`, each mapped by `f`, collected (a Vec, a map). Not through the
    /// statement cache: some callers build their SQL (`IN (…)` lists) and would evict it.
    fn collect_rows<T, C: FromIterator<T>>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<C> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.collect::<rusqlite::Result<C>>()?)
    }

    /// The scan, or an error saying the store holds none.
    pub fn held_scan(&self) -> Result<ScanRecord> {
        self.scan()?
            .ok_or_else(|| anyhow!("store {} holds no scan", self.path.display()))
    }

    pub fn sources(&self) -> Result<Vec<SourceInfo>> {
        self.collect_rows(
            "SELECT name, kind, hook, width, sae_path FROM sources ORDER BY id",
            [],
            |r| {
                Ok(SourceInfo {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    hook: r.get(2)?,
                    width: r.get::<_, i64>(3)? as usize,
                    sae_path: r.get(4)?,
                })
            },
        )
    }

    fn source_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT id FROM sources WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// A source by name, or an error listing the sources there are.
    pub fn source(&self, name: &str) -> Result<SourceInfo> {
        let sources = self.sources()?;
        match sources.iter().find(|s| s.name == name) {
            Some(s) => Ok(s.clone()),
            None => {
                let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "no source \"{name}\" in store {} (it has: {})",
                    self.path.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            }
        }
    }

    /// Starts a scan record with its sources (a fresh store).
    pub fn begin_scan(&mut self, scan: &ScanRecord, sources: &[SourceInfo]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO scan (id, model_name, model_path, model_fingerprint, corpus_path,
                corpus_fingerprint, context, top_k, bos_id, max_tokens, shard_index, shard_count,
                seed, params, next_window, windows_scanned, tokens_scanned, complete, started_at,
                updated_at, per_quantile)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19, ?20)",
            params![
                scan.model_name,
                scan.model_path,
                scan.model_fingerprint,
                scan.corpus_path,
                scan.corpus_fingerprint,
                scan.context as i64,
                scan.top_k as i64,
                scan.bos_id.map(|v| v as i64),
                scan.max_tokens.map(|v| v as i64),
                scan.shard_index as i64,
                scan.shard_count as i64,
                scan.seed as i64,
                scan.params,
                scan.next_window as i64,
                scan.windows_scanned as i64,
                scan.tokens_scanned as i64,
                scan.complete as i64,
                scan.started_at,
                scan.updated_at,
                scan.per_quantile as i64,
            ],
        )?;
        for s in sources {
            tx.execute(
                "INSERT INTO sources (name, kind, hook, width, sae_path, tokens_scanned)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                params![s.name, s.kind, s.hook, s.width as i64, s.sae_path],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits a scan's progress: the new windows (and their tokens' texts), every source's
    /// statistics, and the examples of units whose examples changed since the last commit;
    /// with `index_peaks` (a scan's last commit) the peak tokens of every unit too. One
    /// transaction: after a crash the store holds the previous commit whole.
    pub fn commit(
        &mut self,
        scan: &ScanRecord,
        stats: &mut [SourceStats],
        windows: &'_ [super::corpus::Window],
        vocab: &[(u32, String)],
        index_peaks: bool,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut win = tx.prepare_cached(
                "INSERT OR REPLACE INTO windows (id, doc, doc_offset, token_ids) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for w in windows {
                win.execute(params![
                    w.index as i64,
                    w.doc as i64,
                    w.doc_offset as i64,
                    u32_bytes(&w.ids)
                ])?;
            }
            let mut voc =
                tx.prepare_cached("INSERT OR IGNORE INTO vocab (id, text) VALUES (?1, ?2)")?;
            for (id, text) in vocab {
                voc.execute(params![*id as i64, text])?;
            }
            let mut unit_row = tx.prepare_cached(
                "INSERT OR REPLACE INTO unit_stats
                    (source_id, unit, n_positive, sum_act, max_act, hist_top, hist, hist_below)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut examples_row = tx.prepare_cached(
                "INSERT OR REPLACE INTO unit_examples (source_id, unit, examples)
                 VALUES (?1, ?2, ?3)",
            )?;
            let mut source_row =
                tx.prepare_cached("UPDATE sources SET tokens_scanned = ?2 WHERE name = ?1")?;
            let by_index: std::collections::HashMap<u64, &[u32]> = windows
                .iter()
                .map(|w| (w.index, w.ids.as_slice()))
                .collect();
            let mut window_ids = window_tokens_reader(&tx, by_index);
            // (token, source, unit, examples peaking on it, their largest maximum).
            let mut peaks: Vec<(u32, i64, usize, i64, f32)> = Vec::new();
            for source in stats.iter_mut() {
                let id: i64 = tx.query_row(
                    "SELECT id FROM sources WHERE name = ?1",
                    [&source.name],
                    |r| r.get(0),
                )?;
                source_row.execute(params![source.name, source.n_tokens as i64])?;
                // Encoded on every core before the inserts (encoding is a third of a commit's
                // time), one source at a time so that at most one source's blobs are held.
                let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = source
                    .units
                    .par_iter()
                    .map(|unit| {
                        let examples = unit
                            .examples_dirty
                            .then(|| encode_examples(&unit.top, unit.candidates.iter().flatten()));
                        (encode_counts(&unit.hist), examples)
                    })
                    .collect();
                for ((u, unit), (hist, examples)) in
                    source.units.iter_mut().enumerate().zip(encoded)
                {
                    let max = unit.max.is_finite().then_some(unit.max as f64);
                    unit_row.execute(params![
                        id,
                        u as i64,
                        unit.n_positive as i64,
                        unit.sum,
                        max,
                        unit.hist_top,
                        hist,
                        unit.hist_below as i64,
                    ])?;
                    if index_peaks {
                        let first = peaks.len();
                        for e in &unit.top {
                            let token = window_ids(e.window, e.max_pos)?;
                            match peaks[first..].iter_mut().find(|p| p.0 == token) {
                                Some(p) => {
                                    p.3 += 1;
                                    p.4 = p.4.max(e.max_act);
                                }
                                None => peaks.push((token, id, u, 1, e.max_act)),
                            }
                        }
                    }
                    if let Some(blob) = examples {
                        examples_row.execute(params![id, u as i64, blob])?;
                        unit.examples_dirty = false;
                    }
                }
            }
            if index_peaks {
                // In key order, so the table is written front to back.
                peaks.sort_unstable_by_key(|p| (p.0, p.1, p.2));
                tx.execute("DELETE FROM peaks", [])?;
                let mut peak_row = tx.prepare_cached(
                    "INSERT INTO peaks (token, source_id, unit, n_examples, max_act)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (token, id, u, n, max_act) in peaks {
                    peak_row.execute(params![token as i64, id, u as i64, n, max_act as f64])?;
                }
            }
        }
        tx.execute(
            "UPDATE scan SET next_window = ?1, windows_scanned = ?2, tokens_scanned = ?3,
                complete = ?4, updated_at = ?5 WHERE id = 1",
            params![
                scan.next_window as i64,
                scan.windows_scanned as i64,
                scan.tokens_scanned as i64,
                scan.complete as i64,
                now(),
            ],
        )?;
        tx.commit().with_context(|| {
            format!(
                "committing to store {} (is the disk full?)",
                self.path.display()
            )
        })?;
        Ok(())
    }

    /// Every source's statistics as committed (to resume or merge a scan).
    pub fn load_stats(&self) -> Result<Vec<SourceStats>> {
        let keep = self.held_scan()?.keep();
        let mut out = Vec::new();
        for info in self.sources()? {
            let id = self.source_id(&info.name)?.unwrap_or_default();
            let mut source = SourceStats::new(&info.name, info.width, keep);
            source.n_tokens = self.conn.query_row(
                "SELECT tokens_scanned FROM sources WHERE id = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )? as u64;
            let mut stmt = self.conn.prepare(
                "SELECT unit, n_positive, sum_act, max_act, hist_top, hist, hist_below
                 FROM unit_stats WHERE source_id = ?1",
            )?;
            let mut rows = stmt.query([id])?;
            while let Some(r) = rows.next()? {
                let u = r.get::<_, i64>(0)? as usize;
                let unit = source
                    .units
                    .get_mut(u)
                    .ok_or_else(|| anyhow!("unit {u} beyond the width of {}", info.name))?;
                read_unit_row(unit, r)?;
            }
            let mut stmt = self
                .conn
                .prepare("SELECT unit, examples FROM unit_examples WHERE source_id = ?1")?;
            let mut rows = stmt.query([id])?;
            while let Some(r) = rows.next()? {
                let u = r.get::<_, i64>(0)? as usize;
                let unit = source
                    .units
                    .get_mut(u)
                    .ok_or_else(|| anyhow!("unit {u} beyond the width of {}", info.name))?;
                let (top, candidates) = decode_examples(&r.get::<_, Vec<u8>>(1)?)
                    .with_context(|| format!("{} unit {u}", info.name))?;
                unit.top = top;
                for e in candidates {
                    unit.insert_candidate(e, keep);
                }
            }
            out.push(source);
        }
        Ok(out)
    }

    /// The windows stored (to copy them into a merged store).
    pub fn windows(&self) -> Result<Vec<super::corpus::Window>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, doc, doc_offset, token_ids FROM windows ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(super::corpus::Window {
                index: r.get::<_, i64>(0)? as u64,
                doc: r.get::<_, i64>(1)? as u64,
                doc_offset: r.get::<_, i64>(2)? as u64,
                ids: u32_from_bytes(&r.get::<_, Vec<u8>>(3)?)?,
            });
        }
        Ok(out)
    }

    pub fn vocab(&self) -> Result<Vec<(u32, String)>> {
        self.collect_rows("SELECT id, text FROM vocab ORDER BY id", [], id_and_text)
    }

    /// The token ids of `windows`, in one query.
    fn windows_ids(&self, windows: &[u64]) -> Result<std::collections::HashMap<u64, Vec<u32>>> {
        let list = join_ids(windows.iter().copied());
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, token_ids FROM windows WHERE id IN ({list})"
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = std::collections::HashMap::new();
        while let Some(r) = rows.next()? {
            let id = r.get::<_, i64>(0)? as u64;
            out.insert(id, u32_from_bytes(&r.get::<_, Vec<u8>>(1)?)?);
        }
        Ok(out)
    }

    /// The texts of `ids`, in one query.
    fn token_texts(
        &self,
        ids: impl Iterator<Item = u32>,
    ) -> Result<std::collections::HashMap<u32, String>> {
        let list = join_ids(ids.map(u64::from));
        self.collect_rows(
            &format!("SELECT id, text FROM vocab WHERE id IN ({list})"),
            [],
            id_and_text,
        )
    }

    /// Everything the store knows about one unit: statistics, top examples (at most `top`),
    /// quantile groups, histogram and explanations. A handful of queries whatever the number
    /// of examples (the app opens a unit's panel with this).
    pub fn unit_report(&self, source: &str, unit: usize, top: Option<usize>) -> Result<UnitReport> {
        let info = self.source(source)?;
        if unit >= info.width {
            bail!(
                "unit {unit} is beyond source {source}'s width {}",
                info.width
            );
        }
        let keep = self.held_scan()?.keep();
        let id = self.source_id(source)?.unwrap_or_default();
        let tokens_scanned = self.conn.query_row(
            "SELECT tokens_scanned FROM sources WHERE id = ?1",
            [id],
            |r| r.get::<_, i64>(0),
        )? as u64;
        let mut stats = UnitStats::default();
        let found = self
            .conn
            .prepare_cached(
                "SELECT unit, n_positive, sum_act, max_act, hist_top, hist, hist_below
                 FROM unit_stats WHERE source_id = ?1 AND unit = ?2",
            )?
            .query_row(params![id, unit as i64], |r| {
                Ok(read_unit_row(&mut stats, r))
            })
            .optional()?;
        if let Some(result) = found {
            result?;
        }
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT examples FROM unit_examples WHERE source_id = ?1 AND unit = ?2",
            )?
            .query_row(params![id, unit as i64], |r| r.get(0))
            .optional()?;
        if let Some(blob) = blob {
            let (top, candidates) =
                decode_examples(&blob).with_context(|| format!("{source} unit {unit}"))?;
            stats.top = top;
            for e in candidates {
                stats.insert_candidate(e, keep);
            }
        }
        stats.top.truncate(top.unwrap_or(usize::MAX));
        let groups = stats.quantiles(keep);
        let shown: Vec<&Example> = stats
            .top
            .iter()
            .chain(groups.iter().flatten().copied())
            .collect();
        let mut window_list: Vec<u64> = shown.iter().map(|e| e.window).collect();
        window_list.sort_unstable();
        window_list.dedup();
        let ids = self.windows_ids(&window_list)?;
        let texts = self.token_texts(ids.values().flatten().copied())?;
        let example_out = |e: &Example| -> Result<ExampleOut> {
            let token_ids = ids
                .get(&e.window)
                .cloned()
                .ok_or_else(|| anyhow!("window {} is missing from the store", e.window))?;
            Ok(ExampleOut {
                window: e.window,
                tokens: token_ids
                    .iter()
                    .map(|id| texts.get(id).cloned().unwrap_or_else(|| format!("<{id}>")))
                    .collect(),
                token_ids,
                acts: e.acts_f32(),
                max_act: e.max_act,
                max_pos: e.max_pos,
            })
        };
        let examples = stats
            .top
            .iter()
            .map(example_out)
            .collect::<Result<Vec<_>>>()?;
        let n = tokens_scanned.max(1) as f64;
        let m = stats.max.max(0.0);
        let quantiles = groups
            .into_iter()
            .enumerate()
            .map(|(i, group)| {
                Ok(QuantileOut {
                    index: i,
                    lo: m * i as f32 / N_QUANTILES as f32,
                    hi: m * (i + 1) as f32 / N_QUANTILES as f32,
                    examples: group.into_iter().map(example_out).collect::<Result<_>>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let counts = stats.histogram();
        Ok(UnitReport {
            source: source.to_string(),
            unit,
            tokens_scanned,
            density: stats.n_positive as f64 / n,
            max: stats.max.is_finite().then_some(stats.max),
            mean: stats.sum / n,
            examples,
            quantiles,
            histogram: HistogramOut {
                lo: 0.0,
                hi: m,
                nonpositive: tokens_scanned.saturating_sub(stats.n_positive),
                counts,
            },
            explanations: self.explanations(source, unit)?,
        })
    }

    // ── explanations ────────────────────────────────────────────────────────────────────────

    pub fn add_explanations(&mut self, items: &[NewExplanation]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO explanations (source, unit, description, origin, file,
                    explainer_model, type_name, score, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in items {
                stmt.execute(params![
                    e.source,
                    e.unit as i64,
                    e.description,
                    e.origin,
                    e.file,
                    e.explainer_model,
                    e.type_name,
                    e.score,
                    e.created_at.clone().unwrap_or_else(now),
                ])?;
            }
        }
        tx.commit()?;
        Ok(items.len())
    }

    // ── auto-interpretation ─────────────────────────────────────────────────────────────────

    /// Records the start of an auto-interpretation run; returns its id.
    pub fn begin_interp_run(&mut self, opts: &super::interp::ExplainOptions) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO interp_runs (started_at, endpoint, explainer_model, prompt_kind, settings)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now(),
                opts.endpoint.base_url,
                opts.endpoint.model,
                opts.explainer.as_str(),
                super::interp::run_settings(opts).to_string(),
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_interp_run(&mut self, run_id: i64, requests: usize) -> Result<()> {
        self.conn.execute(
            "UPDATE interp_runs SET finished_at = ?1, requests = ?2 WHERE id = ?3",
            params![now(), requests as i64, run_id],
        )?;
        Ok(())
    }

    /// One unit's results of a run: its requests (audit), its explanation (when one parsed)
    /// and the explanation's scores, in one transaction.
    pub fn save_interp_unit(
        &mut self,
        run_id: i64,
        source: &str,
        opts: &super::interp::ExplainOptions,
        result: &super::interp::UnitResult,
        audit: &[super::interp::AuditEntry],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        for a in audit {
            tx.execute(
                "INSERT INTO interp_requests (run_id, source, unit, purpose, messages, answer,
                    error, attempts, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    run_id,
                    source,
                    a.unit as i64,
                    a.purpose,
                    serde_json::to_string(&a.messages)?,
                    a.answer,
                    a.error,
                    a.attempts as i64,
                    a.duration_ms,
                ],
            )?;
        }
        if let Some(description) = &result.explanation {
            // The explanation's score shown in lists: detection's, else the first scorer's.
            let headline = result
                .scores
                .iter()
                .find(|s| s.scorer == super::interp::ScorerKind::Detection)
                .or(result.scores.first())
                .and_then(|s| s.scores.headline());
            tx.execute(
                "INSERT INTO explanations (source, unit, description, origin, file,
                    explainer_model, type_name, score, created_at)
                 VALUES (?1, ?2, ?3, 'auto-interp', NULL, ?4, ?5, ?6, ?7)",
                params![
                    source,
                    result.unit as i64,
                    description,
                    opts.endpoint.model,
                    opts.explainer.as_str(),
                    headline,
                    now(),
                ],
            )?;
            let explanation_id = tx.last_insert_rowid();
            // A scorer none of whose answers parsed has no score (its requests stay).
            for s in &result.scores {
                let Some(headline) = s.scores.headline() else {
                    continue;
                };
                tx.execute(
                    "INSERT INTO explanation_scores (explanation_id, run_id, scorer,
                        score, scores)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        explanation_id,
                        run_id,
                        s.scorer.as_str(),
                        headline,
                        serde_json::to_string(&s.scores)?,
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The scores of a unit's explanations: (explanation text, scorer, headline score, all
    /// metrics as JSON), newest first.
    pub fn explanation_scores(
        &self,
        source: &str,
        unit: usize,
    ) -> Result<Vec<(String, String, f64, String)>> {
        self.collect_rows(
            "SELECT e.description, s.scorer, s.score, s.scores
             FROM explanation_scores s JOIN explanations e ON e.id = s.explanation_id
             WHERE e.source = ?1 AND e.unit = ?2 ORDER BY s.id DESC",
            params![source, unit as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// How many requests a unit's auto-interpretation made (kept for audit).
    pub fn interp_requests(&self, source: &str, unit: usize) -> Result<usize> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM interp_requests WHERE source = ?1 AND unit = ?2",
            params![source, unit as i64],
            |r| r.get::<_, i64>(0),
        )? as usize)
    }

    /// Sets the user's own description of a unit (replacing their previous one; empty
    /// removes it).
    pub fn set_user_description(&mut self, source: &str, unit: usize, text: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM explanations WHERE source = ?1 AND unit = ?2 AND origin = 'user'",
            params![source, unit as i64],
        )?;
        if !text.trim().is_empty() {
            tx.execute(
                "INSERT INTO explanations (source, unit, description, origin, created_at)
                 VALUES (?1, ?2, ?3, 'user', ?4)",
                params![source, unit as i64, text, now()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn explanations(&self, source: &str, unit: usize) -> Result<Vec<Explanation>> {
        let rows: Vec<(i64, Explanation)> = self.collect_rows(
            "SELECT id, description, origin, file, explainer_model, type_name, score, created_at
             FROM explanations WHERE source = ?1 AND unit = ?2
             ORDER BY origin = 'user' DESC, score IS NULL, score DESC, id",
            params![source, unit as i64],
            |r| {
                Ok((
                    r.get(0)?,
                    Explanation {
                        description: r.get(1)?,
                        origin: r.get(2)?,
                        file: r.get(3)?,
                        explainer_model: r.get(4)?,
                        type_name: r.get(5)?,
                        score: r.get(6)?,
                        created_at: r.get(7)?,
                        scores: Vec::new(),
                    },
                ))
            },
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, mut e) in rows {
            if e.origin == "auto-interp" {
                let scores: Vec<(String, f64, String)> = self.collect_rows(
                    "SELECT scorer, score, scores FROM explanation_scores
                     WHERE explanation_id = ?1 ORDER BY id",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                e.scores = scores
                    .into_iter()
                    .map(|(scorer, score, detail)| ExplanationScore {
                        scorer,
                        score,
                        // Written by us as JSON; a hand-edited row shows without its detail.
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    })
                    .collect();
            }
            out.push(e);
        }
        Ok(out)
    }

    /// The best explanation of every described unit: the user's own first, then the best
    /// scored, then the first imported.
    pub fn best_descriptions(&self) -> Result<Vec<(String, usize, String)>> {
        self.collect_rows(
            "SELECT source, unit, description FROM (
                SELECT source, unit, description, row_number() OVER (
                    PARTITION BY source, unit
                    ORDER BY origin = 'user' DESC, score IS NULL, score DESC, id) AS rank
                FROM explanations)
             WHERE rank = 1",
            [],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize, r.get(2)?)),
        )
    }

    /// Full-text search over explanations (FTS5, best match first).
    pub fn search(
        &self,
        query: &str,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        let fts = fts_query(query);
        if fts.is_empty() {
            return Ok(Vec::new());
        }
        self.collect_rows(
            "SELECT e.source, e.unit, e.description, e.origin, e.score
             FROM explanations_fts f JOIN explanations e ON e.id = f.rowid
             WHERE explanations_fts MATCH ?1 AND (?2 IS NULL OR e.source = ?2)
             ORDER BY bm25(explanations_fts), e.id LIMIT ?3",
            params![fts, source, limit as i64],
            |r| {
                Ok(SearchHit {
                    source: r.get(0)?,
                    unit: r.get::<_, i64>(1)? as usize,
                    description: r.get(2)?,
                    origin: r.get(3)?,
                    score: r.get(4)?,
                })
            },
        )
    }

    /// Units whose top examples peak on a token whose text is `token` (exactly, or ignoring
    /// surrounding whitespace and case), most such examples first. Peaks are indexed when a
    /// scan finishes or stops, so a scan killed mid-way has none until it is resumed.
    pub fn search_token(
        &self,
        token: &str,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TokenHit>> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare(
                "SELECT id FROM vocab WHERE text = ?1 OR lower(trim(text)) = lower(trim(?1))",
            )?;
            stmt.query_map([token], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut hits = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.name, p.unit, p.n_examples, p.max_act FROM peaks p
             JOIN sources s ON s.id = p.source_id
             WHERE p.token = ?1 AND (?2 IS NULL OR s.name = ?2)",
        )?;
        for id in ids {
            let rows = stmt.query_map(params![id, source], |r| {
                Ok(TokenHit {
                    source: r.get(0)?,
                    unit: r.get::<_, i64>(1)? as usize,
                    token_id: id as u32,
                    examples: r.get::<_, i64>(2)? as usize,
                    max_act: r.get::<_, f64>(3)? as f32,
                })
            })?;
            for h in rows {
                hits.push(h?);
            }
        }
        hits.sort_by(|a, b| {
            b.examples
                .cmp(&a.examples)
                .then(b.max_act.total_cmp(&a.max_act))
                .then(a.source.cmp(&b.source))
                .then(a.unit.cmp(&b.unit))
        });
        hits.truncate(limit);
        Ok(hits)
    }
}

/// A query for FTS5 made of the words of `text`, each quoted (so punctuation in a user's
/// query is never FTS syntax), all required.
fn fts_query(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{}\"", w.replace('"', "")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Token id at `pos` of `window`: from the windows being committed, else from the store
/// (each window read once).
fn window_tokens_reader<'c>(
    tx: &'c rusqlite::Transaction<'_>,
    pending: std::collections::HashMap<u64, &'c [u32]>,
) -> impl FnMut(u64, u32) -> Result<u32> + 'c {
    let mut read: std::collections::HashMap<u64, Vec<u32>> = std::collections::HashMap::new();
    move |window, pos| {
        let id = match pending.get(&window) {
            Some(ids) => ids.get(pos as usize).copied(),
            None => {
                if let std::collections::hash_map::Entry::Vacant(slot) = read.entry(window) {
                    let bytes: Vec<u8> = tx
                        .prepare_cached("SELECT token_ids FROM windows WHERE id = ?1")?
                        .query_row([window as i64], |r| r.get(0))
                        .with_context(|| format!("window {window} is missing from the store"))?;
                    slot.insert(u32_from_bytes(&bytes)?);
                }
                read.get(&window)
                    .and_then(|ids| ids.get(pos as usize).copied())
            }
        };
        id.ok_or_else(|| anyhow!("position {pos} beyond window {window}"))
    }
}

fn read_unit_row(unit: &mut UnitStats, r: &rusqlite::Row<'_>) -> Result<()> {
    unit.n_positive = r.get::<_, i64>(1)? as u64;
    unit.sum = r.get(2)?;
    unit.max = r
        .get::<_, Option<f64>>(3)?
        .map_or(f32::NEG_INFINITY, |m| m as f32);
    unit.hist_top = r.get(4)?;
    unit.hist = decode_counts(&r.get::<_, Vec<u8>>(5)?, HIST_BUCKETS)?;
    unit.hist_below = r.get::<_, i64>(6)? as u64;
    Ok(())
}

fn id_and_text(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u32, String)> {
    Ok((r.get::<_, i64>(0)? as u32, r.get(1)?))
}

/// A comma-separated list of integers for an `IN (…)` clause (integers only: no injection).
fn join_ids(ids: impl Iterator<Item = u64>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// One example as `dendrite examples` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleOut {
    pub window: u64,
    pub token_ids: Vec<u32>,
    /// Each token's text (from the store's vocabulary).
    pub tokens: Vec<String>,
    pub acts: Vec<f32>,
    pub max_act: f32,
    pub max_pos: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantileOut {
    pub index: usize,
    /// The interval (lo, hi] of window maxima.
    pub lo: f32,
    pub hi: f32,
    pub examples: Vec<ExampleOut>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramOut {
    /// `counts` are 50 equal-width bins on (lo, hi].
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
    /// Scored tokens with activation ≤ 0.
    pub nonpositive: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitReport {
    pub source: String,
    pub unit: usize,
    pub tokens_scanned: u64,
    pub density: f64,
    pub max: Option<f32>,
    pub mean: f64,
    pub examples: Vec<ExampleOut>,
    pub quantiles: Vec<QuantileOut>,
    pub histogram: HistogramOut,
    pub explanations: Vec<Explanation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub description: String,
    pub origin: String,
    pub file: Option<String>,
    pub explainer_model: Option<String>,
    pub type_name: Option<String>,
    pub score: Option<f64>,
    pub created_at: String,
    /// Auto-interpretation's scores of this explanation, one per scorer run.
    pub scores: Vec<ExplanationScore>,
}

/// A scorer's verdict on an explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplanationScore {
    pub scorer: String,
    /// Balanced accuracy (detection, fuzzing) or the pooled correlation (simulation).
    pub score: f64,
    /// Every metric the scorer computed.
    pub detail: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewExplanation {
    pub source: String,
    pub unit: usize,
    pub description: String,
    pub origin: String,
    pub file: Option<String>,
    pub explainer_model: Option<String>,
    pub type_name: Option<String>,
    pub score: Option<f64>,
    pub created_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub source: String,
    pub unit: usize,
    pub description: String,
    pub origin: String,
    pub score: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenHit {
    pub source: String,
    pub unit: usize,
    pub token_id: u32,
    /// How many of the unit's top examples peak on the token.
    pub examples: usize,
    pub max_act: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso_8601() {
        let d = now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }

    #[test]
    fn fts_queries_quote_every_word() {
        assert_eq!(
            fts_query("closing \"quote\" AND"),
            "\"closing\" \"quote\" \"AND\""
        );
        assert_eq!(fts_query("  ..."), "");
    }

    #[test]
    fn newer_schemas_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let store = Store::open(&path).unwrap();
            store
                .conn
                .execute(
                    "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                    [],
                )
                .unwrap();
        }
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer"), "{err}");
        let junk = dir.path().join("junk.sqlite");
        std::fs::write(&junk, vec![7u8; 4096]).unwrap();
        let err = Store::open(&junk).err().unwrap().to_string();
        assert!(err.contains("not a Dendrite store"), "{err}");
        let other = dir.path().join("other.sqlite");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Store::open(&other).err().unwrap().to_string();
        assert!(err.contains("not a Dendrite store"), "{err}");
    }

    #[test]
    fn version_2_stores_are_upgraded_keeping_their_scores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let store = Store::open(&path).unwrap();
            store
                .conn
                .execute_batch(
                    "ALTER TABLE explanation_scores RENAME COLUMN score TO balanced_accuracy;
                     INSERT INTO explanations (source, unit, description, origin, created_at)
                        VALUES ('s', 1, 'cats', 'auto-interp', 'then');
                     INSERT INTO explanation_scores (explanation_id, scorer, balanced_accuracy,
                        scores) VALUES (1, 'detection', 0.75, '{}');
                     UPDATE meta SET value = '2' WHERE key = 'schema_version';",
                )
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let scores = store.explanation_scores("s", 1).unwrap();
        assert_eq!(scores.len(), 1);
        assert_eq!((scores[0].1.as_str(), scores[0].2), ("detection", 0.75));
        let version: String = store
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        // Older development formats are still refused.
        store
            .conn
            .execute(
                "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        drop(store);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("older development format"), "{err}");
    }

    #[test]
    fn explanations_are_searchable_and_user_notes_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let item = |unit, d: &str| NewExplanation {
            source: "sae:x".into(),
            unit,
            description: d.into(),
            origin: "neuronpedia".into(),
            file: None,
            explainer_model: Some("gpt-4o-mini".into()),
            type_name: None,
            score: Some(0.5),
            created_at: None,
        };
        store
            .add_explanations(&[
                item(3, "closing quotation marks after dialogue"),
                item(4, "the word 'quotation' in legal text"),
                item(5, "numbers"),
            ])
            .unwrap();
        let hits = store.search("quotation marks", None, 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].unit, 3);
        let hits = store.search("quotation", Some("sae:x"), 10).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(
            store
                .search("quotation", Some("other"), 10)
                .unwrap()
                .is_empty()
        );
        store
            .set_user_description("sae:x", 5, "digits in dates")
            .unwrap();
        store.set_user_description("sae:x", 5, "years").unwrap();
        let ex = store.explanations("sae:x", 5).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(
            (ex[0].origin.as_str(), ex[0].description.as_str()),
            ("user", "years")
        );
        assert_eq!(store.search("years", None, 5).unwrap().len(), 1);
        assert!(store.search("digits", None, 5).unwrap().is_empty());
    }
}
