//! The `cnx` command. Library code returns typed errors; this is the only place that prints
//! them. Exit codes: 0 success, 2 bad usage or input, 1 internal error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use cnx_compiler::backend::interp;
use cnx_compiler::backend::jit::{JitModel, JitOptions};
use cnx_compiler::backend::rust::EmitSpec;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_compiler::{bench, classify, io, listing, random, Error, LoadedModel, ModelSpec};

#[derive(Parser)]
#[command(
    name = "cnx",
    version,
    about = "Compile and run ConvNeXt V2 image classifiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Generated code `cnx compile` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    /// The Rust the `convnextv2!` macro expands to.
    Rust,
    /// The Cranelift IR the JIT generates (random weights: their addresses are immediates).
    Clif,
    /// The x86-64 (or host) machine code the JIT generates from that IR, as Cranelift lists it.
    Asm,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on HF `pixel_values` (.npy) and write its outputs (.npz).
    Run {
        /// Preset (`tiny-1k-224`, `facebook/convnextv2-tiny-1k-224`), config.json, or model directory.
        #[arg(long)]
        model: String,
        /// Checkpoint: model.safetensors, a sharded index.json, or a directory holding one.
        /// Default: the one beside the model's config.json.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// float32 .npy of shape (batch, num_channels, H, W), exactly HF's pixel_values.
        #[arg(long)]
        input: PathBuf,
        /// .npz to write: logits, pooler_output, last_hidden_state (+ hidden_states_*).
        #[arg(long)]
        output: PathBuf,
        /// Also write hidden_states_0 .. hidden_states_<num_stages> (NCHW, HF order).
        #[arg(long)]
        hidden_states: bool,
        /// Worker threads (default: one per core). Results do not depend on it.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
        /// Execution backend (default: the JIT; the interpreter gives the same results to
        /// ~1e-6 and needs no code generation).
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        #[command(flatten)]
        passes: PassFlags,
    },
    /// Print a model's graph: one line per node (name, op, output, params, MACs) and totals.
    Graph {
        /// Preset, config.json, or model directory.
        model: String,
        /// Input size as H or HxW (default: the config's image_size).
        #[arg(long)]
        input_size: Option<String>,
        /// Print Graphviz dot instead of the table.
        #[arg(long)]
        dot: bool,
        /// Print activation traffic, node count and MACs of the unfused and the optimised graph.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        passes: PassFlags,
    },
    /// Print the code a backend generates for a model: `--emit rust`, what the
    /// `convnextv2!` macro expands to.
    Compile {
        /// Preset, config.json, or model directory.
        model: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "rust")]
        emit: Emit,
        /// Input size as H or HxW (default: the config's image_size).
        #[arg(long)]
        input_size: Option<String>,
        /// The unfused graph, exactly as Hugging Face defines it.
        #[arg(long)]
        no_fuse: bool,
        /// The generated type's name.
        #[arg(long, default_value = "ConvNextV2")]
        name: String,
    },
    /// Time the forward pass: median and min per batch size, images/s, GFLOP/s, first
    /// inference, peak memory. Random weights unless --weights (or a model directory) gives them.
    Bench {
        /// Preset, config.json, or model directory.
        model: String,
        /// Checkpoint (default: the model directory's, else random weights).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// Worker threads (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
        /// Timed runs per batch size (after one untimed first inference).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Input size as H or HxW (default: the config's image_size).
        #[arg(long)]
        input_size: Option<String>,
        /// One JSON object per batch size and line.
        #[arg(long)]
        json: bool,
        /// Run every op on the plain reference kernels (no packed GEMM), for comparison.
        #[arg(long)]
        reference_kernels: bool,
        /// Execution backend.
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        /// Also print where one forward pass spends its time, per op kind.
        #[arg(long)]
        profile: bool,
        /// Also measure the GEMM microkernel's own peak (GFLOP/s) and report % of it.
        #[arg(long)]
        peak: bool,
        #[command(flatten)]
        passes: PassFlags,
    },
    /// Classify images: top-k labels with softmax probabilities, per image.
    Classify {
        /// Preset, config.json, model directory or hub id (from the HF cache, else downloaded).
        #[arg(long)]
        model: String,
        /// Checkpoint (default: the model's own).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Image files and directories (walked recursively for .jpg .jpeg .png .webp .bmp .gif).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Labels per image.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        top: u32,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Worker threads for inference (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
        /// One JSON object per image and line.
        #[arg(long)]
        json: bool,
        /// Execution backend (default: the JIT; the interpreter gives the same results to
        /// ~1e-6 and needs no code generation).
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        #[command(flatten)]
        passes: PassFlags,
    },
    /// Write the pixel_values a model sees for an image (float32 NCHW .npy, as `cnx run` takes).
    Preprocess {
        #[arg(long)]
        model: String,
        image: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Accuracy on an ImageFolder tree (one sub-folder per class, named by label or index):
    /// top-1, top-5 and mean cross-entropy.
    Eval {
        #[arg(long)]
        model: String,
        #[arg(long)]
        weights: Option<PathBuf>,
        dir: PathBuf,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        passes: PassFlags,
    },
    /// Compare the arrays two .npz files share: max absolute and relative difference.
    Compare { a: PathBuf, b: PathBuf },
    /// Write a random-weight model directory (config.json, model.safetensors, pixel_values.npy).
    /// Every parameter is random, GRN and LayerNorm included.
    RandomModel {
        /// Preset, config.json, or model directory.
        model: String,
        /// Directory to write (created if missing).
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Batch size of pixel_values.npy.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Input size as H or HxW (default: the config's image_size).
        #[arg(long)]
        input_size: Option<String>,
    },
}

/// Which engine runs the graph.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    /// The interpreter over the runtime's ops and kernels.
    Interp,
    /// The graph compiled by Cranelift at run time (memory-bound ops generated, matrix
    /// products through the runtime).
    Jit,
}

