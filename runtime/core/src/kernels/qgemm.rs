//! Int8 GEMM for the 1x1 convolutions and the downsampling convs (as GEMMs over patches):
//! the optimised twin of [`reference::qlinear_fused`](super::reference::qlinear_fused), in
//! [`quantize`](super::quantize)'s scheme.
//!
//! Weights are quantised and packed once, at load, into `NR`-column panels laid out
//! `[K / 4][NR][4]` (`K` padded to a multiple of 4 with zeros): one 4-byte group per column
//! per step, what `vpdpbusd` and `vpmaddubsw` multiply. Activations are quantised row by row
//! while a block of A is packed (the f32 prologue, LayerNorm's normalisation or GRN's scale,
//! runs first on the row in L1; no extra pass over the activation in memory). The
//! microkernels compute an `MR x NR` tile of exact i32 sums over all of `K` (no `K` blocks:
//! a panel of 3072 x 32 bytes stays in L2), dequantise it in registers (`f32(acc - z *
//! colsum) * (s_a * s_w)`) and end in the f32 GEMM's epilogue ([`gemm`]'s `store`: bias,
//! exact GELU, residual), so every kernel gives the reference twin's bits:
//!
//! | kernel | tile | per 4-deep step of one row and 16 columns |
//! |---|---|---|
//! | AVX-512 VNNI | 6 x 32 | one `vpdpbusd` (zmm, 64 multiply-adds) |
//! | AVX-VNNI | 6 x 16 | two `vpdpbusd` (ymm) |
//! | AVX2 | 6 x 16 | `vpmaddubsw` + `vpmaddwd` + `vpaddd`, twice (ymm); weights at most 63 |
//! | portable | 4 x 16 | plain loops |

use super::fused::{LinearEpilogue, LinearPrologue, SquareSums};
use super::gemm::{tile_to_c, TileEpilogue};
use super::quantize::{quantise_row, weight_max, QuantisedWeights, RowQuant};
use super::{ActivationKernel, Isa};

/// Bytes of quantised A per row block: the block stays in L2 while every panel streams past
/// it.
const BLOCK_BYTES: usize = 256 * 1024;

/// At most this many rows per block (a multiple of every kernel's `MR`).
const MAX_BLOCK_ROWS: usize = 192;

/// The f32 row the prologue writes before quantisation: scratch of at least this many floats
/// (every `K` of a ConvNeXt V2 up to huge's 11264), for the reason given in
/// [`qlinear_fused_packed_panels`].
const ROW_SCRATCH: usize = 16 * 1024;

/// (MR, NR): the tile one int8 microkernel call computes on `isa`.
pub fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Portable => (4, 16),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => (6, 16),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => (6, 16),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => (6, 32),
    }
}

/// A weight `[N, K]` quantised per output channel and packed into `isa`'s int8 panels, with
/// the scales and column sums the epilogue needs.
#[derive(Debug, Clone)]
pub struct QPackedWeights {
    pub isa: Isa,
    pub n: usize,
    pub k: usize,
    /// `K` rounded up to a multiple of 4.
    kp: usize,
    nr: usize,
    /// `ceil(N / NR)` panels of `kp / 4 x NR x 4` bytes.
    data: Vec<i8>,
    /// `s_w` per column, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// `sum_k q_w` per column, padded likewise.
    col_sums: Vec<i32>,
    /// The largest weight magnitude ([`weight_max`] of `isa`).
    pub q_max: i32,
}

impl QPackedWeights {
    /// Quantises `weight` (`[n, k]`, row-major) for `isa`'s kernel and packs it.
    pub fn pack(weight: &[f32], n: usize, k: usize, isa: Isa) -> QPackedWeights {
        Self::from_quantised(&QuantisedWeights::new(weight, n, k, weight_max(isa)), isa)
    }

