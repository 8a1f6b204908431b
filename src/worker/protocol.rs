//! What the UI asks of the worker ([`Command`]) and what the worker reports ([`Event`]): one
//! payload struct per variant, owned data only (rows as `Arc<[f32]>`, never tensors).

use std::path::PathBuf;
use std::sync::Arc;

use crate::analysis::heads::HeadScores;
use crate::analysis::sparsity::{LayerSparsity, Method};
use crate::model::generate::{GenerateOptions, GeneratedToken, Generation};
use crate::model::{BosMode, Intervention, ModelInfo, ValueOp};
use crate::sae::SaeConfig;
use crate::sae::apply::SaeSummary;

/// Identifies one request; a newer id cancels older passes (latest wins).
pub type RunId = u64;

/// Identifies an attached SAE for as long as the model stays open.
pub type SaeId = u64;

pub use crate::sae::steer::SteerMode;

#[derive(Clone, Debug, PartialEq)]
pub struct LoadModel {
    pub path: PathBuf,
}

/// One edit of a run, as the UI describes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Any engine intervention (neuron set/scale, head ablation, pattern clamp, …).
    Hook(Intervention),
    /// Add `scale ×` neuron `neuron`'s output direction `W_out[:, neuron]` (layer `layer`) to the
    /// residual stream after that layer: a steering vector the worker builds from the weights.
    SteerNeuron {
        layer: usize,
        neuron: usize,
        scale: f32,
    },
    /// Resample ablation: head `head` of layer `layer` takes its `attn.hook_z` from a run of
    /// `source` (which needs at least as many tokens as the prompt).
    ResampleHead {
        layer: usize,
        head: usize,
        source: String,
    },
    /// Set/scale one latent of an attached SAE (encode, edit, decode, add back the SAE's
    /// error), at `positions` (all when `None`).
    SaeLatent {
        sae_id: SaeId,
        latent: usize,
        op: ValueOp,
        positions: Option<Vec<usize>>,
    },
    /// The block weights of `scope` pruned to `sparsity` by `method` (the intervened pass runs
    /// on a pruned copy of the model; the open model stays dense).
    Prune {
        method: crate::model::prune::PruneMethod,
        scope: crate::model::prune::PruneScope,
        sparsity: f32,
    },
    /// Every MLP's activations cut by a sparsity method, calibrated on the prompt itself.
    Sparsify {
        method: crate::analysis::sparsify::SparsifyMethod,
    },
    /// Activation patching's cell as an edit: `site` of `layer` takes its value from a run of
    /// `source` (a prompt with as many tokens) at position `cell`, or head `cell`'s at every
    /// position for `z`.
    Patch {
        site: crate::analysis::patching::Site,
        layer: usize,
        cell: usize,
        source: String,
    },
    /// Steer along an SAE latent's decoder direction at the SAE's (output) hook.
    SteerLatent {
        sae_id: SaeId,
        latent: usize,
        mode: SteerMode,
        positions: Option<Vec<usize>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunPrompt {
    pub run_id: RunId,
    pub text: String,
    /// Whether the prompt (and a resample source) gets the model's BOS.
    pub bos: BosMode,
    /// The enabled edits, in order. Empty = the baseline only.
    pub interventions: Vec<Edit>,
    /// How each layer's sparsity is measured.
    pub sparsity: Method,
    /// Compute the logit lens with the run (its view is open); otherwise it waits for a
    /// [`Command::Lens`].
    pub lens: bool,
    /// Capture every layer's attention pattern (a head's pattern is on screen); otherwise
    /// [`LayerSummary::patterns`] is empty and no pattern is materialised beyond what
    /// attention itself needs.
    pub patterns: bool,
    /// The earlier run whose complete baseline the UI holds. When this run's tokens and
    /// sparsity method are the same, the worker answers [`Event::BaselineReused`] instead of
    /// sending the baseline again.
    pub have_baseline: Option<RunId>,
}

/// Continue a prompt: the baseline and, when there are interventions, the intervened model,
/// a token of each in turn so both stream side by side. A newer run id cancels it.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub run_id: RunId,
    pub text: String,
    pub bos: BosMode,
    /// The enabled edits, applied at generated positions too. Empty = the baseline only.
    pub interventions: Vec<Edit>,
    pub options: GenerateOptions,
    /// A unit whose activation each step reports (colours the continuation by it).
    pub watch: Option<Watch>,
}

