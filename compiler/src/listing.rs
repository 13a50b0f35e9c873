//! Human-readable views of a graph: the node table of `cnx graph`, totals, and Graphviz.

use std::fmt::Write as _;

use crate::ir::{Graph, GrnSource, Op};

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

/// One line per node of `graph` in topological order: name, op, output type, parameters,
/// MACs; then totals. The parameter total is the checkpoint's, as transformers'
/// `num_parameters()` counts it (the parameters of `unfused`, the graph as Hugging Face
/// defines it), with what the optimised `graph` holds beside it (folded weights are derived
/// tensors, and folding changes the count).
pub fn node_table(unfused: &Graph, graph: &Graph) -> String {
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
    let checkpoint: usize = unfused.checkpoint_params().iter().map(|p| p.numel()).sum();
    let _ = writeln!(
        out,
        "total: {} nodes, {} parameters ({:.2} M; the optimised graph holds {}), {} MACs per image ({:.3} G)",
        t.nodes,
        checkpoint,
        checkpoint as f64 / 1e6,
        t.params,
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

/// What computing the logits of one image costs in activation memory traffic and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Nodes the logits depend on (the input excluded).
    pub nodes: usize,
    /// Bytes of activations written per image (every node's f32 output, once).
    pub bytes_written: u64,
    /// Bytes of activations read per image (every operand of every node, as often as the op
    /// passes over it: GRN reads its input twice, for its norms and then for its output).
    pub bytes_read: u64,
    pub macs: u64,
}

/// [`Traffic`] of the nodes `logits` depends on.
pub fn traffic(graph: &Graph) -> Traffic {
    let logits = graph
        .output(crate::ir::outputs::LOGITS)
        .expect("every graph has logits");
    let needed = graph.needed_for(&[logits]);
    let mut t = Traffic {
        nodes: 0,
        bytes_written: 0,
        bytes_read: 0,
        macs: 0,
    };
    for &id in &needed {
        let n = graph.node(id);
        if id == graph.input() {
            continue;
        }
        t.nodes += 1;
        t.bytes_written += 4 * n.ty.numel() as u64;
        match n.op {
            // The side result of an accumulating Linear: f64 sums per channel.
            Op::Linear(l) if l.sum_squares => t.bytes_written += 8 * l.out_features as u64,
            Op::GrnScale {
                channels,
                source: GrnSource::ProducerSums,
            } => {
                t.bytes_read += 8 * channels as u64;
                t.macs += n.op.macs(&n.ty);
                continue;
            }
            _ => {}
        }
        t.bytes_read += graph
            .inputs(id)
            .iter()
            .map(|&i| 4 * graph.node(i).ty.numel() as u64 * n.op.operand_passes() as u64)
            .sum::<u64>();
        t.macs += n.op.macs(&n.ty);
    }
    t
}

/// The `cnx graph --stats` table: unfused next to fused.
pub fn traffic_table(unfused: &Graph, fused: &Graph) -> String {
    let (a, b) = (traffic(unfused), traffic(fused));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>14} {:>14} {:>8}",
        "per image, for the logits", "unfused", "fused", "fused/unfused"
    );
    // One row: both values (as counts, or as MiB when `bytes`) and their ratio.
    let mut row = |name: &str, x: u64, y: u64, bytes: bool| {
        let ratio = if x > 0 { y as f64 / x as f64 } else { 0.0 };
        let cell = |v: u64| {
            if bytes {
                format!("{:.2} MiB", v as f64 / (1024.0 * 1024.0))
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(
            out,
            "{name:<34} {:>14} {:>14} {ratio:>8.2}",
            cell(x),
            cell(y)
        );
    };
    row("nodes", a.nodes as u64, b.nodes as u64, false);
    row(
        "activations written",
        a.bytes_written,
        b.bytes_written,
        true,
    );
    row("activations read", a.bytes_read, b.bytes_read, true);
    row("MACs", a.macs, b.macs, false);
    out
}
