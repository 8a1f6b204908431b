//! Layer sparsity: one bar per layer (filling in as layers stream, the baseline beside the
//! intervened pass), the method selector, and a token × layer heatmap of active fractions.

use egui::Ui;
use egui_plot::{Bar, BarChart, Plot};

use crate::analysis::sparsity::Method;
use crate::ui::heatmap::{Colormap, Grid, fingerprint, heatmap_ui, legend_ui};
use crate::ui::state::{Action, AppState, PassView};

/// The methods offered, with their parameters.
const METHODS: [(&str, Method); 8] = [
    ("exact zeros", Method::Zero),
    ("|a| ≥ 0.01", Method::Eps { eps: 0.01 }),
    ("|a| ≥ 0.1", Method::Eps { eps: 0.1 }),
    ("CATS k = 0.5", Method::Cats { k: 0.5 }),
    ("CETT c = 0.2", Method::Cett { target: 0.2 }),
    ("temporal Δ > 0", Method::Delta { theta: 0.0 }),
    ("temporal Δ > 0.05", Method::Delta { theta: 0.05 }),
    ("core neurons α = 0.4", Method::Core { alpha: 0.4 }),
];

/// What the layer values are: the share of channels active, or (temporal sparsity) the share
/// that changed since the token before.
fn measured(m: Method) -> &'static str {
    match m {
        Method::Delta { .. } => "changed fraction",
        Method::Core { .. } => "token-core share",
        _ => "active fraction",
    }
}

pub fn method_label(m: Method) -> String {
    METHODS
        .iter()
        .find(|(_, x)| *x == m)
        .map_or_else(|| m.to_string(), |(name, _)| name.to_string())
}

fn fractions(pass: &PassView) -> Vec<Option<f64>> {
    pass.layers
        .iter()
        .map(|l| l.as_ref().map(|l| l.sparsity.frac_active))
        .collect()
}

