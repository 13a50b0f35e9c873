//! Backends that execute a graph. [`interp`] is the reference interpreter.

pub mod interp;
