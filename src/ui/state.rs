//! Everything the window shows, updated only by [`AppState::apply`] (worker events) and
//! [`AppState::act`] (user actions). Both are pure: no egui, no I/O, no threads, so they are
//! unit tested directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::analysis::heads::HeadScores;
use crate::analysis::histogram::{Bins, Histogram};
use crate::analysis::sparsity::Method;
use crate::model::{AblationMode, BosMode, Intervention, ModelInfo, PatternMode, ValueOp};
use crate::sae::SaeConfig;
use crate::sae::apply::SaeSummary;
use crate::ui::generation::{GenerateSettings, GenerationView};
use crate::ui::stores::{StoresState, neuron_layer, neuron_source};
use crate::worker::stores::{StoreCommand, StoreEvent, UnitRef};
use crate::worker::{
    AttachSae, Command, DetachSae, Edit, ErrorEvent, EvaluateSaeJob, Event, GenerateRequest,
    InspectLatent, InspectNeuron, JobId, JobOutcome, LatentInfo, LayerSummary, LensRequest,
    LoadModel, NeuronInfo, ProbeHeads, RunFinished, RunId, RunPrompt, SaeId, ScanCorpusJob,
    SteerMode, TokenPrediction, TrainSaeJob, Variant, Watch,
};

/// The sparsity method a model opens with: exact zeros where its activation makes them (ReLU);
/// CETT at c = 0.2 (the Sparsing Law's default) where it does not (SiLU, GELU: every neuron
/// is "active", so zeros would show 100 % on every layer).
pub fn default_sparsity(activation: crate::model::transformer::Activation) -> Method {
    match activation {
        crate::model::transformer::Activation::Relu => Method::Zero,
        _ => Method::Cett { target: 0.2 },
    }
}

/// The main view's tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tab {
    Neurons,
    Heads,
    Histograms,
    Lens,
    /// The selected SAE's feature map.
    Features,
    /// Baseline and intervened continuations side by side.
    Generate,
}

/// What colours the Generate tab's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerateColour {
    Probability,
    /// The unit watched while generating (the selected neuron or latent).
    WatchedUnit,
}

/// Where the inspector's *Explain* sends units (any OpenAI-compatible endpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainSettings {
    pub endpoint: String,
    pub model: String,
    /// The environment variable holding the key (the app reads it when a job starts).
    pub api_key_env: String,
    /// OpenAI's explainer prompt instead of delphi's.
    pub openai_prompt: bool,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        ExplainSettings {
            endpoint: "http://127.0.0.1:8080/v1".into(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            openai_prompt: false,
        }
    }
}

/// Which pass a view draws when interventions are active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Show {
    Baseline,
    Intervened,
    /// Intervened minus baseline.
    Difference,
}

/// What colours the token strip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenColour {
    Loss,
    SelectedNeuron,
    /// The selected SAE latent's activation.
    SelectedLatent,
    Sparsity,
}

/// One pass as the views see it: its tokens and whatever layers have arrived.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassView {
    pub run_id: RunId,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    /// One slot per layer; `None` until the layer streams in.
    pub layers: Vec<Option<Arc<LayerSummary>>>,
    pub finished: Option<RunFinished>,
    pub lens: Option<Vec<Vec<Vec<TokenPrediction>>>>,
    /// Each attached SAE's view of this pass, as it streams in.
    pub saes: BTreeMap<SaeId, Arc<SaeSummary>>,
}

impl PassView {
    /// Whether the logit lens has a row for every layer (it streams in layer by layer).
    pub fn lens_complete(&self) -> bool {
        self.lens
            .as_ref()
            .is_some_and(|l| !self.layers.is_empty() && l.len() == self.layers.len())
    }

    pub fn layers_done(&self) -> usize {
        self.layers.iter().filter(|l| l.is_some()).count()
    }

    pub fn layer(&self, l: usize) -> Option<&LayerSummary> {
        self.layers.get(l)?.as_deref()
    }

    pub fn sae(&self, id: SaeId) -> Option<&SaeSummary> {
        self.saes.get(&id).map(|s| s.as_ref())
    }
}

/// An attached SAE.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeEntry {
    pub id: SaeId,
    pub cfg: SaeConfig,
    /// Its latents' source name in corpus stores (`sae:<folder>`).
    pub source: String,
    /// Size and header hash of its files when attached (session files compare them).
    pub fingerprint: Option<String>,
}

impl SaeEntry {
    /// Short name: "topk 16384 @ blocks.6.hook_resid_post".
    pub fn label(&self) -> String {
        format!(
            "#{} {} {} @ {}",
            self.id, self.cfg.architecture, self.cfg.d_sae, self.cfg.hook_name
        )
    }
}

/// The kinds of intervention the UI offers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InterventionKind {
    /// Set (or scale) one MLP neuron at every position.
    Neuron {
        layer: usize,
        neuron: usize,
        value: f32,
        scale: bool,
    },
    HeadAblation {
        layer: usize,
        head: usize,
        mean: bool,
    },
    /// Resample ablation: the head's output replaced by its output on another prompt.
    ResampleHead {
        layer: usize,
        head: usize,
        source: String,
    },
    /// Previous-token (`induction = false`) or induction pattern clamp with strength s.
    PatternClamp {
        layer: usize,
        head: usize,
        induction: bool,
        strength: f32,
    },
    /// A neuron's output direction added to the residual stream.
    Steer {
        layer: usize,
        neuron: usize,
        scale: f32,
    },
    /// Set (or scale) one SAE latent, keeping the SAE's error, at `positions` (all: `None`).
    Latent {
        sae_id: SaeId,
        latent: usize,
        value: f32,
        scale: bool,
        positions: Option<Vec<usize>>,
    },
    /// Steer along an SAE latent's decoder direction at `positions` (all: `None`).
    SteerLatent {
        sae_id: SaeId,
        latent: usize,
        mode: SteerMode,
        positions: Option<Vec<usize>>,
    },
}

