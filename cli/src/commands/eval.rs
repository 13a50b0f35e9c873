//! `cnx eval`: accuracy on an ImageFolder tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cnx_compiler::ir::outputs;

use super::classify::load_classifier;
use super::{progress_bar, ModelFlags, PassFlags, Threads};
use crate::classify::{self, Outcome};
use crate::engine::Backend;
use crate::{io, Error};

/// Accuracy on an ImageFolder tree (one sub-folder per class, named by label or index):
/// top-1, top-5 and mean cross-entropy.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelFlags,
    /// The ImageFolder tree: `<class>/<image>`, a class folder named by label or index.
    dir: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    #[command(flatten)]
    threads: Threads,
    /// Execution backend (default: the JIT).
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    /// Print the scores as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write every image's result, one JSON object per line in path order: `path`,
    /// `label` (its folder's), `predicted`, `probability` (of `predicted`), `logits`; or `path`
    /// and `error`.
    #[arg(long, value_name = "FILE.jsonl")]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    passes: PassFlags,
}

/// Running totals over the evaluated images.
#[derive(Default)]
struct Score {
    n: usize,
    failed: usize,
    top1: usize,
    top5: usize,
    cross_entropy: f64,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let pipeline = self.passes.pipeline()?;
        let (engine, cfg) =
            load_classifier(&self.model, &pipeline, self.backend, self.batch as usize)?;
        let labels = engine.model().config.id2label.clone();
        let (inputs, targets) = image_folder(&self.dir, &labels)?;
        let mut predictions = self
            .predictions
            .as_deref()
            .map(io::AtomicFile::create)
            .transpose()?;
        let mut write_error = None;
        let batch = self.batch as usize;
        let bar = progress_bar(inputs.len(), batch);
        let mut score = Score::default();
        classify::run_batches(
            &engine,
            &cfg,
            inputs,
            batch,
            self.threads.get(),
            outputs::LOGITS,
            |outcome| {
                bar.inc(1);
                match outcome {
                    Outcome::Row {
                        path,
                        values: logits,
                    } => {
                        // Every decoded input came from image_folder, which named its class;
                        // load_classifier made the logits num_labels wide, and image_folder
                        // refused classes not below num_labels.
                        let target = targets[&path];
                        let probs = classify::softmax(&logits);
                        let rank = probs.iter().filter(|&&p| p > probs[target]).count();
                        score.n += 1;
                        score.top1 += usize::from(rank == 0);
                        score.top5 += usize::from(rank < 5);
                        score.cross_entropy -= probs[target].max(f64::MIN_POSITIVE).ln();
                        if let Some(file) = &mut predictions {
                            // The first of equal top logits, as in `cnx classify`.
                            let top = &classify::top_k(&logits, &labels, 1)[0];
                            let line = serde_json::json!({
                                "path": path.display().to_string(),
                                "label": labels[target],
                                "predicted": top.label,
                                "probability": top.probability,
                                "logits": logits,
                            });
                            record(file, &line, &mut write_error);
                        }
                    }
                    Outcome::Failed { path, error } => {
                        score.failed += 1;
                        bar.suspend(|| eprintln!("cnx: error: {}: {error}", path.display()));
                        if let Some(file) = &mut predictions {
                            let line = serde_json::json!({
                                "path": path.display().to_string(),
                                "error": error,
                            });
                            record(file, &line, &mut write_error);
                        }
                    }
                }
            },
        )?;
        bar.finish_and_clear();
        if let Some(e) = write_error {
            return Err(e);
        }
        if let Some(file) = predictions {
            file.commit()?;
        }
        self.report(&engine.model().name, &score);
        if score.failed > 0 {
            return Err(Error::Failed {
                count: score.failed,
                what: "evaluated",
            });
        }
        Ok(())
    }

    fn report(&self, model: &str, s: &Score) {
        let (acc1, acc5, mean_ce) = if s.n > 0 {
            let n = s.n as f64;
            (s.top1 as f64 / n, s.top5 as f64 / n, s.cross_entropy / n)
        } else {
            (0.0, 0.0, 0.0)
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({"model": model, "images": s.n, "failed": s.failed,
                    "top1": acc1, "top5": acc5, "cross_entropy": mean_ce})
            );
        } else {
            println!(
                "{model}: {} images ({} failed): top-1 {acc1:.4}, top-5 {acc5:.4}, mean cross-entropy {mean_ce:.4}",
                s.n, s.failed
            );
        }
    }
}

/// Appends `line` to the predictions file; the first failure is kept (and later lines
/// skipped), to be reported once the run ends.
fn record(file: &mut io::AtomicFile, line: &serde_json::Value, error: &mut Option<Error>) {
    if error.is_none() {
        if let Err(e) = file.write(format!("{line}\n").as_bytes()) {
            *error = Some(e);
        }
    }
}

type Inputs = Vec<Result<PathBuf, (PathBuf, String)>>;

/// The images of an ImageFolder tree and each one's class index.
fn image_folder(dir: &Path, labels: &[String]) -> Result<(Inputs, HashMap<PathBuf, usize>), Error> {
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
    let mut targets = HashMap::new();
    for class_dir in &classes {
        let name = class_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let target = class_index(&name, labels).ok_or_else(|| {
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
    Ok((inputs, targets))
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
