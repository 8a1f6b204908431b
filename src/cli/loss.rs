//! Where the pruning and sparsification commands measure their loss: a prompt, or the first
//! tokens of a corpus in windows (`analysis::sweep::LossText`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::analysis::sweep::{self, LossText as Text};
use crate::model::{BosMode, Model};

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
    pub fn text(&self) -> Text {
        match (&self.prompt, &self.corpus) {
            (Some(text), _) => Text::Prompt {
                text: text.clone(),
                bos: BosMode::Auto,
            },
            (None, path) => Text::Corpus {
                path: path.clone().unwrap_or_default(),
                tokens: self.tokens,
            },
        }
    }

    pub fn sequences(&self, model: &Model) -> Result<Vec<Vec<u32>>> {
        sweep::sequences(model, &self.text())
    }
}
