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
        let s = smollm2(t, t);
        let (q, k, v) = inputs(s);
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
        let s = smollm2(1, keys);
        let (q, k, v) = inputs(s);
        group.bench_with_input(BenchmarkId::new("step", keys), &keys, |b, _| {
            b.iter(|| attention::attend(&q, &k, &v, s, rule))
        });
    }
}

/// SmolLM2-135M's heads: `t` queries over `keys` keys, one sequence.
fn smollm2(t: usize, keys: usize) -> Shape {
    Shape {
        b: 1,
        t,
        keys,
        heads: 9,
        kv_heads: 3,
        d_head: 64,
    }
}

/// Deterministic queries, keys and values of no particular meaning for shape `s`.
fn inputs(s: Shape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * seed % 101) as f32 - 50.0) / 100.0)
            .collect()
    };
    let kv_len = s.b * s.keys * s.kv_heads * s.d_head;
    (
        values(s.b * s.t * s.heads * s.d_head, 37),
        values(kv_len, 53),
        values(kv_len, 71),
    )
}

criterion_group!(benches, bench);
criterion_main!(benches);
