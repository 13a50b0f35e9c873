//! The reference interpreter: runs any graph op by op with the runtime's reference kernels.
//!
//! Values are batch-first in the layout their type names (NCHW, NHWC or `[N, C]`). Clarity
//! beats speed here: this is the oracle every later backend and pass is tested against. It is
//! deterministic (single-threaded, fixed summation order). A value is freed as soon as its last
//! user has run, unless it is a requested output.

use std::collections::BTreeMap;

use convnextv2::kernels::reference as k;
use convnextv2::kernels::{conv, gemm, PreparedWeights};
use convnextv2::{Tensor, WeightSource};

use crate::ir::{Graph, GrnSource, Layout, Linear, NodeId, NormAxis, Op, Permute, ValueType};

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
    run_profiled(graph, weights, pixel_values, wanted, threads, None)
}

/// [`run_threaded`] that also records each node's wall time (in evaluation order).
pub fn run_profiled(
    graph: &Graph,
    weights: &dyn WeightSource,
    pixel_values: &Tensor,
    wanted: &[&str],
    threads: usize,
    mut profile: Option<&mut Vec<(NodeId, std::time::Duration)>>,
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
                let (value, side) = eval(graph, id, weights, batch, &operands, &sums, threads)?;
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

/// Evaluates one node.
fn eval(
    graph: &Graph,
    id: NodeId,
    weights: &dyn WeightSource,
    batch: usize,
    operands: &[&Tensor],
    sums: &BTreeMap<NodeId, Vec<f64>>,
    threads: usize,
) -> Result<(Tensor, Option<Vec<f64>>), RunError> {
    let mut side = None;
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
            let prepared = node.param("weight").and_then(|p| weights.prepared(&p.name));
            if let (Some(prepared), Layout::Nhwc) = (prepared, c.layout) {
                let bias = param("bias")?;
                let norm = match c.output_norm {
                    Some(n) => Some(conv::PixelNorm {
                        eps: n.eps,
                        affine: affine(n.affine, "norm_weight", "norm_bias")?,
                    }),
                    None => None,
                };
                let x = operands[0].data();
                let row_len = out_ty.width * out_ty.channels;
                let rows = batch * out_ty.height;
                let per_thread = rows.div_ceil(threads);
                std::thread::scope(|scope| {
                    for (chunk, dst) in out.data_mut().chunks_mut(per_thread * row_len).enumerate()
                    {
                        let range = chunk * per_thread..chunk * per_thread + dst.len() / row_len;
                        let geometry = &geometry;
                        scope.spawn(move || match prepared {
                            PreparedWeights::Depthwise(w) => {
                                conv::depthwise_nhwc(geometry, x, w, bias, norm, range, dst)
                            }
                            PreparedWeights::Gemm(w) => conv::patch_conv_nhwc(
                                geometry,
                                x,
                                w,
                                bias,
                                c.input_norm,
                                norm,
                                range,
                                dst,
                            ),
                        });
                    }
                });
                return Ok((out, side));
            }
            // Prologue: normalise the input pixels (a copy: the reference keeps it plain).
            let normalised;
            let input = match c.input_norm {
                None => operands[0].data(),
                Some(eps) => {
                    let mut x = vec![0.0; operands[0].len()];
                    normalize_channels(operands[0].data(), &t, batch, None, eps, &mut x);
                    normalised = x;
                    &normalised
                }
            };
            let (weight, bias) = (param("weight")?, Some(param("bias")?));
            match c.layout {
                Layout::Nchw => k::conv2d_nchw(&geometry, input, weight, bias, out.data_mut()),
                Layout::Nhwc => k::conv2d_nhwc(&geometry, input, weight, bias, out.data_mut()),
                Layout::Features => return Err(RunError::Graph("conv on features".into())),
            }
            // Epilogue: LayerNorm of every output pixel.
            if let Some(norm) = c.output_norm {
                let affine = affine(norm.affine, "norm_weight", "norm_bias")?;
                let conv_out = out.data().to_vec();
                normalize_channels(&conv_out, &out_ty, batch, affine, norm.eps, out.data_mut());
            }
        }
        Op::LayerNorm(ln) => {
            let affine = affine(ln.affine, "weight", "bias")?;
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
            // Packed at load: the optimised GEMM; otherwise the reference loops.
            let packed = match node.param("weight").and_then(|p| weights.prepared(&p.name)) {
                Some(PreparedWeights::Gemm(w)) => Some(w),
                _ => None,
            };
            let scale = l.input_scale.then(|| operands[1].data());
            let residual = l.residual.then(|| operands[operands.len() - 1].data());
            let job = LinearJob {
                l,
                x: operands[0].data(),
                weight,
                bias,
                packed,
                scale,
                residual,
                pixels: out_ty.pixels(),
            };
            let rows = batch * out_ty.pixels();
            // Few rows (late stages at small batch): split the output columns over threads
            // instead of the rows; every element is computed exactly as in the row split.
            match packed {
                Some(w) if threads > 1 && rows < 2 * threads * gemm::MC => {
                    job.by_columns(w, rows, threads, out.data_mut())
                }
                _ => job.by_rows(rows, threads, out.data_mut()),
            }
            if l.sum_squares {
                // Fixed segments (64-row blocks and sample boundaries), summed in order: the
                // same bits whatever the split (see `k::sum_squares_partials`).
                let n = l.out_features;
                let partials = k::sum_squares_partials(out.data(), 0, out_ty.pixels(), n);
                side = Some(k::combine_sum_squares(&partials, batch, n));
            }
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
        Op::GrnScale { channels, source } => {
            let t = in_ty.expect("GrnScale has an operand");
            let s = match source {
                GrnSource::Values => k::grn_scale_channels_last(
                    operands[0].data(),
                    batch,
                    t.pixels(),
                    channels,
                    param("weight")?,
                ),
                GrnSource::ProducerSums => {
                    let producer = graph.inputs(id)[0];
                    let sums = sums.get(&producer).ok_or_else(|| {
                        RunError::Graph(format!(
                            "`{}` accumulated no sums",
                            graph.node(producer).name
                        ))
                    })?;
                    k::grn_scale_from_sums(sums, channels, param("weight")?)
                }
            };
            out.data_mut().copy_from_slice(&s);
        }
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
            let pooled = global_avg_pool(operands[0].data(), &t, batch)?;
            out.data_mut().copy_from_slice(&pooled);
        }
        Op::PoolNormLinear {
            channels,
            classes,
            eps,
        } => {
            let t = in_ty.expect("head has an operand");
            let pooled = global_avg_pool(operands[0].data(), &t, batch)?;
            let prologue = k::LinearPrologue {
                norm_eps: Some(eps),
                scale: None,
            };
            k::linear_fused(
                &pooled,
                batch,
                channels,
                param("weight")?,
                param("bias")?,
                classes,
                prologue,
                k::LinearEpilogue::default(),
                out.data_mut(),
            );
        }
        Op::Permute(p) => {
            let (a, b) = match p {
                Permute::NchwToNhwc => (out_ty.channels, out_ty.pixels()),
                Permute::NhwcToNchw => (out_ty.pixels(), out_ty.channels),
            };
            k::transpose_inner(operands[0].data(), batch, a, b, out.data_mut());
        }
    }
    Ok((out, side))
}