/// A unit watched while generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// `blocks.{layer}.mlp.hook_post`, neuron `neuron`.
    Neuron { layer: usize, neuron: usize },
    /// Latent `latent` of an attached SAE (encoded at its hook).
    Latent { sae_id: SaeId, latent: usize },
}

/// One generated token of one continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenGenerated {
    pub run_id: RunId,
    pub variant: Variant,
    pub token: GeneratedToken,
    /// Its text.
    pub text: String,
    /// The texts of `token.top`'s alternatives, in their order.
    pub top_texts: Vec<String>,
    /// The watched unit's activation at the last position this step read: the previous
    /// generated token (the prompt's last token at the first step). A token's own activation
    /// therefore arrives with the next token.
    pub input_activation: Option<f32>,
}

/// A continuation stopped (after its last [`TokenGenerated`]); a cancelled one reports
/// what it had, with [`StopReason::Cancelled`](crate::model::generate::StopReason).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationFinished {
    pub run_id: RunId,
    pub variant: Variant,
    pub generation: Generation,
    /// The generated tokens decoded together (exact text, unlike the tokens' pieces).
    pub text: String,
}

/// The logit lens of a finished run's passes (sent when its view opens).
#[derive(Clone, Debug, PartialEq)]
pub struct LensRequest {
    pub run_id: RunId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeHeads {
    pub run_id: RunId,
    pub repeat_len: usize,
    pub batch: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InspectNeuron {
    pub layer: usize,
    pub neuron: usize,
    /// How many top and bottom tokens to list.
    pub k: usize,
}

/// Attach an SAE (directory or file) to the open model, at `hook` when given.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachSae {
    pub path: PathBuf,
    pub hook: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetachSae {
    pub sae_id: SaeId,
}

/// A latent's decoder direction read through the unembedding.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectLatent {
    pub sae_id: SaeId,
    pub latent: usize,
    pub k: usize,
}

/// Identifies a long job (training, corpus evaluation); cancelled by id.
pub type JobId = u64;

/// Train a TopK SAE on the open model; the result is saved to `opts.out` and attached.
#[derive(Clone, Debug)]
pub struct TrainSaeJob {
    pub job_id: JobId,
    pub opts: crate::sae::train::TrainOptions,
}

impl PartialEq for TrainSaeJob {
    fn eq(&self, other: &Self) -> bool {
        self.job_id == other.job_id
    }
}

/// Evaluate an attached SAE over held-out text.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateSaeJob {
    pub job_id: JobId,
    pub sae_id: SaeId,
    /// A .txt file (its last 5% is used) or a directory of .txt files (every 20th).
    pub corpus: PathBuf,
    pub tokens: usize,
}

/// Scan a corpus with the open model into a store (`describe::scan`).
#[derive(Clone, Debug)]
pub struct ScanCorpusJob {
    pub job_id: JobId,
    pub opts: crate::describe::ScanOptions,
}

impl PartialEq for ScanCorpusJob {
    fn eq(&self, other: &Self) -> bool {
        self.job_id == other.job_id
    }
}

/// Explain units of a store with an LLM endpoint and score the explanations
/// Activation patching between two prompts of equal length (a job; definitions §16).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchJob {
    pub job_id: JobId,
    pub clean: String,
    pub corrupt: String,
    pub bos: BosMode,
    /// The token the clean prompt predicts, and the one the corrupted prompt predicts
    /// instead (text of one token, or `id:N`).
    pub answer: String,
    pub wrong: String,
    pub site: crate::analysis::patching::Site,
    pub direction: crate::analysis::patching::Direction,
}

