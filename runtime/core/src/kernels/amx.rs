//! The AMX microkernels (bf16 `tdpbf16ps`, int8 `tdpbusd`) of the GEMM driver
//! ([`super::matmul`]), and a software model of the tiles that runs the same kernels on any
//! machine.
//!
//! A call computes up to two 32 x 32 tiles of C, one above the other (`MR` 64: the second
//! one's products are issued before the first one's epilogue, which then runs while the tiles
//! compute). A 32 x 32 tile is four 16 x 16 f32 (or i32) tiles, `tmm0..3`; per step of `K` (32
//! bf16 or 64 int8 values), the two A tiles (`tmm4`, `tmm5`: rows 0-15 and 16-31, 64 bytes of
//! `K` each, 1 KiB contiguous in the driver's tiled packing of A) and the two B tiles (`tmm6`, `tmm7`: 16 rows of
//! the panel's `[K / g][32][g]` layout, columns 0-15 and 16-31, at a row stride of 128 bytes)
//! are loaded and multiplied four times. The accumulators are stored to a 4 KiB buffer on the
//! stack, and each row goes through the f32 epilogue (int8: dequantised first) exactly as the
//! vector kernels' rows do. A holds whole tiles of 32 rows (the driver pads the last); `K` is
//! padded with zeros to whole steps in both operands.
//!
//! Stable Rust has no AMX intrinsics: the loads, products and stores of one call are one
//! `asm!` block; the tile configuration (`ldtilecfg`) is per-thread state, set by the driver
//! on the thread that runs a product before its first tile and released after its last
//! ([`configure`], [`release`]: the kernel's `session`). A process must ask
//! Linux for the tile data state once (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
//! [`tiles_permitted`]); where that is refused, the AMX kernels are never chosen.
//!
//! The model ([`TileModel`]) holds eight 1 KiB tile registers and the configuration, and runs
//! the kernel's instruction sequence ([`tile_sequence`]) with each instruction's arithmetic as
//! Intel's SDM defines it; the tests run the AMX kernels' packing, blocking and edge code
//! through it on any machine, and check it against the real tiles where the CPU has them.

use super::microkernel::{tile_to_c, Dequant, MicroTile, Operand, PanelRef, TileEpilogue};

/// Rows and columns of one tile of C.
const TILE: usize = 32;

/// Tiles of C per call, one above the other: each tile's products are issued before the
/// previous tile's epilogue runs. Two measured 0.97x one (tiny bf16, batch 1 and 8), three
/// 1.00x and 1.03x (A padded to 96 rows costs what the overlap saves).
pub(super) const TILES_PER_CALL: usize = 2;

/// The two products the tiles run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    /// `tdpbf16ps`: bf16 pairs into f32.
    Bf16,
    /// `tdpbusd`: u8 x s8 quads into i32.
    Int8,
}

impl Product {
    /// Values of `K` per 64-byte tile row of A.
    fn k_per_step(self) -> usize {
        match self {
            Product::Bf16 => 32,
            Product::Int8 => 64,
        }
    }
}

/// The tile configuration (`ldtilecfg`'s 64 bytes): palette 1, all eight tiles 16 rows of
/// 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// The 32 x 32 accumulators, as the tiles store them (row stride 128 bytes).
#[repr(C, align(64))]
struct Accumulators([u32; TILE * TILE]);

/// One call's operands, in bytes: `steps` steps of `K`; A in the driver's 16-row tiles
/// ([`MatMulKernel::tiled_a`](super::matmul::MatMulKernel::tiled_a)): the tile of rows 0-15
/// and step `s` the 1 KiB at `s * 1024`, rows 16-31 from `half` on; the panel's rows (one per
/// group of `K`) at a stride of 128 bytes.
struct TileJob<'a> {
    a: &'a [u8],
    half: usize,
    b: &'a [u8],
    steps: usize,
}

impl TileJob<'_> {
    /// What every tile load of the sequence reads lies inside the operands.
    fn check(&self) {
        // Each step reads 1 KiB of each half of A and 16 rows of 128 bytes of B.
        assert!(self.steps >= 1);
        assert!(self.half >= self.steps * 1024);
        assert!(self.a.len() >= self.half + self.steps * 1024);
        assert!(self.b.len() >= self.steps * 16 * 128);
    }
}

