//! Optimised convolutions for NHWC, the layout the optimiser leaves: the 7x7 depthwise conv
//! vectorised over channels with its LayerNorm in the epilogue, and the patchify stem and 2x2
//! stride-2 downsampling (kernel == stride, no padding) as packed GEMMs over gathered patches.
//! Their reference twins are [`reference::conv2d_nhwc`] followed by
//! [`reference::layer_norm_last_axis`].

use super::matmul::{self, MatMulKernel, PackedMatrix};
use super::reference::{self, Affine, Conv2dGeometry};
use super::reference::{LinearEpilogue, LinearPrologue};
use super::{Isa, Width};

/// A LayerNorm over each output pixel's channels (the conv's epilogue).
#[derive(Clone, Copy)]
pub struct PixelNorm<'a> {
    pub eps: f64,
    pub affine: Option<Affine<'a>>,
}

/// Depthwise weights repacked `[kh][kw][C]`, so that one tap is a contiguous channel vector,
/// for the kernel of one [`Isa`] (as [`PackedWeights`] are).
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    pub kh: usize,
    pub kw: usize,
    pub channels: usize,
    pub isa: Isa,
    data: Vec<f32>,
}

impl DepthwiseWeights {
    /// The tap-major weights: `taps()[(ky * kw + kx) * channels + c]`.
    pub fn taps(&self) -> &[f32] {
        &self.data
    }

    /// From PyTorch's `[C, 1, kh, kw]`, for `isa`'s kernel.
    pub fn pack(
        weight: &[f32],
        channels: usize,
        kh: usize,
        kw: usize,
        isa: Isa,
    ) -> DepthwiseWeights {
        assert_eq!(weight.len(), channels * kh * kw);
        let mut data = vec![0f32; weight.len()];
        for c in 0..channels {
            for t in 0..kh * kw {
                data[t * channels + c] = weight[c * kh * kw + t];
            }
        }
        DepthwiseWeights {
            kh,
            kw,
            channels,
            isa,
            data,
        }
    }
}

/// Depthwise conv (stride 1) over NHWC output rows `rows` (indices into batch x out_h), each
/// output pixel computed as a channel vector, then layer-normalised if `norm` is given.
/// `out` holds exactly those rows.
pub fn depthwise_nhwc(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &DepthwiseWeights,
    bias: &[f32],
    norm: Option<PixelNorm<'_>>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = w.channels;
    assert!(g.groups == c && g.in_channels == c && g.out_channels == c);
    assert!(g.stride_h == 1 && g.stride_w == 1);
    assert_eq!(out.len(), rows.len() * g.out_w() * c);
    assert!(x.len() >= g.batch * g.in_h * g.in_w * c && bias.len() == c);
    if let Some(a) = norm.and_then(|nm| nm.affine) {
        assert!(a.gamma.len() == c && a.beta.len() == c);
    }
    // The vector kernels cover 7-wide kernels that keep the image's size (ConvNeXt's).
    let vectorised =
        w.kw == 7 && (g.out_h(), g.out_w()) == (g.in_h, g.in_w) && g.pad_h < w.kh && g.pad_w < w.kw;
    match w.isa.width() {
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 | Width::Avx2 if vectorised => {
            depthwise_nhwc_x86(g, x, w, bias, norm, rows, out)
        }
        _ => depthwise_nhwc_portable(g, x, w, bias, norm, rows, out),
    }
}

/// [`depthwise_nhwc`] on the vectors of `w.isa` (AVX-512 or AVX2), for the geometries it
/// checked.
#[cfg(target_arch = "x86_64")]
fn depthwise_nhwc_x86(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &DepthwiseWeights,
    bias: &[f32],
    norm: Option<PixelNorm<'_>>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (c, oh, ow) = (w.channels, g.out_h(), g.out_w());
    let image_len = g.in_h * g.in_w * c;
    for (r, row) in rows.enumerate() {
        let (n, y) = (row / oh, row % oh);
        let dst = &mut out[r * ow * c..(r + 1) * ow * c];
        let taps = x86::Rows {
            image: &x[n * image_len..(n + 1) * image_len],
            taps: &w.data,
            bias,
            h: g.in_h,
            w: g.in_w,
            c,
            kh: w.kh,
            ph: g.pad_h,
            pw: g.pad_w,
        };
        // SAFETY: weights are only packed for an ISA this CPU has (`Isa::detect`,
        // `Isa::available`); the image, taps (kh x 7 x c), bias and destination row have the
        // sizes `depthwise_row_7` needs, and the affine parts `c` values (asserted by the
        // caller and by construction); `y < oh = in_h`.
        unsafe { x86::depthwise_row_7(w.isa, &taps, y, dst, norm) };
    }
}