/// Token positions typed by the user: empty or "all" = every position (`None`); otherwise a
/// list of positions and ranges, "3, 5-7". Positions must be below `n_tokens`.
pub fn parse_positions(text: &str, n_tokens: usize) -> Result<Option<Vec<usize>>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> Result<usize, String> {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("\"{s}\" is not a position"))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if a > b {
            return Err(format!("{part}: the range runs backwards"));
        }
        if b >= n_tokens {
            return Err(format!(
                "position {b} is past the prompt's {n_tokens} tokens"
            ));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

/// " @ 3,5,6" for an intervention restricted to positions.
fn at_positions(positions: &Option<Vec<usize>>) -> String {
    match positions {
        Some(p) => format!(
            " @ {}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    }
}

impl InterventionKind {
    /// The value a slider edits, and the same kind with another value.
    pub fn value(&self) -> Option<f32> {
        match *self {
            InterventionKind::Neuron { value, .. } | InterventionKind::Latent { value, .. } => {
                Some(value)
            }
            InterventionKind::PatternClamp { strength, .. } => Some(strength),
            InterventionKind::Steer { scale, .. } => Some(scale),
            InterventionKind::SteerLatent { mode, .. } => Some(match mode {
                SteerMode::Add { scale } => scale,
                SteerMode::SetProjection { value } => value,
                SteerMode::CapProjection { max } => max,
            }),
            InterventionKind::HeadAblation { .. } | InterventionKind::ResampleHead { .. } => None,
        }
    }

    pub fn with_value(&self, v: f32) -> Self {
        let mut k = self.clone();
        match &mut k {
            InterventionKind::Neuron { value, .. } | InterventionKind::Latent { value, .. } => {
                *value = v
            }
            InterventionKind::PatternClamp { strength, .. } => *strength = v,
            InterventionKind::Steer { scale, .. } => *scale = v,
            InterventionKind::SteerLatent { mode, .. } => {
                *mode = match *mode {
                    SteerMode::Add { .. } => SteerMode::Add { scale: v },
                    SteerMode::SetProjection { .. } => SteerMode::SetProjection { value: v },
                    SteerMode::CapProjection { .. } => SteerMode::CapProjection { max: v },
                }
            }
            InterventionKind::HeadAblation { .. } | InterventionKind::ResampleHead { .. } => {}
        }
        k
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InterventionItem {
    pub enabled: bool,
    pub kind: InterventionKind,
}

impl InterventionItem {
    pub fn label(&self) -> String {
        match &self.kind {
            InterventionKind::Neuron {
                layer,
                neuron,
                value,
                scale,
            } => {
                if *scale {
                    format!("L{layer} N{neuron} × {value:.2}")
                } else {
                    format!("L{layer} N{neuron} = {value:.2}")
                }
            }
            InterventionKind::HeadAblation { layer, head, mean } => {
                format!(
                    "L{layer} H{head} {}-ablated",
                    if *mean { "mean" } else { "zero" }
                )
            }
            InterventionKind::ResampleHead {
                layer,
                head,
                source,
            } => {
                let short: String = source.chars().take(24).collect();
                let more = if source.chars().count() > 24 {
                    "…"
                } else {
                    ""
                };
                format!("L{layer} H{head} resampled from \"{short}{more}\"")
            }
            InterventionKind::PatternClamp {
                layer,
                head,
                induction,
                strength,
            } => format!(
                "L{layer} H{head} {} pattern s = {strength:.2}",
                if *induction {
                    "induction"
                } else {
                    "previous-token"
                }
            ),
            InterventionKind::Steer {
                layer,
                neuron,
                scale,
            } => format!("steer L{layer} N{neuron} direction × {scale:.1}"),
            InterventionKind::Latent {
                sae_id,
                latent,
                value,
                scale,
                positions,
            } => {
                let op = if *scale { "×" } else { "=" };
                format!(
                    "SAE#{sae_id} F{latent} {op} {value:.2}{}",
                    at_positions(positions)
                )
            }
            InterventionKind::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            } => {
                let what = match mode {
                    SteerMode::Add { scale } => format!("+ {scale:.1}·d"),
                    SteerMode::SetProjection { value } => format!("projection = {value:.1}"),
                    SteerMode::CapProjection { max } => format!("projection ≤ {max:.1}"),
                };
                format!(
                    "steer SAE#{sae_id} F{latent} {what}{}",
                    at_positions(positions)
                )
            }
        }
    }

    /// What the worker runs for this item.
    pub fn edit(&self) -> Edit {
        match self.kind.clone() {
            InterventionKind::Neuron {
                layer,
                neuron,
                value,
                scale,
            } => Edit::Hook(Intervention::neurons(
                format!("blocks.{layer}.mlp.hook_post"),
                vec![neuron],
                if scale {
                    ValueOp::Scale(value)
                } else {
                    ValueOp::Set(value)
                },
            )),
            InterventionKind::HeadAblation { layer, head, mean } => {
                Edit::Hook(Intervention::ablate_head(
                    layer,
                    head,
                    if mean {
                        AblationMode::Mean
                    } else {
                        AblationMode::Zero
                    },
                ))
            }
            InterventionKind::ResampleHead {
                layer,
                head,
                source,
            } => Edit::ResampleHead {
                layer,
                head,
                source,
            },
            InterventionKind::PatternClamp {
                layer,
                head,
                induction,
                strength,
            } => Edit::Hook(Intervention::pattern(
                layer,
                head,
                if induction {
                    PatternMode::Induction { strength }
                } else {
                    PatternMode::PreviousToken { strength }
                },
            )),
            InterventionKind::Steer {
                layer,
                neuron,
                scale,
            } => Edit::SteerNeuron {
                layer,
                neuron,
                scale,
            },
            InterventionKind::Latent {
                sae_id,
                latent,
                value,
                scale,
                positions,
            } => Edit::SaeLatent {
                sae_id,
                latent,
                op: if scale {
                    ValueOp::Scale(value)
                } else {
                    ValueOp::Set(value)
                },
                positions,
            },
            InterventionKind::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            } => Edit::SteerLatent {
                sae_id,
                latent,
                mode,
                positions,
            },
        }
    }

    /// The SAE this item needs, if any.
    pub fn sae_id(&self) -> Option<SaeId> {
        match self.kind {
            InterventionKind::Latent { sae_id, .. }
            | InterventionKind::SteerLatent { sae_id, .. } => Some(sae_id),
            _ => None,
        }
    }
}

/// Something the user did.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Open(PathBuf),
    SetPrompt(String),
    /// Whether prompts get the model's BOS; reruns.
    SetBos(BosMode),
    Run,
    SetSparsity(Method),
    SelectLayer(usize),
    SelectNeuron {
        layer: usize,
        neuron: usize,
    },
    SelectHead {
        layer: usize,
        head: usize,
    },
    /// Attach an SAE directory or file (at its own hook).
    AttachSae(PathBuf),
    /// Attach an SAE file that does not name its hook (a Gemma Scope `params.npz` outside its
    /// release's folder layout) at `hook`.
    AttachSaeAt {
        path: PathBuf,
        hook: String,
    },
    /// Train a TopK SAE on the open model (a job; the result is attached).
    TrainSae(Box<crate::sae::train::TrainOptions>),
    /// Evaluate the selected SAE over held-out text (a job).
    EvaluateSae {
        corpus: PathBuf,
        tokens: usize,
    },
    /// Cancel the running job (the app tells the worker directly).
    CancelJob,
    /// Stop loading a model (the app tells the worker directly; the open model stays).
    CancelLoad,
    DetachSae(SaeId),
    SelectSae(SaeId),
    SelectLatent {
        sae_id: SaeId,
        latent: usize,
    },
    ClearSelection,
    SetTab(Tab),
    SetShow(Show),
    SetTokenColour(TokenColour),
    AddIntervention(InterventionKind),
    /// Replace item `index`'s kind (a value typed, a slider stepped by key): one undo step.
    EditIntervention(usize, InterventionKind),
    /// Replace item `index`'s kind while its slider is dragged: the whole drag is one undo
    /// step, taken when it starts ([`Action::EndDrag`] ends it).
    DragIntervention(usize, InterventionKind),
    /// A slider drag ended.
    EndDrag,
    ToggleIntervention(usize),
    RemoveIntervention(usize),
    Undo,
    Redo,
    ProbeHeads,
    DismissError(usize),
    SetSortNeurons(bool),
    /// Export a view's data (CSV) and screen area (PNG); the app does the file work.
    Export(crate::ui::export::View),
    /// Open a corpus store for the open model (refused if it is another model's).
    OpenStore(PathBuf),
    CloseStore(PathBuf),
    /// Scan a corpus with the open model into a store (a job; the store opens when done).
    ScanCorpus(Box<crate::describe::ScanOptions>),
    /// Search the open stores' descriptions and peak tokens.
    Search(String),
    /// Select a unit of a store in every view (an MLP neuron or an attached SAE's latent).
    SelectUnit(UnitRef),
    /// Save the user's own description of a unit (empty removes it).
    SetDescription(UnitRef, String),
    ImportExplanations {
        file: PathBuf,
        source: String,
        /// Import even though the file is another model's or has indices beyond the source.
        force: bool,
    },
    /// Run a text (an example window) as the prompt.
    RunText(String),
    /// Continue the prompt with the baseline and (with edits) the intervened model.
    Generate,
    StopGeneration,
    SetGenerateSettings(GenerateSettings),
    SetGenerateColour(GenerateColour),
    /// Make the prompt and a continuation the new prompt, and run it.
    UseAsPrompt(Variant),
    SetExplainSettings(ExplainSettings),
    /// Explain units of one source with the endpoint and score them (a job).
    Explain(Vec<UnitRef>),
    /// Write the session to a `.dendrite` file (the app does the file work).
    SaveSession(PathBuf),
    /// Open a session file: its model, SAEs, stores, interventions and view.
    OpenSession(PathBuf),
    /// Answer the open [`SessionPrompt`]: the model file the session names is here instead.
    LocateModel(PathBuf),
    /// Attach the SAE of set-aside interventions `index` from `path`, and bring them back.
    LocateSae {
        index: usize,
        path: PathBuf,
    },
    /// Restore the session a process that died left behind (the open [`SessionPrompt`]).
    RestoreRecovery,
    /// Close the open [`SessionPrompt`] without restoring (a recovery file is kept aside).
    DismissSessionPrompt,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub layer: usize,
    pub neuron: Option<usize>,
    pub head: Option<usize>,
    /// An SAE latent: `(sae, latent)`.
    pub latent: Option<(SaeId, usize)>,
}

/// A long job (training, evaluation) as the UI shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: JobId,
    pub title: String,
    pub fraction: f32,
    pub message: String,
    /// Training curves: (step, loss, L0, FVE, dead fraction), at most [`MAX_CURVE_POINTS`].
    pub curve: Vec<[f64; 5]>,
    pub outcome: Option<JobOutcome>,
}

/// Curve points kept for a job's live plot (every other point is dropped when full).
pub const MAX_CURVE_POINTS: usize = 1000;

/// Histogram bins per layer, fixed by the first baseline that reached the layer so that later
/// passes (and the intervened pass) bin identically and overlay bar for bar.
pub const HISTOGRAM_BINS: usize = 60;

pub struct AppState {
    pub model: Option<ModelInfo>,
    /// The open model file's size and header hash (session files compare them).
    pub model_fingerprint: Option<String>,
    pub loading: Option<PathBuf>,
    /// Fraction of the weights loaded so far, once the worker reports it.
    pub loading_fraction: Option<f32>,
    /// The run whose logit lens has been asked for (with the run or afterwards).
    lens_requested: Option<RunId>,
    /// Whether the current run captures attention patterns.
    patterns_requested: bool,
    pub prompt: String,
    /// Whether prompts get the model's BOS (auto: as HF's tokenizer does).
    pub bos: BosMode,
    pub sparsity: Method,
    pub interventions: Vec<InterventionItem>,
    /// Interventions of a restored session's SAEs that are not attached, until located.
    pub set_aside: Vec<crate::ui::session::SetAside>,
    pub(super) undo: Vec<Vec<InterventionItem>>,
    pub(super) redo: Vec<Vec<InterventionItem>>,
    /// The intervention whose slider is being dragged (its undo step is taken).
    dragging: Option<usize>,
    next_run_id: RunId,
    /// The run whose events the views show (older runs' late events are ignored).
    pub current_run: Option<RunId>,
    pub baseline: PassView,
    pub intervened: Option<PassView>,
    pub probe: Option<HeadScores>,
    pub probe_running: bool,
    pub selection: Selection,
    pub neuron_info: Option<NeuronInfo>,
    pub latent_info: Option<LatentInfo>,
    /// Attached SAEs, in attach order, and the one the Features view shows.
    pub saes: Vec<SaeEntry>,
    pub selected_sae: Option<SaeId>,
    /// The current or last job.
    pub job: Option<JobView>,
    /// The last corpus evaluation of each SAE.
    pub evaluations: BTreeMap<SaeId, crate::sae::eval::EvalReport>,
    pub errors: Vec<ErrorEvent>,
    pub tab: Tab,
    pub show: Show,
    pub token_colour: TokenColour,
    pub histogram_bins: Vec<Option<Bins>>,
    pub recent_models: Vec<PathBuf>,
    pub sort_neurons: bool,
    /// A one-line status message (e.g. where an export went).
    pub notice: Option<String>,
    /// Show run durations (image snapshots turn this off: timings differ run to run).
    pub show_timings: bool,
    /// Corpus stores: descriptions and examples of units.
    pub stores: StoresState,
    pub generate_settings: GenerateSettings,
    /// The Generate tab's current or last generation.
    pub generation: Option<GenerationView>,
    pub generate_colour: GenerateColour,
    /// Commands that follow the one an action returned (a generation restarted after the
    /// rerun of a changed edit); the app sends them in order.
    pub followups: Vec<Command>,
    pub explain_settings: ExplainSettings,
    /// A question about a session the window asks before going on.
    pub session_prompt: Option<crate::ui::session::SessionPrompt>,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            model: None,
            model_fingerprint: None,
            loading: None,
            loading_fraction: None,
            lens_requested: None,
            patterns_requested: false,
            prompt: String::new(),
            bos: BosMode::Auto,
            sparsity: Method::Zero,
            interventions: Vec::new(),
            set_aside: Vec::new(),
            dragging: None,
            undo: Vec::new(),
            redo: Vec::new(),
            next_run_id: 1,
            current_run: None,
            baseline: PassView::default(),
            intervened: None,
            probe: None,
            probe_running: false,
            selection: Selection::default(),
            neuron_info: None,
            latent_info: None,
            saes: Vec::new(),
            selected_sae: None,
            job: None,
            evaluations: BTreeMap::new(),
            errors: Vec::new(),
            tab: Tab::Neurons,
            show: Show::Intervened,
            token_colour: TokenColour::Loss,
            histogram_bins: Vec::new(),
            recent_models: Vec::new(),
            sort_neurons: false,
            notice: None,
            show_timings: true,
            stores: StoresState::default(),
            generate_settings: GenerateSettings::default(),
            generation: None,
            generate_colour: GenerateColour::Probability,
            followups: Vec::new(),
            explain_settings: ExplainSettings::default(),
            session_prompt: None,
        }
    }
}

