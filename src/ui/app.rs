//! The eframe app: drains worker events in `logic` (within a time budget), lays out the panels
//! in `ui`, and turns the views' actions into state changes and worker commands.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Key, KeyboardShortcut, Modifiers};

use super::autosave::{self, Autosave};
use super::export::Placement;
use super::session::{self, SessionFile, SessionPrompt};
use super::state::{Action, AppState, Effect, FigureFormat, Tab, View};
use super::views;
use crate::worker::stores::{StoreCommand, StoreHandle};
use crate::worker::{Command, Event, WorkerHandle};

/// The prompt a fresh install starts with: repeated text, so induction is visible at once.
pub const DEFAULT_PROMPT: &str =
    "To be, or not to be, that is the question. To be, or not to be, that is the question.";

/// Longest time `logic` spends draining events per frame (keeps frames smooth while a run
/// streams).
const DRAIN_BUDGET: Duration = Duration::from_millis(6);

pub struct DendriteApp {
    pub state: AppState,
    worker: WorkerHandle,
    /// The thread that reads corpus stores (examples, descriptions, search).
    stores: StoreHandle,
    /// Frame times (ms) of the last frames, for the performance readout and benchmarks.
    pub frame_times_ms: Vec<f32>,
    last_frame: Option<Instant>,
    /// Where each exportable view was drawn last frame.
    placements: Vec<(View, Placement)>,
    /// The exportable view clicked last (Ctrl+E exports the one under the pointer, else it).
    last_clicked_view: Option<View>,
    /// Results of PNG exports, reported by the thread that rasterizes them.
    export_results: (
        crossbeam_channel::Sender<String>,
        crossbeam_channel::Receiver<String>,
    ),
    ctx: egui::Context,
    /// Where exports are written.
    pub export_dir: PathBuf,
    /// SAEs to attach when the next model has loaded (given on the command line).
    pub attach_on_load: Vec<PathBuf>,
    /// A session being restored: its model is loading or its SAEs attaching; adopted once
    /// they all have answered.
    restoring: Option<Box<SessionFile>>,
    /// This process's recovery file, written as the session changes (none under tests that
    /// do not ask for it).
    autosave: Option<Autosave>,
    /// Corpus stores to open when the next model has loaded (given on the command line).
    pub stores_on_load: Vec<PathBuf>,
    /// Attach requests not answered yet: the prompt reruns once they all are, so that one
    /// run brings every new feature map (not one run per SAE, nor one before them).
    attaches_pending: usize,
    /// The generation sent last and when, until its first token arrives (time to first token).
    generate_sent: Option<(crate::worker::RunId, Instant)>,
}

/// What survives a restart.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Persisted {
    recent_models: Vec<PathBuf>,
    prompt: String,
    /// Corpus stores by the fingerprint of their model.
    #[serde(default)]
    stores: std::collections::BTreeMap<String, Vec<PathBuf>>,
}

const STORAGE_KEY: &str = "dendrite";

impl DendriteApp {
    /// Starts the worker and asks it to open `model` (if any).
    pub fn new(
        ctx: &egui::Context,
        storage: Option<&dyn eframe::Storage>,
        model: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        // Token texts come from model vocabularies: draw a box for what no font covers.
        ctx.set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
        ctx.set_fonts(font_definitions());
        let repaint = ctx.clone();
        let worker = WorkerHandle::spawn(move || repaint.request_repaint())?;
        let repaint = ctx.clone();
        let stores = StoreHandle::spawn(move || repaint.request_repaint())?;
        let persisted: Persisted = storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        let mut state = AppState::default();
        state.recent_models = persisted.recent_models;
        state.stores.remembered = persisted.stores;
        state.prompt = if persisted.prompt.is_empty() {
            DEFAULT_PROMPT.to_string()
        } else {
            persisted.prompt
        };
        if let Some(path) = model {
            for effect in state.act(Action::Open(path)) {
                if let Effect::Worker(cmd) = effect {
                    worker.send(cmd);
                }
            }
        }
        Ok(DendriteApp {
            state,
            worker,
            stores,
            frame_times_ms: Vec::new(),
            last_frame: None,
            placements: Vec::new(),
            last_clicked_view: None,
            export_results: crossbeam_channel::bounded(16),
            ctx: ctx.clone(),
            export_dir: super::export::export_dir(),
            attach_on_load: Vec::new(),
            restoring: None,
            autosave: None,
            stores_on_load: Vec::new(),
            attaches_pending: 0,
            generate_sent: None,
        })
    }

