//! The SAEs attached to the open model, as the window lists them.

use crate::sae::SaeConfig;
use crate::worker::SaeId;

/// An attached SAE.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeEntry {
    pub id: SaeId,
    pub cfg: SaeConfig,
    /// Its latents' source name in corpus stores (`sae:<folder>`).
    pub source: String,
    /// Size and header hash of its files when attached (session files compare them).
    pub fingerprint: Option<String>,
}

impl SaeEntry {
    /// Short name: "topk 16384 @ blocks.6.hook_resid_post".
    pub fn label(&self) -> String {
        format!(
            "#{} {} {} @ {}",
            self.id, self.cfg.architecture, self.cfg.d_sae, self.cfg.hook_name
        )
    }
}
