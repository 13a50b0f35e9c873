//! Compute kernels shared by every backend.
//!
//! [`reference`] is the plain twin of every kernel: loops a reader can check against the
//! PyTorch definition line by line. It accumulates reductions in f64 so that it sits closer to
//! the float64 ground truth than any float32 implementation; optimised kernels are tested
//! against it.

pub mod activation;
mod amx;
pub mod bf16;
pub mod conv;
pub mod fused;
pub mod gemm;
pub mod isa;
pub mod matmul;
pub mod microkernel;
pub mod qgemm;
pub mod quantize;
pub mod reference;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

pub use activation::{Activation, ActivationKernel};
pub use isa::{Feature, Features, Isa, Width};
pub use matmul::{kernel_for, MatMulKernel, PackedMatrix};

/// Weights rearranged once, at load, for an optimised kernel.
#[derive(Debug, Clone)]
pub enum PreparedWeights {
    /// Panels for the packed GEMM in the layer's precision (Linear layers; kernel == stride
    /// convs over patches).
    Gemm(matmul::PackedMatrix),
    /// Tap-major depthwise weights.
    Depthwise(conv::DepthwiseWeights),
}
