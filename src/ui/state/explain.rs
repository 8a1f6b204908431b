//! Auto-interpretation from the inspector: where *Explain* sends units, and the run it starts.

use super::AppState;
use crate::worker::stores::UnitRef;

/// Where the inspector's *Explain* sends units (any OpenAI-compatible endpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainSettings {
    pub endpoint: String,
    pub model: String,
    /// The environment variable holding the key (the app reads it when a job starts).
    pub api_key_env: String,
    /// OpenAI's explainer prompt instead of delphi's.
    pub openai_prompt: bool,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        ExplainSettings {
            endpoint: "http://127.0.0.1:8080/v1".into(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            openai_prompt: false,
        }
    }
}

impl ExplainSettings {
    /// Whether an explainer is set (an endpoint and a model to ask).
    pub fn is_set(&self) -> bool {
        !self.endpoint.trim().is_empty() && !self.model.trim().is_empty()
    }

    /// The endpoint, without its key (the app adds it where the request leaves: the key stays
    /// out of the state and its logs); `max_requests` 0 is no limit.
    pub fn endpoint(&self, max_requests: usize) -> crate::describe::interp::Endpoint {
        crate::describe::interp::Endpoint {
            base_url: self.endpoint.trim().to_string(),
            model: self.model.trim().to_string(),
            api_key: None,
            timeout: std::time::Duration::from_secs(120),
            retries: 3,
            max_requests,
        }
    }

    pub fn explainer(&self) -> crate::describe::interp::ExplainerKind {
        use crate::describe::interp::ExplainerKind;
        if self.openai_prompt {
            ExplainerKind::Openai
        } else {
            ExplainerKind::Delphi
        }
    }
}

impl AppState {
    /// The auto-interpretation run the inspector would start for `units` (one source): the
    /// store that has the source, the open model (and SAE) to measure non-activating windows.
    pub fn explain_options(
        &self,
        units: &[UnitRef],
    ) -> Option<crate::describe::interp::ExplainOptions> {
        use crate::describe::interp::ExplainOptions;
        let model = self.model.as_ref()?;
        let source = units.first()?.source.clone();
        let store = self.stores.store_with(&source)?;
        let s = &self.explain_settings;
        let subject_sae = self
            .saes
            .iter()
            .find(|e| e.source == source)
            .map(|e| e.cfg.path.clone());
        let mut opts = ExplainOptions::new(
            store,
            source,
            units.iter().map(|u| u.unit).collect(),
            s.endpoint(0),
        );
        opts.explainer = s.explainer();
        opts.subject_model = Some(model.path.clone());
        opts.subject_sae = subject_sae;
        // Room for retries beyond the estimate, no more.
        opts.endpoint.max_requests = opts.estimated_requests() * 2;
        Some(opts)
    }
}
