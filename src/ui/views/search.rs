//! The bar above the views: search the open stores' descriptions and peak tokens (click a
//! hit to select the unit everywhere), the open stores, and the "Scan corpus…" job (its form,
//! progress, ETA and cancel).

use std::path::PathBuf;

use egui::Ui;

use crate::describe::ScanOptions;
use crate::ui::state::{Action, AppState};
use crate::worker::JobOutcome;
use crate::worker::stores::UnitRef;

/// The scan form's fields (widget state kept in egui memory).
#[derive(Clone, Debug)]
struct ScanForm {
    open: bool,
    corpus: String,
    hooks: String,
    with_saes: bool,
    tokens: u64,
    out: String,
}

impl Default for ScanForm {
    fn default() -> Self {
        ScanForm {
            open: false,
            corpus: String::new(),
            hooks: "blocks.*.mlp.hook_post".into(),
            with_saes: true,
            tokens: 200_000,
            out: String::new(),
        }
    }
}

pub fn search_bar_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let form_id = egui::Id::unique("scan_form");
    let mut form: ScanForm =
        ui.data_mut(|d| d.get_temp_mut_or_default::<ScanForm>(form_id).clone());
    ui.horizontal(|ui| {
        let mut query = state.stores.search_query.clone();
        let searchable = !state.stores.open.is_empty();
        let response = ui.add_enabled(
            searchable,
            egui::TextEdit::singleline(&mut query)
                .hint_text(if searchable {
                    "search descriptions and tokens"
                } else {
                    "search: open or scan a corpus store first"
                })
                .desired_width(260.0),
        );
        if response.changed() {
            action = Some(Action::Search(query));
        }
        ui.menu_button(format!("Stores ({})", state.stores.open.len()), |ui| {
            for s in &state.stores.open {
                ui.horizontal(|ui| {
                    ui.label(s.path.display().to_string())
                        .on_hover_text(format!(
                            "{} tokens of {} · {} sources · {}",
                            s.scan.tokens_scanned,
                            s.scan.corpus_path,
                            s.sources.len(),
                            if s.scan.complete {
                                "complete"
                            } else {
                                "unfinished: resume with dendrite scan --resume"
                            }
                        ));
                    if ui.small_button("Close").clicked() {
                        action = Some(Action::CloseStore(s.path.clone()));
                    }
                });
            }
            if ui.button("Open store…").clicked()
                && let Some(path) = rfd::FileDialog::new()
                    .add_filter("Dendrite store", &["sqlite", "db"])
                    .pick_file()
            {
                action = Some(Action::OpenStore(path));
                ui.close();
            }
        });
        if ui
            .add_enabled(state.model.is_some(), egui::Button::new("Scan corpus…"))
            .on_hover_text("Top examples, densities and histograms of every unit, from a corpus")
            .clicked()
        {
            form.open = !form.open;
        }
        if let Some(job) = state
            .job
            .as_ref()
            .filter(|j| j.outcome.is_none() && j.title.starts_with("Scanning"))
        {
            ui.add(
                egui::ProgressBar::new(job.fraction)
                    .desired_width(140.0)
                    .show_percentage(),
            )
            .on_hover_text(&job.title);
            ui.weak(&job.message);
            if ui.small_button("Cancel").clicked() {
                action = Some(Action::CancelJob);
            }
        }
    });
    if let Some(results) = &state.stores.search {
        action = action.or(results_ui(ui, state, results));
    }
    if form.open {
        action = action.or(scan_form_ui(ui, state, &mut form));
    }
    ui.data_mut(|d| d.insert_temp(form_id, form));
    action
}

