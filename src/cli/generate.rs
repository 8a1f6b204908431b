//! `dendrite generate`: a continuation under interventions, beside the baseline.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{ArgGroup, Args, ValueEnum};
use serde_json::json;

use super::{InterventionArgs, PromptArgs};
use crate::edits::{self, At, EditDescription, EditFlag, NamedSae};
use crate::model::chat::Message;
use crate::model::generate::{
    GenerateOptions, Generation, Sampling, StopReason, Stops, cut_at_stop, generate,
};
use crate::model::{self, BosMode, HookSpec};
use crate::sae;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "token_ids", "chat"])))]
pub struct GenerateArgs {
    pub model: PathBuf,
    /// Prompt text (tokenized like `tokenize`: the BOS as --bos says).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Comma-separated token ids, e.g. 1,2,3 (used as given).
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<u32>>,
    /// A user message, put through the model's chat template (the assistant's reply follows).
    #[arg(long)]
    pub chat: Option<String>,
    /// A system message before --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Put the model's BOS before --prompt: auto (when HF's tokenizer does), yes or no.
    #[arg(long, default_value_t = BosMode::Auto)]
    pub bos: BosMode,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// 0 = greedy (the first most likely token, as HF's `generate(do_sample=False)`).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the generated text contains this string (cut before it); repeatable.
    #[arg(long = "stop")]
    pub stops: Vec<String>,
    /// Keep going past the model's end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// List this many most likely tokens (with log-probabilities) at each step in --json.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    #[command(flatten)]
    pub interventions: InterventionArgs,
    /// An SAE (SAELens folder, Gemma Scope params.npz, sparsify folder) for --steer-latent and
    /// --clamp-latent.
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// Add SCALE × latent I's decoder direction where the SAE writes: I:SCALE; repeatable.
    #[arg(long = "steer-latent", value_name = "I:SCALE", requires = "sae")]
    pub steer_latents: Vec<String>,
    /// Set latent I to VALUE (encode, set, decode, add back the error): I=VALUE; repeatable.
    #[arg(long = "clamp-latent", value_name = "I=VALUE", requires = "sae")]
    pub clamp_latents: Vec<String>,
    /// Where the interventions apply: every position, or only the generated ones.
    #[arg(long, value_enum, default_value_t = AtArg::All)]
    pub at: AtArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AtArg {
    All,
    Generated,
}

pub fn generate_cmd(args: &GenerateArgs) -> Result<()> {
    let m = model::open(&args.model)?;
    let prompt = match &args.chat {
        Some(user) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::new("system", system));
            }
            messages.push(Message::new("user", user));
            m.encode_chat(&messages)?
        }
        None => PromptArgs {
            prompt: args.prompt.clone(),
            token_ids: args.token_ids.clone(),
            bos: args.bos,
            add_special: false,
        }
        .ids(&m)?,
    };
    let mut edits = args.interventions.descriptions();
    let mut saes = Vec::new();
    if let Some(path) = &args.sae {
        let sae = Arc::new(sae::open(path)?);
        sae.check_fits(&m.transformer, &m.info.name)?;
        saes.push(NamedSae {
            name: path.display().to_string(),
            sae,
        });
        for (kind, values) in [
            (EditFlag::SteerLatent, &args.steer_latents),
            (EditFlag::ClampLatent, &args.clamp_latents),
        ] {
            edits.extend(values.iter().map(|v| EditDescription {
                kind,
                value: v.clone(),
                sae: None,
            }));
        }
    }
    let at = match args.at {
        AtArg::All => At::All,
        AtArg::Generated => At::Generated,
    };
    let spec = HookSpec {
        interventions: edits::build(&edits, &saes, at, prompt.len(), args.max_new_tokens)?,
        ..HookSpec::default()
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stops: Stops {
            eos: if args.ignore_eos {
                Vec::new()
            } else {
                m.info.eos_token_ids.clone()
            },
            strings: args.stops.clone(),
        },
        top_logprobs: args.top_logprobs,
    };
    let run = |spec: &HookSpec| -> Result<(Generation, String)> {
        let decode = |ids: &[u32]| m.tokenizer.decode(ids);
        let out = generate(&m.transformer, &prompt, spec, &opts, &decode, &mut |_| true)?;
        // The text leaves out the end-of-sequence token (the ids keep it, as HF's do).
        let mut ids = out.generated_ids();
        if out.stop == StopReason::Eos {
            ids.pop();
        }
        let text = cut_at_stop(&decode(&ids), &args.stops).to_string();
        Ok((out, text))
    };
    let (steered, text) = run(&spec)?;
    let baseline = if spec.interventions.is_empty() {
        None
    } else {
        Some(run(&HookSpec::default())?)
    };
    if args.json {
        let mut value = json!({
            "model": m.info.name,
            "prompt_ids": prompt,
            "generated_ids": steered.generated_ids(),
            "text": text,
            "stop": steered.stop,
            "logprobs": steered.tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "top_logprobs": steered
                .tokens
                .iter()
                .map(|t| {
                    t.top
                        .iter()
                        .map(|&(id, logprob)| {
                            json!({"token_id": id, "token": m.tokenizer.token_text(id), "logprob": logprob})
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>(),
            "timing": timing(&steered),
        });
        if let Some((b, b_text)) = &baseline {
            value["baseline"] = json!({
                "generated_ids": b.generated_ids(),
                "text": b_text,
                "stop": b.stop,
                "first_difference": first_difference(&b.generated_ids(), &steered.generated_ids()),
                "timing": timing(b),
            });
        }
        outln!("{value}");
    } else {
        print_continuation(&prompt, &text, &steered, baseline.is_some());
        if let Some((b, b_text)) = &baseline {
            outln!("baseline:");
            outln!("{b_text}");
            match first_difference(&b.generated_ids(), &steered.generated_ids()) {
                Some(i) => outln!("(the continuations part at generated token {i})"),
                None => outln!("(the continuations are identical)"),
            }
        }
    }
    Ok(())
}

fn print_continuation(prompt: &[u32], text: &str, g: &Generation, steered: bool) {
    outln!(
        "{} prompt tokens → {} generated (stop: {}){}",
        prompt.len(),
        g.tokens.len(),
        g.stop.as_str(),
        if steered {
            ", with interventions:"
        } else {
            ":"
        }
    );
    outln!("{text}");
}

/// How long the prompt and the later tokens took.
fn timing(g: &Generation) -> serde_json::Value {
    let decoded = g.tokens.len().saturating_sub(1);
    json!({
        "prefill_ms": g.prefill_ms,
        "decode_ms": g.decode_ms,
        "decode_tokens_per_s": if g.decode_ms > 0.0 { decoded as f64 / (g.decode_ms / 1e3) } else { 0.0 },
    })
}

/// The first generated position where two continuations differ (or one ends).
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}
