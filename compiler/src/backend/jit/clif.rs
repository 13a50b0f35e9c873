//! Every Cranelift call of cnx: lowering a [`Program`] (the JIT's schedule, built from the
//! graph by the parent module) to Cranelift IR and JIT-compiling it for the host.
//!
//! One entry function per program, `extern "C" fn(ctx, input, output, arena, batch)`: every
//! shape, loop bound and per-image buffer offset is an immediate; the batch scales offsets at
//! run time. Memory-bound steps are generated here (the 7x7 depthwise conv with its LayerNorm,
//! GRN's scale, the head's pool and LayerNorm, the residual add, the layout permute, exact GELU
//! for the GEMM epilogues),
//! vectorised with `F32X4` and `fma` (the host's FMA flag is on: `cranelift_native` infers it,
//! so a vector fma is one instruction, not four libcalls); the matrix products call the
//! runtime through symbols.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_codegen::settings::Configurable;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

/// Where a value lives: the entry's `input` or `output` pointer, or an offset into the arena
/// (in f32 elements per image: the byte offset is `4 * offset * batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Input,
    Output,
    Arena(usize),
}

/// A 7x7-style depthwise conv over NHWC, stride 1, with its LayerNorm epilogue.
#[derive(Debug, Clone, Copy)]
pub struct Depthwise {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub padding: [usize; 2],
    /// Tap-major weights: `taps[(ky * kw + kx) * C + c]`.
    pub taps: *const f32,
    pub bias: *const f32,
    /// LayerNorm eps, and its gamma and beta if it has them.
    pub norm: Option<(f64, Option<(*const f32, *const f32)>)>,
}

/// One step of the schedule.
#[derive(Debug, Clone)]
pub enum Step {
    /// A runtime op, called through `cnx_jit_node(ctx, node, operands, n, out, producer_sums,
    /// sums_out, batch)`.
    Call {
        node: usize,
        operands: Vec<Loc>,
        out: Loc,
        producer_sums: Option<Loc>,
        sums_out: Option<Loc>,
    },
    /// Generated: the depthwise conv, its output rows split over the pool by
    /// `cnx_jit_rows(ctx, kernel, x, out, rows)`.
    Depthwise { conv: Depthwise, x: Loc, out: Loc },
    /// Generated: `s = 1 + gamma * sqrt(S_c) / (mean_c sqrt(S_c) + 1e-6)` per sample, from
    /// sums of squares `S` (f64, `[batch, channels]`), in f64, rounded once.
    GrnScale {
        channels: usize,
        gamma: *const f32,
        sums: Loc,
        out: Loc,
    },
    /// Generated: `out = a + b` over `len` elements per image.
    Add {
        len: usize,
        a: Loc,
        b: Loc,
        out: Loc,
    },
    /// The head: the mean over `pixels` of NHWC `x` (f64 sums), LayerNorm without affine (f64
    /// statistics) into `features` (`[batch, channels]`), generated; then the classifier
    /// (`[classes, channels]` weight, bias) by the runtime, through `cnx_jit_classifier`.
    Head {
        channels: usize,
        classes: usize,
        pixels: usize,
        eps: f64,
        weight: *const f32,
        bias: *const f32,
        x: Loc,
        features: Loc,
        out: Loc,
    },
    /// Generated: `[batch, a, b]` to `[batch, b, a]` (NCHW to NHWC with `a = C`, `b = H*W`).
    Transpose {
        a: usize,
        b: usize,
        x: Loc,
        out: Loc,
    },
}

/// What to compile.
pub struct Program {
    pub steps: Vec<Step>,
    /// Addresses of the runtime functions the code calls.
    pub node_shim: *const u8,
    pub rows_shim: *const u8,
    pub classifier_shim: *const u8,
    /// Run the Cranelift verifier on every function.
    pub verify: bool,
    /// Keep each function's machine code listing in [`Compiled::asm`].
    pub disassemble: bool,
    /// Generate the exact-GELU kernel (for the runtime's GEMM epilogues to call).
    pub gelu: bool,
}

/// JIT-compiled code: the entry point and the module that owns its memory.
pub struct Compiled {
    _module: JITModule,
    pub entry: *const u8,
    /// `extern "C" fn(ptr: *mut f32, len: usize)`: exact GELU in place, when asked for.
    pub gelu: Option<*const u8>,
    /// The Cranelift IR of every function, for reading.
    pub clif: String,
    /// The machine code of every function (when asked for), for reading.
    pub asm: String,
}

type Fail<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("cranelift: {e}")
}

