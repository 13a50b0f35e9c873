//! The reference interpreter: runs any graph op by op with the runtime's reference kernels.
//!
//! Values are batch-first in the layout their type names (NCHW, NHWC or `[N, C]`). Clarity
//! beats speed here: this is the oracle every later backend and pass is tested against. It is
//! deterministic (single-threaded, fixed summation order). A value is freed as soon as its last
//! user has run, unless it is a requested output.

use std::collections::BTreeMap;

use convnextv2::kernels::reference as k;
use convnextv2::{Tensor, WeightSource};

use crate::ir::{Graph, Layout, NodeId, NormAxis, Op, Permute, ValueType};

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

/// Shape of a batch of values of type `ty`.
pub fn batch_shape(batch: usize, ty: &ValueType) -> Vec<usize> {
    std::iter::once(batch).chain(ty.dims()).collect()
}

/// Runs `graph` on `pixel_values` (NCHW, any batch) and returns the requested outputs by name.
pub fn run(
    graph: &Graph,
    weights: &dyn WeightSource,
    pixel_values: &Tensor,
    wanted: &[&str],
) -> Result<BTreeMap<String, Tensor>, RunError> {
    run_threaded(graph, weights, pixel_values, wanted, 1)
}

/// [`run`] with the linear layers (the bulk of the work) split by rows over `threads` scoped
/// threads. Each row is computed exactly as on one thread, so results do not depend on
/// `threads`.
pub fn run_threaded(
    graph: &Graph,
    weights: &dyn WeightSource,
    pixel_values: &Tensor,
    wanted: &[&str],
    threads: usize,
) -> Result<BTreeMap<String, Tensor>, RunError> {
    let threads = threads.max(1);
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
    for id in order {
        let inputs = graph.inputs(id);
        let value = {
            let operands: Vec<&Tensor> = inputs.iter().map(|i| &values[i]).collect();
            if matches!(graph.node(id).op, Op::Input) {
                pixel_values.clone()
            } else {
                eval(graph, id, weights, batch, &operands, threads)?
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

/// Evaluates one node.
fn eval(
    graph: &Graph,
    id: NodeId,
    weights: &dyn WeightSource,
    batch: usize,
    operands: &[&Tensor],
    threads: usize,
) -> Result<Tensor, RunError> {
    let node = graph.node(id);
    let param = |role: &str| -> Result<&[f32], RunError> {
        let p = node
            .param(role)
            .ok_or_else(|| RunError::Graph(format!("`{}` has no {role}", node.name)))?;
        weights
            .tensor(&p.name)
            .ok_or_else(|| RunError::MissingWeight(p.name.clone()))
    };
    let in_ty = graph.inputs(id).first().map(|&i| graph.node(i).ty);
    let out_ty = node.ty;
    let mut out = Tensor::zeros(&batch_shape(batch, &out_ty));
    match node.op {
        Op::Input => unreachable!("the input is bound, not evaluated"),
        Op::Conv2d(c) => {
            let t = in_ty.expect("conv has an operand");
            let geometry = k::Conv2dGeometry {
                batch,
                in_channels: c.in_channels,
                in_h: t.height,
                in_w: t.width,
                out_channels: c.out_channels,
                kernel_h: c.kernel[0],
                kernel_w: c.kernel[1],
                stride_h: c.stride[0],
                stride_w: c.stride[1],
                pad_h: c.padding[0],
                pad_w: c.padding[1],
                groups: c.groups,
            };
            k::conv2d_nchw(
                &geometry,
                operands[0].data(),
                param("weight")?,
                Some(param("bias")?),
                out.data_mut(),
            );
        }
        Op::LayerNorm(ln) => {
            let affine = Some(k::Affine {
                gamma: param("weight")?,
                beta: param("bias")?,
            });
            match ln.axis {
                NormAxis::ChannelsFirst => k::layer_norm_channels_first(
                    operands[0].data(),
                    batch,
                    ln.channels,
                    out_ty.pixels(),
                    affine,
                    ln.eps,
                    out.data_mut(),
                ),
                NormAxis::ChannelsLast => k::layer_norm_last_axis(
                    operands[0].data(),
                    ln.channels,
                    affine,
                    ln.eps,
                    out.data_mut(),
                ),
            }
        }
        Op::Linear(l) => {
            let (weight, bias) = (param("weight")?, param("bias")?);
            let rows = batch * out_ty.pixels();
            let rows_per_thread = rows.div_ceil(threads);
            let inputs = operands[0].data().chunks(rows_per_thread * l.in_features);
            let outputs = out.data_mut().chunks_mut(rows_per_thread * l.out_features);
            std::thread::scope(|scope| {
                for (x, y) in inputs.zip(outputs) {
                    let rows = x.len() / l.in_features;
                    scope.spawn(move || {
                        k::linear(
                            x,
                            rows,
                            l.in_features,
                            weight,
                            Some(bias),
                            l.out_features,
                            y,
                        )
                    });
                }
            });
        }
        Op::Activation(act) => {
            out.data_mut().copy_from_slice(operands[0].data());
            k::activation(act, out.data_mut());
        }
        Op::Grn { channels } => k::grn_channels_last(
            operands[0].data(),
            batch,
            out_ty.pixels(),
            channels,
            param("weight")?,
            param("bias")?,
            out.data_mut(),
        ),
        Op::Add => {
            for ((o, a), b) in out
                .data_mut()
                .iter_mut()
                .zip(operands[0].data())
                .zip(operands[1].data())
            {
                *o = a + b;
            }
        }
        Op::GlobalAvgPool => {
            let t = in_ty.expect("pool has an operand");
            debug_assert_eq!(t.layout, Layout::Nchw);
            let pooled = k::global_avg_pool_nchw(operands[0].data(), batch, t.channels, t.pixels());
            out.data_mut().copy_from_slice(&pooled);
        }
        Op::Permute(p) => {
            let (a, b) = match p {
                Permute::NchwToNhwc => (out_ty.channels, out_ty.pixels()),
                Permute::NhwcToNchw => (out_ty.pixels(), out_ty.channels),
            };
            k::transpose_inner(operands[0].data(), batch, a, b, out.data_mut());
        }
    }
    Ok(out)
}
