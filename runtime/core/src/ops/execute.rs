//! The functions that run each op: kernel choice (prepared weights or the reference loops),
//! prologue and epilogue wiring, and the split over the pool's threads.

use super::{
    Conv2d, GrnSource, LayerNorm, Layout, Linear, NormAxis, Permute, Precision, ValueType,
};
use crate::kernels::matmul::{self, PackedMatrix, PackedRows, RowsMut};
use crate::kernels::reference as k;
use crate::kernels::{bf16, conv, quantize, Activation, ActivationKernel, Isa, PreparedWeights};
use crate::{pool, scratch};

/// Tasks an op's work is cut into per pool thread: enough that a thread done early takes
/// work from one held up (the pool's stealing), few enough that each task still spans whole
/// GEMM row blocks. How work is cut changes no result.
const TASKS_PER_THREAD: usize = 4;

/// A convolution's parameters. `prepared`: the weight packed at load for the optimised
/// kernel (NHWC only); without it the reference loops run.
#[derive(Clone, Copy)]
pub struct ConvParams<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    /// The output LayerNorm's gamma and beta, when it has them.
    pub norm: Option<k::Affine<'a>>,
    pub prepared: Option<&'a PreparedWeights>,
}

/// A linear layer's parameters; `packed` (in the layer's precision) as
/// [`ConvParams::prepared`].
#[derive(Clone, Copy)]
pub struct LinearParams<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub packed: Option<&'a PackedMatrix>,
}

impl LinearParams<'_> {
    /// The packed GEMM's panels: (count, columns each), if the weights are packed.
    fn panels(&self) -> Option<(usize, usize)> {
        self.packed.map(|w| (w.panels(), w.panel_width()))
    }
}

/// `nn.Conv2d` (with its fused prologue and epilogue) from `input` to `output` typed values.
pub fn conv2d(
    c: &Conv2d,
    input: &ValueType,
    output: &ValueType,
    batch: usize,
    p: ConvParams<'_>,
    x: &[f32],
    out: &mut [f32],
) {
    let geometry = k::Conv2dGeometry {
        batch,
        in_channels: c.in_channels,
        in_h: input.height,
        in_w: input.width,
        out_channels: c.out_channels,
        kernel_h: c.kernel[0],
        kernel_w: c.kernel[1],
        stride_h: c.stride[0],
        stride_w: c.stride[1],
        pad_h: c.padding[0],
        pad_w: c.padding[1],
        groups: c.groups,
    };
    // A bf16 or int8 conv without prepared weights (the reference kernels asked for) packs
    // them here, for the portable kernel (the reference twin's bits).
    let packed_here;
    let prepared = match p.prepared {
        None if c.precision != Precision::F32 => {
            packed_here = prepare_conv(c, p.weight, Isa::Portable);
            packed_here.as_ref()
        }
        prepared => prepared,
    };
    if let (Some(prepared), Layout::Nhwc) = (prepared, c.layout) {
        let norm = c.output_norm.map(|n| conv::PixelNorm {
            eps: n.eps,
            affine: p.norm,
        });
        // Output rows (one image row of one sample) split into tasks for the threads.
        let row_len = output.width * output.channels;
        let rows = batch * output.height;
        let per_task = rows.div_ceil(pool::threads() * TASKS_PER_THREAD);
        pool::for_each_chunk_mut(out, per_task * row_len, &|chunk, dst| {
            let range = chunk * per_task..chunk * per_task + dst.len() / row_len;
            let geometry = &geometry;
            match prepared {
                PreparedWeights::Depthwise(w) => {
                    conv::depthwise_nhwc(geometry, x, w, p.bias, norm, range, dst)
                }
                PreparedWeights::Gemm(w) => {
                    conv::patch_conv_nhwc(geometry, x, w, p.bias, c.input_norm, norm, range, dst)
                }
            }
        });
        return;
    }
    // The reference path: plain loops, with the prologue and epilogue as separate passes.
    let normalised;
    let x = match c.input_norm {
        None => x,
        Some(eps) => {
            let mut n = vec![0.0; x.len()];
            normalize_channels(x, input, batch, None, eps, &mut n);
            normalised = n;
            &normalised
        }
    };
    match c.layout {
        Layout::Nchw => k::conv2d_nchw(&geometry, x, p.weight, Some(p.bias), out),
        Layout::Nhwc | Layout::Features => {
            k::conv2d_nhwc(&geometry, x, p.weight, Some(p.bias), out)
        }
    }
    if let Some(norm) = c.output_norm {
        let conv_out = out.to_vec();
        normalize_channels(&conv_out, output, batch, p.norm, norm.eps, out);
    }
}

