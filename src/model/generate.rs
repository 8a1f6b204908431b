//! Text generation over the KV cache ([`Transformer::forward_step`]), with every intervention
//! applied at generated positions as well as in the prompt.
//!
//! Greedy decoding (temperature 0, the default) picks the first largest logit, as
//! `torch.argmax` does, so it follows HF transformers' `generate(do_sample=False)` token for
//! token. Sampling applies HF's warpers in HF's order — temperature, top-k, top-p — and draws
//! from a seeded ChaCha generator: reproducible here, not the same draws as torch's.

use std::time::Instant;

use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;
use serde::Serialize;

use super::error::{ModelError, Result};
use super::hooks::{Captures, HookSpec};
use super::transformer::{KvCache, Transformer};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least `p`.
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(ModelError::InvalidInput(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature {} must be ≥ 0 (0 = greedy)",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top-p {p} must be in (0, 1]"));
        }
        Ok(())
    }
}

/// When generation stops, besides `max_new_tokens`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stops {
    /// End-of-sequence tokens (kept as the last generated token, as HF does).
    pub eos: Vec<u32>,
    /// Stop when the generated text contains one of these (the text is cut before it).
    pub strings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    /// The context is full.
    Length,
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Length => "length",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GeneratedToken {
    pub id: u32,
    /// Natural log of its probability under the model's distribution (before sampling warpers).
    pub logprob: f32,
    /// The most likely tokens at this step with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<GeneratedToken>,
    pub stop: StopReason,
    /// The prompt's pass (it yields the first token).
    pub prefill_ms: f64,
    /// Every later step (one position each).
    pub decode_ms: f64,
}

impl Generation {
    pub fn generated_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub stops: Stops,
    /// How many of the most likely tokens to report per step.
    pub top_logprobs: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: Sampling::default(),
            stops: Stops::default(),
            top_logprobs: 0,
        }
    }
}

/// Checks that every intervention position lies inside the prompt and the tokens to be
/// generated (steps skip positions outside their own rows, so this is checked once here).
pub fn check_positions(spec: &HookSpec, prompt_len: usize, max_new: usize) -> Result<()> {
    let end = prompt_len + max_new;
    for i in &spec.interventions {
        if let Some(bad) = i.positions.iter().flatten().find(|&&p| p >= end) {
            return Err(ModelError::InvalidInput(format!(
                "intervention on {}: position {bad} is past the prompt ({prompt_len} tokens) \
                 and the {max_new} tokens to generate",
                i.hook
            )));
        }
    }
    Ok(())
}

/// One continuation, a token per [`Generator::step`]: the worker interleaves a baseline's
/// and an intervened one's steps so both stream side by side.
pub struct Generator<'m> {
    model: &'m Transformer,
    spec: HookSpec,
    opts: GenerateOptions,
    rng: StdRng,
    cache: KvCache,
    /// What the next step runs: the prompt, then the last generated token.
    next_input: Vec<u32>,
    out: Generation,
    done: bool,
    /// The last step's captures (its input positions only).
    captures: Captures,
}

impl<'m> Generator<'m> {
    /// Checks the prompt, the sampling settings and the interventions' positions.
    pub fn new(
        model: &'m Transformer,
        prompt: &[u32],
        spec: HookSpec,
        opts: GenerateOptions,
    ) -> Result<Self> {
        opts.sampling.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidInput(
                "empty prompt: no tokens to continue".into(),
            ));
        }
        let n_ctx = model.dims.n_ctx;
        if prompt.len() > n_ctx {
            return Err(ModelError::InvalidInput(format!(
                "prompt has {} tokens; this model accepts at most {n_ctx}",
                prompt.len()
            )));
        }
        check_positions(&spec, prompt.len(), opts.max_new_tokens)?;
        let done = opts.max_new_tokens == 0;
        Ok(Generator {
            model,
            rng: StdRng::seed_from_u64(opts.sampling.seed),
            spec,
            opts,
            cache: KvCache::new(),
            next_input: prompt.to_vec(),
            out: Generation {
                prompt_ids: prompt.to_vec(),
                tokens: Vec::new(),
                stop: StopReason::MaxTokens,
                prefill_ms: 0.0,
                decode_ms: 0.0,
            },
            done,
            captures: Captures::new(),
        })
    }

    /// Whether the continuation has stopped (see [`Generation::stop`]).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next token, or `None` once stopped. `decode` turns generated ids into text (for
    /// stop strings).
    pub fn step(&mut self, decode: &dyn Fn(&[u32]) -> String) -> Result<Option<&GeneratedToken>> {
        if self.done {
            return Ok(None);
        }
        if self.cache.len() + self.next_input.len() > self.model.dims.n_ctx {
            return Ok(self.stop(StopReason::Length));
        }
        let started = Instant::now();
        let step = self
            .model
            .forward_step(&self.next_input, &mut self.cache, &self.spec)?;
        self.captures = step.captures;
        let token = choose(
            &step.logits_last,
            &self.opts.sampling,
            self.opts.top_logprobs,
            &mut self.rng,
        )?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if self.out.tokens.is_empty() {
            self.out.prefill_ms = ms;
        } else {
            self.out.decode_ms += ms;
        }
        let id = token.id;
        self.out.tokens.push(token);
        self.next_input = vec![id];
        let stops = &self.opts.stops;
        if stops.eos.contains(&id) {
            self.stop(StopReason::Eos);
        } else if !stops.strings.is_empty()
            && stops
                .strings
                .iter()
                .any(|s| decode(&self.out.generated_ids()).contains(s.as_str()))
        {
            self.stop(StopReason::StopString);
        } else if self.out.tokens.len() >= self.opts.max_new_tokens {
            self.stop(StopReason::MaxTokens);
        }
        Ok(self.out.tokens.last())
    }

    fn stop(&mut self, reason: StopReason) -> Option<&GeneratedToken> {
        self.out.stop = reason;
        self.done = true;
        None
    }

    /// Stops here (the caller was cancelled).
    pub fn cancel(&mut self) {
        if !self.done {
            self.stop(StopReason::Cancelled);
        }
    }

    /// What the spec captured in the last step: the rows of that step's input (the prompt at
    /// the first step, then the previous token), `[1, rows, ...]`.
    pub fn last_captures(&self) -> &Captures {
        &self.captures
    }

    /// The continuation so far.
    pub fn generation(&self) -> &Generation {
        &self.out
    }

    pub fn into_generation(self) -> Generation {
        self.out
    }
}

