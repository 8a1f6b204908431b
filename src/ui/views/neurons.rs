//! Token × neuron heatmap of the selected layer's MLP activations (one texture; scroll zooms,
//! drag pans, double-click resets), optionally with neurons sorted by peak activation.
//! Clicking a neuron opens it in the inspector.

use egui::Ui;

use crate::ui::heatmap::{Colormap, Grid, fingerprint, heatmap_ui, legend_ui};
use crate::ui::state::{Action, AppState, Show};

/// Neuron order: by index, or by peak |activation| over the prompt (largest first).
pub fn neuron_order(post: &[f32], n_tokens: usize, d_mlp: usize, sorted: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..d_mlp).collect();
    if sorted {
        let peak = |i: usize| {
            (0..n_tokens)
                .map(|t| post[t * d_mlp + i].abs())
                .fold(0f32, f32::max)
        };
        let peaks: Vec<f32> = (0..d_mlp).map(peak).collect();
        order.sort_by(|&a, &b| peaks[b].total_cmp(&peaks[a]).then(a.cmp(&b)));
    }
    order
}

pub fn neurons_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let l = state.selection.layer;
    let pass = state.shown();
    let Some(layer) = pass.layer(l) else {
        ui.weak(if state.model.is_none() {
            "Open a model and run a prompt to see its neurons."
        } else {
            "This layer has not been computed yet."
        });
        return None;
    };
    let difference = state.show == Show::Difference && state.runs.intervened.is_some();
    let baseline = state.runs.baseline.layer(l);
    let (t, d) = (layer.n_tokens, layer.d_mlp);
    let values: Vec<f32> = match (difference, baseline) {
        (true, Some(b)) if b.mlp_post.len() == layer.mlp_post.len() => layer
            .mlp_post
            .iter()
            .zip(b.mlp_post.iter())
            .map(|(a, b)| a - b)
            .collect(),
        _ => layer.mlp_post.to_vec(),
    };
    ui.horizontal(|ui| {
        ui.label(format!(
            "Layer {l} MLP activations (mlp.hook_post): {t} tokens × {d} neurons"
        ));
        if ui
            .selectable_label(state.sort_neurons, "sort by peak |activation|")
            .clicked()
        {
            action = Some(Action::SetSortNeurons(!state.sort_neurons));
        }
        if difference {
            ui.weak("(intervened − baseline)");
        }
    });
    let order = neuron_order(&values, t, d, state.sort_neurons);
    let value = |r: usize, c: usize| values.get(r * d + order[c]).copied();
    let grid = Grid {
        rows: t,
        cols: d,
        value: &value,
    };
    let cmap = Colormap::robust_diverging(&values);
    let key = fingerprint(&[
        pass.run_id,
        l as u64,
        state.show as u64,
        state.sort_neurons as u64,
        std::sync::Arc::as_ptr(&layer.mlp_post) as *const f32 as u64,
    ]);
    let size = egui::vec2(
        ui.available_width(),
        (ui.available_height() - 40.0).max(80.0),
    );
    let r = heatmap_ui(ui, egui::Id::unique("neurons"), key, &grid, cmap, size);
    if let Some((p, c)) = r.hovered {
        let neuron = order[c];
        let unit = crate::worker::stores::UnitRef {
            source: crate::ui::state::stores::neuron_source(l),
            unit: neuron,
        };
        r.response.on_hover_text(format!(
            "neuron {neuron} at token {p} {:?}: {:.4}{}\nclick to inspect",
            pass.tokens.get(p).map(String::as_str).unwrap_or(""),
            values[p * d + neuron],
            state.stores.description_line(&unit)
        ));
    }
    if let Some((_, c)) = r.clicked {
        action = Some(Action::SelectNeuron {
            layer: l,
            neuron: order[c],
        });
    }
    legend_ui(
        ui,
        cmap,
        "activation (clipped at the 99.5th percentile of |a|)",
    );
    action
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorting_puts_the_strongest_neuron_first() {
        // 2 tokens × 3 neurons; neuron 2 peaks highest, then neuron 0.
        let post = [0.5, 0.1, 0.0, -0.2, 0.0, 3.0];
        assert_eq!(super::neuron_order(&post, 2, 3, true), vec![2, 0, 1]);
        assert_eq!(super::neuron_order(&post, 2, 3, false), vec![0, 1, 2]);
    }
}
