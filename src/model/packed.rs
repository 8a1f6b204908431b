//! Weight-stationary matrix multiply for `y = x Wᵀ (+ b)`, the product behind every linear
//! layer and the unembedding.
//!
//! General-purpose GEMMs repack the weight matrix on every call; with a prompt of a few dozen
//! tokens that repacking costs about as much as the arithmetic. Here each weight is packed once,
//! at load, into column panels of `NR` outputs laid out `[panel][k][NR]`, and an AVX-512
//! microkernel (runtime-detected; a portable kernel elsewhere) streams them. Panels are split
//! across threads. The packed form replaces the original tensor, so memory does not grow.
//!
//! A matrix can also be a pruned view of another ([`PackedMatrix::with_mask`]): it shares the
//! packed values and a [`MagnitudeMask`] says which of them count. The matmul zeroes the
//! dropped weights block by block as it streams them, so moving a pruning slider changes a
//! few numbers per row instead of rewriting the matrix.

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Outputs per panel: two AVX-512 vectors.
const NR: usize = 32;
/// Most rows (tokens) one microkernel call handles.
const MR: usize = 12;
/// Inputs per block: a `KC × NR` slice of a panel is 24 KiB, within L1.
const KC: usize = 192;

/// One cache line of floats. Panels are stored as these so that every panel row (`NR` floats,
/// two lines) starts on a line boundary: a `Vec<f32>` is only 16-byte aligned, and most rows
/// then straddled three lines, splitting one of each row's two vector loads across two lines.
/// (On the CETT search, whose gathers read single rows, the gain was within this VM's noise:
/// best of five 124 → 116 ms.)
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Floats in whole, aligned cache lines, read and written as `[f32]`.
#[derive(Debug, Clone, PartialEq)]
struct Lines(Vec<Line>);

impl Lines {
    /// `len` zeros (`len` a multiple of 16: panels are `k × NR` floats).
    fn zeros(len: usize) -> Self {
        debug_assert!(len.is_multiple_of(16));
        Lines(vec![Line([0.0; 16]); len.div_ceil(16)])
    }
}

impl std::ops::Deref for Lines {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // Safety: `Line` is `repr(C)` around 16 `f32`s with no padding (64 bytes, aligned to
        // 64), so the lines are `16 × len` contiguous, initialised `f32`s.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<f32>(), self.0.len() * 16) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [f32] {
        // Safety: as in `deref`, with the unique borrow of the lines.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), self.0.len() * 16)
        }
    }
}