    /// Starts writing the session to a recovery file in `dir` as it changes, and asks whether
    /// to restore what a process that died left there.
    pub fn enable_recovery(&mut self, dir: &std::path::Path) -> anyhow::Result<()> {
        if let Some(orphan) = autosave::orphans(dir).into_iter().next() {
            let age = orphan
                .modified
                .elapsed()
                .map(|d| format_age(d.as_secs()))
                .unwrap_or_else(|_| "just now".into());
            self.state.session_prompt = Some(SessionPrompt::Recover {
                file: orphan.path,
                session: Box::new(orphan.session),
                age,
            });
        }
        self.autosave = Some(Autosave::start(dir)?);
        Ok(())
    }

    /// This process's recovery file, once [`Self::enable_recovery`] has started it.
    pub fn recovery_file(&self) -> Option<&std::path::Path> {
        self.autosave.as_ref().map(Autosave::path)
    }

    /// Opens a session file: its model (if the file is where the session says; otherwise
    /// the window asks to locate it), then its SAEs and stores, then the rest.
    pub fn open_session(&mut self, path: &std::path::Path) {
        match session::read(path) {
            Ok(file) => self.restore(Box::new(file)),
            Err(e) => self.state.errors.push(crate::worker::ErrorEvent {
                request: crate::worker::Request::Window,
                context: format!("opening the session {}", path.display()),
                message: format!("{e:#}"),
            }),
        }
    }

    /// Restores a session read from a file.
    fn restore(&mut self, file: Box<SessionFile>) {
        self.state.session_prompt = None;
        let Some(model) = file.model.clone() else {
            // Nothing to load: the rest applies to whatever is open.
            self.adopt(&file);
            return;
        };
        if !model.path.exists() {
            self.state.session_prompt = Some(SessionPrompt::ModelMissing {
                session: file,
                missing: model.path,
            });
            return;
        }
        self.attach_on_load.clear();
        self.stores_on_load = file.stores.clone();
        self.restoring = Some(file);
        self.act(Action::Open(model.path));
    }

    /// Takes a restored session into the state and sends what brings its picture back.
    fn adopt(&mut self, file: &SessionFile) {
        super::heatmap::set_zooms(&self.ctx, &file.zoom);
        let effects = self.state.adopt_session(file);
        self.carry_out(effects);
        self.act(Action::ProbeHeads);
    }

    /// The session as a file holds it: the state's, with the heatmaps' zoom and pan.
    pub fn session_file(&self) -> SessionFile {
        let mut file = self.state.session();
        file.zoom = super::heatmap::zooms(&self.ctx);
        file
    }

    /// Writes the session to `path` (with the `.dendrite` extension added when missing).
    pub fn save_session(&mut self, path: &std::path::Path) {
        let mut path = path.to_path_buf();
        if path.extension().is_none() {
            path.set_extension(session::EXTENSION);
        }
        match session::write(&path, &self.session_file()) {
            Ok(()) => self.state.notice = Some(format!("Saved the session to {}", path.display())),
            Err(e) => self.state.errors.push(crate::worker::ErrorEvent {
                request: crate::worker::Request::Window,
                context: "saving the session".into(),
                message: format!("{e:#}"),
            }),
        }
    }

    /// Applies a user action and carries out what it asks for.
    pub fn act(&mut self, action: Action) {
        let effects = self.state.act(action);
        self.carry_out(effects);
    }

