//! The app driven like a user with egui_kittest (no GPU needed): open a model, type a prompt,
//! run it, select a neuron, clamp it and see the prediction change, remove the clamp; a worker
//! panic leaves the app usable; corpus stores (the sample's, one scanned from the app) show a
//! unit's examples, take descriptions and imports, and answer searches; Explain runs
//! auto-interpretation against `dendrite serve` as a job and shows its scores.

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
    harness_on(Some(model_path()))
}

/// The app opened on `model` (or on nothing).
fn harness_on(model: Option<std::path::PathBuf>) -> Harness<'static, DendriteApp> {
    let h = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .build_eframe(move |cc| {
            let mut app = DendriteApp::new(&cc.egui_ctx, None, model).unwrap();
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

/// Presses Ctrl+E, waits for the figure, and lists the export folder.
fn export_with_ctrl_e(h: &mut Harness<'_, DendriteApp>, dir: &std::path::Path) -> Vec<String> {
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::E);
    h.run_steps(2);
    wait_for_png(h);
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Steps until the export thread reports the PNG it wrote.
fn wait_for_png(h: &mut Harness<'_, DendriteApp>) {
    step_until(h, "the PNG export", |s| {
        s.notice.as_deref().unwrap_or("").contains(".png")
    });
}

fn finished(s: &AppState) -> bool {
    s.is_complete()
}

fn top_prediction(s: &AppState) -> u32 {
    let pass = s.runs.intervened.as_ref().unwrap_or(&s.runs.baseline);
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
        finished(s) && s.runs.baseline.tokens.concat().ends_with(" again")
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
        s.runs.intervened.is_some() && finished(s)
    });
    // Push the neuron far enough to change the prediction whatever its sign.
    let mut changed = top_prediction(&h.state().state) != before;
    for value in [500.0, -500.0, 5000.0, -5000.0] {
        if changed {
            break;
        }
        let kind = dendrite::ui::state::EditSpec::Neuron {
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
        s.runs.intervened.is_none() && finished(s)
    });
    assert!(h.state().state.interventions.items.is_empty());
    assert_eq!(top_prediction(&h.state().state), before);
}

