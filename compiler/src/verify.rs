//! The graph verifier: acyclic, well-typed, every parameter declared once with the shape its op
//! needs, every output alive. Run after building and (in debug builds) after every pass.

use std::collections::HashMap;

use crate::ir::{Graph, Op};

/// What is wrong with a graph; a compiler bug, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("graph verification failed: {0}")]
pub struct VerifyError(pub String);

/// Checks every invariant of [`Graph`]; returns the first violation.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let fail = |msg: String| Err(VerifyError(msg));
    let order = graph.topo_order().map_err(|e| VerifyError(e.to_string()))?;
    let mut weight_users: HashMap<&str, &str> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let inputs = graph.inputs(id);
        if matches!(node.op, Op::Input) {
            if id != graph.input() {
                return fail(format!("`{}` is a second Input node", node.name));
            }
            if !inputs.is_empty() {
                return fail(format!("input `{}` has operands", node.name));
            }
        } else {
            let types: Vec<_> = inputs.iter().map(|&i| graph.node(i).ty).collect();
            match node.op.infer(&types) {
                Ok(ty) if ty == node.ty => {}
                Ok(ty) => {
                    return fail(format!(
                        "`{}` is typed {} but its operands give {ty}",
                        node.name, node.ty
                    ))
                }
                Err(e) => return fail(format!("`{}`: {e}", node.name)),
            }
        }
        if let Op::GrnScale {
            source: crate::ir::GrnSource::ProducerSums,
            ..
        } = node.op
        {
            let producer = graph.node(inputs[0]);
            if !matches!(producer.op, Op::Linear(l) if l.sum_squares) {
                return fail(format!(
                    "`{}` reads sums of squares that `{}` does not accumulate",
                    node.name, producer.name
                ));
            }
        }
        let mut ports: Vec<usize> = graph
            .petgraph()
            .edges_directed(id, petgraph::Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        ports.sort_unstable();
        if ports != (0..ports.len()).collect::<Vec<_>>() {
            return fail(format!("`{}` has operand ports {ports:?}", node.name));
        }
        let wanted = node.op.param_shapes();
        let declared: Vec<(&str, &[usize])> = node
            .params
            .iter()
            .map(|p| (p.role, p.shape.as_slice()))
            .collect();
        let wanted_ref: Vec<(&str, &[usize])> =
            wanted.iter().map(|(r, s)| (*r, s.as_slice())).collect();
        if declared != wanted_ref {
            return fail(format!(
                "`{}` declares parameters {declared:?} but {} needs {wanted_ref:?}",
                node.name, node.op
            ));
        }
        for p in &node.params {
            check_derivation(p).map_err(|e| VerifyError(format!("`{}`: {}", node.name, e.0)))?;
            if let Some(other) = weight_users.insert(&p.name, &node.name) {
                return fail(format!(
                    "weight `{}` is used by both `{other}` and `{}`",
                    p.name, node.name
                ));
            }
        }
    }
    for (name, id) in graph.outputs() {
        if graph.petgraph().node_weight(*id).is_none() {
            return fail(format!("output `{name}` refers to a removed node"));
        }
    }
    Ok(())
}

/// A derived parameter's inputs must have the shapes its rule needs.
fn check_derivation(p: &crate::ir::Param) -> Result<(), VerifyError> {
    use crate::ir::DeriveRule;
    let Some(d) = &p.derivation else {
        return Ok(());
    };
    let numel = |q: &crate::ir::Param| q.numel();
    let ok = match (&d.rule, d.inputs.as_slice()) {
        (DeriveRule::ScaleInputChannels, [w, gamma]) => {
            w.shape == p.shape && w.shape.len() >= 2 && numel(gamma) == w.shape[1]
        }
        (DeriveRule::AddWeightTimesInput, [b, w, beta]) => {
            b.shape == p.shape
                && w.shape.len() >= 2
                && w.shape[0] == numel(b)
                && numel(beta) == w.shape[1]
        }
        _ => false,
    };
    if !ok {
        return Err(VerifyError(format!(
            "derived parameter `{}` does not fit its recipe",
            p.name
        )));
    }
    d.inputs.iter().try_for_each(check_derivation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Linear, Param, ValueType};

    fn tiny_graph() -> (Graph, crate::ir::NodeId) {
        let mut g = Graph::new(ValueType::nchw(3, 4, 4));
        let pool = g
            .add("pool", Op::GlobalAvgPool, &[g.input()], vec![])
            .unwrap();
        let fc = g
            .add(
                "fc",
                Op::Linear(Linear::new(3, 2)),
                &[pool],
                vec![
                    Param::checkpoint("weight", "fc.weight", vec![2, 3]),
                    Param::checkpoint("bias", "fc.bias", vec![2]),
                ],
            )
            .unwrap();
        g.set_output("logits", fc);
        (g, fc)
    }

    #[test]
    fn accepts_a_well_formed_graph() {
        verify(&tiny_graph().0).unwrap();
    }

    #[test]
    fn rejects_wrong_types_params_and_cycles() {
        let (mut g, fc) = tiny_graph();
        g.node_mut(fc).ty = ValueType::features(5);
        assert!(verify(&g).unwrap_err().0.contains("typed"));

        let (mut g, fc) = tiny_graph();
        g.node_mut(fc).params[0].shape = vec![3, 2];
        assert!(verify(&g).unwrap_err().0.contains("declares parameters"));

        let (mut g, fc) = tiny_graph();
        g.node_mut(fc).params[1].name = "fc.weight".into();
        assert!(verify(&g).unwrap_err().0.contains("used by both"));

        let (mut g, fc) = tiny_graph();
        let pool = g.inputs(fc)[0];
        g.g.add_edge(fc, pool, 1);
        assert!(verify(&g).unwrap_err().0.contains("cycle"));
    }
}
