//! `dendrite scan`, `merge`, `examples`, `import-explanations`, `describe` and `search`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::describe::corpus::Shard;
use crate::describe::explanations::{self, Format};
use crate::describe::{ScanOptions, Store};
use crate::model::{self, BosMode};

#[derive(Args, Debug)]
pub struct ScanArgs {
    pub model: PathBuf,
    /// A .txt file, a .jsonl file of {"text": …} rows, or a folder of those.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Hooks whose units to scan, by name or glob; repeatable (none with --sae: only the SAE).
    #[arg(long = "hooks", value_name = "GLOB")]
    pub hooks: Vec<String>,
    /// SAEs whose latents to scan (source `sae:<folder name>`); repeatable.
    #[arg(long = "sae", value_name = "DIR")]
    pub saes: Vec<PathBuf>,
    /// Stop after this many corpus tokens (default: all).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Tokens per window, BOS included.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Windows kept per unit.
    #[arg(long, default_value_t = 32)]
    pub top_k: usize,
    /// Windows kept per quantile group (10 groups).
    #[arg(long, default_value_t = crate::describe::stats::DEFAULT_PER_QUANTILE)]
    pub quantile_examples: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// BOS before each window: auto (when the model's tokenizer adds one), yes or no.
    #[arg(long, default_value_t = BosMode::Auto)]
    pub bos: BosMode,
    /// Scan every N-th window starting at I (combine the shards with `dendrite merge`).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Seed of the quantile examples' draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the interrupted scan in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seconds between commits to the store, at least (commits are spaced so they take at
    /// most a tenth of the scan's time).
    #[arg(long, default_value_t = 30.0)]
    pub commit_every: f64,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The store to write (must not exist).
    pub out: PathBuf,
    /// Shard stores of one scan (`--shard I/N` for every I).
    #[arg(required = true)]
    pub stores: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// One unit of a store.
#[derive(Args, Debug)]
pub struct StoreUnit {
    pub store: PathBuf,
    /// `blocks.3.mlp.hook_post`, or `sae:<folder>` for an SAE's latents.
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub unit: usize,
}

#[derive(Args, Debug)]
pub struct ExamplesArgs {
    #[command(flatten)]
    pub of: StoreUnit,
    /// Top examples to list (default: all kept).
    #[arg(long)]
    pub top: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FacetsArgs {
    #[command(flatten)]
    pub of: StoreUnit,
    /// Facets to split into (default: chosen by silhouette among 2…6).
    #[arg(long)]
    pub k: Option<usize>,
    /// The model the windows run through again (default: the one the store was scanned with).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    pub store: PathBuf,
    /// A Neuronpedia export (JSON array or JSONL, optionally .gz) or OpenAI explanation
    /// file(s) (a file or a folder of {layer}/{neuron}.jsonl).
    pub file: PathBuf,
    #[arg(long)]
    pub source: String,
    /// neuronpedia or openai (default: recognised from the records).
    #[arg(long)]
    pub format: Option<Format>,
    /// Import even when the file names another model or indices beyond the source's width
    /// (those records are skipped).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    pub store: PathBuf,
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub unit: usize,
    /// Your description of the unit (an empty text removes it).
    pub text: String,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    pub store: PathBuf,
    /// Words to find in descriptions (all of them, full-text).
    pub query: String,
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Search units whose top examples peak on this token instead (the query is its text).
    #[arg(long)]
    pub token: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn scan(args: &ScanArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let mut opts = ScanOptions::new(&args.corpus, &args.out);
    opts.hooks = if args.hooks.is_empty() && args.saes.is_empty() {
        vec!["blocks.*.mlp.hook_post".into()]
    } else {
        args.hooks.clone()
    };
    opts.saes = args.saes.clone();
    opts.max_tokens = args.tokens;
    opts.context = args.context;
    opts.top_k = args.top_k;
    opts.per_quantile = args.quantile_examples;
    opts.batch = args.batch;
    opts.bos = args.bos;
    opts.shard = args.shard.unwrap_or_default();
    opts.seed = args.seed;
    opts.resume = args.resume;
    opts.commit_every = Duration::from_secs_f64(args.commit_every.max(0.0));

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only the first handler set in a process counts; a second scan in one process (tests)
        // keeps the first.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {msg} [{elapsed_precise}, eta {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = crate::describe::scan(
        &model,
        &opts,
        &mut |p| {
            match p.total_windows {
                Some(total) => {
                    bar.set_length(total);
                    bar.set_position(p.windows);
                }
                None => {
                    bar.set_length(p.files_total as u64);
                    bar.set_position(p.files_done as u64);
                }
            }
            bar.set_message(format!(
                "{} windows, {} tokens, {:.0} tokens/s",
                p.windows, p.tokens, p.tokens_per_s
            ));
        },
        &|| interrupted.load(Ordering::SeqCst),
    )?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        outln!(
            "{} {} windows, {} tokens of {} sources into {} ({:.0} tokens/s; forward {:.1} s, \
             accumulate {:.1} s, store {:.1} s, of {:.1} s)",
            if summary.complete {
                "scanned"
            } else {
                "interrupted after"
            },
            summary.windows,
            summary.tokens,
            summary.sources.len(),
            summary.store.display(),
            summary.tokens_per_s,
            summary.phases.forward_s,
            summary.phases.accumulate_s,
            summary.phases.commit_s,
            summary.duration_s
        );
    }
    if !summary.complete {
        bail!("scan interrupted; what it committed is kept: rerun with --resume to continue");
    }
    Ok(())
}

pub fn merge(args: &MergeArgs) -> Result<()> {
    let summary = crate::describe::merge(&args.out, &args.stores)?;
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        outln!(
            "merged {} stores: {} windows, {} tokens → {}",
            args.stores.len(),
            summary.windows,
            summary.tokens,
            summary.store.display()
        );
    }
    Ok(())
}

