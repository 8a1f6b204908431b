//! Top bar: open a model, recent models, what is open, progress, and error banners.

use egui::Ui;

use crate::ui::state::{Action, AppState};

pub fn top_bar_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        if ui
            .button("Open model…")
            .on_hover_text(
                "A GGUF file or an HF model folder (Ctrl+O). You can also drop it on the window.",
            )
            .clicked()
            && let Some(path) = pick_model()
        {
            action = Some(Action::Open(path));
        }
        if let Some(a) = super::session::session_menu_ui(ui, state) {
            action = Some(a);
        }
        ui.menu_button("Recent", |ui| {
            if state.recent_models.is_empty() {
                ui.weak("No recent models");
            }
            for path in &state.recent_models {
                if ui.button(path.display().to_string()).clicked() {
                    action = Some(Action::Open(path.clone()));
                    ui.close();
                }
            }
        });
        ui.separator();
        match &state.model {
            Some(m) => {
                ui.strong(&m.name);
                ui.label(format!(
                    "{} · {} layers · d_model {} · {} heads · {:.1}M params · {}",
                    m.architecture,
                    m.dims.n_layers,
                    m.dims.d_model,
                    m.dims.n_heads,
                    m.n_params as f64 / 1e6,
                    m.format
                ));
            }
            None => {
                ui.weak("No model open: open a model or drop a file here");
            }
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if let Some(path) = &state.loading {
                if ui
                    .small_button("Cancel")
                    .on_hover_text("Stop loading; the open model stays")
                    .clicked()
                {
                    action = Some(Action::CancelLoad);
                }
                match state.loading_fraction {
                    Some(f) => {
                        ui.add(
                            egui::ProgressBar::new(f)
                                .desired_width(140.0)
                                .text(format!("{:.0} %", f * 100.0)),
                        );
                    }
                    None => {
                        ui.spinner();
                    }
                }
                ui.label(format!("Loading {}…", path.display()));
            } else if state.is_running() {
                let pass = state
                    .runs
                    .intervened
                    .as_ref()
                    .unwrap_or(&state.runs.baseline);
                let n = pass.layers.len().max(1);
                ui.add(
                    egui::ProgressBar::new(pass.layers_done() as f32 / n as f32)
                        .desired_width(140.0)
                        .text(format!("layer {}/{}", pass.layers_done(), n)),
                );
            } else if let Some(job) = state.job.as_ref().filter(|j| j.outcome.is_none()) {
                ui.add(
                    egui::ProgressBar::new(job.fraction)
                        .desired_width(140.0)
                        .text(format!("{:.0} %", 100.0 * job.fraction)),
                );
                ui.label(&job.title);
            } else if state.probe_running {
                ui.spinner();
                ui.label("Probing heads…");
            } else if let Some(f) = state
                .runs
                .baseline
                .finished
                .as_ref()
                .filter(|_| state.show_timings)
            {
                let ms = f.duration_ms
                    + state
                        .runs
                        .intervened
                        .as_ref()
                        .and_then(|p| p.finished.as_ref())
                        .map_or(0.0, |f| f.duration_ms);
                ui.weak(format!("ran in {ms:.0} ms"));
            }
        });
    });
    if let Some(notice) = &state.notice {
        ui.weak(notice);
    }
    for (i, e) in state.errors.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.colored_label(
                ui.visuals().error_fg_color,
                format!("Error: {}: {}", e.context, e.message),
            );
            if ui.small_button("Dismiss").clicked() {
                action = Some(Action::DismissError(i));
            }
        });
    }
    action
}

/// A native file dialog for a model file or folder (none under tests or without a portal).
pub(crate) fn pick_model() -> Option<std::path::PathBuf> {
    rfd::FileDialog::new()
        .set_title("Open a model (GGUF file, or pick config.json in an HF folder)")
        .add_filter("Models", &["gguf", "json", "safetensors"])
        .pick_file()
        .map(|p| {
            // An HF folder is opened through any file in it.
            if p.extension()
                .is_some_and(|e| e == "json" || e == "safetensors")
            {
                p.parent().map(|d| d.to_path_buf()).unwrap_or(p)
            } else {
                p
            }
        })
}