/// A LayerNorm over the channels of `t`-typed values.
pub fn layer_norm(
    ln: &LayerNorm,
    t: &ValueType,
    batch: usize,
    affine: Option<k::Affine<'_>>,
    x: &[f32],
    out: &mut [f32],
) {
    match ln.axis {
        NormAxis::ChannelsFirst => {
            k::layer_norm_channels_first(x, batch, ln.channels, t.pixels(), affine, ln.eps, out)
        }
        NormAxis::ChannelsLast => k::layer_norm_last_axis(x, ln.channels, affine, ln.eps, out),
    }
}

/// `nn.Linear` over the last axis with its fused prologue (LayerNorm, per-sample channel
/// scale) and epilogue (activation, residual). `pixels`: rows per sample. With `sums`
/// (`batch x out_features`), the per-sample, per-channel sums of squares of the output,
/// reduced in a fixed order whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    l: &Linear,
    pixels: usize,
    batch: usize,
    p: LinearParams<'_>,
    x: &[f32],
    scale: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    sums: Option<&mut [f64]>,
) {
    let job = LinearJob {
        l: *l,
        x,
        p,
        scale,
        residual,
        pixels,
    };
    let rows = batch * pixels;
    let threads = pool::threads();
    // GRN's statistics: per-segment partials accumulated by the epilogue (no second pass
    // over the output), then added to the per-sample sums in segment order.
    let segments = k::SquareSums::segment_count(0, rows, pixels);
    let partials_len = sums.as_ref().map_or(0, |_| segments * l.out_features);
    scratch::with_f64(partials_len, |partials| {
        let sums = sums.map(|sums| SumsOut { partials, sums });
        // Rows split over the threads in whole granules; but with fewer rows than output
        // columns (late stages at small batch: each thread would stream every weight) or
        // granules too coarse to balance the threads, split the output columns instead.
        // Every element is computed exactly as in the row split.
        let rows_per_thread = LinearJob::rows_per_part(rows, threads, sums.is_some());
        let imbalance = (rows_per_thread * threads) as f64 / rows.max(1) as f64;
        match p.panels() {
            Some(panels) if threads > 1 && (rows < l.out_features || imbalance > 1.1) => {
                job.by_columns(panels, rows, threads, out, sums)
            }
            _ => job.by_rows(rows, threads, out, sums),
        }
    });
}

/// Where a linear layer's GRN statistics go: scratch for the per-segment partials
/// (`[segments, N]`, laid out by the thread split) and the per-sample sums (`[batch, N]`).
struct SumsOut<'a> {
    partials: &'a mut [f64],
    sums: &'a mut [f64],
}

/// One fused linear layer's operands and parameters.
struct LinearJob<'a> {
    l: Linear,
    x: &'a [f32],
    p: LinearParams<'a>,
    scale: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    /// Rows per sample (for the per-sample scale).
    pixels: usize,
}

impl<'a> LinearJob<'a> {
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

