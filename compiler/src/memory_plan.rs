//! The static memory plan: which workspace slot holds each value of a graph.
//!
//! Values are visited in evaluation order; each takes the lowest slot free at that point and
//! gives it back after its last user has run (an op's output never shares a slot with a live
//! operand). Every value's size is a multiple of the batch, so one plan serves every batch
//! size: a slot is as large as its largest value, per image. Sums of squares (the side
//! results of linear layers feeding a GRN) are planned the same way in a slot space of their
//! own.
//!
//! Runs of nodes that may run image-parallel ([`image_runs`]) change one thing: a value such a
//! run reads from before it stays live to the run's end, so that no value the run writes
//! shares its slot (each image's copy into its lane and back then touches disjoint regions).

use std::collections::HashMap;
use std::ops::Range;

use crate::ir::{Graph, GraphError, GrnSource, NodeId, Op};

/// Slots for the values of a graph evaluated in `order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Evaluation order (every node the plan covers).
    pub order: Vec<NodeId>,
    /// The values planned for (live to the end).
    pub wanted: Vec<NodeId>,
    /// Each value's slot.
    pub slot: HashMap<NodeId, usize>,
    /// Elements per image of each slot (its largest value).
    pub slot_sizes: Vec<usize>,
    /// The sums slot of each linear layer that accumulates sums of squares.
    pub sums_slot: HashMap<NodeId, usize>,
    pub sums_slots: usize,
    /// The runs of `order` (positions) that may run image-parallel.
    pub image_runs: Vec<Range<usize>>,
}

/// Pixels per image at which a node's work is large enough to run image by image, each image
/// on its own thread with the one-thread kernels, rather than with every op split over the
/// threads. At 224x224: stem, stages 0-2 and the last downsampling (stage 3's 7x7 layers, whose
/// large weights each image would stream again, and the head stay op-parallel). Chosen by
/// measurement (BENCHMARKS.md, "Batches").
pub const MIN_IMAGE_PARALLEL_PIXELS: usize = 196;

/// Whether node `id` may run image-parallel: its value or an operand has at least
/// [`MIN_IMAGE_PARALLEL_PIXELS`] pixels per image.
pub fn image_parallel_node(graph: &Graph, id: NodeId) -> bool {
    std::iter::once(id)
        .chain(graph.inputs(id))
        .any(|n| graph.node(n).ty.pixels() >= MIN_IMAGE_PARALLEL_PIXELS)
}

