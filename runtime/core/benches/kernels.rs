//! The hot kernels against their reference twins, on ConvNeXt V2's real shapes (one thread).
//!
//! `cargo bench -p cnx-runtime --bench kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cnx_runtime::kernels::conv::{depthwise_nhwc, DepthwiseWeights, PixelNorm};
use cnx_runtime::kernels::matmul::{linear_fused, PackedMatrix, KERNELS};
use cnx_runtime::kernels::reference::{self as k, Conv2dGeometry, LinearEpilogue, LinearPrologue};
use cnx_runtime::kernels::Isa;
use cnx_runtime::kernels::{activation, Activation};

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic spread in [-1, 1).
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// pwconv1 of tiny's stage 1 and 4 at batch 1 (M = pixels, K = C, N = 4C), GELU epilogue, on
/// every GEMM kernel (f32, bf16, int8) this CPU runs.
fn linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear+gelu");
    group.sample_size(10);
    for (m, k_in, n) in [(784, 192, 768), (49, 768, 3072), (3136, 96, 384)] {
        let x = values(m * k_in, 1);
        let w = values(n * k_in, 2);
        let bias = values(n, 3);
        let mut out = vec![0f32; m * n];
        let epilogue = LinearEpilogue {
            activation: Some(Activation::Gelu),
            kernel: None,
            residual: None,
        };
        group.throughput(Throughput::Elements((2 * m * k_in * n) as u64));
        let shape = format!("{m}x{k_in}x{n}");
        // Every GEMM kernel of every precision this CPU runs (the tile model aside).
        for kernel in KERNELS.iter().filter(|k| k.runs_here() && !k.modelled) {
            let packed = PackedMatrix::pack(&w, n, k_in, kernel);
            group.bench_function(BenchmarkId::new(kernel.name, &shape), |b| {
                b.iter(|| {
                    linear_fused(
                        &x,
                        m,
                        &packed,
                        &bias,
                        LinearPrologue::default(),
                        epilogue,
                        &mut out,
                        None,
                    )
                })
            });
        }
        if m * n <= 49 * 3072 {
            group.bench_function(BenchmarkId::new("reference", &shape), |b| {
                b.iter(|| {
                    k::linear_fused(
                        &x,
                        m,
                        k_in,
                        &w,
                        &bias,
                        n,
                        LinearPrologue::default(),
                        epilogue,
                        &mut out,
                        None,
                    )
                })
            });
        }
    }
    group.finish();
}

/// The 7x7 depthwise conv with its LayerNorm epilogue, tiny's stage 1 (56x56x96).
fn depthwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("dwconv7x7+layernorm");
    group.sample_size(10);
    let (h, w, ch) = (56, 56, 96);
    let g = Conv2dGeometry {
        batch: 1,
        in_channels: ch,
        in_h: h,
        in_w: w,
        out_channels: ch,
        kernel_h: 7,
        kernel_w: 7,
        stride_h: 1,
        stride_w: 1,
        pad_h: 3,
        pad_w: 3,
        groups: ch,
    };
    let x = values(h * w * ch, 4);
    let weight = values(ch * 49, 5);
    let bias = values(ch, 6);
    let packed = DepthwiseWeights::pack(&weight, ch, 7, 7, Isa::detect());
    let mut out = vec![0f32; h * w * ch];
    group.bench_function("optimised", |b| {
        b.iter(|| {
            let norm = Some(PixelNorm {
                eps: 1e-6,
                affine: None,
            });
            depthwise_nhwc(&g, &x, &packed, &bias, norm, 0..h, &mut out)
        })
    });
    group.bench_function("reference", |b| {
        b.iter(|| {
            k::conv2d_nhwc(&g, &x, &weight, Some(&bias), &mut out);
            let conv = out.clone();
            k::layer_norm_last_axis(&conv, ch, None, 1e-6, &mut out);
        })
    });
    group.finish();
}

/// Exact-erf GELU over one pwconv1 output of tiny's stage 1.
fn gelu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gelu");
    let x = values(3136 * 384, 7);
    let mut y = x.clone();
    group.throughput(Throughput::Elements(x.len() as u64));
    group.bench_function("vectorised", |b| {
        b.iter(|| {
            y.copy_from_slice(&x);
            activation::gelu_slice(&mut y)
        })
    });
    let scalar = Activation::Gelu.f32_fn();
    group.bench_function("scalar", |b| {
        b.iter(|| {
            for (o, &v) in y.iter_mut().zip(&x) {
                *o = scalar(v);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, linear, depthwise, gelu);
criterion_main!(benches);
