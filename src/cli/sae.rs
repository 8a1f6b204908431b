//! `dendrite sae`: an SAE's latents and reconstruction on a prompt.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::PromptArgs;
use crate::model::{self, HookSpec, NoObserver};
use crate::sae::{self, apply};

#[derive(Args, Debug)]
pub struct SaeArgs {
    pub model: PathBuf,
    /// SAE directory or file (SAELens, Gemma Scope params.npz, EleutherAI sparsify).
    #[arg(long)]
    pub sae: PathBuf,
    /// Attach at this hook instead of the one the SAE's files name.
    #[arg(long)]
    pub hook: Option<String>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Latents listed per token in the text output (JSON lists every nonzero one).
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn sae(args: &SaeArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let sae = sae::open_with_hook(&args.sae, args.hook.as_deref())?;
    sae.check_fits(&model.transformer, &model.info.name)?;
    let ids = args.prompt.ids(&model)?;
    let spec = HookSpec::capture(apply::hooks(&sae));
    let out = model
        .transformer
        .forward(std::slice::from_ref(&ids), &spec, &mut NoObserver)?;
    let summary = apply::summarize(&sae, &out.captures, 0)?;
    if args.json {
        outln!(
            "{}",
            json!({
                "hook": summary.hook,
                "hook_out": sae.cfg.hook_name_out,
                "architecture": sae.cfg.architecture,
                "d_sae": summary.d_sae,
                "token_ids": ids,
                "tokens": ids.iter().map(|&id| model.tokenizer.token_text(id)).collect::<Vec<_>>(),
                "features": summary.features,
                "l0": summary.l0,
                "squared_error": summary.squared_error,
                "fve": summary.fve,
                "mse": summary.mse,
                "mse_definition": "mean over tokens of the squared error summed over dimensions",
            })
        );
        return Ok(());
    }
    outln!(
        "{} SAE at {} ({} latents) on {} tokens: FVE {}, MSE {}, mean L0 {:.1}",
        sae.cfg.architecture,
        summary.hook,
        summary.d_sae,
        ids.len(),
        summary.fve.map_or("n/a".into(), |f| format!("{f:.4}")),
        summary.mse.map_or("n/a".into(), |m| format!("{m:.4}")),
        summary.l0.iter().map(|&l| l as f64).sum::<f64>() / summary.l0.len().max(1) as f64,
    );
    for (t, &id) in ids.iter().enumerate() {
        let top: Vec<String> = summary.features[t]
            .iter()
            .take(args.top)
            .map(|(j, a)| format!("{j}:{a:.2}"))
            .collect();
        outln!(
            "  {t:>4} {:<14} L0 {:>4}  {}",
            format!("{:?}", model.tokenizer.token_text(id)),
            summary.l0[t],
            top.join(" ")
        );
    }
    Ok(())
}
