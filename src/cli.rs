//! Headless commands. Flags and JSON keys here are relied on by other tools: change them only
//! by adding.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::model::{self, AblationMode, HookSpec, Intervention, Model, NoObserver, ValueOp};

#[derive(Parser, Debug)]
#[command(
    name = "dendrite",
    version,
    about = "A microscope for neuron activations in transformer language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Architecture and sizes of a model (HF directory or GGUF file).
    Info {
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text. Raw text only: no BOS or special tokens unless --add-special.
    Tokenize {
        model: PathBuf,
        #[arg(long)]
        text: String,
        #[arg(long)]
        add_special: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt with optional interventions; print logits, per-token loss and sparsity.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    pub model: PathBuf,
    /// Prompt text (tokenized like `tokenize`: no BOS unless --add-special).
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    pub prompt: Option<String>,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<u32>>,
    #[arg(long)]
    pub add_special: bool,
    /// Set a neuron at every position: HOOK:NEURON=VALUE, e.g. blocks.15.mlp.hook_post:123=10.
    #[arg(long = "clamp", value_name = "HOOK:NEURON=VALUE")]
    pub clamps: Vec<String>,
    /// Ablate an attention head: LAYER.HEAD[:zero|mean] (default zero).
    #[arg(long = "ablate-head", value_name = "LAYER.HEAD[:MODE]")]
    pub ablate_heads: Vec<String>,
    /// Save captured activations (tensor names = hook names) to this safetensors file.
    #[arg(long, requires = "hooks")]
    pub save_activations: Option<PathBuf>,
    /// Hooks to save, by name or glob (blocks.*.mlp.hook_post). Repeatable.
    #[arg(long)]
    pub hooks: Vec<String>,
    /// How many top next-token predictions to list.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    #[arg(long)]
    pub json: bool,
}

/// `println!` that does not panic when stdout is closed early (`dendrite run … | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => {
            outln!(
                "Dendrite's desktop app is not built yet. Try:\n  dendrite info MODEL\n  \
                 dendrite run MODEL --prompt TEXT\n(see `dendrite --help`)"
            );
            Ok(())
        }
        Some(Command::Info { model, json }) => info(&model, json),
        Some(Command::Tokenize {
            model,
            text,
            add_special,
            json,
        }) => tokenize(&model, &text, add_special, json),
        Some(Command::Run(args)) => run_prompt(&args),
    }
}

fn info(path: &PathBuf, as_json: bool) -> Result<()> {
    let model = model::open(path)?;
    let i = &model.info;
    let d = &i.dims;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(i)?);
    } else {
        outln!("{}  ({}, {})", i.name, i.architecture, i.format);
        outln!(
            "  layers {}  d_model {}  heads {} (kv {}, d_head {})",
            d.n_layers,
            d.d_model,
            d.n_heads,
            d.n_kv_heads,
            d.d_head
        );
        outln!(
            "  d_mlp {}  vocab {}  context {}",
            d.d_mlp,
            d.d_vocab,
            d.n_ctx
        );
        outln!(
            "  parameters {:.1}M  stored as {}",
            i.n_params as f64 / 1e6,
            i.source_dtype
        );
    }
    Ok(())
}

fn tokenize(path: &PathBuf, text: &str, add_special: bool, as_json: bool) -> Result<()> {
    let tokenizer = model::open_tokenizer(path)?;
    let ids = tokenizer.encode(text, add_special)?;
    let tokens = tokenizer.token_strings(&ids);
    if as_json {
        outln!("{}", json!({"token_ids": ids, "tokens": tokens}));
    } else {
        for (id, tok) in ids.iter().zip(&tokens) {
            outln!("{id:>8}  {tok:?}");
        }
    }
    Ok(())
}

/// `HOOK:NEURON=VALUE` → a set intervention.
pub fn parse_clamp(spec: &str) -> Result<Intervention> {
    let (hook, rest) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--clamp {spec}: expected HOOK:NEURON=VALUE"))?;
    let (neuron, value) = rest
        .split_once('=')
        .ok_or_else(|| anyhow!("--clamp {spec}: expected HOOK:NEURON=VALUE"))?;
    let neuron: usize = neuron
        .trim()
        .parse()
        .with_context(|| format!("--clamp {spec}: bad neuron index"))?;
    let value: f32 = value
        .trim()
        .parse()
        .with_context(|| format!("--clamp {spec}: bad value"))?;
    Ok(Intervention::neurons(
        hook,
        vec![neuron],
        ValueOp::Set(value),
    ))
}

