//! `cnx-compiler`: the ConvNeXt V2 graph compiler.
//!
//! - [`config`]: `ConvNextV2Config`, read from a Hugging Face `config.json`.
//! - [`ir`]: the graph of typed ops, one node per Hugging Face module.
//! - [`builder`]: `build_graph`, mirroring `ConvNextV2ForImageClassification`.
//! - [`verify`]: the graph verifier.
//! - [`backend`]: executors; [`backend::interp`] is the reference interpreter.
//! - [`model`]: resolving a model name and loading it with its checkpoint.
//! - [`io`]: `.npy` / `.npz` files.

pub mod backend;
pub mod builder;
pub mod config;
pub mod error;
pub mod io;
pub mod ir;
pub mod listing;
pub mod memory_plan;
pub mod model;
pub mod presets;
pub mod verify;

pub use builder::{build_graph, build_graph_with, BuildOptions};
pub use config::ConvNextV2Config;
pub use error::Error;
pub use ir::Graph;
pub use model::{LoadedModel, ModelSpec};
pub mod bench;
pub mod classify;
pub mod hub;
pub mod images;
pub mod passes;
pub mod random;