#[test]
fn ctrl_e_exports_the_focused_views_data_with_a_descriptive_name() {
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    let view = dendrite::ui::state::View::Tab(dendrite::ui::state::Tab::Neurons);
    // Where the view is as the key is pressed (the notice then takes a line); the pointer is
    // over it, so Ctrl+E exports it.
    let rect = h.state().placement(view).unwrap().rect;
    h.hover_at(rect.center());
    h.step();
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
    assert_eq!(lines.count(), h.state().state.runs.baseline.tokens.len());
    // The PNG is the view drawn again at 2 pixels per point (this harness has no renderer at
    // all: the figure does not come from the screen).
    wait_for_png(&mut h);
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

    // The activations beside them, as NumPy and safetensors read them: the layer shown as
    // .npy (equal to the CSV), every layer's mlp.hook_post as .safetensors.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let npy = dir.path().join(csv.replace(".csv", ".npy"));
    let svg = csv.replace(".csv", ".svg");
    let st = dir.path().join(csv.replace(".csv", ".safetensors"));
    let check = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import csv, sys, numpy as np\n\
             from safetensors.numpy import load_file\n\
             a = np.load(sys.argv[1])\n\
             rows = list(csv.reader(open(sys.argv[3])))[1:]\n\
             table = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float32)\n\
             assert a.dtype == np.float32 and a.shape == table.shape, (a.shape, table.shape)\n\
             assert (a == table).all()\n\
             t = load_file(sys.argv[2])\n\
             assert (t['blocks.0.mlp.hook_post'] == a).all()\n\
             import xml.etree.ElementTree as ET\n\
             svg = ET.parse(sys.argv[4]).getroot()\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             texts = [e.text for e in svg.iter(ns + 'text')]\n\
             images = list(svg.iter(ns + 'image'))\n\
             assert len(texts) >= 5 and len(images) == 1, (len(texts), len(images))\n\
             assert images[0].get('href').startswith('data:image/png;base64,')\n\
             print(sorted(t), texts)",
        )
        .args([&npy, &st, &dir.path().join(csv), &dir.path().join(&svg)])
        .output()
        .expect("the venv's python (scripts/test.sh prepares .cache/venv)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let names = String::from_utf8_lossy(&check.stdout);
    let layers = h.state().state.n_layers();
    assert!(
        names.contains(&format!("blocks.{}.mlp.hook_post", layers - 1)),
        "{names}"
    );
    // The SVG's text is text: the legend's words are there to select and search.
    assert!(names.contains("clipped at"), "{names}");
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
    let sample = dendrite::sample::path().expect("the sample model is written to the cache");
    assert_eq!(model_path(), sample);
    let mut h = harness();
    step_until(&mut h, "the model, its SAE and the feature map", |s| {
        s.model.is_some() && !s.saes.is_empty() && finished(s)
    });
    let s = &h.state().state;
    let sae_id = s.saes[0].id;
    assert_eq!(s.saes[0].cfg.hook_name, "blocks.0.hook_resid_post");
    let summary = s
        .runs
        .baseline
        .sae(sae_id)
        .expect("the feature map streamed");
    assert_eq!(summary.n_tokens, s.runs.baseline.tokens.len());
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
        s.runs.intervened.is_some() && finished(s)
    });
    let mut changed = top_prediction(&h.state().state) != before;
    for value in [0.0, 200.0, -200.0, 1000.0] {
        if changed {
            break;
        }
        let kind = dendrite::ui::state::EditSpec::Latent {
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
            .runs
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
    assert!(s.runs.baseline.sae(new.id).is_some());
}

/// Steps until the store reader has answered for `unit` (the inspector asks by itself).
fn report_of(
    h: &mut Harness<'_, DendriteApp>,
    unit: &dendrite::worker::stores::UnitRef,
) -> std::sync::Arc<dendrite::describe::UnitReport> {
    step_until(h, "the unit's report", |s| s.stores.report(unit).is_some());
    let ready = h.state().state.stores.report(unit).unwrap().clone();
    ready.report.expect("a store has the unit")
}

#[test]
fn the_sample_store_opens_with_the_sample_model_and_shows_a_neurons_examples() {
    let mut h = harness();
    step_until(&mut h, "the model and its store", |s| {
        s.model.is_some() && !s.stores.open.is_empty() && finished(s)
    });
    let store_path = h.state().state.stores.open[0].path.clone();
    assert_eq!(Some(store_path.clone()), dendrite::sample::store_path());
    h.state_mut().act(Action::SelectNeuron {
        layer: 1,
        neuron: 5,
    });
    let unit = dendrite::worker::stores::UnitRef {
        source: "blocks.1.mlp.hook_post".into(),
        unit: 5,
    };
    let report = report_of(&mut h, &unit);
    // What the panel shows is the store's own report, examples first by max.
    let direct = dendrite::describe::Store::open_existing(&store_path)
        .unwrap()
        .unit_report(&unit.source, unit.unit, None)
        .unwrap();
    assert_eq!(*report, direct);
    assert_eq!(report.examples.len(), 10);
    assert!(
        report
            .examples
            .windows(2)
            .all(|w| w[0].max_act >= w[1].max_act)
    );
    h.run_steps(2);
    h.get_by_label("From the corpus · blocks.1.mlp.hook_post 5");
    h.get_by_label_contains("top 10 windows by max activation");
    // Its examples export as CSV, a row per token.
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    h.state_mut()
        .act(Action::Export(dendrite::ui::state::View::Unit));
    let csv = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "csv"))
        .expect("a CSV was written");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("source,unit,kind,rank,window,max_act,position,token_id,token,act"));
    // Tokens hold newlines and commas: count records, not lines.
    let rows = csv::Reader::from_reader(text.as_bytes()).records().count();
    let windows = report.examples.len()
        + report
            .quantiles
            .iter()
            .map(|q| q.examples.len())
            .sum::<usize>();
    assert_eq!(rows, windows * report.examples[0].token_ids.len());
}

