//! SAE jobs: train a TopK SAE on the open model, or evaluate the selected SAE over held-out
//! text; the running job's progress, live training curves and a cancel button; the last
//! evaluation's metrics.

use egui::Ui;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::sae::train::TrainOptions;
use crate::ui::state::{Action, AppState};
use crate::worker::JobOutcome;

/// The form's fields (widget state kept in egui memory).
#[derive(Clone, Debug)]
struct JobForm {
    corpus: String,
    eval_tokens: usize,
    hook: String,
    k: usize,
    width: usize,
    steps: usize,
    batch: usize,
    out: String,
}

impl Default for JobForm {
    fn default() -> Self {
        let t = TrainOptions::default();
        JobForm {
            corpus: t.corpus.display().to_string(),
            eval_tokens: 8192,
            hook: t.hook,
            k: t.k,
            width: t.width,
            steps: t.steps,
            batch: t.batch,
            out: String::new(),
        }
    }
}

pub fn sae_jobs_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    let id = egui::Id::unique("sae_job_form");
    let mut form: JobForm = ui.data_mut(|d| d.get_temp_mut_or_default::<JobForm>(id).clone());
    let busy = state.job_running();
    ui.horizontal(|ui| {
        ui.label("corpus");
        ui.add(egui::TextEdit::singleline(&mut form.corpus).desired_width(260.0))
            .on_hover_text("A .txt file (its last 5% is held out) or a folder of .txt files (every 20th held out)");
        if ui.button("Browse…").clicked()
            && let Some(p) = rfd::FileDialog::new().pick_folder()
        {
            form.corpus = p.display().to_string();
        }
    });
    ui.horizontal(|ui| {
        ui.add(egui::DragValue::new(&mut form.eval_tokens).range(256..=10_000_000).prefix("tokens "));
        let can = !busy && state.selected_sae.is_some() && !form.corpus.is_empty();
        if ui
            .add_enabled(can, egui::Button::new("Evaluate the selected SAE"))
            .on_hover_text("L0, MSE, FVE, cosine, CE loss recovered (zero and mean ablation), KL score, dead/dense fractions, dark-matter R² over held-out text")
            .clicked()
        {
            action = Some(Action::EvaluateSae {
                corpus: form.corpus.clone().into(),
                tokens: form.eval_tokens,
            });
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("train TopK at");
        ui.add(egui::TextEdit::singleline(&mut form.hook).desired_width(190.0));
        ui.add(
            egui::DragValue::new(&mut form.k)
                .range(1..=4096)
                .prefix("k "),
        );
        ui.add(
            egui::DragValue::new(&mut form.width)
                .range(16..=1 << 20)
                .prefix("width "),
        );
        ui.add(
            egui::DragValue::new(&mut form.steps)
                .range(1..=1_000_000)
                .prefix("steps "),
        );
        ui.add(
            egui::DragValue::new(&mut form.batch)
                .range(16..=65_536)
                .prefix("batch "),
        );
    });
    ui.horizontal(|ui| {
        ui.label("save to");
        // Beside the exports (`dendrite-exports/`), named by what was trained.
        let default_out = format!(
            "dendrite-saes/{}_k{}_w{}",
            form.hook.replace('.', "-"),
            form.k,
            form.width
        );
        ui.add(
            egui::TextEdit::singleline(&mut form.out)
                .hint_text(&default_out)
                .desired_width(260.0),
        );
        let can = !busy && state.model.is_some() && !form.corpus.is_empty();
        if ui
            .add_enabled(can, egui::Button::new("Train"))
            .on_hover_text("Trains on the open model on a job thread (prompts keep running), saves a SAELens folder with training.json and curves, and attaches it")
            .clicked()
        {
            let out = if form.out.is_empty() { default_out } else { form.out.clone() };
            action = Some(Action::TrainSae(Box::new(TrainOptions {
                hook: form.hook.clone(),
                corpus: form.corpus.clone().into(),
                out: out.into(),
                k: form.k,
                width: form.width,
                steps: form.steps,
                batch: form.batch,
                ..TrainOptions::default()
            })));
        }
    });
    ui.data_mut(|d| d.insert_temp(id, form));

    if let Some(job) = &state.job {
        ui.separator();
        ui.horizontal(|ui| {
            ui.strong(&job.title);
            if job.outcome.is_none() && ui.button("Cancel").clicked() {
                action = Some(Action::CancelJob);
            }
        });
        ui.add(egui::ProgressBar::new(job.fraction).text(&job.message));
        match &job.outcome {
            Some(JobOutcome::Trained {
                out,
                fve,
                l0,
                tokens_per_s,
            }) => {
                ui.label(format!(
                    "saved to {} and attached · held-out FVE {fve:.4}, L0 {l0:.1} · {tokens_per_s:.0} tokens/s",
                    out.display()
                ));
            }
            Some(JobOutcome::Cancelled) => {
                ui.weak("stopped");
            }
            _ => {}
        }
        if !job.curve.is_empty() {
            let k = job.curve.iter().map(|p| p[2]).fold(1.0f64, f64::max);
            Plot::new("training_curves")
                .height(140.0)
                .legend(Legend::default())
                .allow_scroll(false)
                .x_axis_label("step")
                .show(ui, |plot| {
                    let series = |i: usize, scale: f64| -> PlotPoints {
                        job.curve.iter().map(|p| [p[0], p[i] / scale]).collect()
                    };
                    plot.line(Line::new("loss (MSE / variance)", series(1, 1.0)));
                    plot.line(Line::new("FVE", series(3, 1.0)));
                    plot.line(Line::new("dead fraction", series(4, 1.0)));
                    plot.line(Line::new(format!("L0 / {k:.0}"), series(2, k)));
                });
        }
    }

    if let Some(report) = state.selected_sae.and_then(|id| state.evaluations.get(&id)) {
        ui.separator();
        ui.label(format!(
            "last evaluation: {} tokens ({} sequences)",
            report.tokens, report.sequences
        ));
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        egui::Grid::new("sae_eval").striped(true).show(ui, |ui| {
            if let Some(r) = &report.reconstruction {
                for (name, value) in [
                    ("L0", opt(r.l0)),
                    ("FVE", opt(r.fve)),
                    (
                        "MSE per token (summed over d)",
                        format!("{:.4}", r.mse_per_token_sum),
                    ),
                    ("normalized MSE", opt(r.normalized_mse)),
                    ("cosine(x, x_hat)", opt(r.mean_cosine)),
                ] {
                    ui.label(name);
                    ui.monospace(value);
                    ui.end_row();
                }
            }
            if let Some(d) = &report.downstream {
                for (name, value) in [
                    (
                        "CE loss recovered (zero ablation)",
                        opt(d.ce_loss_recovered_zero),
                    ),
                    (
                        "CE loss recovered (mean ablation)",
                        opt(d.ce_loss_recovered_mean),
                    ),
                    (
                        "KL score (zero / mean)",
                        format!("{} / {}", opt(d.kl_score_zero), opt(d.kl_score_mean)),
                    ),
                    (
                        "CE clean / with SAE",
                        format!("{:.4} / {:.4}", d.ce_clean, d.ce_sae),
                    ),
                ] {
                    ui.label(name);
                    ui.monospace(value);
                    ui.end_row();
                }
            }
            if let Some(f) = &report.firing {
                ui.label(format!("dead / dense over {} tokens", f.n_tokens));
                ui.monospace(format!(
                    "{:.2}% / {:.2}%",
                    100.0 * f.frac_dead,
                    100.0 * f.frac_dense
                ));
                ui.end_row();
            }
            if let Some(dm) = &report.dark_matter {
                ui.label("dark matter R² (vector / norm)");
                ui.monospace(format!("{} / {}", opt(dm.r2_vec), opt(dm.r2_norm)));
                ui.end_row();
            }
        });
    }
    action
}
