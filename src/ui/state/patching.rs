//! Activation patching in the window: the corrupted prompt, answer and wrong token, site and
//! direction the user set, and the last sweep's result (the prompt in the box is the clean
//! prompt).

use crate::analysis::patching::{Direction, Site};
use crate::worker::PatchReport;

/// What the next sweep runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchSettings {
    /// The prompt with the relevant part changed (as many tokens as the clean prompt).
    pub corrupt: String,
    /// The token the clean prompt predicts (text of one token, or id:N).
    pub answer: String,
    /// The token the corrupted prompt predicts instead.
    pub wrong: String,
    pub site: Site,
    pub direction: Direction,
}

impl Default for PatchSettings {
    fn default() -> Self {
        PatchSettings {
            corrupt: String::new(),
            answer: String::new(),
            wrong: String::new(),
            site: Site::ResidPre,
            direction: Direction::Denoise,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchingState {
    pub settings: PatchSettings,
    /// The last finished sweep.
    pub report: Option<Box<PatchReport>>,
}

impl PatchingState {
    /// For a cell of the last sweep: the prompt that receives the patch and the prompt whose
    /// run gives its value (denoising: the corrupted prompt takes the clean values).
    pub fn cell_prompts(&self) -> Option<(String, String)> {
        let job = &self.report.as_ref()?.job;
        Some(match job.direction {
            Direction::Denoise => (job.corrupt.clone(), job.clean.clone()),
            Direction::Noise => (job.clean.clone(), job.corrupt.clone()),
        })
    }
}
