//! Every Cranelift call of cnx: lowering a [`Program`] (the JIT's schedule, built from the
//! graph by the parent module) to Cranelift IR and JIT-compiling it for the host.
//!
//! One entry function per program, `extern "C" fn(ctx, input, output, arena, batch)`: every
//! shape, loop bound and per-image buffer offset is an immediate; the batch scales offsets at
//! run time. Memory-bound steps are generated here (the 7x7 depthwise conv with its LayerNorm,
//! GRN's scale, the residual add, the layout permute, exact GELU for the GEMM epilogues),
//! vectorised with `F32X4` and `fma` (the host's FMA flag is on: `cranelift_native` infers it,
//! so a vector fma is one instruction, not four libcalls); the matrix products call the
//! runtime through symbols.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_codegen::settings::Configurable;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
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
    /// Run the Cranelift verifier on every function.
    pub verify: bool,
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
    let node_fn = module
        .declare_function("cnx_jit_node", Linkage::Import, &node_sig)
        .map_err(err)?;
    let rows_fn = module
        .declare_function("cnx_jit_rows", Linkage::Import, &rows_sig)
        .map_err(err)?;

    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut clif = String::new();

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
            &mut clif,
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
            &mut clif,
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
    clif.push_str(&format!("; the schedule\n{}\n", ctx.func.display()));
    module.define_function(entry_id, &mut ctx).map_err(err)?;
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(err)?;
    let entry = module.get_finalized_function(entry_id);
    let gelu = gelu_id.map(|id| module.get_finalized_function(id));
    Ok(Compiled {
        _module: module,
        entry,
        gelu,
        clif,
    })
}

