//! `dendrite sae`: an SAE's latents and reconstruction on a prompt.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::PromptArgs;
use crate::model::{self, HookSpec, NoObserver};
use crate::sae::{self, apply, eval, train};

#[derive(Args, Debug)]
pub struct SaeEvalArgs {
    pub model: PathBuf,
    /// SAE directory or file.
    #[arg(long)]
    pub sae: PathBuf,
    #[arg(long)]
    pub hook: Option<String>,
    /// Held-out text: a .txt file (its last 5%) or a directory of .txt files (every 20th).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Tokens to evaluate on.
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Tokens per sequence (default min(128, the model's context)).
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens per dark-matter split (fit and held-out each).
    #[arg(long, default_value_t = 20_000)]
    pub dark_matter_tokens: usize,
    #[arg(long)]
    pub json: bool,
}

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

pub fn sae_eval(args: &SaeEvalArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let sae = std::sync::Arc::new(sae::open_with_hook(&args.sae, args.hook.as_deref())?);
    sae.check_fits(&model.transformer, &model.info.name)?;
    let corpus = crate::corpus::read_corpus(&args.corpus)?;
    let context = train::context_for(&model, args.context)?;
    let sequences = train::token_sequences(&model, &corpus.validation, context, args.tokens)?;
    if sequences.is_empty() {
        anyhow::bail!(
            "the held-out part of {} has no sequence of {context} tokens",
            args.corpus.display()
        );
    }
    let bar = indicatif::ProgressBar::new(2 * sequences.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let opts = eval::EvalOptions {
        dark_matter_tokens: args.dark_matter_tokens,
    };
    let report = eval::evaluate(&model, &sae, &sequences, &opts, &mut |p| {
        bar.set_position(((p.pass as usize - 1) * p.sequences + p.sequences_done) as u64);
        bar.set_message(if p.pass == 1 {
            "mean activation"
        } else {
            "metrics"
        });
        std::ops::ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    outln!(
        "{} at {} on {} held-out tokens ({} sequences of {context}; {} special tokens left out)",
        sae.cfg.architecture,
        report.hook,
        report.tokens,
        report.sequences,
        report.special_tokens
    );
    let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    if let Some(r) = &report.reconstruction {
        outln!(
            "  L0 {}  L1 {}  FVE {}  MSE {:.4} (per token, summed over d) / {:.5} (per element)  normalized MSE {}  cosine {}  |x̂|/|x| {}",
            opt(r.l0),
            opt(r.l1),
            opt(r.fve),
            r.mse_per_token_sum,
            r.mse_per_element,
            opt(r.normalized_mse),
            opt(r.mean_cosine),
            opt(r.mean_norm_ratio)
        );
    }
    if let Some(d) = &report.downstream {
        outln!(
            "  CE clean {:.4}, with SAE {:.4}, zero-ablated {:.4}, mean-ablated {:.4} → recovered {} (zero) / {} (mean)",
            d.ce_clean,
            d.ce_sae,
            d.ce_zero_ablation,
            d.ce_mean_ablation,
            opt(d.ce_loss_recovered_zero),
            opt(d.ce_loss_recovered_mean)
        );
        outln!(
            "  KL with SAE {:.4}, zero {:.4}, mean {:.4} → KL score {} (zero) / {} (mean)",
            d.kl_sae,
            d.kl_zero_ablation,
            d.kl_mean_ablation,
            opt(d.kl_score_zero),
            opt(d.kl_score_mean)
        );
    }
    if let Some(f) = &report.firing {
        outln!(
            "  over a window of {} tokens: dead {:.2}%, below 1e-5 {:.2}%, below 1e-6 {:.2}%, dense (>0.1) {:.2}%",
            f.n_tokens,
            100.0 * f.frac_dead,
            100.0 * f.frac_below_1e5,
            100.0 * f.frac_ultra_low,
            100.0 * f.frac_dense
        );
    }
    if let Some(dm) = &report.dark_matter {
        outln!(
            "  dark matter: R²(error vector) {}, R²(error norm) {} (fit {} / held out {} tokens)",
            opt(dm.r2_vec),
            opt(dm.r2_norm),
            dm.n_fit,
            dm.n_eval
        );
    }
    Ok(())
}
