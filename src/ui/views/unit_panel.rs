//! What a corpus store knows about one unit (an MLP neuron, a hook unit or an SAE latent),
//! drawn in the inspector below its live controls: descriptions with their origin and score,
//! the user's own note, density / max / mean, the corpus histogram, the top-activating windows
//! as token strips tinted by activation (hover: token and value; the peak token boxed; click:
//! run the window as the prompt), and the quantile groups, collapsed.

use egui::{Color32, RichText, Sense, Ui};
use egui_plot::{BarChart, Plot};

use super::visible;
use crate::describe::store::{ExampleOut, ExplanationScore, UnitReport};
use crate::ui::state::{Action, AppState};
use crate::worker::stores::UnitRef;

/// Top examples shown before "show all".
const TOP_SHOWN: usize = 8;

pub fn unit_panel_ui(ui: &mut Ui, state: &AppState, unit: &UnitRef) -> Option<Action> {
    let mut action = None;
    ui.strong(format!("From the corpus · {} {}", unit.source, unit.unit));
    if !state.stores.has_source(&unit.source) {
        ui.weak(if state.stores.open.is_empty() {
            "No corpus store is open for this model: scan a corpus (Scan corpus… above the \
             views) or open a store to see this unit's top examples and descriptions."
                .to_string()
        } else {
            format!(
                "The open stores do not cover {}: scan it (Scan corpus…) to see its examples.",
                unit.source
            )
        });
        return None;
    }
    let Some(ready) = state.stores.report(unit) else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.weak("reading the store…");
        });
        return None;
    };
    let Some(report) = ready.report.as_deref() else {
        ui.weak("No open store has this unit.");
        return None;
    };
    action = action.or(descriptions_ui(ui, state, unit, report));
    action = action.or(explain_ui(ui, state, unit));
    ui.add_space(4.0);
    stats_ui(ui, report);
    histogram_ui(ui, unit, report);
    let bos_id = state
        .stores
        .open
        .iter()
        .find(|s| Some(&s.path) == ready.store.as_ref())
        .and_then(|s| s.scan.bos_id);
    action = action.or(examples_ui(ui, unit, report, bos_id));
    action = action.or(facets_ui(ui, state, unit, report, bos_id));
    ui.horizontal(|ui| {
        if ui
            .small_button("Export examples")
            .on_hover_text(format!(
                "This panel as {} and its examples as CSV, a row per token",
                state.figure_format.label()
            ))
            .clicked()
        {
            action = Some(Action::Export(crate::ui::state::View::Unit));
        }
        if state.show_timings {
            ui.weak(format!("read in {:.1} ms", ready.duration_ms));
        }
    });
    action
}

/// The unit's facets: its top windows clustered by the residual stream at their peaks
/// (definitions §15), each with its size, mean peak, label (and the explainer's, when an
/// endpoint is set) and strongest windows.
fn facets_ui(
    ui: &mut Ui,
    state: &AppState,
    unit: &UnitRef,
    report: &UnitReport,
    bos_id: Option<u32>,
) -> Option<Action> {
    let mut action = None;
    let asked = state.facets_asked.as_ref() == Some(unit);
    let facets = state
        .facets
        .as_ref()
        .filter(|f| f.source == unit.source && f.unit == unit.unit);
    ui.horizontal(|ui| {
        if ui
            .small_button("Facets")
            .on_hover_text(
                "Cluster the top windows by the residual stream at their peaks (k-means, k by \
                 silhouette): the different contexts this unit fires in",
            )
            .clicked()
        {
            action = Some(Action::ShowFacets(unit.clone()));
        }
        if asked && facets.is_none() {
            ui.spinner();
        }
        if let Some(f) = facets {
            ui.weak(format!(
                "{} facet(s), silhouette {:.2}, at {}",
                f.k, f.silhouette, f.hook
            ));
        }
    });
    let facets = facets?;
    if let Some(why) = &facets.explain_error {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!("no explainer labels: {why}"),
        );
    }
    let scale = report.max.unwrap_or(0.0).max(f32::MIN_POSITIVE);
    for (i, facet) in facets.facets.iter().enumerate() {
        egui::CollapsingHeader::new(format!(
            "facet {}: {} · {} window(s), mean peak {:.2}",
            i + 1,
            facet.label,
            facet.size,
            facet.mean_peak
        ))
        .id_salt(("facet", &unit.source, unit.unit, i))
        .default_open(i == 0)
        .show(ui, |ui| {
            if let Some(explanation) = &facet.explanation {
                ui.label(format!("explainer: {explanation}"))
                    .on_hover_text("What the explainer LLM (Explain with an LLM's endpoint) made of this facet's strongest windows");
            }
            for e in facet.examples.iter().take(3) {
                action = action.take().or(example_strip(ui, e, scale, bos_id));
            }
        });
    }
    action
}

