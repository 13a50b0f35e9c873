//! `cnx-runtime`: the runtime that every cnx backend links (users reach it through the
//! `convnextv2` crate, which re-exports it beside the `convnextv2!` macro).
//!
//! - [`Tensor`]: a dense f32 tensor with a shape (row-major).
//! - [`weights`]: safetensors checkpoints (single file or sharded), memory-mapped, in Hugging Face
//!   or timm naming, validated against what a model's graph expects.
//! - [`kernels`]: the compute kernels. [`kernels::reference`] holds the plain, obviously correct
//!   versions that serve as the oracle for every optimised kernel.
//! - [`Error`]: typed errors; the runtime never prints.

pub mod artifact;
pub mod compiled;
pub mod error;
pub mod executor;
pub mod kernels;
pub mod names;
pub mod ops;
pub mod phases;
pub mod pool;
pub mod preprocess;
pub mod program;
pub mod schedule;
pub mod scratch;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result, ShapeMismatch, WeightMismatch};
pub use kernels::Activation;
pub use tensor::Tensor;
pub use weights::{NamingScheme, StoredTensor, WeightSource, WeightStore};
