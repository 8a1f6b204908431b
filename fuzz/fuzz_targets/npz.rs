#![no_main]
//! A Gemma Scope `params.npz` of the fuzzer's bytes.
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_guard, dir) = common::fixture_with("none", "params.npz", data);
    let _ = dendrite::sae::open_with_hook(dir.join("params.npz"), Some("blocks.0.hook_resid_post"));
});
