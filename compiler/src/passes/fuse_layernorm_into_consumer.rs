//! `fuse_layernorm_into_consumer`: a normalisation-only LayerNorm (its gamma and beta already
//! folded into the consumer) becomes the consumer's prologue.
//!
//! `consumer(x_hat)` with `x_hat[p] = (x[p] - mean_p) / sqrt(var_p + eps)`: the consumer
//! normalises each pixel's channel vector as it reads (packs) it, so `x_hat` is never written.
//! Applies to each downsampling LayerNorm + 2x2 stride-2 conv and to the final LayerNorm +
//! classifier. (Zero padding stays zero: padded taps are not pixels and are not normalised,
//! exactly as in the unfused graph.)

use crate::ir::{Conv2d, Graph, Layout, Linear, Node, NodeId, NormAxis, Op};

use super::{replace, sole_user, Pass};

pub struct FuseLayerNormIntoConsumer;

impl Pass for FuseLayerNormIntoConsumer {
    fn name(&self) -> &'static str {
        "fuse_layernorm_into_consumer"
    }

    fn summary(&self) -> &'static str {
        "normalisation-only LayerNorm applied in the next conv's or Linear's prologue"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::LayerNorm(ln) = graph.node(id).op else {
            return false;
        };
        let Some(user) = sole_user(graph, id) else {
            return false;
        };
        if ln.affine || graph.inputs(user)[0] != id {
            return false;
        }
        let op = match graph.node(user).op {
            Op::Linear(l) if l.input_norm.is_none() && !l.input_scale => Op::Linear(Linear {
                input_norm: Some(ln.eps),
                ..l
            }),
            Op::Conv2d(c) if c.input_norm.is_none() => {
                let axis_matches = match c.layout {
                    Layout::Nchw => ln.axis == NormAxis::ChannelsFirst,
                    _ => ln.axis == NormAxis::ChannelsLast,
                };
                if !axis_matches {
                    return false;
                }
                Op::Conv2d(Conv2d {
                    input_norm: Some(ln.eps),
                    ..c
                })
            }
            _ => return false,
        };
        let consumer = graph.node(user).clone();
        let mut inputs = graph.inputs(user);
        inputs[0] = graph.inputs(id)[0];
        replace(graph, user, Node { op, ..consumer }, &inputs);
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
        let g = apply(&crate::passes::FoldLayerNormIntoLinear, &g);
        let after = apply(&FuseLayerNormIntoConsumer, &g);
        assert!(after
            .find("convnextv2.encoder.stages.2.downsampling_layer.0")
            .is_none());
        let down = after
            .find("convnextv2.encoder.stages.2.downsampling_layer.1")
            .unwrap();
        let Op::Conv2d(c) = after.node(down).op else {
            panic!()
        };
        assert_eq!(c.input_norm, Some(1e-6));
        let classifier = after.find("classifier").unwrap();
        let Op::Linear(l) = after.node(classifier).op else {
            panic!()
        };
        assert_eq!(l.input_norm, Some(1e-12));
        assert_eq!(
            after.node(after.inputs(classifier)[0]).name,
            "convnextv2.mean_pool"
        );
        // The block LayerNorms were also normalisation-only, feeding pwconv1.
        assert!(after
            .find("convnextv2.encoder.stages.0.layers.0.layernorm")
            .is_none());
        assert_eq!(after.node_count(), g.node_count() - 3 - 5 - 1);
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["fold_layernorm_into_linear", "fuse_layernorm_into_consumer"]);
        check_pipeline(&[
            "to_nhwc",
            "fold_layernorm_into_linear",
            "fuse_layernorm_into_consumer",
        ]);
    }
}