/// Lowers and compiles `program`.
pub fn compile(program: &Program) -> Fail<Compiled> {
    let mut flags = cranelift_codegen::settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags
        .set(
            "enable_verifier",
            if program.verify { "true" } else { "false" },
        )
        .map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    flags.set("is_pic", "false").map_err(err)?;
    let isa = cranelift_native::builder()
        .map_err(err)?
        .finish(cranelift_codegen::settings::Flags::new(flags))
        .map_err(err)?;
    let mut jit = JITBuilder::with_isa(isa, default_libcall_names());
    jit.symbol("cnx_jit_node", program.node_shim);
    jit.symbol("cnx_jit_rows", program.rows_shim);
    jit.symbol("cnx_jit_classifier", program.classifier_shim);
    let mut module = JITModule::new(jit);
    let frontend = module.target_config();
    let ptr = frontend.pointer_type();
    if ptr != types::I64 {
        return Err("the JIT needs a 64-bit target".into());
    }

    let sig = |params: &[Type], ret: Option<Type>| {
        let mut s = module.make_signature();
        s.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        s.returns.extend(ret.map(AbiParam::new));
        s
    };
    let node_sig = sig(&[types::I64; 8], Some(types::I32));
    let rows_sig = sig(&[types::I64; 5], None);
    let kernel_sig = sig(&[types::I64; 4], None);
    let entry_sig = sig(&[types::I64; 5], None);
    let gelu_sig = sig(&[types::I64; 2], None);
    let classifier_sig = sig(&[types::I64; 8], None);
    let node_fn = module
        .declare_function("cnx_jit_node", Linkage::Import, &node_sig)
        .map_err(err)?;
    let rows_fn = module
        .declare_function("cnx_jit_rows", Linkage::Import, &rows_sig)
        .map_err(err)?;
    let classifier_fn = module
        .declare_function("cnx_jit_classifier", Linkage::Import, &classifier_sig)
        .map_err(err)?;

    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut text = Listings {
        clif: String::new(),
        asm: program.disassemble.then(String::new),
    };

    // The depthwise kernels, one function each.
    let mut kernels: Vec<Option<FuncId>> = Vec::new();
    for (i, step) in program.steps.iter().enumerate() {
        let Step::Depthwise { conv, .. } = step else {
            kernels.push(None);
            continue;
        };
        let id = define_kernel(
            &mut module,
            &mut ctx,
            &mut fctx,
            &mut text,
            (&format!("depthwise_{i}"), &kernel_sig),
            &format!("step {i}: depthwise conv"),
            |b| depthwise_kernel(b, conv),
        )?;
        kernels.push(Some(id));
    }

    // The activation kernel the runtime's GEMM epilogues call.
    let gelu_id = if program.gelu {
        Some(define_kernel(
            &mut module,
            &mut ctx,
            &mut fctx,
            &mut text,
            ("gelu", &gelu_sig),
            "exact GELU, in place (the GEMM epilogues' activation)",
            gelu_kernel,
        )?)
    } else {
        None
    };

    // The entry: the schedule.
    let entry_id = module
        .declare_function("forward", Linkage::Local, &entry_sig)
        .map_err(err)?;
    ctx.func.signature = entry_sig.clone();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let e = Entry {
            ctx: p[0],
            input: p[1],
            output: p[2],
            arena: p[3],
            batch: p[4],
        };
        let node_ref = module.declare_func_in_func(node_fn, b.func);
        let rows_ref = module.declare_func_in_func(rows_fn, b.func);
        let classifier_ref = module.declare_func_in_func(classifier_fn, b.func);
        for (i, step) in program.steps.iter().enumerate() {
            match step {
                Step::Call {
                    node,
                    operands,
                    out,
                    producer_sums,
                    sums_out,
                } => {
                    let slot = b.create_sized_stack_slot(StackSlotData::new(
                        StackSlotKind::ExplicitSlot,
                        8 * operands.len().max(1) as u32,
                        3,
                    ));
                    for (k, &loc) in operands.iter().enumerate() {
                        let addr = e.addr(&mut b, loc);
                        b.ins().stack_store(types::I64, addr, slot, 8 * k as i32);
                    }
                    let array = b.ins().stack_addr(types::I64, slot, 0);
                    let node = b.ins().iconst(types::I64, *node as i64);
                    let n = b.ins().iconst(types::I64, operands.len() as i64);
                    let out = e.addr(&mut b, *out);
                    let zero = b.ins().iconst(types::I64, 0);
                    let ps = producer_sums.map_or(zero, |l| e.addr(&mut b, l));
                    let so = sums_out.map_or(zero, |l| e.addr(&mut b, l));
                    b.ins()
                        .call(node_ref, &[e.ctx, node, array, n, out, ps, so, e.batch]);
                }
                Step::Depthwise { conv, x, out } => {
                    let kernel = kernels[i].expect("declared above");
                    let kref = module.declare_func_in_func(kernel, b.func);
                    let kaddr = b.ins().func_addr(types::I64, kref);
                    let x = e.addr(&mut b, *x);
                    let out = e.addr(&mut b, *out);
                    let rows = b.ins().imul_imm_s(e.batch, conv.height as i64);
                    b.ins().call(rows_ref, &[e.ctx, kaddr, x, out, rows]);
                }
                Step::Head {
                    channels,
                    classes,
                    pixels,
                    eps,
                    weight,
                    bias,
                    x,
                    features,
                    out,
                } => {
                    let x = e.addr(&mut b, *x);
                    let features = e.addr(&mut b, *features);
                    pool_norm(&mut b, *channels, *pixels, *eps, x, features, e.batch);
                    let out = e.addr(&mut b, *out);
                    let weight = ptr_const(&mut b, *weight);
                    let bias = ptr_const(&mut b, *bias);
                    let channels = b.ins().iconst(types::I64, *channels as i64);
                    let classes = b.ins().iconst(types::I64, *classes as i64);
                    b.ins().call(
                        classifier_ref,
                        &[
                            e.ctx, weight, bias, features, out, e.batch, channels, classes,
                        ],
                    );
                }
                Step::GrnScale {
                    channels,
                    gamma,
                    sums,
                    out,
                } => {
                    let sums = e.addr(&mut b, *sums);
                    let out = e.addr(&mut b, *out);
                    grn_scale(&mut b, *channels, *gamma, sums, out, e.batch);
                }
                Step::Add {
                    len,
                    a,
                    b: rhs,
                    out,
                } => {
                    let a = e.addr(&mut b, *a);
                    let rhs = e.addr(&mut b, *rhs);
                    let out = e.addr(&mut b, *out);
                    let total = b.ins().imul_imm_s(e.batch, *len as i64);
                    add(&mut b, a, rhs, out, total);
                }
                Step::Transpose {
                    a,
                    b: inner,
                    x,
                    out,
                } => {
                    let x = e.addr(&mut b, *x);
                    let out = e.addr(&mut b, *out);
                    transpose(&mut b, *a, *inner, x, out, e.batch);
                }
            }
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(frontend);
    }
    text.define(&mut module, &mut ctx, entry_id, "the schedule")?;
    module.finalize_definitions().map_err(err)?;
    let entry = module.get_finalized_function(entry_id);
    let gelu = gelu_id.map(|id| module.get_finalized_function(id));
    Ok(Compiled {
        _module: module,
        entry,
        gelu,
        clif: text.clif,
        asm: text.asm.unwrap_or_default(),
    })
}

