//! What a GEMM microkernel is given: one call's tile of C ([`MicroTile`]), its operands in
//! the kernel's format ([`Operand`], [`PanelRef`]), its epilogue ([`TileEpilogue`]) and int8
//! dequantisation ([`Dequant`]), and the order its sums take ([`SumOrder`]). The driver
//! ([`super::matmul`]) builds these; the microkernels ([`super::gemm`], [`super::qgemm`],
//! [`super::bf16`], [`super::amx`]) read them: both sides depend on this file, neither on
//! the other's.

use super::quantize::RowQuant;
use super::ActivationKernel;

/// The order in which a kernel adds its products: what its reference twin reproduces, so that
/// the kernel equals the twin bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOrder {
    /// One f32 FMA per `k`, in increasing `k`.
    F32Fma,
    /// Exact integers (int8): any order.
    Exact,
    /// bf16 pairs in increasing `k`, the odd product added before the even one (as
    /// `vdpbf16ps` defines it); with `flush`, each sum's denormal results flushed to zero.
    Bf16Pairs { flush: bool },
    /// `tdpbf16ps`: per 32 `k`, the even and the odd products summed apart from zero, then
    /// their sum added to the accumulator; denormal results flushed to zero.
    Bf16Tile,
}

/// A `K` block of one panel, as a kernel reads it.
#[derive(Clone, Copy)]
pub enum PanelRef<'t> {
    F32(&'t [f32]),
    Bf16(&'t [u16]),
    I8(&'t [i8]),
}

/// Rows of A in a kernel's format.
#[derive(Clone, Copy)]
pub enum Operand<'t> {
    F32(&'t [f32]),
    Bf16(&'t [u16]),
    U8(&'t [u8]),
}

impl Operand<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Operand::F32(a) => a.len(),
            Operand::Bf16(a) => a.len(),
            Operand::U8(a) => a.len(),
        }
    }

    /// The operand from element `at` on.
    pub(super) fn from(self, at: usize) -> Self {
        match self {
            Operand::F32(a) => Operand::F32(&a[at..]),
            Operand::Bf16(a) => Operand::Bf16(&a[at..]),
            Operand::U8(a) => Operand::U8(&a[at..]),
        }
    }
}

impl PanelRef<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            PanelRef::F32(b) => b.len(),
            PanelRef::Bf16(b) => b.len(),
            PanelRef::I8(b) => b.len(),
        }
    }
}

/// Each output element's epilogue: `bias` (`cols` values), the activation, and the residual's
/// rows (at `i * row_stride`).
#[derive(Clone, Copy)]
pub struct TileEpilogue<'t> {
    pub bias: &'t [f32],
    pub activation: Option<ActivationKernel>,
    pub residual: Option<(&'t [f32], usize)>,
}

impl TileEpilogue<'_> {
    /// The epilogue on a tile held in `tile` (`rows x cols` of a row stride `nr`): the same
    /// operations, in the same order, as the in-register one.
    pub fn apply(&self, tile: &mut [f32], nr: usize, rows: usize, cols: usize) {
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

    /// The epilogue of the tile's row `i` on.
    pub fn from_row(&self, i: usize) -> Self {
        TileEpilogue {
            residual: self.residual.map(|(r, stride)| (&r[i * stride..], stride)),
            ..*self
        }
    }
}

/// int8: each row's scale and zero point, the panel's column sums and scales.
#[derive(Clone, Copy)]
pub struct Dequant<'t> {
    pub quants: &'t [RowQuant],
    pub col_sums: &'t [i32],
    pub scales: &'t [f32],
}

/// One microkernel call: the `rows x cols` tile of C at `c` (row stride `ldc`) gets the sums
/// over the `kc` (packed) `K` of this block of `a`'s rows (row `i` at `i * lda`) and the
/// panel's columns, added to what `c` holds unless `first`; with `epilogue` (the last `K`
/// block), then dequantised (int8) and through the epilogue.
pub struct MicroTile<'t> {
    pub a: Operand<'t>,
    pub lda: usize,
    pub rows: usize,
    pub kc: usize,
    /// `kc x NR` values: the `K` block of one packed panel.
    pub panel: PanelRef<'t>,
    pub c: &'t mut [f32],
    pub ldc: usize,
    pub cols: usize,
    pub first: bool,
    pub dequant: Option<Dequant<'t>>,
    pub epilogue: Option<TileEpilogue<'t>>,
}

impl MicroTile<'_> {
    /// The sizes every kernel relies on (its memory safety too): checked once per call by the
    /// kernel, for its `(MR, NR)` and whether it reads whole tiles of `MR` rows of A.
    pub fn check(&self, mr: usize, nr: usize, whole_row_tiles: bool) {
        assert!((1..=mr).contains(&self.rows) && (1..=nr).contains(&self.cols));
        let a_rows = if whole_row_tiles { mr } else { self.rows };
        assert!(self.a.len() >= (a_rows - 1) * self.lda + self.kc && self.kc <= self.lda);
        assert!(self.panel.len() >= self.kc * nr);
        assert!(self.c.len() >= (self.rows - 1) * self.ldc + self.cols && self.cols <= self.ldc);
        if let Some(d) = &self.dequant {
            assert!(d.quants.len() >= self.rows);
            assert!(d.col_sums.len() >= nr && d.scales.len() >= nr);
        }
        if let Some(e) = &self.epilogue {
            assert!(e.bias.len() >= self.cols);
            if let Some((r, stride)) = e.residual {
                assert!(r.len() >= (self.rows - 1) * stride + self.cols && self.cols <= stride);
            }
        }
    }
}

/// Copies `rows x cols` between a tile of row stride `nr` and C's rows (stride `ldc`).
pub fn tile_from_c(tile: &mut [f32], nr: usize, c: &[f32], ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        tile[i * nr..i * nr + cols].copy_from_slice(&c[i * ldc..i * ldc + cols]);
    }
}

pub fn tile_to_c(tile: &[f32], nr: usize, c: &mut [f32], ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        c[i * ldc..i * ldc + cols].copy_from_slice(&tile[i * nr..i * nr + cols]);
    }
}
