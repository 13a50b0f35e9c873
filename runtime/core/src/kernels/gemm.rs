//! Packed SGEMM for the 1x1 convolutions (and the stem / downsample convs as GEMMs):
//! `C[m, n] = sum_k A[m, k] W[n, k]`, with `W` (`[N, K]`, PyTorch's Linear layout) packed once,
//! at load, into `NR`-column panels laid out `[K][NR]` (the last panel zero-padded).
//!
//! The register-blocked microkernels compute an `MR x NR` tile: AVX-512F (6 x 32: twelve zmm
//! accumulators), AVX2+FMA (6 x 16: twelve ymm), chosen at run time; a portable kernel (4 x 16,
//! plain loops the compiler vectorises) everywhere else and as a tested fallback. Loops: rows
//! in blocks of [`MC`] (the block of A stays in L2 across all panels), panels, tiles. Every
//! output element is a sum over `k` in increasing order in f32 FMA, whatever the blocking or
//! thread split, so results are identical for any thread count.

/// Rows of A per cache block (a multiple of every kernel's `MR`, and of 64 so that GRN's
/// fixed-order sum-of-squares blocks never straddle two threads).
pub const MC: usize = 192;

// Thread chunks of whole MC blocks must also be whole sum-of-squares blocks.
const _: () = assert!(MC.is_multiple_of(super::reference::SUM_SQUARES_BLOCK));

/// Which microkernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best kernel this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every kernel this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    /// (MR, NR): the tile one microkernel call computes.
    pub fn tile(self) -> (usize, usize) {
        match self {
            Isa::Portable => (4, 16),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (6, 16),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (6, 32),
        }
    }
}

/// `W` (`[N, K]`) packed into `NR`-column panels for one [`Isa`].
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub isa: Isa,
    pub n: usize,
    pub k: usize,
    nr: usize,
    /// `ceil(N / NR)` panels of `K x NR`.
    data: Vec<f32>,
}

impl PackedWeights {
    /// Packs `weight` (`[n, k]`, row-major) for `isa`.
    pub fn pack(weight: &[f32], n: usize, k: usize, isa: Isa) -> PackedWeights {
        assert_eq!(weight.len(), n * k);
        // The microkernels' safety rests on this: packed weights exist only for kernels the
        // CPU runs.
        assert!(
            Isa::available().contains(&isa),
            "{isa:?} is not supported by this CPU"
        );
        let nr = isa.tile().1;
        let panels = n.div_ceil(nr);
        let mut data = vec![0f32; panels * k * nr];
        for p in 0..panels {
            let panel = &mut data[p * k * nr..(p + 1) * k * nr];
            for j in 0..nr.min(n - p * nr) {
                let col = &weight[(p * nr + j) * k..(p * nr + j + 1) * k];
                for (kk, &v) in col.iter().enumerate() {
                    panel[kk * nr + j] = v;
                }
            }
        }
        PackedWeights {
            isa,
            n,
            k,
            nr,
            data,
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

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * self.nr..(p + 1) * self.k * self.nr]
    }
}

/// What is applied to each output element after the product.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// Applied after the bias, in place over each output row segment.
    pub activation: Option<super::ActivationKernel>,
    /// Added last: `[rows, N]`, the same rows as the output.
    pub residual: Option<&'a [f32]>,
}

/// `out[m, n] = epilogue(sum_k a[m, k] w[n, k])` for `rows` rows of `a` (`[rows, K]`).
pub fn gemm(a: &[f32], rows: usize, w: &PackedWeights, epilogue: Epilogue<'_>, out: &mut [f32]) {
    gemm_panels(a, rows, w, 0..w.panels(), epilogue, out, None);
}

/// Where a GEMM's epilogue accumulates the squares of its outputs: the region's partials,
/// and the region row of the GEMM's first row.
pub type SumsSink<'s, 'a> = (&'s mut super::reference::SquareSums<'a>, usize);

