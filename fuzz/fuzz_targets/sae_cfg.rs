#![no_main]
//! An SAELens folder whose `cfg.json` is the fuzzer's bytes.
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_guard, dir) = common::fixture_with("sae/topk", "cfg.json", data);
    let _ = dendrite::sae::open(&dir);
});