/// Declares and defines the local function `name` with signature `sig`, its body built by
/// `body`, and appends its IR to `clif` under `heading`.
fn define_kernel(
    module: &mut JITModule,
    ctx: &mut cranelift_codegen::Context,
    fctx: &mut FunctionBuilderContext,
    text: &mut Listings,
    (name, sig): (&str, &cranelift_codegen::ir::Signature),
    heading: &str,
    body: impl FnOnce(&mut FunctionBuilder<'_>),
) -> Fail<FuncId> {
    let id = module
        .declare_function(name, Linkage::Local, sig)
        .map_err(err)?;
    ctx.func.signature = sig.clone();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        body(&mut b);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    text.define(module, ctx, id, heading)?;
    Ok(id)
}

/// The text listings of the compiled functions: IR always, machine code when asked for.
struct Listings {
    clif: String,
    asm: Option<String>,
}

impl Listings {
    /// Compiles the function built in `ctx` as `id`, appending its listings under `heading`.
    fn define(
        &mut self,
        module: &mut JITModule,
        ctx: &mut cranelift_codegen::Context,
        id: FuncId,
        heading: &str,
    ) -> Fail<()> {
        self.clif
            .push_str(&format!("; {heading}\n{}\n", ctx.func.display()));
        ctx.set_disasm(self.asm.is_some());
        module.define_function(id, ctx).map_err(err)?;
        if let Some(asm) = &mut self.asm {
            let code = ctx.compiled_code().and_then(|c| c.vcode.as_deref());
            asm.push_str(&format!("; {heading}\n{}\n", code.unwrap_or("")));
        }
        module.clear_context(ctx);
        Ok(())
    }
}

/// The entry function's parameters.
struct Entry {
    ctx: Value,
    input: Value,
    output: Value,
    arena: Value,
    batch: Value,
}

impl Entry {
    fn addr(&self, b: &mut FunctionBuilder<'_>, loc: Loc) -> Value {
        match loc {
            Loc::Input => self.input,
            Loc::Output => self.output,
            Loc::Arena(0) => self.arena,
            Loc::Arena(off) => {
                let bytes = b.ins().imul_imm_s(self.batch, 4 * off as i64);
                b.ins().iadd(self.arena, bytes)
            }
        }
    }
}

/// Loads and stores inside the buffers the schedule was planned for (so they cannot trap);
/// no alignment beyond the element's is promised (vector accesses may be unaligned).
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `for i in start..end step` (signed compare), body given the induction value.
fn for_range(
    b: &mut FunctionBuilder<'_>,
    start: Value,
    end: Value,
    step: i64,
    mut body: impl FnMut(&mut FunctionBuilder<'_>, Value),
) {
    let i = b.declare_var(types::I64);
    b.def_var(i, start);
    let header = b.create_block();
    let inner = b.create_block();
    let exit = b.create_block();
    b.ins().jump(header, &[]);
    b.switch_to_block(header);
    let iv = b.use_var(i);
    let more = b.ins().icmp(IntCC::SignedLessThan, iv, end);
    b.ins().brif(more, inner, &[], exit, &[]);
    b.switch_to_block(inner);
    let iv = b.use_var(i);
    body(b, iv);
    let iv = b.use_var(i);
    let next = b.ins().iadd_imm_s(iv, step);
    b.def_var(i, next);
    b.ins().jump(header, &[]);
    b.switch_to_block(exit);
}

fn for_n(b: &mut FunctionBuilder<'_>, n: i64, body: impl FnMut(&mut FunctionBuilder<'_>, Value)) {
    let start = b.ins().iconst(types::I64, 0);
    let end = b.ins().iconst(types::I64, n);
    for_range(b, start, end, 1, body)
}

fn ptr_const(b: &mut FunctionBuilder<'_>, p: *const f32) -> Value {
    b.ins().iconst(types::I64, p as i64)
}

/// `dst[c] = op(dst[c], ...)` over `channels` f32 lanes: `F32X4` blocks, then a scalar tail.
/// `lane(b, offset_bytes, ty)` returns the new value for the element(s) at that offset.
fn over_channels(
    b: &mut FunctionBuilder<'_>,
    channels: usize,
    mut lane: impl FnMut(&mut FunctionBuilder<'_>, Value, Type),
) {
    let blocks = channels / 4;
    if blocks > 0 {
        for_n(b, blocks as i64, |b, cb| {
            let off = b.ins().imul_imm_s(cb, 16);
            lane(b, off, types::F32X4);
        });
    }
    for c in blocks * 4..channels {
        let off = b.ins().iconst(types::I64, 4 * c as i64);
        lane(b, off, types::F32);
    }
}

/// `fn(x, out, row0, row1)`: output rows `row0..row1` (row = sample * H + y) of a stride-1
/// NHWC depthwise conv, then each pixel's LayerNorm.
///
/// The schedule, per output row: for each block of four channels (one `F32X4`), the row's
/// pixels go in blocks of [`DEPTHWISE_BLOCK`] (eight), each block's accumulators in registers
/// across all taps. Per kernel row `ky`, the block loads the `kw` tap weights once and each
/// input pixel under it once (`8 + kw - 1` loads), and every input feeds the accumulators of
/// all the outputs it reaches: 21 loads for 56 fmas with a 7x7 kernel, where a pixel at a time
/// needs 196. Eight independent accumulators also cover the fma latency (with four, each
/// kernel row was a chain of seven dependent fmas per accumulator).
/// Width is an immediate, so the blocks at the left and right borders are unrolled with
/// exactly their in-bounds taps (no checks at run time), and the interior is one loop with
/// every tap at an immediate offset; the vertical tap range is computed per row.
fn depthwise_kernel(b: &mut FunctionBuilder<'_>, d: &Depthwise) {
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let p = b.block_params(block).to_vec();
    let (x, out, row0, row1) = (p[0], p[1], p[2], p[3]);
    let (c, h, w) = (d.channels as i64, d.height as i64, d.width as i64);
    let [kh, _] = d.kernel;
    let [ph, _] = d.padding;
    let taps = ptr_const(b, d.taps);
    let bias = ptr_const(b, d.bias);
    for_range(b, row0, row1, 1, |b, row| {
        let n = b.ins().udiv_imm_u(row, h);
        let y = b.ins().urem_imm_u(row, h);
        let image_bytes = b.ins().imul_imm_s(n, 4 * h * w * c);
        let image = b.ins().iadd(x, image_bytes);
        let dst_bytes = b.ins().imul_imm_s(row, 4 * w * c);
        let dst_row = b.ins().iadd(out, dst_bytes);
        // Kernel rows over the image: ky in [max(0, ph - y), min(kh, H + ph - y)).
        let zero = b.ins().iconst(types::I64, 0);
        let ph_v = b.ins().iconst(types::I64, ph as i64);
        let lo = b.ins().isub(ph_v, y);
        let ky_lo = b.ins().smax(lo, zero);
        let kh_v = b.ins().iconst(types::I64, kh as i64);
        let end = b.ins().iconst(types::I64, h + ph as i64);
        let hi = b.ins().isub(end, y);
        let ky_hi = b.ins().smin(hi, kh_v);
        let rows = RowTaps {
            image,
            dst_row,
            y,
            ky_lo,
            ky_hi,
            taps,
            bias,
        };
        let groups = d.channels / 4;
        if groups > 0 {
            for_n(b, groups as i64, |b, g| {
                let off = b.ins().imul_imm_s(g, 16);
                depthwise_row(b, d, &rows, off, types::F32X4);
            });
        }
        for ch in groups * 4..d.channels {
            let off = b.ins().iconst(types::I64, 4 * ch as i64);
            depthwise_row(b, d, &rows, off, types::F32);
        }
        if let Some((eps, affine)) = d.norm {
            for_n(b, w, |b, px| {
                let at = b.ins().imul_imm_s(px, 4 * c);
                let dst = b.ins().iadd(dst_row, at);
                layer_norm_pixel(b, dst, d.channels, eps, affine);
            });
        }
    });
    b.ins().return_(&[]);
}

/// What [`depthwise_row`] needs of its output row.
struct RowTaps {
    /// The sample's first input pixel, and the output row's first pixel.
    image: Value,
    dst_row: Value,
    /// The row's `y`, and its kernel rows over the image, `ky_lo..ky_hi`.
    y: Value,
    ky_lo: Value,
    ky_hi: Value,
    taps: Value,
    bias: Value,
}

/// Pixels per block of a depthwise output row (accumulators held in registers): eight, where
/// four left the JIT's depthwise time 18% higher (its share of the forward, 9.0-9.8% vs
/// 7.4-7.9%, `cnx bench tiny-1k-224 --batch 1,8 --backend jit`).
const DEPTHWISE_BLOCK: usize = 8;

/// One output row of one channel block (`ty` = `F32X4`: four channels at byte offset `off`;
/// `F32`: one): the left border blocks, the interior loop, the right border blocks.
fn depthwise_row(b: &mut FunctionBuilder<'_>, d: &Depthwise, r: &RowTaps, off: Value, ty: Type) {
    let (w, [_, kw], [_, pw]) = (d.width, d.kernel, d.padding);
    // A block starting at `x0` is interior when all its taps are in the row.
    let first = pw;
    let last_start = (w + pw + 1).checked_sub(kw + DEPTHWISE_BLOCK);
    let interior = match last_start {
        Some(last) if last >= first => (last - first) / DEPTHWISE_BLOCK + 1,
        _ => 0,
    };
    let (left_end, right_start) = if interior > 0 {
        (first, first + interior * DEPTHWISE_BLOCK)
    } else {
        (0, 0)
    };
    let border = |b: &mut FunctionBuilder<'_>, from: usize, to: usize| {
        let mut x0 = from;
        while x0 < to {
            let n = DEPTHWISE_BLOCK.min(to - x0);
            let base = b.ins().iconst(types::I64, x0 as i64);
            depthwise_block(b, d, r, off, ty, base, n, Some(x0));
            x0 += n;
        }
    };
    border(b, 0, left_end);
    if interior > 0 {
        let start = b.ins().iconst(types::I64, first as i64);
        let end = b.ins().iconst(types::I64, right_start as i64);
        for_range(b, start, end, DEPTHWISE_BLOCK as i64, |b, x0| {
            depthwise_block(b, d, r, off, ty, x0, DEPTHWISE_BLOCK, None);
        });
    }
    border(b, right_start, w);
}

/// Output pixels `x0..x0 + n` of one channel block: `out = bias + sum_taps x * w`, the `n`
/// accumulators in registers over every kernel row. `at` is `x0` when known at compile time
/// (a border block: only the in-bounds input columns are loaded); `None` in the interior,
/// where every column is.
#[allow(clippy::too_many_arguments)]
fn depthwise_block(
    b: &mut FunctionBuilder<'_>,
    d: &Depthwise,
    r: &RowTaps,
    off: Value,
    ty: Type,
    x0: Value,
    n: usize,
    at: Option<usize>,
) {
    let f = flags();
    let (c, w) = (d.channels as i64, d.width as i64);
    let ([_, kw], [ph, pw]) = (d.kernel, d.padding);
    let pixel = 4 * c;
    // Input column `x0 - pw + i` is read for i in 0..n + kw - 1, when inside the row.
    let inside = |i: usize| match at {
        Some(x0) => {
            let ix = (x0 + i) as i64 - pw as i64;
            (0..w).contains(&ix)
        }
        None => true,
    };
    let bias_at = b.ins().iadd(r.bias, off);
    let acc: Vec<Variable> = (0..n)
        .map(|_| {
            let v = b.declare_var(ty);
            let init = b.ins().load(ty, f, bias_at, 0);
            b.def_var(v, init);
            v
        })
        .collect();
    // Byte offset of input column `x0 - pw` within a row, and of output pixel `x0`.
    let col_bytes = b.ins().imul_imm_s(x0, pixel);
    let in_cols = b.ins().iadd_imm_s(col_bytes, -(pw as i64) * pixel);
    let in_cols = b.ins().iadd(in_cols, off);
    for_range(b, r.ky_lo, r.ky_hi, 1, |b, ky| {
        // Input row y + ky - ph; tap row ky.
        let iy = b.ins().iadd(r.y, ky);
        let iy = b.ins().iadd_imm_s(iy, -(ph as i64));
        let row_bytes = b.ins().imul_imm_s(iy, w * pixel);
        let src = b.ins().iadd(r.image, row_bytes);
        let src = b.ins().iadd(src, in_cols);
        let tap_bytes = b.ins().imul_imm_s(ky, kw as i64 * pixel);
        let tap_row = b.ins().iadd(r.taps, tap_bytes);
        let tap_row = b.ins().iadd(tap_row, off);
        let weights: Vec<Value> = (0..kw)
            .map(|kx| b.ins().load(ty, f, tap_row, (kx as i64 * pixel) as i32))
            .collect();
        let mut sums: Vec<Value> = acc.iter().map(|&v| b.use_var(v)).collect();
        for i in (0..n + kw - 1).filter(|&i| inside(i)) {
            let v = b.ins().load(ty, f, src, (i as i64 * pixel) as i32);
            for (j, sum) in sums.iter_mut().enumerate() {
                // Output x0 + j reads column x0 - pw + i through tap kx = i - j.
                if let Some(kx) = i.checked_sub(j).filter(|&kx| kx < kw) {
                    *sum = b.ins().fma(v, weights[kx], *sum);
                }
            }
        }
        for (&v, &sum) in acc.iter().zip(&sums) {
            b.def_var(v, sum);
        }
    });
    let dst = b.ins().iadd(r.dst_row, col_bytes);
    let dst = b.ins().iadd(dst, off);
    for (j, &v) in acc.iter().enumerate() {
        let sum = b.use_var(v);
        b.ins().store(f, sum, dst, (j as i64 * pixel) as i32);
    }
}

/// LayerNorm of one pixel's `channels` values at `dst`, in place, vectorised: mean, then the
/// biased variance from the deviations (two passes, f32 lanes as PyTorch's CPU LayerNorm
/// keeps them), then `(x - mean) / sqrt(var + eps) [* gamma + beta]`.
fn layer_norm_pixel(
    b: &mut FunctionBuilder<'_>,
    dst: Value,
    channels: usize,
    eps: f64,
    affine: Option<(*const f32, *const f32)>,
) {
    let f = flags();
    let zero = b.ins().f32const(0.0);
    let zero4 = b.ins().splat(types::F32X4, zero);
    // Sum of `term(x)` over the channels: an F32X4 accumulator and a scalar one.
    let reduce = |b: &mut FunctionBuilder<'_>, square_from: Option<Value>| -> Value {
        let vacc = b.declare_var(types::F32X4);
        let sacc = b.declare_var(types::F32);
        b.def_var(vacc, zero4);
        b.def_var(sacc, zero);
        over_channels(b, channels, |b, off, ty| {
            let at = b.ins().iadd(dst, off);
            let v = b.ins().load(ty, f, at, 0);
            let (var, m) = if ty == types::F32 {
                (sacc, square_from)
            } else {
                (vacc, square_from.map(|m| b.ins().splat(types::F32X4, m)))
            };
            let acc = b.use_var(var);
            let acc = match m {
                None => b.ins().fadd(acc, v),
                Some(m) => {
                    let d = b.ins().fsub(v, m);
                    b.ins().fma(d, d, acc)
                }
            };
            b.def_var(var, acc);
        });
        let v = b.use_var(vacc);
        let mut total = b.use_var(sacc);
        for lane in 0..4u8 {
            let x = b.ins().extractlane(v, lane);
            total = b.ins().fadd(total, x);
        }
        total
    };
    let count = b.ins().f32const(channels as f32);
    let sum = reduce(b, None);
    let mean = b.ins().fdiv(sum, count);
    let sq = reduce(b, Some(mean));
    let var = b.ins().fdiv(sq, count);
    let eps = b.ins().f32const(eps as f32);
    let var = b.ins().fadd(var, eps);
    let std = b.ins().sqrt(var);
    let one = b.ins().f32const(1.0);
    let inv = b.ins().fdiv(one, std);
    let (gamma, beta) = match affine {
        Some((g, be)) => (Some(ptr_const(b, g)), Some(ptr_const(b, be))),
        None => (None, None),
    };
    over_channels(b, channels, |b, off, ty| {
        let at = b.ins().iadd(dst, off);
        let v = b.ins().load(ty, f, at, 0);
        let (m, k) = if ty == types::F32 {
            (mean, inv)
        } else {
            (b.ins().splat(ty, mean), b.ins().splat(ty, inv))
        };
        let d = b.ins().fsub(v, m);
        let mut y = b.ins().fmul(d, k);
        if let (Some(g), Some(be)) = (gamma, beta) {
            let ga = b.ins().iadd(g, off);
            let gv = b.ins().load(ty, f, ga, 0);
            let ba = b.ins().iadd(be, off);
            let bv = b.ins().load(ty, f, ba, 0);
            y = b.ins().fma(y, gv, bv);
        }
        b.ins().store(f, y, at, 0);
    });
}