#[derive(Debug, Clone)]
pub struct PackedMatrix {
    /// Rows of `W` (outputs).
    n: usize,
    /// Columns of `W` (inputs).
    k: usize,
    /// `ceil(n / NR)` panels of `k × NR`, zero-padded past `n`, each row on a cache line
    /// (shared by the pruned views of this matrix).
    panels: Arc<Lines>,
    /// Which of `panels` count, for a pruned view (`None`: all of them).
    mask: Option<Arc<MagnitudeMask>>,
    /// A pruned view's values written out, made on first use by the readers other than the
    /// matmul (rows, column norms, group sums: the inspector and CETT on a pruned model).
    masked: OnceLock<Lines>,
    /// [`PackedMatrix::column_norms`], computed on first use (CETT reads them at every
    /// method change).
    column_norms: OnceLock<Vec<f32>>,
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
        let start = layout.start_offset();
        Ok(Self::from_rows(
            &cpu.as_slice::<f32>()?[start..start + n * k],
            n,
            k,
        ))
    }

    /// Packs `n` rows of length `k` given row-major.
    pub fn from_rows(rows: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(rows.len(), n * k, "from_rows: wrong length");
        let mut packed = Self::zeros(n, k);
        packed.write_rows(0, rows);
        packed
    }

    /// Packs `n` rows of length `k` that arrive in pieces of at most `piece_rows`:
    /// `piece(first, count)` returns rows `first..first + count` row-major. A source that makes
    /// rows piecewise (dequantizing a GGUF tensor) never holds the whole unpacked matrix beside
    /// its packed copy: for a 262 144-token vocabulary that pair was 1.3 GB at load.
    pub fn from_row_pieces<E>(
        n: usize,
        k: usize,
        piece_rows: usize,
        mut piece: impl FnMut(usize, usize) -> Result<Vec<f32>, E>,
    ) -> Result<Self, E> {
        let mut packed = Self::zeros(n, k);
        for first in (0..n).step_by(piece_rows.max(1)) {
            let count = piece_rows.max(1).min(n - first);
            let rows = piece(first, count)?;
            assert_eq!(
                rows.len(),
                count * k,
                "from_row_pieces: a piece of the wrong length"
            );
            packed.write_rows(first, &rows);
        }
        Ok(packed)
    }

    fn zeros(n: usize, k: usize) -> Self {
        Self::from_panels(n, k, Lines::zeros(n.div_ceil(NR) * k * NR))
    }

    fn from_panels(n: usize, k: usize, panels: Lines) -> Self {
        PackedMatrix {
            n,
            k,
            panels: Arc::new(panels),
            mask: None,
            masked: OnceLock::new(),
            column_norms: OnceLock::new(),
        }
    }

    /// Writes row-major `rows` as rows `first..` of `W` (while packing: the panels are not
    /// shared yet, so nothing is copied).
    fn write_rows(&mut self, first: usize, rows: &[f32]) {
        let k = self.k;
        let panels = Arc::make_mut(&mut self.panels);
        for (i, values) in rows.chunks_exact(k.max(1)).enumerate() {
            let row = first + i;
            let base = (row / NR) * k * NR + row % NR;
            for (p, v) in values.iter().enumerate() {
                panels[base + p * NR] = *v;
            }
        }
    }

    /// This matrix with only the weights `mask` keeps (the others read as zero), sharing its
    /// packed values: the view costs the mask, not a copy. The mask applies to the stored
    /// values, replacing any mask this matrix has.
    pub fn with_mask(&self, mask: Arc<MagnitudeMask>) -> Result<Self, String> {
        if mask.floors.len() != self.n {
            return Err(format!(
                "a mask of {} rows for a matrix of {}",
                mask.floors.len(),
                self.n
            ));
        }
        Ok(PackedMatrix {
            n: self.n,
            k: self.k,
            panels: self.panels.clone(),
            mask: Some(mask),
            masked: OnceLock::new(),
            column_norms: OnceLock::new(),
        })
    }

    /// The values every reader but the matmul sees: the stored ones, or a pruned view's
    /// written out once.
    fn lines(&self) -> &Lines {
        match &self.mask {
            None => &self.panels,
            Some(mask) => self.masked.get_or_init(|| {
                let mut out = Lines::zeros(self.panels.len());
                let (k, kernel) = (self.k.max(1), Kernel::detect());
                for (panel, (src, dst)) in self
                    .panels
                    .chunks_exact(k * NR)
                    .zip(out.chunks_exact_mut(k * NR))
                    .enumerate()
                {
                    mask.for_blocks(panel, self.k, self.k, |k0, kc, floors| {
                        let range = k0 * NR..(k0 + kc) * NR;
                        mask_block(kernel, &src[range.clone()], floors, &mut dst[range]);
                    });
                }
                out
            }),
        }
    }

    /// The rows of `parts` (each with the same columns) one after another. Parts whose rows
    /// fill whole panels are joined panel by panel; otherwise the rows are repacked.
    pub fn stack(parts: &[&PackedMatrix]) -> Self {
        let k = parts.first().map_or(0, |p| p.k);
        assert!(
            parts.iter().all(|p| p.k == k),
            "stack: parts differ in width"
        );
        let n = parts.iter().map(|p| p.n).sum();
        let whole_panels = parts
            .split_last()
            .is_none_or(|(_, init)| init.iter().all(|p| p.n.is_multiple_of(NR)));
        let panels = if whole_panels {
            // One allocation of the whole size (collecting a flattened iterator grew it step
            // by step).
            let mut lines = Vec::with_capacity(parts.iter().map(|p| p.lines().0.len()).sum());
            for part in parts {
                lines.extend_from_slice(&part.lines().0);
            }
            Lines(lines)
        } else {
            let rows: Vec<f32> = parts
                .iter()
                .flat_map(|p| (0..p.n).flat_map(|r| p.row(r)))
                .collect();
            return Self::from_rows(&rows, n, k);
        };
        Self::from_panels(n, k, panels)
    }

    /// Where `W[r, c]` lives in [`PackedMatrix::values`].
    #[inline]
    pub fn offset(&self, r: usize, c: usize) -> usize {
        (r / NR) * self.k * NR + c * NR + r % NR
    }

    /// `(r, c)` of the weight at `offset` in [`PackedMatrix::values`] (the inverse of
    /// [`PackedMatrix::offset`]; padding past the last row gives `r ≥ rows`).
    #[inline]
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let panel_len = (self.k * NR).max(1);
        let within = offset % panel_len;
        ((offset / panel_len) * NR + within % NR, within / NR)
    }

    /// The packed values, padding included (address them with [`PackedMatrix::offset`]); a
    /// pruned view's with the dropped weights zero.
    pub fn values(&self) -> &[f32] {
        self.lines()
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
        let values = self.lines();
        (0..self.k).map(|p| values[base + p * NR]).collect()
    }

    /// `‖W[:, p]‖₂` for each input `p` (what input `p` writes, over every output).
    pub fn column_norms(&self) -> &[f32] {
        self.column_norms.get_or_init(|| {
            let k = self.k;
            let mut sums = vec![0f32; k];
            for panel in self.lines().chunks_exact((k * NR).max(1)) {
                for (sum, row) in sums.iter_mut().zip(panel.chunks_exact(NR)) {
                    *sum += row.iter().map(|x| x * x).sum::<f32>();
                }
            }
            sums.into_iter().map(f32::sqrt).collect()
        })
    }

    /// `W` as a `[n, k]` tensor.
    pub fn to_tensor(&self) -> candle_core::Result<Tensor> {
        let data: Vec<f32> = (0..self.n).flat_map(|r| self.row(r)).collect();
        Tensor::from_vec(data, (self.n, self.k), &Device::Cpu)
    }

    /// `y = x Wᵀ + bias` for `x: [m, k]` row-major; returns `[m, n]` row-major.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "matmul_t: x has the wrong length");
        let kernel = Kernel::detect();
        // The rows regrouped as the kernel reads them, so each tile's broadcasts come from one
        // contiguous stream instead of `group` rows `k` apart (a buffer reused per thread).
        let mut a_packed = PACKED_ROWS.with(|cell| cell.take());
        pack_rows(x, m, self.k, kernel.group(), &mut a_packed);
        let y = product(
            self.panels(),
            self.mask.as_deref(),
            kernel,
            (&a_packed, ALayout::Packed),
            m,
            bias,
        );
        PACKED_ROWS.with(|cell| cell.set(a_packed));
        y
    }

    /// [`Self::matmul_t`] reading `x` where it lies, its rows not regrouped first. The tile's
    /// broadcasts then come from `group` rows `k` apart, a few percent slower per product, but
    /// for the attention core's small products (a block of pattern rows times a head's values)
    /// regrouping the rows cost more than the product itself.
    pub fn matmul_t_unpacked(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "matmul_t: x has the wrong length");
        let rows = (x, ALayout::RowMajor);
        product(
            self.panels(),
            self.mask.as_deref(),
            Kernel::detect(),
            rows,
            m,
            bias,
        )
    }

    /// The weights as [`Panels`] (for a pruned view, as stored: the mask is applied by the
    /// products, not here).
    fn panels(&self) -> Panels<'_> {
        Panels {
            data: &self.panels,
            n: self.n,
            k: self.k,
            panel_stride: self.k * NR,
            row_stride: NR,
        }
    }

    /// The first `n` rows (outputs) of this matrix, unpruned, as [`Panels`]: a prefix of its
    /// panels. The attention core packs a head's keys once and gives each block of queries
    /// the keys it can see.
    pub fn first_rows(&self, n: usize) -> Panels<'_> {
        assert!(n <= self.n && self.mask.is_none());
        Panels { n, ..self.panels() }
    }
}

/// A matrix's weights `W: [n, k]` as the kernel streams them: outputs in panels of `NR`, the
/// `NR` weights of input `i` in panel `p` at `data[p·panel_stride + i·row_stride..][..NR]`
/// (past `n` in the last panel: anything finite, its outputs are dropped).
#[derive(Clone, Copy, Debug)]
pub struct Panels<'a> {
    data: &'a [f32],
    n: usize,
    k: usize,
    panel_stride: usize,
    row_stride: usize,
}

