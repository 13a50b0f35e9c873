//! `cnx embed`: images in, transformers' `pooler_output` (the final LayerNorm of the global
//! average pool) out, one row per image in input order.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cnx_compiler::ir::outputs;
use cnx_runtime::Tensor;

use super::classify::load_for_images;
use super::{progress_bar, ImageJob, ModelFlags};
use crate::classify::{self, Outcome};
use crate::engine::Engine;
use crate::{io, Error, ModelSpec};

/// Embed images: transformers' pooler_output per image, as .npy (+ a list of paths) or JSON
/// lines.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    job: ImageJob,
    /// Where to write: float32 `[n, hidden]` .npy, with the images' paths one per line beside
    /// it (`emb.npy` -> `emb.paths.txt`); with --jsonl, JSON lines `{"path", "embedding"}`.
    /// Written atomically: no file unless complete.
    #[arg(long)]
    output: PathBuf,
    /// L2-normalise each embedding (cosine similarity becomes a dot product).
    #[arg(long)]
    normalize: bool,
    /// JSON lines instead of .npy.
    #[arg(long)]
    jsonl: bool,
}

/// `emb.npy` -> `emb.paths.txt`: the sidecar naming each row's image.
pub fn paths_file(output: &Path) -> PathBuf {
    output.with_extension("paths.txt")
}

pub use crate::classify::l2_normalize;

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let pipeline = self.job.passes.pipeline()?;
        let spec = ModelSpec::resolve(&self.model.model)?;
        let batch = self.job.batch as usize;
        let (loaded, cfg) = load_for_images(spec, &self.model, &pipeline, batch)?;
        let hidden = *loaded
            .config
            .hidden_sizes
            .last()
            .expect("a validated config has a stage");
        let engine = Engine::new(loaded, self.job.backend, &[outputs::POOLER_OUTPUT])?;
        let inputs = self.job.images();
        if inputs.is_empty() {
            return Err(Error::Usage("no images found".into()));
        }
        let bar = progress_bar(inputs.len(), batch);
        let start = std::time::Instant::now();
        let mut rows: Vec<(PathBuf, Vec<f32>)> = Vec::with_capacity(inputs.len());
        let mut failed = 0usize;
        let timing = classify::run_batches(
            &engine,
            &cfg,
            inputs,
            batch,
            self.job.threads.get(),
            outputs::POOLER_OUTPUT,
            |outcome| {
                bar.inc(1);
                match outcome {
                    Outcome::Row { path, mut values } => {
                        if self.normalize {
                            l2_normalize(&mut values);
                        }
                        rows.push((path, values));
                    }
                    Outcome::Failed { path, error } => {
                        failed += 1;
                        bar.suspend(|| eprintln!("cnx: error: {}: {error}", path.display()));
                    }
                }
            },
        )?;
        bar.finish_and_clear();
        self.write(&rows, hidden)?;
        let wall = start.elapsed().as_secs_f64();
        eprintln!(
            "cnx: {} images embedded ({hidden} features) in {wall:.2} s ({:.2} images/s); decode + preprocess {:.2} s, inference {:.2} s; wrote {}",
            rows.len(),
            rows.len() as f64 / wall,
            timing.preprocess_s,
            timing.inference_s,
            self.output.display()
        );
        if failed > 0 {
            return Err(Error::Failed {
                count: failed,
                what: "embedded",
            });
        }
        Ok(())
    }

    /// The embeddings of the images that could be read, in input order.
    fn write(&self, rows: &[(PathBuf, Vec<f32>)], hidden: usize) -> Result<(), Error> {
        let text = |p: &Path| p.display().to_string();
        if self.jsonl {
            return io::write_atomically(&self.output, |file| {
                let mut out = std::io::BufWriter::new(file);
                for (path, values) in rows {
                    let line = serde_json::json!({"path": text(path), "embedding": values});
                    writeln!(out, "{line}")?;
                }
                out.flush()
            });
        }
        let data: Vec<f32> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        io::write_npy(
            &self.output,
            &Tensor::from_vec(&[rows.len(), hidden], data)?,
        )?;
        io::write_atomically(&paths_file(&self.output), |file| {
            let mut out = std::io::BufWriter::new(file);
            for (path, _) in rows {
                writeln!(out, "{}", text(path))?;
            }
            out.flush()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_rows_have_unit_length_and_zero_stays_zero() {
        let mut v = vec![3.0f32, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0f32; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
        assert_eq!(
            paths_file(Path::new("a/emb.npy")),
            Path::new("a/emb.paths.txt")
        );
    }
}
