//! Placeholder: the `cpr` crate (patches 6 and 7) is being written.
//!
//! Modules are added one per line below by the people writing them.

pub mod machine;