fn results_ui(
    ui: &mut Ui,
    state: &AppState,
    results: &crate::worker::stores::SearchResults,
) -> Option<Action> {
    let mut action = None;
    if results.hits.is_empty() && results.token_hits.is_empty() {
        ui.weak(format!("nothing matches \"{}\"", results.query));
        return None;
    }
    egui::ScrollArea::vertical()
        .id_salt("search_results")
        .max_height(140.0)
        .show(ui, |ui| {
            for h in &results.hits {
                let unit = UnitRef {
                    source: h.source.clone(),
                    unit: h.unit,
                };
                let score = h
                    .score
                    .map(|s| format!(" · score {s:.2}"))
                    .unwrap_or_default();
                let text = format!(
                    "{} {} — {} ({}{score})",
                    h.source, h.unit, h.description, h.origin
                );
                if ui
                    .selectable_label(is_selected(state, &unit), text)
                    .clicked()
                {
                    action = Some(Action::SelectUnit(unit));
                }
            }
            for h in &results.token_hits {
                let unit = UnitRef {
                    source: h.source.clone(),
                    unit: h.unit,
                };
                let text = format!(
                    "{} {} — peaks on {:?} in {} of its top windows (max {:.3})",
                    h.source, h.unit, results.query, h.examples, h.max_act
                );
                if ui
                    .selectable_label(is_selected(state, &unit), text)
                    .clicked()
                {
                    action = Some(Action::SelectUnit(unit));
                }
            }
        });
    action
}

fn is_selected(state: &AppState, unit: &UnitRef) -> bool {
    state.inspected_units().contains(unit)
}

fn scan_form_ui(ui: &mut Ui, state: &AppState, form: &mut ScanForm) -> Option<Action> {
    let mut action = None;
    let model = state.model.as_ref()?;
    ui.group(|ui| {
        ui.strong("Scan a corpus");
        ui.horizontal(|ui| {
            ui.label("corpus");
            ui.add(egui::TextEdit::singleline(&mut form.corpus).desired_width(300.0))
                .on_hover_text(
                    "A UTF-8 .txt file, a .jsonl file of {\"text\": …} rows, or a folder of them",
                );
            if ui.button("File…").clicked()
                && let Some(p) = rfd::FileDialog::new().pick_file()
            {
                form.corpus = p.display().to_string();
            }
            if ui.button("Folder…").clicked()
                && let Some(p) = rfd::FileDialog::new().pick_folder()
            {
                form.corpus = p.display().to_string();
            }
        });
        ui.horizontal(|ui| {
            ui.label("hooks");
            ui.add(egui::TextEdit::singleline(&mut form.hooks).desired_width(220.0))
                .on_hover_text("Hook names or globs, comma-separated");
            ui.checkbox(
                &mut form.with_saes,
                format!("and the {} attached SAEs' latents", state.saes.len()),
            );
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::DragValue::new(&mut form.tokens)
                    .range(64..=u64::MAX)
                    .prefix("token budget "),
            );
        });
        let corpus = PathBuf::from(form.corpus.trim());
        if form.out.is_empty() && !form.corpus.trim().is_empty() {
            form.out = crate::describe::default_store_path(&model.name, &corpus)
                .display()
                .to_string();
        }
        ui.horizontal(|ui| {
            ui.label("store");
            ui.add(egui::TextEdit::singleline(&mut form.out).desired_width(300.0));
        });
        let busy = state.job_running();
        let ready = !busy && !form.corpus.trim().is_empty() && !form.out.trim().is_empty();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(ready, egui::Button::new("Start scan"))
                .clicked()
            {
                let mut opts = ScanOptions::new(corpus, PathBuf::from(form.out.trim()));
                opts.hooks = form
                    .hooks
                    .split(',')
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .collect();
                if form.with_saes {
                    opts.saes = state.saes.iter().map(|s| s.cfg.path.clone()).collect();
                }
                opts.max_tokens = Some(form.tokens);
                action = Some(Action::ScanCorpus(Box::new(opts)));
            }
            if busy {
                ui.weak("a job is running");
            }
            if let Some(job) = state
                .job
                .as_ref()
                .filter(|j| j.title.starts_with("Scanning"))
            {
                match &job.outcome {
                    Some(JobOutcome::Scanned {
                        store,
                        tokens,
                        tokens_per_s,
                        complete,
                        ..
                    }) => {
                        ui.weak(format!(
                            "{} {tokens} tokens at {tokens_per_s:.0} tok/s into {}",
                            if *complete {
                                "scanned"
                            } else {
                                "stopped after"
                            },
                            store.display()
                        ));
                    }
                    Some(JobOutcome::Cancelled) => {
                        ui.weak("cancelled");
                    }
                    _ => {}
                }
            }
        });
    });
    action
}