pub fn layers_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.heading("Layers");
        if ui
            .small_button("Export")
            .on_hover_text(format!(
                "This panel as {} and its data as CSV",
                state.figure_format.label()
            ))
            .clicked()
        {
            action = Some(Action::Export(crate::ui::state::View::Layers));
        }
    });
    egui::ComboBox::from_label("sparsity")
        .selected_text(method_label(state.sparsity))
        .show_ui(ui, |ui| {
            for (name, m) in METHODS {
                if ui.selectable_label(state.sparsity == m, name).clicked() {
                    action = Some(Action::SetSparsity(m));
                }
            }
        });
    let n = state.n_layers();
    if n == 0 {
        ui.weak("Open a model to see its layers.");
        return action;
    }
    ui.label(format!("{} ({})", measured(state.sparsity), state.sparsity))
        .on_hover_text(match state.sparsity {
            Method::Delta { .. } => "Per layer: the mean over tokens of the fraction of MLP channels that changed by more than θ since the token before (temporal sparsity = 1 − this; definitions.md §13). Click a bar to select the layer.",
            Method::Core { .. } => "Per layer: the mean over tokens of the share of MLP neurons in the token's core (its round(α·|positive|) strongest positive activations; CoreInfer, definitions.md §12). Click a bar to select the layer.",
            _ => "Per layer: the mean over tokens of the fraction of MLP channels active under the method (definitions.md §1–4). Click a bar to select the layer.",
        });
    let base = fractions(&state.runs.baseline);
    let edited = state.runs.intervened.as_ref().map(fractions);
    let selected = state.selection.layer;
    let bars = |values: &[Option<f64>], offset: f64, color: egui::Color32| -> Vec<Bar> {
        values
            .iter()
            .enumerate()
            .map(|(l, v)| {
                let c = if l == selected {
                    color.gamma_multiply(1.4)
                } else {
                    color
                };
                // A layer not computed yet is a faint placeholder, never a zero.
                match v {
                    Some(v) => Bar::new(l as f64 + offset, *v)
                        .fill(c)
                        .name(format!("L{l}")),
                    None => Bar::new(l as f64 + offset, 1.0)
                        .fill(c.gamma_multiply(0.15))
                        .name(format!("L{l} (pending)")),
                }
                .width(if edited.is_some() { 0.4 } else { 0.8 })
            })
            .collect()
    };
    let blue = egui::Color32::from_rgb(0, 114, 178);
    let orange = egui::Color32::from_rgb(213, 94, 0);
    let height = (ui.available_height() * 0.45).max(120.0);
    let response = Plot::new("layer_sparsity")
        .height(height)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_label("layer")
        .show(ui, |plot| {
            let off = if edited.is_some() { -0.2 } else { 0.0 };
            plot.bar_chart(BarChart::new("baseline", bars(&base, off, blue)).color(blue));
            if let Some(e) = &edited {
                plot.bar_chart(BarChart::new("intervened", bars(e, 0.2, orange)).color(orange));
            }
            plot.pointer_coordinate()
        });
    if response.response.clicked()
        && let Some(p) = response.inner
    {
        let l = p.x.round().clamp(0.0, (n - 1) as f64) as usize;
        action = Some(Action::SelectLayer(l));
    }
    if edited.is_some() {
        ui.horizontal(|ui| {
            ui.colored_label(blue, "baseline (blue)");
            ui.colored_label(orange, "intervened (orange)");
        });
    }

    // Token × layer heatmap of active fractions (rows = layers, columns = tokens).
    let pass = state.shown();
    let t = pass.tokens.len();
    if t > 0 {
        ui.label(format!(
            "{} per token (rows = layers)",
            measured(state.sparsity)
        ));
        let value = |r: usize, c: usize| -> Option<f32> {
            let l = pass.layer(r)?;
            l.sparsity.per_token_frac_active.get(c).map(|&x| x as f32)
        };
        let grid = Grid {
            rows: n,
            cols: t,
            value: &value,
        };
        let key = fingerprint(&[pass.run_id, pass.layers_done() as u64, state.show as u64]);
        let cmap = Colormap::Sequential { min: 0.0, max: 1.0 };
        // Room below for the sentence core when core neurons are shown.
        let below = if matches!(state.sparsity, Method::Core { .. }) {
            250.0
        } else {
            30.0
        };
        let size = egui::vec2(
            ui.available_width(),
            (ui.available_height() - below)
                .min(12.0 * n as f32)
                .max(24.0),
        );
        let r = heatmap_ui(ui, egui::Id::unique("token_layer"), key, &grid, cmap, size);
        if let Some((l, p)) = r.hovered {
            r.response.on_hover_text(format!(
                "layer {l}, token {p} {:?}: {}",
                pass.tokens.get(p).map(String::as_str).unwrap_or(""),
                value(l, p).map_or("not computed yet".into(), |v| format!(
                    "{:.1}% {}",
                    v * 100.0,
                    measured(state.sparsity)
                ))
            ));
        }
        if let Some((l, _)) = r.clicked {
            action = Some(Action::SelectLayer(l));
        }
        legend_ui(ui, cmap, measured(state.sparsity));
    }
    if let Method::Core { alpha } = state.sparsity {
        // The core's neurons, stability and comparison scroll below the heatmap.
        egui::ScrollArea::vertical()
            .id_salt("sentence_core")
            .show(ui, |ui| {
                if let Some(a) = sentence_core_ui(ui, state, alpha) {
                    action = Some(a);
                }
            });
    }
    action
}

/// The selected layer's sentence-wise core (CoreInfer's β = 0.2 of the neurons that are most
/// often in a token's core) and how it holds as the prompt grows. Click a neuron to select it.
fn sentence_core_ui(ui: &mut Ui, state: &AppState, alpha: f64) -> Option<Action> {
    use crate::analysis::core_neurons::{CoreOptions, layer_core, stability};
    let pass = state.shown();
    let l = state.selection.layer;
    let layer = pass.layer(l)?;
    let bos = state.model.as_ref().and_then(|m| m.bos_token_id);
    let first_scored = usize::from(bos.is_some() && pass.token_ids.first().copied() == bos);
    let opts = CoreOptions {
        alpha,
        ..CoreOptions::default()
    };
    let core = layer_core(&layer.mlp_post, layer.d_mlp, first_scored, opts);
    let held = stability(&layer.mlp_post, layer.d_mlp, first_scored, opts);
    let mut action = None;
    ui.separator();
    ui.label(format!(
        "L{l} sentence core: {} neurons (β = {}, of {})",
        core.core.len(),
        opts.beta,
        layer.d_mlp
    ))
    .on_hover_text("The ⌊β·d_mlp⌋ neurons in the most token cores over the prompt (CoreInfer's sentence-wise core, definitions.md §12)");
    let mut by_count = core.core.clone();
    by_count.sort_by_key(|&n| std::cmp::Reverse(core.counts[n]));
    ui.horizontal_wrapped(|ui| {
        for &n in by_count.iter().take(15) {
            if ui
                .small_button(format!("N{n}"))
                .on_hover_text(format!(
                    "in {} of {} token cores",
                    core.counts[n],
                    core.token_cores.len()
                ))
                .clicked()
            {
                action = Some(Action::SelectNeuron {
                    layer: l,
                    neuron: n,
                });
            }
        }
        if by_count.len() > 15 {
            ui.weak(format!("… {} more", by_count.len() - 15));
        }
    });
    if held.len() > 1 {
        let points: egui_plot::PlotPoints = held
            .iter()
            .enumerate()
            .map(|(i, &j)| [(i + 1) as f64, j])
            .collect();
        ui.label("stability (Jaccard of each prefix's core with the whole's)");
        strip_plot("core_stability", "tokens").show(ui, |plot| {
            plot.line(egui_plot::Line::new("Jaccard", points));
        });
    }
    if let Some(a) = core_compare_ui(ui, state, opts) {
        action = Some(a);
    }
    action
}

