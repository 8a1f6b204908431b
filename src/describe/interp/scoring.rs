//! The scores of an explanation (`definitions.md` §9): delphi's detection and fuzzing metrics
//! over the scorer's 0/1 answers (class-balanced accuracy, precision, recall, F1, and AUC when
//! the scorer's probabilities are known), and OpenAI's simulation score (Pearson correlation
//! pooled over every token of every scored sequence, never averaged per sequence).

use serde::{Deserialize, Serialize};

/// How well a scorer's yes/no answers matched the truth (activating or not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryScores {
    /// Answers scored (examples whose answer parsed).
    pub n: usize,
    pub true_positives: usize,
    pub true_negatives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    /// (TPR + TNR) / 2; a class with no examples counts its rate as 0. `None` when no answer
    /// parsed (no score is made up).
    pub balanced_accuracy: Option<f64>,
    /// `None` when nothing was called positive.
    pub precision: Option<f64>,
    /// `None` without activating examples.
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Area under the ROC curve of the scorer's probabilities (with logprobs only).
    pub auc: Option<f64>,
    /// Examples whose answer did not parse (left out of everything above, never guessed).
    pub unparsed: usize,
}

/// Scores `predicted` against `truth` (`None`: the answer did not parse). `probability` is the
/// scorer's probability of "1" per example, when known.
pub fn binary_scores(
    truth: &[bool],
    predicted: &[Option<bool>],
    probability: Option<&[Option<f64>]>,
) -> BinaryScores {
    let (mut tp, mut tn, mut fp, mut fn_) = (0, 0, 0, 0);
    let mut unparsed = 0;
    for (&t, p) in truth.iter().zip(predicted) {
        match (t, p) {
            (true, Some(true)) => tp += 1,
            (false, Some(false)) => tn += 1,
            (false, Some(true)) => fp += 1,
            (true, Some(false)) => fn_ += 1,
            (_, None) => unparsed += 1,
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let tpr = ratio(tp, tp + fn_);
    let tnr = ratio(tn, tn + fp);
    let precision = ratio(tp, tp + fp);
    let f1 = match (precision, tpr) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let auc = probability.and_then(|probs| {
        let pairs: Vec<(bool, f64)> = truth
            .iter()
            .zip(probs)
            .filter_map(|(&t, p)| Some((t, (*p)?)))
            .collect();
        roc_auc(&pairs)
    });
    BinaryScores {
        n: tp + tn + fp + fn_,
        true_positives: tp,
        true_negatives: tn,
        false_positives: fp,
        false_negatives: fn_,
        balanced_accuracy: (tp + tn + fp + fn_ > 0)
            .then(|| (tpr.unwrap_or(0.0) + tnr.unwrap_or(0.0)) / 2.0),
        precision,
        recall: tpr,
        f1,
        auc,
        unparsed,
    }
}

/// How well a simulator's predicted activations followed the true ones (OpenAI's score).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationScores {
    /// Sequences whose simulation parsed (the rest are left out, never guessed).
    pub sequences: usize,
    /// Tokens in those sequences.
    pub tokens: usize,
    /// Pearson correlation of predicted and true activations pooled over every token of every
    /// simulated sequence. `None` when either side is constant or nothing parsed.
    pub correlation: Option<f64>,
    /// Predictions that are expected values from the answer's logprobs (the rest are the
    /// levels written in the answer).
    pub from_logprobs: usize,
    /// Sequences whose answer did not list a level for every token.
    pub unparsed: usize,
}

/// The simulation score of `sequences`: each the true activations of a sequence's tokens and
/// the simulator's predictions for them (`None`: its answer did not parse).
pub fn simulation_scores(
    sequences: &[(Vec<f32>, Option<Vec<f64>>)],
    from_logprobs: usize,
) -> SimulationScores {
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    let mut unparsed = 0;
    let mut simulated = 0;
    for (real, guess) in sequences {
        match guess {
            Some(g) if g.len() == real.len() => {
                simulated += 1;
                truth.extend(real.iter().map(|&a| a as f64));
                predicted.extend_from_slice(g);
            }
            _ => unparsed += 1,
        }
    }
    SimulationScores {
        sequences: simulated,
        tokens: truth.len(),
        correlation: pearson(&truth, &predicted),
        from_logprobs,
        unparsed,
    }
}

/// The expected activation level under a simulator's distribution over its next token: the
/// alternatives that are levels 0–10, weighted by their probabilities renormalised over those
/// levels (OpenAI's simulator). `None` when no alternative is a level.
pub fn expected_level(top: &[(String, f32)]) -> Option<f64> {
    let (mut weight, mut total) = (0.0, 0.0);
    for (token, logprob) in top {
        let Ok(level) = token.trim().parse::<u8>() else {
            continue;
        };
        if level > 10 || token.trim().starts_with('+') {
            continue;
        }
        let p = (*logprob as f64).exp();
        weight += p * level as f64;
        total += p;
    }
    (total > 0.0).then(|| weight / total)
}

/// One headline number per scorer: balanced accuracy for detection and fuzzing, the pooled
/// correlation for simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scores {
    Binary(BinaryScores),
    Simulation(SimulationScores),
}

