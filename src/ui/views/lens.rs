//! Logit lens: for every layer × position, the top token of the final norm and unembedding
//! applied to that layer's residual stream, coloured by its probability; hover for the top 5.

use egui::{Id, Ui};

use super::visible;
use crate::ui::heatmap::{Axes, Colormap, Grid, fingerprint, heatmap_with_axes_ui, legend_ui};
use crate::ui::state::{Action, AppState};

pub fn lens_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let pass = state.shown();
    let Some(lens) = &pass.lens else {
        ui.horizontal(|ui| {
            if state.runs.current.is_some() {
                ui.spinner();
                ui.weak(
                    "Computing the logit lens (every layer × position through the unembedding)…",
                );
            } else {
                ui.weak("Run a prompt: the logit lens fills in when it finishes.");
            }
        });
        return None;
    };
    // Rows arrive layer by layer: the grid has every layer's row from the start.
    let rows = pass.layers.len().max(lens.len());
    let cols = lens.first().map_or(0, Vec::len);
    ui.horizontal(|ui| {
        ui.label(
            "top-1 probability of unembed(ln_final(resid_post)) per layer (rows) and position (columns)",
        );
        if lens.len() < rows {
            ui.spinner();
            ui.weak(format!("layer {} of {rows}", lens.len() + 1));
        }
    });
    let value = |r: usize, c: usize| Some(lens.get(r)?.get(c)?.first()?.prob as f32);
    let grid = Grid {
        rows,
        cols,
        value: &value,
    };
    let cmap = Colormap::Sequential { min: 0.0, max: 1.0 };
    let key = fingerprint(&[pass.run_id, state.show as u64, lens.len() as u64]);
    let size = egui::vec2(
        ui.available_width(),
        (ui.available_height() - 52.0).max(110.0),
    );
    // Positions named by their input token, cut short to fit a tick.
    let col_tick = |p: usize| {
        let token: String = visible(pass.tokens.get(p).map_or("", String::as_str))
            .chars()
            .take(6)
            .collect();
        format!("{p} {token}")
    };
    let r = heatmap_with_axes_ui(
        ui,
        Id::unique("lens"),
        key,
        &grid,
        cmap,
        size,
        &Axes {
            rows: "layer",
            cols: "position (input token)",
            row_tick: &|l| format!("L{l}"),
            col_tick: &col_tick,
        },
    );
    // Top-1 token text on each cell when there is room.
    let cell_w = r.response.rect.width() / cols.max(1) as f32;
    let cell_h = r.response.rect.height() / rows.max(1) as f32;
    if cell_w > 16.0 && cell_h > 11.0 {
        let painter = ui.painter_at(r.response.rect);
        for (l, row) in lens.iter().enumerate() {
            for (p, top) in row.iter().enumerate() {
                if let Some(best) = top.first() {
                    let centre = r.response.rect.min
                        + egui::vec2((p as f32 + 0.5) * cell_w, (l as f32 + 0.5) * cell_h);
                    let colour = if best.prob > 0.6 {
                        egui::Color32::BLACK
                    } else {
                        egui::Color32::WHITE
                    };
                    let text: String = visible(&best.token)
                        .chars()
                        .take((cell_w / 7.0) as usize)
                        .collect();
                    painter.text(
                        centre,
                        egui::Align2::CENTER_CENTER,
                        text,
                        egui::FontId::monospace(10.0),
                        colour,
                    );
                }
            }
        }
    }
    // Rows not computed yet have nothing to show.
    if let Some((l, p)) = r.hovered
        && let Some(top) = lens.get(l).and_then(|row| row.get(p))
    {
        let text: String = top
            .iter()
            .map(|t| format!("{:>6.2}%  {}\n", t.prob * 100.0, visible(&t.token)))
            .collect();
        r.response.on_hover_text(format!(
            "layer {l}, position {p} {:?}:\n{text}",
            pass.tokens.get(p).map(|s| visible(s)).unwrap_or_default()
        ));
    }
    legend_ui(ui, cmap, "top-1 probability");
    None
}