/// GRN's per-sample channel scale from f64 sums of squares.
fn grn_scale(
    b: &mut FunctionBuilder<'_>,
    channels: usize,
    gamma: *const f32,
    sums: Value,
    out: Value,
    batch: Value,
) {
    let f = flags();
    let c = channels as i64;
    let gamma = ptr_const(b, gamma);
    let zero = b.ins().iconst(types::I64, 0);
    for_range(b, zero, batch, 1, |b, n| {
        let s_bytes = b.ins().imul_imm_s(n, 8 * c);
        let s_row = b.ins().iadd(sums, s_bytes);
        let o_bytes = b.ins().imul_imm_s(n, 4 * c);
        let o_row = b.ins().iadd(out, o_bytes);
        // mean of the channel norms
        let acc = b.declare_var(types::F64);
        let z = b.ins().f64const(0.0);
        b.def_var(acc, z);
        for_n(b, c, |b, ch| {
            let at = b.ins().imul_imm_s(ch, 8);
            let at = b.ins().iadd(s_row, at);
            let v = b.ins().load(types::F64, f, at, 0);
            let v = b.ins().sqrt(v);
            let a = b.use_var(acc);
            let a = b.ins().fadd(a, v);
            b.def_var(acc, a);
        });
        let a = b.use_var(acc);
        let count = b.ins().f64const(channels as f64);
        let mean = b.ins().fdiv(a, count);
        let eps = b.ins().f64const(cnx_runtime::kernels::reference::GRN_EPS);
        let denom = b.ins().fadd(mean, eps);
        let one = b.ins().f64const(1.0);
        for_n(b, c, |b, ch| {
            let at = b.ins().imul_imm_s(ch, 8);
            let at = b.ins().iadd(s_row, at);
            let v = b.ins().load(types::F64, f, at, 0);
            let norm = b.ins().sqrt(v);
            let q = b.ins().fdiv(norm, denom);
            let g_at = b.ins().imul_imm_s(ch, 4);
            let o_at = b.ins().iadd(o_row, g_at);
            let g_at = b.ins().iadd(gamma, g_at);
            let g = b.ins().load(types::F32, f, g_at, 0);
            let g = b.ins().fpromote(types::F64, g);
            let gq = b.ins().fmul(g, q);
            let s = b.ins().fadd(one, gq);
            let s = b.ins().fdemote(types::F32, s);
            b.ins().store(f, s, o_at, 0);
        });
    });
}

