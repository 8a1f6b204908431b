//! The inspector: the selected neuron (activation per token, its logit effects W_out·W_U, its
//! values' histogram, clamp and steer controls) or the selected head (its attention pattern on
//! the prompt, probe scores, ablation and pattern clamps).

use egui::{Id, Ui};
use egui_plot::{Bar, BarChart, Plot};

use super::visible;
use crate::ui::heatmap::{Colormap, Grid, fingerprint, heatmap_ui, legend_ui};
use crate::ui::state::{Action, AppState, EditSpec, parse_positions};
use crate::worker::SteerMode;

pub fn inspector_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    ui.heading("Inspector");
    let mut action = None;
    if state.selection.neuron.is_none()
        && state.selection.head.is_none()
        && state.selection.latent.is_none()
    {
        ui.weak("Click a neuron in the Neurons view, a head in the Heads view or a latent in the Features view to inspect it. Escape clears the selection.");
        return None;
    }
    let units = state.inspected_units();
    let unit_panel = |ui: &mut Ui, source_is: &dyn Fn(&str) -> bool| {
        units
            .iter()
            .find(|u| source_is(&u.source))
            .and_then(|u| super::unit_panel::unit_panel_ui(ui, state, u))
    };
    egui::ScrollArea::vertical()
        .id_salt("inspector")
        .show(ui, |ui| {
            if let Some((sae_id, latent)) = state.selection.latent {
                action = latent_ui(ui, state, sae_id, latent);
                ui.separator();
                action = action.take().or(unit_panel(ui, &|s| s.starts_with("sae:")));
                ui.separator();
            }
            if let Some(n) = state.selection.neuron {
                action = action
                    .take()
                    .or(neuron_ui(ui, state, state.selection.layer, n));
                ui.separator();
                action = action
                    .take()
                    .or(unit_panel(ui, &|s| !s.starts_with("sae:")));
                ui.separator();
            }
            if let Some(h) = state.selection.head {
                action = action
                    .take()
                    .or(head_ui(ui, state, state.selection.layer, h));
            }
        });
    action
}

/// Baseline (blue) and intervened (orange) bars per token.
fn per_token_bars(
    ui: &mut Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    tokens: &[String],
    base: &[f32],
    edited: Option<&[f32]>,
) {
    let blue = egui::Color32::from_rgb(0, 114, 178);
    let orange = egui::Color32::from_rgb(213, 94, 0);
    Plot::new(id)
        .height(140.0)
        .allow_drag(false)
        .allow_scroll(false)
        .x_axis_label("token")
        .label_formatter(|hover| {
            let p = match hover {
                egui_plot::HoverPosition::NearDataPoint { position, .. } => position,
                egui_plot::HoverPosition::Elsewhere { position } => position,
            };
            let i = p.x.round().max(0.0) as usize;
            Some(format!(
                "{} {:?}: {:.4}",
                i,
                tokens.get(i).map(|t| visible(t)).unwrap_or_default(),
                p.y
            ))
        })
        .show(ui, |plot| {
            let width = if edited.is_some() { 0.4 } else { 0.8 };
            let off = if edited.is_some() { -0.2 } else { 0.0 };
            let bars = |v: &[f32], o: f64| -> Vec<Bar> {
                v.iter()
                    .enumerate()
                    .map(|(i, &a)| Bar::new(i as f64 + o, a as f64).width(width))
                    .collect()
            };
            plot.bar_chart(BarChart::new("baseline", bars(base, off)).color(blue));
            if let Some(e) = edited {
                plot.bar_chart(BarChart::new("intervened", bars(e, 0.2)).color(orange));
            }
        });
}

/// The clamp/steer value: a slider over ±10× the unit's peak |activation| on the prompt
/// (starting at 3× the peak), kept in egui memory as widget state.
fn value_slider(ui: &mut Ui, id: Id, activations: &[f32]) -> f32 {
    let peak = activations.iter().fold(1f32, |m, v| m.max(v.abs()));
    let mut value: f32 = ui.data(|d| d.get_temp(id)).unwrap_or(peak * 3.0);
    ui.add(egui::Slider::new(&mut value, -10.0 * peak..=10.0 * peak).text("value"));
    ui.data_mut(|d| d.insert_temp(id, value));
    value
}

