//! `cnx-app`: what every front door of cnx shares (the `cnx` command, `cnx serve`, the Python
//! package): naming a model (a preset, a hub id, a directory, a `config.json`) and fetching it,
//! loading it through the compiler's front end, the engines that run it (interpreter, JIT),
//! images (decode, preprocess), `.npy` / `.npz` files, random models, classification and
//! embeddings, and the model thread. No command line, no HTTP server: those are `cnx-cli`'s.
//! Everything here returns typed errors; only binaries print.

pub mod classify;
pub mod engine;
pub mod error;
pub mod hub;
pub mod images;
pub mod io;
pub mod model;
pub mod model_thread;
pub mod random;

pub use error::Error;
pub use model::ModelSpec;

use cnx_compiler::Limits;

static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

/// Sets the process's limits (`cnx --limit`), once, before any model is read; `false` if they
/// were already set or read.
pub fn set_limits(limits: Limits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// The process's limits: [`Limits::default`] unless [`set_limits`] changed them.
pub fn limits() -> &'static Limits {
    LIMITS.get_or_init(Limits::default)
}
