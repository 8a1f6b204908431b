//! What units mean: a corpus scan into an SQLite store (top-activating windows, quantile
//! samples, density, histogram per unit of any hook or SAE), explanations imported from
//! Neuronpedia or OpenAI files or written by the user, and search over them.
//!
//! - [`corpus`]: reading corpora and cutting them into windows;
//! - [`stats`]: what a scan keeps per unit (pure, mergeable);
//! - [`scan`]: the scan itself, resumable and shardable, and merging shard stores;
//! - [`store`]: the SQLite store (schema, commits, queries), [`blob`] its binary columns;
//! - [`explanations`]: importing explanation files.

pub mod blob;
pub mod corpus;
pub mod explanations;
pub mod scan;
pub mod stats;
pub mod store;

pub use scan::{ScanOptions, ScanProgress, ScanSummary, merge, scan};
pub use store::{Store, UnitReport};