/// Which optimiser passes run.
#[derive(clap::Args)]
struct PassFlags {
    /// The unfused graph, exactly as Hugging Face defines it.
    #[arg(long, conflicts_with = "passes")]
    no_fuse: bool,
    /// Comma-separated passes to run, in order (default: all). `cnx graph M --passes` with no
    /// list prints the default pipeline.
    #[arg(long, num_args = 0..=1, value_delimiter = ',', default_missing_value = "")]
    passes: Option<Vec<String>>,
}

impl PassFlags {
    fn pipeline(&self) -> Result<Pipeline, Error> {
        if self.no_fuse {
            return Ok(Pipeline::empty());
        }
        match &self.passes {
            Some(names) if !names.iter().all(String::is_empty) => Ok(Pipeline::from_names(names)?),
            _ => Ok(Pipeline::default_pipeline()),
        }
    }

    /// `--passes` given without a list.
    fn list_requested(&self) -> bool {
        self.passes
            .as_ref()
            .is_some_and(|names| names.iter().all(String::is_empty))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnx: error: {e}");
            ExitCode::from(if e.is_user_error() { 2 } else { 1 })
        }
    }
}

fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Run {
            model,
            weights,
            input,
            output,
            hidden_states,
            threads,
            backend,
            passes,
        } => {
            let threads = threads.map_or_else(default_threads, |t| t as usize);
            let pipeline = passes.pipeline()?;
            run(
                &model,
                weights.as_deref(),
                &input,
                &output,
                hidden_states,
                threads,
                backend,
                &pipeline,
            )
        }
        Command::Graph {
            model,
            input_size,
            dot,
            stats,
            passes,
        } => graph(&model, input_size.as_deref(), dot, stats, &passes),
        Command::Compare { a, b } => compare(&a, &b),
        Command::Compile {
            model,
            emit,
            input_size,
            no_fuse,
            name,
        } => {
            let spec = ModelSpec::resolve(&model)?;
            let input_hw = input_hw(&spec, input_size.as_deref())?;
            if syn::parse_str::<syn::Ident>(&name).is_err() {
                return Err(Error::Usage(format!(
                    "--name `{name}` is not a Rust type name"
                )));
            }
            match emit {
                Emit::Rust => {
                    let source = cnx_compiler::backend::rust::emit_source(&EmitSpec {
                        name,
                        model: spec.name.clone(),
                        config: spec.config.clone(),
                        input_hw,
                        fuse: !no_fuse,
                        embedded_weights: None,
                        config_path: None,
                    })
                    .map_err(Error::Usage)?;
                    print!("{source}");
                }
                Emit::Clif | Emit::Asm => {
                    let pipeline = if no_fuse {
                        Pipeline::empty()
                    } else {
                        Pipeline::default_pipeline()
                    };
                    let graph = cnx_compiler::build_graph(&spec.config, input_hw)?;
                    let store = cnx_runtime::WeightStore::from_tensors(random::random_parameters(
                        &graph, 0,
                    ))?;
                    let loaded = LoadedModel::with_weights(spec, store, input_hw, &pipeline)?;
                    let options = JitOptions {
                        verify: true,
                        disassemble: emit == Emit::Asm,
                    };
                    let jit = JitModel::compile(loaded, &[outputs::LOGITS], options)?;
                    print!(
                        "{}",
                        if emit == Emit::Asm {
                            jit.asm()
                        } else {
                            jit.clif()
                        }
                    );
                    eprintln!(
                        "cnx: {} generated steps, {} runtime calls, compiled in {:.0} ms",
                        jit.generated_steps,
                        jit.runtime_steps,
                        jit.compile_time.as_secs_f64() * 1e3
                    );
                }
            }
            Ok(())
        }
        Command::Classify {
            model,
            weights,
            inputs,
            top,
            batch,
            threads,
            json,
            backend,
            passes,
        } => {
            let pipeline = passes.pipeline()?;
            let threads = threads.map_or_else(default_threads, |t| t as usize);
            let opts = ClassifyOptions {
                top: top as usize,
                batch: batch as usize,
                threads,
                json,
                backend,
            };
            classify_cmd(&model, weights.as_deref(), &inputs, &opts, &pipeline)
        }
        Command::Preprocess {
            model,
            image,
            output,
        } => {
            let spec = ModelSpec::resolve(&model)?;
            let cfg = classify::preprocess_config(&spec)?;
            let x = classify::pixel_values(&image, &cfg)?;
            io::write_npy(&output, &x)?;
            eprintln!("cnx: wrote {} {:?}", output.display(), x.shape());
            Ok(())
        }
        Command::Eval {
            model,
            weights,
            dir,
            batch,
            threads,
            json,
            passes,
        } => {
            let pipeline = passes.pipeline()?;
            let threads = threads.map_or_else(default_threads, |t| t as usize);
            eval_cmd(
                &model,
                weights.as_deref(),
                &dir,
                batch as usize,
                threads,
                json,
                &pipeline,
            )
        }
        Command::Bench {
            model,
            weights,
            batch,
            threads,
            runs,
            input_size,
            json,
            reference_kernels,
            backend,
            profile,
            peak,
            passes,
        } => {
            let spec = ModelSpec::resolve(&model)?;
            let input_hw = input_hw(&spec, input_size.as_deref())?;
            if batch.contains(&0) {
                return Err(Error::Usage("--batch sizes must be at least 1".into()));
            }
            let weights = weights.or_else(|| spec.default_weights());
            let pipeline = passes.pipeline()?;
            let cfg = bench::BenchConfig {
                spec,
                weights: weights.as_deref(),
                input_hw,
                batches: batch,
                threads: threads.map_or_else(default_threads, |t| t as usize),
                runs: runs as usize,
                pipeline: &pipeline,
                fused: !passes.no_fuse,
                reference_kernels,
                jit: matches!(backend, Backend::Jit),
            };
            let peak = peak.then(|| {
                let isa = cnx_runtime::kernels::gemm::Isa::detect();
                let gflops = cnx_runtime::kernels::gemm::peak_gflops(isa, cfg.threads, 1.0);
                println!(
                    "peak: {isa:?} microkernel, {} threads: {gflops:.1} GFLOP/s",
                    cfg.threads
                );
                gflops
            });
            if profile {
                let batch = cfg.batches[0];
                let m = bench::load_model(&cfg)?;
                println!("profile, batch {batch}, {} threads:", cfg.threads);
                for (kind, ms, share) in bench::profile(&m, batch, cfg.threads)? {
                    println!("  {kind:<36} {ms:>9.1} ms {:>5.1}%", share * 100.0);
                }
            }
            for mut r in bench::bench(&cfg)? {
                r.percent_of_peak = peak.map(|p| 100.0 * r.gflops / p);
                if json {
                    println!("{}", serde_json::to_string(&r).expect("serialisable"));
                } else {
                    println!(
                        "{} {}x{} batch {} threads {} {} {}: median {:.1} ms, min {:.1} ms, {:.2} images/s, {:.2} GFLOP/s, first inference {:.0} ms, peak RSS {}",
                        r.model,
                        r.height,
                        r.width,
                        r.batch,
                        r.threads,
                        r.backend,
                        if r.fused { "fused" } else { "unfused" },
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
                    if let (Some(rt), Some(k)) = (r.jit_runtime_share, r.jit_generated_kernel_share)
                    {
                        println!(
                            "  JIT time: runtime ops {:.1}%, generated kernels {:.1}%, generated inline code and schedule {:.1}%",
                            100.0 * rt,
                            100.0 * k,
                            100.0 * (1.0 - rt - k)
                        );
                    }
                    if let Some(pct) = r.percent_of_peak {
                        println!("  {pct:.1}% of the microkernel's peak");
                    }
                }
            }
            Ok(())
        }
        Command::RandomModel {
            model,
            output,
            seed,
            batch,
            input_size,
        } => random_model(&model, &output, seed, batch as usize, input_size.as_deref()),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &str,
    weights: Option<&std::path::Path>,
    input: &std::path::Path,
    output: &std::path::Path,
    hidden_states: bool,
    threads: usize,
    backend: Backend,
    pipeline: &Pipeline,
) -> Result<(), Error> {
    let start = Instant::now();
    let spec = ModelSpec::resolve(model)?;
    let pixel_values = io::read_npy(input)?;
    let shape = pixel_values.shape().to_vec();
    let channels = spec.config.num_channels;
    if shape.len() != 4 || shape[1] != channels || shape[0] == 0 {
        return Err(Error::Npy {
            path: input.display().to_string(),
            reason: format!(
                "pixel_values must have shape (batch >= 1, {channels}, height, width), found {shape:?}"
            ),
        });
    }
    let loaded = LoadedModel::load_with(spec, weights, (shape[2], shape[3]), pipeline)?;
    let name = loaded.spec.name.clone();
    // logits, pooler_output, last_hidden_state, then (on request) the hidden states.
    let mut wanted = outputs::all(loaded.spec.config.num_stages);
    if !hidden_states {
        wanted.truncate(3);
    }
    let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let loaded_at = start.elapsed();
    let (values, compile): (std::collections::HashMap<String, cnx_runtime::Tensor>, _) =
        match backend {
            Backend::Interp => (
                interp::run_threaded(&loaded.graph, &loaded, &pixel_values, &wanted_refs, threads)?
                    .into_iter()
                    .collect(),
                None,
            ),
            Backend::Jit => {
                let jit = JitModel::compile(loaded, &wanted_refs, JitOptions::default())?;
                (jit.run(&pixel_values, threads)?, Some(jit.compile_time))
            }
        };
    let ran_at = start.elapsed();
    let arrays: Vec<(&str, &cnx_runtime::Tensor)> =
        wanted.iter().map(|n| (n.as_str(), &values[n])).collect();
    io::write_npz(output, &arrays)?;
    let logits = &values[outputs::LOGITS];
    let compile = compile.map_or(String::new(), |d| {
        format!(" (JIT compile {:.0} ms)", d.as_secs_f64() * 1e3)
    });
    eprintln!(
        "cnx: {name} on {:?}: logits {:?}; load {:.0} ms, forward {:.0} ms{compile}; wrote {}",
        shape,
        logits.shape(),
        loaded_at.as_secs_f64() * 1e3,
        (ran_at - loaded_at).as_secs_f64() * 1e3,
        output.display()
    );
    Ok(())
}