/// The head's pool and norm, per sample: `pooled[c] = (sum_p x[p][c] / P)` (f64 sums, in
/// pixel order), then `features = (pooled - mean) / sqrt(var + eps)` with f64 statistics:
/// the runtime's `global_avg_pool` and `LinearPrologue` norm, operation for operation.
fn pool_norm(
    b: &mut FunctionBuilder<'_>,
    channels: usize,
    pixels: usize,
    eps: f64,
    x: Value,
    out: Value,
    batch: Value,
) {
    let f = flags();
    let c = channels as i64;
    let zero = b.ins().iconst(types::I64, 0);
    // Sum of `term(pooled[ch])` over the channels of row `o_row`, in f64.
    let sum_over = |b: &mut FunctionBuilder<'_>,
                    o_row: Value,
                    term: &dyn Fn(&mut FunctionBuilder<'_>, Value) -> Value|
     -> Value {
        let acc = b.declare_var(types::F64);
        let z = b.ins().f64const(0.0);
        b.def_var(acc, z);
        for_n(b, c, |b, ch| {
            let at = b.ins().imul_imm_s(ch, 4);
            let at = b.ins().iadd(o_row, at);
            let v = b.ins().load(types::F32, f, at, 0);
            let v = b.ins().fpromote(types::F64, v);
            let t = term(b, v);
            let a = b.use_var(acc);
            let a = b.ins().fadd(a, t);
            b.def_var(acc, a);
        });
        b.use_var(acc)
    };
    for_range(b, zero, batch, 1, |b, n| {
        let x_bytes = b.ins().imul_imm_s(n, 4 * c * pixels as i64);
        let x_img = b.ins().iadd(x, x_bytes);
        let o_bytes = b.ins().imul_imm_s(n, 4 * c);
        let o_row = b.ins().iadd(out, o_bytes);
        for_n(b, c, |b, ch| {
            let acc = b.declare_var(types::F64);
            let z = b.ins().f64const(0.0);
            b.def_var(acc, z);
            let ch_bytes = b.ins().imul_imm_s(ch, 4);
            let src = b.ins().iadd(x_img, ch_bytes);
            for_n(b, pixels as i64, |b, p| {
                let at = b.ins().imul_imm_s(p, 4 * c);
                let at = b.ins().iadd(src, at);
                let v = b.ins().load(types::F32, f, at, 0);
                let v = b.ins().fpromote(types::F64, v);
                let a = b.use_var(acc);
                let a = b.ins().fadd(a, v);
                b.def_var(acc, a);
            });
            let a = b.use_var(acc);
            let count = b.ins().f64const(pixels as f64);
            let mean = b.ins().fdiv(a, count);
            let mean = b.ins().fdemote(types::F32, mean);
            let dst = b.ins().iadd(o_row, ch_bytes);
            b.ins().store(f, mean, dst, 0);
        });
        let count = b.ins().f64const(channels as f64);
        let total = sum_over(b, o_row, &|_, v| v);
        let mean = b.ins().fdiv(total, count);
        let squares = sum_over(b, o_row, &|b, v| {
            let d = b.ins().fsub(v, mean);
            b.ins().fmul(d, d)
        });
        let var = b.ins().fdiv(squares, count);
        let eps = b.ins().f64const(eps);
        let var = b.ins().fadd(var, eps);
        let std = b.ins().sqrt(var);
        let one = b.ins().f64const(1.0);
        let inv_std = b.ins().fdiv(one, std);
        for_n(b, c, |b, ch| {
            let at = b.ins().imul_imm_s(ch, 4);
            let at = b.ins().iadd(o_row, at);
            let v = b.ins().load(types::F32, f, at, 0);
            let v = b.ins().fpromote(types::F64, v);
            let d = b.ins().fsub(v, mean);
            let y = b.ins().fmul(d, inv_std);
            let y = b.ins().fdemote(types::F32, y);
            b.ins().store(f, y, at, 0);
        });
    });
}

/// `fn(ptr, len)`: exact GELU in place over `len` f32 values, `F32X4` blocks (four per
/// iteration, independent, so the polynomial's latency overlaps) then single lanes. The
/// runtime's `gelu_f32` step for step, every multiply-add one `fma`: the same bits.
fn gelu_kernel(b: &mut FunctionBuilder<'_>) {
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let p = b.block_params(block).to_vec();
    let (ptr, len) = (p[0], p[1]);
    let f = flags();
    let zero = b.ins().iconst(types::I64, 0);
    const UNROLL: i64 = 4;
    let groups = b.ins().udiv_imm_u(len, 4 * UNROLL);
    for_range(b, zero, groups, 1, |b, g| {
        let base = b.ins().imul_imm_s(g, 16 * UNROLL);
        let at = b.ins().iadd(ptr, base);
        let xs: Vec<Value> = (0..UNROLL)
            .map(|u| b.ins().load(types::F32X4, f, at, 16 * u as i32))
            .collect();
        for (u, y) in gelu_values(b, &xs, types::F32X4).into_iter().enumerate() {
            b.ins().store(f, y, at, 16 * u as i32);
        }
    });
    let tail = b.ins().imul_imm_s(groups, 4 * UNROLL);
    for_range(b, tail, len, 1, |b, i| {
        let off = b.ins().imul_imm_s(i, 4);
        let at = b.ins().iadd(ptr, off);
        let x = b.ins().load(types::F32, f, at, 0);
        let y = gelu_values(b, &[x], types::F32)[0];
        b.ins().store(f, y, at, 0);
    });
    b.ins().return_(&[]);
}

/// An f32 constant as a `ty` value: `F32`, or an `F32X4` constant-pool vector (one load,
/// which x64 folds into its user, instead of a scalar move and a shuffle).
fn f32_splat(b: &mut FunctionBuilder<'_>, ty: Type, v: f32) -> Value {
    if ty == types::F32 {
        return b.ins().f32const(v);
    }
    let bytes: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), 4).flatten().collect();
    let handle = b.func.dfg.constants.insert(bytes.into());
    b.ins().vconst(ty, handle)
}

