//! Image snapshots of the app's views (software-rendered with wgpu on lavapipe; run with
//! `--features snapshots`, as scripts/test.sh does). `UPDATE_SNAPSHOTS=1` rewrites them.
#![cfg(feature = "snapshots")]

mod common;

use std::time::{Duration, Instant};

use common::fixtures;
use dendrite::ui::DendriteApp;
use dendrite::ui::state::{Action, Tab};
use egui_kittest::{Harness, SnapshotResults};

fn loaded() -> Harness<'static, DendriteApp> {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 760.0))
        .wgpu()
        .build_eframe(|cc| {
            let mut app =
                DendriteApp::new(&cc.egui_ctx, None, Some(fixtures().join("tiny/gpt2"))).unwrap();
            app.state.prompt = "one two three, one two three".into();
            app.state.show_timings = false;
            app.attach_on_load = vec![fixtures().join("sae/topk")];
            app
        });
    h.ctx
        .set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
    let started = Instant::now();
    while !(h.state().state.is_complete()
        && h.state().state.probe.is_some()
        && !h.state().state.saes.is_empty())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not finish"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.run_steps(3);
    h
}

#[test]
fn every_tab_renders() {
    let mut h = loaded();
    let mut results = SnapshotResults::new();
    h.state_mut().act(Action::SelectNeuron {
        layer: 1,
        neuron: 3,
    });
    let started = Instant::now();
    while h.state().state.neuron_info.is_none() && started.elapsed() < Duration::from_secs(30) {
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    for (tab, name) in [
        (Tab::Neurons, "neurons"),
        (Tab::Heads, "heads"),
        (Tab::Histograms, "histograms"),
        (Tab::Lens, "lens"),
        (Tab::Features, "features"),
    ] {
        h.state_mut().act(Action::SetTab(tab));
        // The lens is computed when its tab opens.
        let started = Instant::now();
        while tab == Tab::Lens
            && h.state().state.shown().lens.is_none()
            && started.elapsed() < Duration::from_secs(30)
        {
            h.step();
            std::thread::sleep(Duration::from_millis(5));
        }
        h.run_steps(3);
        results.add(h.try_snapshot(name));
    }
}
