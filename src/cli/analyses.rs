//! `dendrite sparsity` and `dendrite lens`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::PromptArgs;
use crate::analysis::lens::{
    DLA_HOOKS, LENS_HOOKS, Prediction, direct_logit_attribution, largest, logit_lens,
};
use crate::analysis::sparsity::{self, Method};
use crate::model::{self, HookSpec, Model, NoObserver};

#[derive(Args, Debug)]
pub struct SparsityArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// zero | eps:E | cats:K | chess:K | cett:C | cett-eps:E (definitions.md §1–4) |
    /// delta:θ (temporal sparsity, §13: the share of channels changing by more than θ).
    #[arg(long, default_value = "zero")]
    pub method: Method,
    /// Hooks to measure (zero, eps) or MLP layers to measure (the other methods), by glob.
    #[arg(long, default_value = "blocks.*.mlp.hook_post")]
    pub hook: String,
    /// Text file that calibrates the CATS and CHESS thresholds (default: the prompt itself).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LensArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Token whose logit to attribute to heads and neurons (text of one token, or id:N).
    #[arg(long)]
    pub target: Option<String>,
    /// Position to attribute at (default: the last).
    #[arg(long)]
    pub position: Option<usize>,
    /// Tokens listed per layer and position.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long)]
    pub json: bool,
}

fn token_texts(model: &Model, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| model.tokenizer.token_text(id))
        .collect()
}

/// Calibration sequences: the file's tokens in chunks the model accepts, or the prompt.
fn calibration(model: &Model, args: &SparsityArgs, ids: &[u32]) -> Result<(Vec<Vec<u32>>, String)> {
    let Some(path) = &args.calibration else {
        return Ok((vec![ids.to_vec()], "prompt".into()));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let all = model.encode(&text, false)?;
    if all.is_empty() {
        bail!("calibration file {} has no tokens", path.display());
    }
    // Each chunk starts as a prompt does: with the BOS the prompt got.
    let bos = model.tokenizer.bos_prefix(args.prompt.bos)?;
    let chunk = model.info.dims.n_ctx.clamp(bos.len() + 1, 512) - bos.len();
    Ok((
        all.chunks(chunk)
            .map(|c| bos.iter().chain(c).copied().collect())
            .collect(),
        path.display().to_string(),
    ))
}

pub fn sparsity(args: &SparsityArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let ids = args.prompt.ids(&model)?;
    let (calib, calib_source) = if args.method.needs_calibration() {
        calibration(&model, args, &ids)?
    } else {
        (Vec::new(), String::new())
    };
    let first_scored = model.tokenizer.first_scored(&ids);
    let layers = sparsity::measure(
        &model.transformer,
        &ids,
        &calib,
        args.method,
        &args.hook,
        first_scored,
    )?;
    if layers.is_empty() {
        bail!("--hook {:?} matches no hook of this model", args.hook);
    }
    let overall = sparsity::mean(&layers.iter().map(|l| l.frac_active).collect::<Vec<_>>());
    if args.json {
        let calib_json = (!calib.is_empty()).then(
            || json!({"source": calib_source, "tokens": calib.iter().map(Vec::len).sum::<usize>()}),
        );
        outln!(
            "{}",
            json!({
                "method": args.method.to_string(),
                "method_params": args.method,
                "hook": args.hook,
                "calibration": calib_json,
                "token_ids": ids,
                "tokens": token_texts(&model, &ids),
                "layers": layers,
                "model_frac_active": overall,
            })
        );
    } else {
        outln!("sparsity by {} over {} tokens", args.method, ids.len());
        for l in &layers {
            let threshold = l
                .threshold
                .map(|t| format!("  threshold {t:.4}"))
                .unwrap_or_default();
            let cett = l
                .mean_cett
                .map(|c| format!("  CETT {c:.3}"))
                .unwrap_or_default();
            outln!(
                "  {:<28} active {:>6.2}%{threshold}{cett}",
                l.hook,
                100.0 * l.frac_active
            );
        }
        outln!("  mean active fraction {:.2}%", 100.0 * overall);
    }
    Ok(())
}

/// A token given to `flag` as `id:N` or as the text of exactly one token.
pub(super) fn parse_token(model: &Model, flag: &str, token: &str) -> Result<u32> {
    model
        .single_token(token)
        .with_context(|| format!("{flag} {token:?}"))
}

pub fn lens(args: &LensArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let ids = args.prompt.ids(&model)?;
    let position = args.position.unwrap_or(ids.len() - 1);
    if position >= ids.len() {
        bail!(
            "--position {position} is past the prompt's {} tokens",
            ids.len()
        );
    }
    let target = args
        .target
        .as_deref()
        .map(|t| parse_token(&model, "--target", t))
        .transpose()?;
    let spec = HookSpec::capture(LENS_HOOKS.iter().chain(DLA_HOOKS).copied());
    let out = model
        .transformer
        .forward(std::slice::from_ref(&ids), &spec, &mut NoObserver)?;
    let lens = logit_lens(&model.transformer, &out.captures, 0, args.top_k.max(1))?;
    let entry = |p: &Prediction| json!({"id": p.id, "token": model.tokenizer.token_text(p.id), "logit": p.logit, "prob": p.prob});
    let attribution = target
        .map(|t| direct_logit_attribution(&model.transformer, &out.captures, 0, position, t))
        .transpose()?;
    if args.json {
        let lens_json: Vec<Vec<Vec<serde_json::Value>>> = lens
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|pos| pos.iter().map(entry).collect())
                    .collect()
            })
            .collect();
        let target_json = attribution.as_ref().map(|a| {
            let top: Vec<serde_json::Value> = largest(&a.neurons, 20)
                .into_iter()
                .map(|(l, n, v)| json!({"layer": l, "neuron": n, "value": v}))
                .collect();
            json!({
                "id": a.target,
                "token": model.tokenizer.token_text(a.target),
                "position": a.position,
                "logit": a.logit,
                "embed": a.embed,
                "pos_embed": a.pos_embed,
                "heads": a.heads,
                "attn_bias": a.attn_bias,
                "mlp_layer_totals": a.neurons.iter().map(|r| r.iter().sum::<f64>()).collect::<Vec<_>>(),
                "mlp_bias": a.mlp_bias,
                "final_bias": a.final_bias,
                "top_neurons": top,
                "sum_of_components": a.total(),
            })
        });
        outln!(
            "{}",
            json!({
                "token_ids": ids,
                "tokens": token_texts(&model, &ids),
                "lens": lens_json,
                "target": target_json,
            })
        );
        return Ok(());
    }
    let texts = token_texts(&model, &ids);
    outln!("logit lens (top-1 per layer) at each position:");
    outln!(
        "  {:>6} {}",
        "",
        texts
            .iter()
            .map(|t| format!("{t:>10.10}"))
            .collect::<String>()
    );
    for (l, layer) in lens.iter().enumerate() {
        let cells: String = layer
            .iter()
            .map(|p| format!("{:>10.10}", model.tokenizer.token_text(p[0].id)))
            .collect();
        outln!("  L{l:<5} {cells}");
    }
    if let Some(a) = &attribution {
        outln!(
            "direct logit attribution of {:?} at position {}: logit {:.3}",
            model.tokenizer.token_text(a.target),
            a.position,
            a.logit
        );
        for (l, h, v) in largest(&a.heads, 8) {
            outln!("  head L{l}.H{h:<4} {v:+.3}");
        }
        for (l, n, v) in largest(&a.neurons, 8) {
            outln!("  neuron L{l}.N{n:<5} {v:+.3}");
        }
    }
    Ok(())
}
