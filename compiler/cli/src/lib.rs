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

pub use error::Error;
pub use model::ModelSpec;