impl AppState {
    /// Whether every pass of the current run has arrived in full.
    pub fn is_complete(&self) -> bool {
        let Some(run) = self.current_run else {
            return false;
        };
        let done = |p: &PassView| {
            p.run_id == run
                && p.finished.is_some()
                && p.layers_done() == p.layers.len()
                && self.saes.iter().all(|s| p.saes.contains_key(&s.id))
        };
        done(&self.baseline)
            && match &self.intervened {
                Some(p) => done(p),
                None => self.active_edits().is_empty(),
            }
    }

    pub fn is_running(&self) -> bool {
        self.current_run.is_some() && !self.is_complete()
    }

    pub fn active_edits(&self) -> Vec<Edit> {
        self.interventions
            .iter()
            .filter(|i| i.enabled)
            .map(InterventionItem::edit)
            .collect()
    }

    /// The pass a view should draw (`Show::Difference` draws the intervened pass; views that
    /// can show a difference ask for both).
    pub fn shown(&self) -> &PassView {
        match (&self.intervened, self.show) {
            (Some(p), Show::Intervened | Show::Difference) => p,
            _ => &self.baseline,
        }
    }

    pub fn n_layers(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.dims.n_layers)
    }

    fn next_id(&mut self) -> RunId {
        let id = self.next_run_id;
        self.next_run_id += 1;
        id
    }

    /// Reruns the prompt. On the Generate tab the continuations restart too, and go first
    /// (they are what the user waits for there; the rerun, an older id, does not stop them).
    fn new_run(&mut self) -> Option<Command> {
        let run = self.new_pass_run()?;
        if self.tab != Tab::Generate {
            return Some(run);
        }
        match self.new_generation() {
            Some(generate) => {
                self.followups.push(run);
                Some(generate)
            }
            None => Some(run),
        }
    }

    /// The unit the Generate tab watches: the selected latent when tokens are coloured by it,
    /// else the selected neuron, else the selected latent.
    pub fn watched_unit(&self) -> Option<(Watch, String)> {
        let neuron = self.selection.neuron.map(|neuron| {
            let layer = self.selection.layer;
            (
                Watch::Neuron { layer, neuron },
                format!("L{layer} N{neuron}"),
            )
        });
        let latent = self.selection.latent.map(|(sae_id, latent)| {
            (
                Watch::Latent { sae_id, latent },
                format!("SAE#{sae_id} F{latent}"),
            )
        });
        if self.token_colour == TokenColour::SelectedLatent {
            latent.or(neuron)
        } else {
            neuron.or(latent)
        }
    }

    fn new_generation(&mut self) -> Option<Command> {
        let eos = self.model.as_ref()?.eos_token_ids.clone();
        if self.prompt.is_empty() {
            return None;
        }
        let run_id = self.next_id();
        let watch = self.watched_unit();
        let labels = self
            .interventions
            .iter()
            .filter(|i| i.enabled)
            .map(InterventionItem::label)
            .collect();
        let settings = self.generate_settings.clone();
        let options = settings.options(&eos);
        self.generation = Some(GenerationView::new(
            run_id,
            self.prompt.clone(),
            watch.clone(),
            settings,
            labels,
        ));
        Some(Command::Generate(GenerateRequest {
            run_id,
            text: self.prompt.clone(),
            bos: self.bos,
            interventions: self.active_edits(),
            options,
            watch: watch.map(|(w, _)| w),
        }))
    }

    /// The auto-interpretation run the inspector would start for `units` (one source): the
    /// store that has the source, the open model (and SAE) to measure non-activating windows.
    pub fn explain_options(
        &self,
        units: &[UnitRef],
    ) -> Option<crate::describe::interp::ExplainOptions> {
        use crate::describe::interp::{Endpoint, ExplainOptions, ExplainerKind};
        let model = self.model.as_ref()?;
        let source = units.first()?.source.clone();
        let store = self
            .stores
            .open
            .iter()
            .rev()
            .find(|s| s.sources.iter().any(|x| x.name == source))?
            .path
            .clone();
        let s = &self.explain_settings;
        let subject_sae = self
            .saes
            .iter()
            .find(|e| e.source == source)
            .map(|e| e.cfg.path.clone());
        let endpoint = Endpoint {
            base_url: s.endpoint.trim().to_string(),
            model: s.model.trim().to_string(),
            api_key: None,
            timeout: std::time::Duration::from_secs(120),
            retries: 3,
            max_requests: 0,
        };
        let mut opts = ExplainOptions::new(
            store,
            source,
            units.iter().map(|u| u.unit).collect(),
            endpoint,
        );
        if s.openai_prompt {
            opts.explainer = ExplainerKind::Openai;
        }
        opts.subject_model = Some(model.path.clone());
        opts.subject_sae = subject_sae;
        // Room for retries beyond the estimate, no more.
        opts.endpoint.max_requests = opts.estimated_requests() * 2;
        Some(opts)
    }

    /// Up to `max` units of `source` that the views show for the current prompt: an SAE's
    /// latents firing on it (strongest first), or a layer's neurons by peak |activation|.
    pub fn units_in_view(&self, source: &str, max: usize) -> Vec<UnitRef> {
        let pass = self.shown();
        let unit = |u: usize| UnitRef {
            source: source.to_string(),
            unit: u,
        };
        if let Some(sae) = self.saes.iter().find(|s| s.source == source) {
            return pass
                .sae(sae.id)
                .map(|s| {
                    s.strongest_latents(max)
                        .into_iter()
                        .map(|j| unit(j as usize))
                        .collect()
                })
                .unwrap_or_default();
        }
        let Some(layer) = neuron_layer(source).and_then(|l| pass.layer(l)) else {
            return Vec::new();
        };
        let mut peaks = vec![0f32; layer.d_mlp];
        for row in layer.mlp_post.chunks_exact(layer.d_mlp.max(1)) {
            for (p, a) in peaks.iter_mut().zip(row) {
                *p = p.max(a.abs());
            }
        }
        let mut order: Vec<usize> = (0..peaks.len()).collect();
        order.sort_by(|&a, &b| peaks[b].total_cmp(&peaks[a]).then(a.cmp(&b)));
        order.into_iter().take(max).map(unit).collect()
    }

    fn new_pass_run(&mut self) -> Option<Command> {
        self.model.as_ref()?;
        if self.prompt.is_empty() {
            return None;
        }
        let run_id = self.next_id();
        self.current_run = Some(run_id);
        self.patterns_requested = self.patterns_shown();
        if self.tab == Tab::Lens {
            self.lens_requested = Some(run_id);
        }
        // A complete baseline can stand for the new run if its tokens and method are unchanged
        // (the worker decides; it knows the tokens).
        let complete_baseline = self.baseline.finished.is_some()
            && self.baseline.layers_done() == self.baseline.layers.len();
        Some(Command::Run(RunPrompt {
            run_id,
            text: self.prompt.clone(),
            bos: self.bos,
            interventions: self.active_edits(),
            sparsity: self.sparsity,
            lens: self.lens_requested == Some(run_id),
            patterns: self.patterns_requested,
            have_baseline: complete_baseline.then_some(self.baseline.run_id),
        }))
    }

    /// Whether a head's attention pattern is on screen (the inspector shows the selected
    /// head's): only then do runs capture patterns.
    fn patterns_shown(&self) -> bool {
        self.selection.head.is_some()
    }

    /// Asks for the logit lens of the current run when its view is open without it (runs
    /// compute the lens only while its tab is open).
    fn lens_request(&mut self) -> Option<Command> {
        let run_id = self.current_run?;
        if self.tab != Tab::Lens || self.lens_requested == Some(run_id) {
            return None;
        }
        let has_lens = |p: &PassView| p.run_id == run_id && p.lens.is_some();
        let needed = !has_lens(&self.baseline)
            || (!self.active_edits().is_empty() && !self.intervened.as_ref().is_some_and(has_lens));
        // The worker answers after the run in flight, if that run is still the latest.
        needed.then(|| {
            self.lens_requested = Some(run_id);
            Command::Lens(LensRequest { run_id })
        })
    }

    /// Whether a job is running (one at a time: the worker runs it).
    /// The units the inspector shows (the selected latent, the selected neuron), whose store
    /// reports it wants.
    pub fn inspected_units(&self) -> Vec<UnitRef> {
        let mut units = Vec::new();
        if let Some((sae_id, latent)) = self.selection.latent
            && let Some(sae) = self.saes.iter().find(|s| s.id == sae_id)
        {
            units.push(UnitRef {
                source: sae.source.clone(),
                unit: latent,
            });
        }
        if let Some(neuron) = self.selection.neuron {
            units.push(UnitRef {
                source: neuron_source(self.selection.layer),
                unit: neuron,
            });
        }
        units
    }

    /// Applies an event of the store reader.
    pub fn apply_store(&mut self, event: StoreEvent) {
        if let StoreEvent::Error { context, message } = &event {
            self.errors.push(ErrorEvent {
                context: context.clone(),
                message: message.clone(),
            });
        }
        if let Some(notice) = self.stores.apply(event) {
            self.notice = Some(notice);
        }
    }

    pub fn job_running(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.outcome.is_none())
    }

    fn new_job(&mut self, title: String) -> JobId {
        let id = self.next_id();
        self.job = Some(JobView {
            id,
            title,
            fraction: 0.0,
            message: "starting…".into(),
            curve: Vec::new(),
            outcome: None,
        });
        id
    }

    /// Whether Undo / Redo have a step to take.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Removes `sae_id`'s interventions from the list and from every undo and redo step
    /// (steps that then change nothing are dropped).
    fn forget_sae(&mut self, sae_id: SaeId) {
        self.interventions.retain(|i| i.sae_id() != Some(sae_id));
        self.dragging = None;
        for stack in [&mut self.undo, &mut self.redo] {
            for step in stack.iter_mut() {
                step.retain(|i| i.sae_id() != Some(sae_id));
            }
            stack.dedup();
        }
        let current = &self.interventions;
        while self.undo.last() == Some(current) {
            self.undo.pop();
        }
        while self.redo.last() == Some(current) {
            self.redo.pop();
        }
    }

    pub(super) fn checkpoint(&mut self) {
        self.undo.push(self.interventions.clone());
        self.redo.clear();
    }

    /// Applies a user action; returns what to ask of the worker.
    pub fn act(&mut self, action: Action) -> Option<Command> {
        match action {
            Action::Open(path) => {
                self.loading = Some(path.clone());
                self.loading_fraction = None;
                Some(Command::LoadModel(LoadModel { path }))
            }
            Action::SetPrompt(p) => {
                self.prompt = p;
                None
            }
            Action::Run => self.new_run(),
            Action::RunText(text) => {
                self.prompt = text;
                self.new_run()
            }
            Action::OpenStore(path) => {
                let model = self.model.as_ref()?.path.clone();
                self.stores.outbox.push(StoreCommand::Open { path, model });
                None
            }
            Action::CloseStore(path) => {
                self.stores.outbox.push(StoreCommand::Close { path });
                None
            }
            Action::ScanCorpus(opts) => {
                self.model.as_ref()?;
                if self.job_running() {
                    return None;
                }
                let job_id = self.new_job(format!(
                    "Scanning {} into {}",
                    opts.corpus.display(),
                    opts.out.display()
                ));
                Some(Command::ScanCorpus(ScanCorpusJob {
                    job_id,
                    opts: *opts,
                }))
            }
            Action::Search(query) => {
                self.stores.search(query);
                None
            }
            Action::SelectUnit(unit) => {
                if let Some(layer) = neuron_layer(&unit.source) {
                    return self.act(Action::SelectNeuron {
                        layer,
                        neuron: unit.unit,
                    });
                }
                match self.saes.iter().find(|s| s.source == unit.source) {
                    Some(sae) => {
                        let sae_id = sae.id;
                        self.tab = Tab::Features;
                        self.act(Action::SelectLatent {
                            sae_id,
                            latent: unit.unit,
                        })
                    }
                    None => {
                        self.notice = Some(format!(
                            "{} {} is not a unit of the open model or an attached SAE: attach \
                             that SAE to select it",
                            unit.source, unit.unit
                        ));
                        None
                    }
                }
            }
            Action::SetDescription(unit, text) => {
                self.stores
                    .outbox
                    .push(StoreCommand::SetDescription { unit, text });
                None
            }
            Action::ImportExplanations {
                file,
                source,
                force,
            } => {
                self.stores.outbox.push(StoreCommand::Import {
                    file,
                    source,
                    force,
                });
                None
            }
            Action::SetBos(bos) => {
                self.bos = bos;
                self.new_run()
            }
            Action::SetSparsity(m) => {
                self.sparsity = m;
                self.new_run()
            }
            Action::SelectLayer(l) => {
                self.selection.layer = l;
                None
            }
            Action::SelectNeuron { layer, neuron } => {
                self.selection = Selection {
                    layer,
                    neuron: Some(neuron),
                    head: self.selection.head,
                    latent: self.selection.latent,
                };
                self.neuron_info = None;
                self.token_colour = TokenColour::SelectedNeuron;
                Some(Command::InspectNeuron(InspectNeuron {
                    layer,
                    neuron,
                    k: 10,
                }))
            }
            Action::SelectHead { layer, head } => {
                self.selection.layer = layer;
                self.selection.head = Some(head);
                // The current run did not capture patterns: run it again with them (the
                // worker reruns only what it must).
                if self.current_run.is_some() && !self.patterns_requested {
                    return self.new_pass_run();
                }
                None
            }
            Action::AttachSae(path) => Some(Command::AttachSae(AttachSae { path, hook: None })),
            Action::AttachSaeAt { path, hook } => {
                let hook = hook.trim();
                if hook.is_empty() {
                    self.notice =
                        Some("Name the hook the SAE reads (e.g. blocks.6.hook_resid_post).".into());
                    return None;
                }
                Some(Command::AttachSae(AttachSae {
                    path,
                    hook: Some(hook.to_string()),
                }))
            }
            Action::TrainSae(opts) => {
                self.model.as_ref()?;
                if self.job_running() {
                    return None;
                }
                let job_id = self.new_job(format!(
                    "Training a TopK SAE (k {}, {} latents) at {}",
                    opts.k, opts.width, opts.hook
                ));
                Some(Command::TrainSae(TrainSaeJob {
                    job_id,
                    opts: *opts,
                }))
            }
            Action::EvaluateSae { corpus, tokens } => {
                let sae_id = self.selected_sae?;
                if self.job_running() {
                    return None;
                }
                let job_id =
                    self.new_job(format!("Evaluating SAE #{sae_id} on {}", corpus.display()));
                Some(Command::EvaluateSae(EvaluateSaeJob {
                    job_id,
                    sae_id,
                    corpus,
                    tokens,
                }))
            }
            Action::CancelJob | Action::CancelLoad => None,
            Action::DetachSae(sae_id) => {
                // Edits that need the SAE go with it, from the undo history too: an undo must
                // not bring back a clamp of an SAE that is gone.
                self.forget_sae(sae_id);
                Some(Command::DetachSae(DetachSae { sae_id }))
            }
            Action::SelectSae(sae_id) => {
                self.selected_sae = Some(sae_id);
                None
            }
            Action::SelectLatent { sae_id, latent } => {
                self.selection.latent = Some((sae_id, latent));
                self.selected_sae = Some(sae_id);
                self.latent_info = None;
                self.token_colour = TokenColour::SelectedLatent;
                Some(Command::InspectLatent(InspectLatent {
                    sae_id,
                    latent,
                    k: 10,
                }))
            }
            Action::ClearSelection => {
                self.selection.neuron = None;
                self.selection.head = None;
                self.selection.latent = None;
                if matches!(
                    self.token_colour,
                    TokenColour::SelectedNeuron | TokenColour::SelectedLatent
                ) {
                    self.token_colour = TokenColour::Loss;
                }
                None
            }
            Action::SetTab(t) => {
                self.tab = t;
                self.lens_request()
            }
            Action::SetShow(s) => {
                self.show = s;
                None
            }
            Action::SetTokenColour(c) => {
                self.token_colour = c;
                None
            }
            Action::AddIntervention(kind) => {
                self.checkpoint();
                self.interventions.push(InterventionItem {
                    enabled: true,
                    kind,
                });
                self.new_run()
            }
            Action::EditIntervention(i, kind) => {
                let item = self.interventions.get(i)?;
                if item.kind == kind {
                    return None;
                }
                self.checkpoint();
                self.interventions[i].kind = kind;
                self.new_run()
            }
            Action::DragIntervention(i, kind) => {
                let item = self.interventions.get(i)?;
                if item.kind == kind {
                    return None;
                }
                if self.dragging != Some(i) {
                    self.checkpoint();
                    self.dragging = Some(i);
                }
                self.interventions[i].kind = kind;
                self.new_run()
            }
            Action::EndDrag => {
                self.dragging = None;
                None
            }
            Action::ToggleIntervention(i) => {
                self.interventions.get(i)?;
                self.checkpoint();
                self.interventions[i].enabled = !self.interventions[i].enabled;
                self.new_run()
            }
            Action::RemoveIntervention(i) => {
                if i >= self.interventions.len() {
                    return None;
                }
                self.checkpoint();
                self.interventions.remove(i);
                self.new_run()
            }
            Action::Undo => {
                self.dragging = None;
                let previous = self.undo.pop()?;
                self.redo
                    .push(std::mem::replace(&mut self.interventions, previous));
                self.new_run()
            }
            Action::Redo => {
                self.dragging = None;
                let next = self.redo.pop()?;
                self.undo
                    .push(std::mem::replace(&mut self.interventions, next));
                self.new_run()
            }
            Action::ProbeHeads => {
                self.model.as_ref()?;
                self.probe_running = true;
                let run_id = self.next_id();
                Some(Command::ProbeHeads(ProbeHeads {
                    run_id,
                    repeat_len: 20,
                    batch: 4,
                    seed: 0,
                }))
            }
            Action::Export(_) => None,
            Action::SetSortNeurons(on) => {
                self.sort_neurons = on;
                None
            }
            Action::DismissError(i) => {
                if i < self.errors.len() {
                    self.errors.remove(i);
                }
                None
            }
            Action::Generate => self.new_generation(),
            Action::StopGeneration => {
                self.generation.as_ref().filter(|g| g.is_running())?;
                Some(Command::StopGeneration(self.next_id()))
            }
            Action::SetGenerateSettings(settings) => {
                self.generate_settings = settings;
                None
            }
            Action::SetGenerateColour(c) => {
                self.generate_colour = c;
                None
            }
            Action::SetExplainSettings(settings) => {
                self.explain_settings = settings;
                None
            }
            Action::Explain(units) => {
                if self.job_running() {
                    return None;
                }
                if self.explain_settings.model.trim().is_empty() {
                    self.notice =
                        Some("Name the explainer's model first (Explain with an LLM).".into());
                    return None;
                }
                let opts = self.explain_options(&units)?;
                let job_id = self.new_job(format!(
                    "Explaining {} unit(s) of {} with {} (≈ {} requests)",
                    opts.units.len(),
                    opts.source,
                    opts.endpoint.model,
                    opts.estimated_requests()
                ));
                Some(Command::ExplainUnits(crate::worker::ExplainUnitsJob {
                    job_id,
                    opts: Box::new(opts),
                }))
            }
            Action::UseAsPrompt(variant) => {
                let g = self.generation.as_ref()?;
                let prompt = format!("{}{}", g.prompt, g.continuation(variant)?.text());
                self.prompt = prompt;
                self.tab = Tab::Neurons;
                self.new_run()
            }
            // File work and the worker's answers: the app handles these (see
            // `DendriteApp::act`); the state only forgets a question it was asked to.
            Action::DismissSessionPrompt => {
                self.session_prompt = None;
                None
            }
            Action::SaveSession(_)
            | Action::OpenSession(_)
            | Action::LocateModel(_)
            | Action::LocateSae { .. }
            | Action::RestoreRecovery => None,
        }
    }

    fn pass_mut(&mut self, variant: Variant, run_id: RunId) -> Option<&mut PassView> {
        if self.current_run != Some(run_id) {
            return None;
        }
        match variant {
            Variant::Baseline => Some(&mut self.baseline),
            Variant::Intervened => self.intervened.as_mut(),
        }
    }

    /// Applies a worker event.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Loading(l) => {
                self.loading = Some(l.path);
                self.loading_fraction = l.fraction;
            }
            Event::ModelLoaded(m) => {
                self.loading = None;
                let path = m.info.path.clone();
                self.recent_models.retain(|p| p != &path);
                self.recent_models.insert(0, path);
                self.recent_models.truncate(10);
                self.histogram_bins = vec![None; m.info.dims.n_layers];
                self.sparsity = default_sparsity(m.info.activation);
                self.model = Some(m.info);
                self.model_fingerprint = m.fingerprint;
                self.set_aside.clear();
                self.baseline = PassView::default();
                self.intervened = None;
                self.probe = None;
                self.neuron_info = None;
                self.latent_info = None;
                self.saes.clear();
                self.selected_sae = None;
                self.selection = Selection::default();
                self.interventions.clear();
                self.undo.clear();
                self.redo.clear();
                self.current_run = None;
                self.stores.model_changed();
            }
            Event::RunStarted(s) => {
                if self.current_run != Some(s.run_id) {
                    return;
                }
                let view = PassView {
                    run_id: s.run_id,
                    tokens: s.tokens,
                    token_ids: s.token_ids,
                    layers: vec![None; s.n_layers],
                    finished: None,
                    lens: None,
                    saes: BTreeMap::new(),
                };
                match s.variant {
                    Variant::Baseline => {
                        // Keep showing the old baseline's layers until new ones arrive only if
                        // the tokens are the same; otherwise start empty.
                        self.baseline = view;
                        if self.active_edits().is_empty() {
                            self.intervened = None;
                        }
                    }
                    Variant::Intervened => self.intervened = Some(view),
                }
            }
            Event::LayerReady(l) => {
                let layer = l.summary.layer;
                if l.variant == Variant::Baseline
                    && self.current_run == Some(l.run_id)
                    && self.histogram_bins.get(layer).is_some_and(Option::is_none)
                {
                    self.histogram_bins[layer] =
                        Some(Bins::covering(&l.summary.mlp_post, HISTOGRAM_BINS));
                }
                if let Some(pass) = self.pass_mut(l.variant, l.run_id)
                    && let Some(slot) = pass.layers.get_mut(layer)
                {
                    *slot = Some(l.summary);
                }
            }
            Event::LayersFromBaseline(r) => {
                let through = r.through.min(self.baseline.layers.len());
                let copied = self.baseline.layers[..through].to_vec();
                if let Some(pass) = self.pass_mut(Variant::Intervened, r.run_id) {
                    for (slot, layer) in pass.layers.iter_mut().zip(copied) {
                        *slot = layer;
                    }
                }
            }
            Event::SaeAttached(a) => {
                self.selected_sae.get_or_insert(a.sae_id);
                self.saes.push(SaeEntry {
                    id: a.sae_id,
                    cfg: a.cfg,
                    source: a.source,
                    fingerprint: a.fingerprint,
                });
            }
            Event::SaeDetached(d) => {
                self.forget_sae(d.sae_id);
                self.saes.retain(|s| s.id != d.sae_id);
                if self.selected_sae == Some(d.sae_id) {
                    self.selected_sae = self.saes.first().map(|s| s.id);
                }
                if self.selection.latent.is_some_and(|(id, _)| id == d.sae_id) {
                    self.selection.latent = None;
                    self.latent_info = None;
                }
                self.baseline.saes.remove(&d.sae_id);
                if let Some(p) = &mut self.intervened {
                    p.saes.remove(&d.sae_id);
                }
            }
            Event::SaeReady(r) => {
                if let Some(pass) = self.pass_mut(r.variant, r.run_id) {
                    pass.saes.insert(r.sae_id, r.summary);
                }
            }
            Event::JobProgress(p) => {
                if let Some(job) = self.job.as_mut().filter(|j| j.id == p.job_id) {
                    job.fraction = p.fraction;
                    job.message = p.message;
                    if let Some(t) = p.train {
                        if job.curve.len() >= MAX_CURVE_POINTS {
                            // Halve the resolution: keep every other point.
                            job.curve = job.curve.iter().step_by(2).copied().collect();
                        }
                        job.curve
                            .push([t.step as f64, t.loss, t.l0, t.fve, t.dead_frac]);
                    }
                }
            }
            Event::JobFinished(f) => {
                if let JobOutcome::Evaluated { sae_id, report } = &f.outcome {
                    self.evaluations.insert(*sae_id, (**report).clone());
                }
                if let JobOutcome::Explained {
                    store,
                    source,
                    units,
                    explained,
                    scored,
                    requests,
                } = &f.outcome
                {
                    // The inspector reads the new explanations again.
                    self.stores.reports.retain(|r| &r.unit.source != source);
                    self.notice = Some(format!(
                        "Explained {explained} of {units} unit(s) of {source} ({scored} scored, \
                         {requests} requests) into {}",
                        store.display()
                    ));
                }
                if let (JobOutcome::Scanned { store, .. }, Some(model)) = (&f.outcome, &self.model)
                {
                    self.stores.outbox.push(StoreCommand::Open {
                        path: store.clone(),
                        model: model.path.clone(),
                    });
                }
                if let Some(job) = self.job.as_mut().filter(|j| j.id == f.job_id) {
                    job.fraction = 1.0;
                    job.outcome = Some(f.outcome);
                }
            }
            Event::LatentInfo(l) => {
                if self.selection.latent == Some((l.sae_id, l.latent)) {
                    self.latent_info = Some(l);
                }
            }
            Event::BaselineReused(r) => {
                if self.current_run != Some(r.run_id) || self.baseline.run_id != r.from_run {
                    return;
                }
                self.baseline.run_id = r.run_id;
                if let Some(f) = &mut self.baseline.finished {
                    f.run_id = r.run_id;
                }
                if self.active_edits().is_empty() {
                    self.intervened = None;
                }
            }
            Event::RunFinished(f) => {
                if let Some(pass) = self.pass_mut(f.variant, f.run_id) {
                    pass.finished = Some(f);
                }
            }
            Event::LensRows(r) => {
                if let Some(pass) = self.pass_mut(r.variant, r.run_id) {
                    let lens = pass.lens.get_or_insert_with(Vec::new);
                    // Rows come in order; anything else belongs to a lens already replaced.
                    if r.first_layer == lens.len() {
                        lens.extend(r.rows);
                    }
                }
            }
            Event::LensReady(l) => {
                if let Some(pass) = self.pass_mut(l.variant, l.run_id) {
                    pass.lens = Some(l.lens);
                }
            }
            Event::ProbeFinished(p) => {
                self.probe_running = false;
                self.probe = Some(p.scores);
            }
            Event::NeuronInfo(n) => {
                if self.selection.neuron == Some(n.neuron) && self.selection.layer == n.layer {
                    self.neuron_info = Some(n);
                }
            }
            Event::TokenGenerated(t) => {
                if let Some(g) = &mut self.generation {
                    g.apply_token(t);
                }
            }
            Event::GenerationFinished(f) => {
                if let Some(g) = &mut self.generation {
                    g.apply_finished(f);
                }
            }
            Event::Cancelled(_) => {}
            Event::Error(e) => {
                if e.context.starts_with("opening") {
                    self.loading = None;
                }
                if e.context.starts_with("probing") {
                    self.probe_running = false;
                }
                // A failed job is over too.
                if (e.context.starts_with("training") || e.context.starts_with("evaluating"))
                    && let Some(job) = self.job.as_mut()
                    && job.outcome.is_none()
                {
                    job.outcome = Some(JobOutcome::Cancelled);
                    job.message = format!("failed: {}", e.message);
                }
                // A failed run is over: no progress bar waits for it.
                if e.context.starts_with("running") {
                    self.current_run = None;
                }
                if e.context.starts_with("generating")
                    && let Some(g) = &mut self.generation
                {
                    g.error = Some(e.message.clone());
                }
                self.errors.push(e);
            }
        }
    }

    /// Histogram of layer `l`'s MLP activations in `pass`, on the layer's fixed bins.
    pub fn histogram(&self, pass: &PassView, l: usize) -> Option<Histogram> {
        let bins = (*self.histogram_bins.get(l)?)?;
        Some(Histogram::new(bins, &pass.layer(l)?.mlp_post))
    }
}

