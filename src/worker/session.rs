//! The worker's state: the open model and the last passes, and what each command does to them.
//! Plain code with no threads, so it can be tested directly; [`super::WorkerHandle`] runs it on
//! its own thread.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::protocol::*;
use crate::analysis::heads::{repeated_random_tokens, score_heads};
use crate::analysis::lens::{LENS_HOOKS, Prediction, logit_lens_layer, next_tokens};
use crate::analysis::sparsity::{Method, measure_mlp_layer, mlp_hooks};
use crate::analysis::top_k_by_value;
use crate::model::generate::Generator;
use crate::model::{
    self, Captures, HookSpec, LayerDone, LayerObserver, Model, ModelError, ResidCache, Unembed,
};
use crate::sae::Sae;
use crate::sae::apply as sae_apply;

/// Predictions kept per position.
const TOP_K: usize = 5;

pub struct Session {
    model: Option<Arc<Model>>,
    /// The last pass without interventions, and the last one with them: each reruns only from
    /// the first layer a change affects.
    baseline: Option<ResidCache>,
    intervened: Option<ResidCache>,
    /// Each pass's predictions and losses, in step with its cache: a rerun of only the last
    /// rows recomputes only theirs, and a pass that reruns nothing (a new sparsity method)
    /// none.
    baseline_outputs: Option<PassOutputs>,
    intervened_outputs: Option<PassOutputs>,
    /// The pruned copy of the model the last pruning edit asked for, and what it was.
    pruned: Option<(PruneKey, Arc<Model>)>,
    /// Per-matrix magnitude pruning kept between runs: a new sparsity (the slider) changes
    /// only the weights between the old and the new cut.
    pruner: Option<model::prune::MagnitudePruner>,
    /// The pruning the intervened cache was computed with (its weights): another one, or none,
    /// makes it useless.
    intervened_weights: Option<PruneKey>,
    /// The last baseline sent in full: the UI holds it, so an unchanged one is not resent.
    sent_baseline: Option<SentBaseline>,
    /// The last run's passes, kept for a logit lens asked for after the run.
    last_run: Option<LastRun>,
    /// The baseline's logit lens and the tokens it is for (reused while they do not change).
    baseline_lens: Option<(Vec<u32>, Lens)>,
    /// Attached SAEs, in the order they were attached.
    saes: Vec<(SaeId, Arc<Sae>)>,
    next_sae_id: SaeId,
    /// Where long jobs report from their own threads (`None`: they run on the caller's).
    background: Option<Background>,
    jobs: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Job threads stop at their next step once the handle has cancelled everything.
        for job in self.jobs.drain(..) {
            super::join_within(job, "a job thread");
        }
    }
}

type Lens = Vec<Vec<Vec<TokenPrediction>>>;

/// A pruning edit's parameters (the sparsity by its bits, so that the key compares exactly).
type PruneKey = (model::prune::PruneMethod, model::prune::PruneScope, u32);

/// The pruning among `edits`, if any (one counts; a later one wins).
fn pruning(edits: &[Edit]) -> Option<PruneKey> {
    edits.iter().rev().find_map(|e| match *e {
        Edit::Prune {
            method,
            scope,
            sparsity,
        } => Some((method, scope, sparsity.to_bits())),
        _ => None,
    })
}

#[derive(Clone, Debug, PartialEq)]
struct SentBaseline {
    run_id: RunId,
    ids: Vec<u32>,
    sparsity: Method,
    /// The SAEs whose feature maps were sent with it.
    saes: Vec<SaeId>,
}

/// A pass's next-token predictions and per-token losses, as sent.
struct PassOutputs {
    ids: Vec<u32>,
    predictions: Vec<Vec<TokenPrediction>>,
    per_token_nll: Vec<f32>,
}

struct LastRun {
    run_id: RunId,
    ids: Vec<u32>,
    baseline: Captures,
    /// The intervened pass and the first layer its edits touch.
    intervened: Option<(Captures, usize)>,
}

/// What job threads need to report and to hand results back to the worker: its event and
/// command channels, the UI's wake-up, and the cancelled job id.
#[derive(Clone)]
pub struct Background {
    pub events: crossbeam_channel::Sender<Event>,
    pub commands: crossbeam_channel::Sender<Command>,
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub cancelled_job: Arc<std::sync::atomic::AtomicU64>,
}

impl Background {
    /// Runs a job body with an emitter and a cancel check; its error or panic becomes an
    /// [`Event::Error`] with `context`. Returns the body's value when it succeeded.
    fn run_job<T>(
        &self,
        job_id: JobId,
        context: &str,
        body: impl FnOnce(&mut dyn FnMut(Event), &dyn Fn() -> bool) -> anyhow::Result<T>,
    ) -> Option<T> {
        let mut emit = |e: Event| {
            let _ = self.events.send(e);
            (self.wake)();
        };
        let cancelled = || {
            let c = self.cancelled_job.load(std::sync::atomic::Ordering::SeqCst);
            c == job_id || c == u64::MAX
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut emit, &cancelled)));
        let message = match outcome {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "internal error in the job (the worker recovered)".into(),
        };
        emit(Event::Error(ErrorEvent {
            request: Request::Job(job_id),
            context: context.into(),
            message,
        }));
        None
    }
}

/// Tells a pass whether a newer request has superseded it.
pub trait Cancel {
    fn is_cancelled(&self, run_id: RunId) -> bool;

    /// Whether the user cancelled job `job` (plain closures never cancel jobs).
    fn is_job_cancelled(&self, _job: JobId) -> bool {
        false
    }

    /// Whether generation `id` was stopped or superseded (plain closures: as runs).
    fn is_generation_cancelled(&self, id: RunId) -> bool {
        self.is_cancelled(id)
    }

    /// Whether the model load in progress was cancelled or superseded by a newer one (plain
    /// closures never cancel loads).
    fn is_load_cancelled(&self) -> bool {
        false
    }
}

