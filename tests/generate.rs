//! Generation over the KV cache: greedy continuations equal HF transformers' `generate` token
//! for token on the tiny model of every architecture and on SmolLM2, with and without a neuron
//! clamp (references: `scripts/make_fixtures.py --only generate`), and a step over cached
//! positions equals a full recompute, interventions included.

mod common;

use common::{clamp_spec, fixtures, json_ids, real_model};
use dendrite::model::generate::{GenerateOptions, Stops, generate};
use dendrite::model::{self, HookSpec, Intervention, KvCache, NoObserver, PatternMode, ValueOp};

const ARCHS: [&str; 5] = ["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"];

fn eos_ids(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Array(_) => json_ids(v),
        serde_json::Value::Number(n) => vec![n.as_u64().unwrap() as u32],
        _ => Vec::new(),
    }
}

#[test]
fn greedy_generation_matches_hf_generate() {
    let text = std::fs::read_to_string(fixtures().join("generate.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let max_new = reference["max_new_tokens"].as_u64().unwrap() as usize;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let path = match name.strip_prefix("real/") {
            Some(file) => real_model(file),
            None => fixtures().join(name),
        };
        let m = model::open(&path).unwrap();
        let eos = eos_ids(&case["eos"]);
        assert_eq!(
            m.info.eos_token_ids, eos,
            "{name}: EOS read from the model files"
        );
        let opts = GenerateOptions {
            max_new_tokens: max_new,
            stops: Stops {
                eos: m.info.eos_token_ids.clone(),
                strings: Vec::new(),
            },
            ..GenerateOptions::default()
        };
        let prompt = json_ids(&case["prompt_ids"]);
        let decode = |ids: &[u32]| m.tokenizer.decode(ids);
        for (spec, key) in [
            (HookSpec::default(), "generated_ids"),
            (clamp_spec(&case["clamp"]), "clamp_generated_ids"),
        ] {
            let out = generate(&m.transformer, &prompt, &spec, &opts, &decode, &mut |_| {
                true
            })
            .unwrap();
            assert_eq!(out.generated_ids(), json_ids(&case[key]), "{name}: {key}");
        }
        if let Some(text) = case["text"].as_str() {
            let ids = json_ids(&case["generated_ids"]);
            assert_eq!(m.tokenizer.decode(&ids), text, "{name}: decoded text");
        }
    }
}

/// Logits of a prompt run in steps over the cache (4 tokens, then 1, 1, 3, 1) equal a full
/// pass's at the same positions, with interventions at chosen positions, on every position, on
/// attention patterns and on keys.
#[test]
fn steps_over_the_cache_equal_a_full_recompute() {
    let ids: Vec<u32> = vec![5, 17, 250, 3, 99, 42, 7, 17, 250, 3];
    for arch in ARCHS {
        let m = model::open(fixtures().join("tiny").join(arch)).unwrap();
        let d_model = m.transformer.dims.d_model;
        let specs = [
            HookSpec::default(),
            HookSpec::default()
                .with_intervention(
                    Intervention::neurons("blocks.0.mlp.hook_post", vec![3], ValueOp::Set(5.0))
                        .at_positions(vec![2, 6, 8]),
                )
                .with_intervention(Intervention::pattern(
                    1,
                    1,
                    PatternMode::PreviousToken { strength: 0.7 },
                )),
            HookSpec::default()
                .with_intervention(Intervention::steer(
                    "blocks.1.hook_resid_pre",
                    (0..d_model).map(|i| (i as f32 * 0.37).sin()).collect(),
                    2.0,
                ))
                .with_intervention(
                    Intervention::neurons("blocks.0.attn.hook_k", vec![1, 4], ValueOp::Scale(3.0))
                        .at_positions(vec![0, 5]),
                )
                .with_intervention(Intervention::pattern(
                    0,
                    0,
                    PatternMode::Induction { strength: 0.9 },
                )),
        ];
        for (s, spec) in specs.iter().enumerate() {
            let full = m
                .transformer
                .forward(std::slice::from_ref(&ids), spec, &mut NoObserver)
                .unwrap();
            let mut cache = KvCache::new();
            let mut at = 0;
            for len in [4, 1, 1, 3, 1] {
                let step = m
                    .transformer
                    .forward_step(&ids[at..at + len], &mut cache, spec)
                    .unwrap();
                at += len;
                let expected = full.logits.get(0).unwrap().get(at - 1).unwrap();
                let expected: Vec<f32> = expected.to_vec1().unwrap();
                let diff = step
                    .logits_last
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-4,
                    "{arch} spec {s}: step ending at {at} differs by {diff}"
                );
            }
            assert_eq!(cache.tokens(), &ids[..]);
        }
    }
}

#[test]
fn a_step_past_the_context_or_with_a_mean_ablation_is_refused() {
    let m = model::open(fixtures().join("tiny").join("llama")).unwrap();
    let n_ctx = m.transformer.dims.n_ctx;
    let mut cache = KvCache::new();
    let long: Vec<u32> = vec![1; n_ctx];
    m.transformer
        .forward_step(&long, &mut cache, &HookSpec::default())
        .unwrap();
    let err = m
        .transformer
        .forward_step(&[2], &mut cache, &HookSpec::default())
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert_eq!(
        cache.len(),
        n_ctx,
        "a refused step leaves the cache as it was"
    );

    let mean = HookSpec::default().with_intervention(Intervention::ablate_head(
        0,
        1,
        dendrite::model::AblationMode::Mean,
    ));
    let mut cache = KvCache::new();
    let err = m
        .transformer
        .forward_step(&[1, 2, 3], &mut cache, &mean)
        .unwrap_err();
    assert!(err.to_string().contains("mean ablation"), "{err}");
    assert!(cache.is_empty(), "a failed step leaves the cache as it was");

    let far = HookSpec::default().with_intervention(
        Intervention::neurons("blocks.0.mlp.hook_post", vec![0], ValueOp::Set(1.0))
            .at_positions(vec![40]),
    );
    let opts = GenerateOptions {
        max_new_tokens: 4,
        ..GenerateOptions::default()
    };
    let err = generate(
        &m.transformer,
        &[1, 2, 3],
        &far,
        &opts,
        &|_| String::new(),
        &mut |_| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("position 40"), "{err}");
}

/// SmolLM2's own chat template rendered as transformers' `apply_chat_template` renders it, to
/// the character and the token; Gemma 3 270M (a base model) ships none and chat is refused.
#[test]
fn chat_prompts_match_hf_apply_chat_template() {
    use dendrite::model::chat::Message;
    let text = std::fs::read_to_string(fixtures().join("generate.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in reference["chats"].as_array().unwrap() {
        let file = case["model"]
            .as_str()
            .unwrap()
            .strip_prefix("real/")
            .unwrap();
        let m = model::open(real_model(file)).unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let template = m.chat_template().expect("SmolLM2 ships a chat template");
        assert_eq!(
            template.render(&messages, true).unwrap(),
            case["text"].as_str().unwrap()
        );
        assert_eq!(m.encode_chat(&messages).unwrap(), json_ids(&case["ids"]));
    }
    let gemma = model::open(real_model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let err = gemma
        .encode_chat(&[Message::new("user", "hi")])
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}
