//! The `cnx` application: model names and the hub, images, `.npy` / `.npz` files, random
//! models, classification and benchmarks, and one module per subcommand (`commands`). The
//! binary (`main.rs`) parses the command line and prints; everything here returns typed errors.

pub mod bench;
pub mod classify;
pub mod commands;
pub mod engine;
pub mod error;
pub mod hub;
pub mod images;
pub mod io;
pub mod model;
pub mod random;
pub mod serve;

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
