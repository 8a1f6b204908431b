//! Figures and tables written to files (no egui): PNG plots drawn with plotters, CSV tables.

pub mod csv;
pub mod plot;