impl<'a> Panels<'a> {
    /// `W = Mᵀ` for the row-major `M: [k, ·]` whose row `i` starts at `data[i·row_stride]`,
    /// its first `n` columns read in place: `W[o, i] = data[i·row_stride + o]`. The attention
    /// core reads a head's values this way (`z = pattern · V` is `matmul_t` with `W = Vᵀ`)
    /// instead of transposing them. `None` where `n` is not a whole number of panels or
    /// `data` is too short.
    pub fn columns_of(data: &'a [f32], n: usize, k: usize, row_stride: usize) -> Option<Self> {
        let fits = k == 0 || data.len() >= (k - 1) * row_stride + n;
        (n > 0 && n.is_multiple_of(NR) && row_stride >= n && fits).then_some(Panels {
            data,
            n,
            k,
            panel_stride: NR,
            row_stride,
        })
    }

    /// `y = x Wᵀ (+ b)` for row-major `x: [m, k]`, read in place (see
    /// [`PackedMatrix::matmul_t_unpacked`]).
    pub fn matmul_t_unpacked(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "matmul_t: x has the wrong length");
        product(
            *self,
            None,
            Kernel::detect(),
            (x, ALayout::RowMajor),
            m,
            bias,
        )
    }
}

/// `y = x Wᵀ (+ b)` with `x`'s `m` rows laid out as `layout` says and `W`'s weights in
/// `weights`, those of a pruned view zeroed as `mask` says.
fn product(
    weights: Panels<'_>,
    mask: Option<&MagnitudeMask>,
    kernel: Kernel,
    (x, layout): (&[f32], ALayout),
    m: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    if let Some(b) = bias {
        assert_eq!(b.len(), weights.n, "matmul_t: bias has the wrong length");
    }
    let (n, k) = (weights.n, weights.k);
    let (panel_stride, ldb) = (weights.panel_stride, weights.row_stride);
    // A mask zeroes whole blocks of `NR`-wide rows, as `PackedMatrix` stores them.
    assert!(mask.is_none() || ldb == NR);
    if n > 0 && k > 0 {
        let last = (n.div_ceil(NR) - 1) * panel_stride + (k - 1) * ldb + NR;
        assert!(
            weights.data.len() >= last,
            "matmul_t: the weights are too short"
        );
    }
    // Not zeroed: every element is written (bias or zero) before it is accumulated into.
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = SharedOut(y.as_mut_ptr());
    let group = kernel.group();
    // Enough work per task to amortise scheduling, enough tasks to keep both cores busy.
    let min_panels = (16_384 / (m * k).max(1)).clamp(1, 8);
    (0..n.div_ceil(NR))
        .into_par_iter()
        .with_min_len(min_panels)
        // A pruned view's current block of weights, masked (`KC × NR`, in L1).
        .for_each_init(
            || mask.map(|_| Lines::zeros(KC * NR)),
            |masked_block, panel| {
                let b_panel = &weights.data[panel * panel_stride..];
                let col0 = panel * NR;
                let width = NR.min(n - col0);
                // A whole panel accumulates in place in `y` (row stride `n`); a narrower last
                // one in a buffer of `NR` columns, copied out after.
                // A whole panel's first block of inputs starts its sums from the bias (or
                // zero) in registers and only writes `y`: no pass setting `y` first (it was
                // 4 % of a forward).
                let mut narrow = Vec::new();
                let (c, ldc, first) = if width == NR {
                    // Safety: column `col0` of row 0 is inside `y`'s allocation.
                    let c = unsafe { out.ptr().add(col0) };
                    (c, n, Start::Fresh(bias.map(|b| &b[col0..col0 + NR])))
                } else {
                    narrow.resize(m * NR, 0f32);
                    if let Some(bias) = bias {
                        for row in narrow.chunks_exact_mut(NR) {
                            row[..width].copy_from_slice(&bias[col0..col0 + width]);
                        }
                    }
                    (narrow.as_mut_ptr(), NR, Start::Accumulate)
                };
                // Accumulated over blocks of `KC` inputs so the slice of the panel in use stays
                // in L1 while all rows pass over it. A pruned view's block is masked into a
                // buffer first, once for all rows (blocks end where a row's floor changes).
                let mut block = |k0: usize, kc: usize, floors: &[i32; NR]| {
                    let stored = &b_panel[k0 * ldb..];
                    let (b, ldb) = match masked_block.as_mut() {
                        Some(buffer) => {
                            let buffer = &mut buffer[..kc * NR];
                            mask_block(kernel, &stored[..kc * NR], floors, buffer);
                            (&*buffer, NR)
                        }
                        None => (stored, ldb),
                    };
                    for (g, row) in (0..m).step_by(group).enumerate() {
                        let rows = group.min(m - row);
                        let a = match layout {
                            ALayout::Packed => &x[(g * k + k0) * group..(g * k + k0 + kc) * group],
                            ALayout::RowMajor => &x[row * k + k0..(row + rows - 1) * k + k0 + kc],
                        };
                        // The first group of rows fetches the next block of weights (the rest
                        // of this panel, then the next panel: they follow in memory) into L2
                        // while it computes, so reading the weights from memory overlaps the
                        // arithmetic instead of stalling the next block's first group.
                        let prefetch = (g == 0).then(|| stored.as_ptr().wrapping_add(kc * ldb));
                        // Safety: rows [row, row + rows) of this task's `NR` columns, written
                        // above, are inside `c`'s buffer and touched by no other task.
                        let start = if k0 == 0 { first } else { Start::Accumulate };
                        unsafe {
                            kernel.run(
                                rows,
                                kc,
                                (a, layout.stride(k)),
                                (b, ldb),
                                c.add(row * ldc),
                                ldc,
                                start,
                                prefetch,
                            )
                        };
                    }
                };
                match mask {
                    Some(mask) => mask.for_blocks(panel, k, KC, &mut block),
                    None => {
                        for k0 in (0..k).step_by(KC) {
                            block(k0, KC.min(k - k0), &KEEP_ALL);
                        }
                    }
                }
                if width < NR {
                    for (i, values) in narrow.chunks_exact(NR).enumerate() {
                        // Safety: as above, this task's columns of row `i` of `y`.
                        unsafe {
                            let dst = out.ptr().add(i * n + col0);
                            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, width);
                        }
                    }
                }
            },
        );
    // Safety: the tasks wrote every column of every row (each its panel's).
    unsafe { y.set_len(m * n) };
    y
}

/// Floors that keep every weight (every magnitude's bits exceed −1).
const KEEP_ALL: [i32; NR] = [-1; NR];

