//! `dendrite explain`: auto-interpretation of a store's units against any OpenAI-compatible
//! endpoint, the explanations, scores and every request written into the store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::describe::interp::{self, Endpoint, ExplainOptions, ExplainerKind, ScorerKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PromptArg {
    Delphi,
    Openai,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The corpus store (written: explanations, scores, the audit of requests).
    pub store: PathBuf,
    /// The store's source: a hook (blocks.6.mlp.hook_post) or an SAE (sae:<folder>).
    #[arg(long)]
    pub source: String,
    #[arg(long, conflicts_with = "units", required_unless_present = "units")]
    pub unit: Option<usize>,
    /// Units: 0-99, or a list 1,5,7-9.
    #[arg(long)]
    pub units: Option<String>,
    /// The API's base URL, e.g. http://127.0.0.1:8080/v1.
    #[arg(long)]
    pub endpoint: String,
    /// The explainer and scorer model's name at the endpoint.
    #[arg(long)]
    pub model: String,
    /// The environment variable holding the API key (none set: no key is sent).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    #[arg(long, value_enum, default_value_t = PromptArg::Delphi)]
    pub prompt: PromptArg,
    /// Scorers: detection, fuzzing, simulation (comma-separated; "none" for explanations
    /// only).
    #[arg(long, value_delimiter = ',', default_value = "detection,fuzzing")]
    pub scorer: Vec<String>,
    /// Units explained at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests this run may make at most (retries included).
    #[arg(long, default_value_t = 1000)]
    pub max_requests: usize,
    #[arg(long, default_value_t = 120.0)]
    pub timeout_s: f64,
    /// Further attempts after a connection failure, 429 or 5xx.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    #[arg(long, default_value_t = 20)]
    pub explain_examples: usize,
    /// Held-out activating examples scored, and as many non-activating windows.
    #[arg(long, default_value_t = 10)]
    pub test_examples: usize,
    /// Examples per scorer prompt.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Tokens per example (around its peak).
    #[arg(long, default_value_t = 32)]
    pub window_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The model the store was scanned with, when it is not at the path the store records.
    #[arg(long)]
    pub subject_model: Option<PathBuf>,
    /// The SAE of an `sae:` source, when it is not at the path the store records.
    #[arg(long)]
    pub subject_sae: Option<PathBuf>,
    /// Do not ask the scorers for log-probabilities (no AUC).
    #[arg(long)]
    pub no_logprobs: bool,
    #[arg(long)]
    pub json: bool,
}

/// `0-9` or `1,5,7-9`.
fn parse_units(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> Result<usize> {
            s.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--units {text}: \"{s}\" is not a unit"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("--units {text}: {part} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        bail!("--units {text}: no units");
    }
    Ok(out)
}

pub fn explain_cmd(args: &ExplainArgs) -> Result<()> {
    let units = match (&args.unit, &args.units) {
        (Some(u), _) => vec![*u],
        (None, Some(text)) => parse_units(text)?,
        (None, None) => bail!("give --unit N or --units A-B"),
    };
    let scorers = args
        .scorer
        .iter()
        .filter(|s| s.as_str() != "none")
        .map(|s| s.parse::<ScorerKind>())
        .collect::<Result<Vec<_>>>()?;
    let opts = ExplainOptions {
        store: args.store.clone(),
        source: args.source.clone(),
        units,
        explainer: match args.prompt {
            PromptArg::Delphi => ExplainerKind::Delphi,
            PromptArg::Openai => ExplainerKind::Openai,
        },
        scorers,
        endpoint: Endpoint {
            base_url: args.endpoint.clone(),
            model: args.model.clone(),
            api_key: std::env::var(&args.api_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
            timeout: Duration::from_secs_f64(args.timeout_s.max(0.1)),
            retries: args.retries,
            max_requests: args.max_requests,
        },
        concurrency: args.concurrency.max(1),
        explain_examples: args.explain_examples,
        test_examples: args.test_examples,
        batch: args.batch,
        window_tokens: args.window_tokens,
        seed: args.seed,
        subject_model: args.subject_model.clone(),
        subject_sae: args.subject_sae.clone(),
        logprobs: !args.no_logprobs,
    };
    eprintln!(
        "explaining {} unit(s) of {} with {} at {}: about {} requests (budget {})",
        opts.units.len(),
        opts.source,
        opts.endpoint.model,
        opts.endpoint.base_url,
        opts.estimated_requests(),
        opts.endpoint.max_requests
    );
    let summary = interp::explain(
        &opts,
        &|done, total, requests| eprintln!("  {done}/{total} units · {requests} requests"),
        &|| false,
    )?;
    // A run that explained nothing (an endpoint that is down, a budget spent at once) fails.
    let nothing = summary.units.iter().all(|u| u.explanation.is_none());
    let first_problem = summary
        .units
        .iter()
        .flat_map(|u| &u.problems)
        .next()
        .cloned()
        .unwrap_or_default();
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
        if nothing {
            bail!("no explanation was written: {first_problem}");
        }
        return Ok(());
    }
    for u in &summary.units {
        let scores: Vec<String> = u
            .scores
            .iter()
            .map(|s| match s.scores.headline() {
                Some(a) => format!("{} {a:.2}", s.scorer.as_str()),
                None => format!("{} — (no score)", s.scorer.as_str()),
            })
            .collect();
        outln!(
            "{} {}: {}{}",
            opts.source,
            u.unit,
            u.explanation.as_deref().unwrap_or("(no explanation)"),
            if scores.is_empty() {
                String::new()
            } else {
                format!("  [{}]", scores.join(", "))
            }
        );
        for p in &u.problems {
            outln!("    note: {p}");
        }
    }
    outln!(
        "{} requests; written to {} (run {})",
        summary.requests,
        args.store.display(),
        summary.run_id
    );
    if nothing {
        bail!("no explanation was written: {first_problem}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_lists_and_ranges_parse() {
        assert_eq!(super::parse_units("0-3, 7,2").unwrap(), vec![0, 1, 2, 3, 7]);
        assert!(super::parse_units("3-1").is_err());
        assert!(super::parse_units("x").is_err());
        assert!(super::parse_units(",").is_err());
    }
}
