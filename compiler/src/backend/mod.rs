//! Backends over the optimised graph: [`interp`] runs it op by op; [`jit`] compiles it with
//! Cranelift at run time; [`rust`] emits it as Rust for the `convnextv2!` macro.

pub mod interp;
pub mod jit;
pub mod rust;

use cnx_runtime::Tensor;

use crate::ir::outputs;
use crate::{Error, LoadedModel};

/// What runs the forward passes: the interpreter, or the JIT-compiled graph.
pub enum Engine {
    Interp(LoadedModel),
    Jit(jit::JitModel),
}

impl Engine {
    /// The model (config, graph, weights).
    pub fn model(&self) -> &LoadedModel {
        match self {
            Engine::Interp(m) => m,
            Engine::Jit(j) => j.model(),
        }
    }

    /// Logits of a batch of pixel values.
    pub fn logits(&self, x: &Tensor, threads: usize) -> Result<Tensor, Error> {
        let mut out = match self {
            Engine::Interp(m) => interp::run_threaded(&m.graph, m, x, &[outputs::LOGITS], threads)?
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
            Engine::Jit(j) => j.run(x, threads)?,
        };
        out.remove(outputs::LOGITS)
            .ok_or_else(|| Error::Usage("the model has no logits".into()))
    }
}
