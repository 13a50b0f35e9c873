//! `cnx-jit`: the Cranelift backend. A lowered [`Program`] compiled at run time into one native
//! function per (model, input size, outputs).
//!
//! The schedule is static: the program's workspace slots sit at fixed offsets (per image) in
//! the runtime's [`Workspace`] arenas, and the generated entry
//! `extern "C" fn(ctx, arena, sums, batch)` runs the steps in order, each operand's and
//! output's address an immediate offset scaled by the batch. Every step calls the runtime's
//! [`execute`] through the registered symbol `cnx_jit_step`, on the interpreter's kernels and
//! prepared weights: a step kernel is generated only where it measures at least as fast as the
//! runtime's, and none does today (the generated depthwise conv, GELU, permute, GRN scale and
//! head pool/norm were each slower on the same machine; BENCHMARKS.md has the measurements).
//! The same schedule is what an ahead-of-time object would hold.

mod clif;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clif::Loc;
use cnx_compiler::backend::interp::batch_shape;
use cnx_compiler::{LoadedModel, RunError};
use cnx_runtime::compiled::Workspace;
use cnx_runtime::program::{
    check_finite, execute, NonFinite, Program, Step, StepBuffers, SumsAccess, SumsBuffer,
};
use cnx_runtime::{pool, Tensor};

pub use clif::CodegenError;

/// Why a model could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error(transparent)]
    Compiler(#[from] cnx_compiler::Error),
    #[error("this is a bug in cnx: {0}")]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    Program(#[from] cnx_runtime::program::ProgramError),
}

impl JitError {
    /// Bad input (exit code 2) rather than a bug (1).
    pub fn is_user_error(&self) -> bool {
        matches!(self, JitError::Compiler(e) if e.is_user_error())
    }
}

/// A model compiled by the JIT, ready to run any batch size.
pub struct JitModel {
    /// The compiled code (declared first: dropped before the context it points into).
    code: clif::Compiled,
    /// What the generated code's runtime calls read: the program and the model's weights.
    /// Boxed so its address, passed to the code as `ctx`, is stable; never mutated after
    /// compiling; owned here, so it lives as long as the code that points to it.
    context: Box<Context>,
    /// The workspace the code runs on, laid out as the code was compiled for.
    workspace: Mutex<Workspace>,
    /// Steps the compiled schedule hands to the runtime (every step today: see the crate
    /// docs).
    pub runtime_steps: usize,
    /// Time to lower and compile.
    pub compile_time: Duration,
    non_finite: NonFinite,
}

/// What the runtime shims need, owned by the [`JitModel`] whose code calls them.
struct Context {
    model: LoadedModel,
    program: Program,
    /// The first error a shim met (reported after the entry returns).
    error: Mutex<Option<RunError>>,
    /// Nanoseconds spent in runtime calls since the last [`JitModel::take_runtime_time`].
    runtime_ns: AtomicU64,
}

/// Options for [`JitModel::compile`].
#[derive(Debug, Clone, Copy)]
pub struct JitOptions {
    /// Run Cranelift's verifier on the generated functions (always on in tests).
    pub verify: bool,
    /// Keep the machine code of every function as text (`cnx compile --emit asm`).
    pub disassemble: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            verify: cfg!(debug_assertions),
            disassemble: false,
        }
    }
}

impl JitModel {
    /// Compiles `model`'s graph for the outputs `wanted` (e.g. `["logits"]`).
    pub fn compile(
        model: LoadedModel,
        wanted: &[&str],
        options: JitOptions,
    ) -> Result<JitModel, JitError> {
        let start = Instant::now();
        let program = model.program(wanted)?;
        // The code trusts every offset and length it is compiled with: checked once, here.
        program.validate()?;
        let context = Box::new(Context {
            model,
            program,
            error: Mutex::new(None),
            runtime_ns: AtomicU64::new(0),
        });
        let program = &context.program;
        let workspace = program.workspace();
        let steps = schedule(program, &workspace);
        let runtime_steps = steps.len();
        let code = clif::compile(&clif::Schedule {
            steps,
            step_shim: cnx_jit_step as *const u8,
            verify: options.verify,
            disassemble: options.disassemble,
        })?;
        Ok(JitModel {
            context,
            code,
            workspace: Mutex::new(workspace),
            runtime_steps,
            compile_time: start.elapsed(),
            non_finite: NonFinite::Refuse,
        })
    }

    /// What runs do with NaN or infinite pixel values (default: refuse them).
    pub fn with_non_finite(mut self, policy: NonFinite) -> Self {
        self.non_finite = policy;
        self
    }

    /// The compiled model's graph and weights.
    pub fn model(&self) -> &LoadedModel {
        &self.context.model
    }

    /// The program the code was compiled from.
    pub fn program(&self) -> &Program {
        &self.context.program
    }

    /// Time spent in the runtime's ops since the last call; the rest of a run is the generated
    /// schedule itself.
    pub fn take_runtime_time(&self) -> Duration {
        Duration::from_nanos(self.context.runtime_ns.swap(0, Ordering::Relaxed))
    }

    /// The generated Cranelift IR.
    pub fn clif(&self) -> &str {
        &self.code.clif
    }

