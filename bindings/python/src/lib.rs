//! `cnx._cnx`: the native half of the `cnx` Python package, a thin layer over cnx-cli's
//! library (the same model resolution, loading, engines, decoding, preprocessing, top-k and
//! normalisation as the `cnx` command; nothing is implemented twice). The Python half
//! (`python/cnx/__init__.py`) gives it transformers' shapes: `from_pretrained`, outputs with
//! `.logits`, an image processor.
//!
//! - [`Engine`]: a model loaded on a backend. Its forward passes run on a thread of its own
//!   (the JIT's code and module are not `Send`, so they never leave the thread that compiled
//!   them, as in `cnx serve`); a call hands the pixels over and waits with the GIL released.
//! - [`Preprocessor`]: paths, encoded bytes or uint8 RGB arrays to `pixel_values`, in parallel
//!   with the GIL released.
//! - Errors: `cnx.CnxError` with the CLI's one-line message; `ValueError` for pixel values of
//!   the wrong shape or dtype.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use cnx_app::engine::Backend;
use cnx_app::model_thread::{Loader, ModelThread};
use cnx_app::{Error, ModelSpec};
use cnx_compiler::ir::{outputs, Precision};
use cnx_compiler::LoadedModel;
use cnx_runtime::preprocess::{PreprocessConfig, RgbImage};
use cnx_runtime::Tensor;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

create_exception!(
    cnx,
    CnxError,
    PyException,
    "An error of cnx's: a model, checkpoint, image or input it cannot use; the message is the cnx command's."
);

/// The Python exception for a cnx error: `ValueError` for pixel values of the wrong shape,
/// `CnxError` for everything else.
fn to_py(e: Error) -> PyErr {
    match &e {
        Error::Run(cnx_compiler::RunError::Input(cnx_runtime::Error::InputShape { .. })) => {
            PyValueError::new_err(e.to_string())
        }
        _ => CnxError::new_err(e.to_string()),
    }
}

fn usage(message: impl Into<String>) -> PyErr {
    CnxError::new_err(message.into())
}

/// Forward passes that never return (a bug) must not hang the caller forever: the worker
/// answers every request it takes, so a closed channel means it is gone.
fn worker_gone() -> PyErr {
    CnxError::new_err("the model's inference thread stopped (a bug in cnx)")
}

/// What a model computes: transformers' `ConvNextV2ForImageClassification` (logits) or
/// `ConvNextV2Model` (last_hidden_state); pooler_output either way.
fn wanted_outputs(task: &str) -> PyResult<&'static [&'static str]> {
    match task {
        "classification" => Ok(&[outputs::LOGITS, outputs::POOLER_OUTPUT]),
        "base" => Ok(&[outputs::LAST_HIDDEN_STATE, outputs::POOLER_OUTPUT]),
        other => Err(PyValueError::new_err(format!(
            "task `{other}`: expected `classification` or `base`"
        ))),
    }
}

/// A backend from the one table of names.
fn parse_backend(name: &str) -> PyResult<Backend> {
    Backend::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!("backend `{name}`: expected `jit` or `interp`"))
    })
}

/// A precision from the one table of names (`float32` and `bfloat16` as numpy and torch
/// spell them, too).
fn parse_precision(name: &str) -> PyResult<Precision> {
    let name = match name {
        "float32" => "f32",
        "bfloat16" => "bf16",
        other => other,
    };
    Precision::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "precision `{name}`: expected {}",
            Precision::names()
        ))
    })
}

fn check_threads(threads: usize) -> PyResult<usize> {
    let most = cnx_runtime::pool::MAX_THREADS;
    if (1..=most).contains(&threads) {
        Ok(threads)
    } else {
        Err(PyValueError::new_err(format!(
            "threads must be 1 to {most}, got {threads}"
        )))
    }
}

/// What Python reads about a loaded model.
#[derive(Clone)]
struct Info {
    name: String,
    config_json: String,
    preprocessor_json: Option<String>,
    id2label: Vec<String>,
    image_size: usize,
    num_channels: usize,
    hidden_size: usize,
    has_classifier: bool,
    checkpoint: String,
}

