//! Plain reference kernels: the oracle for every optimised kernel and backend.
//!
//! Each kernel mirrors the PyTorch operation it stands for, on explicit row-major layouts, with
//! reductions accumulated in f64. Clarity first; the only concession to speed is the
//! eight-lane dot product, which the compiler vectorises.

use super::fused::mean_var;
pub use super::fused::{
    add_squares, combine_square_sums, sum_squares_segment, LinearEpilogue, LinearPrologue,
    RowScale, SquareSums, SUM_SQUARES_BLOCK,
};
use super::Activation;

/// Geometry of a 2-D convolution over a batch of NCHW images (PyTorch `nn.Conv2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub groups: usize,
}

impl Conv2dGeometry {
    /// Output height: floor((H + 2p - k) / s) + 1, as PyTorch computes it.
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad_h - self.kernel_h) / self.stride_h + 1
    }

    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad_w - self.kernel_w) / self.stride_w + 1
    }

    /// Asserts the buffer sizes of a convolution with this geometry (either layout); returns
    /// `(out_h, out_w, in channels per group, out channels per group)`.
    pub fn check_sizes(
        &self,
        input: &[f32],
        weight: &[f32],
        out: &[f32],
    ) -> (usize, usize, usize, usize) {
        let (oh, ow) = (self.out_h(), self.out_w());
        let in_per_group = self.in_channels / self.groups;
        let out_per_group = self.out_channels / self.groups;
        assert_eq!(
            input.len(),
            self.batch * self.in_channels * self.in_h * self.in_w
        );
        assert_eq!(
            weight.len(),
            self.out_channels * in_per_group * self.kernel_h * self.kernel_w
        );
        assert_eq!(out.len(), self.batch * self.out_channels * oh * ow);
        (oh, ow, in_per_group, out_per_group)
    }
}

/// `nn.Conv2d` on NCHW input. `weight` is `[out, in / groups, kh, kw]`, output NCHW.
pub fn conv2d_nchw(
    g: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (oh, ow, in_per_group, out_per_group) = g.check_sizes(input, weight, out);
    for n in 0..g.batch {
        for oc in 0..g.out_channels {
            let group = oc / out_per_group;
            let w_oc = &weight[oc * in_per_group * g.kernel_h * g.kernel_w..];
            for y in 0..oh {
                for x in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[oc] as f64);
                    for icg in 0..in_per_group {
                        let ic = group * in_per_group + icg;
                        let plane = &input[(n * g.in_channels + ic) * g.in_h * g.in_w..];
                        for ky in 0..g.kernel_h {
                            let iy = (y * g.stride_h + ky) as isize - g.pad_h as isize;
                            if iy < 0 || iy >= g.in_h as isize {
                                continue;
                            }
                            for kx in 0..g.kernel_w {
                                let ix = (x * g.stride_w + kx) as isize - g.pad_w as isize;
                                if ix < 0 || ix >= g.in_w as isize {
                                    continue;
                                }
                                let wv = w_oc[(icg * g.kernel_h + ky) * g.kernel_w + kx];
                                let xv = plane[iy as usize * g.in_w + ix as usize];
                                acc += wv as f64 * xv as f64;
                            }
                        }
                    }
                    out[((n * g.out_channels + oc) * oh + y) * ow + x] = acc as f32;
                }
            }
        }
    }
}

/// `nn.Conv2d` on NHWC input (the same geometry and `[out, in / groups, kh, kw]` weight as
/// [`conv2d_nchw`]), output NHWC.
pub fn conv2d_nhwc(
    g: &Conv2dGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (oh, ow, in_per_group, out_per_group) = g.check_sizes(input, weight, out);
    for n in 0..g.batch {
        let image = &input[n * g.in_h * g.in_w * g.in_channels..];
        for y in 0..oh {
            for x in 0..ow {
                let pixel_out = ((n * oh + y) * ow + x) * g.out_channels;
                for oc in 0..g.out_channels {
                    let group = oc / out_per_group;
                    let mut acc = bias.map_or(0.0, |b| b[oc] as f64);
                    for ky in 0..g.kernel_h {
                        let iy = (y * g.stride_h + ky) as isize - g.pad_h as isize;
                        if iy < 0 || iy >= g.in_h as isize {
                            continue;
                        }
                        for kx in 0..g.kernel_w {
                            let ix = (x * g.stride_w + kx) as isize - g.pad_w as isize;
                            if ix < 0 || ix >= g.in_w as isize {
                                continue;
                            }
                            let pixel =
                                &image[(iy as usize * g.in_w + ix as usize) * g.in_channels..];
                            for icg in 0..in_per_group {
                                let ic = group * in_per_group + icg;
                                let wv = weight[((oc * in_per_group + icg) * g.kernel_h + ky)
                                    * g.kernel_w
                                    + kx];
                                acc += wv as f64 * pixel[ic] as f64;
                            }
                        }
                    }
                    out[pixel_out + oc] = acc as f32;
                }
            }
        }
    }
}

