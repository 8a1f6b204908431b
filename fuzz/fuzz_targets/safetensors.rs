#![no_main]
//! A model folder whose `model.safetensors` is the fuzzer's bytes.
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_guard, dir) = common::fixture_with("tiny/gpt2", "model.safetensors", data);
    let _ = dendrite::model::open(&dir);
});