impl Info {
    fn of(model: &LoadedModel, loader: &Loader) -> Info {
        Info {
            name: model.name.clone(),
            config_json: loader.spec.config_json.clone(),
            preprocessor_json: loader.spec.preprocessor_json.clone(),
            id2label: model.config.id2label.clone(),
            image_size: model.config.image_size,
            num_channels: model.config.num_channels,
            hidden_size: model.config.hidden_sizes.last().copied().unwrap_or(0),
            has_classifier: model.config.num_labels() > 0
                && model.checkpoint().scheme() != cnx_runtime::NamingScheme::HuggingFaceBare,
            checkpoint: loader.checkpoint.display().to_string(),
        }
    }
}

/// A model loaded for inference (`cnx.ConvNextV2ForImageClassification` and
/// `cnx.ConvNextV2Model` wrap one).
#[pyclass(module = "cnx._cnx", frozen)]
struct Engine {
    model: ModelThread,
    info: Info,
    threads: AtomicUsize,
    backend: &'static str,
    precision: &'static str,
}

#[pymethods]
impl Engine {
    /// Resolves `model` (a model directory, a `config.json`, a preset or a hub id: from the
    /// Hugging Face cache, else downloaded), loads its checkpoint (`weights`, else its own) at
    /// the config's image size and compiles it on `backend`. The GIL is released meanwhile.
    #[new]
    #[pyo3(signature = (model, *, weights=None, backend="jit", threads=None, precision="f32", task="classification"))]
    fn new(
        py: Python<'_>,
        model: &str,
        weights: Option<PathBuf>,
        backend: &str,
        threads: Option<usize>,
        precision: &str,
        task: &str,
    ) -> PyResult<Engine> {
        let wanted = wanted_outputs(task)?;
        let backend_kind = parse_backend(backend)?;
        let precision_kind = parse_precision(precision)?;
        let threads = check_threads(threads.unwrap_or_else(cnx_runtime::pool::available))?;
        let model = model.to_string();
        let (thread, info) = py
            .detach(move || -> Result<_, Error> {
                let spec = ModelSpec::resolve(&model)?;
                let checkpoint = match weights {
                    Some(path) => path,
                    None => spec.checkpoint()?,
                };
                let loader = Loader {
                    spec,
                    checkpoint,
                    precision: precision_kind,
                    backend: backend_kind,
                    wanted,
                };
                ModelThread::start(loader, Info::of)
            })
            .map_err(to_py)?;
        Ok(Engine {
            model: thread,
            info,
            threads: AtomicUsize::new(threads),
            backend: backend_kind.name(),
            precision: precision_kind.name(),
        })
    }