/// Configures this thread's tiles ([`CONFIG`]) for a run of AMX tile calls: the driver calls
/// it before a product on a kernel with tiles (the configuration is per-thread state).
#[cfg(target_arch = "x86_64")]
pub(super) fn configure() {
    assert!(
        tiles_permitted(),
        "AMX tiles are not available to this process"
    );
    // SAFETY: the CPU has AMX-TILE and Linux granted this process the tile state
    // (`tiles_permitted`); `ldtilecfg` reads the 64 bytes of `CONFIG`.
    unsafe {
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack, readonly))
    }
}

/// Releases this thread's tiles after a run of AMX tile calls (back to the initial state:
/// nothing to save on a context switch).
#[cfg(target_arch = "x86_64")]
pub(super) fn release() {
    // SAFETY: the CPU has AMX-TILE (this follows `configure`); `tilerelease` touches no memory.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
}

/// The bf16 kernel on the tiles.
#[cfg(target_arch = "x86_64")]
pub(super) fn bf16_64x32(t: MicroTile<'_>) {
    tile_kernel(t, Product::Bf16, Unit::Tiles)
}

/// The int8 kernel on the tiles.
#[cfg(target_arch = "x86_64")]
pub(super) fn int8_64x32(t: MicroTile<'_>) {
    tile_kernel(t, Product::Int8, Unit::Tiles)
}

/// The bf16 kernel on the software model.
pub(super) fn bf16_64x32_model(t: MicroTile<'_>) {
    tile_kernel(t, Product::Bf16, Unit::Model)
}

/// The int8 kernel on the software model.
pub(super) fn int8_64x32_model(t: MicroTile<'_>) {
    tile_kernel(t, Product::Int8, Unit::Model)
}

/// Where the tile instructions run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    #[cfg(target_arch = "x86_64")]
    Tiles,
    Model,
}

/// Bytes of a slice of plain integers.
fn bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is u16 or i8 here (plain integers, no padding): every byte is initialised
    // and any byte is a valid u8; the length covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Up to [`TILES_PER_CALL`] 32 x 32 tiles of C, one above the other: the products of all on
/// `unit`, then each tile's rows through the epilogue. The later tiles' products are issued
/// before the first tile's epilogue, so that the core runs the epilogues while the tiles
/// compute (the unit works on its own; a tile's epilogue waits only for its stores).
fn tile_kernel(t: MicroTile<'_>, product: Product, unit: Unit) {
    t.check(TILES_PER_CALL * TILE, TILE, true);
    assert!(t.first, "the AMX kernels run all of K at once");
    let (a, b, elem) = match (product, t.a, t.panel) {
        (Product::Bf16, Operand::Bf16(a), PanelRef::Bf16(b)) => (bytes(a), bytes(b), 2),
        (Product::Int8, Operand::U8(a), PanelRef::I8(b)) => (a, bytes(b), 1),
        _ => panic!("{product:?} tiles take other operands"),
    };
    assert!(t.kc.is_multiple_of(product.k_per_step()));
    let steps = t.kc / product.k_per_step();
    // The tiles this call has rows in: one or two.
    let tiles = t.rows.div_ceil(TILE);
    let mut acc: [Accumulators; TILES_PER_CALL] =
        std::array::from_fn(|_| Accumulators([0; TILE * TILE]));
    let mut model = (unit == Unit::Model).then(TileModel::new);
    for (i, acc) in acc.iter_mut().enumerate().take(tiles) {
        let job = TileJob {
            a: &a[i * TILE * t.lda * elem..],
            half: 16 * t.lda * elem,
            b,
            steps,
        };
        if steps == 0 {
            continue;
        }
        job.check();
        match &mut model {
            // SAFETY: the driver reaches this kernel only through a `PackedMatrix` packed
            // for it, which asserted the CPU has AMX-TILE and the product's AMX feature and
            // that Linux granted the tile state (`tiles_permitted`), and only inside a
            // product, which configured this thread's tiles first (the kernel's `session`);
            // `job.check` proved every tile load inside the operands, and the stores write
            // the 4 KiB `acc`.
            #[cfg(target_arch = "x86_64")]
            None => unsafe { x86::tile_sequence(&job, product, acc) },
            #[cfg(not(target_arch = "x86_64"))]
            None => unreachable!("the tiles exist on x86_64 only"),
            Some(m) => tile_sequence(&job, product, acc, m),
        }
    }
    let epilogue = t.epilogue.expect("the AMX kernels end in the epilogue");
    for (i, acc) in acc.iter().enumerate().take(tiles) {
        let rows = TILE.min(t.rows - i * TILE);
        let c = &mut t.c[i * TILE * t.ldc..];
        let e = epilogue.from_row(i * TILE);
        let dequant = t.dequant.map(|d| Dequant {
            quants: &d.quants[i * TILE..],
            ..d
        });
        match unit {
            // SAFETY: as above; the epilogue's vector code needs AVX-512F and BW, which the
            // AMX kernels' features include; `check` proved C's and the epilogue's extents
            // for all the call's rows.
            #[cfg(target_arch = "x86_64")]
            Unit::Tiles => unsafe { x86::rows_out(acc, dequant, &e, c, t.ldc, rows, t.cols) },
            Unit::Model => rows_out(acc, dequant, &e, c, t.ldc, rows, t.cols),
        }
    }
}

