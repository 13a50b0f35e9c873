//! The interpreter: runs any graph op by op with the runtime's ops (`cnx_runtime::ops`, the
//! same functions the generated code calls).
//!
//! Values are batch-first in the layout their type names (NCHW, NHWC or `[N, C]`). Ops whose
//! weights were prepared at load run the optimised kernels; the others, and every op of a model
//! loaded with reference kernels, run the plain loops (the oracle every backend and pass is
//! tested against). Deterministic: fixed summation orders, whatever the thread count. A value
//! is freed as soon as its last user has run, unless it is a requested output.

use std::collections::BTreeMap;

use cnx_runtime::kernels::reference as k;
use cnx_runtime::kernels::{ActivationKernel, PreparedWeights};
use cnx_runtime::ops::{self, ConvParams, LinearParams};
use cnx_runtime::{pool, Tensor, WeightSource};

use crate::ir::{Graph, NodeId, Op, ValueType};

/// Why a run could not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error(
        "pixel_values: expected shape (batch, {channels}, {height}, {width}), found {found:?}"
    )]
    InputShape {
        channels: usize,
        height: usize,
        width: usize,
        found: Vec<usize>,
    },
    #[error("batch size must be at least 1")]
    EmptyBatch,
    #[error("weight `{0}` is not loaded")]
    MissingWeight(String),
    #[error("output `{0}` does not exist in this graph")]
    UnknownOutput(String),
    #[error("{0}")]
    Graph(String),
}

/// The batch size of `pixel_values`, checked against `graph`'s input type (every backend
/// checks its input with this before running anything).
pub fn check_input(graph: &Graph, pixel_values: &Tensor) -> Result<usize, RunError> {
    let input_ty = graph.input_type();
    let shape = pixel_values.shape();
    if shape.len() != 4 || shape[1..] != input_ty.dims()[..] {
        return Err(RunError::InputShape {
            channels: input_ty.channels,
            height: input_ty.height,
            width: input_ty.width,
            found: shape.to_vec(),
        });
    }
    let batch = shape[0];
    if batch == 0 {
        return Err(RunError::EmptyBatch);
    }
    Ok(batch)
}

/// Shape of a batch of values of type `ty`.
pub fn batch_shape(batch: usize, ty: &ValueType) -> Vec<usize> {
    std::iter::once(batch).chain(ty.dims()).collect()
}

/// Runs `graph` on `pixel_values` (NCHW, any batch) and returns the requested outputs by name.
pub fn run(
    graph: &Graph,
    weights: &(dyn WeightSource + Sync),
    pixel_values: &Tensor,
    wanted: &[&str],
) -> Result<BTreeMap<String, Tensor>, RunError> {
    run_threaded(graph, weights, pixel_values, wanted, 1)
}

/// [`run`] on the runtime's pool of `threads` threads (created once per count). Each element
/// is computed exactly as on one thread, so results do not depend on `threads`.
pub fn run_threaded(
    graph: &Graph,
    weights: &(dyn WeightSource + Sync),
    pixel_values: &Tensor,
    wanted: &[&str],
    threads: usize,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    run_profiled(graph, weights, pixel_values, wanted, threads, None)
}

/// [`run_threaded`] that also records each node's wall time (in evaluation order).
pub fn run_profiled(
    graph: &Graph,
    weights: &(dyn WeightSource + Sync),
    pixel_values: &Tensor,
    wanted: &[&str],
    threads: usize,
    profile: Option<&mut Vec<(NodeId, std::time::Duration)>>,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    pool::install(threads, || {
        run_on_pool(graph, weights, pixel_values, wanted, profile)
    })
}

fn run_on_pool(
    graph: &Graph,
    weights: &(dyn WeightSource + Sync),
    pixel_values: &Tensor,
    wanted: &[&str],
    mut profile: Option<&mut Vec<(NodeId, std::time::Duration)>>,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    let batch = check_input(graph, pixel_values)?;
    let mut keep: Vec<NodeId> = Vec::new();
    for name in wanted {
        keep.push(
            graph
                .output(name)
                .ok_or_else(|| RunError::UnknownOutput(name.to_string()))?,
        );
    }
    let order = graph.topo_order().map_err(RunError::Graph)?;
    let mut remaining_users: BTreeMap<NodeId, usize> = order
        .iter()
        .map(|&id| (id, graph.users(id).len()))
        .collect();
    let mut values: BTreeMap<NodeId, Tensor> = BTreeMap::new();
    // Side results: sums of squares accumulated by Linear epilogues, by producer.
    let mut sums: BTreeMap<NodeId, Vec<f64>> = BTreeMap::new();
    for id in order {
        let inputs = graph.inputs(id);
        let value = {
            let operands: Vec<&Tensor> = inputs.iter().map(|i| &values[i]).collect();
            if matches!(graph.node(id).op, Op::Input) {
                pixel_values.clone()
            } else {
                let start = std::time::Instant::now();
                let (value, side) = eval(graph, id, weights, batch, &operands, &sums)?;
                if let Some(p) = profile.as_deref_mut() {
                    p.push((id, start.elapsed()));
                }
                if let Some(side) = side {
                    sums.insert(id, side);
                }
                value
            }
        };
        values.insert(id, value);
        for i in inputs {
            let left = remaining_users.get_mut(&i).expect("every node counted");
            *left -= 1;
            if *left == 0 && !keep.contains(&i) {
                values.remove(&i);
            }
        }
    }
    Ok(wanted
        .iter()
        .zip(keep)
        .map(|(name, id)| (name.to_string(), values[&id].clone()))
        .collect())
}