/// Before/after of the current interventions.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// At the last position: tokens in either top list, with (baseline, intervened)
    /// probability (0 where a token is outside that pass's top list).
    pub next_token: Vec<(String, f64, f64)>,
    pub mean_loss_before: f64,
    pub mean_loss_after: f64,
    /// Intervened − baseline loss per predicted token.
    pub loss_change: Vec<f32>,
    /// Intervened − baseline active fraction per layer (where both are in).
    pub sparsity_change: Vec<Option<f64>>,
}

impl AppState {
    pub fn comparison(&self) -> Option<Comparison> {
        let after = self.intervened.as_ref()?;
        let (fb, fa) = (self.baseline.finished.as_ref()?, after.finished.as_ref()?);
        let (lb, la) = (fb.predictions.last()?, fa.predictions.last()?);
        let mut next_token: Vec<(String, f64, f64)> = Vec::new();
        for p in lb.iter().chain(la) {
            if next_token.iter().any(|(t, _, _)| *t == p.token) {
                continue;
            }
            let prob = |list: &[TokenPrediction]| {
                list.iter().find(|x| x.id == p.id).map_or(0.0, |x| x.prob)
            };
            next_token.push((p.token.clone(), prob(lb), prob(la)));
        }
        next_token.sort_by(|a, b| b.2.max(b.1).total_cmp(&a.2.max(a.1)));
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        Some(Comparison {
            next_token,
            mean_loss_before: mean(&fb.per_token_nll),
            mean_loss_after: mean(&fa.per_token_nll),
            loss_change: fa
                .per_token_nll
                .iter()
                .zip(&fb.per_token_nll)
                .map(|(a, b)| a - b)
                .collect(),
            sparsity_change: (0..self.baseline.layers.len())
                .map(|l| {
                    Some(
                        after.layer(l)?.sparsity.frac_active
                            - self.baseline.layer(l)?.sparsity.frac_active,
                    )
                })
                .collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::sparsity::LayerSparsity;
    use crate::worker::{LayerReady, ModelLoaded, RunStarted};

    pub(crate) fn info(n_layers: usize) -> ModelInfo {
        ModelInfo {
            name: "tiny".into(),
            path: "/m".into(),
            architecture: "gpt2".into(),
            dims: crate::model::transformer::Dims {
                n_layers,
                d_model: 4,
                n_heads: 1,
                n_kv_heads: 1,
                d_head: 4,
                d_mlp: 2,
                d_vocab: 10,
                n_ctx: 16,
            },
            n_params: 0,
            format: "safetensors".into(),
            source_dtype: "F32".into(),
            bos_token_id: None,
            adds_bos: false,
            eos_token_ids: Vec::new(),
            activation: crate::model::transformer::Activation::Relu,
        }
    }

    fn layer(run_id: RunId, variant: Variant, layer: usize, values: [f32; 4]) -> Event {
        Event::LayerReady(LayerReady {
            run_id,
            variant,
            summary: Arc::new(LayerSummary {
                layer,
                n_tokens: 2,
                d_mlp: 2,
                n_heads: 1,
                mlp_post: values.to_vec().into(),
                sparsity: LayerSparsity {
                    hook: format!("blocks.{layer}.mlp.hook_post"),
                    layer: Some(layer),
                    frac_active: 0.5,
                    per_token_frac_active: vec![0.5, 0.5],
                    threshold: None,
                    mean_cett: None,
                },
                patterns: vec![1.0, 0.0, 0.5, 0.5].into(),
            }),
        })
    }

    pub(crate) fn loaded() -> AppState {
        let mut s = AppState::default();
        s.act(Action::Open("/m".into()));
        s.apply(Event::ModelLoaded(ModelLoaded {
            info: info(2),
            duration_ms: 1.0,
            fingerprint: None,
        }));
        s
    }

    fn started(run_id: RunId, variant: Variant) -> Event {
        Event::RunStarted(RunStarted {
            run_id,
            variant,
            token_ids: vec![1, 2],
            tokens: vec!["a".into(), "b".into()],
            n_layers: 2,
        })
    }

    #[test]
    fn layers_fill_as_they_stream_and_stale_runs_are_ignored() {
        let mut s = loaded();
        assert_eq!(s.loading, None);
        assert_eq!(s.recent_models, vec![PathBuf::from("/m")]);
        assert_eq!(s.act(Action::Run), None, "an empty prompt does not run");
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act(Action::Run) else {
            panic!()
        };
        let Some(Command::Run(r2)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(r2.run_id > r1.run_id);
        // Events of the superseded run change nothing.
        s.apply(started(r1.run_id, Variant::Baseline));
        assert!(s.baseline.layers.is_empty());
        s.apply(started(r2.run_id, Variant::Baseline));
        assert_eq!(s.baseline.layers_done(), 0);
        assert!(s.is_running());
        s.apply(layer(r2.run_id, Variant::Baseline, 1, [0.0, 1.0, 2.0, 3.0]));
        assert_eq!(s.baseline.layers_done(), 1);
        assert!(s.baseline.layer(0).is_none() && s.baseline.layer(1).is_some());
        // The first baseline fixed layer 1's histogram bins.
        assert_eq!(
            s.histogram_bins[1],
            Some(Bins::Linear {
                min: -4.0,
                max: 4.0,
                n: HISTOGRAM_BINS
            })
        );
    }

    #[test]
    fn the_bos_choice_goes_with_every_run_and_changing_it_reruns() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act(Action::Run) else {
            panic!()
        };
        assert_eq!(r.bos, BosMode::Auto);
        let Some(Command::Run(r2)) = s.act(Action::SetBos(BosMode::Yes)) else {
            panic!("changing the BOS reruns the prompt")
        };
        assert_eq!(r2.bos, BosMode::Yes);
        assert!(r2.run_id > r.run_id);
        assert_eq!(s.bos, BosMode::Yes);
    }

    #[test]
    fn an_intervened_pass_takes_the_layers_before_its_first_edit_from_the_baseline() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act(Action::Run) else {
            panic!()
        };
        s.apply(started(r.run_id, Variant::Baseline));
        s.apply(layer(r.run_id, Variant::Baseline, 0, [0.0, 1.0, 2.0, 3.0]));
        s.apply(layer(r.run_id, Variant::Baseline, 1, [4.0, 5.0, 6.0, 7.0]));
        s.apply(started(r.run_id, Variant::Intervened));
        s.apply(Event::LayersFromBaseline(
            crate::worker::LayersFromBaseline {
                run_id: r.run_id,
                through: 1,
            },
        ));
        let edited = s.intervened.as_ref().unwrap();
        assert!(std::ptr::eq(
            edited.layer(0).unwrap(),
            s.baseline.layer(0).unwrap()
        ));
        assert!(edited.layer(1).is_none(), "layer 1 comes from the worker");
        // A superseded run's copy changes nothing.
        s.apply(Event::LayersFromBaseline(
            crate::worker::LayersFromBaseline {
                run_id: r.run_id + 1,
                through: 2,
            },
        ));
        assert!(s.intervened.as_ref().unwrap().layer(1).is_none());
    }

    #[test]
    fn the_lens_fills_row_by_row_and_is_complete_with_every_layer() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act(Action::Run) else {
            panic!()
        };
        s.apply(started(r.run_id, Variant::Baseline));
        let row = |token: &str| {
            vec![vec![TokenPrediction {
                id: 1,
                token: token.into(),
                prob: 0.5,
            }]]
        };
        let rows = |first_layer: usize, token: &str| {
            Event::LensRows(crate::worker::LensRows {
                run_id: r.run_id,
                variant: Variant::Baseline,
                first_layer,
                rows: vec![row(token)],
            })
        };
        s.apply(rows(0, "a"));
        assert_eq!(s.baseline.lens.as_ref().map(Vec::len), Some(1));
        assert!(!s.baseline.lens_complete());
        // Out of order (a stale stream): ignored.
        s.apply(rows(0, "stale"));
        s.apply(rows(5, "far"));
        assert_eq!(s.baseline.lens.as_ref().unwrap()[0], row("a"));
        s.apply(rows(1, "b"));
        assert_eq!(s.baseline.lens.as_ref().map(Vec::len), Some(2));
        assert!(s.baseline.lens_complete(), "two layers, two rows");
    }

    #[test]
    fn interventions_run_again_and_undo_restores_them() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let neuron = InterventionKind::Neuron {
            layer: 1,
            neuron: 0,
            value: 5.0,
            scale: false,
        };
        let Some(Command::Run(r)) = s.act(Action::AddIntervention(neuron.clone())) else {
            panic!()
        };
        assert_eq!(r.interventions, vec![s.interventions[0].edit()]);
        let moved = InterventionKind::Neuron {
            layer: 1,
            neuron: 0,
            value: 7.0,
            scale: false,
        };
        assert!(s.act(Action::EditIntervention(0, moved.clone())).is_some());
        // Same value again: nothing to do.
        assert!(s.act(Action::EditIntervention(0, moved.clone())).is_none());
        let Some(Command::Run(off)) = s.act(Action::ToggleIntervention(0)) else {
            panic!()
        };
        assert!(off.interventions.is_empty());
        s.act(Action::Undo);
        assert!(s.interventions[0].enabled);
        s.act(Action::Undo);
        assert_eq!(s.interventions[0].kind, neuron);
        s.act(Action::Redo);
        assert_eq!(s.interventions[0].kind, moved);
        s.act(Action::RemoveIntervention(0));
        assert!(s.interventions.is_empty());
        s.act(Action::Undo);
        assert_eq!(s.interventions.len(), 1);
        assert_eq!(s.act(Action::RemoveIntervention(5)), None);
    }

