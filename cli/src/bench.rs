//! `cnx bench`: forward-pass timing, side by side across batch sizes.

use std::time::{Duration, Instant};

use cnx_runtime::{Tensor, WeightStore};
use serde::Serialize;

use cnx_compiler::backend::interp;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_compiler::{build_graph, LoadedModel};
use cnx_runtime::program::StepOp;

use crate::engine::{Backend, Engine};
use crate::{random, Error, ModelSpec};

/// One batch size's measurements (the `--json` object; its keys are a contract).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub backend: String,
    /// The kernels' instruction set (`avx512`, `avx2`, `portable`; `CNX_ISA` caps it).
    pub isa: String,
    pub fused: bool,
    /// The products' arithmetic (`f32`, `int8`).
    pub precision: String,
    pub batch: usize,
    pub threads: usize,
    pub height: usize,
    pub width: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub images_per_s: f64,
    /// 2 x MACs per image x batch / median time.
    pub gflops: f64,
    /// Load (checkpoint, graph, passes, derived weights) plus the first forward pass.
    pub first_inference_ms: f64,
    /// Peak resident memory of the process so far, if the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// `gflops` as a share of the GEMM microkernel's measured peak (`--peak`).
    pub percent_of_peak: Option<f64>,
    /// JIT compile time (lowering + Cranelift), part of the first inference.
    pub jit_compile_ms: Option<f64>,
    /// JIT: share of the timed runs spent in the runtime's ops, and the rest: the generated
    /// code, which is today the schedule and its calls (the key keeps its name: a contract).
    pub jit_runtime_share: Option<f64>,
    pub jit_generated_kernel_share: Option<f64>,
}

/// What to measure.
pub struct BenchConfig<'a> {
    pub spec: ModelSpec,
    /// Checkpoint; `None`: random weights generated in memory.
    pub weights: Option<&'a std::path::Path>,
    pub input_hw: (usize, usize),
    pub batches: Vec<usize>,
    pub threads: usize,
    pub runs: usize,
    pub pipeline: &'a Pipeline,
    pub fused: bool,
    pub precision: cnx_compiler::ir::Precision,
    /// Run every op on the plain reference kernels (no packed GEMM).
    pub reference_kernels: bool,
    /// The engine timed.
    pub backend: Backend,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident set size from `/proc/self/status` (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One step of the program in a profile: its median wall time over the profiled passes and
/// what it computes and moves.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    /// The Hugging Face module (`convnextv2.encoder.stages.0.layers.1.pwconv1`).
    pub name: String,
    /// The op and its fusions (`Linear pwconv1 (+act, GRN sums)`).
    pub kind: String,
    pub ms: f64,
    /// FLOPs of the whole batch (two per multiply-add; 0 for ops without products).
    pub flops: f64,
    /// Bytes of activations read and written by the whole batch.
    pub bytes: f64,
}

impl ProfileRow {
    pub fn gflops(&self) -> f64 {
        self.flops / (self.ms / 1e3) / 1e9
    }

    pub fn gbytes_per_s(&self) -> f64 {
        self.bytes / (self.ms / 1e3) / 1e9
    }

    /// The encoder stage the step belongs to (`stage 2`), or the part of the model outside
    /// the stages (`embeddings`, `head`).
    pub fn stage(&self) -> String {
        match self.name.split_once(".stages.") {
            Some((_, rest)) => format!("stage {}", rest.split('.').next().unwrap_or("?")),
            None if self.name.contains("embeddings") => "embeddings".into(),
            None => "head".into(),
        }
    }
}

/// The kind of a step as a profile groups it (the fused linear layers by their role).
fn profile_kind(step: &cnx_runtime::program::Step) -> &'static str {
    match &step.op {
        StepOp::Conv2d { conv, .. } if conv.is_depthwise() => "DepthwiseConv2d (+norm)",
        StepOp::Conv2d { .. } => "Conv2d (stem, downsample)",
        StepOp::Linear { linear, .. } if linear.activation.is_some() => {
            "Linear pwconv1 (+act, GRN sums)"
        }
        StepOp::Linear { linear, .. } if linear.residual => "Linear pwconv2 (+scale, residual)",
        _ => step.kind(),
    }
}

