//! `dendrite patch`: activation patching between a clean and a corrupted prompt (definitions
//! §16), every layer × position (or layer × head for `z`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::analyses::parse_token;
use crate::analysis::patching::{Direction, PatchRequest, Site, patch};
use crate::model::{self, BosMode};

#[derive(Args, Debug)]
pub struct PatchArgs {
    pub model: PathBuf,
    /// The prompt whose behaviour is being explained.
    #[arg(long)]
    pub clean: String,
    /// The same prompt with the relevant part changed (the same number of tokens).
    #[arg(long)]
    pub corrupt: String,
    /// The token the clean prompt predicts (text of one token, or id:N).
    #[arg(long)]
    pub answer: String,
    /// The token the corrupted prompt predicts instead.
    #[arg(long)]
    pub wrong: String,
    /// resid_pre | attn_out | mlp_out (per layer × position) | z (per layer × head).
    #[arg(long, default_value = "resid_pre")]
    pub site: Site,
    /// denoise (clean values into the corrupted run) or noise (corrupted into clean).
    #[arg(long, default_value = "denoise")]
    pub direction: Direction,
    /// Put the model's BOS before both prompts: auto (when HF's tokenizer does), yes or no.
    #[arg(long, default_value_t = BosMode::Auto)]
    pub bos: BosMode,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PatchArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let clean = model.encode_prompt(&args.clean, args.bos)?;
    let corrupt = model.encode_prompt(&args.corrupt, args.bos)?;
    let request = PatchRequest {
        answer: parse_token(&model, "--answer", &args.answer)?,
        wrong: parse_token(&model, "--wrong", &args.wrong)?,
        clean,
        corrupt,
        site: args.site,
        direction: args.direction,
    };
    let started = std::time::Instant::now();
    let result = patch(&model.transformer, &request, &|_, _| true)?;
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    let tokens: Vec<String> = request
        .clean
        .iter()
        .map(|&id| model.tokenizer.token_text(id))
        .collect();
    if args.json {
        outln!(
            "{}",
            json!({
                "site": result.site,
                "direction": result.direction,
                "metric_clean": result.metric_clean,
                "metric_corrupt": result.metric_corrupt,
                "values": result.values,
                "clean_tokens": tokens,
                "duration_ms": duration_ms,
            })
        );
        return Ok(());
    }
    outln!(
        "{} patching of {} ({:?}): logit difference clean {:.3}, corrupted {:.3}; {:.0} ms",
        match result.direction {
            Direction::Denoise => "denoising",
            Direction::Noise => "noising",
        },
        result.site.name(),
        args.answer,
        result.metric_clean,
        result.metric_corrupt,
        duration_ms
    );
    for (l, row) in result.values.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:6.3}")).collect();
        outln!("L{l:<3} {}", cells.join(" "));
    }
    Ok(())
}
