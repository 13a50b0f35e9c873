//! The model thread: one thread owns a model's engines and runs the forward passes sent to it,
//! one at a time. The JIT's code lives on the thread that compiled it, and a caller that
//! must not block its own thread while a model loads or runs (the Python package, which
//! releases the GIL meanwhile) talks to it through a channel.
//!
//! The model loads at its own input size before [`ModelThread::start`] returns; another input
//! size is loaded when first asked for (transformers runs any size), and the most recent few
//! stay loaded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;

use cnx_compiler::ir::Precision;
use cnx_compiler::passes::Pipeline;
use cnx_compiler::LoadedModel;
use cnx_runtime::Tensor;

use crate::engine::{Backend, Engine};
use crate::{Error, ModelSpec};

/// Engines kept per input size besides the model's own (each other size costs a graph, packed
/// weights and a workspace, so only the most recent few stay).
pub const OTHER_SIZES_KEPT: usize = 2;

/// How the model thread loads its model for an input size.
#[derive(Debug, Clone)]
pub struct Loader {
    pub spec: ModelSpec,
    pub checkpoint: PathBuf,
    /// The pipeline's precision (a `Pipeline` holds boxed passes that are not `Send`: it is
    /// made on the model thread).
    pub precision: Precision,
    pub backend: Backend,
    /// The outputs its engines compute.
    pub wanted: &'static [&'static str],
}

impl Loader {
    /// The model at `hw` on its engine; a backbone checkpoint is refused (it has no logits
    /// nor pooled features to give).
    pub fn load(&self, hw: (usize, usize)) -> Result<Engine, Error> {
        let pipeline = Pipeline::default_pipeline().with_precision(self.precision);
        let loaded = self
            .spec
            .clone()
            .load_with(Some(&self.checkpoint), hw, &pipeline)?;
        if loaded.is_backbone() {
            return Err(Error::Usage(format!(
                "{}: the checkpoint is a ConvNextV2Backbone (it has hidden_states_norms): `cnx run --backbone` gives its feature maps",
                loaded.name
            )));
        }
        Engine::new(loaded, self.backend, self.wanted)
    }
}

/// The outputs of one forward pass, by name.
pub type Outputs = HashMap<String, Tensor>;

/// One forward pass asked of the model thread.
struct Request {
    pixels: Tensor,
    threads: usize,
    reply: mpsc::SyncSender<Result<Outputs, Error>>,
}

/// The handle of a running model thread; the thread ends when every handle is dropped.
#[derive(Debug, Clone)]
pub struct ModelThread {
    requests: mpsc::Sender<Request>,
}

impl ModelThread {
    /// Starts the thread and loads the model at its config's image size; returns once it
    /// is loaded, with what `describe` read of it (on the model thread), or the load's error.
    pub fn start<I: Send + 'static>(
        loader: Loader,
        describe: impl FnOnce(&LoadedModel, &Loader) -> I + Send + 'static,
    ) -> Result<(ModelThread, I), Error> {
        let size = loader.spec.config.image_size;
        let own_hw = (size, size);
        loader.spec.check_run(1, own_hw)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cnx-engine".into())
            .spawn(move || {
                let own = match loader.load(own_hw) {
                    Ok(engine) => engine,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(describe(own.model(), &loader)));
                serve(&loader, own, own_hw, rx)
            })
            .map_err(|source| Error::Io {
                path: "(engine thread)".into(),
                source,
            })?;
        let info = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::Usage(
                "the model's thread panicked while loading (a bug in cnx)".into(),
            ))
        })?;
        Ok((ModelThread { requests: tx }, info))
    }

    /// Sends a forward pass of `pixels` on `threads` threads; [`Pending::wait`] gives its
    /// outputs. `None`: the thread is gone (a bug: it answers every request it takes).
    pub fn submit(&self, pixels: Tensor, threads: usize) -> Option<Pending> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request {
            pixels,
            threads,
            reply,
        };
        self.requests.send(request).ok().map(|()| Pending(answer))
    }
}

/// A forward pass sent to the model thread.
#[derive(Debug)]
pub struct Pending(mpsc::Receiver<Result<Outputs, Error>>);

impl Pending {
    /// Its outputs; `None` if the thread went away without answering (a bug).
    pub fn wait(self) -> Option<Result<Outputs, Error>> {
        self.0.recv().ok()
    }
}

/// The thread's loop: runs requests until every sender is gone.
fn serve(loader: &Loader, own: Engine, own_hw: (usize, usize), requests: mpsc::Receiver<Request>) {
    // Most recently used last.
    let mut others: Vec<((usize, usize), Engine)> = Vec::new();
    for request in requests {
        let shape = request.pixels.shape();
        let hw = (shape[2], shape[3]);
        let result = (|| {
            loader.spec.check_run(shape[0], hw)?;
            if hw == own_hw {
                return run_caught(&own, &request.pixels, request.threads);
            }
            let at = match others.iter().position(|(size, _)| *size == hw) {
                Some(at) => at,
                None => {
                    let engine = loader.load(hw)?;
                    if others.len() == OTHER_SIZES_KEPT {
                        others.remove(0);
                    }
                    others.push((hw, engine));
                    others.len() - 1
                }
            };
            let entry = others.remove(at);
            let result = run_caught(&entry.1, &request.pixels, request.threads);
            others.push(entry);
            result
        })();
        // The caller may have gone (an interrupt): nothing to do then.
        let _ = request.reply.send(result);
    }
}

/// A forward pass; a panic in it (a bug) is an error, not the end of the thread.
fn run_caught(engine: &Engine, x: &Tensor, threads: usize) -> Result<Outputs, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(x, threads)))
        .unwrap_or_else(|_| {
            Err(Error::Usage(
                "the forward pass panicked (a bug in cnx)".into(),
            ))
        })
}