/// Declares and defines the local function `name` with signature `sig`, its body built by
/// `body`, and appends its IR to `clif` under `heading`.
fn define_kernel(
    module: &mut JITModule,
    ctx: &mut cranelift_codegen::Context,
    fctx: &mut FunctionBuilderContext,
    clif: &mut String,
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
    clif.push_str(&format!("; {heading}\n{}\n", ctx.func.display()));
    module.define_function(id, ctx).map_err(err)?;
    module.clear_context(ctx);
    Ok(id)
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

/// Runs `body` if `cond`.
fn if_then(b: &mut FunctionBuilder<'_>, cond: Value, body: impl FnOnce(&mut FunctionBuilder<'_>)) {
    let then = b.create_block();
    let done = b.create_block();
    b.ins().brif(cond, then, &[], done, &[]);
    b.switch_to_block(then);
    body(b);
    b.ins().jump(done, &[]);
    b.switch_to_block(done);
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
/// NHWC depthwise conv, then each pixel's LayerNorm (statistics in f64).
fn depthwise_kernel(b: &mut FunctionBuilder<'_>, d: &Depthwise) {
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let p = b.block_params(block).to_vec();
    let (x, out, row0, row1) = (p[0], p[1], p[2], p[3]);
    let (c, h, w) = (d.channels as i64, d.height as i64, d.width as i64);
    let [kh, kw] = d.kernel;
    let [ph, pw] = d.padding;
    let taps = ptr_const(b, d.taps);
    let bias = ptr_const(b, d.bias);
    let f = flags();
    for_range(b, row0, row1, 1, |b, row| {
        let n = b.ins().udiv_imm_u(row, h);
        let y = b.ins().urem_imm_u(row, h);
        let image_bytes = b.ins().imul_imm_s(n, 4 * h * w * c);
        let image = b.ins().iadd(x, image_bytes);
        for_n(b, w, |b, xo| {
            // dst = out + ((row * W + xo) * C) * 4
            let pix = b.ins().imul_imm_s(row, w);
            let pix = b.ins().iadd(pix, xo);
            let pix_bytes = b.ins().imul_imm_s(pix, 4 * c);
            let dst = b.ins().iadd(out, pix_bytes);
            // Interior pixels (every tap inside the image): accumulators in registers, taps
            // at immediate offsets. Border pixels: bounds-checked taps, accumulated in place.
            let y_ok = {
                let lo = b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, y, ph as i64);
                let hi = b
                    .ins()
                    .icmp_imm_s(IntCC::SignedLessThan, y, h - (kh - 1 - ph) as i64);
                b.ins().band(lo, hi)
            };
            let x_ok = {
                let lo = b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, xo, pw as i64);
                let hi = b
                    .ins()
                    .icmp_imm_s(IntCC::SignedLessThan, xo, w - (kw - 1 - pw) as i64);
                b.ins().band(lo, hi)
            };
            let interior = b.ins().band(y_ok, x_ok);
            let fast = b.create_block();
            let slow = b.create_block();
            let joined = b.create_block();
            b.ins().brif(interior, fast, &[], slow, &[]);
            b.switch_to_block(fast);
            {
                // The input pixel under tap (0, 0).
                let iy = b.ins().iadd_imm_s(y, -(ph as i64));
                let ix = b.ins().iadd_imm_s(xo, -(pw as i64));
                let at = b.ins().imul_imm_s(iy, w);
                let at = b.ins().iadd(at, ix);
                let at = b.ins().imul_imm_s(at, 4 * c);
                let origin = b.ins().iadd(image, at);
                depthwise_taps_in_registers(b, d, origin, taps, bias, dst);
            }
            b.ins().jump(joined, &[]);
            b.switch_to_block(slow);
            // Start from the bias.
            over_channels(b, d.channels, |b, off, ty| {
                let src = b.ins().iadd(bias, off);
                let v = b.ins().load(ty, f, src, 0);
                let at = b.ins().iadd(dst, off);
                b.ins().store(f, v, at, 0);
            });
            for ky in 0..kh {
                // iy = y + ky - ph, in [0, H)?
                let iy = b.ins().iadd_imm_s(y, ky as i64 - ph as i64);
                let lo = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, iy, 0);
                let hi = b.ins().icmp_imm_s(IntCC::SignedLessThan, iy, h);
                let inside = b.ins().band(lo, hi);
                if_then(b, inside, |b| {
                    for kx in 0..kw {
                        let ix = b.ins().iadd_imm_s(xo, kx as i64 - pw as i64);
                        let lo = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, ix, 0);
                        let hi = b.ins().icmp_imm_s(IntCC::SignedLessThan, ix, w);
                        let inside = b.ins().band(lo, hi);
                        if_then(b, inside, |b| {
                            let at = b.ins().imul_imm_s(iy, w);
                            let at = b.ins().iadd(at, ix);
                            let at = b.ins().imul_imm_s(at, 4 * c);
                            let src = b.ins().iadd(image, at);
                            let tap = b.ins().iadd_imm_s(taps, 4 * ((ky * kw + kx) as i64) * c);
                            over_channels(b, d.channels, |b, off, ty| {
                                let s = b.ins().iadd(src, off);
                                let t = b.ins().iadd(tap, off);
                                let o = b.ins().iadd(dst, off);
                                let sv = b.ins().load(ty, f, s, 0);
                                let tv = b.ins().load(ty, f, t, 0);
                                let ov = b.ins().load(ty, f, o, 0);
                                let r = b.ins().fma(sv, tv, ov);
                                b.ins().store(f, r, o, 0);
                            });
                        });
                    }
                });
            }
            b.ins().jump(joined, &[]);
            b.switch_to_block(joined);
            if let Some((eps, affine)) = d.norm {
                layer_norm_pixel(b, dst, d.channels, eps, affine);
            }
        });
    });
    b.ins().return_(&[]);
}

