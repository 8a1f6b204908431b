//! A run of auto-interpretation over units of a store: for each unit, an explanation from the
//! store's examples (delphi's or OpenAI's prompt), then detection and fuzzing scores on
//! held-out activating examples and non-activating windows (the unit's activations on them
//! computed with the store's model, so "non-activating" is measured, not assumed), and
//! OpenAI's simulation score on held-out activating examples and random windows. Units run
//! concurrently up to a bound; every prompt and answer is kept in the store for audit, with
//! the explanations and their scores.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::client::{ChatClient, ChatOptions, Endpoint, Reply, TokenLogprob, map_concurrent};
use super::prompts::{self, ExplainerKind, Msg, Record};
use super::scoring::{
    BinaryScores, Scores, SimulationScores, binary_scores, expected_level, simulation_scores,
};
use crate::describe::store::{ExampleOut, SourceInfo, Store};
use crate::model::{HookSpec, Model, NoObserver};
use crate::sae::Sae;

/// A scorer of explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerKind {
    Detection,
    Fuzzing,
    Simulation,
}

impl ScorerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScorerKind::Detection => "detection",
            ScorerKind::Fuzzing => "fuzzing",
            ScorerKind::Simulation => "simulation",
        }
    }
}

impl std::str::FromStr for ScorerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "detection" => Ok(ScorerKind::Detection),
            "fuzzing" => Ok(ScorerKind::Fuzzing),
            "simulation" => Ok(ScorerKind::Simulation),
            other => bail!("unknown scorer \"{other}\" (detection, fuzzing, simulation)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExplainOptions {
    pub store: PathBuf,
    pub source: String,
    pub units: Vec<usize>,
    pub explainer: ExplainerKind,
    pub scorers: Vec<ScorerKind>,
    pub endpoint: Endpoint,
    /// Units explained at once.
    pub concurrency: usize,
    /// Examples shown to the explainer at most (spread over the activation range).
    pub explain_examples: usize,
    /// Held-out activating examples scored at most, and as many non-activating windows.
    pub test_examples: usize,
    /// Examples per scorer prompt.
    pub batch: usize,
    /// Tokens per example, around the peak (delphi: 32).
    pub window_tokens: usize,
    pub seed: u64,
    /// The model the store was scanned with, when it is not at the recorded path.
    pub subject_model: Option<PathBuf>,
    /// The source's SAE, when it is not at the recorded path.
    pub subject_sae: Option<PathBuf>,
    /// Ask scorers for log-probabilities (for AUC).
    pub logprobs: bool,
}

impl ExplainOptions {
    /// A run with the usual settings (delphi's prompt, detection and fuzzing, 20 examples
    /// shown, 10 + 10 scored in prompts of 5, 32-token examples, 4 units at once).
    pub fn new(store: PathBuf, source: String, units: Vec<usize>, endpoint: Endpoint) -> Self {
        ExplainOptions {
            store,
            source,
            units,
            explainer: ExplainerKind::Delphi,
            scorers: vec![ScorerKind::Detection, ScorerKind::Fuzzing],
            endpoint,
            concurrency: 4,
            explain_examples: 20,
            test_examples: 10,
            batch: 5,
            window_tokens: 32,
            seed: 0,
            subject_model: None,
            subject_sae: None,
            logprobs: true,
        }
    }

