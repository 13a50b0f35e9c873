//! Every Cranelift call of cnx: a [`Schedule`] (the JIT's view of a lowered program, built by
//! the crate root) compiled for the host into one native function.
//!
//! The entry is `extern "C" fn(ctx, arena, sums, batch)`: every shape, loop bound and
//! per-image buffer offset is an immediate; the batch scales offsets at run time. The steps
//! whose generated code measured at least as fast as the runtime's kernels (BENCHMARKS.md) are
//! generated here: the layout permute, GRN's scale from its sums, the residual add, the head's
//! pool and LayerNorm. Every other step calls the runtime through `cnx_jit_step`, and the
//! head's product through `cnx_jit_classifier`.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_codegen::settings::Configurable;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

/// Where a value lives: an offset into the value arena (f32 elements per image: the byte
/// offset is `4 * offset * batch`) or into the sums arena (f64 per image: `8 * offset * batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Values(usize),
    Sums(usize),
}

/// One step of the schedule.
#[derive(Debug, Clone)]
pub enum Step {
    /// A runtime op, called through `cnx_jit_step(ctx, step, operands, n, out, sums, batch)`.
    Call {
        step: usize,
        operands: Vec<Loc>,
        out: Loc,
        sums: Option<Loc>,
    },
    /// Generated: `s = 1 + gamma * sqrt(S_c) / (mean_c sqrt(S_c) + 1e-6)` per sample, from
    /// sums of squares `S` (f64, `[batch, channels]`), in f64, rounded once.
    GrnScale {
        channels: usize,
        gamma: *const f32,
        sums: Loc,
        out: Loc,
    },
    /// Generated: `out = a + b` over `len` elements per image.
    Add { len: usize, a: Loc, b: Loc, out: Loc },
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
    Transpose { a: usize, b: usize, x: Loc, out: Loc },
}

/// What to compile.
pub struct Schedule {
    pub steps: Vec<Step>,
    /// Addresses of the runtime functions the code calls.
    pub step_shim: *const u8,
    pub classifier_shim: *const u8,
    /// Run the Cranelift verifier on every function.
    pub verify: bool,
    /// Keep each function's machine code listing in [`Compiled::asm`].
    pub disassemble: bool,
}

/// JIT-compiled code: the entry point and the module that owns its memory.
pub struct Compiled {
    _module: JITModule,
    pub entry: *const u8,
    /// The Cranelift IR of every function, for reading.
    pub clif: String,
    /// The machine code of every function (when asked for), for reading.
    pub asm: String,
}

/// Cranelift refused something: a compiler bug, with Cranelift's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cranelift: {0}")]
pub struct CodegenError(pub String);

type Fail<T> = Result<T, CodegenError>;

fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError(e.to_string())
}

/// The host's code generator, with the verifier on or off.
fn host_isa(verify: bool) -> Fail<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>> {
    let mut flags = cranelift_codegen::settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags
        .set("enable_verifier", if verify { "true" } else { "false" })
        .map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    flags.set("is_pic", "false").map_err(err)?;
    cranelift_native::builder()
        .map_err(err)?
        .finish(cranelift_codegen::settings::Flags::new(flags))
        .map_err(err)
}