struct ClassifyOptions {
    top: usize,
    batch: usize,
    threads: usize,
    json: bool,
    backend: Backend,
}

/// Loads a model for classification at its preprocessing size.
fn load_classifier(
    model: &str,
    weights: Option<&std::path::Path>,
    pipeline: &Pipeline,
    backend: Backend,
) -> Result<
    (
        cnx_compiler::backend::Engine,
        cnx_runtime::preprocess::PreprocessConfig,
    ),
    Error,
> {
    let spec = ModelSpec::resolve(model)?;
    if spec.config.num_labels() == 0 {
        return Err(Error::Usage(format!(
            "{} has no classifier (num_labels 0): nothing to classify with",
            spec.name
        )));
    }
    let cfg = classify::preprocess_config(&spec)?;
    let loaded = LoadedModel::load_with(spec, weights, (cfg.size, cfg.size), pipeline)?;
    let engine = match backend {
        Backend::Interp => cnx_compiler::backend::Engine::Interp(loaded),
        Backend::Jit => cnx_compiler::backend::Engine::Jit(JitModel::compile(
            loaded,
            &[outputs::LOGITS],
            JitOptions::default(),
        )?),
    };
    Ok((engine, cfg))
}

/// A progress bar on stderr for runs of more than one batch; hidden when stderr is not a
/// terminal.
fn progress_bar(len: usize, batch: usize) -> indicatif::ProgressBar {
    if len <= batch || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn classify_cmd(
    model: &str,
    weights: Option<&std::path::Path>,
    inputs: &[PathBuf],
    opts: &ClassifyOptions,
    pipeline: &Pipeline,
) -> Result<(), Error> {
    let (loaded, cfg) = load_classifier(model, weights, pipeline, opts.backend)?;
    let labels = loaded.model().spec.config.id2label.clone();
    let inputs = classify::collect_inputs(inputs);
    if inputs.is_empty() {
        return Err(Error::Usage("no images found".into()));
    }
    let bar = progress_bar(inputs.len(), opts.batch);
    let total = inputs.len();
    let start = std::time::Instant::now();
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    let timing =
        classify::run_batches(&loaded, &cfg, inputs, opts.batch, opts.threads, |outcome| {
            use std::io::Write as _;
            bar.inc(1);
            let path_text = |p: &std::path::Path| p.display().to_string();
            let line = match outcome {
                classify::Outcome::Logits { path, logits } => {
                    let top = classify::top_k(&logits, &labels, opts.top);
                    if opts.json {
                        serde_json::json!({"path": path_text(&path), "top": top}).to_string()
                    } else {
                        let mut text = path_text(&path);
                        for p in top {
                            text.push_str(&format!("\n  {:>7.4}  {}", p.probability, p.label));
                        }
                        text
                    }
                }
                classify::Outcome::Failed { path, error } => {
                    failed += 1;
                    if opts.json {
                        serde_json::json!({"path": path_text(&path), "error": error}).to_string()
                    } else {
                        bar.suspend(|| eprintln!("cnx: error: {}: {error}", path_text(&path)));
                        return;
                    }
                }
            };
            // Printed and flushed per image: nothing already classified is lost if a later step fails.
            bar.suspend(|| {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            });
        })?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    eprintln!(
        "cnx: {} images in {wall:.2} s ({:.2} images/s); decode + preprocess {:.2} s, inference {:.2} s",
        total - failed,
        (total - failed) as f64 / wall,
        timing.preprocess_s,
        timing.inference_s
    );
    if failed > 0 {
        return Err(Error::Usage(format!(
            "{failed} image(s) could not be classified"
        )));
    }
    Ok(())
}

/// The class index of an ImageFolder sub-folder: its name as a label, a label's first synonym
/// (`tabby` for `tabby, tabby cat`), or an index.
fn class_index(name: &str, labels: &[String]) -> Option<usize> {
    labels
        .iter()
        .position(|l| l == name)
        .or_else(|| {
            labels
                .iter()
                .position(|l| l.split(',').next() == Some(name))
        })
        .or_else(|| name.parse().ok().filter(|&i: &usize| i < labels.len()))
}

fn eval_cmd(
    model: &str,
    weights: Option<&std::path::Path>,
    dir: &std::path::Path,
    batch: usize,
    threads: usize,
    json: bool,
    pipeline: &Pipeline,
) -> Result<(), Error> {
    let (loaded, cfg) = load_classifier(model, weights, pipeline, Backend::Jit)?;
    let labels = loaded.model().spec.config.id2label.clone();
    let read = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut classes: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let mut inputs = Vec::new();
    let mut targets = std::collections::HashMap::new();
    for class_dir in &classes {
        let name = class_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let target = class_index(&name, &labels).ok_or_else(|| {
            Error::Usage(format!(
                "{}: folder `{name}` is neither a label of the model nor a class index",
                dir.display()
            ))
        })?;
        for input in classify::collect_inputs(std::slice::from_ref(class_dir)) {
            if let Ok(p) = &input {
                targets.insert(p.clone(), target);
            }
            inputs.push(input);
        }
    }
    if inputs.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no images in class sub-folders",
            dir.display()
        )));
    }
    let bar = progress_bar(inputs.len(), batch);
    let (mut n, mut failed, mut top1, mut top5, mut ce) = (0usize, 0usize, 0usize, 0usize, 0f64);
    classify::run_batches(&loaded, &cfg, inputs, batch, threads, |outcome| {
        bar.inc(1);
        match outcome {
            classify::Outcome::Logits { path, logits } => {
                let target = targets[&path];
                let probs = classify::softmax(&logits);
                let rank = probs.iter().filter(|&&p| p > probs[target]).count();
                n += 1;
                top1 += usize::from(rank == 0);
                top5 += usize::from(rank < 5);
                ce -= probs[target].max(f64::MIN_POSITIVE).ln();
            }
            classify::Outcome::Failed { path, error } => {
                failed += 1;
                bar.suspend(|| eprintln!("cnx: error: {}: {error}", path.display()));
            }
        }
    })?;
    bar.finish_and_clear();
    let (acc1, acc5, mean_ce) = if n > 0 {
        (
            top1 as f64 / n as f64,
            top5 as f64 / n as f64,
            ce / n as f64,
        )
    } else {
        (0.0, 0.0, 0.0)
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"model": loaded.model().spec.name, "images": n, "failed": failed,
                "top1": acc1, "top5": acc5, "cross_entropy": mean_ce})
        );
    } else {
        println!(
            "{}: {n} images ({failed} failed): top-1 {:.4}, top-5 {:.4}, mean cross-entropy {:.4}",
            loaded.model().spec.name,
            acc1,
            acc5,
            mean_ce
        );
    }
    if failed > 0 {
        return Err(Error::Usage(format!(
            "{failed} image(s) could not be evaluated"
        )));
    }
    Ok(())
}

