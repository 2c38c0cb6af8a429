//! Placeholder: the `cpr` crate (patches 6 and 7) is being written.
//!
//! Modules are added one per line below by the people writing them.

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod error;
pub mod machine;
pub mod qmp;
pub mod vmm;

pub use error::{Error, Result};
pub mod harness;
