//! The attention core alone (`attention::attend`, and `scores` + `softmax_causal` +
//! `weighted_values` as a capturing pass runs them) at SmolLM2-135M's shape (9 query heads,
//! 3 KV heads, `d_head` 64), per layer: BENCHMARKS.md multiplies by its 30 layers.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dendrite::model::attention::{self, ScoreRule, Shape};

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let mut group = c.benchmark_group("attention");
    group.sample_size(20);
    let rule = ScoreRule {
        scale: 0.125,
        softcap: None,
        window: None,
    };
    for t in [64, 256] {
        let s = Shape {
            b: 1,
            t,
            keys: t,
            heads: 9,
            kv_heads: 3,
            d_head: 64,
        };
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * seed % 101) as f32 - 50.0) / 100.0)
                .collect()
        };
        let q = values(t * s.heads * s.d_head, 37);
        let k = values(t * s.kv_heads * s.d_head, 53);
        let v = values(t * s.kv_heads * s.d_head, 71);
        group.bench_with_input(BenchmarkId::new("fused", t), &t, |b, _| {
            b.iter(|| attention::attend(&q, &k, &v, s, rule))
        });
        group.bench_with_input(BenchmarkId::new("pattern", t), &t, |b, _| {
            b.iter(|| {
                let mut pattern = attention::scores(&q, &k, s, rule);
                attention::softmax_causal(&mut pattern, s);
                attention::weighted_values(&pattern, &v, s, true)
            })
        });
    }
    // One new query over cached keys: a generated token, or a rerun of the last position.
    for keys in [64, 256] {
        let s = Shape {
            b: 1,
            t: 1,
            keys,
            heads: 9,
            kv_heads: 3,
            d_head: 64,
        };
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * seed % 101) as f32 - 50.0) / 100.0)
                .collect()
        };
        let q = values(s.heads * s.d_head, 37);
        let k = values(keys * s.kv_heads * s.d_head, 53);
        let v = values(keys * s.kv_heads * s.d_head, 71);
        group.bench_with_input(BenchmarkId::new("step", keys), &keys, |b, _| {
            b.iter(|| attention::attend(&q, &k, &v, s, rule))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
