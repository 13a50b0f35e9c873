//! One f32 vector type per x86 ISA behind one trait, so that each SIMD kernel is written
//! once, generically, and instantiated for AVX-512 (16 lanes) and AVX2 + FMA (8 lanes) under
//! `#[target_feature]` wrappers.

use std::arch::x86_64::*;

/// One vector of `LANES` f32 and its masked memory access. Every method is `unsafe`:
/// the CPU must have the ISA, and a masked access touches only the lanes below `lanes`.
pub trait Lanes: Copy {
    const LANES: usize;
    type Mask: Copy;
    unsafe fn mask(lanes: usize) -> Self::Mask;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(m: Self::Mask, p: *const f32) -> Self;
    unsafe fn store(m: Self::Mask, p: *mut f32, v: Self);
    /// All `LANES` floats at `p` (unaligned).
    unsafe fn loadu(p: *const f32) -> Self;
    /// All `LANES` floats to `p` (unaligned).
    unsafe fn storeu(p: *mut f32, v: Self);
    unsafe fn div(a: Self, b: Self) -> Self;
    /// Lane-wise `max(a, b)` and `min(a, b)` as `maxps` / `minps` (`b` where either is NaN).
    unsafe fn max(a: Self, b: Self) -> Self;
    unsafe fn min(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a * b + c`, one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn sum(a: Self) -> f32;
    /// `v` with the lanes outside `m` zeroed.
    unsafe fn keep(m: Self::Mask, v: Self) -> Self;
}

/// The lane-wise methods every [`Lanes`] vector maps one to one onto an intrinsic.
macro_rules! arithmetic {
    ($v:ident, $zero:ident, $splat:ident, $add:ident, $sub:ident, $mul:ident, $fma:ident,
     $loadu:ident, $storeu:ident, $div:ident, $max:ident, $min:ident) => {
        #[inline(always)]
        unsafe fn loadu(p: *const f32) -> Self {
            // SAFETY: the trait's contract (`LANES` floats readable at `p`).
            $v(unsafe { $loadu(p) })
        }
        #[inline(always)]
        unsafe fn storeu(p: *mut f32, v: Self) {
            // SAFETY: the trait's contract (`LANES` floats writable at `p`).
            unsafe { $storeu(p, v.0) }
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            $v($div(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            $v($max(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn min(a: Self, b: Self) -> Self {
            $v($min(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            $v($zero())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            $v($splat(v))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            $v($add(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            $v($sub(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            $v($mul(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            $v($fma(a.0, b.0, c.0))
        }
    };
}

#[derive(Clone, Copy)]
pub struct V512(pub(crate) __m512);

impl Lanes for V512 {
    const LANES: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn mask(lanes: usize) -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            (1u16 << lanes) - 1
        }
    }
    #[inline(always)]
    unsafe fn load(m: __mmask16, p: *const f32) -> Self {
        // SAFETY: the trait's contract (masked-off lanes are not read).
        V512(unsafe { _mm512_maskz_loadu_ps(m, p) })
    }
    #[inline(always)]
    unsafe fn store(m: __mmask16, p: *mut f32, v: Self) {
        // SAFETY: as `load`.
        unsafe { _mm512_mask_storeu_ps(p, m, v.0) }
    }
    arithmetic!(
        V512,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_div_ps,
        _mm512_max_ps,
        _mm512_min_ps
    );
    #[inline(always)]
    unsafe fn sum(a: Self) -> f32 {
        _mm512_reduce_add_ps(a.0)
    }
    #[inline(always)]
    unsafe fn keep(m: __mmask16, v: Self) -> Self {
        V512(_mm512_maskz_mov_ps(m, v.0))
    }
}

#[derive(Clone, Copy)]
pub struct V256(pub(crate) __m256);

impl Lanes for V256 {
    const LANES: usize = 8;
    type Mask = __m256i;
    #[inline(always)]
    unsafe fn mask(lanes: usize) -> __m256i {
        // Lane i is on when i < lanes (the sign bit of each 32-bit lane).
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.min(8) as i32), index)
    }
    #[inline(always)]
    unsafe fn load(m: __m256i, p: *const f32) -> Self {
        // SAFETY: the trait's contract (masked-off lanes are not read).
        V256(unsafe { _mm256_maskload_ps(p, m) })
    }
    #[inline(always)]
    unsafe fn store(m: __m256i, p: *mut f32, v: Self) {
        // SAFETY: as `load`.
        unsafe { _mm256_maskstore_ps(p, m, v.0) }
    }
    arithmetic!(
        V256,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_div_ps,
        _mm256_max_ps,
        _mm256_min_ps
    );
    #[inline(always)]
    unsafe fn sum(a: Self) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(a.0), _mm256_extractf128_ps(a.0, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one)
    }
    #[inline(always)]
    unsafe fn keep(m: __m256i, v: Self) -> Self {
        V256(_mm256_and_ps(v.0, _mm256_castsi256_ps(m)))
    }
}