    /// Carries out the state's effects in order, then asks the store reader for the reports
    /// the inspector now needs.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Worker(cmd) => self.send_to_worker(cmd),
                Effect::Store(cmd) => self.send_to_stores(cmd),
                Effect::Export(view) => self.export(view),
                Effect::CancelJob(id) => self.worker.cancel_job(id),
                Effect::CancelLoad => self.worker.cancel_load(),
                Effect::SaveSession(path) => self.save_session(&path),
                Effect::OpenSession(path) => self.open_session(&path),
                Effect::Restore(session) => self.restore(session),
                Effect::RetireRecovery { file, declined } => {
                    match autosave::retire(&file) {
                        Ok(()) if declined => self.state.notice = Some(
                            "The unsaved session was kept as previous.dendrite in the recovery \
                             folder (Session → Open session… to get it back)"
                                .into(),
                        ),
                        Ok(()) => {}
                        Err(e) => {
                            self.state.notice =
                                Some(format!("Could not move {} aside: {e}", file.display()))
                        }
                    }
                }
            }
        }
        for effect in self.state.report_requests() {
            if let Effect::Store(cmd) = effect {
                self.send_to_stores(cmd);
            }
        }
    }

    /// Sends a worker command, keeping count of attaches and the time of a generation.
    fn send_to_worker(&mut self, mut cmd: Command) {
        if matches!(cmd, Command::AttachSae(_)) {
            self.attaches_pending += 1;
        }
        if let Command::Generate(g) = &cmd {
            self.generate_sent = Some((g.run_id, Instant::now()));
        }
        // The key stays out of the state (and its logs): read where the request leaves.
        let key = || {
            std::env::var(&self.state.explain_settings.api_key_env)
                .ok()
                .filter(|k| !k.is_empty())
        };
        match &mut cmd {
            Command::ExplainUnits(job) => job.opts.endpoint.api_key = key(),
            Command::Facets(crate::worker::FacetsRequest {
                explainer: Some((endpoint, _)),
                ..
            }) => endpoint.api_key = key(),
            _ => {}
        }
        self.send(cmd);
    }

    fn send_to_stores(&mut self, cmd: StoreCommand) {
        if !self.stores.send(cmd) {
            self.state.errors.push(crate::worker::ErrorEvent {
                request: crate::worker::Request::Store,
                context: "the store reader".into(),
                message: "the store reader has stopped; restart Dendrite".into(),
            });
        }
    }

    /// Writes the view's data as CSV, and draws it again offscreen at 2× for the PNG (which a
    /// thread rasterizes and writes; the result arrives as a notice).
    pub fn export(&mut self, view: View) {
        let dir = self.export_dir.clone();
        let name = super::export::default_name(&self.state, view, std::time::SystemTime::now());
        let Some(table) = super::export::table(&self.state, view) else {
            self.state.notice = Some("Nothing to export yet: run a prompt first.".into());
            return;
        };
        let csv = dir.join(format!("{name}.csv"));
        if let Err(e) = table.write(&csv) {
            self.state.notice = Some(format!("Export failed: {e:#}"));
            return;
        }
        self.state.notice = Some(format!("Exported {}", csv.display()));
        let arrays = super::export::activations(&self.state, view);
        let has_arrays = arrays.is_some();
        if let Some(arrays) = arrays {
            match arrays.write(&dir, &name) {
                Ok([npy, st]) => {
                    self.state.notice = Some(format!(
                        "Exported {}, {} and {}",
                        csv.display(),
                        npy.display(),
                        st.display()
                    ))
                }
                Err(e) => {
                    self.state.notice = Some(format!("Export failed: {e:#}"));
                    return;
                }
            }
        }
        if let Some(text) = super::export::text(&self.state, view) {
            let txt = dir.join(format!("{name}.txt"));
            if let Err(e) = std::fs::write(&txt, text) {
                self.state.notice = Some(format!("Export failed: {}: {e}", txt.display()));
                return;
            }
        }
        let Some(placement) = self.placement(view) else {
            return;
        };
        let state = &self.state;
        let figure = super::export::draw_offscreen(
            &self.ctx,
            placement,
            super::export::FIGURE_PIXELS_PER_POINT,
            |ui| {
                let _ = draw_view(ui, state, view);
            },
        );
        let format = self.state.figure_format;
        let png = format.png().then(|| dir.join(format!("{name}.png")));
        let svg = format.svg().then(|| dir.join(format!("{name}.svg")));
        let results = self.export_results.0.clone();
        let repaint = self.ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("dendrite-export".into())
            .spawn(move || {
                let written = svg
                    .iter()
                    .try_for_each(|p| figure.write_svg(p))
                    .and_then(|()| png.iter().try_for_each(|p| figure.write_png(p)));
                let shown = png.as_ref().or(svg.as_ref());
                let message = match written {
                    Ok(()) => format!(
                        "Exported {}{} with its data (.csv{})",
                        shown.map_or_else(String::new, |p| p.display().to_string()),
                        if format == FigureFormat::Both {
                            " (and .svg)"
                        } else {
                            ""
                        },
                        if has_arrays {
                            ", .npy, .safetensors"
                        } else {
                            ""
                        }
                    ),
                    Err(e) => format!("Figure export failed: {e:#}"),
                };
                let _ = results.try_send(message);
                repaint.request_repaint();
            });
        if let Err(e) = spawned {
            self.state.notice = Some(format!("PNG export failed: {e}"));
        }
    }

    /// Where `view` was drawn last frame (none if it was not on screen).
    pub fn placement(&self, view: View) -> Option<Placement> {
        self.placements
            .iter()
            .find(|(v, _)| *v == view)
            .map(|(_, p)| *p)
    }

    /// Sends a raw worker command (tests use it to inject failures).
    pub fn send(&mut self, cmd: Command) {
        if !self.worker.send(cmd) {
            self.state.errors.push(crate::worker::ErrorEvent {
                request: crate::worker::Request::Other,
                context: "the worker".into(),
                message: "the background worker has stopped; restart Dendrite".into(),
            });
        }
    }

    /// Applies waiting worker and store events for at most [`DRAIN_BUDGET`].
    pub fn drain_events(&mut self, ctx: &egui::Context) {
        let started = Instant::now();
        while let Some(event) = self.stores.try_recv() {
            let effects = self.state.apply_store(event);
            self.carry_out(effects);
        }
        while let Some(event) = self.worker.try_recv() {
            let loaded = match &event {
                Event::ModelLoaded(m) => Some(m.info.path.clone()),
                _ => None,
            };
            // The SAE the user located for set-aside interventions (the state brings them
            // back and reruns).
            let located = self.state.interventions.locating.is_some()
                && matches!(&event, Event::SaeAttached(_));
            // An answer to an attach (or the worker attaching a trained SAE), or a detach.
            let attach_failed = matches!(&event, Event::Error(e)
                if matches!(e.request, crate::worker::Request::AttachSae(_)));
            let sae_answer =
                attach_failed || matches!(&event, Event::SaeAttached(_) | Event::SaeDetached(_));
            if let Event::TokenGenerated(t) = &event
                && let Some((run_id, sent)) = self.generate_sent
                && t.run_id == run_id
                && let Some(g) = self.state.generation.as_mut()
            {
                g.first_token_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
                self.generate_sent = None;
            }
            let effects = self.state.apply(event);
            self.carry_out(effects);
            if let Some(model) = loaded {
                // Its stores (remembered ones of this model, the sample's own) open with it.
                let mut remembered = self.state.stores.remembered_paths();
                remembered.extend(crate::sample::default_stores(&model));
                self.stores.send(StoreCommand::ModelOpened {
                    model: model.clone(),
                    remembered,
                });
                for path in std::mem::take(&mut self.stores_on_load) {
                    self.stores.send(StoreCommand::Open {
                        path,
                        model: model.clone(),
                    });
                }
                // A freshly opened model gets its default SAEs, then runs the prompt (once
                // they are attached) and the head probe. A restored session gets its own SAEs
                // instead, at their hooks, and is adopted once they have answered.
                self.attaches_pending = 0;
                if self
                    .restoring
                    .as_ref()
                    .is_some_and(|r| r.model.as_ref().is_none_or(|m| m.path != model))
                {
                    // Another model opened meanwhile: that session is not this model's.
                    self.restoring = None;
                }
                let requested = std::mem::take(&mut self.attach_on_load);
                match self.restoring.as_ref().map(|r| r.saes.clone()) {
                    Some(saes) => {
                        for sae in saes {
                            self.attaches_pending += 1;
                            self.send(Command::AttachSae(crate::worker::AttachSae {
                                path: sae.file.path,
                                hook: Some(sae.hook),
                            }));
                        }
                    }
                    None => {
                        for sae in crate::sample::default_saes(&model)
                            .into_iter()
                            .chain(requested)
                        {
                            self.act(Action::AttachSae(sae));
                        }
                    }
                }
                if self.attaches_pending == 0 {
                    self.attaches_answered();
                }
                if self.restoring.is_none() {
                    self.act(Action::ProbeHeads);
                }
            } else if located {
                self.attaches_pending = self.attaches_pending.saturating_sub(1);
            } else if sae_answer {
                self.attaches_pending = self.attaches_pending.saturating_sub(1);
                if self.attaches_pending == 0 {
                    self.attaches_answered();
                }
            }
            if started.elapsed() > DRAIN_BUDGET {
                ctx.request_repaint();
                break;
            }
        }
        self.carry_out(Vec::new());
    }

    /// Every attach asked for has answered: adopt the session being restored, or rerun the
    /// prompt (feature maps of the new SAEs; an unchanged baseline is not recomputed).
    fn attaches_answered(&mut self) {
        match self.restoring.take() {
            Some(file) => self.adopt(&file),
            None => self.act(Action::Run),
        }
    }

    /// Hands the session to the recovery writer (it writes once changes rest).
    fn autosave(&mut self, ctx: &egui::Context) {
        // A session half restored is not the user's: the file keeps the last whole one.
        if self.restoring.is_some() || self.state.session_prompt.is_some() {
            return;
        }
        let session = self.session_file();
        let Some(autosave) = self.autosave.as_mut() else {
            return;
        };
        if let Some(error) = autosave.update(session, Instant::now()) {
            self.state.notice = Some(error);
        }
        if autosave.pending() {
            ctx.request_repaint_after(Duration::from_millis(200));
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let pressed = |k: KeyboardShortcut| ctx.input_mut(|i| i.consume_shortcut(&k));
        if pressed(KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter)) {
            self.act(Action::Run);
        }
        // In a text field, Ctrl+Z edits the text (the field's own undo) rather than the
        // interventions.
        if !ctx.egui_wants_keyboard_input() {
            if pressed(KeyboardShortcut::new(
                Modifiers::COMMAND | Modifiers::SHIFT,
                Key::Z,
            )) {
                self.act(Action::Redo);
            }
            if pressed(KeyboardShortcut::new(Modifiers::COMMAND, Key::Z)) {
                self.act(Action::Undo);
            }
        }
        if pressed(KeyboardShortcut::new(Modifiers::NONE, Key::Escape)) {
            self.act(Action::ClearSelection);
        }
        // The view under the pointer, remembered when clicked: what Ctrl+E exports.
        let under_pointer = ctx.input(|i| i.pointer.hover_pos()).and_then(|p| {
            self.placements
                .iter()
                .find(|(_, placement)| placement.rect.contains(p))
                .map(|(view, _)| *view)
        });
        if ctx.input(|i| i.pointer.any_click())
            && let Some(view) = under_pointer
        {
            self.last_clicked_view = Some(view);
        }
        if pressed(KeyboardShortcut::new(Modifiers::COMMAND, Key::E)) {
            let view = under_pointer
                .or(self.last_clicked_view)
                .unwrap_or(View::Tab(self.state.tab));
            self.act(Action::Export(view));
        }
        while let Ok(message) = self.export_results.1.try_recv() {
            self.state.notice = Some(message);
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        for path in dropped {
            // An SAE attaches to the open model; an explanation file imports into the
            // inspected unit's source; anything else opens as a model.
            if crate::sae::looks_like_sae(&path) {
                self.act(Action::AttachSae(path));
            } else if looks_like_explanations(&path)
                && let Some(unit) = self
                    .state
                    .inspected_units()
                    .into_iter()
                    .find(|u| self.state.stores.has_source(&u.source))
            {
                self.act(Action::ImportExplanations {
                    file: path,
                    source: unit.source,
                    force: false,
                });
            } else {
                self.act(Action::Open(path));
                break;
            }
        }
    }

    fn record_frame_time(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_frame {
            self.frame_times_ms
                .push(now.duration_since(last).as_secs_f32() * 1e3);
            if self.frame_times_ms.len() > 10_000 {
                self.frame_times_ms.drain(..5_000);
            }
        }
        self.last_frame = Some(now);
    }

    /// Lays out every panel; returns the action of this frame, if any.
    pub fn layout(&mut self, ui: &mut egui::Ui) {
        let state = &self.state;
        let mut action = None;
        egui::Panel::top("top_bar").show(ui, |ui| {
            action = action.take().or(views::top_bar::top_bar_ui(ui, state));
        });
        egui::Panel::top("prompt").show(ui, |ui| {
            action = action.take().or(views::prompt::prompt_ui(ui, state));
        });
        egui::Panel::bottom("interventions").show(ui, |ui| {
            action = action
                .take()
                .or(views::interventions::interventions_ui(ui, state));
        });
        let mut placements = Vec::new();
        egui::Panel::left("layers")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| {
                placements.push((View::Layers, placement(ui)));
                action = action.take().or(draw_view(ui, state, View::Layers));
            });
        egui::Panel::right("inspector")
            .resizable(true)
            .default_size(330.0)
            .show(ui, |ui| {
                placements.push((View::Unit, placement(ui)));
                action = action.take().or(views::inspector::inspector_ui(ui, state));
            });
        egui::CentralPanel::default().show(ui, |ui| {
            action = action.take().or(views::search::search_bar_ui(ui, state));
            ui.separator();
            // Wraps on narrow windows rather than widening the panel under the inspector.
            ui.horizontal_wrapped(|ui| {
                for (tab, name) in [
                    (Tab::Neurons, "Neurons"),
                    (Tab::Heads, "Heads"),
                    (Tab::Histograms, "Histograms"),
                    (Tab::Lens, "Logit lens"),
                    (Tab::Features, "SAE features"),
                    (Tab::Generate, "Generate"),
                    (Tab::Patching, "Patching"),
                    (Tab::Sweeps, "Sweeps"),
                ] {
                    if ui.selectable_label(state.tab == tab, name).clicked() {
                        action = Some(Action::SetTab(tab));
                    }
                }
                ui.separator();
                ui.weak(format!("layer {} selected", state.selection.layer));
                if ui
                    .button("Export view")
                    .on_hover_text(format!(
                        "This view as {} and its data as CSV (Ctrl+E)",
                        state.figure_format.label()
                    ))
                    .clicked()
                {
                    action = Some(Action::Export(View::Tab(state.tab)));
                }
                egui::ComboBox::from_id_salt("figure_format")
                    .selected_text(state.figure_format.label())
                    .show_ui(ui, |ui| {
                        for format in FigureFormat::ALL {
                            if ui
                                .selectable_label(state.figure_format == format, format.label())
                                .clicked()
                            {
                                action = Some(Action::SetFigureFormat(format));
                            }
                        }
                    })
                    .response
                    .on_hover_text(
                        "Figure files every export writes: PNG at 2× (slides), SVG with text \
                         as text (papers), or both",
                    );
            });
            ui.separator();
            let view = View::Tab(state.tab);
            placements.push((view, placement(ui)));
            action = action.take().or(draw_view(ui, state, view));
        });
        self.placements = placements;
        if let Some(a) = views::session::session_prompt_ui(ui.ctx(), state) {
            action = Some(a);
        }
        if let Some(a) = action {
            self.act(a);
        }
    }
}