/// [`depthwise_nhwc`] without SIMD intrinsics (what the compiler vectorises for the baseline
/// target): one output pixel at a time, the accumulator a channel vector.
fn depthwise_nhwc_portable(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &DepthwiseWeights,
    bias: &[f32],
    norm: Option<PixelNorm<'_>>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = w.channels;
    let (oh, ow) = (g.out_h(), g.out_w());
    crate::scratch::with_f32(c, |acc| {
        for (r, row) in rows.enumerate() {
            let (n, y) = (row / oh, row % oh);
            let image = &x[n * g.in_h * g.in_w * c..(n + 1) * g.in_h * g.in_w * c];
            for xo in 0..ow {
                acc.copy_from_slice(bias);
                for ky in 0..w.kh {
                    let iy = (y + ky) as isize - g.pad_h as isize;
                    if iy < 0 || iy >= g.in_h as isize {
                        continue;
                    }
                    for kx in 0..w.kw {
                        let ix = (xo + kx) as isize - g.pad_w as isize;
                        if ix < 0 || ix >= g.in_w as isize {
                            continue;
                        }
                        let pixel = &image[(iy as usize * g.in_w + ix as usize) * c..][..c];
                        let tap = &w.data[(ky * w.kw + kx) * c..][..c];
                        // Independent lanes: the compiler vectorises this over channels. (A plain
                        // multiply-add: `mul_add` without a target FMA feature is a libm call.)
                        for ((a, &p), &t) in acc.iter_mut().zip(pixel).zip(tap) {
                            *a += p * t;
                        }
                    }
                }
                let dst = &mut out[(r * ow + xo) * c..][..c];
                match norm {
                    None => dst.copy_from_slice(acc),
                    Some(nm) => reference::layer_norm_last_axis(acc, c, nm.affine, nm.eps, dst),
                }
            }
        }
    })
}

