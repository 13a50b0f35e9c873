//! Generated schedules, run: what the JIT's in-memory code and an ahead-of-time object's code
//! call, and how they are called.
//!
//! Cranelift compiles a [`Program`] into one function, [`Entry`], which runs the steps of one
//! phase: for every step of it, in order, the addresses of its operands, output and sums (each
//! a slot offset of the workspace, an immediate scaled by the batch) and one call of
//! [`cnx_step`], which runs the step on the runtime's kernels through [`execute`]. The JIT
//! registers [`cnx_step`] by address; an object imports it by name from the runtime library
//! (`libconvnextv2`). Both run the entry through [`run`], which calls it phase by phase
//! through [`crate::phases::run`] (on the whole workspace, or image by image on one-image
//! lanes): one code generator, one calling convention, two outputs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::compiled::{Weights, Workspace};
use crate::executor::execute;
use crate::pool;
use crate::program::{Program, StepBuffers, SumsAccess, SumsBuffer};

/// A compiled schedule: `entry(ctx, value_arena, sums_arena, batch, phase)` runs the steps of
/// phase `phase` (an index into the program's phases; any other runs nothing), `ctx` a
/// [`StepContext`] passed back to every [`cnx_step`] call.
pub type Entry =
    unsafe extern "C" fn(ctx: usize, arena: usize, sums: usize, batch: usize, phase: usize);

/// What [`cnx_step`] needs to run a step: the program the code was compiled from and the
/// weights it indexes. Lives for one [`run`].
pub struct StepContext<'a> {
    program: &'a Program,
    weights: &'a Weights,
    /// The first step that failed (the code stops at it).
    failure: Mutex<Option<StepFailure>>,
    runtime_ns: AtomicU64,
}

/// A step of generated code that failed: a bug in cnx (a kernel panicked, or the code called
/// with a step index the program does not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this is a bug in cnx: step `{step}` {reason}")]
pub struct StepFailure {
    pub step: String,
    pub reason: String,
}

/// Runs the compiled schedule `entry` of `program` on `ws` (sized for `batch` images, the
/// input already in its slot) with `threads` threads. Returns the time spent in the runtime's
/// steps (the rest is the schedule itself).
///
/// # Safety
/// `entry` must be code compiled from `program` (validated: [`Program::validate`]) for the
/// workspace layout of [`Program::workspace`], which `ws` must have.
pub unsafe fn run(
    entry: Entry,
    program: &Program,
    weights: &Weights,
    ws: &mut Workspace,
    batch: usize,
    threads: usize,
) -> Result<Duration, StepFailure> {
    let ctx = StepContext {
        program,
        weights,
        failure: Mutex::new(None),
        runtime_ns: AtomicU64::new(0),
    };
    debug_assert_eq!(ws.batch(), batch, "the workspace is sized for its batch");
    let ctx_addr = &ctx as *const StepContext<'_> as usize;
    let ctx_ref = &ctx;
    pool::install(threads, || {
        crate::phases::run(&program.phases, ws, &|ws, batch, phase| {
            let (arena, sums) = ws.arenas_mut();
            let (arena, sums) = (arena.as_mut_ptr() as usize, sums.as_mut_ptr() as usize);
            // SAFETY: the caller's contract: `entry` is `program`'s schedule for this
            // workspace layout, which the whole workspace and its lanes share, each sized for
            // the `batch` passed here; every address it computes stays inside their arenas.
            // `ctx` outlives the call.
            unsafe { entry(ctx_addr, arena, sums, batch, phase) };
            ctx_ref
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        })
    });
    match ctx.failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(failure) => Err(failure),
        None => Ok(Duration::from_nanos(ctx.runtime_ns.into_inner())),
    }
}

/// One step of a compiled schedule: step `index` of the context's program on the buffers the
/// code passes (`operands` points to `n` operand pointers; `sums` is the step's sums, or null).
/// Returns 0, or 1 when the step failed (recorded in the context; the code then stops).
///
/// Exported unmangled: an object's schedule imports it by this name from the runtime library
/// (the JIT registers its address).
///
/// # Safety
/// `ctx` is the [`StepContext`] [`run`] passed to the entry; the pointers are the step's
/// workspace slots for `batch` images, as the code compiled from the program computes them.
#[no_mangle]
pub unsafe extern "C" fn cnx_step(
    ctx: usize,
    index: u64,
    operands: *const *const f32,
    n: u64,
    out: *mut f32,
    sums: *mut f64,
    batch: u64,
) -> i32 {
    // SAFETY: `ctx` is the context `run` passed to the entry (this function's contract); it
    // outlives the entry's call.
    let ctx = unsafe { &*(ctx as *const StepContext<'_>) };
    let start = Instant::now();
    let Some(step) = ctx.program.steps.get(index as usize) else {
        fail(ctx, format!("#{index}"), "is not in the program");
        return 1;
    };
    let batch = batch as usize;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the code compiled from this (validated) program passes, for this step,
        // pointers to its operands' and output's workspace slots (laid out for `batch` images,
        // each at least the value's length) and, where the step has sums, to its sums slot
        // (`batch x len` f64): the slices below stay inside them. The output slot is never an
        // operand's (the memory plan; `Program::validate` checks it).
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
        execute(step, ctx.weights, batch, buffers)
    }));
    ctx.runtime_ns
        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if result.is_ok() {
        return 0;
    }
    fail(ctx, step.name.to_string(), "panicked");
    1
}

/// Records the first failure of a run.
fn fail(ctx: &StepContext<'_>, step: String, reason: &str) {
    let mut failure = ctx.failure.lock().unwrap_or_else(|e| e.into_inner());
    failure.get_or_insert_with(|| StepFailure {
        step,
        reason: reason.into(),
    });
}
