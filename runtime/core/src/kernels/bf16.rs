//! bf16: the rounding every bf16 operand goes through, the reference twin's dot product, and
//! the vector microkernels of the GEMM driver ([`super::matmul`]; the AMX one is in
//! [`super::amx`]).
//!
//! - **Rounding** ([`round`]): f32 to bf16 bits, round to nearest even, as `vcvtneps2bf16`
//!   defines it (denormal inputs become a signed zero, NaN stays a quiet NaN). Weights are
//!   rounded once, at load; activations as a block of rows is packed, after the f32 prologue.
//!   No packed operand is ever a bf16 denormal, so the instructions' "denormal inputs are
//!   zero" never applies.
//! - **Product**: every bf16 x bf16 product is exact in f32 (8-bit significands); the kernels
//!   accumulate in f32, and differ only in the order of their additions and whether a
//!   denormal sum is flushed to zero ([`SumOrder`]): `vdpbf16ps` adds a pair's odd product,
//!   then its even one, and flushes; the FMA kernels (AVX-512F, AVX2, portable) add in the
//!   same order without flushing; AMX's `tdpbf16ps` sums the even and the odd products of 32
//!   `k` apart, from zero, then adds their sum ([`dot`] is each order, the twin's arithmetic).
//! - **Epilogue**: the f32 epilogue of every precision (bias, exact GELU, residual).
//!
//! | kernel | tile | per pair of `k` of one row and 16 columns |
//! |---|---|---|
//! | AVX512_BF16 | 6 x 32 | one `vdpbf16ps` (zmm) |
//! | AVX-512F FMA | 6 x 32 | two shifts or masks (widening) and two `vfmadd` |
//! | AVX2 FMA | 6 x 16 | the same on ymm, twice |
//! | portable | 4 x 16 | plain loops (`mul_add`) |

use super::microkernel::{tile_to_c, MicroTile, Operand, PanelRef, SumOrder, TileEpilogue};

/// f32 to bf16 bits, round to nearest even; denormals to a signed zero; NaN stays NaN (quiet).
#[inline(always)]
pub fn round(x: f32) -> u16 {
    round_bits(x.to_bits())
}

/// [`round`] on the bits of an f32, branch-free (so that loops of it vectorise).
#[inline(always)]
fn round_bits(b: u32) -> u16 {
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    let denormal = b & 0x7F80_0000 == 0;
    let nearest_even = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let r = if denormal {
        (b >> 16) & 0x8000
    } else {
        nearest_even
    };
    (if nan { (b >> 16) | 0x40 } else { r }) as u16
}

/// The f32 a bf16 holds (exact).
#[inline(always)]
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// [`round`] of every value of `src` into `dst` ([`pack_row`] of an unpadded row).
pub fn round_row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    pack_row(src, None, src.len(), false, dst)
}

/// One row of A packed for a bf16 kernel: `src` (`k` values), times `scale` elementwise when
/// given (GRN's scale: the prologue's bits, fused into the same pass), rounded to bf16 and
/// zero-padded to `kp`, into `dst`: as a row (`dst[j]`), or `tiled` into the AMX kernels' 16-row
/// tiles (`dst` at the row's place in its first tile: value `j` at `(j / 32) * 512 + j % 32`).
pub fn pack_row(src: &[f32], scale: Option<&[f32]>, kp: usize, tiled: bool, dst: &mut [u16]) {
    assert!(src.len() <= kp && scale.is_none_or(|s| s.len() == src.len()));
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect().width() == super::Width::Avx512 {
        // SAFETY: `Isa::detect` names only an instruction set the CPU supports.
        return unsafe { pack_row_avx512(src, scale, kp, tiled, dst) };
    }
    pack_row_plain(src, scale, kp, tiled, dst)
}

#[inline(always)]
fn pack_row_plain(src: &[f32], scale: Option<&[f32]>, kp: usize, tiled: bool, dst: &mut [u16]) {
    let k = src.len();
    let (chunk, stride) = if tiled {
        (32, 512)
    } else {
        (kp.max(1), kp.max(1))
    };
    for (c, start) in (0..kp).step_by(chunk).enumerate() {
        let d = &mut dst[c * stride..][..chunk.min(kp - start)];
        let n = k.saturating_sub(start).min(d.len());
        let x = &src[start..start + n];
        match scale {
            Some(s) => {
                let s = &s[start..start + n];
                for ((d, &v), &m) in d.iter_mut().zip(x).zip(s) {
                    *d = round_bits((v * m).to_bits());
                }
            }
            None => {
                for (d, &v) in d.iter_mut().zip(x) {
                    *d = round_bits(v.to_bits());
                }
            }
        }
        d[n..].fill(0);
    }
}