/// The maximal runs of `order` (positions) whose nodes may run image-parallel (the input,
/// which runs nothing, joins the run after it).
pub fn image_runs(graph: &Graph, order: &[NodeId]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut start = None;
    for (pos, &id) in order.iter().enumerate() {
        let eligible = matches!(graph.node(id).op, Op::Input) || image_parallel_node(graph, id);
        match (eligible, start) {
            (true, None) => start = Some(pos),
            (false, Some(s)) => {
                runs.push(s..pos);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(s..order.len());
    }
    // A run of the input alone runs nothing.
    runs.retain(|r| !(r.len() == 1 && matches!(graph.node(order[r.start]).op, Op::Input)));
    runs
}

impl MemoryPlan {
    /// Plans the nodes `wanted` values depend on (`wanted` stay live to the end).
    pub fn new(graph: &Graph, wanted: &[NodeId]) -> Result<MemoryPlan, GraphError> {
        let needed = graph.needed_for(wanted);
        let order: Vec<NodeId> = graph
            .topo_order()?
            .into_iter()
            .filter(|id| needed.contains(id))
            .collect();
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let image_runs = image_runs(graph, &order);
        let last_use = last_uses(graph, &order, &position, wanted, &image_runs);
        // The values whose last use is at each position.
        let mut expiring: Vec<Vec<NodeId>> = vec![Vec::new(); order.len()];
        for (&id, &last) in &last_use {
            if let Some(e) = expiring.get_mut(last) {
                e.push(id);
            }
        }
        let last_sums_use = last_sums_uses(graph, &order, &position);
        let mut plan = MemoryPlan {
            order: order.clone(),
            wanted: wanted.to_vec(),
            slot: HashMap::new(),
            slot_sizes: Vec::new(),
            sums_slot: HashMap::new(),
            sums_slots: 0,
            image_runs: image_runs.clone(),
        };
        let mut free: Vec<bool> = Vec::new();
        let mut sums_free: Vec<bool> = Vec::new();
        for (pos, &id) in order.iter().enumerate() {
            let size = graph.node(id).ty.numel();
            let s = take_lowest(&mut free);
            if plan.slot_sizes.len() <= s {
                plan.slot_sizes.push(0);
            }
            plan.slot_sizes[s] = plan.slot_sizes[s].max(size);
            plan.slot.insert(id, s);
            if matches!(graph.node(id).op, Op::Linear(l) if l.sum_squares) {
                plan.sums_slot.insert(id, take_lowest(&mut sums_free));
            }
            // Release the values used for the last time here.
            for i in &expiring[pos] {
                free[plan.slot[i]] = true;
            }
            // A producer's sums are read by GRN scales only: free after the last one has run.
            if let Op::GrnScale {
                source: GrnSource::ProducerSums,
                ..
            } = graph.node(id).op
            {
                for i in graph.inputs(id) {
                    if last_sums_use.get(&i) == Some(&pos) {
                        if let Some(&s) = plan.sums_slot.get(&i) {
                            sums_free[s] = true;
                        }
                    }
                }
            }
            // A value nobody reads is dead at once (its slot is still written).
            if !last_use.contains_key(&id) {
                free[s] = true;
            }
        }
        plan.sums_slots = sums_free.len();
        Ok(plan)
    }

    /// Number of value slots.
    pub fn slots(&self) -> usize {
        self.slot_sizes.len()
    }
}

/// The last position of `order` at which each value is read; wanted values are never
/// released (`usize::MAX`), and a value an image-parallel run reads from before it is held to
/// the run's end.
fn last_uses(
    graph: &Graph,
    order: &[NodeId],
    position: &HashMap<NodeId, usize>,
    wanted: &[NodeId],
    image_runs: &[Range<usize>],
) -> HashMap<NodeId, usize> {
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for &id in order {
        for i in graph.inputs(id) {
            last_use.insert(i, position[&id]);
        }
    }
    for w in wanted {
        last_use.insert(*w, usize::MAX);
    }
    for run in image_runs {
        for &id in &order[run.clone()] {
            for i in graph.inputs(id) {
                let before = position[&i] < run.start
                    || (position[&i] == run.start && matches!(graph.node(i).op, Op::Input));
                if before {
                    let last = last_use.entry(i).or_insert(0);
                    *last = (*last).max(run.end - 1);
                }
            }
        }
    }
    last_use
}

/// The last position of `order` at which each producer's sums of squares are read (by a GRN
/// scale).
fn last_sums_uses(
    graph: &Graph,
    order: &[NodeId],
    position: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, usize> {
    let mut last_sums_use: HashMap<NodeId, usize> = HashMap::new();
    for &id in order {
        if let Op::GrnScale {
            source: GrnSource::ProducerSums,
            ..
        } = graph.node(id).op
        {
            for i in graph.inputs(id) {
                last_sums_use.insert(i, position[&id]);
            }
        }
    }
    last_sums_use
}

/// The lowest free slot, marked taken (a new one when none is free).
fn take_lowest(free: &mut Vec<bool>) -> usize {
    match free.iter().position(|&f| f) {
        Some(s) => {
            free[s] = false;
            s
        }
        None => {
            free.push(false);
            free.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::build_graph;
    use crate::config::ConvNextV2Config;
    use crate::ir::outputs;
    use crate::passes::Pipeline;

    #[test]
    fn live_values_never_share_a_slot() {
        let config =
            ConvNextV2Config::from_json(crate::presets::find("atto-1k-224").unwrap().config_json)
                .unwrap();
        for fused in [false, true] {
            let mut graph = build_graph(&config, (64, 48)).unwrap();
            if fused {
                Pipeline::default_pipeline().run(&mut graph).unwrap();
            }
            let logits = graph.output(outputs::LOGITS).unwrap();
            let plan = MemoryPlan::new(&graph, &[logits]).unwrap();
            // Replay: at every op, its output slot holds no value still to be read.
            let mut holder: HashMap<usize, NodeId> = HashMap::new();
            let pos: HashMap<NodeId, usize> = plan
                .order
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, i))
                .collect();
            for (p, &id) in plan.order.iter().enumerate() {
                let s = plan.slot[&id];
                if let Some(prev) = holder.get(&s) {
                    let read_later = plan.order[p..]
                        .iter()
                        .any(|&later| graph.inputs(later).contains(prev));
                    assert!(!read_later, "slot {s} overwritten while live");
                    assert!(pos[prev] < p);
                }
                assert!(plan.slot_sizes[s] >= graph.node(id).ty.numel());
                holder.insert(s, id);
            }
            // Sums: a slot taken by a producer is not taken again before its readers ran.
            let mut sums_holder: HashMap<usize, NodeId> = HashMap::new();
            for &id in &plan.order {
                if let Some(&s) = plan.sums_slot.get(&id) {
                    if let Some(prev) = sums_holder.insert(s, id) {
                        let readers_left = plan.order[pos[&id]..].iter().any(|&later| {
                            matches!(
                                graph.node(later).op,
                                Op::GrnScale {
                                    source: GrnSource::ProducerSums,
                                    ..
                                }
                            ) && graph.inputs(later).contains(&prev)
                        });
                        assert!(!readers_left, "sums slot {s} overwritten while live");
                    }
                }
            }
            assert!(
                !fused || plan.sums_slots <= 2,
                "{} sums slots",
                plan.sums_slots
            );
            // A block needs a handful of slots, not one per value.
            assert!(plan.slots() <= 6, "{} slots", plan.slots());
            assert!(plan.order.len() > 20);
        }
    }
}