    fn epilogue(&self, residual: Option<&'a [f32]>) -> k::LinearEpilogue<'a> {
        k::LinearEpilogue {
            activation: self.l.activation,
            kernel: None,
            residual,
        }
    }

    /// Rows per part of a row split into `parts`: whole sum-of-squares blocks when the GEMM
    /// accumulates GRN's sums (no segment straddles two parts, so the sums' order does not
    /// depend on the split), else whole groups of 8 rows.
    fn rows_per_part(rows: usize, parts: usize, with_sums: bool) -> usize {
        let granule = if with_sums { k::SUM_SQUARES_BLOCK } else { 8 };
        rows.div_ceil(parts.max(1)).next_multiple_of(granule)
    }

    /// Tasks over blocks of rows (the GEMM's row blocks, or the reference loops), about
    /// [`TASKS_PER_THREAD`] per thread; with `sums`, each block accumulates its own segments
    /// of the partials (`[segments, N]`).
    fn by_rows(&self, rows: usize, threads: usize, out: &mut [f32], sums: Option<SumsOut<'_>>) {
        let (k_in, n) = (self.l.in_features, self.l.out_features);
        let pixels = self.pixels;
        let with_sums = sums.is_some();
        let rows_per_task = Self::rows_per_part(rows, threads * TASKS_PER_THREAD, with_sums);
        let rows_of = move |t: usize| t * rows_per_task..((t + 1) * rows_per_task).min(rows);
        let segments_of = move |t: usize| {
            let r = rows_of(t);
            if !with_sums || r.is_empty() {
                return 0..0;
            }
            let first = k::sum_squares_segment(r.start, pixels);
            first * n..(first + k::SquareSums::segment_count(r.start, r.len(), pixels)) * n
        };
        let task = |t: usize, y: &mut [f32], partials: &mut [f64]| {
            let first_row = t * rows_per_task;
            let x = &self.x[first_row * k_in..][..y.len() / n * k_in];
            let rows = x.len() / k_in;
            let prologue = self.prologue(first_row);
            let epilogue = self.epilogue(self.residual.map(|r| &r[first_row * n..][..y.len()]));
            let mut sums =
                with_sums.then(|| k::SquareSums::new(partials, first_row, rows, pixels, n));
            let p = self.p;
            match (p.packed, self.l.precision) {
                (Some(w), _) => {
                    matmul::linear_fused(x, rows, w, p.bias, prologue, epilogue, y, sums.as_mut())
                }
                (None, Precision::Int8) => {
                    // The reference kernels asked for: the weights quantised here, as for
                    // the portable kernel (as an int8 conv without prepared weights is).
                    let q_max = crate::kernels::matmul::weight_max(Isa::Portable);
                    let q = quantize::QuantisedWeights::new(p.weight, n, k_in, q_max);
                    k::qlinear_fused(x, rows, &q, p.bias, prologue, epilogue, y, sums.as_mut())
                }
                (None, Precision::Bf16) => {
                    // Likewise: the weights rounded here, summed in the portable kernel's order.
                    let kernel = matmul::kernel_for(Precision::Bf16, Isa::Portable);
                    let w: Vec<u16> = p.weight.iter().map(|&v| bf16::round(v)).collect();
                    let order = (kernel.padded_k(k_in), kernel.sum_order);
                    let (b, s) = (p.bias, sums.as_mut());
                    k::bf16_linear_fused(x, rows, k_in, &w, n, order, b, prologue, epilogue, y, s)
                }
                (None, Precision::F32) => k::linear_fused(
                    x,
                    rows,
                    k_in,
                    p.weight,
                    p.bias,
                    n,
                    prologue,
                    epilogue,
                    y,
                    sums.as_mut(),
                ),
            }
        };
        let (mut none, mut no_sums): ([f64; 0], [f64; 0]) = ([], []);
        let SumsOut {
            partials,
            sums: sample_sums,
        } = sums.unwrap_or(SumsOut {
            partials: &mut none,
            sums: &mut no_sums,
        });
        // SAFETY: both region functions are pure functions of the task index.
        unsafe {
            pool::for_each_region_pair_mut(
                out,
                partials,
                rows.div_ceil(rows_per_task.max(1)),
                &|t| {
                    let r = rows_of(t);
                    ((r.start * n..r.end * n), segments_of(t))
                },
                &task,
            )
        }
        if with_sums {
            // The blocks' segments are consecutive: one region over all the rows.
            sample_sums.fill(0.0);
            k::combine_square_sums(partials, 0, rows, pixels, n, sample_sums, n, 0);
        }
    }

    /// Tasks (about [`TASKS_PER_THREAD`] per thread) over ranges of output-column panels of
    /// the packed GEMM: each task writes its
    /// columns, for all rows, to its own contiguous part of a scratch buffer, which is then
    /// scattered into the row-major output; with `sums`, each task's sums-of-squares
    /// segments for its columns, in its own contiguous part of the partials too.
    fn by_columns(
        &self,
        panels: (usize, usize),
        rows: usize,
        threads: usize,
        out: &mut [f32],
        sums: Option<SumsOut<'_>>,
    ) {
        let w = self.p.packed.expect("a column split needs packed weights");
        let spec = w.kernel;
        if spec.precision == Precision::F32 {
            return self.by_columns_of(None, panels, rows, threads, out, sums);
        }
        // bf16 and int8: every row packed once (over the threads), then each column task
        // multiplies all of them by its panels.
        let (k, kp) = (self.l.in_features, w.padded_k());
        // Whole tiles of 16 rows per task where A is packed in tiles.
        let granule = if spec.tiled_a { 16 } else { 1 };
        let per_task = rows
            .div_ceil(threads * TASKS_PER_THREAD)
            .next_multiple_of(granule);
        let rows_of = |t: usize| (t * per_task).min(rows)..((t + 1) * per_task).min(rows);
        let len = spec.padded_rows(rows) * kp;
        let pack = |t: usize, dst: RowsMut<'_>| {
            let r = rows_of(t);
            let x = &self.x[r.start * k..r.end * k];
            matmul::pack_rows(x, k, kp, spec.tiled_a, self.prologue(0), r.start, dst)
        };
        match spec.precision {
            Precision::Bf16 => scratch::with_u16(len, |data| {
                // (The padding rows' tile goes with the last task.)
                pool::for_each_chunk_mut(&mut data[..len], per_task * kp, &|t, data| {
                    pack(t, RowsMut::Bf16(data))
                });
                let a = PackedRows {
                    data: matmul::Operand::Bf16(data),
                    lda: kp,
                    rows,
                    quants: &[],
                };
                self.by_columns_of(Some(a), panels, rows, threads, out, sums)
            }),
            _ => scratch::with_u8(len, |data| {
                scratch::with_row_quants(rows, |quants| {
                    // SAFETY: both region functions are pure functions of the task index.
                    unsafe {
                        pool::for_each_region_pair_mut(
                            &mut data[..len],
                            quants,
                            rows.div_ceil(per_task),
                            &|t| {
                                let r = rows_of(t);
                                // The padding rows' tile goes with the last task.
                                let end = if r.end == rows { len } else { r.end * kp };
                                (r.start * kp..end, r)
                            },
                            &|t, data, quants| pack(t, RowsMut::U8(data, quants)),
                        )
                    }
                    let a = PackedRows {
                        data: matmul::Operand::U8(data),
                        lda: kp,
                        rows,
                        quants,
                    };
                    self.by_columns_of(Some(a), panels, rows, threads, out, sums)
                })
            }),
        }
    }

