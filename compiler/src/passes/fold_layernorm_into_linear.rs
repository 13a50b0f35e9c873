//! `fold_layernorm_into_linear`: a LayerNorm's gamma and beta folded into the Linear or
//! convolution that reads it.
//!
//! With `x_hat` the normalised input, `LN(x) = x_hat * gamma + beta`, and for a Linear
//! `W LN(x) + b = (W diag(gamma)) x_hat + (W beta + b)`:
//!
//! - `W'[o, i] = W[o, i] * gamma[i]`, `b'[o] = b[o] + sum_i W[o, i] * beta[i]`.
//!
//! The same holds for a convolution without padding (every tap reads a real, normalised
//! pixel; padding would read zeros where `beta` is not added), summing over taps too:
//! `W'[o, i, y, x] = W[o, i, y, x] * gamma[i]`, `b'[o] = b[o] + sum_{i,y,x} W[o, i, y, x] beta[i]`.
//!
//! In ConvNeXt V2 this folds each block's LayerNorm into `pwconv1`, each downsampling
//! LayerNorm into its 2x2 stride-2 conv, and the final LayerNorm into the classifier; what
//! remains at run time is the per-pixel normalisation. When the LayerNorm's own output is a
//! named output (`pooler_output`), it stays for that output and a normalisation-only copy feeds
//! the consumer. The derived weights are recipes, computed once at load in f64.

use crate::ir::{DeriveRule, Graph, LayerNorm, Node, NodeId, Op, Param};

use super::{replace, Pass};

pub struct FoldLayerNormIntoLinear;

/// Whether `consumer` reads its input in a way the fold is exact for.
fn foldable_consumer(op: &Op) -> bool {
    match op {
        Op::Linear(l) => l.input_norm.is_none() && !l.input_scale,
        Op::Conv2d(c) => c.padding == [0, 0] && c.groups == 1 && c.input_norm.is_none(),
        _ => false,
    }
}

/// The consumer's parameters with gamma and beta folded in.
fn folded_params(consumer: &Node, gamma: &Param, beta: &Param, ln_name: &str) -> Vec<Param> {
    let w = consumer
        .param("weight")
        .expect("linear and conv have weights")
        .clone();
    let b = consumer
        .param("bias")
        .expect("linear and conv have biases")
        .clone();
    let weight = Param::derived(
        "weight",
        format!("{}.weight<-{ln_name}", consumer.name),
        w.shape.clone(),
        DeriveRule::ScaleInputChannels,
        vec![w.clone(), gamma.clone()],
    );
    let bias = Param::derived(
        "bias",
        format!("{}.bias<-{ln_name}", consumer.name),
        b.shape.clone(),
        DeriveRule::AddWeightTimesInput,
        vec![b, w, beta.clone()],
    );
    vec![weight, bias]
}

impl Pass for FoldLayerNormIntoLinear {
    fn name(&self) -> &'static str {
        "fold_layernorm_into_linear"
    }

    fn summary(&self) -> &'static str {
        "fold LayerNorm gamma/beta into the next Linear or unpadded conv: W' = W diag(gamma), b' = W beta + b"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        let Op::LayerNorm(ln) = graph.node(id).op else {
            return false;
        };
        if !ln.affine {
            return false;
        }
        // Exactly one consumer; an output LayerNorm may keep its own value for the output.
        let users = graph.users(id);
        let edges = graph
            .petgraph()
            .neighbors_directed(id, petgraph::Direction::Outgoing)
            .count();
        let [consumer] = users[..] else { return false };
        if edges != 1 || !foldable_consumer(&graph.node(consumer).op) {
            return false;
        }
        let node = graph.node(id).clone();
        let gamma = node.param("weight").expect("affine LayerNorm").clone();
        let beta = node.param("bias").expect("affine LayerNorm").clone();
        let plain = Op::LayerNorm(LayerNorm {
            affine: false,
            ..ln
        });
        let operand = graph.inputs(id)[0];
        let normalised = if graph.is_output(id) {
            graph
                .add(
                    format!("{}.normalize", node.name),
                    plain,
                    &[operand],
                    vec![],
                )
                .expect("same type")
        } else {
            let n = graph
                .add(node.name.clone(), plain, &[operand], vec![])
                .expect("same type");
            graph.replace_uses(id, n);
            graph.remove_if_dead(id);
            n
        };
        let c = graph.node(consumer).clone();
        let mut inputs = graph.inputs(consumer);
        inputs[0] = normalised;
        let params = folded_params(&c, &gamma, &beta, &node.name);
        replace(graph, consumer, Node { params, ..c }, &inputs);
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
        let after = apply(&FoldLayerNormIntoLinear, &g);
        let ln = |g: &Graph, name: &str| match g.node(g.find(name).unwrap()).op {
            Op::LayerNorm(ln) => ln.affine,
            _ => panic!("{name} is not a LayerNorm"),
        };
        // Folded: block, downsampling and (a copy of) the final LayerNorm.
        assert!(!ln(
            &after,
            "convnextv2.encoder.stages.0.layers.0.layernorm"
        ));
        assert!(!ln(
            &after,
            "convnextv2.encoder.stages.1.downsampling_layer.0"
        ));
        assert!(!ln(&after, "convnextv2.layernorm.normalize"));
        // Kept: the final LayerNorm for pooler_output, and the embeddings one (two consumers,
        // one of them a padded depthwise conv).
        assert!(ln(&after, "convnextv2.layernorm"));
        assert!(ln(&after, "convnextv2.embeddings.layernorm"));
        let pw1 = after.node(
            after
                .find("convnextv2.encoder.stages.0.layers.0.pwconv1")
                .unwrap(),
        );
        let w = pw1.param("weight").unwrap();
        assert_eq!(w.shape, vec![20, 5]);
        let leaves: Vec<&str> = w.leaves().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            leaves,
            [
                "convnextv2.encoder.stages.0.layers.0.pwconv1.weight",
                "convnextv2.encoder.stages.0.layers.0.layernorm.weight"
            ]
        );
        // Same checkpoint tensors read, one node more (the pooler's copy).
        assert_eq!(after.node_count(), g.node_count() + 1);
        let names = |g: &Graph| -> Vec<String> {
            let mut v: Vec<String> = g
                .checkpoint_params()
                .iter()
                .map(|p| p.name.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&after), names(&g));
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["fold_layernorm_into_linear"]);
        check_pipeline(&["to_nhwc", "fold_layernorm_into_linear"]);
    }
}
