//! The one GEMM driver, for every precision: `C[m, n] = epilogue(sum_k A'[m, k] B'[n, k])`
//! for the 1x1 convolutions (Linear layers) and the convs over patches (stem, downsampling),
//! where `A'` is the input rows after the prologue (LayerNorm's normalisation, GRN's scale)
//! in the kernel's format and `B'` the weight (`[N, K]`, PyTorch's Linear layout) packed once,
//! at load.
//!
//! Each microkernel is declared as data ([`MatMulKernel`], in [`KERNELS`], as tract's `mmm`
//! kernels are): its precision, the CPU features it needs, its tile (`MR x NR`), the packed
//! formats of A and B (`K` grouped by 1, 2 or 4 along a panel row, `K` padded to a multiple
//! of [`MatMulKernel::k_align`], rows of A padded to whole tiles), how its accumulators
//! become f32 ([`Accumulation`]) and the sum order its reference twin reproduces
//! ([`SumOrder`]). [`kernel_for`] picks the best kernel a precision has on an [`Isa`] by
//! features alone. The driver is the same for every kernel:
//!
//! - **Rows** in blocks ([`MatMulKernel::block_rows`]): a block of A is packed (f32: the
//!   prologue into scratch, or the input as it is; bf16: the prologue, then rounded to bf16;
//!   int8: the prologue, then quantised per row) and stays in L2 while the panels stream past.
//! - **K** in blocks for the f32 kernels only (a panel's block stays in L1,
//!   [`PANEL_BLOCK_BYTES`]): partial sums go to C and come back exactly, so every element is
//!   one sum over `k` in increasing order whatever the blocking or the thread split. The bf16
//!   and int8 kernels keep all of `K` in their accumulators.
//! - **Panels** of `NR` output columns, then **row tiles** of `MR`: one microkernel call each;
//!   the last `K` block's call ends in the epilogue ([`TileEpilogue`]: bias, exact GELU,
//!   residual), and GRN's sums of squares are taken from the tile's output.
//!
//! | precision | kernels (best first) | A | B panel |
//! |---|---|---|---|
//! | f32 | AVX-512 6x32, AVX2 6x16, portable 4x16 | f32 rows | `[K][NR]` |
//! | bf16 | AMX 64x32, AVX512_BF16 6x32, AVX-512 FMA 6x32, AVX2 FMA 6x16, portable 4x16 | bf16 rows | `[K/2][NR][2]` |
//! | int8 | AMX 64x32, AVX-512 VNNI 6x32, AVX-VNNI 6x16, AVX2 6x16, portable 4x16 | u8 rows + scale, zero | `[K/4][NR][4]` |
//!
//! A next precision (fp16 on AVX512_FP16 or AMX-FP16) adds its rows to [`KERNELS`], its
//! kernel file, a [`Panels`] / [`Operand`] variant with its packing here, and its name in
//! [`Precision`]; nothing else in the driver changes.

use super::amx;
use super::bf16;
use super::fused::{LinearEpilogue, LinearPrologue, SquareSums};
use super::gemm;
use super::isa::{Feature, Features, Isa};
pub use super::microkernel::{
    tile_from_c, tile_to_c, Dequant, MicroTile, Operand, PanelRef, SumOrder, TileEpilogue,
};
use super::qgemm;
use super::quantize::{self, QuantisedWeights, RowQuant};
use super::ActivationKernel;
use crate::ops::Precision;

/// Rows of A per f32 cache block (a multiple of every kernel's `MR`, and of 64 so that GRN's
/// fixed-order sum-of-squares blocks never straddle two blocks).
pub const MC: usize = 192;

// Row blocks must also be whole sum-of-squares blocks.
const _: () = assert!(MC.is_multiple_of(super::fused::SUM_SQUARES_BLOCK));

/// Bytes of one f32 weight panel's `K` block: it stays in L1 (32 KiB on Zen 3 / Zen 4, 48 KiB
/// on Ice Lake) while every row tile of the A block streams past it, with room for those
/// rows' slices of A.
pub const PANEL_BLOCK_BYTES: usize = 16 * 1024;

/// Bytes of packed (bf16 or int8) A per row block: the block stays in L2 while every panel
/// streams past it.
const BLOCK_BYTES: usize = 256 * 1024;

/// The f32 row the prologue writes before a row is rounded or quantised: scratch of at least
/// this many floats (every `K` of a ConvNeXt V2 up to huge's 11264).
const ROW_SCRATCH: usize = 16 * 1024;

/// How a kernel's accumulators become the f32 the epilogue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulation {
    /// f32 accumulators (f32 and bf16 products).
    F32,
    /// Exact i32 sums, dequantised: `f32(acc - z * colsum) * (s_a * s_w)`.
    Dequantise,
}

/// What a kernel's unit needs around a run of tiles on one thread: set up, then tear down.
pub(super) type Session = (fn(), fn());

