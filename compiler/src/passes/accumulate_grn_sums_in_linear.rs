//! `accumulate_grn_sums_in_linear`: GRN's sums of squares accumulated in the epilogue of the
//! Linear that produces its input (`pwconv1` + bias + activation).
//!
//! `N` needs `sum_p h[p, c]^2` per sample and channel. The Linear that writes `h` has each
//! value in a register as it writes it, so it adds the square to a per-sample, per-channel
//! accumulator there, and [`Op::GrnScale`] reads those `[N, C]` sums instead of passing over
//! all of `h` again. The barrier remains (pwconv2 cannot start on a sample before its sums are
//! complete) and stays visible as the GrnScale node.

use crate::ir::{Graph, GrnSource, Linear, Node, NodeId, Op};

use super::{replace, Pass};

pub struct AccumulateGrnSumsInLinear;

impl Pass for AccumulateGrnSumsInLinear {
    fn name(&self) -> &'static str {
        "accumulate_grn_sums_in_linear"
    }

    fn summary(&self) -> &'static str {
        "GRN's per-sample channel sums of squares accumulated in the producing Linear's epilogue"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::GrnScale {
            channels,
            source: GrnSource::Values,
        } = graph.node(id).op
        else {
            return false;
        };
        let producer = graph.inputs(id)[0];
        let Op::Linear(l) = graph.node(producer).op else {
            return false;
        };
        if l.residual {
            return false;
        }
        let linear = graph.node(producer).clone();
        let inputs = graph.inputs(producer);
        let accumulating = Node {
            op: Op::Linear(Linear {
                sum_squares: true,
                ..l
            }),
            ..linear
        };
        let new_producer = replace(graph, producer, accumulating, &inputs);
        let scale = graph.node(id).clone();
        let reading = Node {
            op: Op::GrnScale {
                channels,
                source: GrnSource::ProducerSums,
            },
            ..scale
        };
        replace(graph, id, reading, &[new_producer]);
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
            "fuse_activation_into_linear",
            "fold_grn_into_linear",
        ])
        .unwrap()
        .run(&mut g)
        .unwrap();
        let after = apply(&AccumulateGrnSumsInLinear, &g);
        let block = "convnextv2.encoder.stages.2.layers.0";
        let op = |name: &str| {
            after
                .node(after.find(&format!("{block}.{name}")).unwrap())
                .op
                .to_string()
        };
        assert_eq!(op("pwconv1"), "Linear(15->60, gelu, sum-squares)");
        assert_eq!(op("grn"), "GrnScale(60, from producer's sums)");
        assert_eq!(after.node_count(), g.node_count());
        // Less traffic: the GRN no longer reads h.
        let (before, now) = (crate::listing::traffic(&g), crate::listing::traffic(&after));
        assert!(now.bytes_read < before.bytes_read);
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&[
            "to_nhwc",
            "fuse_activation_into_linear",
            "fold_grn_into_linear",
            "accumulate_grn_sums_in_linear",
        ]);
    }
}
