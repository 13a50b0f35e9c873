//! Every Cranelift call of cnx: a [`Schedule`] (the JIT's view of a lowered program, built by
//! the crate root) compiled for the host into one native function.
//!
//! The entry is `extern "C" fn(ctx, arena, sums, batch, phase)`: for the steps of phase
//! `phase`, one call per step into the runtime
//! (`cnx_step(ctx, step, operands, n, out, sums, batch)`), every operand, output and sums
//! pointer computed from its slot's per-image offset, an immediate, scaled by the batch. No
//! step kernel is generated: each one measured slower than the runtime's (BENCHMARKS.md).

use cranelift_codegen::ir::{types, AbiParam, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_codegen::settings::Configurable;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Switch};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

/// Where a value lives: an offset into the value arena (f32 elements per image: the byte
/// offset is `4 * offset * batch`) or into the sums arena (f64 per image: `8 * offset * batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Values(usize),
    Sums(usize),
}

/// One step of the schedule: a runtime op, called through
/// `cnx_step(ctx, step, operands, n, out, sums, batch)`.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step's index in the program.
    pub step: usize,
    pub operands: Vec<Loc>,
    pub out: Loc,
    pub sums: Option<Loc>,
}

/// What to compile.
pub struct Schedule {
    pub steps: Vec<Step>,
    /// The steps of each phase (indices into `steps`), in order.
    pub phases: Vec<std::ops::Range<usize>>,
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

pub fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError(e.to_string())
}

/// The host's code generator, with the verifier on or off.
pub fn host_isa(verify: bool) -> Fail<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>> {
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

/// Compiles `schedule` into its entry function, in memory.
pub fn compile(schedule: &Schedule) -> Fail<Compiled> {
    let mut jit = JITBuilder::with_isa(host_isa(schedule.verify)?, default_libcall_names());
    jit.symbol(STEP_SYMBOL, cnx_runtime::schedule::cnx_step as *const u8);
    let mut module = JITModule::new(jit);
    let mut text = Listings::new(schedule.disassemble);
    let entry_id = define_schedule(&mut module, schedule, "forward", Linkage::Local, &mut text)?;
    module.finalize_definitions().map_err(err)?;
    let entry = module.get_finalized_function(entry_id);
    Ok(Compiled {
        _module: module,
        entry,
        clif: text.clif,
        asm: text.asm.unwrap_or_default(),
    })
}

/// The runtime function every step calls (`cnx_runtime::schedule::cnx_step`; exported under
/// this name by the runtime library, registered under it in the JIT).
pub const STEP_SYMBOL: &str = "cnx_step";

/// Declares and defines the schedule's entry function `name` in `module` (the JIT's or an
/// object's): `fn(ctx, arena, sums, batch, phase)`, a switch on `phase` to one runtime call
/// per step of that phase (an unknown phase runs nothing).
pub fn define_schedule<M: Module>(
    module: &mut M,
    schedule: &Schedule,
    name: &str,
    linkage: Linkage,
    text: &mut Listings,
) -> Fail<FuncId> {
    let frontend = module.target_config();
    if frontend.pointer_type() != types::I64 {
        return Err(CodegenError(
            "cnx's code generator needs a 64-bit target".into(),
        ));
    }
    let step_sig = signature(module, 7, Some(types::I32));
    let entry_sig = signature(module, 5, None);
    let step_fn = module
        .declare_function(STEP_SYMBOL, Linkage::Import, &step_sig)
        .map_err(err)?;
    define_function(
        module,
        name,
        linkage,
        entry_sig,
        text,
        "the schedule",
        |module, b, p| {
            let e = Entry {
                ctx: p[0],
                arena: p[1],
                sums: p[2],
                batch: p[3],
                step_fn: module.declare_func_in_func(step_fn, b.func),
                operands: b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    8 * 3,
                    3,
                )),
                exit: b.create_block(),
            };
            let mut switch = Switch::new();
            let blocks: Vec<_> = schedule.phases.iter().map(|_| b.create_block()).collect();
            for (k, &block) in blocks.iter().enumerate() {
                switch.set_entry(k as u128, block);
            }
            switch.emit(b, p[4], e.exit);
            for (phase, &block) in schedule.phases.iter().zip(&blocks) {
                b.switch_to_block(block);
                for step in &schedule.steps[phase.clone()] {
                    e.step(b, step);
                }
                b.ins().jump(e.exit, &[]);
            }
            b.switch_to_block(e.exit);
            b.ins().return_(&[]);
        },
    )
}

