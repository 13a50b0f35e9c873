//! The int8 microkernels of the GEMM driver ([`super::matmul`]) for the 1x1 convolutions and
//! the downsampling convs (as GEMMs over patches): the optimised twins of
//! [`reference::qlinear_fused`](super::reference::qlinear_fused), in
//! [`quantize`](super::quantize)'s scheme (the AMX one is in [`super::amx`]).
//!
//! The driver quantises and packs the weights once, at load, into `NR`-column panels laid out
//! `[K / 4][NR][4]` (`K` padded to a multiple of 4 with zeros): one 4-byte group per column
//! per step, what `vpdpbusd` and `vpmaddubsw` multiply. It quantises the activations row by
//! row while a block of A is packed (the f32 prologue, LayerNorm's normalisation or GRN's
//! scale, runs first on the row in L1; no extra pass over the activation in memory). The
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

use super::microkernel::{tile_to_c, MicroTile, Operand, PanelRef, TileEpilogue};
use super::quantize::RowQuant;

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

/// The int8 view of a driver's tile, its sizes checked for `(mr, nr)`.
fn int8_tile(t: MicroTile<'_>, mr: usize, nr: usize) -> QTile<'_> {
    t.check(mr, nr, false);
    let (Operand::U8(a), PanelRef::I8(panel)) = (t.a, t.panel) else {
        panic!("an int8 kernel takes u8 rows and i8 panels");
    };
    let d = t.dequant.expect("an int8 tile is dequantised");
    assert!(t.kc.is_multiple_of(4));
    QTile {
        a,
        lda: t.lda,
        rows: t.rows,
        kp: t.kc,
        panel,
        quants: d.quants,
        col_sums: d.col_sums,
        scales: d.scales,
        c: t.c,
        ldc: t.ldc,
        cols: t.cols,
        epilogue: t.epilogue.expect("the int8 kernels run all of K at once"),
    }
}

/// The portable kernel (4 x 16).
pub(super) fn portable_4x16(t: MicroTile<'_>) {
    portable::<4, 16>(int8_tile(t, 4, 16))
}

/// AVX-512 VNNI (6 x 32).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_vnni_6x32(t: MicroTile<'_>) {
    let t = int8_tile(t, 6, 32);
    // SAFETY (each x86 kernel): the driver reaches a kernel only through a `PackedMatrix`
    // packed for it, which asserted the CPU has its features; `int8_tile` checked every size
    // the kernel reads and writes for its (MR, NR).
    unsafe { x86::avx512_vnni_6x32(t) }
}

/// AVX-VNNI (6 x 16).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx_vnni_6x16(t: MicroTile<'_>) {
    let t = int8_tile(t, 6, 16);
    // SAFETY: as above (AVX2, FMA, AVX-VNNI).
    unsafe { x86::avx_vnni_6x16(t) }
}

/// AVX2 `vpmaddubsw` (6 x 16): its packing quantised the weights to at most 63 (its
/// `weight_max`), so the saturating i16 pairs never saturate.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_6x16(t: MicroTile<'_>) {
    let t = int8_tile(t, 6, 16);
    // SAFETY: as above (AVX2, FMA).
    unsafe { x86::avx2_6x16(t) }
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
pub(super) mod x86 {
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

    /// `f32(acc - zero * col_sums) * (scale * scales)` on 16 lanes, as every AVX-512 int8
    /// kernel dequantises (the AMX kernel's rows too).
    ///
    /// # Safety
    /// The CPU has AVX-512F; 16 values readable at `col_sums` and at `scales`.
    #[inline(always)]
    pub(in crate::kernels) unsafe fn dequantise_512(
        acc: __m512i,
        zero: i32,
        col_sums: *const i32,
        scale: f32,
        scales: *const f32,
    ) -> V512 {
        // SAFETY: the caller's contract.
        unsafe { Vnni512::dequantise(Vnni512(acc), zero, col_sums, scale, scales) }
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
    /// The CPU supports AVX-512F, BW and VNNI; `t` passed `MicroTile::check(6, 32)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn avx512_vnni_6x32(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Vnni512, 6>(t) }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and AVX-VNNI; `t` passed `MicroTile::check(6, 16)`.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn avx_vnni_6x16(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Vnni256, 6>(t) }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` passed `MicroTile::check(6, 16)` and its weights are at
    /// most 63 in magnitude (no saturation in `vpmaddubsw`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_6x16(t: QTile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<Madd256, 6>(t) }
    }

    /// The kernel of exactly the tile's rows (at most `MR`).
    ///
    /// # Safety
    /// The CPU has `Q`'s ISA; `t` passed `MicroTile::check(MR, 2 * Q::LANES)`.
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
    /// The CPU has `Q`'s ISA; `t` passed `MicroTile::check(m, NV * Q::LANES)` with `m >= MR ==
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
    use crate::kernels::matmul::weight_max;
    use crate::kernels::matmul::{
        kernel_for, linear_fused as qlinear_fused_packed,
        linear_fused_panels as qlinear_fused_packed_panels, PackedMatrix,
    };
    use crate::kernels::quantize::QuantisedWeights;
    use crate::kernels::reference::{self, LinearEpilogue, LinearPrologue, RowScale};
    use crate::kernels::Isa;
    use crate::ops::Precision;
    use crate::Activation;

    /// The int8 kernel of an instruction set, as the driver chooses it.
    struct QPackedWeights;

    impl QPackedWeights {
        fn pack(w: &[f32], n: usize, k: usize, isa: Isa) -> PackedMatrix {
            PackedMatrix::for_isa(w, n, k, Precision::Int8, isa)
        }

        fn from_quantised(q: &QuantisedWeights, isa: Isa) -> PackedMatrix {
            PackedMatrix::from_quantised(q, kernel_for(Precision::Int8, isa))
        }
    }

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
