//! The `cnx` command. Library code returns typed errors; this is the only place that prints
//! them. Exit codes: 0 success, 2 bad usage or input, 1 internal error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cnx_cli::commands::{
    bench, classify, compare, compile, embed, eval, graph, preprocess, random_model, run, serve,
};

#[derive(Parser)]
#[command(
    name = "cnx",
    version,
    about = "Compile and run ConvNeXt V2 image classifiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Raise (or lower) a limit checked before anything is allocated: NAME=N, repeatable.
    /// Names: stages, stage-depth, width, channels, patch-size, labels, input-side,
    /// parameters, graph-nodes, image-pixels, memory-mb (README: "Limits").
    #[arg(long = "limit", global = true, value_name = "NAME=N")]
    limits: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on HF `pixel_values` (.npy) and write its outputs (.npz).
    Run(run::Args),
    /// Print a model's graph: one line per node (name, op, output, params, MACs) and totals.
    Graph(graph::Args),
    /// Print the code a backend generates for a model (`--emit rust`: what the `convnextv2!`
    /// macro expands to), or the lowered program they share (`--emit program`).
    Compile(compile::Args),
    /// Time the forward pass: median and min per batch size, images/s, GFLOP/s, first
    /// inference, peak memory. Random weights unless --weights (or a model directory) gives them.
    Bench(bench::Args),
    /// Classify images: top-k labels with softmax probabilities, per image.
    Classify(classify::Args),
    /// Embed images: transformers' pooler_output per image (.npy + paths, or JSON lines),
    /// optionally L2-normalised.
    Embed(embed::Args),
    /// Serve the model over HTTP (POST /v1/classify, /v1/embed; GET /health, /metrics), with
    /// requests from all clients batched together.
    Serve(serve::Args),
    /// Write the pixel_values a model sees for an image (float32 NCHW .npy, as `cnx run` takes).
    Preprocess(preprocess::Args),
    /// Accuracy on an ImageFolder tree (one sub-folder per class, named by label or index):
    /// top-1, top-5 and mean cross-entropy.
    Eval(eval::Args),
    /// Compare the arrays two .npz files share: max absolute and relative difference.
    Compare(compare::Args),
    /// Write a random-weight model directory (config.json, model.safetensors, pixel_values.npy).
    /// Every parameter is random, GRN and LayerNorm included.
    RandomModel(random_model::Args),
}

fn main() -> ExitCode {
    // Rust starts programs with SIGPIPE ignored, so printing into a closed pipe (`cnx graph M |
    // head -1`) would panic in `print!`; restore the default, and cnx ends as `cat` does.
    #[cfg(unix)]
    // SAFETY: the first thing main does, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // The kernels read CNX_ISA themselves; a name they do not know is refused here, once.
    if let Err(e) = cnx_runtime::kernels::Isa::requested() {
        eprintln!("cnx: error: {e}");
        return ExitCode::from(2);
    }
    let mut limits = cnx_compiler::Limits::default();
    for assignment in &cli.limits {
        if let Err(e) = limits.apply(assignment) {
            eprintln!("cnx: error: {e}");
            return ExitCode::from(2);
        }
    }
    cnx_cli::set_limits(limits);
    let result = match cli.command {
        Command::Run(a) => a.run(),
        Command::Graph(a) => a.run(),
        Command::Compile(a) => a.run(),
        Command::Bench(a) => a.run(),
        Command::Classify(a) => a.run(),
        Command::Embed(a) => a.run(),
        Command::Serve(a) => a.run(),
        Command::Preprocess(a) => a.run(),
        Command::Eval(a) => a.run(),
        Command::Compare(a) => a.run(),
        Command::RandomModel(a) => a.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnx: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
