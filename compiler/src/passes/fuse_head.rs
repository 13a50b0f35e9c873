//! `fuse_head`: global average pool + normalisation + classifier as one op.
//!
//! `logits = W' LN_hat(mean_p x[p]) + b'` (gamma/beta already folded into `W'`, `b'`): one op
//! reads the last stage once and writes the logits. The pooled value itself stays a separate
//! node only if `pooler_output` is requested.

use crate::ir::{Graph, Node, NodeId, Op};

use super::{replace, Pass};

pub struct FuseHead;

impl Pass for FuseHead {
    fn name(&self) -> &'static str {
        "fuse_head"
    }

    fn summary(&self) -> &'static str {
        "mean pool + normalisation + classifier as one PoolNormLinear op"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::Linear(l) = graph.node(id).op else {
            return false;
        };
        let Some(eps) = l.input_norm else {
            return false;
        };
        let pool = graph.inputs(id)[0];
        if l.input_scale
            || l.activation.is_some()
            || l.residual
            || graph.node(pool).op != Op::GlobalAvgPool
        {
            return false;
        }
        let linear = graph.node(id).clone();
        let op = Op::PoolNormLinear {
            channels: l.in_features,
            classes: l.out_features,
            eps,
        };
        let input = graph.inputs(pool)[0];
        replace(graph, id, Node { op, ..linear }, &[input]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;

    #[test]
    fn structure_after() {
        let mut g = custom_graph((64, 64));
        crate::passes::Pipeline::from_names(&[
            "to_nhwc",
            "fold_layernorm_into_linear",
            "fuse_layernorm_into_consumer",
        ])
        .unwrap()
        .run(&mut g)
        .unwrap();
        let after = apply(&FuseHead, &g);
        let logits = after.output("logits").unwrap();
        assert_eq!(
            after.node(logits).op.to_string(),
            "PoolNormLinear(20->7, eps=1e-12)"
        );
        let last = after.output("last_hidden_state").unwrap();
        assert_eq!(
            after.node(after.inputs(logits)[0]).name,
            after.node(after.inputs(last)[0]).name
        );
        // The pool stays for pooler_output.
        assert!(after.find("convnextv2.mean_pool").is_some());
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&[
            "to_nhwc",
            "fold_layernorm_into_linear",
            "fuse_layernorm_into_consumer",
            "fuse_head",
        ]);
    }
}
