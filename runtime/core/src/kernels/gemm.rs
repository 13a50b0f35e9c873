//! Packed SGEMM for the 1x1 convolutions (and the stem / downsample convs as GEMMs):
//! `C[m, n] = sum_k A[m, k] W[n, k]`, with `W` (`[N, K]`, PyTorch's Linear layout) packed once,
//! at load, into `NR`-column panels laid out `[K][NR]` (the last panel zero-padded).
//!
//! The register-blocked microkernels compute an `MR x NR` tile: AVX-512F (6 x 32: twelve zmm
//! accumulators), AVX2+FMA (6 x 16: twelve ymm), both one generic kernel over
//! [`Lanes`](super::simd::Lanes); a portable kernel (4 x 16, plain loops) everywhere else and
//! as a tested fallback. Loops (BLIS's order): rows in blocks of [`MC`] (the block of A stays
//! in L2), `K` in blocks whose slice of a weight panel fits in L1 beside the A rows it meets
//! ([`PANEL_BLOCK_BYTES`]), panels, row tiles. A tile's partial sums go to the output between
//! `K` blocks and come back exactly, so every output element is still one sum over `k` in
//! increasing order in f32 FMA, whatever the blocking or thread split: results are identical
//! for any thread count. The epilogue (bias, exact GELU, residual) is applied to the
//! accumulators in registers before the tile's one store to the output; tiles cut by the
//! matrix's edge, and activations other than GELU, take the same arithmetic through a tile on
//! the stack.

use super::fused::{LinearEpilogue, LinearPrologue, SquareSums};
use super::ActivationKernel;
pub use super::{Isa, Width};
use crate::Activation;

/// Rows of A per cache block (a multiple of every kernel's `MR`, and of 64 so that GRN's
/// fixed-order sum-of-squares blocks never straddle two blocks).
pub const MC: usize = 192;

// Row blocks must also be whole sum-of-squares blocks.
const _: () = assert!(MC.is_multiple_of(super::fused::SUM_SQUARES_BLOCK));

/// Bytes of one weight panel's `K` block: it stays in L1 (32 KiB on Zen 3 / Zen 4, 48 KiB on
/// Ice Lake) while every row tile of the A block streams past it, with room for those rows'
/// slices of A.
pub const PANEL_BLOCK_BYTES: usize = 16 * 1024;

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

    /// The `K` blocks the product runs in: equal lengths of at most
    /// [`PANEL_BLOCK_BYTES`] of a panel each (one empty block when `K` is 0).
    /// (No allocation: a warm forward pass allocates nothing.)
    fn k_blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> + Clone {
        let (k, most) = (self.k, (PANEL_BLOCK_BYTES / (4 * self.nr)).max(1));
        let count = k.div_ceil(most).max(1);
        let len = k.div_ceil(count);
        (0..count).map(move |b| (b * len).min(k)..((b + 1) * len).min(k))
    }
}

/// What is applied to each output element after the product.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// Applied after the bias.
    pub activation: Option<ActivationKernel>,
    /// Added last: `[rows, N]`, the same rows as the output.
    pub residual: Option<&'a [f32]>,
}

/// `out[m, n] = epilogue(sum_k a[m, k] w[n, k])` for `rows` rows of `a` (`[rows, K]`).
pub fn gemm(a: &[f32], rows: usize, w: &PackedWeights, epilogue: Epilogue<'_>, out: &mut [f32]) {
    gemm_panels(a, rows, w, 0..w.panels(), epilogue, out, None);
}

/// Where a GEMM's epilogue accumulates the squares of its outputs: the region's partials,
/// and the region row of the GEMM's first row.
pub type SumsSink<'s, 'a> = (&'s mut SquareSums<'a>, usize);

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
    let k_blocks = w.k_blocks();
    for m0 in (0..rows).step_by(MC) {
        let m_block = MC.min(rows - m0);
        for kr in k_blocks.clone() {
            let last = kr.end == k;
            for p in panels.clone() {
                let cols = nr.min(n - p * nr);
                let panel = &w.panel(p)[kr.start * nr..kr.end * nr];
                for r0 in (m0..m0 + m_block).step_by(mr) {
                    let tile_rows = mr.min(rows - r0);
                    let at = r0 * width + p * nr - col0;
                    let tile = Tile {
                        a: &a[r0 * k + kr.start..],
                        lda: k,
                        rows: tile_rows,
                        kc: kr.len(),
                        panel,
                        c: &mut out[at..],
                        ldc: width,
                        cols,
                        first: kr.start == 0,
                        epilogue: last.then(|| TileEpilogue {
                            bias: &epilogue.bias[p * nr..p * nr + cols],
                            activation: epilogue.activation,
                            residual: epilogue.residual.map(|r| (&r[r0 * n + p * nr..], n)),
                        }),
                    };
                    microkernel(w.isa, tile);
                    if let (true, Some((sums, row0))) = (last, sums.as_mut()) {
                        for i in 0..tile_rows {
                            let row = &out[at + i * width..][..cols];
                            sums.add(*row0 + r0 + i, p * nr - col0, row);
                        }
                    }
                }
            }
        }
    }
}

