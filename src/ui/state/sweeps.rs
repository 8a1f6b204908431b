//! Sweeps in the window: weight pruning over sparsity levels (the loss curve and essential
//! sparsity's knee) and every activation-sparsification method over its grid (loss against
//! sparsity, one line per method, and the PPL-p% point). Measured on the prompt or on a corpus
//! file's first tokens.

use std::path::PathBuf;

use crate::analysis::sparsify::SparsifyMethod;
use crate::analysis::sweep::{LossText, METHODS, PruneSweep, SparsifySweep, method_name};
use crate::model::BosMode;
use crate::model::prune::{PruneMethod, PruneScope};
use crate::worker::{JobId, SweepJob, SweepKind};

/// What the next sweeps run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SweepSettings {
    /// A text file whose first `tokens` tokens are measured; empty: the prompt.
    pub corpus: String,
    pub tokens: usize,
    pub prune_method: PruneMethod,
    pub prune_scope: PruneScope,
    /// The sparsities pruned to, in increasing order.
    pub levels: Vec<f64>,
    /// The sparsification methods drawn (by name: `topk`, `cats`, …).
    pub methods: Vec<String>,
    /// The method whose PPL-p% point is searched, and p.
    pub search: String,
    pub ppl_p: f64,
    /// A text file that calibrates CATS, CHESS and CETT (its first `tokens` tokens); empty:
    /// the measured text itself.
    pub calibration: String,
}

impl Default for SweepSettings {
    fn default() -> Self {
        SweepSettings {
            corpus: String::new(),
            tokens: 1024,
            prune_method: PruneMethod::Magnitude,
            prune_scope: PruneScope::All,
            // Finer where models usually break.
            levels: vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            methods: METHODS.iter().map(|m| method_name(*m).into()).collect(),
            // The Sparsing Law's CETT-PPL-1%.
            search: "cett".into(),
            ppl_p: 1.0,
            calibration: String::new(),
        }
    }
}

/// A method by its short name.
pub fn method_named(name: &str) -> Option<SparsifyMethod> {
    METHODS.iter().copied().find(|m| method_name(*m) == name)
}

/// Which sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepChoice {
    Prune,
    Sparsify,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepsState {
    pub settings: SweepSettings,
    pub prune: Option<Box<PruneSweep>>,
    pub sparsify: Option<Box<SparsifySweep>>,
    /// What the last results were measured on, in words.
    pub prune_text: String,
    pub sparsify_text: String,
}

impl SweepSettings {
    /// The text measured: the corpus file when one is named, else the prompt.
    pub fn text(&self, prompt: &str, bos: BosMode) -> LossText {
        self.file_text(&self.corpus)
            .unwrap_or_else(|| LossText::Prompt {
                text: prompt.to_string(),
                bos,
            })
    }

    /// The first `tokens` tokens of the file named in `path` (a settings field); `None` when
    /// the field is empty.
    fn file_text(&self, path: &str) -> Option<LossText> {
        match path.trim() {
            "" => None,
            path => Some(LossText::Corpus {
                path: PathBuf::from(path),
                tokens: self.tokens,
            }),
        }
    }

    /// The worker's job, or what is missing, in words.
    pub fn job(
        &self,
        job_id: JobId,
        choice: SweepChoice,
        prompt: &str,
        bos: BosMode,
    ) -> Result<SweepJob, String> {
        if self.corpus.trim().is_empty() && prompt.trim().is_empty() {
            return Err("A sweep needs a prompt or a corpus file.".into());
        }
        let kind = match choice {
            SweepChoice::Prune => {
                if self.levels.is_empty() {
                    return Err("Give the sparsities to prune to.".into());
                }
                if let Some(bad) = self.levels.iter().find(|s| !(0.0..=1.0).contains(*s)) {
                    return Err(format!("Sparsity {bad} is not in [0, 1]."));
                }
                SweepKind::Prune {
                    method: self.prune_method,
                    scope: self.prune_scope,
                    levels: self.levels.clone(),
                }
            }
            SweepChoice::Sparsify => {
                let methods: Vec<SparsifyMethod> = self
                    .methods
                    .iter()
                    .filter_map(|m| method_named(m))
                    .collect();
                if methods.is_empty() {
                    return Err("Choose at least one sparsification method.".into());
                }
                SweepKind::Sparsify {
                    methods,
                    search: method_named(&self.search)
                        .ok_or_else(|| format!("Unknown method {:?}.", self.search))?,
                    ppl_p: self.ppl_p,
                    calibration: self.file_text(&self.calibration),
                }
            }
        };
        Ok(SweepJob {
            job_id,
            text: self.text(prompt, bos),
            kind,
        })
    }

