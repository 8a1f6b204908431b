//! The packed matmul kernel alone (`PackedMatrix::matmul_t`) on SmolLM2-135M's block shapes at
//! 512 rows (a scan batch of 8 × 64 tokens): GFLOP/s against the machine's peak (BENCHMARKS.md).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dendrite::model::packed::PackedMatrix;

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let m = 512;
    let mut group = c.benchmark_group("matmul_t");
    group.sample_size(10);
    // (name, n outputs, k inputs): q/o projections, k/v, gate/up, down.
    for (name, n, k) in [
        ("q_576x576", 576, 576),
        ("kv_192x576", 192, 576),
        ("up_1536x576", 1536, 576),
        ("down_576x1536", 576, 1536),
    ] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 300.0)
            .collect();
        let packed = PackedMatrix::from_rows(&w, n, k);
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new(name, m), &x, |b, x| {
            b.iter(|| packed.matmul_t(x, m, None))
        });
    }
}

/// One row through 15 layers' matrices in turn and the unembedding (SmolLM2-135M's blocks
/// 15–29 and head in a last-position rerun: 325 MB, more than the caches hold), against one
/// pass summing the same bytes on every thread: how near the weights' read time the one-row
/// products come.
fn one_row(c: &mut Criterion) {
    use rayon::prelude::*;
    dendrite::tune_threads();
    let matrix = |n: usize, k: usize, seed: usize| {
        let w: Vec<f32> = (0..n * k)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        PackedMatrix::from_rows(&w, n, k)
    };
    // Each layer's fused QKV, output, fused gate/up and down projections; then the (tied)
    // unembedding, 113 MB more.
    let mut layers: Vec<Vec<PackedMatrix>> = (0..15)
        .map(|l| {
            [(960, 576), (576, 576), (3072, 576), (576, 1536)]
                .iter()
                .map(|&(n, k)| matrix(n, k, l))
                .collect()
        })
        .collect();
    layers.push(vec![matrix(49152, 576, 15)]);
    let bytes: usize = layers
        .iter()
        .flatten()
        .map(|w| w.rows() * w.cols() * 4)
        .sum();
    let mut group = c.benchmark_group("one_row");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("products_15_layers_and_head", |b| {
        b.iter(|| {
            let mut sum = 0f32;
            for matrices in &layers {
                for w in matrices {
                    let x = vec![0.01f32; w.cols()];
                    sum += w.matmul_t(&x, 1, None)[0];
                }
            }
            sum
        })
    });
    group.bench_function("read_15_layers_and_head", |b| {
        b.iter(|| {
            layers
                .iter()
                .flatten()
                .map(|w| {
                    w.values()
                        .par_chunks(1 << 16)
                        .map(|part| {
                            // Lane-wise, so the sum streams rather than waits on each addition.
                            let mut lanes = [0f32; 16];
                            for chunk in part.chunks_exact(16) {
                                lanes.iter_mut().zip(chunk).for_each(|(s, x)| *s += x);
                            }
                            lanes.iter().sum::<f32>()
                        })
                        .sum::<f32>()
                })
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, one_row);
criterion_main!(benches);