/// A GEMM microkernel, as data.
pub struct MatMulKernel {
    /// What `cnx bench` and the tests print.
    pub name: &'static str,
    pub precision: Precision,
    /// What the CPU must have.
    pub requires: Features,
    /// `(MR, NR)`: the tile one call computes.
    pub mr: usize,
    pub nr: usize,
    /// `K` values of one column stored together along a panel row: B is `[K / g][NR][g]`.
    pub k_group: usize,
    /// `K` is padded with zeros to a multiple of this, in A and B.
    pub k_align: usize,
    /// A holds whole tiles of `MR` rows (the last padded; those rows' results are dropped).
    pub whole_row_tiles: bool,
    /// A is packed in tiles of 16 rows by 64 bytes of `K`, each tile contiguous (the AMX
    /// tiles' loads then read 1 KiB in a row), tiles of 16 rows in `K` order, then the next
    /// 16 rows: row `i`'s element `k` at `(i / 16) * 16 kp + (k / t) * 16 t + (i % 16) t +
    /// k % t`, `t` the elements of 64 bytes. Else rows of `kp` elements.
    pub tiled_a: bool,
    /// Set up and tear down the unit around a run of tiles on one thread (the AMX tile
    /// configuration is per-thread state): called by the driver around each product.
    pub(super) session: Option<Session>,
    /// f32: `K` blocks of this many bytes of a panel at most, partial sums through C.
    pub k_block_bytes: Option<usize>,
    pub accumulation: Accumulation,
    pub sum_order: SumOrder,
    /// int8: the largest weight magnitude the kernel's sums take without overflow.
    pub weight_max: i32,
    /// A software model of a unit the machine may lack (the AMX tiles): run by the tests
    /// anywhere, never chosen by [`kernel_for`].
    pub modelled: bool,
    /// Computes one tile. Reached only through a [`PackedMatrix`], whose packing asserted
    /// [`MatMulKernel::runs_here`]; it checks the tile's sizes itself.
    pub(super) run: fn(MicroTile<'_>),
}

impl std::fmt::Debug for MatMulKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for MatMulKernel {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

const fn features(f: &[Feature]) -> Features {
    Features::of(f)
}

/// Every GEMM microkernel, best first within each precision.
pub static KERNELS: &[MatMulKernel] = {
    use Feature::*;
    const F32: MatMulKernel = MatMulKernel {
        name: "f32 portable 4x16",
        precision: Precision::F32,
        requires: Features::NONE,
        mr: 4,
        nr: 16,
        k_group: 1,
        k_align: 1,
        whole_row_tiles: false,
        tiled_a: false,
        session: None,
        k_block_bytes: Some(PANEL_BLOCK_BYTES),
        accumulation: Accumulation::F32,
        sum_order: SumOrder::F32Fma,
        weight_max: 0,
        modelled: false,
        run: gemm::portable_4x16,
    };
    const BF16: MatMulKernel = MatMulKernel {
        name: "bf16 portable 4x16",
        precision: Precision::Bf16,
        k_group: 2,
        k_align: 2,
        k_block_bytes: None,
        sum_order: SumOrder::Bf16Pairs { flush: false },
        run: bf16::portable_4x16,
        ..F32
    };
    const INT8: MatMulKernel = MatMulKernel {
        name: "int8 portable 4x16",
        precision: Precision::Int8,
        k_group: 4,
        k_align: 4,
        k_block_bytes: None,
        accumulation: Accumulation::Dequantise,
        sum_order: SumOrder::Exact,
        weight_max: 127,
        run: qgemm::portable_4x16,
        ..F32
    };
    const AMX_BF16: MatMulKernel = MatMulKernel {
        name: "bf16 amx 64x32",
        requires: features(&[Avx2Fma, Avx512F, Avx512Bw, AmxTile, AmxBf16]),
        mr: 32 * amx::TILES_PER_CALL,
        nr: 32,
        k_align: 32,
        whole_row_tiles: true,
        tiled_a: true,
        session: Some((amx::configure, amx::release)),
        sum_order: SumOrder::Bf16Tile,
        run: amx::bf16_64x32,
        ..BF16
    };
    const AMX_INT8: MatMulKernel = MatMulKernel {
        name: "int8 amx 64x32",
        requires: features(&[Avx2Fma, Avx512F, Avx512Bw, AmxTile, AmxInt8]),
        mr: 32 * amx::TILES_PER_CALL,
        nr: 32,
        k_align: 64,
        whole_row_tiles: true,
        tiled_a: true,
        session: Some((amx::configure, amx::release)),
        run: amx::int8_64x32,
        ..INT8
    };
    &[
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "f32 avx512 6x32",
            requires: features(&[Avx2Fma, Avx512F]),
            mr: 6,
            nr: 32,
            run: gemm::avx512_6x32,
            ..F32
        },
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "f32 avx2 6x16",
            requires: features(&[Avx2Fma]),
            mr: 6,
            run: gemm::avx2_6x16,
            ..F32
        },
        F32,
        #[cfg(target_arch = "x86_64")]
        AMX_BF16,
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "bf16 avx512-bf16 6x32",
            requires: features(&[Avx2Fma, Avx512F, Avx512Bw, Avx512Bf16]),
            mr: 6,
            nr: 32,
            sum_order: SumOrder::Bf16Pairs { flush: true },
            run: bf16::avx512_bf16_6x32,
            ..BF16
        },
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "bf16 avx512 fma 6x32",
            requires: features(&[Avx2Fma, Avx512F]),
            mr: 6,
            nr: 32,
            run: bf16::avx512_fma_6x32,
            ..BF16
        },
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "bf16 avx2 fma 6x16",
            requires: features(&[Avx2Fma]),
            mr: 6,
            run: bf16::avx2_fma_6x16,
            ..BF16
        },
        BF16,
        MatMulKernel {
            name: "bf16 amx 64x32 (tile model)",
            requires: Features::NONE,
            modelled: true,
            session: None,
            run: amx::bf16_64x32_model,
            ..AMX_BF16
        },
        #[cfg(target_arch = "x86_64")]
        AMX_INT8,
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "int8 avx512-vnni 6x32",
            requires: features(&[Avx2Fma, Avx512F, Avx512Bw, Avx512Vnni]),
            mr: 6,
            nr: 32,
            run: qgemm::avx512_vnni_6x32,
            ..INT8
        },
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "int8 avx-vnni 6x16",
            requires: features(&[Avx2Fma, AvxVnni]),
            mr: 6,
            run: qgemm::avx_vnni_6x16,
            ..INT8
        },
        #[cfg(target_arch = "x86_64")]
        MatMulKernel {
            name: "int8 avx2 6x16",
            requires: features(&[Avx2Fma]),
            mr: 6,
            weight_max: 63,
            run: qgemm::avx2_6x16,
            ..INT8
        },
        INT8,
        MatMulKernel {
            name: "int8 amx 64x32 (tile model)",
            requires: Features::NONE,
            modelled: true,
            session: None,
            run: amx::int8_64x32_model,
            ..AMX_INT8
        },
    ]
};

/// The best kernel `precision` has on `isa`: the first of [`KERNELS`] whose features `isa`
/// has (every precision has a portable kernel).
pub fn kernel_for(precision: Precision, isa: Isa) -> &'static MatMulKernel {
    KERNELS
        .iter()
        .find(|k| k.precision == precision && !k.modelled && k.requires.within(isa.features()))
        .expect("every precision has a portable kernel")
}