    /// The job's title in the jobs list: which sweep, on what, calibrated on what.
    pub fn title(job: &SweepJob) -> String {
        let on = Self::describe(&job.text);
        match &job.kind {
            SweepKind::Prune { method, scope, .. } => {
                format!("Pruning sweep ({method}, {} weights) on {on}", scope.name())
            }
            SweepKind::Sparsify {
                calibration: Some(calibration),
                ..
            } => format!(
                "Sparsification sweep on {on}, calibrated on {}",
                Self::describe(calibration)
            ),
            SweepKind::Sparsify { .. } => format!("Sparsification sweep on {on}"),
        }
    }

    /// What `text` is, in words (shown beside the result).
    pub fn describe(text: &LossText) -> String {
        match text {
            LossText::Prompt { .. } => "the prompt".into(),
            LossText::Corpus { path, tokens } => {
                format!("the first {tokens} tokens of {}", path.display())
            }
        }
    }
}

/// Parses `0, 0.1, 0.5` (commas or spaces) into increasing, distinct sparsities.
pub fn parse_levels(text: &str) -> Result<Vec<f64>, String> {
    let mut levels = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
        let v: f64 = part
            .trim()
            .parse()
            .map_err(|_| format!("{part:?} is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{v} is not in [0, 1]"));
        }
        levels.push(v);
    }
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_sorted_and_distinct_and_bad_ones_are_named() {
        assert_eq!(parse_levels("0.5, 0,0.1 0.5"), Ok(vec![0.0, 0.1, 0.5]));
        assert_eq!(parse_levels(""), Ok(vec![]));
        assert!(parse_levels("0.1, x").unwrap_err().contains("\"x\""));
        assert!(parse_levels("1.5").unwrap_err().contains("1.5"));
    }

    #[test]
    fn a_job_measures_the_corpus_when_named_else_the_prompt() {
        let mut s = SweepSettings::default();
        let job = s
            .job(7, SweepChoice::Sparsify, "Hello", BosMode::Auto)
            .unwrap();
        assert_eq!(
            job.text,
            LossText::Prompt {
                text: "Hello".into(),
                bos: BosMode::Auto
            }
        );
        let SweepKind::Sparsify {
            methods,
            search,
            ppl_p,
            calibration,
        } = job.kind
        else {
            panic!("a sparsify sweep")
        };
        assert_eq!(
            (methods.len(), method_name(search), ppl_p, calibration),
            (5, "cett", 1.0, None)
        );
        // A calibration file is read for as many tokens as a corpus would be.
        s.calibration = " /tmp/cal.txt".into();
        let job = s
            .job(7, SweepChoice::Sparsify, "Hello", BosMode::Auto)
            .unwrap();
        assert!(matches!(
            job.kind,
            SweepKind::Sparsify { calibration: Some(LossText::Corpus { ref path, tokens: 1024 }), .. }
                if path == std::path::Path::new("/tmp/cal.txt")
        ));
        s.calibration.clear();
        s.corpus = " /tmp/c.txt ".into();
        let job = s.job(8, SweepChoice::Prune, "", BosMode::Auto).unwrap();
        assert_eq!(
            job.text,
            LossText::Corpus {
                path: "/tmp/c.txt".into(),
                tokens: 1024
            }
        );
        assert!(matches!(job.kind, SweepKind::Prune { ref levels, .. } if levels.len() == 12));
        s.corpus.clear();
        assert!(s.job(9, SweepChoice::Prune, " ", BosMode::Auto).is_err());
        s.methods.clear();
        assert!(
            s.job(9, SweepChoice::Sparsify, "Hi", BosMode::Auto)
                .unwrap_err()
                .contains("at least one")
        );
    }
}
