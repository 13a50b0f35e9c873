//! `cnx-jit`: the Cranelift backend. A lowered [`Program`] compiled at run time into one native
//! function per (model, input size, outputs).
//!
//! The schedule is static: the program's workspace slots sit at fixed offsets (per image) in
//! the runtime's [`Workspace`] arenas, and the generated entry
//! `extern "C" fn(ctx, arena, sums, batch)` runs the steps in order, each operand's and
//! output's address an immediate offset scaled by the batch. Every step calls the runtime's
//! [`execute`] through the runtime's `cnx_step` (registered by address), on the interpreter's kernels and
//! prepared weights: a step kernel is generated only where it measures at least as fast as the
//! runtime's, and none does today (the generated depthwise conv, GELU, permute, GRN scale and
//! head pool/norm were each slower on the same machine; BENCHMARKS.md has the measurements).
//! The same schedule is what an ahead-of-time object holds ([`aot`]): one code generator, the
//! code in memory here, in a relocatable object there, both run by [`cnx_runtime::schedule`].

pub mod aot;
mod clif;
pub mod header;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clif::Loc;
use cnx_compiler::backend::interp::batch_shape;
use cnx_compiler::{LoadedModel, RunError};
use cnx_runtime::compiled::Workspace;
use cnx_runtime::program::{check_finite, NonFinite, Program, SumsAccess};
use cnx_runtime::schedule;
use cnx_runtime::Tensor;

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
    code: clif::Compiled,
    /// Boxed: a JIT model is moved about as a value (an engine variant) and a loaded model is large.
    model: Box<LoadedModel>,
    /// The program the code was compiled from (its step indices and offsets).
    program: Program,
    /// Nanoseconds spent in runtime calls since the last [`JitModel::take_runtime_time`].
    runtime_ns: AtomicU64,
    /// The workspace the code runs on, laid out as the code was compiled for.
    workspace: Mutex<Workspace>,
    /// Steps the compiled schedule hands to the runtime (every step today: see the crate
    /// docs).
    pub runtime_steps: usize,
    /// Time to lower and compile.
    pub compile_time: Duration,
    non_finite: NonFinite,
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
        let workspace = program.workspace();
        let steps = schedule_of(&program, &workspace);
        let runtime_steps = steps.len();
        let code = clif::compile(&clif::Schedule {
            steps,
            phases: program.phases.iter().map(|p| p.steps.clone()).collect(),
            verify: options.verify,
            disassemble: options.disassemble,
        })?;
        Ok(JitModel {
            model: Box::new(model),
            program,
            runtime_ns: AtomicU64::new(0),
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
        &self.model
    }

    /// The program the code was compiled from.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Time spent in the runtime's ops since the last call; the rest of a run is the generated
    /// schedule itself.
    pub fn take_runtime_time(&self) -> Duration {
        Duration::from_nanos(self.runtime_ns.swap(0, Ordering::Relaxed))
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
        let program = &self.program;
        let batch = program.check_input(pixel_values.shape())?;
        check_finite(pixel_values.data(), program.chw(), self.non_finite)?;
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        ws.for_batch(batch);
        ws.set(program.input_value.slot, pixel_values.data());
        // SAFETY: `code.entry` is the schedule compiled from this (validated) program for the
        // layout of `program.workspace()`, which `ws` has (made from it in `compile`).
        let spent = unsafe {
            let entry: schedule::Entry = std::mem::transmute(self.code.entry);
            schedule::run(entry, program, &self.model.weights, &mut ws, batch, threads)
        }
        .map_err(|f| RunError::Step {
            step: f.step,
            reason: f.reason,
        })?;
        self.runtime_ns
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
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

/// The schedule of `program` (the JIT's and an object's): one runtime call per step, its slots
/// as offsets (per image) into `ws`'s arenas.
pub(crate) fn schedule_of(program: &Program, ws: &Workspace) -> Vec<clif::Step> {
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