/// The accumulators' `rows x cols` through the epilogue into C (portable): the arithmetic
/// of the vector path, element by element.
fn rows_out(
    acc: &Accumulators,
    dequant: Option<Dequant<'_>>,
    epilogue: &TileEpilogue<'_>,
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut tile = [0f32; TILE * TILE];
    for i in 0..rows {
        for j in 0..cols {
            let v = acc.0[i * TILE + j];
            tile[i * TILE + j] = match dequant {
                Some(d) => {
                    super::quantize::dequantise(v as i32, d.quants[i], d.col_sums[j], d.scales[j])
                }
                None => f32::from_bits(v),
            };
        }
    }
    epilogue.apply(&mut tile, TILE, rows, cols);
    tile_to_c(&tile, TILE, c, ldc, rows, cols);
}

/// The tiles' eight registers and configuration, each instruction as the SDM defines it.
struct TileModel {
    rows: [usize; 8],
    colsb: [usize; 8],
    regs: Box<[[u8; 1024]; 8]>,
}

impl TileModel {
    /// `ldtilecfg` of [`CONFIG`].
    fn new() -> Self {
        let c = &CONFIG.0;
        let mut model = TileModel {
            rows: [0; 8],
            colsb: [0; 8],
            regs: Box::new([[0; 1024]; 8]),
        };
        for t in 0..8 {
            model.colsb[t] = u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]]) as usize;
            model.rows[t] = c[48 + t] as usize;
        }
        model
    }

    fn tilezero(&mut self, t: usize) {
        self.regs[t] = [0; 1024];
    }

    /// `tileloadd tmm<t>, [base + stride]`: `rows` rows of `colsb` bytes.
    fn tileloadd(&mut self, t: usize, src: &[u8], stride: usize) {
        let (rows, colsb) = (self.rows[t], self.colsb[t]);
        for r in 0..rows {
            self.regs[t][r * 64..r * 64 + colsb].copy_from_slice(&src[r * stride..][..colsb]);
        }
    }

    /// `tilestored [base + stride], tmm<t>`.
    fn tilestored(&self, t: usize, dst: &mut [u8], stride: usize) {
        let (rows, colsb) = (self.rows[t], self.colsb[t]);
        for r in 0..rows {
            dst[r * stride..][..colsb].copy_from_slice(&self.regs[t][r * 64..r * 64 + colsb]);
        }
    }

    fn dword(&self, t: usize, row: usize, i: usize) -> u32 {
        let at = row * 64 + i * 4;
        u32::from_le_bytes(self.regs[t][at..at + 4].try_into().expect("4 bytes"))
    }

    fn set_dword(&mut self, t: usize, row: usize, i: usize, v: u32) {
        self.regs[t][row * 64 + i * 4..row * 64 + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// `tdpbf16ps c, a, b`: per element, the even and the odd products of the step summed
    /// apart from zero (FMA, round to nearest even, denormal results flushed), then their
    /// sum added to C.
    fn tdpbf16ps(&mut self, c: usize, a: usize, b: usize) {
        let flush = |x: f32| {
            if x.is_subnormal() {
                0f32.copysign(x)
            } else {
                x
            }
        };
        let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xFFFF_0000 } else { v << 16 });
        for m in 0..self.rows[c] {
            for n in 0..self.colsb[c] / 4 {
                let (mut even, mut odd) = (0f32, 0f32);
                for k in 0..self.colsb[a] / 4 {
                    let (x, y) = (self.dword(a, m, k), self.dword(b, k, n));
                    even = flush(half(x, false).mul_add(half(y, false), even));
                    odd = flush(half(x, true).mul_add(half(y, true), odd));
                }
                let sum = flush(f32::from_bits(self.dword(c, m, n)) + flush(even + odd));
                self.set_dword(c, m, n, sum.to_bits());
            }
        }
    }

    /// `tdpbusd c, a, b`: per element, the four u8 x s8 products of each group of `K` added
    /// to the i32 in C (wrapping).
    fn tdpbusd(&mut self, c: usize, a: usize, b: usize) {
        for m in 0..self.rows[c] {
            for n in 0..self.colsb[c] / 4 {
                let mut acc = self.dword(c, m, n) as i32;
                for k in 0..self.colsb[a] / 4 {
                    let (x, y) = (
                        self.dword(a, m, k).to_le_bytes(),
                        self.dword(b, k, n).to_le_bytes(),
                    );
                    for q in 0..4 {
                        acc = acc.wrapping_add(x[q] as i32 * y[q] as i8 as i32);
                    }
                }
                self.set_dword(c, m, n, acc as u32);
            }
        }
    }
}