#[test]
fn a_corpus_scanned_from_the_app_opens_and_takes_descriptions_imports_and_searches() {
    let mut h = harness();
    step_until(&mut h, "the model and its SAE", |s| {
        s.model.is_some() && !s.saes.is_empty() && finished(s)
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scan.sqlite");
    let mut opts = dendrite::describe::ScanOptions::new(
        fixtures().join("text/cymbeline_heldout.txt"),
        out.clone(),
    );
    opts.context = 32;
    opts.max_tokens = Some(1600);
    opts.saes = vec![h.state().state.saes[0].cfg.path.clone()];
    h.state_mut().act(Action::ScanCorpus(Box::new(opts)));
    step_until(&mut h, "the scan and its store", |s| {
        s.stores.open.iter().any(|o| o.path == out)
    });
    let s = &h.state().state;
    assert!(matches!(
        s.job.as_ref().and_then(|j| j.outcome.clone()),
        Some(dendrite::worker::JobOutcome::Scanned {
            complete: true,
            tokens: 1600,
            ..
        })
    ));
    let sae = s.saes[0].clone();
    assert_eq!(sae.source, "sae:shakespeare-gpt2-relu-sae");
    let store = s
        .stores
        .open
        .iter()
        .find(|o| o.path == out)
        .unwrap()
        .clone();
    assert_eq!(store.sources.len(), 3, "two MLP layers and the SAE");

    // A latent that fired: its panel has examples.
    let report_unit = |latent| dendrite::worker::stores::UnitRef {
        source: sae.source.clone(),
        unit: latent,
    };
    let direct = dendrite::describe::Store::open_existing(&out).unwrap();
    let latent = (0..sae.cfg.d_sae)
        .find(|&j| {
            direct
                .unit_report(&sae.source, j, Some(1))
                .is_ok_and(|r| !r.examples.is_empty())
        })
        .expect("some latent fired");
    drop(direct);
    h.state_mut().act(Action::SelectLatent {
        sae_id: sae.id,
        latent,
    });
    let unit = report_unit(latent);
    let report = report_of(&mut h, &unit);
    assert!(!report.examples.is_empty());
    assert!(report.explanations.is_empty());

    // The user's description is saved, shown and searchable; its hit selects the unit.
    h.state_mut().act(Action::SetDescription(
        unit.clone(),
        "stage directions in brackets".into(),
    ));
    step_until(&mut h, "the saved description", |s| {
        s.stores
            .report(&unit)
            .and_then(|r| r.report.as_ref())
            .is_some_and(|r| r.explanations.len() == 1)
    });
    h.state_mut().act(Action::ClearSelection);
    h.state_mut().act(Action::Search("brackets".into()));
    step_until(&mut h, "the search", |s| s.stores.search.is_some());
    let hits = h.state().state.stores.search.clone().unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].source.as_str(), hits[0].unit),
        (sae.source.as_str(), latent)
    );
    assert_eq!(hits[0].origin, "user");
    h.state_mut().act(Action::SelectUnit(unit.clone()));
    assert_eq!(h.state().state.selection.latent, Some((sae.id, latent)));

    // A Neuronpedia export of another model is held until confirmed, then imported.
    let export = dir.path().join("np.jsonl");
    std::fs::write(
        &export,
        format!(
            "{{\"modelId\": \"gemma-2-2b\", \"layer\": \"0-res\", \"index\": \"{latent}\", \
             \"description\": \"speaker names\", \"explanationModelName\": \"gpt-4o-mini\", \
             \"typeName\": \"oai_token-act-pair\"}}\n"
        ),
    )
    .unwrap();
    h.state_mut().act(Action::ImportExplanations {
        file: export.clone(),
        source: sae.source.clone(),
        force: false,
    });
    step_until(&mut h, "the refused import", |s| {
        s.stores.refused_import.is_some()
    });
    let refused = h.state().state.stores.refused_import.clone().unwrap();
    assert!(
        refused.message.contains("gemma-2-2b"),
        "{}",
        refused.message
    );
    h.state_mut().act(Action::ImportExplanations {
        file: export,
        source: sae.source.clone(),
        force: true,
    });
    step_until(&mut h, "the import", |s| {
        s.stores.refused_import.is_none()
            && s.notice
                .as_deref()
                .is_some_and(|n| n.starts_with("Imported 1"))
    });
    let report = report_of(&mut h, &unit);
    let origins: Vec<&str> = report
        .explanations
        .iter()
        .map(|e| e.origin.as_str())
        .collect();
    assert_eq!(origins, ["user", "neuronpedia"]);
    assert_eq!(
        h.state().state.stores.description(&unit),
        Some("stage directions in brackets"),
        "the user's own description comes first in tooltips"
    );

    // Another model's store is refused, and the open ones stay.
    let foreign = dir.path().join("foreign.sqlite");
    std::fs::copy(&out, &foreign).unwrap();
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute("UPDATE scan SET model_fingerprint = 'other'", [])
        .unwrap();
    h.state_mut().act(Action::OpenStore(foreign));
    step_until(&mut h, "the refusal", |s| !s.errors.is_empty());
    let err = &h.state().state.errors[0];
    assert!(
        err.message.contains("not of the open model"),
        "{}",
        err.message
    );
    assert!(h.state().state.stores.open.iter().any(|o| o.path == out));
}

