//! Human-readable views of a graph: the node table of `cnx graph`, totals, and Graphviz.

use std::fmt::Write as _;

use crate::ir::Graph;

/// Parameter and MAC totals of a graph (per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub nodes: usize,
    pub params: usize,
    pub macs: u64,
}

pub fn totals(graph: &Graph) -> Totals {
    Totals {
        nodes: graph.node_count(),
        params: graph.num_params(),
        macs: graph.macs(),
    }
}

/// One line per node in topological order: name, op, output type, parameters, MACs; then totals.
pub fn node_table(graph: &Graph) -> String {
    let order = graph.topo_order().unwrap_or_default();
    let width = order
        .iter()
        .map(|&id| graph.node(id).name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<44} {:<24} {:>10} {:>14}",
        "node", "op", "output", "params", "MACs/image"
    );
    for id in order {
        let n = graph.node(id);
        let _ = writeln!(
            out,
            "{:<width$}  {:<44} {:<24} {:>10} {:>14}",
            n.name,
            n.op.to_string(),
            n.ty.to_string(),
            n.num_params(),
            n.op.macs(&n.ty)
        );
    }
    let t = totals(graph);
    let _ = writeln!(
        out,
        "total: {} nodes, {} parameters ({:.2} M), {} MACs per image ({:.3} G)",
        t.nodes,
        t.params,
        t.params as f64 / 1e6,
        t.macs,
        t.macs as f64 / 1e9
    );
    out
}

/// The graph in Graphviz dot syntax, one box per node labelled with its name, op and type.
pub fn dot(graph: &Graph) -> String {
    let g = graph.petgraph();
    let mut out = String::from("digraph convnextv2 {\n  node [shape=box, fontname=monospace];\n");
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    for id in g.node_indices() {
        let n = &g[id];
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\\n{}\\n{}\"];",
            id.index(),
            esc(&n.name),
            esc(&n.op.to_string()),
            esc(&n.ty.to_string())
        );
    }
    for e in g.edge_indices() {
        let (a, b) = g.edge_endpoints(e).expect("live edge");
        let _ = writeln!(
            out,
            "  n{} -> n{} [label=\"{}\"];",
            a.index(),
            b.index(),
            g[e]
        );
    }
    for (name, id) in graph.outputs() {
        let _ = writeln!(out, "  \"out:{}\" [shape=plaintext];", esc(name));
        let _ = writeln!(out, "  n{} -> \"out:{}\";", id.index(), esc(name));
    }
    out.push_str("}\n");
    out
}