/// Which weights of a pruned view count: `W[r, c]` is kept iff the bits of `|W[r, c]|`, read
/// as an integer, exceed the floor of row `r` (for non-negative floats, bit order is value
/// order), a row's floor changing at most once, from one column on. That is what a magnitude
/// cut with ties broken by row-major index needs: rows before the boundary weight's row drop
/// its magnitude, rows after keep it, and the boundary's own row changes at its column.
#[derive(Clone, Debug, PartialEq)]
pub struct MagnitudeMask {
    /// One per row of `W`.
    floors: Vec<i32>,
    /// `(row, column, floor)`: from `column` on, row `row` has `floor`; by row, at most one
    /// per row.
    switches: Vec<(usize, usize, i32)>,
}

impl MagnitudeMask {
    /// Floor of a row that keeps every weight.
    pub const KEEP_ALL: i32 = -1;
    /// Floor of a row that drops every weight (no magnitude's bits exceed it).
    pub const DROP_ALL: i32 = i32::MAX;

    /// Every weight of `rows` rows kept.
    pub fn keep_all(rows: usize) -> Self {
        MagnitudeMask {
            floors: vec![Self::KEEP_ALL; rows],
            switches: Vec::new(),
        }
    }

    /// The floor that keeps the magnitudes above `magnitude` (`inclusive`: and equal to it).
    pub fn floor_of(magnitude: f32, inclusive: bool) -> i32 {
        let bits = (magnitude.to_bits() & 0x7fff_ffff) as i32;
        if inclusive { bits - 1 } else { bits }
    }

    /// Gives rows `rows` the floor `floor` (clearing their switches).
    pub fn set_rows(&mut self, rows: std::ops::Range<usize>, floor: i32) {
        self.floors[rows.clone()].fill(floor);
        self.switches.retain(|(r, _, _)| !rows.contains(r));
    }

    /// From column `col` on, row `row` has `floor` (replacing any switch of that row).
    pub fn switch(&mut self, row: usize, col: usize, floor: i32) {
        self.switches.retain(|(r, _, _)| *r != row);
        let at = self.switches.partition_point(|(r, _, _)| *r < row);
        self.switches.insert(at, (row, col, floor));
    }

    /// Calls `block(k0, kc, floors)` for the blocks of at most `max_block` inputs that cover
    /// panel `panel`'s `k` inputs in order, each with its lanes' floors (padding lanes keep
    /// their zeros): a block ends wherever a row of the panel changes floor.
    fn for_blocks(
        &self,
        panel: usize,
        k: usize,
        max_block: usize,
        mut block: impl FnMut(usize, usize, &[i32; NR]),
    ) {
        let rows = panel * NR..((panel + 1) * NR).min(self.floors.len());
        let mut floors = KEEP_ALL;
        floors[..rows.len()].copy_from_slice(&self.floors[rows.clone()]);
        let first = self.switches.partition_point(|(r, _, _)| *r < rows.start);
        let last = self.switches.partition_point(|(r, _, _)| *r < rows.end);
        let switches = &self.switches[first..last];
        let mut k0 = 0;
        while k0 < k {
            let mut end = (k0 + max_block.max(1)).min(k);
            for &(row, col, floor) in switches {
                if col <= k0 {
                    floors[row - rows.start] = floor;
                } else {
                    end = end.min(col);
                }
            }
            block(k0, end - k0, &floors);
            k0 = end;
        }
    }
}

/// `out = stored` with each weight whose magnitude's bits do not exceed its lane's floor
/// zeroed (`stored` and `out` whole panel rows of `NR`).
fn mask_block(kernel: Kernel, stored: &[f32], floors: &[i32; NR], out: &mut [f32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // Safety: AVX-512F was detected at runtime.
        Kernel::Avx512 => unsafe { mask_block_avx512(stored, floors, out) },
        #[cfg(target_arch = "x86_64")]
        // Safety: AVX2 was detected at runtime.
        Kernel::Avx2 => unsafe { mask_block_avx2(stored, floors, out) },
        Kernel::Portable => mask_rows(stored, floors, out),
    }
}

