//! CETT's threshold search (definitions.md §4) on SmolLM2-135M at 64 tokens, the part of a
//! sparsity method change to `cett:0.2` that issue 12 targets: every MLP layer's search from a
//! pass's captures, on one thread and with the layers over rayon's pool (as the worker does).
//! Needs `scripts/fetch_models.sh`; see BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use dendrite::analysis::sparsity::{Method, measure_mlp_layer, mlp_hooks};
use dendrite::model::{self, HookSpec, NoObserver};
use rayon::prelude::*;

// The allocator the app runs with (src/main.rs): the search's buffers cost what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let path = std::env::var("DENDRITE_BENCH_MODEL")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = model::open(&path).expect("run scripts/fetch_models.sh first");
    let (_, ids) = dendrite::bench::prompt_of_length(&model, 64).expect("a 64-token prompt");
    let t = &model.transformer;
    let layers: Vec<usize> = (0..t.n_layers()).collect();
    let spec = HookSpec::capture(layers.iter().flat_map(|&l| mlp_hooks(t, l)));
    let out = t.forward(&[ids], &spec, &mut NoObserver).expect("forward");
    let captures = &out.captures;
    let method = Method::Cett { target: 0.2 };
    let layer = |l: usize| measure_mlp_layer(t, l, captures, &[captures], method, 0).expect("cett");
    let mut group = c.benchmark_group("cett_64_tokens");
    group.sample_size(20);
    group.bench_function("all_layers_one_thread", |b| {
        b.iter(|| layers.iter().map(|&l| layer(l)).collect::<Vec<_>>())
    });
    group.bench_function("all_layers_parallel", |b| {
        b.iter(|| layers.par_iter().map(|&l| layer(l)).collect::<Vec<_>>())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
