//! The interpreter: `for step in program: run_step`, on the runtime's workspace, ops and
//! kernels (the same functions the generated code calls).
//!
//! Ops whose weights were prepared at load run the optimised kernels; the others, and every op
//! of a model loaded with reference kernels, run the plain loops (the oracle every backend and
//! pass is tested against). Deterministic: fixed summation orders, whatever the thread count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cnx_runtime::compiled::{Weights, Workspace};
use cnx_runtime::executor::run_step;
use cnx_runtime::program::{check_finite, NonFinite, Program};
use cnx_runtime::{phases, pool, Tensor};

use crate::error::RunError;
use crate::LoadedModel;

/// Runs `model` on `pixel_values` (NCHW, any batch) and returns the requested outputs by name.
pub fn run(
    model: &LoadedModel,
    pixel_values: &Tensor,
    wanted: &[&str],
) -> Result<BTreeMap<String, Tensor>, RunError> {
    run_threaded(model, pixel_values, wanted, 1)
}

/// [`run`] on the runtime's pool of `threads` threads. Each element is computed exactly as on
/// one thread, so results do not depend on `threads`.
pub fn run_threaded(
    model: &LoadedModel,
    pixel_values: &Tensor,
    wanted: &[&str],
    threads: usize,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    let program = crate::lower::lower_outputs(&model.graph, wanted)?;
    let mut out = run_program(&program, &model.weights, pixel_values, threads, None)?;
    // Several names may share a value; the caller gets exactly the names it asked for.
    Ok(wanted
        .iter()
        .filter_map(|n| out.remove(*n).map(|t| (n.to_string(), t)))
        .collect())
}

/// A model's program for some outputs, lowered once, with a workspace kept between runs (a
/// run at a batch size already seen allocates no activation memory).
pub struct Interpreter {
    program: Program,
    workspace: Mutex<Workspace>,
    non_finite: NonFinite,
}

impl Interpreter {
    /// The program computing `model`'s outputs `wanted`.
    pub fn new(model: &LoadedModel, wanted: &[&str]) -> Result<Interpreter, RunError> {
        let program = crate::lower::lower_outputs(&model.graph, wanted)?;
        program.validate()?;
        let workspace = Mutex::new(program.workspace());
        Ok(Interpreter {
            program,
            workspace,
            non_finite: NonFinite::Refuse,
        })
    }

    /// What runs do with NaN or infinite pixel values (default: refuse them).
    pub fn with_non_finite(mut self, policy: NonFinite) -> Self {
        self.non_finite = policy;
        self
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Runs the program with `model`'s weights (the model it was lowered from) on `threads`
    /// threads; every output by name.
    pub fn run(
        &self,
        model: &LoadedModel,
        pixel_values: &Tensor,
        threads: usize,
    ) -> Result<BTreeMap<String, Tensor>, RunError> {
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let input = (pixel_values, self.non_finite);
        run_on(&self.program, &model.weights, &mut ws, input, threads, None)
    }
}

/// Runs `program` with `weights` (the table it was lowered against) on `threads` threads;
/// returns every program output by name. With `profile`, each step's time, in order: its wall
/// time, or in an image-parallel phase its time summed over the images divided by the threads.
/// NaN or infinite pixel values are refused.
pub fn run_program(
    program: &Program,
    weights: &Weights,
    pixel_values: &Tensor,
    threads: usize,
    profile: Option<&mut Vec<Duration>>,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    let mut ws = program.workspace();
    let input = (pixel_values, NonFinite::Refuse);
    run_on(program, weights, &mut ws, input, threads, profile)
}

/// [`run_program`] on a given workspace (laid out for `program`), with a policy for
/// non-finite pixel values.
fn run_on(
    program: &Program,
    weights: &Weights,
    ws: &mut Workspace,
    (pixel_values, non_finite): (&Tensor, NonFinite),
    threads: usize,
    profile: Option<&mut Vec<Duration>>,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    if weights.len() != program.weights.len() {
        return Err(RunError::WeightTable {
            program: program.weights.len(),
            loaded: weights.len(),
        });
    }
    let batch = program.check_input(pixel_values.shape())?;
    check_finite(pixel_values.data(), program.chw(), non_finite)?;
    ws.for_batch(batch);
    ws.set(program.input_value.slot, pixel_values.data());
    // With a profile: each step's time summed over the images and threads that ran it, in
    // nanoseconds (an image-parallel phase's steps run on every thread at once).
    let spent: Vec<AtomicU64> = match profile {
        Some(_) => program.steps.iter().map(|_| AtomicU64::new(0)).collect(),
        None => Vec::new(),
    };
    let mut image_parallel = vec![false; spent.len()];
    pool::install(threads, || {
        let threads = pool::threads();
        for phase in &program.phases {
            if phases::image_parallel(phase, batch, threads) {
                image_parallel
                    .get_mut(phase.steps.clone())
                    .into_iter()
                    .flatten()
                    .for_each(|f| *f = true);
            }
        }
        phases::run(&program.phases, ws, &|ws, batch, k| {
            let range = program.phases[k].steps.clone();
            for (i, step) in program.steps[range.clone()].iter().enumerate() {
                let start = Instant::now();
                run_step(step, weights, ws, batch);
                if let Some(t) = spent.get(range.start + i) {
                    t.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
            true
        });
        if let Some(p) = profile {
            // An image-parallel step's share of the wall time: its time over the threads.
            p.extend(spent.iter().zip(&image_parallel).map(|(t, &ip)| {
                let ns = t.load(Ordering::Relaxed) / if ip { threads as u64 } else { 1 };
                Duration::from_nanos(ns)
            }));
        }
    });
    program
        .outputs
        .iter()
        .map(|o| {
            let shape: Vec<usize> = std::iter::once(batch).chain(o.ty.dims()).collect();
            let data = ws.get(o.value.slot).to_vec();
            let t = Tensor::from_vec(&shape, data).map_err(|_| RunError::OutputSize {
                name: o.name.clone(),
            })?;
            Ok((o.name.clone(), t))
        })
        .collect()
}

/// Shape of a batch of values of type `ty`.
pub fn batch_shape(batch: usize, ty: &crate::ir::ValueType) -> Vec<usize> {
    std::iter::once(batch).chain(ty.dims()).collect()
}
