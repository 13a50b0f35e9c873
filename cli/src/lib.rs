//! The `cnx` command: one module per subcommand (`commands`), benchmarks (`bench`) and the
//! HTTP server (`serve`), over the application library `cnx-app` (re-exported here under its
//! module names, which the commands use). The binary (`main.rs`) parses the command line and
//! prints; everything here returns typed errors.

pub mod bench;
pub mod commands;
pub mod serve;

pub use cnx_app::{
    classify, engine, error, hub, images, io, limits, model, model_thread, random, set_limits,
    Error, ModelSpec,
};