/// [`gemm`] for the output columns of `panels` only (`NR` columns each, the last possibly
/// fewer): `out` is `[rows, cols]` for those columns; `epilogue.bias` and
/// `epilogue.residual` cover all `N` columns. Splitting the columns over threads this way
/// changes no result.
pub fn gemm_panels(
    a: &[f32],
    rows: usize,
    w: &PackedWeights,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    mut sums: Option<SumsSink<'_, '_>>,
) {
    let (k, n) = (w.k, w.n);
    let (mr, nr) = w.isa.tile();
    let col0 = panels.start * nr;
    let width = (panels.end * nr).min(n) - col0;
    assert_eq!(a.len(), rows * k);
    assert_eq!(out.len(), rows * width);
    assert_eq!(epilogue.bias.len(), n);
    if let Some(r) = epilogue.residual {
        assert_eq!(r.len(), rows * n);
    }
    // Scratch: the microkernel's output tile, and a zero-padded copy of the last, partial
    // row tile's rows.
    crate::scratch::with_f32(mr * nr + mr * k, |scratch| {
        let (tile, edge_rows) = scratch.split_at_mut(mr * nr);
        for m0 in (0..rows).step_by(MC) {
            let m_block = MC.min(rows - m0);
            for p in panels.clone() {
                let panel = w.panel(p);
                let cols = nr.min(n - p * nr);
                for t in (0..m_block).step_by(mr) {
                    let r0 = m0 + t;
                    let rs = mr.min(rows - r0);
                    let a_tile = if rs == mr {
                        &a[r0 * k..(r0 + mr) * k]
                    } else {
                        edge_rows.iter_mut().for_each(|v| *v = 0.0);
                        edge_rows[..rs * k].copy_from_slice(&a[r0 * k..(r0 + rs) * k]);
                        &edge_rows[..]
                    };
                    microkernel(w.isa, a_tile, k, panel, tile);
                    let bias = &epilogue.bias[p * nr..p * nr + cols];
                    if let Some(act) = &epilogue.activation {
                        // Bias, then the activation over the whole tile in one call: its
                        // rows' vectors are independent, so a long polynomial's latency
                        // overlaps (one call per 32-float row left it latency-bound). The
                        // padding columns hold 0 (zero-padded panel) and are not stored.
                        for row in tile[..rs * nr].chunks_exact_mut(nr) {
                            row.iter_mut().zip(bias).for_each(|(t, &b)| *t += b);
                        }
                        act.apply(&mut tile[..rs * nr]);
                    }
                    for i in 0..rs {
                        let at = (r0 + i) * width + p * nr - col0;
                        let dst = &mut out[at..at + cols];
                        let row = &tile[i * nr..i * nr + cols];
                        if epilogue.activation.is_some() {
                            dst.copy_from_slice(row);
                        } else {
                            for ((d, &t), &b) in dst.iter_mut().zip(row).zip(bias) {
                                *d = t + b;
                            }
                        }
                        if let Some(res) = epilogue.residual {
                            let from = (r0 + i) * n + p * nr;
                            dst.iter_mut()
                                .zip(&res[from..from + cols])
                                .for_each(|(d, &r)| *d += r);
                        }
                        if let Some((sums, row0)) = sums.as_mut() {
                            sums.add(*row0 + r0 + i, p * nr - col0, dst);
                        }
                    }
                }
            }
        }
    })
}