/// Every kernel of `precision` this machine runs: every table row whose features the CPU has,
/// and the software models (for tests and benchmarks).
pub fn kernels_here(precision: Precision) -> Vec<&'static MatMulKernel> {
    KERNELS
        .iter()
        .filter(|k| k.precision == precision && k.runs_here())
        .collect()
}

impl MatMulKernel {
    /// Whether this machine runs the kernel (the CPU has its features, or it is a model).
    pub fn runs_here(&self) -> bool {
        self.modelled || self.requires.within(Features::cpu())
    }

    /// `K` as packed: padded to [`MatMulKernel::k_align`].
    pub fn padded_k(&self, k: usize) -> usize {
        k.next_multiple_of(self.k_align)
    }

    /// Rows of A the packed form of `rows` rows holds (whole tiles where the kernel needs them).
    pub fn padded_rows(&self, rows: usize) -> usize {
        if self.whole_row_tiles {
            rows.next_multiple_of(self.mr)
        } else {
            rows
        }
    }

    /// Bytes of one packed A element.
    fn a_bytes(&self) -> usize {
        match self.precision {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
            Precision::Int8 => 1,
        }
    }

    /// Rows of A per block: [`MC`] for the f32 kernels (their `K` blocks keep the panel in
    /// L1), else as many as fit [`BLOCK_BYTES`] packed, whole tiles, at most 192.
    pub fn block_rows(&self, k: usize) -> usize {
        if self.k_block_bytes.is_some() {
            return MC;
        }
        let bytes = self.padded_k(k).max(1) * self.a_bytes();
        let rows = (BLOCK_BYTES / bytes).clamp(self.mr, MC);
        rows - rows % self.mr
    }
}

/// A weight's panels in a kernel's format.
#[derive(Debug, Clone)]
pub enum Panels {
    F32(Vec<f32>),
    /// bf16 bits.
    Bf16(Vec<u16>),
    I8(Vec<i8>),
}

/// A weight `[N, K]` packed once, at load, for one kernel: `ceil(N / NR)` panels of
/// `Kp x NR` values in the kernel's grouping, with (int8) each column's scale and sum.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub kernel: &'static MatMulKernel,
    pub n: usize,
    pub k: usize,
    /// `K` padded to the kernel's alignment.
    kp: usize,
    data: Panels,
    /// int8: `s_w` per column, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// int8: `sum_k q_w` per column, padded likewise.
    col_sums: Vec<i32>,
    /// int8: the largest weight magnitude.
    pub q_max: i32,
}

impl PackedMatrix {
    /// Packs `weight` (`[n, k]`, row-major) for `kernel`: as it is (f32), rounded to bf16
    /// (nearest even), or quantised per output channel (int8, with the kernel's
    /// [`MatMulKernel::weight_max`]).
    pub fn pack(weight: &[f32], n: usize, k: usize, kernel: &'static MatMulKernel) -> Self {
        assert_eq!(weight.len(), n * k);
        match kernel.precision {
            Precision::F32 => {
                Self::pack_with(kernel, n, k, Panels::F32, |col, kk| weight[col * k + kk])
            }
            Precision::Bf16 => Self::pack_with(kernel, n, k, Panels::Bf16, |col, kk| {
                bf16::round(weight[col * k + kk])
            }),
            Precision::Int8 => Self::from_quantised(
                &QuantisedWeights::new(weight, n, k, kernel.weight_max),
                kernel,
            ),
        }
    }

    /// [`PackedMatrix::pack`] for the best kernel of `precision` on `isa`.
    pub fn for_isa(weight: &[f32], n: usize, k: usize, precision: Precision, isa: Isa) -> Self {
        Self::pack(weight, n, k, kernel_for(precision, isa))
    }

    /// Packs int8 weights already quantised (with at most the kernel's weight magnitude).
    pub fn from_quantised(q: &QuantisedWeights, kernel: &'static MatMulKernel) -> Self {
        assert_eq!(kernel.precision, Precision::Int8);
        assert!(
            q.q_max <= kernel.weight_max,
            "weights too wide for {kernel:?}"
        );
        let mut packed =
            Self::pack_with(kernel, q.n, q.k, Panels::I8, |col, kk| q.q[col * q.k + kk]);
        let padded = packed.panels() * kernel.nr;
        packed.scales = q.scales.clone();
        packed.scales.resize(padded, 0.0);
        packed.col_sums = q.col_sums.clone();
        packed.col_sums.resize(padded, 0);
        packed.q_max = q.q_max;
        packed
    }

    /// Lays out `value(col, k)` in `kernel`'s panels (zeros past `N` and `K`).
    fn pack_with<T: Copy + Default>(
        kernel: &'static MatMulKernel,
        n: usize,
        k: usize,
        wrap: fn(Vec<T>) -> Panels,
        value: impl Fn(usize, usize) -> T,
    ) -> Self {
        // The microkernels' safety rests on this: packed weights exist only for kernels the
        // machine runs.
        assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
        let (nr, g) = (kernel.nr, kernel.k_group);
        let kp = kernel.padded_k(k);
        let panels = n.div_ceil(nr);
        let mut data = vec![T::default(); panels * kp * nr];
        for col in 0..n {
            let (p, j) = (col / nr, col % nr);
            let panel = &mut data[p * kp * nr..(p + 1) * kp * nr];
            for kk in 0..k {
                panel[(kk / g) * nr * g + j * g + kk % g] = value(col, kk);
            }
        }
        PackedMatrix {
            kernel,
            n,
            k,
            kp,
            data: wrap(data),
            scales: Vec::new(),
            col_sums: Vec::new(),
            q_max: 0,
        }
    }

