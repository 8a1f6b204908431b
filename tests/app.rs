//! The app driven like a user with egui_kittest (no GPU needed): open a model, type a prompt,
//! run it, select a neuron, clamp it and see the prediction change, remove the clamp; a worker
//! panic leaves the app usable.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, tiny_sae_training};
use dendrite::ui::DendriteApp;
use dendrite::ui::state::{Action, AppState};
use dendrite::worker::Command;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;

fn model_path() -> std::path::PathBuf {
    dendrite::sample::path().unwrap_or_else(|| fixtures().join("tiny/gpt2"))
}

fn harness() -> Harness<'static, DendriteApp> {
    let h = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .build_eframe(|cc| {
            let mut app = DendriteApp::new(&cc.egui_ctx, None, Some(model_path())).unwrap();
            // Short enough for the tiny test model's 64 positions.
            app.state.prompt = "one two, one two".into();
            app
        });
    // Token texts are arbitrary Unicode: the app draws tofu for what no font has (kittest
    // otherwise panics on a missing glyph).
    h.ctx
        .set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
    h
}

/// Steps the app until `done` holds (the worker feeds it from another thread).
fn step_until(h: &mut Harness<'_, DendriteApp>, what: &str, done: impl Fn(&AppState) -> bool) {
    let started = Instant::now();
    while !done(&h.state().state) {
        let s = &h.state().state;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; errors: {:?}",
            s.errors
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

fn finished(s: &AppState) -> bool {
    s.is_complete()
}

fn top_prediction(s: &AppState) -> u32 {
    let pass = s.intervened.as_ref().unwrap_or(&s.baseline);
    pass.finished.as_ref().unwrap().predictions.last().unwrap()[0].id
}

#[test]
fn clamping_a_neuron_changes_the_prediction_and_removing_it_restores_it() {
    let mut h = harness();
    step_until(&mut h, "the model and the default prompt", |s| {
        s.model.is_some() && finished(s)
    });

    // Type a new prompt and run it.
    let prompt = h.get_by_label("Prompt");
    prompt.focus();
    h.step();
    h.get_by_label("Prompt").type_text(" again");
    h.step();
    assert!(h.state().state.prompt.ends_with(" again"));
    h.get_by_label("Run").click();
    step_until(&mut h, "the new prompt's run", |s| {
        finished(s) && s.baseline.tokens.concat().ends_with(" again")
    });
    let before = top_prediction(&h.state().state);

    // Select a neuron of the last layer (as a click in the heatmap does) and clamp it hard.
    let last = h.state().state.n_layers() - 1;
    h.state_mut().act(Action::SelectNeuron {
        layer: last,
        neuron: 1,
    });
    step_until(&mut h, "the neuron's logit effects", |s| {
        s.neuron_info.is_some()
    });
    h.get_by_label("Clamp to value").click();
    step_until(&mut h, "the clamped run", |s| {
        s.intervened.is_some() && finished(s)
    });
    // Push the neuron far enough to change the prediction whatever its sign.
    let mut changed = top_prediction(&h.state().state) != before;
    for value in [500.0, -500.0, 5000.0, -5000.0] {
        if changed {
            break;
        }
        let kind = dendrite::ui::state::InterventionKind::Neuron {
            layer: last,
            neuron: 1,
            value,
            scale: false,
        };
        h.state_mut().act(Action::EditIntervention(0, kind));
        step_until(&mut h, "the edited clamp", finished);
        changed = top_prediction(&h.state().state) != before;
    }
    assert!(changed, "clamping did not change the top prediction");
    assert!(h.state().state.comparison().is_some());

    // Remove it again: the baseline prediction is back.
    h.get_by_label("Remove").click();
    step_until(&mut h, "the run without the clamp", |s| {
        s.intervened.is_none() && finished(s)
    });
    assert!(h.state().state.interventions.is_empty());
    assert_eq!(top_prediction(&h.state().state), before);
}

#[test]
fn ctrl_e_exports_the_focused_views_data_with_a_descriptive_name() {
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    let view = dendrite::ui::export::View::Tab(dendrite::ui::state::Tab::Neurons);
    // Where the view is as the key is pressed (the notice then takes a line).
    let rect = h.state().placement(view).unwrap().rect;
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::E);
    h.run_steps(2);
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let csv = files
        .iter()
        .find(|f| f.ends_with(".csv"))
        .expect("a CSV was written");
    assert!(csv.contains("_L0_neurons_"), "{csv}");
    let text = std::fs::read_to_string(dir.path().join(csv)).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("position,token,n0,n1"));
    assert_eq!(lines.count(), h.state().state.baseline.tokens.len());
    // The PNG is the view drawn again at 2 pixels per point (this harness has no renderer at
    // all: the figure does not come from the screen).
    let started = Instant::now();
    while !h
        .state()
        .state
        .notice
        .as_deref()
        .unwrap_or("")
        .contains(".png")
    {
        assert!(started.elapsed() < Duration::from_secs(30), "no PNG");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let notice = h.state().state.notice.clone().unwrap_or_default();
    assert!(notice.starts_with("Exported"), "{notice}");
    let png = csv.replace(".csv", ".png");
    let image = image::open(dir.path().join(&png)).unwrap().to_rgba8();
    assert_eq!(
        image.dimensions(),
        (
            ((rect.width() + 16.0) * 2.0).round() as u32,
            ((rect.height() + 16.0) * 2.0).round() as u32
        )
    );
    let colours: std::collections::HashSet<[u8; 4]> = image.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "a drawn view, not a blank image");
}