    /// [`LinearJob::by_columns`] with A already packed (bf16, int8) or as it is (f32).
    fn by_columns_of(
        &self,
        packed_rows: Option<PackedRows<'_>>,
        (panel_count, panel_width): (usize, usize),
        rows: usize,
        threads: usize,
        out: &mut [f32],
        sums: Option<SumsOut<'_>>,
    ) {
        let n = self.l.out_features;
        let epilogue = self.epilogue(self.residual);
        let per_task = panel_count.div_ceil(threads * TASKS_PER_THREAD);
        let part_width = per_task * panel_width;
        let tasks = n.div_ceil(part_width);
        let segments = k::SquareSums::segment_count(0, rows, self.pixels);
        let with_sums = sums.is_some();
        let width_of = move |t: usize| part_width.min(n - t * part_width);
        let (mut none, mut no_sums): ([f64; 0], [f64; 0]) = ([], []);
        let SumsOut {
            partials,
            sums: sample_sums,
        } = sums.unwrap_or(SumsOut {
            partials: &mut none,
            sums: &mut no_sums,
        });
        scratch::with_f32(rows * n, |parts| {
            // SAFETY: both region functions are pure functions of the task index.
            unsafe {
                pool::for_each_region_pair_mut(
                    parts,
                    partials,
                    tasks,
                    &|t| {
                        let (at, width) = (t * part_width, width_of(t));
                        let sums = if with_sums {
                            segments * at..segments * (at + width)
                        } else {
                            0..0
                        };
                        (rows * at..rows * (at + width), sums)
                    },
                    &|t, part, partials| {
                        let panels = t * per_task..((t + 1) * per_task).min(panel_count);
                        let mut sums = with_sums.then(|| {
                            k::SquareSums::new(partials, 0, rows, self.pixels, width_of(t))
                        });
                        let (x, bias, prologue) = (self.x, self.p.bias, self.prologue(0));
                        let w = self.p.packed.expect("a column split needs packed weights");
                        match packed_rows {
                            None => matmul::linear_fused_panels(
                                x,
                                rows,
                                w,
                                panels,
                                bias,
                                prologue,
                                epilogue,
                                part,
                                sums.as_mut(),
                            ),
                            Some(a) => matmul::product(
                                a,
                                w,
                                panels,
                                bias,
                                epilogue.activation.map(ActivationKernel::of),
                                epilogue.residual,
                                part,
                                sums.as_mut().map(|s| (s, 0)),
                            ),
                        }
                    },
                )
            }
            for (i, part) in parts.chunks(rows * part_width).enumerate() {
                let (col0, width) = (i * part_width, part.len() / rows);
                for (r, src) in part.chunks_exact(width).enumerate() {
                    out[r * n + col0..r * n + col0 + width].copy_from_slice(src);
                }
            }
        });
        if with_sums {
            // Each task's partials cover its own columns: combined task by task.
            sample_sums.fill(0.0);
            for (t, part) in partials.chunks(segments * part_width).enumerate() {
                let (col0, width) = (t * part_width, width_of(t));
                k::combine_square_sums(part, 0, rows, self.pixels, width, sample_sums, n, col0);
            }
        }
    }
}