/// Declares `name` in `module` with `sig` and defines it: `body` fills the function from its
/// entry block's parameters (the block is created, entered and, with every other, sealed
/// here). Its listings go to `text` under `heading`.
pub fn define_function<M: Module>(
    module: &mut M,
    name: &str,
    linkage: Linkage,
    sig: cranelift_codegen::ir::Signature,
    text: &mut Listings,
    heading: &str,
    body: impl FnOnce(&mut M, &mut FunctionBuilder<'_>, &[Value]),
) -> Fail<FuncId> {
    let id = module.declare_function(name, linkage, &sig).map_err(err)?;
    let frontend = module.target_config();
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let params = b.block_params(block).to_vec();
        body(module, &mut b, &params);
        b.seal_all_blocks();
        b.finalize(frontend);
    }
    text.define(module, &mut ctx, id, heading)?;
    Ok(id)
}

/// A C-ABI signature of `params` 64-bit integers (pointers, sizes) returning `ret`.
pub fn signature<M: Module>(
    module: &M,
    params: usize,
    ret: Option<types::Type>,
) -> cranelift_codegen::ir::Signature {
    let mut s = module.make_signature();
    s.params
        .extend((0..params).map(|_| AbiParam::new(types::I64)));
    s.returns.extend(ret.map(AbiParam::new));
    s
}

/// The text listings of the compiled functions: IR always, machine code when asked for.
pub struct Listings {
    pub clif: String,
    pub asm: Option<String>,
}

impl Listings {
    pub fn new(disassemble: bool) -> Listings {
        Listings {
            clif: String::new(),
            asm: disassemble.then(String::new),
        }
    }

    /// Compiles the function built in `ctx` as `id`, appending its listings under `heading`.
    pub fn define<M: Module>(
        &mut self,
        module: &mut M,
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

/// The entry function's parameters and the runtime function it calls.
struct Entry {
    ctx: Value,
    arena: Value,
    sums: Value,
    batch: Value,
    step_fn: cranelift_codegen::ir::FuncRef,
    /// Room for a step's operand pointers (at most three), reused by every step.
    operands: cranelift_codegen::ir::StackSlot,
    /// The block that returns.
    exit: cranelift_codegen::ir::Block,
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

    /// One step: its operand pointers in the stack array, then the runtime call; a failed
    /// step (the shim returns non-zero) ends the schedule at once.
    fn step(&self, b: &mut FunctionBuilder<'_>, step: &Step) {
        for (k, &loc) in step.operands.iter().enumerate() {
            let addr = self.addr(b, loc);
            b.ins()
                .stack_store(types::I64, addr, self.operands, 8 * k as i32);
        }
        let array = b.ins().stack_addr(types::I64, self.operands, 0);
        let index = b.ins().iconst(types::I64, step.step as i64);
        let n = b.ins().iconst(types::I64, step.operands.len() as i64);
        let out = self.addr(b, step.out);
        let zero = b.ins().iconst(types::I64, 0);
        let sums = step.sums.map_or(zero, |l| self.addr(b, l));
        let args = [self.ctx, index, array, n, out, sums, self.batch];
        let call = b.ins().call(self.step_fn, &args);
        let failed = b.inst_results(call)[0];
        let next = b.create_block();
        b.ins().brif(failed, self.exit, &[], next, &[]);
        b.switch_to_block(next);
    }
}
