//! Sweeps: loss against sparsity. Left, weight pruning over sparsity levels with the dense
//! loss and essential sparsity's knee marked; right, every activation-sparsification method's
//! loss against the sparsity it reaches, one line per method, with the PPL-p% bound and the
//! searched method's point. Both are jobs measured on the prompt or a corpus file.

use egui::{Color32, Ui};
use egui_plot::{HLine, Legend, Line, Plot, PlotPoints, Points, VLine};

use crate::analysis::sweep::{KNEE_EPSILON, METHODS, allowed_loss, method_name};
use crate::model::prune::{PruneMethod, PruneScope};
use crate::ui::state::sweeps::parse_levels;
use crate::ui::state::{Action, AppState, SweepChoice, SweepSettings};

/// One colour per sparsification method, in [`METHODS`] order.
const METHOD_COLOURS: [Color32; 5] = [
    Color32::from_rgb(0x1f, 0x77, 0xb4),
    Color32::from_rgb(0xff, 0x7f, 0x0e),
    Color32::from_rgb(0x2c, 0xa0, 0x2c),
    Color32::from_rgb(0xd6, 0x27, 0x28),
    Color32::from_rgb(0x94, 0x67, 0xbd),
];

pub fn sweeps_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let s = &state.sweeps.settings;
    let mut edited: Option<SweepSettings> = None;
    let mut changed = |f: &dyn Fn(&mut SweepSettings)| {
        let mut next = edited.clone().unwrap_or_else(|| s.clone());
        f(&mut next);
        edited = Some(next);
    };
    ui.horizontal(|ui| {
        ui.label("measured on");
        if let Some(corpus) = file_field(
            ui,
            &s.corpus,
            (280.0, "the prompt (or a .txt file)"),
            "Empty: the prompt. A UTF-8 text file: its first tokens, in windows of 256",
        ) {
            changed(&|p| p.corpus = corpus.clone());
        }
        ui.add_enabled_ui(!s.corpus.trim().is_empty(), |ui| {
            let mut tokens = s.tokens;
            if ui
                .add(
                    egui::DragValue::new(&mut tokens)
                        .range(16..=1 << 20)
                        .suffix(" tokens"),
                )
                .changed()
            {
                changed(&|p| p.tokens = tokens);
            }
        });
    });
    let can_run = !state.job_running() && state.model.is_some();
    ui.columns(2, |columns| {
        let ui = &mut columns[0];
        ui.strong("Weight pruning");
        ui.horizontal_wrapped(|ui| {
            egui::ComboBox::from_label("method")
                .selected_text(s.prune_method.to_string())
                .show_ui(ui, |ui| {
                    for method in [
                        PruneMethod::Magnitude,
                        PruneMethod::MagnitudeGlobal,
                        PruneMethod::Random { seed: 0 },
                        PruneMethod::NM { n: 2, m: 4 },
                    ] {
                        if ui
                            .selectable_label(s.prune_method == method, method.to_string())
                            .clicked()
                        {
                            changed(&|p| p.prune_method = method);
                        }
                    }
                });
            egui::ComboBox::from_label("scope")
                .selected_text(s.prune_scope.name())
                .show_ui(ui, |ui| {
                    for scope in PruneScope::ALL {
                        if ui
                            .selectable_label(s.prune_scope == scope, scope.name())
                            .clicked()
                        {
                            changed(&|p| p.prune_scope = scope);
                        }
                    }
                });
            if let Some(levels) = levels_ui(ui, s) {
                changed(&|p| p.levels = levels.clone());
            }
            if ui
                .add_enabled(can_run, egui::Button::new("Sweep"))
                .on_hover_text(
                    "Prunes a copy of the weights at each sparsity and measures the mean loss \
                     (N:M ignores the levels: its sparsity is 1 − N/M)",
                )
                .clicked()
            {
                action = Some(Action::RunSweep(SweepChoice::Prune));
            }
        });
        prune_plot_ui(ui, state);

        let ui = &mut columns[1];
        ui.strong("Activation sparsification");
        ui.horizontal_wrapped(|ui| {
            for m in METHODS {
                let name = method_name(m);
                let mut on = s.methods.iter().any(|n| n == name);
                if ui.checkbox(&mut on, name).changed() {
                    changed(&|p| {
                        p.methods.retain(|n| n != name);
                        if on {
                            p.methods.push(name.into());
                        }
                    });
                }
            }
        });
        ui.horizontal(|ui| {
            ui.label("calibrated on");
            if let Some(calibration) = file_field(
                ui,
                &s.calibration,
                (120.0, "the measured text"),
                "The text whose activations set CATS's and CHESS's thresholds and CETT's cut. \
                 Empty: the measured text. A UTF-8 text file: as many tokens as a corpus is \
                 measured on",
            ) {
                changed(&|p| p.calibration = calibration.clone());
            }
        });
        ui.horizontal_wrapped(|ui| {
            egui::ComboBox::from_label("PPL-p% search, p =")
                .selected_text(s.search.clone())
                .show_ui(ui, |ui| {
                    // FATReLU's threshold has no bound to search within.
                    for m in &METHODS[..4] {
                        let name = method_name(*m);
                        if ui.selectable_label(s.search == name, name).clicked() {
                            changed(&|p| p.search = name.into());
                        }
                    }
                });
            let mut p = s.ppl_p;
            if ui
                .add(
                    egui::DragValue::new(&mut p)
                        .range(0.01..=100.0)
                        .speed(0.1)
                        .suffix(" %"),
                )
                .on_hover_text("The Sparsing Law's PPL-p%: perplexity at most p % above dense")
                .changed()
            {
                changed(&|x| x.ppl_p = p);
            }
            if ui
                .add_enabled(can_run, egui::Button::new("Sweep"))
                .on_hover_text(
                    "Each method over its grid (calibrated as set above), then a binary search \
                     for the searched method's PPL-p% point",
                )
                .clicked()
            {
                action = Some(Action::RunSweep(SweepChoice::Sparsify));
            }
        });
        sparsify_plot_ui(ui, state);
    });
    if let Some(settings) = edited {
        return Some(Action::SetSweepSettings(settings));
    }
    if let Some(job) = state.job.as_ref().filter(|j| j.outcome.is_none()) {
        ui.horizontal(|ui| {
            ui.add(egui::ProgressBar::new(job.fraction).text(&job.message));
            if ui.button("Cancel").clicked() {
                action = Some(Action::CancelJob);
            }
        });
    }
    action
}