    /// The generated machine code, as Cranelift's listing (empty unless compiled with
    /// [`JitOptions::disassemble`]).
    pub fn asm(&self) -> &str {
        &self.code.asm
    }

    /// Runs the compiled code on `pixel_values` (NCHW) with `threads` threads; returns the
    /// outputs compiled for, by name.
    pub fn run(
        &self,
        pixel_values: &Tensor,
        threads: usize,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        let program = &self.context.program;
        let batch = program.check_input(pixel_values.shape())?;
        check_finite(pixel_values.data(), program.chw(), self.non_finite)?;
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        ws.for_batch(batch);
        ws.set(program.input_value.slot, pixel_values.data());
        let (arena, sums) = ws.arenas_mut();
        let (arena, sums) = (arena.as_mut_ptr() as usize, sums.as_mut_ptr() as usize);
        let entry = self.code.entry as usize;
        let ctx = &*self.context as *const Context as usize;
        pool::install(threads, || {
            // SAFETY: `entry` is the compiled schedule of this program; the arenas are the
            // workspace whose offsets the code was compiled with, sized for `batch` just above, and the input
            // slot holds `batch` images of the program's input type (checked above): every
            // offset and bound stays inside them. `ctx` is the boxed context this struct owns.
            let f: extern "C" fn(usize, usize, usize, usize) =
                unsafe { std::mem::transmute(entry) };
            f(ctx, arena, sums, batch)
        });
        if let Some(e) = self
            .context
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        let mut out = HashMap::new();
        for o in &program.outputs {
            // The generated code wrote it: its length is the value's, for this batch.
            ws.set_len(o.value.slot, batch * o.value.len);
            let data = ws.get(o.value.slot).to_vec();
            let t = Tensor::from_vec(&batch_shape(batch, &o.ty), data).map_err(|_| {
                RunError::OutputSize {
                    name: o.name.clone(),
                }
            })?;
            out.insert(o.name.clone(), t);
        }
        Ok(out)
    }
}

/// The JIT's schedule of `program`: one runtime call per step, its slots as offsets (per
/// image) into `ws`'s arenas.
fn schedule(program: &Program, ws: &Workspace) -> Vec<clif::Step> {
    let values = |slot: usize| Loc::Values(ws.offsets()[slot]);
    program
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| clif::Step {
            step: i,
            operands: step.operands().iter().map(|v| values(v.slot)).collect(),
            out: values(step.out.slot),
            sums: match step.sums() {
                SumsAccess::None => None,
                SumsAccess::Read { slot, .. } | SumsAccess::Write { slot, .. } => {
                    Some(Loc::Sums(ws.sums_offsets()[slot]))
                }
            },
        })
        .collect()
}

/// One step of the program, run by the runtime's [`execute`] on the buffers the generated
/// code passes: `operands` points to `n` operand pointers, `sums` to the step's sums (or null).
extern "C" fn cnx_jit_step(
    ctx: *const Context,
    index: u64,
    operands: *const *const f32,
    n: u64,
    out: *mut f32,
    sums: *mut f64,
    batch: u64,
) -> i32 {
    // SAFETY: `ctx` is the `Context` of the `JitModel` whose code calls this; it owns the
    // context and outlives the call.
    let ctx = unsafe { &*ctx };
    let _timer = AddElapsed(&ctx.runtime_ns, Instant::now());
    let step = &ctx.program.steps[index as usize];
    let batch = batch as usize;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the generated code passes, for this step, pointers to its operands' and
        // output's workspace slots (laid out for `batch` images, each at least the value's
        // length) and, where the step has sums, to its sums slot (`batch x len` f64): the
        // slices below stay inside them. The output slot is never an operand's (memory plan).
        let mut slices: [&[f32]; 3] = [&[]; 3];
        for (k, v) in step.operands().iter().enumerate().take(n as usize) {
            slices[k] = unsafe { std::slice::from_raw_parts(*operands.add(k), batch * v.len) };
        }
        let y = unsafe { std::slice::from_raw_parts_mut(out, batch * step.out.len) };
        let sums = match step.sums() {
            SumsAccess::None => SumsBuffer::None,
            SumsAccess::Read { len, .. } => {
                SumsBuffer::Read(unsafe { std::slice::from_raw_parts(sums, batch * len) })
            }
            SumsAccess::Write { len, .. } => {
                SumsBuffer::Write(unsafe { std::slice::from_raw_parts_mut(sums, batch * len) })
            }
        };
        let buffers = StepBuffers {
            operands: slices,
            out: y,
            sums,
        };
        execute(step, &ctx.model.weights, batch, buffers)
    }));
    if result.is_ok() {
        return 0;
    }
    record(ctx, step, "panicked");
    1
}

/// Records the first failure of a run.
fn record(ctx: &Context, step: &Step, reason: &str) {
    let mut error = ctx.error.lock().unwrap_or_else(|e| e.into_inner());
    error.get_or_insert_with(|| RunError::Step {
        step: step.name.clone(),
        reason: reason.into(),
    });
}

/// Adds the time since `.1` to the counter `.0` when dropped.
struct AddElapsed<'a>(&'a AtomicU64, Instant);

impl Drop for AddElapsed<'_> {
    fn drop(&mut self) {
        self.0
            .fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
