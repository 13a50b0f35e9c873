//! Backends over the optimised graph: [`interp`] runs it op by op; [`jit`] compiles it with
//! Cranelift at run time; [`rust`] emits it as Rust for the `convnextv2!` macro.

pub mod interp;
pub mod jit;
pub mod rust;