/// `LAYER.HEAD[:zero|mean]` → a head ablation.
pub fn parse_ablation(spec: &str) -> Result<Intervention> {
    let (head_spec, mode) = match spec.split_once(':') {
        Some((h, m)) => (h, m),
        None => (spec, "zero"),
    };
    let (layer, head) = head_spec
        .split_once('.')
        .ok_or_else(|| anyhow!("--ablate-head {spec}: expected LAYER.HEAD[:zero|mean]"))?;
    let layer: usize = layer
        .parse()
        .with_context(|| format!("--ablate-head {spec}: bad layer"))?;
    let head: usize = head
        .parse()
        .with_context(|| format!("--ablate-head {spec}: bad head"))?;
    let mode = match mode {
        "zero" => AblationMode::Zero,
        "mean" => AblationMode::Mean,
        other => bail!("--ablate-head {spec}: unknown mode \"{other}\" (zero or mean)"),
    };
    Ok(Intervention::ablate_head(layer, head, mode))
}

const MLP_POST: &str = "blocks.*.mlp.hook_post";

fn run_prompt(args: &RunArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let ids = match (&args.prompt, &args.token_ids) {
        (Some(text), _) => model.encode(text, args.add_special)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt or --token-ids"),
    };
    let mut spec = HookSpec::capture([MLP_POST]);
    spec.capture.extend(args.hooks.iter().cloned());
    for c in &args.clamps {
        spec.interventions.push(parse_clamp(c)?);
    }
    for a in &args.ablate_heads {
        spec.interventions.push(parse_ablation(a)?);
    }
    let batch = vec![ids.clone()];
    let out = model.transformer.forward(&batch, &spec, &mut NoObserver)?;
    let logits_last = out.logits_last(0)?;
    let nll = out.per_token_nll(&ids, 0)?;
    let layers = layer_summaries(&model, &out.captures, &ids)?;
    let top = top_k(&logits_last, args.top_k);

    if let Some(path) = &args.save_activations {
        let saved: HashMap<String, candle_core::Tensor> = out
            .captures
            .iter()
            .filter(|(name, _)| {
                args.hooks
                    .iter()
                    .any(|p| model::hooks::glob_matches(p, name))
            })
            .map(|(name, t)| Ok((name.clone(), t.contiguous()?)))
            .collect::<Result<_, candle_core::Error>>()?;
        candle_core::safetensors::save(&saved, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    if args.json {
        let tokens = model.tokenizer.token_strings(&ids);
        let top_json: Vec<_> = top
            .iter()
            .map(|&(id, logit, p)| json!({"token_id": id, "token": model.tokenizer.token_text(id), "logit": logit, "prob": p}))
            .collect();
        outln!(
            "{}",
            json!({
                "model": model.info.name,
                "token_ids": ids,
                "tokens": tokens,
                "logits_last": logits_last,
                "per_token_nll": nll,
                "mean_nll": mean(&nll),
                "top_k": top_json,
                "layers": layers,
                "mlp_frac_active_method": "nonzero: fraction of mlp.hook_post entries != 0 over non-special positions",
            })
        );
    } else {
        outln!(
            "{} tokens, mean next-token loss {:.4} nats",
            ids.len(),
            mean(&nll)
        );
        outln!("next token:");
        for (id, _, p) in top.iter().take(5) {
            outln!(
                "  {:>6.2}%  {:?}",
                p * 100.0,
                model.tokenizer.token_text(*id)
            );
        }
        outln!("MLP active fraction per layer (nonzero):");
        for l in &layers {
            outln!(
                "  L{:<3} {:.4}",
                l["layer"],
                l["mlp_frac_active"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Top `k` (id, logit, probability) at one position.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| (i as u32, logits[i], (logits[i] as f64 - max).exp() / z))
        .collect()
}

fn layer_summaries(
    model: &Model,
    captures: &model::Captures,
    ids: &[u32],
) -> Result<Vec<serde_json::Value>> {
    let scored: Vec<usize> = (0..ids.len())
        .filter(|&i| !model.tokenizer.is_special(ids[i]))
        .collect();
    (0..model.transformer.n_layers())
        .map(|l| {
            let name = format!("blocks.{l}.mlp.hook_post");
            let t = captures
                .get(&name)
                .ok_or_else(|| anyhow!("{name} was not captured"))?;
            let rows: Vec<Vec<f32>> = t.get(0)?.to_vec2()?;
            let (mut active, mut total) = (0usize, 0usize);
            for &i in &scored {
                active += rows[i].iter().filter(|&&a| a != 0.0).count();
                total += rows[i].len();
            }
            let frac = if total == 0 {
                f64::NAN
            } else {
                active as f64 / total as f64
            };
            Ok(json!({"layer": l, "mlp_frac_active": frac}))
        })
        .collect()
}
