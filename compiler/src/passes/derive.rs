//! Derived parameters are recipes on the IR's parameters: the runtime's
//! [`cnx_runtime::weights::derive::evaluate`] computes each once, at load (in f64, rounded
//! once to f32), from the weight table the lowering builds (`ParamSpec::of` each parameter).

pub use cnx_runtime::weights::derive::DeriveError;
use cnx_runtime::weights::derive::{DeriveRule, Recipe};

use crate::ir::Param;

/// IR parameters are recipes: evaluated by the runtime's code, as the macro's tables are.
impl Recipe for Param {
    fn name(&self) -> &str {
        &self.name
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn derivation(&self) -> Option<(DeriveRule, &[Param])> {
        self.derivation
            .as_ref()
            .map(|d| (d.rule, d.inputs.as_slice()))
    }
}