#[test]
fn a_worker_panic_shows_an_error_and_the_app_keeps_working() {
    let mut h = harness();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    h.state_mut().send(Command::Panic);
    step_until(&mut h, "the error banner", |s| !s.errors.is_empty());
    assert!(h.state().state.errors[0].message.contains("panic"));
    h.get_by_label("Dismiss").click();
    h.step();
    assert!(h.state().state.errors.is_empty());
    h.state_mut().act(Action::Run);
    step_until(&mut h, "a run after the panic", finished);
    // Opening a missing file is an error too, and the open model stays.
    h.state_mut()
        .act(Action::Open("/nonexistent/model.gguf".into()));
    step_until(&mut h, "the open error", |s| !s.errors.is_empty());
    assert!(h.state().state.model.is_some());
}

#[test]
fn the_sample_sae_is_attached_by_default_and_clamping_a_latent_changes_the_prediction() {
    // Only the embedded sample model comes with an SAE.
    let Some(sample) = dendrite::sample::path() else {
        return;
    };
    assert_eq!(model_path(), sample);
    let mut h = harness();
    step_until(&mut h, "the model, its SAE and the feature map", |s| {
        s.model.is_some() && !s.saes.is_empty() && finished(s)
    });
    let s = &h.state().state;
    let sae_id = s.saes[0].id;
    assert_eq!(s.saes[0].cfg.hook_name, "blocks.0.hook_resid_post");
    let summary = s.baseline.sae(sae_id).expect("the feature map streamed");
    assert_eq!(summary.n_tokens, s.baseline.tokens.len());
    assert!(summary.l0.iter().all(|&l| l > 0 && l <= 16), "TopK k = 16");
    assert!(summary.fve.unwrap() > 0.5, "fve {:?}", summary.fve);
    let before = top_prediction(s);
    let latent = summary.features.last().unwrap()[0].0 as usize;

    // The Features tab shows the map; select the strongest latent at the last token.
    h.state_mut()
        .act(Action::SetTab(dendrite::ui::state::Tab::Features));
    h.step();
    h.state_mut().act(Action::SelectLatent { sae_id, latent });
    step_until(&mut h, "the latent's logit effects", |s| {
        s.latent_info.is_some()
    });
    h.get_by_label("Clamp to value").click();
    step_until(&mut h, "the clamped run", |s| {
        s.intervened.is_some() && finished(s)
    });
    let mut changed = top_prediction(&h.state().state) != before;
    for value in [0.0, 200.0, -200.0, 1000.0] {
        if changed {
            break;
        }
        let kind = dendrite::ui::state::InterventionKind::Latent {
            sae_id,
            latent,
            value,
            scale: false,
            positions: None,
        };
        h.state_mut().act(Action::EditIntervention(0, kind));
        step_until(&mut h, "the edited latent clamp", finished);
        changed = top_prediction(&h.state().state) != before;
    }
    assert!(
        changed,
        "clamping the latent did not change the top prediction"
    );
    // The intervened pass has its own feature map.
    assert!(
        h.state()
            .state
            .intervened
            .as_ref()
            .unwrap()
            .sae(sae_id)
            .is_some()
    );
}

#[test]
fn an_sae_trained_from_the_app_reports_curves_and_is_attached() {
    let mut h = harness();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    let attached_before = h.state().state.saes.len();
    let out = tempfile::tempdir().unwrap();
    let opts = tiny_sae_training(out.path().join("sae"), 8);
    h.state_mut().act(Action::TrainSae(Box::new(opts)));
    assert!(h.state().state.job_running());
    step_until(
        &mut h,
        "the trained SAE attached and its feature map",
        |s| s.saes.len() == attached_before + 1 && !s.job_running() && finished(s),
    );
    let s = &h.state().state;
    let job = s.job.as_ref().unwrap();
    assert_eq!(job.fraction, 1.0);
    assert_eq!(job.curve.len(), 8, "one curve point per step");
    assert!(matches!(
        job.outcome,
        Some(dendrite::worker::JobOutcome::Trained { .. })
    ));
    let new = s.saes.last().unwrap();
    assert!(s.baseline.sae(new.id).is_some());
}