/// `runtime::kernels::activation::gelu_f32` on each of `xs` (all `F32` or all `F32X4`),
/// step by step across the values, so that the chains are independent and each constant is
/// loaded once per step.
fn gelu_values(b: &mut FunctionBuilder<'_>, xs: &[Value], ty: Type) -> Vec<Value> {
    use cnx_runtime::kernels::activation::{
        GELU_ERF_CLAMP, GELU_ERF_DENOMINATOR, GELU_ERF_NUMERATOR,
    };
    let lo = f32_splat(b, ty, -GELU_ERF_CLAMP);
    let c: Vec<Value> = xs.iter().map(|&x| max_of(b, ty, x, lo)).collect();
    let hi = f32_splat(b, ty, GELU_ERF_CLAMP);
    let c: Vec<Value> = c.iter().map(|&c| min_of(b, ty, c, hi)).collect();
    let c2: Vec<Value> = c.iter().map(|&c| b.ins().fmul(c, c)).collect();
    // Horner from the highest coefficient, each step one fma.
    let horner = |b: &mut FunctionBuilder<'_>, coefs: &[f32; 6]| -> Vec<Value> {
        let top = f32_splat(b, ty, coefs[5]);
        let mut acc = vec![top; xs.len()];
        for &coef in coefs[..5].iter().rev() {
            let k = f32_splat(b, ty, coef);
            for (a, &c2) in acc.iter_mut().zip(&c2) {
                *a = b.ins().fma(*a, c2, k);
            }
        }
        acc
    };
    let p = horner(b, &GELU_ERF_NUMERATOR);
    let q = horner(b, &GELU_ERF_DENOMINATOR);
    let half = f32_splat(b, ty, 0.5);
    let one = f32_splat(b, ty, 1.0);
    (0..xs.len())
        .map(|i| {
            let p = b.ins().fmul(c[i], p[i]);
            let erf = b.ins().fdiv(p, q[i]);
            let h = b.ins().fmul(half, xs[i]);
            let e1 = b.ins().fadd(erf, one);
            b.ins().fmul(h, e1)
        })
        .collect()
}