    /// Packs weights already quantised (with at most [`weight_max`] of `isa`).
    pub fn from_quantised(q: &QuantisedWeights, isa: Isa) -> QPackedWeights {
        // The microkernels' safety rests on this: packed weights exist only for kernels the
        // CPU runs.
        assert!(
            Isa::available().contains(&isa),
            "{isa:?} is not supported by this CPU"
        );
        assert!(q.q_max <= weight_max(isa), "weights too wide for {isa:?}");
        let (n, k) = (q.n, q.k);
        let nr = tile(isa).1;
        let kp = k.next_multiple_of(4);
        let panels = n.div_ceil(nr);
        let mut data = vec![0i8; panels * kp * nr];
        let mut scales = vec![0f32; panels * nr];
        let mut col_sums = vec![0i32; panels * nr];
        for col in 0..n {
            let (p, j) = (col / nr, col % nr);
            let panel = &mut data[p * kp * nr..(p + 1) * kp * nr];
            for (kk, &v) in q.q[col * k..(col + 1) * k].iter().enumerate() {
                panel[(kk / 4) * nr * 4 + j * 4 + kk % 4] = v;
            }
            scales[col] = q.scales[col];
            col_sums[col] = q.col_sums[col];
        }
        QPackedWeights {
            isa,
            n,
            k,
            kp,
            nr,
            data,
            scales,
            col_sums,
            q_max: q.q_max,
        }
    }

    /// Number of `NR`-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// `NR`: columns per panel.
    pub fn panel_width(&self) -> usize {
        self.nr
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.kp * self.nr..(p + 1) * self.kp * self.nr]
    }

    /// Rows of A per quantised block.
    fn block_rows(&self) -> usize {
        let mr = tile(self.isa).0;
        let rows = (BLOCK_BYTES / self.kp.max(1)).clamp(mr, MAX_BLOCK_ROWS);
        rows - rows % mr
    }
}

/// `out = epilogue(dequantise(quantise(prologue(x)) . q_w))` for `rows` rows of `x`
/// (`[rows, K]`): [`reference::qlinear_fused`](super::reference::qlinear_fused)'s bits.
#[allow(clippy::too_many_arguments)]
pub fn qlinear_fused_packed(
    x: &[f32],
    rows: usize,
    w: &QPackedWeights,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut SquareSums<'_>>,
) {
    qlinear_fused_packed_panels(
        x,
        rows,
        w,
        0..w.panels(),
        bias,
        prologue,
        epilogue,
        out,
        sums,
    )
}

/// [`qlinear_fused_packed`] for the output columns of `panels` only: `out` is `[rows,
/// cols]` for those columns; `bias` and `epilogue.residual` cover all `N` columns, `sums`
/// only these. Splitting the columns over threads this way changes no result. A block of
/// rows at a time is quantised (into per-thread scratch), then multiplied.
#[allow(clippy::too_many_arguments)]
pub fn qlinear_fused_packed_panels(
    x: &[f32],
    rows: usize,
    w: &QPackedWeights,
    panels: std::ops::Range<usize>,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    mut sums: Option<&mut SquareSums<'_>>,
) {
    let (k, n, kp) = (w.k, w.n, w.kp);
    let width = (panels.end * w.nr).min(n) - panels.start * w.nr;
    assert_eq!(x.len(), rows * k);
    assert_eq!(out.len(), rows * width);
    let block = w.block_rows().min(rows.max(1));
    // Scratch of the largest size any layer asks for (a block is at most BLOCK_BYTES and 192
    // rows unless K is huge): a thread that takes another thread's task in a later pass
    // (the pool's stealing) finds its buffers big enough, so a warm pass allocates nothing.
    let data_len = (block * kp).max(BLOCK_BYTES);
    let quants_len = block.max(MAX_BLOCK_ROWS);
    crate::scratch::with_u8(data_len, |data| {
        crate::scratch::with_row_quants(quants_len, |quants| {
            for m0 in (0..rows).step_by(block) {
                let mb = block.min(rows - m0);
                let (data, quants) = (&mut data[..mb * kp], &mut quants[..mb]);
                quantise_rows(&x[m0 * k..(m0 + mb) * k], k, prologue, m0, data, quants);
                let a = QuantisedRows { data, quants, kp };
                qgemm_panels(
                    a,
                    w,
                    panels.clone(),
                    bias,
                    epilogue
                        .activation
                        .map(|act| epilogue.kernel.unwrap_or(ActivationKernel::of(act))),
                    epilogue.residual.map(|r| &r[m0 * n..(m0 + mb) * n]),
                    &mut out[m0 * width..(m0 + mb) * width],
                    sums.as_deref_mut().map(|s| (s, m0)),
                );
            }
        })
    })
}

/// The bytes [`quantise_rows`] writes per row: `k` rounded up to a multiple of 4.
pub fn padded_k(k: usize) -> usize {
    k.next_multiple_of(4)
}