impl<F: Fn(RunId) -> bool> Cancel for F {
    fn is_cancelled(&self, run_id: RunId) -> bool {
        self(run_id)
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// How often loading progress is reported.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl Session {
    pub fn new() -> Self {
        Session {
            model: None,
            baseline: None,
            intervened: None,
            baseline_outputs: None,
            intervened_outputs: None,
            pruned: None,
            pruner: None,
            intervened_weights: None,
            sent_baseline: None,
            last_run: None,
            baseline_lens: None,
            saes: Vec::new(),
            next_sae_id: 1,
            background: None,
            jobs: Vec::new(),
        }
    }

    /// A session whose long jobs (training, corpus evaluation) run on their own threads and
    /// report through `background`.
    pub fn with_background(background: Background) -> Self {
        let mut session = Self::new();
        session.background = Some(background);
        session
    }

    pub fn model(&self) -> Option<&Model> {
        self.model.as_deref()
    }

    /// Runs one command, reporting through `emit`. Errors become [`Event::Error`]; the session
    /// keeps its model and caches.
    pub fn handle(&mut self, command: Command, cancel: &dyn Cancel, emit: &mut dyn FnMut(Event)) {
        if matches!(command, Command::StopGeneration(_) | Command::Shutdown) {
            return;
        }
        let (request, context) = command.request();
        let result = match command {
            Command::LoadModel(load) => self.load(load, cancel, emit),
            Command::Run(run) => {
                let id = run.run_id;
                self.run(run, cancel, emit)
                    .or_else(|e| cancelled(id, e, emit))
            }
            Command::ProbeHeads(probe) => self.probe(probe).map(&mut *emit),
            Command::InspectNeuron(n) => self.inspect_neuron(n).map(&mut *emit),
            Command::Lens(request) if !cancel.is_cancelled(request.run_id) => {
                self.lens(request.run_id, cancel, emit)
            }
            Command::Lens(_) => Ok(()),
            Command::Generate(request) => self.generate(request, cancel, emit),
            Command::AttachSae(a) => self.attach_sae(a).map(&mut *emit),
            Command::TrainSae(job) => self.train_sae(job, cancel, emit),
            Command::EvaluateSae(job) => self.evaluate_sae(job, cancel, emit),
            Command::ScanCorpus(job) => self.scan_corpus(job, cancel, emit),
            Command::ExplainUnits(job) => {
                let (id, context) = (
                    job.job_id,
                    format!("explaining units of {}", job.opts.source),
                );
                // The open model measures the windows, when it is the one the job names.
                let model = self
                    .model
                    .clone()
                    .filter(|m| job.opts.subject_model.as_deref() == Some(m.info.path.as_path()));
                self.job(id, context, cancel, emit, move |emit, cancelled| {
                    explain_job(&job, model, cancelled, emit)
                })
            }
            Command::Patch(job) => self.patch(job, cancel, emit),
            Command::Sweep(job) => self.sweep(job, cancel, emit),
            Command::Facets(f) => self.facets(&f).map(&mut *emit),
            Command::Cores(c) => self.cores(c).map(&mut *emit),
            Command::DetachSae(d) => {
                self.saes.retain(|(id, _)| *id != d.sae_id);
                emit(Event::SaeDetached(SaeDetached { sae_id: d.sae_id }));
                Ok(())
            }
            Command::InspectLatent(l) => self.inspect_latent(l).map(&mut *emit),
            Command::StopGeneration(_) => Ok(()),
            #[cfg(feature = "fault-injection")]
            Command::Panic => panic!("panic requested by a test"),
            Command::Shutdown => Ok(()),
        };
        if let Err(e) = result {
            emit(Event::Error(ErrorEvent {
                request,
                context,
                message: format!("{e:#}"),
            }));
        }
    }

    /// Forgets the baseline's cached logit lens, so the next [`Command::Lens`] computes it
    /// (`dendrite bench` times that).
    pub fn forget_lens(&mut self) {
        self.baseline_lens = None;
    }

    /// The open model, shared (with a job thread, a benchmark).
    pub fn shared_model(&self) -> anyhow::Result<Arc<Model>> {
        self.model
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no model is open"))
    }

    /// A unit's facets from its top windows in a store (the open model reruns them).
    fn facets(&self, f: &FacetsRequest) -> anyhow::Result<Event> {
        let model = self.model_or_err()?;
        let store = crate::describe::store::Store::open_existing(&f.store)?;
        let mut facets =
            crate::describe::facets::unit_facets(model, &store, &f.source, f.unit, None, 0)?;
        if let Some((endpoint, kind)) = &f.explainer {
            let client = crate::describe::interp::ChatClient::new(endpoint.clone());
            crate::describe::facets::explain_facets(&mut facets, &client, *kind);
        }
        Ok(Event::FacetsReady(Box::new(facets)))
    }

    fn cores(&self, request: CoresRequest) -> anyhow::Result<Event> {
        use crate::analysis::core_neurons::{CoreOptions, measure};
        let (model, ids) = prompt_ids(self.model.as_ref(), &request.text, request.bos)?;
        let opts = CoreOptions {
            alpha: request.alpha,
            ..CoreOptions::default()
        };
        let first_scored = model.tokenizer.first_scored(&ids);
        let layers = measure(
            &model.transformer,
            &ids,
            "blocks.*.mlp.hook_post",
            first_scored,
            opts,
        )?;
        Ok(Event::CoresReady(Box::new(CoresReport {
            cores: layers.into_iter().map(|l| l.core.core).collect(),
            n_tokens: ids.len(),
            request,
        })))
    }

    fn model_or_err(&self) -> anyhow::Result<&Model> {
        self.model
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no model is open"))
    }

    /// Drops every cached pass (after a panic, a cache may be half updated: the next run
    /// recomputes from scratch). The model and the SAEs stay.
    pub fn forget_caches(&mut self) {
        self.baseline = None;
        self.intervened = None;
        self.baseline_outputs = None;
        self.intervened_outputs = None;
        self.sent_baseline = None;
        self.last_run = None;
        self.baseline_lens = None;
        // A pruned copy is of the model it was made from (a new one, or weights a panic may
        // have left half made).
        self.pruned = None;
        self.pruner = None;
        self.intervened_weights = None;
    }

    /// Opens the model on a loader thread while this one reports progress; stops it when the
    /// load is cancelled (the old model stays open).
    fn load(
        &mut self,
        load: LoadModel,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        emit(Event::Loading(Loading {
            path: load.path.clone(),
            fraction: None,
        }));
        let started = Instant::now();
        let progress = Arc::new(model::LoadProgress::default());
        // The old model stays open until the new one has loaded.
        let model = std::thread::scope(|scope| -> anyhow::Result<Model> {
            let loader = std::thread::Builder::new()
                .name("dendrite-loader".into())
                .spawn_scoped(scope, || model::open_with_progress(&load.path, &progress))?;
            let mut reported = 0.0;
            while !loader.is_finished() {
                std::thread::sleep(PROGRESS_INTERVAL);
                if cancel.is_load_cancelled() {
                    progress.cancel();
                }
                let fraction = progress.fraction();
                if fraction >= reported + 0.01 {
                    reported = fraction;
                    emit(Event::Loading(Loading {
                        path: load.path.clone(),
                        fraction: Some(fraction),
                    }));
                }
            }
            match loader.join() {
                Ok(Err(model::ModelError::Cancelled)) => {
                    anyhow::bail!("cancelled (the open model stays)")
                }
                Ok(model) => Ok(model?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        let info = model.info.clone();
        self.model = Some(Arc::new(model));
        self.forget_caches();
        // SAEs belong to the model they were attached to.
        self.saes.clear();
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        emit(Event::ModelLoaded(ModelLoaded {
            fingerprint: crate::describe::corpus::model_fingerprint(&info.path).ok(),
            info,
            duration_ms,
        }));
        Ok(())
    }

    /// The baseline's and the intervened model's continuations, a token of each in turn.
    fn generate(
        &mut self,
        request: GenerateRequest,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let (model, ids) = prompt_ids(self.model.as_ref(), &request.text, request.bos)?;
        let model = &model.clone();
        // The intervened continuation's weights: the model's, or a pruned copy of them.
        let weights = match pruning(&request.interventions) {
            Some(key) => self.pruned_model(model, key)?,
            None => model.clone(),
        };
        let interventions = hook_interventions(
            model,
            &weights.transformer,
            &self.saes,
            &request.interventions,
            &ids,
            request.bos,
        )?;
        let t = &model.transformer;
        let opts = request.options;
        let watch = request
            .watch
            .map(|w| WatchSite::resolve(model, &self.saes, w))
            .transpose()?;
        let capture = HookSpec::capture(watch.iter().map(WatchSite::hook));
        let mut streams = vec![(
            Variant::Baseline,
            Generator::new(t, &ids, capture.clone(), opts.clone())?,
        )];
        if !request.interventions.is_empty() {
            let spec = HookSpec {
                interventions,
                ..capture
            };
            streams.push((
                Variant::Intervened,
                Generator::new(&weights.transformer, &ids, spec, opts)?,
            ));
        }
        let decode = |ids: &[u32]| model.tokenizer.decode(ids);
        let run_id = request.run_id;
        'steps: while streams.iter().any(|(_, g)| !g.is_done()) {
            for (variant, generator) in &mut streams {
                if cancel.is_generation_cancelled(run_id) {
                    // Stopped: what has been generated stays (and can be used as a prompt).
                    streams.iter_mut().for_each(|(_, g)| g.cancel());
                    break 'steps;
                }
                if let Some(token) = generator.step(&decode)?.cloned() {
                    let input_activation = watch
                        .as_ref()
                        .map(|w| w.last_value(generator.last_captures()))
                        .transpose()?;
                    emit(Event::TokenGenerated(TokenGenerated {
                        run_id,
                        variant: *variant,
                        text: model.tokenizer.token_text(token.id),
                        top_texts: model.tokenizer.alternative_texts(&token.top),
                        token,
                        input_activation,
                    }));
                }
            }
        }
        for (variant, generator) in streams {
            let generation = generator.into_generation();
            emit(Event::GenerationFinished(GenerationFinished {
                run_id,
                variant,
                text: model.tokenizer.decode(&generation.generated_ids()),
                generation,
            }));
        }
        Ok(())
    }

    fn run(
        &mut self,
        run: RunPrompt,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let (model, ids) = prompt_ids(self.model.as_ref(), &run.text, run.bos)?;
        let model = model.clone();
        let model = &model;
        // The intervened pass's weights: the model's, or a pruned copy of them.
        let prune = pruning(&run.interventions);
        let weights = match prune {
            Some(key) => self.pruned_model(model, key)?,
            None => model.clone(),
        };
        let n = model.transformer.n_layers();
        let (needed, of_patterns) = crate::memory::run_bytes(
            &model.transformer.dims,
            ids.len(),
            run.patterns,
            !run.interventions.is_empty(),
        );
        let advice = if of_patterns > 0 {
            format!(
                "shorten the prompt, or deselect the head ({} of it are the attention patterns \
                 its inspector shows)",
                crate::memory::human(of_patterns)
            )
        } else {
            "shorten the prompt".to_string()
        };
        crate::memory::check(
            needed,
            crate::memory::available_bytes(),
            &format!("a run of {} tokens", ids.len()),
            &advice,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        // Patterns are `heads × t²` per layer, copied at every rerun: only when shown.
        let patterns = run
            .patterns
            .then(|| "blocks.*.attn.hook_pattern".to_string());
        let mut spec = HookSpec::capture(
            (0..n)
                .flat_map(|l| mlp_hooks(&model.transformer, l))
                .chain(patterns)
                .chain(LENS_HOOKS.iter().map(|s| s.to_string()))
                .chain(self.saes.iter().flat_map(|(_, sae)| sae_apply::hooks(sae))),
        );
        let saes = &self.saes;
        // The baseline always comes first (it calibrates CATS/CHESS and is the "before"). When
        // the UI already holds it unchanged, only its captures are taken from the cache.
        let sent = SentBaseline {
            run_id: run.have_baseline.unwrap_or(0),
            ids: ids.clone(),
            sparsity: run.sparsity,
            saes: saes.iter().map(|(id, _)| *id).collect(),
        };
        let unchanged = self.sent_baseline.as_ref() == Some(&sent)
            && run.have_baseline.is_some()
            && self.baseline.as_ref().is_some_and(|c| {
                model
                    .transformer
                    .unchanged_captures(c, std::slice::from_ref(&ids), &spec)
                    .is_some()
            });
        let baseline = match self.baseline.as_ref().filter(|_| unchanged) {
            Some(cache) => {
                emit(Event::BaselineReused(BaselineReused {
                    run_id: run.run_id,
                    from_run: sent.run_id,
                }));
                // The UI now files that baseline under this run.
                self.sent_baseline = Some(SentBaseline {
                    run_id: run.run_id,
                    ..sent
                });
                cache.captures().clone()
            }
            None => {
                let captures = run_pass(
                    model,
                    saes,
                    &ids,
                    &spec,
                    &mut self.baseline,
                    &mut self.baseline_outputs,
                    None,
                    &run,
                    Variant::Baseline,
                    cancel,
                    emit,
                )?;
                self.sent_baseline = Some(SentBaseline {
                    run_id: run.run_id,
                    ..sent
                });
                captures
            }
        };
        self.last_run = Some(LastRun {
            run_id: run.run_id,
            ids: ids.clone(),
            baseline: baseline.clone(),
            intervened: None,
        });
        if !run.interventions.is_empty() {
            if cancel.is_cancelled(run.run_id) {
                return Ok(());
            }
            spec.interventions = hook_interventions(
                model,
                &weights.transformer,
                saes,
                &run.interventions,
                &ids,
                run.bos,
            )?;
            // Layers before the earliest intervention equal the baseline's (none do when the
            // weights are pruned: every layer has pruned matrices).
            let first_edited = if prune.is_some() {
                0
            } else {
                spec.interventions
                    .iter()
                    .filter_map(|i| model::hooks::hook_stage(&i.hook, n))
                    .min()
                    .unwrap_or(0)
                    .clamp(0, n as isize) as usize
            };
            // A cache of other weights cannot be rerun from.
            if self.intervened_weights != prune {
                self.intervened = None;
                self.intervened_outputs = None;
                self.intervened_weights = prune;
            }
            let intervened = run_pass(
                &weights,
                saes,
                &ids,
                &spec,
                &mut self.intervened,
                &mut self.intervened_outputs,
                Some((&baseline, first_edited)),
                &run,
                Variant::Intervened,
                cancel,
                emit,
            )?;
            if let Some(last) = &mut self.last_run {
                last.intervened = Some((intervened, first_edited));
            }
        } else {
            self.intervened = None;
            self.intervened_outputs = None;
        }
        if run.lens && !cancel.is_cancelled(run.run_id) {
            self.lens(run.run_id, cancel, emit)?;
        }
        Ok(())
    }

    /// The model with its weights pruned as `key` says (kept for the next run with the same
    /// pruning; another pruning replaces it). Checked against free memory first.
    fn pruned_model(&mut self, model: &Arc<Model>, key: PruneKey) -> anyhow::Result<Arc<Model>> {
        if let Some((cached, pruned)) = &self.pruned
            && *cached == key
        {
            return Ok(pruned.clone());
        }
        let (method, scope, bits) = key;
        let sparsity = f32::from_bits(bits) as f64;
        // The old copy goes first: two pruned copies at once are not needed.
        self.pruned = None;
        let transformer = if method.has_magnitude_order() {
            if self.pruner.as_ref().is_none_or(|p| p.scope() != scope) {
                self.pruner = None;
                crate::memory::check(
                    model::prune::MagnitudePruner::bytes_needed(&model.transformer, scope),
                    crate::memory::available_bytes(),
                    "pruning the model's weights",
                    "prune a narrower scope (mlp or attn)",
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                self.pruner = Some(model::prune::MagnitudePruner::new(
                    &model.transformer,
                    scope,
                )?);
            }
            let Some(pruner) = self.pruner.as_mut() else {
                anyhow::bail!("the pruner was not made");
            };
            pruner.set_sparsity(&model.transformer, method, sparsity)?;
            pruner.model().clone()
        } else {
            self.pruner = None;
            crate::memory::check(
                model::prune::bytes_needed(&model.transformer, scope),
                crate::memory::available_bytes(),
                "pruning the model's weights",
                "prune a narrower scope (mlp or attn)",
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            model::prune::prune(&model.transformer, method, scope, sparsity)?.0
        };
        let pruned = Arc::new(Model {
            transformer,
            tokenizer: model.tokenizer.clone(),
            info: model.info.clone(),
        });
        self.pruned = Some((key, pruned.clone()));
        Ok(pruned)
    }

    /// Sends the logit lens of run `run_id`'s passes (nothing when a later run replaced it).
    fn lens(
        &mut self,
        run_id: RunId,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self
            .model
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model is open"))?;
        let Some(last) = self.last_run.as_ref().filter(|r| r.run_id == run_id) else {
            return Ok(());
        };
        let stream = LensStream {
            model,
            run_id,
            cancel,
        };
        // The baseline's lens is reused while the tokens stay the same.
        let base_lens = match self.baseline_lens.take() {
            Some((tokens, lens)) if tokens == last.ids => lens,
            _ => match stream.rows(Variant::Baseline, &last.baseline, Vec::new(), emit)? {
                Some(lens) => lens,
                None => return Ok(()),
            },
        };
        emit(Event::LensReady(LensReady {
            run_id,
            variant: Variant::Baseline,
            lens: base_lens.clone(),
        }));
        if let Some((captures, first_edited)) = &last.intervened {
            // Layers before the earliest edit equal the baseline's: reuse their lens.
            let prefix = base_lens[..*first_edited].to_vec();
            if let Some(edited) = stream.rows(Variant::Intervened, captures, prefix, emit)? {
                emit(Event::LensReady(LensReady {
                    run_id,
                    variant: Variant::Intervened,
                    lens: edited,
                }));
            }
        }
        self.baseline_lens = Some((last.ids.clone(), base_lens));
        Ok(())
    }

    fn probe(&mut self, probe: ProbeHeads) -> anyhow::Result<Event> {
        let model = self.model_or_err()?;
        let started = Instant::now();
        let vocab = model.info.dims.d_vocab as u32;
        let mut tokens =
            repeated_random_tokens(probe.repeat_len, probe.batch.max(1), probe.seed, 1, vocab);
        // A model trained with a BOS attention sink gets one (TL and ARENA prepend it); the
        // scores then use the BOS-shifted stripe.
        let bos = model.tokenizer.bos_prefix(model::BosMode::Auto)?;
        for seq in &mut tokens {
            seq.splice(0..0, bos.iter().copied());
        }
        let scores = score_heads(
            &model.transformer,
            &tokens,
            probe.repeat_len,
            !bos.is_empty(),
        )?;
        Ok(Event::ProbeFinished(ProbeFinished {
            run_id: probe.run_id,
            scores,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        }))
    }

    fn inspect_neuron(&self, n: InspectNeuron) -> anyhow::Result<Event> {
        let model = self.model_or_err()?;
        let column = neuron_direction(model, n.layer, n.neuron)?;
        let (top, bottom) = logit_effects(model, &column, n.k)?;
        Ok(Event::NeuronInfo(NeuronInfo {
            layer: n.layer,
            neuron: n.neuron,
            top,
            bottom,
        }))
    }

    fn attach_sae(&mut self, attach: AttachSae) -> anyhow::Result<Event> {
        let model = self.model_or_err()?;
        let sae = crate::sae::open_with_hook(&attach.path, attach.hook.as_deref())?;
        sae.check_fits(&model.transformer, &model.info.name)?;
        if let Some((id, _)) = self
            .saes
            .iter()
            .find(|(_, s)| s.cfg.path == sae.cfg.path && s.cfg.hook_name == sae.cfg.hook_name)
        {
            anyhow::bail!("this SAE is already attached (#{id})");
        }
        let sae_id = self.next_sae_id;
        self.next_sae_id += 1;
        let cfg = sae.cfg.clone();
        self.saes.push((sae_id, Arc::new(sae)));
        let source = format!("sae:{}", crate::describe::scan::sae_folder_name(&cfg.path));
        Ok(Event::SaeAttached(SaeAttached {
            sae_id,
            fingerprint: crate::describe::corpus::model_fingerprint(&cfg.path).ok(),
            cfg,
            source,
        }))
    }

    /// Runs `body` on a named job thread with the session's [`Background`] (the callers check
    /// that it has one); the worker joins it when it stops.
    fn spawn_job(&mut self, body: impl FnOnce(Background) + Send + 'static) -> anyhow::Result<()> {
        let bg = self
            .background
            .clone()
            .ok_or_else(|| anyhow::anyhow!("this session runs jobs in place"))?;
        let handle = std::thread::Builder::new()
            .name("dendrite-job".into())
            .spawn(move || body(bg))?;
        self.jobs.push(handle);
        Ok(())
    }

    /// Trains a TopK SAE on the open model, saves it and attaches it: on a job thread when
    /// the session has a [`Background`] (prompt runs go on meanwhile), else here.
    fn train_sae(
        &mut self,
        job: TrainSaeJob,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self.shared_model()?;
        if self.background.is_some() {
            return self.spawn_job(move |bg| {
                let trained = bg.run_job(job.job_id, "training an SAE", |emit, cancelled| {
                    train_job(&model, &job, cancelled, emit)
                });
                // The worker attaches it (it owns the attached SAEs).
                if trained == Some(true) {
                    let _ = bg.commands.send(Command::AttachSae(AttachSae {
                        path: job.opts.out,
                        hook: None,
                    }));
                }
            });
        }
        let id = job.job_id;
        if train_job(&model, &job, &|| cancel.is_job_cancelled(id), emit)? {
            let attached = self.attach_sae(AttachSae {
                path: job.opts.out,
                hook: None,
            })?;
            emit(attached);
        }
        Ok(())
    }

    /// Evaluates an attached SAE over held-out text (`sae::eval`), on a job thread when the
    /// session has a [`Background`].
    fn evaluate_sae(
        &mut self,
        job: EvaluateSaeJob,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self.shared_model()?;
        let sae = find_sae(&self.saes, job.sae_id)?.clone();
        let (id, context) = (job.job_id, "evaluating an SAE".to_string());
        self.job(id, context, cancel, emit, move |emit, cancelled| {
            evaluate_job(&model, &sae, &job, cancelled, emit)
        })
    }

    /// Runs a job's body on a job thread when the session has a [`Background`] (its error
    /// becomes an [`Event::Error`] with `context`), else here.
    fn job(
        &mut self,
        job_id: JobId,
        context: String,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
        body: impl FnOnce(&mut dyn FnMut(Event), &dyn Fn() -> bool) -> anyhow::Result<()>
        + Send
        + 'static,
    ) -> anyhow::Result<()> {
        if self.background.is_some() {
            return self.spawn_job(move |bg| {
                bg.run_job(job_id, &context, body);
            });
        }
        body(emit, &|| cancel.is_job_cancelled(job_id))
    }

    /// Scans a corpus into a store (`describe::scan`), on a job thread when the session has a
    /// [`Background`]; progress every batch, cancel between batches (what was scanned is
    /// committed).
    fn scan_corpus(
        &mut self,
        job: ScanCorpusJob,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self.shared_model()?;
        let (id, context) = (
            job.job_id,
            format!("scanning {}", job.opts.corpus.display()),
        );
        self.job(id, context, cancel, emit, move |emit, cancelled| {
            scan_job(&model, &job, cancelled, emit)
        })
    }

    /// A patching sweep, on a job thread when the session has a [`Background`].
    fn patch(
        &mut self,
        job: PatchJob,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self.shared_model()?;
        let (id, context) = (job.job_id, format!("patching {}", job.site.name()));
        self.job(id, context, cancel, emit, move |emit, cancelled| {
            patch_job(&model, job, cancelled, emit)
        })
    }

    /// A pruning or sparsification sweep, on a job thread when the session has a
    /// [`Background`].
    fn sweep(
        &mut self,
        job: SweepJob,
        cancel: &dyn Cancel,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let model = self.shared_model()?;
        let (id, context) = (job.job_id, Command::Sweep(job.clone()).request().1);
        self.job(id, context, cancel, emit, move |emit, cancelled| {
            sweep_job(&model, job, cancelled, emit)
        })
    }

    fn inspect_latent(&self, l: InspectLatent) -> anyhow::Result<Event> {
        let model = self.model_or_err()?;
        let sae = find_sae(&self.saes, l.sae_id)?;
        let direction = sae
            .decoder_direction(l.latent)
            .ok_or_else(|| anyhow::anyhow!("the SAE has {} latents", sae.cfg.d_sae))?;
        let decoder_norm = direction.iter().map(|v| v * v).sum::<f32>().sqrt();
        let hook = sae.cfg.hook_name_out.as_ref().unwrap_or(&sae.cfg.hook_name);
        let n = model.transformer.n_layers();
        let layer = model::hooks::hook_stage(hook, n).unwrap_or(-1);
        // In the residual basis the direction reads straight through W_U (like W_out · W_U);
        // on MLP neurons it goes through W_out first.
        let residual = if hook.ends_with("mlp.hook_post") && layer >= 0 {
            let block = &model.transformer.blocks[layer as usize];
            let x = candle_core::Tensor::from_vec(
                direction.to_vec(),
                (1, direction.len()),
                &candle_core::Device::Cpu,
            )?;
            Some(
                block
                    .mlp
                    .down
                    .forward(&x)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        } else if RESIDUAL_BASIS_SITES.iter().any(|site| hook.ends_with(site)) {
            Some(direction.to_vec())
        } else {
            None
        };
        let (top, bottom, note) = match residual {
            Some(d) => {
                let (top, bottom) = logit_effects(model, &d, l.k)?;
                (top, bottom, None)
            }
            None => (
                Vec::new(),
                Vec::new(),
                Some(format!(
                    "{hook} is not in the residual-stream basis: no direct logit effects"
                )),
            ),
        };
        Ok(Event::LatentInfo(LatentInfo {
            sae_id: l.sae_id,
            latent: l.latent,
            decoder_norm,
            top,
            bottom,
            note,
            training_log10_density: sae.log10_density().map(|d| d[l.latent]),
        }))
    }
}

/// Trains and saves (`sae::train`), reporting every step; `Ok(true)` when it finished and
/// saved, `Ok(false)` when cancelled.
fn train_job(
    model: &Model,
    job: &TrainSaeJob,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<bool> {
    let id = job.job_id;
    let result = crate::sae::train::train_with_model(model, &job.opts, &mut |p| {
        emit(Event::JobProgress(JobProgress {
            job_id: id,
            fraction: p.step as f32 / p.steps.max(1) as f32,
            message: format!(
                "step {}/{} · loss {:.4} · L0 {:.1} · FVE {:.3} · dead {:.3} · {:.0} tok/s",
                p.step, p.steps, p.loss, p.l0, p.fve, p.dead_frac, p.tokens_per_s
            ),
            train: Some(p.clone()),
        }));
        if cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let outcome = match result {
        Ok((_, report)) => JobOutcome::Trained {
            out: job.opts.out.clone(),
            fve: report.eval.fve,
            l0: report.eval.l0,
            tokens_per_s: report.tokens_per_s,
        },
        Err(e) if e.downcast_ref::<crate::sae::train::Cancelled>().is_some() => {
            JobOutcome::Cancelled
        }
        Err(e) => return Err(e),
    };
    let trained = matches!(outcome, JobOutcome::Trained { .. });
    emit(Event::JobFinished(JobFinished {
        job_id: id,
        outcome,
    }));
    Ok(trained)
}

fn scan_job(
    model: &Model,
    job: &ScanCorpusJob,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    let id = job.job_id;
    let mut last_report = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let summary = crate::describe::scan(
        model,
        &job.opts,
        &mut |p| {
            // A few reports a second are enough for a progress bar.
            if last_report.elapsed() < std::time::Duration::from_millis(200) {
                return;
            }
            last_report = std::time::Instant::now();
            let fraction = match p.total_windows {
                Some(total) => p.windows as f32 / total.max(1) as f32,
                None => p.files_done as f32 / p.files_total.max(1) as f32,
            };
            let eta = p
                .total_windows
                .filter(|_| p.tokens_per_s > 0.0 && p.windows > 0)
                .map(|total| {
                    let per_window = p.elapsed_s / p.windows as f64;
                    format!(
                        " · ETA {:.0} s",
                        per_window * total.saturating_sub(p.windows) as f64
                    )
                })
                .unwrap_or_default();
            emit(Event::JobProgress(JobProgress {
                job_id: id,
                fraction: fraction.clamp(0.0, 1.0),
                message: format!(
                    "{} windows · {} tokens · {:.0} tok/s{eta}",
                    p.windows, p.tokens, p.tokens_per_s
                ),
                train: None,
            }));
        },
        cancelled,
    )?;
    emit(Event::JobFinished(JobFinished {
        job_id: id,
        outcome: JobOutcome::Scanned {
            store: summary.store,
            windows: summary.windows,
            tokens: summary.tokens,
            tokens_per_s: summary.tokens_per_s,
            complete: summary.complete,
        },
    }));
    Ok(())
}

/// Auto-interpretation on its own thread while this one reports its progress (explain's
/// progress comes from its worker threads) and passes a cancel on.
fn explain_job(
    job: &ExplainUnitsJob,
    model: Option<Arc<Model>>,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let id = job.job_id;
    let stop = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, usize, usize)>();
    let estimate = job.opts.estimated_requests();
    let summary = std::thread::scope(|scope| {
        let runner = std::thread::Builder::new()
            .name("dendrite-explain".into())
            .spawn_scoped(scope, || {
                crate::describe::interp::explain_with_model(
                    &job.opts,
                    model,
                    &|done, total, requests| {
                        let _ = tx.send((done, total, requests));
                    },
                    &|| stop.load(Ordering::SeqCst),
                )
            })?;
        while !runner.is_finished() {
            if cancelled() {
                stop.store(true, Ordering::SeqCst);
            }
            while let Ok((done, total, requests)) = rx.try_recv() {
                emit(Event::JobProgress(JobProgress {
                    job_id: id,
                    fraction: done as f32 / total.max(1) as f32,
                    message: format!(
                        "{done} of {total} units · {requests} of ≈ {estimate} requests"
                    ),
                    train: None,
                }));
            }
            std::thread::sleep(PROGRESS_INTERVAL);
        }
        match runner.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })?;
    let explained = summary
        .units
        .iter()
        .filter(|u| u.explanation.is_some())
        .count();
    let scored = summary
        .units
        .iter()
        .filter(|u| u.scores.iter().any(|s| s.scores.headline().is_some()))
        .count();
    emit(Event::JobFinished(JobFinished {
        job_id: id,
        // Cancelled or not, what was explained is in the store.
        outcome: JobOutcome::Explained {
            store: job.opts.store.clone(),
            source: job.opts.source.clone(),
            units: job.opts.units.len(),
            explained,
            scored,
            requests: summary.requests,
        },
    }));
    Ok(())
}

/// Evaluates `sae` over the held-out part of the job's corpus, reporting every sequence.
fn evaluate_job(
    model: &Model,
    sae: &Arc<Sae>,
    job: &EvaluateSaeJob,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    let corpus = crate::corpus::read_corpus(&job.corpus)?;
    let context = crate::sae::train::context_for(model, None)?;
    let sequences =
        crate::sae::train::token_sequences(model, &corpus.validation, context, job.tokens)?;
    if sequences.is_empty() {
        anyhow::bail!(
            "the held-out part of {} has no sequence of {context} tokens",
            job.corpus.display()
        );
    }
    let id = job.job_id;
    let opts = crate::sae::eval::EvalOptions::default();
    let result = crate::sae::eval::evaluate(model, sae, &sequences, &opts, &mut |p| {
        let done = (p.pass as usize - 1) * p.sequences + p.sequences_done;
        emit(Event::JobProgress(JobProgress {
            job_id: id,
            fraction: done as f32 / (2 * p.sequences).max(1) as f32,
            message: format!(
                "{} · sequence {}/{}",
                if p.pass == 1 {
                    "mean activation"
                } else {
                    "metrics"
                },
                p.sequences_done,
                p.sequences
            ),
            train: None,
        }));
        if cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let outcome = match result {
        Ok(report) => JobOutcome::Evaluated {
            sae_id: job.sae_id,
            report: Box::new(report),
        },
        Err(_) if cancelled() => JobOutcome::Cancelled,
        Err(e) => return Err(e.into()),
    };
    emit(Event::JobFinished(JobFinished {
        job_id: id,
        outcome,
    }));
    Ok(())
}

/// A watched unit, checked against the model and its SAEs.
enum WatchSite {
    Neuron { hook: String, neuron: usize },
    Latent { sae: Arc<Sae>, latent: usize },
}

impl WatchSite {
    fn resolve(model: &Model, saes: &[(SaeId, Arc<Sae>)], watch: Watch) -> anyhow::Result<Self> {
        match watch {
            Watch::Neuron { layer, neuron } => {
                let dims = &model.transformer.dims;
                if layer >= dims.n_layers || neuron >= dims.d_mlp {
                    anyhow::bail!("no neuron L{layer}.N{neuron} in this model");
                }
                Ok(WatchSite::Neuron {
                    hook: format!("blocks.{layer}.mlp.hook_post"),
                    neuron,
                })
            }
            Watch::Latent { sae_id, latent } => {
                let sae = find_sae(saes, sae_id)?;
                if latent >= sae.cfg.d_sae {
                    anyhow::bail!("SAE #{sae_id} has {} latents", sae.cfg.d_sae);
                }
                Ok(WatchSite::Latent {
                    sae: sae.clone(),
                    latent,
                })
            }
        }
    }

    fn hook(&self) -> String {
        match self {
            WatchSite::Neuron { hook, .. } => hook.clone(),
            WatchSite::Latent { sae, .. } => sae.cfg.hook_name.clone(),
        }
    }

    /// The unit's activation at the last captured position.
    fn last_value(&self, captures: &model::Captures) -> anyhow::Result<f32> {
        let (values, n) = sae_apply::hook_rows(captures, &self.hook(), 0)?;
        if n == 0 {
            anyhow::bail!("{} captured no positions", self.hook());
        }
        let last = &values[values.len() / n * (n - 1)..];
        match self {
            WatchSite::Neuron { neuron, .. } => last
                .get(*neuron)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("{} has {} neurons", self.hook(), last.len())),
            WatchSite::Latent { sae, latent } => Ok(sae.encode(last, 1)?.row(0)[*latent]),
        }
    }
}

fn find_sae(saes: &[(SaeId, Arc<Sae>)], sae_id: SaeId) -> anyhow::Result<&Arc<Sae>> {
    saes.iter()
        .find(|(id, _)| *id == sae_id)
        .map(|(_, s)| s)
        .ok_or_else(|| anyhow::anyhow!("no SAE #{sae_id} is attached"))
}

/// Hook sites whose vectors live in the residual stream's basis (what `W_U` reads). Judged by
/// name, not width: per-head sites (`attn.hook_z`, …) can have the residual width too.
const RESIDUAL_BASIS_SITES: [&str; 6] = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_embed",
];

/// `W_out[:, neuron]` of layer `layer`: what the neuron writes to the residual stream.
fn neuron_direction(model: &Model, layer: usize, neuron: usize) -> anyhow::Result<Vec<f32>> {
    let down = &model
        .transformer
        .blocks
        .get(layer)
        .ok_or_else(|| anyhow::anyhow!("no layer {layer}"))?
        .mlp
        .down
        .weight;
    if neuron >= down.cols() {
        anyhow::bail!("layer {layer} has {} neurons", down.cols());
    }
    Ok((0..down.rows()).map(|r| down.row(r)[neuron]).collect())
}

/// The `k` tokens whose logits a residual-stream direction raises most and lowers most
/// (`direction · W_U`, no final norm: the direct effect per unit).
fn logit_effects(
    model: &Model,
    direction: &[f32],
    k: usize,
) -> anyhow::Result<(Vec<LogitEffect>, Vec<LogitEffect>)> {
    let x = candle_core::Tensor::from_vec(
        direction.to_vec(),
        (1, direction.len()),
        &candle_core::Device::Cpu,
    )?;
    let effects: Vec<f32> = model
        .transformer
        .unembed
        .forward(&x)?
        .flatten_all()?
        .to_vec1()?;
    let entry = |i: usize| LogitEffect {
        id: i as u32,
        token: model.tokenizer.token_text(i as u32),
        effect: effects[i],
    };
    let negated: Vec<f32> = effects.iter().map(|e| -e).collect();
    Ok((
        top_k_by_value(&effects, k)
            .into_iter()
            .map(|(i, _)| entry(i))
            .collect(),
        top_k_by_value(&negated, k)
            .into_iter()
            .map(|(i, _)| entry(i))
            .collect(),
    ))
}

/// The open model and a prompt's token ids (never empty). A free function so that it borrows
/// only the session's model, not the whole session.
fn prompt_ids<'m>(
    model: Option<&'m Arc<Model>>,
    text: &str,
    bos: model::BosMode,
) -> anyhow::Result<(&'m Arc<Model>, Vec<u32>)> {
    let model = model.ok_or_else(|| anyhow::anyhow!("no model is open"))?;
    let ids = model.encode_prompt(text, bos)?;
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    Ok((model, ids))
}

/// The engine intervention an edit stands for.
fn resolve(
    model: &Model,
    saes: &[(SaeId, Arc<Sae>)],
    edit: &Edit,
    bos: model::BosMode,
) -> anyhow::Result<model::Intervention> {
    match edit {
        Edit::Hook(i) => Ok(i.clone()),
        // Passes turn these into weights and calibrated cuts (`hook_interventions`).
        Edit::Prune { .. } => {
            anyhow::bail!("pruning changes the weights, not a hook: it applies to whole passes")
        }
        Edit::Sparsify { .. } => {
            anyhow::bail!("sparsification is calibrated on a prompt: it applies to whole passes")
        }
        &Edit::SteerNeuron {
            layer,
            neuron,
            scale,
        } => Ok(model::Intervention::steer(
            format!("blocks.{layer}.hook_resid_post"),
            neuron_direction(model, layer, neuron)?.into(),
            scale,
        )),
        Edit::ResampleHead {
            layer,
            head,
            source,
        } => {
            let t = &model.transformer;
            if *layer >= t.n_layers() || *head >= t.dims.n_heads {
                anyhow::bail!("no head L{layer}.H{head} in this model");
            }
            let ids = model.encode_prompt(source, bos)?;
            if ids.is_empty() {
                anyhow::bail!("the resample source prompt is empty");
            }
            let hook = format!("blocks.{layer}.attn.hook_z");
            let out = t.forward(
                std::slice::from_ref(&ids),
                &HookSpec::capture([hook.clone()]),
                &mut model::NoObserver,
            )?;
            // `[1, t, heads, d_head]` → this head's `[t, d_head]`.
            let z = out
                .captures
                .get(&hook)
                .ok_or_else(|| anyhow::anyhow!("{hook} was not captured"))?
                .get(0)?
                .narrow(1, *head, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(model::Intervention::ablate_head(
                *layer,
                *head,
                model::AblationMode::Resample { values: z.into() },
            ))
        }
        Edit::Patch {
            site,
            layer,
            cell,
            source,
        } => {
            let t = &model.transformer;
            let cells = match site {
                crate::analysis::patching::Site::Z => t.dims.n_heads,
                _ => usize::MAX,
            };
            if *layer >= t.n_layers() || *cell >= cells {
                anyhow::bail!("no {} cell L{layer}.{cell} in this model", site.name());
            }
            let ids = model.encode_prompt(source, bos)?;
            let hook = site.hook(*layer);
            let out = t.forward(
                std::slice::from_ref(&ids),
                &HookSpec::capture([hook.clone()]),
                &mut model::NoObserver,
            )?;
            let values = out
                .captures
                .get(&hook)
                .ok_or_else(|| anyhow::anyhow!("{hook} was not captured"))?
                .get(0)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(crate::analysis::patching::intervention(
                *site,
                *layer,
                *cell,
                values.into(),
                t.dims.d_head,
            ))
        }
        Edit::SaeLatent {
            sae_id,
            latent,
            op,
            positions,
        } => {
            let sae = find_sae(saes, *sae_id)?.clone();
            Ok(crate::sae::steer::latent_clamp(
                sae,
                &sae_id.to_string(),
                *latent,
                *op,
                positions.clone(),
            ))
        }
        Edit::SteerLatent {
            sae_id,
            latent,
            mode,
            positions,
        } => Ok(find_sae(saes, *sae_id)?.steering(*latent, *mode, positions.clone())?),
    }
}

/// The hook interventions of `edits` for a pass over `ids` on `weights`: a pruning edit is
/// the weights themselves, and a sparsification one cut per MLP with its thresholds calibrated
/// on `ids`.
fn hook_interventions(
    model: &Model,
    weights: &model::Transformer,
    saes: &[(SaeId, Arc<Sae>)],
    edits: &[Edit],
    ids: &[u32],
    bos: model::BosMode,
) -> anyhow::Result<Vec<model::Intervention>> {
    let mut out = Vec::with_capacity(edits.len());
    for edit in edits {
        match edit {
            Edit::Prune { .. } => {}
            Edit::Sparsify { method } => {
                let rules = crate::analysis::sparsify::calibrate(
                    weights,
                    *method,
                    std::slice::from_ref(&ids.to_vec()),
                )?;
                out.extend(crate::analysis::sparsify::interventions(
                    weights,
                    &rules,
                    &method.to_string(),
                ));
            }
            _ => out.push(resolve(model, saes, edit, bos)?),
        }
    }
    Ok(out)
}

/// A patching sweep on a job thread: progress every few patches, cancel between patches.
fn patch_job(
    model: &Model,
    job: PatchJob,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    use crate::analysis::patching::{PatchRequest, patch};
    let clean = model.encode_prompt(&job.clean, job.bos)?;
    let corrupt = model.encode_prompt(&job.corrupt, job.bos)?;
    let request = PatchRequest {
        answer: model
            .single_token(&job.answer)
            .map_err(|e| anyhow::anyhow!("the answer: {e}"))?,
        wrong: model
            .single_token(&job.wrong)
            .map_err(|e| anyhow::anyhow!("the wrong token: {e}"))?,
        clean,
        corrupt,
        site: job.site,
        direction: job.direction,
    };
    let started = Instant::now();
    // Patches finish on pool threads; their progress goes through a channel to this one.
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, usize)>();
    let job_id = job.job_id;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let sweep = scope.spawn(|| {
            patch(&model.transformer, &request, &|done, total| {
                let _ = tx.send((done, total));
                !stop.load(std::sync::atomic::Ordering::SeqCst)
            })
        });
        let mut last = Instant::now();
        while !sweep.is_finished() {
            if cancelled() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if let Ok((done, total)) = rx.recv_timeout(std::time::Duration::from_millis(50))
                && last.elapsed() > std::time::Duration::from_millis(100)
            {
                last = Instant::now();
                emit(Event::JobProgress(JobProgress {
                    job_id,
                    fraction: done as f32 / total.max(1) as f32,
                    message: format!("{done} of {total} patches"),
                    train: None,
                }));
            }
        }
        sweep.join()
    });
    let result = match result {
        Ok(Ok(r)) => r,
        Ok(Err(ModelError::Cancelled)) => {
            emit(Event::JobFinished(JobFinished {
                job_id,
                outcome: JobOutcome::Cancelled,
            }));
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => anyhow::bail!("the patching sweep stopped with an internal error"),
    };
    let texts = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .map(|&id| model.tokenizer.token_text(id))
            .collect()
    };
    emit(Event::JobFinished(JobFinished {
        job_id,
        outcome: JobOutcome::Patched(Box::new(PatchReport {
            clean_tokens: texts(&request.clean),
            corrupt_tokens: texts(&request.corrupt),
            job,
            result,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })),
    }));
    Ok(())
}

/// A sweep on a job thread: progress after every measured point, cancel between points.
fn sweep_job(
    model: &Model,
    job: SweepJob,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    use crate::analysis::sweep::{SparsifyText, prune_sweep, sequences, sparsify_sweep};
    let job_id = job.job_id;
    let seqs = sequences(model, &job.text)?;
    let mut step = |done: usize, total: usize, said: &str| {
        emit(Event::JobProgress(JobProgress {
            job_id,
            fraction: done as f32 / total.max(1) as f32,
            message: said.to_string(),
            train: None,
        }));
        if cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let t = &model.transformer;
    let report = match &job.kind {
        SweepKind::Prune {
            method,
            scope,
            levels,
        } => {
            // Each level holds one pruned copy of the scope's weights while it is measured.
            crate::memory::check(
                crate::model::prune::bytes_needed(t, *scope),
                crate::memory::available_bytes(),
                "sweeping pruning sparsities",
                "prune a narrower scope (mlp or attn)",
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            prune_sweep(t, *method, *scope, levels, &seqs, &mut step)?.map(SweepReport::Prune)
        }
        SweepKind::Sparsify {
            methods,
            search,
            ppl_p,
            calibration,
        } => {
            let first_scored = |seq: &[u32]| model.tokenizer.first_scored(seq);
            let calibration_seqs = match calibration {
                Some(text) => Some(sequences(model, text)?),
                None => None,
            };
            let text = SparsifyText {
                seqs: &seqs,
                calibration: calibration_seqs.as_deref().unwrap_or(&seqs),
                first_scored: &first_scored,
            };
            sparsify_sweep(t, methods, *search, *ppl_p, &text, &mut step)?
                .map(SweepReport::Sparsify)
        }
    };
    emit(Event::JobFinished(JobFinished {
        job_id,
        outcome: match report {
            Some(report) => JobOutcome::Swept(Box::new(report)),
            None => JobOutcome::Cancelled,
        },
    }));
    Ok(())
}

/// A cancelled pass is not an error: report it as [`Event::Cancelled`].
fn cancelled(run_id: RunId, e: anyhow::Error, emit: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
    match e.downcast_ref::<ModelError>() {
        Some(ModelError::Cancelled) => {
            emit(Event::Cancelled(Cancelled { run_id }));
            Ok(())
        }
        _ => Err(e),
    }
}

/// Streams one pass: a [`LayerReady`] per layer as soon as it is computed (and, for layers
/// reused from the cache, right after), then [`RunFinished`]. Returns the pass's captures.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    model: &Model,
    saes: &[(SaeId, Arc<Sae>)],
    ids: &[u32],
    spec: &HookSpec,
    cache: &mut Option<ResidCache>,
    outputs: &mut Option<PassOutputs>,
    baseline: Option<(&Captures, usize)>,
    run: &RunPrompt,
    variant: Variant,
    cancel: &dyn Cancel,
    emit: &mut dyn FnMut(Event),
) -> anyhow::Result<Captures> {
    let started = Instant::now();
    let t = &model.transformer;
    // Set again only when this pass completes, so they always match `cache`.
    let previous = outputs.take();
    emit(Event::RunStarted(RunStarted {
        run_id: run.run_id,
        variant,
        token_ids: ids.to_vec(),
        tokens: ids
            .iter()
            .map(|&id| model.tokenizer.token_text(id))
            .collect(),
        n_layers: t.n_layers(),
    }));
    // An intervened pass's layers before its first edit are the baseline's: the UI copies
    // their summaries rather than the worker recomputing and resending them.
    let same_as_baseline = baseline.map_or(0, |(_, first_edited)| first_edited);
    if same_as_baseline > 0 {
        emit(Event::LayersFromBaseline(LayersFromBaseline {
            run_id: run.run_id,
            through: same_as_baseline,
        }));
    }
    let mut observer = Streamer {
        model,
        saes,
        sae_sent: vec![false; saes.len()],
        run,
        variant,
        calibration: baseline.map(|(captures, _)| captures),
        cancel,
        emit: &mut *emit,
        error: None,
        next_layer: same_as_baseline,
        first_scored: model.tokenizer.first_scored(ids),
    };
    // Rows before the first recomputed position keep their predictions and losses, which
    // only `previous` holds (the pass unembeds only the rows it recomputes): without them,
    // every row is recomputed.
    let previous = previous.filter(|o| o.ids == ids && o.predictions.len() == ids.len());
    if previous.is_none() {
        *cache = None;
    }
    let batch = [ids.to_vec()];
    // Each block of recomputed rows becomes predictions and losses at once; no
    // `positions × vocab` logits are kept.
    let vocab = t.dims.d_vocab;
    let mut rows: Vec<(usize, Vec<Vec<Prediction>>, Vec<f32>)> = Vec::new();
    let mut on_rows = |first: usize, logits: &[f32]| -> model::Result<()> {
        let (top, nll) = next_tokens(logits, vocab, ids.get(first..).unwrap_or_default(), TOP_K);
        rows.push((first, top, nll));
        Ok(())
    };
    let result = t.forward_cached_with(
        &batch,
        spec,
        cache,
        &mut observer,
        &mut Unembed::Blocks(&mut on_rows),
    );
    // A failed summary stops the pass (as a cancellation): report the failure itself.
    if let Some(e) = observer.error.take() {
        return Err(e);
    }
    let out = result?;
    // With every layer reused from the cache, none streamed: report them now (and SAEs on
    // hooks after the last layer).
    observer.report_through(t.n_layers(), &out.captures, true);
    if let Some(e) = observer.error.take() {
        return Err(e);
    }
    // Rows before the first recomputed one are the previous pass's.
    let first = out.recomputed_from_position.min(ids.len());
    let (mut predictions, mut per_token_nll) = match previous {
        Some(o) if first > 0 => (
            o.predictions[..first].to_vec(),
            o.per_token_nll[..first.min(o.per_token_nll.len())].to_vec(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    for (from, top, nll) in rows {
        if from != predictions.len() {
            anyhow::bail!(
                "the pass unembedded rows from position {from}, expected {}",
                predictions.len()
            );
        }
        predictions.extend(top.iter().map(|p| named(model, p)));
        per_token_nll.extend(nll);
    }
    if predictions.len() != ids.len() {
        anyhow::bail!(
            "the pass left predictions for {} of {} positions",
            predictions.len(),
            ids.len()
        );
    }
    emit(Event::RunFinished(RunFinished {
        run_id: run.run_id,
        variant,
        per_token_nll: per_token_nll.clone(),
        predictions: predictions.clone(),
        recomputed_from: out.recomputed_from,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    }));
    *outputs = Some(PassOutputs {
        ids: ids.to_vec(),
        predictions,
        per_token_nll,
    });
    Ok(out.captures)
}

/// Computes a pass's logit lens layer by layer, sending each row as it is done.
struct LensStream<'a> {
    model: &'a Model,
    run_id: RunId,
    cancel: &'a dyn Cancel,
}

impl LensStream<'_> {
    /// The lens of a pass whose first rows (`known`, e.g. the layers before an edit) are
    /// already computed; `None` when a newer run cancels it between layers.
    fn rows(
        &self,
        variant: Variant,
        captures: &Captures,
        known: Lens,
        emit: &mut dyn FnMut(Event),
    ) -> anyhow::Result<Option<Lens>> {
        let mut lens = known;
        let send = |emit: &mut dyn FnMut(Event), first_layer: usize, rows: Lens| {
            emit(Event::LensRows(LensRows {
                run_id: self.run_id,
                variant,
                first_layer,
                rows,
            }))
        };
        if !lens.is_empty() {
            send(emit, 0, lens.clone());
        }
        for layer in lens.len()..self.model.transformer.n_layers() {
            if self.cancel.is_cancelled(self.run_id) {
                return Ok(None);
            }
            let row: Vec<Vec<TokenPrediction>> =
                logit_lens_layer(&self.model.transformer, captures, 0, TOP_K, layer)?
                    .iter()
                    .map(|p| named(self.model, p))
                    .collect();
            send(emit, layer, vec![row.clone()]);
            lens.push(row);
        }
        Ok(Some(lens))
    }
}

fn named(model: &Model, predictions: &[crate::analysis::lens::Prediction]) -> Vec<TokenPrediction> {
    predictions
        .iter()
        .map(|p| TokenPrediction {
            id: p.id,
            token: model.tokenizer.token_text(p.id),
            prob: p.prob,
        })
        .collect()
}

/// One layer's summary from a pass's captures.
fn summarize(
    model: &Model,
    layer: usize,
    captures: &Captures,
    calibration: Option<&Captures>,
    method: Method,
    patterns_wanted: bool,
    first_scored: usize,
) -> anyhow::Result<LayerSummary> {
    let get = |name: String| -> anyhow::Result<&candle_core::Tensor> {
        captures
            .get(&name)
            .ok_or_else(|| anyhow::anyhow!("{name} was not captured"))
    };
    let post = get(format!("blocks.{layer}.mlp.hook_post"))?.get(0)?;
    let (n_tokens, d_mlp) = post.dims2()?;
    let n_heads = model.transformer.dims.n_heads;
    // CATS/CHESS thresholds come from the baseline pass (the pass itself when it is the baseline).
    let calibration = [calibration.unwrap_or(captures)];
    // Copied once, straight into the event's buffer (a `Vec` first, then an `Arc`, was two).
    let shared =
        |t: &candle_core::Tensor| model::transformer::with_f32_slice(t, |v| Arc::<[f32]>::from(v));
    // Copied before it is measured: the copy reads the activations from memory (a rerun's
    // weights pushed them out of the caches), the measure then finds them in L2.
    let mlp_post = shared(&post)?;
    let sparsity = measure_mlp_layer(
        &model.transformer,
        layer,
        captures,
        &calibration,
        method,
        first_scored,
    )?;
    // A run that did not ask for patterns (or a cached pass that has them when this run
    // does not need them) sends none.
    let patterns = match captures.get(&format!("blocks.{layer}.attn.hook_pattern")) {
        Some(pattern) if patterns_wanted => shared(&pattern.get(0)?)?,
        _ => Arc::from([]),
    };
    Ok(LayerSummary {
        layer,
        n_tokens,
        d_mlp,
        n_heads,
        mlp_post,
        sparsity,
        patterns,
    })
}

/// Sends each layer's summary as the pass completes it, and cancels between layers when a
/// newer request arrives.
struct Streamer<'a> {
    model: &'a Model,
    saes: &'a [(SaeId, Arc<Sae>)],
    /// Which SAEs' feature maps have been sent.
    sae_sent: Vec<bool>,
    run: &'a RunPrompt,
    variant: Variant,
    calibration: Option<&'a Captures>,
    cancel: &'a dyn Cancel,
    emit: &'a mut dyn FnMut(Event),
    error: Option<anyhow::Error>,
    /// The first layer not reported yet (layers reused from the cache are reported, in order,
    /// before the first recomputed one).
    next_layer: usize,
    /// Leading special tokens (a BOS), which temporal sparsity does not score.
    first_scored: usize,
}

impl Streamer<'_> {
    /// Reports every layer below `end` not reported yet, and each SAE whose hooks are then
    /// complete, in order.
    fn report_through(&mut self, end: usize, captures: &Captures, pass_done: bool) {
        let n = self.model.transformer.n_layers();
        // Layers that are all ready at once (a new sparsity method, a pass reused from the
        // cache) are summarised in parallel, then sent in order.
        let summaries: Vec<anyhow::Result<LayerSummary>> = (self.next_layer..end)
            .into_par_iter()
            .map(|layer| {
                summarize(
                    self.model,
                    layer,
                    captures,
                    self.calibration,
                    self.run.sparsity,
                    self.run.patterns,
                    self.first_scored,
                )
            })
            .collect();
        for summary in summaries {
            if self.error.is_some() {
                break;
            }
            match summary {
                Ok(summary) => (self.emit)(Event::LayerReady(LayerReady {
                    run_id: self.run.run_id,
                    variant: self.variant,
                    summary: Arc::new(summary),
                })),
                Err(e) => self.error = Some(e),
            }
            self.next_layer += 1;
        }
        for (i, (sae_id, sae)) in self.saes.iter().enumerate() {
            // The stage of its last hook (embeddings count as before layer 0).
            let stage = sae_apply::hooks(sae)
                .iter()
                .filter_map(|h| model::hooks::hook_stage(h, n))
                .max()
                .unwrap_or(n as isize);
            let ready = pass_done || stage < self.next_layer as isize;
            if self.sae_sent[i] || self.error.is_some() || !ready {
                continue;
            }
            self.sae_sent[i] = true;
            match sae_apply::summarize(sae, captures, 0) {
                Ok(summary) => (self.emit)(Event::SaeReady(SaeReady {
                    run_id: self.run.run_id,
                    variant: self.variant,
                    sae_id: *sae_id,
                    summary: Arc::new(summary),
                })),
                Err(e) => self.error = Some(e.into()),
            }
        }
    }
}

impl LayerObserver for Streamer<'_> {
    fn layer_done(&mut self, done: &LayerDone<'_>) {
        self.report_through(done.layer + 1, done.captures, false);
    }

    fn is_cancelled(&self) -> bool {
        self.error.is_some() || self.cancel.is_cancelled(self.run.run_id)
    }
}
