//! `convnextv2`: run ConvNeXt V2 classifiers compiled by cnx.
//!
//! One dependency for a user's crate: the [`convnextv2!`] macro, which compiles a model at
//! build time into Rust specialised to it, and the runtime that code links (re-exported from
//! `cnx-runtime`: tensors, weight loading, kernels, ops, the thread pool).
//!
//! ```ignore
//! convnextv2::convnextv2!(config = "tiny-1k-224", name = TinyClassifier);
//! let model = TinyClassifier::load("model.safetensors".as_ref())?;
//! let logits = model.forward(&pixel_values, 1)?;
//! ```
//!
//! (The runtime is its own crate because the macro runs the compiler, which links the
//! runtime's kernels itself: this crate re-exports both without a dependency cycle.)

pub mod capi;

pub use cnx_runtime::*;
pub use convnextv2_macros::convnextv2;
