//! `dendrite prune`: one-shot weight pruning of the open model (definitions §14) and the loss
//! it costs on a prompt or a corpus, at one sparsity or over a sweep with essential sparsity's
//! knee.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::loss::LossText;
use crate::analysis::sweep::prune_sweep;
use crate::model;
use crate::model::prune::{PruneMethod, PruneScope};

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
    let levels = match (&args.sweep, args.sparsity) {
        (Some(levels), _) => levels.clone(),
        (None, Some(s)) => vec![s],
        (None, None) => bail!("give --sparsity or --sweep"),
    };
    let json = args.json;
    let Some(sweep) = prune_sweep(
        &model.transformer,
        args.method,
        args.scope,
        &levels,
        &seqs,
        &mut |_, _, said| {
            if !json {
                outln!("{} {:?} {said}", args.method, args.scope);
            }
            ControlFlow::Continue(())
        },
    )?
    else {
        bail!("the sweep stopped");
    };
    let points: Vec<_> = sweep
        .points
        .iter()
        .map(|p| {
            json!({
                "sparsity": p.parameter,
                "achieved_sparsity": p.sparsity,
                "mean_loss": p.mean_loss,
            })
        })
        .collect();
    if args.sweep.is_none() {
        let mut one = points.into_iter().next().unwrap_or_default();
        one["dense_mean_loss"] = json!(sweep.dense_mean_loss);
        one["method"] = json!(args.method.to_string());
        one["scope"] = json!(args.scope);
        one["tokens"] = json!(sweep.tokens);
        if json {
            outln!("{one}");
        }
        return Ok(());
    }
    if json {
        outln!(
            "{}",
            json!({
                "method": args.method.to_string(),
                "scope": args.scope,
                "dense_mean_loss": sweep.dense_mean_loss,
                "tokens": sweep.tokens,
                "points": points,
                "knee": sweep.knee,
            })
        );
    } else {
        match sweep.knee {
            Some(k) => outln!("essential sparsity (loss within 1 % of dense): {k}"),
            None => outln!("no swept sparsity keeps the loss within 1 % of dense"),
        }
    }
    Ok(())
}
