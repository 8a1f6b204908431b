//! What a scan keeps per unit (`definitions.md` §11), in memory bounded by the number of units
//! whatever the corpus size: the top-K windows by the unit's maximum, candidates for the
//! quantile groups, firing density, mean, maximum and a histogram. Every part merges, so shard
//! scans combine into what one scan would have kept.

use half::f16;

/// Quantile groups: equal-width intervals of (0, m], m the unit's maximum.
pub const N_QUANTILES: usize = 10;
/// Windows shown per quantile group unless a scan asks for another number.
pub const DEFAULT_PER_QUANTILE: usize = 5;
/// Bins of the histogram shown (equal width on (0, m]).
pub const N_HIST_BINS: usize = 50;

/// Fine histogram buckets: positive f32 values by their exponent and top mantissa bits
/// (`BUCKET_SHIFT` drops the rest), kept for the `HIST_OCTAVES` octaves below the largest value
/// seen; smaller values are only counted. Counts per bucket are exact and add across shards;
/// the 50 shown bins take each bucket whole (by its midpoint), so a shown bin's edge is exact
/// to within one bucket: 1/64 of an octave, about 1.1 % of the value.
const BUCKET_SHIFT: u32 = 17;
const BUCKETS_PER_OCTAVE: i64 = 1 << (23 - BUCKET_SHIFT);
const HIST_OCTAVES: i64 = 6;
pub const HIST_BUCKETS: usize = (BUCKETS_PER_OCTAVE * HIST_OCTAVES) as usize;

fn bucket_of(a: f32) -> i64 {
    (a.to_bits() >> BUCKET_SHIFT) as i64
}

fn bucket_midpoint(b: i64) -> f64 {
    let lo = f32::from_bits((b as u32) << BUCKET_SHIFT) as f64;
    let hi = f32::from_bits(((b + 1) as u32) << BUCKET_SHIFT) as f64;
    (lo + hi) / 2.0
}

/// A deterministic per-(unit, window) sampling key: quantile groups keep the windows with the
/// smallest keys, a uniform draw without replacement that every shard makes alike.
pub fn sample_key(seed: u64, source_hash: u64, unit: u64, window: u64) -> u64 {
    let mut h = splitmix(seed ^ 0x5ca1_ab1e);
    h = splitmix(h ^ source_hash);
    h = splitmix(h ^ unit);
    splitmix(h ^ window)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of a source name (FNV-1a), for sampling keys.
pub fn source_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The quantile group of a window whose maximum is `s` when the unit's maximum is `m`:
/// `⌈10·s/m⌉ − 1`, i.e. (i·m/10, (i+1)·m/10]; none for `s ≤ 0`.
pub fn quantile_bin(s: f32, m: f32) -> Option<usize> {
    // NaN compares false, so it gets no group either.
    if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        || m.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return None;
    }
    let i = (N_QUANTILES as f64 * s as f64 / m as f64).ceil() as i64 - 1;
    Some(i.clamp(0, N_QUANTILES as i64 - 1) as usize)
}

/// One window of one unit: its activation at every position, its maximum over the scored
/// positions and where that is (first on ties).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub window: u64,
    pub max_act: f32,
    pub max_pos: u32,
    /// The sampling key (quantile candidates; 0 for top examples).
    pub key: u64,
    /// Activations at every position of the window, stored as f16 (display precision;
    /// `max_act` is exact).
    pub acts: Box<[f16]>,
}

impl Example {
    pub fn acts_f32(&self) -> Vec<f32> {
        self.acts.iter().map(|a| a.to_f32()).collect()
    }
}

/// Orders top examples: larger maximum first, then the lower window.
fn top_order(a: &Example, b: &Example) -> std::cmp::Ordering {
    b.max_act
        .total_cmp(&a.max_act)
        .then(a.window.cmp(&b.window))
}

/// How many examples a scan keeps per unit: the top `top_k` windows and `per_quantile`
/// windows in each quantile group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    pub top_k: usize,
    pub per_quantile: usize,
}

