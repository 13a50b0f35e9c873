//! Optimised convolutions for NHWC, the layout the optimiser leaves: the 7x7 depthwise conv
//! vectorised over channels with its LayerNorm in the epilogue, and the patchify stem and 2x2
//! stride-2 downsampling (kernel == stride, no padding) as packed GEMMs over gathered patches.
//! Their reference twins are [`reference::conv2d_nhwc`] followed by
//! [`reference::layer_norm_last_axis`].

use super::gemm::{self, Isa, PackedWeights};
use super::reference::{self, Affine, Conv2dGeometry};

/// A LayerNorm over each output pixel's channels (the conv's epilogue).
#[derive(Clone, Copy)]
pub struct PixelNorm<'a> {
    pub eps: f64,
    pub affine: Option<Affine<'a>>,
}

/// Depthwise weights repacked `[kh][kw][C]`, so that one tap is a contiguous channel vector.
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    pub kh: usize,
    pub kw: usize,
    pub channels: usize,
    data: Vec<f32>,
}

impl DepthwiseWeights {
    /// The tap-major weights: `taps()[(ky * kw + kx) * channels + c]`.
    pub fn taps(&self) -> &[f32] {
        &self.data
    }

    /// From PyTorch's `[C, 1, kh, kw]`.
    pub fn pack(weight: &[f32], channels: usize, kh: usize, kw: usize) -> DepthwiseWeights {
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
    let (oh, ow) = (g.out_h(), g.out_w());
    assert_eq!(out.len(), rows.len() * ow * c);
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

/// Weights of a conv whose kernel equals its stride (no padding, no groups), repacked as a
/// GEMM over gathered patches: `[O, I, kh, kw]` to `[O, kh, kw, I]`, then packed.
pub fn pack_patch_conv(
    weight: &[f32],
    out_ch: usize,
    in_ch: usize,
    kh: usize,
    kw: usize,
    isa: Isa,
) -> PackedWeights {
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
    PackedWeights::pack(&reordered, out_ch, k, isa)
}

/// Kernel == stride conv on NHWC output rows `rows` (indices into batch x out_h): each output
/// pixel's patch gathered (and, with `input_norm`, every input pixel normalised as it is
/// gathered), a packed GEMM, then the output pixels layer-normalised with `output_norm`.
#[allow(clippy::too_many_arguments)]
pub fn patch_conv_nhwc(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &PackedWeights,
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
    // Scratch: the gathered patches of one output row, and its raw conv output.
    crate::scratch::with_f32(ow * k + ow * cout, |scratch| {
        let (patches, raw) = scratch.split_at_mut(ow * k);
        for (r, row) in rows.enumerate() {
            let (n, y) = (row / oh, row % oh);
            let image = &x[n * g.in_h * g.in_w * cin..(n + 1) * g.in_h * g.in_w * cin];
            for xo in 0..ow {
                for ky in 0..g.kernel_h {
                    for kx in 0..g.kernel_w {
                        let (iy, ix) = (y * g.stride_h + ky, xo * g.stride_w + kx);
                        let src = &image[(iy * g.in_w + ix) * cin..][..cin];
                        let dst = &mut patches[xo * k + (ky * g.kernel_w + kx) * cin..][..cin];
                        match input_norm {
                            None => dst.copy_from_slice(src),
                            Some(eps) => reference::layer_norm_last_axis(src, cin, None, eps, dst),
                        }
                    }
                }
            }
            let dst = &mut out[r * ow * cout..(r + 1) * ow * cout];
            let e = gemm::Epilogue {
                bias,
                activation: None,
                residual: None,
            };
            match output_norm {
                None => gemm::gemm(patches, ow, w, e, dst),
                Some(nm) => {
                    gemm::gemm(patches, ow, w, e, raw);
                    reference::layer_norm_last_axis(raw, cout, nm.affine, nm.eps, dst);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn depthwise_matches_the_reference_on_odd_shapes() {
        // Batch 3, 97x75 images, 37 channels (not a multiple of 8 or 16), 7x7 padding 3.
        let (b, h, w, c) = (3, 97, 75, 37);
        let g = geometry(b, c, h, w, c, 7, 1, 3, c);
        let x = values(b * h * w * c, 1);
        let wt = values(c * 49, 2);
        let bias = values(c, 3);
        let (gamma, beta) = (values(c, 4), values(c, 5));
        let packed = DepthwiseWeights::pack(&wt, c, 7, 7);
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
            let split = 100;
            let per_row = w * c;
            let (lo, hi) = got.split_at_mut(split * per_row);
            depthwise_nhwc(&g, &x, &packed, &bias, norm, 0..split, lo);
            depthwise_nhwc(&g, &x, &packed, &bias, norm, split..b * h, hi);
            let err = max_err(&want, &got);
            // 49 f32 FMAs vs the reference's f64 sum; normalised outputs are O(1).
            assert!(err < 2e-5, "{err}");
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
                let packed = pack_patch_conv(&wt, cout, cin, k, k, isa);
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
                }
            }
        }
    }
}