/// [`mask_block`]'s loop, inlined into each instruction set's wrapper (where the `NR`-wide
/// inner loop becomes a compare and a select per vector).
#[inline(always)]
fn mask_rows(stored: &[f32], floors: &[i32; NR], out: &mut [f32]) {
    for (src, dst) in stored.chunks_exact(NR).zip(out.chunks_exact_mut(NR)) {
        for j in 0..NR {
            let v = src[j];
            dst[j] = if (v.to_bits() & 0x7fff_ffff) as i32 > floors[j] {
                v
            } else {
                0.0
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mask_block_avx512(stored: &[f32], floors: &[i32; NR], out: &mut [f32]) {
    mask_rows(stored, floors, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_block_avx2(stored: &[f32], floors: &[i32; NR], out: &mut [f32]) {
    mask_rows(stored, floors, out)
}

/// One sum of [`PackedMatrix::group_sums`]: inputs `members[start..end]` (ascending) of row
/// `row` of `x`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub row: u32,
    pub start: u32,
    pub end: u32,
}

impl PackedMatrix {
    /// Sums of weighted input columns: for each segment, `Σ_{p ∈ members[start..end]}
    /// x[row, p] · W[:, p]`. Returns `[segments, n]` row-major.
    ///
    /// This is a matmul with products kept apart by segment, as CETT's threshold search needs
    /// (what the neurons below each threshold write, per token). Each panel holds `NR` outputs
    /// of every input contiguously, so a segment's sum is `NR` register accumulators fed by one
    /// panel row per member (a panel, `k × NR` floats, stays in L2 while every segment reads
    /// it). Panels are split across threads. (Blocking the inputs for L1 measured slower: a
    /// block then holds only a few members of each of the many segments.)
    pub fn group_sums(
        &self,
        x: &[f32],
        m: usize,
        members: &[u32],
        segments: &[Segment],
    ) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "group_sums: x has the wrong length");
        for seg in segments {
            let list = members.get(seg.start as usize..seg.end as usize);
            assert!(
                (seg.row as usize) < m
                    && list.is_some_and(|l| {
                        l.windows(2).all(|w| w[0] < w[1]) && l.iter().all(|&p| (p as usize) < k)
                    }),
                "group_sums: a segment out of bounds or not ascending"
            );
        }
        // Each member's input, gathered once in the members' order: the panel tasks stream it
        // instead of each reading every token's row again. (The kernel's own time was within
        // the noise either way; with it, each sum goes straight to its output row, with no
        // zeroed output and no per-panel accumulators.)
        // Segment by segment into one buffer: a `flat_map` collect was ≈ 8 % of the call.
        let mut values: Vec<f32> = Vec::with_capacity(members.len());
        for seg in segments {
            let row = &x[seg.row as usize * k..(seg.row as usize + 1) * k];
            values.extend(
                members[seg.start as usize..seg.end as usize]
                    .iter()
                    .map(|&p| row[p as usize]),
            );
        }
        let mut y: Vec<f32> = Vec::with_capacity(segments.len() * n);
        let out = SharedOut(y.as_mut_ptr());
        let kernel = Kernel::detect();
        let weights = self.lines();
        let run_panel = |panel: usize| {
            let b_panel = &weights[panel * k * NR..(panel + 1) * k * NR];
            let col0 = panel * NR;
            let width = NR.min(n - col0);
            // Members come in no order the prefetchers can follow, so their panel rows were
            // each a cache miss from memory: read the panel through once, in order, first,
            // when there are at least as many members as rows (a few read only their own).
            if members.len() >= k {
                touch(b_panel);
            }
            let mut first = 0usize;
            for (i, seg) in segments.iter().enumerate() {
                let list = &members[seg.start as usize..seg.end as usize];
                let vals = &values[first..first + list.len()];
                first += list.len();
                let mut sum = [0f32; NR];
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // Safety: AVX-512F was detected at runtime.
                    Kernel::Avx512 => unsafe {
                        weighted_rows_avx512(vals, list, b_panel, &mut sum)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // Safety: AVX2 and FMA were detected at runtime.
                    Kernel::Avx2 => unsafe { weighted_rows_avx2(vals, list, b_panel, &mut sum) },
                    Kernel::Portable => weighted_rows(vals, list, b_panel, &mut sum),
                }
                // Safety: columns [col0, col0 + width) of output row `i` belong to this
                // panel's task alone, inside `y`'s capacity.
                unsafe {
                    let dst = out.ptr().add(i * n + col0);
                    if width == NR {
                        // A whole panel: two vector stores, not a `memcpy` call.
                        dst.cast::<[f32; NR]>().write_unaligned(sum);
                    } else {
                        std::ptr::copy_nonoverlapping(sum.as_ptr(), dst, width);
                    }
                }
            }
        };
        // A few members (the search's last steps) are not worth waking other threads for.
        if members.len() * n < 1 << 16 {
            (0..n.div_ceil(NR)).for_each(run_panel);
        } else {
            (0..n.div_ceil(NR)).into_par_iter().for_each(run_panel);
        }
        // Safety: the panel tasks wrote every column of every segment's row.
        unsafe { y.set_len(segments.len() * n) };
        y
    }
}

/// Reads one value of every cache line of `data`, in order (the hardware prefetchers then
/// bring the lines in at full bandwidth).
fn touch(data: &[f32]) {
    let mut sum = 0f32;
    for line in data.chunks(16) {
        sum += line[0];
    }
    std::hint::black_box(sum);
}

/// `acc += Σ_j values[j] · panel[list[j]·NR..][..NR]`, each product added by `madd(a, w, c)`
/// (inlined into each instruction set's wrapper, where the `NR`-wide loop becomes vector
/// registers).
#[inline(always)]
fn weighted_rows_by(
    values: &[f32],
    list: &[u32],
    panel: &[f32],
    acc: &mut [f32; NR],
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    // Three independent chains of sums in locals (registers): one chain waits out each
    // multiply-add's latency, and a bounds check's panic path could observe `acc`, which made
    // the compiler store it back after every row.
    let mut sums = [*acc, [0f32; NR], [0f32; NR]];
    let add_row = |sum: &mut [f32; NR], (p, &a): (u32, &f32)| {
        let p = p as usize;
        for (c, &w) in sum.iter_mut().zip(&panel[p * NR..(p + 1) * NR]) {
            *c = madd(a, w, *c);
        }
    };
    let mut chunks = list.chunks_exact(3);
    let mut value_chunks = values.chunks_exact(3);
    for (ps, vs) in (&mut chunks).zip(&mut value_chunks) {
        for ((sum, &p), a) in sums.iter_mut().zip(ps).zip(vs) {
            add_row(sum, (p, a));
        }
    }
    for (&p, a) in chunks.remainder().iter().zip(value_chunks.remainder()) {
        add_row(&mut sums[0], (p, a));
    }
    for j in 0..NR {
        acc[j] = sums[0][j] + sums[1][j] + sums[2][j];
    }
}

/// [`weighted_rows_by`] for CPUs without FMA (where `mul_add` is a slow library call).
fn weighted_rows(values: &[f32], list: &[u32], panel: &[f32], acc: &mut [f32; NR]) {
    weighted_rows_by(values, list, panel, acc, |a, w, c| c + a * w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_avx512(values: &[f32], list: &[u32], panel: &[f32], acc: &mut [f32; NR]) {
    weighted_rows_by(values, list, panel, acc, f32::mul_add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_avx2(values: &[f32], list: &[u32], panel: &[f32], acc: &mut [f32; NR]) {
    weighted_rows_by(values, list, panel, acc, f32::mul_add)
}

thread_local! {
    /// `pack_rows`' output, kept per thread between calls: a fresh multi-megabyte buffer per
    /// matmul costs the kernel's page zeroing. Taken, not borrowed, so a nested call (rayon may
    /// run another task on this thread while it waits) just allocates its own.
    static PACKED_ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Regroups `x: [m, k]` row-major into `ceil(m / group)` blocks laid out `[k][group]` (a short
/// last block zero-padded): `out[(g·k + p)·group + i] = x[(g·group + i)·k + p]`.
fn pack_rows(x: &[f32], m: usize, k: usize, group: usize, out: &mut Vec<f32>) {
    let len = m.div_ceil(group) * k * group;
    // Every element is written below, so the reused buffer is not zeroed first (that was a
    // whole extra pass over it per matmul).
    out.truncate(len);
    out.resize(len, 0.0);
    if k == 0 {
        return;
    }
    out.par_chunks_mut(k * group)
        .zip(x.par_chunks(k * group))
        .with_min_len(4)
        .for_each(|(block, rows)| {
            let n_rows = rows.len() / k;
            for (i, row) in rows.chunks_exact(k).enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    block[p * group + i] = v;
                }
            }
            // A short last block: its missing rows are zeros.
            if n_rows < group {
                for lanes in block.chunks_exact_mut(group) {
                    lanes[n_rows..].fill(0.0);
                }
            }
        });
}

/// How a product's input rows lie in memory.
#[derive(Clone, Copy, Debug)]
enum ALayout {
    /// Regrouped by [`pack_rows`]: a group's rows interleaved, one input at a time.
    Packed,
    /// Row-major, `k` apart.
    RowMajor,
}

impl ALayout {
    /// The distance between two rows of a tile's input, for [`Kernel::run`] (0: packed).
    fn stride(self, k: usize) -> usize {
        match self {
            ALayout::Packed => 0,
            ALayout::RowMajor => k,
        }
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

/// `module::tile::<rows, group, row_major>(args)` for a runtime row count (`1 ..= last`) and
/// input layout: one monomorphised tile for each, so the inner loop branches on neither.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_for_rows {
    ($row_major:expr, $rows:expr, $module:ident, $group:expr, $args:expr,
     [$($r:literal),*], $last:literal) => {{
        let (kc, a, b, c, ldc, sa, pf) = $args;
        match ($row_major, $rows) {
            $((false, $r) => $module::tile::<$r, $group, false>(kc, a, b, c, ldc, sa, pf),)*
            (false, _) => $module::tile::<$last, $group, false>(kc, a, b, c, ldc, sa, pf),
            $((true, $r) => $module::tile::<$r, $group, true>(kc, a, b, c, ldc, sa, pf),)*
            (true, _) => $module::tile::<$last, $group, true>(kc, a, b, c, ldc, sa, pf),
        }
    }};
}

#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 + FMA (AMD EPYC and other CPUs without AVX-512).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// Whether this CPU has AVX-512F (std caches the check).
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the packed kernel on this CPU fuses its multiply-adds (AVX-512, or AVX2 with FMA);
/// code that must match its sums bit for bit fuses exactly when it does.
pub(crate) fn kernel_fuses() -> bool {
    !matches!(Kernel::detect(), Kernel::Portable)
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            return Kernel::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Rows per block of packed `x` (see [`pack_rows`]): what one call of [`Kernel::run`]
    /// takes.
    fn group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => MR,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 6,
            Kernel::Portable => MR,
        }
    }

    /// `c[i·ldc + j] += Σ_{p<kc} a(i, p) · b[p·ldb + j]` for `i < rows`, `j < NR`, with `a`
    /// one block of packed rows (`a(i, p) = a[p·G + i]`, `G = self.group()`) when its `lda`
    /// is 0, else `rows` rows `lda` apart (`a(i, p) = a[i·lda + p]`). With `prefetch`, the
    /// `kc · NR` floats from there are hinted into L2 along the way (a hint: any address is
    /// allowed).
    ///
    /// # Safety
    /// `c` is valid for reads and writes of `NR` floats at each of `rows` rows `ldc` apart,
    /// initialized, and accessed by nothing else during the call.
    // The kernel's whole contract in one call: splitting it would only hide the bounds checked here.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        rows: usize,
        kc: usize,
        (a, lda): (&[f32], usize),
        (b, ldb): (&[f32], usize),
        c: *mut f32,
        ldc: usize,
        start: Start<'_>,
        prefetch: Option<*const f32>,
    ) {
        // The kernels take no hint as a null pointer (and never dereference a hint).
        let hint = |offset: usize| prefetch.map_or(std::ptr::null(), |p| p.wrapping_add(offset));
        let pf = hint(0);
        let group = self.group();
        assert!((1..=group).contains(&rows) && kc >= 1 && ldc >= NR);
        assert!(ldb >= NR && b.len() >= (kc - 1) * ldb + NR);
        if lda == 0 {
            assert!(a.len() >= kc * group);
        } else {
            assert!(lda >= kc && a.len() >= (rows - 1) * lda + kc);
        }
        // The tiles take the start as a flag and a row pointer (null: zero).
        let (accumulate, init) = match start {
            Start::Accumulate => (true, std::ptr::null()),
            Start::Fresh(Some(init)) => {
                assert!(init.len() >= NR);
                (false, init.as_ptr())
            }
            Start::Fresh(None) => (false, std::ptr::null()),
        };
        let sa = (accumulate, init);
        match self {
            #[cfg(target_arch = "x86_64")]
            // Safety: AVX-512F was detected at runtime; the asserts above bound `a` and `b`,
            // the caller `c`.
            Kernel::Avx512 => unsafe {
                let args = (kc, (a, lda), (b, ldb), c, ldc, sa, pf);
                tile_for_rows!(
                    lda != 0,
                    rows,
                    avx512,
                    MR,
                    args,
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                    12
                )
            },
            #[cfg(target_arch = "x86_64")]
            // Safety: AVX2 and FMA were detected at runtime; the asserts above bound `a` and
            // `b`, the caller `c`; each half reads and writes 16 of the panel's `NR` columns.
            Kernel::Avx2 => unsafe {
                for half in [0, 16] {
                    let (b, c, pf) = (&b[half..], c.add(half), hint(half));
                    let sa = (
                        accumulate,
                        if init.is_null() { init } else { init.add(half) },
                    );
                    let args = (kc, (a, lda), (b, ldb), c, ldc, sa, pf);
                    tile_for_rows!(lda != 0, rows, avx2, 6, args, [1, 2, 3, 4, 5], 6)
                }
            },
            Kernel::Portable => {
                for i in 0..rows {
                    // Safety: the caller's contract on `c`.
                    let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
                    match start {
                        Start::Accumulate => {}
                        Start::Fresh(Some(init)) => row.copy_from_slice(&init[..NR]),
                        Start::Fresh(None) => row.fill(0.0),
                    }
                    portable_row(kc, (a, lda), group, i, (b, ldb), row);
                }
            }
        }
    }
}

/// Where a tile's sums start.
#[derive(Clone, Copy, Debug)]
enum Start<'a> {
    /// From what `c` holds (the sums of earlier blocks of inputs).
    Accumulate,
    /// From this row of `NR` values (the bias) in every row, or from zero: `c` is only
    /// written.
    Fresh(Option<&'a [f32]>),
}

/// One row of [`Kernel::run`] in plain Rust: row `i` of a block of `group` packed rows (`lda`
/// 0) or of rows `lda` apart.
fn portable_row(
    kc: usize,
    (a, lda): (&[f32], usize),
    group: usize,
    i: usize,
    (b, ldb): (&[f32], usize),
    acc: &mut [f32],
) {
    for p in 0..kc {
        let av = if lda == 0 {
            a[p * group + i]
        } else {
            a[i * lda + p]
        };
        let b_row = &b[p * ldb..p * ldb + NR];
        for (c, bv) in acc.iter_mut().zip(b_row) {
            *c += av * bv;
        }
    }
}

/// A `ROWS × 2·LANES` tile: two vector accumulators per row, started from `c` (`accumulate`),
/// from the row `init` or from zero, and stored to `c`, the `kc` loop streaming two vectors of
/// one panel row per step (`b` and `c` start at the tile's first column; `b`'s rows are `ldb`
/// apart, `c`'s `ldc`; `a` is read as [`Kernel::run`] says, packed or, with `ROW_MAJOR`, rows
/// `lda` apart). With AVX-512 the tile spans a whole 32-wide panel; with AVX2 half of one, so that 12 accumulators, the two panel vectors
/// and one broadcast fit its 16 registers (a `3 × 32` AVX2 tile needs 17 and spilled to the
/// stack every step, at ~40 % of peak).
#[cfg(target_arch = "x86_64")]
macro_rules! tile {
    ($feature:literal, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident,
     $fmadd:ident) => {
        use std::arch::x86_64::*;

        use super::NR;

        #[target_feature(enable = $feature)]
        pub unsafe fn tile<const ROWS: usize, const GROUP: usize, const ROW_MAJOR: bool>(
            kc: usize,
            (a, lda): (&[f32], usize),
            (b, ldb): (&[f32], usize),
            c: *mut f32,
            ldc: usize,
            (accumulate, init): (bool, *const f32),
            prefetch: *const f32,
        ) {
            let (a, b) = (a.as_ptr(), b.as_ptr());
            // A prefetch never faults, so the hint may point past the weights (it is formed
            // with `wrapping_add`, never `add`); null means none.
            let wanted = !prefetch.is_null();
            // Safety (whole body): the caller checked every bound (see `Kernel::run`).
            unsafe {
                let mut acc0 = [$zero(); ROWS];
                let mut acc1 = [$zero(); ROWS];
                if accumulate {
                    for i in 0..ROWS {
                        acc0[i] = $load(c.add(i * ldc));
                        acc1[i] = $load(c.add(i * ldc + $lanes));
                    }
                } else if !init.is_null() {
                    let (i0, i1) = ($load(init), $load(init.add($lanes)));
                    acc0 = [i0; ROWS];
                    acc1 = [i1; ROWS];
                }
                for p in 0..kc {
                    if wanted {
                        // One 64-byte line per 16 floats of the tile's width.
                        for line in (0..2 * $lanes).step_by(16) {
                            let at = prefetch.wrapping_add(p * NR + line);
                            _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
                        }
                    }
                    let b0 = $load(b.add(p * ldb));
                    let b1 = $load(b.add(p * ldb + $lanes));
                    for i in 0..ROWS {
                        let at = if ROW_MAJOR {
                            i * lda + p
                        } else {
                            p * GROUP + i
                        };
                        let av = $set1(*a.add(at));
                        acc0[i] = $fmadd(av, b0, acc0[i]);
                        acc1[i] = $fmadd(av, b1, acc1[i]);
                    }
                }
                for i in 0..ROWS {
                    $store(c.add(i * ldc), acc0[i]);
                    $store(c.add(i * ldc + $lanes), acc1[i]);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    tile!(
        "avx512f",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    tile!(
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
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

    /// Deterministic `W: [n, k]` and `x: [m, k]` of no particular meaning.
    fn weights_and_inputs(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let x = (0..m * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        (w, x)
    }

    /// Each segment's sum equals the naive weighted sum of its members' columns, on a width
    /// that leaves a narrow last panel.
    #[test]
    fn group_sums_match_naive_sums() {
        let (m, n, k) = (3, 45, 300);
        let (w, x) = weights_and_inputs(m, n, k);
        let packed = PackedMatrix::from_rows(&w, n, k);
        // Row 0: every input; row 2: every third; row 1: one input, then an empty segment.
        let mut members: Vec<u32> = (0..k as u32).collect();
        members.extend((0..k as u32).step_by(3));
        members.push(137);
        let segments = [
            Segment {
                row: 0,
                start: 0,
                end: k as u32,
            },
            Segment {
                row: 2,
                start: k as u32,
                end: (k + 100) as u32,
            },
            Segment {
                row: 1,
                start: (k + 100) as u32,
                end: (k + 101) as u32,
            },
            Segment {
                row: 1,
                start: (k + 101) as u32,
                end: (k + 101) as u32,
            },
        ];
        let sums = packed.group_sums(&x, m, &members, &segments);
        assert_eq!(sums.len(), segments.len() * n);
        for (s, seg) in segments.iter().enumerate() {
            for j in 0..n {
                let expected: f64 = members[seg.start as usize..seg.end as usize]
                    .iter()
                    .map(|&p| {
                        x[seg.row as usize * k + p as usize] as f64 * w[j * k + p as usize] as f64
                    })
                    .sum();
                let got = sums[s * n + j] as f64;
                assert!(
                    (got - expected).abs() <= 1e-3 * (1.0 + expected.abs()),
                    "{s} {j}"
                );
            }
        }
        let norms = packed.column_norms();
        let expected = (0..k).map(|p| {
            (0..n)
                .map(|j| (w[j * k + p] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        });
        for (a, b) in norms.iter().zip(expected) {
            assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b));
        }
    }

    /// Rows packed as they arrive, in pieces that do not line up with the panels, give the
    /// same matrix as packing them all at once; a piece's error stops the packing.
    #[test]
    fn rows_packed_piecewise_equal_rows_packed_at_once() {
        let (n, k) = (77, 9);
        let rows = weights_and_inputs(1, n, k).0;
        let whole = PackedMatrix::from_rows(&rows, n, k);
        for piece_rows in [1, 5, 32, 40, 77, 100] {
            let mut asked = Vec::new();
            let pieced = PackedMatrix::from_row_pieces(n, k, piece_rows, |first, count| {
                asked.push((first, count));
                Ok::<_, ()>(rows[first * k..(first + count) * k].to_vec())
            })
            .unwrap();
            assert_eq!(pieced.panels, whole.panels, "pieces of {piece_rows}");
            assert_eq!(asked.iter().map(|(_, c)| c).sum::<usize>(), n);
        }
        let failed = PackedMatrix::from_row_pieces(n, k, 10, |first, _| {
            if first >= 30 {
                Err(first)
            } else {
                Ok(vec![0.0; 10 * k])
            }
        });
        assert_eq!(failed.err(), Some(30));
    }

    #[test]
    fn stacked_matrices_are_their_rows_one_after_another() {
        let k = 7;
        // Whole panels joined directly, and a part that ends mid-panel (repacked).
        for sizes in [&[64, 32, 5][..], &[33, 32], &[3]] {
            let parts: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let rows = weights_and_inputs(1, n, k).0;
                    rows.into_iter().map(|v| v + i as f32).collect()
                })
                .collect();
            let packed: Vec<PackedMatrix> = parts
                .iter()
                .zip(sizes)
                .map(|(rows, &n)| PackedMatrix::from_rows(rows, n, k))
                .collect();
            let stacked = PackedMatrix::stack(&packed.iter().collect::<Vec<_>>());
            let all = PackedMatrix::from_rows(&parts.concat(), sizes.iter().sum(), k);
            assert_eq!((stacked.rows(), stacked.cols()), (all.rows(), k));
            assert_eq!(stacked.panels, all.panels, "{sizes:?}");
        }
    }

    /// Whether `mask` keeps `W[r, c] = value`, by its definition (one weight at a time).
    fn keeps(mask: &MagnitudeMask, r: usize, c: usize, value: f32) -> bool {
        let floor = match mask.switches.iter().find(|(row, _, _)| *row == r) {
            Some(&(_, from, floor)) if c >= from => floor,
            _ => mask.floors[r],
        };
        (value.to_bits() & 0x7fff_ffff) as i32 > floor
    }

    /// A masked view multiplies as its kept weights written out would, with floors per row
    /// and switches inside, at and across the blocks' edges; its readers see the same zeros,
    /// and the matrix it views is unchanged.
    #[test]
    fn masked_views_multiply_as_their_kept_weights() {
        let (m, n, k) = (14, 45, 700);
        let (w, x) = weights_and_inputs(m, n, k);
        let dense = PackedMatrix::from_rows(&w, n, k);
        let mut mask = MagnitudeMask::keep_all(n);
        mask.set_rows(3..20, MagnitudeMask::floor_of(0.8, false));
        mask.set_rows(20..21, MagnitudeMask::DROP_ALL);
        mask.set_rows(33..45, MagnitudeMask::floor_of(1.2, true));
        for (row, col) in [
            (4, 100),
            (5, KC),
            (6, KC + 1),
            (34, 0),
            (40, k - 1),
            (41, 2 * KC - 1),
        ] {
            mask.switch(row, col, MagnitudeMask::floor_of(0.4, true));
        }
        let view = dense.with_mask(std::sync::Arc::new(mask.clone())).unwrap();
        let kept: Vec<f32> = (0..n * k)
            .map(|i| {
                let (r, c) = (i / k, i % k);
                if keeps(&mask, r, c, w[i]) { w[i] } else { 0.0 }
            })
            .collect();
        assert!(kept.iter().filter(|&&v| v == 0.0).count() > n * k / 4);
        let written = PackedMatrix::from_rows(&kept, n, k);
        assert_eq!(view.matmul_t(&x, m, None), written.matmul_t(&x, m, None));
        assert_eq!(view.values(), written.values());
        assert_eq!(view.row(40), written.row(40));
        assert_eq!(view.column_norms(), written.column_norms());
        assert_eq!(dense.row(20), w[20 * k..21 * k].to_vec());
        for offset in [0, 31, 32 * k, 32 * k + 13 + 5 * NR] {
            let (r, c) = dense.position(offset);
            assert_eq!(dense.offset(r, c), offset);
        }
        assert!(
            dense
                .with_mask(std::sync::Arc::new(MagnitudeMask::keep_all(3)))
                .is_err()
        );
    }

    #[test]
    fn columns_read_in_place_multiply_as_the_transposed_matrix() {
        // M: [k, stride], of which W = (first n columns)ᵀ: [n, k].
        let (m, n, k, stride) = (13, 64, 45, 96);
        let (data, _) = weights_and_inputs(1, k, stride);
        let (_, x) = weights_and_inputs(m, 1, k);
        let x = &x[..];
        let w: Vec<f32> = (0..n)
            .flat_map(|o| (0..k).map(move |i| (o, i)))
            .map(|(o, i)| data[i * stride + o])
            .collect();
        let view = Panels::columns_of(&data, n, k, stride).unwrap();
        let packed = PackedMatrix::from_rows(&w, n, k);
        assert_eq!(
            view.matmul_t_unpacked(x, m, None),
            packed.matmul_t(x, m, None)
        );
        // Not whole panels, or rows that would run past the data: no view.
        assert!(Panels::columns_of(&data, 40, k, stride).is_none());
        assert!(Panels::columns_of(&data[..data.len() - 40], n, k, stride).is_none());
        assert!(Panels::columns_of(&data, n, k, 32).is_none());
    }

    #[test]
    fn matches_naive_product_on_awkward_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (64, 96, 40),
            (5, 31, 129),
            (25, 64, 3),
            (30, 40, 700),
        ] {
            let (w, x) = weights_and_inputs(m, n, k);
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let packed =
                PackedMatrix::pack(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap())
                    .unwrap();
            // With a bias (whole panels start from it in registers) and without (from zero).
            for bias in [Some(bias.as_slice()), None] {
                let ours = packed.matmul_t(&x, m, bias);
                let expected = reference(&x, &w, m, n, k, bias);
                for (a, b) in ours.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{m}x{n}x{k}, bias {}: {a} vs {b}",
                        bias.is_some()
                    );
                }
                // Rows read where they lie: the same sums in the same order, so equal bits.
                assert_eq!(packed.matmul_t_unpacked(&x, m, bias), ours, "{m}x{n}x{k}");
            }
            let mut portable = vec![0f32; MR * NR];
            let b = &packed.panels[..k * NR];
            let mut a = Vec::new();
            pack_rows(&x, m, k, MR, &mut a);
            for (i, row) in portable.chunks_exact_mut(NR).take(m.min(MR)).enumerate() {
                portable_row(k, (&a, 0), MR, i, (b, NR), row);
            }
            // The same rows read where they lie in `x`.
            let mut row_major = vec![0f32; MR * NR];
            for (i, row) in row_major.chunks_exact_mut(NR).take(m.min(MR)).enumerate() {
                portable_row(k, (&x, k), MR, i, (b, NR), row);
            }
            assert_eq!(row_major, portable);
            let expected_nobias = reference(&x, &w, m, n, k, None);
            for i in 0..m.min(MR) {
                for j in 0..n.min(NR) {
                    let e = expected_nobias[i * n + j];
                    assert!((portable[i * NR + j] - e).abs() <= 1e-4 * (1.0 + e.abs()));
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
