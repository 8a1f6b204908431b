//! Dendrite: a microscope for neuron activations in transformer language models.
//!
//! The core (`model`, and later `analysis`, `sae`, `describe`, `worker`, `export`) never
//! imports egui; the UI never touches candle.

pub mod analysis;
pub mod bench;
pub mod cli;
pub mod corpus;
pub mod describe;
pub mod edits;
pub mod export;
pub mod memory;
pub mod model;
pub mod rng;
pub mod sae;
pub mod sample;
pub mod serve;
pub mod train;
#[cfg(feature = "gui")]
pub mod ui;
pub mod worker;

/// Returns memory the allocator holds freed to the OS. Loading a model frees about as much as
/// a large matrix (each tensor's f32 form once packed), which mimalloc would otherwise keep
/// mapped for later: ~45 MB of SmolLM2's resident memory, measured with `/proc/self/status`.
pub fn release_freed_memory() {
    // Safety: `mi_collect` takes no pointers; with another global allocator mimalloc's heaps
    // are empty and it returns at once.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Process-wide allocator settings, for the binary's process constructor: they must be set
/// before mimalloc reserves its first arena, which the Rust runtime's first allocation (before
/// `main`) does; called from `main` it changed nothing (measured).
///
/// mimalloc commits the whole of each arena it reserves up front on Linux (overcommit), so
/// freed blocks of a pass stay resident beside the ones it asks for next: a 256-token
/// capturing pass on SmolLM2 peaked at 780–797 MiB, and at 740 MiB committing on demand
/// (the same speed within noise; `dendrite bench --peak-rss` and `--tokens 64,256`).
pub fn tune_allocator() {
    /// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (v2 and v3).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // Safety: sets an option value; no pointers. A user's MIMALLOC_ARENA_EAGER_COMMIT wins.
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}

/// Process-wide threading settings; call first thing in `main`, before other threads start.
///
/// candle's CPU ops run on a pool whose idle worker spins for a while before sleeping; on a
/// laptop's few cores that spinning steals a core from the next matrix multiply (measured
/// ~10% of a SmolLM2 forward on 2 cores). Park it at once unless the user chose otherwise.
pub fn tune_threads() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        // Safety: called before any other thread exists (see above).
        unsafe { std::env::set_var(SPIN, "0") };
    }
}