    /// Requests the run will make at most, before retries: detection and fuzzing ask about
    /// `batch` examples at once, simulation about one sequence.
    pub fn estimated_requests(&self) -> usize {
        let per_unit: usize = self
            .scorers
            .iter()
            .map(|s| match s {
                ScorerKind::Detection | ScorerKind::Fuzzing => {
                    (2 * self.test_examples).div_ceil(self.batch.max(1))
                }
                ScorerKind::Simulation => 2 * self.test_examples,
            })
            .sum();
        self.units.len() * (1 + per_unit)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScorerResult {
    pub scorer: ScorerKind,
    pub scores: Scores,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnitResult {
    pub unit: usize,
    pub explanation: Option<String>,
    /// Why there is no explanation or score (too few examples, an answer that did not
    /// parse, an endpoint error).
    pub problems: Vec<String>,
    pub scores: Vec<ScorerResult>,
    pub activating_examples: usize,
    pub non_activating_examples: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExplainSummary {
    pub run_id: i64,
    pub units: Vec<UnitResult>,
    pub requests: usize,
    pub estimated_requests: usize,
}

/// One request and its answer, for the audit table.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub unit: usize,
    pub purpose: String,
    pub messages: Vec<Msg>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub duration_ms: f64,
}

/// What a unit is explained and scored on.
struct UnitInputs {
    unit: usize,
    /// Activating examples from the store, strongest first.
    active: Vec<Record>,
    /// Windows where the unit does not fire (measured).
    inactive: Vec<Record>,
    /// Random windows (simulation only).
    random: Vec<Record>,
}

/// What a unit's work produced.
struct UnitWork {
    result: UnitResult,
    audit: Vec<AuditEntry>,
}

/// An example: its text pieces and the unit's activations, cropped around its peak.
pub fn crop(tokens: &[String], acts: &[f32], centre: usize, len: usize) -> Record {
    let n = tokens.len().min(acts.len());
    let len = len.min(n);
    let start = centre.saturating_sub(len / 2).min(n - len);
    Record {
        tokens: tokens[start..start + len].to_vec(),
        acts: acts[start..start + len].to_vec(),
    }
}

/// Runs the explainer and scorers over `opts.units`; `progress(done, total, requests)` after
/// each unit; `cancel()` is checked between units.
pub fn explain(
    opts: &ExplainOptions,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<ExplainSummary> {
    explain_with_model(opts, None, progress, cancel)
}

/// [`explain`], measuring non-activating windows with `loaded` — the model at
/// `opts.subject_model`, already open (the app's) — instead of opening it a second time.
pub fn explain_with_model(
    opts: &ExplainOptions,
    loaded: Option<Arc<Model>>,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<ExplainSummary> {
    if opts.units.is_empty() {
        bail!("no units to explain");
    }
    if opts.batch == 0 || opts.window_tokens == 0 {
        bail!("the batch and the example length must be at least 1");
    }
    let mut store = Store::open_existing(&opts.store)?;
    let info = store.source(&opts.source)?;
    if let Some(bad) = opts.units.iter().find(|&&u| u >= info.width) {
        bail!(
            "unit {bad} is beyond source {}'s {} units",
            opts.source,
            info.width
        );
    }
    let scan = store.held_scan()?;
    let skip_first = usize::from(scan.bos_id.is_some());
    let vocab: std::collections::HashMap<u32, String> = store.vocab()?.into_iter().collect();
    let text_of = |id: &u32| vocab.get(id).cloned().unwrap_or_else(|| format!("<{id}>"));

    // Non-activating candidates: random windows of the store, with the units' activations
    // measured on them.
    let mut non_activating: Vec<Vec<Record>> = vec![Vec::new(); opts.units.len()];
    // Simulation also scores random windows, whatever the unit does on them (OpenAI's
    // "random" sequences).
    let mut random: Vec<Vec<Record>> = vec![Vec::new(); opts.units.len()];
    let simulating = opts.scorers.contains(&ScorerKind::Simulation);
    if !opts.scorers.is_empty() {
        let model_path = opts
            .subject_model
            .clone()
            .unwrap_or_else(|| PathBuf::from(&scan.model_path));
        if !model_path.exists() {
            bail!(
                "the store's model {} is not at {}: give it with --subject-model (it is needed \
                 to find windows where the units do not fire)",
                scan.model_name,
                model_path.display()
            );
        }
        let fingerprint = crate::describe::corpus::model_fingerprint(&model_path)?;
        if fingerprint != scan.model_fingerprint {
            bail!(
                "{} is not the model this store was scanned with ({})",
                model_path.display(),
                scan.model_name
            );
        }
        let model = match loaded {
            Some(model) => model,
            None => Arc::new(crate::model::open(&model_path)?),
        };
        let sae_path = match (&opts.subject_sae, &info.sae_path) {
            (Some(given), _) => Some(given.clone()),
            (None, Some(recorded)) => Some(PathBuf::from(recorded)),
            (None, None) => None,
        };
        let sae = match sae_path {
            Some(p) if !p.exists() => bail!(
                "the source's SAE is not at {}: give it with --subject-sae",
                p.display()
            ),
            Some(p) => Some(
                crate::sae::open(&p)
                    .with_context(|| format!("opening the source's SAE {}", p.display()))?,
            ),
            None => None,
        };
        let mut windows = store.windows()?;
        let mut rng = StdRng::seed_from_u64(opts.seed);
        windows.shuffle(&mut rng);
        // Four times as many candidates as needed: most windows do not fire a sparse unit.
        windows.truncate(opts.test_examples * 4);
        let acts = unit_activations(&model, sae.as_ref(), &info, &windows, &opts.units)?;
        for (w, per_unit) in windows.iter().zip(acts) {
            let tokens: Vec<String> = w.ids.iter().map(text_of).collect();
            for (u, a) in per_unit.into_iter().enumerate() {
                let scored = &a[skip_first.min(a.len())..];
                let inactive = scored.iter().all(|&x| x <= 0.0);
                let wanted = (non_activating[u].len() < opts.test_examples && inactive)
                    || (simulating && random[u].len() < opts.test_examples);
                if !wanted {
                    continue;
                }
                let start = rng_offset(&mut rng, scored.len(), opts.window_tokens);
                let record = crop(
                    &tokens[skip_first.min(tokens.len())..],
                    scored,
                    start + opts.window_tokens / 2,
                    opts.window_tokens,
                );
                if simulating && random[u].len() < opts.test_examples {
                    random[u].push(record.clone());
                }
                if non_activating[u].len() < opts.test_examples && inactive {
                    non_activating[u].push(record);
                }
            }
        }
    }

    // Each unit's activating examples from the store, strongest first.
    let mut inputs = Vec::with_capacity(opts.units.len());
    for (i, &unit) in opts.units.iter().enumerate() {
        let report = store.unit_report(&opts.source, unit, None)?;
        let mut seen = std::collections::HashSet::new();
        let mut examples: Vec<&ExampleOut> = report
            .examples
            .iter()
            .chain(report.quantiles.iter().flat_map(|q| &q.examples))
            .filter(|e| e.max_act > 0.0 && seen.insert(e.window))
            .collect();
        examples.sort_by(|a, b| b.max_act.total_cmp(&a.max_act));
        let records: Vec<Record> = examples
            .iter()
            .map(|e| {
                let n = e.tokens.len().min(e.acts.len());
                let first = skip_first.min(n);
                crop(
                    &e.tokens[first..n],
                    &e.acts[first..n],
                    (e.max_pos as usize).saturating_sub(first),
                    opts.window_tokens,
                )
            })
            .collect();
        inputs.push(UnitInputs {
            unit,
            active: records,
            inactive: std::mem::take(&mut non_activating[i]),
            random: std::mem::take(&mut random[i]),
        });
    }

    let run_id = store.begin_interp_run(opts)?;
    let client = ChatClient::new(opts.endpoint.clone());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = inputs.len();
    let works: Vec<Option<UnitWork>> = map_concurrent(inputs, opts.concurrency, |_, inputs| {
        if cancel() {
            return None;
        }
        let work = explain_unit(opts, &client, inputs);
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        progress(n, total, client.requests());
        Some(work)
    });
    let mut units = Vec::new();
    for work in works.into_iter().flatten() {
        store.save_interp_unit(run_id, &opts.source, opts, &work.result, &work.audit)?;
        units.push(work.result);
    }
    store.finish_interp_run(run_id, client.requests())?;
    Ok(ExplainSummary {
        run_id,
        units,
        requests: client.requests(),
        estimated_requests: opts.estimated_requests(),
    })
}

/// A random start so that `len` tokens fit in `n`.
fn rng_offset(rng: &mut StdRng, n: usize, len: usize) -> usize {
    use rand::Rng as _;
    if n <= len {
        0
    } else {
        rng.random_range(0..=n - len)
    }
}

/// `[window][unit][position]` activations of `units` of `info` on `windows`.
fn unit_activations(
    model: &Model,
    sae: Option<&Sae>,
    info: &SourceInfo,
    windows: &[crate::describe::corpus::Window],
    units: &[usize],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let spec = HookSpec::capture([info.hook.clone()]);
    let mut out = Vec::with_capacity(windows.len());
    for batch in windows.chunks(8) {
        let tokens: Vec<Vec<u32>> = batch.iter().map(|w| w.ids.clone()).collect();
        let captures = model
            .transformer
            .forward_captures(&tokens, &spec, &mut NoObserver)?;
        for b in 0..batch.len() {
            let (rows, n) = crate::sae::apply::hook_rows(&captures, &info.hook, b)?;
            let (values, width) = match sae {
                Some(sae) => {
                    let encoded = sae.encode(&rows, n)?;
                    let values: Vec<f32> = (0..n).flat_map(|t| encoded.row(t).to_vec()).collect();
                    (values, sae.cfg.d_sae)
                }
                None => (rows, info.width),
            };
            if values.len() != n * width {
                return Err(anyhow!(
                    "{} has {} values for {n} positions of width {width}",
                    info.hook,
                    values.len()
                ));
            }
            out.push(
                units
                    .iter()
                    .map(|&u| (0..n).map(|t| values[t * width + u]).collect())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Answer lengths: delphi's explainer may reason before its `[EXPLANATION]:` line; OpenAI's
/// completes one sentence; a scorer writes a list of n digits.
fn score_max_tokens(n: usize) -> usize {
    4 + 3 * n
}

fn explain_unit(opts: &ExplainOptions, client: &ChatClient, inputs: UnitInputs) -> UnitWork {
    let UnitInputs {
        unit,
        active,
        inactive,
        random,
    } = inputs;
    let mut audit = Vec::new();
    let mut result = UnitResult {
        unit,
        explanation: None,
        problems: Vec::new(),
        scores: Vec::new(),
        activating_examples: active.len(),
        non_activating_examples: inactive.len(),
    };
    if active.len() < 2 {
        result.problems.push(format!(
            "{} activating example(s) in the store: too few to explain",
            active.len()
        ));
        return UnitWork { result, audit };
    }
    // Alternate: the explainer gets every other example (the whole range), scoring the rest.
    let (mut shown, mut held): (Vec<Record>, Vec<Record>) = (Vec::new(), Vec::new());
    for (i, r) in active.into_iter().enumerate() {
        if i % 2 == 0 && shown.len() < opts.explain_examples {
            shown.push(r);
        } else if held.len() < opts.test_examples {
            held.push(r);
        }
    }
    let messages = opts.explainer.messages(&shown);
    let reply = ask(
        client,
        &mut audit,
        unit,
        "explain",
        messages,
        &ChatOptions {
            max_tokens: opts.explainer.max_tokens(),
            // OpenAI's explainer samples at 1; a fixed seed would need the endpoint's support.
            temperature: 1.0,
            top_logprobs: None,
        },
    );
    let Some(answer) = reply
        .map(|r| r.text)
        .map_err(|e| result.problems.push(e))
        .ok()
    else {
        return UnitWork { result, audit };
    };
    let Some(explanation) = opts.explainer.parse(&answer) else {
        result.problems.push(format!(
            "the explainer's answer has no explanation in the {} format",
            opts.explainer.as_str()
        ));
        return UnitWork { result, audit };
    };
    result.explanation = Some(explanation.clone());
    for &scorer in &opts.scorers {
        if scorer == ScorerKind::Simulation {
            let (scores, problems) = simulate(
                opts,
                client,
                &mut audit,
                unit,
                &explanation,
                held.iter().chain(&random),
            );
            result.problems.extend(problems);
            result.scores.push(ScorerResult {
                scorer,
                scores: Scores::Simulation(scores),
            });
            continue;
        }
        if inactive.is_empty() {
            result.problems.push(format!(
                "{}: no window of the store is free of this unit's activation: not scored",
                scorer.as_str()
            ));
            continue;
        }
        let (scores, problems) = score(
            opts,
            client,
            &mut audit,
            unit,
            scorer,
            &explanation,
            &held,
            &inactive,
        );
        result.problems.extend(problems);
        result.scores.push(ScorerResult {
            scorer,
            scores: Scores::Binary(scores),
        });
    }
    UnitWork { result, audit }
}

/// One request, kept for the audit.
fn ask(
    client: &ChatClient,
    audit: &mut Vec<AuditEntry>,
    unit: usize,
    purpose: &str,
    messages: Vec<Msg>,
    opts: &ChatOptions,
) -> Result<Reply, String> {
    let reply = client.chat(&messages, opts);
    let (answer, error, attempts, duration_ms) = match &reply {
        Ok(r) => (Some(r.text.clone()), None, r.attempts, r.duration_ms),
        Err(e) => (None, Some(e.to_string()), 0, 0.0),
    };
    audit.push(AuditEntry {
        unit,
        purpose: purpose.into(),
        messages,
        answer,
        error: error.clone(),
        attempts,
        duration_ms,
    });
    reply.map_err(|e| format!("{purpose}: {e}"))
}

/// The probability of "1" for each of `n` answers, from the logprobs of the answer's 0/1
/// tokens (in order); `None` unless there are exactly `n` of them.
fn answer_probabilities(logprobs: &[TokenLogprob], n: usize) -> Option<Vec<f64>> {
    let digits: Vec<&TokenLogprob> = logprobs
        .iter()
        .filter(|t| matches!(t.token.trim(), "0" | "1"))
        .collect();
    // The answer's first n digits are its list (text may follow it).
    if digits.len() < n {
        return None;
    }
    Some(
        digits[..n]
            .iter()
            .map(|t| {
                let p = |d: &str| -> f64 {
                    t.top
                        .iter()
                        .filter(|(tok, _)| tok.trim() == d)
                        .map(|(_, lp)| (*lp as f64).exp())
                        .sum()
                };
                let (p1, p0) = (p("1"), p("0"));
                if p1 + p0 > 0.0 {
                    p1 / (p1 + p0)
                } else if t.token.trim() == "1" {
                    1.0
                } else {
                    0.0
                }
            })
            .collect(),
    )
}

/// OpenAI's simulation score: for each sequence (held-out activating examples, then random
/// windows) the simulator writes a level per token; the prediction is the expected level under
/// its logprobs where the endpoint returns them, else the written level; the score is the
/// correlation with the true activations pooled over all tokens.
fn simulate<'a>(
    opts: &ExplainOptions,
    client: &ChatClient,
    audit: &mut Vec<AuditEntry>,
    unit: usize,
    explanation: &str,
    sequences: impl Iterator<Item = &'a Record>,
) -> (SimulationScores, Vec<String>) {
    let mut scored = Vec::new();
    let mut problems = Vec::new();
    let mut from_logprobs = 0;
    for r in sequences {
        let reply = ask(
            client,
            audit,
            unit,
            ScorerKind::Simulation.as_str(),
            prompts::simulation(explanation, &r.tokens),
            &ChatOptions {
                max_tokens: simulation_max_tokens(&r.tokens),
                temperature: 0.0,
                top_logprobs: opts.logprobs.then_some(SIMULATION_TOP_LOGPROBS),
            },
        );
        let predicted = match reply {
            Ok(reply) => {
                let levels = simulated_levels(&reply, r.tokens.len());
                if levels.is_none() {
                    problems.push(format!(
                        "simulation: an answer did not give a level for each of {} tokens",
                        r.tokens.len()
                    ));
                }
                levels.map(|(levels, n_logprobs)| {
                    from_logprobs += n_logprobs;
                    levels
                })
            }
            Err(e) => {
                problems.push(e);
                None
            }
        };
        scored.push((r.acts.clone(), predicted));
    }
    (simulation_scores(&scored, from_logprobs), problems)
}

/// Alternatives asked for at each answer token: enough to cover the eleven levels.
const SIMULATION_TOP_LOGPROBS: usize = 11;

/// A simulation answer is a list of levels: up to two digits, a comma and a space each.
fn simulation_max_tokens(tokens: &[String]) -> usize {
    4 + 4 * tokens.len()
}

/// The predicted level of each of `n` tokens and how many came from logprobs: the expected
/// level where the level is one answer token with level alternatives, else the written one.
fn simulated_levels(reply: &Reply, n: usize) -> Option<(Vec<f64>, usize)> {
    let written = prompts::parse_simulation(&reply.text, n)?;
    // Byte spans of the answer's tokens, when they spell the answer exactly.
    let spans: Option<Vec<(usize, &TokenLogprob)>> = reply.logprobs.as_deref().and_then(|lp| {
        let mut at = 0;
        let spans: Vec<(usize, &TokenLogprob)> = lp
            .iter()
            .map(|t| {
                let start = at;
                at += t.token.len();
                (start, t)
            })
            .collect();
        (lp.iter().map(|t| t.token.as_str()).collect::<String>() == reply.text).then_some(spans)
    });
    let mut from_logprobs = 0;
    let levels = written
        .iter()
        .map(|&(offset, level)| {
            let expected = spans.as_ref().and_then(|spans| {
                let (start, token) = spans.iter().rev().find(|(start, _)| *start <= offset)?;
                let whole = token.token.trim() == level.to_string()
                    && *start + token.token.len() >= offset + level.to_string().len();
                whole.then(|| expected_level(&token.top)).flatten()
            });
            match expected {
                Some(e) => {
                    from_logprobs += 1;
                    e
                }
                None => level as f64,
            }
        })
        .collect();
    Some((levels, from_logprobs))
}

#[allow(clippy::too_many_arguments)]
fn score(
    opts: &ExplainOptions,
    client: &ChatClient,
    audit: &mut Vec<AuditEntry>,
    unit: usize,
    scorer: ScorerKind,
    explanation: &str,
    active: &[Record],
    inactive: &[Record],
) -> (BinaryScores, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ (unit as u64).wrapping_mul(0x9E37_79B9));
    // Fuzzing marks as many random tokens in a non-activating example as an activating one
    // has marked on average (rounded up).
    let marked: Vec<usize> = active
        .iter()
        .map(|r| prompts::activating(r).iter().filter(|m| **m).count())
        .collect();
    let random_marks = marked.iter().sum::<usize>().div_ceil(marked.len().max(1));
    // Detection shows plain text, fuzzing highlighted text.
    let fuzzing = scorer == ScorerKind::Fuzzing;
    let mut items: Vec<(bool, String)> = Vec::new();
    for r in active {
        let text = if fuzzing {
            prompts::highlight(&r.tokens, &prompts::activating(r))
        } else {
            r.text()
        };
        items.push((true, text));
    }
    for r in inactive {
        let text = if fuzzing {
            let mut positions: Vec<usize> = (0..r.tokens.len()).collect();
            positions.shuffle(&mut rng);
            let mut marks = vec![false; r.tokens.len()];
            for &p in positions.iter().take(random_marks.max(1)) {
                marks[p] = true;
            }
            prompts::highlight(&r.tokens, &marks)
        } else {
            r.text()
        };
        items.push((false, text));
    }
    items.shuffle(&mut rng);
    let mut truth = Vec::new();
    let mut predicted = Vec::new();
    let mut probability = Vec::new();
    let mut problems = Vec::new();
    for batch in items.chunks(opts.batch) {
        let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
        let messages = if fuzzing {
            prompts::fuzzing(explanation, &texts)
        } else {
            prompts::detection(explanation, &texts)
        };
        let reply = ask(
            client,
            audit,
            unit,
            scorer.as_str(),
            messages,
            &ChatOptions {
                max_tokens: score_max_tokens(batch.len()),
                temperature: 0.0,
                top_logprobs: opts.logprobs.then_some(5),
            },
        );
        truth.extend(batch.iter().map(|(t, _)| *t));
        match reply {
            Ok(r) => {
                let parsed = prompts::parse_binary_list(&r.text, batch.len());
                if parsed.is_none() {
                    problems.push(format!(
                        "{}: an answer was not a list of {} 0/1 values",
                        scorer.as_str(),
                        batch.len()
                    ));
                }
                let probs = parsed
                    .as_ref()
                    .and(r.logprobs.as_deref())
                    .and_then(|lp| answer_probabilities(lp, batch.len()));
                for i in 0..batch.len() {
                    predicted.push(parsed.as_ref().map(|p| p[i]));
                    probability.push(probs.as_ref().map(|p| p[i]));
                }
            }
            Err(e) => {
                problems.push(e);
                predicted.extend(std::iter::repeat_n(None, batch.len()));
                probability.extend(std::iter::repeat_n(None, batch.len()));
            }
        }
    }
    let any_probability = probability.iter().any(Option::is_some);
    let scores = binary_scores(
        &truth,
        &predicted,
        any_probability.then_some(probability.as_slice()),
    );
    (scores, problems)
}

/// Shared with the store: what a run was asked to do.
pub fn run_settings(opts: &ExplainOptions) -> serde_json::Value {
    serde_json::json!({
        "source": opts.source,
        "units": opts.units.len(),
        "explainer": opts.explainer.as_str(),
        "scorers": opts.scorers.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "explain_examples": opts.explain_examples,
        "test_examples": opts.test_examples,
        "batch": opts.batch,
        "window_tokens": opts.window_tokens,
        "seed": opts.seed,
        "concurrency": opts.concurrency,
        "max_requests": opts.endpoint.max_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_cropped_around_their_peak_inside_the_window() {
        let tokens: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let acts: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(crop(&tokens, &acts, 5, 4).tokens, ["3", "4", "5", "6"]);
        assert_eq!(crop(&tokens, &acts, 0, 4).tokens, ["0", "1", "2", "3"]);
        assert_eq!(crop(&tokens, &acts, 9, 4).tokens, ["6", "7", "8", "9"]);
        assert_eq!(crop(&tokens, &acts, 3, 40).tokens.len(), 10);
    }

    #[test]
    fn probabilities_come_from_the_answers_digit_tokens() {
        let t = |token: &str, top: &[(&str, f32)]| TokenLogprob {
            token: token.into(),
            logprob: 0.0,
            top: top.iter().map(|(a, b)| (a.to_string(), *b)).collect(),
        };
        let lp = [
            t("[", &[]),
            t("1", &[("1", (0.75f32).ln()), ("0", (0.25f32).ln())]),
            t(",", &[]),
            t(" 0", &[(" 0", (0.9f32).ln()), (" 1", (0.1f32).ln())]),
            t("]", &[]),
        ];
        let p = answer_probabilities(&lp, 2).unwrap();
        assert!(
            (p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.1).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(answer_probabilities(&lp, 3), None);
        assert_eq!(answer_probabilities(&lp, 1).unwrap().len(), 1);
    }

    #[test]
    fn simulated_levels_are_expected_values_where_a_level_is_one_token() {
        let t = |token: &str, top: &[(&str, f32)]| TokenLogprob {
            token: token.into(),
            logprob: 0.0,
            top: top.iter().map(|(a, b)| (a.to_string(), *b)).collect(),
        };
        // "[0, 10]": the 0 is one token with level alternatives (E = 0.5·0 + 0.5·4 = 2); the
        // 10 is two tokens, so its written level stands.
        let logprobs = vec![
            t("[", &[]),
            t("0", &[("0", 0.5f32.ln()), ("4", 0.5f32.ln())]),
            t(",", &[]),
            t(" 1", &[(" 1", 0.0)]),
            t("0", &[]),
            t("]", &[]),
        ];
        let reply = Reply {
            text: "[0, 10]".into(),
            logprobs: Some(logprobs.clone()),
            attempts: 1,
            duration_ms: 0.0,
        };
        let (levels, from_logprobs) = simulated_levels(&reply, 2).unwrap();
        assert!((levels[0] - 2.0).abs() < 1e-6, "{levels:?}");
        assert_eq!((levels[1], from_logprobs), (10.0, 1));
        // Logprobs that do not spell the answer are not used; a wrong length does not parse.
        let other = Reply {
            text: "[0, 10] ".into(),
            ..reply.clone()
        };
        assert_eq!(simulated_levels(&other, 2), Some((vec![0.0, 10.0], 0)));
        assert_eq!(simulated_levels(&reply, 3), None);
        let no_logprobs = Reply {
            logprobs: None,
            ..reply
        };
        assert_eq!(
            simulated_levels(&no_logprobs, 2),
            Some((vec![0.0, 10.0], 0))
        );
    }

    #[test]
    fn scorer_names_parse_and_the_estimate_counts_requests() {
        assert_eq!(
            "fuzzing".parse::<ScorerKind>().unwrap(),
            ScorerKind::Fuzzing
        );
        assert_eq!(
            "simulation".parse::<ScorerKind>().unwrap(),
            ScorerKind::Simulation
        );
        assert!("sim".parse::<ScorerKind>().is_err());
        let opts = ExplainOptions::new(
            "s".into(),
            "x".into(),
            (0..10).collect(),
            Endpoint {
                base_url: String::new(),
                model: String::new(),
                api_key: None,
                timeout: std::time::Duration::from_secs(1),
                retries: 0,
                max_requests: 1,
            },
        );
        // Per unit: 1 explanation + 2 scorers × ⌈20 / 5⌉ prompts.
        assert_eq!(opts.estimated_requests(), 10 * (1 + 2 * 4));
        // Simulation asks once per sequence: 10 activating + 10 random.
        let simulating = ExplainOptions {
            scorers: vec![ScorerKind::Simulation],
            ..opts
        };
        assert_eq!(simulating.estimated_requests(), 10 * (1 + 20));
    }
}
