//! `dendrite bench`: in-process timings of the engine and the worker on one model, in the
//! spirit of llama-bench. Per prompt length: a plain forward pass, a pass capturing every
//! `mlp.hook_post` and attention pattern, the worker's whole handling of a clamp change at
//! chosen layers (at every position, and at the last position only), the logit lens, and the
//! head-score probe; beside them the roofline — the same pass's matrix multiplies alone, run
//! through the packed kernel on the model's own weights — and the GFLOP/s that implies.
//! Everything goes through the code paths the app uses (the worker's [`Session`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::analysis::sparsity::Method;
use crate::model::{BosMode, HookSpec, Intervention, Model, NoObserver, ValueOp};
use crate::worker::{Command, Edit, Event, LensRequest, LoadModel, RunId, RunPrompt, Session};

/// Sparsity methods whose change `dendrite bench` times.
const SPARSITY_METHODS: [&str; 4] = ["eps:0.1", "cats:0.5", "chess:0.5", "cett:0.2"];

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt lengths in tokens.
    pub tokens: Vec<usize>,
    /// Timed repetitions of each measurement (after one untimed warm-up).
    pub repeats: usize,
    /// Layers to clamp at; `None`: ¼, ½ and ¾ of the depth.
    pub clamp_layers: Option<Vec<usize>>,
}

