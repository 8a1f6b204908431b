//! Generate: the baseline's and the intervened model's continuations of the prompt side by
//! side, streaming token by token; tokens coloured by their probability or by the watched
//! unit's activation, the first token where the two part outlined; sampling settings above.

use egui::{Color32, RichText, Stroke, Ui};

use super::{text_colour_on, visible};
use crate::ui::heatmap::{Colormap, legend_ui};
use crate::ui::state::generation::{Continuation, GenerateSettings, GenerationView};
use crate::ui::state::{Action, AppState, GenerateColour};
use crate::worker::Variant;

/// Outline of the first token where the continuations part.
const PARTING: Color32 = Color32::from_rgb(230, 70, 50);

pub fn generate_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = settings_ui(ui, state);
    let Some(g) = &state.generation else {
        ui.add_space(8.0);
        ui.weak(
            "Continue the prompt with the baseline model and, side by side, with the enabled \
             interventions. Greedy by default, so the two differ only by the edit.",
        );
        return action;
    };
    ui.separator();
    if let Some(a) = status_ui(ui, state, g) {
        action = Some(a);
    }
    let cmap = colormap(state, g);
    if let Some((cmap, label)) = &cmap {
        legend_ui(ui, *cmap, label);
    }
    ui.add_space(4.0);
    let parting = g.first_difference();
    let columns: Vec<(Variant, &Continuation, String)> =
        std::iter::once((Variant::Baseline, &g.baseline, "Baseline".to_string()))
            .chain(g.intervened.as_ref().map(|c| {
                (
                    Variant::Intervened,
                    c,
                    format!("Intervened: {}", g.interventions.join(", ")),
                )
            }))
            .collect();
    let n = columns.len();
    egui::ScrollArea::vertical()
        .id_salt("generate_scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.columns(n, |cols| {
                for (ui, (variant, c, title)) in cols.iter_mut().zip(&columns) {
                    if let Some(a) =
                        continuation_ui(ui, state, g, *variant, c, title, &cmap, parting)
                    {
                        action = Some(a);
                    }
                }
            });
        });
    action
}

fn settings_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let mut s: GenerateSettings = state.generate_settings.clone();
    ui.horizontal_wrapped(|ui| {
        let running = state.generation.as_ref().is_some_and(|g| g.is_running());
        let can = state.model.is_some() && !state.prompt.is_empty();
        if running {
            if ui.button("Stop").clicked() {
                action = Some(Action::StopGeneration);
            }
        } else if ui
            .add_enabled(can, egui::Button::new("Continue prompt"))
            .on_hover_text("Continue the prompt (the continuations restart when an edit changes)")
            .clicked()
        {
            action = Some(Action::Generate);
        }
        ui.separator();
        let label = ui.label("max new tokens");
        ui.add(egui::DragValue::new(&mut s.max_new_tokens).range(1..=2048))
            .labelled_by(label.id);
        let label = ui.label("temperature");
        ui.add(
            egui::DragValue::new(&mut s.temperature)
                .range(0.0..=5.0)
                .speed(0.01)
                .max_decimals(2),
        )
        .labelled_by(label.id)
        .on_hover_text("0 = greedy (always the most likely token)");
        let sampling = s.temperature > 0.0;
        ui.add_enabled_ui(sampling, |ui| {
            let label = ui.label("top-k");
            ui.add(egui::DragValue::new(&mut s.top_k).range(0..=100_000))
                .labelled_by(label.id)
                .on_hover_text("0 = off");
            let label = ui.label("top-p");
            ui.add(
                egui::DragValue::new(&mut s.top_p)
                    .range(0.01..=1.0)
                    .speed(0.005)
                    .max_decimals(3),
            )
            .labelled_by(label.id)
            .on_hover_text("1 = off");
            let label = ui.label("seed");
            ui.add(egui::DragValue::new(&mut s.seed))
                .labelled_by(label.id);
        });
        let label = ui.label("stop at");
        ui.add(
            egui::TextEdit::singleline(&mut s.stop)
                .desired_width(60.0)
                .hint_text("text")
                .id_salt("generate_stop"),
        )
        .labelled_by(label.id);
        ui.checkbox(&mut s.ignore_eos, "ignore EOS");
    });
    if s != state.generate_settings {
        action = action.or(Some(Action::SetGenerateSettings(s)));
    }
    ui.horizontal(|ui| {
        ui.label("Colour tokens by");
        // The unit this generation watched; before one, the unit the next one will watch.
        let watched = match &state.generation {
            Some(g) => g
                .watch
                .as_ref()
                .map(|(_, label)| format!("{label} activation")),
            None => state
                .watched_unit()
                .map(|(_, label)| format!("{label} activation")),
        };
        for (c, name, enabled) in [
            (GenerateColour::Probability, "probability".to_string(), true),
            (
                GenerateColour::WatchedUnit,
                watched
                    .clone()
                    .unwrap_or_else(|| "a unit (select one, then generate)".into()),
                watched.is_some(),
            ),
        ] {
            let chip = ui.add_enabled(
                enabled,
                egui::Button::selectable(state.generate_colour == c, name),
            );
            if chip.clicked() {
                action = Some(Action::SetGenerateColour(c));
            }
        }
    });
    action
}