/// One thread per available core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_size(s: &str) -> Option<(usize, usize)> {
    let mut parts = s.split(['x', 'X']);
    let h = parts.next()?.trim().parse().ok()?;
    let w = match parts.next() {
        Some(w) => w.trim().parse().ok()?,
        None => h,
    };
    if parts.next().is_some() || h == 0 || w == 0 {
        return None;
    }
    Some((h, w))
}

/// `--input-size`, or the config's `image_size` square.
fn input_hw(spec: &ModelSpec, input_size: Option<&str>) -> Result<(usize, usize), Error> {
    match input_size {
        Some(s) => parse_size(s).ok_or_else(|| {
            Error::Usage(format!(
                "--input-size `{s}`: expected H or HxW, e.g. 224 or 97x75"
            ))
        }),
        None => Ok((spec.config.image_size, spec.config.image_size)),
    }
}

fn random_model(
    model: &str,
    dir: &std::path::Path,
    seed: u64,
    batch: usize,
    input_size: Option<&str>,
) -> Result<(), Error> {
    let spec = ModelSpec::resolve(model)?;
    let hw = input_hw(&spec, input_size)?;
    let graph = cnx_compiler::build_graph(&spec.config, hw)?;
    let io_err = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io_err(dir.to_path_buf()))?;
    let params = random::random_parameters(&graph, seed);
    random::write_safetensors(&dir.join("model.safetensors"), &params)?;
    io::write_npy(
        &dir.join("pixel_values.npy"),
        &random::random_pixel_values(&graph, batch, seed),
    )?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, &spec.config_json).map_err(io_err(config_path.clone()))?;
    if let Some(pre) = &spec.preprocessor_json {
        let p = dir.join("preprocessor_config.json");
        std::fs::write(&p, pre).map_err(io_err(p.clone()))?;
    }
    eprintln!(
        "cnx: wrote {} ({} random parameters, pixel_values {batch}x{}x{}x{})",
        dir.display(),
        graph.num_params(),
        spec.config.num_channels,
        hw.0,
        hw.1
    );
    Ok(())
}

