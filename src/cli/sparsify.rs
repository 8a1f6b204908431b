//! `dendrite sparsify`: run the model with its MLP activations cut by a sparsity method
//! (top-k, CATS, CHESS, CETT's rule, FATReLU; definitions §1–5) and report the loss it costs,
//! or find the method's parameter at the Sparsing Law's PPL-p% point.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::loss::LossText as LossArgs;
use crate::analysis::sparsify::SparsifyMethod;
use crate::analysis::sweep::{
    LossText, SparsifyText, evaluate_sparsify, mean_loss, ppl_p_search, sequences,
};
use crate::model::{self, HookSpec};

#[derive(Args, Debug)]
pub struct SparsifyArgs {
    pub model: PathBuf,
    /// topk:K | cats:S | chess:S | cett:C | fatrelu:T
    #[arg(long)]
    pub method: SparsifyMethod,
    #[command(flatten)]
    pub text: LossArgs,
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

pub fn run(args: &SparsifyArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let seqs = args.text.sequences(&model)?;
    let calibration = match &args.calibration {
        Some(path) => sequences(
            &model,
            &LossText::Corpus {
                path: path.clone(),
                tokens: args.text.tokens,
            },
        )?,
        None => seqs.clone(),
    };
    let first_scored = |seq: &[u32]| model.tokenizer.first_scored(seq);
    let text = SparsifyText {
        seqs: &seqs,
        calibration: &calibration,
        first_scored: &first_scored,
    };
    let dense = mean_loss(&model.transformer, &seqs, &HookSpec::default())?;
    let point = match args.ppl_p {
        Some(p) => ppl_p_search(
            &model.transformer,
            args.method,
            p,
            dense,
            &text,
            &mut |_| ControlFlow::Continue(()),
        )?
        .ok_or_else(|| anyhow::anyhow!("the search stopped"))?,
        None => evaluate_sparsify(&model.transformer, args.method, &text)?,
    };
    let method = args.method.with_value(point.parameter);
    let (loss, sparsity) = (point.mean_loss, point.sparsity);
    if args.json {
        let mut out = json!({
            "method": method.to_string(),
            "sparsity": sparsity,
            "mean_loss": loss,
            "dense_mean_loss": dense,
            "tokens": seqs.iter().map(|s| s.len() - 1).sum::<usize>(),
        });
        if let Some(p) = args.ppl_p {
            out["ppl_p"] = json!(p);
            out["parameter"] = json!(point.parameter);
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
