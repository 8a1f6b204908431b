//! Pure analysis functions over activations and attention patterns (no egui, no I/O).
//! Formulas follow `definitions.md`; each has its worked example as a test.

pub mod core_neurons;
pub mod facets;
pub mod heads;
pub mod histogram;
pub mod lens;
pub mod patching;
pub mod sparsify;
pub mod sparsity;
pub mod sweep;

/// The `k` largest values as `(index, value)`, largest first, ties by lower index. One pass
/// with a sorted buffer of the best `k` so far: for `k ≪ n` almost every value is rejected by
/// one comparison with the current k-th best (a vocabulary for the logit lens, an SAE's
/// latents for TopK).
pub fn top_k_by_value(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    let consider = |best: &mut Vec<(usize, f32)>, i: usize, v: f32| {
        if best.len() < k || v > best[best.len() - 1].1 {
            // After every kept value ≥ v, so equal values keep the lower index first.
            let at = best.partition_point(|&(_, b)| b >= v);
            best.insert(at, (i, v));
            best.truncate(k);
        }
    };
    // Once k are kept, most blocks hold nothing above the k-th: one vectorised comparison
    // skips them (over a vocabulary this is most of the time of a top-k).
    const BLOCK: usize = 16;
    let mut blocks = values.chunks_exact(BLOCK);
    for (b, block) in (&mut blocks).enumerate() {
        if best.len() == k {
            let kth = best[k - 1].1;
            if !block.iter().fold(false, |any, &v| any | (v > kth)) {
                continue;
            }
        }
        for (l, &v) in block.iter().enumerate() {
            consider(&mut best, b * BLOCK + l, v);
        }
    }
    let start = values.len() - blocks.remainder().len();
    for (l, &v) in blocks.remainder().iter().enumerate() {
        consider(&mut best, start + l, v);
    }
    best
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_keeps_the_largest_with_lower_indices_on_ties() {
        let v = [1.0, 5.0, 3.0, 5.0, -2.0, 4.0];
        assert_eq!(
            super::top_k_by_value(&v, 3),
            vec![(1, 5.0), (3, 5.0), (5, 4.0)]
        );
        assert_eq!(super::top_k_by_value(&v, 0), vec![]);
        assert_eq!(super::top_k_by_value(&v, 9).len(), 6);
    }
}
