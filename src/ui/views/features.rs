//! The selected SAE's feature map: a token × latent heatmap (one texture) of the latents that
//! fire most on the prompt, per-token L0 and relative reconstruction error, and the histogram
//! of nonzero latent activations (log counts). Clicking a latent opens it in the inspector.

use egui::Ui;
use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints};

use super::visible;
use crate::analysis::histogram::{Bins, Histogram};
use crate::ui::heatmap::{Colormap, Grid, fingerprint, heatmap_ui, legend_ui};
use crate::ui::state::{Action, AppState, Show};

/// Most latents drawn as columns (the strongest on the prompt).
pub const MAX_COLUMNS: usize = 256;
const HISTOGRAM_BINS: usize = 40;

pub fn features_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let jobs = egui::CollapsingHeader::new(match &state.job {
        Some(j) if j.outcome.is_none() => format!(
            "Train or evaluate an SAE · {:.0}% {}",
            100.0 * j.fraction,
            j.title
        ),
        _ => "Train or evaluate an SAE".into(),
    })
    .id_salt("sae_jobs")
    .show(ui, |ui| super::sae_jobs::sae_jobs_ui(ui, state));
    action = action.or(jobs.body_returned.flatten());
    action.or(feature_map_ui(ui, state))
}

fn feature_map_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.horizontal_wrapped(|ui| {
        ui.label("SAE");
        for sae in &state.saes {
            if ui
                .selectable_label(state.selected_sae == Some(sae.id), sae.label())
                .on_hover_text(format!(
                    "{} ({:?})\n{}",
                    sae.cfg.path.display(),
                    sae.cfg.format,
                    sae.cfg.notes.join("\n")
                ))
                .clicked()
            {
                action = Some(Action::SelectSae(sae.id));
            }
        }
        if ui
            .button("Attach SAE…")
            .on_hover_text("A SAELens folder, a Gemma Scope params.npz or an EleutherAI sparsify hookpoint folder")
            .clicked()
            && let Some(path) = pick_sae()
        {
            action = Some(Action::AttachSae(path));
        }
        // A params.npz outside its release's folder layout does not say which hook it reads.
        ui.menu_button("Attach .npz at hook…", |ui| {
            let id = egui::Id::unique("npz_hook");
            let mut hook: String = ui.data(|d| d.get_temp(id)).unwrap_or_else(|| {
                format!("blocks.{}.hook_resid_post", state.selection.layer)
            });
            ui.label("hook the SAE reads");
            ui.text_edit_singleline(&mut hook);
            ui.data_mut(|d| d.insert_temp(id, hook.clone()));
            if ui.button("Pick params.npz…").clicked()
                && let Some(path) = pick_npz()
            {
                action = Some(Action::AttachSaeAt { path, hook });
                ui.close();
            }
        });
        if let Some(id) = state.selected_sae
            && ui
                .button("Detach")
                .on_hover_text("Also removes its clamps and steering")
                .clicked()
        {
            action = Some(Action::DetachSae(id));
        }
    });
    let Some(sae_id) = state.selected_sae else {
        ui.weak("No SAE attached. Attach one (SAELens folder, Gemma Scope params.npz, EleutherAI sparsify folder) or drop its folder on the window.");
        return action;
    };
    let pass = state.shown();
    let Some(summary) = pass.sae(sae_id) else {
        ui.horizontal(|ui| {
            if state.is_running() {
                ui.spinner();
            }
            ui.weak("The feature map fills in when the SAE's layer has run.");
        });
        return action;
    };
    let mean_l0 =
        summary.l0.iter().map(|&l| l as f64).sum::<f64>() / summary.l0.len().max(1) as f64;
    ui.add(egui::Label::new(format!(
        "{} at {}: {} latents · FVE {} · MSE {} · mean L0 {mean_l0:.1} over {} tokens",
        state.saes.iter().find(|s| s.id == sae_id).map_or("", |s| s.cfg.architecture.as_str()),
        summary.hook,
        summary.d_sae,
        summary.fve.map_or("n/a".into(), |f| format!("{f:.3}")),
        summary.mse.map_or("n/a".into(), |m| format!("{m:.4}")),
        summary.n_tokens
    )).wrap())
    .on_hover_text("FVE = 1 − Σ|x − x_hat|² / Σ|x − mean x|² over the prompt's tokens; MSE = mean over tokens of |x − x_hat|² (summed over dimensions)");

    let difference = state.show == Show::Difference && state.runs.intervened.is_some();
    let baseline = state.runs.baseline.sae(sae_id);
    let columns = summary.strongest_latents(MAX_COLUMNS);
    let (t, c) = (summary.n_tokens, columns.len());
    // One pass over each token's active latents (this runs every frame).
    let column_of: std::collections::HashMap<u32, usize> =
        columns.iter().enumerate().map(|(k, &j)| (j, k)).collect();
    let mut values = vec![0f32; t * c];
    let mut add = |s: &crate::sae::apply::SaeSummary, sign: f32| {
        for (p, active) in s.features.iter().enumerate().take(t) {
            for (j, a) in active {
                if let Some(&k) = column_of.get(j) {
                    values[p * c + k] += sign * a;
                }
            }
        }
    };
    add(summary, 1.0);
    if let Some(b) = baseline.filter(|_| difference) {
        add(b, -1.0);
    }
    if c == 0 {
        ui.weak("No latent fires on this prompt.");
        return action;
    }
    let value = |r: usize, col: usize| values.get(r * c + col).copied();
    let grid = Grid {
        rows: t,
        cols: c,
        value: &value,
    };
    let cmap = if difference {
        Colormap::robust_diverging(&values)
    } else {
        Colormap::robust_sequential(&values)
    };
    let key = fingerprint(&[
        pass.run_id,
        sae_id,
        state.show as u64,
        summary as *const _ as u64,
    ]);
    let size = egui::vec2(
        ui.available_width(),
        ((ui.available_height() - 200.0) * 0.75).max(80.0),
    );
    let r = heatmap_ui(
        ui,
        ui.scope_id().with(("features", sae_id)),
        key,
        &grid,
        cmap,
        size,
    );
    if let Some((p, col)) = r.hovered {
        let j = columns[col];
        let description = state
            .saes
            .iter()
            .find(|s| s.id == sae_id)
            .map(|s| {
                state
                    .stores
                    .description_line(&crate::worker::stores::UnitRef {
                        source: s.source.clone(),
                        unit: j as usize,
                    })
            })
            .unwrap_or_default();
        r.response.on_hover_text(format!(
            "latent {j} at token {p} {:?}: {:.4}{description}\nclick to inspect",
            pass.tokens.get(p).map(|s| visible(s)).unwrap_or_default(),
            values[p * c + col]
        ));
    }
    if let Some((_, col)) = r.clicked {
        action = Some(Action::SelectLatent {
            sae_id,
            latent: columns[col] as usize,
        });
    }
    legend_ui(
        ui,
        cmap,
        &format!(
            "activation (≤ 97th pct.) · {c} of {} latents",
            summary.d_sae
        ),
    );

    let blue = egui::Color32::from_rgb(0, 114, 178);
    let orange = egui::Color32::from_rgb(213, 94, 0);
    let small_plot = |id: (&str, u64)| {
        Plot::new(id)
            .height(110.0)
            .allow_drag(false)
            .allow_scroll(false)
    };
    ui.columns(3, |cols| {
        cols[0].label("L0 per token");
        small_plot(("sae_l0", sae_id))
            .x_axis_label("token")
            .show(&mut cols[0], |plot| {
                let l0: Vec<Bar> = summary
                    .l0
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| Bar::new(i as f64, l as f64).width(0.8))
                    .collect();
                plot.bar_chart(BarChart::new("L0", l0).color(blue));
            });
        cols[1]
            .label("relative error")
            .on_hover_text("|x − x_hat|² / |x|² per token");
        small_plot(("sae_err", sae_id))
            .x_axis_label("token")
            .show(&mut cols[1], |plot| {
                let points: PlotPoints = summary
                    .relative_error()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| Some([i as f64, (*e)? as f64]))
                    .collect();
                plot.line(Line::new("relative error", points).color(orange));
            });
        let nonzero: Vec<f32> = summary.features.iter().flatten().map(|(_, a)| *a).collect();
        cols[2]
            .label(format!("{} activations", nonzero.len()))
            .on_hover_text("histogram of the nonzero latent activations, log10(1 + count)");
        if !nonzero.is_empty() {
            let bins = Bins::covering(&nonzero, HISTOGRAM_BINS);
            let h = Histogram::new(bins, &nonzero);
            let edges = bins.edges();
            small_plot(("sae_hist", sae_id))
                .x_axis_label("activation")
                .show(&mut cols[2], |plot| {
                    let bars: Vec<Bar> = h
                        .log_counts()
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            Bar::new((edges[i] + edges[i + 1]) / 2.0, v)
                                .width(edges[i + 1] - edges[i])
                        })
                        .collect();
                    plot.bar_chart(BarChart::new("count", bars).color(blue));
                });
        }
    });
    action
}

/// A native dialog for an SAE folder (none under tests or without a portal).
/// A native dialog for a Gemma Scope `params.npz`.
fn pick_npz() -> Option<std::path::PathBuf> {
    rfd::FileDialog::new()
        .set_title("Attach a Gemma Scope params.npz")
        .add_filter("NumPy archives", &["npz"])
        .pick_file()
}

pub(crate) fn pick_sae() -> Option<std::path::PathBuf> {
    rfd::FileDialog::new()
        .set_title("Attach an SAE (pick its folder; for Gemma Scope, its params.npz folder)")
        .pick_folder()
}
