//! The f32 microkernels of the GEMM driver ([`super::matmul`]): `MR x NR` register tiles
//! over `NR`-column panels laid out `[K][NR]`: AVX-512F (6 x 32: twelve zmm accumulators),
//! AVX2+FMA (6 x 16: twelve ymm), both one generic kernel over
//! [`Lanes`](super::simd::Lanes); a portable kernel (4 x 16, plain loops) everywhere else and
//! as a tested fallback. Every output element is one sum over `k` in increasing order in f32
//! FMA (the driver's `K` blocks pass partial sums through C exactly), whatever the blocking or
//! thread split: results are identical for any thread count and kernel. The epilogue (bias,
//! exact GELU, residual) is applied to the accumulators in registers before the tile's one
//! store to the output ([`x86::store`], which the bf16 and int8 kernels end in too); tiles cut
//! by the matrix's edge, and activations other than GELU, take the same arithmetic through a
//! tile on the stack.

use super::microkernel::{tile_from_c, tile_to_c, MicroTile, Operand, PanelRef, TileEpilogue};
pub use super::{Isa, Width};
use crate::Activation;

/// One f32 microkernel call: the `rows x cols` tile of C at `c` (row stride `ldc`) gets
/// `sum_{kk < kc} a[i * lda + kk] panel[kk * NR + j]`, added to what `c` holds unless `first`;
/// with `epilogue` (the last `K` block), then bias, activation and residual.
struct Tile<'t> {
    /// Row `i < rows` of A's `K` block starts at `i * lda`.
    a: &'t [f32],
    lda: usize,
    rows: usize,
    kc: usize,
    /// `kc x NR`: the `K` block of one packed panel.
    panel: &'t [f32],
    c: &'t mut [f32],
    ldc: usize,
    cols: usize,
    first: bool,
    epilogue: Option<TileEpilogue<'t>>,
}

/// The f32 view of a driver's tile, its sizes checked for `(mr, nr)`.
fn f32_tile(t: MicroTile<'_>, mr: usize, nr: usize) -> Tile<'_> {
    t.check(mr, nr, false);
    let (Operand::F32(a), PanelRef::F32(panel)) = (t.a, t.panel) else {
        panic!("an f32 kernel takes f32 operands");
    };
    Tile {
        a,
        lda: t.lda,
        rows: t.rows,
        kc: t.kc,
        panel,
        c: t.c,
        ldc: t.ldc,
        cols: t.cols,
        first: t.first,
        epilogue: t.epilogue,
    }
}

/// The portable kernel (4 x 16).
pub(super) fn portable_4x16(t: MicroTile<'_>) {
    portable::<4, 16>(f32_tile(t, 4, 16))
}

/// AVX2 + FMA (6 x 16).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_6x16(t: MicroTile<'_>) {
    let t = f32_tile(t, 6, 16);
    // SAFETY: the driver reaches this kernel only through a `PackedMatrix` packed for it,
    // which asserted the CPU has its features (AVX2, FMA); `f32_tile` checked every size the
    // kernel reads and writes for 6 x 16.
    unsafe { x86::avx2_6x16(t) }
}

/// AVX-512F (6 x 32).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_6x32(t: MicroTile<'_>) {
    let t = f32_tile(t, 6, 32);
    // SAFETY: as for `avx2_6x16`, with AVX-512F.
    unsafe { x86::avx512_6x32(t) }
}

