//! Prompt editor and the token strip: each token a chip coloured by a chosen per-token
//! quantity; hovering shows its id, text, loss and the model's top predictions there.

use egui::{RichText, Ui};

use super::{text_colour_on, visible};
use crate::model::BosMode;
use crate::ui::heatmap::Colormap;
use crate::ui::state::{Action, AppState, TokenColour};

pub fn prompt_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        let mut text = state.prompt.clone();
        let label = ui.label("Prompt");
        let width = (ui.available_width() - 80.0).max(200.0);
        let edit = ui
            .add(
                egui::TextEdit::multiline(&mut text)
                    .desired_rows(2)
                    .desired_width(width)
                    .hint_text("Type a prompt, then Ctrl+Enter")
                    .id_salt("prompt"),
            )
            .labelled_by(label.id);
        if edit.changed() {
            action = Some(Action::SetPrompt(text));
        }
        ui.vertical(|ui| {
            let run = ui.add_enabled(state.model.is_some(), egui::Button::new("Run"));
            if run.on_hover_text("Run the prompt (Ctrl+Enter)").clicked() {
                action = Some(Action::Run);
            }
        });
    });
    action.or_else(|| token_strip_ui(ui, state))
}

/// The BOS toggle: auto (as HF's tokenizer does for this model), always, never.
fn bos_ui(ui: &mut Ui, state: &AppState) -> Option<BosMode> {
    let adds = state.model.as_ref().is_some_and(|m| m.adds_bos);
    let has = state
        .model
        .as_ref()
        .is_some_and(|m| m.bos_token_id.is_some());
    let auto = if adds {
        "BOS: auto (on)"
    } else {
        "BOS: auto (off)"
    };
    let label = |m: BosMode| match m {
        BosMode::Auto => auto,
        BosMode::Yes => "BOS: on",
        BosMode::No => "BOS: off",
    };
    let mut chosen = None;
    egui::ComboBox::from_id_salt("bos")
        .selected_text(label(state.bos))
        .width(130.0)
        .show_ui(ui, |ui| {
            for m in [BosMode::Auto, BosMode::Yes, BosMode::No] {
                let enabled = m != BosMode::Yes || has;
                let item =
                    ui.add_enabled(enabled, egui::Button::selectable(state.bos == m, label(m)));
                if item.clicked() && state.bos != m {
                    chosen = Some(m);
                }
            }
        })
        .response
        .on_hover_text(
            "Put the model's beginning-of-sequence token before the prompt. Auto does what \
             HF's tokenizer does for this model (Gemma adds one; GPT-2 and SmolLM2 do not).",
        );
    chosen
}

/// Per-token values for the strip's colour, and how to map them.
fn quantity(state: &AppState) -> (Vec<Option<f32>>, Colormap, String) {
    let pass = state.shown();
    let n = pass.tokens.len();
    match state.token_colour {
        TokenColour::Loss => {
            // Position p's loss is of predicting token p+1: colour the predicted token.
            let mut v = vec![None; n];
            if let Some(f) = &pass.finished {
                for (p, &l) in f.per_token_nll.iter().enumerate() {
                    v[p + 1] = Some(l);
                }
            }
            let max = v.iter().flatten().fold(1.0f32, |m, &x| m.max(x));
            (
                v,
                Colormap::Sequential { min: 0.0, max },
                "loss (nats)".into(),
            )
        }
        TokenColour::SelectedNeuron => {
            let s = &state.selection;
            let column = s
                .neuron
                .and_then(|i| Some(pass.layer(s.layer)?.neuron_column(i)));
            match column {
                Some(c) => {
                    let cmap = Colormap::robust_diverging(&c);
                    let label = format!("L{} N{} activation", s.layer, s.neuron.unwrap_or(0));
                    (c.into_iter().map(Some).collect(), cmap, label)
                }
                None => (
                    vec![None; n],
                    Colormap::Diverging { max: 1.0 },
                    "select a neuron".into(),
                ),
            }
        }
        TokenColour::SelectedLatent => {
            let column = state
                .selection
                .latent
                .and_then(|(id, j)| Some((j, pass.sae(id)?.latent_activations(j as u32))));
            match column {
                Some((j, c)) => {
                    let max = c.iter().fold(1e-6f32, |m, v| m.max(*v));
                    (
                        c.into_iter().map(Some).collect(),
                        Colormap::Sequential { min: 0.0, max },
                        format!("latent {j} activation"),
                    )
                }
                None => (
                    vec![None; n],
                    Colormap::Sequential { min: 0.0, max: 1.0 },
                    "select an SAE latent".into(),
                ),
            }
        }
        TokenColour::Sparsity => {
            let v = match pass.layer(state.selection.layer) {
                Some(l) => l
                    .sparsity
                    .per_token_frac_active
                    .iter()
                    .map(|&x| Some(x as f32))
                    .collect(),
                None => vec![None; n],
            };
            (
                v,
                Colormap::Sequential { min: 0.0, max: 1.0 },
                format!(
                    "L{} active fraction ({})",
                    state.selection.layer, state.sparsity
                ),
            )
        }
    }
}

fn token_strip_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.label("Colour tokens by");
        for (c, name) in [
            (TokenColour::Loss, "loss"),
            (TokenColour::SelectedNeuron, "selected neuron"),
            (TokenColour::SelectedLatent, "selected SAE latent"),
            (TokenColour::Sparsity, "sparsity"),
        ] {
            if ui.selectable_label(state.token_colour == c, name).clicked() {
                action = Some(Action::SetTokenColour(c));
            }
        }
        ui.separator();
        if let Some(bos) = bos_ui(ui, state) {
            action = Some(Action::SetBos(bos));
        }
    });
    let pass = state.shown();
    if pass.tokens.is_empty() {
        ui.weak("Tokens appear here after a run.");
        return action;
    }
    let (values, cmap, label) = quantity(state);
    egui::ScrollArea::horizontal()
        .id_salt("token_strip")
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.spacing_mut().item_spacing.x = 2.0;
                for (p, token) in pass.tokens.iter().enumerate() {
                    let fill = values.get(p).copied().flatten().map(|v| cmap.color(v));
                    let text_colour = fill.map_or(ui.visuals().text_color(), text_colour_on);
                    let chip = egui::Button::new(
                        RichText::new(visible(token)).monospace().color(text_colour),
                    )
                    .fill(fill.unwrap_or(ui.visuals().faint_bg_color));
                    let response = ui.add(chip);
                    response.on_hover_ui(|ui| {
                        ui.label(format!(
                            "position {p} · id {}",
                            pass.token_ids.get(p).copied().unwrap_or(0)
                        ));
                        ui.monospace(format!("{token:?}"));
                        if let Some(v) = values.get(p).copied().flatten() {
                            ui.label(format!("{label}: {v:.4}"));
                        }
                        if let Some(f) = &pass.finished {
                            if p > 0
                                && let Some(l) = f.per_token_nll.get(p - 1)
                            {
                                ui.label(format!("loss predicting this token: {l:.3} nats"));
                            }
                            if let Some(preds) = f.predictions.get(p) {
                                ui.label("next-token predictions:");
                                for pr in preds {
                                    ui.monospace(format!(
                                        "{:>6.2}%  {}",
                                        pr.prob * 100.0,
                                        visible(&pr.token)
                                    ));
                                }
                            }
                        }
                    });
                }
            });
        });
    action
}