/// Dot product with eight independent f32 lanes (vectorisable), summed in f64 at the end.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut acc: f64 = lanes.iter().map(|&v| v as f64).sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        acc += *x as f64 * *y as f64;
    }
    acc
}

/// `nn.Linear` over the last axis: `x` is `[rows, in]`, `weight` `[out, in]`, output `[rows, out]`.
pub fn linear(
    x: &[f32],
    rows: usize,
    in_features: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    out_features: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), rows * in_features);
    assert_eq!(weight.len(), out_features * in_features);
    assert_eq!(out.len(), rows * out_features);
    for r in 0..rows {
        let xr = &x[r * in_features..(r + 1) * in_features];
        for o in 0..out_features {
            let wo = &weight[o * in_features..(o + 1) * in_features];
            let b = bias.map_or(0.0, |b| b[o] as f64);
            out[r * out_features + o] = (dot(xr, wo) + b) as f32;
        }
    }
}

/// The affine part of a LayerNorm: `y = x_hat * gamma + beta`.
#[derive(Debug, Clone, Copy)]
pub struct Affine<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

impl Affine<'_> {
    fn apply(affine: Option<Affine<'_>>, c: usize, x_hat: f64) -> f64 {
        match affine {
            Some(a) => x_hat * a.gamma[c] as f64 + a.beta[c] as f64,
            None => x_hat,
        }
    }
}

/// LayerNorm over the last axis of `[rows, channels]` (`nn.LayerNorm`, `channels_last`):
/// `y = (x - mean) / sqrt(var + eps) * gamma + beta`, biased variance. Without `affine`, only
/// the normalisation.
pub fn layer_norm_last_axis(
    x: &[f32],
    channels: usize,
    affine: Option<Affine<'_>>,
    eps: f64,
    out: &mut [f32],
) {
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % channels, 0);
    for (xr, yr) in x.chunks_exact(channels).zip(out.chunks_exact_mut(channels)) {
        let (mean, var) = mean_var(channels, |c| xr[c]);
        let inv_std = 1.0 / (var + eps).sqrt();
        for c in 0..channels {
            yr[c] = Affine::apply(affine, c, (xr[c] as f64 - mean) * inv_std) as f32;
        }
    }
}

/// LayerNorm over the channel axis of NCHW (`ConvNextV2LayerNorm`, `channels_first`).
pub fn layer_norm_channels_first(
    x: &[f32],
    batch: usize,
    channels: usize,
    pixels: usize,
    affine: Option<Affine<'_>>,
    eps: f64,
    out: &mut [f32],
) {
    assert_eq!(x.len(), batch * channels * pixels);
    assert_eq!(out.len(), x.len());
    for n in 0..batch {
        let base = n * channels * pixels;
        for p in 0..pixels {
            let at = |c: usize| base + c * pixels + p;
            let (mean, var) = mean_var(channels, |c| x[at(c)]);
            let inv_std = 1.0 / (var + eps).sqrt();
            for c in 0..channels {
                out[at(c)] = Affine::apply(affine, c, (x[at(c)] as f64 - mean) * inv_std) as f32;
            }
        }
    }
}

/// Applies `act` elementwise, in place.
pub fn activation(act: Activation, x: &mut [f32]) {
    for v in x {
        *v = act.apply_f64(*v as f64) as f32;
    }
}

/// The epsilon of `ConvNextV2GRN` (fixed in the module, not in the config).
pub const GRN_EPS: f64 = 1e-6;