/// Median, fastest and slowest of a measurement, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Timing {
    /// The timing of `samples_ms` (none: all zero).
    pub fn of(samples_ms: &[f64]) -> Timing {
        if samples_ms.is_empty() {
            return Timing {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Timing {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

/// One prompt length's figures.
#[derive(Clone, Debug, Serialize)]
pub struct TokensResult {
    pub tokens: usize,
    pub load_ms: Timing,
    /// A plain pass, logits at every position.
    pub forward_ms: Timing,
    /// The same, capturing every `mlp.hook_post` and attention pattern.
    pub capture_ms: Timing,
    /// The worker's whole handling of a changed clamp at `L<layer>` (every position): the
    /// incremental rerun, its summaries and predictions.
    pub clamp_ms: BTreeMap<String, Timing>,
    /// The same with the clamp at the last position only.
    pub clamp_last_position_ms: BTreeMap<String, Timing>,
    /// The worker's handling of a changed sparsity method (from `zero`, same prompt): per
    /// method, the whole rerun of the run's summaries.
    pub sparsity_change_ms: BTreeMap<String, Timing>,
    /// The worker computing the logit lens of a finished run.
    pub lens_ms: Timing,
    /// Every head score on the probe of 4 × (2 × 20) random tokens (independent of `tokens`).
    pub heads_ms: Timing,
    /// The forward pass's matrix multiplies alone (blocks and unembedding, the model's packed
    /// weights): the roofline the pass is measured against.
    pub matmul_ms: Timing,
    /// FLOPs of those multiplies over their median time.
    pub gflops: f64,
    /// Plain forward over the matmul-only time.
    pub forward_over_matmul: f64,
    pub tokens_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub cpu: String,
    pub threads: usize,
    pub results: Vec<TokensResult>,
}

/// Handles `command`, failing on the worker's first error.
fn handle(session: &mut Session, command: Command) -> Result<()> {
    let mut error = None;
    // A benchmark never cancels its runs.
    session.handle(command, &|_: RunId| false, &mut |e| {
        if let Event::Error(e) = e {
            error.get_or_insert(format!("{}: {}", e.context, e.message));
        }
    });
    match error {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

/// `repeats` timings of `f` after one untimed warm-up.
fn time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing::of(&samples))
}

/// A text the model's tokenizer turns into exactly `n` tokens (the worker takes text).
pub fn prompt_of_length(model: &Model, n: usize) -> Result<(String, Vec<u32>)> {
    let sentence = "The quick brown fox jumps over the lazy dog while the curious cat watches \
                    from the warm windowsill. ";
    let ids = model.encode_prompt(&sentence.repeat(n / 8 + 4), BosMode::Auto)?;
    if ids.len() < n {
        bail!("cannot build a {n}-token prompt");
    }
    // Cutting the ids and decoding may merge across the cut: try a few cuts.
    for cut in n..(n + 8).min(ids.len()) {
        let text = model.tokenizer.decode(&ids[..cut]);
        let again = model.encode_prompt(&text, BosMode::Auto)?;
        if again.len() == n {
            return Ok((text, again));
        }
    }
    bail!("no text of the sample sentence tokenizes to exactly {n} tokens")
}

/// The model's CPU, as the kernel reports it.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs the benchmark on the model at `path`; `progress` hears what is being measured.
pub fn run(
    path: &Path,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    if opts.tokens.is_empty() || opts.tokens.contains(&0) {
        bail!("give prompt lengths of at least one token (--tokens 16,64,256)");
    }
    let repeats = opts.repeats.max(1);
    // Loading takes seconds: at most three timed loads.
    progress("loading");
    let mut session = Session::new();
    let mut load_samples = Vec::new();
    for _ in 0..repeats.min(3) {
        session = Session::new();
        let started = Instant::now();
        handle(
            &mut session,
            Command::LoadModel(LoadModel {
                path: path.to_path_buf(),
            }),
        )?;
        load_samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let load_ms = Timing::of(&load_samples);
    let model = session
        .shared_model()
        .context("the worker has no model after loading")?;
    let dims = model.info.dims.clone();
    let clamp_layers = match &opts.clamp_layers {
        Some(layers) => {
            if let Some(bad) = layers.iter().find(|&&l| l >= dims.n_layers) {
                bail!("layer {bad} is beyond the model's {} layers", dims.n_layers);
            }
            layers.clone()
        }
        None => {
            let mut l: Vec<usize> = [1, 2, 3].iter().map(|q| q * dims.n_layers / 4).collect();
            l.dedup();
            l
        }
    };
    let neuron = 123.min(dims.d_mlp.saturating_sub(1));

    progress("head scores (4 × 40 tokens)");
    let probe = crate::analysis::heads::repeated_random_tokens(20, 4, 0, 1, dims.d_vocab as u32);
    let heads_ms = if 40 <= dims.n_ctx {
        time(repeats, || {
            crate::analysis::heads::score_heads(&model.transformer, &probe, 20, false)?;
            Ok(())
        })?
    } else {
        Timing::of(&[])
    };

    let mut results = Vec::new();
    let mut run_id: RunId = 0;
    for &n in &opts.tokens {
        if n > dims.n_ctx {
            bail!(
                "{n} tokens is more than the model's context of {}",
                dims.n_ctx
            );
        }
        let (text, ids) = prompt_of_length(&model, n)?;
        let batch = vec![ids];
        let t = &model.transformer;
        progress(&format!("{n} tokens: forward"));
        let forward_ms = time(repeats, || {
            t.forward(&batch, &HookSpec::default(), &mut NoObserver)?;
            Ok(())
        })?;
        progress(&format!("{n} tokens: forward with capture"));
        let capture = HookSpec::capture(["blocks.*.mlp.hook_post", "blocks.*.attn.hook_pattern"]);
        let capture_ms = time(repeats, || {
            t.forward(&batch, &capture, &mut NoObserver)?;
            Ok(())
        })?;
        progress(&format!("{n} tokens: matrix multiplies alone"));
        let (matmul_ms, flops) = matmul_roofline(&model, n, repeats);

        let run_with = |run_id: RunId, interventions: Vec<Edit>, have: Option<RunId>, sparsity| {
            Command::Run(RunPrompt {
                run_id,
                text: text.clone(),
                bos: BosMode::Auto,
                interventions,
                sparsity,
                lens: false,
                patterns: false,
                have_baseline: have,
            })
        };
        let run = |run_id: RunId, interventions: Vec<Edit>, have: Option<RunId>| {
            run_with(run_id, interventions, have, Method::Zero)
        };
        let mut clamp_ms = BTreeMap::new();
        let mut clamp_last_position_ms = BTreeMap::new();
        for &layer in &clamp_layers {
            for last_only in [false, true] {
                progress(&format!(
                    "{n} tokens: clamp at layer {layer}{}",
                    if last_only { ", last position" } else { "" }
                ));
                // The UI holds this run's baseline; every clamp after it is a real change
                // (two values in turn), as a user dragging a value makes.
                run_id += 1;
                handle(&mut session, run(run_id, Vec::new(), None))?;
                // The UI files the baseline it holds under each newer run.
                let mut held = run_id;
                let mut flip = false;
                let timing = time(repeats, || {
                    flip = !flip;
                    let mut clamp = Intervention::neurons(
                        format!("blocks.{layer}.mlp.hook_post"),
                        vec![neuron],
                        ValueOp::Set(if flip { 10.0 } else { -10.0 }),
                    );
                    if last_only {
                        clamp = clamp.at_positions(vec![n - 1]);
                    }
                    run_id += 1;
                    let done = handle(
                        &mut session,
                        run(run_id, vec![Edit::Hook(clamp)], Some(held)),
                    );
                    held = run_id;
                    done
                })?;
                let key = format!("L{layer}");
                if last_only {
                    clamp_last_position_ms.insert(key, timing);
                } else {
                    clamp_ms.insert(key, timing);
                }
            }
        }
        let mut sparsity_change_ms = BTreeMap::new();
        for method in SPARSITY_METHODS {
            progress(&format!("{n} tokens: sparsity method {method}"));
            let method: Method = method.parse().map_err(anyhow::Error::msg)?;
            run_id += 1;
            handle(&mut session, run(run_id, Vec::new(), None))?;
            let mut held = run_id;
            let mut samples = Vec::new();
            for _ in 0..=repeats {
                // Back to zero (untimed), then the change to `method` (timed).
                run_id += 1;
                handle(&mut session, run(run_id, Vec::new(), Some(held)))?;
                held = run_id;
                run_id += 1;
                let started = Instant::now();
                handle(
                    &mut session,
                    run_with(run_id, Vec::new(), Some(held), method),
                )?;
                samples.push(started.elapsed().as_secs_f64() * 1e3);
                held = run_id;
            }
            // The first change is the warm-up.
            sparsity_change_ms.insert(method.to_string(), Timing::of(&samples[1..]));
        }
        progress(&format!("{n} tokens: logit lens"));
        run_id += 1;
        handle(&mut session, run(run_id, Vec::new(), None))?;
        let lens_run = run_id;
        let lens_ms = time(repeats, || {
            session.forget_lens();
            handle(
                &mut session,
                Command::Lens(LensRequest { run_id: lens_run }),
            )
        })?;
        results.push(TokensResult {
            tokens: n,
            load_ms,
            forward_ms,
            capture_ms,
            clamp_ms,
            clamp_last_position_ms,
            sparsity_change_ms,
            lens_ms,
            heads_ms,
            matmul_ms,
            gflops: flops / (matmul_ms.median * 1e6).max(1e-9),
            forward_over_matmul: forward_ms.median / matmul_ms.median.max(1e-9),
            tokens_per_s: n as f64 / (forward_ms.median / 1e3).max(1e-12),
        });
    }
    Ok(BenchReport {
        model: model.info.name.clone(),
        cpu: cpu_name(),
        threads: candle_core::utils::get_num_threads(),
        results,
    })
}

/// The matrix multiplies of an `n`-token forward pass alone, through the packed kernel on
/// the model's own weights (every block's projections and the unembedding; the attention
/// core's `q·k` and `p·v` at the same GFLOP/s), and their FLOPs.
fn matmul_roofline(model: &Model, n: usize, repeats: usize) -> (Timing, f64) {
    let t = &model.transformer;
    let mut linears = Vec::new();
    for b in &t.blocks {
        linears.extend([&b.attn.qkv, &b.attn.o, &b.mlp.w_in, &b.mlp.down]);
    }
    linears.push(&t.unembed);
    let widest = linears.iter().map(|l| l.weight.cols()).max().unwrap_or(0);
    // Inputs of no particular meaning: the kernel's time does not depend on the values.
    let x: Vec<f32> = (0..n * widest)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let projection_flops: f64 = linears
        .iter()
        .map(|l| 2.0 * (n * l.weight.rows() * l.weight.cols()) as f64)
        .sum();
    let run = || {
        let started = Instant::now();
        for l in &linears {
            let k = l.weight.cols();
            std::hint::black_box(l.weight.matmul_t(&x[..n * k], n, l.bias.as_deref()));
        }
        started.elapsed().as_secs_f64() * 1e3
    };
    run();
    let samples: Vec<f64> = (0..repeats).map(|_| run()).collect();
    let projections = Timing::of(&samples);
    // The attention core: scores and their weighted sum over the causal half of `n × n`, per
    // head, at the projections' rate.
    let d = &t.dims;
    let attention_flops =
        2.0 * 2.0 * (n * (n + 1) / 2) as f64 * (d.n_heads * d.d_head) as f64 * d.n_layers as f64;
    let rate = projection_flops / projections.median.max(1e-9);
    let extra = attention_flops / rate;
    let timing = Timing {
        median: projections.median + extra,
        min: projections.min + extra,
        max: projections.max + extra,
    };
    (timing, projection_flops + attention_flops)
}

#[cfg(test)]
mod tests {
    use super::Timing;

    #[test]
    fn timings_are_medians_and_extremes() {
        let t = Timing::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((t.median, t.min, t.max), (2.5, 1.0, 10.0));
        assert_eq!(Timing::of(&[4.0]).median, 4.0);
        assert_eq!(Timing::of(&[]).max, 0.0);
    }
}

/// Peak resident memory of a fresh process: after loading, after one capturing forward
/// (every `mlp.hook_post` and attention pattern, as HF's baseline captures), and after the
/// worker's run of the same prompt with patterns (what the app holds and sends).
#[derive(Clone, Debug, Serialize)]
pub struct PeakRss {
    pub model: String,
    pub tokens: usize,
    pub load_mib: f64,
    pub capture_mib: f64,
    pub worker_run_mib: f64,
}

/// The process's peak resident set (`VmHWM`), MiB.
pub fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (peak memory is measured on Linux)")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/self/status has no VmHWM line")?;
    Ok(kib / 1024.0)
}

/// Measures [`PeakRss`] for an `n`-token prompt; meaningful only as the first thing a process
/// does (the peak never goes down).
pub fn peak_rss(path: &Path, n: usize) -> Result<PeakRss> {
    let mut session = Session::new();
    handle(
        &mut session,
        Command::LoadModel(LoadModel {
            path: path.to_path_buf(),
        }),
    )?;
    let load_mib = peak_rss_mib()?;
    let model = session
        .shared_model()
        .context("the worker has no model after loading")?;
    if n == 0 || n > model.info.dims.n_ctx {
        bail!(
            "give a prompt length from 1 to the model's context of {} tokens",
            model.info.dims.n_ctx
        );
    }
    let (text, ids) = prompt_of_length(&model, n)?;
    let capture = HookSpec::capture(["blocks.*.mlp.hook_post", "blocks.*.attn.hook_pattern"]);
    drop(
        model
            .transformer
            .forward(&[ids], &capture, &mut NoObserver)?,
    );
    let capture_mib = peak_rss_mib()?;
    handle(
        &mut session,
        Command::Run(RunPrompt {
            run_id: 1,
            text,
            bos: BosMode::Auto,
            interventions: Vec::new(),
            sparsity: Method::Zero,
            lens: false,
            patterns: true,
            have_baseline: None,
        }),
    )?;
    Ok(PeakRss {
        model: model.info.name.clone(),
        tokens: n,
        load_mib,
        capture_mib,
        worker_run_mib: peak_rss_mib()?,
    })
}