impl Scores {
    pub fn headline(&self) -> Option<f64> {
        match self {
            Scores::Binary(s) => s.balanced_accuracy,
            Scores::Simulation(s) => s.correlation,
        }
    }
}

/// The probability that a random positive scores above a random negative (ties count half):
/// the area under the ROC curve. `None` without both classes.
pub fn roc_auc(pairs: &[(bool, f64)]) -> Option<f64> {
    let positives: Vec<f64> = pairs.iter().filter(|p| p.0).map(|p| p.1).collect();
    let negatives: Vec<f64> = pairs.iter().filter(|p| !p.0).map(|p| p.1).collect();
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &positives {
        for n in &negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (positives.len() * negatives.len()) as f64)
}

/// Pearson correlation of `x` and `y` (pooled: pass every token of every sequence at once).
/// `None` when either is constant or they are shorter than 2.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// OpenAI's discretisation of an activation for prompts and simulation:
/// `min(10, ⌊10·max(a, 0)/a_max⌋)` (0 when `a_max` ≤ 0).
pub fn openai_level(a: f32, a_max: f32) -> u8 {
    if a_max <= 0.0 || !a.is_finite() {
        return 0;
    }
    ((10.0 * a.max(0.0) / a_max).floor() as i64).clamp(0, 10) as u8
}

