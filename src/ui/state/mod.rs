//! Everything the window shows, updated only by [`AppState::act`] (user actions) and
//! [`AppState::apply`] (worker events). Both are pure: no egui, no I/O, no threads, so they are
//! unit tested directly. What they need done outside comes back as [`Effect`]s, in order: a
//! command for the worker, a request for the store reader, an export, a cancel.
//!
//! One part per area, each with its own update: [`runs`] (the passes streaming in),
//! [`interventions`] (the list, undo and redo), [`jobs`], [`saes`], [`stores`] (corpus stores),
//! [`generation`], [`session`] (the state written down as a file), [`explain`] and
//! [`comparison`]; [`view`] holds how the window looks at them. This file routes actions and
//! events to the parts and keeps what spans them (the model, the prompt, the selection).

pub mod comparison;
pub mod cores;
pub mod explain;
pub mod generation;
pub mod interventions;
pub mod jobs;
pub mod patching;
pub mod runs;
pub mod saes;
pub mod session;
pub mod stores;
pub mod sweeps;
pub mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::analysis::heads::HeadScores;
use crate::analysis::histogram::Histogram;
use crate::analysis::sparsity::Method;
use crate::model::{BosMode, ModelInfo};
use crate::worker::stores::{StoreCommand, StoreEvent, UnitRef};
use crate::worker::{
    AttachSae, Command, DetachSae, Edit, ErrorEvent, EvaluateSaeJob, Event, GenerateRequest,
    InspectLatent, InspectNeuron, JobId, JobOutcome, LatentInfo, LensRequest, LoadModel,
    NeuronInfo, ProbeHeads, Request, RunId, RunPrompt, SaeId, ScanCorpusJob, TrainSaeJob, Variant,
    Watch,
};

pub use comparison::Comparison;
pub use explain::ExplainSettings;
pub use generation::{GenerateSettings, GenerationView};
pub use interventions::{EditSpec, InterventionItem, Interventions, SetAside, parse_positions};
pub use jobs::{JobView, MAX_CURVE_POINTS};
pub use patching::{PatchSettings, PatchingState};
pub use runs::{HISTOGRAM_BINS, PassView, Runs};
pub use saes::SaeEntry;
pub use session::{SessionFile, SessionPrompt};
pub use stores::{StoresState, neuron_layer, neuron_source};
pub use sweeps::{SweepChoice, SweepSettings, SweepsState};
pub use view::{FigureFormat, GenerateColour, Selection, Show, Tab, TokenColour, View};

/// The sparsity method a model opens with: exact zeros where its activation makes them (ReLU);
/// CETT at c = 0.2 (the Sparsing Law's default) where it does not (SiLU, GELU: every neuron
/// is "active", so zeros would show 100 % on every layer).
pub fn default_sparsity(activation: crate::model::transformer::Activation) -> Method {
    match activation {
        crate::model::transformer::Activation::Relu => Method::Zero,
        _ => Method::Cett { target: 0.2 },
    }
}

/// What an action or event asks of the world outside the state; the app carries each out, in
/// order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A command for the model worker.
    Worker(Command),
    /// A request for the corpus-store reader.
    Store(StoreCommand),
    /// Write a view's data and figure files.
    Export(View),
    /// Stop the running job.
    CancelJob(JobId),
    /// Stop loading a model (the open one stays).
    CancelLoad,
    /// Write the session to this file.
    SaveSession(PathBuf),
    /// Read this session file and restore it.
    OpenSession(PathBuf),
    /// Restore a session: open its model, attach its SAEs, then adopt it.
    Restore(Box<SessionFile>),
    /// Move a recovery file aside: its session was restored, or `declined` (then the user
    /// is told where it went).
    RetireRecovery { file: PathBuf, declined: bool },
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
    AddIntervention(EditSpec),
    /// Replace item `index`'s kind (a value typed, a slider stepped by key): one undo step.
    EditIntervention(usize, EditSpec),
    /// Replace item `index`'s kind while its slider is dragged: the whole drag is one undo
    /// step, taken when it starts ([`Action::EndDrag`] ends it).
    DragIntervention(usize, EditSpec),
    /// A slider drag ended.
    EndDrag,
    ToggleIntervention(usize),
    RemoveIntervention(usize),
    Undo,
    Redo,
    ProbeHeads,
    DismissError(usize),
    SetSortNeurons(bool),
    /// Export a view's data (CSV, arrays) and figure ([`FigureFormat`]).
    Export(View),
    /// Which figure files exports write.
    SetFigureFormat(FigureFormat),
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
    /// The patching tab's settings (corrupted prompt, tokens, site, direction).
    SetPatchSettings(PatchSettings),
    /// Patch every layer × position (or head) between the prompt and the corrupted prompt (a
    /// job).
    RunPatching,
    /// The sweeps tab's settings (text, pruning method and levels, methods, PPL-p%).
    SetSweepSettings(SweepSettings),
    /// Run a pruning or sparsification sweep (a job).
    RunSweep(SweepChoice),
    /// The prompt the layers view's core neurons are compared with.
    SetCoreCompareText(String),
    /// Find that prompt's core neurons (at the shown α) to compare with the prompt's.
    CompareCores,
    /// Add one cell of the last sweep as an intervention (the receiving prompt becomes the
    /// prompt, and runs with it).
    AddPatch {
        layer: usize,
        cell: usize,
    },
    /// Cluster a unit's top windows into facets (the worker reruns them with the open model).
    ShowFacets(UnitRef),
    /// Restore the session a process that died left behind (the open [`SessionPrompt`]).
    RestoreRecovery,
    /// Close the open [`SessionPrompt`] without restoring (a recovery file is kept aside).
    DismissSessionPrompt,
}

pub struct AppState {
    pub model: Option<ModelInfo>,
    /// The open model file's size and header hash (session files compare them).
    pub model_fingerprint: Option<String>,
    pub loading: Option<PathBuf>,
    /// Fraction of the weights loaded so far, once the worker reports it.
    pub loading_fraction: Option<f32>,
    pub prompt: String,
    /// Whether prompts get the model's BOS (auto: as HF's tokenizer does).
    pub bos: BosMode,
    pub sparsity: Method,
    pub interventions: Interventions,
    /// Ids for runs, jobs and generations (one sequence: an answer names its request).
    next_request_id: RunId,
    pub runs: Runs,
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
    pub figure_format: FigureFormat,
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
    pub explain_settings: ExplainSettings,
    /// Activation patching: settings and the last sweep.
    pub patching: PatchingState,
    /// Pruning and sparsification sweeps: settings and the last results.
    pub sweeps: SweepsState,
    /// Core neurons of another prompt, to compare with the prompt's.
    pub core_compare: cores::CoreCompare,
    /// The facets of the unit asked for last, once they arrive.
    pub facets: Option<Box<crate::describe::facets::Facets>>,
    /// The unit whose facets were asked for.
    pub facets_asked: Option<UnitRef>,
    /// A question about a session the window asks before going on.
    pub session_prompt: Option<SessionPrompt>,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            model: None,
            model_fingerprint: None,
            loading: None,
            loading_fraction: None,
            prompt: String::new(),
            bos: BosMode::Auto,
            sparsity: Method::Zero,
            interventions: Interventions::default(),
            next_request_id: 1,
            runs: Runs::default(),
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
            figure_format: FigureFormat::default(),
            recent_models: Vec::new(),
            sort_neurons: false,
            notice: None,
            show_timings: true,
            stores: StoresState::default(),
            generate_settings: GenerateSettings::default(),
            generation: None,
            generate_colour: GenerateColour::Probability,
            explain_settings: ExplainSettings::default(),
            patching: PatchingState::default(),
            sweeps: SweepsState::default(),
            core_compare: cores::CoreCompare::default(),
            facets: None,
            facets_asked: None,
            session_prompt: None,
        }
    }
}