/// Clamp a neuron, open Generate: both continuations stream, where they part is marked, a
/// changed clamp restarts them (and reruns the prompt after), a continuation becomes the
/// prompt, and the tab exports as text, CSV and PNG.
#[test]
fn generate_shows_both_continuations_restarts_on_a_changed_clamp_and_exports() {
    use dendrite::ui::state::{EditSpec, Tab};
    use dendrite::worker::Variant;
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    h.state_mut().act(Action::SelectNeuron {
        layer: 0,
        neuron: 3,
    });
    step_until(&mut h, "the neuron", |s| s.neuron_info.is_some());
    let clamp = |value| EditSpec::Neuron {
        layer: 0,
        neuron: 3,
        value,
        scale: false,
    };
    h.state_mut().act(Action::AddIntervention(clamp(500.0)));
    step_until(&mut h, "the clamped run", |s| {
        s.runs.intervened.is_some() && finished(s)
    });
    h.get_by_label("Generate").click();
    h.run_steps(2);
    assert_eq!(h.state().state.tab, Tab::Generate);
    h.get_by_label("Continue prompt").click();
    step_until(&mut h, "both continuations", |s| {
        s.generation.as_ref().is_some_and(|g| !g.is_running())
    });
    let g = h.state().state.generation.clone().unwrap();
    assert!(g.error.is_none(), "{:?}", g.error);
    let max = h.state().state.generate_settings.max_new_tokens;
    let intervened = g.intervened.as_ref().expect("an intervened continuation");
    for c in [&g.baseline, intervened] {
        assert!(!c.tokens.is_empty() && c.tokens.len() <= max);
        assert!(c.finished.is_some());
    }
    let parting = g
        .first_difference()
        .expect("a clamp of 500 changes the continuation");
    assert_eq!(
        g.baseline.tokens[..parting]
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        intervened.tokens[..parting]
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    );
    assert!(g.first_token_ms.is_some());
    assert_eq!(
        g.watch.as_ref().map(|(_, l)| l.as_str()),
        Some("L0 N3"),
        "the selected neuron is watched"
    );
    // Every token but the last has its watched activation; clamped, the neuron reads 500.
    assert!(
        intervened.tokens[..intervened.tokens.len() - 1]
            .iter()
            .all(|t| t.activation == Some(500.0))
    );
    h.get_by_label_contains("the continuations part at generated token");

    // A changed clamp restarts the continuations, then reruns the prompt.
    let first_run = g.run_id;
    h.state_mut()
        .act(Action::EditIntervention(0, clamp(-500.0)));
    step_until(&mut h, "the restarted continuations and the rerun", |s| {
        s.generation
            .as_ref()
            .is_some_and(|g| g.run_id > first_run && !g.is_running())
            && finished(s)
    });
    let g = h.state().state.generation.clone().unwrap();
    assert_eq!(g.interventions, vec!["L0 N3 = -500.00".to_string()]);

    // Export: the continuations as text, the tokens as CSV, the view as PNG.
    let files = export_with_ctrl_e(&mut h, dir.path());
    let named = |ext: &str| {
        files
            .iter()
            .find(|f| f.ends_with(ext) && f.contains("_generation_"))
            .unwrap_or_else(|| panic!("no {ext} in {files:?}"))
            .clone()
    };
    let text = std::fs::read_to_string(dir.path().join(named(".txt"))).unwrap();
    assert!(text.contains("=== baseline"), "{text}");
    assert!(text.contains(&g.baseline.text()), "{text}");
    assert!(text.contains("intervened: L0 N3 = -500.00"), "{text}");
    let csv = std::fs::read_to_string(dir.path().join(named(".csv"))).unwrap();
    assert!(csv.starts_with("continuation,index,position,token_id,token,prob"));
    // Tokens with newlines are quoted across lines: count records.
    let records = csv::Reader::from_reader(csv.as_bytes()).records().count();
    assert_eq!(
        records,
        g.baseline.tokens.len() + g.intervened.as_ref().unwrap().tokens.len()
    );
    assert!(image::open(dir.path().join(named(".png"))).is_ok());

    // Use the intervened continuation as the prompt: it runs on the Neurons tab.
    let expected = format!("{}{}", g.prompt, g.intervened.as_ref().unwrap().text());
    h.state_mut().act(Action::UseAsPrompt(Variant::Intervened));
    step_until(&mut h, "the continued prompt's run", finished);
    assert_eq!(h.state().state.prompt, expected);
    assert_eq!(h.state().state.tab, Tab::Neurons);
}

