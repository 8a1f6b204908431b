//! Activation histograms with fixed bin edges, so that two runs (before and after an
//! intervention) bin identically and can be overlaid bar for bar.
//!
//! Edges depend only on a [`Bins`] spec, never on the data being binned. [`Bins::covering`]
//! picks a spec from a baseline once (range rounded up to a power of two), and the same spec is
//! then reused for every later run.

use serde::Serialize;

/// How values are binned.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "scale", rename_all = "snake_case")]
pub enum Bins {
    /// `n` equal bins over `[min, max)`.
    Linear { min: f64, max: f64, n: usize },
    /// Symmetric log bins for signed values: `n_per_side` log-spaced bins over
    /// `[min_abs, max_abs)` for each sign, and one bin `(−min_abs, min_abs)` around zero (which
    /// holds the exact zeros of a ReLU).
    SymLog {
        min_abs: f64,
        max_abs: f64,
        n_per_side: usize,
    },
}

impl Bins {
    /// A linear spec symmetric about zero covering `values`, its bound rounded up to a power of
    /// two so that small changes in the data keep the same edges.
    pub fn covering(values: &[f32], n: usize) -> Bins {
        let max = round_up_pow2(max_abs(values));
        Bins::Linear {
            min: -max,
            max,
            n: n.max(1),
        }
    }

    /// A symmetric-log spec covering `values` down to `min_abs` (bounds powers of ten).
    pub fn covering_log(values: &[f32], min_abs: f64, n_per_side: usize) -> Bins {
        let top = max_abs(values).max(min_abs * 10.0);
        Bins::SymLog {
            min_abs,
            max_abs: 10f64.powf(top.log10().ceil()),
            n_per_side: n_per_side.max(1),
        }
    }

    /// Bin edges, ascending (`bins + 1` of them).
    pub fn edges(&self) -> Vec<f64> {
        match *self {
            Bins::Linear { min, max, n } => (0..=n)
                .map(|i| min + (max - min) * i as f64 / n as f64)
                .collect(),
            Bins::SymLog {
                min_abs,
                max_abs,
                n_per_side,
            } => {
                let side: Vec<f64> = (0..=n_per_side)
                    .map(|i| {
                        let f = i as f64 / n_per_side as f64;
                        (min_abs.ln() + (max_abs.ln() - min_abs.ln()) * f).exp()
                    })
                    .collect();
                side.iter()
                    .rev()
                    .map(|x| -x)
                    .chain(side.iter().copied())
                    .collect()
            }
        }
    }

    pub fn n_bins(&self) -> usize {
        match *self {
            Bins::Linear { n, .. } => n,
            Bins::SymLog { n_per_side, .. } => 2 * n_per_side + 1,
        }
    }

    /// The bin holding `v`, or `Err(false)` below the range and `Err(true)` above it.
    pub fn index(&self, v: f64) -> Result<usize, bool> {
        match *self {
            Bins::Linear { min, max, n } => {
                if v.is_nan() || v < min {
                    Err(false)
                } else if v >= max {
                    Err(true)
                } else {
                    Ok((((v - min) / (max - min) * n as f64) as usize).min(n - 1))
                }
            }
            Bins::SymLog {
                min_abs,
                max_abs,
                n_per_side,
            } => {
                let a = v.abs();
                if v.is_nan() {
                    return Err(false);
                }
                if a < min_abs {
                    return Ok(n_per_side);
                }
                if a >= max_abs {
                    return Err(v > 0.0);
                }
                let f = (a.ln() - min_abs.ln()) / (max_abs.ln() - min_abs.ln());
                let k = ((f * n_per_side as f64) as usize).min(n_per_side - 1);
                Ok(if v > 0.0 {
                    n_per_side + 1 + k
                } else {
                    n_per_side - 1 - k
                })
            }
        }
    }
}

fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
}

/// The smallest power of two strictly above `x` (so `x` itself falls inside `[−p, p)`).
fn round_up_pow2(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let p = 2f64.powf(x.log2().ceil());
    if p <= x { 2.0 * p } else { p }
}

/// Counts per bin, plus what fell outside.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub bins: Bins,
    pub counts: Vec<u64>,
    pub below: u64,
    pub above: u64,
}

impl Histogram {
    pub fn new(bins: Bins, values: &[f32]) -> Self {
        let mut h = Histogram {
            bins,
            counts: vec![0; bins.n_bins()],
            below: 0,
            above: 0,
        };
        h.add(values);
        h
    }

    pub fn add(&mut self, values: &[f32]) {
        for &v in values {
            match self.bins.index(v as f64) {
                Ok(i) => self.counts[i] += 1,
                Err(false) => self.below += 1,
                Err(true) => self.above += 1,
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.below + self.above
    }

    /// `log10(1 + count)` per bin: the height plotted on a log count axis (empty bins at 0).
    pub fn log_counts(&self) -> Vec<f64> {
        self.counts
            .iter()
            .map(|&c| (1.0 + c as f64).log10())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_bins_count_and_report_outliers() {
        let bins = Bins::Linear {
            min: -1.0,
            max: 1.0,
            n: 4,
        };
        assert_eq!(bins.edges(), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        let h = Histogram::new(bins, &[-1.0, -0.6, 0.0, 0.1, 0.49, 0.5, 0.99, 1.0, -3.0]);
        assert_eq!(h.counts, vec![2, 0, 3, 2]);
        assert_eq!((h.below, h.above, h.total()), (1, 1, 9));
        assert_eq!(h.log_counts()[1], 0.0);
        assert!((h.log_counts()[2] - 4f64.log10()).abs() < 1e-12);
    }

    #[test]
    fn symlog_bins_are_symmetric_and_hold_zeros_in_the_middle() {
        let bins = Bins::SymLog {
            min_abs: 0.01,
            max_abs: 100.0,
            n_per_side: 4,
        };
        let e = bins.edges();
        assert_eq!(e.len(), 10);
        for (a, b) in e.iter().zip(e.iter().rev()) {
            assert!((a + b).abs() < 1e-9);
        }
        assert!((e[6] - 0.1).abs() < 1e-9 && (e[9] - 100.0).abs() < 1e-9);
        let h = Histogram::new(bins, &[0.0, 0.0, 0.005, 0.05, -0.05, 50.0, -200.0]);
        assert_eq!(h.counts[4], 3);
        assert_eq!(h.counts[5], 1);
        assert_eq!(h.counts[3], 1);
        assert_eq!(h.counts[8], 1);
        assert_eq!(h.below, 1);
        // Every value lies between its bin's edges (the middle bin spans (−0.01, 0.01)).
        for v in [-99.0, -0.2, -0.011, 0.0, 0.011, 0.3, 7.0] {
            let i = bins.index(v).unwrap();
            assert!(e[i] <= v && v < e[i + 1], "{v} in bin {i}");
        }
    }

    #[test]
    fn covering_edges_are_stable_under_small_changes() {
        let before = Bins::covering(&[0.3, -2.7, 1.0], 50);
        let after = Bins::covering(&[0.3, -3.1, 1.2], 50);
        assert_eq!(before, after);
        assert_eq!(before.edges()[0], -4.0);
        // The largest value lies inside the range, not on its open end.
        assert_eq!(Bins::covering(&[2.0], 4).edges()[4], 4.0);
        let log = Bins::covering_log(&[0.0, 37.0], 1e-3, 20);
        assert_eq!(
            log,
            Bins::SymLog {
                min_abs: 1e-3,
                max_abs: 100.0,
                n_per_side: 20
            }
        );
    }
}