/// The kernel's instruction sequence on the model: line for line the `asm!` block of
/// [`x86::tile_sequence`].
fn tile_sequence(job: &TileJob<'_>, product: Product, acc: &mut Accumulators, m: &mut TileModel) {
    for t in 0..4 {
        m.tilezero(t);
    }
    for s in 0..job.steps {
        let (a0, a1, b) = (s * 1024, job.half + s * 1024, s * 16 * 128);
        let dp = |m: &mut TileModel, c, a, b| match product {
            Product::Bf16 => m.tdpbf16ps(c, a, b),
            Product::Int8 => m.tdpbusd(c, a, b),
        };
        m.tileloadd(4, &job.a[a0..], 64);
        m.tileloadd(6, &job.b[b..], 128);
        dp(m, 0, 4, 6);
        m.tileloadd(7, &job.b[b + 64..], 128);
        dp(m, 1, 4, 7);
        m.tileloadd(5, &job.a[a1..], 64);
        dp(m, 2, 5, 6);
        dp(m, 3, 5, 7);
    }
    let out = bytes_mut(&mut acc.0);
    m.tilestored(0, out, 128);
    m.tilestored(1, &mut out[64..], 128);
    m.tilestored(2, &mut out[16 * 128..], 128);
    m.tilestored(3, &mut out[16 * 128 + 64..], 128);
}

fn bytes_mut(v: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 has no padding and any byte pattern is a valid u32 and u8; the length
    // covers exactly the slice.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

/// CPUID.(EAX=7, ECX=0):EDX (AMX-BF16 bit 22, AMX-TILE bit 24, AMX-INT8 bit 25).
#[cfg(target_arch = "x86_64")]
pub(super) fn cpuid_leaf7_edx() -> u32 {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 exists where leaf 0 says so.
    unsafe {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return 0;
        }
        std::arch::x86_64::__cpuid_count(7, 0).edx
    }
}