    /// The model's outputs for `pixel_values` (a C-contiguous float32 array `(batch, C, H,
    /// W)`), by name, as float32 arrays. The GIL is released during the pass.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        pixel_values: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let channels = self.info.num_channels;
        let array = pixel_values
            .cast::<PyArrayDyn<f32>>()
            .map_err(|_| {
                let dtype = pixel_values
                    .getattr("dtype")
                    .and_then(|d| d.str().map(|s| s.to_string()))
                    .unwrap_or_else(|_| "not a numpy array".into());
                PyValueError::new_err(format!("pixel_values must be a float32 array, got {dtype}"))
            })?
            .readonly();
        let shape = array.shape().to_vec();
        if shape.len() != 4 || shape[1] != channels || shape.contains(&0) {
            return Err(PyValueError::new_err(format!(
                "pixel_values must have shape (batch >= 1, {channels}, height, width), found {shape:?}"
            )));
        }
        let data = match array.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => array.as_array().iter().copied().collect(),
        };
        let pixels = Tensor::from_vec(&shape, data).map_err(|e| to_py(Error::Weights(e)))?;
        let threads = self.threads.load(Ordering::Relaxed);
        let pending = self.model.submit(pixels, threads).ok_or_else(worker_gone)?;
        let result = py.detach(move || pending.wait());
        let outputs = result.ok_or_else(worker_gone)?.map_err(to_py)?;
        let dict = PyDict::new(py);
        for (name, tensor) in outputs {
            let shape = tensor.shape().to_vec();
            let flat = PyArray1::from_vec(py, tensor.into_vec());
            dict.set_item(name, flat.reshape(shape)?)?;
        }
        Ok(dict)
    }

    /// Threads of a forward pass (default: one per core). Results do not depend on it.
    #[getter]
    fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_threads(&self, threads: usize) -> PyResult<()> {
        self.threads
            .store(check_threads(threads)?, Ordering::Relaxed);
        Ok(())
    }

    /// How the model was named (preset, hub id or path).
    #[getter]
    fn name(&self) -> &str {
        &self.info.name
    }

    /// The `config.json` text.
    #[getter]
    fn config_json(&self) -> &str {
        &self.info.config_json
    }

    /// The `preprocessor_config.json` text, when the model has one.
    #[getter]
    fn preprocessor_json(&self) -> Option<&str> {
        self.info.preprocessor_json.as_deref()
    }

    /// Labels by index (`LABEL_i` where the config names none).
    #[getter]
    fn id2label(&self) -> Vec<String> {
        self.info.id2label.clone()
    }

    #[getter]
    fn image_size(&self) -> usize {
        self.info.image_size
    }

    #[getter]
    fn num_channels(&self) -> usize {
        self.info.num_channels
    }

    /// The width of `pooler_output` (the last stage's channels).
    #[getter]
    fn hidden_size(&self) -> usize {
        self.info.hidden_size
    }

    /// Whether the checkpoint has a classifier (a bare `ConvNextV2Model` one has none).
    #[getter]
    fn has_classifier(&self) -> bool {
        self.info.has_classifier
    }

    /// The checkpoint file loaded.
    #[getter]
    fn checkpoint(&self) -> &str {
        &self.info.checkpoint
    }

    #[getter]
    fn backend(&self) -> &str {
        self.backend
    }

    #[getter]
    fn precision(&self) -> &str {
        self.precision
    }
}

/// One image handed to the preprocessor.
enum ImageInput {
    Path(PathBuf),
    Encoded(Vec<u8>),
    Rgb(RgbImage),
}