/// The portable microkernel: the same summation order as the SIMD ones (FMA per k), the
/// epilogue on the tile.
fn portable<const MR: usize, const NR: usize>(t: Tile<'_>) {
    let mut tile = [[0f32; NR]; MR];
    let flat = tile.as_flattened_mut();
    if !t.first {
        tile_from_c(flat, NR, t.c, t.ldc, t.rows, t.cols);
    }
    for kk in 0..t.kc {
        let b = &t.panel[kk * NR..(kk + 1) * NR];
        for (i, acc_row) in tile.iter_mut().enumerate().take(t.rows) {
            let av = t.a[i * t.lda + kk];
            for (c, &bv) in acc_row.iter_mut().zip(b) {
                *c = av.mul_add(bv, *c);
            }
        }
    }
    let flat = tile.as_flattened_mut();
    if let Some(e) = &t.epilogue {
        e.apply(flat, NR, t.rows, t.cols);
    }
    tile_to_c(flat, NR, t.c, t.ldc, t.rows, t.cols);
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::activation::{GELU_ERF_CLAMP, GELU_ERF_DENOMINATOR, GELU_ERF_NUMERATOR};
    use super::super::simd::{Lanes, V256, V512};
    use super::{tile_from_c, tile_to_c, Activation, Tile, TileEpilogue};

    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` passed `MicroTile::check(6, 16)` (so `rows <= 6`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_6x16(t: Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<V256>(t) }
    }

    /// # Safety
    /// The CPU supports AVX-512F; `t` passed `MicroTile::check(6, 32)` (so `rows <= 6`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_6x32(t: Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<V512>(t) }
    }

    /// The 6-row kernel, or for a tile of fewer rows the kernel of exactly its rows (49 rows
    /// of a late stage at batch 1: eight tiles of 6 and one of 1, not 6).
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `t` passed `MicroTile::check(6, 2 * V::LANES)`.
    #[inline(always)]
    unsafe fn exact_rows<V: Lanes>(t: Tile<'_>) {
        // SAFETY: the caller's contract; `rows` is 1..=6, each kernel's MR >= rows.
        unsafe {
            match t.rows {
                1 => tile::<V, 1, 2>(t),
                2 => tile::<V, 2, 2>(t),
                3 => tile::<V, 3, 2>(t),
                4 => tile::<V, 4, 2>(t),
                5 => tile::<V, 5, 2>(t),
                _ => tile::<V, 6, 2>(t),
            }
        }
    }

    /// An `MR x (NV * LANES)` tile: `MR x NV` accumulators; per `k`, `NV` panel loads and `MR`
    /// broadcasts of A feed `MR * NV` FMAs. A whole tile reads and writes C directly; a tile
    /// cut by the matrix's edge goes through a tile on the stack.
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `t` passed `MicroTile::check(MR, NV * V::LANES)`.
    #[inline(always)]
    unsafe fn tile<V: Lanes, const MR: usize, const NV: usize>(t: Tile<'_>) {
        let nr = NV * V::LANES;
        if t.rows < MR || t.cols < nr {
            // SAFETY: the caller's contract.
            return unsafe { edge_tile::<V, MR, NV>(t) };
        }
        let c = t.c.as_ptr();
        // SAFETY: `check` proved C holds `cols == nr` floats from each of its `rows == MR` row
        // starts `i * ldc`.
        let mut acc = [[unsafe { V::zero() }; NV]; MR];
        if !t.first {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = unsafe { V::loadu(c.add(i * t.ldc + j * V::LANES)) };
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe {
            accumulate(&mut acc, &t);
            store(&acc, t.epilogue.as_ref(), t.c, t.ldc, t.rows, t.cols)
        }
    }

    /// The accumulators of a tile (its `rows x cols` part) through the epilogue into C (row
    /// stride `ldc`): a whole tile in registers (bias, exact GELU, residual), a tile cut by
    /// the matrix's edge or with another activation through a tile on the stack. The int8
    /// kernels end here too, with their dequantised accumulators.
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `NV * V::LANES <= 32`; `1 <= rows <= MR`, `1 <= cols <=
    /// NV * V::LANES`, `c` holds `(rows - 1) * ldc + cols` floats with `cols <= ldc`, and the
    /// epilogue's bias `cols` values and residual (rows at its stride) likewise.
    #[inline(always)]
    pub(in crate::kernels) unsafe fn store<V: Lanes, const MR: usize, const NV: usize>(
        acc: &[[V; NV]; MR],
        epilogue: Option<&TileEpilogue<'_>>,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let in_registers = |e: &TileEpilogue<'_>| {
            e.activation
                .is_none_or(|a| a.activation() == Activation::Gelu)
        };
        let whole = rows == MR && cols == NV * V::LANES;
        let c = c.as_mut_ptr();
        // SAFETY (every access to C and the residual below): a whole tile holds `cols == nr`
        // floats from each of its `rows == MR` row starts `i * ldc` (the contract), the
        // residual likewise.
        match epilogue {
            Some(e) if whole && in_registers(e) => {
                let gelu = e.activation.is_some();
                let mut bias = [unsafe { V::zero() }; NV];
                for (j, b) in bias.iter_mut().enumerate() {
                    *b = unsafe { V::loadu(e.bias.as_ptr().add(j * V::LANES)) };
                }
                for (i, row) in acc.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        unsafe {
                            let mut v = V::add(v, bias[j]);
                            if gelu {
                                v = gelu_erf(v);
                            }
                            if let Some((r, stride)) = e.residual {
                                let r = r.as_ptr().add(i * stride + j * V::LANES);
                                v = V::add(v, V::loadu(r));
                            }
                            V::storeu(c.add(i * ldc + j * V::LANES), v);
                        }
                    }
                }
            }
            None if whole => {
                for (i, row) in acc.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        unsafe { V::storeu(c.add(i * ldc + j * V::LANES), v) };
                    }
                }
            }
            _ => {
                let mut stack = [[0f32; 32]; MR];
                for (i, row) in acc.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        // SAFETY: NV * LANES <= 32 floats per stack row.
                        unsafe { V::storeu(stack[i].as_mut_ptr().add(j * V::LANES), v) };
                    }
                }
                let flat = stack.as_flattened_mut();
                if let Some(e) = epilogue {
                    e.apply(flat, 32, rows, cols);
                }
                // SAFETY: the contract's extent of C.
                let c = unsafe { std::slice::from_raw_parts_mut(c, (rows - 1) * ldc + cols) };
                tile_to_c(flat, 32, c, ldc, rows, cols);
            }
        }
    }

    /// The sums over this `K` block, added to `acc`. Rows past `t.rows` repeat the last row
    /// (computed, never stored).
    ///
    /// # Safety
    /// As [`tile`].
    #[inline(always)]
    unsafe fn accumulate<V: Lanes, const MR: usize, const NV: usize>(
        acc: &mut [[V; NV]; MR],
        t: &Tile<'_>,
    ) {
        let nr = NV * V::LANES;
        // SAFETY: `check` proved row `i < rows` of A holds `kc` floats from `i * lda` and the
        // panel `kc * nr` floats.
        let mut a_rows = [t.a.as_ptr(); MR];
        for (i, row) in a_rows.iter_mut().enumerate() {
            *row = unsafe { t.a.as_ptr().add(i.min(t.rows - 1) * t.lda) };
        }
        let b = t.panel.as_ptr();
        for kk in 0..t.kc {
            // (Plain loops, no closures: a closure does not inherit the caller's target
            // features, and its intrinsics would become calls.)
            let mut bv = [unsafe { V::zero() }; NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = unsafe { V::loadu(b.add(kk * nr + j * V::LANES)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = unsafe { V::splat(*a_rows[i].add(kk)) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = unsafe { V::fma(av, bv[j], *v) };
                }
            }
        }
    }

    /// A tile cut by the matrix's edge: C's part of it in and out through a tile on the stack.
    ///
    /// # Safety
    /// As [`tile`].
    #[inline(always)]
    unsafe fn edge_tile<V: Lanes, const MR: usize, const NV: usize>(t: Tile<'_>) {
        let mut acc = [[unsafe { V::zero() }; NV]; MR];
        if !t.first {
            let mut stack = [[0f32; 32]; MR];
            tile_from_c(stack.as_flattened_mut(), 32, t.c, t.ldc, t.rows, t.cols);
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    // SAFETY: NV * LANES <= 32 floats per stack row.
                    *v = unsafe { V::loadu(stack[i].as_ptr().add(j * V::LANES)) };
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe {
            accumulate(&mut acc, &t);
            store(&acc, t.epilogue.as_ref(), t.c, t.ldc, t.rows, t.cols)
        }
    }

    /// [`gelu_f32`](super::super::activation::gelu_f32) on a vector: the same clamp, Horner
    /// chains of FMAs, division and products, in the same order (identical bits).
    #[inline(always)]
    unsafe fn gelu_erf<V: Lanes>(x: V) -> V {
        unsafe {
            let c = V::min(
                V::max(x, V::splat(-GELU_ERF_CLAMP)),
                V::splat(GELU_ERF_CLAMP),
            );
            let c2 = V::mul(c, c);
            let (mut p, mut q) = (
                V::splat(GELU_ERF_NUMERATOR[5]),
                V::splat(GELU_ERF_DENOMINATOR[5]),
            );
            for k in (0..5).rev() {
                p = V::fma(p, c2, V::splat(GELU_ERF_NUMERATOR[k]));
                q = V::fma(q, c2, V::splat(GELU_ERF_DENOMINATOR[k]));
            }
            let erf = V::div(V::mul(c, p), q);
            V::mul(V::mul(V::splat(0.5), x), V::add(erf, V::splat(1.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::fused::{LinearEpilogue, LinearPrologue};
    use crate::kernels::matmul::{
        linear_fused as linear_fused_packed, linear_fused_panels as linear_fused_packed_panels,
        PackedMatrix,
    };
    use crate::kernels::{reference, ActivationKernel};
    use crate::ops::Precision;

    /// The f32 kernel of an instruction set, as the driver chooses it.
    struct PackedWeights;

    impl PackedWeights {
        fn pack(w: &[f32], n: usize, k: usize, isa: Isa) -> PackedMatrix {
            PackedMatrix::for_isa(w, n, k, Precision::F32, isa)
        }
    }

    /// A bias, an activation kernel and a residual: the driver's epilogue without prologue.
    #[derive(Clone, Copy)]
    struct Epilogue<'a> {
        bias: &'a [f32],
        activation: Option<ActivationKernel>,
        residual: Option<&'a [f32]>,
    }

    fn gemm(a: &[f32], rows: usize, w: &PackedMatrix, e: Epilogue<'_>, out: &mut [f32]) {
        gemm_panels(a, rows, w, 0..w.panels(), e, out, None)
    }

    fn gemm_panels(
        a: &[f32],
        rows: usize,
        w: &PackedMatrix,
        panels: std::ops::Range<usize>,
        e: Epilogue<'_>,
        out: &mut [f32],
        _sums: Option<()>,
    ) {
        let epilogue = LinearEpilogue {
            activation: e.activation.map(|k| k.activation()),
            kernel: e.activation,
            residual: e.residual,
        };
        let none = LinearPrologue::default();
        linear_fused_packed_panels(a, rows, w, panels, e.bias, none, epilogue, out, None)
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

    /// Every available kernel against the reference linear on shapes that are not multiples of
    /// any tile (and bigger than a cache block), with every epilogue.
    #[test]
    fn kernels_match_the_reference_on_odd_shapes() {
        let shapes = [
            (1, 1, 1),
            (7, 13, 5),
            (97, 75, 33),
            (6, 32, 16),
            (200, 40, 17),
            (3, 2816, 8),
            (193, 100, 300),
        ];
        for isa in Isa::available() {
            for &(m, n, k) in &shapes {
                let a = values(m * k, 1);
                let w = values(n * k, 2);
                let bias = values(n, 3);
                let res = values(m * n, 4);
                let mut want = vec![0.0; m * n];
                reference::linear(&a, m, k, &w, Some(&bias), n, &mut want);
                let relu = crate::kernels::ActivationKernel::of(crate::Activation::Relu);
                let packed = PackedWeights::pack(&w, n, k, isa);
                let mut got = vec![0.0; m * n];
                let epilogue = Epilogue {
                    bias: &bias,
                    activation: Some(relu),
                    residual: Some(&res),
                };
                gemm(&a, m, &packed, epilogue, &mut got);
                for i in 0..m * n {
                    let expect = want[i].max(0.0) + res[i];
                    // f32 accumulation over k terms of magnitude <= 1: error <= k * 2^-24 * k.
                    let tol = 1e-6 * (k as f32) * (k as f32).sqrt().max(1.0) + 1e-6;
                    assert!(
                        (got[i] - expect).abs() <= tol,
                        "{isa:?} {m}x{n}x{k} [{i}]: {} vs {expect}",
                        got[i]
                    );
                }
            }
        }
    }

    /// The fused GEMM against its reference twin, every prologue and epilogue, odd shapes
    /// (3 samples of 97 pixels, 45 -> 70 channels).
    #[test]
    fn fused_linear_matches_its_reference_twin() {
        use crate::kernels::reference::{linear_fused, LinearEpilogue, LinearPrologue, RowScale};
        use crate::Activation;
        let (samples, pixels, k, n) = (3, 97, 45, 70);
        let m = samples * pixels;
        let x = values(m * k, 8);
        let w = values(n * k, 9);
        let bias = values(n, 10);
        let scale = values(samples * k, 11);
        let res = values(m * n, 12);
        for isa in Isa::available() {
            let packed = PackedWeights::pack(&w, n, k, isa);
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
                linear_fused(&x, m, k, &w, &bias, n, prologue, epilogue, &mut want, None);
                let mut got = vec![0.0; m * n];
                linear_fused_packed(&x, m, &packed, &bias, prologue, epilogue, &mut got, None);
                let err = want
                    .iter()
                    .zip(&got)
                    .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                // f32 FMA accumulation over 45 terms vs the reference's eight-lane sum + f64:
                // a few ulps of the |x||w| sum (< 45 here, normalised rows ~ 7).
                assert!(err < 2e-5, "{isa:?} norm {norm} scale {scaled}: {err}");
            }
        }
    }

    /// Splitting the columns into panel ranges gives the same bits as the whole product.
    #[test]
    fn column_split_is_exact() {
        let (m, n, k) = (49, 75, 40);
        let (a, w, bias, res) = (
            values(m * k, 13),
            values(n * k, 14),
            values(n, 15),
            values(m * n, 16),
        );
        for isa in Isa::available() {
            let packed = PackedWeights::pack(&w, n, k, isa);
            let e = Epilogue {
                bias: &bias,
                activation: None,
                residual: Some(&res),
            };
            let mut whole = vec![0.0; m * n];
            gemm(&a, m, &packed, e, &mut whole);
            let nr = packed.panel_width();
            let split = 1;
            let left_cols = split * nr;
            let mut left = vec![0.0; m * left_cols];
            let mut right = vec![0.0; m * (n - left_cols)];
            gemm_panels(&a, m, &packed, 0..split, e, &mut left, None);
            gemm_panels(&a, m, &packed, split..packed.panels(), e, &mut right, None);
            for r in 0..m {
                assert_eq!(
                    &whole[r * n..r * n + left_cols],
                    &left[r * left_cols..(r + 1) * left_cols]
                );
                assert_eq!(
                    &whole[r * n + left_cols..(r + 1) * n],
                    &right[r * (n - left_cols)..(r + 1) * (n - left_cols)]
                );
            }
        }
    }

    /// The SIMD kernels and the portable one sum in the same order: identical bits.
    #[test]
    fn kernels_agree_bit_for_bit() {
        let (m, n, k) = (50, 70, 45);
        let a = values(m * k, 5);
        let w = values(n * k, 6);
        let bias = values(n, 7);
        let run = |isa| {
            let mut out = vec![0.0; m * n];
            let e = Epilogue {
                bias: &bias,
                activation: None,
                residual: None,
            };
            gemm(&a, m, &PackedWeights::pack(&w, n, k, isa), e, &mut out);
            out
        };
        let portable = run(Isa::Portable);
        for isa in Isa::available() {
            assert_eq!(run(isa), portable, "{isa:?}");
        }
    }

    /// The in-register epilogue (bias, exact GELU, residual) and the K blocks give the bits of
    /// the portable kernel's tile-on-the-stack path: whole and edge tiles (every row count
    /// below MR), several K blocks (K = 700), columns not a multiple of the panel width.
    #[test]
    fn register_epilogue_and_k_blocks_agree_bit_for_bit() {
        use crate::kernels::ActivationKernel;
        for (m, n, k) in [(49, 70, 700), (97, 32, 45), (11, 48, 300), (1, 16, 1)] {
            let (a, w, bias, res) = (
                values(m * k, 21),
                values(n * k, 22),
                values(n, 23),
                values(m * n, 24),
            );
            for (act, residual) in [(None, false), (Some(crate::Activation::Gelu), true)] {
                let run = |isa| {
                    let mut out = vec![0.0; m * n];
                    let e = Epilogue {
                        bias: &bias,
                        activation: act.map(ActivationKernel::of),
                        residual: residual.then_some(&res[..]),
                    };
                    gemm(&a, m, &PackedWeights::pack(&w, n, k, isa), e, &mut out);
                    out
                };
                let portable = run(Isa::Portable);
                assert!(portable.iter().all(|v| v.is_finite()));
                for isa in Isa::available() {
                    assert_eq!(run(isa), portable, "{isa:?} {m}x{n}x{k} {act:?}");
                }
            }
        }
    }

    /// `CNX_ISA` names, and the cap never exceeds what the CPU has.
    #[test]
    fn isa_names_round_trip_and_detect_is_available() {
        for isa in Isa::available() {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
            assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Isa::from_name("sse9"), None);
        assert!(Isa::available().contains(&Isa::detect()));
        assert!(Isa::detect() <= Isa::best());
    }

    /// GRN's sums of squares accumulated in the epilogue are the bits of the separate pass
    /// over the output (`sum_squares_into`), for whole calls, row regions split at a block
    /// boundary, and column ranges; samples (97 rows) straddle the 64-row blocks.
    #[test]
    fn epilogue_sums_of_squares_equal_the_separate_pass() {
        use crate::kernels::reference::{
            combine_square_sums, sum_squares_into, LinearEpilogue, LinearPrologue, SquareSums,
        };
        use crate::kernels::ActivationKernel;
        use crate::Activation;
        let (samples, pixels, k, n) = (3, 97, 45, 70);
        let m = samples * pixels;
        let (x, w, bias) = (values(m * k, 17), values(n * k, 18), values(n, 19));
        let segments = SquareSums::segment_count(0, m, pixels);
        let prologue = LinearPrologue::default();
        for isa in Isa::available() {
            let packed = PackedWeights::pack(&w, n, k, isa);
            for kernel in [None, Some(ActivationKernel::of(Activation::Gelu))] {
                let epilogue = LinearEpilogue {
                    activation: Some(Activation::Gelu),
                    kernel,
                    residual: None,
                };
                let mut out = vec![0.0; m * n];
                let mut partials = vec![0.0; segments * n];
                let mut sums = SquareSums::new(&mut partials, 0, m, pixels, n);
                linear_fused_packed(
                    &x,
                    m,
                    &packed,
                    &bias,
                    prologue,
                    epilogue,
                    &mut out,
                    Some(&mut sums),
                );
                let mut got = vec![0.0; samples * n];
                sums.combine_into(&mut got, n, 0);
                let (mut partial, mut want) = (vec![0.0; n], vec![0.0; samples * n]);
                sum_squares_into(&out, pixels, n, &mut partial, &mut want);
                assert_eq!(got, want, "{isa:?} whole");

                // Two row regions, split at row 128 (a block boundary inside sample 1).
                let mut split_out = vec![0.0; m * n];
                let mut split_sums = vec![0.0; samples * n];
                for rows in [0..128, 128..m] {
                    let count = SquareSums::segment_count(rows.start, rows.len(), pixels);
                    let mut partials = vec![0.0; count * n];
                    let mut sums =
                        SquareSums::new(&mut partials, rows.start, rows.len(), pixels, n);
                    linear_fused_packed(
                        &x[rows.start * k..rows.end * k],
                        rows.len(),
                        &packed,
                        &bias,
                        prologue,
                        epilogue,
                        &mut split_out[rows.start * n..rows.end * n],
                        Some(&mut sums),
                    );
                    sums.combine_into(&mut split_sums, n, 0);
                }
                assert_eq!(split_out, out);
                assert_eq!(split_sums, want, "{isa:?} row split");

                // Column ranges: panels 0..1 and 1.., each with its own partials.
                let nr = packed.panel_width();
                let mut col_sums = vec![0.0; samples * n];
                for (panels, col0) in [(0..1, 0), (1..packed.panels(), nr)] {
                    let width = (panels.end * nr).min(n) - col0;
                    let mut part = vec![0.0; m * width];
                    let mut partials = vec![0.0; segments * width];
                    let mut sums = SquareSums::new(&mut partials, 0, m, pixels, width);
                    linear_fused_packed_panels(
                        &x,
                        m,
                        &packed,
                        panels,
                        &bias,
                        prologue,
                        epilogue,
                        &mut part,
                        Some(&mut sums),
                    );
                    combine_square_sums(&partials, 0, m, pixels, width, &mut col_sums, n, col0);
                }
                assert_eq!(col_sums, want, "{isa:?} column split");
            }
        }
    }
}
