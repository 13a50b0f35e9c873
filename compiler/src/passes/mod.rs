//! The optimiser: small, named rewrites driven to a fixed point.
//!
//! A [`Pass`] is a pattern plus a local rewrite: [`Pass::rewrite`] looks at one node and, if
//! the pattern matches there, rewrites the graph around it. The [`Pipeline`] runs its passes
//! in order, each to a fixed point (every node tried until none matches), with a guard against
//! rewrites that never settle. In debug builds the verifier runs after every pass.
//!
//! Weights a pass derives (folded scales and biases) are recipes on the parameters
//! ([`crate::ir::Derivation`]): the graph stays weight-free, and the runtime's weight loader
//! computes them once, at load, in f64.

mod accumulate_grn_sums_in_linear;
pub mod derive;
mod eliminate_dead_nodes;
mod fold_grn_into_linear;
mod fold_layernorm_into_linear;
mod fuse_activation_into_linear;
mod fuse_conv_layernorm;
mod fuse_head;
mod fuse_layernorm_into_consumer;
mod fuse_residual_into_linear;
mod quantize_gemms_to_int8;
mod round_gemms_to_bf16;
mod to_nhwc;

#[cfg(test)]
pub(crate) mod testing;

pub use accumulate_grn_sums_in_linear::AccumulateGrnSumsInLinear;
pub use eliminate_dead_nodes::EliminateDeadNodes;
pub use fold_grn_into_linear::FoldGrnIntoLinear;
pub use fold_layernorm_into_linear::FoldLayerNormIntoLinear;
pub use fuse_activation_into_linear::FuseActivationIntoLinear;
pub use fuse_conv_layernorm::FuseConvLayerNorm;
pub use fuse_head::FuseHead;
pub use fuse_layernorm_into_consumer::FuseLayerNormIntoConsumer;
pub use fuse_residual_into_linear::FuseResidualIntoLinear;
pub use quantize_gemms_to_int8::QuantizeGemmsToInt8;
pub use round_gemms_to_bf16::RoundGemmsToBf16;
pub use to_nhwc::ToNhwc;

use crate::ir::{Graph, NodeId};
use crate::verify::{verify, VerifyError};

/// A local rewrite.
pub trait Pass {
    /// The pass's name, as `--passes` takes it.
    fn name(&self) -> &'static str;
    /// One line: what the rewrite does.
    fn summary(&self) -> &'static str;
    /// Rewrites the graph at `node` if the pattern matches there; returns whether it did.
    fn rewrite(&self, graph: &mut Graph, node: NodeId) -> bool;
}

/// Why the optimiser stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass `{name}` (passes: {known})")]
    UnknownPass { name: String, known: String },
    #[error("pass `{0}` did not reach a fixed point within {1} rewrites")]
    NoFixedPoint(&'static str, usize),
    #[error("after pass `{pass}`: {error}")]
    Verify {
        pass: &'static str,
        error: VerifyError,
    },
}

/// Every pass, in the default order.
pub fn all_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(ToNhwc),
        Box::new(FoldLayerNormIntoLinear),
        Box::new(FuseConvLayerNorm),
        Box::new(FuseLayerNormIntoConsumer),
        Box::new(FuseActivationIntoLinear),
        Box::new(FoldGrnIntoLinear),
        Box::new(AccumulateGrnSumsInLinear),
        Box::new(FuseResidualIntoLinear),
        Box::new(FuseHead),
        Box::new(EliminateDeadNodes),
    ]
}

/// An ordered list of passes.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

/// How many rewrites a pass may make per node of the graph before it is declared looping.
const REWRITES_PER_NODE: usize = 8;

impl Pipeline {
    /// The default pipeline: every pass, in order.
    pub fn default_pipeline() -> Pipeline {
        Pipeline {
            passes: all_passes(),
        }
    }

    /// No passes: the graph as Hugging Face defines it.
    pub fn empty() -> Pipeline {
        Pipeline { passes: vec![] }
    }

    /// The named passes, in the given order.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Pipeline, PassError> {
        let mut passes = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            let pass = all_passes()
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| PassError::UnknownPass {
                    name: name.to_string(),
                    known: all_passes()
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            passes.push(pass);
        }
        Ok(Pipeline { passes })
    }

    /// This pipeline, then the rewrite that runs its products at `precision` (nothing for
    /// f32): the one place precision enters the compiler.
    pub fn with_precision(mut self, precision: crate::ir::Precision) -> Pipeline {
        match precision {
            crate::ir::Precision::F32 => {}
            crate::ir::Precision::Bf16 => self.passes.push(Box::new(RoundGemmsToBf16)),
            crate::ir::Precision::Int8 => self.passes.push(Box::new(QuantizeGemmsToInt8)),
        }
        self
    }

    pub fn passes(&self) -> impl Iterator<Item = &dyn Pass> {
        self.passes.iter().map(|p| p.as_ref())
    }

    /// Runs every pass to its fixed point; returns the rewrites made by each.
    pub fn run(&self, graph: &mut Graph) -> Result<Vec<(&'static str, usize)>, PassError> {
        let mut report = Vec::new();
        for pass in &self.passes {
            let n = run_to_fixed_point(pass.as_ref(), graph)?;
            if cfg!(debug_assertions) {
                verify(graph).map_err(|error| PassError::Verify {
                    pass: pass.name(),
                    error,
                })?;
            }
            report.push((pass.name(), n));
        }
        Ok(report)
    }
}