/// The vectorised depthwise rows: the JIT's schedule with 16-channel (AVX-512) or 8-channel
/// (AVX2 + FMA) vectors, one generic kernel over a [`Lanes`](super::simd::Lanes) implementation each.
#[cfg(target_arch = "x86_64")]
mod x86 {
    /// What one output row needs: the sample's input image `[H, W, C]`, the tap-major weights
    /// and the bias, the geometry (padding `ph`, `pw`; a `kh x KW` kernel).
    pub struct Rows<'a> {
        pub image: &'a [f32],
        pub taps: &'a [f32],
        pub bias: &'a [f32],
        pub h: usize,
        pub w: usize,
        pub c: usize,
        pub kh: usize,
        pub ph: usize,
        pub pw: usize,
    }

    use crate::kernels::simd::{Lanes, V256, V512};

    /// Output row `y` of one sample into `dst` (`[W, C]`), then each pixel's LayerNorm if
    /// `norm` is given, while the row is in L1.
    ///
    /// # Safety
    /// The CPU has `isa`, which is AVX-512 or AVX2 + FMA; `r.image` holds `h * w * c` values,
    /// `r.taps` `kh * 7 * c`, `r.bias` `c`, `dst` `w * c`; `y < h`; the affine parts `c` values
    /// each.
    pub unsafe fn depthwise_row_7(
        isa: super::Isa,
        r: &Rows<'_>,
        y: usize,
        dst: &mut [f32],
        norm: Option<super::PixelNorm<'_>>,
    ) {
        // SAFETY: this function's contract, passed on.
        unsafe {
            match isa.width() {
                crate::kernels::Width::Avx512 => row_avx512(r, y, dst, norm),
                crate::kernels::Width::Avx2 => row_avx2(r, y, dst, norm),
                crate::kernels::Width::Portable => {
                    unreachable!("no vector kernel for the portable ISA")
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn row_avx512(
        r: &Rows<'_>,
        y: usize,
        dst: &mut [f32],
        norm: Option<super::PixelNorm<'_>>,
    ) {
        // SAFETY: `depthwise_row_7`'s contract.
        unsafe { row::<V512, 7>(r, y, dst, norm) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_avx2(
        r: &Rows<'_>,
        y: usize,
        dst: &mut [f32],
        norm: Option<super::PixelNorm<'_>>,
    ) {
        // SAFETY: `depthwise_row_7`'s contract.
        unsafe { row::<V256, 7>(r, y, dst, norm) }
    }

    /// The row: for each block of `V::LANES` channels, the row's pixels in blocks of four with
    /// their accumulators in registers across all taps; per kernel row, the `KW` tap vectors
    /// are loaded once and each input column once, feeding every output it reaches (17 loads
    /// for 28 fmas with a 7x7 kernel, where a pixel at a time needs 98). Channels past a
    /// multiple of the width go through masked loads and stores.
    #[inline(always)]
    unsafe fn row<V: Lanes, const KW: usize>(
        r: &Rows<'_>,
        y: usize,
        dst: &mut [f32],
        norm: Option<super::PixelNorm<'_>>,
    ) {
        let ky = (r.ph.saturating_sub(y), r.kh.min(r.h + r.ph - y));
        for c0 in (0..r.c).step_by(V::LANES) {
            // SAFETY (both calls): `depthwise_row_7`'s contract; blocks stay inside the row.
            unsafe {
                let mask = V::mask(r.c - c0);
                let mut x0 = 0;
                while x0 < r.w {
                    match r.w - x0 {
                        1 => block::<V, KW, 1>(r, y, ky, c0, mask, x0, dst),
                        2 => block::<V, KW, 2>(r, y, ky, c0, mask, x0, dst),
                        3 => block::<V, KW, 3>(r, y, ky, c0, mask, x0, dst),
                        _ => block::<V, KW, 4>(r, y, ky, c0, mask, x0, dst),
                    }
                    x0 += 4;
                }
            }
        }
        if let Some(nm) = norm {
            // SAFETY: as above; `dst` holds whole pixels.
            unsafe { layer_norm_pixels::<V>(dst, r.c, nm.eps as f32, nm.affine) }
        }
    }

    /// Output pixels `x0..x0 + N`, channels `c0..` under `mask`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<V: Lanes, const KW: usize, const N: usize>(
        r: &Rows<'_>,
        y: usize,
        (ky_lo, ky_hi): (usize, usize),
        c0: usize,
        mask: V::Mask,
        x0: usize,
        dst: &mut [f32],
    ) {
        let c = r.c;
        // SAFETY (all pointer arithmetic below): rows `y + ky - ph` for ky in ky_lo..ky_hi
        // are inside the image, columns are checked against `w`, tap rows are < kh, and every
        // access covers channels `c0..` below `c` (the mask).
        unsafe {
            let bias = V::load(mask, r.bias.as_ptr().add(c0));
            let mut acc = [bias; N];
            for ky in ky_lo..ky_hi {
                let row = r.image.as_ptr().add((y + ky - r.ph) * r.w * c + c0);
                let taps = r.taps.as_ptr().add(ky * KW * c + c0);
                let wv: [V; KW] = std::array::from_fn(|kx| V::load(mask, taps.add(kx * c)));
                for i in 0..N + KW - 1 {
                    // Input column x0 - pw + i; output x0 + j reads it through tap i - j.
                    let Some(ix) = (x0 + i).checked_sub(r.pw).filter(|&ix| ix < r.w) else {
                        continue;
                    };
                    let v = V::load(mask, row.add(ix * c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        if let Some(kx) = i.checked_sub(j).filter(|&kx| kx < KW) {
                            *a = V::fma(v, wv[kx], *a);
                        }
                    }
                }
            }
            let out = dst.as_mut_ptr().add(x0 * c + c0);
            for (j, a) in acc.iter().enumerate() {
                V::store(mask, out.add(j * c), *a);
            }
        }
    }

    /// LayerNorm of each pixel (`c` values) of `row`, in place: mean, then the biased
    /// variance from the deviations (two passes, f32 lanes, as PyTorch's CPU LayerNorm),
    /// then `(x - mean) / sqrt(var + eps)`, affine if given.
    #[inline(always)]
    unsafe fn layer_norm_pixels<V: Lanes>(
        row: &mut [f32],
        c: usize,
        eps: f32,
        affine: Option<super::Affine<'_>>,
    ) {
        assert!(row.len().is_multiple_of(c));
        if let Some(a) = affine {
            assert!(a.gamma.len() == c && a.beta.len() == c);
        }
        for px in row.chunks_exact_mut(c) {
            let p = px.as_mut_ptr();
            // SAFETY (all accesses): channels c0.. below c under each mask; masked-off lanes
            // load as zero, so they add nothing to the sum.
            unsafe {
                let mut sum = V::zero();
                for c0 in (0..c).step_by(V::LANES) {
                    sum = V::add(sum, V::load(V::mask(c - c0), p.add(c0)));
                }
                let mean = V::sum(sum) / c as f32;
                let mean_v = V::splat(mean);
                let mut squares = V::zero();
                for c0 in (0..c).step_by(V::LANES) {
                    let m = V::mask(c - c0);
                    // Masked-off lanes would hold 0 - mean: zeroed.
                    let d = V::keep(m, V::sub(V::load(m, p.add(c0)), mean_v));
                    squares = V::fma(d, d, squares);
                }
                let var = V::sum(squares) / c as f32;
                let inv = V::splat(1.0 / (var + eps).sqrt());
                for c0 in (0..c).step_by(V::LANES) {
                    let m = V::mask(c - c0);
                    let x = V::load(m, p.add(c0));
                    let mut y = V::mul(V::sub(x, mean_v), inv);
                    if let Some(a) = affine {
                        let g = V::load(m, a.gamma.as_ptr().add(c0));
                        let b = V::load(m, a.beta.as_ptr().add(c0));
                        y = V::fma(y, g, b);
                    }
                    V::store(m, p.add(c0), y);
                }
            }
        }
    }
}

/// Weights of a conv whose kernel equals its stride (no padding, no groups), repacked as a
/// GEMM over gathered patches: `[O, I, kh, kw]` to `[O, kh, kw, I]`, then packed for `kernel`
/// (in its precision).
pub fn pack_patch_conv(
    weight: &[f32],
    out_ch: usize,
    in_ch: usize,
    kh: usize,
    kw: usize,
    kernel: &'static MatMulKernel,
) -> PackedMatrix {
    let k = in_ch * kh * kw;
    PackedMatrix::pack(
        &patch_major(weight, out_ch, in_ch, kh, kw),
        out_ch,
        k,
        kernel,
    )
}

/// `[O, I, kh, kw]` to `[O, kh, kw, I]`: the order of a gathered NHWC patch.
fn patch_major(weight: &[f32], out_ch: usize, in_ch: usize, kh: usize, kw: usize) -> Vec<f32> {
    assert_eq!(weight.len(), out_ch * in_ch * kh * kw);
    let k = in_ch * kh * kw;
    let mut reordered = vec![0f32; weight.len()];
    for o in 0..out_ch {
        for i in 0..in_ch {
            for t in 0..kh * kw {
                reordered[o * k + t * in_ch + i] = weight[(o * in_ch + i) * kh * kw + t];
            }
        }
    }
    reordered
}

/// Kernel == stride conv on NHWC output rows `rows` (indices into batch x out_h): each output
/// pixel's patch gathered (and, with `input_norm`, every input pixel normalised as it is
/// gathered), a packed GEMM (in the weights' precision: bf16 or int8 packing each gathered
/// patch), then the output
/// pixels layer-normalised with `output_norm`.
#[allow(clippy::too_many_arguments)]
pub fn patch_conv_nhwc(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &PackedMatrix,
    bias: &[f32],
    input_norm: Option<f64>,
    output_norm: Option<PixelNorm<'_>>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (cin, cout) = (g.in_channels, g.out_channels);
    assert!(g.kernel_h == g.stride_h && g.kernel_w == g.stride_w && g.pad_h == 0 && g.pad_w == 0);
    let (oh, ow) = (g.out_h(), g.out_w());
    let k = cin * g.kernel_h * g.kernel_w;
    assert_eq!((w.k, w.n), (k, cout));
    assert_eq!(out.len(), rows.len() * ow * cout);
    // Output rows in groups of about a GEMM row block (the weights stream once per group,
    // not once per image row: a late stage's row is 7 pixels). Each output pixel is computed
    // as alone, whatever the grouping. Scratch: a group's gathered patches and raw output.
    let group = (matmul::MC / ow.max(1)).clamp(1, rows.len().max(1));
    let pixels = group * ow;
    crate::scratch::with_f32(pixels * k + pixels * cout, |scratch| {
        let (patches, raw) = scratch.split_at_mut(pixels * k);
        let first = rows.start;
        let groups = rows.clone().step_by(group);
        for row0 in groups {
            let rows_here = group.min(rows.end - row0);
            for (i, row) in (row0..row0 + rows_here).enumerate() {
                let (n, y) = (row / oh, row % oh);
                let image = &x[n * g.in_h * g.in_w * cin..(n + 1) * g.in_h * g.in_w * cin];
                let patches = &mut patches[i * ow * k..(i + 1) * ow * k];
                for xo in 0..ow {
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let (iy, ix) = (y * g.stride_h + ky, xo * g.stride_w + kx);
                            let src = &image[(iy * g.in_w + ix) * cin..][..cin];
                            let at = xo * k + (ky * g.kernel_w + kx) * cin;
                            let dst = &mut patches[at..][..cin];
                            match input_norm {
                                None => dst.copy_from_slice(src),
                                Some(eps) => {
                                    reference::layer_norm_last_axis(src, cin, None, eps, dst)
                                }
                            }
                        }
                    }
                }
            }
            let m = rows_here * ow;
            let at = (row0 - first) * ow * cout;
            let dst = &mut out[at..at + m * cout];
            let patches = &patches[..m * k];
            let product = |y: &mut [f32]| {
                let none = (LinearPrologue::default(), LinearEpilogue::default());
                matmul::linear_fused(patches, m, w, bias, none.0, none.1, y, None)
            };
            match output_norm {
                None => product(dst),
                Some(nm) => {
                    let raw = &mut raw[..m * cout];
                    product(raw);
                    reference::layer_norm_last_axis(raw, cout, nm.affine, nm.eps, dst);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::kernel_for;
    use crate::ops::Precision;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977) % 1999) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn geometry(
        batch: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
        groups: usize,
    ) -> Conv2dGeometry {
        Conv2dGeometry {
            batch,
            in_channels: cin,
            in_h: h,
            in_w: w,
            out_channels: cout,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: p,
            pad_w: p,
            groups,
        }
    }

    /// Reference: conv, then (optionally) LayerNorm of each output pixel.
    fn reference_conv(
        g: &Conv2dGeometry,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        norm: Option<PixelNorm<'_>>,
    ) -> Vec<f32> {
        let mut out = vec![0.0; g.batch * g.out_h() * g.out_w() * g.out_channels];
        reference::conv2d_nhwc(g, x, w, Some(b), &mut out);
        if let Some(nm) = norm {
            let raw = out.clone();
            reference::layer_norm_last_axis(&raw, g.out_channels, nm.affine, nm.eps, &mut out);
        }
        out
    }

    /// Largest absolute difference; NaN (a value never written) counts as infinite.
    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| {
            let d = (x - y).abs();
            m.max(if d.is_nan() { f32::INFINITY } else { d })
        })
    }

    #[test]
    fn depthwise_matches_the_reference_on_odd_shapes() {
        // Batch 3, 97x75 images, 37 channels (not a multiple of 8 or 16), 7x7 padding 3; and
        // images smaller than the kernel (5x3: every pixel a border pixel, blocks of 3).
        for (b, h, w, c) in [(3, 97, 75, 37), (2, 5, 3, 20)] {
            let g = geometry(b, c, h, w, c, 7, 1, 3, c);
            let x = values(b * h * w * c, 1);
            let wt = values(c * 49, 2);
            let bias = values(c, 3);
            let (gamma, beta) = (values(c, 4), values(c, 5));
            for norm in [
                None,
                Some(PixelNorm {
                    eps: 1e-6,
                    affine: None,
                }),
                Some(PixelNorm {
                    eps: 1e-6,
                    affine: Some(Affine {
                        gamma: &gamma,
                        beta: &beta,
                    }),
                }),
            ] {
                let want = reference_conv(&g, &x, &wt, &bias, norm);
                let mut got = vec![0.0; want.len()];
                // Two calls over row ranges, as two threads would make them.
                let split = (b * h) / 2 + 1;
                let per_row = w * c;
                // Every kernel this CPU has (the portable loop included).
                for isa in Isa::available() {
                    let packed = DepthwiseWeights::pack(&wt, c, 7, 7, isa);
                    got.fill(f32::NAN);
                    let (lo, hi) = got.split_at_mut(split * per_row);
                    depthwise_nhwc(&g, &x, &packed, &bias, norm, 0..split, lo);
                    depthwise_nhwc(&g, &x, &packed, &bias, norm, split..b * h, hi);
                    let err = max_err(&want, &got);
                    // 49 f32 FMAs vs the reference's f64 sum; normalised outputs are O(1).
                    assert!(err < 2e-5, "{b}x{h}x{w}x{c} {isa:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn patch_conv_matches_the_reference() {
        for isa in Isa::available() {
            // Stem: 3 -> 21 channels, 4x4 stride 4 on 97x75 (floors to 24x18), batch 3; and a
            // 2x2 downsample 13 -> 30 with its input normalised.
            for (cin, cout, k, h, w) in [(3, 21, 4, 97, 75), (13, 30, 2, 25, 19)] {
                let g = geometry(3, cin, h, w, cout, k, k, 0, 1);
                let x = values(3 * h * w * cin, 6);
                let wt = values(cout * cin * k * k, 7);
                let bias = values(cout, 8);
                let (gamma, beta) = (values(cout, 9), values(cout, 10));
                let packed = pack_patch_conv(&wt, cout, cin, k, k, kernel_for(Precision::F32, isa));
                let rows = 3 * g.out_h();
                for (input_norm, output_norm) in [
                    (None, None),
                    (Some(1e-6), None),
                    (
                        None,
                        Some(PixelNorm {
                            eps: 1e-6,
                            affine: Some(Affine {
                                gamma: &gamma,
                                beta: &beta,
                            }),
                        }),
                    ),
                ] {
                    let xin = match input_norm {
                        None => x.clone(),
                        Some(eps) => {
                            let mut v = vec![0.0; x.len()];
                            reference::layer_norm_last_axis(&x, cin, None, eps, &mut v);
                            v
                        }
                    };
                    let want = reference_conv(&g, &xin, &wt, &bias, output_norm);
                    let mut got = vec![0.0; want.len()];
                    patch_conv_nhwc(
                        &g,
                        &x,
                        &packed,
                        &bias,
                        input_norm,
                        output_norm,
                        0..rows,
                        &mut got,
                    );
                    let err = max_err(&want, &got);
                    assert!(err < 2e-5, "{isa:?} {cin}->{cout} k{k}: {err}");

                    // int8: the reference int8 linear on the gathered patches, bit for bit.
                    let qpacked =
                        pack_patch_conv(&wt, cout, cin, k, k, kernel_for(Precision::Int8, isa));
                    let kk = cin * k * k;
                    let (oh, ow) = (g.out_h(), g.out_w());
                    let mut patches = vec![0.0; rows * ow * kk];
                    for (p, patch) in patches.chunks_exact_mut(kk).enumerate() {
                        let (n, y, xo) = (p / (oh * ow), p / ow % oh, p % ow);
                        for t in 0..k * k {
                            let (iy, ix) = (y * k + t / k, xo * k + t % k);
                            let src = &xin[((n * h + iy) * w + ix) * cin..][..cin];
                            patch[t * cin..(t + 1) * cin].copy_from_slice(src);
                        }
                    }
                    let q = crate::kernels::quantize::QuantisedWeights::new(
                        &patch_major(&wt, cout, cin, k, k),
                        cout,
                        kk,
                        qpacked.q_max,
                    );
                    let mut raw = vec![0.0; rows * ow * cout];
                    reference::qlinear_fused(
                        &patches,
                        rows * ow,
                        &q,
                        &bias,
                        LinearPrologue::default(),
                        LinearEpilogue::default(),
                        &mut raw,
                        None,
                    );
                    let want_q = match output_norm {
                        None => raw,
                        Some(nm) => {
                            let mut v = vec![0.0; raw.len()];
                            reference::layer_norm_last_axis(&raw, cout, nm.affine, nm.eps, &mut v);
                            v
                        }
                    };
                    patch_conv_nhwc(
                        &g,
                        &x,
                        &qpacked,
                        &bias,
                        input_norm,
                        output_norm,
                        0..rows,
                        &mut got,
                    );
                    assert_eq!(got, want_q, "{isa:?} int8 {cin}->{cout} k{k}");
                }
            }
        }
    }
}
