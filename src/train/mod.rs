//! Training Dendrite's own small models (the embedded sample model).
//!
//! The inference engine (`crate::model`) uses packed, non-differentiable kernels; training needs
//! autograd, so it runs a plain candle-nn GPT-2 (`gpt2.rs`) whose tensor names and layouts are
//! HF's. The saved checkpoint is then opened through the ordinary HF-directory path, and a test
//! checks both implementations agree.

pub mod gpt2;
pub mod sample;
