//! Core neurons (CoreInfer; definitions §12): the few neurons that carry a token
//! (token-wise) and the neurons that keep coming back across a sentence (sentence-wise), the
//! overlap of two prompts' core sets, and how a core set holds as a text grows.

use serde::Serialize;

use crate::model::{HookSpec, ModelError, NoObserver, Transformer};

/// How the sentence-wise core is cut from the neurons' counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SentenceRule {
    /// The paper's: the ⌊β·d_ff⌋ neurons in the most token cores (β is a share of neurons).
    #[default]
    TopShare,
    /// A variant, labelled as such: every neuron in at least a β share of the token cores.
    Frequency,
}

/// CoreInfer's parameters: α (token-wise share) and β (sentence-wise share).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CoreOptions {
    pub alpha: f64,
    pub beta: f64,
    pub rule: SentenceRule,
}

impl Default for CoreOptions {
    /// α = 0.4 (the paper's), β = 0.2 (its extraction and QA value).
    fn default() -> Self {
        CoreOptions {
            alpha: 0.4,
            beta: 0.2,
            rule: SentenceRule::TopShare,
        }
    }
}

impl CoreOptions {
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must lie in [0, 1], not {v}"));
            }
        }
        Ok(())
    }
}

/// One layer's core neurons on a prompt.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LayerCore {
    /// Each scored token's core (strongest first).
    pub token_cores: Vec<Vec<usize>>,
    /// The sentence-wise core, ascending neuron indices.
    pub core: Vec<usize>,
    /// How many token cores each neuron is in (`f(n)`), for the heatmap.
    pub counts: Vec<u32>,
}

impl LayerCore {
    pub fn token_core_sizes(&self) -> Vec<usize> {
        self.token_cores.iter().map(Vec::len).collect()
    }
}

/// Token-wise core `C_α(x_t)`: the `round(α·|A⁺|)` largest positive activations (half to even,
/// as `torch.round`), strongest first, ties to the lower index.
pub fn token_core(row: &[f32], alpha: f64) -> Vec<usize> {
    let mut positive: Vec<usize> = (0..row.len()).filter(|&j| row[j] > 0.0).collect();
    let k = (alpha * positive.len() as f64).round_ties_even() as usize;
    positive.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    positive.truncate(k);
    positive
}

/// Token and sentence cores of one layer's `[tokens, d_ff]` activations, over the rows from
/// `first_scored` on (a BOS row before it is not a token of the text).
pub fn layer_core(
    values: &[f32],
    d_ff: usize,
    first_scored: usize,
    opts: CoreOptions,
) -> LayerCore {
    if d_ff == 0 {
        return LayerCore::default();
    }
    let token_cores: Vec<Vec<usize>> = values
        .chunks_exact(d_ff)
        .skip(first_scored)
        .map(|row| token_core(row, opts.alpha))
        .collect();
    let mut counts = vec![0u32; d_ff];
    for core in &token_cores {
        for &n in core {
            counts[n] += 1;
        }
    }
    let core = sentence_core(&counts, token_cores.len(), opts);
    LayerCore {
        token_cores,
        core,
        counts,
    }
}

/// The sentence-wise core from each neuron's token-core count `f(n)` over `m` tokens: the
/// paper's ⌊β·d_ff⌋ most frequent (count ties to the lower index; neurons in no token core
/// are never core), or the labelled variant `f(n)/m ≥ β`. Ascending indices.
pub fn sentence_core(counts: &[u32], m: usize, opts: CoreOptions) -> Vec<usize> {
    let mut core: Vec<usize> = match opts.rule {
        SentenceRule::TopShare => {
            let keep = (opts.beta * counts.len() as f64).floor() as usize;
            let mut order: Vec<usize> = (0..counts.len()).filter(|&n| counts[n] > 0).collect();
            order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
            order.truncate(keep);
            order
        }
        SentenceRule::Frequency => (0..counts.len())
            .filter(|&n| counts[n] > 0 && m > 0 && counts[n] as f64 / m as f64 >= opts.beta)
            .collect(),
    };
    core.sort_unstable();
    core
}

/// |A ∩ B| of two ascending index sets.
pub fn intersection(a: &[usize], b: &[usize]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Jaccard overlap |A ∩ B| / |A ∪ B| of two ascending index sets (1 for two empty sets).
pub fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    let common = intersection(a, b);
    let union = a.len() + b.len() - common;
    if union == 0 {
        1.0
    } else {
        common as f64 / union as f64
    }
}

/// CoreInfer's notebook similarity |A ∩ B| / |B| (1 when B is empty).
pub fn similarity(a: &[usize], b: &[usize]) -> f64 {
    if b.is_empty() {
        1.0
    } else {
        intersection(a, b) as f64 / b.len() as f64
    }
}

