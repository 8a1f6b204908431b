//! Pure analysis functions over activations and attention patterns (no egui, no I/O).
//! Formulas follow `definitions.md`; each has its worked example as a test.

pub mod heads;
pub mod histogram;
pub mod lens;
pub mod sparsity;
