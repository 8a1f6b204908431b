//! Opening a unit's panel: `Store::unit_report` (statistics, top and quantile windows with
//! their token texts, histogram, explanations), the read the app's store thread does when a
//! unit is selected. On the sample store by default; `DENDRITE_BENCH_STORE=path` for another
//! (e.g. a `dendrite scan` of SmolLM2, see BENCHMARKS.md), with `DENDRITE_BENCH_SOURCE`.

use criterion::{Criterion, criterion_group, criterion_main};
use dendrite::describe::Store;

fn bench(c: &mut Criterion) {
    let path = std::env::var("DENDRITE_BENCH_STORE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dendrite::sample::store_path().expect("the sample store"));
    let store = Store::open_existing(&path).expect("a store");
    let sources = store.sources().expect("sources");
    let source = std::env::var("DENDRITE_BENCH_SOURCE")
        .ok()
        .and_then(|name| sources.iter().find(|s| s.name == name))
        .or(sources.last())
        .expect("a source")
        .clone();
    let mut unit = 0;
    c.bench_function("unit_report", |b| {
        b.iter(|| {
            // A different unit each time, as a user clicking through a map.
            unit = (unit + 97) % source.width;
            store.unit_report(&source.name, unit, None).expect("report")
        })
    });
    // Opening the store too (the app opens it once per model; shown for the cold path).
    c.bench_function("open_and_report", |b| {
        b.iter(|| {
            let s = Store::open_existing(&path).expect("a store");
            s.unit_report(&source.name, 7, None).expect("report")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