/// # Safety
/// The CPU supports AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_row_avx512(
    src: &[f32],
    scale: Option<&[f32]>,
    kp: usize,
    tiled: bool,
    dst: &mut [u16],
) {
    // The same loops, vectorised by the compiler for AVX-512.
    pack_row_plain(src, scale, kp, tiled, dst)
}

/// A denormal `x` as a zero of its sign (the instructions' "flush to zero").
#[inline(always)]
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0f32.copysign(x)
    } else {
        x
    }
}

/// The dot product of a bf16 row `a` and column `b` (`k` values each; zero-padded to `kp`,
/// as the kernels see them) in a bf16 kernel's order: the reference twin's arithmetic.
pub fn dot(a: &[u16], b: &[u16], kp: usize, order: SumOrder) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(kp >= a.len());
    let value = |v: &[u16], i: usize| v.get(i).map_or(0.0, |&x| to_f32(x));
    let product = |i: usize| (value(a, i), value(b, i));
    match order {
        SumOrder::Bf16Pairs { flush: ftz } => {
            let f = |x: f32| if ftz { flush(x) } else { x };
            let mut acc = 0f32;
            for g in 0..kp / 2 {
                let (a1, b1) = product(2 * g + 1);
                acc = f(a1.mul_add(b1, acc));
                let (a0, b0) = product(2 * g);
                acc = f(a0.mul_add(b0, acc));
            }
            acc
        }
        SumOrder::Bf16Tile => {
            let mut acc = 0f32;
            for chunk in 0..kp / 32 {
                let (mut even, mut odd) = (0f32, 0f32);
                for g in 0..16 {
                    let at = chunk * 32 + 2 * g;
                    let (a0, b0) = product(at);
                    even = flush(a0.mul_add(b0, even));
                    let (a1, b1) = product(at + 1);
                    odd = flush(a1.mul_add(b1, odd));
                }
                acc = flush(acc + flush(even + odd));
            }
            acc
        }
        SumOrder::F32Fma | SumOrder::Exact => panic!("{order:?} is not a bf16 order"),
    }
}

/// One bf16 microkernel call: `rows x cols` of C at `c` get the sums over `kc` (even) `K` of
/// `a`'s rows (row `i` at `i * lda`) and the panel's columns (`[kc / 2][NR][2]`), then the
/// epilogue.
struct Bf16Tile<'t> {
    a: &'t [u16],
    lda: usize,
    rows: usize,
    kc: usize,
    panel: &'t [u16],
    c: &'t mut [f32],
    ldc: usize,
    cols: usize,
    epilogue: TileEpilogue<'t>,
}

