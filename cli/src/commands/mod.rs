//! One module per `cnx` subcommand, each with its own `#[derive(Args)]` struct and a `run`;
//! the flags several commands share are defined once here and flattened into theirs.

pub mod bench;
pub mod classify;
pub mod compare;
pub mod compile;
pub mod embed;
pub mod eval;
pub mod graph;
pub mod preprocess;
pub mod random_model;
pub mod run;
pub mod serve;

use cnx_compiler::passes::Pipeline;

use crate::{Error, ModelSpec};

/// `--model M [--weights F]`: the model and, optionally, its checkpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelFlags {
    /// Preset (`tiny-1k-224`, `facebook/convnextv2-tiny-1k-224`), config.json, model directory
    /// or hub id (from the HF cache, else downloaded).
    #[arg(long)]
    pub model: String,
    /// Checkpoint: model.safetensors, a sharded index.json, or a directory holding one.
    /// Default: the model's own (beside its config.json, or the hub's).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
}

/// `--threads N`: worker threads (default: one per core). Results do not depend on it.
#[derive(Debug, Clone, clap::Args)]
pub struct Threads {
    /// Worker threads, 1 to 1024 (default: one per core). Results do not depend on it.
    #[arg(long = "threads", value_parser = clap::value_parser!(u32).range(1..=cnx_runtime::pool::MAX_THREADS as i64))]
    threads: Option<u32>,
}

impl Threads {
    pub fn get(&self) -> usize {
        self.threads
            .map_or_else(cnx_runtime::pool::available, |t| t as usize)
    }
}

/// The flags of a job over image files (classify, embed): the images and how they run.
#[derive(Debug, clap::Args)]
pub struct ImageJob {
    /// Image files and directories (walked recursively for .jpg .jpeg .png .webp .bmp .gif).
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    #[command(flatten)]
    pub threads: Threads,
    /// Execution backend (default: the JIT; the interpreter gives the same results to
    /// ~1e-6 and needs no code generation).
    #[arg(long, value_enum, default_value_t = crate::engine::Backend::Jit)]
    pub backend: crate::engine::Backend,
    #[command(flatten)]
    pub passes: PassFlags,
    #[command(flatten)]
    pub shard: ShardFlag,
}

impl ImageJob {
    /// The images named (directories walked), this shard's share of them.
    pub fn images(&self) -> Vec<Result<std::path::PathBuf, (std::path::PathBuf, String)>> {
        self.shard
            .select(crate::classify::collect_inputs(&self.inputs), input_path)
    }
}

/// `--shard I/N`: this process's share of a job split across N (an indexed batch job).
#[derive(Debug, Clone, clap::Args)]
pub struct ShardFlag {
    /// Process shard I of N (0-based): a contiguous, deterministic 1/N of the inputs sorted
    /// by path, so the N outputs concatenate in order.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let usage = || format!("`{s}`: expected I/N with 0 <= I < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(usage)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| usage())?,
        n.trim().parse().map_err(|_| usage())?,
    );
    if i >= n {
        return Err(usage());
    }
    Ok((i, n))
}

impl ShardFlag {
    /// `items` sorted by `key` (their path), then this shard's contiguous part: items
    /// `[i*len/N, (i+1)*len/N)`. Without `--shard`, `items` as given.
    pub fn select<T, K: Ord>(&self, mut items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
        let Some((i, n)) = self.shard else {
            return items;
        };
        items.sort_by_key(key);
        let len = items.len();
        let (start, end) = (i * len / n, (i + 1) * len / n);
        items.drain(start..end).collect()
    }
}

/// `--input-size H|HxW`.
#[derive(Debug, Clone, clap::Args)]
pub struct InputSize {
    /// Input size as H or HxW (default: the config's image_size).
    #[arg(long = "input-size", visible_alias = "image-size")]
    input_size: Option<String>,
}

