//! `cnx serve`: the model as an HTTP service, on tokio + axum (hyper underneath: the most used
//! and best kept async HTTP stack in Rust; axum adds routing, extractors and graceful
//! shutdown without a framework's weight).
//!
//! - `POST /v1/classify`, `POST /v1/embed`: a body of image bytes, JSON `{"image": base64}` /
//!   `{"images": [...]}`, or a multipart form of images ([`request`]). Decoding and
//!   preprocessing run on tokio's blocking pool; the forward passes on one inference thread
//!   that batches images across requests ([`batcher`]).
//! - `GET /health`, `GET /metrics` (Prometheus text, [`metrics`]).
//! - The Open Inference Protocol (KServe V2) REST routes under `/v2` ([`v2`]).
//! - Errors are JSON `{"error": ...}`: 400 (undecodable image, bad body), 404, 405, 413 (body
//!   over `--max-body-mb`), 503 with `Retry-After` (queue full), 500 (a failed batch).
//! - SIGTERM or Ctrl-C: stop accepting, answer what is queued, exit 0.

pub mod batcher;
pub mod metrics;
pub mod request;
pub mod v2;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cnx_compiler::Limits;
use cnx_runtime::preprocess::PreprocessConfig;
use serde_json::json;

use self::batcher::{BatchPolicy, Batcher, ImageResult, Job};
use self::metrics::Metrics;
use crate::engine::{Backend, Engine};
use crate::Error;
use cnx_compiler::ir::outputs;
use cnx_compiler::LoadedModel;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub policy: BatchPolicy,
    pub max_body_bytes: usize,
    /// The model's name on the V2 routes (`/v2/models/{name}`); default: the last component of
    /// how the model was named (`facebook/convnextv2-tiny-1k-224` -> `convnextv2-tiny-1k-224`).
    pub model_name: Option<String>,
}

/// The default V2 name of a model named `name` (a path or hub id): its last component.
pub fn default_model_name(name: &str) -> String {
    let trimmed = name.trim_end_matches('/');
    let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
    let last = last.strip_suffix(".json").unwrap_or(last);
    if last.is_empty() || last == "config" {
        "model".to_string()
    } else {
        last.to_string()
    }
}

struct AppState {
    batcher: Batcher,
    metrics: Arc<Metrics>,
    labels: Vec<String>,
    preprocess: PreprocessConfig,
    limits: Limits,
    max_images: usize,
    max_body_bytes: usize,
    /// The model's input per image, `[C, H, W]`.
    input: [usize; 3],
    /// Its name and output widths on the V2 routes.
    v2: v2::ModelInfo,
}

type Shared = Arc<AppState>;

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Serves `model` on `backend` until SIGTERM or Ctrl-C; then answers what is queued and
/// returns.
pub fn serve(
    model: LoadedModel,
    backend: Backend,
    preprocess: PreprocessConfig,
    options: ServeOptions,
) -> Result<(), Error> {
    let labels = model.config.id2label.clone();
    let model_name = model.name.clone();
    let t = model.graph.input_type();
    let input = [t.channels, t.height, t.width];
    let pooled = model.config.hidden_sizes.last().copied().unwrap_or(0);
    // A bare `ConvNextV2Model` checkpoint (or one of no labels) has no classifier: its logits
    // are the pooled features.
    let bare = model.checkpoint().scheme() == cnx_runtime::NamingScheme::HuggingFaceBare;
    let v2_info = v2::ModelInfo {
        name: options
            .model_name
            .clone()
            .unwrap_or_else(|| default_model_name(&model_name)),
        logits: if bare || model.config.num_labels() == 0 {
            pooled
        } else {
            model.config.num_labels()
        },
        pooled,
    };
    let metrics = Arc::new(Metrics::default());
    let make_engine =
        move || Engine::new(model, backend, &[outputs::LOGITS, outputs::POOLER_OUTPUT]);
    let (batcher, inference) = Batcher::start(make_engine, options.policy, metrics.clone())?;
    let state = Arc::new(AppState {
        batcher,
        metrics,
        labels,
        preprocess,
        limits: crate::limits().clone(),
        max_images: options.policy.queue,
        max_body_bytes: options.max_body_bytes,
        input,
        v2: v2_info,
    });
    // Decoding needs no more threads than cores; a bounded blocking pool also bounds the
    // allocator arenas (each new thread may get its own), so memory stops growing under load.
    let decoders = options.policy.threads.clamp(2, 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(decoders)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: "(tokio runtime)".into(),
            source,
        })?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| Error::Io {
                path: options.addr.to_string().into(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Io {
            path: options.addr.to_string().into(),
            source,
        })?;
        eprintln!(
            "cnx: serving {model_name} on http://{local} (max batch {}, max delay {} ms, queue {})",
            options.policy.max_batch,
            options.policy.max_delay.as_millis(),
            options.policy.queue
        );
        axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|source| Error::Io {
                path: local.to_string().into(),
                source,
            })
    });
    // Dropping the last queue handle lets the inference thread finish what is queued, then end.
    drop(state);
    drop(runtime);
    inference.join().map_err(|_| {
        Error::Usage("the inference thread panicked outside a batch (a bug in cnx)".into())
    })?;
    eprintln!("cnx: server stopped");
    result
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::model_infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::version_infer),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("cnx: shutting down: finishing queued requests");
}

