//! Weight-stationary matrix multiply for `y = x Wᵀ (+ b)`, the product behind every linear
//! layer and the unembedding.
//!
//! General-purpose GEMMs repack the weight matrix on every call; with a prompt of a few dozen
//! tokens that repacking costs about as much as the arithmetic. Here each weight is packed once,
//! at load, into column panels of `NR` outputs laid out `[panel][k][NR]`, and an AVX-512
//! microkernel (runtime-detected; a portable kernel elsewhere) streams them. Panels are split
//! across threads. The packed form replaces the original tensor, so memory does not grow.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Outputs per panel: two AVX-512 vectors.
const NR: usize = 32;
/// Most rows (tokens) one microkernel call handles.
const MR: usize = 12;

#[derive(Debug)]
pub struct PackedMatrix {
    /// Rows of `W` (outputs).
    n: usize,
    /// Columns of `W` (inputs).
    k: usize,
    /// `ceil(n / NR)` panels of `k × NR`, zero-padded past `n`.
    panels: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `w: [n, k]` (PyTorch layout).
    pub fn pack(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        // Read the tensor in place: for a large vocabulary a temporary copy would add its
        // whole size to peak memory at load.
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("packing needs a CPU tensor");
        };
        let rows = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + n * k];
        let n_panels = n.div_ceil(NR);
        let mut panels = vec![0f32; n_panels * k * NR];
        for (row, values) in rows.chunks_exact(k.max(1)).enumerate().take(n) {
            let (panel, lane) = (row / NR, row % NR);
            let base = panel * k * NR + lane;
            for (p, v) in values.iter().enumerate() {
                panels[base + p * NR] = *v;
            }
        }
        Ok(PackedMatrix { n, k, panels })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Row `r` of `W` (an embedding lookup on a tied matrix).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (panel, lane) = (r / NR, r % NR);
        let base = panel * self.k * NR + lane;
        (0..self.k).map(|p| self.panels[base + p * NR]).collect()
    }

    /// `W` as a `[n, k]` tensor.
    pub fn to_tensor(&self) -> candle_core::Result<Tensor> {
        let data: Vec<f32> = (0..self.n).flat_map(|r| self.row(r)).collect();
        Tensor::from_vec(data, (self.n, self.k), &Device::Cpu)
    }

    /// `y = x Wᵀ + bias` for `x: [m, k]` row-major; returns `[m, n]` row-major.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "matmul_t: x has the wrong length");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.n, "matmul_t: bias has the wrong length");
        }
        let n = self.n;
        let mut y = vec![0f32; m * n];
        let out = SharedOut(y.as_mut_ptr());
        let n_panels = n.div_ceil(NR);
        let kernel = Kernel::detect();
        // Enough work per task to amortise scheduling, enough tasks to keep both cores busy.
        let min_panels = (16_384 / (m * self.k).max(1)).clamp(1, 8);
        (0..n_panels)
            .into_par_iter()
            .with_min_len(min_panels)
            .for_each(|panel| {
                let b = &self.panels[panel * self.k * NR..(panel + 1) * self.k * NR];
                let col0 = panel * NR;
                let width = NR.min(n - col0);
                let mut bias_lanes = [0f32; NR];
                if let Some(bias) = bias {
                    bias_lanes[..width].copy_from_slice(&bias[col0..col0 + width]);
                }
                let mut row = 0;
                while row < m {
                    let rows = MR.min(m - row);
                    let mut tile = [[0f32; NR]; MR];
                    kernel.run(rows, self.k, &x[row * self.k..], b, &bias_lanes, &mut tile);
                    for (i, values) in tile.iter().enumerate().take(rows) {
                        // Safety: each task writes only columns [col0, col0 + width) of its rows,
                        // and panels are disjoint, so no two tasks write the same element; `y`
                        // outlives the parallel loop.
                        unsafe {
                            let dst = out.ptr().add((row + i) * n + col0);
                            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, width);
                        }
                    }
                    row += rows;
                }
            });
        y
    }
}

/// The output buffer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
impl SharedOut {
    // A method (not field access) so closures capture the whole `Sync` wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }

