//! `fold_grn_into_linear`: GRN split into its whole-image statistics and an affine map folded
//! into the next Linear (`pwconv2`).
//!
//! `GRN(h) = gamma * (h * N) + beta + h = h * s + beta` with `s = 1 + gamma * N` per sample and
//! channel (`N_c = ||h_c|| / (mean_c ||h_c|| + 1e-6)`). Then
//! `pwconv2(GRN(h)) = W2 (h * s) + (W2 beta + b2)`: `beta` folds into the bias once, at load;
//! `s` scales pwconv2's input per sample and channel as it is read. What remains of GRN is
//! [`Op::GrnScale`], the whole-image barrier (every pixel of an image contributes to `N` before
//! any output pixel can be computed), kept visible in the IR; a kernel can accumulate its sums
//! of squares in pwconv1's epilogue.

use crate::ir::{DeriveRule, Graph, GrnSource, Linear, Node, NodeId, Op, Param};

use super::{replace, sole_user, Pass};

pub struct FoldGrnIntoLinear;

impl Pass for FoldGrnIntoLinear {
    fn name(&self) -> &'static str {
        "fold_grn_into_linear"
    }

    fn summary(&self) -> &'static str {
        "GRN = per-sample channel scale s = 1 + gamma N (a barrier) + beta folded into the next Linear's bias"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::Grn { channels } = graph.node(id).op else {
            return false;
        };
        let Some(user) = sole_user(graph, id) else {
            return false;
        };
        let Op::Linear(l) = graph.node(user).op else {
            return false;
        };
        if l.input_norm.is_some() || l.input_scale || graph.inputs(user)[0] != id {
            return false;
        }
        let grn = graph.node(id).clone();
        let h = graph.inputs(id)[0];
        let gamma = grn.param("weight").expect("GRN weight").clone();
        let beta = grn.param("bias").expect("GRN bias").clone();
        let scale = graph
            .add(
                grn.name.clone(),
                Op::GrnScale {
                    channels,
                    source: GrnSource::Values,
                },
                &[h],
                vec![gamma],
            )
            .expect("GrnScale types");
        let consumer = graph.node(user).clone();
        let w = consumer.param("weight").expect("Linear weight").clone();
        let b = consumer.param("bias").expect("Linear bias").clone();
        let bias = Param::derived(
            "bias",
            format!("{}.bias<-{}.bias", consumer.name, grn.name),
            b.shape.clone(),
            DeriveRule::AddWeightTimesInput,
            vec![b, w.clone(), beta],
        );
        let mut inputs = graph.inputs(user);
        inputs[0] = h;
        inputs.insert(1, scale);
        let fused = Node {
            op: Op::Linear(Linear {
                input_scale: true,
                ..l
            }),
            params: vec![w, bias],
            ..consumer
        };
        replace(graph, user, fused, &inputs);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;

    #[test]
    fn structure_after() {
        let g = apply(&crate::passes::ToNhwc, &custom_graph((64, 64)));
        let after = apply(&FoldGrnIntoLinear, &g);
        let block = "convnextv2.encoder.stages.1.layers.0";
        assert_eq!(
            block_summary(&after, block),
            [
                "dwconv: DepthwiseConv2d",
                "layernorm: LayerNorm",
                "pwconv1: Linear",
                "act: Activation",
                "grn: GrnScale",
                "pwconv2: Linear",
                "residual: Add"
            ]
        );
        let pw2 = after.find(&format!("{block}.pwconv2")).unwrap();
        let operands: Vec<String> = after
            .inputs(pw2)
            .iter()
            .map(|&i| after.node(i).name.clone())
            .collect();
        assert_eq!(operands, [format!("{block}.act"), format!("{block}.grn")]);
        assert_eq!(after.node(pw2).op.to_string(), "Linear(40->10, scale-in)");
        assert_eq!(after.node_count(), g.node_count());
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["to_nhwc", "fold_grn_into_linear"]);
    }
}