/// The bf16 view of a driver's tile, its sizes checked for `(mr, nr)`.
fn bf16_tile(t: MicroTile<'_>, mr: usize, nr: usize) -> Bf16Tile<'_> {
    t.check(mr, nr, false);
    let (Operand::Bf16(a), PanelRef::Bf16(panel)) = (t.a, t.panel) else {
        panic!("a bf16 kernel takes bf16 operands");
    };
    assert!(t.first && t.kc.is_multiple_of(2));
    Bf16Tile {
        a,
        lda: t.lda,
        rows: t.rows,
        kc: t.kc,
        panel,
        c: t.c,
        ldc: t.ldc,
        cols: t.cols,
        epilogue: t.epilogue.expect("the bf16 kernels run all of K at once"),
    }
}

/// The portable kernel (4 x 16): [`dot`]'s pair order without flushing, FMA per product.
pub(super) fn portable_4x16(t: MicroTile<'_>) {
    const MR: usize = 4;
    const NR: usize = 16;
    let t = bf16_tile(t, MR, NR);
    let mut tile = [[0f32; NR]; MR];
    for g in 0..t.kc / 2 {
        let b = &t.panel[g * NR * 2..(g + 1) * NR * 2];
        for (i, acc) in tile.iter_mut().enumerate().take(t.rows) {
            let a = &t.a[i * t.lda + 2 * g..i * t.lda + 2 * g + 2];
            let (a0, a1) = (to_f32(a[0]), to_f32(a[1]));
            for (c, w) in acc.iter_mut().zip(b.chunks_exact(2)) {
                *c = a1.mul_add(to_f32(w[1]), *c);
                *c = a0.mul_add(to_f32(w[0]), *c);
            }
        }
    }
    let flat = tile.as_flattened_mut();
    t.epilogue.apply(flat, NR, t.rows, t.cols);
    tile_to_c(flat, NR, t.c, t.ldc, t.rows, t.cols);
}

/// AVX512_BF16 (6 x 32, `vdpbf16ps`).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_bf16_6x32(t: MicroTile<'_>) {
    let t = bf16_tile(t, 6, 32);
    // SAFETY (each x86 kernel): the driver reaches a kernel only through a `PackedMatrix`
    // packed for it, which asserted the CPU has its features; `bf16_tile` checked every size
    // the kernel reads and writes for its (MR, NR).
    unsafe { x86::dpbf16_rows(t) }
}

/// AVX-512F, bf16 widened to f32 and FMA (6 x 32).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_fma_6x32(t: MicroTile<'_>) {
    let t = bf16_tile(t, 6, 32);
    // SAFETY: as above (AVX-512F).
    unsafe { x86::fma_rows_avx512(t) }
}

