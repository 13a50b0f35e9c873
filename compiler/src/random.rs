//! Random weights and inputs for a graph, for demos, benchmarks and tests with no hub access
//! (the `cnx random-model` command writes them as a model directory).
//!
//! Every parameter is drawn from a seeded generator, including the ones transformers
//! initialises to constants (GRN to zero, LayerNorm to the identity), so that a model made
//! here exercises every term of every op.

use cnx_runtime::Tensor;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::ir::{Graph, Op};

/// Random values for every parameter of `graph`, in topological order:
/// conv and linear weights ~ N(0, 1/fan_in), their biases ~ 0.1 N(0, 1), LayerNorm
/// gamma ~ 1 + 0.2 N, beta ~ 0.2 N, GRN gamma and beta ~ 0.5 N.
pub fn random_parameters(graph: &Graph, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = move || -> f32 { StandardNormal.sample(&mut rng) };
    let mut out = Vec::new();
    for id in graph.topo_order().expect("a built graph is acyclic") {
        let node = graph.node(id);
        for p in &node.params {
            let n = p.numel();
            let (scale, offset) = match (&node.op, p.role) {
                (Op::Conv2d(_) | Op::Linear(_), "weight") => {
                    let fan_in: usize = p.shape[1..].iter().product();
                    (1.0 / (fan_in as f32).sqrt(), 0.0)
                }
                (Op::Conv2d(_) | Op::Linear(_), _) => (0.1, 0.0),
                (Op::LayerNorm(_), "weight") => (0.2, 1.0),
                (Op::LayerNorm(_), _) => (0.2, 0.0),
                _ => (0.5, 0.0),
            };
            let data = (0..n).map(|_| offset + scale * normal()).collect();
            out.push((p.name.clone(), p.shape.clone(), data));
        }
    }
    out
}

/// Standard-normal `pixel_values` of shape `(batch, C, H, W)` for `graph`.
pub fn random_pixel_values(graph: &Graph, batch: usize, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let t = graph.input_type();
    let shape = [batch, t.channels, t.height, t.width];
    let data = (0..shape.iter().product::<usize>())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(&shape, data).expect("sized from the shape")
}
