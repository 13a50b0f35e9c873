//! `to_nhwc`: one layout end to end.
//!
//! Hugging Face computes convolutions and the channels-first LayerNorms in NCHW and permutes to
//! NHWC and back inside every block. NHWC suits everything here (1x1 convs and LayerNorms read
//! a pixel's channels contiguously; the depthwise conv vectorises over channels), so this pass
//! moves the layout change to the input and lets the permutes cancel:
//!
//! - at the input: `conv(x)` = `to_nchw(conv_nhwc(to_nhwc(x)))`;
//! - sinking: `f(to_nchw(y))` = `to_nchw(f_nhwc(y))` for conv and channels-first LayerNorm
//!   (which becomes a channels-last LayerNorm), `add(to_nchw(a), to_nchw(b))` =
//!   `to_nchw(add(a, b))`, and `pool(to_nchw(y))` = `pool_nhwc(y)`;
//! - cancelling: `to_nhwc(to_nchw(y))` = `y`.
//!
//! At the fixed point the only permutes left convert values that are named outputs (the
//! hidden states HF returns as NCHW); they run only when those outputs are requested.

use crate::ir::{Graph, Layout, Node, NodeId, NormAxis, Op, Permute};

use super::Pass;

pub struct ToNhwc;

/// `y` if `id` is `to_nchw(y)`.
fn nchw_of(graph: &Graph, id: NodeId) -> Option<NodeId> {
    match graph.node(id).op {
        Op::Permute(Permute::NhwcToNchw) => Some(graph.inputs(id)[0]),
        _ => None,
    }
}

/// The op computed on NHWC instead of NCHW, if it has such a form.
fn nhwc_form(op: &Op) -> Option<Op> {
    match *op {
        Op::Conv2d(c) if c.layout == Layout::Nchw => Some(Op::Conv2d(crate::ir::Conv2d {
            layout: Layout::Nhwc,
            ..c
        })),
        Op::LayerNorm(ln) if ln.axis == NormAxis::ChannelsFirst => {
            Some(Op::LayerNorm(crate::ir::LayerNorm {
                axis: NormAxis::ChannelsLast,
                ..ln
            }))
        }
        Op::GlobalAvgPool | Op::PoolNormLinear { .. } | Op::Add => Some(op.clone()),
        _ => None,
    }
}

/// Adds `op` on NHWC `inputs` as the replacement of `old`, followed by a permute back to NCHW
/// when the result is an image (pooling gives features, which need none).
fn rewrite_nhwc(graph: &mut Graph, old: NodeId, op: Op, inputs: &[NodeId]) {
    let node = graph.node(old).clone();
    let nhwc = graph
        .add(node.name.clone(), op, inputs, node.params)
        .expect("the NHWC form types");
    let result = if graph.node(nhwc).ty.layout == Layout::Nhwc {
        graph
            .add(
                format!("{}.to_nchw", node.name),
                Op::Permute(Permute::NhwcToNchw),
                &[nhwc],
                vec![],
            )
            .expect("permute types")
    } else {
        nhwc
    };
    graph.replace_uses(old, result);
    graph.remove_if_dead(old);
}

impl Pass for ToNhwc {
    fn name(&self) -> &'static str {
        "to_nhwc"
    }

    fn summary(&self) -> &'static str {
        "compute in NHWC end to end; permutes cancel, except to NCHW outputs"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let node: Node = graph.node(id).clone();
        let inputs = graph.inputs(id);
        // Cancel: to_nhwc(to_nchw(y)) = y.
        if let Op::Permute(Permute::NchwToNhwc) = node.op {
            if let Some(y) = nchw_of(graph, inputs[0]) {
                graph.replace_uses(id, y);
                graph.remove_if_dead(id);
                return true;
            }
        }
        let Some(op) = nhwc_form(&node.op) else {
            return false;
        };
        // Sink: every operand is to_nchw(y).
        let ys: Option<Vec<NodeId>> = inputs.iter().map(|&i| nchw_of(graph, i)).collect();
        if let Some(ys) = ys {
            rewrite_nhwc(graph, id, op, &ys);
            return true;
        }
        // Enter NHWC at the graph input: conv(x) = to_nchw(conv_nhwc(to_nhwc(x))).
        if matches!(node.op, Op::Conv2d(_)) && inputs == [graph.input()] {
            let to_nhwc = graph
                .add(
                    "pixel_values.to_nhwc",
                    Op::Permute(Permute::NchwToNhwc),
                    &[graph.input()],
                    vec![],
                )
                .expect("permute types");
            rewrite_nhwc(graph, id, op, &[to_nhwc]);
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
        let g = custom_graph((64, 64));
        let after = apply(&ToNhwc, &g);
        // No permute is left except the ones producing NCHW hidden states for the outputs
        // (and the input's), and none of them feeds another node.
        for id in after.topo_order().unwrap() {
            let n = after.node(id);
            match n.op {
                Op::Permute(Permute::NhwcToNchw) => {
                    assert!(after.is_output(id), "{} is not an output", n.name);
                    assert!(after.users(id).is_empty(), "{} feeds a node", n.name);
                }
                Op::Permute(Permute::NchwToNhwc) => assert_eq!(n.name, "pixel_values.to_nhwc"),
                Op::Conv2d(c) => assert_eq!(c.layout, Layout::Nhwc, "{}", n.name),
                Op::LayerNorm(ln) => assert_eq!(ln.axis, NormAxis::ChannelsLast, "{}", n.name),
                _ => {}
            }
        }
        // One block (not a stage's last, whose output is a hidden state), before and after:
        // dwconv .. residual without the two permutes.
        let block = "convnextv2.encoder.stages.1.layers.0";
        let expected = [
            "dwconv: DepthwiseConv2d",
            "layernorm: LayerNorm",
            "pwconv1: Linear",
            "act: Activation",
            "grn: GRN",
            "pwconv2: Linear",
            "residual: Add",
        ];
        assert_eq!(block_summary(&after, block), expected);
        assert_eq!(block_summary(&g, block).len(), expected.len() + 2);
        // Outputs keep HF's NCHW types.
        for (name, id) in g.outputs() {
            assert_eq!(
                after.node(after.output(name).unwrap()).ty,
                g.node(*id).ty,
                "{name}"
            );
        }
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["to_nhwc"]);
    }
}