/// The optimised twin of [`reference::linear_fused`](super::reference::linear_fused): the
/// prologue (LayerNorm normalisation, GRN's per-sample scale) is applied while copying each
/// [`MC`]-row block of A into a scratch buffer, the product runs on the packed weights, and
/// bias, activation and residual are the GEMM's epilogue (with `sums`, GRN's sums of squares
/// of the outputs too).
#[allow(clippy::too_many_arguments)]
pub fn linear_fused_packed(
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut SquareSums<'_>>,
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
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    mut sums: Option<&mut SquareSums<'_>>,
) {
    let (k, n) = (w.k, w.n);
    let width = (panels.end * w.nr).min(n) - panels.start * w.nr;
    assert_eq!(x.len(), rows * k);
    assert_eq!(out.len(), rows * width);
    let activation = epilogue
        .activation
        .map(|act| epilogue.kernel.unwrap_or(ActivationKernel::of(act)));
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
                let rows = packed.chunks_exact_mut(k).zip(block.chunks_exact(k));
                for (i, (row, src)) in rows.enumerate() {
                    prologue.apply_from(m0 + i, src, row);
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
                            microkernel(
                                isa,
                                Tile {
                                    a: &a,
                                    lda: k,
                                    rows: mr,
                                    kc: k,
                                    panel: &panel,
                                    c: &mut tile,
                                    ldc: nr,
                                    cols: nr,
                                    first: true,
                                    epilogue: None,
                                },
                            );
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

/// One microkernel call: the `rows x cols` tile of C at `c` (row stride `ldc`) gets
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

/// The tile's epilogue: `bias` (`cols` values), the activation, and the residual's rows (at
/// `i * row_stride`).
#[derive(Clone, Copy)]
pub(super) struct TileEpilogue<'t> {
    pub(super) bias: &'t [f32],
    pub(super) activation: Option<ActivationKernel>,
    pub(super) residual: Option<(&'t [f32], usize)>,
}

impl Tile<'_> {
    /// The sizes every kernel relies on (its memory safety too): checked once per call.
    fn check(&self, mr: usize, nr: usize) {
        assert!((1..=mr).contains(&self.rows) && (1..=nr).contains(&self.cols));
        assert!(self.a.len() >= (self.rows - 1) * self.lda + self.kc && self.kc <= self.lda);
        assert!(self.panel.len() >= self.kc * nr);
        assert!(self.c.len() >= (self.rows - 1) * self.ldc + self.cols && self.cols <= self.ldc);
        if let Some(e) = &self.epilogue {
            assert!(e.bias.len() >= self.cols);
            if let Some((r, stride)) = e.residual {
                assert!(r.len() >= (self.rows - 1) * stride + self.cols && self.cols <= stride);
            }
        }
    }
}

impl TileEpilogue<'_> {
    /// The epilogue on a tile held in `tile` (`rows x cols` of a row stride `nr`): the same
    /// operations, in the same order, as the in-register one.
    pub(super) fn apply(&self, tile: &mut [f32], nr: usize, rows: usize, cols: usize) {
        for (i, row) in tile.chunks_exact_mut(nr).take(rows).enumerate() {
            let row = &mut row[..cols];
            row.iter_mut().zip(self.bias).for_each(|(t, &b)| *t += b);
            if let Some(act) = &self.activation {
                act.apply(row);
            }
            if let Some((r, stride)) = self.residual {
                let r = &r[i * stride..i * stride + cols];
                row.iter_mut().zip(r).for_each(|(t, &v)| *t += v);
            }
        }
    }
}

/// Copies `rows x cols` between a tile of row stride `nr` and C's rows (stride `ldc`).
fn tile_from_c(tile: &mut [f32], nr: usize, c: &[f32], ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        tile[i * nr..i * nr + cols].copy_from_slice(&c[i * ldc..i * ldc + cols]);
    }
}

pub(super) fn tile_to_c(
    tile: &[f32],
    nr: usize,
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    for i in 0..rows {
        c[i * ldc..i * ldc + cols].copy_from_slice(&tile[i * nr..i * nr + cols]);
    }
}

fn microkernel(isa: Isa, t: Tile<'_>) {
    let (mr, nr) = isa.tile();
    t.check(mr, nr);
    match isa.width() {
        Width::Portable => portable::<4, 16>(t),
        // SAFETY: callers pass the `Isa` of a `PackedWeights` (whose `pack` asserts the CPU runs
        // it) or one `peak_gflops` checked; `check` asserted every size the kernel reads and
        // writes for its (MR, NR).
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { x86::avx2_6x16(t) },
        // SAFETY: as above, for AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { x86::avx512_6x32(t) },
    }
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
    /// The CPU supports AVX2 and FMA; `t` passed `Tile::check(6, 16)` (so `rows <= 6`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_6x16(t: Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<V256>(t) }
    }

    /// # Safety
    /// The CPU supports AVX-512F; `t` passed `Tile::check(6, 32)` (so `rows <= 6`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_6x32(t: Tile<'_>) {
        // SAFETY: the caller's contract.
        unsafe { exact_rows::<V512>(t) }
    }

    /// The 6-row kernel, or for a tile of fewer rows the kernel of exactly its rows (49 rows
    /// of a late stage at batch 1: eight tiles of 6 and one of 1, not 6).
    ///
    /// # Safety
    /// The CPU has `V`'s ISA; `t` passed `Tile::check(6, 2 * V::LANES)`.
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
    /// The CPU has `V`'s ISA; `t` passed `Tile::check(MR, NV * V::LANES)`.
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
