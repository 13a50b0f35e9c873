//! Lowering: an optimised graph and its memory plan become a [`Program`], the flat list of
//! steps every backend runs (the interpreter steps through it, the JIT compiles it, the
//! `convnextv2!` macro emits it).
//!
//! `Binder::bind` is the one place that knows how each op binds its operands: which parameter
//! is a convolution's `weight` or its output norm's `gamma`, which operand of a linear layer is
//! its per-sample scale and which its residual, which sums slot a GRN scale reads. After
//! lowering nothing is looked up by name: parameters are indices into the weight table, values
//! are workspace slots.

use std::collections::HashMap;

use cnx_runtime::compiled::{Prepare, WeightSlot};
use cnx_runtime::program::{AffineParams, Phase, Program, ProgramOutput, Step, StepOp, Value};
use cnx_runtime::weights::derive::ParamSpec;

use crate::ir::{Graph, GraphError, GrnSource, NodeId, Op};
use crate::memory_plan::MemoryPlan;

/// The graph does not fit its plan or its ops' parameter lists: a compiler bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error("lowering: `{node}` has no {role}")]
    MissingParam { node: String, role: &'static str },
    #[error("lowering: `{node}` is not in the memory plan")]
    Unplanned { node: String },
    #[error("lowering: `{producer}` accumulates no sums for `{node}`")]
    NoSums { node: String, producer: String },
    #[error("lowering: the graph has no output `{0}`")]
    UnknownOutput(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The weight table of `graph`: every parameter of every node, in topological order, each
/// once (by name), with the preparation its kernel wants; and each name's index. Every
/// program lowered from `graph` indexes this table, so one loaded copy serves them all.
pub fn weight_table(
    graph: &Graph,
) -> Result<(Vec<WeightSlot>, HashMap<String, usize>), LowerError> {
    let mut slots = Vec::new();
    let mut index = HashMap::new();
    for id in graph.topo_order()? {
        let node = graph.node(id);
        for p in &node.params {
            if index.contains_key(&p.name) {
                continue;
            }
            let prepare = match (p.role, &node.op) {
                ("weight", Op::Linear(l)) => Prepare::Linear(*l),
                ("weight", Op::Conv2d(c)) => Prepare::Conv(*c),
                _ => Prepare::Plain,
            };
            index.insert(p.name.clone(), slots.len());
            slots.push(WeightSlot {
                param: ParamSpec::of(p),
                prepare,
            });
        }
    }
    Ok((slots, index))
}

/// Lowers the nodes `plan` covers, in its order; the program's outputs are the graph's named
/// outputs among the plan's wanted values.
pub fn lower(graph: &Graph, plan: &MemoryPlan) -> Result<Program, LowerError> {
    let (weights, index) = weight_table(graph)?;
    let binder = Binder { graph, plan, index };
    let mut steps = Vec::new();
    // The first step at or after each position of the order.
    let mut step_at = Vec::with_capacity(plan.order.len() + 1);
    for &id in &plan.order {
        step_at.push(steps.len());
        let Some(op) = binder.bind(id)? else {
            continue;
        };
        let node = graph.node(id);
        steps.push(Step {
            name: node.name.clone().into(),
            op,
            out: binder.value(id)?,
            out_ty: node.ty,
        });
    }
    let mut outputs = Vec::new();
    for (name, id) in graph.outputs() {
        if plan.wanted.contains(id) {
            outputs.push(ProgramOutput {
                name: name.clone(),
                value: binder.value(*id)?,
                ty: graph.node(*id).ty,
            });
        }
    }
    step_at.push(steps.len());
    let image_runs: Vec<std::ops::Range<usize>> = plan
        .image_runs
        .iter()
        .map(|r| step_at[r.start]..step_at[r.end])
        .filter(|r| !r.is_empty())
        .collect();
    let cuts: Vec<usize> = image_runs.iter().flat_map(|r| [r.start, r.end]).collect();
    let mut sums_sizes = vec![0; plan.sums_slots];
    for (&producer, &s) in &plan.sums_slot {
        if let Op::Linear(l) = graph.node(producer).op {
            sums_sizes[s] = sums_sizes[s].max(l.out_features);
        }
    }
    let mut program = Program {
        input: graph.input_type(),
        input_value: binder.value(graph.input())?,
        slot_sizes: plan.slot_sizes.clone(),
        sums_sizes,
        weights,
        steps,
        phases: Vec::new(),
        outputs,
    };
    program.phases = Phase::cut(&program, &cuts, |r| image_runs.contains(&r));
    Ok(program)
}

/// Binds nodes to the weight table and the memory plan.
struct Binder<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    /// Each parameter's index in the weight table, by name.
    index: HashMap<String, usize>,
}

impl Binder<'_> {
    /// The workspace value of node `id`.
    fn value(&self, id: NodeId) -> Result<Value, LowerError> {
        let slot = *self
            .plan
            .slot
            .get(&id)
            .ok_or_else(|| LowerError::Unplanned {
                node: self.graph.node(id).name.clone(),
            })?;
        Ok(Value {
            slot,
            len: self.graph.node(id).ty.numel(),
        })
    }

    /// The weight-table index of node `id`'s parameter `role`.
    fn param(&self, id: NodeId, role: &'static str) -> Result<usize, LowerError> {
        let node = self.graph.node(id);
        node.param(role)
            .map(|p| self.index[&p.name])
            .ok_or_else(|| LowerError::MissingParam {
                node: node.name.clone(),
                role,
            })
    }

    /// A LayerNorm's gamma and beta, when `present`.
    fn affine(
        &self,
        id: NodeId,
        present: bool,
        (gamma, beta): (&'static str, &'static str),
    ) -> Result<Option<AffineParams>, LowerError> {
        if !present {
            return Ok(None);
        }
        Ok(Some(AffineParams {
            gamma: self.param(id, gamma)?,
            beta: self.param(id, beta)?,
        }))
    }

    /// The sums slot `producer` accumulates into, for `id` to read or write.
    fn sums(&self, id: NodeId, producer: NodeId) -> Result<usize, LowerError> {
        self.plan
            .sums_slot
            .get(&producer)
            .copied()
            .ok_or_else(|| LowerError::NoSums {
                node: self.graph.node(id).name.clone(),
                producer: self.graph.node(producer).name.clone(),
            })
    }

    /// Node `id`'s op with its operands and parameters bound (`None`: the input, which is
    /// copied in, not computed). Every binding of every op is here.
    fn bind(&self, id: NodeId) -> Result<Option<StepOp>, LowerError> {
        let node = self.graph.node(id);
        let inputs = self.graph.inputs(id);
        let operand = |k: usize| self.value(inputs[k]);
        let input = || self.graph.node(inputs[0]).ty;
        let param = |role| self.param(id, role);
        Ok(Some(match node.op {
            Op::Input => return Ok(None),
            Op::Conv2d(conv) => StepOp::Conv2d {
                conv,
                input: input(),
                x: operand(0)?,
                weight: param("weight")?,
                bias: param("bias")?,
                norm: self.affine(
                    id,
                    conv.output_norm.is_some_and(|n| n.affine),
                    ("norm_weight", "norm_bias"),
                )?,
            },
            Op::LayerNorm(norm) => StepOp::LayerNorm {
                norm,
                x: operand(0)?,
                affine: self.affine(id, norm.affine, ("weight", "bias"))?,
            },
            // Operands: the input, then the scale if any, then the residual if any.
            Op::Linear(linear) => StepOp::Linear {
                linear,
                x: operand(0)?,
                scale: linear.input_scale.then(|| operand(1)).transpose()?,
                residual: linear
                    .residual
                    .then(|| operand(inputs.len() - 1))
                    .transpose()?,
                weight: param("weight")?,
                bias: param("bias")?,
                sums: linear.sum_squares.then(|| self.sums(id, id)).transpose()?,
            },
            Op::Activation(activation) => StepOp::Activation {
                activation,
                x: operand(0)?,
            },
            Op::Grn { channels } => StepOp::Grn {
                channels,
                x: operand(0)?,
                gamma: param("weight")?,
                beta: param("bias")?,
            },
            Op::GrnScale { channels, source } => StepOp::GrnScale {
                channels,
                input: input(),
                x: operand(0)?,
                gamma: param("weight")?,
                sums: match source {
                    GrnSource::Values => None,
                    GrnSource::ProducerSums => Some(self.sums(id, inputs[0])?),
                },
            },
            Op::Add => StepOp::Add {
                a: operand(0)?,
                b: operand(1)?,
            },
            Op::GlobalAvgPool => StepOp::GlobalAvgPool {
                input: input(),
                x: operand(0)?,
            },
            Op::PoolNormLinear {
                channels,
                classes,
                eps,
            } => StepOp::PoolNormLinear {
                channels,
                classes,
                eps,
                input: input(),
                x: operand(0)?,
                weight: param("weight")?,
                bias: param("bias")?,
            },
            Op::Permute(permute) => StepOp::Permute {
                permute,
                x: operand(0)?,
            },
        }))
    }
}

