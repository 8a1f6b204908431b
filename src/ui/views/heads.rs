//! Heads: a layer × head grid of the probe's scores (induction, previous-token, duplicate-token,
//! prefix matching), the probe button, and the probe's per-position loss.

use egui::{Id, Ui};
use egui_plot::{Line, Plot, PlotPoints};

use crate::ui::heatmap::{Axes, Colormap, Grid, fingerprint, heatmap_with_axes_ui, legend_ui};
use crate::ui::state::{Action, AppState};

const SCORES: [&str; 4] = [
    "induction",
    "previous-token",
    "duplicate-token",
    "prefix matching",
];

pub fn heads_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal(|ui| {
        let probe = ui.add_enabled(
            state.model.is_some() && !state.probe_running,
            egui::Button::new("Run induction probe"),
        );
        if probe
            .on_hover_text("Repeated random tokens (L = 20, 4 sequences, seed 0) in one batched pass; scores every head")
            .clicked()
        {
            action = Some(Action::ProbeHeads);
        }
        if state.probe_running {
            ui.spinner();
        }
    });
    let Some(scores) = &state.probe else {
        ui.weak("Run the probe to score every head.");
        return action;
    };
    let id = Id::unique("head_score_kind");
    let mut kind: usize = ui.data(|d| d.get_temp(id)).unwrap_or(0);
    ui.horizontal(|ui| {
        for (i, name) in SCORES.iter().enumerate() {
            if ui.selectable_label(kind == i, *name).clicked() {
                kind = i;
            }
        }
    });
    ui.data_mut(|d| d.insert_temp(id, kind));
    let table = match kind {
        0 => &scores.induction_score,
        1 => &scores.prev_token_score,
        2 => &scores.duplicate_token_score,
        _ => &scores.prefix_matching_score,
    };
    let (rows, cols) = (table.len(), table.first().map_or(0, Vec::len));
    let value = |r: usize, c: usize| table.get(r)?.get(c).map(|&x| x as f32);
    let grid = Grid {
        rows,
        cols,
        value: &value,
    };
    let cmap = Colormap::Sequential { min: 0.0, max: 1.0 };
    let cell = (ui.available_width() / cols.max(1) as f32).clamp(12.0, 40.0);
    ui.label(format!(
        "{} score per layer (rows) × head (columns): TL stripe over repeated random tokens, L = {}",
        SCORES[kind], scores.repeat_len
    ));
    let key = fingerprint(&[
        kind as u64,
        rows as u64,
        (scores.first_half_nll * 1e6) as u64,
    ]);
    let r = heatmap_with_axes_ui(
        ui,
        Id::unique("head_grid"),
        key,
        &grid,
        cmap,
        egui::vec2(
            cell * cols as f32 + 44.0,
            (cell * rows as f32).min(ui.available_height() * 0.6) + 30.0,
        ),
        &Axes {
            rows: "layer",
            cols: "head",
            row_tick: &|l| format!("L{l}"),
            col_tick: &|h| format!("H{h}"),
        },
    );
    if let Some((l, h)) = r.hovered {
        r.response.on_hover_text(format!(
            "L{l} H{h}: {:.3}\nclick to inspect",
            value(l, h).unwrap_or(0.0)
        ));
    }
    if let Some((layer, head)) = r.clicked {
        action = Some(Action::SelectHead { layer, head });
    }
    legend_ui(ui, cmap, "score");
    let best = table
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (l, h, v)))
        .fold((0, 0, f64::MIN), |a, b| if b.2 > a.2 { b } else { a });
    ui.label(format!("highest: L{} H{} ({:.3})", best.0, best.1, best.2));

    ui.label(format!(
        "probe loss per position: first half {:.2} nats, repeated half {:.2} nats",
        scores.first_half_nll, scores.repeated_half_nll
    ));
    let points: PlotPoints = scores
        .per_position_nll
        .iter()
        .enumerate()
        .map(|(i, &v)| [i as f64, v])
        .collect();
    Plot::new("probe_loss")
        .height(120.0)
        .allow_drag(false)
        .allow_scroll(false)
        .x_axis_label("position")
        .y_axis_label("loss (nats)")
        .show(ui, |plot| {
            plot.vline(egui_plot::VLine::new(
                "second copy starts",
                scores.repeat_len as f64 - 0.5,
            ));
            plot.line(Line::new("per-position loss", points));
        });
    action
}
