//! Figures and tables written to files (no egui): PNG plots drawn with plotters, CSV tables.

pub mod plot;