/// Whether this process may use the AMX tiles: the CPU has AMX-TILE, the operating system
/// enabled the tile state in XCR0 (bits 17 and 18), and Linux granted this process the tile
/// data (asked once).
#[cfg(target_arch = "x86_64")]
pub(super) fn tiles_permitted() -> bool {
    static PERMITTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PERMITTED.get_or_init(|| {
        if cpuid_leaf7_edx() & (1 << 24) == 0 {
            return false;
        }
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU.
        let osxsave = unsafe { std::arch::x86_64::__cpuid(1).ecx } & (1 << 27) != 0;
        if !osxsave {
            return false;
        }
        let xcr0: u64;
        // SAFETY: XGETBV is available where CPUID reports OSXSAVE; it reads a register.
        unsafe {
            let (lo, hi): (u32, u32);
            std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
            xcr0 = (hi as u64) << 32 | lo as u64;
        }
        if xcr0 & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
        request_tile_data()
    })
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::super::gemm::x86::store;
    use super::super::microkernel::{Dequant, TileEpilogue};
    use super::super::qgemm::x86::dequantise_512;
    use super::super::simd::V512;
    use super::{Accumulators, Product, TileJob, TILE};

    /// The instruction sequence of one call: zero C, per step load A and B and multiply
    /// four times, store C.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and the product's feature, the process the tile state, and this
    /// thread's tiles are configured as `CONFIG` says; `job.check` passed.
    pub(super) unsafe fn tile_sequence(
        job: &TileJob<'_>,
        product: Product,
        acc: &mut Accumulators,
    ) {
        let a0 = job.a.as_ptr();
        // SAFETY: `check` proved both halves of A inside the slice.
        let a1 = unsafe { a0.add(job.half) };
        let c0 = acc.0.as_mut_ptr().cast::<u8>();
        // SAFETY: row 16 of the 32 x 32 accumulators.
        let c1 = unsafe { c0.add(16 * TILE * 4) };
        macro_rules! sequence {
            ($dp:literal) => {
                // SAFETY: the caller's contract; the loads read 16 rows of 64 bytes at the
                // given strides, inside the operands (`check`; a prefetch is only a hint and
                // may point past them); the stores write the four 16 x 64-byte quarters of
                // `acc`.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "2:",
                        // Each load right before the first product that needs it, so
                        // that it overlaps the products before it (the next step's A0
                        // waits only for the second product, which reads it).
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm6, [{b} + {ldb}*1]",
                        concat!($dp, " tmm0, tmm4, tmm6"),
                        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                        concat!($dp, " tmm1, tmm4, tmm7"),
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        concat!($dp, " tmm2, tmm5, tmm6"),
                        concat!($dp, " tmm3, tmm5, tmm7"),
                        "add {a0}, 1024",
                        "add {a1}, 1024",
                        "add {b}, 2048",
                        "dec {steps}",
                        "jnz 2b",
                        "tilestored [{c0} + {ldb}*1], tmm0",
                        "tilestored [{c0} + {ldb}*1 + 64], tmm1",
                        "tilestored [{c1} + {ldb}*1], tmm2",
                        "tilestored [{c1} + {ldb}*1 + 64], tmm3",
                        a0 = inout(reg) a0 => _,
                        a1 = inout(reg) a1 => _,
                        b = inout(reg) job.b.as_ptr() => _,
                        steps = inout(reg) job.steps => _,
                        lda = in(reg) 64usize,
                        ldb = in(reg) 128usize,
                        c0 = in(reg) c0,
                        c1 = in(reg) c1,
                        out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                        out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                        options(nostack),
                    )
                }
            };
        }
        match product {
            Product::Bf16 => sequence!("tdpbf16ps"),
            Product::Int8 => sequence!("tdpbusd"),
        }
    }

    /// The accumulators' rows through the vector epilogue (int8: dequantised first), each
    /// row as a 1 x 32 tile of the f32 kernels' `store`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW; C holds `(rows - 1) * ldc + cols` floats with `cols <=
    /// ldc`, the epilogue's bias `cols` values and its residual `rows` rows; `dequant` holds
    /// `rows` row quantities and 32 column sums and scales.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn rows_out(
        acc: &Accumulators,
        dequant: Option<Dequant<'_>>,
        epilogue: &TileEpilogue<'_>,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        for i in 0..rows {
            // SAFETY: row `i < 32` of the accumulators holds 32 values.
            let p = unsafe { acc.0.as_ptr().add(i * TILE) };
            // (Plain code, no closures: a closure would not inherit the target features.)
            let v = match dequant {
                // SAFETY: the contract's row quantities, 32 column sums and scales.
                Some(d) => unsafe {
                    let q = d.quants[i];
                    let (sums, scales) = (d.col_sums.as_ptr(), d.scales.as_ptr());
                    let lo = _mm512_loadu_si512(p.cast());
                    let hi = _mm512_loadu_si512(p.add(16).cast());
                    [
                        dequantise_512(lo, q.zero, sums, q.scale, scales),
                        dequantise_512(hi, q.zero, sums.add(16), q.scale, scales.add(16)),
                    ]
                },
                // SAFETY: 32 values in the row.
                None => unsafe {
                    [
                        V512(_mm512_loadu_ps(p.cast())),
                        V512(_mm512_loadu_ps(p.add(16).cast())),
                    ]
                },
            };
            let e = epilogue.from_row(i);
            // SAFETY: row `i` of C holds `cols` floats from `i * ldc`, and the epilogue's
            // row `i` likewise (the contract).
            unsafe { store::<V512, 1, 2>(&[v], Some(&e), &mut c[i * ldc..], ldc, 1, cols) }
        }
    }
}
