//! `cnx bench`: forward-pass timing, per batch size, on either engine.

use std::path::PathBuf;

use super::{InputSize, PassFlags, Threads};
use crate::bench::{self, BenchConfig, BenchResult};
use crate::engine::Backend;
use crate::{Error, ModelSpec};

/// Time the forward pass: median and min per batch size, images/s, GFLOP/s, first
/// inference, peak memory. Random weights unless --weights (or a model directory) gives them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Preset, config.json, or model directory.
    model: String,
    /// Checkpoint (default: the model directory's, else random weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    #[command(flatten)]
    threads: Threads,
    /// Timed runs per batch size (after one untimed first inference).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[command(flatten)]
    input_size: InputSize,
    /// One JSON object per batch size and line.
    #[arg(long)]
    json: bool,
    /// Run every op on the plain reference kernels (no packed GEMM), for comparison.
    #[arg(long)]
    reference_kernels: bool,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    backend: Backend,
    /// Also print where the forward pass (interpreter, first batch size) spends its time: one
    /// row per step (median over --runs passes) with GFLOP/s and % of the microkernel's peak
    /// for products, GB/s of activations for the rest; then totals per op kind and per stage.
    #[arg(long)]
    profile: bool,
    /// Also measure the GEMM microkernel's own peak (GFLOP/s) and report % of it.
    #[arg(long)]
    peak: bool,
    #[command(flatten)]
    passes: PassFlags,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let input_hw = self.input_size.hw(&spec)?;
        if self.batch.contains(&0) {
            return Err(Error::Usage("--batch sizes must be at least 1".into()));
        }
        spec.check_run(self.batch.iter().copied().max().unwrap_or(1), input_hw)?;
        let weights = self.weights.clone().or_else(|| spec.default_weights());
        let pipeline = self.passes.pipeline()?;
        let cfg = BenchConfig {
            spec,
            weights: weights.as_deref(),
            input_hw,
            batches: self.batch.clone(),
            threads: self.threads.get(),
            runs: self.runs as usize,
            pipeline: &pipeline,
            fused: !self.passes.no_fuse,
            precision: self.passes.precision.get(),
            reference_kernels: self.reference_kernels,
            backend: self.backend,
        };
        let isa = cnx_runtime::kernels::Isa::detect();
        let kernel = cnx_runtime::kernels::kernel_for(cfg.precision, isa);
        let peak = (self.peak || self.profile).then(|| {
            let gflops = cnx_runtime::kernels::matmul::peak_gflops(kernel, cfg.threads, 1.0);
            if !self.json {
                println!(
                    "peak: {} ({}), {} threads: {gflops:.1} GFLOP/s",
                    kernel.name,
                    isa.name(),
                    cfg.threads
                );
            }
            gflops
        });
        if self.profile {
            let batch = cfg.batches[0];
            let m = bench::load_model(&cfg)?;
            let rows = bench::profile(&m, batch, cfg.threads, cfg.runs)?;
            if self.json {
                let report = serde_json::json!({ "profile": rows, "batch": batch,
                    "threads": cfg.threads, "isa": isa.name(), "peak_gflops": peak });
                println!("{report}");
            } else {
                print_profile(
                    &rows,
                    batch,
                    cfg.threads,
                    cfg.runs,
                    peak.unwrap_or(f64::NAN),
                );
            }
        }
        for mut r in bench::bench(&cfg)? {
            r.percent_of_peak = peak.map(|p| 100.0 * r.gflops / p);
            if self.json {
                println!("{}", serde_json::to_string(&r).expect("serialisable"));
            } else {
                print_result(&r);
            }
        }
        Ok(())
    }
}

fn print_result(r: &BenchResult) {
    println!(
        "{} {}x{} batch {} threads {} {} {} {} {}: median {:.1} ms, min {:.1} ms, {:.2} images/s, {:.2} GFLOP/s, first inference {:.0} ms, peak RSS {}",
        r.model,
        r.height,
        r.width,
        r.batch,
        r.threads,
        r.backend,
        r.isa,
        if r.fused { "fused" } else { "unfused" },
        r.precision,
        r.median_ms,
        r.min_ms,
        r.images_per_s,
        r.gflops,
        r.first_inference_ms,
        r.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.0} MiB"))
    );
    if let Some(c) = r.jit_compile_ms {
        println!("  JIT compile {c:.0} ms");
    }
    if let (Some(rt), Some(g)) = (r.jit_runtime_share, r.jit_generated_kernel_share) {
        println!(
            "  JIT time: runtime ops {:.1}%, generated code and schedule {:.1}%",
            100.0 * rt,
            100.0 * g
        );
    }
    if let Some(pct) = r.percent_of_peak {
        println!("  {pct:.1}% of the microkernel's peak");
    }
}

/// The per-step table, then the totals by op kind and by stage.
fn print_profile(rows: &[bench::ProfileRow], batch: usize, threads: usize, runs: usize, peak: f64) {
    println!("profile: batch {batch}, {threads} threads, median of {runs} passes per step");
    println!(
        "  {:<52} {:<34} {:>8} {:>8} {:>6} {:>7}",
        "step", "kind", "ms", "GFLOP/s", "%peak", "GB/s"
    );
    for r in rows {
        let name = r.name.trim_start_matches("convnextv2.");
        let (gflops, pct) = if r.flops > 0.0 {
            (
                format!("{:.1}", r.gflops()),
                format!("{:.0}", 100.0 * r.gflops() / peak),
            )
        } else {
            (String::new(), String::new())
        };
        println!(
            "  {name:<52} {:<34} {:>8.2} {gflops:>8} {pct:>6} {:>7.1}",
            r.kind,
            r.ms,
            r.gbytes_per_s()
        );
    }
    let total_ms: f64 = rows.iter().map(|r| r.ms).sum();
    let group = |key: &dyn Fn(&bench::ProfileRow) -> String| {
        let mut groups: Vec<(String, f64, f64, f64)> = Vec::new();
        for r in rows {
            let k = key(r);
            match groups.iter_mut().find(|g| g.0 == k) {
                Some(g) => {
                    g.1 += r.ms;
                    g.2 += r.flops;
                    g.3 += r.bytes;
                }
                None => groups.push((k, r.ms, r.flops, r.bytes)),
            }
        }
        groups
    };
    for (title, mut groups, sort) in [
        ("by kind", group(&|r| r.kind.clone()), true),
        ("by stage", group(&|r| r.stage()), false),
    ] {
        if sort {
            groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        println!("  {title}:");
        for (k, ms, flops, bytes) in groups {
            let rate = flops / (ms / 1e3) / 1e9;
            let products = if flops > 0.0 {
                format!("{rate:>6.1} GFLOP/s {:>4.0}% of peak", 100.0 * rate / peak)
            } else {
                format!("{:>6.1} GB/s", bytes / (ms / 1e3) / 1e9)
            };
            println!(
                "    {k:<36} {ms:>9.2} ms {:>5.1}%  {products}",
                100.0 * ms / total_ms
            );
        }
    }
    let flops: f64 = rows.iter().map(|r| r.flops).sum();
    let rate = flops / (total_ms / 1e3) / 1e9;
    println!(
        "  total {total_ms:.1} ms (sum of the steps' medians): {rate:.1} GFLOP/s, {:.0}% of peak",
        100.0 * rate / peak
    );
}