/// Rows of A quantised for the int8 GEMM: [`padded_k`] bytes each, and each row's scale and
/// zero point.
#[derive(Clone, Copy)]
pub struct QuantisedRows<'a> {
    pub data: &'a [u8],
    pub quants: &'a [RowQuant],
    pub kp: usize,
}

/// Quantises the rows of `x` (`[rows, k]`) after the prologue (row `i` of `x` is the
/// prologue's row `first + i`) into `data` (`rows x padded_k(k)`) and `quants` (`rows`).
pub fn quantise_rows(
    x: &[f32],
    k: usize,
    prologue: LinearPrologue<'_>,
    first: usize,
    data: &mut [u8],
    quants: &mut [RowQuant],
) {
    let kp = padded_k(k);
    let rows = quants.len();
    assert_eq!(x.len(), rows * k);
    assert_eq!(data.len(), rows * kp);
    let row_len = if prologue.is_identity() {
        0
    } else {
        k.max(ROW_SCRATCH)
    };
    crate::scratch::with_f32(row_len, |row| {
        let row = &mut row[..row_len.min(k)];
        let dst = data.chunks_exact_mut(kp.max(1)).zip(quants.iter_mut());
        for (i, (src, (dst, quant))) in x.chunks_exact(k.max(1)).zip(dst).enumerate() {
            *quant = if prologue.is_identity() {
                quantise_row(src, dst)
            } else {
                prologue.apply_from(first + i, src, row);
                quantise_row(row, dst)
            };
        }
    })
}

/// The int8 product of quantised rows `a` and the output columns of `panels`: `out` is
/// `[rows, cols]` for those columns, `bias` covers all `N` columns, `residual` is `[rows, N]`;
/// with `sums`, the squares of the outputs go to its rows from the given one.
#[allow(clippy::too_many_arguments)]
pub fn qgemm_panels(
    a: QuantisedRows<'_>,
    w: &QPackedWeights,
    panels: std::ops::Range<usize>,
    bias: &[f32],
    activation: Option<ActivationKernel>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    mut sums: Option<super::gemm::SumsSink<'_, '_>>,
) {
    let (n, kp, nr) = (w.n, w.kp, w.nr);
    let mr = tile(w.isa).0;
    let rows = a.quants.len();
    let col0 = panels.start * nr;
    let width = (panels.end * nr).min(n) - col0;
    assert_eq!(a.kp, kp);
    assert_eq!(a.data.len(), rows * kp);
    assert_eq!(out.len(), rows * width);
    assert_eq!(bias.len(), n);
    if let Some(r) = residual {
        assert_eq!(r.len(), rows * n);
    }
    // Row blocks: a block's quantised rows stay in L2 while the panels stream past.
    let block = w.block_rows();
    for m0 in (0..rows).step_by(block) {
        let mb = block.min(rows - m0);
        for p in panels.clone() {
            let cols = nr.min(n - p * nr);
            for r0 in (m0..m0 + mb).step_by(mr) {
                let tile_rows = mr.min(m0 + mb - r0);
                let at = r0 * width + p * nr - col0;
                let tile = QTile {
                    a: &a.data[r0 * kp..(m0 + mb) * kp],
                    lda: kp,
                    rows: tile_rows,
                    kp,
                    panel: w.panel(p),
                    quants: &a.quants[r0..m0 + mb],
                    col_sums: &w.col_sums[p * nr..(p + 1) * nr],
                    scales: &w.scales[p * nr..(p + 1) * nr],
                    c: &mut out[at..],
                    ldc: width,
                    cols,
                    epilogue: TileEpilogue {
                        bias: &bias[p * nr..p * nr + cols],
                        activation,
                        residual: residual.map(|r| (&r[r0 * n + p * nr..], n)),
                    },
                };
                microkernel(w.isa, tile);
                if let Some((sums, row0)) = sums.as_mut() {
                    for i in 0..tile_rows {
                        let y = &out[at + i * width..][..cols];
                        sums.add(*row0 + r0 + i, p * nr - col0, y);
                    }
                }
            }
        }
    }
}

/// One microkernel call: the `rows x cols` tile of C at `c` (row stride `ldc`) gets the
/// dequantised `sum_k a[i * lda + k] panel[k / 4][j][k % 4]` of every row `i` and column `j`,
/// then the epilogue.
struct QTile<'t> {
    /// Quantised rows, `kp` bytes each, row `i` at `i * lda`.
    a: &'t [u8],
    lda: usize,
    rows: usize,
    kp: usize,
    /// `kp / 4 x NR x 4`.
    panel: &'t [i8],
    /// Each row's scale and zero point.
    quants: &'t [RowQuant],
    /// The panel's `NR` column sums and scales.
    col_sums: &'t [i32],
    scales: &'t [f32],
    c: &'t mut [f32],
    ldc: usize,
    cols: usize,
    epilogue: TileEpilogue<'t>,
}