#[test]
fn explain_in_the_inspector_runs_a_job_against_dendrite_serve_and_shows_the_scores() {
    let mut h = harness();
    step_until(&mut h, "the model, its SAE and its store", |s| {
        s.model.is_some() && !s.saes.is_empty() && !s.stores.open.is_empty() && finished(s)
    });
    // A copy of the sample store, opened last: the job writes into it, not the shared one.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("store.sqlite");
    std::fs::copy(dendrite::sample::store_path().unwrap(), &copy).unwrap();
    h.state_mut().act(Action::OpenStore(copy.clone()));
    step_until(&mut h, "the copied store", |s| {
        s.stores.open.iter().any(|o| o.path == copy)
    });
    let server = common::serve(&common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf"), &[]);
    h.state_mut().act(Action::SetExplainSettings(
        dendrite::ui::state::ExplainSettings {
            endpoint: server.base.clone(),
            model: "SmolLM2-135M-Instruct.Q4_1".into(),
            api_key_env: "DENDRITE_TEST_NO_KEY".into(),
            openai_prompt: true,
        },
    ));
    let sae_id = h.state().state.saes[0].id;
    h.state_mut()
        .act(Action::SelectLatent { sae_id, latent: 3 });
    let unit = dendrite::worker::stores::UnitRef {
        source: h.state().state.saes[0].source.clone(),
        unit: 3,
    };
    report_of(&mut h, &unit);
    h.run_steps(2);
    // As a user: open the section, press Explain; the job's title has the estimate. (The
    // inspector scrolls: accesskit clicks reach widgets out of view.)
    h.get_by_label("Explain with an LLM").click_accesskit();
    h.run_steps(2);
    h.get_by_label_contains("Explain all in view (");
    h.get_by_label("Explain").click_accesskit();
    h.run_steps(3);
    let title = h.state().state.job.as_ref().map(|j| j.title.clone());
    assert!(
        title.as_deref().unwrap_or("").contains("≈ 9 requests"),
        "{title:?}; notice {:?}",
        h.state().state.notice
    );
    let started = Instant::now();
    while h.state().state.job_running() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the explain job did not end"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
    let notice = h.state().state.notice.clone().unwrap_or_default();
    assert!(notice.starts_with("Explained 1 of 1 unit(s)"), "{notice}");
    // The inspector rereads the unit: the explanation with its explainer and scores.
    let report = report_of(&mut h, &unit);
    let e = report
        .explanations
        .iter()
        .find(|e| e.origin == "auto-interp")
        .expect("an auto-interp explanation");
    assert_eq!(
        e.explainer_model.as_deref(),
        Some("SmolLM2-135M-Instruct.Q4_1")
    );
    h.run_steps(2);
    h.get_by_label_contains("auto-interp · SmolLM2-135M-Instruct.Q4_1 · openai");
    for s in &e.scores {
        h.get_by_label(&dendrite::ui::views::unit_panel::score_text(s).0);
    }
    // Written into the copy, every request kept for audit.
    let store = dendrite::describe::Store::open_existing(&copy).unwrap();
    let requests = store.interp_requests(&unit.source, 3).unwrap();
    assert!((2..=9).contains(&requests), "{requests} requests");
}

/// The sample model with its SAE, three interventions (a neuron clamp, a disabled head
/// ablation, a latent clamp on the SAE), a selected neuron, the Heads tab and CETT sparsity,
/// every pass complete.
fn built_session() -> Harness<'static, DendriteApp> {
    use dendrite::ui::state::{EditSpec, Tab};
    let mut h = harness();
    step_until(&mut h, "the model, its SAE and the first run", |s| {
        s.model.is_some() && !s.saes.is_empty() && finished(s)
    });
    let sae_id = h.state().state.saes[0].id;
    for kind in [
        EditSpec::Neuron {
            layer: 1,
            neuron: 3,
            value: 4.0,
            scale: false,
        },
        EditSpec::HeadAblation {
            layer: 0,
            head: 1,
            mean: false,
        },
        EditSpec::Latent {
            sae_id,
            latent: 2,
            value: 6.0,
            scale: false,
            positions: Some(vec![1, 2]),
        },
    ] {
        h.state_mut().act(Action::AddIntervention(kind));
    }
    h.state_mut().act(Action::ToggleIntervention(1));
    h.state_mut().act(Action::SetSparsity(
        dendrite::analysis::sparsity::Method::Cett { target: 0.2 },
    ));
    h.state_mut().act(Action::SelectNeuron {
        layer: 1,
        neuron: 3,
    });
    h.state_mut().act(Action::SetTab(Tab::Heads));
    step_until(&mut h, "the session's passes", |s| {
        finished(s) && s.neuron_info.is_some() && s.probe.is_some()
    });
    h
}

