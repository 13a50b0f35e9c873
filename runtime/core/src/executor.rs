//! The one step dispatcher: runs a [`Program`]'s steps on the runtime's ops.
//!
//! Every backend runs its steps here. The interpreter loops over a lowered program's steps
//! with [`run_step`] (timing each one when profiling); the `convnextv2!` macro's code holds
//! its program as statics and calls [`run_phases`]; the JIT's and an ahead-of-time object's
//! code compute each step's buffers and call [`crate::schedule::cnx_step`], which calls
//! [`execute`]. Nothing else matches on a step's op to run it.

use crate::compiled::{Weights, Workspace};
use crate::ops::{self, ConvParams, GrnSource};
use crate::program::{AffineParams, Phase, Step, StepBuffers, StepOp, SumsBuffer};

/// Runs `step` on `buffers` for `batch` images: the one function that binds a step to the
/// runtime's ops (operand order, parameters, sums). `#[inline]`: other crates (the JIT's
/// step shim, the macro's code through [`run_phases`]) may inline it.
#[inline]
pub fn execute(step: &Step, weights: &Weights, batch: usize, buffers: StepBuffers<'_>) {
    let StepBuffers {
        operands,
        out: y,
        sums,
    } = buffers;
    let x = operands[0];
    let affine = |a: Option<AffineParams>| a.map(|a| weights.affine(a.gamma, a.beta));
    match &step.op {
        StepOp::Conv2d {
            conv,
            input,
            weight,
            bias,
            norm,
            ..
        } => {
            let p = ConvParams {
                norm: affine(*norm),
                ..weights.conv(*weight, *bias, None)
            };
            ops::conv2d(conv, input, &step.out_ty, batch, p, x, y)
        }
        StepOp::LayerNorm {
            norm, affine: a, ..
        } => ops::layer_norm(norm, &step.out_ty, batch, affine(*a), x, y),
        StepOp::Linear {
            linear,
            scale,
            residual,
            weight,
            bias,
            ..
        } => {
            let scale = scale.map(|_| operands[1]);
            let residual = residual.map(|_| operands[1 + usize::from(scale.is_some())]);
            let sums = match sums {
                SumsBuffer::Write(s) => Some(s),
                _ => None,
            };
            let p = weights.linear(*weight, *bias);
            let pixels = step.out_ty.pixels();
            ops::linear(linear, pixels, batch, p, x, scale, residual, y, sums)
        }
        StepOp::Activation { activation, .. } => ops::activation(*activation, x, y),
        StepOp::Grn {
            channels,
            gamma,
            beta,
            ..
        } => ops::grn(
            *channels,
            &step.out_ty,
            batch,
            weights.get(*gamma),
            weights.get(*beta),
            x,
            y,
        ),
        StepOp::GrnScale {
            channels,
            input,
            gamma,
            ..
        } => {
            let (source, read) = match sums {
                SumsBuffer::Read(s) => (GrnSource::ProducerSums, s),
                _ => (GrnSource::Values, &[][..]),
            };
            let g = weights.get(*gamma);
            ops::grn_scale(*channels, source, input, batch, g, x, read, y)
        }
        StepOp::Add { .. } => ops::add(x, operands[1], y),
        StepOp::GlobalAvgPool { input, .. } => ops::global_avg_pool(input, batch, x, y),
        StepOp::PoolNormLinear {
            channels,
            classes,
            eps,
            input,
            weight,
            bias,
            ..
        } => {
            let (w, b) = (weights.get(*weight), weights.get(*bias));
            ops::pool_norm_linear(*channels, *classes, *eps, input, batch, w, b, x, y)
        }
        StepOp::Permute { permute, .. } => ops::permute(*permute, &step.out_ty, batch, x, y),
    }
}

/// Runs `step` with its buffers in `ws` (the loop body of the interpreter and of
/// [`run_phases`]).
#[inline]
pub fn run_step(step: &Step, weights: &Weights, ws: &mut Workspace, batch: usize) {
    ws.run_step(step, batch, |buffers| {
        execute(step, weights, batch, buffers)
    })
}

/// Runs a program held as data: `steps` phase by phase (op- or image-parallel, as
/// [`crate::phases::run`] decides from the batch and the current pool's threads) on `ws`,
/// sized for its batch with the input in its slot. The forward pass of the `convnextv2!`
/// macro's code, whose steps and phases are statics.
pub fn run_phases(steps: &[Step], phases: &[Phase], weights: &Weights, ws: &mut Workspace) {
    crate::phases::run(phases, ws, &|ws, batch, k| {
        for step in &steps[phases[k].steps.clone()] {
            run_step(step, weights, ws, batch);
        }
        true
    });
}