impl AppState {
    /// Whether every pass of the current run has arrived in full.
    pub fn is_complete(&self) -> bool {
        self.runs.is_complete(&self.saes, self.edits_active())
    }

    pub fn is_running(&self) -> bool {
        self.runs.current.is_some() && !self.is_complete()
    }

    pub fn active_edits(&self) -> Vec<Edit> {
        self.interventions.active_edits()
    }

    fn edits_active(&self) -> bool {
        self.interventions.items.iter().any(|i| i.enabled)
    }

    /// The pass a view should draw (`Show::Difference` draws the intervened pass; views that
    /// can show a difference ask for both).
    pub fn shown(&self) -> &PassView {
        self.runs.shown(self.show)
    }

    /// Histogram of layer `l`'s MLP activations in `pass`, on the layer's fixed bins.
    pub fn histogram(&self, pass: &PassView, l: usize) -> Option<Histogram> {
        self.runs.histogram(pass, l)
    }

    pub fn n_layers(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.dims.n_layers)
    }

    pub fn job_running(&self) -> bool {
        self.job.as_ref().is_some_and(JobView::is_running)
    }

    fn next_id(&mut self) -> RunId {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Reruns the prompt. On the Generate tab the continuations restart too, and go first
    /// (they are what the user waits for there; the rerun, an older id, does not stop them).
    fn new_run(&mut self) -> Vec<Effect> {
        let Some(run) = self.new_pass_run() else {
            return Vec::new();
        };
        let generate = (self.tab == Tab::Generate)
            .then(|| self.new_generation())
            .flatten();
        generate
            .into_iter()
            .chain([run])
            .map(Effect::Worker)
            .collect()
    }

    fn new_pass_run(&mut self) -> Option<Command> {
        self.model.as_ref()?;
        if self.prompt.is_empty() {
            return None;
        }
        let run_id = self.next_id();
        // Only a head's pattern on screen (the inspector shows the selected head's) makes
        // runs capture patterns.
        self.runs
            .start(run_id, self.tab == Tab::Lens, self.selection.head.is_some());
        Some(Command::Run(RunPrompt {
            run_id,
            text: self.prompt.clone(),
            bos: self.bos,
            interventions: self.active_edits(),
            sparsity: self.sparsity,
            lens: self.tab == Tab::Lens,
            patterns: self.runs.captures_patterns(),
            // A complete baseline can stand for the new run if its tokens and method are
            // unchanged (the worker decides; it knows the tokens).
            have_baseline: self.runs.complete_baseline(),
        }))
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
            .items
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

    /// The store reports the inspector needs and has not asked for.
    pub fn report_requests(&mut self) -> Vec<Effect> {
        let units = self.inspected_units();
        self.stores
            .request(&units)
            .into_iter()
            .map(Effect::Store)
            .collect()
    }

    /// Applies an event of the store reader.
    pub fn apply_store(&mut self, event: StoreEvent) -> Vec<Effect> {
        if let StoreEvent::Error { context, message } = &event {
            self.errors.push(ErrorEvent {
                request: Request::Store,
                context: context.clone(),
                message: message.clone(),
            });
        }
        let update = self.stores.apply(event);
        if let Some(notice) = update.notice {
            self.notice = Some(notice);
        }
        update.request.into_iter().map(Effect::Store).collect()
    }

    fn new_job(&mut self, title: String) -> JobId {
        let id = self.next_id();
        self.job = Some(JobView::new(id, title));
        id
    }

    /// Whether Undo / Redo have a step to take.
    pub fn can_undo(&self) -> bool {
        self.interventions.can_undo()
    }

    pub fn can_redo(&self) -> bool {
        self.interventions.can_redo()
    }

    /// Reruns the prompt when `changed` (an intervention list that changed).
    fn rerun_if(&mut self, changed: bool) -> Vec<Effect> {
        if changed { self.new_run() } else { Vec::new() }
    }

    /// Applies a user action; returns what the app must do for it.
    pub fn act(&mut self, action: Action) -> Vec<Effect> {
        let worker = |cmd: Option<Command>| cmd.into_iter().map(Effect::Worker).collect();
        let store = |cmd: StoreCommand| vec![Effect::Store(cmd)];
        match action {
            Action::Open(path) => {
                self.loading = Some(path.clone());
                self.loading_fraction = None;
                vec![Effect::Worker(Command::LoadModel(LoadModel { path }))]
            }
            Action::SetPrompt(p) => {
                self.prompt = p;
                Vec::new()
            }
            Action::Run => self.new_run(),
            Action::RunText(text) => {
                self.prompt = text;
                self.new_run()
            }
            Action::OpenStore(path) => match &self.model {
                Some(m) => store(StoreCommand::Open {
                    path,
                    model: m.path.clone(),
                }),
                None => Vec::new(),
            },
            Action::CloseStore(path) => store(StoreCommand::Close { path }),
            Action::ScanCorpus(opts) => {
                if self.model.is_none() || self.job_running() {
                    return Vec::new();
                }
                let job_id = self.new_job(format!(
                    "Scanning {} into {}",
                    opts.corpus.display(),
                    opts.out.display()
                ));
                worker(Some(Command::ScanCorpus(ScanCorpusJob {
                    job_id,
                    opts: *opts,
                })))
            }
            Action::Search(query) => self
                .stores
                .search(query)
                .into_iter()
                .map(Effect::Store)
                .collect(),
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
                        Vec::new()
                    }
                }
            }
            Action::SetDescription(unit, text) => {
                store(StoreCommand::SetDescription { unit, text })
            }
            Action::ImportExplanations {
                file,
                source,
                force,
            } => store(StoreCommand::Import {
                file,
                source,
                force,
            }),
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
                Vec::new()
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
                worker(Some(Command::InspectNeuron(InspectNeuron {
                    layer,
                    neuron,
                    k: 10,
                })))
            }
            Action::SelectHead { layer, head } => {
                self.selection.layer = layer;
                self.selection.head = Some(head);
                // The current run did not capture patterns: run it again with them (the
                // worker reruns only what it must).
                if self.runs.current.is_some() && !self.runs.captures_patterns() {
                    return worker(self.new_pass_run());
                }
                Vec::new()
            }
            Action::AttachSae(path) => {
                worker(Some(Command::AttachSae(AttachSae { path, hook: None })))
            }
            Action::AttachSaeAt { path, hook } => {
                let hook = hook.trim();
                if hook.is_empty() {
                    self.notice =
                        Some("Name the hook the SAE reads (e.g. blocks.6.hook_resid_post).".into());
                    return Vec::new();
                }
                worker(Some(Command::AttachSae(AttachSae {
                    path,
                    hook: Some(hook.to_string()),
                })))
            }
            Action::TrainSae(opts) => {
                if self.model.is_none() || self.job_running() {
                    return Vec::new();
                }
                let job_id = self.new_job(format!(
                    "Training a TopK SAE (k {}, {} latents) at {}",
                    opts.k, opts.width, opts.hook
                ));
                worker(Some(Command::TrainSae(TrainSaeJob {
                    job_id,
                    opts: *opts,
                })))
            }
            Action::EvaluateSae { corpus, tokens } => {
                let Some(sae_id) = self.selected_sae else {
                    return Vec::new();
                };
                if self.job_running() {
                    return Vec::new();
                }
                let job_id =
                    self.new_job(format!("Evaluating SAE #{sae_id} on {}", corpus.display()));
                worker(Some(Command::EvaluateSae(EvaluateSaeJob {
                    job_id,
                    sae_id,
                    corpus,
                    tokens,
                })))
            }
            Action::CancelJob => match &self.job {
                Some(job) if job.is_running() => vec![Effect::CancelJob(job.id)],
                _ => Vec::new(),
            },
            Action::CancelLoad => vec![Effect::CancelLoad],
            Action::DetachSae(sae_id) => {
                // Edits that need the SAE go with it, from the undo history too.
                self.interventions.forget_sae(sae_id);
                worker(Some(Command::DetachSae(DetachSae { sae_id })))
            }
            Action::SelectSae(sae_id) => {
                self.selected_sae = Some(sae_id);
                Vec::new()
            }
            Action::SelectLatent { sae_id, latent } => {
                self.selection.latent = Some((sae_id, latent));
                self.selected_sae = Some(sae_id);
                self.latent_info = None;
                self.token_colour = TokenColour::SelectedLatent;
                worker(Some(Command::InspectLatent(InspectLatent {
                    sae_id,
                    latent,
                    k: 10,
                })))
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
                Vec::new()
            }
            Action::SetTab(t) => {
                self.tab = t;
                // The lens view opened without the current run's lens: ask for it (the
                // worker answers after the run in flight, if that run is still the latest).
                if t != Tab::Lens {
                    return Vec::new();
                }
                let edits_active = self.edits_active();
                worker(
                    self.runs
                        .lens_needed(edits_active)
                        .map(|run_id| Command::Lens(LensRequest { run_id })),
                )
            }
            Action::SetShow(s) => {
                self.show = s;
                Vec::new()
            }
            Action::SetTokenColour(c) => {
                self.token_colour = c;
                Vec::new()
            }
            Action::SetFigureFormat(f) => {
                self.figure_format = f;
                Vec::new()
            }
            Action::AddIntervention(spec) => {
                let changed = self.interventions.add(spec);
                self.rerun_if(changed)
            }
            Action::EditIntervention(i, spec) => {
                let changed = self.interventions.edit(i, spec);
                self.rerun_if(changed)
            }
            Action::DragIntervention(i, spec) => {
                let changed = self.interventions.drag(i, spec);
                self.rerun_if(changed)
            }
            Action::EndDrag => {
                self.interventions.end_drag();
                Vec::new()
            }
            Action::ToggleIntervention(i) => {
                let changed = self.interventions.toggle(i);
                self.rerun_if(changed)
            }
            Action::RemoveIntervention(i) => {
                let changed = self.interventions.remove(i);
                self.rerun_if(changed)
            }
            Action::Undo => {
                let changed = self.interventions.undo();
                self.rerun_if(changed)
            }
            Action::Redo => {
                let changed = self.interventions.redo();
                self.rerun_if(changed)
            }
            Action::ProbeHeads => {
                if self.model.is_none() {
                    return Vec::new();
                }
                self.probe_running = true;
                let run_id = self.next_id();
                worker(Some(Command::ProbeHeads(ProbeHeads {
                    run_id,
                    repeat_len: 20,
                    batch: 4,
                    seed: 0,
                })))
            }
            Action::Export(view) => vec![Effect::Export(view)],
            Action::SetSortNeurons(on) => {
                self.sort_neurons = on;
                Vec::new()
            }
            Action::DismissError(i) => {
                if i < self.errors.len() {
                    self.errors.remove(i);
                }
                Vec::new()
            }
            Action::Generate => worker(self.new_generation()),
            Action::StopGeneration => {
                if !self.generation.as_ref().is_some_and(|g| g.is_running()) {
                    return Vec::new();
                }
                worker(Some(Command::StopGeneration(self.next_id())))
            }
            Action::SetGenerateSettings(settings) => {
                self.generate_settings = settings;
                Vec::new()
            }
            Action::SetGenerateColour(c) => {
                self.generate_colour = c;
                Vec::new()
            }
            Action::SetExplainSettings(settings) => {
                self.explain_settings = settings;
                Vec::new()
            }
            Action::Explain(units) => {
                if self.job_running() {
                    return Vec::new();
                }
                if self.explain_settings.model.trim().is_empty() {
                    self.notice =
                        Some("Name the explainer's model first (Explain with an LLM).".into());
                    return Vec::new();
                }
                let Some(opts) = self.explain_options(&units) else {
                    return Vec::new();
                };
                let job_id = self.new_job(format!(
                    "Explaining {} unit(s) of {} with {} (≈ {} requests)",
                    opts.units.len(),
                    opts.source,
                    opts.endpoint.model,
                    opts.estimated_requests()
                ));
                worker(Some(Command::ExplainUnits(
                    crate::worker::ExplainUnitsJob {
                        job_id,
                        opts: Box::new(opts),
                    },
                )))
            }
            Action::UseAsPrompt(variant) => {
                let Some(text) = self
                    .generation
                    .as_ref()
                    .and_then(|g| Some(format!("{}{}", g.prompt, g.continuation(variant)?.text())))
                else {
                    return Vec::new();
                };
                self.prompt = text;
                self.tab = Tab::Neurons;
                self.new_run()
            }
            Action::SetPatchSettings(settings) => {
                self.patching.settings = settings;
                Vec::new()
            }
            Action::RunPatching => {
                if self.model.is_none() || self.job_running() {
                    return Vec::new();
                }
                let settings = self.patching.settings.clone();
                for (what, text) in [
                    ("the corrupted prompt", &settings.corrupt),
                    ("the answer token", &settings.answer),
                    ("the wrong token", &settings.wrong),
                ] {
                    if text.is_empty() {
                        self.notice = Some(format!("Patching needs {what}."));
                        return Vec::new();
                    }
                }
                let job_id = self.new_job(format!(
                    "Patching {} ({}) between the prompt and the corrupted prompt",
                    settings.site.name(),
                    match settings.direction {
                        crate::analysis::patching::Direction::Denoise => "denoising",
                        crate::analysis::patching::Direction::Noise => "noising",
                    }
                ));
                worker(Some(Command::Patch(crate::worker::PatchJob {
                    job_id,
                    clean: self.prompt.clone(),
                    corrupt: settings.corrupt,
                    bos: self.bos,
                    answer: settings.answer,
                    wrong: settings.wrong,
                    site: settings.site,
                    direction: settings.direction,
                })))
            }
            Action::SetCoreCompareText(text) => {
                self.core_compare.text = text;
                Vec::new()
            }
            Action::CompareCores => {
                let Method::Core { alpha } = self.sparsity else {
                    return Vec::new();
                };
                if self.model.is_none() || self.core_compare.text.trim().is_empty() {
                    return Vec::new();
                }
                self.core_compare.waiting = true;
                worker(Some(Command::Cores(crate::worker::CoresRequest {
                    text: self.core_compare.text.clone(),
                    bos: self.bos,
                    alpha,
                })))
            }
            Action::SetSweepSettings(settings) => {
                self.sweeps.settings = settings;
                Vec::new()
            }
            Action::RunSweep(choice) => {
                if self.model.is_none() || self.job_running() {
                    return Vec::new();
                }
                // Checked before a job id is taken: a refused sweep leaves no job behind.
                let title = match self.sweeps.settings.job(0, choice, &self.prompt, self.bos) {
                    Ok(job) => SweepSettings::title(&job),
                    Err(why) => {
                        self.notice = Some(why);
                        return Vec::new();
                    }
                };
                let job_id = self.new_job(title);
                let job = self
                    .sweeps
                    .settings
                    .job(job_id, choice, &self.prompt, self.bos);
                worker(job.ok().map(Command::Sweep))
            }
            Action::AddPatch { layer, cell } => {
                let (Some(report), Some((receiving, source))) =
                    (&self.patching.report, self.patching.cell_prompts())
                else {
                    return Vec::new();
                };
                let site = report.job.site;
                // The patch runs on the prompt that receives it.
                self.prompt = receiving;
                let changed = self.interventions.add(EditSpec::Patch {
                    site,
                    layer,
                    cell,
                    source,
                });
                self.rerun_if(changed)
            }
            Action::ShowFacets(unit) => {
                let Some(store) = self.stores.store_with(&unit.source) else {
                    return Vec::new();
                };
                self.facets = None;
                self.facets_asked = Some(unit.clone());
                let s = &self.explain_settings;
                // One request per facet, at most six.
                let explainer = s.is_set().then(|| (s.endpoint(12), s.explainer()));
                worker(Some(Command::Facets(crate::worker::FacetsRequest {
                    store,
                    source: unit.source,
                    unit: unit.unit,
                    explainer,
                })))
            }
            Action::SaveSession(path) => vec![Effect::SaveSession(path)],
            Action::OpenSession(path) => vec![Effect::OpenSession(path)],
            Action::LocateModel(path) => match self.session_prompt.take() {
                Some(SessionPrompt::ModelMissing { mut session, .. }) => {
                    if let Some(model) = session.model.as_mut() {
                        model.path = path;
                    }
                    vec![Effect::Restore(session)]
                }
                other => {
                    self.session_prompt = other;
                    Vec::new()
                }
            },
            Action::LocateSae { index, path } => {
                let Some(aside) = self.interventions.set_aside.get(index) else {
                    return Vec::new();
                };
                let hook = Some(aside.sae.hook.clone());
                self.interventions.locating = Some(index);
                worker(Some(Command::AttachSae(AttachSae { path, hook })))
            }
            Action::RestoreRecovery => match self.session_prompt.take() {
                Some(SessionPrompt::Recover { file, session, .. }) => {
                    vec![
                        Effect::RetireRecovery {
                            file,
                            declined: false,
                        },
                        Effect::Restore(session),
                    ]
                }
                other => {
                    self.session_prompt = other;
                    Vec::new()
                }
            },
            Action::DismissSessionPrompt => match self.session_prompt.take() {
                Some(SessionPrompt::Recover { file, .. }) => vec![Effect::RetireRecovery {
                    file,
                    declined: true,
                }],
                _ => Vec::new(),
            },
        }
    }

    /// Applies a worker event; returns what the app must do for it.
    pub fn apply(&mut self, event: Event) -> Vec<Effect> {
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
                self.runs.model_changed(m.info.dims.n_layers);
                self.sparsity = default_sparsity(m.info.activation);
                self.model = Some(m.info);
                self.model_fingerprint = m.fingerprint;
                self.probe = None;
                self.neuron_info = None;
                self.latent_info = None;
                self.saes.clear();
                self.selected_sae = None;
                self.selection = Selection::default();
                self.interventions.clear();
                self.stores.model_changed();
            }
            event @ (Event::RunStarted(_)
            | Event::LayerReady(_)
            | Event::LayersFromBaseline(_)
            | Event::SaeReady(_)
            | Event::BaselineReused(_)
            | Event::RunFinished(_)
            | Event::LensRows(_)
            | Event::LensReady(_)) => {
                let edits_active = self.edits_active();
                self.runs.apply(event, edits_active);
            }
            Event::SaeAttached(a) => {
                let sae_id = a.sae_id;
                self.selected_sae.get_or_insert(sae_id);
                self.saes.push(SaeEntry {
                    id: sae_id,
                    cfg: a.cfg,
                    source: a.source,
                    fingerprint: a.fingerprint,
                });
                // The SAE the user located for set-aside interventions: they come back, and
                // the prompt reruns with them.
                if let Some(index) = self.interventions.locating.take() {
                    let restored = self.interventions.restore_set_aside(index, sae_id);
                    return self.rerun_if(restored);
                }
            }
            Event::SaeDetached(d) => {
                self.interventions.forget_sae(d.sae_id);
                self.saes.retain(|s| s.id != d.sae_id);
                if self.selected_sae == Some(d.sae_id) {
                    self.selected_sae = self.saes.first().map(|s| s.id);
                }
                if self.selection.latent.is_some_and(|(id, _)| id == d.sae_id) {
                    self.selection.latent = None;
                    self.latent_info = None;
                }
                self.runs.forget_sae(d.sae_id);
            }
            Event::JobProgress(p) => {
                if let Some(job) = self.job.as_mut() {
                    job.progress(p);
                }
            }
            Event::JobFinished(f) => return self.job_finished(f),
            Event::LatentInfo(l) => {
                if self.selection.latent == Some((l.sae_id, l.latent)) {
                    self.latent_info = Some(l);
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
            Event::FacetsReady(f) => {
                let wanted = self
                    .facets_asked
                    .as_ref()
                    .is_some_and(|u| u.source == f.source && u.unit == f.unit);
                if wanted {
                    self.facets = Some(f);
                }
            }
            Event::CoresReady(report) => {
                self.core_compare.waiting = false;
                self.core_compare.report = Some(report);
            }
            Event::Cancelled(_) => {}
            Event::Error(e) => self.failed(e),
        }
        Vec::new()
    }

    fn job_finished(&mut self, f: crate::worker::JobFinished) -> Vec<Effect> {
        let mut effects = Vec::new();
        match &f.outcome {
            JobOutcome::Evaluated { sae_id, report } => {
                self.evaluations.insert(*sae_id, (**report).clone());
            }
            JobOutcome::Explained {
                store,
                source,
                units,
                explained,
                scored,
                requests,
            } => {
                // The inspector reads the new explanations again.
                self.stores.reports.retain(|r| &r.unit.source != source);
                self.notice = Some(format!(
                    "Explained {explained} of {units} unit(s) of {source} ({scored} scored, \
                     {requests} requests) into {}",
                    store.display()
                ));
            }
            JobOutcome::Patched(report) => {
                self.patching.report = Some(report.clone());
            }
            JobOutcome::Swept(report) => {
                let text = self
                    .job
                    .as_ref()
                    .map(|j| j.title.clone())
                    .unwrap_or_default();
                match &**report {
                    crate::worker::SweepReport::Prune(p) => {
                        self.sweeps.prune = Some(Box::new(p.clone()));
                        self.sweeps.prune_text = text;
                    }
                    crate::worker::SweepReport::Sparsify(p) => {
                        self.sweeps.sparsify = Some(Box::new(p.clone()));
                        self.sweeps.sparsify_text = text;
                    }
                }
            }
            JobOutcome::Scanned { store, .. } => {
                if let Some(model) = &self.model {
                    effects.push(Effect::Store(StoreCommand::Open {
                        path: store.clone(),
                        model: model.path.clone(),
                    }));
                }
            }
            _ => {}
        }
        if let Some(job) = self.job.as_mut() {
            job.finished(f);
        }
        effects
    }

    /// A request failed: whatever waited for it stops waiting, and the error is listed.
    fn failed(&mut self, e: ErrorEvent) {
        match &e.request {
            Request::Load(_) => self.loading = None,
            Request::Probe(_) => self.probe_running = false,
            Request::Run(run_id) => self.runs.failed(*run_id),
            Request::Job(job_id) => {
                if let Some(job) = self.job.as_mut().filter(|j| j.id == *job_id) {
                    job.failed(&e.message);
                }
            }
            Request::Generate(run_id) => {
                if let Some(g) = self.generation.as_mut().filter(|g| g.run_id == *run_id) {
                    g.error = Some(e.message.clone());
                }
            }
            Request::Cores => self.core_compare.waiting = false,
            Request::AttachSae(_) => {
                // A located SAE that failed to attach leaves its interventions aside.
                self.interventions.locating = None;
            }
            _ => {}
        }
        self.errors.push(e);
    }
}