/// An elementwise activation.
pub fn activation(act: Activation, x: &[f32], out: &mut [f32]) {
    out.copy_from_slice(x);
    k::activation(act, out);
}

/// `ConvNextV2GRN` over an NHWC value (the unfused op).
pub fn grn(
    channels: usize,
    t: &ValueType,
    batch: usize,
    gamma: &[f32],
    beta: &[f32],
    x: &[f32],
    out: &mut [f32],
) {
    k::grn_channels_last(x, batch, t.pixels(), channels, gamma, beta, out)
}

#[allow(clippy::too_many_arguments)]
/// GRN's per-sample channel scale `1 + gamma * N` (`[batch, channels]`), from the values of
/// its NHWC operand or from the sums of squares its producer accumulated.
pub fn grn_scale(
    channels: usize,
    source: GrnSource,
    t: &ValueType,
    batch: usize,
    gamma: &[f32],
    x: &[f32],
    sums: &[f64],
    out: &mut [f32],
) {
    match source {
        GrnSource::Values => out.copy_from_slice(&k::grn_scale_channels_last(
            x,
            batch,
            t.pixels(),
            channels,
            gamma,
        )),
        GrnSource::ProducerSums => k::grn_scale_from_sums_into(sums, channels, gamma, out),
    }
}

/// The residual connection.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

