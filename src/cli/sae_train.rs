//! `dendrite train-sae`: a TopK SAE on a model's activations at one hook.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::sae::train::{TrainOptions, TrainProgress, train};

#[derive(Args, Debug)]
pub struct TrainSaeArgs {
    /// The model (HF directory or GGUF file).
    pub model: PathBuf,
    /// Hook to train on, e.g. blocks.0.hook_resid_post.
    #[arg(long)]
    pub hook: String,
    /// A .txt file (last 5% held out) or a directory of .txt files (every 20th held out).
    #[arg(long)]
    pub corpus: PathBuf,
    /// SAE architecture (only topk).
    #[arg(long, default_value = "topk")]
    pub arch: String,
    /// Latents kept per token.
    #[arg(long)]
    pub k: usize,
    /// Number of latents (d_sae).
    #[arg(long)]
    pub width: usize,
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Activation rows per step.
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Peak learning rate (Adam; 5% warm-up, linear decay over the last 20%).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens per sequence (default min(128, the model's context)).
    #[arg(long)]
    pub context: Option<usize>,
    /// Most activation rows held in the shuffle buffer.
    #[arg(long, default_value_t = 1 << 18)]
    pub buffer_rows: usize,
    /// Training tokens without firing after which a latent counts as dead (AuxK);
    /// default min(10M, steps × batch / 4).
    #[arg(long)]
    pub dead_window: Option<usize>,
    /// Held-out tokens for the final evaluation.
    #[arg(long, default_value_t = 100_000)]
    pub eval_tokens: usize,
    /// Output directory (SAELens cfg.json + sae_weights.safetensors, training.json,
    /// training_curves.png).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn train_sae(args: &TrainSaeArgs) -> Result<()> {
    if args.arch != "topk" {
        bail!(
            "--arch {}: only topk training is supported (standard, jumprelu, gated and batchtopk are not)",
            args.arch
        );
    }
    if !args.model.exists() {
        bail!("model {} does not exist", args.model.display());
    }
    if !args.corpus.exists() {
        bail!(
            "corpus {} does not exist (a .txt file or a directory of .txt files)",
            args.corpus.display()
        );
    }
    let opts = TrainOptions {
        hook: args.hook.clone(),
        corpus: args.corpus.clone(),
        out: args.out.clone(),
        k: args.k,
        width: args.width,
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        context: args.context,
        buffer_rows: args.buffer_rows,
        dead_window_tokens: args.dead_window,
        eval_tokens: args.eval_tokens,
        ..TrainOptions::default()
    };
    let bar = indicatif::ProgressBar::new(opts.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let log_every = (opts.steps / 20).max(1);
    let mut smoothed: Option<[f64; 4]> = None;
    let mut on_step = |p: &TrainProgress| {
        let now = [p.loss, p.l0, p.fve, p.dead_frac];
        let s = smoothed.get_or_insert(now);
        s.iter_mut()
            .zip(now)
            .for_each(|(s, v)| *s = 0.9 * *s + 0.1 * v);
        let msg = format!(
            "loss {:.4}  L0 {:.1}  FVE {:.3}  dead {:.3}  {:.0} tok/s",
            s[0], s[1], s[2], s[3], p.tokens_per_s
        );
        bar.set_position(p.step as u64);
        if p.step.is_multiple_of(log_every) || p.step == p.steps {
            let line = format!(
                "step {}: {msg} [{:.0} s]",
                p.step,
                bar.elapsed().as_secs_f64()
            );
            // A hidden bar (output not a terminal) drops println, so logs go to stderr.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        bar.set_message(msg);
        ControlFlow::Continue(())
    };
    let (_, report) = train(&args.model, &opts, &mut on_step)?;
    bar.finish();
    let e = &report.eval;
    outln!(
        "trained {} steps ({} tokens, {:.0} tokens/s) in {:.0} s; held-out ({} tokens): FVE {:.4}, L0 {:.2}, MSE {:.4} ({:.5} per dim) → {}",
        report.options.steps,
        report.tokens_seen,
        report.tokens_per_s,
        report.wall_s,
        e.tokens,
        e.fve,
        e.l0,
        e.mse,
        e.mse_per_dim,
        args.out.display()
    );
    Ok(())
}