/// A loss curve over a sparsity knob (`analysis::sweep`): weight pruning at several
/// sparsities, or every activation-sparsification method over its grid with a PPL-p% search.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepJob {
    pub job_id: JobId,
    pub text: crate::analysis::sweep::LossText,
    pub kind: SweepKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SweepKind {
    Prune {
        method: crate::model::prune::PruneMethod,
        scope: crate::model::prune::PruneScope,
        levels: Vec<f64>,
    },
    Sparsify {
        methods: Vec<crate::analysis::sparsify::SparsifyMethod>,
        /// The method whose PPL-p% point is searched, and p.
        search: crate::analysis::sparsify::SparsifyMethod,
        ppl_p: f64,
        /// The text that calibrates CATS, CHESS and CETT; `None`: the measured text itself.
        calibration: Option<crate::analysis::sweep::LossText>,
    },
}

/// A finished sweep.
#[derive(Clone, Debug, PartialEq)]
pub enum SweepReport {
    Prune(crate::analysis::sweep::PruneSweep),
    Sparsify(crate::analysis::sweep::SparsifySweep),
}

/// Another prompt's sentence-wise core neurons at every layer, to compare with the prompt's
/// (definitions §12).
#[derive(Clone, Debug, PartialEq)]
pub struct CoresRequest {
    pub text: String,
    pub bos: BosMode,
    pub alpha: f64,
}

/// [`CoresRequest`]'s answer: each layer's sentence core (ascending neuron indices).
#[derive(Clone, Debug, PartialEq)]
pub struct CoresReport {
    pub request: CoresRequest,
    pub cores: Vec<Vec<usize>>,
    pub n_tokens: usize,
}

/// A unit's facets from a corpus store's top windows (the open model reruns them).
#[derive(Clone, Debug, PartialEq)]
pub struct FacetsRequest {
    pub store: PathBuf,
    pub source: String,
    pub unit: usize,
    /// An explainer LLM that labels each facet (auto-interp), when one is set.
    pub explainer: Option<(
        crate::describe::interp::Endpoint,
        crate::describe::interp::ExplainerKind,
    )>,
}

/// A finished patching sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchReport {
    pub job: PatchJob,
    pub result: crate::analysis::patching::PatchResult,
    /// Both prompts' tokens (the heatmap's labels).
    pub clean_tokens: Vec<String>,
    pub corrupt_tokens: Vec<String>,
    pub duration_ms: f64,
}

/// (`describe::interp`); the results are written into the store.
#[derive(Clone, Debug)]
pub struct ExplainUnitsJob {
    pub job_id: JobId,
    pub opts: Box<crate::describe::interp::ExplainOptions>,
}