/// Mean over the pixels of an image value in either layout.
pub fn global_avg_pool(t: &ValueType, batch: usize, x: &[f32], out: &mut [f32]) {
    match t.layout {
        Layout::Nchw => {
            out.copy_from_slice(&k::global_avg_pool_nchw(x, batch, t.channels, t.pixels()))
        }
        Layout::Nhwc | Layout::Features => scratch::with_f64(t.channels, |acc| {
            k::global_avg_pool_nhwc_into(x, batch, t.pixels(), t.channels, acc, out)
        }),
    }
}

/// The fused head: global average pool, LayerNorm without affine (folded into the weights),
/// classifier.
#[allow(clippy::too_many_arguments)]
pub fn pool_norm_linear(
    channels: usize,
    classes: usize,
    eps: f64,
    t: &ValueType,
    batch: usize,
    weight: &[f32],
    bias: &[f32],
    x: &[f32],
    out: &mut [f32],
) {
    scratch::with_f32(batch * channels, |pooled| {
        global_avg_pool(t, batch, x, pooled);
        let norm = k::LinearPrologue {
            norm_eps: Some(eps),
            scale: None,
        };
        for (r, row) in pooled.chunks_exact_mut(channels).enumerate() {
            norm.apply(r, row);
        }
        classifier(channels, classes, batch, weight, bias, pooled, out);
    })
}

/// The head's product on pooled, normalised features: `[batch, channels]` to
/// `[batch, classes]` (what the JIT calls after generating the pool and the norm).
pub fn classifier(
    channels: usize,
    classes: usize,
    batch: usize,
    weight: &[f32],
    bias: &[f32],
    features: &[f32],
    out: &mut [f32],
) {
    k::linear_fused(
        features,
        batch,
        channels,
        weight,
        bias,
        classes,
        k::LinearPrologue::default(),
        k::LinearEpilogue::default(),
        out,
        None,
    );
}

/// Between the two image layouts; `output` is the permuted value's type.
pub fn permute(p: Permute, output: &ValueType, batch: usize, x: &[f32], out: &mut [f32]) {
    let (a, b) = match p {
        Permute::NchwToNhwc => (output.channels, output.pixels()),
        Permute::NhwcToNchw => (output.pixels(), output.channels),
    };
    k::transpose_inner(x, batch, a, b, out);
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

/// A convolution's weight rearranged once, at load, for its optimised kernel: depthwise
/// stride-1 NHWC convs tap-major, kernel == stride NHWC convs (stem, downsampling) as GEMM
/// panels over patches. `None`: the conv runs the reference loops.
pub fn prepare_conv(
    c: &Conv2d,
    weight: &[f32],
    isa: crate::kernels::Isa,
) -> Option<PreparedWeights> {
    if c.layout != Layout::Nhwc {
        return None;
    }
    if c.is_depthwise() && c.stride == [1, 1] && c.input_norm.is_none() {
        let (ch, kh, kw) = (c.out_channels, c.kernel[0], c.kernel[1]);
        return Some(PreparedWeights::Depthwise(conv::DepthwiseWeights::pack(
            weight, ch, kh, kw, isa,
        )));
    }
    if c.groups == 1 && c.kernel == c.stride && c.padding == [0, 0] {
        let (o, i, kh, kw) = (c.out_channels, c.in_channels, c.kernel[0], c.kernel[1]);
        let patches =
            conv::pack_patch_conv(weight, o, i, kh, kw, matmul::kernel_for(c.precision, isa));
        return Some(PreparedWeights::Gemm(patches));
    }
    None
}

/// A linear layer's weight packed once, at load, into the GEMM panels of the best kernel of
/// the layer's precision on `isa` (rounded to bf16 or quantised to int8 as the precision says).
pub fn prepare_linear(l: &Linear, weight: &[f32], isa: crate::kernels::Isa) -> PreparedWeights {
    let (n, k) = (l.out_features, l.in_features);
    PreparedWeights::Gemm(PackedMatrix::for_isa(weight, n, k, l.precision, isa))
}