/// An image as the preprocessor takes it: a path (str or os.PathLike), encoded bytes, or a
/// uint8 array `(H, W, 3)` (RGB) or `(H, W)` (grey, replicated as PIL's convert("RGB") does).
fn image_input(item: &Bound<'_, PyAny>, index: usize) -> PyResult<ImageInput> {
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(ImageInput::Encoded(bytes.as_bytes().to_vec()));
    }
    if item.hasattr("__array_interface__")? || item.hasattr("__array__")? {
        let Ok(array) = item.cast::<PyArrayDyn<u8>>() else {
            let dtype = item
                .getattr("dtype")
                .and_then(|d| d.str().map(|s| s.to_string()))
                .unwrap_or_else(|_| "not a numpy array".into());
            return Err(PyValueError::new_err(format!(
                "image {index}: an image array must be uint8 (H, W, 3) RGB or (H, W) grey, got dtype {dtype}"
            )));
        };
        let array = array.readonly();
        let shape = array.shape().to_vec();
        let values: Vec<u8> = match array.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => array.as_array().iter().copied().collect(),
        };
        let (h, w, pixels) = match shape.as_slice() {
            [h, w, 3] => (*h, *w, values),
            [h, w] | [h, w, 1] => (*h, *w, values.iter().flat_map(|&v| [v, v, v]).collect()),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "image {index}: an image array must be uint8 (H, W, 3) RGB or (H, W) grey, got shape {shape:?}"
                )))
            }
        };
        return RgbImage::new(w, h, pixels)
            .map(ImageInput::Rgb)
            .map_err(|e| PyValueError::new_err(format!("image {index}: {e}")));
    }
    match item.extract::<PathBuf>() {
        Ok(path) => Ok(ImageInput::Path(path)),
        Err(_) => Err(PyValueError::new_err(format!(
            "image {index}: expected a path, encoded bytes, a PIL image or a uint8 array, got {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))),
    }
}

/// One image's pixel values `(1, C, H, W)`, as `cnx classify` makes them; a decoder panic (a
/// bug of the image crate's on a crafted file) is that image's error.
fn preprocess_input(input: &ImageInput, cfg: &PreprocessConfig) -> Result<Tensor, String> {
    let limits = cnx_app::limits();
    std::panic::catch_unwind(|| match input {
        ImageInput::Path(path) => {
            cnx_app::classify::pixel_values(path, cfg).map_err(|e| e.to_string())
        }
        ImageInput::Encoded(bytes) => {
            let img = cnx_app::images::decode_bytes(bytes, limits).map_err(|e| e.to_string())?;
            cnx_app::classify::preprocess_image(&img, cfg, limits)
        }
        ImageInput::Rgb(img) => {
            limits
                .check_image(img.width as u64, img.height as u64)
                .map_err(|e| e.to_string())?;
            cnx_app::classify::preprocess_image(img, cfg, limits)
        }
    })
    .unwrap_or_else(|_| Err("the image decoder failed on this image".into()))
}

fn describe(input: &ImageInput, index: usize) -> String {
    match input {
        // The CLI's message already starts with the path.
        ImageInput::Path(_) => String::new(),
        _ => format!("image {index}: "),
    }
}

/// The preprocessing of a model: transformers' `ConvNextImageProcessor` (PIL path) in Rust,
/// bit-exact (the `cnx classify` code).
#[pyclass(module = "cnx._cnx", frozen)]
struct Preprocessor {
    cfg: PreprocessConfig,
}

#[pymethods]
impl Preprocessor {
    /// From `preprocessor_config.json` text (missing keys: the published checkpoints'
    /// defaults at `image_size`), or the defaults alone when `preprocessor_json` is None.
    #[new]
    #[pyo3(signature = (preprocessor_json, image_size))]
    fn new(preprocessor_json: Option<&str>, image_size: usize) -> PyResult<Preprocessor> {
        let cfg = match preprocessor_json {
            Some(text) => PreprocessConfig::from_json(text, image_size)
                .map_err(|e| usage(format!("preprocessor_config.json: {e}")))?,
            None => PreprocessConfig::for_size(image_size),
        };
        Ok(Preprocessor { cfg })
    }

    /// `pixel_values` `(n, 3, H, W)` float32 of `images` (paths, encoded bytes, uint8 RGB
    /// arrays), in order, on up to `threads` threads with the GIL released. The first image
    /// that cannot be used is the error, naming it.
    #[pyo3(signature = (images, threads=1))]
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyList>,
        threads: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let threads = check_threads(threads)?;
        let inputs: Vec<ImageInput> = images
            .iter()
            .enumerate()
            .map(|(i, item)| image_input(&item, i))
            .collect::<PyResult<_>>()?;
        if inputs.is_empty() {
            return Err(PyValueError::new_err("no images given"));
        }
        let cfg = &self.cfg;
        let rows: Vec<Result<Tensor, String>> = py.detach(|| {
            let chunk = inputs.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let parts: Vec<_> = inputs
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|input| preprocess_input(input, cfg))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|p| {
                        p.join().unwrap_or_else(|_| {
                            vec![Err("preprocessing panicked (a bug in cnx)".to_string())]
                        })
                    })
                    .collect()
            })
        });
        let mut tensors = Vec::with_capacity(rows.len());
        for (i, (row, input)) in rows.into_iter().zip(&inputs).enumerate() {
            tensors.push(row.map_err(|e| usage(format!("{}{e}", describe(input, i))))?);
        }
        // do_resize: false keeps each image's own size: rows must agree to stack.
        let shape = tensors[0].shape().to_vec();
        if let Some(odd) = tensors.iter().position(|t| t.shape() != shape) {
            return Err(usage(format!(
                "images preprocess to different sizes ({:?} and {:?}, image {odd}): they cannot share one array",
                &shape[1..],
                &tensors[odd].shape()[1..]
            )));
        }
        let mut data = Vec::with_capacity(tensors.len() * tensors[0].len());
        for t in &tensors {
            data.extend_from_slice(t.data());
        }
        let out = PyArray1::from_vec(py, data);
        out.reshape(vec![tensors.len(), shape[1], shape[2], shape[3]])
    }

    /// The settings, as `preprocessor_config.json` names them.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.cfg;
        let d = PyDict::new(py);
        let size = PyDict::new(py);
        size.set_item("shortest_edge", c.size)?;
        d.set_item("size", size)?;
        d.set_item("crop_pct", c.crop_pct)?;
        d.set_item("resample", c.resample)?;
        d.set_item("do_resize", c.do_resize)?;
        d.set_item("do_rescale", c.do_rescale)?;
        d.set_item("do_normalize", c.do_normalize)?;
        d.set_item("rescale_factor", c.rescale_factor)?;
        d.set_item("image_mean", c.image_mean.to_vec())?;
        d.set_item("image_std", c.image_std.to_vec())?;
        Ok(d)
    }
}

