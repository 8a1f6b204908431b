//! Auto-interpretation (`definitions.md` §9): explanations of units from a store's examples by
//! an LLM behind any OpenAI-compatible endpoint, scored by detection, fuzzing and simulation,
//! every request kept in the store for audit.

pub mod client;
pub mod prompts;
pub mod run;
pub mod scoring;

pub use client::{ChatClient, ChatOptions, ClientError, Endpoint};
pub use prompts::{ExplainerKind, Msg, Record};
pub use run::{
    AuditEntry, ExplainOptions, ExplainSummary, ScorerKind, ScorerResult, UnitResult, explain,
    explain_with_model, run_settings,
};
pub use scoring::{BinaryScores, Scores, SimulationScores};