fn graph(
    model: &str,
    input_size: Option<&str>,
    dot: bool,
    stats: bool,
    flags: &PassFlags,
) -> Result<(), Error> {
    let pipeline = flags.pipeline()?;
    if flags.list_requested() {
        for (i, pass) in pipeline.passes().enumerate() {
            println!("{:>2}. {:<30} {}", i + 1, pass.name(), pass.summary());
        }
        return Ok(());
    }
    let spec = ModelSpec::resolve(model)?;
    let hw = input_hw(&spec, input_size)?;
    let unfused = cnx_compiler::build_graph(&spec.config, hw)?;
    cnx_compiler::verify::verify(&unfused)?;
    let mut graph = unfused.clone();
    pipeline.run(&mut graph)?;
    cnx_compiler::verify::verify(&graph)?;
    if stats {
        print!("{}", listing::traffic_table(&unfused, &graph));
    } else if dot {
        print!("{}", listing::dot(&graph));
    } else {
        print!("{}", listing::node_table(&graph));
    }
    Ok(())
}

fn compare(a: &std::path::Path, b: &std::path::Path) -> Result<(), Error> {
    let (xa, xb) = (io::read_npz(a)?, io::read_npz(b)?);
    let mut shared = 0;
    println!(
        "{:<24} {:>14} {:>14} {:>12}",
        "array", "max |a-b|", "max |b|", "relative"
    );
    for (name, va) in &xa {
        let Some(vb) = xb.get(name) else { continue };
        shared += 1;
        if va.shape != vb.shape {
            println!("{name:<24} shapes differ: {:?} vs {:?}", va.shape, vb.shape);
            continue;
        }
        let diff = va
            .data
            .iter()
            .zip(&vb.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let scale = vb.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
        println!(
            "{name:<24} {diff:>14.3e} {scale:>14.3e} {:>12.3e}",
            diff / scale.max(f64::MIN_POSITIVE)
        );
    }
    if shared == 0 {
        return Err(Error::Usage(format!(
            "{} and {} share no array names",
            a.display(),
            b.display()
        )));
    }
    Ok(())
}
