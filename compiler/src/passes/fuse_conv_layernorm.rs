//! `fuse_conv_layernorm`: a LayerNorm over a convolution's output channels becomes the
//! convolution's epilogue ("conv + LN").
//!
//! `LN(conv(x))[p] = (conv(x)[p] - mean_p) / sqrt(var_p + eps) * gamma + beta`, where the
//! statistics are over the channels of output pixel `p` alone. A kernel that computes a pixel's
//! whole channel vector (the 7x7 depthwise conv in NHWC, the patchify stem) has everything it
//! needs to normalise it before writing: the normalised row feeds `pwconv1` without another
//! pass over memory. Applies to each block's depthwise conv + LayerNorm (normalisation only,
//! once gamma/beta are folded into `pwconv1`) and to the stem conv + embeddings LayerNorm
//! (with gamma/beta, whose output is also the residual stream).

use crate::ir::{Conv2d, Graph, Layout, Node, NodeId, NormAxis, Op, OutputNorm};

use super::{replace, sole_user, Pass};

pub struct FuseConvLayerNorm;

impl Pass for FuseConvLayerNorm {
    fn name(&self) -> &'static str {
        "fuse_conv_layernorm"
    }

    fn summary(&self) -> &'static str {
        "LayerNorm over a conv's output channels computed in the conv's epilogue"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::LayerNorm(ln) = graph.node(id).op else {
            return false;
        };
        let conv_id = graph.inputs(id)[0];
        let Op::Conv2d(conv) = graph.node(conv_id).op else {
            return false;
        };
        let axis_matches = match conv.layout {
            Layout::Nchw => ln.axis == NormAxis::ChannelsFirst,
            _ => ln.axis == NormAxis::ChannelsLast,
        };
        if conv.output_norm.is_some() || !axis_matches || sole_user(graph, conv_id) != Some(id) {
            return false;
        }
        let norm = graph.node(id).clone();
        let c = graph.node(conv_id).clone();
        let mut params = c.params.clone();
        if ln.affine {
            params.push(
                norm.param("weight")
                    .expect("affine")
                    .clone()
                    .with_role("norm_weight"),
            );
            params.push(
                norm.param("bias")
                    .expect("affine")
                    .clone()
                    .with_role("norm_bias"),
            );
        }
        let fused = Node {
            name: c.name.clone(),
            op: Op::Conv2d(Conv2d {
                output_norm: Some(OutputNorm {
                    eps: ln.eps,
                    affine: ln.affine,
                }),
                ..conv
            }),
            ty: norm.ty,
            params,
        };
        let inputs = graph.inputs(conv_id);
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
        let g = apply(&crate::passes::ToNhwc, &custom_graph((64, 64)));
        let g = apply(&crate::passes::FoldLayerNormIntoLinear, &g);
        let after = apply(&FuseConvLayerNorm, &g);
        let block = "convnextv2.encoder.stages.1.layers.0";
        assert_eq!(
            block_summary(&after, block),
            [
                "dwconv: DepthwiseConv2d",
                "pwconv1: Linear",
                "act: Activation",
                "grn: GRN",
                "pwconv2: Linear",
                "residual: Add"
            ]
        );
        let dw = after.node(after.find(&format!("{block}.dwconv")).unwrap());
        let Op::Conv2d(c) = dw.op else { panic!() };
        assert_eq!(
            c.output_norm,
            Some(OutputNorm {
                eps: 1e-6,
                affine: false
            })
        );
        // The stem keeps gamma/beta in its epilogue, and is the hidden_states_0 producer.
        let stem = after
            .find("convnextv2.embeddings.patch_embeddings")
            .unwrap();
        let Op::Conv2d(c) = after.node(stem).op else {
            panic!()
        };
        assert!(c.output_norm.unwrap().affine);
        assert_eq!(after.node(stem).params.len(), 4);
        assert!(after.find("convnextv2.embeddings.layernorm").is_none());
        // 5 blocks + the stem lose a node each.
        assert_eq!(after.node_count(), g.node_count() - 6);
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["fuse_conv_layernorm"]);
        check_pipeline(&[
            "to_nhwc",
            "fold_layernorm_into_linear",
            "fuse_conv_layernorm",
        ]);
    }
}
