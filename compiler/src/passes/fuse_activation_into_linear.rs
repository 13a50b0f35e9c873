//! `fuse_activation_into_linear`: `act(W x + b)` computed in the Linear's epilogue, so the
//! pre-activation values are never written.

use crate::ir::{Graph, Linear, Node, NodeId, Op};

use super::{replace, sole_user, Pass};

pub struct FuseActivationIntoLinear;

impl Pass for FuseActivationIntoLinear {
    fn name(&self) -> &'static str {
        "fuse_activation_into_linear"
    }

    fn summary(&self) -> &'static str {
        "activation applied in the preceding Linear's epilogue"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::Activation(act) = graph.node(id).op else {
            return false;
        };
        let linear_id = graph.inputs(id)[0];
        let Op::Linear(l) = graph.node(linear_id).op else {
            return false;
        };
        if l.activation.is_some() || l.residual || sole_user(graph, linear_id) != Some(id) {
            return false;
        }
        let linear = graph.node(linear_id).clone();
        let fused = Node {
            op: Op::Linear(Linear {
                activation: Some(act),
                ..l
            }),
            ..linear
        };
        let inputs = graph.inputs(linear_id);
        replace(graph, id, fused, &inputs);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;

    #[test]
    fn structure_after() {
        let g = custom_graph((64, 64));
        let after = apply(&FuseActivationIntoLinear, &g);
        let block = "convnextv2.encoder.stages.3.layers.0";
        let summary = block_summary(&after, block);
        assert!(!summary.iter().any(|s| s.starts_with("act")), "{summary:?}");
        let pw1 = after.node(after.find(&format!("{block}.pwconv1")).unwrap());
        assert_eq!(pw1.op.to_string(), "Linear(20->80, gelu)");
        assert_eq!(after.node_count(), g.node_count() - 5);
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["fuse_activation_into_linear"]);
    }
}