/// Compiles `schedule` into its entry function.
pub fn compile(schedule: &Schedule) -> Fail<Compiled> {
    let mut jit = JITBuilder::with_isa(host_isa(schedule.verify)?, default_libcall_names());
    jit.symbol("cnx_jit_step", schedule.step_shim);
    jit.symbol("cnx_jit_classifier", schedule.classifier_shim);
    let mut module = JITModule::new(jit);
    let frontend = module.target_config();
    if frontend.pointer_type() != types::I64 {
        return Err(CodegenError("the JIT needs a 64-bit target".into()));
    }
    let sig = |n: usize, ret: Option<Type>| {
        let mut s = module.make_signature();
        s.params.extend((0..n).map(|_| AbiParam::new(types::I64)));
        s.returns.extend(ret.map(AbiParam::new));
        s
    };
    let (step_sig, classifier_sig, entry_sig) = (sig(7, Some(types::I32)), sig(8, None), sig(4, None));
    let step_fn = module
        .declare_function("cnx_jit_step", Linkage::Import, &step_sig)
        .map_err(err)?;
    let classifier_fn = module
        .declare_function("cnx_jit_classifier", Linkage::Import, &classifier_sig)
        .map_err(err)?;
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut text = Listings {
        clif: String::new(),
        asm: schedule.disassemble.then(String::new),
    };
    let entry_id = module
        .declare_function("forward", Linkage::Local, &entry_sig)
        .map_err(err)?;
    ctx.func.signature = entry_sig;
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let e = Entry {
            ctx: p[0],
            arena: p[1],
            sums: p[2],
            batch: p[3],
            step_fn: module.declare_func_in_func(step_fn, b.func),
            classifier_fn: module.declare_func_in_func(classifier_fn, b.func),
        };
        for step in &schedule.steps {
            e.step(&mut b, step);
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(frontend);
    }
    text.define(&mut module, &mut ctx, entry_id, "the schedule")?;
    module.finalize_definitions().map_err(err)?;
    let entry = module.get_finalized_function(entry_id);
    Ok(Compiled {
        _module: module,
        entry,
        clif: text.clif,
        asm: text.asm.unwrap_or_default(),
    })
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

/// The entry function's parameters and the runtime functions it calls.
struct Entry {
    ctx: Value,
    arena: Value,
    sums: Value,
    batch: Value,
    step_fn: cranelift_codegen::ir::FuncRef,
    classifier_fn: cranelift_codegen::ir::FuncRef,
}

impl Entry {
    fn addr(&self, b: &mut FunctionBuilder<'_>, loc: Loc) -> Value {
        let (base, scale, off) = match loc {
            Loc::Values(off) => (self.arena, 4, off),
            Loc::Sums(off) => (self.sums, 8, off),
        };
        if off == 0 {
            return base;
        }
        let bytes = b.ins().imul_imm_s(self.batch, (scale * off) as i64);
        b.ins().iadd(base, bytes)
    }

    /// The code of one step.
    fn step(&self, b: &mut FunctionBuilder<'_>, step: &Step) {
        match step {
            Step::Call {
                step,
                operands,
                out,
                sums,
            } => {
                let slot = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    8 * operands.len().max(1) as u32,
                    3,
                ));
                for (k, &loc) in operands.iter().enumerate() {
                    let addr = self.addr(b, loc);
                    b.ins().stack_store(types::I64, addr, slot, 8 * k as i32);
                }
                let array = b.ins().stack_addr(types::I64, slot, 0);
                let index = b.ins().iconst(types::I64, *step as i64);
                let n = b.ins().iconst(types::I64, operands.len() as i64);
                let out = self.addr(b, *out);
                let zero = b.ins().iconst(types::I64, 0);
                let sums = sums.map_or(zero, |l| self.addr(b, l));
                let args = [self.ctx, index, array, n, out, sums, self.batch];
                b.ins().call(self.step_fn, &args);
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
                let x = self.addr(b, *x);
                let features = self.addr(b, *features);
                pool_norm(b, *channels, *pixels, *eps, x, features, self.batch);
                let out = self.addr(b, *out);
                let weight = ptr_const(b, *weight);
                let bias = ptr_const(b, *bias);
                let channels = b.ins().iconst(types::I64, *channels as i64);
                let classes = b.ins().iconst(types::I64, *classes as i64);
                let args = [self.ctx, weight, bias, features, out, self.batch, channels, classes];
                b.ins().call(self.classifier_fn, &args);
            }
            Step::GrnScale {
                channels,
                gamma,
                sums,
                out,
            } => {
                let sums = self.addr(b, *sums);
                let out = self.addr(b, *out);
                grn_scale(b, *channels, *gamma, sums, out, self.batch);
            }
            Step::Add { len, a, b: rhs, out } => {
                let a = self.addr(b, *a);
                let rhs = self.addr(b, *rhs);
                let out = self.addr(b, *out);
                let total = b.ins().imul_imm_s(self.batch, *len as i64);
                add(b, a, rhs, out, total);
            }
            Step::Transpose { a, b: inner, x, out } => {
                let x = self.addr(b, *x);
                let out = self.addr(b, *out);
                transpose(b, *a, *inner, x, out, self.batch);
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