/// Global Response Normalisation (`ConvNextV2GRN`) on channels-last `[batch, pixels, channels]`:
/// `G_c = ||x_c||_2` over pixels, `N_c = G_c / (mean_c G + 1e-6)`,
/// `y = gamma * (x * N) + beta + x`.
pub fn grn_channels_last(
    x: &[f32],
    batch: usize,
    pixels: usize,
    channels: usize,
    gamma: &[f32],
    beta: &[f32],
    out: &mut [f32],
) {
    assert_eq!(x.len(), batch * pixels * channels);
    assert_eq!(out.len(), x.len());
    let mut norm = vec![0f64; channels];
    for n in 0..batch {
        let xs = &x[n * pixels * channels..(n + 1) * pixels * channels];
        norm.iter_mut().for_each(|v| *v = 0.0);
        for row in xs.chunks_exact(channels) {
            for (acc, &v) in norm.iter_mut().zip(row) {
                *acc += v as f64 * v as f64;
            }
        }
        norm.iter_mut().for_each(|v| *v = v.sqrt());
        let mean = norm.iter().sum::<f64>() / channels as f64;
        let scale: Vec<f64> = norm.iter().map(|g| g / (mean + GRN_EPS)).collect();
        let ys = &mut out[n * pixels * channels..(n + 1) * pixels * channels];
        for (row, yrow) in xs.chunks_exact(channels).zip(ys.chunks_exact_mut(channels)) {
            for c in 0..channels {
                let v = row[c] as f64;
                yrow[c] = (gamma[c] as f64 * (v * scale[c]) + beta[c] as f64 + v) as f32;
            }
        }
    }
}

/// GRN's whole-image half, `s = 1 + gamma * N`, on channels-last `[batch, pixels, channels]`:
/// `N_c = ||x_c||_2 / (mean_c ||x_c||_2 + 1e-6)`. Output `[batch, channels]`. With `s`,
/// `GRN(x) = x * s + beta`.
pub fn grn_scale_channels_last(
    x: &[f32],
    batch: usize,
    pixels: usize,
    channels: usize,
    gamma: &[f32],
) -> Vec<f32> {
    assert_eq!(x.len(), batch * pixels * channels);
    let partials = sum_squares_partials(x, 0, pixels, channels);
    let sums = combine_sum_squares(&partials, batch, channels);
    grn_scale_from_sums(&sums, channels, gamma)
}

/// GRN's `s = 1 + gamma * N` from per-sample, per-channel sums of squares `[batch, channels]`.
pub fn grn_scale_from_sums(sums: &[f64], channels: usize, gamma: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; sums.len()];
    grn_scale_from_sums_into(sums, channels, gamma, &mut out);
    out
}

/// [`grn_scale_from_sums`] into `out` (`[batch, channels]`).
pub fn grn_scale_from_sums_into(sums: &[f64], channels: usize, gamma: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), sums.len());
    for (sample, dst) in sums
        .chunks_exact(channels)
        .zip(out.chunks_exact_mut(channels))
    {
        let mean = sample.iter().map(|v| v.sqrt()).sum::<f64>() / channels as f64;
        for ((d, s), &gm) in dst.iter_mut().zip(sample).zip(gamma) {
            *d = (1.0 + gm as f64 * (s.sqrt() / (mean + GRN_EPS))) as f32;
        }
    }
}

/// Partial per-channel sums of squares of `rows` (`[n, channels]`, global rows `first_row..`),
/// one partial per segment, where segments split the rows at every multiple of
/// [`SUM_SQUARES_BLOCK`] and at every sample boundary. With `first_row` a multiple of the
/// block, any split of the rows over threads yields the same segments, so
/// [`combine_sum_squares`] gives the same bits whatever the thread count.
pub fn sum_squares_partials(
    rows: &[f32],
    first_row: usize,
    rows_per_sample: usize,
    channels: usize,
) -> Vec<(usize, Vec<f64>)> {
    assert!(first_row.is_multiple_of(SUM_SQUARES_BLOCK));
    let mut partials: Vec<(usize, Vec<f64>)> = Vec::new();
    for (i, row) in rows.chunks_exact(channels).enumerate() {
        let r = first_row + i;
        let sample = r / rows_per_sample;
        if i == 0 || r.is_multiple_of(SUM_SQUARES_BLOCK) || r.is_multiple_of(rows_per_sample) {
            partials.push((sample, vec![0.0; channels]));
        }
        let acc = &mut partials.last_mut().expect("pushed above").1;
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64 * v as f64;
        }
    }
    partials
}