/// Evaluates one node into a new tensor (and its sums of squares, if it accumulates them).
fn eval(
    graph: &Graph,
    id: NodeId,
    weights: &dyn WeightSource,
    batch: usize,
    operands: &[&Tensor],
    sums: &BTreeMap<NodeId, Vec<f64>>,
) -> Result<(Tensor, Option<Vec<f64>>), RunError> {
    let node = graph.node(id);
    let mut out = Tensor::zeros(&batch_shape(batch, &node.ty));
    let mut side = match node.op {
        Op::Linear(l) if l.sum_squares => Some(vec![0f64; batch * l.out_features]),
        _ => None,
    };
    let producer_sums = match node.op {
        Op::GrnScale {
            source: crate::ir::GrnSource::ProducerSums,
            ..
        } => {
            let producer = graph.inputs(id)[0];
            sums.get(&producer).ok_or_else(|| {
                RunError::Graph(format!(
                    "`{}` accumulated no sums",
                    graph.node(producer).name
                ))
            })?
        }
        _ => &[][..],
    };
    let operands: Vec<&[f32]> = operands.iter().map(|t| t.data()).collect();
    execute(
        graph,
        id,
        weights,
        batch,
        &operands,
        producer_sums,
        out.data_mut(),
        side.as_deref_mut(),
        None,
    )?;
    Ok((out, side))
}

/// Runs node `id` of `graph` on batch-first `operands`, writing its value to `out`; a linear
/// layer that accumulates sums of squares writes them to `sums_out` (`batch x out_features`),
/// a GRN scale reading its producer's sums gets them in `producer_sums`; `activation_kernel`
/// replaces the runtime's kernel for a linear layer's activation. The one op
/// dispatcher: the interpreter and the JIT's calls into the runtime both use it.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    graph: &Graph,
    id: NodeId,
    weights: &dyn WeightSource,
    batch: usize,
    operands: &[&[f32]],
    producer_sums: &[f64],
    y: &mut [f32],
    sums_out: Option<&mut [f64]>,
    activation_kernel: Option<ActivationKernel>,
) -> Result<(), RunError> {
    let node = graph.node(id);
    let param = |role: &str| -> Result<&[f32], RunError> {
        let p = node
            .param(role)
            .ok_or_else(|| RunError::Graph(format!("`{}` has no {role}", node.name)))?;
        weights
            .tensor(&p.name)
            .ok_or_else(|| RunError::MissingWeight(p.name.clone()))
    };
    // A LayerNorm's gamma and beta, when it has them.
    let affine =
        |present: bool, gamma: &str, beta: &str| -> Result<Option<k::Affine<'_>>, RunError> {
            if !present {
                return Ok(None);
            }
            Ok(Some(k::Affine {
                gamma: param(gamma)?,
                beta: param(beta)?,
            }))
        };
    let prepared = node.param("weight").and_then(|p| weights.prepared(&p.name));
    let in_ty = graph.inputs(id).first().map(|&i| graph.node(i).ty);
    let operand_ty =
        || in_ty.ok_or_else(|| RunError::Graph(format!("`{}` has no operand", node.name)));
    let x = operands.first().copied().unwrap_or(&[]);
    let out_ty = node.ty;
    match node.op {
        Op::Input => unreachable!("the input is bound, not evaluated"),
        Op::Conv2d(c) => {
            let p = ConvParams {
                weight: param("weight")?,
                bias: param("bias")?,
                norm: match c.output_norm {
                    Some(n) => affine(n.affine, "norm_weight", "norm_bias")?,
                    None => None,
                },
                prepared,
            };
            ops::conv2d(&c, &operand_ty()?, &out_ty, batch, p, x, y);
        }
        Op::LayerNorm(ln) => {
            let affine = affine(ln.affine, "weight", "bias")?;
            ops::layer_norm(&ln, &out_ty, batch, affine, x, y);
        }
        Op::Linear(l) => {
            let p = LinearParams {
                weight: param("weight")?,
                bias: param("bias")?,
                packed: match prepared {
                    Some(PreparedWeights::Gemm(w)) => Some(w),
                    _ => None,
                },
                activation_kernel,
            };
            let scale = l.input_scale.then(|| operands[1]);
            let residual = l.residual.then(|| operands[operands.len() - 1]);
            let sums = if l.sum_squares { sums_out } else { None };
            ops::linear(&l, out_ty.pixels(), batch, p, x, scale, residual, y, sums);
        }
        Op::Activation(act) => match activation_kernel {
            Some(kernel) => {
                y.copy_from_slice(x);
                kernel.apply(y);
            }
            None => ops::activation(act, x, y),
        },
        Op::Grn { channels } => ops::grn(
            channels,
            &out_ty,
            batch,
            param("weight")?,
            param("bias")?,
            x,
            y,
        ),
        Op::GrnScale { channels, source } => {
            let t = operand_ty()?;
            ops::grn_scale(
                channels,
                source,
                &t,
                batch,
                param("weight")?,
                x,
                producer_sums,
                y,
            );
        }
        Op::Add => ops::add(x, operands[1], y),
        Op::GlobalAvgPool => ops::global_avg_pool(&operand_ty()?, batch, x, y),
        Op::PoolNormLinear {
            channels,
            classes,
            eps,
        } => {
            let (w, b) = (param("weight")?, param("bias")?);
            ops::pool_norm_linear(channels, classes, eps, &operand_ty()?, batch, w, b, x, y);
        }
        Op::Permute(p) => ops::permute(p, &out_ty, batch, x, y),
    }
    Ok(())
}
