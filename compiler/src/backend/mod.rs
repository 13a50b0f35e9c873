//! Backends over a lowered program: [`interp`] steps through it; [`rust`] emits it as Rust for
//! the `convnextv2!` macro. (The Cranelift JIT, which compiles it at run time, is the `cnx-jit`
//! crate.)

pub mod interp;
pub mod rust;