pub fn facets(args: &FacetsArgs) -> Result<()> {
    let store = Store::open_existing(&args.of.store)?;
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => PathBuf::from(store.held_scan()?.model_path),
    };
    let model = crate::model::open(&model_path)?;
    let facets = crate::describe::facets::unit_facets(
        &model,
        &store,
        &args.of.source,
        args.of.unit,
        args.k,
        args.seed,
    )?;
    if args.json {
        outln!("{}", serde_json::to_string(&facets)?);
        return Ok(());
    }
    outln!(
        "{} unit {}: {} facet(s) by {} at the peak (silhouette {:.3})",
        facets.source,
        facets.unit,
        facets.k,
        facets.hook,
        facets.silhouette
    );
    for (i, f) in facets.facets.iter().enumerate() {
        outln!(
            "  facet {i}: {} window(s), mean peak {:.3}: {}",
            f.size,
            f.mean_peak,
            f.label
        );
    }
    Ok(())
}

pub fn examples(args: &ExamplesArgs) -> Result<()> {
    let store = Store::open_existing(&args.of.store)?;
    let report = store.unit_report(&args.of.source, args.of.unit, args.top)?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    outln!(
        "{} unit {}: density {:.4} of {} tokens, max {}, mean {:.4}",
        report.source,
        report.unit,
        report.density,
        report.tokens_scanned,
        report.max.map_or("—".into(), |m| format!("{m:.3}")),
        report.mean
    );
    for e in &report.explanations {
        outln!("  \"{}\" — {}", e.description, e.origin);
    }
    for e in &report.examples {
        let text: String = e
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i as u32 == e.max_pos {
                    format!("[[{t}]]")
                } else {
                    t.clone()
                }
            })
            .collect();
        outln!(
            "  {:>8.3}  w{:<6} {}",
            e.max_act,
            e.window,
            text.replace('\n', "↵")
        );
    }
    Ok(())
}

pub fn import(args: &ImportArgs) -> Result<()> {
    let mut store = Store::open_existing(&args.store)?;
    let report = explanations::import(
        &mut store,
        &args.file,
        &args.source,
        args.format,
        args.force,
    )?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{}", report.summary(&args.source));
    }
    Ok(())
}

pub fn describe(args: &DescribeArgs) -> Result<()> {
    let mut store = Store::open_existing(&args.store)?;
    let info = store.source(&args.source)?;
    if args.unit >= info.width {
        bail!(
            "unit {} is beyond {}'s {} units",
            args.unit,
            args.source,
            info.width
        );
    }
    store.set_user_description(&args.source, args.unit, &args.text)?;
    Ok(())
}

pub fn search(args: &SearchArgs) -> Result<()> {
    let store = Store::open_existing(&args.store)?;
    let source = args.source.as_deref();
    if args.token {
        let hits = store.search_token(&args.query, source, args.limit)?;
        if args.json {
            outln!("{}", serde_json::to_string(&hits)?);
        } else {
            for h in hits {
                outln!(
                    "{} unit {}: {} top examples peak on token {} (max {:.3})",
                    h.source,
                    h.unit,
                    h.examples,
                    h.token_id,
                    h.max_act
                );
            }
        }
        return Ok(());
    }
    let hits = store.search(&args.query, source, args.limit)?;
    if args.json {
        outln!("{}", serde_json::to_string(&hits)?);
    } else {
        for h in hits {
            outln!(
                "{} unit {}: \"{}\" — {}",
                h.source,
                h.unit,
                h.description,
                h.origin
            );
        }
    }
    Ok(())
}
