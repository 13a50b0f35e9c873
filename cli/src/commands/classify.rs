//! `cnx classify`: photos in, top-k labels out.

use std::io::Write as _;
use std::path::Path;

use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;

use super::{progress_bar, ImageJob, ModelFlags};
use crate::classify::{self, Outcome};
use crate::engine::{Backend, Engine};
use crate::{Error, ModelSpec};

/// Classify images: top-k labels with softmax probabilities, per image.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    job: ImageJob,
    /// Labels per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,
    /// One JSON object per image and line.
    #[arg(long)]
    json: bool,
}

/// Loads a model for classification at its preprocessing size, on `backend`, for batches of
/// up to `batch` images.
pub fn load_classifier(
    model: &ModelFlags,
    pipeline: &Pipeline,
    backend: Backend,
    batch: usize,
) -> Result<(Engine, cnx_runtime::preprocess::PreprocessConfig), Error> {
    let spec = ModelSpec::resolve(&model.model)?;
    if spec.config.num_labels() == 0 {
        return Err(Error::Usage(format!(
            "{} has no classifier (num_labels 0): nothing to classify with",
            spec.name
        )));
    }
    let (loaded, cfg) = load_for_images(spec, model, pipeline, batch)?;
    // A bare `ConvNextV2Model` checkpoint has no classifier: its "logits" are the pooled
    // features, whose indices are not labels.
    if loaded.checkpoint().scheme() == cnx_runtime::NamingScheme::HuggingFaceBare {
        return Err(Error::Usage(format!(
            "{}: the checkpoint is a bare ConvNextV2Model (no classifier weights): nothing to classify with",
            loaded.name
        )));
    }
    Ok((Engine::new(loaded, backend, &[outputs::LOGITS])?, cfg))
}

/// Loads `spec` (with `model`'s weights) at its preprocessing size for batches of up to
/// `batch` images; and the preprocessing.
pub fn load_for_images(
    spec: ModelSpec,
    model: &ModelFlags,
    pipeline: &Pipeline,
    batch: usize,
) -> Result<
    (
        cnx_compiler::LoadedModel,
        cnx_runtime::preprocess::PreprocessConfig,
    ),
    Error,
> {
    let cfg = classify::preprocess_config(&spec)?;
    spec.check_run(batch, (cfg.size, cfg.size))?;
    let loaded = spec.load_with(model.weights.as_deref(), (cfg.size, cfg.size), pipeline)?;
    Ok((loaded, cfg))
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let pipeline = self.job.passes.pipeline()?;
        let (engine, cfg) = load_classifier(
            &self.model,
            &pipeline,
            self.job.backend,
            self.job.batch as usize,
        )?;
        let labels = engine.model().config.id2label.clone();
        let inputs = self.job.images();
        if inputs.is_empty() {
            return Err(Error::Usage("no images found".into()));
        }
        let batch = self.job.batch as usize;
        let bar = progress_bar(inputs.len(), batch);
        let total = inputs.len();
        let start = std::time::Instant::now();
        let mut failed = 0usize;
        let stdout = std::io::stdout();
        let timing = classify::run_batches(
            &engine,
            &cfg,
            inputs,
            batch,
            self.job.threads.get(),
            outputs::LOGITS,
            |outcome| {
                bar.inc(1);
                let Some(line) = self.line(outcome, &labels, &bar, &mut failed) else {
                    return;
                };
                // Printed and flushed per image: nothing already classified is lost if a later
                // step fails.
                bar.suspend(|| {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                });
            },
        )?;
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
            return Err(Error::Failed {
                count: failed,
                what: "classified",
            });
        }
        Ok(())
    }

    /// The line printed for one image (`None`: reported on stderr instead).
    fn line(
        &self,
        outcome: Outcome,
        labels: &[String],
        bar: &indicatif::ProgressBar,
        failed: &mut usize,
    ) -> Option<String> {
        let path_text = |p: &Path| p.display().to_string();
        match outcome {
            Outcome::Row {
                path,
                values: logits,
            } => {
                let top = classify::top_k(&logits, labels, self.top as usize);
                Some(if self.json {
                    serde_json::json!({"path": path_text(&path), "top": top}).to_string()
                } else {
                    let mut text = path_text(&path);
                    for p in top {
                        text.push_str(&format!("\n  {:>7.4}  {}", p.probability, p.label));
                    }
                    text
                })
            }
            Outcome::Failed { path, error } => {
                *failed += 1;
                if self.json {
                    Some(serde_json::json!({"path": path_text(&path), "error": error}).to_string())
                } else {
                    bar.suspend(|| eprintln!("cnx: error: {}: {error}", path_text(&path)));
                    None
                }
            }
        }
    }
}