/// The per-sample, per-channel sums of squares of `rows` (`[batch * rows_per_sample,
/// channels]`) into `sums` (`[batch, channels]`): the same segments, partials and order as
/// [`sum_squares_partials`] then [`combine_sum_squares`] (so the same bits), with one
/// `channels`-long `partial` buffer instead of a list of them.
pub fn sum_squares_into(
    rows: &[f32],
    rows_per_sample: usize,
    channels: usize,
    partial: &mut [f64],
    sums: &mut [f64],
) {
    sums.fill(0.0);
    let total = rows.len() / channels;
    let mut r = 0;
    while r < total {
        let sample = r / rows_per_sample;
        // The segment ends at the next block boundary or sample boundary.
        let end = (r / SUM_SQUARES_BLOCK + 1) * SUM_SQUARES_BLOCK;
        let end = end.min((sample + 1) * rows_per_sample).min(total);
        partial.fill(0.0);
        for row in rows[r * channels..end * channels].chunks_exact(channels) {
            for (a, &v) in partial.iter_mut().zip(row) {
                *a += v as f64 * v as f64;
            }
        }
        for (s, p) in sums[sample * channels..(sample + 1) * channels]
            .iter_mut()
            .zip(partial.iter())
        {
            *s += p;
        }
        r = end;
    }
}

/// Sums partials, in the order given, into `[batch, channels]`.
pub fn combine_sum_squares(
    partials: &[(usize, Vec<f64>)],
    batch: usize,
    channels: usize,
) -> Vec<f64> {
    let mut sums = vec![0f64; batch * channels];
    for (sample, p) in partials {
        for (s, v) in sums[sample * channels..(sample + 1) * channels]
            .iter_mut()
            .zip(p)
        {
            *s += v;
        }
    }
    sums
}

/// `nn.Linear` with a prologue and an epilogue over `rows` rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_fused(
    x: &[f32],
    rows: usize,
    in_features: usize,
    weight: &[f32],
    bias: &[f32],
    out_features: usize,
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    mut sums: Option<&mut SquareSums<'_>>,
) {
    assert_eq!(x.len(), rows * in_features);
    assert_eq!(out.len(), rows * out_features);
    crate::scratch::with_f32(in_features, |row| {
        for r in 0..rows {
            row.copy_from_slice(&x[r * in_features..(r + 1) * in_features]);
            prologue.apply(r, row);
            for o in 0..out_features {
                let mut v =
                    dot(row, &weight[o * in_features..(o + 1) * in_features]) + bias[o] as f64;
                if let Some(act) = epilogue.activation {
                    v = act.apply_f64(v as f32 as f64);
                }
                let mut y = v as f32;
                if let Some(res) = epilogue.residual {
                    y += res[r * out_features + o];
                }
                out[r * out_features + o] = y;
            }
            if let Some(sums) = sums.as_deref_mut() {
                sums.add(r, 0, &out[r * out_features..(r + 1) * out_features]);
            }
        }
    })
}

/// `nn.Linear` in int8 ([`super::quantize`]'s scheme), with the prologue and epilogue of
/// [`linear_fused`]: each row after the prologue is quantised to u8 with its own scale and
/// zero point, multiplied by the quantised weights in exact integer sums, dequantised, then
/// the bias, activation (the runtime's f32 kernel) and residual are applied in f32, as the
/// optimised int8 kernels do (which therefore match this twin bit for bit).
#[allow(clippy::too_many_arguments)]
pub fn qlinear_fused(
    x: &[f32],
    rows: usize,
    weight: &super::quantize::QuantisedWeights,
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut SquareSums<'_>>,
) {
    let (k, n) = (weight.k, weight.n);
    let mut q = vec![0u8; k];
    let product = |row: &[f32], y: &mut [f32]| {
        let rq = super::quantize::quantise_row(row, &mut q);
        for (o, y) in y.iter_mut().enumerate() {
            let w = &weight.q[o * k..(o + 1) * k];
            let acc: i32 = q.iter().zip(w).map(|(&a, &b)| a as i32 * b as i32).sum();
            *y = super::quantize::dequantise(acc, rq, weight.col_sums[o], weight.scales[o])
                + bias[o];
        }
    };
    rows_through(x, (rows, k, n), (prologue, epilogue), out, sums, product)
}

