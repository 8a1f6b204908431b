//! SmolLM2-135M (Q4_1) and Gemma 3 270M (Q4_K_M) GGUF files from PyPI against HF transformers
//! loading the same files (dequantized to f32). References: `scripts/make_fixtures.py --only real`.

mod common;

use common::{clamp_spec, fixtures, json_ids, load_reference, real_model, real_reference, top_k};
use dendrite::model::{self, HookSpec, NoObserver};

struct Case {
    name: &'static str,
    file: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "smollm2",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    Case {
        name: "gemma3",
        file: "gemma-3-270m-q4_k_m.gguf",
    },
];

#[test]
fn tokenizers_match_hf() {
    for case in CASES {
        let tokenizer = model::open_tokenizer(real_model(case.file)).unwrap();
        let reference = real_reference(case.name);
        for entry in reference["texts"].as_array().unwrap() {
            let text = entry["text"].as_str().unwrap();
            let ours = tokenizer.encode(text, false).unwrap();
            assert_eq!(
                ours,
                json_ids(&entry["token_ids"]),
                "{}: {text:?}",
                case.name
            );
        }
        assert_eq!(
            tokenizer.encode("Hi", true).unwrap(),
            json_ids(&reference["with_special"]),
            "{}",
            case.name
        );
    }
}

/// Prompts get the BOS exactly when HF's tokenizer adds it (`tokenizer(text)`), with and
/// without special tokens, on both real models (`scripts/make_scan_fixtures.py`).
#[test]
fn prompts_get_the_bos_exactly_as_hf_tokenizers_add_it() {
    use dendrite::model::BosMode;
    let reference = real_reference("tokens_with_special");
    for case in CASES {
        let tokenizer = model::open_tokenizer(real_model(case.file)).unwrap();
        let r = &reference[case.name];
        let bos = r["bos_token_id"].as_u64().map(|b| b as u32);
        assert_eq!(tokenizer.bos_id(), bos, "{}", case.name);
        for entry in r["texts"].as_array().unwrap() {
            let text = entry["text"].as_str().unwrap();
            let with = json_ids(&entry["with_special"]);
            let without = json_ids(&entry["without_special"]);
            let label = format!("{}: {text:?}", case.name);
            assert_eq!(
                tokenizer.encode_prompt(text, BosMode::Auto).unwrap(),
                with,
                "{label}"
            );
            assert_eq!(tokenizer.encode(text, true).unwrap(), with, "{label}");
            assert_eq!(
                tokenizer.encode_prompt(text, BosMode::No).unwrap(),
                without,
                "{label}"
            );
            let mut forced = vec![bos.unwrap()];
            forced.extend(&without);
            assert_eq!(
                tokenizer.encode_prompt(text, BosMode::Yes).unwrap(),
                forced,
                "{label}"
            );
        }
    }
    let gemma = model::open_tokenizer(real_model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    assert!(gemma.adds_bos());
    let smol = model::open_tokenizer(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert!(!smol.adds_bos());
}

fn check_logits(name: &str, ours: &[f32], expected: &[f32], expected_top10: &[u32]) {
    let max_logit = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = ours
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-3 * max_logit,
        "{name}: logits differ by {diff} (max |logit| {max_logit})"
    );
    let top: Vec<u32> = top_k(ours, 10).into_iter().map(|i| i as u32).collect();
    assert_eq!(top, expected_top10, "{name}: top-10 differ");
}

#[test]
fn logits_match_hf_with_and_without_clamp() {
    for case in CASES {
        let model = model::open(real_model(case.file)).unwrap();
        let reference = real_reference(case.name);
        let tensors = load_reference(
            &fixtures()
                .join("real")
                .join(format!("{}.safetensors", case.name)),
        );
        let prompt = json_ids(&reference["prompt_ids"]);
        assert_eq!(
            model
                .encode(reference["prompt"].as_str().unwrap(), false)
                .unwrap(),
            prompt
        );
        let tokens = vec![prompt];

        let out = model
            .transformer
            .forward(&tokens, &HookSpec::default(), &mut NoObserver)
            .unwrap();
        let expected = tensors["logits_last"].to_vec1::<f32>().unwrap();
        check_logits(
            case.name,
            &out.logits_last(0).unwrap(),
            &expected,
            &json_ids(&reference["top10"]),
        );

        let clamp = &reference["clamp"];
        let spec = clamp_spec(clamp);
        let out = model
            .transformer
            .forward(&tokens, &spec, &mut NoObserver)
            .unwrap();
        let expected = tensors["clamp.logits_last"].to_vec1::<f32>().unwrap();
        check_logits(
            &format!("{} clamped", case.name),
            &out.logits_last(0).unwrap(),
            &expected,
            &json_ids(&reference["clamp_top10"]),
        );
    }
}