/// Applies `pass` at every node, in topological order, until a sweep changes nothing.
pub fn run_to_fixed_point(pass: &dyn Pass, graph: &mut Graph) -> Result<usize, PassError> {
    let limit = REWRITES_PER_NODE * graph.node_count().max(16);
    let mut rewrites = 0;
    loop {
        let mut changed = false;
        for id in graph.topo_order().expect("passes keep the graph acyclic") {
            // Earlier rewrites in this sweep may have removed the node.
            if graph.contains(id) && pass.rewrite(graph, id) {
                changed = true;
                rewrites += 1;
                if rewrites > limit {
                    return Err(PassError::NoFixedPoint(pass.name(), limit));
                }
            }
        }
        if !changed {
            return Ok(rewrites);
        }
    }
}

/// The only user of `id`, if it has exactly one operand edge out and is not a named output
/// (an output's value must survive, so it cannot be fused away).
pub(crate) fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    if graph.is_output(id) {
        return None;
    }
    let mut users = graph
        .petgraph()
        .neighbors_directed(id, petgraph::Direction::Outgoing);
    match (users.next(), users.next()) {
        (Some(u), None) => Some(u),
        _ => None,
    }
}

/// Adds `node` in place of `old`: every use of `old` now reads the new node, and `old` (with
/// any operands this leaves unused) is removed.
pub(crate) fn replace(
    graph: &mut Graph,
    old: NodeId,
    node: crate::ir::Node,
    inputs: &[NodeId],
) -> NodeId {
    let new = graph
        .add(node.name, node.op, inputs, node.params)
        .expect("a rewrite keeps operand types");
    graph.replace_uses(old, new);
    graph.remove_if_dead(old);
    new
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn default_pipeline_fuses_a_block_into_four_ops() {
        let mut g = custom_graph((64, 64));
        let report = Pipeline::default_pipeline().run(&mut g).unwrap();
        // Every rewrite pass finds work on a ConvNeXt V2 graph (the dead-node sweep may not:
        // the rewrites already remove what they orphan).
        for &(pass, n) in &report {
            assert!(
                n > 0 || pass == "eliminate_dead_nodes",
                "{pass} rewrote nothing"
            );
        }
        assert_eq!(
            block_summary(&g, "convnextv2.encoder.stages.1.layers.0"),
            [
                "dwconv: DepthwiseConv2d",
                "pwconv1: Linear",
                "grn: GrnScale",
                "pwconv2: Linear"
            ]
        );
        let op = |name: &str| g.node(g.find(name).unwrap()).op.to_string();
        assert_eq!(
            op("convnextv2.encoder.stages.1.layers.0.dwconv"),
            "DepthwiseConv2d(10->10, k=7x7, s=1, p=3, g=10, nhwc, norm-out eps=1e-6)"
        );
        assert_eq!(
            op("convnextv2.encoder.stages.1.layers.0.pwconv1"),
            "Linear(10->40, gelu, sum-squares)"
        );
        assert_eq!(
            op("convnextv2.encoder.stages.1.layers.0.grn"),
            "GrnScale(40, from producer's sums)"
        );
        assert_eq!(
            op("convnextv2.encoder.stages.1.layers.0.pwconv2"),
            "Linear(40->10, scale-in, +residual)"
        );
        assert_eq!(
            op("convnextv2.encoder.stages.1.downsampling_layer.1"),
            "Conv2d(5->10, k=2x2, s=2, p=0, g=1, nhwc, norm-in eps=1e-6)"
        );
        assert_eq!(op("classifier"), "PoolNormLinear(20->7, eps=1e-12)");
        // Only output permutes remain, and logits need none of them.
        let logits = g.output("logits").unwrap();
        let needed = g.needed_for(&[logits]);
        assert!(needed.iter().all(|&id| !matches!(
            g.node(id).op,
            crate::ir::Op::Permute(crate::ir::Permute::NhwcToNchw)
        )));
    }

    #[test]
    fn default_pipeline_is_numerically_equal() {
        let names: Vec<&str> = all_passes().iter().map(|p| p.name()).collect();
        check_pipeline(&names);
    }

    #[test]
    fn unknown_pass_names_are_errors() {
        let err = Pipeline::from_names(&["to_nhwc", "fuse_everything"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("fuse_everything"), "{err}");
    }

    /// A pass that always claims to rewrite must be stopped by the guard.
    #[test]
    fn the_driver_stops_a_pass_that_never_settles() {
        struct Restless;
        impl Pass for Restless {
            fn name(&self) -> &'static str {
                "restless"
            }
            fn summary(&self) -> &'static str {
                "claims a change every time"
            }
            fn rewrite(&self, _: &mut Graph, _: NodeId) -> bool {
                true
            }
        }
        let mut g = custom_graph((64, 64));
        assert!(matches!(
            run_to_fixed_point(&Restless, &mut g),
            Err(PassError::NoFixedPoint("restless", _))
        ));
    }
}