/// Flags for a bitcast between vector types (lane order: little-endian, x86's).
fn lanes_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// `x < y ? y : x`, the runtime's `max` for non-NaN inputs, written as the compare and select
/// x64 lowers to one `maxps` (Cranelift's `fmax` is IEEE's, several instructions per lane
/// group for NaN and signed-zero cases that cannot occur here).
fn max_of(b: &mut FunctionBuilder<'_>, ty: Type, x: Value, y: Value) -> Value {
    let lt = b.ins().fcmp(FloatCC::LessThan, x, y);
    if ty == types::F32 {
        b.ins().select(lt, y, x)
    } else {
        let mask = b.ins().bitcast(ty, lanes_flags(), lt);
        b.ins().bitselect(mask, y, x)
    }
}

/// `y < x ? y : x`: `minps`, as [`max_of`].
fn min_of(b: &mut FunctionBuilder<'_>, ty: Type, x: Value, y: Value) -> Value {
    let lt = b.ins().fcmp(FloatCC::LessThan, y, x);
    if ty == types::F32 {
        b.ins().select(lt, y, x)
    } else {
        let mask = b.ins().bitcast(ty, lanes_flags(), lt);
        b.ins().bitselect(mask, y, x)
    }
}

/// `out = a + b` over `total` f32 values.
fn add(b: &mut FunctionBuilder<'_>, x: Value, y: Value, out: Value, total: Value) {
    let f = flags();
    let zero = b.ins().iconst(types::I64, 0);
    let blocks = b.ins().ushr_imm_u(total, 2);
    for_range(b, zero, blocks, 1, |b, i| {
        let off = b.ins().imul_imm_s(i, 16);
        let (xa, ya, oa) = (
            b.ins().iadd(x, off),
            b.ins().iadd(y, off),
            b.ins().iadd(out, off),
        );
        let xv = b.ins().load(types::F32X4, f, xa, 0);
        let yv = b.ins().load(types::F32X4, f, ya, 0);
        let s = b.ins().fadd(xv, yv);
        b.ins().store(f, s, oa, 0);
    });
    let tail = b.ins().ishl_imm_u(blocks, 2);
    for_range(b, tail, total, 1, |b, i| {
        let off = b.ins().imul_imm_s(i, 4);
        let (xa, ya, oa) = (
            b.ins().iadd(x, off),
            b.ins().iadd(y, off),
            b.ins().iadd(out, off),
        );
        let xv = b.ins().load(types::F32, f, xa, 0);
        let yv = b.ins().load(types::F32, f, ya, 0);
        let s = b.ins().fadd(xv, yv);
        b.ins().store(f, s, oa, 0);
    });
}

