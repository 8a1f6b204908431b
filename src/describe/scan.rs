//! The corpus scan: windows of a corpus through the model in batches, every unit of the chosen
//! hooks and SAEs accumulated ([`super::stats`]), committed to a store every few seconds so an
//! interrupted scan resumes where its last commit left off.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;

use super::corpus::{Corpus, Shard, Window, Windows, model_fingerprint};
use super::stats::{DEFAULT_PER_QUANTILE, Keep, N_QUANTILES, SourceStats};
use super::store::{ScanRecord, SourceInfo, Store};
use crate::model::{BosMode, HookSpec, Model, NoObserver};
use crate::sae::Sae;

#[derive(Clone, Debug, PartialEq)]
pub struct ScanOptions {
    pub corpus: PathBuf,
    /// Hook names or globs (`blocks.*.mlp.hook_post`).
    pub hooks: Vec<String>,
    /// SAE folders or files whose latents are scanned too.
    pub saes: Vec<PathBuf>,
    /// Stop after this many corpus tokens (windows wholly inside them).
    pub max_tokens: Option<u64>,
    /// Tokens per window, BOS included.
    pub context: usize,
    pub top_k: usize,
    /// Windows kept per quantile group.
    pub per_quantile: usize,
    /// Windows per forward pass.
    pub batch: usize,
    pub bos: BosMode,
    pub shard: Shard,
    /// Seeds the draw of quantile examples.
    pub seed: u64,
    /// Continue the scan the store holds (otherwise a store with a scan is refused).
    pub resume: bool,
    pub out: PathBuf,
    /// How often progress is committed to the store, at least: a commit rewrites every unit
    /// whose examples changed, so commits are spaced to take at most a tenth of the time.
    pub commit_every: Duration,
}

impl ScanOptions {
    pub fn new(corpus: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        ScanOptions {
            corpus: corpus.into(),
            hooks: vec!["blocks.*.mlp.hook_post".into()],
            saes: Vec::new(),
            max_tokens: None,
            context: 64,
            top_k: 32,
            per_quantile: DEFAULT_PER_QUANTILE,
            batch: 8,
            bos: BosMode::Auto,
            shard: Shard::default(),
            seed: 0,
            resume: false,
            out: out.into(),
            commit_every: Duration::from_secs(30),
        }
    }
}

/// How far a scan has got.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScanProgress {
    /// Windows of this shard scanned (including a resumed scan's earlier ones).
    pub windows: u64,
    /// Windows this shard will scan in all, when known (`--tokens` bounds it).
    pub total_windows: Option<u64>,
    /// Scored tokens scanned.
    pub tokens: u64,
    /// Scored tokens per second in this run.
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Corpus bytes tokenized so far, out of all (a progress measure without `--tokens`).
    pub files_done: usize,
    pub files_total: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScanSummary {
    pub store: PathBuf,
    pub windows: u64,
    pub tokens: u64,
    pub sources: Vec<SourceInfo>,
    pub complete: bool,
    /// Tokens per second of this run (scored tokens / wall time).
    pub tokens_per_s: f64,
    pub duration_s: f64,
    /// Where this run's time went.
    pub phases: ScanPhases,
}

/// Seconds a scan spent in each phase (the rest of `duration_s` is loading the model and
/// tokenizing the corpus).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScanPhases {
    /// The model's passes up to the last captured hook.
    pub forward_s: f64,
    /// SAE encoding and statistics: top-k, quantile samples, density, histograms.
    pub accumulate_s: f64,
    /// Writing to the store.
    pub commit_s: f64,
}

enum Plan {
    Hook,
    Sae(Arc<Sae>),
}