/// What the views show, as the data their exports write.
fn view_tables(s: &AppState) -> Vec<Option<String>> {
    use dendrite::ui::state::Tab;
    use dendrite::ui::{export::table, state::View};
    [
        View::Layers,
        View::Tab(Tab::Neurons),
        View::Tab(Tab::Heads),
        View::Tab(Tab::Histograms),
        View::Tab(Tab::Features),
    ]
    .into_iter()
    .map(|v| table(s, v).map(|t| t.to_csv().unwrap()))
    .collect()
}

#[test]
fn a_saved_session_reopens_as_the_same_picture() {
    let mut h = built_session();
    // The heads grid zoomed in to two of its columns, from the second.
    let zoom = std::collections::BTreeMap::from([("head_grid".to_string(), [1.0f32, 2.0])]);
    dendrite::ui::heatmap::set_zooms(&h.ctx, &zoom);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afternoon");
    h.state_mut().act(Action::SaveSession(path.clone()));
    h.step();
    let path = path.with_extension("dendrite");
    assert!(
        h.state()
            .state
            .notice
            .as_deref()
            .unwrap_or("")
            .contains("Saved"),
        "{:?}",
        h.state().state.errors
    );
    let saved = h.state().state.session();
    let tables = view_tables(&h.state().state);

    // A new window with nothing open reopens it.
    let mut again = harness_on(None);
    again.state_mut().act(Action::OpenSession(path.clone()));
    step_until(&mut again, "the reopened session's passes", |s| {
        s.interventions.items.len() == 3
            && finished(s)
            && s.neuron_info.is_some()
            && s.probe.is_some()
    });
    let s = &again.state().state;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.session(), saved);
    assert_eq!(view_tables(s), tables);
    assert!(!s.interventions.items[1].enabled);
    assert_eq!(s.tab, dendrite::ui::state::Tab::Heads);
    assert_eq!(
        again.state().session_file().zoom.get("head_grid"),
        zoom.get("head_grid")
    );
}

#[test]
fn a_session_whose_model_moved_asks_for_it_and_opens_with_the_located_file() {
    use dendrite::ui::session::{self, SessionPrompt};
    let h = built_session();
    let mut file = h.state().state.session();
    let model = file.model.as_ref().unwrap().path.clone();
    file.model.as_mut().unwrap().path = "/nowhere/model.gguf".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.dendrite");
    session::write(&path, &file).unwrap();

    let mut again = harness_on(None);
    again.state_mut().act(Action::OpenSession(path));
    again.step();
    match &again.state().state.session_prompt {
        Some(SessionPrompt::ModelMissing { missing, .. }) => {
            assert_eq!(missing, std::path::Path::new("/nowhere/model.gguf"))
        }
        other => panic!("expected the question for the model, got {other:?}"),
    }
    assert!(again.state().state.model.is_none());
    again.state_mut().act(Action::LocateModel(model.clone()));
    step_until(&mut again, "the session on the located model", |s| {
        s.interventions.items.len() == 3 && finished(s)
    });
    let s = &again.state().state;
    assert_eq!(s.session_prompt, None);
    assert_eq!(s.model.as_ref().unwrap().path, model);
    assert_eq!(s.session().interventions, file.interventions);
}

