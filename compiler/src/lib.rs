//! `cnx-compiler`: the ConvNeXt V2 graph compiler.
//!
//! - [`config`]: `ConvNextV2Config`, read from a Hugging Face `config.json`.
//! - [`ir`]: the graph of typed ops, one node per Hugging Face module.
//! - [`builder`]: `build_graph`, mirroring `ConvNextV2ForImageClassification`.
//! - [`passes`]: the fusion passes, one rewrite per file; [`verify`]: the graph verifier.
//! - [`memory_plan`] and [`lower`]: an optimised graph becomes a `Program`, the flat list of
//!   steps every backend runs.
//! - [`frontend`]: the one front end, config to optimised graph to program, that the model
//!   loader, the macro and the ahead-of-time path share.
//! - [`backend`]: [`backend::interp`] steps through a program; [`backend::rust`] emits it as
//!   Rust for the `convnextv2!` macro (the Cranelift JIT is the `cnx-jit` crate).
//! - [`model`]: a model loaded with its weights.
//!
//! It depends on the runtime, petgraph, serde and the token crates the emitter needs; nothing
//! of the `cnx` application (images, hub, command line) nor Cranelift.

pub mod backend;
pub mod builder;
pub mod config;
pub mod error;
pub mod frontend;
pub mod ir;
pub mod limits;
pub mod listing;
pub mod loss;
pub mod lower;
pub mod memory_plan;
pub mod model;
pub mod passes;
pub mod presets;
#[cfg(any(test, feature = "random"))]
pub mod random;
pub mod verify;

pub use builder::{build_graph, build_graph_with, BuildOptions};
pub use config::ConvNextV2Config;
pub use error::{Error, RunError};
pub use ir::Graph;
pub use limits::{Footprint, LimitError, LimitSettingError, Limits};
pub use model::LoadedModel;
