//! Backends over a lowered program: [`interp`] steps through it; [`rust`] emits it as Rust
//! statics for the `convnextv2!` macro ([`literal`] writes a value of the runtime's types as
//! Rust). Both run it through the runtime's executor. (The Cranelift JIT, which compiles it at
//! run time, is the `cnx-jit` crate.)

pub mod interp;
pub mod literal;
pub mod rust;