/// A running app (the real binary, in a virtual X display) is killed with SIGKILL after it has
/// restored a session; its recovery file survives whole, and the next launch offers it back and
/// restores every intervention.
#[test]
fn after_kill_9_the_next_launch_restores_every_intervention() {
    use dendrite::ui::autosave;
    assert!(
        std::process::Command::new("xvfb-run")
            .arg("--help")
            .output()
            .is_ok(),
        "xvfb-run is missing: apt-get install xvfb xauth (scripts/test.sh installs them)"
    );
    let h = built_session();
    let file = h.state().state.session();
    drop(h);
    let dir = tempfile::tempdir().unwrap();
    let session_path = dir.path().join("work.dendrite");
    dendrite::ui::session::write(&session_path, &file).unwrap();
    let recovery = dir.path().join("recovery");

    let mut app = std::process::Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1400x900x24"])
        .arg(env!("CARGO_BIN_EXE_dendrite"))
        .arg("open")
        .arg("--session")
        .arg(&session_path)
        .env("DENDRITE_RECOVERY_DIR", &recovery)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the app under xvfb-run");
    // The app writes its recovery file once it has restored the session.
    let started = Instant::now();
    let written = loop {
        let found = std::fs::read_dir(&recovery).ok().and_then(|entries| {
            entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                p.extension().is_some_and(|e| e == "dendrite")
                    && dendrite::ui::session::read(p)
                        .is_ok_and(|s| s.interventions == file.interventions)
            })
        });
        if let Some(found) = found {
            break found;
        }
        if let Ok(Some(status)) = app.try_wait() {
            let mut err = String::new();
            use std::io::Read as _;
            let _ = app.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the app exited ({status}) before writing its recovery file: {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no recovery file with the session's interventions in {}",
            recovery.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // session-<pid>.dendrite: the app's own process (xvfb-run is its parent).
    let pid = written
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("session-"))
        .expect("a recovery file named after its process")
        .to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let waited = Instant::now();
    while app.try_wait().unwrap().is_none() {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "xvfb-run did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The next launch finds it and offers it back.
    let orphans = autosave::orphans(&recovery);
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let mut next = harness_on(None);
    next.state_mut().enable_recovery(&recovery).unwrap();
    next.run();
    assert!(
        matches!(
            next.state().state.session_prompt,
            Some(dendrite::ui::session::SessionPrompt::Recover { .. })
        ),
        "{:?}",
        next.state().state.session_prompt
    );
    next.get_by_label("Restore").click();
    step_until(&mut next, "the restored session", |s| {
        s.interventions.items.len() == 3 && finished(s)
    });
    let s = &next.state().state;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.session().interventions, file.interventions);
    assert_eq!(s.session().prompt, file.prompt);
    // Restored, it is no orphan any more (this window's own file replaces it).
    assert!(autosave::orphans(&recovery).is_empty());
}

#[test]
fn ctrl_z_in_the_prompt_edits_the_text_and_the_undo_buttons_edit_the_interventions() {
    let mut h = harness();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    h.state_mut().act(Action::AddIntervention(
        dendrite::ui::state::EditSpec::Neuron {
            layer: 0,
            neuron: 2,
            value: 3.0,
            scale: false,
        },
    ));
    step_until(&mut h, "the clamped run", finished);
    let before = h.state().state.prompt.clone();

    // In the prompt, Ctrl+Z takes back typing, not the clamp.
    h.get_by_label("Prompt").focus();
    h.step();
    for _ in 0..90 {
        // The text field keeps an undo point once its text has rested.
        h.step();
    }
    h.get_by_label("Prompt").type_text(" xyz");
    h.step();
    assert_eq!(h.state().state.prompt, format!("{before} xyz"));
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.step();
    h.step();
    assert_eq!(h.state().state.prompt, before);
    assert_eq!(h.state().state.interventions.items.len(), 1);

    // The buttons beside the interventions undo and redo them.
    h.get_by_label("Undo").click();
    step_until(&mut h, "the run without the clamp", |s| {
        s.interventions.items.is_empty() && finished(s)
    });
    h.get_by_label("Redo").click();
    step_until(&mut h, "the clamp back", |s| {
        s.interventions.items.len() == 1 && finished(s)
    });
}

#[test]
fn ctrl_e_exports_the_view_under_the_pointer() {
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    // Over the layers panel, not the open tab.
    let rect = h
        .state()
        .placement(dendrite::ui::state::View::Layers)
        .unwrap()
        .rect;
    h.hover_at(rect.center());
    h.step();
    let files = export_with_ctrl_e(&mut h, dir.path());
    assert!(
        files
            .iter()
            .any(|f| f.contains("_layers_") && f.ends_with(".svg")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains("_neurons_")), "{files:?}");
}

