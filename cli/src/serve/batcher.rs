//! Dynamic batching: images from every request wait in one bounded queue; the inference
//! thread takes the first, then whatever else arrives, up to `max_batch` images or `max_delay`
//! after the first, whichever comes first, and runs them as one batch. Every kernel computes
//! each image independently of the others in its batch, so an image's result does not depend on
//! the batch it lands in (tested against `cnx classify` / `cnx embed`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cnx_compiler::ir::outputs;
use cnx_runtime::Tensor;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::engine::Engine;

/// One image's results: its logits and its pooled features.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub logits: Vec<f32>,
    pub pooled: Vec<f32>,
}

/// One preprocessed image waiting for a batch, and where its result goes.
pub struct Job {
    /// `pixel_values` of one image (C x H x W).
    pub pixels: Vec<f32>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<ImageResult, BatchFailed>>,
}

/// The queue's sending side; the inference thread ends when every handle is dropped, after
/// running what is queued.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

/// A batch that failed (a bug in cnx: its requests are answered 500 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchFailed(pub String);

/// The queue is full: the caller answers 503.
#[derive(Debug)]
pub struct QueueFull;

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue: usize,
    pub threads: usize,
}

impl Batcher {
    /// Starts the inference thread: it makes its engine (`make_engine`, for logits and
    /// pooler_output: the JIT's code stays on the thread that compiled it), warms it up with
    /// one image, and only then is the batcher returned; an engine that cannot be made is the
    /// error.
    pub fn start(
        make_engine: impl FnOnce() -> Result<Engine, crate::Error> + Send + 'static,
        policy: BatchPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<(Batcher, std::thread::JoinHandle<()>), crate::Error> {
        let (tx, rx) = mpsc::sync_channel::<Job>(policy.queue);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), crate::Error>>();
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("cnx-inference".into())
            .spawn(move || {
                let engine =
                    match make_engine().and_then(|e| warm_up(&e, policy.threads).map(|()| e)) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                let _ = ready_tx.send(Ok(()));
                inference_loop(engine, policy, rx, &thread_metrics)
            })
            .map_err(|source| crate::Error::Io {
                path: "(inference thread)".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((Batcher { tx, metrics }, thread)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(crate::Error::Usage(
                "the inference thread panicked while loading (a bug in cnx)".into(),
            )),
        }
    }

    /// Queues `job`, or says the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        // Counted before it is sent: the inference thread may take it (and subtract it)
        // before `try_send` returns, and the depth must never wrap below zero (a handler
        // adding to a wrapped depth overflowed: a dropped connection, seen in the tests).
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }
}

/// One forward pass of a blank image: the workspace is allocated and touched before the
/// first request.
fn warm_up(engine: &Engine, threads: usize) -> Result<(), crate::Error> {
    let t = engine.model().graph.input_type();
    let blank = vec![0.0; t.channels * t.height * t.width];
    let x = Tensor::from_vec(&[1, t.channels, t.height, t.width], blank)?;
    engine.run(&x, threads).map(|_| ())
}

fn inference_loop(engine: Engine, policy: BatchPolicy, rx: mpsc::Receiver<Job>, metrics: &Metrics) {
    let [c, h, w] = {
        let t = engine.model().graph.input_type();
        [t.channels, t.height, t.width]
    };
    // Ends when every sender is gone and the queue is empty.
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + policy.max_delay;
        let mut jobs = vec![first];
        while jobs.len() < policy.max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics
            .queue_depth
            .fetch_sub(jobs.len() as u64, Ordering::Relaxed);
        // A client that went away does not cost a forward pass.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let start = Instant::now();
        for job in &jobs {
            metrics.queue_wait.observe_duration(start - job.enqueued);
        }
        let n = jobs.len();
        let mut data = Vec::with_capacity(n * c * h * w);
        for job in &jobs {
            data.extend_from_slice(&job.pixels);
        }
        // A panic in a batch answers its requests with 500; the server goes on.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if failpoint_batch_panic() {
                panic!("failpoint batch-panic");
            }
            let x = Tensor::from_vec(&[n, c, h, w], data).map_err(|e| e.to_string())?;
            engine.run(&x, policy.threads).map_err(|e| e.to_string())
        }));
        metrics.inference.observe_duration(start.elapsed());
        metrics.batch_size.observe(n as f64);
        match ran {
            Ok(Ok(out)) => {
                let logits = &out[outputs::LOGITS];
                let pooled = &out[outputs::POOLER_OUTPUT];
                let (nl, np) = (logits.shape()[1], pooled.shape()[1]);
                for (i, job) in jobs.into_iter().enumerate() {
                    let result = ImageResult {
                        logits: logits.data()[i * nl..(i + 1) * nl].to_vec(),
                        pooled: pooled.data()[i * np..(i + 1) * np].to_vec(),
                    };
                    // The client may have gone meanwhile: nothing to do then.
                    let _ = job.reply.send(Ok(result));
                }
                metrics.images_done(n);
            }
            Ok(Err(message)) => fail(jobs, &message),
            Err(_) => fail(jobs, "the forward pass panicked (a bug in cnx)"),
        }
    }
}

/// A test hook of debug builds: with `CNX_FAILPOINT=batch-panic`, the first batch panics
/// (once), so the tests can see that a panicking batch answers 500 and the server goes on.
/// Release builds never read it.
fn failpoint_batch_panic() -> bool {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    cfg!(debug_assertions)
        && std::env::var_os("CNX_FAILPOINT").is_some_and(|v| v == "batch-panic")
        && !FIRED.swap(true, Ordering::Relaxed)
}

fn fail(jobs: Vec<Job>, message: &str) {
    for job in jobs {
        let _ = job.reply.send(Err(BatchFailed(message.to_string())));
    }
}