/// The sources a scan reads, resolved against the model (clear errors for globs that match
/// nothing and SAEs that do not fit).
fn resolve_sources(model: &Model, opts: &ScanOptions) -> Result<Vec<(SourceInfo, Plan)>> {
    let names = model.transformer.hook_names();
    let mut out: Vec<(SourceInfo, Plan)> = Vec::new();
    for pattern in &opts.hooks {
        let matched: Vec<&String> = names
            .iter()
            .filter(|n| crate::model::hooks::glob_matches(pattern, n))
            .filter(|n| model.transformer.hook_width(n).is_some())
            .collect();
        if matched.is_empty() {
            let block0: Vec<&str> = names
                .iter()
                .filter(|n| !n.starts_with("blocks.") || n.starts_with("blocks.0."))
                .filter(|n| model.transformer.hook_width(n).is_some())
                .map(String::as_str)
                .collect();
            bail!(
                "hook pattern \"{pattern}\" matches no hook of {} with one vector per position; \
                 its hooks are {} (and the same for blocks 1–{})",
                model.info.name,
                block0.join(", "),
                model.info.dims.n_layers.saturating_sub(1)
            );
        }
        for name in matched {
            if out.iter().any(|(s, _)| &s.name == name) {
                continue;
            }
            let width = model.transformer.hook_width(name).unwrap_or(0);
            out.push((
                SourceInfo {
                    name: name.clone(),
                    kind: "hook".into(),
                    hook: name.clone(),
                    width,
                    sae_path: None,
                },
                Plan::Hook,
            ));
        }
    }
    for path in &opts.saes {
        let sae =
            crate::sae::open(path).with_context(|| format!("opening SAE {}", path.display()))?;
        sae.check_fits(&model.transformer, &model.info.name)?;
        let name = format!("sae:{}", sae_folder_name(path));
        if out.iter().any(|(s, _)| s.name == name) {
            bail!("two SAEs are both named {name}; give them folders with different names");
        }
        out.push((
            SourceInfo {
                name,
                kind: "sae".into(),
                hook: sae.cfg.hook_name.clone(),
                width: sae.cfg.d_sae,
                sae_path: Some(path.display().to_string()),
            },
            Plan::Sae(Arc::new(sae)),
        ));
    }
    if out.is_empty() {
        bail!("nothing to scan: give --hooks or --sae");
    }
    Ok(out)
}

/// An SAE source's name: its folder (the folder holding `params.npz` for a file).
pub fn sae_folder_name(path: &Path) -> String {
    let dir = if path.is_file() {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sae".into())
}

/// What a resume must match, beyond the model and corpus fingerprints.
#[derive(Serialize)]
struct ResumeParams<'a> {
    sources: Vec<&'a str>,
    saes: Vec<String>,
}

fn describe_scan(r: &ScanRecord) -> String {
    format!(
        "model {} ({}) on corpus {}",
        r.model_name, r.model_path, r.corpus_path
    )
}

/// What two scans must share to be one scan (or shards of one, shard index aside).
#[allow(clippy::type_complexity)]
fn settings(
    r: &ScanRecord,
) -> (
    usize,
    usize,
    usize,
    Option<u32>,
    Option<u64>,
    u64,
    u64,
    u64,
    &str,
) {
    (
        r.context,
        r.top_k,
        r.per_quantile,
        r.bos_id,
        r.max_tokens,
        r.shard_index,
        r.shard_count,
        r.seed,
        &r.params,
    )
}

/// Checks that `existing` is the scan `wanted` describes (same model, corpus and settings).
fn check_same_scan(store: &Path, existing: &ScanRecord, wanted: &ScanRecord) -> Result<()> {
    if existing.model_fingerprint != wanted.model_fingerprint
        || existing.corpus_fingerprint != wanted.corpus_fingerprint
    {
        bail!(
            "store {} holds a scan of {}; this scan is of {}: use another --out",
            store.display(),
            describe_scan(existing),
            describe_scan(wanted)
        );
    }
    if settings(existing) != settings(wanted) {
        bail!(
            "store {} holds a scan with other settings (context {}, top-k {}, {} per quantile, \
             BOS {:?}, tokens {:?}, shard {}/{}, seed {}, sources {}); resume with the same ones",
            store.display(),
            existing.context,
            existing.top_k,
            existing.per_quantile,
            existing.bos_id,
            existing.max_tokens,
            existing.shard_index,
            existing.shard_count,
            existing.seed,
            existing.params
        );
    }
    Ok(())
}