/// Everything kept about one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitStats {
    pub n_positive: u64,
    pub sum: f64,
    /// Over all scored tokens (`-inf` before any).
    pub max: f32,
    /// Fine histogram: the top bucket (`-1` before any positive value), counts of the
    /// `HIST_BUCKETS` buckets down from it (index 0 = top), and positives below them.
    pub hist_top: i64,
    pub hist: Vec<u32>,
    pub hist_below: u64,
    /// Sorted by [`top_order`], at most K.
    pub top: Vec<Example>,
    /// Quantile candidates per group under the current maximum, each at most
    /// [`Keep::per_quantile`], smallest keys kept.
    pub candidates: [Vec<Example>; N_QUANTILES],
    /// Examples changed since they were last written to a store.
    pub examples_dirty: bool,
}

impl Default for UnitStats {
    fn default() -> Self {
        UnitStats {
            n_positive: 0,
            sum: 0.0,
            max: f32::NEG_INFINITY,
            hist_top: -1,
            hist: vec![0; HIST_BUCKETS],
            hist_below: 0,
            top: Vec::new(),
            candidates: Default::default(),
            examples_dirty: false,
        }
    }
}

impl UnitStats {
    /// Counts one scored activation (density, mean, histogram; not the maximum).
    pub fn count(&mut self, a: f32) {
        self.count_window(&[a], &[0]);
    }

    /// Counts the activations of one window at its scored `positions` (density, mean,
    /// histogram) and returns the window's maximum and its first position.
    ///
    /// This runs for every unit and token of a scan, so it avoids the branches a plain loop
    /// takes: an activation's sign is a coin flip for most units (a mispredicted branch per
    /// token), so positives are compacted without branching, the histogram's top is raised
    /// once from the window's maximum, and values below the histogram's range add zero to its
    /// last bucket instead of branching. Running sums live in locals, the mean's in four lanes
    /// (through `self`, or in one lane, they went to memory and back every token).
    #[inline]
    pub fn count_window(&mut self, values: &[f32], positions: &[usize]) -> (f32, u32) {
        const CHUNK: usize = 64;
        let (mut max, mut at) = (f32::NEG_INFINITY, 0u32);
        for &p in positions {
            let a = values[p];
            if a > max {
                max = a;
                at = p as u32;
            }
        }
        if max > 0.0 && bucket_of(max) > self.hist_top {
            self.raise_hist_top(bucket_of(max));
        }
        // Every positive value's bucket is at most the maximum's, so at most `top`.
        let top = self.hist_top;
        let (mut sums, mut positive, mut below) = ([0f64; 4], 0u64, 0u64);
        let mut kept = [0f32; CHUNK];
        let last = HIST_BUCKETS - 1;
        for chunk in positions.chunks(CHUNK) {
            let mut n = 0;
            for (j, &p) in chunk.iter().enumerate() {
                let a = values[p];
                sums[j % 4] += a as f64;
                kept[n] = a;
                n += (a > 0.0) as usize;
            }
            positive += n as u64;
            for &a in &kept[..n] {
                let slot = (top - bucket_of(a)) as usize;
                let inside = slot <= last;
                below += !inside as u64;
                self.hist[slot.min(last)] += inside as u32;
            }
        }
        self.sum += (sums[0] + sums[1]) + (sums[2] + sums[3]);
        self.n_positive += positive;
        self.hist_below += below;
        (max, at)
    }

    fn raise_hist_top(&mut self, top: i64) {
        if self.hist_top < 0 {
            self.hist_top = top;
            return;
        }
        let shift = (top - self.hist_top) as usize;
        let n = HIST_BUCKETS;
        let fallen: u64 = self.hist[n.saturating_sub(shift)..]
            .iter()
            .map(|&c| c as u64)
            .sum();
        self.hist_below += fallen;
        if shift >= n {
            self.hist.iter_mut().for_each(|c| *c = 0);
        } else {
            self.hist.copy_within(0..n - shift, shift);
            self.hist[..shift].iter_mut().for_each(|c| *c = 0);
        }
        self.hist_top = top;
    }