/// One interior output pixel: `dst[c] = bias[c] + sum_taps x[tap][c] * w[tap][c]`, every tap
/// a load at an immediate offset from `origin` (the input pixel under tap (0, 0)). Channels go
/// four `F32X4` blocks at a time (four independent FMA chains hide the FMA latency), then
/// single blocks, then scalars.
fn depthwise_taps_in_registers(
    b: &mut FunctionBuilder<'_>,
    d: &Depthwise,
    origin: Value,
    taps: Value,
    bias: Value,
    dst: Value,
) {
    let f = flags();
    let [kh, kw] = d.kernel;
    let c = d.channels;
    let row_bytes = 4 * (d.width * c) as i64;
    let emit = |b: &mut FunctionBuilder<'_>, off: Value, ty: Type, lanes: usize| {
        let x0 = b.ins().iadd(origin, off);
        let t0 = b.ins().iadd(taps, off);
        let b0 = b.ins().iadd(bias, off);
        let width = if ty == types::F32 { 4 } else { 16 };
        let mut acc: Vec<Value> = (0..lanes)
            .map(|g| b.ins().load(ty, f, b0, (g * width) as i32))
            .collect();
        for ky in 0..kh {
            for kx in 0..kw {
                let x_off = ky as i64 * row_bytes + 4 * (kx * c) as i64;
                let t_off = 4 * ((ky * kw + kx) * c) as i64;
                for (g, a) in acc.iter_mut().enumerate() {
                    let xv = b.ins().load(ty, f, x0, (x_off + (g * width) as i64) as i32);
                    let tv = b.ins().load(ty, f, t0, (t_off + (g * width) as i64) as i32);
                    *a = b.ins().fma(xv, tv, *a);
                }
            }
        }
        let o0 = b.ins().iadd(dst, off);
        for (g, a) in acc.into_iter().enumerate() {
            b.ins().store(f, a, o0, (g * width) as i32);
        }
    };
    let groups = c / 16;
    if groups > 0 {
        for_n(b, groups as i64, |b, gi| {
            let off = b.ins().imul_imm_s(gi, 64);
            emit(b, off, types::F32X4, 4);
        });
    }
    for blk in (groups * 4)..(c / 4) {
        let off = b.ins().iconst(types::I64, 16 * blk as i64);
        emit(b, off, types::F32X4, 1);
    }
    for ch in (c / 4) * 4..c {
        let off = b.ins().iconst(types::I64, 4 * ch as i64);
        emit(b, off, types::F32, 1);
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
        for (u, x) in xs.into_iter().enumerate() {
            let y = gelu_value(b, x, types::F32X4);
            b.ins().store(f, y, at, 16 * u as i32);
        }
    });
    let tail = b.ins().imul_imm_s(groups, 4 * UNROLL);
    for_range(b, tail, len, 1, |b, i| {
        let off = b.ins().imul_imm_s(i, 4);
        let at = b.ins().iadd(ptr, off);
        let x = b.ins().load(types::F32, f, at, 0);
        let y = gelu_value(b, x, types::F32);
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

/// `runtime::kernels::activation::gelu_f32` on `x` (`F32` or `F32X4`).
fn gelu_value(b: &mut FunctionBuilder<'_>, x: Value, ty: Type) -> Value {
    use cnx_runtime::kernels::activation::GELU_ERFC_POLY;
    let ax = b.ins().fabs(x);
    let c = f32_splat(b, ty, std::f32::consts::FRAC_1_SQRT_2);
    let z = b.ins().fmul(ax, c);
    let half = f32_splat(b, ty, 0.5);
    let one = f32_splat(b, ty, 1.0);
    let hz = b.ins().fmul(half, z);
    let d = b.ins().fadd(one, hz);
    let t = b.ins().fdiv(one, d);
    let mut poly = f32_splat(b, ty, GELU_ERFC_POLY[0]);
    for &coef in &GELU_ERFC_POLY[1..] {
        let c = f32_splat(b, ty, coef);
        poly = b.ins().fma(poly, t, c);
    }
    let neg_z = b.ins().fneg(z);
    let arg = b.ins().fma(neg_z, z, poly);
    let e = exp_value(b, arg, ty);
    let erfc = b.ins().fmul(t, e);
    // x >= 0: x (1 - erfc / 2); else x erfc / 2.
    let he = b.ins().fmul(half, erfc);
    let om = b.ins().fsub(one, he);
    let pos = b.ins().fmul(x, om);
    let hx = b.ins().fmul(half, x);
    let neg = b.ins().fmul(hx, erfc);
    let zero = f32_splat(b, ty, 0.0);
    let ge = b.ins().fcmp(
        cranelift_codegen::ir::condcodes::FloatCC::GreaterThanOrEqual,
        x,
        zero,
    );
    if ty == types::F32 {
        b.ins().select(ge, pos, neg)
    } else {
        // A lane mask (all ones where true) in the float type, for a bitwise select.
        let mask = b.ins().bitcast(ty, lanes_flags(), ge);
        b.ins().bitselect(mask, pos, neg)
    }
}

/// Flags for a bitcast between vector types (lane order: little-endian, x86's).
fn lanes_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// The runtime's `exp_f32` on `x` (`F32` or `F32X4`): `2^n` from the rounding trick's
/// mantissa bits, the Taylor polynomial by `fma`.
fn exp_value(b: &mut FunctionBuilder<'_>, x: Value, ty: Type) -> Value {
    use cnx_runtime::kernels::activation::{
        EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E, ROUND,
    };
    let int_ty = if ty == types::F32 {
        types::I32
    } else {
        types::I32X4
    };
    let lo = f32_splat(b, ty, EXP_MIN);
    let hi = f32_splat(b, ty, EXP_MAX);
    let x = b.ins().fmax(x, lo);
    let x = b.ins().fmin(x, hi);
    let log2e = f32_splat(b, ty, LOG2E);
    let round = f32_splat(b, ty, ROUND);
    let xl = b.ins().fmul(x, log2e);
    let shifted = b.ins().fadd(xl, round);
    let n = b.ins().fsub(shifted, round);
    let bits = b.ins().bitcast(int_ty, lanes_flags(), shifted);
    let (round_bits, bias) = if ty == types::F32 {
        (
            b.ins().iconst(types::I32, ROUND.to_bits() as i64),
            b.ins().iconst(types::I32, 127),
        )
    } else {
        // The same bits as f32 vectors, read as i32 lanes.
        let r = f32_splat(b, ty, ROUND);
        let e = f32_splat(b, ty, f32::from_bits(127));
        (
            b.ins().bitcast(int_ty, lanes_flags(), r),
            b.ins().bitcast(int_ty, lanes_flags(), e),
        )
    };
    let n_int = b.ins().isub(bits, round_bits);
    let ln2_hi = f32_splat(b, ty, LN2_HI);
    let ln2_lo = f32_splat(b, ty, LN2_LO);
    let nh = b.ins().fmul(n, ln2_hi);
    let r = b.ins().fsub(x, nh);
    let nl = b.ins().fmul(n, ln2_lo);
    let r = b.ins().fsub(r, nl);
    let mut p = f32_splat(b, ty, EXP_POLY[0]);
    for &coef in &EXP_POLY[1..] {
        let c = f32_splat(b, ty, coef);
        p = b.ins().fma(p, r, c);
    }
    let e = b.ins().iadd(n_int, bias);
    let e = b.ins().ishl_imm_u(e, 23);
    let pow = b.ins().bitcast(ty, lanes_flags(), e);
    b.ins().fmul(pow, p)
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
    /// fma) on every value class: both tails, zero, the erfc polynomial's range, lengths
    /// that leave a scalar tail, and an unaligned start.
    #[test]
    fn generated_gelu_equals_the_runtimes() {
        let program = Program {
            steps: Vec::new(),
            node_shim: std::ptr::null(),
            rows_shim: std::ptr::null(),
            verify: true,
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
