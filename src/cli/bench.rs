//! `dendrite bench`: the engine's and the worker's timings on one model, as a table or JSON
//! (see [`crate::bench`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::bench::{self, BenchOptions, BenchReport, Timing};

#[derive(Args, Debug)]
pub struct BenchArgs {
    pub model: PathBuf,
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    pub tokens: Vec<usize>,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Layers to clamp at (default: ¼, ½ and ¾ of the depth).
    #[arg(long, value_delimiter = ',')]
    pub clamp_layers: Option<Vec<usize>>,
    #[arg(long)]
    pub json: bool,
    /// Only measure peak memory: load, then one capturing pass of the longest `--tokens`
    /// prompt, in this fresh process.
    #[arg(long)]
    pub peak_rss: bool,
}

pub fn bench_cmd(args: &BenchArgs) -> Result<()> {
    crate::tune_threads();
    if args.peak_rss {
        let n = args.tokens.iter().copied().max().unwrap_or(256);
        let peak = bench::peak_rss(&args.model, n)?;
        if args.json {
            outln!("{}", serde_json::to_string(&peak)?);
        } else {
            outln!(
                "{} · peak RSS: load {:.0} MiB, + one {n}-token forward capturing every \
                 mlp.hook_post and pattern {:.0} MiB, + the worker's run of it {:.0} MiB",
                peak.model,
                peak.load_mib,
                peak.capture_mib,
                peak.worker_run_mib
            );
        }
        return Ok(());
    }
    let opts = BenchOptions {
        tokens: args.tokens.clone(),
        repeats: args.repeats,
        clamp_layers: args.clamp_layers.clone(),
    };
    let report = bench::run(&args.model, &opts, &mut |what| eprintln!("  {what}"))?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn cell(t: &Timing) -> String {
    format!("{:.1} ({:.1}–{:.1})", t.median, t.min, t.max)
}

fn print_table(report: &BenchReport) {
    outln!(
        "{} · {} · {} threads · median (min–max) ms",
        report.model,
        report.cpu,
        report.threads
    );
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: String, cells: Vec<String>| rows.push((name, cells));
    let r = &report.results;
    row("load".into(), r.iter().map(|x| cell(&x.load_ms)).collect());
    row(
        "forward".into(),
        r.iter().map(|x| cell(&x.forward_ms)).collect(),
    );
    row(
        "forward, capturing".into(),
        r.iter().map(|x| cell(&x.capture_ms)).collect(),
    );
    row(
        "matmuls alone (roofline)".into(),
        r.iter().map(|x| cell(&x.matmul_ms)).collect(),
    );
    row(
        "forward / roofline".into(),
        r.iter()
            .map(|x| format!("{:.2}×", x.forward_over_matmul))
            .collect(),
    );
    row(
        "GFLOP/s (matmuls)".into(),
        r.iter().map(|x| format!("{:.0}", x.gflops)).collect(),
    );
    if let Some(first) = r.first() {
        let mut layers: Vec<&String> = first.clamp_ms.keys().collect();
        layers.sort_by_key(|l| l[1..].parse::<usize>().unwrap_or(usize::MAX));
        for layer in layers {
            row(
                format!("clamp {layer}, worker done"),
                r.iter().map(|x| cell(&x.clamp_ms[layer])).collect(),
            );
            row(
                format!("clamp {layer}, last position"),
                r.iter()
                    .map(|x| cell(&x.clamp_last_position_ms[layer]))
                    .collect(),
            );
        }
    }
    if let Some(first) = r.first() {
        for method in first.sparsity_change_ms.keys() {
            row(
                format!("sparsity method → {method}"),
                r.iter()
                    .map(|x| cell(&x.sparsity_change_ms[method]))
                    .collect(),
            );
        }
    }
    row(
        "logit lens".into(),
        r.iter().map(|x| cell(&x.lens_ms)).collect(),
    );
    row(
        "head scores (4 × 40)".into(),
        r.iter().map(|x| cell(&x.heads_ms)).collect(),
    );
    row(
        "tokens/s (forward)".into(),
        r.iter().map(|x| format!("{:.0}", x.tokens_per_s)).collect(),
    );
    let name_width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let cell_width = rows
        .iter()
        .flat_map(|(_, c)| c.iter().map(|s| s.chars().count()))
        .max()
        .unwrap_or(0)
        .max(12);
    let header: Vec<String> = r
        .iter()
        .map(|x| format!("{:>cell_width$}", format!("{} tokens", x.tokens)))
        .collect();
    outln!("{:name_width$}  {}", "", header.join("  "));
    for (name, cells) in rows {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>cell_width$}")).collect();
        outln!("{name:name_width$}  {}", cells.join("  "));
    }
}
