//! Whole forward passes side by side in one run: the interpreter over the fused graph, the
//! Cranelift JIT and the code the `convnextv2!` macro generated, for the same model, on the
//! same random weights, the same pool and the same kernels.
//!
//! `cargo bench -p cnx-tests --bench forward` (threads: `CNX_THREADS`, default all cores).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cnx_cli::{random, ModelSpec};
use cnx_compiler::backend::interp;
use cnx_compiler::passes::Pipeline;
use cnx_jit::{JitModel, JitOptions};

convnextv2::convnextv2!(config = "atto-1k-224", name = Atto);
convnextv2::convnextv2!(config = "tiny-1k-224", name = Tiny);

fn threads() -> usize {
    std::env::var("CNX_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(convnextv2::pool::available)
}

fn forward(c: &mut Criterion) {
    let threads = threads();
    let dir = tempfile::tempdir().unwrap();
    for (preset, batches) in [("atto-1k-224", [1usize, 8]), ("tiny-1k-224", [1, 8])] {
        let spec = ModelSpec::resolve(preset).unwrap();
        let graph = cnx_compiler::build_graph(&spec.config, (224, 224)).unwrap();
        let path = dir.path().join(format!("{preset}.safetensors"));
        random::write_safetensors(&path, &random::random_parameters(&graph, 1)).unwrap();
        let interp_model = spec
            .load_with(Some(&path), (224, 224), &Pipeline::default_pipeline())
            .unwrap();
        type Forward = Box<dyn Fn(&[f32], usize) -> Vec<f32>>;
        let jit = JitModel::compile(
            ModelSpec::resolve(preset)
                .unwrap()
                .load_with(Some(&path), (224, 224), &Pipeline::default_pipeline())
                .unwrap(),
            &["logits"],
            JitOptions {
                verify: false,
                disassemble: false,
            },
        )
        .unwrap();
        let generated: Forward = match preset {
            "atto-1k-224" => {
                let m = Atto::load(&path).unwrap().with_threads(threads);
                Box::new(move |x, b| m.forward(x, b).unwrap())
            }
            _ => {
                let m = Tiny::load(&path).unwrap().with_threads(threads);
                Box::new(move |x, b| m.forward(x, b).unwrap())
            }
        };
        let mut group = c.benchmark_group(format!("{preset}/{threads}threads"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(2));
        for batch in batches {
            let pixel_values = random::random_pixel_values(&interp_model.graph, batch, 2);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new("interpreter", batch), |b| {
                b.iter(|| {
                    interp::run_threaded(&interp_model, &pixel_values, &["logits"], threads)
                        .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("jit", batch), |b| {
                b.iter(|| jit.run(&pixel_values, threads).unwrap())
            });
            group.bench_function(BenchmarkId::new("macro", batch), |b| {
                b.iter(|| generated(pixel_values.data(), batch))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