impl InputSize {
    /// The size asked for, or the config's `image_size` square.
    pub fn hw(&self, spec: &ModelSpec) -> Result<(usize, usize), Error> {
        match &self.input_size {
            Some(s) => parse_size(s).ok_or_else(|| {
                Error::Usage(format!(
                    "--input-size `{s}`: expected H or HxW, e.g. 224 or 97x75"
                ))
            }),
            None => Ok((spec.config.image_size, spec.config.image_size)),
        }
    }
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

/// Which optimiser passes run.
#[derive(Debug, Clone, clap::Args)]
pub struct PassFlags {
    /// The unfused graph, exactly as Hugging Face defines it.
    #[arg(long, conflicts_with = "passes")]
    pub no_fuse: bool,
    /// Comma-separated passes to run, in order (default: all). `cnx graph M --passes` with no
    /// list prints the default pipeline.
    #[arg(long, num_args = 0..=1, value_delimiter = ',', default_missing_value = "")]
    pub passes: Option<Vec<String>>,
    #[command(flatten)]
    pub precision: PrecisionFlag,
}

/// `--precision f32|bf16|int8`: the arithmetic of the products (the 1x1 and downsampling convs).
#[derive(Debug, Clone, clap::Args)]
pub struct PrecisionFlag {
    /// The products' arithmetic: f32; bf16 (weights and activations rounded to bf16, f32
    /// sums: AMX tiles or AVX512_BF16 where the CPU has them); or int8 (weights per output
    /// channel, activations per pixel). Both run the 1x1 and downsampling convs; everything
    /// else stays f32.
    #[arg(long, value_parser = parse_precision, default_value = "f32")]
    pub precision: cnx_compiler::ir::Precision,
}

/// `--precision`'s value: a name from the one table of precisions.
fn parse_precision(name: &str) -> Result<cnx_compiler::ir::Precision, String> {
    use cnx_compiler::ir::Precision;
    Precision::from_name(name).ok_or_else(|| format!("expected {}", Precision::names()))
}

impl PrecisionFlag {
    pub fn get(&self) -> cnx_compiler::ir::Precision {
        self.precision
    }
}

impl PassFlags {
    pub fn pipeline(&self) -> Result<Pipeline, Error> {
        let pipeline = if self.no_fuse {
            Pipeline::empty()
        } else {
            match &self.passes {
                Some(names) if !names.iter().all(String::is_empty) => Pipeline::from_names(names)?,
                _ => Pipeline::default_pipeline(),
            }
        };
        Ok(pipeline.with_precision(self.precision.get()))
    }

    /// `--passes` given without a list.
    pub fn list_requested(&self) -> bool {
        self.passes
            .as_ref()
            .is_some_and(|names| names.iter().all(String::is_empty))
    }
}

/// The path of a collected input (found or not), to sort and shard by.
pub fn input_path(
    input: &Result<std::path::PathBuf, (std::path::PathBuf, String)>,
) -> std::path::PathBuf {
    match input {
        Ok(p) | Err((p, _)) => p.clone(),
    }
}

/// A progress bar on stderr for runs of more than one batch; hidden when stderr is not a
/// terminal.
pub fn progress_bar(len: usize, batch: usize) -> indicatif::ProgressBar {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_sorted_inputs_contiguously() {
        let all: Vec<u32> = (0..10).rev().collect();
        let mut joined = Vec::new();
        for i in 0..3 {
            let shard = ShardFlag {
                shard: Some((i, 3)),
            };
            joined.extend(shard.select(all.clone(), |&v| v));
        }
        assert_eq!(joined, (0..10).collect::<Vec<_>>());
        assert!(parse_shard("3/3").is_err() && parse_shard("1/0").is_err());
        assert_eq!(parse_shard("1/4"), Ok((1, 4)));
        assert_eq!(ShardFlag { shard: None }.select(all.clone(), |&v| v), all);
    }

    #[test]
    fn sizes_parse_as_square_or_height_by_width() {
        assert_eq!(parse_size("224"), Some((224, 224)));
        assert_eq!(parse_size("97x75"), Some((97, 75)));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("3x4x5"), None);
    }
}
