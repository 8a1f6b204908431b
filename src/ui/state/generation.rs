//! The Generate tab's state: the sampling settings, and the baseline's and the intervened
//! model's continuations as they stream in from the worker. Pure: [`GenerationView::apply_token`]
//! and [`GenerationView::apply_finished`] take worker events, unit tested below.

use crate::model::generate::{GenerateOptions, Generation, Sampling, StopReason, Stops};
use crate::worker::{GenerationFinished, RunId, TokenGenerated, Variant, Watch};

/// Alternatives reported (and shown on hover) per generated token.
pub const TOP_ALTERNATIVES: usize = 5;

/// Sampling settings as the tab edits them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerateSettings {
    pub max_new_tokens: usize,
    /// 0 = greedy (the default: baseline and intervened then differ only by the edit).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    pub seed: u64,
    /// Stop when the continuation contains this text (empty: none).
    pub stop: String,
    /// Keep going past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        GenerateSettings {
            max_new_tokens: 40,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: String::new(),
            ignore_eos: false,
        }
    }
}

impl GenerateSettings {
    /// What the worker runs, with the model's EOS tokens.
    pub fn options(&self, eos_token_ids: &[u32]) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: (self.top_k > 0).then_some(self.top_k),
                top_p: (self.top_p < 1.0).then_some(self.top_p),
                seed: self.seed,
            },
            stops: Stops {
                eos: if self.ignore_eos {
                    Vec::new()
                } else {
                    eos_token_ids.to_vec()
                },
                strings: if self.stop.is_empty() {
                    Vec::new()
                } else {
                    vec![self.stop.clone()]
                },
            },
            top_logprobs: TOP_ALTERNATIVES,
        }
    }
}

/// One generated token as the tab shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShownToken {
    pub id: u32,
    pub text: String,
    /// Its probability under the model (before sampling warpers).
    pub prob: f32,
    /// The most likely tokens at its step: (text, probability), most likely first.
    pub top: Vec<(String, f32)>,
    /// The watched unit's activation at this token's position (arrives with the next token;
    /// the last token has none).
    pub activation: Option<f32>,
}

/// One continuation (baseline or intervened).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Continuation {
    pub tokens: Vec<ShownToken>,
    /// The watched unit's activation at the prompt's last position.
    pub prompt_activation: Option<f32>,
    pub finished: Option<Generation>,
    /// The continuation decoded as a whole (once finished).
    pub text: Option<String>,
}

impl Continuation {
    fn push(&mut self, event: TokenGenerated) {
        match self.tokens.last_mut() {
            Some(last) => last.activation = event.input_activation,
            None => self.prompt_activation = event.input_activation,
        }
        let top = event
            .top_texts
            .into_iter()
            .zip(&event.token.top)
            .map(|(text, &(_, logprob))| (text, logprob.exp()))
            .collect();
        self.tokens.push(ShownToken {
            id: event.token.id,
            text: event.text,
            prob: event.token.logprob.exp(),
            top,
            activation: None,
        });
    }

    /// The text so far: exact once finished, else the tokens' pieces joined.
    pub fn text(&self) -> String {
        match &self.text {
            Some(t) => t.clone(),
            None => self.tokens.iter().map(|t| t.text.as_str()).collect(),
        }
    }

    pub fn stop(&self) -> Option<StopReason> {
        self.finished.as_ref().map(|g| g.stop)
    }
}

/// The Generate tab's current (or last) generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationView {
    pub run_id: RunId,
    pub prompt: String,
    /// What colours tokens by activation, and its label ("L3 N12").
    pub watch: Option<(Watch, String)>,
    pub settings: GenerateSettings,
    /// Edit labels of the intervened continuation (empty: the baseline only).
    pub interventions: Vec<String>,
    pub baseline: Continuation,
    pub intervened: Option<Continuation>,
    /// From sending the request to the first token, as the app measured it.
    pub first_token_ms: Option<f64>,
    /// Why the generation failed (it stopped).
    pub error: Option<String>,
}

impl GenerationView {
    pub fn new(
        run_id: RunId,
        prompt: String,
        watch: Option<(Watch, String)>,
        settings: GenerateSettings,
        interventions: Vec<String>,
    ) -> Self {
        GenerationView {
            run_id,
            prompt,
            watch,
            settings,
            intervened: (!interventions.is_empty()).then(Continuation::default),
            interventions,
            baseline: Continuation::default(),
            first_token_ms: None,
            error: None,
        }
    }

    pub fn continuation(&self, variant: Variant) -> Option<&Continuation> {
        match variant {
            Variant::Baseline => Some(&self.baseline),
            Variant::Intervened => self.intervened.as_ref(),
        }
    }

    fn continuation_mut(&mut self, variant: Variant, run_id: RunId) -> Option<&mut Continuation> {
        if run_id != self.run_id {
            return None;
        }
        match variant {
            Variant::Baseline => Some(&mut self.baseline),
            Variant::Intervened => self.intervened.as_mut(),
        }
    }

    /// A streamed token (events of other generations are ignored).
    pub fn apply_token(&mut self, event: TokenGenerated) {
        if let Some(c) = self.continuation_mut(event.variant, event.run_id) {
            c.push(event);
        }
    }