/// The first worker command among `effects` (tests look at that).
#[cfg(test)]
pub(crate) fn command(effects: Vec<Effect>) -> Option<Command> {
    effects.into_iter().find_map(|e| match e {
        Effect::Worker(c) => Some(c),
        _ => None,
    })
}

#[cfg(test)]
impl AppState {
    /// The first worker command an action asks for.
    pub(crate) fn act_cmd(&mut self, action: Action) -> Option<Command> {
        command(self.act(action))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::histogram::Bins;
    use crate::analysis::sparsity::LayerSparsity;
    use crate::model::ValueOp;
    use crate::sae::SaeConfig;
    use crate::sae::apply::SaeSummary;
    use crate::worker::{LayerReady, ModelLoaded, RunStarted};
    use crate::worker::{LayerSummary, RunFinished, SteerMode, TokenPrediction};
    use std::sync::Arc;

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
        s.act_cmd(Action::Open("/m".into()));
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
        assert_eq!(s.act_cmd(Action::Run), None, "an empty prompt does not run");
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        let Some(Command::Run(r2)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert!(r2.run_id > r1.run_id);
        // Events of the superseded run change nothing.
        s.apply(started(r1.run_id, Variant::Baseline));
        assert!(s.runs.baseline.layers.is_empty());
        s.apply(started(r2.run_id, Variant::Baseline));
        assert_eq!(s.runs.baseline.layers_done(), 0);
        assert!(s.is_running());
        s.apply(layer(r2.run_id, Variant::Baseline, 1, [0.0, 1.0, 2.0, 3.0]));
        assert_eq!(s.runs.baseline.layers_done(), 1);
        assert!(s.runs.baseline.layer(0).is_none() && s.runs.baseline.layer(1).is_some());
        // The first baseline fixed layer 1's histogram bins.
        assert_eq!(
            s.runs.histogram_bins[1],
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
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert_eq!(r.bos, BosMode::Auto);
        let Some(Command::Run(r2)) = s.act_cmd(Action::SetBos(BosMode::Yes)) else {
            panic!("changing the BOS reruns the prompt")
        };
        assert_eq!(r2.bos, BosMode::Yes);
        assert!(r2.run_id > r.run_id);
        assert_eq!(s.bos, BosMode::Yes);
    }

    #[test]
    fn an_intervened_pass_takes_the_layers_before_its_first_edit_from_the_baseline() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::Run) else {
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
        let edited = s.runs.intervened.as_ref().unwrap();
        assert!(std::ptr::eq(
            edited.layer(0).unwrap(),
            s.runs.baseline.layer(0).unwrap()
        ));
        assert!(edited.layer(1).is_none(), "layer 1 comes from the worker");
        // A superseded run's copy changes nothing.
        s.apply(Event::LayersFromBaseline(
            crate::worker::LayersFromBaseline {
                run_id: r.run_id + 1,
                through: 2,
            },
        ));
        assert!(s.runs.intervened.as_ref().unwrap().layer(1).is_none());
    }

    #[test]
    fn the_lens_fills_row_by_row_and_is_complete_with_every_layer() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::Run) else {
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
        assert_eq!(s.runs.baseline.lens.as_ref().map(Vec::len), Some(1));
        assert!(!s.runs.baseline.lens_complete());
        // Out of order (a stale stream): ignored.
        s.apply(rows(0, "stale"));
        s.apply(rows(5, "far"));
        assert_eq!(s.runs.baseline.lens.as_ref().unwrap()[0], row("a"));
        s.apply(rows(1, "b"));
        assert_eq!(s.runs.baseline.lens.as_ref().map(Vec::len), Some(2));
        assert!(s.runs.baseline.lens_complete(), "two layers, two rows");
    }

