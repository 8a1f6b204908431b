//! Multifaceted units (definitions §15): a unit's top examples clustered into facets by the
//! context they fire in (a vector per example: the residual stream at its peak), with k-means
//! (k-means++ seeding, Lloyd iterations, a fixed seed) and k chosen by the mean silhouette.

use serde::Serialize;

use crate::rng::Rng;

/// Squared Euclidean distance.
fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (*x - *y) as f64;
            d * d
        })
        .sum()
}

/// k-means of `points` into `k` clusters (k-means++ seeding from `seed`, then Lloyd until
/// nothing moves, at most 100 rounds). Returns each point's cluster.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    if n == 0 || k <= 1 {
        return vec![0; n];
    }
    let k = k.min(n);
    let mut rng = Rng::new(seed);
    // k-means++: the first centre uniformly, each next one with probability ∝ D².
    let mut centres: Vec<Vec<f32>> = vec![points[rng.below(n)].clone()];
    while centres.len() < k {
        let d: Vec<f64> = points
            .iter()
            .map(|p| {
                centres
                    .iter()
                    .map(|c| dist2(p, c))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let total: f64 = d.iter().sum();
        let next = if total > 0.0 {
            let mut target = rng.uniform() * total;
            let mut chosen = n - 1;
            for (i, &di) in d.iter().enumerate() {
                if target < di {
                    chosen = i;
                    break;
                }
                target -= di;
            }
            chosen
        } else {
            rng.below(n)
        };
        centres.push(points[next].clone());
    }
    let nearest = |p: &[f32], centres: &[Vec<f32>]| {
        (0..centres.len())
            .min_by(|&a, &b| dist2(p, &centres[a]).total_cmp(&dist2(p, &centres[b])))
            .unwrap_or(0)
    };
    let mut assign: Vec<usize> = points.iter().map(|p| nearest(p, &centres)).collect();
    let d = points[0].len();
    for _ in 0..100 {
        for (c, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f32>> = points
                .iter()
                .zip(&assign)
                .filter(|(_, a)| **a == c)
                .map(|(p, _)| p)
                .collect();
            if members.is_empty() {
                continue;
            }
            for j in 0..d {
                centre[j] = (members.iter().map(|m| m[j] as f64).sum::<f64>()
                    / members.len() as f64) as f32;
            }
        }
        let next: Vec<usize> = points.iter().map(|p| nearest(p, &centres)).collect();
        if next == assign {
            break;
        }
        assign = next;
    }
    assign
}

/// Mean silhouette (Rousseeuw; sklearn's `silhouette_score`): per point s = (b − a)/max(a, b),
/// a its mean distance within its cluster, b the least mean distance to another cluster;
/// points alone in their cluster score 0.
pub fn silhouette(points: &[Vec<f32>], assign: &[usize]) -> f64 {
    let n = points.len();
    if n == 0 {
        return 0.0;
    }
    let k = assign.iter().max().map_or(0, |m| m + 1);
    let mut total = 0.0;
    for i in 0..n {
        let mut sums = vec![0f64; k];
        let mut counts = vec![0usize; k];
        for j in 0..n {
            if i != j {
                sums[assign[j]] += dist2(&points[i], &points[j]).sqrt();
                counts[assign[j]] += 1;
            }
        }
        let own = assign[i];
        if counts[own] == 0 {
            continue;
        }
        let a = sums[own] / counts[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            let m = a.max(b);
            if m > 0.0 {
                total += (b - a) / m;
            }
        }
    }
    total / n as f64
}

/// A clustering and its score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Clustering {
    pub k: usize,
    pub assign: Vec<usize>,
    pub silhouette: f64,
}

/// The clustering with the best mean silhouette for k ∈ 2…6 (k ≤ n − 1; ties to the smaller
/// k), or `k` itself when given. Fewer than 3 points are one facet.
pub fn cluster(points: &[Vec<f32>], k: Option<usize>, seed: u64) -> Clustering {
    let n = points.len();
    let one = || Clustering {
        k: 1,
        assign: vec![0; n],
        silhouette: 0.0,
    };
    if n < 3 {
        return one();
    }
    let ks: Vec<usize> = match k {
        Some(k) => vec![k.clamp(1, n)],
        None => (2..=6).filter(|&k| k < n).collect(),
    };
    let mut best: Option<Clustering> = None;
    for k in ks {
        if k == 1 {
            return one();
        }
        let assign = kmeans(points, k, seed);
        let s = silhouette(points, &assign);
        if best.as_ref().is_none_or(|b| s > b.silhouette) {
            best = Some(Clustering {
                k,
                assign,
                silhouette: s,
            });
        }
    }
    best.unwrap_or_else(one)
}

/// A facet's label: its 3 most frequent peak tokens with counts ("Paris ×2, London ×1"); count
/// ties go to the larger summed peak activation, then the lower token id. `peaks` are the
/// members' `(token id, token text, peak activation)`.
pub fn label(peaks: &[(u32, String, f32)]) -> String {
    let mut tally: Vec<(u32, String, usize, f64)> = Vec::new();
    for (id, text, act) in peaks {
        match tally.iter_mut().find(|t| t.0 == *id) {
            Some(t) => {
                t.2 += 1;
                t.3 += *act as f64;
            }
            None => tally.push((*id, text.clone(), 1, *act as f64)),
        }
    }
    tally.sort_by(|a, b| b.2.cmp(&a.2).then(b.3.total_cmp(&a.3)).then(a.0.cmp(&b.0)));
    tally
        .iter()
        .take(3)
        .map(|(_, text, count, _)| format!("{} ×{count}", text.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Vec<Vec<f32>> {
        [
            [0.0, 0.0],
            [0.0, 1.0],
            [1.0, 0.0],
            [10.0, 10.0],
            [10.0, 11.0],
            [11.0, 10.0],
        ]
        .iter()
        .map(|p| p.to_vec())
        .collect()
    }

    #[test]
    fn the_worked_example_splits_into_its_two_groups() {
        // Definitions §15: k = 2 scores s̄ = .92, k = 3 about .51; k = 2 wins.
        let points = example();
        let two = [0, 0, 0, 1, 1, 1];
        assert!((silhouette(&points, &two) - 0.92).abs() < 0.01);
        let three = [0, 0, 0, 1, 1, 2];
        assert!((silhouette(&points, &three) - 0.51).abs() < 0.01);
        let c = cluster(&points, None, 0);
        assert_eq!(c.k, 2);
        assert_eq!(c.assign[0], c.assign[1]);
        assert_eq!(c.assign[1], c.assign[2]);
        assert_ne!(c.assign[2], c.assign[3]);
        assert_eq!(c.assign[3], c.assign[5]);
        // Fewer than 3 windows are one facet; a given k is used.
        assert_eq!(cluster(&points[..2], None, 0).k, 1);
        assert_eq!(cluster(&points, Some(3), 0).k, 3);
    }

    #[test]
    fn labels_count_peak_tokens() {
        let peaks = vec![
            (5, " Paris".to_string(), 2.0),
            (7, " London".to_string(), 1.0),
            (5, " Paris".to_string(), 1.5),
        ];
        assert_eq!(label(&peaks), "Paris ×2, London ×1");
    }

    #[test]
    fn seeded_runs_repeat() {
        let points = example();
        assert_eq!(kmeans(&points, 2, 9), kmeans(&points, 2, 9));
    }
}