/// The low-precision twins' frame: each row of `x` (`[rows, k]`) through the prologue, then
/// `product` (the row after the prologue to the `n` outputs with their bias), then the
/// activation (the runtime's f32 kernel), the residual and GRN's sums, in f32.
fn rows_through(
    x: &[f32],
    (rows, k, n): (usize, usize, usize),
    (prologue, epilogue): (LinearPrologue<'_>, LinearEpilogue<'_>),
    out: &mut [f32],
    mut sums: Option<&mut SquareSums<'_>>,
    mut product: impl FnMut(&[f32], &mut [f32]),
) {
    assert_eq!(x.len(), rows * k);
    assert_eq!(out.len(), rows * n);
    let activation = epilogue
        .activation
        .map(|act| epilogue.kernel.unwrap_or(super::ActivationKernel::of(act)));
    crate::scratch::with_f32(k, |row| {
        for r in 0..rows {
            prologue.apply_from(r, &x[r * k..(r + 1) * k], row);
            let y = &mut out[r * n..(r + 1) * n];
            product(row, y);
            if let Some(act) = &activation {
                act.apply(y);
            }
            if let Some(res) = epilogue.residual {
                y.iter_mut()
                    .zip(&res[r * n..(r + 1) * n])
                    .for_each(|(v, &t)| *v += t);
            }
            if let Some(sums) = sums.as_deref_mut() {
                sums.add(r, 0, y);
            }
        }
    })
}

/// `nn.Linear` in bf16 ([`super::bf16`]'s scheme), with the prologue and epilogue of
/// [`linear_fused`]: each row after the prologue is rounded to bf16, its dot product with each
/// bf16 weight row (`weight`: `[n, k]` bf16 bits) summed in a kernel's `order` over `K`
/// zero-padded to `kp`, then the bias, activation (the runtime's f32 kernel) and residual in
/// f32, as the optimised bf16 kernels do (which therefore match this twin bit for bit).
#[allow(clippy::too_many_arguments)]
pub fn bf16_linear_fused(
    x: &[f32],
    rows: usize,
    k: usize,
    weight: &[u16],
    n: usize,
    (kp, order): (usize, super::matmul::SumOrder),
    bias: &[f32],
    prologue: LinearPrologue<'_>,
    epilogue: LinearEpilogue<'_>,
    out: &mut [f32],
    sums: Option<&mut SquareSums<'_>>,
) {
    assert_eq!(weight.len(), n * k);
    let mut a = vec![0u16; k];
    let product = |row: &[f32], y: &mut [f32]| {
        super::bf16::round_row(row, &mut a);
        for (o, y) in y.iter_mut().enumerate() {
            let w = &weight[o * k..(o + 1) * k];
            *y = super::bf16::dot(&a, w, kp, order) + bias[o];
        }
    };
    rows_through(x, (rows, k, n), (prologue, epilogue), out, sums, product)
}

/// Mean over the spatial axes of NHWC: `[batch, pixels, channels]` to `[batch, channels]`.
pub fn global_avg_pool_nhwc(x: &[f32], batch: usize, pixels: usize, channels: usize) -> Vec<f32> {
    let mut out = vec![0f32; batch * channels];
    let mut acc = vec![0f64; channels];
    global_avg_pool_nhwc_into(x, batch, pixels, channels, &mut acc, &mut out);
    out
}

/// [`global_avg_pool_nhwc`] into `out`, with a `channels`-long f64 accumulator `acc`.
pub fn global_avg_pool_nhwc_into(
    x: &[f32],
    batch: usize,
    pixels: usize,
    channels: usize,
    acc: &mut [f64],
    out: &mut [f32],
) {
    assert_eq!(x.len(), batch * pixels * channels);
    assert_eq!(out.len(), batch * channels);
    for (n, dst) in out.chunks_exact_mut(channels).enumerate() {
        acc.fill(0.0);
        for row in x[n * pixels * channels..(n + 1) * pixels * channels].chunks_exact(channels) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
        }
        for (d, a) in dst.iter_mut().zip(acc.iter()) {
            *d = (a / pixels as f64) as f32;
        }
    }
}