    /// `tile[i][j] = bias[j] + Σ_p a[i*k + p] · b[p*NR + j]` for `i < rows`.
    fn run(
        self,
        rows: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        bias: &[f32; NR],
        tile: &mut [[f32; NR]; MR],
    ) {
        assert!(a.len() >= rows * k && b.len() >= k * NR && rows <= MR);
        match self {
            #[cfg(target_arch = "x86_64")]
            // Safety: AVX-512F was detected at runtime; the assert above bounds every access.
            Kernel::Avx512 => unsafe {
                match rows {
                    1 => avx512::tile::<1>(k, a, b, bias, tile),
                    2 => avx512::tile::<2>(k, a, b, bias, tile),
                    3 => avx512::tile::<3>(k, a, b, bias, tile),
                    4 => avx512::tile::<4>(k, a, b, bias, tile),
                    5 => avx512::tile::<5>(k, a, b, bias, tile),
                    6 => avx512::tile::<6>(k, a, b, bias, tile),
                    7 => avx512::tile::<7>(k, a, b, bias, tile),
                    8 => avx512::tile::<8>(k, a, b, bias, tile),
                    9 => avx512::tile::<9>(k, a, b, bias, tile),
                    10 => avx512::tile::<10>(k, a, b, bias, tile),
                    11 => avx512::tile::<11>(k, a, b, bias, tile),
                    _ => avx512::tile::<12>(k, a, b, bias, tile),
                }
            },
            Kernel::Portable => portable_tile(rows, k, a, b, bias, tile),
        }
    }
}

fn portable_tile(
    rows: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32; NR],
    tile: &mut [[f32; NR]; MR],
) {
    for (i, acc) in tile.iter_mut().enumerate().take(rows) {
        *acc = *bias;
        let a_row = &a[i * k..(i + 1) * k];
        for (p, &av) in a_row.iter().enumerate() {
            let b_row = &b[p * NR..(p + 1) * NR];
            for (c, bv) in acc.iter_mut().zip(b_row) {
                *c += av * bv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `ROWS × 32` tile: two zmm accumulators per row, the `k` loop streaming one packed
    /// `32`-wide row of the panel per step.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const ROWS: usize>(
        k: usize,
        a: &[f32],
        b: &[f32],
        bias: &[f32; NR],
        out: &mut [[f32; NR]; MR],
    ) {
        let a = a.as_ptr();
        let b = b.as_ptr();
        // Safety (whole body): the caller checked a.len() >= ROWS*k and b.len() >= k*NR.
        unsafe {
            let bias0 = _mm512_loadu_ps(bias.as_ptr());
            let bias1 = _mm512_loadu_ps(bias.as_ptr().add(16));
            let mut acc0 = [bias0; ROWS];
            let mut acc1 = [bias1; ROWS];
            for p in 0..k {
                let b0 = _mm512_loadu_ps(b.add(p * NR));
                let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
                for i in 0..ROWS {
                    let av = _mm512_set1_ps(*a.add(i * k + p));
                    acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
                    acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
                }
            }
            for i in 0..ROWS {
                _mm512_storeu_ps(out[i].as_mut_ptr(), acc0[i]);
                _mm512_storeu_ps(out[i].as_mut_ptr().add(16), acc1[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        x: &[f32],
        w: &[f32],
        m: usize,
        n: usize,
        k: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j]) as f64;
                for p in 0..k {
                    s += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matches_naive_product_on_awkward_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (64, 96, 40),
            (5, 31, 129),
            (25, 64, 3),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let packed =
                PackedMatrix::pack(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap())
                    .unwrap();
            let ours = packed.matmul_t(&x, m, Some(&bias));
            let expected = reference(&x, &w, m, n, k, Some(&bias));
            for (a, b) in ours.iter().zip(&expected) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{m}x{n}x{k}: {a} vs {b}"
                );
            }
            let mut portable = [[0f32; NR]; MR];
            let b = &packed.panels[..k * NR];
            portable_tile(m.min(MR), k, &x, b, &[0.0; NR], &mut portable);
            for i in 0..m.min(MR) {
                for j in 0..n.min(NR) {
                    let e = reference(&x, &w, m, n, k, None)[i * n + j];
                    assert!((portable[i][j] - e).abs() <= 1e-4 * (1.0 + e.abs()));
                }
            }
            assert_eq!(packed.row(n - 1), w[(n - 1) * k..].to_vec());
            assert_eq!(
                packed
                    .to_tensor()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                w
            );
        }
    }
}