/// AVX2 + FMA, bf16 widened to f32 (6 x 16).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_fma_6x16(t: MicroTile<'_>) {
    let t = bf16_tile(t, 6, 16);
    // SAFETY: as above (AVX2, FMA).
    unsafe { x86::fma_rows_avx2(t) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::gemm::x86::store;
    use super::super::simd::{Lanes, V256, V512};
    use super::Bf16Tile;

    /// Widening bf16 pairs to f32 vectors: a pair's even (low) value is its 32 bits shifted
    /// left by 16, its odd (high) value its 32 bits with the low half cleared.
    trait Widen: Lanes {
        /// The `LANES` pairs at `p` (2 * LANES values): (even, odd) vectors.
        unsafe fn pairs(p: *const u16) -> (Self, Self);
        /// The pair at `p` in every lane: (even, odd).
        unsafe fn splat_pair(p: *const u16) -> (Self, Self);
    }

    impl Widen for V512 {
        #[inline(always)]
        unsafe fn pairs(p: *const u16) -> (Self, Self) {
            // SAFETY: the caller's contract (64 bytes readable).
            unsafe { widen_512(_mm512_loadu_si512(p.cast())) }
        }
        #[inline(always)]
        unsafe fn splat_pair(p: *const u16) -> (Self, Self) {
            // SAFETY: the caller's contract (4 bytes readable).
            unsafe { widen_512(_mm512_set1_epi32(p.cast::<i32>().read_unaligned())) }
        }
    }

    #[inline(always)]
    unsafe fn widen_512(v: __m512i) -> (V512, V512) {
        let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
        let odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536)));
        (V512(even), V512(odd))
    }

    impl Widen for V256 {
        #[inline(always)]
        unsafe fn pairs(p: *const u16) -> (Self, Self) {
            // SAFETY: the caller's contract (32 bytes readable).
            unsafe { widen_256(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn splat_pair(p: *const u16) -> (Self, Self) {
            // SAFETY: the caller's contract (4 bytes readable).
            unsafe { widen_256(_mm256_set1_epi32(p.cast::<i32>().read_unaligned())) }
        }
    }

    #[inline(always)]
    unsafe fn widen_256(v: __m256i) -> (V256, V256) {
        let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
        let odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536)));
        (V256(even), V256(odd))
    }

    /// # Safety
    /// The CPU supports AVX-512F; `t` passed `MicroTile::check(6, 32)`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn fma_rows_avx512(t: Bf16Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { fma_rows::<V512>(t) }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` passed `MicroTile::check(6, 16)`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_rows_avx2(t: Bf16Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { fma_rows::<V256>(t) }
    }

    /// The FMA kernel of exactly the tile's rows (at most 6).
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `t` passed `MicroTile::check(6, 2 * V::LANES)`.
    #[inline(always)]
    unsafe fn fma_rows<V: Widen>(t: Bf16Tile<'_>) {
        // SAFETY: the caller's contract; `rows` is 1..=6.
        unsafe {
            match t.rows {
                1 => fma_tile::<V, 1, 2>(t),
                2 => fma_tile::<V, 2, 2>(t),
                3 => fma_tile::<V, 3, 2>(t),
                4 => fma_tile::<V, 4, 2>(t),
                5 => fma_tile::<V, 5, 2>(t),
                _ => fma_tile::<V, 6, 2>(t),
            }
        }
    }

    /// An `MR x (NV * LANES)` tile: per pair of `k`, `NV` panel loads widened to (even, odd)
    /// and `MR` broadcast pairs feed `2 * MR * NV` FMAs, the odd product first.
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `t` passed `MicroTile::check(m, NV * V::LANES)`, `m >= MR ==
    /// t.rows`.
    #[inline(always)]
    unsafe fn fma_tile<V: Widen, const MR: usize, const NV: usize>(t: Bf16Tile<'_>) {
        let nr = NV * V::LANES;
        // SAFETY (every read below): `check` proved row `i < rows` of A holds `kc` values from
        // `i * lda` and the panel `kc * nr` values.
        let mut acc = [[unsafe { V::zero() }; NV]; MR];
        let b = t.panel.as_ptr();
        for g in 0..t.kc / 2 {
            let mut bv = [(unsafe { V::zero() }, unsafe { V::zero() }); NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = unsafe { V::pairs(b.add((g * nr + j * V::LANES) * 2)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let (a0, a1) = unsafe { V::splat_pair(t.a.as_ptr().add(i * t.lda + 2 * g)) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = unsafe { V::fma(a1, bv[j].1, *v) };
                    *v = unsafe { V::fma(a0, bv[j].0, *v) };
                }
            }
        }
        // SAFETY: `check` proved C's and the epilogue's extents for `rows x cols`.
        unsafe { store::<V, MR, NV>(&acc, Some(&t.epilogue), t.c, t.ldc, t.rows, t.cols) }
    }

    /// # Safety
    /// The CPU supports AVX-512F, BW and AVX512_BF16; `t` passed `MicroTile::check(6, 32)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    pub(super) unsafe fn dpbf16_rows(t: Bf16Tile<'_>) {
        // SAFETY: the caller's contract; `rows` is 1..=6.
        unsafe {
            match t.rows {
                1 => dpbf16_tile::<1>(t),
                2 => dpbf16_tile::<2>(t),
                3 => dpbf16_tile::<3>(t),
                4 => dpbf16_tile::<4>(t),
                5 => dpbf16_tile::<5>(t),
                _ => dpbf16_tile::<6>(t),
            }
        }
    }

    /// An `MR x 32` tile: per pair of `k`, two panel loads and `MR` broadcast pairs feed
    /// `2 * MR` `vdpbf16ps`.
    ///
    /// # Safety
    /// As [`dpbf16_rows`], with `MR == t.rows`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    unsafe fn dpbf16_tile<const MR: usize>(t: Bf16Tile<'_>) {
        // SAFETY (every read below): as in `fma_tile`; 32 bf16 pairs (128 bytes) per `k` pair
        // of the panel.
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let b = t.panel.as_ptr();
        for g in 0..t.kc / 2 {
            let b0: __m512bh =
                unsafe { std::mem::transmute(_mm512_loadu_si512(b.add(g * 64).cast())) };
            let b1: __m512bh =
                unsafe { std::mem::transmute(_mm512_loadu_si512(b.add(g * 64 + 32).cast())) };
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = unsafe {
                    t.a.as_ptr()
                        .add(i * t.lda + 2 * g)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
                row[0] = _mm512_dpbf16_ps(row[0], a, b0);
                row[1] = _mm512_dpbf16_ps(row[1], a, b1);
            }
        }
        let acc = acc.map(|row| row.map(V512));
        // SAFETY: `check` proved C's and the epilogue's extents for `rows x cols`.
        unsafe { store::<V512, MR, 2>(&acc, Some(&t.epilogue), t.c, t.ldc, t.rows, t.cols) }
    }
}