/// Runs (or resumes) a scan into `opts.out`. `progress` hears after every batch; `cancelled`
/// is polled between batches, and a cancelled scan commits what it has and returns with
/// `complete: false`.
pub fn scan(
    model: &Model,
    opts: &ScanOptions,
    progress: &mut dyn FnMut(&ScanProgress),
    cancelled: &dyn Fn() -> bool,
) -> Result<ScanSummary> {
    let started = Instant::now();
    if opts.top_k == 0 || opts.batch == 0 {
        bail!("--top-k and --batch must be at least 1");
    }
    let n_ctx = model.info.dims.n_ctx;
    if opts.context < 2 || opts.context > n_ctx {
        bail!(
            "--context {} must be between 2 and the model's {n_ctx} positions",
            opts.context
        );
    }
    let prefix = model.tokenizer.bos_prefix(opts.bos)?;
    let body = opts.context - prefix.len();
    let corpus = Corpus::open(&opts.corpus)?;
    let plans = resolve_sources(model, opts)?;
    let infos: Vec<SourceInfo> = plans.iter().map(|(i, _)| i.clone()).collect();
    let params = serde_json::to_string(&ResumeParams {
        sources: infos.iter().map(|s| s.name.as_str()).collect(),
        saes: opts.saes.iter().map(|p| p.display().to_string()).collect(),
    })?;
    let stamp = super::store::now();
    let mut record = ScanRecord {
        model_name: model.info.name.clone(),
        model_path: model.info.path.display().to_string(),
        model_fingerprint: model_fingerprint(&model.info.path)?,
        corpus_path: opts.corpus.display().to_string(),
        corpus_fingerprint: corpus.fingerprint.clone(),
        context: opts.context,
        top_k: opts.top_k,
        per_quantile: opts.per_quantile,
        bos_id: prefix.first().copied(),
        max_tokens: opts.max_tokens,
        shard_index: opts.shard.index,
        shard_count: opts.shard.count,
        seed: opts.seed,
        params,
        next_window: 0,
        windows_scanned: 0,
        tokens_scanned: 0,
        complete: false,
        started_at: stamp.clone(),
        updated_at: stamp,
    };
    let mut store = Store::open(&opts.out)?;
    let mut stats: Vec<SourceStats> = match store.scan()? {
        Some(existing) => {
            if !opts.resume {
                bail!(
                    "store {} already holds a scan ({}, {} windows{}); pass --resume to \
                     continue it, or choose another --out",
                    opts.out.display(),
                    describe_scan(&existing),
                    existing.windows_scanned,
                    if existing.complete { ", complete" } else { "" }
                );
            }
            check_same_scan(&opts.out, &existing, &record)?;
            record = existing;
            store.load_stats()?
        }
        None => {
            store.begin_scan(&record, &infos)?;
            infos
                .iter()
                .map(|i| {
                    let keep = Keep {
                        top_k: opts.top_k,
                        per_quantile: opts.per_quantile,
                    };
                    SourceStats::new(&i.name, i.width, keep)
                })
                .collect()
        }
    };
    let summary = |record: &ScanRecord, run_tokens: u64, phases: &ScanPhases| ScanSummary {
        store: opts.out.clone(),
        windows: record.windows_scanned,
        tokens: record.tokens_scanned,
        sources: infos.clone(),
        complete: record.complete,
        tokens_per_s: run_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        duration_s: started.elapsed().as_secs_f64(),
        phases: phases.clone(),
    };
    let mut phases = ScanPhases::default();
    if record.complete {
        return Ok(summary(&record, 0, &phases));
    }

    let mut windows = Windows::new(&corpus, &model.tokenizer, prefix, body, opts.max_tokens);
    let total_windows = windows.end().map(|end| {
        (opts.shard.index..end)
            .step_by(opts.shard.count as usize)
            .count() as u64
    });
    let mut known_vocab: HashSet<u32> = store.vocab()?.into_iter().map(|(id, _)| id).collect();
    let mut capture: Vec<String> = Vec::new();
    for (info, _) in &plans {
        if !capture.contains(&info.hook) {
            capture.push(info.hook.clone());
        }
    }
    let spec = HookSpec::capture(capture);
    let mut pending_windows: Vec<Window> = Vec::new();
    let mut pending_vocab: Vec<(u32, String)> = Vec::new();
    let mut last_commit = Instant::now();
    // Commits are spaced so that they take at most a tenth of the scan: after the first, ten
    // times the last one's duration; before it, ten times an estimate from the bytes it will
    // write (every unit's examples, f16 per position, at the ≈ 80 MB/s a commit reached on
    // SmolLM2's 46 080 units).
    let example_bytes: usize = infos
        .iter()
        .map(|i| i.width * (opts.top_k + N_QUANTILES * opts.per_quantile) * opts.context * 2)
        .sum();
    let first_commit_estimate = Duration::from_secs_f64(example_bytes as f64 / 80e6);
    let mut commit_interval = opts.commit_every.max(first_commit_estimate * 10);
    let mut run_tokens = 0u64;
    let run_start = Instant::now();
    loop {
        let mut batch: Vec<Window> = Vec::with_capacity(opts.batch);
        while batch.len() < opts.batch {
            match windows.next_window()? {
                Some(w) if w.index >= record.next_window && opts.shard.takes(w.index) => {
                    batch.push(w)
                }
                Some(_) => continue,
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let tokens: Vec<Vec<u32>> = batch.iter().map(|w| w.ids.clone()).collect();
        let forward_start = Instant::now();
        let captures = model
            .transformer
            .forward_captures(&tokens, &spec, &mut NoObserver)?;
        let accumulate_start = Instant::now();
        phases.forward_s += (accumulate_start - forward_start).as_secs_f64();
        let scored: Vec<Vec<bool>> = tokens
            .iter()
            .map(|ids| {
                ids.iter()
                    .map(|&id| !model.tokenizer.is_special(id))
                    .collect()
            })
            .collect();
        let window_ids: Vec<u64> = batch.iter().map(|w| w.index).collect();
        let n_rows = tokens.len() * opts.context;
        // Each source reads its hook's activations, `[windows, positions, width]`, where the
        // pass left them (no copy); an SAE's latents are encoded from them first.
        let seed = opts.seed;
        stats
            .par_iter_mut()
            .zip(plans.par_iter())
            .map(|(source, (info, plan))| -> Result<()> {
                let t = captures
                    .get(&info.hook)
                    .with_context(|| format!("{} was not captured", info.hook))?;
                crate::model::transformer::with_f32_slice(t, |x| -> Result<()> {
                    match plan {
                        Plan::Hook => source.add_batch(&window_ids, &scored, x, seed),
                        Plan::Sae(sae) => {
                            let features = sae.encode(x, n_rows)?.features;
                            source.add_batch(&window_ids, &scored, &features, seed)
                        }
                    }
                    Ok(())
                })?
            })
            .collect::<Result<Vec<()>>>()?;
        phases.accumulate_s += accumulate_start.elapsed().as_secs_f64();
        let batch_tokens: u64 = scored
            .iter()
            .map(|s| s.iter().filter(|x| **x).count() as u64)
            .sum();
        run_tokens += batch_tokens;
        record.tokens_scanned += batch_tokens;
        record.windows_scanned += batch.len() as u64;
        record.next_window = batch.last().map_or(record.next_window, |w| w.index + 1);
        for w in &batch {
            for &id in &w.ids {
                if known_vocab.insert(id) {
                    pending_vocab.push((id, model.tokenizer.token_text(id)));
                }
            }
        }
        pending_windows.extend(batch);
        let elapsed = run_start.elapsed().as_secs_f64();
        progress(&ScanProgress {
            windows: record.windows_scanned,
            total_windows,
            tokens: record.tokens_scanned,
            tokens_per_s: run_tokens as f64 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            files_done: windows.files_done(),
            files_total: corpus.files.len(),
        });
        let stop = cancelled();
        if stop || last_commit.elapsed() >= commit_interval {
            let commit_start = Instant::now();
            store.commit(&record, &mut stats, &pending_windows, &pending_vocab, stop)?;
            pending_windows.clear();
            pending_vocab.clear();
            last_commit = Instant::now();
            commit_interval = opts.commit_every.max(commit_start.elapsed() * 10);
            phases.commit_s += commit_start.elapsed().as_secs_f64();
        }
        if stop {
            return Ok(summary(&record, run_tokens, &phases));
        }
    }
    if record.windows_scanned == 0 {
        bail!(
            "corpus {} has no window of {body} tokens (documents are cut into windows of \
             --context tokens{}; use a smaller --context)",
            opts.corpus.display(),
            if body < opts.context {
                ", BOS included"
            } else {
                ""
            }
        );
    }
    record.complete = true;
    let commit_start = Instant::now();
    store.commit(&record, &mut stats, &pending_windows, &pending_vocab, true)?;
    phases.commit_s += commit_start.elapsed().as_secs_f64();
    Ok(summary(&record, run_tokens, &phases))
}

/// Combines shard stores into `out`, the store one scan over every window would have written.
pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<ScanSummary> {
    let started = Instant::now();
    if shards.is_empty() {
        bail!("give the shard stores to merge");
    }
    if out.exists() {
        bail!("{} exists; merge writes a new store", out.display());
    }
    let mut records = Vec::new();
    for path in shards {
        let store = Store::open_existing(path)?;
        let r = store.held_scan()?;
        if !r.complete {
            bail!(
                "store {} is an unfinished scan ({} windows); finish it with --resume first",
                path.display(),
                r.windows_scanned
            );
        }
        records.push((path, r, store.sources()?));
    }
    let (first_path, first, first_sources) = &records[0];
    let mut indices = Vec::new();
    for (path, r, sources) in &records {
        let mut a = r.clone();
        a.shard_index = first.shard_index;
        let same = a.model_fingerprint == first.model_fingerprint
            && a.corpus_fingerprint == first.corpus_fingerprint
            && settings(&a) == settings(first)
            && sources == first_sources;
        if !same {
            bail!(
                "stores {} and {} are not shards of one scan ({} vs {})",
                first_path.display(),
                path.display(),
                describe_scan(first),
                describe_scan(r)
            );
        }
        indices.push(r.shard_index);
    }
    indices.sort();
    let expected: Vec<u64> = (0..first.shard_count).collect();
    if indices != expected {
        bail!(
            "shards {:?} of {} given; merge needs each of 0..{} exactly once",
            indices,
            first.shard_count,
            first.shard_count
        );
    }
    let mut merged: Option<Vec<SourceStats>> = None;
    let mut all_windows = Vec::new();
    let mut vocab = Vec::new();
    let mut record = first.clone();
    record.windows_scanned = 0;
    record.tokens_scanned = 0;
    record.next_window = 0;
    for (path, r, _) in &records {
        let store = Store::open_existing(path)?;
        let stats = store.load_stats()?;
        merged = Some(match merged {
            None => stats,
            Some(mut acc) => {
                for (a, b) in acc.iter_mut().zip(&stats) {
                    a.merge(b);
                }
                acc
            }
        });
        all_windows.extend(store.windows()?);
        vocab.extend(store.vocab()?);
        record.windows_scanned += r.windows_scanned;
        record.tokens_scanned += r.tokens_scanned;
        record.next_window = record.next_window.max(r.next_window);
    }
    all_windows.sort_by_key(|w| w.index);
    vocab.sort();
    vocab.dedup_by_key(|(id, _)| *id);
    record.shard_index = 0;
    record.shard_count = 1;
    record.complete = true;
    let mut stats = merged.unwrap_or_default();
    for unit in stats.iter_mut().flat_map(|s| s.units.iter_mut()) {
        unit.examples_dirty = true;
    }
    let mut store = Store::open(out)?;
    store.begin_scan(&record, first_sources)?;
    store.commit(&record, &mut stats, &all_windows, &vocab, true)?;
    Ok(ScanSummary {
        store: out.to_path_buf(),
        windows: record.windows_scanned,
        tokens: record.tokens_scanned,
        sources: first_sources.clone(),
        complete: true,
        tokens_per_s: 0.0,
        duration_s: started.elapsed().as_secs_f64(),
        phases: ScanPhases::default(),
    })
}
