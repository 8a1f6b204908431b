//! `dendrite core-neurons`: CoreInfer's token-wise and sentence-wise core neurons per layer
//! (definitions §12), and their overlap with a second prompt's.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::PromptArgs;
use crate::analysis::core_neurons::{self, CoreOptions, SentenceRule, jaccard, similarity};
use crate::model::{self, Model};

#[derive(Args, Debug)]
pub struct CoreNeuronsArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Token-wise share α: each token's core is the round(α·|positive|) strongest neurons.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f64,
    /// Sentence-wise share β: the ⌊β·d_ff⌋ neurons in the most token cores.
    #[arg(long, default_value_t = 0.2)]
    pub beta: f64,
    /// The labelled variant: every neuron in at least a β share of the token cores.
    #[arg(long)]
    pub frequency: bool,
    /// Hooks to read, by glob (CoreInfer reads the MLP activations).
    #[arg(long, default_value = "blocks.*.mlp.hook_post")]
    pub hook: String,
    /// A second prompt (tokenized the same way): adds each layer's Jaccard overlap and
    /// CoreInfer's similarity |A ∩ B| / |B|.
    #[arg(long)]
    pub compare: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn cores(
    model: &Model,
    ids: &[u32],
    args: &CoreNeuronsArgs,
    opts: CoreOptions,
) -> Result<Vec<core_neurons::HookCore>> {
    let layers = core_neurons::measure(
        &model.transformer,
        ids,
        &args.hook,
        model.tokenizer.first_scored(ids),
        opts,
    )?;
    if layers.is_empty() {
        bail!("--hook {:?} matches no hook of this model", args.hook);
    }
    Ok(layers)
}

pub fn core_neurons(args: &CoreNeuronsArgs) -> Result<()> {
    let opts = CoreOptions {
        alpha: args.alpha,
        beta: args.beta,
        rule: if args.frequency {
            SentenceRule::Frequency
        } else {
            SentenceRule::TopShare
        },
    };
    opts.check().map_err(anyhow::Error::msg)?;
    let model = model::open(&args.model)?;
    let ids = args.prompt.ids(&model)?;
    let layers = cores(&model, &ids, args, opts)?;
    let compared = match &args.compare {
        Some(text) => {
            let other = PromptArgs {
                prompt: Some(text.clone()),
                token_ids: None,
                ..args.prompt.clone()
            }
            .ids(&model)?;
            Some(cores(&model, &other, args, opts)?)
        }
        None => None,
    };
    let rows: Vec<serde_json::Value> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut row = json!({
                "hook": l.hook,
                "core": l.core.core,
                "token_core_sizes": l.core.token_core_sizes(),
            });
            if let Some(other) = compared.as_ref().and_then(|c| c.get(i)) {
                row["compare_core"] = json!(other.core.core);
                row["jaccard"] = json!(jaccard(&l.core.core, &other.core.core));
                row["similarity"] = json!(similarity(&l.core.core, &other.core.core));
            }
            row
        })
        .collect();
    if args.json {
        outln!(
            "{}",
            json!({
                "alpha": opts.alpha,
                "beta": opts.beta,
                "rule": opts.rule,
                "token_ids": ids,
                "layers": rows,
            })
        );
        return Ok(());
    }
    let rule = match opts.rule {
        SentenceRule::TopShare => "top β share of neurons (CoreInfer)",
        SentenceRule::Frequency => "in ≥ β of the token cores (variant)",
    };
    outln!(
        "core neurons, α {} β {} ({rule}), {} tokens",
        opts.alpha,
        opts.beta,
        ids.len()
    );
    for row in &rows {
        let core = row["core"].as_array().map_or(0, Vec::len);
        let jaccard = row["jaccard"]
            .as_f64()
            .map(|j| format!("  Jaccard {j:.3}"))
            .unwrap_or_default();
        outln!(
            "{:<28} {core:>5} core neurons{jaccard}",
            row["hook"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