/// `[batch, a, inner]` to `[batch, inner, a]`.
fn transpose(
    b: &mut FunctionBuilder<'_>,
    a: usize,
    inner: usize,
    x: Value,
    out: Value,
    batch: Value,
) {
    let f = flags();
    let (a, inner) = (a as i64, inner as i64);
    let zero = b.ins().iconst(types::I64, 0);
    for_range(b, zero, batch, 1, |b, n| {
        let base = b.ins().imul_imm_s(n, 4 * a * inner);
        let src = b.ins().iadd(x, base);
        let dst = b.ins().iadd(out, base);
        for_n(b, a, |b, i| {
            for_n(b, inner, |b, j| {
                let s = b.ins().imul_imm_s(i, inner);
                let s = b.ins().iadd(s, j);
                let s = b.ins().imul_imm_s(s, 4);
                let s = b.ins().iadd(src, s);
                let v = b.ins().load(types::F32, f, s, 0);
                let d = b.ins().imul_imm_s(j, a);
                let d = b.ins().iadd(d, i);
                let d = b.ins().imul_imm_s(d, 4);
                let d = b.ins().iadd(dst, d);
                b.ins().store(f, v, d, 0);
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated GELU gives the runtime's bits (the same steps, each multiply-add one
    /// fma) on every value class: both tails, zero, the rational's range and its clamp, lengths
    /// that leave a scalar tail, and an unaligned start.
    #[test]
    fn generated_gelu_equals_the_runtimes() {
        let program = Program {
            steps: Vec::new(),
            node_shim: std::ptr::null(),
            rows_shim: std::ptr::null(),
            classifier_shim: std::ptr::null(),
            verify: true,
            disassemble: false,
            gelu: true,
        };
        let code = compile(&program).unwrap();
        // SAFETY: the kernel compiled above, `extern "C" fn(*mut f32, usize)`, which touches
        // exactly the `len` floats given.
        let gelu: unsafe extern "C" fn(*mut f32, usize) =
            unsafe { std::mem::transmute(code.gelu.unwrap()) };
        let mut values: Vec<f32> = (-30000..30000)
            .map(|i| i as f32 * 0.00041 + 0.0001)
            .collect();
        values.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            100.0,
            -100.0,
            1e30,
            -1e30,
            f32::MAX,
            -f32::MAX,
        ]);
        for len in [values.len(), 1, 3, 15, 17, 33] {
            for start in [0, 1] {
                let slice = &values[start..(start + len).min(values.len())];
                let mut want = slice.to_vec();
                cnx_runtime::kernels::activation::gelu_slice(&mut want);
                let mut got = slice.to_vec();
                // SAFETY: `got` owns `got.len()` floats.
                unsafe { gelu(got.as_mut_ptr(), got.len()) };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "x = {}: {g} vs {w}", slice[i]);
                }
            }
        }
    }
}