/// Units "Explain all in view" sends at most.
const EXPLAIN_IN_VIEW: usize = 32;

/// *Explain with an LLM*: the endpoint, and buttons for this unit and the units in view, each
/// with its request estimate (the run is a job: progress and cancel in the top bar).
fn explain_ui(ui: &mut Ui, state: &AppState, unit: &UnitRef) -> Option<Action> {
    let mut action = None;
    egui::CollapsingHeader::new("Explain with an LLM")
        .id_salt("explain")
        .show(ui, |ui| {
            let mut s = state.explain_settings.clone();
            egui::Grid::new("explain_settings")
                .num_columns(2)
                .show(ui, |ui| {
                    for (name, value, hint) in [
                        ("endpoint", &mut s.endpoint, "http://127.0.0.1:8080/v1"),
                        ("model", &mut s.model, "the explainer's name there"),
                        ("key from $", &mut s.api_key_env, "OPENAI_API_KEY"),
                    ] {
                        let label = ui.label(name);
                        ui.add(
                            egui::TextEdit::singleline(value)
                                .hint_text(hint)
                                .desired_width(180.0),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                    }
                });
            ui.checkbox(&mut s.openai_prompt, "OpenAI's prompt (else delphi's)");
            if s != state.explain_settings {
                action = Some(Action::SetExplainSettings(s));
            }
            let busy = state.job_running();
            let ready = !busy && !state.explain_settings.model.trim().is_empty();
            let estimate = |units: &[UnitRef]| {
                state
                    .explain_options(units)
                    .map_or(0, |o| o.estimated_requests())
            };
            let this = vec![unit.clone()];
            let in_view = state.units_in_view(&unit.source, EXPLAIN_IN_VIEW);
            ui.horizontal_wrapped(|ui| {
                if ui
                    .add_enabled(ready, egui::Button::new("Explain"))
                    .on_hover_text(format!(
                        "Explain and score this unit: ≈ {} requests",
                        estimate(&this)
                    ))
                    .clicked()
                {
                    action = Some(Action::Explain(this.clone()));
                }
                let label = format!(
                    "Explain all in view ({} units, ≈ {} requests)",
                    in_view.len(),
                    estimate(&in_view)
                );
                if ui
                    .add_enabled(ready && !in_view.is_empty(), egui::Button::new(label))
                    .on_hover_text(
                        "The latents firing on the prompt (or the layer's neurons by peak \
                         |activation|), strongest first",
                    )
                    .clicked()
                {
                    action = Some(Action::Explain(in_view.clone()));
                }
            });
            if busy {
                ui.weak("a job is running (top bar)");
            }
        });
    action
}

/// A scorer's headline, and its other metrics for the hover.
pub fn score_text(s: &ExplanationScore) -> (String, String) {
    let metric = |key: &str| s.detail.get(key).and_then(serde_json::Value::as_f64);
    let count = |key: &str| {
        s.detail
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    if s.scorer == "simulation" {
        let label = format!("simulation r {:.2}", s.score);
        let detail = format!(
            "Pearson correlation of simulated and true activations, pooled over {} tokens of \
             {} sequences ({} predictions from logprobs); {} answer(s) unparsed",
            count("tokens"),
            count("sequences"),
            count("from_logprobs"),
            count("unparsed")
        );
        return (label, detail);
    }
    let label = format!("{} {:.2}", s.scorer, s.score);
    let mut parts = vec![format!("balanced accuracy {:.3}", s.score)];
    for (name, key) in [
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("AUC", "auc"),
    ] {
        if let Some(v) = metric(key) {
            parts.push(format!("{name} {v:.3}"));
        }
    }
    parts.push(format!(
        "{} answers, {} unparsed",
        count("n"),
        count("unparsed")
    ));
    (label, parts.join(" · "))
}

fn descriptions_ui(
    ui: &mut Ui,
    state: &AppState,
    unit: &UnitRef,
    report: &UnitReport,
) -> Option<Action> {
    let mut action = None;
    if report.explanations.is_empty() {
        ui.weak("No description yet: write one below or import explanations.");
    }
    for e in report.explanations.iter().filter(|e| e.origin != "user") {
        ui.label(RichText::new(&e.description).strong());
        let mut origin = vec![e.origin.clone()];
        origin.extend(e.explainer_model.clone());
        origin.extend(e.type_name.clone());
        // Scores of our own runs are listed per scorer below; an imported score stands here.
        if let (Some(score), true) = (e.score, e.scores.is_empty()) {
            origin.push(format!("score {score:.3}"));
        }
        let line = ui.weak(origin.join(" · "));
        if let Some(file) = &e.file {
            line.on_hover_text(file);
        }
        if !e.scores.is_empty() {
            ui.horizontal_wrapped(|ui| {
                for s in &e.scores {
                    let (label, detail) = score_text(s);
                    ui.weak(label).on_hover_text(detail);
                }
            });
        }
    }
    // The user's note: a draft in egui memory until saved.
    let saved = report
        .explanations
        .iter()
        .find(|e| e.origin == "user")
        .map(|e| e.description.clone())
        .unwrap_or_default();
    let id = egui::Id::unique(("unit_note", &unit.source, unit.unit));
    let mut draft: String = ui.data(|d| d.get_temp(id)).unwrap_or_else(|| saved.clone());
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut draft)
                .hint_text("your description")
                .desired_width(ui.available_width() - 60.0),
        );
        if ui
            .add_enabled(draft != saved, egui::Button::new("Save"))
            .on_hover_text("Saved in the store (empty removes it); searchable")
            .clicked()
        {
            action = Some(Action::SetDescription(unit.clone(), draft.clone()));
        }
    });
    ui.data_mut(|d| d.insert_temp(id, draft));
    ui.horizontal(|ui| {
        if ui
            .button("Import explanations…")
            .on_hover_text(
                "A Neuronpedia export (JSON or JSONL, .gz too) or OpenAI explanation files, \
                 for this unit's source",
            )
            .clicked()
            && let Some(file) = rfd::FileDialog::new().pick_file()
        {
            action = Some(Action::ImportExplanations {
                file,
                source: unit.source.clone(),
                force: false,
            });
        }
    });
    if let Some(refused) = state
        .stores
        .refused_import
        .as_ref()
        .filter(|r| r.source == unit.source)
    {
        ui.colored_label(ui.visuals().warn_fg_color, &refused.message);
        if ui.button("Import anyway").clicked() {
            action = Some(Action::ImportExplanations {
                file: refused.file.clone(),
                source: refused.source.clone(),
                force: true,
            });
        }
    }
    action
}