/// The optimised twin of [`reference::linear_fused`](super::reference::linear_fused): the
/// prologue (LayerNorm normalisation, GRN's per-sample scale) is applied while copying each
/// [`MC`]-row block of A into a scratch buffer (the "packing" of A), the product runs on the
/// packed weights, and bias, activation and residual are the GEMM's epilogue (with `sums`,
/// GRN's sums of squares of the outputs too).
#[allow(clippy::too_many_arguments)]
pub fn linear_fused_packed(
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    bias: &[f32],
    prologue: super::reference::LinearPrologue<'_>,
    epilogue: super::reference::LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut super::reference::SquareSums<'_>>,
) {
    linear_fused_packed_panels(
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

/// [`linear_fused_packed`] for the output columns of `panels` only (see [`gemm_panels`]);
/// `epilogue.residual` covers all columns, `sums` only these (`rows` rows).
#[allow(clippy::too_many_arguments)]
pub fn linear_fused_packed_panels(
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    panels: std::ops::Range<usize>,
    bias: &[f32],
    prologue: super::reference::LinearPrologue<'_>,
    epilogue: super::reference::LinearEpilogue<'_>,
    out: &mut [f32],
    mut sums: Option<&mut super::reference::SquareSums<'_>>,
) {
    let (k, n) = (w.k, w.n);
    let width = (panels.end * w.nr).min(n) - panels.start * w.nr;
    assert_eq!(x.len(), rows * k);
    assert_eq!(out.len(), rows * width);
    let activation = epilogue
        .activation
        .map(|act| epilogue.kernel.unwrap_or(super::ActivationKernel::of(act)));
    let scratch_len = if prologue.is_identity() {
        0
    } else {
        MC.min(rows) * k
    };
    crate::scratch::with_f32(scratch_len, |scratch| {
        for m0 in (0..rows).step_by(MC) {
            let mb = MC.min(rows - m0);
            let block = &x[m0 * k..(m0 + mb) * k];
            let a = if prologue.is_identity() {
                block
            } else {
                let packed = &mut scratch[..mb * k];
                packed.copy_from_slice(block);
                for (i, row) in packed.chunks_exact_mut(k).enumerate() {
                    prologue.apply(m0 + i, row);
                }
                &scratch[..mb * k]
            };
            let e = Epilogue {
                bias,
                activation,
                residual: epilogue.residual.map(|r| &r[m0 * n..(m0 + mb) * n]),
            };
            gemm_panels(
                a,
                mb,
                w,
                panels.clone(),
                e,
                &mut out[m0 * width..(m0 + mb) * width],
                sums.as_deref_mut().map(|s| (s, m0)),
            );
        }
    })
}

/// The microkernel's own throughput in GFLOP/s on `threads` threads: one `MR x NR` tile over
/// an L1-resident `K = 256` panel, repeated for about `seconds` (what `cnx bench --peak`
/// reports as the machine's peak for this kernel).
pub fn peak_gflops(isa: Isa, threads: usize, seconds: f64) -> f64 {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not supported by this CPU"
    );
    let (mr, nr) = isa.tile();
    let k = 256;
    let per_call = 2.0 * (mr * nr * k) as f64;
    let start = std::time::Instant::now();
    let calls: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                scope.spawn(move || {
                    let a = vec![1.0f32 + t as f32 * 1e-3; mr * k];
                    let panel = vec![0.5f32; nr * k];
                    let mut tile = vec![0f32; mr * nr];
                    let mut calls = 0u64;
                    while start.elapsed().as_secs_f64() < seconds {
                        for _ in 0..64 {
                            microkernel(isa, &a, k, &panel, &mut tile);
                            std::hint::black_box(&mut tile);
                        }
                        calls += 64;
                    }
                    calls
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    calls.iter().sum::<u64>() as f64 * per_call / elapsed / 1e9
}

/// One `MR x NR` tile: `tile[i][j] = sum_k a[i, k] panel[k][j]` (`a` holds `MR` rows).
fn microkernel(isa: Isa, a: &[f32], k: usize, panel: &[f32], tile: &mut [f32]) {
    match isa {
        Isa::Portable => portable::<4, 16>(a, k, panel, tile),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers pass the `Isa` of a `PackedWeights` (whose `pack` asserts the CPU runs
        // it) or one `peak_gflops` checked; `a` has 6 rows of `k`, `panel` `k x 16`, `tile`
        // 6 x 16 (gemm's sizes; the kernel asserts them).
        Isa::Avx2 => unsafe { x86::avx2_6x16(a, k, panel, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX-512F; `panel` is `k x 32`, `tile` 6 x 32.
        Isa::Avx512 => unsafe { x86::avx512_6x32(a, k, panel, tile) },
    }
}

/// The portable microkernel: the same summation order as the SIMD ones (FMA per k).
fn portable<const MR: usize, const NR: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [f32],
) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let av = a[i * k + kk];
            for (c, &bv) in acc_row.iter_mut().zip(b) {
                *c = av.mul_add(bv, *c);
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        tile[i * NR..(i + 1) * NR].copy_from_slice(acc_row);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA. `a` holds 6 rows of `k` floats, `panel` `k x 16`,
    /// `tile` at least 6 x 16.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2_6x16(a: &[f32], k: usize, panel: &[f32], tile: &mut [f32]) {
        assert!(a.len() >= 6 * k && panel.len() >= 16 * k && tile.len() >= 96);
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        let (ap, bp) = (a.as_ptr(), panel.as_ptr());
        for kk in 0..k {
            // SAFETY: kk < k, so the 16 floats at kk * 16 lie inside `panel`, and a[i * k + kk]
            // inside `a` for i < 6 (the caller's sizes).
            let b0 = _mm256_loadu_ps(bp.add(kk * 16));
            let b1 = _mm256_loadu_ps(bp.add(kk * 16 + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(i * k + kk));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: tile holds 6 x 16 floats.
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * 16), row[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * 16 + 8), row[1]);
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F. `a` holds 6 rows of `k` floats, `panel` `k x 32`,
    /// `tile` at least 6 x 32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512_6x32(a: &[f32], k: usize, panel: &[f32], tile: &mut [f32]) {
        assert!(a.len() >= 6 * k && panel.len() >= 32 * k && tile.len() >= 192);
        let mut acc = [[_mm512_setzero_ps(); 2]; 6];
        let (ap, bp) = (a.as_ptr(), panel.as_ptr());
        for kk in 0..k {
            // SAFETY: as in `avx2_6x16`, with 32-float panel rows.
            let b0 = _mm512_loadu_ps(bp.add(kk * 32));
            let b1 = _mm512_loadu_ps(bp.add(kk * 32 + 16));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i * k + kk));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: tile holds 6 x 32 floats.
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * 32), row[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * 32 + 16), row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;

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
