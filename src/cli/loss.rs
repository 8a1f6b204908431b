//! The mean next-token loss the pruning and sparsification commands compare: on a prompt, or
//! on the first tokens of a corpus in windows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::model::{self, HookSpec, Model, NoObserver, Transformer};

/// Where the loss is measured (`--prompt` or `--corpus` with `--tokens`).
#[derive(Args, Debug)]
pub struct LossText {
    /// Measure the loss on this prompt...
    #[arg(long, conflicts_with = "corpus", required_unless_present = "corpus")]
    pub prompt: Option<String>,
    /// ...or on the first --tokens tokens of this text file.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
}

impl LossText {
    pub fn sequences(&self, model: &Model) -> Result<Vec<Vec<u32>>> {
        sequences(
            model,
            self.prompt.as_deref(),
            self.corpus.as_deref(),
            self.tokens,
        )
    }
}

/// Sequences the loss is measured on: the prompt, or the corpus's first `tokens` tokens cut
/// into windows of at most 256 (and the model's context).
pub fn sequences(
    model: &Model,
    prompt: Option<&str>,
    corpus: Option<&Path>,
    tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let ids = match (prompt, corpus) {
        (Some(text), _) => return Ok(vec![model.encode_prompt(text, model::BosMode::Auto)?]),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the corpus {}", path.display()))?;
            let mut ids = model.encode(&text, false)?;
            ids.truncate(tokens);
            ids
        }
        (None, None) => bail!("give --prompt or --corpus"),
    };
    let window = model.info.dims.n_ctx.clamp(2, 256);
    let seqs: Vec<Vec<u32>> = ids
        .chunks(window)
        .filter(|c| c.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    if seqs.is_empty() {
        bail!("the corpus has fewer than 2 tokens");
    }
    Ok(seqs)
}

/// Mean next-token loss (nats) over every predicted token of `seqs`, run with `spec`.
pub fn mean_loss(t: &Transformer, seqs: &[Vec<u32>], spec: &HookSpec) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for seq in seqs {
        let out = t.forward(std::slice::from_ref(seq), spec, &mut NoObserver)?;
        for nll in out.per_token_nll(seq, 0)? {
            sum += nll as f64;
            n += 1;
        }
    }
    Ok(sum / n.max(1) as f64)
}
