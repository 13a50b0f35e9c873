//! `fuse_residual_into_linear`: `x + (W y + b)` computed in the Linear's epilogue (the block's
//! residual connection added as `pwconv2` writes its output).

use crate::ir::{Graph, Linear, Node, NodeId, Op};

use super::{replace, sole_user, Pass};

pub struct FuseResidualIntoLinear;

impl Pass for FuseResidualIntoLinear {
    fn name(&self) -> &'static str {
        "fuse_residual_into_linear"
    }

    fn summary(&self) -> &'static str {
        "residual Add performed in the Linear's epilogue"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        if graph.node(id).op != Op::Add {
            return false;
        }
        let operands = graph.inputs(id);
        // Addition commutes: fuse into whichever operand is a Linear (HF's is the second).
        for (k, &linear_id) in operands.iter().enumerate().rev() {
            let residual = operands[1 - k];
            let Op::Linear(l) = graph.node(linear_id).op else {
                continue;
            };
            if l.residual || residual == linear_id || sole_user(graph, linear_id) != Some(id) {
                continue;
            }
            let linear = graph.node(linear_id).clone();
            let mut inputs = graph.inputs(linear_id);
            inputs.push(residual);
            let fused = Node {
                name: linear.name.clone(),
                op: Op::Linear(Linear {
                    residual: true,
                    ..l
                }),
                ty: linear.ty,
                params: linear.params,
            };
            replace(graph, id, fused, &inputs);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;

    #[test]
    fn structure_after() {
        let g = apply(&crate::passes::ToNhwc, &custom_graph((64, 64)));
        let after = apply(&FuseResidualIntoLinear, &g);
        let block = "convnextv2.encoder.stages.1.layers.0";
        let summary = block_summary(&after, block);
        assert_eq!(summary.last().unwrap(), "pwconv2: Linear");
        let pw2 = after.find(&format!("{block}.pwconv2")).unwrap();
        let residual = after.inputs(pw2)[1];
        assert_eq!(
            after.node(residual).name,
            "convnextv2.encoder.stages.1.downsampling_layer.1"
        );
        // The last block's pwconv2 now produces the stage output (hidden_states_1).
        let h1 = after.output("hidden_states_1").unwrap();
        let producer = after.inputs(h1)[0];
        assert_eq!(
            after.node(producer).name,
            "convnextv2.encoder.stages.0.layers.0.pwconv2"
        );
        assert_eq!(after.node_count(), g.node_count() - 5);
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["to_nhwc", "fuse_residual_into_linear"]);
    }
}