    #[test]
    fn a_model_opens_on_a_sparsity_method_that_means_something_for_its_activation() {
        let mut s = AppState::default();
        let mut silu = info(2);
        silu.activation = crate::model::transformer::Activation::Silu;
        s.apply(Event::ModelLoaded(ModelLoaded {
            info: silu,
            duration_ms: 1.0,
            fingerprint: None,
        }));
        assert_eq!(s.sparsity, Method::Cett { target: 0.2 });
        s.apply(Event::ModelLoaded(ModelLoaded {
            info: info(2),
            duration_ms: 1.0,
            fingerprint: None,
        }));
        assert_eq!(s.sparsity, Method::Zero);
    }

    #[test]
    fn an_npz_is_attached_at_the_hook_named() {
        let mut s = loaded();
        let attach = |hook: &str| Action::AttachSaeAt {
            path: "/saes/params.npz".into(),
            hook: hook.into(),
        };
        assert_eq!(
            s.act(attach(" blocks.1.hook_resid_post ")),
            Some(Command::AttachSae(AttachSae {
                path: "/saes/params.npz".into(),
                hook: Some("blocks.1.hook_resid_post".into()),
            }))
        );
        assert_eq!(s.act(attach("  ")), None);
        assert!(s.notice.as_deref().unwrap_or("").contains("hook"));
    }