/// One fused linear layer's operands and parameters.
struct LinearJob<'a> {
    l: Linear,
    x: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    packed: Option<&'a gemm::PackedWeights>,
    scale: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    /// Rows per sample (for the per-sample scale).
    pixels: usize,
}

impl LinearJob<'_> {
    /// The prologue for a kernel call whose first row is `first_row`.
    fn prologue(&self, first_row: usize) -> k::LinearPrologue<'_> {
        k::LinearPrologue {
            norm_eps: self.l.input_norm,
            scale: self.scale.map(|values| k::RowScale {
                values,
                rows_per_sample: self.pixels,
                first_row,
            }),
        }
    }

    /// Threads over blocks of rows (the GEMM's row blocks, or the reference loops).
    fn by_rows(&self, rows: usize, threads: usize, out: &mut [f32]) {
        let (k_in, n) = (self.l.in_features, self.l.out_features);
        let rows_per_thread = rows.div_ceil(threads).div_ceil(gemm::MC) * gemm::MC;
        let inputs = self.x.chunks(rows_per_thread * k_in);
        let outputs = out.chunks_mut(rows_per_thread * n);
        std::thread::scope(|scope| {
            for (chunk, (x, y)) in inputs.zip(outputs).enumerate() {
                let first_row = chunk * rows_per_thread;
                let prologue = self.prologue(first_row);
                let epilogue = k::LinearEpilogue {
                    activation: self.l.activation,
                    residual: self.residual.map(|r| &r[first_row * n..][..y.len()]),
                };
                let rows = x.len() / k_in;
                scope.spawn(move || match self.packed {
                    Some(w) => {
                        gemm::linear_fused_packed(x, rows, w, self.bias, prologue, epilogue, y)
                    }
                    None => k::linear_fused(
                        x,
                        rows,
                        k_in,
                        self.weight,
                        self.bias,
                        n,
                        prologue,
                        epilogue,
                        y,
                    ),
                });
            }
        });
    }

    /// Threads over ranges of output-column panels of the packed GEMM.
    fn by_columns(&self, w: &gemm::PackedWeights, rows: usize, threads: usize, out: &mut [f32]) {
        let n = self.l.out_features;
        let epilogue = k::LinearEpilogue {
            activation: self.l.activation,
            residual: self.residual,
        };
        let per_thread = w.panels().div_ceil(threads);
        let parts: Vec<(usize, Vec<f32>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..w.panels())
                .step_by(per_thread)
                .map(|p0| {
                    let panels = p0..(p0 + per_thread).min(w.panels());
                    let prologue = self.prologue(0);
                    scope.spawn(move || {
                        let col0 = panels.start * w.panel_width();
                        let width = (panels.end * w.panel_width()).min(n) - col0;
                        let mut part = vec![0f32; rows * width];
                        gemm::linear_fused_packed_panels(
                            self.x, rows, w, panels, self.bias, prologue, epilogue, &mut part,
                        );
                        (col0, part)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("kernel threads do not panic"))
                .collect()
        });
        for (col0, part) in parts {
            let width = part.len() / rows;
            for (r, src) in part.chunks_exact(width).enumerate() {
                out[r * n + col0..r * n + col0 + width].copy_from_slice(src);
            }
        }
    }
}

/// Mean over the pixels of an image value in either layout.
fn global_avg_pool(x: &[f32], t: &ValueType, batch: usize) -> Result<Vec<f32>, RunError> {
    match t.layout {
        Layout::Nchw => Ok(k::global_avg_pool_nchw(x, batch, t.channels, t.pixels())),
        Layout::Nhwc => Ok(k::global_avg_pool_nhwc(x, batch, t.pixels(), t.channels)),
        Layout::Features => Err(RunError::Graph("pooling a feature vector".into())),
    }
}

/// LayerNorm over the channels of an image value in either layout.
fn normalize_channels(
    x: &[f32],
    t: &ValueType,
    batch: usize,
    affine: Option<k::Affine<'_>>,
    eps: f64,
    out: &mut [f32],
) {
    match t.layout {
        Layout::Nchw => {
            k::layer_norm_channels_first(x, batch, t.channels, t.pixels(), affine, eps, out)
        }
        Layout::Nhwc | Layout::Features => k::layer_norm_last_axis(x, t.channels, affine, eps, out),
    }
}
