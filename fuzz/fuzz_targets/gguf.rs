#![no_main]
//! A GGUF file of the fuzzer's bytes (seed the corpus with real GGUF headers).
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_guard, dir) = common::fixture_with("none", "model.gguf", data);
    let path = dir.join("model.gguf");
    let _ = dendrite::model::open_tokenizer(&path);
    let _ = dendrite::model::open(&path);
});