/// Per-step wall time of the interpreter's forward pass at `batch`: `passes` timed passes
/// after one warm-up, each step's median, in program order.
pub fn profile(
    model: &LoadedModel,
    batch: usize,
    threads: usize,
    passes: usize,
) -> Result<Vec<ProfileRow>, Error> {
    let x = random::random_pixel_values(&model.graph, batch, 1);
    let program = model.program(&[outputs::LOGITS])?;
    let mut per_step = vec![Vec::new(); program.steps.len()];
    for pass in 0..=passes.max(1) {
        let mut times = Vec::new();
        interp::run_program(&program, &model.weights, &x, threads, Some(&mut times))?;
        if pass > 0 {
            per_step
                .iter_mut()
                .zip(&times)
                .for_each(|(v, d)| v.push(ms(*d)));
        }
    }
    Ok(program
        .steps
        .iter()
        .zip(per_step)
        .map(|(step, mut times)| {
            times.sort_by(f64::total_cmp);
            ProfileRow {
                name: step.name.to_string(),
                kind: profile_kind(step).into(),
                ms: times[times.len() / 2],
                flops: 2.0 * step.macs_per_image() as f64 * batch as f64,
                bytes: step.activation_bytes_per_image() as f64 * batch as f64,
            }
        })
        .collect())
}

/// The model a benchmark runs: its checkpoint, or random weights generated in memory; on the
/// reference kernels if asked.
pub fn load_model(cfg: &BenchConfig<'_>) -> Result<LoadedModel, Error> {
    let model = match cfg.weights {
        Some(path) => cfg
            .spec
            .clone()
            .load_with(Some(path), cfg.input_hw, cfg.pipeline)?,
        None => {
            let unfused = build_graph(&cfg.spec.config, cfg.input_hw)?;
            let store = WeightStore::from_tensors(random::random_parameters(&unfused, 0))?;
            cfg.spec
                .clone()
                .with_weights(store, cfg.input_hw, cfg.pipeline)?
        }
    };
    Ok(if cfg.reference_kernels {
        model.use_reference_kernels()
    } else {
        model
    })
}

/// Measures the forward pass for each batch size (median and min of `runs`, after the first,
/// which is reported as first inference together with loading).
pub fn bench(cfg: &BenchConfig<'_>) -> Result<Vec<BenchResult>, Error> {
    let mut results = Vec::new();
    for &batch in &cfg.batches {
        let start = Instant::now();
        let model = load_model(cfg)?;
        let x: Tensor = random::random_pixel_values(&model.graph, batch, 1);
        let macs = model.graph.macs();
        let engine = Engine::new(model, cfg.backend, &[outputs::LOGITS])?;
        let forward = || engine.logits(&x, cfg.threads);
        forward()?;
        let first = start.elapsed();
        if let Engine::Jit(j) = &engine {
            j.take_runtime_time();
        }
        let mut times: Vec<f64> = (0..cfg.runs)
            .map(|_| {
                let t = Instant::now();
                forward().map(|_| ms(t.elapsed()))
            })
            .collect::<Result<_, _>>()?;
        let split = match &engine {
            Engine::Jit(j) => {
                let runtime = j.take_runtime_time().as_secs_f64();
                let total: f64 = times.iter().sum::<f64>() / 1e3;
                Some((runtime / total, 1.0 - runtime / total))
            }
            _ => None,
        };
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let flops = 2.0 * macs as f64 * batch as f64;
        results.push(BenchResult {
            model: cfg.spec.name.clone(),
            backend: match (&engine, cfg.reference_kernels) {
                (Engine::Jit(_), false) => "jit".into(),
                (Engine::Jit(_), true) => "jit-reference".into(),
                (_, true) => "interp-reference".into(),
                _ => "interp".into(),
            },
            isa: cnx_runtime::kernels::Isa::detect().name().into(),
            fused: cfg.fused,
            precision: cfg.precision.name().into(),
            batch,
            threads: cfg.threads,
            height: cfg.input_hw.0,
            width: cfg.input_hw.1,
            runs: cfg.runs,
            median_ms: median,
            min_ms: times[0],
            images_per_s: batch as f64 / (median / 1e3),
            gflops: flops / (median / 1e3) / 1e9,
            first_inference_ms: ms(first),
            peak_rss_mib: peak_rss_mib(),
            percent_of_peak: None,
            jit_runtime_share: split.map(|s| s.0),
            jit_generated_kernel_share: split.map(|s| s.1),
            jit_compile_ms: match &engine {
                Engine::Jit(j) => Some(ms(j.compile_time)),
                _ => None,
            },
        });
    }
    Ok(results)
}