/// Timing, where the continuations part, and errors.
fn status_ui(ui: &mut Ui, state: &AppState, g: &GenerationView) -> Option<Action> {
    ui.horizontal_wrapped(|ui| {
        if g.is_running() {
            ui.spinner();
        }
        if let Some(e) = &g.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        match (g.intervened.is_some(), g.first_difference()) {
            (false, _) => ui.weak("no interventions: the baseline alone"),
            (true, Some(p)) => ui.label(
                RichText::new(format!("the continuations part at generated token {p}"))
                    .color(PARTING),
            ),
            (true, None) => ui.weak("the continuations agree so far"),
        };
        if state.show_timings {
            ui.separator();
            if let Some(ms) = g.first_token_ms {
                ui.weak(format!("first token after {ms:.0} ms"));
            }
            if let Some(f) = &g.baseline.finished {
                let steps = f.tokens.len().saturating_sub(1).max(1);
                ui.weak(format!(
                    "baseline prefill {:.0} ms · {:.1} ms per token after",
                    f.prefill_ms,
                    f.decode_ms / steps as f64
                ));
            }
        }
    });
    None
}

/// How token chips are coloured (`None`: by nothing yet).
fn colormap(state: &AppState, g: &GenerationView) -> Option<(Colormap, String)> {
    match state.generate_colour {
        GenerateColour::Probability => Some((
            Colormap::Sequential { min: 0.0, max: 1.0 },
            "probability".into(),
        )),
        GenerateColour::WatchedUnit => {
            let (_, label) = g.watch.as_ref()?;
            let acts: Vec<f32> = [Some(&g.baseline), g.intervened.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(|c| c.tokens.iter().filter_map(|t| t.activation))
                .collect();
            Some((
                Colormap::robust_diverging(&acts),
                format!("{label} activation"),
            ))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn continuation_ui(
    ui: &mut Ui,
    state: &AppState,
    g: &GenerationView,
    variant: Variant,
    c: &Continuation,
    title: &str,
    cmap: &Option<(Colormap, String)>,
    parting: Option<usize>,
) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.strong(title);
        if let Some(stop) = c.stop() {
            ui.weak(format!(
                "{} tokens · stopped: {}",
                c.tokens.len(),
                stop.as_str()
            ));
        } else {
            ui.weak(format!("{} tokens", c.tokens.len()));
        }
    });
    ui.horizontal(|ui| {
        let done = c.finished.is_some();
        if ui
            .add_enabled(done, egui::Button::new("Use as prompt"))
            .on_hover_text("Make the prompt and this continuation the new prompt, and run it")
            .clicked()
        {
            action = Some(Action::UseAsPrompt(variant));
        }
    });
    let prompt_len = c
        .finished
        .as_ref()
        .map(|f| f.prompt_ids.len())
        .or_else(|| g.baseline.finished.as_ref().map(|f| f.prompt_ids.len()));
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(1.0, 3.0);
        ui.label(RichText::new(&g.prompt).weak());
        for (i, t) in c.tokens.iter().enumerate() {
            let value = match state.generate_colour {
                GenerateColour::Probability => Some(t.prob),
                GenerateColour::WatchedUnit => t.activation,
            };
            let fill = cmap.as_ref().zip(value).map(|((cmap, _), v)| cmap.color(v));
            let text = RichText::new(visible(&t.text))
                .monospace()
                .color(fill.map_or(ui.visuals().text_color(), text_colour_on));
            let mut chip =
                egui::Button::new(text).fill(fill.unwrap_or(ui.visuals().faint_bg_color));
            if parting == Some(i) {
                chip = chip.stroke(Stroke::new(2.0, PARTING));
            }
            let response = ui.add(chip);
            // Named for screen readers even when the token's text is empty.
            let name = format!("generated token {i}: {:?}", t.text);
            response
                .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, name.clone()));
            response.on_hover_ui(|ui| {
                let position = prompt_len.map(|p| format!("position {} · ", p + i));
                ui.label(format!(
                    "generated token {i} · {}id {}",
                    position.unwrap_or_default(),
                    t.id
                ));
                ui.monospace(format!("{:?}", t.text));
                ui.label(format!("probability {:.4}", t.prob));
                if let (Some(a), Some((_, label))) = (t.activation, &g.watch) {
                    ui.label(format!("{label}: {a:.4}"));
                }
                ui.label("most likely here:");
                for (text, p) in &t.top {
                    ui.monospace(format!("{:>6.2}%  {}", p * 100.0, visible(text)));
                }
            });
            if t.text.contains('\n') {
                ui.end_row();
            }
        }
        if c.finished.is_none() && g.error.is_none() {
            ui.spinner();
        }
    });
    action
}