impl QTile<'_> {
    /// The sizes every kernel relies on (its memory safety too): checked once per call.
    fn check(&self, mr: usize, nr: usize) {
        assert!((1..=mr).contains(&self.rows) && (1..=nr).contains(&self.cols));
        assert!(self.kp.is_multiple_of(4) && self.kp <= self.lda);
        assert!(self.a.len() >= (self.rows - 1) * self.lda + self.kp);
        assert!(self.panel.len() >= self.kp * nr);
        assert!(self.quants.len() >= self.rows);
        assert!(self.col_sums.len() >= nr && self.scales.len() >= nr);
        assert!(self.c.len() >= (self.rows - 1) * self.ldc + self.cols && self.cols <= self.ldc);
        let e = &self.epilogue;
        assert!(e.bias.len() >= self.cols);
        if let Some((r, stride)) = e.residual {
            assert!(r.len() >= (self.rows - 1) * stride + self.cols && self.cols <= stride);
        }
    }
}

fn microkernel(isa: Isa, t: QTile<'_>) {
    let (mr, nr) = tile(isa);
    t.check(mr, nr);
    match isa {
        Isa::Portable => portable::<4, 16>(t),
        // SAFETY (each arm): callers pass the `Isa` of a `QPackedWeights`, whose packing
        // asserted the CPU runs it; `check` asserted every size the kernel reads and writes for
        // its (MR, NR).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2_6x16(t) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { x86::avx_vnni_6x16(t) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::avx512_vnni_6x32(t) },
    }
}