fn stats_ui(ui: &mut Ui, report: &UnitReport) {
    ui.label(format!(
        "density {:.4} · max {} · mean {:.4} over {} tokens",
        report.density,
        report
            .max
            .map_or_else(|| "—".to_string(), |m| format!("{m:.3}")),
        report.mean,
        report.tokens_scanned
    ))
    .on_hover_text("density: fraction of scanned tokens with activation > 0");
}

fn histogram_ui(ui: &mut Ui, unit: &UnitRef, report: &UnitReport) {
    let h = &report.histogram;
    let n = h.counts.len().max(1);
    let width = (h.hi - h.lo) as f64 / n as f64;
    if width <= 0.0 {
        ui.weak("never positive on the corpus");
        return;
    }
    ui.label(format!(
        "corpus histogram of positive activations ({} tokens ≤ 0 not shown)",
        h.nonpositive
    ));
    let orange = Color32::from_rgb(213, 94, 0);
    Plot::new(("unit_hist", &unit.source, unit.unit))
        .height(90.0)
        .allow_drag(false)
        .allow_scroll(false)
        .x_axis_label("activation")
        .y_axis_label("tokens")
        .show(ui, |plot| {
            let edges: Vec<f64> = (0..=n).map(|i| h.lo as f64 + i as f64 * width).collect();
            let bars = super::bin_bars(&edges, &h.counts);
            plot.bar_chart(BarChart::new("tokens", bars).color(orange));
        });
}

