//! Photos in, labels out: decoding and preprocessing on a worker thread, in parallel with
//! batched inference, results in input order.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use cnx_compiler::ir::ValueType;
use cnx_runtime::preprocess::{self, PreprocessConfig};
use cnx_runtime::Tensor;
use serde::Serialize;

use crate::{images, Error, ModelSpec};

/// One label with its softmax probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f64,
}

/// Softmax (in f64) of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable labels, most probable first (ties: lower index first).
pub fn top_k(logits: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    cnx_runtime::compiled::ranked(logits, k)
        .into_iter()
        .map(|(i, probability)| Prediction {
            index: i,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            probability,
        })
        .collect()
}

/// The preprocessing settings of a model: its `preprocessor_config.json`, else the published
/// checkpoints' defaults at the config's `image_size`.
pub fn preprocess_config(spec: &ModelSpec) -> Result<PreprocessConfig, Error> {
    let size = spec.config.image_size;
    Ok(match &spec.preprocessor_json {
        Some(text) => PreprocessConfig::from_json(text, size)?,
        None => PreprocessConfig::for_size(size),
    })
}

/// Decodes and preprocesses one image: `pixel_values` `(1, 3, S, S)`.
pub fn pixel_values(path: &Path, cfg: &PreprocessConfig) -> Result<Tensor, Error> {
    let image_error = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    let limits = crate::limits();
    let img = images::decode(path, limits).map_err(|e| image_error(e.to_string()))?;
    preprocess_image(&img, cfg, limits).map_err(image_error)
}

/// Preprocesses a decoded image: `pixel_values` `(1, 3, S, S)`. The resize target is checked
/// against the pixel limit first (a 1 x 100000 strip resized to a 256-pixel short edge would
/// be 25.6 M pixels wide).
pub fn preprocess_image(
    img: &preprocess::RgbImage,
    cfg: &PreprocessConfig,
    limits: &cnx_compiler::Limits,
) -> Result<Tensor, String> {
    if cfg.do_resize {
        let (h, w) = cfg.resize_target(img.height, img.width);
        limits
            .check_image(w as u64, h as u64)
            .map_err(|e| format!("resized for the model: {e}"))?;
    }
    let (h, w, data) = preprocess::preprocess(img, cfg);
    Tensor::from_vec(&[1, 3, h, w], data).map_err(|e| e.to_string())
}

/// The files named on the command line, directories walked (recursively, sorted, image
/// extensions only). A missing path is an error for that path.
pub fn collect_inputs(args: &[PathBuf]) -> Vec<Result<PathBuf, (PathBuf, String)>> {
    let mut out = Vec::new();
    for arg in args {
        if arg.is_dir() {
            walk(arg, &mut out);
        } else if arg.exists() {
            out.push(Ok(arg.clone()));
        } else {
            out.push(Err((arg.clone(), "no such file or directory".into())));
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Result<PathBuf, (PathBuf, String)>>) {
    walk_once(dir, out, &mut std::collections::HashSet::new());
}

/// [`walk`], entering each directory once: symbolic links are followed, but a loop of them
/// (`a -> .`) is not walked forever.
fn walk_once(
    dir: &Path,
    out: &mut Vec<Result<PathBuf, (PathBuf, String)>>,
    seen: &mut std::collections::HashSet<PathBuf>,
) {
    match std::fs::canonicalize(dir) {
        Ok(real) if seen.contains(&real) => return,
        Ok(real) => {
            seen.insert(real);
        }
        _ => {}
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            out.push(Err((dir.to_path_buf(), e.to_string())));
            return;
        }
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk_once(&p, out, seen);
        } else if images::has_image_extension(&p) {
            out.push(Ok(p));
        }
    }
}

/// What became of one input.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Its row of the output asked for (logits, or pooled features).
    Row {
        path: PathBuf,
        values: Vec<f32>,
    },
    Failed {
        path: PathBuf,
        error: String,
    },
}

/// Where the time of a [`run_batches`] went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Seconds the worker spent decoding and preprocessing (overlapping inference).
    pub preprocess_s: f64,
    /// Seconds spent in forward passes.
    pub inference_s: f64,
}