/// The portable microkernel: exact integer sums, the scalar dequantisation, the epilogue on
/// the tile.
fn portable<const MR: usize, const NR: usize>(t: QTile<'_>) {
    let mut acc = [[0i32; NR]; MR];
    for g in 0..t.kp / 4 {
        let b = &t.panel[g * NR * 4..(g + 1) * NR * 4];
        for (i, acc_row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = &t.a[i * t.lda + g * 4..i * t.lda + g * 4 + 4];
            for (c, w) in acc_row.iter_mut().zip(b.chunks_exact(4)) {
                *c += a
                    .iter()
                    .zip(w)
                    .map(|(&a, &w)| a as i32 * w as i32)
                    .sum::<i32>();
            }
        }
    }
    let mut tile = [[0f32; NR]; MR];
    for i in 0..t.rows {
        for j in 0..t.cols {
            tile[i][j] =
                super::quantize::dequantise(acc[i][j], t.quants[i], t.col_sums[j], t.scales[j]);
        }
    }
    let flat = tile.as_flattened_mut();
    t.epilogue.apply(flat, NR, t.rows, t.cols);
    tile_to_c(flat, NR, t.c, t.ldc, t.rows, t.cols);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::gemm::x86::store;
    use super::super::simd::{Lanes, V256, V512};
    use super::QTile;

    /// One vector of i32 accumulators and the int8 product that feeds it.
    trait QLanes: Copy {
        /// The f32 vector of as many lanes.
        type F: Lanes;
        const LANES: usize;
        unsafe fn zero() -> Self;
        /// `4 * LANES` weight bytes at `p`: four `k` of `LANES` columns.
        unsafe fn load_b(p: *const i8) -> Self;
        /// The 4 activation bytes at `p`, in every lane.
        unsafe fn splat_a(p: *const u8) -> Self;
        /// `acc + sum over the 4 bytes of a * b`, per lane, exact.
        unsafe fn dot(acc: Self, a: Self, b: Self) -> Self;
        /// `f32(acc - zero * col_sums) * (scale * scales)`, as
        /// [`dequantise`](super::super::quantize::dequantise) per lane.
        unsafe fn dequantise(
            acc: Self,
            zero: i32,
            col_sums: *const i32,
            scale: f32,
            scales: *const f32,
        ) -> Self::F;
    }

    /// AVX-512 VNNI.
    #[derive(Clone, Copy)]
    struct Vnni512(__m512i);

    impl QLanes for Vnni512 {
        type F = V512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Vnni512(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn load_b(p: *const i8) -> Self {
            // SAFETY: the caller's contract (64 bytes readable).
            Vnni512(unsafe { _mm512_loadu_si512(p.cast()) })
        }
        #[inline(always)]
        unsafe fn splat_a(p: *const u8) -> Self {
            // SAFETY: the caller's contract (4 bytes readable).
            Vnni512(_mm512_set1_epi32(unsafe {
                p.cast::<i32>().read_unaligned()
            }))
        }
        #[inline(always)]
        unsafe fn dot(acc: Self, a: Self, b: Self) -> Self {
            Vnni512(_mm512_dpbusd_epi32(acc.0, a.0, b.0))
        }
        #[inline(always)]
        unsafe fn dequantise(
            acc: Self,
            zero: i32,
            col_sums: *const i32,
            scale: f32,
            scales: *const f32,
        ) -> V512 {
            // SAFETY: the caller's contract (16 values at each pointer).
            unsafe {
                let sums = _mm512_loadu_si512(col_sums.cast());
                let exact =
                    _mm512_sub_epi32(acc.0, _mm512_mullo_epi32(_mm512_set1_epi32(zero), sums));
                let s = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(scales));
                V512(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), s))
            }
        }
    }

    /// AVX-VNNI (256 bits).
    #[derive(Clone, Copy)]
    struct Vnni256(__m256i);

    /// AVX2: `vpmaddubsw` (pairs of u8 x s8 into a saturating i16: weights at most 63 keep it
    /// exact) and `vpmaddwd` with ones (pairs of i16 into i32).
    #[derive(Clone, Copy)]
    struct Madd256(__m256i);

    /// The 256-bit kernels' common loads and dequantisation.
    macro_rules! lanes_256 {
        ($t:ident) => {
            #[inline(always)]
            unsafe fn zero() -> Self {
                $t(_mm256_setzero_si256())
            }
            #[inline(always)]
            unsafe fn load_b(p: *const i8) -> Self {
                // SAFETY: the caller's contract (32 bytes readable).
                $t(unsafe { _mm256_loadu_si256(p.cast()) })
            }
            #[inline(always)]
            unsafe fn splat_a(p: *const u8) -> Self {
                // SAFETY: the caller's contract (4 bytes readable).
                $t(_mm256_set1_epi32(unsafe {
                    p.cast::<i32>().read_unaligned()
                }))
            }
            #[inline(always)]
            unsafe fn dequantise(
                acc: Self,
                zero: i32,
                col_sums: *const i32,
                scale: f32,
                scales: *const f32,
            ) -> V256 {
                // SAFETY: the caller's contract (8 values at each pointer).
                unsafe {
                    let sums = _mm256_loadu_si256(col_sums.cast());
                    let exact =
                        _mm256_sub_epi32(acc.0, _mm256_mullo_epi32(_mm256_set1_epi32(zero), sums));
                    let s = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_loadu_ps(scales));
                    V256(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), s))
                }
            }
        };
    }

    impl QLanes for Vnni256 {
        type F = V256;
        const LANES: usize = 8;
        lanes_256!(Vnni256);
        #[inline(always)]
        unsafe fn dot(acc: Self, a: Self, b: Self) -> Self {
            Vnni256(_mm256_dpbusd_avx_epi32(acc.0, a.0, b.0))
        }
    }

    impl QLanes for Madd256 {
        type F = V256;
        const LANES: usize = 8;
        lanes_256!(Madd256);
        #[inline(always)]
        unsafe fn dot(acc: Self, a: Self, b: Self) -> Self {
            let pairs = _mm256_maddubs_epi16(a.0, b.0);
            let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
            Madd256(_mm256_add_epi32(acc.0, quads))
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F, BW and VNNI; `t` passed `QTile::check(6, 32)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn avx512_vnni_6x32(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Vnni512, 6>(t) }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and AVX-VNNI; `t` passed `QTile::check(6, 16)`.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn avx_vnni_6x16(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Vnni256, 6>(t) }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` passed `QTile::check(6, 16)` and its weights are at
    /// most 63 in magnitude (no saturation in `vpmaddubsw`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_6x16(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Madd256, 6>(t) }
    }

    /// The kernel of exactly the tile's rows (at most `MR`).
    ///
    /// # Safety
    /// The CPU has `Q`'s ISA; `t` passed `QTile::check(MR, 2 * Q::LANES)`.
    #[inline(always)]
    unsafe fn exact_rows<Q: QLanes, const MR: usize>(t: QTile<'_>) {
        // SAFETY: the caller's contract; `rows` is 1..=MR.
        unsafe {
            match t.rows.min(MR) {
                1 => tile::<Q, 1, 2>(t),
                2 => tile::<Q, 2, 2>(t),
                3 => tile::<Q, 3, 2>(t),
                4 => tile::<Q, 4, 2>(t),
                5 => tile::<Q, 5, 2>(t),
                _ => tile::<Q, 6, 2>(t),
            }
        }
    }

    /// An `MR x (NV * LANES)` tile: `MR x NV` i32 accumulators; per 4-deep step, `NV` panel
    /// loads and `MR` broadcasts of A feed `MR * NV` products; then the dequantisation in
    /// registers and the f32 GEMM's store (and epilogue).
    ///
    /// # Safety
    /// The CPU has `Q`'s ISA; `t` passed `QTile::check(m, NV * Q::LANES)` with `m >= MR ==
    /// t.rows`.
    #[inline(always)]
    unsafe fn tile<Q: QLanes, const MR: usize, const NV: usize>(t: QTile<'_>) {
        let nr = NV * Q::LANES;
        // SAFETY (every read below): `check` proved row `i < rows` of A holds `kp` bytes from
        // `i * lda`, the panel `kp * nr` bytes, the column sums and scales `nr` values each,
        // and the row quantities `rows`.
        let mut acc = [[unsafe { Q::zero() }; NV]; MR];
        let mut a_rows = [t.a.as_ptr(); MR];
        for (i, row) in a_rows.iter_mut().enumerate() {
            *row = unsafe { t.a.as_ptr().add(i * t.lda) };
        }
        let b = t.panel.as_ptr();
        for g in 0..t.kp / 4 {
            let mut bv = [unsafe { Q::zero() }; NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = unsafe { Q::load_b(b.add((g * nr + j * Q::LANES) * 4)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = unsafe { Q::splat_a(a_rows[i].add(g * 4)) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = unsafe { Q::dot(*v, av, bv[j]) };
                }
            }
        }
        let mut out = [[unsafe { <Q::F as Lanes>::zero() }; NV]; MR];
        for (i, row) in out.iter_mut().enumerate() {
            let q = t.quants[i];
            for (j, v) in row.iter_mut().enumerate() {
                let at = j * Q::LANES;
                *v = unsafe {
                    Q::dequantise(
                        acc[i][j],
                        q.zero,
                        t.col_sums.as_ptr().add(at),
                        q.scale,
                        t.scales.as_ptr().add(at),
                    )
                };
            }
        }
        // SAFETY: `check` proved C's and the epilogue's extents for `rows x cols`.
        unsafe { store::<Q::F, MR, NV>(&out, Some(&t.epilogue), t.c, t.ldc, t.rows, t.cols) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{self, LinearEpilogue, LinearPrologue, RowScale};
    use crate::Activation;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every kernel gives the reference twin's bits (the same integers, the same
    /// dequantisation, the same epilogue), on shapes that are multiples of no tile, with `K`
    /// not a multiple of 4 and blocks of rows, every prologue and epilogue.
    #[test]
    fn kernels_match_the_reference_twin_bit_for_bit() {
        let (samples, pixels) = (3, 97);
        let m = samples * pixels;
        for (k, n) in [(45, 70), (1, 1), (7, 13), (301, 33), (4, 64)] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let scale = values(samples * k, 4);
            let res = values(m * n, 5);
            for isa in Isa::available() {
                let q = QuantisedWeights::new(&w, n, k, weight_max(isa));
                let packed = QPackedWeights::from_quantised(&q, isa);
                for (norm, scaled, act, residual) in [
                    (false, false, None, false),
                    (true, false, Some(Activation::Gelu), false),
                    (false, true, None, true),
                    (true, true, Some(Activation::Silu), true),
                ] {
                    let prologue = LinearPrologue {
                        norm_eps: norm.then_some(1e-6),
                        scale: scaled.then_some(RowScale {
                            values: &scale,
                            rows_per_sample: pixels,
                            first_row: 0,
                        }),
                    };
                    let epilogue = LinearEpilogue {
                        activation: act,
                        kernel: None,
                        residual: residual.then_some(&res[..]),
                    };
                    let mut want = vec![0.0; m * n];
                    reference::qlinear_fused(&x, m, &q, &bias, prologue, epilogue, &mut want, None);
                    let mut got = vec![0.0; m * n];
                    qlinear_fused_packed(&x, m, &packed, &bias, prologue, epilogue, &mut got, None);
                    assert_eq!(
                        got, want,
                        "{isa:?} {m}x{n}x{k} norm {norm} scale {scaled} {act:?}"
                    );
                }
            }
        }
    }

    /// The int8 reference twin, and every kernel, is within the scheme's error bound of the
    /// f32 product ([`quantize::error_bound`](super::super::quantize::error_bound), derived
    /// from the row's and the column's scales), on every weight width (127 and 63).
    #[test]
    fn int8_is_within_the_quantisation_bound_of_f32() {
        let (m, k, n) = (97, 75, 37);
        let x = values(m * k, 6);
        let w = values(n * k, 7);
        let bias = values(n, 8);
        let none = (LinearPrologue::default(), LinearEpilogue::default());
        let mut exact = vec![0.0; m * n];
        reference::linear(&x, m, k, &w, Some(&bias), n, &mut exact);
        let check = |what: &str, got: &[f32], q: &QuantisedWeights| {
            for r in 0..m {
                for o in 0..n {
                    let bound = super::super::quantize::error_bound(
                        &x[r * k..(r + 1) * k],
                        &w[o * k..(o + 1) * k],
                        q.scales[o],
                    );
                    let err = (got[r * n + o] - exact[r * n + o]).abs() as f64;
                    assert!(err <= bound, "{what} [{r}, {o}]: {err} > {bound}");
                }
            }
        };
        for q_max in [127, 63] {
            let q = QuantisedWeights::new(&w, n, k, q_max);
            let mut twin = vec![0.0; m * n];
            reference::qlinear_fused(&x, m, &q, &bias, none.0, none.1, &mut twin, None);
            check(&format!("reference twin, weights up to {q_max}"), &twin, &q);
        }
        for isa in Isa::available() {
            let q = QuantisedWeights::new(&w, n, k, weight_max(isa));
            let packed = QPackedWeights::from_quantised(&q, isa);
            let mut got = vec![0.0; m * n];
            qlinear_fused_packed(&x, m, &packed, &bias, none.0, none.1, &mut got, None);
            check(&format!("{isa:?}"), &got, &q);
        }
    }

    /// Splitting the columns into panel ranges gives the same bits as the whole product, GRN
    /// sums included.
    #[test]
    fn column_split_and_sums_are_exact() {
        use crate::kernels::reference::{combine_square_sums, SquareSums};
        let (samples, pixels, k, n) = (3, 49, 40, 75);
        let m = samples * pixels;
        let (x, w, bias) = (values(m * k, 13), values(n * k, 14), values(n, 15));
        let segments = SquareSums::segment_count(0, m, pixels);
        for isa in Isa::available() {
            let packed = QPackedWeights::pack(&w, n, k, isa);
            let none = (LinearPrologue::default(), LinearEpilogue::default());
            let mut whole = vec![0.0; m * n];
            let mut partials = vec![0.0; segments * n];
            let mut sums = SquareSums::new(&mut partials, 0, m, pixels, n);
            qlinear_fused_packed(
                &x,
                m,
                &packed,
                &bias,
                none.0,
                none.1,
                &mut whole,
                Some(&mut sums),
            );
            let mut want_sums = vec![0.0; samples * n];
            sums.combine_into(&mut want_sums, n, 0);
            let nr = packed.panel_width();
            let mut got_sums = vec![0.0; samples * n];
            for (panels, col0) in [(0..1, 0), (1..packed.panels(), nr)] {
                let width = (panels.end * nr).min(n) - col0;
                let mut part = vec![0.0; m * width];
                let mut partials = vec![0.0; segments * width];
                let mut sums = SquareSums::new(&mut partials, 0, m, pixels, width);
                qlinear_fused_packed_panels(
                    &x,
                    m,
                    &packed,
                    panels,
                    &bias,
                    none.0,
                    none.1,
                    &mut part,
                    Some(&mut sums),
                );
                for r in 0..m {
                    assert_eq!(
                        &part[r * width..(r + 1) * width],
                        &whole[r * n + col0..r * n + col0 + width]
                    );
                }
                combine_square_sums(&partials, 0, m, pixels, width, &mut got_sums, n, col0);
            }
            assert_eq!(got_sums, want_sums, "{isa:?}");
        }
    }
}
