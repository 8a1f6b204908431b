//! SmolLM2-135M forward passes at 16/64/256 tokens: plain, capturing every `mlp.hook_post` and
//! attention pattern, and an incremental rerun after changing a clamp at layer 15; and every
//! head score on the 4 × 40-token induction probe.
//! Needs `scripts/fetch_models.sh`. Compare with `scripts/bench_hf.py` (see BENCHMARKS.md).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dendrite::model::{self, HookSpec, Intervention, NoObserver, ValueOp};

// The allocator the app runs with (src/main.rs): a pass's buffers cost what they cost there
// (with glibc's, the 256-token forward took ≈ 418 ms against `dendrite bench`'s ≈ 345 ms).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tokens(model: &model::Model, n: usize) -> Vec<Vec<u32>> {
    let text = "The quick brown fox jumps over the lazy dog while the curious cat watches from the warm windowsill. ";
    let mut ids = model
        .encode(&text.repeat(n / 8 + 2), false)
        .expect("tokenize");
    ids.truncate(n);
    vec![ids]
}

fn clamp(value: f32) -> Intervention {
    Intervention::neurons("blocks.15.mlp.hook_post", vec![123], ValueOp::Set(value))
}

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let path = std::env::var("DENDRITE_BENCH_MODEL")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = model::open(&path).expect("run scripts/fetch_models.sh first");
    let t = &model.transformer;
    let capture = HookSpec::capture(["blocks.*.mlp.hook_post", "blocks.*.attn.hook_pattern"]);
    let mut group = c.benchmark_group("smollm2");
    group.sample_size(10);
    for n in [16usize, 64, 256] {
        let toks = tokens(&model, n);
        group.bench_with_input(BenchmarkId::new("forward", n), &toks, |b, toks| {
            b.iter(|| {
                t.forward(toks, &HookSpec::default(), &mut NoObserver)
                    .expect("forward")
            })
        });
        group.bench_with_input(BenchmarkId::new("forward_capture", n), &toks, |b, toks| {
            b.iter(|| t.forward(toks, &capture, &mut NoObserver).expect("forward"))
        });
        // Alternate two clamp values so every iteration is a real change at layer 15.
        let mut cache = None;
        let specs = [
            capture.clone().with_intervention(clamp(10.0)),
            capture.clone().with_intervention(clamp(-10.0)),
        ];
        t.forward_cached(&toks, &specs[0], &mut cache, &mut NoObserver)
            .expect("forward");
        let mut flip = 0usize;
        group.bench_with_input(
            BenchmarkId::new("clamp_l15_incremental", n),
            &toks,
            |b, toks| {
                b.iter(|| {
                    flip ^= 1;
                    t.forward_cached(toks, &specs[flip], &mut cache, &mut NoObserver)
                        .expect("forward")
                })
            },
        );
    }
    // Every head score on the probe the issue names: 4 × (2 × 20) random tokens, one batched
    // pass (scripts/bench_hf.py times the same with HF's eager attentions).
    let probe = dendrite::analysis::heads::repeated_random_tokens(
        20,
        4,
        0,
        1,
        model.info.dims.d_vocab as u32,
    );
    group.bench_function("head_scores_4x40", |b| {
        b.iter(|| dendrite::analysis::heads::score_heads(t, &probe, 20, false).expect("scores"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