/// Runs `inputs` in batches of `batch` for the engine's output `output` (`logits`,
/// `pooler_output`): a worker thread decodes and preprocesses ahead (at most two batches) while
/// the model runs; `emit` receives every input's outcome, in input order, as soon as its batch
/// is done.
pub fn run_batches(
    engine: &crate::engine::Engine,
    cfg: &PreprocessConfig,
    inputs: Vec<Result<PathBuf, (PathBuf, String)>>,
    batch: usize,
    threads: usize,
    output: &str,
    mut emit: impl FnMut(Outcome),
) -> Result<Timing, Error> {
    let mut timing = Timing::default();
    let batch = batch.max(1);
    let s = engine.model().graph.input_type();
    // Two batches ahead (bounded: the channel allocates its slots up front).
    let (tx, rx) = mpsc::sync_channel::<Prepared>(batch.saturating_mul(2).min(1024));
    let want = [1, s.channels, s.height, s.width];
    std::thread::scope(|scope| -> Result<(), Error> {
        let worker = scope.spawn(move || {
            let mut busy = std::time::Duration::ZERO;
            for input in inputs {
                let start = std::time::Instant::now();
                let item = prepare(input, cfg, want);
                busy += start.elapsed();
                if tx.send(item).is_err() {
                    break; // the consumer stopped
                }
            }
            busy
        });
        let mut pending: Vec<Prepared> = Vec::new();
        let mut ready = 0;
        let mut flush = |pending: &mut Vec<Prepared>, ready: &mut usize| -> Result<(), Error> {
            let items = std::mem::take(pending);
            timing.inference_s += run_batch(engine, s, items, threads, output, &mut emit)?;
            *ready = 0;
            Ok(())
        };
        for item in rx {
            if item.is_ok() {
                ready += 1;
            }
            pending.push(item);
            if ready == batch {
                flush(&mut pending, &mut ready)?;
            }
        }
        flush(&mut pending, &mut ready)?;
        // The worker's only fallible calls are inside catch_unwind; send does not panic.
        timing.preprocess_s = worker
            .join()
            .expect("the worker catches decoder panics")
            .as_secs_f64();
        Ok(())
    })?;
    Ok(timing)
}

/// An input as the worker hands it on: its pixel values, or why it has none.
type Prepared = Result<(PathBuf, Tensor), (PathBuf, String)>;

/// Decodes and preprocesses one input to pixel values of shape `want`.
fn prepare(
    input: Result<PathBuf, (PathBuf, String)>,
    cfg: &PreprocessConfig,
    want: [usize; 4],
) -> Prepared {
    input.and_then(|path| {
        // A panic in a decoder (a bug of the image crate's on a crafted file) fails
        // that image, not the run.
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pixel_values(&path, cfg)));
        match decoded {
            Ok(Ok(t)) if t.shape() == want => Ok((path, t)),
            // do_resize: false keeps the image's own size.
            Ok(Ok(t)) => {
                let got = format!("{}x{}", t.shape()[2], t.shape()[3]);
                let reason = format!(
                    "preprocessed to {got}, but the model takes {}x{}",
                    want[2], want[3]
                );
                Err((path, reason))
            }
            Ok(Err(e)) => Err((path, error_reason(&e))),
            Err(_) => Err((path, "the image decoder failed on this file".into())),
        }
    })
}

/// Runs the decoded images of `items` as one batch (of input type `s`) for `output`, then
/// emits every item's outcome, in order. Returns the seconds the forward pass took.
fn run_batch(
    engine: &crate::engine::Engine,
    s: ValueType,
    items: Vec<Prepared>,
    threads: usize,
    output: &str,
    emit: &mut impl FnMut(Outcome),
) -> Result<f64, Error> {
    let ready = items.iter().filter(|item| item.is_ok()).count();
    let mut inference_s = 0.0;
    let mut logits_rows = Vec::new();
    if ready > 0 {
        let mut data = Vec::with_capacity(ready * s.numel());
        for (_, t) in items.iter().flatten() {
            data.extend_from_slice(t.data());
        }
        let x = Tensor::from_vec(&[ready, s.channels, s.height, s.width], data)?;
        let start = std::time::Instant::now();
        let logits = engine.output(&x, threads, output)?;
        inference_s = start.elapsed().as_secs_f64();
        // The engine's output is [ready, n] (n >= 1: labels, or the last stage's
        // channels), so chunks(n) yields exactly one row per decoded image.
        let n = logits.shape()[1];
        logits_rows = logits.data().chunks(n).map(<[f32]>::to_vec).collect();
    }
    let mut rows = logits_rows.into_iter();
    for item in items {
        emit(match item {
            Ok((path, _)) => Outcome::Row {
                path,
                values: rows.next().expect("one row per decoded image"),
            },
            Err((path, error)) => Outcome::Failed { path, error },
        });
    }
    Ok(inference_s)
}

/// An image error's reason without repeating its path.
fn error_reason(e: &Error) -> String {
    match e {
        Error::Image { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// `v / max(||v||, 1e-12)`, as `torch.nn.functional.normalize` does (in f64, rounded once):
/// how `cnx embed --normalize`, `cnx serve` and the Python package normalise an embedding.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let scale = 1.0 / norm.max(1e-12);
    for x in v {
        *x = (*x as f64 * scale) as f32;
    }
}