    /// Considers a window whose scored maximum is `s` at `pos`; `acts` gives its activations
    /// on demand (only windows that are kept are copied). The unit's maximum must already
    /// include `s` (see [`UnitStats::observe_max`]).
    pub fn offer(
        &mut self,
        keep: Keep,
        window: u64,
        s: f32,
        pos: u32,
        key: u64,
        acts: impl Fn() -> Box<[f16]>,
    ) {
        let enters_top = self.top.len() < keep.top_k
            || self.top.last().is_some_and(|last| {
                s > last.max_act || (s == last.max_act && window < last.window)
            });
        let bin = quantile_bin(s, self.max);
        let enters_bin = bin.is_some_and(|i| {
            let c = &self.candidates[i];
            c.len() < keep.per_quantile || c.iter().any(|e| key < e.key)
        });
        if !enters_top && !enters_bin {
            return;
        }
        let acts = acts();
        self.examples_dirty = true;
        if enters_top && keep.top_k > 0 {
            let example = Example {
                window,
                max_act: s,
                max_pos: pos,
                key: 0,
                acts: acts.clone(),
            };
            let at = self.top.partition_point(|e| top_order(e, &example).is_lt());
            self.top.insert(at, example);
            self.top.truncate(keep.top_k);
        }
        if let (true, Some(i)) = (enters_bin, bin) {
            let example = Example {
                window,
                max_act: s,
                max_pos: pos,
                key,
                acts,
            };
            insert_candidate(&mut self.candidates[i], example, keep.per_quantile);
        }
    }

    /// Raises the unit's maximum to `s` if it is larger; quantile candidates are re-binned
    /// under the new maximum (edges follow the final maximum).
    pub fn observe_max(&mut self, s: f32, keep: Keep) {
        if s > self.max {
            self.max = s;
            if self.candidates.iter().any(|c| !c.is_empty()) {
                let all: Vec<Example> = self
                    .candidates
                    .iter_mut()
                    .flat_map(std::mem::take)
                    .collect();
                self.rebin(all, keep);
            }
        }
    }

    fn rebin(&mut self, all: Vec<Example>, keep: Keep) {
        self.examples_dirty = true;
        for e in all {
            self.insert_candidate(e, keep);
        }
    }

    /// Adds a quantile candidate under the current maximum (kept if its key is among its
    /// group's smallest).
    pub fn insert_candidate(&mut self, e: Example, keep: Keep) {
        if let Some(i) = quantile_bin(e.max_act, self.max) {
            insert_candidate(&mut self.candidates[i], e, keep.per_quantile);
        }
    }

    /// Folds `other` (the same unit over other windows) into this one.
    pub fn merge(&mut self, other: &UnitStats, keep: Keep) {
        self.n_positive += other.n_positive;
        self.sum += other.sum;
        if other.hist_top > self.hist_top {
            self.raise_hist_top(other.hist_top);
        }
        if other.hist_top >= 0 {
            let shift = (self.hist_top - other.hist_top) as usize;
            for (k, &c) in other.hist.iter().enumerate() {
                match self.hist.get_mut(k + shift) {
                    Some(slot) => *slot += c,
                    None => self.hist_below += c as u64,
                }
            }
            self.hist_below += other.hist_below;
        }
        self.top.extend(other.top.iter().cloned());
        self.top.sort_by(top_order);
        self.top.truncate(keep.top_k);
        self.max = self.max.max(other.max);
        let all: Vec<Example> = self
            .candidates
            .iter_mut()
            .flat_map(std::mem::take)
            .chain(other.candidates.iter().flatten().cloned())
            .collect();
        self.rebin(all, keep);
    }

    /// The quantile groups: for each of the 10 intervals, its windows by ascending key.
    pub fn quantiles(&self, keep: Keep) -> Vec<Vec<&Example>> {
        let mut groups: Vec<Vec<&Example>> = vec![Vec::new(); N_QUANTILES];
        for e in self.candidates.iter().flatten() {
            if let Some(i) = quantile_bin(e.max_act, self.max) {
                groups[i].push(e);
            }
        }
        for g in &mut groups {
            g.sort_by_key(|e| e.key);
            g.truncate(keep.per_quantile);
        }
        groups
    }

    /// The shown histogram: counts of the 50 equal-width bins on (0, m].
    pub fn histogram(&self) -> Vec<u64> {
        let mut bins = vec![0u64; N_HIST_BINS];
        if self.max.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || self.hist_top < 0 {
            return bins;
        }
        let m = self.max as f64;
        bins[0] += self.hist_below;
        for (k, &c) in self.hist.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let mid = bucket_midpoint(self.hist_top - k as i64);
            let j =
                ((N_HIST_BINS as f64 * mid / m).ceil() as i64 - 1).clamp(0, N_HIST_BINS as i64 - 1);
            bins[j as usize] += c as u64;
        }
        bins
    }
}

fn insert_candidate(group: &mut Vec<Example>, e: Example, per_quantile: usize) {
    if per_quantile == 0 {
        return;
    }
    if group.len() < per_quantile {
        group.push(e);
        return;
    }
    if let Some((worst, _)) = group
        .iter()
        .enumerate()
        .max_by_key(|(_, x)| x.key)
        .filter(|(_, x)| e.key < x.key)
    {
        group[worst] = e;
    }
}