/// The program computing the graph outputs `names` (e.g. `["logits"]`): planned and lowered.
pub fn lower_outputs(graph: &Graph, names: &[&str]) -> Result<Program, LowerError> {
    let wanted = names
        .iter()
        .map(|n| {
            graph
                .output(n)
                .ok_or_else(|| LowerError::UnknownOutput(n.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    lower(graph, &MemoryPlan::new(graph, &wanted)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::build_graph;
    use crate::config::ConvNextV2Config;
    use crate::passes::Pipeline;

    fn atto(fused: bool) -> Graph {
        let config =
            ConvNextV2Config::from_json(crate::presets::find("atto-1k-224").unwrap().config_json)
                .unwrap();
        let mut graph = build_graph(&config, (64, 48)).unwrap();
        if fused {
            Pipeline::default_pipeline().run(&mut graph).unwrap();
        }
        graph
    }

    /// pwconv1's bias is bound once, here, to its slot of the weight table.
    #[test]
    fn every_parameter_is_bound_to_its_role() {
        let graph = atto(true);
        let program = lower_outputs(&graph, &["logits"]).unwrap();
        let step = program
            .steps
            .iter()
            .find(|s| s.name == "convnextv2.encoder.stages.1.layers.0.pwconv1")
            .unwrap();
        let StepOp::Linear {
            bias, weight, sums, ..
        } = step.op
        else {
            panic!("pwconv1 lowers to a linear step: {step}");
        };
        let node = graph.node(graph.find(&step.name).unwrap());
        assert_eq!(
            program.weights[bias].param.name,
            node.param("bias").unwrap().name
        );
        assert_eq!(
            program.weights[weight].param.name,
            node.param("weight").unwrap().name
        );
        assert!(matches!(
            program.weights[weight].prepare,
            Prepare::Linear(_)
        ));
        // The fused pwconv1 accumulates GRN's sums, which the next step reads.
        let sums = sums.expect("GRN sums in pwconv1's epilogue");
        let next = program
            .steps
            .iter()
            .find(|s| s.name == "convnextv2.encoder.stages.1.layers.0.grn")
            .unwrap();
        assert!(matches!(next.op, StepOp::GrnScale { sums: Some(s), .. } if s == sums));
    }

    /// Every step reads values some earlier step (or the input) wrote, and never its own slot.
    #[test]
    fn steps_read_what_earlier_steps_wrote() {
        for fused in [false, true] {
            let graph = atto(fused);
            let program = lower_outputs(&graph, &["logits", "pooler_output"]).unwrap();
            let mut written = vec![program.input_value];
            for step in &program.steps {
                for v in step.operands().iter() {
                    assert!(
                        written.contains(&v),
                        "{step}: reads {v} before it is written"
                    );
                    assert_ne!(
                        v.slot, step.out.slot,
                        "{step}: output overwrites an operand"
                    );
                }
                // A slot being rewritten no longer holds its old value.
                written.retain(|w| w.slot != step.out.slot);
                written.push(step.out);
            }
            for o in &program.outputs {
                assert!(written.contains(&o.value), "output {} is not live", o.name);
            }
            assert!(
                program.output("logits").is_some() && program.output("pooler_output").is_some()
            );
        }
    }

    /// At 224x224 the image-parallel phase runs from the input to stage 3's downsampling (its
    /// input has 14x14 pixels) and stage 3 and the head run op-parallel; no step of an
    /// image-parallel phase writes the slot of a value the phase reads from before it (the
    /// lanes copy those in while other images' results are copied out).
    #[test]
    fn the_image_parallel_phase_ends_before_stage_3s_layers_and_keeps_its_inputs() {
        let config =
            ConvNextV2Config::from_json(crate::presets::find("tiny-1k-224").unwrap().config_json)
                .unwrap();
        for fused in [false, true] {
            let mut graph = build_graph(&config, (224, 224)).unwrap();
            if fused {
                Pipeline::default_pipeline().run(&mut graph).unwrap();
            }
            let program = lower_outputs(&graph, &["logits", "pooler_output"]).unwrap();
            program.validate().unwrap();
            let kinds: Vec<bool> = program.phases.iter().map(|p| p.images).collect();
            assert_eq!(kinds, [true, false], "{program}");
            let first = &program.phases[0];
            assert_eq!(first.steps.start, 0);
            assert_eq!(&first.live_in[..], &[program.input_value]);
            let next = &program.steps[first.steps.end].name;
            assert_eq!(
                next, "convnextv2.encoder.stages.3.layers.0.dwconv",
                "{program}"
            );
            for step in &program.steps[first.steps.clone()] {
                assert!(
                    first.live_in.iter().all(|v| v.slot != step.out.slot),
                    "{step} overwrites the phase's input"
                );
            }
            assert!(first
                .live_out
                .iter()
                .all(|v| first.live_in[0].slot != v.slot));
        }
    }

    /// `validate` refuses phases that do not cover the steps, and live values that share a
    /// slot or are not the ones the phase's steps read and leave.
    #[test]
    fn validate_refuses_phases_the_lanes_could_not_run() {
        let graph = atto(true);
        let program = lower_outputs(&graph, &["logits"]).unwrap();
        program.validate().unwrap();
        let image = program.phases.iter().position(|p| p.images).unwrap();
        let mut shared = program.clone();
        let v = shared.phases[image].live_in[0];
        shared.phases[image].live_out.to_mut().push(v);
        assert!(shared.validate().unwrap_err().reason.contains("share slot"));
        let mut missing = program.clone();
        missing.phases[image].live_in.to_mut().clear();
        assert!(missing
            .validate()
            .unwrap_err()
            .reason
            .contains("live values"));
        let mut gap = program.clone();
        gap.phases.pop();
        assert!(gap.validate().is_err());
    }
}
