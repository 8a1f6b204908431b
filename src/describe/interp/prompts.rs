//! The prompts of auto-interpretation (`definitions.md` §9) and the parsing of their answers.
//! Explainers: delphi's (examples with the activating runs wrapped in `<<…>>`, an optional
//! activations line, the answer ending in `[EXPLANATION]: …`) and OpenAI's (every token with
//! its 0–10 level, ending "the main thing this neuron does is find"). Scorers: delphi's
//! detection (plain examples) and fuzzing (highlighted examples), each answered with a list of
//! 0/1, and OpenAI's simulation (the explanation, then every token with an unknown level for
//! the simulator to fill in). The wording is ours; the formats are theirs.

use serde::{Deserialize, Serialize};

use super::scoring::{delphi_level, openai_level};

/// A chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub role: String,
    pub content: String,
}

impl Msg {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Msg {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A window of tokens with the unit's activation at each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub tokens: Vec<String>,
    pub acts: Vec<f32>,
}

impl Record {
    pub fn max(&self) -> f32 {
        self.acts.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// Which explainer prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainerKind {
    Delphi,
    Openai,
}

impl ExplainerKind {
    /// Its explainer prompt over `records` (delphi's with the activations listed).
    pub fn messages(self, records: &[Record]) -> Vec<Msg> {
        match self {
            ExplainerKind::Delphi => delphi_explain(records, true),
            ExplainerKind::Openai => openai_explain(records),
        }
    }

    /// The explanation in an answer to [`ExplainerKind::messages`].
    pub fn parse(self, answer: &str) -> Option<String> {
        match self {
            ExplainerKind::Delphi => parse_delphi_explanation(answer),
            ExplainerKind::Openai => parse_openai_explanation(answer),
        }
    }