/// `[rows, cols]` row-major as `[cols, rows]` into `out`, in blocks of rows so that reads stay
/// in cache.
fn transpose_into(x: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
    const BLOCK: usize = 32;
    // Every element is written below: only a new size needs filling.
    out.resize(rows * cols, 0.0);
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for c in 0..cols {
            let dst = &mut out[c * rows + r0..c * rows + r1];
            for (k, slot) in dst.iter_mut().enumerate() {
                *slot = x[(r0 + k) * cols + c];
            }
        }
    }
}

#[cfg(test)]
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::new();
    transpose_into(x, rows, cols, &mut out);
    out
}

thread_local! {
    /// Each scanning thread's transpose buffer, reused batch after batch (fresh buffers of a
    /// few MB each cost the kernel's page zeroing every time).
    static UNIT_MAJOR: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Everything kept about one source (a hook's units or an SAE's latents).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceStats {
    pub name: String,
    pub keep: Keep,
    /// Scored tokens seen (the same for every unit).
    pub n_tokens: u64,
    pub units: Vec<UnitStats>,
}

impl SourceStats {
    pub fn new(name: &str, width: usize, keep: Keep) -> Self {
        SourceStats {
            name: name.to_string(),
            keep,
            n_tokens: 0,
            units: vec![UnitStats::default(); width],
        }
    }

    /// Adds a batch of windows: `acts` is `[windows, positions, width]` row-major, `scored`
    /// says which positions count (not BOS or other special tokens) per window.
    pub fn add_batch(&mut self, windows: &[u64], scored: &[Vec<bool>], acts: &[f32], seed: u64) {
        let width = self.units.len();
        let t = scored.first().map_or(0, Vec::len);
        let rows = windows.len() * t;
        if width == 0 || rows == 0 || acts.len() < rows * width {
            return;
        }
        let hash = source_hash(&self.name);
        let positions: Vec<Vec<usize>> = scored
            .iter()
            .map(|mask| (0..t).filter(|&p| mask[p]).collect())
            .collect();
        self.n_tokens += positions.iter().map(|p| p.len() as u64).sum::<u64>();
        // Unit-major, so each unit's values over the whole batch are contiguous and its
        // histogram stays in cache while all of them are counted.
        UNIT_MAJOR.with_borrow_mut(|by_unit| {
            transpose_into(&acts[..rows * width], rows, width, by_unit);
            self.add_unit_major(windows, &positions, by_unit, t, seed, hash)
        });
    }

    /// [`SourceStats::add_batch`] on activations laid out `[width, windows × positions]`.
    fn add_unit_major(
        &mut self,
        windows: &[u64],
        positions: &[Vec<usize>],
        by_unit: &[f32],
        t: usize,
        seed: u64,
        hash: u64,
    ) {
        let rows = windows.len() * t;
        let keep = self.keep;
        for (u, unit) in self.units.iter_mut().enumerate() {
            let row = &by_unit[u * rows..(u + 1) * rows];
            for (i, (&window, positions)) in windows.iter().zip(positions).enumerate() {
                if positions.is_empty() {
                    continue;
                }
                let values = &row[i * t..(i + 1) * t];
                let (s, pos) = unit.count_window(values, positions);
                unit.observe_max(s, keep);
                let key = sample_key(seed, hash, u as u64, window);
                unit.offer(keep, window, s, pos, key, || {
                    values
                        .iter()
                        .map(|a| f16::from_f32(a.clamp(-65504.0, 65504.0)))
                        .collect()
                });
            }
        }
    }

    pub fn merge(&mut self, other: &SourceStats) {
        self.n_tokens += other.n_tokens;
        for (a, b) in self.units.iter_mut().zip(&other.units) {
            a.merge(b, self.keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(top_k: usize) -> Keep {
        Keep {
            top_k,
            per_quantile: DEFAULT_PER_QUANTILE,
        }
    }

    /// definitions.md §11's worked example: C = 4, no BOS, one unit.
    fn worked_example() -> SourceStats {
        let mut s = SourceStats::new("u", 1, keep(2));
        let acts = [
            0.0, 0.2, 1.5, 0.0, //
            0.7, 0.0, 0.0, 0.1, //
            1.5, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 0.0,
        ];
        s.add_batch(&[0, 1, 2, 3], &vec![vec![true; 4]; 4], &acts, 7);
        s
    }

    #[test]
    fn definitions_worked_example() {
        let s = worked_example();
        let u = &s.units[0];
        assert_eq!(u.max, 1.5);
        let top: Vec<u64> = u.top.iter().map(|e| e.window).collect();
        assert_eq!(top, vec![0, 2], "top-2 = w0, w2 (tie → w0 first)");
        assert_eq!(u.top[0].max_pos, 2);
        let q = u.quantiles(keep(2));
        assert_eq!(q[4].iter().map(|e| e.window).collect::<Vec<_>>(), vec![1]);
        let mut nine: Vec<u64> = q[9].iter().map(|e| e.window).collect();
        nine.sort();
        assert_eq!(nine, vec![0, 2]);
        let in_groups: usize = q.iter().map(Vec::len).sum();
        assert_eq!(in_groups, 3, "w3 has no group");
        assert_eq!(s.n_tokens, 16);
        assert_eq!(u.n_positive as f64 / s.n_tokens as f64, 0.3125);
        assert!((u.sum / 16.0 - 4.0 / 16.0).abs() < 1e-7);
    }

    #[test]
    fn histogram_bins_follow_the_final_maximum() {
        let mut u = UnitStats::default();
        for a in [0.1f32, 0.5, 1.1, 2.1, 4.0, 4.0] {
            u.count(a);
            u.observe_max(a, keep(1));
        }
        let bins = u.histogram();
        assert_eq!(bins.iter().sum::<u64>(), 6);
        // (0, 4] in 50 bins of 0.08: 0.1 → bin 1, 0.5 → 6, 1.1 → 13, 2.1 → 26, 4 → 49.
        for (bin, count) in [(1, 1), (6, 1), (13, 1), (26, 1), (49, 2)] {
            assert_eq!(bins[bin], count, "bin {bin}: {bins:?}");
        }
    }

    #[test]
    fn values_far_below_the_maximum_are_counted_in_the_first_bin() {
        let mut u = UnitStats::default();
        for a in [1e-6f32, 1e-3, 1000.0] {
            u.count(a);
            u.observe_max(a, keep(1));
        }
        assert!(u.hist_below >= 2);
        let bins = u.histogram();
        assert_eq!(bins[0], 2);
        assert_eq!(bins[49], 1);
    }

    #[test]
    fn transposes_rows_and_columns() {
        let x: Vec<f32> = (0..70 * 3).map(|i| i as f32).collect();
        let y = transpose(&x, 70, 3);
        for r in 0..70 {
            for c in 0..3 {
                assert_eq!(y[c * 70 + r], x[r * 3 + c]);
            }
        }
    }

    #[test]
    fn merged_halves_equal_one_pass() {
        let windows: Vec<u64> = (0..40).collect();
        let t = 5;
        let width = 3;
        let acts: Vec<f32> = (0..windows.len() * t * width)
            .map(|i| ((i * 7919 % 1009) as f32 / 100.0) - 3.0)
            .collect();
        let scored = vec![vec![true; t]; windows.len()];
        let mut whole = SourceStats::new("s", width, keep(4));
        whole.add_batch(&windows, &scored, &acts, 1);
        let mut parts = [
            SourceStats::new("s", width, keep(4)),
            SourceStats::new("s", width, keep(4)),
        ];
        for (i, &w) in windows.iter().enumerate() {
            let block = &acts[i * t * width..(i + 1) * t * width];
            parts[(w % 2) as usize].add_batch(&[w], &scored[..1], block, 1);
        }
        let [mut a, b] = parts;
        a.merge(&b);
        assert_eq!(a.n_tokens, whole.n_tokens);
        for (x, y) in a.units.iter().zip(&whole.units) {
            assert_eq!(x.top, y.top);
            assert_eq!(x.n_positive, y.n_positive);
            assert_eq!(x.max, y.max);
            assert_eq!(x.histogram(), y.histogram());
            assert_eq!(
                (x.hist_top, &x.hist, x.hist_below),
                (y.hist_top, &y.hist, y.hist_below)
            );
            assert!((x.sum - y.sum).abs() < 1e-9);
            for g in x.quantiles(keep(4)).iter().flatten() {
                assert!(quantile_bin(g.max_act, x.max).is_some());
            }
        }
    }
}
