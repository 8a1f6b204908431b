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

criterion_group!(benches, bench);
criterion_main!(benches);