/// delphi's activation shown beside a highlighted token: `clamp(⌈10·a/a_max⌉, 0, 10)`.
pub fn delphi_level(a: f32, a_max: f32) -> u8 {
    if a_max <= 0.0 || !a.is_finite() {
        return 0;
    }
    ((10.0 * a / a_max).ceil() as i64).clamp(0, 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_accuracy_precision_recall_f1_on_a_worked_example() {
        // 4 activating, 6 not: the scorer says yes to 3 of the activating and 1 of the others;
        // one answer (a non-activating example's) did not parse.
        let truth = [
            true, true, true, true, false, false, false, false, false, false,
        ];
        let p = |v: i32| match v {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        };
        let predicted: Vec<Option<bool>> =
            [1, 1, 1, 0, 1, 0, 0, 0, 0, -1].into_iter().map(p).collect();
        let s = binary_scores(&truth, &predicted, None);
        assert_eq!(
            (
                s.true_positives,
                s.false_negatives,
                s.false_positives,
                s.true_negatives
            ),
            (3, 1, 1, 4)
        );
        assert_eq!((s.n, s.unparsed), (9, 1));
        // TPR 3/4, TNR 4/5: (0.75 + 0.8) / 2.
        assert!((s.balanced_accuracy.unwrap() - 0.775).abs() < 1e-12);
        assert_eq!(s.precision, Some(0.75));
        assert_eq!(s.recall, Some(0.75));
        assert!((s.f1.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(s.auc, None);
        // Nothing called positive: no precision, F1 undefined.
        let none = binary_scores(&[true, false], &[Some(false), Some(false)], None);
        assert_eq!(none.precision, None);
        assert_eq!(none.balanced_accuracy, Some(0.5));
        let unparsed = binary_scores(&[true, false], &[None, None], None);
        assert_eq!((unparsed.n, unparsed.balanced_accuracy), (0, None));
    }

    #[test]
    fn auc_counts_ordered_pairs_and_ties_half() {
        // Positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4, 0.4>0.1).
        let pairs = [(true, 0.9), (true, 0.4), (false, 0.4), (false, 0.1)];
        assert_eq!(roc_auc(&pairs), Some(3.5 / 4.0));
        assert_eq!(roc_auc(&[(true, 0.3)]), None);
        let s = binary_scores(
            &[true, false],
            &[Some(true), Some(false)],
            Some(&[Some(0.8), None]),
        );
        assert_eq!(s.auc, None, "a missing probability leaves one class empty");
    }

    #[test]
    fn pearson_is_pooled_over_all_tokens() {
        // Two sequences that each correlate perfectly, but whose pooled tokens do not.
        let (x1, y1) = ([0.0, 1.0], [0.0, 10.0]);
        let (x2, y2) = ([5.0, 6.0], [0.0, 1.0]);
        assert!((pearson(&x1, &y1).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&x2, &y2).unwrap() - 1.0).abs() < 1e-12);
        let x: Vec<f64> = x1.iter().chain(&x2).copied().collect();
        let y: Vec<f64> = y1.iter().chain(&y2).copied().collect();
        // x = 0,1,5,6 (mean 3; dx = -3,-2,2,3); y = 0,10,0,1 (mean 2.75; dy = -2.75, 7.25,
        // -2.75, -1.75): Σdxdy = 8.25 - 14.5 - 5.5 - 5.25 = -17, Σdx² = 26, Σdy² = 70.75.
        let expected = -17.0 / (26.0f64 * 70.75).sqrt();
        assert!((expected + 0.39637).abs() < 1e-4);
        assert!((pearson(&x, &y).unwrap() - expected).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[0.0, 2.0]), None);
    }

    #[test]
    fn simulation_is_scored_on_pooled_tokens_and_skips_unparsed_sequences() {
        // The worked example of `pearson_is_pooled_over_all_tokens`, as two sequences, plus
        // one whose answer did not parse and one whose prediction has the wrong length.
        let sequences = vec![
            (vec![0.0, 1.0], Some(vec![0.0, 10.0])),
            (vec![5.0, 6.0], Some(vec![0.0, 1.0])),
            (vec![3.0], None),
            (vec![1.0, 2.0], Some(vec![1.0])),
        ];
        let s = simulation_scores(&sequences, 3);
        assert_eq!(
            (s.sequences, s.tokens, s.unparsed, s.from_logprobs),
            (2, 4, 2, 3)
        );
        let expected = -17.0 / (26.0f64 * 70.75).sqrt();
        assert!((s.correlation.unwrap() - expected).abs() < 1e-9);
        assert_eq!(
            Scores::Simulation(s).headline().map(|r| r < 0.0),
            Some(true)
        );
        // A simulator that predicts the same level everywhere has no correlation.
        let flat = simulation_scores(&[(vec![0.0, 4.0], Some(vec![2.0, 2.0]))], 0);
        assert_eq!(flat.correlation, None);
    }

    #[test]
    fn expected_levels_renormalise_over_the_level_tokens() {
        // p(0) = 0.5, p(10) = 0.25, p("the") = 0.25: E = (0·0.5 + 10·0.25) / 0.75 = 10/3.
        let top = vec![
            ("0".to_string(), 0.5f32.ln()),
            ("10".to_string(), 0.25f32.ln()),
            ("the".to_string(), 0.25f32.ln()),
            ("11".to_string(), 0.1f32.ln()),
        ];
        assert!((expected_level(&top).unwrap() - 10.0 / 3.0).abs() < 1e-6);
        assert_eq!(expected_level(&[("x".to_string(), 0.0)]), None);
    }

    #[test]
    fn activation_levels_follow_openai_and_delphi() {
        // OpenAI floors: 10·0.55/1 = 5.5 → 5; negatives are 0; the max is 10.
        assert_eq!(openai_level(0.55, 1.0), 5);
        assert_eq!(openai_level(-3.0, 1.0), 0);
        assert_eq!(openai_level(1.0, 1.0), 10);
        assert_eq!(openai_level(2.0, 1.0), 10);
        // delphi rounds up: 10·0.51/1 = 5.1 → 6; a tiny positive is 1.
        assert_eq!(delphi_level(0.51, 1.0), 6);
        assert_eq!(delphi_level(0.001, 1.0), 1);
        assert_eq!(delphi_level(-1.0, 1.0), 0);
        assert_eq!(delphi_level(1.0, 0.0), 0);
    }
}