/// A latent's training density (`log10` frequency, with SAELens' 1e-10 floor) in words.
fn training_density(log10: f32) -> String {
    if log10 <= -9.9 {
        return "never fired in the training window".into();
    }
    let frequency = 10f64.powf(log10 as f64);
    format!(
        "training density 10^{log10:.2} (about 1 in {:.0} tokens)",
        (1.0 / frequency).max(1.0)
    )
}

/// Top and bottom logit effects in two columns.
fn logit_effects_ui(
    ui: &mut Ui,
    top: &[crate::worker::LogitEffect],
    bottom: &[crate::worker::LogitEffect],
) {
    ui.columns(2, |cols| {
        cols[0].label("raises");
        for e in top {
            cols[0].monospace(format!("{:+.3} {}", e.effect, visible(&e.token)));
        }
        cols[1].label("lowers");
        for e in bottom {
            cols[1].monospace(format!("{:+.3} {}", e.effect, visible(&e.token)));
        }
    });
}

fn latent_ui(ui: &mut Ui, state: &AppState, sae_id: u64, latent: usize) -> Option<Action> {
    let mut action = None;
    let sae = state.saes.iter().find(|s| s.id == sae_id)?;
    ui.strong(format!("SAE #{sae_id} · latent {latent}"));
    ui.weak(format!(
        "{} {} at {}",
        sae.cfg.architecture, sae.cfg.d_sae, sae.cfg.hook_name
    ));
    let Some(base) = state
        .runs
        .baseline
        .sae(sae_id)
        .map(|s| s.latent_activations(latent as u32))
    else {
        ui.weak("Run a prompt to see this latent's activations.");
        return None;
    };
    let edited = state
        .runs
        .intervened
        .as_ref()
        .and_then(|p| p.sae(sae_id))
        .map(|s| s.latent_activations(latent as u32));
    let active = base.iter().filter(|a| **a > 0.0).count();
    ui.label(format!(
        "activation per token · fires on {active} of {} tokens (density {:.3} on this prompt)",
        base.len(),
        active as f64 / base.len().max(1) as f64
    ));
    per_token_bars(
        ui,
        ("latent_acts", sae_id, latent),
        &state.runs.baseline.tokens,
        &base,
        edited.as_deref(),
    );

    match &state.latent_info {
        Some(info) if info.sae_id == sae_id && info.latent == latent => {
            if let Some(log10) = info.training_log10_density {
                ui.label(training_density(log10))
                    .on_hover_text("from the SAE's sparsity.safetensors (SAELens)");
            }
            ui.label(format!(
                "decoder direction W_dec[{latent}] · W_U (|W_dec[{latent}]| = {:.3})",
                info.decoder_norm
            ));
            match &info.note {
                Some(note) => {
                    ui.weak(note);
                }
                None => logit_effects_ui(ui, &info.top, &info.bottom),
            }
        }
        _ => {
            ui.spinner();
        }
    }

    let value = value_slider(ui, Id::unique(("latent_value", sae_id, latent)), &base);
    // Where the edit applies: every position, or the ones typed (e.g. "3, 5-7").
    let pos_id = Id::unique(("latent_positions", sae_id, latent));
    let mut text: String = ui.data(|d| d.get_temp(pos_id)).unwrap_or_default();
    let parsed = ui
        .horizontal(|ui| {
            ui.label("at positions");
            ui.add(
                egui::TextEdit::singleline(&mut text)
                    .hint_text("all, or e.g. 3, 5-7")
                    .desired_width(140.0),
            );
            let parsed = parse_positions(&text, base.len());
            if let Err(e) = &parsed {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            parsed
        })
        .inner;
    ui.data_mut(|d| d.insert_temp(pos_id, text));
    let Ok(positions) = parsed else {
        return action;
    };
    let latent_kind = |scale: bool| EditSpec::Latent {
        sae_id,
        latent,
        value,
        scale,
        positions: positions.clone(),
    };
    let steer = |mode: SteerMode| EditSpec::SteerLatent {
        sae_id,
        latent,
        mode,
        positions: positions.clone(),
    };
    ui.horizontal_wrapped(|ui| {
        if ui.button("Clamp to value").on_hover_text("Encode, set this latent, decode, and add back the SAE's error: only this latent's contribution changes").clicked() {
            action = Some(Action::AddIntervention(latent_kind(false)));
        }
        if ui.button("Scale by value").clicked() {
            action = Some(Action::AddIntervention(latent_kind(true)));
        }
        if ui.button("Steer: add").on_hover_text("Add value × W_dec[j] at every position").clicked() {
            action = Some(Action::AddIntervention(steer(SteerMode::Add { scale: value })));
        }
        if ui.button("Steer: set projection").on_hover_text("Orthogonal decomposition: keep the part orthogonal to W_dec[j], set the component along its unit direction to value").clicked() {
            action = Some(Action::AddIntervention(steer(SteerMode::SetProjection { value })));
        }
        if ui.button("Steer: cap projection").on_hover_text("Cut the component along W_dec[j]'s unit direction down to value where it is larger").clicked() {
            action = Some(Action::AddIntervention(steer(SteerMode::CapProjection { max: value })));
        }
    });
    action
}

fn neuron_ui(ui: &mut Ui, state: &AppState, layer: usize, neuron: usize) -> Option<Action> {
    let mut action = None;
    ui.strong(format!("Layer {layer} · neuron {neuron}"));
    let base = state
        .runs
        .baseline
        .layer(layer)
        .map(|l| l.neuron_column(neuron));
    let edited = state
        .runs
        .intervened
        .as_ref()
        .and_then(|p| p.layer(layer))
        .map(|l| l.neuron_column(neuron));
    let Some(base) = base else {
        ui.weak("Run a prompt to see this neuron's activations.");
        return None;
    };
    ui.label("activation per token (mlp.hook_post)");
    per_token_bars(
        ui,
        ("neuron_acts", layer, neuron),
        &state.runs.baseline.tokens,
        &base,
        edited.as_deref(),
    );
    let blue = egui::Color32::from_rgb(0, 114, 178);

    // This neuron's values on the layer's fixed bins.
    if let Some(bins) = state.runs.histogram_bins.get(layer).copied().flatten() {
        let h = crate::analysis::histogram::Histogram::new(bins, &base);
        let edges = bins.edges();
        ui.label("its values over the prompt (count per bin)");
        Plot::new(("neuron_hist", layer, neuron))
            .height(90.0)
            .allow_drag(false)
            .allow_scroll(false)
            .show(ui, |plot| {
                let bars = super::bin_bars(&edges, &h.counts);
                plot.bar_chart(BarChart::new("count", bars).color(blue));
            });
    }

    ui.label("direct logit effect W_out[:, i] · W_U");
    match &state.neuron_info {
        Some(info) if info.layer == layer && info.neuron == neuron => {
            logit_effects_ui(ui, &info.top, &info.bottom);
        }
        _ => {
            ui.spinner();
        }
    }

    // Clamp and steer controls.
    let value = value_slider(ui, Id::unique(("clamp_value", layer, neuron)), &base);
    ui.horizontal(|ui| {
        if ui.button("Clamp to value").on_hover_text("Set this neuron to the value at every position").clicked() {
            action = Some(Action::AddIntervention(EditSpec::Neuron { layer, neuron, value, scale: false }));
        }
        if ui.button("Scale by value").clicked() {
            action = Some(Action::AddIntervention(EditSpec::Neuron { layer, neuron, value, scale: true }));
        }
        if ui
            .button("Steer")
            .on_hover_text("Add value × this neuron's output direction W_out[:, i] to the residual stream after this layer")
            .clicked()
        {
            action = Some(Action::AddIntervention(EditSpec::Steer { layer, neuron, scale: value }));
        }
    });
    action
}

fn head_ui(ui: &mut Ui, state: &AppState, layer: usize, head: usize) -> Option<Action> {
    let mut action = None;
    ui.strong(format!("Layer {layer} · head {head}"));
    if let Some(p) = &state.probe {
        let get = |v: &Vec<Vec<f64>>| {
            v.get(layer)
                .and_then(|r| r.get(head))
                .copied()
                .unwrap_or(f64::NAN)
        };
        ui.label(format!(
            "induction {:.3} · previous-token {:.3} · duplicate {:.3} · prefix matching {:.3}",
            get(&p.induction_score),
            get(&p.prev_token_score),
            get(&p.duplicate_token_score),
            get(&p.prefix_matching_score)
        ))
        .on_hover_text(format!(
            "repeated random tokens, L = {}, {} sequences, no BOS",
            p.repeat_len, p.n_sequences
        ));
    }
    let pass = state.shown();
    match pass.layer(layer) {
        Some(l) if head < l.n_heads && l.patterns.is_empty() => {
            ui.weak("Capturing the attention patterns…");
        }
        Some(l) if head < l.n_heads => {
            let t = l.n_tokens;
            let pattern = l.pattern(head);
            ui.label("attention pattern on the prompt (rows = queries, columns = keys)");
            let value = |r: usize, c: usize| pattern.get(r * t + c).copied();
            let grid = Grid {
                rows: t,
                cols: t,
                value: &value,
            };
            let cmap = Colormap::Sequential { min: 0.0, max: 1.0 };
            let key = fingerprint(&[pass.run_id, layer as u64, head as u64, state.show as u64]);
            let side = ui.available_width().min(360.0);
            let r = heatmap_ui(
                ui,
                Id::unique(("pattern", layer, head)),
                key,
                &grid,
                cmap,
                egui::vec2(side, side),
            );
            if let Some((q, k)) = r.hovered {
                let tok = |i: usize| pass.tokens.get(i).map(|s| visible(s)).unwrap_or_default();
                r.response.on_hover_text(format!(
                    "query {q} {:?} → key {k} {:?}: {:.3}",
                    tok(q),
                    tok(k),
                    value(q, k).unwrap_or(0.0)
                ));
            }
            legend_ui(ui, cmap, "attention");
        }
        _ => {
            ui.weak("Run a prompt to see this head's pattern.");
        }
    }
    let source_id = Id::unique(("resample_source", layer, head));
    let mut source: String = ui.data(|d| d.get_temp(source_id)).unwrap_or_default();
    ui.horizontal(|ui| {
        ui.label("resample source");
        ui.add(
            egui::TextEdit::singleline(&mut source)
                .hint_text("another prompt, as long or longer")
                .desired_width(200.0),
        );
    });
    ui.data_mut(|d| d.insert_temp(source_id, source));
    let id = Id::unique(("pattern_strength", layer, head));
    let mut strength: f32 = ui.data(|d| d.get_temp(id)).unwrap_or(1.0);
    ui.add(egui::Slider::new(&mut strength, 0.0..=1.0).text("clamp strength s"));
    ui.data_mut(|d| d.insert_temp(id, strength));
    ui.horizontal_wrapped(|ui| {
        if ui.button("Zero-ablate").clicked() {
            action = Some(Action::AddIntervention(EditSpec::HeadAblation {
                layer,
                head,
                mean: false,
            }));
        }
        if ui.button("Mean-ablate").clicked() {
            action = Some(Action::AddIntervention(EditSpec::HeadAblation {
                layer,
                head,
                mean: true,
            }));
        }
        if ui
            .button("Resample-ablate")
            .on_hover_text("Replace this head's output by its output on the source prompt below (at least as many tokens as this prompt)")
            .clicked()
        {
            let source: String = ui
                .data(|d| d.get_temp(Id::unique(("resample_source", layer, head))))
                .unwrap_or_default();
            action = Some(Action::AddIntervention(EditSpec::ResampleHead {
                layer,
                head,
                source,
            }));
        }
        if ui.button("Clamp previous-token").clicked() {
            action = Some(Action::AddIntervention(EditSpec::PatternClamp {
                layer,
                head,
                induction: false,
                strength,
            }));
        }
        if ui.button("Clamp induction").clicked() {
            action = Some(Action::AddIntervention(EditSpec::PatternClamp {
                layer,
                head,
                induction: true,
                strength,
            }));
        }
    });
    action
}

#[cfg(test)]
mod tests {
    #[test]
    fn training_densities_read_as_frequencies() {
        assert_eq!(
            super::training_density(-2.0),
            "training density 10^-2.00 (about 1 in 100 tokens)"
        );
        assert_eq!(
            super::training_density(-10.0),
            "never fired in the training window"
        );
    }
}