/// The app's fonts: egui's, with the monospace face behind the proportional one (it has the
/// arrows → ←) and DejaVu Sans behind both, for the symbols and scripts neither has (token
/// texts come from whole vocabularies). Figures are drawn with the same.
pub fn font_definitions() -> egui::FontDefinitions {
    const DEJAVU: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "DejaVuSans".into(),
        std::sync::Arc::new(egui::FontData::from_static(DEJAVU)),
    );
    if let Some(family) = fonts.families.get_mut(&egui::FontFamily::Proportional) {
        family.push("Hack".into());
        family.push("DejaVuSans".into());
    }
    if let Some(family) = fonts.families.get_mut(&egui::FontFamily::Monospace) {
        family.push("DejaVuSans".into());
    }
    fonts
}

/// "42 s ago", "12 min ago", "3 h ago", "2 days ago".
fn format_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Whether a dropped file is an explanation export (Neuronpedia JSON / JSONL, gzipped or not,
/// OpenAI `.jsonl` files) rather than a model.
pub fn looks_like_explanations(path: &std::path::Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".jsonl", ".jsonl.gz", ".json.gz", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
        && name != "config.json"
        && name != "cfg.json"
        && name != "tokenizer.json"
}

/// Where the view about to be drawn in `ui` goes.
fn placement(ui: &egui::Ui) -> Placement {
    Placement {
        scope_id: ui.scope_id(),
        rect: ui.available_rect_before_wrap(),
    }
}

/// Draws an exportable view (on screen, or offscreen for its figure).
pub fn draw_view(ui: &mut egui::Ui, state: &AppState, view: View) -> Option<Action> {
    match view {
        View::Layers => views::layers::layers_ui(ui, state),
        View::Tab(Tab::Neurons) => views::neurons::neurons_ui(ui, state),
        View::Tab(Tab::Heads) => views::heads::heads_ui(ui, state),
        View::Tab(Tab::Histograms) => views::histograms::histograms_ui(ui, state),
        View::Tab(Tab::Lens) => views::lens::lens_ui(ui, state),
        View::Tab(Tab::Features) => views::features::features_ui(ui, state),
        View::Tab(Tab::Generate) => views::generate::generate_ui(ui, state),
        View::Tab(Tab::Patching) => views::patching::patching_ui(ui, state),
        View::Tab(Tab::Sweeps) => views::sweeps::sweeps_ui(ui, state),
        View::Unit => {
            let unit = state.inspected_units().into_iter().next()?;
            views::unit_panel::unit_panel_ui(ui, state, &unit)
        }
    }
}

impl eframe::App for DendriteApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.drain_events(ctx);
        self.shortcuts(ctx);
        self.autosave(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.record_frame_time();
        self.layout(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(
            storage,
            STORAGE_KEY,
            &Persisted {
                recent_models: self.state.recent_models.clone(),
                prompt: self.state.prompt.clone(),
                stores: self.state.stores.remembered.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn explanation_exports_are_told_from_models() {
        for name in ["batch-0.jsonl.gz", "np.json", "x/12.jsonl", "a.json.gz"] {
            assert!(super::looks_like_explanations(Path::new(name)), "{name}");
        }
        for name in [
            "model.gguf",
            "config.json",
            "tokenizer.json",
            "cfg.json",
            "dir",
        ] {
            assert!(!super::looks_like_explanations(Path::new(name)), "{name}");
        }
    }
}