    /// Number of `NR`-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.kernel.nr)
    }

    /// `NR`: columns per panel.
    pub fn panel_width(&self) -> usize {
        self.kernel.nr
    }

    /// `K` as packed.
    pub fn padded_k(&self) -> usize {
        self.kp
    }

    /// The `K` range `kr` (of the packed `K`) of panel `p`.
    fn panel(&self, p: usize, kr: std::ops::Range<usize>) -> PanelRef<'_> {
        let nr = self.kernel.nr;
        let at = p * self.kp * nr;
        let range = at + kr.start * nr..at + kr.end * nr;
        match &self.data {
            Panels::F32(d) => PanelRef::F32(&d[range]),
            Panels::Bf16(d) => PanelRef::Bf16(&d[range]),
            Panels::I8(d) => PanelRef::I8(&d[range]),
        }
    }

    /// The `K` blocks the product runs in: for the f32 kernels equal lengths of at most
    /// their block bytes of a panel each (one empty block when `K` is 0); else all of `K`.
    /// (No allocation: a warm forward pass allocates nothing.)
    fn k_blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> + Clone {
        let kp = self.kp;
        let most = match self.kernel.k_block_bytes {
            Some(bytes) => (bytes / (4 * self.kernel.nr)).max(1),
            None => kp.max(1),
        };
        let count = kp.div_ceil(most).max(1);
        let len = kp.div_ceil(count);
        (0..count).map(move |b| (b * len).min(kp)..((b + 1) * len).min(kp))
    }
}

/// Rows of A packed for a kernel: `rows` rows (and up to a tile of padding) of `lda`
/// elements, with (int8) each row's scale and zero point.
#[derive(Clone, Copy)]
pub struct PackedRows<'a> {
    pub data: Operand<'a>,
    pub lda: usize,
    pub rows: usize,
    pub quants: &'a [RowQuant],
}

/// The destination of [`pack_rows`] for a bf16 or int8 kernel.
pub enum RowsMut<'a> {
    Bf16(&'a mut [u16]),
    U8(&'a mut [u8], &'a mut [RowQuant]),
}

/// Packs the rows of `x` (`[rows, k]`) after the prologue (row `i` of `x` is the prologue's
/// row `first + i`) for a bf16 or int8 kernel: rounded to bf16, or quantised per row, into
/// `dst` (`rows x kp` values, `K` zero-padded, in rows or, `tiled`, in the AMX kernels' 16-row
/// tiles ([`MatMulKernel::tiled_a`]; `dst` then starts at a multiple of 16 rows); int8: `rows`
/// row quantities). Padding rows are left as they are.
pub fn pack_rows(
    x: &[f32],
    k: usize,
    kp: usize,
    tiled: bool,
    prologue: LinearPrologue<'_>,
    first: usize,
    dst: RowsMut<'_>,
) {
    let rows = x.len() / k.max(1);
    assert_eq!(x.len(), rows * k);
    // Scratch of the largest size any layer asks for: a thread that takes another thread's
    // task in a later pass (the pool's stealing) finds it big enough (no allocation).
    let row_len = if prologue.is_identity() {
        0
    } else {
        k.max(ROW_SCRATCH)
    };
    crate::scratch::with_f32(row_len, |row| {
        let row = &mut row[..row_len.min(k)];
        let prepared = |i: usize, src: &'_ [f32], row: &'_ mut [f32]| {
            if !prologue.is_identity() {
                prologue.apply_from(first + i, src, row);
            }
        };
        match dst {
            RowsMut::Bf16(data) => {
                assert!(data.len() >= rows.next_multiple_of(if tiled { 16 } else { 1 }) * kp);
                for (i, src) in x.chunks_exact(k.max(1)).enumerate() {
                    // GRN's scale is fused into the rounding pass (the same bits).
                    let scale = prologue.scale_only(first + i, k);
                    let src = if prologue.is_identity() || scale.is_some() {
                        src
                    } else {
                        prepared(i, src, row);
                        &*row
                    };
                    let at = if tiled {
                        (i / 16) * 16 * kp + (i % 16) * 32
                    } else {
                        i * kp
                    };
                    bf16::pack_row(src, scale, kp, tiled, &mut data[at..]);
                }
            }
            RowsMut::U8(data, quants) => {
                let len = rows.next_multiple_of(if tiled { 16 } else { 1 }) * kp;
                assert!(data.len() >= len && quants.len() >= rows);
                // One quantised row before it goes to its tiles: its own scratch, of the
                // largest size any layer asks for (a stolen task never allocates).
                let row_bytes = if tiled { kp.max(ROW_SCRATCH) } else { 0 };
                crate::scratch::with_row_u8(row_bytes, |packed| {
                    let packed = &mut packed[..if tiled { kp } else { 0 }];
                    for (i, src) in x.chunks_exact(k.max(1)).enumerate() {
                        prepared(i, src, row);
                        let src = if prologue.is_identity() { src } else { &*row };
                        let dst = if tiled {
                            &mut *packed
                        } else {
                            &mut data[i * kp..][..kp]
                        };
                        quants[i] = quantize::quantise_row(src, dst);
                        if tiled {
                            scatter_to_tiles(packed, i, kp, 64, data);
                        }
                    }
                })
            }
        }
    })
}

/// Row `i` (`kp` values, `row`) into its place in 16-row tiles of `t` values per tile row
/// ([`MatMulKernel::tiled_a`]).
fn scatter_to_tiles<T: Copy>(row: &[T], i: usize, kp: usize, t: usize, data: &mut [T]) {
    let base = (i / 16) * 16 * kp + (i % 16) * t;
    for (s, chunk) in row.chunks_exact(t).enumerate() {
        data[base + s * 16 * t..][..t].copy_from_slice(chunk);
    }
}

