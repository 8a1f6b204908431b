//! Histogram of the selected layer's MLP activations on the layer's fixed bins, counts on a log
//! scale; with interventions active, the baseline is overlaid.

use egui::Ui;
use egui_plot::{Bar, BarChart, Plot};

use crate::analysis::histogram::Histogram;
use crate::ui::state::{Action, AppState};

fn bars(h: &Histogram, edges: &[f64]) -> Vec<Bar> {
    h.log_counts()
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            Bar::new((edges[i] + edges[i + 1]) / 2.0, c)
                .width(edges[i + 1] - edges[i])
                .name(format!(
                    "[{:.3}, {:.3}): {} values",
                    edges[i],
                    edges[i + 1],
                    h.counts[i]
                ))
        })
        .collect()
}

pub fn histograms_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let l = state.selection.layer;
    let Some(base) = state.histogram(&state.runs.baseline, l) else {
        ui.weak("Run a prompt to see the activation histogram of the selected layer.");
        return None;
    };
    let edited = state
        .runs
        .intervened
        .as_ref()
        .and_then(|p| state.histogram(p, l));
    let edges = base.bins.edges();
    ui.label(format!(
        "Layer {l} MLP activations (mlp.hook_post): {} values, {} outside [{:.2}, {:.2}]; height = log10(1 + count)",
        base.total(),
        base.below + base.above,
        edges[0],
        edges[edges.len() - 1]
    ));
    let blue = egui::Color32::from_rgb(0, 114, 178);
    let orange = egui::Color32::from_rgb(213, 94, 0);
    Plot::new("histogram")
        .allow_scroll(false)
        .x_axis_label("activation")
        .y_axis_label("log10(1 + count)")
        .legend(egui_plot::Legend::default())
        .show(ui, |plot| {
            plot.bar_chart(
                BarChart::new("baseline", bars(&base, &edges)).color(blue.gamma_multiply(0.7)),
            );
            if let Some(e) = &edited {
                plot.bar_chart(
                    BarChart::new("intervened", bars(e, &edges)).color(orange.gamma_multiply(0.7)),
                );
            }
        });
    None
}
