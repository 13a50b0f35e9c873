//! What a fused GEMM does around its product, whatever its precision (the one driver,
//! [`matmul`](super::matmul), for the f32, bf16 and int8 kernels, each with its reference twin
//! in [`reference`](super::reference)): the prologue applied to each input row (LayerNorm's
//! normalisation, GRN's per-sample scale), the epilogue applied to each output row (activation,
//! residual), and GRN's sums of squares accumulated as the rows are written, in a fixed order
//! whatever the tiling or the thread split.

use super::Activation;

/// Mean and biased variance of `n` values read through `get`, in f64 (two passes).
pub(super) fn mean_var(n: usize, get: impl Fn(usize) -> f32) -> (f64, f64) {
    let mean = (0..n).map(|i| get(i) as f64).sum::<f64>() / n as f64;
    let var = (0..n)
        .map(|i| {
            let d = get(i) as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n as f64;
    (mean, var)
}

/// Rows per block of the fixed-order sum-of-squares reduction.
pub const SUM_SQUARES_BLOCK: usize = 64;

/// The segment (see
/// [`sum_squares_partials`](super::reference::sum_squares_partials)) of global row `row`,
/// numbered from 0: one per multiple of [`SUM_SQUARES_BLOCK`] and per sample boundary that
/// is not one of those.
pub fn sum_squares_segment(row: usize, rows_per_sample: usize) -> usize {
    segment_of(
        row,
        rows_per_sample,
        aligned_boundary_period(rows_per_sample),
    )
}

/// Every how many sample boundaries one falls on a block multiple: `BLOCK / gcd(P, BLOCK)`.
fn aligned_boundary_period(rows_per_sample: usize) -> usize {
    let (mut a, mut b) = (rows_per_sample, SUM_SQUARES_BLOCK);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    SUM_SQUARES_BLOCK / a
}

/// [`sum_squares_segment`] with the period precomputed (called per output row segment).
#[inline]
fn segment_of(row: usize, rows_per_sample: usize, period: usize) -> usize {
    let samples = row / rows_per_sample;
    row / SUM_SQUARES_BLOCK + samples - samples / period
}

/// Per-segment partial sums of squares that a kernel's epilogue accumulates as it writes
/// output rows (GRN's statistics, without a second pass over the output), for `rows` rows
/// from global row `first_row` and `width` columns. Within a segment each column's squares
/// are added in row order, and [`SquareSums::combine_into`] adds the segments to per-sample
/// sums in order: the same bits as
/// [`sum_squares_into`](super::reference::sum_squares_into), whatever the tiling, provided
/// regions of a split start at multiples of the block (or split the columns).
#[derive(Debug)]
pub struct SquareSums<'a> {
    /// `[segments, width]`.
    partials: &'a mut [f64],
    first_row: usize,
    rows: usize,
    first_segment: usize,
    rows_per_sample: usize,
    /// [`aligned_boundary_period`] of `rows_per_sample`.
    period: usize,
    width: usize,
}

/// `partials[i] += values[i]^2` in f64 (a product, then a sum: no fused multiply-add, so
/// every instruction set gives the same bits), on the widest vectors the CPU has: the GEMM
/// epilogue calls it for every output row that feeds a GRN.
#[inline]
pub fn add_squares(partials: &mut [f64], values: &[f32]) {
    assert_eq!(partials.len(), values.len());
    match super::Isa::detect().width() {
        super::Width::Portable => add_squares_lanes(partials, values),
        // SAFETY: `Isa::detect` names only an instruction set the CPU supports, and both x86
        // widths have AVX2.
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx2 => unsafe { add_squares_avx2(partials, values) },
        // SAFETY: as above, AVX-512F.
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx512 => unsafe { add_squares_avx512(partials, values) },
    }
}

#[inline(always)]
fn add_squares_lanes(partials: &mut [f64], values: &[f32]) {
    for (p, &v) in partials.iter_mut().zip(values) {
        *p += v as f64 * v as f64;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_squares_avx2(partials: &mut [f64], values: &[f32]) {
    add_squares_lanes(partials, values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_squares_avx512(partials: &mut [f64], values: &[f32]) {
    add_squares_lanes(partials, values)
}

impl<'a> SquareSums<'a> {
    /// Segments covered by `rows` rows from global row `first_row`.
    pub fn segment_count(first_row: usize, rows: usize, rows_per_sample: usize) -> usize {
        if rows == 0 {
            return 0;
        }
        sum_squares_segment(first_row + rows - 1, rows_per_sample)
            - sum_squares_segment(first_row, rows_per_sample)
            + 1
    }

    /// Zeroed partials in `buffer`, which holds exactly
    /// `segment_count(first_row, rows, rows_per_sample) * width` values.
    pub fn new(
        buffer: &'a mut [f64],
        first_row: usize,
        rows: usize,
        rows_per_sample: usize,
        width: usize,
    ) -> SquareSums<'a> {
        assert_eq!(
            buffer.len(),
            Self::segment_count(first_row, rows, rows_per_sample) * width
        );
        buffer.fill(0.0);
        SquareSums {
            partials: buffer,
            first_row,
            rows,
            first_segment: sum_squares_segment(first_row, rows_per_sample),
            rows_per_sample,
            period: aligned_boundary_period(rows_per_sample),
            width,
        }
    }

    /// Adds the squares of `values`: row `row` of the region (global row `first_row + row`),
    /// columns `col..col + values.len()`.
    #[inline]
    pub fn add(&mut self, row: usize, col: usize, values: &[f32]) {
        assert!(row < self.rows && col + values.len() <= self.width);
        let segment = segment_of(self.first_row + row, self.rows_per_sample, self.period)
            - self.first_segment;
        let at = segment * self.width + col;
        add_squares(&mut self.partials[at..at + values.len()], values);
    }

    /// [`SquareSums::add`] of `rows` rows from region row `row`, each `cols` values of
    /// `values` at a stride of `ld`: the rows of one output tile, the segment found once per
    /// run of rows inside it (the same additions in the same order).
    #[inline]
    pub fn add_rows(
        &mut self,
        row: usize,
        col: usize,
        values: &[f32],
        (ld, rows, cols): (usize, usize, usize),
    ) {
        assert!(row + rows <= self.rows && col + cols <= self.width);
        let mut r = 0;
        while r < rows {
            let global = self.first_row + row + r;
            let segment =
                segment_of(global, self.rows_per_sample, self.period) - self.first_segment;
            // The segment ends at the next block multiple or sample boundary.
            let block_end = (global / SUM_SQUARES_BLOCK + 1) * SUM_SQUARES_BLOCK;
            let sample_end = (global / self.rows_per_sample + 1) * self.rows_per_sample;
            let run = (block_end.min(sample_end) - global).min(rows - r);
            let at = segment * self.width + col;
            for i in r..r + run {
                add_squares(
                    &mut self.partials[at..at + cols],
                    &values[i * ld..i * ld + cols],
                );
            }
            r += run;
        }
    }

    /// Adds the partials, segment by segment in order, to `sums` (`[batch, n]`), columns
    /// `col0..col0 + width`.
    pub fn combine_into(&self, sums: &mut [f64], n: usize, col0: usize) {
        combine_square_sums(
            self.partials,
            self.first_row,
            self.rows,
            self.rows_per_sample,
            self.width,
            sums,
            n,
            col0,
        )
    }
}

/// [`SquareSums::combine_into`] for partials (`[segments, width]`, as a [`SquareSums`] over
/// those rows left them) whose borrow has ended.
#[allow(clippy::too_many_arguments)]
pub fn combine_square_sums(
    partials: &[f64],
    first_row: usize,
    rows: usize,
    rows_per_sample: usize,
    width: usize,
    sums: &mut [f64],
    n: usize,
    col0: usize,
) {
    let (per, end) = (rows_per_sample, first_row + rows);
    assert_eq!(
        partials.len(),
        SquareSums::segment_count(first_row, rows, per) * width
    );
    let first_segment = sum_squares_segment(first_row, per);
    let mut r = first_row;
    while r < end {
        let sample = r / per;
        let segment = sum_squares_segment(r, per) - first_segment;
        let partial = &partials[segment * width..(segment + 1) * width];
        let at = sample * n + col0;
        for (s, p) in sums[at..at + width].iter_mut().zip(partial) {
            *s += p;
        }
        r = ((r / SUM_SQUARES_BLOCK + 1) * SUM_SQUARES_BLOCK)
            .min((sample + 1) * per)
            .min(end);
    }
}

/// A per-sample channel scale for the rows of a fused linear layer.
#[derive(Debug, Clone, Copy)]
pub struct RowScale<'a> {
    /// `[batch, in_features]`.
    pub values: &'a [f32],
    /// Rows per sample (the pixels of one image).
    pub rows_per_sample: usize,
    /// Index, in the whole batch, of the first row passed to the kernel.
    pub first_row: usize,
}

/// What a fused linear layer does to each input row before the product.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearPrologue<'a> {
    /// Normalise the row (LayerNorm without affine part) with this eps.
    pub norm_eps: Option<f64>,
    /// Multiply the row by its sample's slice of a `[batch, in_features]` scale.
    pub scale: Option<RowScale<'a>>,
}

impl LinearPrologue<'_> {
    /// Whether the prologue changes the rows at all.
    pub fn is_identity(&self) -> bool {
        self.norm_eps.is_none() && self.scale.is_none()
    }

    /// Applies the prologue to row `r` (counted from the first row passed to the kernel).
    pub fn apply(&self, r: usize, row: &mut [f32]) {
        let n = row.len();
        if let Some(eps) = self.norm_eps {
            let (mean, var) = mean_var(n, |c| row[c]);
            let inv_std = 1.0 / (var + eps).sqrt();
            row.iter_mut()
                .for_each(|v| *v = ((*v as f64 - mean) * inv_std) as f32);
        }
        if let Some(scale) = self.scale {
            let sample = (scale.first_row + r) / scale.rows_per_sample;
            let s = &scale.values[sample * n..(sample + 1) * n];
            row.iter_mut().zip(s).for_each(|(v, &k)| *v *= k);
        }
    }

    /// For a scale-only prologue, row `r`'s scale (`n` values): what [`LinearPrologue::apply`]
    /// multiplies the row by, for a kernel that fuses the product into its own pass.
    pub fn scale_only(&self, r: usize, n: usize) -> Option<&[f32]> {
        match (self.norm_eps, self.scale) {
            (None, Some(scale)) => {
                let sample = (scale.first_row + r) / scale.rows_per_sample;
                Some(&scale.values[sample * n..(sample + 1) * n])
            }
            _ => None,
        }
    }

    /// [`LinearPrologue::apply`] of row `r` read from `src`, written to `dst`: the same
    /// operations (same bits), a scale-only prologue in one pass instead of a copy and a pass.
    pub fn apply_from(&self, r: usize, src: &[f32], dst: &mut [f32]) {
        match (self.norm_eps, self.scale) {
            (None, Some(scale)) => {
                let n = src.len();
                let sample = (scale.first_row + r) / scale.rows_per_sample;
                let s = &scale.values[sample * n..(sample + 1) * n];
                for ((d, &v), &k) in dst.iter_mut().zip(src).zip(s) {
                    *d = v * k;
                }
            }
            _ => {
                dst.copy_from_slice(src);
                self.apply(r, dst);
            }
        }
    }
}

/// What a fused linear layer does to each output row after the bias.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearEpilogue<'a> {
    pub activation: Option<Activation>,
    /// The optimised kernels' implementation of `activation` (default: the runtime's).
    pub kernel: Option<super::ActivationKernel>,
    /// Added last, elementwise: `[rows, out_features]`.
    pub residual: Option<&'a [f32]>,
}