    #[test]
    fn a_slider_drag_is_one_undo_step() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let at = |value| InterventionKind::Neuron {
            layer: 0,
            neuron: 1,
            value,
            scale: false,
        };
        s.act(Action::AddIntervention(at(0.0)));
        // Every frame of the drag reruns (the views follow the slider) ...
        for v in [1.0, 2.0, 3.0] {
            assert!(matches!(
                s.act(Action::DragIntervention(0, at(v))),
                Some(Command::Run(_))
            ));
        }
        s.act(Action::EndDrag);
        // ... but one undo takes the whole drag back.
        s.act(Action::Undo);
        assert_eq!(s.interventions[0].kind, at(0.0));
        s.act(Action::Redo);
        assert_eq!(s.interventions[0].kind, at(3.0));
        // A second drag is a step of its own.
        s.act(Action::DragIntervention(0, at(4.0)));
        s.act(Action::DragIntervention(0, at(5.0)));
        s.act(Action::EndDrag);
        s.act(Action::Undo);
        assert_eq!(s.interventions[0].kind, at(3.0));
        s.act(Action::Undo);
        assert_eq!(s.interventions[0].kind, at(0.0));
        s.act(Action::Undo);
        assert!(s.interventions.is_empty());
        assert!(!s.can_undo() && s.can_redo());
    }

    #[test]
    fn undo_after_a_detach_does_not_bring_back_the_saes_clamps() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        s.apply(Event::SaeAttached(crate::worker::SaeAttached {
            sae_id: 7,
            cfg: sae_cfg(),
            source: "sae:test".into(),
            fingerprint: None,
        }));
        let latent = InterventionKind::Latent {
            sae_id: 7,
            latent: 2,
            value: 1.0,
            scale: false,
            positions: None,
        };
        let neuron = InterventionKind::Neuron {
            layer: 0,
            neuron: 1,
            value: 2.0,
            scale: false,
        };
        s.act(Action::AddIntervention(latent.clone()));
        s.act(Action::EditIntervention(
            0,
            InterventionKind::Latent {
                sae_id: 7,
                latent: 2,
                value: 5.0,
                scale: false,
                positions: None,
            },
        ));
        s.act(Action::AddIntervention(neuron.clone()));
        assert!(matches!(
            s.act(Action::DetachSae(7)),
            Some(Command::DetachSae(_))
        ));
        s.apply(Event::SaeDetached(crate::worker::SaeDetached { sae_id: 7 }));
        assert_eq!(s.interventions.len(), 1);
        // The only step left takes the neuron clamp off; the latent clamp never returns.
        s.act(Action::Undo);
        assert!(s.interventions.is_empty());
        assert!(!s.can_undo());
        s.act(Action::Redo);
        assert_eq!(s.interventions[0].kind, neuron);
        assert!(!s.can_redo());
    }

    #[test]
    fn both_passes_are_kept_for_before_and_after() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) =
            s.act(Action::AddIntervention(InterventionKind::HeadAblation {
                layer: 0,
                head: 0,
                mean: false,
            }))
        else {
            panic!()
        };
        s.apply(started(r.run_id, Variant::Baseline));
        s.apply(layer(r.run_id, Variant::Baseline, 0, [1.0; 4]));
        s.apply(started(r.run_id, Variant::Intervened));
        s.apply(layer(r.run_id, Variant::Intervened, 0, [2.0; 4]));
        assert_eq!(s.baseline.layer(0).unwrap().mlp_post[0], 1.0);
        assert_eq!(s.shown().layer(0).unwrap().mlp_post[0], 2.0);
        s.act(Action::SetShow(Show::Baseline));
        assert_eq!(s.shown().layer(0).unwrap().mlp_post[0], 1.0);
        // Both histograms use the bins fixed by the baseline.
        let (b, i) = (
            s.histogram(&s.baseline, 0).unwrap(),
            s.histogram(s.intervened.as_ref().unwrap(), 0).unwrap(),
        );
        assert_eq!(b.bins, i.bins);
        assert_ne!(b.counts, i.counts);
    }

    #[test]
    fn comparison_lists_probability_changes_at_the_last_position() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act(Action::AddIntervention(InterventionKind::Steer {
            layer: 0,
            neuron: 0,
            scale: 1.0,
        })) else {
            panic!()
        };
        let pred = |id: u32, token: &str, prob: f64| TokenPrediction {
            id,
            token: token.into(),
            prob,
        };
        let finish = |variant, nll: Vec<f32>, last: Vec<TokenPrediction>| {
            Event::RunFinished(RunFinished {
                run_id: r.run_id,
                variant,
                per_token_nll: nll,
                predictions: vec![vec![], last],
                recomputed_from: -1,
                duration_ms: 1.0,
            })
        };
        s.apply(started(r.run_id, Variant::Baseline));
        s.apply(started(r.run_id, Variant::Intervened));
        assert_eq!(s.comparison(), None, "not before both passes finish");
        s.apply(finish(
            Variant::Baseline,
            vec![2.0],
            vec![pred(1, "is", 0.4), pred(2, "was", 0.3)],
        ));
        s.apply(finish(
            Variant::Intervened,
            vec![2.5],
            vec![pred(2, "was", 0.5), pred(3, "be", 0.1)],
        ));
        let c = s.comparison().unwrap();
        assert_eq!(
            c.next_token,
            vec![
                ("was".into(), 0.3, 0.5),
                ("is".into(), 0.4, 0.0),
                ("be".into(), 0.0, 0.1)
            ]
        );
        assert_eq!((c.mean_loss_before, c.mean_loss_after), (2.0, 2.5));
        assert_eq!(c.loss_change, vec![0.5]);
    }

    #[test]
    fn errors_are_kept_until_dismissed_and_loading_stops() {
        let mut s = loaded();
        s.act(Action::Open("/bad".into()));
        s.apply(Event::Error(ErrorEvent {
            context: "opening /bad".into(),
            message: "no such file".into(),
        }));
        assert_eq!(s.loading, None);
        assert!(s.model.is_some(), "the open model stays");
        assert_eq!(s.errors.len(), 1);
        s.act(Action::DismissError(0));
        assert!(s.errors.is_empty());
    }

    #[test]
    fn selecting_a_neuron_asks_for_its_logit_effects() {
        let mut s = loaded();
        let cmd = s.act(Action::SelectNeuron {
            layer: 1,
            neuron: 3,
        });
        assert_eq!(
            cmd,
            Some(Command::InspectNeuron(InspectNeuron {
                layer: 1,
                neuron: 3,
                k: 10
            }))
        );
        assert_eq!(s.token_colour, TokenColour::SelectedNeuron);
        s.act(Action::ClearSelection);
        assert_eq!(s.selection.neuron, None);
        assert_eq!(s.token_colour, TokenColour::Loss);
    }

    /// A whole baseline for `run_id`: both layers and the finished event.
    fn complete_baseline(s: &mut AppState, run_id: RunId) {
        s.apply(started(run_id, Variant::Baseline));
        for l in 0..2 {
            s.apply(layer(run_id, Variant::Baseline, l, [0.0, 1.0, 2.0, 3.0]));
        }
        s.apply(Event::RunFinished(RunFinished {
            run_id,
            variant: Variant::Baseline,
            per_token_nll: vec![1.0],
            predictions: vec![vec![], vec![]],
            recomputed_from: -1,
            duration_ms: 1.0,
        }));
    }

    #[test]
    fn a_reused_baseline_carries_over_to_the_new_run() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act(Action::Run) else {
            panic!()
        };
        assert_eq!(r1.have_baseline, None);
        complete_baseline(&mut s, r1.run_id);
        assert!(s.is_complete());
        let Some(Command::Run(r2)) = s.act(Action::Run) else {
            panic!()
        };
        assert_eq!(r2.have_baseline, Some(r1.run_id));
        assert!(!s.is_complete());
        // A reuse of some other run's baseline is ignored.
        s.apply(Event::BaselineReused(crate::worker::BaselineReused {
            run_id: r2.run_id,
            from_run: r1.run_id + 100,
        }));
        assert!(!s.is_complete());
        s.apply(Event::BaselineReused(crate::worker::BaselineReused {
            run_id: r2.run_id,
            from_run: r1.run_id,
        }));
        assert!(s.is_complete());
        assert_eq!(s.baseline.layers_done(), 2);
    }

    #[test]
    fn the_lens_is_asked_for_once_when_its_tab_opens() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(!r1.lens, "the lens tab is closed");
        complete_baseline(&mut s, r1.run_id);
        assert_eq!(
            s.act(Action::SetTab(Tab::Lens)),
            Some(Command::Lens(LensRequest { run_id: r1.run_id }))
        );
        s.act(Action::SetTab(Tab::Heads));
        assert_eq!(s.act(Action::SetTab(Tab::Lens)), None, "already asked");
        // With the tab open, a run brings its lens along.
        let Some(Command::Run(r2)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(r2.lens);
        assert_eq!(s.act(Action::SetTab(Tab::Lens)), None);
    }

    #[test]
    fn selecting_a_head_reruns_once_to_capture_patterns() {
        let mut s = loaded();
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(!r1.patterns, "no head is on screen");
        complete_baseline(&mut s, r1.run_id);
        let Some(Command::Run(r2)) = s.act(Action::SelectHead { layer: 0, head: 1 }) else {
            panic!("selecting a head asks for its pattern")
        };
        assert!(r2.patterns);
        assert_eq!(r2.have_baseline, Some(r1.run_id));
        assert_eq!(s.act(Action::SelectHead { layer: 0, head: 0 }), None);
        // Runs keep capturing while a head is selected, and stop once none is.
        let Some(Command::Run(r3)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(r3.patterns);
        s.act(Action::ClearSelection);
        let Some(Command::Run(r4)) = s.act(Action::Run) else {
            panic!()
        };
        assert!(!r4.patterns);
    }

    pub(crate) fn sae_cfg() -> SaeConfig {
        SaeConfig {
            architecture: "topk".into(),
            activation: crate::sae::Activation::TopK { k: 2 },
            transcoder: false,
            hook_name: "blocks.0.hook_resid_post".into(),
            hook_name_out: None,
            d_in: 4,
            d_sae: 8,
            d_out: 4,
            apply_b_dec_to_input: true,
            normalization: crate::sae::Normalization::None,
            rescale_acts_by_decoder_norm: false,
            format: crate::sae::SaeFormat::SaeLens,
            path: "/sae".into(),
            model_name: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_run_is_complete_only_with_every_attached_saes_feature_map() {
        let mut s = loaded();
        s.apply(Event::SaeAttached(crate::worker::SaeAttached {
            sae_id: 7,
            cfg: sae_cfg(),
            source: "sae:test".into(),
            fingerprint: None,
        }));
        assert_eq!(s.selected_sae, Some(7));
        s.act(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act(Action::Run) else {
            panic!()
        };
        complete_baseline(&mut s, r.run_id);
        assert!(!s.is_complete(), "the SAE's map is missing");
        let summary = SaeSummary {
            hook: "blocks.0.hook_resid_post".into(),
            n_tokens: 2,
            d_sae: 8,
            features: vec![vec![(3, 1.5)], vec![]],
            l0: vec![1, 0],
            squared_error: vec![0.1, 0.2],
            squared_norm: vec![1.0, 1.0],
            fve: Some(0.8),
            mse: Some(0.15),
        };
        s.apply(Event::SaeReady(crate::worker::SaeReady {
            run_id: r.run_id,
            variant: Variant::Baseline,
            sae_id: 7,
            summary: Arc::new(summary),
        }));
        assert!(s.is_complete());
        assert_eq!(
            s.baseline.sae(7).unwrap().latent_activations(3),
            vec![1.5, 0.0]
        );
        // Selecting a latent asks the worker about it and colours tokens by it.
        assert_eq!(
            s.act(Action::SelectLatent {
                sae_id: 7,
                latent: 3
            }),
            Some(Command::InspectLatent(InspectLatent {
                sae_id: 7,
                latent: 3,
                k: 10
            }))
        );
        assert_eq!(s.token_colour, TokenColour::SelectedLatent);
    }

    #[test]
    fn detaching_an_sae_takes_its_edits_along_for_good() {
        let mut s = loaded();
        s.apply(Event::SaeAttached(crate::worker::SaeAttached {
            sae_id: 2,
            cfg: sae_cfg(),
            source: "sae:test".into(),
            fingerprint: None,
        }));
        s.act(Action::SetPrompt("ab".into()));
        let clamp = InterventionKind::Latent {
            sae_id: 2,
            latent: 5,
            value: 3.0,
            scale: false,
            positions: Some(vec![1]),
        };
        s.act(Action::AddIntervention(clamp.clone()));
        assert!(matches!(
            s.active_edits()[0],
            Edit::SaeLatent {
                sae_id: 2,
                latent: 5,
                op: ValueOp::Set(3.0),
                ..
            }
        ));
        assert_eq!(
            s.act(Action::DetachSae(2)),
            Some(Command::DetachSae(DetachSae { sae_id: 2 }))
        );
        assert!(s.interventions.is_empty());
        s.apply(Event::SaeDetached(crate::worker::SaeDetached { sae_id: 2 }));
        assert!(s.saes.is_empty() && s.selected_sae.is_none());
        // The SAE is gone, so undo has nothing of it to bring back.
        assert!(!s.can_undo());
        assert_eq!(s.act(Action::Undo), None);
        assert!(s.interventions.is_empty());
        // The slider edits each kind's one value.
        let steer = InterventionKind::SteerLatent {
            sae_id: 2,
            latent: 5,
            mode: SteerMode::CapProjection { max: 1.0 },
            positions: None,
        };
        assert_eq!(steer.value(), Some(1.0));
        assert_eq!(
            steer.with_value(4.0),
            InterventionKind::SteerLatent {
                sae_id: 2,
                latent: 5,
                mode: SteerMode::CapProjection { max: 4.0 },
                positions: None,
            }
        );
    }

    #[test]
    fn positions_parse_lists_and_ranges_and_reject_the_impossible() {
        assert_eq!(parse_positions("", 5), Ok(None));
        assert_eq!(parse_positions(" all ", 5), Ok(None));
        assert_eq!(parse_positions("3, 0-1,1", 5), Ok(Some(vec![0, 1, 3])));
        assert!(parse_positions("5", 5).unwrap_err().contains("past"));
        assert!(parse_positions("3-1", 5).unwrap_err().contains("backwards"));
        assert!(parse_positions("x", 5).is_err());
    }

    #[test]
    fn on_the_generate_tab_a_changed_edit_restarts_the_continuations_before_the_rerun() {
        let mut s = loaded();
        s.prompt = "ab".into();
        s.model.as_mut().unwrap().eos_token_ids = vec![9];
        s.act(Action::SelectNeuron {
            layer: 1,
            neuron: 0,
        });
        s.act(Action::SetTab(Tab::Generate));
        let Some(Command::Generate(g)) = s.act(Action::Generate) else {
            panic!("Generate asks the worker to generate")
        };
        assert!(g.interventions.is_empty());
        assert_eq!(g.options.stops.eos, vec![9]);
        assert_eq!(
            g.watch,
            Some(Watch::Neuron {
                layer: 1,
                neuron: 0
            })
        );
        assert!(s.followups.is_empty());
        let kind = InterventionKind::Neuron {
            layer: 0,
            neuron: 1,
            value: 3.0,
            scale: false,
        };
        let Some(Command::Generate(again)) = s.act(Action::AddIntervention(kind)) else {
            panic!("the continuations restart first")
        };
        assert!(again.run_id > g.run_id);
        assert_eq!(again.interventions.len(), 1);
        // The rerun follows with an older id, so it does not stop the generation.
        match s.followups.as_slice() {
            [Command::Run(r)] => assert!(r.run_id < again.run_id),
            other => panic!("{other:?}"),
        }
        let view = s.generation.as_ref().unwrap();
        assert_eq!(view.run_id, again.run_id);
        assert_eq!(view.interventions, vec!["L0 N1 = 3.00".to_string()]);
        assert!(view.intervened.is_some());
        // Stopping asks for nothing once it is over.
        assert!(matches!(
            s.act(Action::StopGeneration),
            Some(Command::StopGeneration(id)) if id > again.run_id
        ));
        s.generation.as_mut().unwrap().error = Some("x".into());
        assert_eq!(s.act(Action::StopGeneration), None);
    }

    #[test]
    fn a_continuation_becomes_the_prompt_and_runs() {
        use crate::model::generate::{Generation, StopReason};
        use crate::worker::GenerationFinished;
        let mut s = loaded();
        s.prompt = "To be".into();
        s.act(Action::SetTab(Tab::Generate));
        let Some(Command::Generate(g)) = s.act(Action::Generate) else {
            panic!()
        };
        s.apply(Event::GenerationFinished(GenerationFinished {
            run_id: g.run_id,
            variant: Variant::Baseline,
            generation: Generation {
                prompt_ids: vec![1, 2],
                tokens: vec![],
                stop: StopReason::MaxTokens,
                prefill_ms: 0.0,
                decode_ms: 0.0,
            },
            text: ", or not".into(),
        }));
        assert!(!s.generation.as_ref().unwrap().is_running());
        let cmd = s.act(Action::UseAsPrompt(Variant::Baseline));
        assert!(matches!(cmd, Some(Command::Run(r)) if r.text == "To be, or not"));
        assert_eq!(s.tab, Tab::Neurons);
        assert_eq!(s.act(Action::UseAsPrompt(Variant::Intervened)), None);
    }

    #[test]
    fn explaining_units_starts_a_job_on_the_store_that_has_them_and_refreshes_their_reports() {
        use crate::worker::stores::{ReportReady, UnitRef};
        let mut s = loaded();
        let unit = |u| UnitRef {
            source: neuron_source(0),
            unit: u,
        };
        // No model name yet: a notice, no job.
        assert_eq!(s.act(Action::Explain(vec![unit(3)])), None);
        assert!(s.notice.as_deref().unwrap_or("").contains("model"));
        s.explain_settings.model = "gpt-x".into();
        assert_eq!(
            s.act(Action::Explain(vec![unit(3)])),
            None,
            "no store has the source"
        );
        s.stores
            .open
            .push(crate::ui::stores::tests::summary("/s.sqlite", "f"));
        let Some(Command::ExplainUnits(job)) = s.act(Action::Explain(vec![unit(3), unit(5)]))
        else {
            panic!("a job")
        };
        let o = &job.opts;
        assert_eq!(o.store, PathBuf::from("/s.sqlite"));
        assert_eq!(
            (o.source.as_str(), o.units.clone()),
            ("blocks.0.mlp.hook_post", vec![3, 5])
        );
        assert_eq!(o.endpoint.model, "gpt-x");
        assert_eq!(o.endpoint.api_key, None, "the app reads the key");
        assert_eq!(o.subject_model, Some(PathBuf::from("/m")));
        assert_eq!(o.endpoint.max_requests, 2 * o.estimated_requests());
        assert!(s.job_running());
        assert_eq!(
            s.act(Action::Explain(vec![unit(3)])),
            None,
            "one job at a time"
        );
        // When it is done the inspector reads the source's reports again.
        s.stores.reports.push(ReportReady {
            unit: unit(3),
            report: None,
            store: None,
            duration_ms: 0.0,
        });
        s.apply(Event::JobFinished(crate::worker::JobFinished {
            job_id: job.job_id,
            outcome: JobOutcome::Explained {
                store: "/s.sqlite".into(),
                source: neuron_source(0),
                units: 2,
                explained: 2,
                scored: 1,
                requests: 17,
            },
        }));
        assert!(s.stores.reports.is_empty());
        assert!(
            s.notice
                .as_deref()
                .unwrap_or("")
                .contains("Explained 2 of 2")
        );
        assert!(!s.job_running());
    }

    #[test]
    fn units_in_view_are_a_layers_neurons_by_peak_magnitude() {
        let mut s = loaded();
        s.act(Action::Run);
        s.prompt = "ab".into();
        let Some(Command::Run(r)) = s.act(Action::Run) else {
            panic!()
        };
        s.apply(started(r.run_id, Variant::Baseline));
        // Two tokens × two neurons: neuron 1 peaks at |−3|.
        s.apply(layer(r.run_id, Variant::Baseline, 0, [1.0, -3.0, 2.0, 0.5]));
        let units: Vec<usize> = s
            .units_in_view(&neuron_source(0), 8)
            .into_iter()
            .map(|u| u.unit)
            .collect();
        assert_eq!(units, vec![1, 0]);
        assert!(s.units_in_view("sae:none", 8).is_empty());
    }
}