/// Stability as a text grows: for each prefix of the scored tokens (1, 2, … all), the Jaccard
/// overlap of the prefix's sentence core with the whole text's.
pub fn stability(values: &[f32], d_ff: usize, first_scored: usize, opts: CoreOptions) -> Vec<f64> {
    let whole = layer_core(values, d_ff, first_scored, opts);
    let mut counts = vec![0u32; d_ff];
    whole
        .token_cores
        .iter()
        .enumerate()
        .map(|(i, core)| {
            for &n in core {
                counts[n] += 1;
            }
            jaccard(&sentence_core(&counts, i + 1, opts), &whole.core)
        })
        .collect()
}

/// One hook's core neurons on a prompt.
#[derive(Clone, Debug, Serialize)]
pub struct HookCore {
    pub hook: String,
    #[serde(flatten)]
    pub core: LayerCore,
}

/// Core neurons of `tokens` at every hook matching `hook_glob` (CoreInfer reads the MLP
/// activations, `blocks.*.mlp.hook_post`), rows before `first_scored` (a BOS) not scored.
pub fn measure(
    model: &Transformer,
    tokens: &[u32],
    hook_glob: &str,
    first_scored: usize,
    opts: CoreOptions,
) -> Result<Vec<HookCore>, ModelError> {
    opts.check().map_err(ModelError::InvalidInput)?;
    let out = model.forward(
        &[tokens.to_vec()],
        &HookSpec::capture([hook_glob]),
        &mut NoObserver,
    )?;
    let mut result = Vec::new();
    for hook in model.hook_names() {
        let Some(t) = out.captures.get(&hook) else {
            continue;
        };
        let t = t.get(0)?;
        let n_tokens = t.dim(0)?;
        let core = crate::model::transformer::with_f32_slice(&t, |values| {
            layer_core(values, values.len() / n_tokens.max(1), first_scored, opts)
        })?;
        result.push(HookCore { hook, core });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Definitions §12's example: d_ff = 8, α = .4, three tokens.
    fn example() -> Vec<f32> {
        let mut v = vec![0f32; 24];
        for (t, pairs) in [
            vec![(0, 0.9), (2, 0.4), (3, 0.2), (5, 0.6), (7, 0.1)],
            vec![(0, 0.5), (1, 0.3), (3, 0.8), (5, 0.7), (6, 0.2)],
            vec![(0, 0.6), (2, 0.1), (4, 0.3), (5, 0.9), (7, 0.2)],
        ]
        .into_iter()
        .enumerate()
        {
            for (j, a) in pairs {
                v[t * 8 + j] = a;
            }
            // Negative entries are not positive activations.
            if v[t * 8 + 1] == 0.0 {
                v[t * 8 + 1] = -0.7;
            }
        }
        v
    }

    #[test]
    fn the_worked_example_gives_the_definitions_sets() {
        let opts = CoreOptions {
            alpha: 0.4,
            beta: 0.25,
            rule: SentenceRule::TopShare,
        };
        let layer = layer_core(&example(), 8, 0, opts);
        assert_eq!(layer.token_cores, vec![vec![0, 5], vec![3, 5], vec![5, 0]]);
        assert_eq!(layer.counts[5], 3);
        assert_eq!(layer.counts[0], 2);
        assert_eq!(layer.counts[3], 1);
        assert_eq!(layer.core, vec![0, 5]);
        let variant = layer_core(
            &example(),
            8,
            0,
            CoreOptions {
                rule: SentenceRule::Frequency,
                ..opts
            },
        );
        assert_eq!(variant.core, vec![0, 3, 5]);
        assert_eq!(similarity(&layer.core, &[3, 5]), 0.5);
        assert!((jaccard(&layer.core, &[3, 5]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn k_rounds_half_to_even_and_ties_go_to_the_lower_index() {
        // 5 positives × .5 = 2.5 → 2 (half to even); 7 × .5 = 3.5 → 4.
        assert_eq!(token_core(&[1.0, 1.0, 1.0, 1.0, 1.0], 0.5), vec![0, 1]);
        assert_eq!(token_core(&[1.0; 7], 0.5), vec![0, 1, 2, 3]);
        assert!(token_core(&[0.0, -1.0], 0.9).is_empty());
    }

    #[test]
    fn a_bos_row_is_not_scored_and_stability_ends_at_one() {
        let mut with_bos = vec![5.0f32; 8];
        with_bos.extend(example());
        let opts = CoreOptions {
            beta: 0.25,
            ..CoreOptions::default()
        };
        assert_eq!(
            layer_core(&with_bos, 8, 1, opts),
            layer_core(&example(), 8, 0, opts)
        );
        let s = stability(&example(), 8, 0, opts);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], 1.0);
        assert_eq!(s[0], 1.0, "{{0, 5}} is already the first token's core");
        assert_eq!(jaccard(&[], &[]), 1.0);
    }
}
