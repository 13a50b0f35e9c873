//! What runs the forward passes of a command: the interpreter, or the JIT-compiled program.

use cnx_compiler::backend::interp::Interpreter;
use cnx_compiler::ir::outputs;
use cnx_compiler::LoadedModel;
use cnx_jit::{JitModel, JitOptions};
use cnx_runtime::Tensor;

use crate::Error;

/// Which engine runs the graph (the `--backend` flag, the Python package's `backend=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Backend {
    /// The interpreter over the runtime's ops and kernels.
    Interp,
    /// The program compiled by Cranelift at run time (its schedule; every step through the
    /// runtime's kernels).
    Jit,
}

impl Backend {
    /// Every backend by name: the one table the command line and the Python package read.
    pub const NAMES: [(Backend, &'static str); 2] =
        [(Backend::Interp, "interp"), (Backend::Jit, "jit")];

    pub fn name(self) -> &'static str {
        cnx_runtime::names::name_of(&Self::NAMES, &self)
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        cnx_runtime::names::value_of(&Self::NAMES, name)
    }

    /// `interp or jit`, for messages.
    pub fn names() -> String {
        cnx_runtime::names::listed(&Self::NAMES)
    }
}

/// A loaded model on its engine.
pub enum Engine {
    /// The model, and its program for the outputs asked for (lowered once).
    Interp(LoadedModel, Interpreter),
    Jit(JitModel),
}

impl Engine {
    /// `model` on `backend`, computing the outputs `wanted` (the JIT compiles for them).
    pub fn new(model: LoadedModel, backend: Backend, wanted: &[&str]) -> Result<Engine, Error> {
        Ok(match backend {
            Backend::Interp => {
                let interpreter = Interpreter::new(&model, wanted)?;
                Engine::Interp(model, interpreter)
            }
            Backend::Jit => Engine::Jit(JitModel::compile(model, wanted, JitOptions::default())?),
        })
    }

    /// What runs do with NaN or infinite pixel values (default: refuse them).
    pub fn with_non_finite(self, policy: cnx_runtime::program::NonFinite) -> Engine {
        match self {
            Engine::Interp(m, i) => Engine::Interp(m, i.with_non_finite(policy)),
            Engine::Jit(j) => Engine::Jit(j.with_non_finite(policy)),
        }
    }

    /// The model (config, graph, weights).
    pub fn model(&self) -> &LoadedModel {
        match self {
            Engine::Interp(m, _) => m,
            Engine::Jit(j) => j.model(),
        }
    }

    /// The outputs the engine was made for, of a batch of pixel values, by name.
    pub fn run(
        &self,
        x: &Tensor,
        threads: usize,
    ) -> Result<std::collections::HashMap<String, Tensor>, Error> {
        Ok(match self {
            Engine::Interp(m, interpreter) => interpreter.run(m, x, threads)?.into_iter().collect(),
            Engine::Jit(j) => j.run(x, threads)?,
        })
    }

    /// Logits of a batch of pixel values (an engine made for the logits).
    pub fn logits(&self, x: &Tensor, threads: usize) -> Result<Tensor, Error> {
        self.output(x, threads, outputs::LOGITS)
    }

    /// The output `name` of a batch of pixel values (an engine made for it).
    pub fn output(&self, x: &Tensor, threads: usize, name: &str) -> Result<Tensor, Error> {
        let mut out = self.run(x, threads)?;
        out.remove(name)
            .ok_or_else(|| Error::Run(cnx_compiler::RunError::UnknownOutput(name.into())))
    }
}