fn examples_ui(
    ui: &mut Ui,
    unit: &UnitRef,
    report: &UnitReport,
    bos_id: Option<u32>,
) -> Option<Action> {
    let mut action = None;
    let scale = report.max.unwrap_or(0.0).max(f32::MIN_POSITIVE);
    ui.label(format!(
        "top {} windows by max activation (click one to run it as the prompt)",
        report.examples.len()
    ));
    let all_id = egui::Id::unique(("unit_all", &unit.source, unit.unit));
    let show_all: bool = ui.data(|d| d.get_temp(all_id)).unwrap_or(false);
    let shown = if show_all {
        report.examples.len()
    } else {
        TOP_SHOWN
    };
    for e in report.examples.iter().take(shown) {
        action = action.or(example_strip(ui, e, scale, bos_id));
    }
    if report.examples.len() > TOP_SHOWN {
        let label = if show_all { "show fewer" } else { "show all" };
        if ui.small_button(label).clicked() {
            ui.data_mut(|d| d.insert_temp(all_id, !show_all));
        }
    }
    egui::CollapsingHeader::new("quantile groups")
        .id_salt(("unit_quantiles", &unit.source, unit.unit))
        .default_open(false)
        .show(ui, |ui| {
            for q in report.quantiles.iter().rev() {
                if q.examples.is_empty() {
                    continue;
                }
                ui.weak(format!("window max in ({:.3}, {:.3}]", q.lo, q.hi));
                for e in &q.examples {
                    action = action.take().or(example_strip(ui, e, scale, bos_id));
                }
            }
        });
    action
}

/// The tint of an activation: orange, its strength the activation over the unit's maximum
/// (negative values pale blue).
pub fn tint(act: f32, scale: f32) -> Color32 {
    let t = (act / scale).clamp(-1.0, 1.0);
    if t >= 0.0 {
        Color32::from_rgba_unmultiplied(213, 94, 0, (t * 200.0) as u8)
    } else {
        Color32::from_rgba_unmultiplied(0, 114, 178, (-t * 120.0) as u8)
    }
}

/// The window's text as a prompt (what its tokens spell, without the BOS the scan put in
/// front: the prompt bar's BOS setting adds it).
pub fn window_text(e: &ExampleOut, bos_id: Option<u32>) -> String {
    let skip = usize::from(bos_id.is_some() && e.token_ids.first().copied() == bos_id);
    e.tokens[skip.min(e.tokens.len())..].concat()
}

/// Tokens of a window shown before its peak and after it (the whole window runs on click).
const BEFORE_PEAK: usize = 20;
const AFTER_PEAK: usize = 6;

