//! The interventions list (toggle, edit, remove; undo/redo) and the before/after effect:
//! next-token probabilities, loss, and per-layer sparsity change.

use egui::Ui;

use super::visible;
use crate::ui::state::{Action, AppState, EditSpec, Show};

pub fn interventions_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    for (index, aside) in state.interventions.set_aside.iter().enumerate() {
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!(
                    "{} intervention(s) on the SAE {} @ {} are kept aside: {}",
                    aside.interventions.len(),
                    aside.sae.file.path.display(),
                    aside.sae.hook,
                    aside.reason
                ),
            );
            if ui
                .small_button("Locate SAE…")
                .on_hover_text("Attach the SAE from where it is now; its interventions come back")
                .clicked()
                && let Some(path) = super::features::pick_sae()
            {
                action = Some(Action::LocateSae { index, path });
            }
        });
    }
    ui.horizontal_wrapped(|ui| {
        ui.strong("Interventions");
        if ui
            .add_enabled(state.can_undo(), egui::Button::new("Undo").small())
            .on_hover_text("Undo the last change to the interventions (Ctrl+Z)")
            .clicked()
        {
            action = Some(Action::Undo);
        }
        if ui
            .add_enabled(state.can_redo(), egui::Button::new("Redo").small())
            .on_hover_text("Redo (Ctrl+Shift+Z)")
            .clicked()
        {
            action = Some(Action::Redo);
        }
        ui.menu_button("Prune weights", |ui| {
            use crate::model::prune::{PruneMethod, PruneScope};
            ui.weak("the views compare the pruned model with the dense one");
            for (name, method) in [
                ("magnitude, per matrix", PruneMethod::Magnitude),
                ("magnitude, one global threshold", PruneMethod::MagnitudeGlobal),
                ("random (seed 0)", PruneMethod::Random { seed: 0 }),
                ("2:4", PruneMethod::NM { n: 2, m: 4 }),
            ] {
                ui.label(name);
                ui.horizontal(|ui| {
                    for (scope_name, scope) in [
                        ("MLP", PruneScope::Mlp),
                        ("attention", PruneScope::Attn),
                        ("all", PruneScope::All),
                    ] {
                        if ui.small_button(scope_name).clicked() {
                            action = Some(Action::AddIntervention(EditSpec::Prune {
                                method,
                                scope,
                                sparsity: 0.5,
                            }));
                            ui.close();
                        }
                    }
                });
            }
        })
        .response
        .on_hover_text("One-shot pruning of the block weights (definitions §14): the slider sets the sparsity, the file is untouched");
        ui.menu_button("Sparsify activations", |ui| {
            use crate::analysis::sparsify::SparsifyMethod;
            ui.weak("every MLP, thresholds calibrated on the prompt (definitions §1–5)");
            let half = state.model.as_ref().map_or(1, |m| (m.dims.d_mlp / 2).max(1));
            for (name, method) in [
                ("top-k per token (half the neurons)", SparsifyMethod::TopK { k: half }),
                ("CATS, 50 %", SparsifyMethod::Cats { k: 0.5 }),
                ("CHESS, 50 %", SparsifyMethod::Chess { k: 0.5 }),
                ("CETT's rule, c = 0.2", SparsifyMethod::Cett { c: 0.2 }),
                ("FATReLU, t = 0.01", SparsifyMethod::FatRelu { t: 0.01 }),
            ] {
                if ui.button(name).clicked() {
                    action = Some(Action::AddIntervention(EditSpec::Sparsify { method }));
                    ui.close();
                }
            }
        })
        .response
        .on_hover_text("Run with the MLP activations cut as a sparsity method says; the views compare it with the dense model");
        if state.interventions.items.is_empty() {
            ui.weak("none: add a clamp from a neuron or head in the inspector");
        }
        for (i, item) in state.interventions.items.iter().enumerate() {
            let mut dragging = false;
            ui.group(|ui| {
                let mut on = item.enabled;
                let toggle = ui.checkbox(&mut on, item.label());
                let label_id = toggle.id;
                if toggle.changed() {
                    action = Some(Action::ToggleIntervention(i));
                }
                // A value slider for the kinds that have one.
                let mut kind = item.spec.clone();
                let mut changed = false;
                if let Some(mut value) = item.spec.value() {
                    let range = match item.spec {
                        EditSpec::Sparsify {
                            method: crate::analysis::sparsify::SparsifyMethod::TopK { .. },
                        } => 1.0..=state.model.as_ref().map_or(4096.0, |m| m.dims.d_mlp as f32),
                        EditSpec::PatternClamp { .. }
                        | EditSpec::Prune { .. }
                        | EditSpec::Sparsify { .. } => 0.0..=1.0,
                        _ => {
                            let r = 10f32.max(value.abs() * 2.0);
                            -r..=r
                        }
                    };
                    let slider = ui
                        .add(egui::Slider::new(&mut value, range).show_value(false))
                        .labelled_by(label_id);
                    if slider.changed() {
                        kind = item.spec.with_value(value);
                        changed = true;
                    }
                    dragging = slider.dragged();
                    if slider.drag_stopped() {
                        action = Some(Action::EndDrag);
                    }
                }
                if changed {
                    // A drag is one undo step; a step by key is one too.
                    action = Some(if dragging {
                        Action::DragIntervention(i, kind)
                    } else {
                        Action::EditIntervention(i, kind)
                    });
                }
                if ui
                    .small_button("Remove")
                    .on_hover_text("Remove (Ctrl+Z undoes)")
                    .clicked()
                {
                    action = Some(Action::RemoveIntervention(i));
                }
            });
        }
    });
    if state.runs.intervened.is_some() {
        ui.horizontal(|ui| {
            ui.label("views show");
            for (s, name) in [
                (Show::Baseline, "B baseline"),
                (Show::Intervened, "I intervened"),
                (Show::Difference, "Δ difference"),
            ] {
                if ui.selectable_label(state.show == s, name).clicked() {
                    action = Some(Action::SetShow(s));
                }
            }
        });
    }
    if let Some(c) = state.comparison() {
        ui.horizontal_wrapped(|ui| {
            ui.label("Effect · next token:");
            for (token, before, after) in c.next_token.iter().take(5) {
                let delta = (after - before) * 100.0;
                ui.monospace(format!(
                    "{} {:.1}% → {:.1}% ({delta:+.1} pts)",
                    visible(token),
                    before * 100.0,
                    after * 100.0
                ));
            }
            ui.separator();
            ui.label(format!(
                "mean loss {:.3} → {:.3} ({:+.3} nats)",
                c.mean_loss_before,
                c.mean_loss_after,
                c.mean_loss_after - c.mean_loss_before
            ));
            if let Some((l, d)) = c
                .sparsity_change
                .iter()
                .enumerate()
                .filter_map(|(l, d)| Some((l, (*d)?)))
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            {
                ui.separator();
                ui.label(format!(
                    "largest sparsity change: L{l} {:+.1} pts active",
                    d * 100.0
                ));
            }
        });
    }
    action
}