#[test]
fn the_figure_format_chosen_is_the_one_written() {
    use dendrite::ui::state::FigureFormat;
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    h.state_mut().export_dir = dir.path().to_path_buf();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    h.state_mut()
        .act(Action::SetFigureFormat(FigureFormat::Svg));
    h.step();
    h.get_by_label("Export view").click();
    h.run_steps(2);
    step_until(&mut h, "the SVG export", |s| {
        s.notice.as_deref().unwrap_or("").contains(".svg")
    });
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".svg")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".csv")), "{files:?}");
    assert!(!files.iter().any(|f| f.ends_with(".png")), "{files:?}");
    // The choice is part of the session.
    assert_eq!(h.state().state.session().figure_format, FigureFormat::Svg);
}

#[test]
fn a_units_facets_appear_in_the_inspector() {
    let mut h = harness();
    step_until(&mut h, "the model and its store", |s| {
        s.model.is_some() && !s.stores.open.is_empty() && finished(s)
    });
    h.state_mut().act(Action::SelectNeuron {
        layer: 1,
        neuron: 5,
    });
    let unit = dendrite::worker::stores::UnitRef {
        source: "blocks.1.mlp.hook_post".into(),
        unit: 5,
    };
    let report = report_of(&mut h, &unit);
    h.run_steps(2);
    // The panel's *Facets* button sends this (it sits below the fold of the harness's window).
    h.get_by_label("Facets");
    h.state_mut().act(Action::ShowFacets(unit.clone()));
    assert_eq!(h.state().state.facets_asked.as_ref(), Some(&unit));
    step_until(&mut h, "the facets", |s| s.facets.is_some());
    let facets = h.state().state.facets.clone().unwrap();
    let positive = report.examples.iter().filter(|e| e.max_act > 0.0).count();
    assert_eq!(
        facets.facets.iter().map(|f| f.size).sum::<usize>(),
        positive
    );
    assert!(facets.k >= 1);
    assert!(facets.facets.iter().all(|f| f.explanation.is_none()));
    h.run_steps(2);
    h.get_by_label_contains(&format!("facet 1: {}", facets.facets[0].label));

    // With an explainer set, each facet also gets the LLM's label (SmolLM2 behind
    // `dendrite serve`, OpenAI's explainer prompt); an endpoint that is down leaves the
    // facets with their token labels and says why.
    let server = common::serve(&common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf"), &[]);
    for (endpoint, up) in [
        (server.base.clone(), true),
        ("http://127.0.0.1:9/v1".into(), false),
    ] {
        h.state_mut().state.explain_settings = dendrite::ui::state::ExplainSettings {
            endpoint,
            model: "SmolLM2-135M-Instruct.Q4_1".into(),
            openai_prompt: true,
            ..Default::default()
        };
        h.state_mut().act(Action::ShowFacets(unit.clone()));
        step_until(&mut h, "the labelled facets", |s| s.facets.is_some());
        let labelled = h.state().state.facets.clone().unwrap();
        assert_eq!(labelled.k, facets.k, "the same clustering");
        if up {
            assert_eq!(labelled.explain_error, None);
            assert!(
                labelled
                    .facets
                    .iter()
                    .all(|f| f.explanation.as_ref().is_some_and(|e| !e.trim().is_empty())),
                "{:?}",
                labelled.facets
            );
            h.run_steps(2);
            h.get_by_label_contains("explainer: ");
        } else {
            assert!(labelled.facets.iter().all(|f| f.explanation.is_none()));
            assert!(labelled.explain_error.is_some());
            h.run_steps(2);
            h.get_by_label_contains("no explainer labels");
        }
    }
}

/// The layers view compares the prompt's core neurons with another prompt's: the worker's
/// cores come back and the view shows the selected layer's overlap and the per-layer plot.
#[test]
fn core_neurons_are_compared_with_another_prompt() {
    let mut h = harness();
    step_until(&mut h, "the model", |s| s.model.is_some() && finished(s));
    h.state_mut().act(Action::SetSparsity(
        dendrite::analysis::sparsity::Method::Core { alpha: 0.4 },
    ));
    h.state_mut()
        .act(Action::SetCoreCompareText("two one three, three".into()));
    step_until(&mut h, "the rerun", finished);
    h.run_steps(2);
    h.get_by_label("Compare").click();
    h.run_steps(2);
    step_until(&mut h, "the other prompt's cores", |s| {
        s.core_compare.report.is_some()
    });
    h.run_steps(3);
    let l = h.state().state.selection.layer;
    h.get_by_label_contains(&format!("L{l}: Jaccard"));
}
