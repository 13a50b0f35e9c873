//! Backends over the optimised graph: [`interp`] runs it op by op; [`rust`] emits it as Rust
//! for the `convnextv2!` macro.

pub mod interp;
pub mod rust;
