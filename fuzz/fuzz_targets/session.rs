#![no_main]
//! A session file of the fuzzer's bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dendrite::ui::session::parse(data);
});