    #[test]
    fn interventions_run_again_and_undo_restores_them() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let neuron = EditSpec::Neuron {
            layer: 1,
            neuron: 0,
            value: 5.0,
            scale: false,
        };
        let Some(Command::Run(r)) = s.act_cmd(Action::AddIntervention(neuron.clone())) else {
            panic!()
        };
        assert_eq!(r.interventions, vec![s.interventions.items[0].edit()]);
        let moved = EditSpec::Neuron {
            layer: 1,
            neuron: 0,
            value: 7.0,
            scale: false,
        };
        assert!(
            s.act_cmd(Action::EditIntervention(0, moved.clone()))
                .is_some()
        );
        // Same value again: nothing to do.
        assert!(
            s.act_cmd(Action::EditIntervention(0, moved.clone()))
                .is_none()
        );
        let Some(Command::Run(off)) = s.act_cmd(Action::ToggleIntervention(0)) else {
            panic!()
        };
        assert!(off.interventions.is_empty());
        s.act_cmd(Action::Undo);
        assert!(s.interventions.items[0].enabled);
        s.act_cmd(Action::Undo);
        assert_eq!(s.interventions.items[0].spec, neuron);
        s.act_cmd(Action::Redo);
        assert_eq!(s.interventions.items[0].spec, moved);
        s.act_cmd(Action::RemoveIntervention(0));
        assert!(s.interventions.items.is_empty());
        s.act_cmd(Action::Undo);
        assert_eq!(s.interventions.items.len(), 1);
        assert_eq!(s.act_cmd(Action::RemoveIntervention(5)), None);
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
            s.act_cmd(attach(" blocks.1.hook_resid_post ")),
            Some(Command::AttachSae(AttachSae {
                path: "/saes/params.npz".into(),
                hook: Some("blocks.1.hook_resid_post".into()),
            }))
        );
        assert_eq!(s.act_cmd(attach("  ")), None);
        assert!(s.notice.as_deref().unwrap_or("").contains("hook"));
    }

    #[test]
    fn a_slider_drag_is_one_undo_step() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let at = |value| EditSpec::Neuron {
            layer: 0,
            neuron: 1,
            value,
            scale: false,
        };
        s.act_cmd(Action::AddIntervention(at(0.0)));
        // Every frame of the drag reruns (the views follow the slider) ...
        for v in [1.0, 2.0, 3.0] {
            assert!(matches!(
                s.act_cmd(Action::DragIntervention(0, at(v))),
                Some(Command::Run(_))
            ));
        }
        s.act_cmd(Action::EndDrag);
        // ... but one undo takes the whole drag back.
        s.act_cmd(Action::Undo);
        assert_eq!(s.interventions.items[0].spec, at(0.0));
        s.act_cmd(Action::Redo);
        assert_eq!(s.interventions.items[0].spec, at(3.0));
        // A second drag is a step of its own.
        s.act_cmd(Action::DragIntervention(0, at(4.0)));
        s.act_cmd(Action::DragIntervention(0, at(5.0)));
        s.act_cmd(Action::EndDrag);
        s.act_cmd(Action::Undo);
        assert_eq!(s.interventions.items[0].spec, at(3.0));
        s.act_cmd(Action::Undo);
        assert_eq!(s.interventions.items[0].spec, at(0.0));
        s.act_cmd(Action::Undo);
        assert!(s.interventions.items.is_empty());
        assert!(!s.can_undo() && s.can_redo());
    }

    #[test]
    fn undo_after_a_detach_does_not_bring_back_the_saes_clamps() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        s.apply(Event::SaeAttached(crate::worker::SaeAttached {
            sae_id: 7,
            cfg: sae_cfg(),
            source: "sae:test".into(),
            fingerprint: None,
        }));
        let latent = EditSpec::Latent {
            sae_id: 7,
            latent: 2,
            value: 1.0,
            scale: false,
            positions: None,
        };
        let neuron = EditSpec::Neuron {
            layer: 0,
            neuron: 1,
            value: 2.0,
            scale: false,
        };
        s.act_cmd(Action::AddIntervention(latent.clone()));
        s.act_cmd(Action::EditIntervention(
            0,
            EditSpec::Latent {
                sae_id: 7,
                latent: 2,
                value: 5.0,
                scale: false,
                positions: None,
            },
        ));
        s.act_cmd(Action::AddIntervention(neuron.clone()));
        assert!(matches!(
            s.act_cmd(Action::DetachSae(7)),
            Some(Command::DetachSae(_))
        ));
        s.apply(Event::SaeDetached(crate::worker::SaeDetached { sae_id: 7 }));
        assert_eq!(s.interventions.items.len(), 1);
        // The only step left takes the neuron clamp off; the latent clamp never returns.
        s.act_cmd(Action::Undo);
        assert!(s.interventions.items.is_empty());
        assert!(!s.can_undo());
        s.act_cmd(Action::Redo);
        assert_eq!(s.interventions.items[0].spec, neuron);
        assert!(!s.can_redo());
    }

    #[test]
    fn both_passes_are_kept_for_before_and_after() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::AddIntervention(EditSpec::HeadAblation {
            layer: 0,
            head: 0,
            mean: false,
        })) else {
            panic!()
        };
        s.apply(started(r.run_id, Variant::Baseline));
        s.apply(layer(r.run_id, Variant::Baseline, 0, [1.0; 4]));
        s.apply(started(r.run_id, Variant::Intervened));
        s.apply(layer(r.run_id, Variant::Intervened, 0, [2.0; 4]));
        assert_eq!(s.runs.baseline.layer(0).unwrap().mlp_post[0], 1.0);
        assert_eq!(s.shown().layer(0).unwrap().mlp_post[0], 2.0);
        s.act_cmd(Action::SetShow(Show::Baseline));
        assert_eq!(s.shown().layer(0).unwrap().mlp_post[0], 1.0);
        // Both histograms use the bins fixed by the baseline.
        let (b, i) = (
            s.histogram(&s.runs.baseline, 0).unwrap(),
            s.histogram(s.runs.intervened.as_ref().unwrap(), 0).unwrap(),
        );
        assert_eq!(b.bins, i.bins);
        assert_ne!(b.counts, i.counts);
    }

    #[test]
    fn comparison_lists_probability_changes_at_the_last_position() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::AddIntervention(EditSpec::Steer {
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
        s.act_cmd(Action::Open("/bad".into()));
        s.apply(Event::Error(ErrorEvent {
            request: Request::Load("/bad".into()),
            context: "opening /bad".into(),
            message: "no such file".into(),
        }));
        assert_eq!(s.loading, None);
        assert!(s.model.is_some(), "the open model stays");
        assert_eq!(s.errors.len(), 1);
        s.act_cmd(Action::DismissError(0));
        assert!(s.errors.is_empty());
    }

    #[test]
    fn selecting_a_neuron_asks_for_its_logit_effects() {
        let mut s = loaded();
        let cmd = s.act_cmd(Action::SelectNeuron {
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
        s.act_cmd(Action::ClearSelection);
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
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert_eq!(r1.have_baseline, None);
        complete_baseline(&mut s, r1.run_id);
        assert!(s.is_complete());
        let Some(Command::Run(r2)) = s.act_cmd(Action::Run) else {
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
        assert_eq!(s.runs.baseline.layers_done(), 2);
    }

    #[test]
    fn the_lens_is_asked_for_once_when_its_tab_opens() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert!(!r1.lens, "the lens tab is closed");
        complete_baseline(&mut s, r1.run_id);
        assert_eq!(
            s.act_cmd(Action::SetTab(Tab::Lens)),
            Some(Command::Lens(LensRequest { run_id: r1.run_id }))
        );
        s.act_cmd(Action::SetTab(Tab::Heads));
        assert_eq!(s.act_cmd(Action::SetTab(Tab::Lens)), None, "already asked");
        // With the tab open, a run brings its lens along.
        let Some(Command::Run(r2)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert!(r2.lens);
        assert_eq!(s.act_cmd(Action::SetTab(Tab::Lens)), None);
    }

    #[test]
    fn selecting_a_head_reruns_once_to_capture_patterns() {
        let mut s = loaded();
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r1)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert!(!r1.patterns, "no head is on screen");
        complete_baseline(&mut s, r1.run_id);
        let Some(Command::Run(r2)) = s.act_cmd(Action::SelectHead { layer: 0, head: 1 }) else {
            panic!("selecting a head asks for its pattern")
        };
        assert!(r2.patterns);
        assert_eq!(r2.have_baseline, Some(r1.run_id));
        assert_eq!(s.act_cmd(Action::SelectHead { layer: 0, head: 0 }), None);
        // Runs keep capturing while a head is selected, and stop once none is.
        let Some(Command::Run(r3)) = s.act_cmd(Action::Run) else {
            panic!()
        };
        assert!(r3.patterns);
        s.act_cmd(Action::ClearSelection);
        let Some(Command::Run(r4)) = s.act_cmd(Action::Run) else {
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
        s.act_cmd(Action::SetPrompt("ab".into()));
        let Some(Command::Run(r)) = s.act_cmd(Action::Run) else {
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
            s.runs.baseline.sae(7).unwrap().latent_activations(3),
            vec![1.5, 0.0]
        );
        // Selecting a latent asks the worker about it and colours tokens by it.
        assert_eq!(
            s.act_cmd(Action::SelectLatent {
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
        s.act_cmd(Action::SetPrompt("ab".into()));
        let clamp = EditSpec::Latent {
            sae_id: 2,
            latent: 5,
            value: 3.0,
            scale: false,
            positions: Some(vec![1]),
        };
        s.act_cmd(Action::AddIntervention(clamp.clone()));
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
            s.act_cmd(Action::DetachSae(2)),
            Some(Command::DetachSae(DetachSae { sae_id: 2 }))
        );
        assert!(s.interventions.items.is_empty());
        s.apply(Event::SaeDetached(crate::worker::SaeDetached { sae_id: 2 }));
        assert!(s.saes.is_empty() && s.selected_sae.is_none());
        // The SAE is gone, so undo has nothing of it to bring back.
        assert!(!s.can_undo());
        assert_eq!(s.act_cmd(Action::Undo), None);
        assert!(s.interventions.items.is_empty());
        // The slider edits each kind's one value.
        let steer = EditSpec::SteerLatent {
            sae_id: 2,
            latent: 5,
            mode: SteerMode::CapProjection { max: 1.0 },
            positions: None,
        };
        assert_eq!(steer.value(), Some(1.0));
        assert_eq!(
            steer.with_value(4.0),
            EditSpec::SteerLatent {
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
        s.act_cmd(Action::SelectNeuron {
            layer: 1,
            neuron: 0,
        });
        s.act_cmd(Action::SetTab(Tab::Generate));
        let Some(Command::Generate(g)) = s.act_cmd(Action::Generate) else {
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
        let kind = EditSpec::Neuron {
            layer: 0,
            neuron: 1,
            value: 3.0,
            scale: false,
        };
        // The continuations restart first; the rerun follows with an older id, so it does
        // not stop the generation.
        let again = match s.act(Action::AddIntervention(kind)).as_slice() {
            [
                Effect::Worker(Command::Generate(again)),
                Effect::Worker(Command::Run(r)),
            ] => {
                assert!(r.run_id < again.run_id);
                again.clone()
            }
            other => panic!("{other:?}"),
        };
        assert!(again.run_id > g.run_id);
        assert_eq!(again.interventions.len(), 1);
        let view = s.generation.as_ref().unwrap();
        assert_eq!(view.run_id, again.run_id);
        assert_eq!(view.interventions, vec!["L0 N1 = 3.00".to_string()]);
        assert!(view.intervened.is_some());
        // Stopping asks for nothing once it is over.
        assert!(matches!(
            s.act_cmd(Action::StopGeneration),
            Some(Command::StopGeneration(id)) if id > again.run_id
        ));
        s.generation.as_mut().unwrap().error = Some("x".into());
        assert_eq!(s.act_cmd(Action::StopGeneration), None);
    }

    #[test]
    fn a_continuation_becomes_the_prompt_and_runs() {
        use crate::model::generate::{Generation, StopReason};
        use crate::worker::GenerationFinished;
        let mut s = loaded();
        s.prompt = "To be".into();
        s.act_cmd(Action::SetTab(Tab::Generate));
        let Some(Command::Generate(g)) = s.act_cmd(Action::Generate) else {
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
        let cmd = s.act_cmd(Action::UseAsPrompt(Variant::Baseline));
        assert!(matches!(cmd, Some(Command::Run(r)) if r.text == "To be, or not"));
        assert_eq!(s.tab, Tab::Neurons);
        assert_eq!(s.act_cmd(Action::UseAsPrompt(Variant::Intervened)), None);
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
        assert_eq!(s.act_cmd(Action::Explain(vec![unit(3)])), None);
        assert!(s.notice.as_deref().unwrap_or("").contains("model"));
        s.explain_settings.model = "gpt-x".into();
        assert_eq!(
            s.act_cmd(Action::Explain(vec![unit(3)])),
            None,
            "no store has the source"
        );
        s.stores
            .open
            .push(crate::ui::state::stores::tests::summary("/s.sqlite", "f"));
        let Some(Command::ExplainUnits(job)) = s.act_cmd(Action::Explain(vec![unit(3), unit(5)]))
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
            s.act_cmd(Action::Explain(vec![unit(3)])),
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
    fn a_patching_sweep_is_a_job_and_its_cells_become_interventions_on_the_receiving_prompt() {
        use crate::analysis::patching::{Direction, PatchResult, Site};
        let mut s = loaded();
        s.prompt = "a b".into();
        assert_eq!(
            s.act_cmd(Action::RunPatching),
            None,
            "no corrupted prompt yet"
        );
        assert!(
            s.notice
                .as_deref()
                .unwrap_or("")
                .contains("corrupted prompt")
        );
        s.act_cmd(Action::SetPatchSettings(PatchSettings {
            corrupt: "a c".into(),
            answer: " x".into(),
            wrong: " y".into(),
            site: Site::ResidPre,
            direction: Direction::Denoise,
        }));
        let Some(Command::Patch(job)) = s.act_cmd(Action::RunPatching) else {
            panic!("Patch asks the worker for a sweep")
        };
        assert_eq!((job.clean.as_str(), job.corrupt.as_str()), ("a b", "a c"));
        assert!(s.job_running());
        assert_eq!(s.act_cmd(Action::RunPatching), None, "one job at a time");
        s.apply(Event::JobFinished(crate::worker::JobFinished {
            job_id: job.job_id,
            outcome: JobOutcome::Patched(Box::new(crate::worker::PatchReport {
                job: job.clone(),
                result: PatchResult {
                    site: Site::ResidPre,
                    direction: Direction::Denoise,
                    metric_clean: 2.0,
                    metric_corrupt: -1.0,
                    values: vec![vec![0.0, 1.0], vec![0.0, 0.5]],
                },
                clean_tokens: vec!["a".into(), " b".into()],
                corrupt_tokens: vec!["a".into(), " c".into()],
                duration_ms: 1.0,
            })),
        }));
        assert!(!s.job_running());
        assert!(s.patching.report.is_some());
        // Denoising: the corrupted prompt runs with the clean value at L1, position 1.
        let Some(Command::Run(run)) = s.act_cmd(Action::AddPatch { layer: 1, cell: 1 }) else {
            panic!("the patch reruns the prompt")
        };
        assert_eq!(run.text, "a c");
        assert_eq!(
            run.interventions,
            vec![Edit::Patch {
                site: Site::ResidPre,
                layer: 1,
                cell: 1,
                source: "a b".into(),
            }]
        );
        assert_eq!(
            s.interventions.items[0].label(),
            "patch L1 resid_pre @1 from \"a b\""
        );
    }

    #[test]
    fn a_sweep_is_a_job_whose_result_the_sweeps_tab_keeps() {
        use crate::analysis::sweep::{LossText, PruneSweep, SweepPoint};
        use crate::model::prune::{PruneMethod, PruneScope};
        let mut s = loaded();
        assert_eq!(s.act_cmd(Action::RunSweep(SweepChoice::Prune)), None);
        assert!(
            s.notice
                .as_deref()
                .unwrap_or("")
                .contains("prompt or a corpus")
        );
        assert!(!s.job_running(), "a refused sweep leaves no job");
        s.prompt = "a b c".into();
        let Some(Command::Sweep(job)) = s.act_cmd(Action::RunSweep(SweepChoice::Prune)) else {
            panic!("Sweep asks the worker for a job")
        };
        assert!(matches!(job.text, LossText::Prompt { ref text, .. } if text == "a b c"));
        assert!(
            s.job
                .as_ref()
                .unwrap()
                .title
                .contains("magnitude, all weights")
        );
        assert_eq!(
            s.act_cmd(Action::RunSweep(SweepChoice::Sparsify)),
            None,
            "one job at a time"
        );
        let sweep = PruneSweep {
            method: PruneMethod::Magnitude,
            scope: PruneScope::All,
            dense_mean_loss: 2.0,
            tokens: 2,
            points: vec![SweepPoint {
                parameter: 0.0,
                sparsity: 0.0,
                mean_loss: 2.0,
            }],
            knee: Some(0.0),
        };
        s.apply(Event::JobFinished(crate::worker::JobFinished {
            job_id: job.job_id,
            outcome: JobOutcome::Swept(Box::new(crate::worker::SweepReport::Prune(sweep.clone()))),
        }));
        assert!(!s.job_running());
        assert_eq!(s.sweeps.prune.as_deref(), Some(&sweep));
        assert!(s.sweeps.prune_text.contains("on the prompt"));
        // The settings travel in session files.
        let mut settings = s.sweeps.settings.clone();
        settings.corpus = "/data/wiki.txt".into();
        settings.ppl_p = 2.0;
        s.act_cmd(Action::SetSweepSettings(settings.clone()));
        let mut reopened = loaded();
        reopened.adopt_session(&s.session());
        assert_eq!(reopened.sweeps.settings, settings);
    }

    #[test]
    fn another_prompts_cores_are_asked_at_the_shown_alpha_and_kept() {
        let mut s = loaded();
        s.act_cmd(Action::SetCoreCompareText("other text".into()));
        assert_eq!(
            s.act_cmd(Action::CompareCores),
            None,
            "only while core neurons are shown"
        );
        s.sparsity = Method::Core { alpha: 0.3 };
        let Some(Command::Cores(request)) = s.act_cmd(Action::CompareCores) else {
            panic!("Compare asks the worker")
        };
        assert_eq!((request.text.as_str(), request.alpha), ("other text", 0.3));
        assert!(s.core_compare.waiting);
        s.apply(Event::Error(ErrorEvent {
            request: Request::Cores,
            context: String::new(),
            message: "no".into(),
        }));
        assert!(!s.core_compare.waiting, "an error stops the wait");
        s.act_cmd(Action::CompareCores);
        s.apply(Event::CoresReady(Box::new(crate::worker::CoresReport {
            request,
            cores: vec![vec![1, 2]],
            n_tokens: 2,
        })));
        assert!(!s.core_compare.waiting);
        let o = s.core_compare.overlaps(&[Some(vec![2])], 0.3).unwrap();
        assert_eq!(o[0].map(|o| o.shared), Some(1));
        assert_eq!(s.session().core_compare, "other text");
    }

    #[test]
    fn units_in_view_are_a_layers_neurons_by_peak_magnitude() {
        let mut s = loaded();
        s.act_cmd(Action::Run);
        s.prompt = "ab".into();
        let Some(Command::Run(r)) = s.act_cmd(Action::Run) else {
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