impl PartialEq for ExplainUnitsJob {
    fn eq(&self, other: &Self) -> bool {
        self.job_id == other.job_id
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    LoadModel(LoadModel),
    ExplainUnits(ExplainUnitsJob),
    Patch(PatchJob),
    Sweep(SweepJob),
    Facets(FacetsRequest),
    Cores(CoresRequest),
    ScanCorpus(ScanCorpusJob),
    TrainSae(TrainSaeJob),
    EvaluateSae(EvaluateSaeJob),
    AttachSae(AttachSae),
    DetachSae(DetachSae),
    InspectLatent(InspectLatent),
    Run(RunPrompt),
    ProbeHeads(ProbeHeads),
    InspectNeuron(InspectNeuron),
    Lens(LensRequest),
    Generate(GenerateRequest),
    /// Stops the generation in progress, if older than this id (nothing else happens).
    StopGeneration(RunId),
    /// Panics inside the worker: tests check that a panic becomes an error event and the
    /// worker recovers. Only in builds with the `fault-injection` feature (the test suite's).
    #[cfg(feature = "fault-injection")]
    Panic,
    Shutdown,
}

impl Command {
    /// The request an error of this command answers, and what it was doing, in words.
    pub fn request(&self) -> (Request, String) {
        match self {
            Command::LoadModel(load) => (
                Request::Load(load.path.clone()),
                format!("opening {}", load.path.display()),
            ),
            Command::Run(r) => (Request::Run(r.run_id), "running the prompt".into()),
            Command::ProbeHeads(p) => (Request::Probe(p.run_id), "probing heads".into()),
            Command::InspectNeuron(n) => (
                Request::Inspect,
                format!("inspecting neuron L{}.N{}", n.layer, n.neuron),
            ),
            Command::InspectLatent(l) => (
                Request::Inspect,
                format!("inspecting SAE latent {}", l.latent),
            ),
            Command::Lens(l) => (Request::Lens(l.run_id), "computing the logit lens".into()),
            Command::Generate(g) => (Request::Generate(g.run_id), "generating".into()),
            Command::StopGeneration(id) => (Request::Generate(*id), "stopping generation".into()),
            Command::AttachSae(a) => (
                Request::AttachSae(a.path.clone()),
                format!("attaching the SAE {}", a.path.display()),
            ),
            Command::DetachSae(d) => (Request::DetachSae(d.sae_id), "detaching an SAE".into()),
            Command::TrainSae(j) => (Request::Job(j.job_id), "training an SAE".into()),
            Command::EvaluateSae(j) => (Request::Job(j.job_id), "evaluating an SAE".into()),
            Command::ScanCorpus(j) => (
                Request::Job(j.job_id),
                format!("scanning {}", j.opts.corpus.display()),
            ),
            Command::ExplainUnits(j) => (
                Request::Job(j.job_id),
                format!("explaining units of {}", j.opts.source),
            ),
            Command::Facets(f) => (
                Request::Inspect,
                format!("finding the facets of {} {}", f.source, f.unit),
            ),
            Command::Cores(_) => (
                Request::Cores,
                "finding the other prompt's core neurons".into(),
            ),
            Command::Patch(j) => (
                Request::Job(j.job_id),
                format!("patching {}", j.site.name()),
            ),
            Command::Sweep(j) => (
                Request::Job(j.job_id),
                match j.kind {
                    SweepKind::Prune { .. } => "sweeping pruning sparsities".into(),
                    SweepKind::Sparsify { .. } => "sweeping sparsification methods".into(),
                },
            ),
            #[cfg(feature = "fault-injection")]
            Command::Panic => (Request::Other, "a requested panic".into()),
            Command::Shutdown => (Request::Other, "shutting down".into()),
        }
    }

    /// The id of a prompt run: a newer one cancels older passes.
    pub fn run_id(&self) -> Option<RunId> {
        match self {
            Command::Run(r) => Some(r.run_id),
            _ => None,
        }
    }