/// `out = epilogue(prologue(x) . W)` for `rows` rows of `x` (`[rows, K]`), all of `w`'s
/// columns; with `sums`, GRN's sums of squares of the outputs.
#[allow(clippy::too_many_arguments)]
pub fn linear_fused(
    x: &[f32],
    rows: usize,
    w: &PackedMatrix,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut SquareSums<'_>>,
) {
    linear_fused_panels(
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

/// [`linear_fused`] for the output columns of `panels` only: `out` is `[rows, cols]` for those
/// columns; `bias` and `epilogue.residual` cover all `N` columns, `sums` only these. Splitting
/// the columns over threads this way changes no result. A block of rows at a time is packed
/// (into per-thread scratch), then multiplied.
#[allow(clippy::too_many_arguments)]
pub fn linear_fused_panels(
    x: &[f32],
    rows: usize,
    w: &PackedMatrix,
    panels: std::ops::Range<usize>,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    mut sums: Option<&mut SquareSums<'_>>,
) {
    let (k, n) = (w.k, w.n);
    let spec = w.kernel;
    let width = (panels.end * spec.nr).min(n) - panels.start * spec.nr;
    assert_eq!(x.len(), rows * k);
    assert_eq!(out.len(), rows * width);
    let activation = epilogue
        .activation
        .map(|act| epilogue.kernel.unwrap_or(ActivationKernel::of(act)));
    let block_product = |m0: usize, a: PackedRows<'_>| {
        let mb = a.rows;
        product(
            a,
            w,
            panels.clone(),
            bias,
            activation,
            epilogue.residual.map(|r| &r[m0 * n..(m0 + mb) * n]),
            &mut out[m0 * width..(m0 + mb) * width],
            sums.as_deref_mut().map(|s| (s, m0)),
        )
    };
    for_each_packed_block(x, rows, w, prologue, block_product)
}

/// The rows of `x` (`[rows, K]`) a block at a time ([`MatMulKernel::block_rows`]), packed for
/// `w`'s kernel after the prologue into per-thread scratch (f32 with no prologue: the input
/// itself), each block given to `f` with its first row.
fn for_each_packed_block(
    x: &[f32],
    rows: usize,
    w: &PackedMatrix,
    prologue: LinearPrologue<'_>,
    mut block_product: impl FnMut(usize, PackedRows<'_>),
) {
    let (k, kp, spec) = (w.k, w.kp, w.kernel);
    let block = spec.block_rows(k).min(rows.max(1));
    match spec.precision {
        Precision::F32 => {
            // Scratch only when the prologue changes the rows; else A is the input itself.
            let scratch_len = if prologue.is_identity() { 0 } else { block * k };
            crate::scratch::with_f32(scratch_len, |scratch| {
                for m0 in (0..rows).step_by(block) {
                    let mb = block.min(rows - m0);
                    let src = &x[m0 * k..(m0 + mb) * k];
                    let data = if prologue.is_identity() {
                        src
                    } else {
                        let packed = &mut scratch[..mb * k];
                        let rows = packed.chunks_exact_mut(k).zip(src.chunks_exact(k));
                        for (i, (row, src)) in rows.enumerate() {
                            prologue.apply_from(m0 + i, src, row);
                        }
                        &scratch[..mb * k]
                    };
                    let a = PackedRows {
                        data: Operand::F32(data),
                        lda: k,
                        rows: mb,
                        quants: &[],
                    };
                    block_product(m0, a)
                }
            })
        }
        Precision::Bf16 => {
            // Scratch of a whole block (padded to a tile) for every layer the thread runs:
            // a warm pass allocates nothing.
            let len = spec.padded_rows(block) * kp;
            crate::scratch::with_u16(len.max(BLOCK_BYTES / 2), |data| {
                for m0 in (0..rows).step_by(block) {
                    let mb = block.min(rows - m0);
                    let data = &mut data[..spec.padded_rows(mb) * kp];
                    let src = &x[m0 * k..(m0 + mb) * k];
                    pack_rows(src, k, kp, spec.tiled_a, prologue, m0, RowsMut::Bf16(data));
                    let a = PackedRows {
                        data: Operand::Bf16(data),
                        lda: kp,
                        rows: mb,
                        quants: &[],
                    };
                    block_product(m0, a)
                }
            })
        }
        Precision::Int8 => {
            let len = spec.padded_rows(block) * kp;
            crate::scratch::with_u8(len.max(BLOCK_BYTES), |data| {
                crate::scratch::with_row_quants(block.max(MC), |quants| {
                    for m0 in (0..rows).step_by(block) {
                        let mb = block.min(rows - m0);
                        let data = &mut data[..spec.padded_rows(mb) * kp];
                        let quants = &mut quants[..mb];
                        let src = &x[m0 * k..(m0 + mb) * k];
                        pack_rows(
                            src,
                            k,
                            kp,
                            spec.tiled_a,
                            prologue,
                            m0,
                            RowsMut::U8(data, quants),
                        );
                        let a = PackedRows {
                            data: Operand::U8(data),
                            lda: kp,
                            rows: mb,
                            quants,
                        };
                        block_product(m0, a)
                    }
                })
            })
        }
    }
}

/// Where a GEMM's epilogue accumulates the squares of its outputs: the region's partials,
/// and the region row of the GEMM's first row.
pub type SumsSink<'s, 'a> = (&'s mut SquareSums<'a>, usize);

/// The product of packed rows `a` and the output columns of `panels`: `out` is `[rows, cols]`
/// for those columns, `bias` covers all `N` columns, `residual` is `[rows, N]`; with `sums`,
/// the squares of the outputs go to its rows from the given one.
#[allow(clippy::too_many_arguments)]
pub fn product(
    a: PackedRows<'_>,
    w: &PackedMatrix,
    panels: std::ops::Range<usize>,
    bias: &[f32],
    activation: Option<ActivationKernel>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    mut sums: Option<SumsSink<'_, '_>>,
) {
    let spec = w.kernel;
    let (n, kp, mr, nr) = (w.n, w.kp, spec.mr, spec.nr);
    let rows = a.rows;
    let col0 = panels.start * nr;
    let width = (panels.end * nr).min(n) - col0;
    assert!(a.lda >= kp && a.data.len() >= spec.padded_rows(rows).saturating_sub(1) * a.lda);
    assert_eq!(out.len(), rows * width);
    assert_eq!(bias.len(), n);
    if let Some(r) = residual {
        assert_eq!(r.len(), rows * n);
    }
    let dequantised = spec.accumulation == Accumulation::Dequantise;
    if dequantised {
        assert!(a.quants.len() >= rows);
    }
    let block = spec.block_rows(w.k);
    let k_blocks = w.k_blocks();
    if let Some((set_up, _)) = spec.session {
        set_up();
    }
    for m0 in (0..rows).step_by(block) {
        let m_block = block.min(rows - m0);
        for kr in k_blocks.clone() {
            let last = kr.end == kp;
            for p in panels.clone() {
                let cols = nr.min(n - p * nr);
                let panel = w.panel(p, kr.clone());
                for r0 in (m0..m0 + m_block).step_by(mr) {
                    let tile_rows = mr.min(rows - r0);
                    let at = r0 * width + p * nr - col0;
                    let tile = MicroTile {
                        a: a.data.from(r0 * a.lda + kr.start),
                        lda: a.lda,
                        rows: tile_rows,
                        kc: kr.len(),
                        panel,
                        c: &mut out[at..],
                        ldc: width,
                        cols,
                        first: kr.start == 0,
                        dequant: dequantised.then(|| Dequant {
                            quants: &a.quants[r0..],
                            col_sums: &w.col_sums[p * nr..(p + 1) * nr],
                            scales: &w.scales[p * nr..(p + 1) * nr],
                        }),
                        epilogue: last.then(|| TileEpilogue {
                            bias: &bias[p * nr..p * nr + cols],
                            activation,
                            residual: residual.map(|r| (&r[r0 * n + p * nr..], n)),
                        }),
                    };
                    (spec.run)(tile);
                    if let (true, Some((sums, row0))) = (last, sums.as_mut()) {
                        let y = &out[at..];
                        sums.add_rows(*row0 + r0, p * nr - col0, y, (width, tile_rows, cols));
                    }
                }
            }
        }
    }
    if let Some((_, tear_down)) = spec.session {
        tear_down();
    }
}

/// The largest quantised weight magnitude a kernel can take without overflowing its
/// intermediate sums: 127 where the products go straight to i32 (VNNI's `vpdpbusd`, the
/// portable kernel), 63 for AVX2's `vpmaddubsw`, which adds two u8 x s8 products in a
/// *saturating* i16 (`2 * 255 * 63 = 32130 <= 32767`; with 127 it would reach 64770). fbgemm
/// and ONNX Runtime's `reduce_range` make the same choice.
pub fn weight_max(isa: Isa) -> i32 {
    kernel_for(Precision::Int8, isa).weight_max
}

/// The kernel's own throughput in GFLOP/s on `threads` threads: the product of `2 MR` rows
/// packed once and `2 NR` columns over `K = 512` (operands in L2), bias only, through the
/// driver's [`product`] (per-call set-up, the tile loops, the store), repeated for about
/// `seconds`: what `cnx bench --peak` reports as this machine's peak for the kernel.
pub fn peak_gflops(kernel: &'static MatMulKernel, threads: usize, seconds: f64) -> f64 {
    let (rows, n, k) = (2 * kernel.mr, 2 * kernel.nr, 512);
    let w = PackedMatrix::pack(&vec![0.5f32; n * k], n, k, kernel);
    let kp = w.padded_k();
    let per_call = 2.0 * (rows * n * k) as f64;
    let start = std::time::Instant::now();
    let calls: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let w = &w;
                scope.spawn(move || {
                    let x = vec![1.0f32 + t as f32 * 1e-3; rows * k];
                    let (bias, mut out) = (vec![0f32; n], vec![0f32; rows * n]);
                    let len = kernel.padded_rows(rows) * kp;
                    let (mut h, mut b) = (vec![0u16; len], vec![0u8; len]);
                    let mut quants = vec![
                        RowQuant {
                            scale: 1.0,
                            zero: 0
                        };
                        rows
                    ];
                    let none = LinearPrologue::default();
                    let (data, lda) = match kernel.precision {
                        Precision::F32 => (Operand::F32(&x[..]), k),
                        Precision::Bf16 => {
                            pack_rows(&x, k, kp, kernel.tiled_a, none, 0, RowsMut::Bf16(&mut h));
                            (Operand::Bf16(&h), kp)
                        }
                        Precision::Int8 => {
                            let dst = RowsMut::U8(&mut b, &mut quants);
                            pack_rows(&x, k, kp, kernel.tiled_a, none, 0, dst);
                            (Operand::U8(&b), kp)
                        }
                    };
                    let a = PackedRows {
                        data,
                        lda,
                        rows,
                        quants: &quants,
                    };
                    let mut calls = 0u64;
                    while start.elapsed().as_secs_f64() < seconds {
                        for _ in 0..16 {
                            product(a, w, 0..w.panels(), &bias, None, None, &mut out, None);
                            std::hint::black_box(&mut out);
                        }
                        calls += 16;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{self, RowScale};
    use crate::kernels::{bf16, Isa};
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

    /// The kernels of `precision` the tests run here (real and modelled), named in the output.
    fn kernels(precision: Precision) -> Vec<&'static MatMulKernel> {
        let ks = kernels_here(precision);
        eprintln!("{precision:?} kernels run: {ks:?}");
        // Every kernel the table declares either runs here or needs features this CPU lacks.
        for k in KERNELS.iter().filter(|k| k.precision == precision) {
            assert_eq!(ks.contains(&k), k.runs_here());
        }
        ks
    }

    /// The reference twin of `kernel` (bf16 or int8) on the rows of `x`.
    #[allow(clippy::too_many_arguments)]
    fn twin(
        kernel: &'static MatMulKernel,
        x: &[f32],
        m: usize,
        (w, n, k): (&[f32], usize, usize),
        bias: &[f32],
        prologue: LinearPrologue<'_>,
        epilogue: LinearEpilogue<'_>,
        out: &mut [f32],
        sums: Option<&mut SquareSums<'_>>,
    ) {
        match kernel.precision {
            Precision::Bf16 => {
                let wb: Vec<u16> = w.iter().map(|&v| bf16::round(v)).collect();
                let order = (kernel.padded_k(k), kernel.sum_order);
                reference::bf16_linear_fused(
                    x, m, k, &wb, n, order, bias, prologue, epilogue, out, sums,
                )
            }
            Precision::Int8 => {
                let q = QuantisedWeights::new(w, n, k, kernel.weight_max);
                reference::qlinear_fused(x, m, &q, bias, prologue, epilogue, out, sums)
            }
            Precision::F32 => unreachable!("the f32 kernels are tested in gemm.rs"),
        }
    }

    /// Every bf16 and int8 kernel (the AMX ones on the tiles where the CPU has them, and on
    /// the tile model everywhere) gives its reference twin's bits: shapes that are multiples
    /// of no tile (`K` not a multiple of 2, 4, 32 or 64, `N` not of 16 or 32, 3 samples of 97
    /// rows, blocks of rows), every prologue and epilogue, GRN's sums.
    #[test]
    fn bf16_and_int8_kernels_match_their_twins_bit_for_bit() {
        let (samples, pixels) = (3, 97);
        let m = samples * pixels;
        for precision in [Precision::Bf16, Precision::Int8] {
            for kernel in kernels(precision) {
                for (k, n) in [(45, 70), (1, 1), (7, 13), (301, 33), (64, 64), (96, 40)] {
                    let (x, w, bias) = (values(m * k, 1), values(n * k, 2), values(n, 3));
                    let (scale, res) = (values(samples * k, 4), values(m * n, 5));
                    let packed = PackedMatrix::pack(&w, n, k, kernel);
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
                        let segments = SquareSums::segment_count(0, m, pixels);
                        let (mut want_partials, mut got_partials) =
                            (vec![0.0; segments * n], vec![0.0; segments * n]);
                        let mut want = vec![0.0; m * n];
                        let mut sums = SquareSums::new(&mut want_partials, 0, m, pixels, n);
                        let wnk = (&w[..], n, k);
                        twin(
                            kernel,
                            &x,
                            m,
                            wnk,
                            &bias,
                            prologue,
                            epilogue,
                            &mut want,
                            Some(&mut sums),
                        );
                        let mut got = vec![0.0; m * n];
                        let mut sums = SquareSums::new(&mut got_partials, 0, m, pixels, n);
                        linear_fused(
                            &x,
                            m,
                            &packed,
                            &bias,
                            prologue,
                            epilogue,
                            &mut got,
                            Some(&mut sums),
                        );
                        let what =
                            format!("{kernel:?} {m}x{n}x{k} norm {norm} scale {scaled} {act:?}");
                        assert!(want.iter().all(|v| v.is_finite()), "{what}");
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{what}"
                        );
                        assert_eq!(got_partials, want_partials, "{what}: GRN sums");
                    }
                }
            }
        }
    }

    /// Splitting rows into blocks and columns into panel ranges (as the threads do) gives
    /// the whole product's bits, for every bf16 and int8 kernel, with A packed once for all
    /// the column ranges (as the column split does).
    #[test]
    fn row_and_column_splits_are_exact() {
        let (m, n, k) = (131, 75, 40);
        let (x, w, bias) = (values(m * k, 13), values(n * k, 14), values(n, 15));
        let none = (LinearPrologue::default(), LinearEpilogue::default());
        for precision in [Precision::Bf16, Precision::Int8] {
            for kernel in kernels(precision) {
                let packed = PackedMatrix::pack(&w, n, k, kernel);
                let mut whole = vec![0.0; m * n];
                linear_fused(&x, m, &packed, &bias, none.0, none.1, &mut whole, None);
                // Rows: 0..37 and 37..m.
                let mut rows = vec![0.0; m * n];
                for r in [0..37, 37..m] {
                    let (xs, ys) = (
                        &x[r.start * k..r.end * k],
                        &mut rows[r.start * n..r.end * n],
                    );
                    linear_fused(xs, r.len(), &packed, &bias, none.0, none.1, ys, None);
                }
                assert_eq!(rows, whole, "{kernel:?} rows");
                // Columns: A packed once, then panels 0..1 and 1.. multiplied apart.
                let kp = packed.padded_k();
                let mut data8 = vec![0u8; kernel.padded_rows(m) * kp];
                let mut data16 = vec![0u16; kernel.padded_rows(m) * kp];
                let mut quants = vec![
                    RowQuant {
                        scale: 0.0,
                        zero: 0
                    };
                    m
                ];
                let data = match precision {
                    Precision::Bf16 => {
                        pack_rows(
                            &x,
                            k,
                            kp,
                            kernel.tiled_a,
                            none.0,
                            0,
                            RowsMut::Bf16(&mut data16),
                        );
                        Operand::Bf16(&data16)
                    }
                    _ => {
                        pack_rows(
                            &x,
                            k,
                            kp,
                            kernel.tiled_a,
                            none.0,
                            0,
                            RowsMut::U8(&mut data8, &mut quants),
                        );
                        Operand::U8(&data8)
                    }
                };
                let a = PackedRows {
                    data,
                    lda: kp,
                    rows: m,
                    quants: &quants,
                };
                let nr = packed.panel_width();
                for (panels, col0) in [(0..1, 0), (1..packed.panels(), nr)] {
                    let width = (panels.end * nr).min(n) - col0;
                    let mut part = vec![0.0; m * width];
                    product(a, &packed, panels, &bias, None, None, &mut part, None);
                    for r in 0..m {
                        assert_eq!(
                            &part[r * width..(r + 1) * width],
                            &whole[r * n + col0..r * n + col0 + width],
                            "{kernel:?} columns from {col0}"
                        );
                    }
                }
            }
        }
    }

    /// The AMX kernels on the real tiles give the bits of the same kernels on the tile model,
    /// on values chosen to reach the instructions' corners: products and sums that are
    /// denormal in f32 (flushed), exact cancellation, large and tiny magnitudes. (Where the
    /// CPU has no AMX, this tests nothing and says so.)
    #[test]
    fn amx_tiles_equal_their_software_model() {
        let pairs: Vec<_> = KERNELS
            .iter()
            .filter(|k| !k.modelled && k.tiled_a && k.runs_here())
            .map(|hw| {
                let model = KERNELS
                    .iter()
                    .find(|m| m.modelled && m.precision == hw.precision)
                    .expect("a model per AMX kernel");
                (hw, model)
            })
            .collect();
        if pairs.is_empty() {
            eprintln!("no AMX on this CPU: the tiles are tested through their model only");
            return;
        }
        let (m, n, k) = (70, 45, 200);
        let corner = |i: usize, seed: u32| -> f32 {
            let v = values(1, seed.wrapping_add(i as u32))[0];
            match i % 7 {
                0 => v * 1e-20,
                1 => v * 1e19,
                2 => -v,
                3 => v * 1e-30,
                _ => v,
            }
        };
        let x: Vec<f32> = (0..m * k).map(|i| corner(i, 1)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| corner(i, 2)).collect();
        let bias = values(n, 3);
        let none = (LinearPrologue::default(), LinearEpilogue::default());
        for (hw, model) in pairs {
            eprintln!("{hw:?} against {model:?}");
            let run = |kernel| {
                let packed = PackedMatrix::pack(&w, n, k, kernel);
                let mut out = vec![0.0; m * n];
                linear_fused(&x, m, &packed, &bias, none.0, none.1, &mut out, None);
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(run(hw), run(model), "{hw:?}");
        }
    }

    /// bf16 against the f64 product, within the bound derived from `K`: each operand is
    /// rounded with a relative error of at most `u = 2^-8`, each product is then exact, and
    /// `K` f32 additions add at most `K * 2^-24` of the sum of magnitudes:
    /// `|y - x.w| <= sum_k |x_k w_k| (2u + u^2 + (K + 1) 2^-24 (1 + u)^2)`.
    #[test]
    fn bf16_is_within_its_bound_of_the_exact_product() {
        let (m, n) = (33, 29);
        let none = (LinearPrologue::default(), LinearEpilogue::default());
        for k in [5, 96, 384, 1536] {
            let (x, w, bias) = (values(m * k, 6), values(n * k, 7), vec![0.0; n]);
            for kernel in kernels(Precision::Bf16) {
                let packed = PackedMatrix::pack(&w, n, k, kernel);
                let mut got = vec![0.0; m * n];
                linear_fused(&x, m, &packed, &bias, none.0, none.1, &mut got, None);
                let u = 2f64.powi(-8);
                let per_magnitude =
                    2.0 * u + u * u + (k as f64 + 1.0) * 2f64.powi(-24) * (1.0 + u).powi(2);
                for r in 0..m {
                    for o in 0..n {
                        let (xr, wr) = (&x[r * k..(r + 1) * k], &w[o * k..(o + 1) * k]);
                        let exact: f64 =
                            xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let magnitude: f64 = xr
                            .iter()
                            .zip(wr)
                            .map(|(&a, &b)| (a as f64 * b as f64).abs())
                            .sum();
                        let bound = magnitude * per_magnitude + exact.abs() * 2f64.powi(-24);
                        let err = (got[r * n + o] as f64 - exact).abs();
                        assert!(err <= bound, "{kernel:?} K={k} [{r},{o}]: {err} > {bound}");
                    }
                }
            }
        }
    }

    /// [`kernel_for`] picks by features: the best kernel of each precision that each level
    /// allows, and never one a level lacks the features of.
    #[test]
    fn kernels_are_chosen_by_features() {
        for &isa in Isa::ALL {
            for (precision, _) in Precision::NAMES {
                let chosen = kernel_for(precision, isa);
                assert_eq!(chosen.precision, precision);
                assert!(!chosen.modelled && chosen.requires.within(isa.features()));
                // Nothing earlier in the table of this precision would have run.
                let earlier = KERNELS.iter().take_while(|k| !std::ptr::eq(*k, chosen));
                for k in earlier.filter(|k| k.precision == precision && !k.modelled) {
                    assert!(
                        !k.requires.within(isa.features()),
                        "{isa:?}: {k:?} before {chosen:?}"
                    );
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(kernel_for(Precision::Bf16, Isa::Amx).name, "bf16 amx 64x32");
            assert_eq!(kernel_for(Precision::Int8, Isa::Amx).name, "int8 amx 64x32");
            assert_eq!(
                kernel_for(Precision::Bf16, Isa::Avx512Bf16).name,
                "bf16 avx512-bf16 6x32"
            );
            assert_eq!(
                kernel_for(Precision::Bf16, Isa::Avx512Vnni).name,
                "bf16 avx512 fma 6x32"
            );
            assert_eq!(
                kernel_for(Precision::Int8, Isa::Avx512).name,
                "int8 avx2 6x16"
            );
            assert_eq!(kernel_for(Precision::F32, Isa::Amx).name, "f32 avx512 6x32");
        }
        assert_eq!(
            kernel_for(Precision::Bf16, Isa::Portable).name,
            "bf16 portable 4x16"
        );
    }

    /// bf16 rounding: nearest, ties to even, denormals to a signed zero, NaN quiet, overflow
    /// to infinity; and, where the CPU has AVX512_BF16, the bits of `vcvtneps2bf16`.
    #[test]
    fn bf16_rounding_is_nearest_even() {
        let cases: [(u32, u16); 9] = [
            (0x3F80_0000, 0x3F80),
            (0x3F80_8000, 0x3F80), // tie, even stays
            (0x3F81_8000, 0x3F82), // tie, odd rounds up
            (0x3F80_8001, 0x3F81),
            (0xBF80_7FFF, 0xBF80),
            (0x0000_0001, 0x0000), // denormal
            (0x8040_0000, 0x8000), // negative denormal
            (0x7F7F_FFFF, 0x7F80), // overflow
            (0x7F80_0001, 0x7FC0), // signalling NaN made quiet
        ];
        for (f, b) in cases {
            assert_eq!(bf16::round(f32::from_bits(f)), b, "{f:#x}");
        }
        #[cfg(target_arch = "x86_64")]
        if Features::cpu().has(Feature::Avx512Bf16) {
            let xs: Vec<f32> = (0..4096u32)
                .map(|i| f32::from_bits(i.wrapping_mul(2654435761) ^ (i << 7)))
                .filter(|v| !v.is_nan())
                .chain(values(1000, 9))
                .collect();
            let mut ours = vec![0u16; xs.len()];
            bf16::round_row(&xs, &mut ours);
            // SAFETY: the CPU has AVX512_BF16 (checked above).
            let theirs = unsafe { hardware_round(&xs) };
            assert_eq!(ours, theirs);
        }
    }

    /// `vcvtneps2bf16` on each value.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn hardware_round(xs: &[f32]) -> Vec<u16> {
        use std::arch::x86_64::*;
        xs.iter()
            .map(|&x| {
                let v: __m256bh = _mm512_cvtneps_pbh(_mm512_set1_ps(x));
                let bits: [u16; 16] = unsafe { std::mem::transmute(v) };
                bits[0]
            })
            .collect()
    }
}