/// Generates up to `opts.max_new_tokens` after `prompt` under `spec`'s interventions.
/// `decode` turns generated ids into text (for stop strings); `on_token` sees each token as it
/// is chosen and returns `false` to cancel.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    spec: &HookSpec,
    opts: &GenerateOptions,
    decode: &dyn Fn(&[u32]) -> String,
    on_token: &mut dyn FnMut(&GeneratedToken) -> bool,
) -> Result<Generation> {
    let mut generator = Generator::new(model, prompt, spec.clone(), opts.clone())?;
    while let Some(token) = generator.step(decode)? {
        if !on_token(token) {
            generator.cancel();
        }
    }
    Ok(generator.into_generation())
}

/// Cuts `text` before the first stop string it contains.
pub fn cut_at_stop<'t>(text: &'t str, stops: &[String]) -> &'t str {
    let end = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The next token from one position's logits.
fn choose(
    logits: &[f32],
    sampling: &Sampling,
    n_top: usize,
    rng: &mut StdRng,
) -> Result<GeneratedToken> {
    if logits.is_empty() {
        return Err(ModelError::InvalidInput(
            "the model returned no logits".into(),
        ));
    }
    let log_probs = log_softmax(logits);
    let id = if sampling.temperature == 0.0 {
        argmax(logits)
    } else {
        let weights = warped_probs(logits, sampling);
        let dist = WeightedIndex::new(&weights).map_err(|e| {
            ModelError::InvalidInput(format!("cannot sample from these logits: {e}"))
        })?;
        dist.sample(rng) as u32
    };
    Ok(GeneratedToken {
        id,
        logprob: log_probs[id as usize],
        top: top_n(&log_probs, n_top),
    })
}

/// The index of the first largest value (`torch.argmax`); NaN never wins.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    x.iter().map(|&v| (v as f64 - log_z) as f32).collect()
}

/// Sampling weights after HF's warpers, in HF's order: temperature, top-k, top-p.
fn warped_probs(logits: &[f32], s: &Sampling) -> Vec<f64> {
    let mut scaled: Vec<f32> = logits.iter().map(|&v| v / s.temperature).collect();
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    // Most likely first; equal logits keep index order.
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
    if let Some(k) = s.top_k
        && k < order.len()
    {
        // HF keeps every token whose logit ties the k-th largest.
        let kth = scaled[order[k - 1]];
        for &i in &order[k..] {
            if scaled[i] < kth {
                scaled[i] = f32::NEG_INFINITY;
            }
        }
    }
    let max = scaled[order[0]];
    let mut probs: Vec<f64> = scaled.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        // HF: drop the least likely tokens whose cumulative probability (ascending) stays
        // ≤ 1 − p; the most likely token always stays.
        let mut cumulative = 0.0;
        for &i in order.iter().rev().take(order.len() - 1) {
            cumulative += probs[i];
            if cumulative <= 1.0 - p as f64 {
                probs[i] = 0.0;
            } else {
                break;
            }
        }
    }
    probs
}

fn top_n(log_probs: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..log_probs.len()).collect();
    order.sort_by(|&a, &b| log_probs[b].total_cmp(&log_probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(n)
        .map(|i| (i as u32, log_probs[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 2.0, 1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_follow_hf() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let s = |top_k, top_p| Sampling {
            temperature: 1.0,
            top_k,
            top_p,
            seed: 0,
        };
        let p = warped_probs(&logits, &s(Some(2), None));
        assert!(p[2] == 0.0 && p[3] == 0.0 && p[0] > p[1] && p[1] > 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // softmax = [0.6439, 0.2369, 0.0871, 0.0321]: top-p 0.8 keeps the two tokens that
        // reach 0.88; 0.5 keeps one.
        let p = warped_probs(&logits, &s(None, Some(0.8)));
        assert!(
            p[0] > 0.0 && p[1] > 0.0 && p[2] == 0.0 && p[3] == 0.0,
            "{p:?}"
        );
        let p = warped_probs(&logits, &s(None, Some(0.5)));
        assert!(p[0] > 0.0 && p[1] == 0.0, "{p:?}");
    }

    #[test]
    fn stop_strings_cut_the_text() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(cut_at_stop("a b\n\nc END", &stops), "a b");
        assert_eq!(cut_at_stop("no stop", &stops), "no stop");
    }

    #[test]
    fn bad_sampling_settings_are_refused() {
        let mut s = Sampling {
            temperature: -1.0,
            ..Sampling::default()
        };
        assert!(s.validate().is_err());
        s.temperature = 1.0;
        s.top_p = Some(0.0);
        assert!(s.validate().is_err());
        s.top_p = Some(1.0);
        s.top_k = Some(0);
        assert!(s.validate().is_err());
    }
}