/// What a model name resolves to, without loading weights: `name`, `config_json`,
/// `preprocessor_json` (or None), `image_size`, `num_channels`, `id2label`, `hidden_size`,
/// `dir` (or None). A hub id missing from the
/// cache is fetched (its config and preprocessing only).
#[pyfunction]
fn resolve<'py>(py: Python<'py>, model: &str) -> PyResult<Bound<'py, PyDict>> {
    let model = model.to_string();
    let spec = py
        .detach(move || ModelSpec::resolve(&model))
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("name", &spec.name)?;
    d.set_item("config_json", &spec.config_json)?;
    d.set_item("preprocessor_json", spec.preprocessor_json.as_deref())?;
    d.set_item("image_size", spec.config.image_size)?;
    d.set_item("num_channels", spec.config.num_channels)?;
    d.set_item("id2label", spec.config.id2label.clone())?;
    d.set_item("hidden_size", spec.config.hidden_sizes.last().copied())?;
    d.set_item("dir", spec.dir.as_ref().map(|p| p.display().to_string()))?;
    Ok(d)
}

/// The `k` most probable labels of each row of `logits` `(n, num_labels)`: lists of `(index,
/// label, probability)`, most probable first (softmax in f64; ties: lower index first), as
/// `cnx classify` and `cnx serve` rank them.
#[pyfunction]
fn top_k(
    logits: PyReadonlyArray2<'_, f32>,
    labels: Vec<String>,
    k: usize,
) -> PyResult<Vec<Vec<(usize, String, f64)>>> {
    if k == 0 {
        return Err(PyValueError::new_err("top_k must be at least 1"));
    }
    let rows = logits.as_array();
    Ok(rows
        .outer_iter()
        .map(|row| {
            let row: Vec<f32> = row.iter().copied().collect();
            cnx_app::classify::top_k(&row, &labels, k)
                .into_iter()
                .map(|p| (p.index, p.label, p.probability))
                .collect()
        })
        .collect())
}

/// Each row of `values` `(n, d)` L2-normalised as `cnx embed --normalize` does it.
#[pyfunction]
fn l2_normalize<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = values.shape().to_vec();
    let mut data: Vec<f32> = values.as_array().iter().copied().collect();
    if shape[1] > 0 {
        for row in data.chunks_mut(shape[1]) {
            cnx_app::classify::l2_normalize(row);
        }
    }
    PyArray1::from_vec(py, data).reshape(shape)
}

/// The machine's cores: the default thread count.
#[pyfunction]
fn available_threads() -> usize {
    cnx_runtime::pool::available()
}

#[pymodule]
fn _cnx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CnxError", m.py().get_type::<CnxError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Engine>()?;
    m.add_class::<Preprocessor>()?;
    m.add_function(wrap_pyfunction!(resolve, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(l2_normalize, m)?)?;
    m.add_function(wrap_pyfunction!(available_threads, m)?)?;
    Ok(())
}
