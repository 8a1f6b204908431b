//! Dendrite: a microscope for neuron activations in transformer language models.
//!
//! The core (`model`, and later `analysis`, `sae`, `describe`, `worker`, `export`) never
//! imports egui; the UI never touches candle.

pub mod cli;
pub mod model;
