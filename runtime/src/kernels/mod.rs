//! Compute kernels shared by every backend.
//!
//! [`reference`] is the plain twin of every kernel: loops a reader can check against the
//! PyTorch definition line by line. It accumulates reductions in f64 so that it sits closer to
//! the float64 ground truth than any float32 implementation; optimised kernels are tested
//! against it.

pub mod activation;
pub mod gemm;
pub mod reference;

pub use activation::Activation;
