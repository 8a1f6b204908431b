//! Pure analysis functions over activations and attention patterns (no egui, no I/O).
//! Formulas follow `definitions.md`; each has its worked example as a test.

pub mod heads;
pub mod histogram;
pub mod lens;
pub mod sparsity;

/// `f(0..n)` on scoped threads (one chunk of indices per core), in order: for row-wise work
/// on data the caller already holds, where candle's own threading does not reach.
pub(crate) fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(f)
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
