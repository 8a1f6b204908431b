//! `dendrite prune`: one-shot weight pruning of the open model (definitions §14) and the loss
//! it costs on a prompt or a corpus, at one sparsity or over a sweep with essential sparsity's
//! knee.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::loss::{LossText, mean_loss};
use crate::model::prune::{PruneMethod, PruneScope, knee, prune};
use crate::model::{self, HookSpec};

#[derive(Args, Debug)]
pub struct PruneArgs {
    pub model: PathBuf,
    /// magnitude | magnitude-global | random:SEED | nm:N:M
    #[arg(long)]
    pub method: PruneMethod,
    /// Share of the scope's weights to remove (N:M removes 1 − N/M whatever this says).
    #[arg(long, required_unless_present = "sweep")]
    pub sparsity: Option<f64>,
    /// Sparsities to sweep, e.g. 0,0.1,0.2,…,0.9: the loss curve and the knee (the last
    /// sparsity within 1 % of the dense loss).
    #[arg(long, value_delimiter = ',', conflicts_with = "sparsity")]
    pub sweep: Option<Vec<f64>>,
    /// mlp | attn | all (the block's 2-D weights; never embeddings, norms or biases).
    #[arg(long, default_value = "all")]
    pub scope: PruneScope,
    #[command(flatten)]
    pub text: LossText,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PruneArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let seqs = args.text.sequences(&model)?;
    let dense = mean_loss(&model.transformer, &seqs, &HookSpec::default())?;
    let levels = match (&args.sweep, args.sparsity) {
        (Some(levels), _) => levels.clone(),
        (None, Some(s)) => vec![s],
        (None, None) => bail!("give --sparsity or --sweep"),
    };
    let mut points = Vec::with_capacity(levels.len());
    for &s in &levels {
        let (pruned, report) = prune(&model.transformer, args.method, args.scope, s)?;
        let loss = mean_loss(&pruned, &seqs, &HookSpec::default())?;
        if !args.json {
            outln!(
                "{} {:?} sparsity {:.3} (achieved {:.4}): mean loss {loss:.4} (dense {dense:.4})",
                args.method,
                args.scope,
                report.sparsity,
                report.achieved_sparsity
            );
        }
        points.push(json!({
            "sparsity": report.sparsity,
            "achieved_sparsity": report.achieved_sparsity,
            "mean_loss": loss,
        }));
    }
    let tokens: usize = seqs.iter().map(|s| s.len() - 1).sum();
    if args.sweep.is_none() {
        let mut one = points.remove(0);
        one["dense_mean_loss"] = json!(dense);
        one["method"] = json!(args.method.to_string());
        one["scope"] = json!(args.scope);
        one["tokens"] = json!(tokens);
        if args.json {
            outln!("{one}");
        }
        return Ok(());
    }
    let curve: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| Some((p["sparsity"].as_f64()?, p["mean_loss"].as_f64()?)))
        .collect();
    let knee = knee(&curve, dense, 0.01);
    if args.json {
        outln!(
            "{}",
            json!({
                "method": args.method.to_string(),
                "scope": args.scope,
                "dense_mean_loss": dense,
                "tokens": tokens,
                "points": points,
                "knee": knee,
            })
        );
    } else {
        match knee {
            Some(k) => outln!("essential sparsity (loss within 1 % of dense): {k}"),
            None => outln!("no swept sparsity keeps the loss within 1 % of dense"),
        }
    }
    Ok(())
}
