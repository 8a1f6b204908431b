//! `dendrite sparsify`: run the model with its MLP activations cut by a sparsity method
//! (top-k, CATS, CHESS, CETT's rule, FATReLU; definitions §1–5) and report the loss it costs,
//! or find the method's parameter at the Sparsing Law's PPL-p% point.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::loss::{LossText, mean_loss, sequences};
use crate::analysis::sparsify::{SparsifyMethod, achieved_sparsity, calibrate, interventions};
use crate::model::{self, HookSpec, Model, NoObserver};

#[derive(Args, Debug)]
pub struct SparsifyArgs {
    pub model: PathBuf,
    /// topk:K | cats:S | chess:S | cett:C | fatrelu:T
    #[arg(long)]
    pub method: SparsifyMethod,
    #[command(flatten)]
    pub text: LossText,
    /// Text that calibrates CATS, CHESS and CETT (default: the measured text itself).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Search the method's parameter for a perplexity p % above dense (the Sparsing Law's
    /// PPL-p%; 1 gives CETT-PPL-1% with --method cett:…).
    #[arg(long)]
    pub ppl_p: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

/// Loss and achieved sparsity with `method` calibrated on `calibration`.
fn evaluate(
    model: &Model,
    method: SparsifyMethod,
    seqs: &[Vec<u32>],
    calibration: &[Vec<u32>],
) -> Result<(f64, f64)> {
    let rules = calibrate(&model.transformer, method, calibration)?;
    let spec = HookSpec {
        interventions: interventions(&model.transformer, &rules, &method.to_string()),
        ..HookSpec::default()
    };
    let loss = mean_loss(&model.transformer, seqs, &spec)?;
    let mut capture = spec.clone();
    capture.capture = vec!["blocks.*.mlp.hook_post".into()];
    let mut sparsity = 0.0;
    for seq in seqs {
        let out =
            model
                .transformer
                .forward(std::slice::from_ref(seq), &capture, &mut NoObserver)?;
        sparsity += achieved_sparsity(
            &model.transformer,
            &out.captures,
            model.tokenizer.first_scored(seq),
        )?;
    }
    Ok((loss, sparsity / seqs.len().max(1) as f64))
}

pub fn run(args: &SparsifyArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let seqs = args.text.sequences(&model)?;
    let calibration = match &args.calibration {
        Some(path) => sequences(&model, None, Some(path), args.text.tokens)?,
        None => seqs.clone(),
    };
    let dense = mean_loss(&model.transformer, &seqs, &HookSpec::default())?;
    let mut method = args.method;
    let mut found = None;
    if let Some(p) = args.ppl_p {
        if !(p > 0.0 && p.is_finite()) {
            bail!("--ppl-p must be a positive number of percent");
        }
        // The loss a perplexity p % above dense allows: ln(1 + p/100) nats more.
        let allowed = dense + (1.0 + p / 100.0).ln();
        let d_mlp = model
            .transformer
            .blocks
            .first()
            .map_or(1, |b| b.mlp.width());
        // Parameters that cut more go the other way for top-k (fewer kept).
        let (mut lo, mut hi, tolerance, more_cuts_up) = match method {
            SparsifyMethod::TopK { .. } => (1.0, d_mlp as f64, 1.0, false),
            SparsifyMethod::FatRelu { .. } => bail!("--ppl-p searches topk, cats, chess or cett"),
            _ => (0.0, 1.0, 0.001, true),
        };
        // Binary search for the most cutting parameter whose loss stays within `allowed`.
        while hi - lo > tolerance {
            let mid = (lo + hi) / 2.0;
            let (loss, _) = evaluate(&model, method.with_value(mid), &seqs, &calibration)?;
            let within = loss <= allowed;
            if within == more_cuts_up {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let best = if more_cuts_up { lo } else { hi };
        method = method.with_value(best);
        found = Some(method.value());
    }
    let (loss, sparsity) = evaluate(&model, method, &seqs, &calibration)?;
    if args.json {
        let mut out = json!({
            "method": method.to_string(),
            "sparsity": sparsity,
            "mean_loss": loss,
            "dense_mean_loss": dense,
            "tokens": seqs.iter().map(|s| s.len() - 1).sum::<usize>(),
        });
        if let (Some(p), Some(v)) = (args.ppl_p, found) {
            out["ppl_p"] = json!(p);
            out["parameter"] = json!(v);
        }
        outln!("{out}");
    } else {
        outln!(
            "{method}: sparsity {:.4}, mean loss {loss:.4} (dense {dense:.4}, PPL × {:.4})",
            sparsity,
            (loss - dense).exp()
        );
    }
    Ok(())
}