    /// The id of a request that stops an older generation: a run (the user moved on), a
    /// newer generation (a changed edit restarts it, after the rerun it follows) or a stop.
    pub fn stops_generations_before(&self) -> Option<RunId> {
        match self {
            Command::Run(r) => Some(r.run_id),
            Command::Generate(g) => Some(g.run_id),
            Command::StopGeneration(id) => Some(*id),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Loading {
    pub path: PathBuf,
    /// Fraction of the weights loaded (`None` before the file is read).
    pub fraction: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelLoaded {
    pub info: ModelInfo,
    pub duration_ms: f64,
    /// The file's size and the hash of its first MiB ([`crate::describe::corpus::model_fingerprint`]):
    /// a session file tells a changed model by it. `None` when it could not be read.
    pub fingerprint: Option<String>,
}

/// Which pass an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// No interventions.
    Baseline,
    /// With the run's interventions.
    Intervened,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunStarted {
    pub run_id: RunId,
    pub variant: Variant,
    pub token_ids: Vec<u32>,
    /// Each token's text.
    pub tokens: Vec<String>,
    pub n_layers: usize,
}

/// Everything the views draw about one layer of one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    pub layer: usize,
    pub n_tokens: usize,
    pub d_mlp: usize,
    pub n_heads: usize,
    /// `mlp.hook_post`, `[n_tokens, d_mlp]` row-major.
    pub mlp_post: Arc<[f32]>,
    pub sparsity: LayerSparsity,
    /// `attn.hook_pattern`, `[n_heads, n_tokens, n_tokens]` row-major; empty when the run
    /// did not ask for patterns ([`RunPrompt::patterns`]).
    pub patterns: Arc<[f32]>,
}

impl LayerSummary {
    /// Activation of `neuron` at every token.
    pub fn neuron_column(&self, neuron: usize) -> Vec<f32> {
        (0..self.n_tokens)
            .filter_map(|t| self.mlp_post.get(t * self.d_mlp + neuron).copied())
            .collect()
    }

    /// Head `head`'s pattern, `[n_tokens, n_tokens]`.
    pub fn pattern(&self, head: usize) -> &[f32] {
        let n = self.n_tokens * self.n_tokens;
        self.patterns.get(head * n..(head + 1) * n).unwrap_or(&[])
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerReady {
    pub run_id: RunId,
    pub variant: Variant,
    pub summary: Arc<LayerSummary>,
}

/// A predicted token with its text.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenPrediction {
    pub id: u32,
    pub token: String,
    pub prob: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunFinished {
    pub run_id: RunId,
    pub variant: Variant,
    /// Loss predicting token `p+1` at position `p` (`n_tokens − 1` values).
    pub per_token_nll: Vec<f32>,
    /// Top predictions at every position.
    pub predictions: Vec<Vec<TokenPrediction>>,
    /// First recomputed stage (−1 = all; larger = more reused from the previous pass).
    pub recomputed_from: isize,
    pub duration_ms: f64,
}

/// The baseline of `from_run` stands unchanged for `run_id` (same tokens, same sparsity
/// method): the UI keeps the one it has.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineReused {
    pub run_id: RunId,
    pub from_run: RunId,
}

/// Layers `0..through` of run `run_id`'s intervened pass come before every edit, so they
/// equal the baseline's: the UI takes those summaries instead of the worker sending them again.
#[derive(Clone, Debug, PartialEq)]
pub struct LayersFromBaseline {
    pub run_id: RunId,
    pub through: usize,
}

/// Rows `first_layer..` of a pass's logit lens, sent as they are computed so the lens view
/// fills layer by layer; [`LensReady`] follows with the whole lens.
#[derive(Clone, Debug, PartialEq)]
pub struct LensRows {
    pub run_id: RunId,
    pub variant: Variant,
    pub first_layer: usize,
    /// `[layer][position]` → top predictions.
    pub rows: Vec<Vec<Vec<TokenPrediction>>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LensReady {
    pub run_id: RunId,
    pub variant: Variant,
    /// `[layer][position]` → top predictions.
    pub lens: Vec<Vec<Vec<TokenPrediction>>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SaeAttached {
    pub sae_id: SaeId,
    pub cfg: SaeConfig,
    /// Its latents' source name in corpus stores (`sae:<folder>`).
    pub source: String,
    /// As [`ModelLoaded::fingerprint`], of the SAE's files.
    pub fingerprint: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SaeDetached {
    pub sae_id: SaeId,
}

/// An attached SAE's view of one pass, sent as soon as the layer of its hook is done.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeReady {
    pub run_id: RunId,
    pub variant: Variant,
    pub sae_id: SaeId,
    pub summary: Arc<SaeSummary>,
}

/// What a latent writes, read through the unembedding (`W_dec[j] · W_U`, through `W_out` first
/// for SAEs on MLP neurons); empty lists where the hook is not in the residual basis.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentInfo {
    pub sae_id: SaeId,
    pub latent: usize,
    pub decoder_norm: f32,
    pub top: Vec<LogitEffect>,
    pub bottom: Vec<LogitEffect>,
    /// Why the lists are empty, if they are.
    pub note: Option<String>,
    /// `log10` of its firing frequency during training, when the SAE came with
    /// `sparsity.safetensors`.
    pub training_log10_density: Option<f32>,
}

/// How far a job has got (training reports every step).
#[derive(Clone, Debug)]
pub struct JobProgress {
    pub job_id: JobId,
    /// In [0, 1].
    pub fraction: f32,
    pub message: String,
    pub train: Option<crate::sae::train::TrainProgress>,
}

impl PartialEq for JobProgress {
    fn eq(&self, other: &Self) -> bool {
        self.job_id == other.job_id
            && self.fraction == other.fraction
            && self.message == other.message
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// Saved to this folder (and attached).
    Trained {
        out: PathBuf,
        fve: f64,
        l0: f64,
        tokens_per_s: f64,
    },
    Evaluated {
        sae_id: SaeId,
        report: Box<crate::sae::eval::EvalReport>,
    },
    /// A corpus scan committed to `store` (`complete: false` when it was cancelled: resume
    /// it from the command line with `--resume`).
    Scanned {
        store: PathBuf,
        windows: u64,
        tokens: u64,
        tokens_per_s: f64,
        complete: bool,
    },
    /// Auto-interpretation wrote `explained` of `units` explanations into `store`.
    Explained {
        store: PathBuf,
        source: String,
        units: usize,
        explained: usize,
        scored: usize,
        requests: usize,
    },
    Patched(Box<PatchReport>),
    Swept(Box<SweepReport>),
    Cancelled,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobFinished {
    pub job_id: JobId,
    pub outcome: JobOutcome,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeFinished {
    pub run_id: RunId,
    pub scores: HeadScores,
    pub duration_ms: f64,
}

/// A token and how much a neuron's output raises its logit (`W_out[:, i] · W_U`).
#[derive(Clone, Debug, PartialEq)]
pub struct LogitEffect {
    pub id: u32,
    pub token: String,
    pub effect: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NeuronInfo {
    pub layer: usize,
    pub neuron: usize,
    pub top: Vec<LogitEffect>,
    pub bottom: Vec<LogitEffect>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cancelled {
    pub run_id: RunId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ErrorEvent {
    /// The request that failed: the window stops waiting for it by this, not by the words.
    pub request: Request,
    /// What was being done ("opening /path/model.gguf", "running the prompt").
    pub context: String,
    pub message: String,
}

/// The request an error answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Opening the model at this path.
    Load(PathBuf),
    Run(RunId),
    Probe(RunId),
    Lens(RunId),
    Generate(RunId),
    /// A neuron's or latent's details for the inspector.
    Inspect,
    /// Another prompt's core neurons.
    Cores,
    /// Attaching the SAE at this path.
    AttachSae(PathBuf),
    DetachSae(SaeId),
    Job(JobId),
    /// The corpus-store reader.
    Store,
    /// The window's own work (saving a session, restoring one, exporting).
    Window,
    /// Anything else (the worker itself).
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A unit's facets ([`Command::Facets`]).
    FacetsReady(Box<crate::describe::facets::Facets>),
    /// Another prompt's core neurons ([`Command::Cores`]).
    CoresReady(Box<CoresReport>),
    Loading(Loading),
    ModelLoaded(ModelLoaded),
    RunStarted(RunStarted),
    BaselineReused(BaselineReused),
    LayerReady(LayerReady),
    LayersFromBaseline(LayersFromBaseline),
    RunFinished(RunFinished),
    LensRows(LensRows),
    LensReady(LensReady),
    SaeAttached(SaeAttached),
    SaeDetached(SaeDetached),
    SaeReady(SaeReady),
    LatentInfo(LatentInfo),
    JobProgress(JobProgress),
    JobFinished(JobFinished),
    ProbeFinished(ProbeFinished),
    NeuronInfo(NeuronInfo),
    TokenGenerated(TokenGenerated),
    GenerationFinished(GenerationFinished),
    Cancelled(Cancelled),
    Error(ErrorEvent),
}