    pub fn apply_finished(&mut self, event: GenerationFinished) {
        if let Some(c) = self.continuation_mut(event.variant, event.run_id) {
            c.finished = Some(event.generation);
            c.text = Some(event.text);
        }
    }

    /// Whether a continuation is still streaming.
    pub fn is_running(&self) -> bool {
        let streaming = self.baseline.finished.is_none()
            || self
                .intervened
                .as_ref()
                .is_some_and(|c| c.finished.is_none());
        self.error.is_none() && streaming
    }

    /// The first generated position where the two continuations chose different tokens (of
    /// the tokens both have so far).
    pub fn first_difference(&self) -> Option<usize> {
        let other = self.intervened.as_ref()?;
        self.baseline
            .tokens
            .iter()
            .zip(&other.tokens)
            .position(|(a, b)| a.id != b.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::GeneratedToken;

    fn token(run_id: RunId, variant: Variant, id: u32, act: Option<f32>) -> TokenGenerated {
        TokenGenerated {
            run_id,
            variant,
            token: GeneratedToken {
                id,
                logprob: (0.5f32).ln(),
                top: vec![(id, (0.5f32).ln()), (99, (0.25f32).ln())],
            },
            text: format!("t{id}"),
            top_texts: vec![format!("t{id}"), "t99".into()],
            input_activation: act,
        }
    }

    fn view() -> GenerationView {
        GenerationView::new(
            7,
            "Hello".into(),
            Some((
                Watch::Neuron {
                    layer: 1,
                    neuron: 2,
                },
                "L1 N2".into(),
            )),
            GenerateSettings::default(),
            vec!["L1 N2 = 4.00".into()],
        )
    }

    #[test]
    fn tokens_stream_into_their_continuation_and_activations_land_on_their_own_position() {
        let mut v = view();
        v.apply_token(token(7, Variant::Baseline, 5, Some(0.1)));
        v.apply_token(token(7, Variant::Intervened, 5, Some(0.1)));
        v.apply_token(token(7, Variant::Baseline, 6, Some(0.2)));
        v.apply_token(token(6, Variant::Baseline, 1, None)); // an older generation's
        let b = &v.baseline;
        assert_eq!(b.prompt_activation, Some(0.1));
        assert_eq!(
            b.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![5, 6]
        );
        // The second step read token 5: its activation is token 5's.
        assert_eq!(b.tokens[0].activation, Some(0.2));
        assert_eq!(b.tokens[1].activation, None);
        assert!((b.tokens[0].prob - 0.5).abs() < 1e-6);
        assert_eq!(b.tokens[0].top[1].0, "t99");
        assert!((b.tokens[0].top[1].1 - 0.25).abs() < 1e-6);
        assert_eq!(b.text(), "t5t6");
        assert_eq!(v.intervened.as_ref().unwrap().tokens.len(), 1);
        assert!(v.is_running());
    }

    #[test]
    fn the_first_difference_is_the_first_position_where_the_ids_part() {
        let mut v = view();
        assert_eq!(v.first_difference(), None);
        for (b, i) in [(5, 5), (6, 6), (7, 8), (9, 9)] {
            v.apply_token(token(7, Variant::Baseline, b, None));
            v.apply_token(token(7, Variant::Intervened, i, None));
        }
        assert_eq!(v.first_difference(), Some(2));
        let mut same = view();
        same.apply_token(token(7, Variant::Baseline, 5, None));
        same.apply_token(token(7, Variant::Intervened, 5, None));
        assert_eq!(same.first_difference(), None);
    }

    #[test]
    fn finishing_keeps_the_exact_text_and_ends_the_run() {
        let mut v = view();
        v.apply_token(token(7, Variant::Baseline, 5, None));
        let generation = |stop| Generation {
            prompt_ids: vec![1],
            tokens: vec![],
            stop,
            prefill_ms: 1.0,
            decode_ms: 0.0,
        };
        v.apply_finished(GenerationFinished {
            run_id: 7,
            variant: Variant::Baseline,
            generation: generation(StopReason::MaxTokens),
            text: "exact".into(),
        });
        assert_eq!(v.baseline.text(), "exact");
        assert!(v.is_running(), "the intervened one is still going");
        v.apply_finished(GenerationFinished {
            run_id: 7,
            variant: Variant::Intervened,
            generation: generation(StopReason::Cancelled),
            text: String::new(),
        });
        assert!(!v.is_running());
        assert_eq!(
            v.intervened.as_ref().unwrap().stop(),
            Some(StopReason::Cancelled)
        );
    }

    #[test]
    fn settings_become_the_workers_options() {
        let s = GenerateSettings {
            top_k: 0,
            top_p: 1.0,
            stop: String::new(),
            ..GenerateSettings::default()
        };
        let o = s.options(&[2]);
        assert_eq!(o.sampling.top_k, None);
        assert_eq!(o.sampling.top_p, None);
        assert_eq!(o.stops.eos, vec![2]);
        assert!(o.stops.strings.is_empty());
        let o = GenerateSettings {
            top_k: 40,
            top_p: 0.9,
            stop: "\n".into(),
            ignore_eos: true,
            ..GenerateSettings::default()
        }
        .options(&[2]);
        assert_eq!(o.sampling.top_k, Some(40));
        assert_eq!(o.sampling.top_p, Some(0.9));
        assert!(o.stops.eos.is_empty());
        assert_eq!(o.stops.strings, vec!["\n".to_string()]);
    }
}
