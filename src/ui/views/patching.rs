//! Activation patching: the prompt (clean) against a corrupted prompt of the same length, the
//! answer and the wrong token, a site and a direction; the sweep's normalised logit difference
//! as a layer × position (or layer × head) heatmap labelled with the tokens. Hover a cell for
//! its value; click it to add that patch as an intervention.

use egui::{Id, Ui};

use super::visible;
use crate::analysis::patching::{Direction, Site};
use crate::ui::heatmap::{Axes, Colormap, Grid, fingerprint, heatmap_with_axes_ui, legend_ui};
use crate::ui::state::{Action, AppState, PatchSettings};

pub fn patching_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let s = &state.patching.settings;
    let mut edited: Option<PatchSettings> = None;
    let mut changed = |f: &dyn Fn(&mut PatchSettings)| {
        let mut next = edited.clone().unwrap_or_else(|| s.clone());
        f(&mut next);
        edited = Some(next);
    };
    ui.horizontal(|ui| {
        ui.label("corrupted prompt");
        let mut corrupt = s.corrupt.clone();
        let r = ui.add(
            egui::TextEdit::singleline(&mut corrupt)
                .desired_width(ui.available_width() - 8.0)
                .hint_text("the prompt with the relevant part changed (the same number of tokens)"),
        );
        if r.changed() {
            changed(&|p| p.corrupt = corrupt.clone());
        }
    });
    ui.horizontal_wrapped(|ui| {
        for (label, value, hint, set) in [
            (
                "answer",
                &s.answer,
                " Mary",
                (|p: &mut PatchSettings, v: String| p.answer = v) as fn(&mut PatchSettings, String),
            ),
            ("wrong", &s.wrong, " John", |p, v| p.wrong = v),
        ] {
            ui.label(label);
            let mut text = value.clone();
            if ui
                .add(
                    egui::TextEdit::singleline(&mut text)
                        .desired_width(80.0)
                        .hint_text(hint),
                )
                .on_hover_text("One token's text (mind the leading space) or id:N")
                .changed()
            {
                changed(&|p| set(p, text.clone()));
            }
        }
        egui::ComboBox::from_label("site")
            .selected_text(s.site.name())
            .show_ui(ui, |ui| {
                for site in Site::ALL {
                    if ui.selectable_label(s.site == site, site.name()).clicked() {
                        changed(&|p| p.site = site);
                    }
                }
            });
        for (direction, name, hint) in [
            (
                Direction::Denoise,
                "denoise",
                "Clean values into the corrupted run: do they suffice to restore the answer?",
            ),
            (
                Direction::Noise,
                "noise",
                "Corrupted values into the clean run: are they necessary for the answer?",
            ),
        ] {
            if ui
                .selectable_label(s.direction == direction, name)
                .on_hover_text(hint)
                .clicked()
            {
                changed(&|p| p.direction = direction);
            }
        }
        let busy = state.job_running();
        if ui
            .add_enabled(!busy && state.model.is_some(), egui::Button::new("Patch"))
            .on_hover_text(
                "Runs one patch per layer × position (layer × head for z), each rerunning from \
                 its layer and position only",
            )
            .clicked()
        {
            action = Some(Action::RunPatching);
        }
    });
    if let Some(settings) = edited {
        return Some(Action::SetPatchSettings(settings));
    }
    if let Some(job) = state.job.as_ref().filter(|j| j.outcome.is_none()) {
        ui.horizontal(|ui| {
            ui.add(egui::ProgressBar::new(job.fraction).text(&job.message));
            if ui.button("Cancel").clicked() {
                action = Some(Action::CancelJob);
            }
        });
    }
    let Some(report) = &state.patching.report else {
        ui.weak(
            "The prompt above is the clean prompt. Give a corrupted prompt of the same length, \
             the answer the clean prompt predicts and the wrong one, then Patch.",
        );
        return action;
    };
    let result = &report.result;
    ui.horizontal_wrapped(|ui| {
        ui.label(format!(
            "{} {}: logit difference {:?} − {:?} clean {:.3}, corrupted {:.3}",
            match result.direction {
                Direction::Denoise => "denoising",
                Direction::Noise => "noising",
            },
            result.site.name(),
            report.job.answer,
            report.job.wrong,
            result.metric_clean,
            result.metric_corrupt,
        ));
        if state.show_timings {
            ui.weak(format!("{:.0} ms", report.duration_ms));
        }
    });
    let rows = result.values.len();
    let cols = result.values.first().map_or(0, Vec::len);
    let value = |r: usize, c: usize| Some(*result.values.get(r)?.get(c)? as f32);
    let grid = Grid {
        rows,
        cols,
        value: &value,
    };
    let cmap = Colormap::Diverging { max: 1.0 };
    let key = fingerprint(&[report.job.job_id, rows as u64, cols as u64]);
    let size = egui::vec2(
        ui.available_width(),
        (ui.available_height() - 52.0).max(110.0),
    );
    // Positions named by their clean token, and the corrupted one where it differs.
    let token = |p: usize| -> String {
        let clean = visible(report.clean_tokens.get(p).map_or("", String::as_str));
        let corrupt = visible(report.corrupt_tokens.get(p).map_or("", String::as_str));
        if clean == corrupt {
            clean.chars().take(8).collect()
        } else {
            format!(
                "{}/{}",
                clean.chars().take(6).collect::<String>(),
                corrupt.chars().take(6).collect::<String>()
            )
        }
    };
    let is_z = result.site == Site::Z;
    let col_tick = |c: usize| {
        if is_z {
            format!("H{c}")
        } else {
            format!("{c} {}", token(c))
        }
    };
    let r = heatmap_with_axes_ui(
        ui,
        Id::unique("patching"),
        key,
        &grid,
        cmap,
        size,
        &Axes {
            rows: "layer",
            cols: if is_z {
                "head (every position)"
            } else {
                "position (clean/corrupted token)"
            },
            row_tick: &|l| format!("L{l}"),
            col_tick: &col_tick,
        },
    );
    if let Some((l, c)) = r.hovered {
        let what = if is_z {
            format!("head {c}")
        } else {
            format!("position {c} ({})", token(c))
        };
        r.response.clone().on_hover_text_at_pointer(format!(
            "L{l} {} at {what}: {:.3} of the logit difference restored\nclick: add this patch \
             as an intervention",
            result.site.name(),
            result.values[l][c]
        ));
    }
    if let Some((layer, cell)) = r.clicked {
        action = Some(Action::AddPatch { layer, cell });
    }
    legend_ui(
        ui,
        cmap,
        "normalised logit difference (clean = 1, corrupted = 0)",
    );
    action
}