/// The positions of a window's strip: context before the peak, a little after.
pub fn strip_range(n_tokens: usize, max_pos: usize) -> std::ops::Range<usize> {
    let start = max_pos.saturating_sub(BEFORE_PEAK);
    let end = (max_pos + AFTER_PEAK + 1).min(n_tokens);
    start.min(end)..end
}

/// One window: its max, then its tokens around the peak tinted by activation; the peak
/// underlined.
fn example_strip(ui: &mut Ui, e: &ExampleOut, scale: f32, bos_id: Option<u32>) -> Option<Action> {
    let mut clicked = false;
    let range = strip_range(e.tokens.len(), e.max_pos as usize);
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        ui.monospace(RichText::new(format!("{:>7.3} ", e.max_act)).weak());
        if range.start > 0 {
            ui.weak("…");
        }
        for (p, (token, &act)) in e
            .tokens
            .iter()
            .zip(&e.acts)
            .enumerate()
            .skip(range.start)
            .take(range.len())
        {
            let mut text = RichText::new(visible(token))
                .monospace()
                .background_color(tint(act, scale));
            if p as u32 == e.max_pos {
                text = text.underline().strong();
            }
            let r = ui
                .add(egui::Label::new(text).sense(Sense::click()))
                .on_hover_text(format!(
                    "{:?} · {act:.4}{}\nwindow {} · position {p}",
                    token,
                    if p as u32 == e.max_pos { " (max)" } else { "" },
                    e.window
                ));
            clicked |= r.clicked();
        }
        if range.end < e.tokens.len() {
            ui.weak("…");
        }
    });
    clicked.then(|| Action::RunText(window_text(e, bos_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_follow_the_activation_over_the_maximum() {
        assert_eq!(tint(0.0, 2.0).a(), 0);
        assert_eq!(tint(2.0, 2.0).a(), 200);
        assert_eq!(tint(4.0, 2.0).a(), 200, "clamped");
        assert!(tint(-1.0, 2.0).b() > 0);
    }

    #[test]
    fn strips_show_the_context_before_the_peak() {
        assert_eq!(strip_range(64, 40), 20..47);
        assert_eq!(strip_range(64, 3), 0..10);
        assert_eq!(strip_range(64, 63), 43..64);
        assert_eq!(strip_range(0, 0), 0..0);
    }

    #[test]
    fn a_window_runs_without_the_scans_bos() {
        let e = ExampleOut {
            window: 0,
            token_ids: vec![2, 10, 11],
            tokens: vec!["<bos>".into(), "To".into(), " be".into()],
            acts: vec![0.0; 3],
            max_act: 0.0,
            max_pos: 1,
        };
        assert_eq!(window_text(&e, Some(2)), "To be");
        assert_eq!(window_text(&e, None), "<bos>To be");
    }

    #[test]
    fn scores_read_as_their_headline_with_the_rest_on_hover() {
        let binary = ExplanationScore {
            scorer: "detection".into(),
            score: 0.775,
            detail: serde_json::json!({"n": 9, "precision": 0.75, "recall": 0.75, "f1": 0.75,
                "auc": null, "unparsed": 1}),
        };
        let (label, hover) = score_text(&binary);
        assert_eq!(label, "detection 0.78");
        assert_eq!(
            hover,
            "balanced accuracy 0.775 · precision 0.750 · recall 0.750 · F1 0.750 · 9 answers, \
             1 unparsed"
        );
        let simulation = ExplanationScore {
            scorer: "simulation".into(),
            score: -0.396,
            detail: serde_json::json!({"sequences": 2, "tokens": 4, "from_logprobs": 3,
                "unparsed": 0, "correlation": -0.396}),
        };
        let (label, hover) = score_text(&simulation);
        assert_eq!(label, "simulation r -0.40");
        assert!(
            hover.contains("pooled over 4 tokens of 2 sequences (3 predictions"),
            "{hover}"
        );
    }
}