/// Mean over the spatial axes of NCHW: `[batch, channels, pixels]` to `[batch, channels]`.
pub fn global_avg_pool_nchw(x: &[f32], batch: usize, channels: usize, pixels: usize) -> Vec<f32> {
    assert_eq!(x.len(), batch * channels * pixels);
    x.chunks_exact(pixels)
        .map(|plane| (plane.iter().map(|&v| v as f64).sum::<f64>() / pixels as f64) as f32)
        .collect()
}

/// `[batch, a, b]` to `[batch, b, a]`: NCHW to NHWC with `a = C`, `b = H*W`, and back.
pub fn transpose_inner(x: &[f32], batch: usize, a: usize, b: usize, out: &mut [f32]) {
    assert_eq!(x.len(), batch * a * b);
    assert_eq!(out.len(), x.len());
    for n in 0..batch {
        let src = &x[n * a * b..(n + 1) * a * b];
        let dst = &mut out[n * a * b..(n + 1) * a * b];
        for i in 0..a {
            for j in 0..b {
                dst[j * a + i] = src[i * b + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prologue_from_a_source_row_equals_copy_then_apply() {
        use super::{LinearPrologue, RowScale};
        let k = 19;
        let values: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 7) % 11) as f32 * 0.37 - 1.2)
            .collect();
        let src: Vec<f32> = (0..k).map(|i| (i as f32 * 1.3).sin() * 4.0).collect();
        for norm_eps in [None, Some(1e-6)] {
            for scaled in [false, true] {
                let prologue = LinearPrologue {
                    norm_eps,
                    scale: scaled.then_some(RowScale {
                        values: &values,
                        rows_per_sample: 5,
                        first_row: 3,
                    }),
                };
                for r in [0, 2, 7, 11] {
                    let mut want = src.clone();
                    prologue.apply(r, &mut want);
                    let mut got = vec![0f32; k];
                    prologue.apply_from(r, &src, &mut got);
                    assert_eq!(got, want, "norm {norm_eps:?}, scaled {scaled}, row {r}");
                }
            }
        }
    }

    use super::*;

    #[test]
    fn conv2d_matches_hand_computed_values() {
        // 1x1x3x3 input, 2x2 kernel of ones, stride 1, no padding: sums of 2x2 windows.
        let g = Conv2dGeometry {
            batch: 1,
            in_channels: 1,
            in_h: 3,
            in_w: 3,
            out_channels: 1,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            pad_h: 0,
            pad_w: 0,
            groups: 1,
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![0.0; 4];
        conv2d_nchw(&g, &x, &[1.0; 4], Some(&[0.5]), &mut out);
        assert_eq!(out, vec![12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn conv2d_padding_and_groups() {
        // Depthwise 3x3 with padding 1 on a 2-channel 2x2 image: centre tap only for channel 0,
        // all-ones for channel 1 (so every output is the channel's total).
        let g = Conv2dGeometry {
            batch: 1,
            in_channels: 2,
            in_h: 2,
            in_w: 2,
            out_channels: 2,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_h: 1,
            pad_w: 1,
            groups: 2,
        };
        let x = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let mut w = vec![0.0; 18];
        w[4] = 1.0;
        w[9..18].iter_mut().for_each(|v| *v = 1.0);
        let mut out = vec![0.0; 8];
        conv2d_nchw(&g, &x, &w, None, &mut out);
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0, 100.0, 100.0, 100.0, 100.0]);
    }

    #[test]
    fn layer_norm_layouts_agree() {
        // The same numbers normalised channels-first (NCHW) and channels-last (NHWC).
        let (c, p) = (5, 3);
        let nchw: Vec<f32> = (0..c * p).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        let mut nhwc = vec![0.0; c * p];
        transpose_inner(&nchw, 1, c, p, &mut nhwc);
        let gamma: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 * -0.2).collect();
        let mut a = vec![0.0; c * p];
        let mut b = vec![0.0; c * p];
        let affine = Some(Affine {
            gamma: &gamma,
            beta: &beta,
        });
        layer_norm_channels_first(&nchw, 1, c, p, affine, 1e-6, &mut a);
        layer_norm_last_axis(&nhwc, c, affine, 1e-6, &mut b);
        let mut a_nhwc = vec![0.0; c * p];
        transpose_inner(&a, 1, c, p, &mut a_nhwc);
        assert_eq!(a_nhwc, b);
        // Each normalised row (before the affine part) has mean 0 and variance 1 - eps-ish.
        let row: Vec<f64> = (0..c)
            .map(|ch| ((b[ch] - beta[ch]) / gamma[ch]) as f64)
            .collect();
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "{mean} {var}"
        );
    }

    #[test]
    fn grn_matches_its_definition() {
        // One image, 2 pixels, 2 channels: G = (sqrt(1+9), sqrt(4+16)), N = G / mean(G).
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let (gamma, beta) = ([0.5f32, -1.0], [0.25f32, 0.0]);
        let mut out = [0.0; 4];
        grn_channels_last(&x, 1, 2, 2, &gamma, &beta, &mut out);
        let g = [10f64.sqrt(), 20f64.sqrt()];
        let m = (g[0] + g[1]) / 2.0;
        for (i, &v) in x.iter().enumerate() {
            let (c, v) = (i % 2, v as f64);
            let n = g[c] / (m + 1e-6);
            let want = gamma[c] as f64 * (v * n) + beta[c] as f64 + v;
            assert!(
                (out[i] as f64 - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn linear_and_dot_handle_remainders() {
        let k = 13; // not a multiple of the 8 lanes
        let x: Vec<f32> = (0..2 * k).map(|i| i as f32 * 0.5).collect();
        let w: Vec<f32> = (0..3 * k).map(|i| 1.0 - i as f32 * 0.01).collect();
        let mut out = vec![0.0; 6];
        linear(&x, 2, k, &w, Some(&[1.0, 2.0, 3.0]), 3, &mut out);
        for r in 0..2 {
            for o in 0..3 {
                let want: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum::<f64>()
                    + (o + 1) as f64;
                assert!((out[r * 3 + o] as f64 - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn conv_layouts_agree_on_odd_shapes() {
        // Batch 3, 11x9 input, 6 -> 4 channels in 2 groups, 3x3 stride 2 padding 1.
        let g = Conv2dGeometry {
            batch: 3,
            in_channels: 6,
            in_h: 11,
            in_w: 9,
            out_channels: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 2,
            stride_w: 2,
            pad_h: 1,
            pad_w: 1,
            groups: 2,
        };
        let x: Vec<f32> = (0..3 * 6 * 11 * 9)
            .map(|i| ((i * 37) % 23) as f32 * 0.1 - 1.0)
            .collect();
        let w: Vec<f32> = (0..4 * 3 * 9)
            .map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.5)
            .collect();
        let b = [0.1, -0.2, 0.3, 0.0];
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut nchw = vec![0.0; 3 * 4 * oh * ow];
        conv2d_nchw(&g, &x, &w, Some(&b), &mut nchw);
        let mut x_nhwc = vec![0.0; x.len()];
        transpose_inner(&x, 3, 6, 11 * 9, &mut x_nhwc);
        let mut nhwc = vec![0.0; nchw.len()];
        conv2d_nhwc(&g, &x_nhwc, &w, Some(&b), &mut nhwc);
        let mut back = vec![0.0; nchw.len()];
        transpose_inner(&nhwc, 3, oh * ow, 4, &mut back);
        assert_eq!(back, nchw);
    }

    #[test]
    fn grn_scale_then_affine_equals_grn() {
        let (batch, pixels, c) = (3, 5, 7);
        let x: Vec<f32> = (0..batch * pixels * c)
            .map(|i| ((i * 29) % 17) as f32 * 0.3 - 2.0)
            .collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 - i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 * 0.05).collect();
        let mut want = vec![0.0; x.len()];
        grn_channels_last(&x, batch, pixels, c, &gamma, &beta, &mut want);
        let s = grn_scale_channels_last(&x, batch, pixels, c, &gamma);
        for (i, &v) in x.iter().enumerate() {
            let (n, ch) = (i / (pixels * c), i % c);
            let got = v * s[n * c + ch] + beta[ch];
            assert!((got - want[i]).abs() < 1e-5, "{i}: {got} vs {}", want[i]);
        }
    }

    #[test]
    fn sum_squares_do_not_depend_on_the_split() {
        // 3 samples of 50 rows (samples straddle the 64-row blocks), 3 channels.
        let (per, c) = (50, 3);
        let x: Vec<f32> = (0..3 * per * c)
            .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 9.0)
            .collect();
        let whole = combine_sum_squares(&sum_squares_partials(&x, 0, per, c), 3, c);
        for split in [64, 128] {
            let mut partials = sum_squares_partials(&x[..split * c], 0, per, c);
            partials.extend(sum_squares_partials(&x[split * c..], split, per, c));
            assert_eq!(
                combine_sum_squares(&partials, 3, c),
                whole,
                "split at {split}"
            );
        }
        let direct: f64 = (0..per).map(|r| (x[r * c] as f64).powi(2)).sum();
        assert!((whole[0] - direct).abs() < 1e-9 * direct);
        // The one-buffer version: the same segments in the same order, the same bits, for
        // samples shorter and longer than a block.
        for per in [50, 150] {
            let x: Vec<f32> = (0..3 * per * c)
                .map(|i| (i as f32 * 0.7311).sin())
                .collect();
            let want = combine_sum_squares(&sum_squares_partials(&x, 0, per, c), 3, c);
            let (mut partial, mut got) = (vec![0.0; c], vec![0.0; 3 * c]);
            sum_squares_into(&x, per, c, &mut partial, &mut got);
            assert_eq!(got, want, "{per} rows per sample");
        }
    }

    #[test]
    fn linear_fused_equals_its_parts() {
        let (rows, per, k, n) = (6, 3, 10, 5);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 31) % 19) as f32 * 0.2 - 1.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.4)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let scale: Vec<f32> = (0..2 * k).map(|i| 0.5 + i as f32 * 0.05).collect();
        let res: Vec<f32> = (0..rows * n).map(|i| i as f32 * 0.01).collect();
        // Parts: normalise, scale, linear, activation, residual.
        let mut normed = vec![0.0; x.len()];
        layer_norm_last_axis(&x, k, None, 1e-6, &mut normed);
        for r in 0..rows {
            for c in 0..k {
                normed[r * k + c] *= scale[(r / per) * k + c];
            }
        }
        let mut want = vec![0.0; rows * n];
        linear(&normed, rows, k, &w, Some(&b), n, &mut want);
        activation(Activation::Gelu, &mut want);
        want.iter_mut().zip(&res).for_each(|(y, r)| *y += r);
        let mut got = vec![0.0; rows * n];
        let prologue = LinearPrologue {
            norm_eps: Some(1e-6),
            scale: Some(RowScale {
                values: &scale,
                rows_per_sample: per,
                first_row: 0,
            }),
        };
        let epilogue = LinearEpilogue {
            activation: Some(Activation::Gelu),
            kernel: None,
            residual: Some(&res),
        };
        linear_fused(&x, rows, k, &w, &b, n, prologue, epilogue, &mut got, None);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn pooling_layouts_agree() {
        let (batch, c, p) = (3, 5, 7);
        let x: Vec<f32> = (0..batch * c * p).map(|i| i as f32 * 0.25).collect();
        let mut x_nhwc = vec![0.0; x.len()];
        transpose_inner(&x, batch, c, p, &mut x_nhwc);
        assert_eq!(
            global_avg_pool_nchw(&x, batch, c, p),
            global_avg_pool_nhwc(&x_nhwc, batch, p, c)
        );
    }

    #[test]
    fn activations_match_known_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(
            Activation::Gelu.apply_f64(1.0),
            0.841_344_746_068_542_9
        ));
        assert!(close(
            Activation::GeluTanh.apply_f64(1.0),
            0.841_191_990_608_276_8
        ));
        assert!(close(Activation::Relu.apply_f64(-2.0), 0.0));
        assert!(close(
            Activation::Silu.apply_f64(1.0),
            0.731_058_578_630_004_9
        ));
        assert!(close(
            Activation::QuickGelu.apply_f64(1.0),
            0.845_795_765_932_821_2
        ));
        assert!(close(
            Activation::Mish.apply_f64(1.0),
            0.865_098_388_267_310_3
        ));
        assert_eq!(Activation::from_hf_name("swish"), Some(Activation::Silu));
        assert_eq!(Activation::from_hf_name("gelu_foo"), None);
    }
}