/// A short fixed plot of a share in [0, 1] (the core panel's stability and comparison).
fn strip_plot(id: &str, x_label: &str) -> Plot<'static> {
    Plot::new(id)
        .height(64.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_label(x_label.to_string())
}

/// The prompt's sentence cores against another prompt's, layer by layer (Jaccard), and the
/// selected layer's overlap in words.
fn core_compare_ui(
    ui: &mut Ui,
    state: &AppState,
    opts: crate::analysis::core_neurons::CoreOptions,
) -> Option<Action> {
    use crate::analysis::core_neurons::layer_core;
    let mut action = None;
    let compare = &state.core_compare;
    ui.horizontal(|ui| {
        ui.label("compare with");
        let mut text = compare.text.clone();
        let edit = ui.add(
            egui::TextEdit::singleline(&mut text)
                .desired_width((ui.available_width() - 90.0).max(60.0))
                .hint_text("another prompt"),
        );
        if edit.changed() {
            action = Some(Action::SetCoreCompareText(text.clone()));
        }
        let ready = !compare.waiting && !text.trim().is_empty() && state.model.is_some();
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if ui
            .add_enabled(ready, egui::Button::new("Compare"))
            .on_hover_text("Its sentence cores at every layer, overlapped with the prompt's")
            .clicked()
            || (ready && enter)
        {
            action = Some(Action::CompareCores);
        }
        if compare.waiting {
            ui.spinner();
        }
    });
    let pass = state.shown();
    let bos = state.model.as_ref().and_then(|m| m.bos_token_id);
    let first_scored = usize::from(bos.is_some() && pass.token_ids.first().copied() == bos);
    let ours: Vec<Option<Vec<usize>>> = (0..state.n_layers())
        .map(|l| {
            let layer = pass.layer(l)?;
            Some(layer_core(&layer.mlp_post, layer.d_mlp, first_scored, opts).core)
        })
        .collect();
    let Some(overlaps) = compare.overlaps(&ours, opts.alpha) else {
        return action;
    };
    let l = state.selection.layer;
    if let Some(Some(o)) = overlaps.get(l) {
        ui.label(format!(
            "L{l}: Jaccard {:.2}, {} shared neurons (similarity {:.2})",
            o.jaccard, o.shared, o.similarity
        ))
        .on_hover_text(
            "Jaccard |A ∩ B| / |A ∪ B| of the two sentence cores; similarity |A ∩ B| / |B| (B: \
             the other prompt's core)",
        );
    }
    let bars: Vec<Bar> = overlaps
        .iter()
        .enumerate()
        .filter_map(|(l, o)| Some(Bar::new(l as f64, o.as_ref()?.jaccard)))
        .collect();
    let response =
        strip_plot("core_compare", "layer (Jaccard of the two prompts' cores)").show(ui, |plot| {
            plot.bar_chart(BarChart::new("Jaccard", bars));
            plot.pointer_coordinate()
        });
    if response.response.clicked()
        && let Some(p) = response.inner
    {
        let n = state.n_layers().max(1);
        action = Some(Action::SelectLayer(
            p.x.round().clamp(0.0, (n - 1) as f64) as usize
        ));
    }
    action
}
