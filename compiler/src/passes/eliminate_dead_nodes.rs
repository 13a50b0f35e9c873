//! `eliminate_dead_nodes`: a node whose value nothing reads (no user, not a named output) is
//! removed, and with it its parameters; the checkpoint tensors only dead nodes read are then
//! not kept after loading (see `LoadedModel`).

use crate::ir::{Graph, NodeId};

use super::Pass;

pub struct EliminateDeadNodes;

impl Pass for EliminateDeadNodes {
    fn name(&self) -> &'static str {
        "eliminate_dead_nodes"
    }

    fn summary(&self) -> &'static str {
        "remove nodes no output depends on"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        graph.remove_if_dead(id) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Op;
    use crate::passes::testing::*;

    #[test]
    fn structure_after() {
        let g = custom_graph((64, 64));
        let mut dangling = g.clone();
        let last = dangling.output("last_hidden_state").unwrap();
        let pool = dangling
            .add("orphan_pool", Op::GlobalAvgPool, &[last], vec![])
            .unwrap();
        dangling
            .add(
                "orphan_relu",
                Op::Activation(cnx_runtime::Activation::Relu),
                &[pool],
                vec![],
            )
            .unwrap();
        let after = apply(&EliminateDeadNodes, &dangling);
        assert_eq!(after.node_count(), g.node_count());
        assert!(after.find("orphan_pool").is_none());
    }

    #[test]
    fn numerically_equal() {
        check_pipeline(&["eliminate_dead_nodes", "to_nhwc", "eliminate_dead_nodes"]);
    }
}
