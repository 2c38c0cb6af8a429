//! Placeholder: filled in by its patch.
