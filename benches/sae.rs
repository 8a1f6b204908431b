//! SAE encode throughput: a 576 → 16384 TopK SAE (k = 64, random f32 weights) on real SmolLM2
//! activations at `blocks.15.hook_resid_post`, batches of 1024 tokens — the same inputs and
//! shapes as `scripts/bench_sae_lens.py` (which writes `.cache/smollm2_l15_resid.safetensors`;
//! without that file this bench computes the activations with Dendrite's own engine).
//! Run: `cargo bench --bench sae`. See BENCHMARKS.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dendrite::model::{self, HookSpec, NoObserver};
use dendrite::sae::{Activation, Normalization, Sae, SaeConfig, SaeFormat, SaeParams};

// The allocator the app runs with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const D_IN: usize = 576;
const D_SAE: usize = 16384;
const K: usize = 64;
const BATCH: usize = 1024;

/// Activations `[T, 576]`: the SAELens script's file, or our engine on the same kind of text.
fn activations() -> Vec<f32> {
    let file = std::path::Path::new(".cache/smollm2_l15_resid.safetensors");
    if let Ok(t) = candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        && let Some(x) = t.get("x")
    {
        return x
            .flatten_all()
            .and_then(|x| x.to_vec1())
            .expect("f32 activations");
    }
    let m = model::open(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("run scripts/fetch_models.sh first");
    let text = "The history of the printing press is a story of slow change followed by sudden acceleration. ".repeat(200);
    let ids = m.encode(&text, false).expect("tokenize");
    let spec = HookSpec::capture(["blocks.15.hook_resid_post"]);
    ids.chunks_exact(256)
        .take(16)
        .flat_map(|seq| {
            let out = m
                .transformer
                .forward(&[seq.to_vec()], &spec, &mut NoObserver)
                .expect("forward");
            out.captures["blocks.15.hook_resid_post"]
                .flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .expect("captured")
        })
        .collect()
}

/// A random TopK SAE with SAELens' default-style init scale.
fn random_sae() -> Sae {
    let mut rng = dendrite::rng::Rng::new(0);
    let mut normal = |n: usize, scale: f64| -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * scale) as f32).collect()
    };
    let cfg = SaeConfig {
        architecture: "topk".into(),
        activation: Activation::TopK { k: K },
        transcoder: false,
        hook_name: "blocks.15.hook_resid_post".into(),
        hook_name_out: None,
        d_in: D_IN,
        d_sae: D_SAE,
        d_out: D_IN,
        apply_b_dec_to_input: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        format: SaeFormat::SaeLens,
        path: "bench".into(),
        model_name: None,
        notes: Vec::new(),
    };
    let scale = 1.0 / (D_IN as f64).sqrt();
    let params = SaeParams {
        w_enc: normal(D_IN * D_SAE, scale),
        b_enc: normal(D_SAE, 0.01),
        w_dec: normal(D_SAE * D_IN, scale),
        b_dec: normal(D_IN, 0.01),
        ..Default::default()
    };
    Sae::new(cfg, params).expect("a valid SAE")
}

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let x = activations();
    let sae = random_sae();
    let batch = &x[..BATCH * D_IN];
    let mut group = c.benchmark_group("sae");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("encode_topk_576x16384_k64_batch1024", |b| {
        b.iter(|| sae.encode(batch, BATCH).expect("encode"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