async fn not_found(State(s): State<Shared>) -> Response {
    s.metrics.request("other", 404);
    error(
        StatusCode::NOT_FOUND,
        "no such route (routes: POST /v1/classify, POST /v1/embed, GET /health, GET /metrics, and the V2 protocol's: GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{name}[/ready], POST /v2/models/{name}/infer)",
    )
}

async fn method_not_allowed(State(s): State<Shared>) -> Response {
    s.metrics.request("other", 405);
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Ready whenever reachable: the port is bound only after the model is loaded and warmed.
async fn health(State(s): State<Shared>) -> Response {
    s.metrics.request("health", 200);
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    s.metrics.request("metrics", 200);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// What the images are for.
#[derive(Clone, Copy)]
enum Task {
    Classify,
    Embed,
}

impl Task {
    fn route(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Embed => "embed",
        }
    }
}

async fn classify(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    handle(s, Task::Classify, headers, body).await
}

async fn embed(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    handle(s, Task::Embed, headers, body).await
}

async fn handle(s: Shared, task: Task, headers: HeaderMap, body: axum::body::Body) -> Response {
    let response = answer(&s, task, headers, body).await;
    s.metrics.request(task.route(), response.status().as_u16());
    response
}

async fn answer(s: &Shared, task: Task, headers: HeaderMap, body: axum::body::Body) -> Response {
    let body = match read_body(s, &headers, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut request = match request::parse(content_type.as_deref(), body, s.max_images).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let pixels = match preprocess_all(s, std::mem::take(&mut request.images)).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let results = match infer(s, pixels).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let answers: Vec<serde_json::Value> = match task {
        Task::Classify => {
            let k = request.top_k.unwrap_or(5).min(s.labels.len().max(1));
            results
                .iter()
                .map(|r| {
                    let top: Vec<serde_json::Value> = crate::classify::top_k(
                        &r.logits, &s.labels, k,
                    )
                    .into_iter()
                    .map(|p| json!({"label": p.label, "score": p.probability, "index": p.index}))
                    .collect();
                    serde_json::Value::Array(top)
                })
                .collect()
        }
        Task::Embed => results
            .into_iter()
            .map(|mut r| {
                if request.normalize.unwrap_or(false) {
                    crate::commands::embed::l2_normalize(&mut r.pooled);
                }
                json!({"embedding": r.pooled})
            })
            .collect(),
    };
    if request.many {
        Json(serde_json::Value::Array(answers)).into_response()
    } else {
        let one = answers
            .into_iter()
            .next()
            .unwrap_or(serde_json::Value::Null);
        Json(one).into_response()
    }
}

/// The request body, read up to `--max-body-mb` (413 past it; a declared length over the limit
/// is refused before a byte is read).
async fn read_body(
    s: &Shared,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is over --max-body-mb",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body_bytes as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, s.max_body_bytes).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) if e.to_string().contains("length limit") => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// Decodes and preprocesses encoded images off the async workers (and off the inference
/// thread); 400 naming the first image that cannot be used.
async fn preprocess_all(s: &Shared, images: Vec<Vec<u8>>) -> Result<Vec<Vec<f32>>, Response> {
    let start = Instant::now();
    let (cfg, limits, want) = (s.preprocess.clone(), s.limits.clone(), s.input);
    let pixels = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let pixels =
                    std::panic::catch_unwind(|| preprocess_one(bytes, &cfg, &limits, want))
                        .unwrap_or_else(|_| Err("the image decoder failed on this image".into()));
                pixels.map_err(|e| format!("image {i}: {e}"))
            })
            .collect::<Result<Vec<Vec<f32>>, String>>()
    })
    .await;
    s.metrics.preprocess.observe_duration(start.elapsed());
    match pixels {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, e)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "preprocessing failed",
        )),
    }
}

/// Queues every image's pixel values (all or none: a request that does not fit is refused
/// whole, 503) and waits for their results, in order.
async fn infer(s: &Shared, pixels: Vec<Vec<f32>>) -> Result<Vec<ImageResult>, Response> {
    let depth = s.metrics.queue_depth.load(Ordering::Relaxed) as usize;
    if depth.saturating_add(pixels.len()) > s.max_images {
        return Err(busy());
    }
    let mut replies = Vec::with_capacity(pixels.len());
    for p in pixels {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            pixels: p,
            enqueued: Instant::now(),
            reply: tx,
        };
        if s.batcher.submit(job).is_err() {
            return Err(busy());
        }
        replies.push(rx);
    }
    let mut results: Vec<ImageResult> = Vec::with_capacity(replies.len());
    for rx in replies {
        match rx.await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.0)),
            Err(_) => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the inference thread stopped",
                ))
            }
        }
    }
    Ok(results)
}

fn busy() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is full; retry shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// One image's pixel values, as `cnx classify` makes them; the shape must be the model's.
fn preprocess_one(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    limits: &Limits,
    want: [usize; 3],
) -> Result<Vec<f32>, String> {
    let img = crate::images::decode_bytes(bytes, limits).map_err(|e| e.to_string())?;
    let x = crate::classify::preprocess_image(&img, cfg, limits)?;
    if x.shape()[1..] != want {
        return Err(format!(
            "preprocessed to {:?}, but the model takes {want:?}",
            &x.shape()[1..]
        ));
    }
    Ok(x.data().to_vec())
}