/// A text file's path, typed or picked with *File…*: the new path when either changed it.
fn file_field(ui: &mut Ui, path: &str, (width, hint): (f32, &str), hover: &str) -> Option<String> {
    let mut typed = path.to_string();
    let edited = ui
        .add(
            egui::TextEdit::singleline(&mut typed)
                .desired_width(width)
                .hint_text(hint),
        )
        .on_hover_text(hover)
        .changed();
    if ui.button("File…").clicked()
        && let Some(picked) = rfd::FileDialog::new().pick_file()
    {
        return Some(picked.display().to_string());
    }
    edited.then_some(typed)
}

/// The levels as text, applied when it parses (the hover says why not).
/// The levels as text; new levels when the edited text parses (the hover says why not).
fn levels_ui(ui: &mut Ui, s: &SweepSettings) -> Option<Vec<f64>> {
    let id = egui::Id::unique("sweep_levels");
    let shown = || {
        s.levels
            .iter()
            .map(|v| format!("{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The text being typed lives in egui's memory until it parses.
    let mut text: String = ui.data_mut(|d| d.get_temp(id)).unwrap_or_else(shown);
    let parsed = parse_levels(&text);
    let r = ui
        .add(egui::TextEdit::singleline(&mut text).desired_width(150.0))
        .on_hover_text(match &parsed {
            Ok(_) => "Sparsities to prune to, e.g. 0, 0.1, 0.2, …, 0.9".to_string(),
            Err(why) => why.clone(),
        });
    if r.changed() {
        let levels = parse_levels(&text).ok();
        ui.data_mut(|d| d.insert_temp(id, text));
        return levels;
    }
    if !r.has_focus() {
        ui.data_mut(|d| d.remove::<String>(id));
    }
    None
}

/// The dense model's loss (dashed) and the bound a sweep holds to (dotted).
fn dense_lines(plot: &mut egui_plot::PlotUi, dense: f64, bound_name: String, bound: f64) {
    plot.hline(
        HLine::new("dense", dense)
            .color(Color32::GRAY)
            .style(egui_plot::LineStyle::dashed_loose()),
    );
    plot.hline(
        HLine::new(bound_name, bound)
            .color(Color32::from_gray(170))
            .style(egui_plot::LineStyle::dotted_loose()),
    );
}

fn prune_plot_ui(ui: &mut Ui, state: &AppState) {
    let Some(sweep) = &state.sweeps.prune else {
        ui.weak(
            "Sweep to see the loss at each sparsity; the knee is the last sparsity whose loss \
             stays within 1 % of the dense model's (essential sparsity).",
        );
        return;
    };
    ui.weak(&state.sweeps.prune_text);
    ui.label(match sweep.knee {
        Some(k) => format!(
            "essential sparsity {k} (dense loss {:.4}, {} tokens)",
            sweep.dense_mean_loss, sweep.tokens
        ),
        None => format!(
            "no swept sparsity keeps the loss within 1 % of dense ({:.4})",
            sweep.dense_mean_loss
        ),
    });
    let points: Vec<[f64; 2]> = sweep
        .points
        .iter()
        .map(|p| [p.parameter, p.mean_loss])
        .collect();
    Plot::new("prune_sweep")
        .height((ui.available_height() - 40.0).max(140.0))
        .x_axis_label("sparsity (share of weights removed)")
        .y_axis_label("mean loss (nats)")
        .legend(Legend::default())
        .include_y(sweep.dense_mean_loss)
        .show(ui, |plot| {
            dense_lines(
                plot,
                sweep.dense_mean_loss,
                "dense + 1 %".into(),
                (1.0 + KNEE_EPSILON) * sweep.dense_mean_loss,
            );
            plot.line(
                Line::new(sweep.method.to_string(), PlotPoints::from(points.clone()))
                    .color(METHOD_COLOURS[0]),
            );
            plot.points(
                Points::new("", PlotPoints::from(points))
                    .radius(3.0)
                    .color(METHOD_COLOURS[0]),
            );
            if let Some(k) = sweep.knee {
                plot.vline(VLine::new(format!("knee {k}"), k).color(METHOD_COLOURS[3]));
            }
        });
}

fn sparsify_plot_ui(ui: &mut Ui, state: &AppState) {
    let Some(sweep) = &state.sweeps.sparsify else {
        ui.weak(
            "Sweep to draw each method's loss against the activation sparsity it reaches, and \
             find the PPL-p% point (CETT-PPL-1% by default).",
        );
        return;
    };
    ui.weak(&state.sweeps.sparsify_text);
    let allowed = allowed_loss(sweep.dense_mean_loss, sweep.ppl_p);
    ui.label(match &sweep.found {
        Some(p) => format!(
            "{}-PPL-{}%: parameter {:.4}, sparsity {:.3}, loss {:.4} (dense {:.4})",
            sweep.searched,
            sweep.ppl_p,
            p.parameter,
            p.sparsity,
            p.mean_loss,
            sweep.dense_mean_loss
        ),
        None => format!("dense loss {:.4}", sweep.dense_mean_loss),
    });
    Plot::new("sparsify_sweep")
        .height((ui.available_height() - 40.0).max(140.0))
        .x_axis_label("activation sparsity (exact zeros)")
        .y_axis_label("mean loss (nats)")
        .legend(Legend::default())
        .include_x(0.0)
        .include_x(1.0)
        .include_y(sweep.dense_mean_loss)
        .show(ui, |plot| {
            dense_lines(
                plot,
                sweep.dense_mean_loss,
                format!("PPL + {} %", sweep.ppl_p),
                allowed,
            );
            for curve in &sweep.curves {
                let colour = METHODS
                    .iter()
                    .position(|m| method_name(*m) == curve.method)
                    .map_or(Color32::GRAY, |i| METHOD_COLOURS[i]);
                let mut points: Vec<[f64; 2]> = curve
                    .points
                    .iter()
                    .map(|p| [p.sparsity, p.mean_loss])
                    .collect();
                points.sort_by(|a, b| a[0].total_cmp(&b[0]));
                plot.line(
                    Line::new(curve.method.clone(), PlotPoints::from(points.clone())).color(colour),
                );
                plot.points(
                    Points::new(curve.method.clone(), PlotPoints::from(points))
                        .radius(2.5)
                        .color(colour),
                );
            }
            if let Some(p) = &sweep.found {
                plot.points(
                    Points::new(
                        format!("{}-PPL-{}%", sweep.searched, sweep.ppl_p),
                        PlotPoints::from(vec![[p.sparsity, p.mean_loss]]),
                    )
                    .shape(egui_plot::MarkerShape::Diamond)
                    .radius(7.0)
                    .color(Color32::YELLOW),
                );
            }
        });
}