    /// Tokens its answer needs (delphi's reasons first).
    pub fn max_tokens(self) -> usize {
        match self {
            ExplainerKind::Delphi => 200,
            ExplainerKind::Openai => 40,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExplainerKind::Delphi => "delphi",
            ExplainerKind::Openai => "openai",
        }
    }
}

/// Share of an example's maximum above which a token is highlighted (delphi).
pub const HIGHLIGHT_FRACTION: f32 = 0.3;
/// Tokens listed at most on an example's activations line (delphi).
const MAX_LISTED: usize = 10;

/// `tokens` with each contiguous run of `marked` tokens wrapped in `<<…>>`.
pub fn highlight(tokens: &[String], marked: &[bool]) -> String {
    let mut out = String::new();
    let mut open = false;
    for (t, &m) in tokens.iter().zip(marked) {
        if m && !open {
            out.push_str("<<");
            open = true;
        } else if !m && open {
            out.push_str(">>");
            open = false;
        }
        out.push_str(t);
    }
    if open {
        out.push_str(">>");
    }
    out
}

/// Which tokens of `record` delphi highlights: activation above 0.3 × the example's maximum.
pub fn activating(record: &Record) -> Vec<bool> {
    let max = record.max();
    record
        .acts
        .iter()
        .map(|&a| max > 0.0 && a > HIGHLIGHT_FRACTION * max)
        .collect()
}

const DELPHI_SYSTEM: &str = "You study a single feature of a language model. You will see \
text examples in which the feature is active; the tokens where it activates most are \
enclosed in << and >>. After each example a line lists those tokens with how strongly the \
feature fired on a scale of 0 to 10. Work out what the marked tokens have in common, taking \
their context into account, and write a short explanation of what the feature detects. Be \
concise: no more than a sentence, and do not quote the examples at length. You may reason \
first, but the last line of your answer must be of the form\n[EXPLANATION]: <your explanation>";

/// delphi's explainer prompt over `records` (activations normalised by `a_max`, the unit's
/// maximum over them).
pub fn delphi_explain(records: &[Record], show_activations: bool) -> Vec<Msg> {
    let a_max = records.iter().map(Record::max).fold(0.0f32, f32::max);
    let mut body = String::new();
    for (i, r) in records.iter().enumerate() {
        let marked = activating(r);
        body.push_str(&format!(
            "Example {}: {}\n",
            i + 1,
            highlight(&r.tokens, &marked)
        ));
        if show_activations {
            let listed: Vec<String> = r
                .tokens
                .iter()
                .zip(&r.acts)
                .zip(&marked)
                .filter(|(_, m)| **m)
                .take(MAX_LISTED)
                .map(|((t, &a), _)| format!("({t:?} : {})", delphi_level(a, a_max)))
                .collect();
            if !listed.is_empty() {
                body.push_str(&format!("Activations: {}\n", listed.join(", ")));
            }
        }
    }
    vec![
        Msg::new("system", DELPHI_SYSTEM),
        Msg::new("user", format!("{body}\nWhat does the feature detect?")),
    ]
}

/// The explanation in a delphi answer: the text after the last `[EXPLANATION]:`.
pub fn parse_delphi_explanation(answer: &str) -> Option<String> {
    let at = answer.rfind("[EXPLANATION]:")?;
    let text = answer[at + "[EXPLANATION]:".len()..]
        .lines()
        .next()
        .unwrap_or("")
        .trim();
    (!text.is_empty()).then(|| text.to_string())
}

const OPENAI_SYSTEM: &str = "We are studying neurons in a neural network. Each neuron looks \
for some particular thing in a short document. Look at the parts of the document the neuron \
activates for and summarise in a single sentence what the neuron is looking for. Do not list \
examples of words.\n\nThe activation format is token<tab>activation. Activation values range \
from 0 to 10. A neuron finding what it is looking for is represented by a non-zero activation \
value. The higher the activation value, the stronger the match.";

/// A short made-up neuron shown before the real one, with its explanation.
struct FewShot {
    records: &'static [&'static [(&'static str, u8)]],
    explanation: &'static str,
}

const FEW_SHOT: [FewShot; 2] = [
    FewShot {
        records: &[
            &[
                ("the", 0),
                (" cat", 0),
                (" sat", 0),
                (" on", 2),
                (" Monday", 10),
                (".", 0),
            ],
            &[
                ("See", 0),
                (" you", 0),
                (" on", 1),
                (" Friday", 9),
                (" then", 0),
            ],
        ],
        explanation: " days of the week, mostly after \"on\"",
    },
    FewShot {
        records: &[
            &[
                ("x", 0),
                (" =", 0),
                (" [", 6),
                ("1", 0),
                (",", 0),
                (" 2", 0),
                ("]", 0),
            ],
            &[("print", 0), ("(", 5), ("a", 0), (")", 0)],
        ],
        explanation: " opening brackets in code",
    },
];

fn openai_records(out: &mut String, records: impl Iterator<Item = Vec<(String, u8)>>) {
    out.push_str("Activations:\n<start>\n");
    for r in records {
        for (t, level) in r {
            out.push_str(&format!("{t}\t{level}\n"));
        }
        out.push_str("<end>\n<start>\n");
    }
    // The last record's opener is not followed by one.
    if out.ends_with("<start>\n") {
        out.truncate(out.len() - "<start>\n".len());
    }
}

/// OpenAI's explainer prompt: each record as `token<TAB>level` lines (levels normalised by the
/// maximum over all records), repeated with the zeros left out when under 20 % of the entries
/// are non-zero; it ends where the explanation starts.
pub fn openai_explain(records: &[Record]) -> Vec<Msg> {
    let a_max = records.iter().map(Record::max).fold(0.0f32, f32::max);
    let mut user = String::new();
    let neuron_number = FEW_SHOT.len() + 1;
    for (i, shot) in FEW_SHOT.iter().enumerate() {
        user.push_str(&format!("\n\nNeuron {}\n", i + 1));
        openai_records(
            &mut user,
            shot.records
                .iter()
                .map(|r| r.iter().map(|&(t, l)| (t.to_string(), l)).collect()),
        );
        user.push_str(&format!(
            "\nExplanation of neuron {} behavior: the main thing this neuron does is find{}\n",
            i + 1,
            shot.explanation
        ));
    }
    let levelled: Vec<Vec<(String, u8)>> = records
        .iter()
        .map(|r| {
            r.tokens
                .iter()
                .zip(&r.acts)
                .map(|(t, &a)| (t.clone(), openai_level(a, a_max)))
                .collect()
        })
        .collect();
    user.push_str(&format!("\n\nNeuron {neuron_number}\n"));
    openai_records(&mut user, levelled.iter().cloned());
    let entries: usize = levelled.iter().map(Vec::len).sum();
    let nonzero: usize = levelled.iter().flatten().filter(|(_, l)| *l > 0).count();
    if entries > 0 && (nonzero as f64) < 0.2 * entries as f64 {
        user.push_str("\nSame activations, but with all zeros filtered out:\n");
        openai_records(
            &mut user,
            levelled
                .iter()
                .map(|r| r.iter().filter(|(_, l)| *l > 0).cloned().collect()),
        );
    }
    user.push_str(&format!(
        "\nExplanation of neuron {neuron_number} behavior: the main thing this neuron does is find"
    ));
    vec![
        Msg::new("system", OPENAI_SYSTEM),
        Msg::new("user", user.trim_start().to_string()),
    ]
}

/// The explanation in an OpenAI-prompt answer: its first line, trimmed, without a final period.
pub fn parse_openai_explanation(answer: &str) -> Option<String> {
    let line = answer
        .trim()
        .lines()
        .next()?
        .trim()
        .trim_end_matches('.')
        .trim();
    (!line.is_empty()).then(|| line.to_string())
}

const DETECTION_SYSTEM: &str = "You are an intelligent and meticulous linguistics researcher. \
You will be given an explanation of a feature of a language model, and then several text \
examples. Decide for each example whether the feature, as explained, would be active \
anywhere in it. Answer with a Python list of 0s and 1s, one per example in order (1: \
active, 0: not), and nothing else, for example [1, 0, 0, 1, 0].";

const FUZZING_SYSTEM: &str = "You are an intelligent and meticulous linguistics researcher. \
You will be given an explanation of a feature of a language model, and then several text \
examples in which some tokens are marked with << and >>. Decide for each example whether \
every marked token is one the explanation says the feature is active on. Answer with a Python \
list of 0s and 1s, one per example in order (1: all marks are correct, 0: some are not), and \
nothing else, for example [1, 0, 0, 1, 0].";

/// Detection: the explanation and plain examples.
pub fn detection(explanation: &str, examples: &[String]) -> Vec<Msg> {
    scorer_prompt(DETECTION_SYSTEM, false, explanation, examples)
}

/// Fuzzing: the explanation and highlighted examples.
pub fn fuzzing(explanation: &str, examples: &[String]) -> Vec<Msg> {
    scorer_prompt(FUZZING_SYSTEM, true, explanation, examples)
}

/// A demonstration example for the scorers: plain, highlighted, and whether it fits (for
/// fuzzing: whether its highlight is on what the explanation names).
type Demo = (&'static str, &'static str, bool);

/// Two worked scorer prompts shown as earlier turns, as delphi's scorers do: they teach the
/// answer format, which small models do not follow from the instructions alone.
const SCORER_DEMOS: [(&str, [Demo; 5]); 2] = [
    (
        "the word \"cat\" and other pets",
        [
            (
                "The cat sat on the mat.",
                "The<< cat>> sat on the mat.",
                true,
            ),
            ("It rained all day.", "It<< rained>> all day.", false),
            ("She fed her dog.", "She fed her<< dog>>.", true),
            ("He paid the bill.", "He paid<< the>> bill.", false),
            ("Two kittens slept.", "Two<< kittens>> slept.", true),
        ],
    ),
    (
        "days of the week",
        [
            ("See you then.", "See<< you>> then.", false),
            ("Come back on Monday.", "Come back on<< Monday>>.", true),
            (
                "The shop opens at nine.",
                "The<< shop>> opens at nine.",
                false,
            ),
            ("Friday was long.", "<<Friday>> was long.", true),
            ("Pass the salt.", "Pass the<< salt>>.", false),
        ],
    ),
];

fn scorer_question(explanation: &str, examples: &[String]) -> String {
    let mut user = format!("Explanation: {explanation}\n\n");
    for (i, e) in examples.iter().enumerate() {
        user.push_str(&format!("Example {}: {e}\n", i + 1));
    }
    user.push_str(&format!(
        "\nAnswer with a list of {} values (0 or 1).",
        examples.len()
    ));
    user
}

/// A list as the scorers answer it: `[1, 0, 1]`.
fn answer_list(values: impl Iterator<Item = impl std::fmt::Display>) -> String {
    format!(
        "[{}]",
        values.map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
    )
}

fn scorer_prompt(
    system: &str,
    highlighted: bool,
    explanation: &str,
    examples: &[String],
) -> Vec<Msg> {
    let mut messages = vec![Msg::new("system", system)];
    // Each demonstration asks about as many examples as the real question.
    for (demo_explanation, demos) in &SCORER_DEMOS {
        let picked: Vec<&Demo> = demos.iter().cycle().take(examples.len()).collect();
        let texts: Vec<String> = picked
            .iter()
            .map(|(plain, marked, _)| if highlighted { marked } else { plain }.to_string())
            .collect();
        messages.push(Msg::new("user", scorer_question(demo_explanation, &texts)));
        messages.push(Msg::new(
            "assistant",
            answer_list(picked.iter().map(|d| u8::from(d.2))),
        ));
    }
    messages.push(Msg::new("user", scorer_question(explanation, examples)));
    messages
}

/// The last bracketed list in `answer` with exactly `n` entries that all parse, each with the
/// byte offset of its text in `answer`.
fn last_list<T>(
    answer: &str,
    n: usize,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<Vec<(usize, T)>> {
    let mut found = None;
    let mut from = 0;
    while let Some(open) = answer[from..].find('[') {
        let inner_start = from + open + 1;
        let Some(close) = answer[inner_start..].find(']') else {
            break;
        };
        let inner = &answer[inner_start..inner_start + close];
        let mut at = inner_start;
        let values: Option<Vec<(usize, T)>> = inner
            .split(',')
            .map(|v| {
                let lead = v.len() - v.trim_start().len();
                let entry = (at + lead, v.trim());
                at += v.len() + 1;
                parse(entry.1).map(|x| (entry.0, x))
            })
            .collect();
        if let Some(v) = values.filter(|v| v.len() == n) {
            found = Some(v);
        }
        from = inner_start + close + 1;
    }
    found
}

/// The scorer's list of `n` 0/1 answers: the last bracketed list in the answer that has
/// exactly `n` entries, each 0 or 1 (for one example, also a bare leading 0 or 1). `None` when
/// there is no such answer (never guessed).
pub fn parse_binary_list(answer: &str, n: usize) -> Option<Vec<bool>> {
    let found = last_list(answer, n, |v| match v {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    })
    .map(|v| v.into_iter().map(|(_, b)| b).collect());
    // One example: a bare 0 or 1 leading the answer counts too ("1", "0. Not active").
    if found.is_none() && n == 1 {
        let mut chars = answer.trim_start().chars();
        let first = chars.next();
        let next_is_digit = chars.next().is_some_and(|c| c.is_ascii_digit());
        return match (first, next_is_digit) {
            (Some('1'), false) => Some(vec![true]),
            (Some('0'), false) => Some(vec![false]),
            _ => None,
        };
    }
    found
}

const SIMULATION_SYSTEM: &str = "We're studying neurons in a neural network. Each neuron \
looks for some particular thing in a short document. Read an explanation of what a neuron \
does and predict its activation on each token of a document: an integer from 0 (most \
tokens) to 10 (the strongest match).";

fn simulation_question(neuron: usize, explanation: &str, tokens: &[String]) -> String {
    format!(
        "Neuron {neuron}\nExplanation of neuron {neuron} behavior: the main thing this neuron \
         does is find {}\nTokens: {}\n\nAnswer with a list of {} activations (0 to 10), one per \
         token.",
        explanation.trim(),
        serde_json::Value::from(tokens.to_vec()),
        tokens.len()
    )
}

/// OpenAI's simulation, asked through a chat: the explanation and the document's tokens; the
/// simulator answers with a level per token. The few-shot neurons are earlier turns with their
/// true levels (OpenAI's prompt puts them before the real neuron too).
pub fn simulation(explanation: &str, tokens: &[String]) -> Vec<Msg> {
    let mut messages = vec![Msg::new("system", SIMULATION_SYSTEM)];
    // One record per few-shot neuron: longer prompts lose small simulators.
    for (i, shot) in FEW_SHOT.iter().enumerate() {
        for record in shot.records.iter().take(1) {
            let shot_tokens: Vec<String> = record.iter().map(|(t, _)| t.to_string()).collect();
            messages.push(Msg::new(
                "user",
                simulation_question(i + 1, shot.explanation, &shot_tokens),
            ));
            messages.push(Msg::new(
                "assistant",
                answer_list(record.iter().map(|(_, level)| level)),
            ));
        }
    }
    messages.push(Msg::new(
        "user",
        simulation_question(FEW_SHOT.len() + 1, explanation, tokens),
    ));
    messages
}

/// The simulator's levels for `n` tokens: the last list in the answer of `n` integers 0–10,
/// each as (byte offset of the level in `answer`, level). `None` when there is none (never
/// guessed).
pub fn parse_simulation(answer: &str, n: usize) -> Option<Vec<(usize, u8)>> {
    last_list(answer, n, |v| {
        let level: u8 = v.parse().ok()?;
        (level <= 10 && v.bytes().all(|b| b.is_ascii_digit())).then_some(level)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, f32)]) -> Record {
        Record {
            tokens: pairs.iter().map(|p| p.0.to_string()).collect(),
            acts: pairs.iter().map(|p| p.1).collect(),
        }
    }

    #[test]
    fn runs_above_three_tenths_of_the_examples_max_are_wrapped() {
        let r = record(&[
            ("a", 0.0),
            (" b", 2.0),
            (" c", 1.0),
            (" d", 0.5),
            (" e", 3.0),
        ]);
        // 0.3 × 3 = 0.9: b and c (a run), e.
        assert_eq!(highlight(&r.tokens, &activating(&r)), "a<< b c>> d<< e>>");
        let none = record(&[("x", 0.0), ("y", -1.0)]);
        assert_eq!(highlight(&none.tokens, &activating(&none)), "xy");
    }

    #[test]
    fn the_delphi_prompt_lists_highlighted_tokens_with_levels() {
        let records = [
            record(&[("The", 0.0), (" cat", 4.0), (" sat", 0.0)]),
            record(&[("A", 0.0), (" dog", 2.0)]),
        ];
        let msgs = delphi_explain(&records, true);
        assert_eq!(msgs[0].role, "system");
        assert!(
            msgs[0]
                .content
                .ends_with("[EXPLANATION]: <your explanation>")
        );
        let user = &msgs[1].content;
        assert!(user.contains("Example 1: The<< cat>> sat\n"), "{user}");
        // Levels against the maximum over all examples (4): ⌈10·4/4⌉ = 10, ⌈10·2/4⌉ = 5.
        assert!(user.contains("Activations: (\" cat\" : 10)\n"), "{user}");
        assert!(
            user.contains("Example 2: A<< dog>>\nActivations: (\" dog\" : 5)"),
            "{user}"
        );
        assert_eq!(
            parse_delphi_explanation("Thinking…\n[EXPLANATION]: animals\nthanks"),
            Some("animals".into())
        );
        assert_eq!(parse_delphi_explanation("no format"), None);
        assert_eq!(parse_delphi_explanation("[EXPLANATION]:   "), None);
    }

    #[test]
    fn the_openai_prompt_levels_tokens_and_repeats_sparse_records_without_zeros() {
        let records = [record(&[
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("d", 0.0),
            ("e", 0.0),
            ("f", 1.0),
        ])];
        let msgs = openai_explain(&records);
        let user = &msgs[1].content;
        assert!(
            user.contains("Neuron 3\nActivations:\n<start>\na\t0\n"),
            "{user}"
        );
        assert!(user.contains("f\t10\n<end>\n"), "{user}");
        // 1 of 6 entries is non-zero (< 20 %): repeated with only f.
        assert!(
            user.contains("with all zeros filtered out:\nActivations:\n<start>\nf\t10\n<end>\n"),
            "{user}"
        );
        assert!(user.ends_with(
            "Explanation of neuron 3 behavior: the main thing this neuron does is find"
        ));
        assert_eq!(
            parse_openai_explanation(" the word \"cat\".\nMore"),
            Some("the word \"cat\"".into())
        );
    }

    #[test]
    fn the_simulation_prompt_lists_the_tokens_and_its_answer_parses_with_offsets() {
        let tokens = vec!["a".to_string(), "\n".to_string(), " b\"".to_string()];
        let msgs = simulation("the letter b", &tokens);
        // System, a question and its answer per few-shot neuron, the question.
        assert_eq!(msgs.len(), 1 + 2 * 2 + 1);
        assert_eq!(msgs[2].role, "assistant");
        assert_eq!(msgs[2].content, "[0, 0, 0, 2, 10, 0]");
        let user = &msgs.last().unwrap().content;
        assert_eq!(
            user,
            "Neuron 3\nExplanation of neuron 3 behavior: the main thing this neuron does is \
             find the letter b\nTokens: [\"a\",\"\\n\",\" b\\\"\"]\n\nAnswer with a list of 3 \
             activations (0 to 10), one per token."
        );
        let answer = "Sure: [0, 1,10]";
        let parsed = parse_simulation(answer, 3).unwrap();
        assert_eq!(
            parsed.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![0, 1, 10]
        );
        // Offsets point at the levels, for their logprobs.
        for (at, level) in &parsed {
            assert!(answer[*at..].starts_with(&level.to_string()), "{at}");
        }
        // Another length, a level above 10, a sign or a word: not parsed.
        assert_eq!(parse_simulation("[0, 3]", 3), None);
        assert_eq!(parse_simulation("[0, 11, 2]", 3), None);
        assert_eq!(parse_simulation("[0, +1, 2]", 3), None);
        assert_eq!(parse_simulation("[0, one, 2]", 3), None);
    }

    #[test]
    fn scorer_answers_parse_only_as_lists_of_the_right_length() {
        assert_eq!(
            parse_binary_list("Sure: [1, 0, 1]", 3),
            Some(vec![true, false, true])
        );
        // The last well-formed list wins; lists of another length or with other values do not.
        assert_eq!(
            parse_binary_list("[1, 1] then [0,0,1] and [2, 0, 1]", 3),
            Some(vec![false, false, true])
        );
        assert_eq!(parse_binary_list("1, 0, 1", 3), None);
        assert_eq!(parse_binary_list(" 1. It is", 1), Some(vec![true]));
        assert_eq!(parse_binary_list("0", 1), Some(vec![false]));
        assert_eq!(parse_binary_list("10 times", 1), None);
        assert_eq!(parse_binary_list("Yes", 1), None);
        assert_eq!(parse_binary_list("[1, 0]", 3), None);
        let msgs = detection("cats", &["a".into(), "b".into()]);
        let question = &msgs.last().unwrap().content;
        assert!(question.contains("Explanation: cats\n\nExample 1: a\nExample 2: b\n"));
        assert!(question.ends_with("list of 2 values (0 or 1)."));
        // Two demonstrations of as many examples, answered, before the question.
        assert_eq!(msgs.len(), 6);
        assert!(msgs[1].content.contains("Example 2: It rained all day.\n"));
        assert_eq!(
            (msgs[2].content.as_str(), msgs[4].content.as_str()),
            ("[1, 0]", "[0, 1]")
        );
        let fuzz = fuzzing("cats", &["<<a>>".into()]);
        assert!(fuzz[0].content.contains("marked"));
        assert!(fuzz[1].content.contains("Example 1: The<< cat>> sat"));
        assert_eq!(fuzz[2].content, "[1]");
    }
}
