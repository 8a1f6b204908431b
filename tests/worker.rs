//! The background worker end to end on a tiny model: streaming order, interventions against
//! the baseline, incremental reruns, errors and panics that leave it serving, cancellation.

mod common;

use std::time::Duration;

use common::fixtures;
use dendrite::analysis::sparsity::Method;
use dendrite::model::{HookSpec, Intervention, ValueOp};
use dendrite::worker::*;

fn tiny() -> std::path::PathBuf {
    fixtures().join("tiny/gpt2")
}

fn next(w: &WorkerHandle) -> Event {
    w.events()
        .unwrap()
        .recv_timeout(Duration::from_secs(30))
        .expect("the worker answers")
}

/// Events until (and including) the first one `stop` accepts.
fn until(w: &WorkerHandle, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = next(w);
        let done = stop(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn run(id: RunId, text: &str, interventions: Vec<Intervention>) -> Command {
    Command::Run(RunPrompt {
        run_id: id,
        text: text.into(),
        bos: dendrite::model::BosMode::Auto,
        interventions: interventions.into_iter().map(Edit::Hook).collect(),
        sparsity: Method::Zero,
        lens: true,
        patterns: true,
        have_baseline: None,
    })
}

/// Runs one command on a session; returns its events.
fn handle_with(
    session: &mut Session,
    command: Command,
    cancel: &dyn dendrite::worker::session::Cancel,
) -> Vec<Event> {
    let mut events = Vec::new();
    session.handle(command, cancel, &mut |e| events.push(e));
    events
}

fn handle(session: &mut Session, command: Command) -> Vec<Event> {
    handle_with(session, command, &|_: RunId| false)
}

fn loaded(w: &WorkerHandle) {
    assert!(w.send(Command::LoadModel(LoadModel { path: tiny() })));
    let events = until(w, |e| matches!(e, Event::ModelLoaded(_) | Event::Error(_)));
    assert!(matches!(events[0], Event::Loading(_)));
    assert!(
        matches!(events.last(), Some(Event::ModelLoaded(_))),
        "{events:?}"
    );
}

fn layers_of(events: &[Event], variant: Variant) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LayerReady(l) if l.variant == variant => Some(l.summary.layer),
            _ => None,
        })
        .collect()
}

/// The intervened pass's layers as the UI gets them: those before the first edit from the
/// baseline (one `LayersFromBaseline`), the rest as they are recomputed.
fn intervened_layers(events: &[Event]) -> Vec<usize> {
    let from_baseline = events.iter().find_map(|e| match e {
        Event::LayersFromBaseline(r) => Some(r.through),
        _ => None,
    });
    let sent = layers_of(events, Variant::Intervened);
    if let (Some(through), Some(first)) = (from_baseline, sent.first()) {
        assert_eq!(
            *first, through,
            "recomputed layers start where the copied ones end"
        );
    }
    (0..from_baseline.unwrap_or(0)).chain(sent).collect()
}

fn finished(events: &[Event], variant: Variant) -> &RunFinished {
    events
        .iter()
        .find_map(|e| match e {
            Event::RunFinished(f) if f.variant == variant => Some(f),
            _ => None,
        })
        .expect("the pass finished")
}

#[test]
fn a_run_streams_every_layer_in_order_then_finishes() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    w.send(run(1, "hello world", vec![]));
    let events = until(&w, |e| matches!(e, Event::LensReady(_) | Event::Error(_)));
    let Event::RunStarted(started) = &events[0] else {
        panic!("{:?}", events[0])
    };
    assert_eq!(started.tokens.concat(), "hello world");
    let n = started.n_layers;
    assert_eq!(
        layers_of(&events, Variant::Baseline),
        (0..n).collect::<Vec<_>>()
    );
    let done = finished(&events, Variant::Baseline);
    assert_eq!(done.per_token_nll.len(), started.token_ids.len() - 1);
    assert_eq!(done.predictions.len(), started.token_ids.len());
    let Some(Event::LayerReady(layer)) = events.get(1) else {
        panic!("{:?}", events[1])
    };
    let s = &layer.summary;
    assert_eq!(s.mlp_post.len(), s.n_tokens * s.d_mlp);
    assert_eq!(s.patterns.len(), s.n_heads * s.n_tokens * s.n_tokens);
    assert_eq!(s.sparsity.per_token_frac_active.len(), s.n_tokens);
    // Attention rows sum to one.
    let row: f32 = s.pattern(0)[s.n_tokens..2 * s.n_tokens].iter().sum();
    assert!((row - 1.0).abs() < 1e-5);
}

#[test]
fn interventions_run_against_the_baseline_and_rerun_incrementally() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    let clamp =
        |v: f32| Intervention::neurons("blocks.1.mlp.hook_post", vec![3, 7], ValueOp::Set(v));
    w.send(run(1, "abcabc", vec![clamp(50.0)]));
    let first = until(
        &w,
        |e| matches!(e, Event::LensReady(l) if l.variant == Variant::Intervened),
    );
    let n = layers_of(&first, Variant::Baseline).len();
    // Layer 0 comes before the clamp: the UI takes the baseline's; layers 1.. are recomputed.
    assert_eq!(intervened_layers(&first), (0..n).collect::<Vec<_>>());
    assert_eq!(layers_of(&first, Variant::Intervened)[0], 1);
    let (base, edited) = (
        finished(&first, Variant::Baseline),
        finished(&first, Variant::Intervened),
    );
    assert_ne!(base.per_token_nll, edited.per_token_nll);
    // The clamp shows in layer 1's activations of the intervened pass only.
    let layer1 = |variant| {
        first.iter().find_map(|e| match e {
            Event::LayerReady(l) if l.variant == variant && l.summary.layer == 1 => {
                Some(l.summary.clone())
            }
            _ => None,
        })
    };
    assert_eq!(
        layer1(Variant::Intervened).unwrap().neuron_column(3),
        vec![50.0; 6]
    );
    assert_ne!(
        layer1(Variant::Baseline).unwrap().neuron_column(3),
        vec![50.0; 6]
    );

    // Changing only the clamp value reruns from layer 1; every layer is still accounted for.
    w.send(run(2, "abcabc", vec![clamp(-5.0)]));
    let second = until(
        &w,
        |e| matches!(e, Event::LensReady(l) if l.variant == Variant::Intervened),
    );
    assert_eq!(intervened_layers(&second), (0..n).collect::<Vec<_>>());
    assert!(finished(&second, Variant::Intervened).recomputed_from >= 1);
    // The baseline was cached entirely, its logits included.
    assert_eq!(
        finished(&second, Variant::Baseline).recomputed_from,
        n as isize + 1
    );
    assert_eq!(
        finished(&second, Variant::Baseline).per_token_nll,
        base.per_token_nll
    );
}

#[test]
fn patterns_are_captured_only_when_asked_and_asking_reruns_the_baseline() {
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let with_patterns = |id: RunId, have: Option<RunId>, patterns: bool| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: vec![],
            sparsity: Method::Zero,
            lens: false,
            patterns,
            have_baseline: have,
        })
    };
    let patterns_of = |events: &[Event]| -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::LayerReady(l) => Some(l.summary.patterns.len()),
                _ => None,
            })
            .collect()
    };
    let first = handle(&mut session, with_patterns(1, None, false));
    let sizes = patterns_of(&first);
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&s| s == 0), "{sizes:?}");
    // A head is selected: the held baseline lacks patterns, so it is computed again.
    let second = handle(&mut session, with_patterns(2, Some(1), true));
    assert!(!second.iter().any(|e| matches!(e, Event::BaselineReused(_))));
    let Some(Event::LayerReady(l)) = second.iter().find(|e| matches!(e, Event::LayerReady(_)))
    else {
        panic!("{second:?}")
    };
    let s = &l.summary;
    assert_eq!(s.patterns.len(), s.n_heads * s.n_tokens * s.n_tokens);
    assert_eq!(patterns_of(&second).len(), sizes.len());
    // Deselected: the baseline held is reused as it is.
    let third = handle(&mut session, with_patterns(3, Some(2), false));
    assert!(matches!(&third[0], Event::BaselineReused(r) if r.from_run == 2));
}

#[test]
fn an_unchanged_baseline_is_not_resent_and_the_lens_waits_until_asked() {
    let mut session = Session::new();
    let events = handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    // Loading reports progress up to every weight loaded.
    assert!(matches!(&events[0], Event::Loading(l) if l.fraction.is_none()));
    assert!(matches!(events.last(), Some(Event::ModelLoaded(_))));
    let clamp = |v: f32| Intervention::neurons("blocks.1.mlp.hook_post", vec![3], ValueOp::Set(v));
    let lazy = |id: RunId, have: Option<RunId>, v: f32| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: vec![Edit::Hook(clamp(v))],
            sparsity: Method::Zero,
            lens: false,
            patterns: true,
            have_baseline: have,
        })
    };
    let first = handle(&mut session, lazy(1, None, 5.0));
    let n = layers_of(&first, Variant::Baseline).len();
    assert!(n > 0);
    assert_eq!(intervened_layers(&first).len(), n);
    assert!(!first.iter().any(|e| matches!(e, Event::LensReady(_))));
    // The UI holds run 1's baseline: run 2 sends only the intervened pass.
    let second = handle(&mut session, lazy(2, Some(1), -5.0));
    assert!(
        matches!(&second[0], Event::BaselineReused(r) if r.run_id == 2 && r.from_run == 1),
        "{:?}",
        second[0]
    );
    assert!(layers_of(&second, Variant::Baseline).is_empty());
    assert_eq!(intervened_layers(&second).len(), n);
    // Not holding it (or a different run's) gets it in full.
    let third = handle(&mut session, lazy(3, Some(1), 5.0));
    assert_eq!(layers_of(&third, Variant::Baseline).len(), n);
    // The lens of the latest run, when asked: both passes.
    let lens = handle(&mut session, Command::Lens(LensRequest { run_id: 3 }));
    let variants: Vec<Variant> = lens
        .iter()
        .filter_map(|e| match e {
            Event::LensReady(l) if l.run_id == 3 => Some(l.variant),
            _ => None,
        })
        .collect();
    assert_eq!(variants, vec![Variant::Baseline, Variant::Intervened]);
    // Rows stream in order before each whole lens: the baseline's one layer at a time, the
    // intervened pass's first the layers before its clamp (the baseline's), then the rest.
    let rows = |variant: Variant| -> Vec<(usize, usize)> {
        lens.iter()
            .filter_map(|e| match e {
                Event::LensRows(r) if r.variant == variant => Some((r.first_layer, r.rows.len())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        rows(Variant::Baseline),
        (0..n).map(|l| (l, 1)).collect::<Vec<_>>()
    );
    assert_eq!(
        rows(Variant::Intervened),
        [(0, 1)]
            .into_iter()
            .chain((1..n).map(|l| (l, 1)))
            .collect::<Vec<_>>()
    );
    for variant in [Variant::Baseline, Variant::Intervened] {
        let streamed: Vec<_> = lens
            .iter()
            .filter_map(|e| match e {
                Event::LensRows(r) if r.variant == variant => Some(r.rows.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let whole = lens.iter().find_map(|e| match e {
            Event::LensReady(l) if l.variant == variant => Some(l.lens.clone()),
            _ => None,
        });
        assert_eq!(Some(streamed), whole, "{variant:?}");
    }
    // A newer run stops a lens between layers: here before the intervened pass's layer 1
    // (the first check is the request's own; the baseline's lens is cached by now).
    let checks = std::sync::atomic::AtomicUsize::new(0);
    let after_one = |_: RunId| checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1;
    let stopped = handle_with(
        &mut session,
        Command::Lens(LensRequest { run_id: 3 }),
        &after_one,
    );
    assert!(matches!(&stopped[0], Event::LensReady(l) if l.variant == Variant::Baseline));
    assert!(
        !stopped.iter().any(
            |e| matches!(e, Event::LensReady(l) if l.variant == Variant::Intervened)
                || matches!(e, Event::LensRows(r) if r.first_layer >= 1)
        ),
        "{stopped:?}"
    );
    // A superseded run's lens is not computed.
    assert!(handle(&mut session, Command::Lens(LensRequest { run_id: 2 })).is_empty());
}

#[test]
fn errors_and_panics_leave_the_worker_serving_with_its_model() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    w.send(run(1, "no model yet", vec![]));
    assert!(matches!(next(&w), Event::Error(e) if e.message.contains("no model")));
    loaded(&w);
    w.send(Command::LoadModel(LoadModel {
        path: "/nonexistent/model.gguf".into(),
    }));
    let events = until(&w, |e| matches!(e, Event::Error(_)));
    let Some(Event::Error(e)) = events.last() else {
        unreachable!()
    };
    assert!(e.context.contains("/nonexistent/model.gguf"), "{e:?}");
    w.send(Command::Panic);
    assert!(matches!(next(&w), Event::Error(e) if e.message.contains("panic")));
    // The first model is still open and runs.
    w.send(run(2, "still here", vec![]));
    let events = until(&w, |e| matches!(e, Event::LensReady(_) | Event::Error(_)));
    assert!(
        matches!(events.last(), Some(Event::LensReady(_))),
        "{events:?}"
    );
    w.send(Command::InspectNeuron(InspectNeuron {
        layer: 0,
        neuron: 2,
        k: 4,
    }));
    let Event::NeuronInfo(info) = next(&w) else {
        panic!()
    };
    assert_eq!((info.top.len(), info.bottom.len()), (4, 4));
    assert!(info.top[0].effect >= info.bottom[0].effect);
    w.send(Command::InspectNeuron(InspectNeuron {
        layer: 99,
        neuron: 0,
        k: 4,
    }));
    assert!(matches!(next(&w), Event::Error(_)));
}

#[test]
fn a_superseded_pass_is_cancelled_between_layers() {
    let mut session = Session::new();
    let mut events = handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    events.clear();
    // A newer request exists from the start: the pass stops before its first layer.
    session.handle(run(1, "hello", vec![]), &|id| id < 2, &mut |e| {
        events.push(e)
    });
    assert!(matches!(events.first(), Some(Event::RunStarted(_))));
    assert!(
        matches!(events.last(), Some(Event::Cancelled(c)) if c.run_id == 1),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::RunFinished(_))));
    // The next run works and is complete.
    events.clear();
    session.handle(run(2, "hello", vec![]), &|_| false, &mut |e| events.push(e));
    assert!(
        matches!(events.last(), Some(Event::LensReady(_))),
        "{events:?}"
    );
}

#[test]
fn probe_scores_every_head_and_dropping_the_handle_joins() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    w.send(Command::ProbeHeads(ProbeHeads {
        run_id: 1,
        repeat_len: 5,
        batch: 2,
        seed: 0,
    }));
    let Event::ProbeFinished(p) = next(&w) else {
        panic!()
    };
    assert_eq!(p.scores.per_position_nll.len(), 9);
    // Queue work and drop at once: Drop cancels and joins without hanging.
    w.send(run(5, "a longer prompt to keep the worker busy", vec![]));
    drop(w);
}

#[test]
fn attached_saes_stream_with_their_layer_and_latents_can_be_clamped() {
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let sae_dir = common::fixtures().join("sae/standard");
    // A width that does not fit is an error naming both widths; the session keeps serving.
    let bad = handle(
        &mut session,
        Command::AttachSae(AttachSae {
            path: sae_dir.clone(),
            hook: Some("blocks.0.mlp.hook_post".into()),
        }),
    );
    assert!(
        matches!(&bad[0], Event::Error(e) if e.message.contains("width 32") && e.message.contains("width 64")),
        "{bad:?}"
    );
    let attached = handle(
        &mut session,
        Command::AttachSae(AttachSae {
            path: sae_dir,
            hook: None,
        }),
    );
    let Event::SaeAttached(a) = &attached[0] else {
        panic!("{attached:?}")
    };
    assert_eq!(a.cfg.hook_name, "blocks.0.hook_resid_post");
    let sae_id = a.sae_id;
    let run = |id: RunId, edits: Vec<Edit>| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: edits,
            sparsity: Method::Zero,
            lens: false,
            patterns: true,
            have_baseline: None,
        })
    };
    let events = handle(&mut session, run(1, vec![]));
    // The feature map comes right after its layer (0), before layer 1.
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::LayerReady(l) => Some(format!("L{}", l.summary.layer)),
            Event::SaeReady(_) => Some("sae".into()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["L0", "sae", "L1"]);
    let sae_of = |events: &[Event], variant: Variant| {
        events
            .iter()
            .find_map(|e| match e {
                Event::SaeReady(r) if r.variant == variant && r.sae_id == sae_id => {
                    Some(r.summary.clone())
                }
                _ => None,
            })
            .expect("a feature map")
    };
    let base = sae_of(&events, Variant::Baseline);
    assert_eq!(base.n_tokens, 6);
    assert_eq!(base.l0.len(), 6);
    let latent = base.features[2][0].0;
    // Clamping a latent downstream of the SAE changes the loss; steering along it too.
    let clamped = handle(
        &mut session,
        run(
            2,
            vec![Edit::SaeLatent {
                sae_id,
                latent: latent as usize,
                op: ValueOp::Set(40.0),
                positions: None,
            }],
        ),
    );
    let before = finished(&events, Variant::Baseline).per_token_nll.clone();
    let after = finished(&clamped, Variant::Intervened)
        .per_token_nll
        .clone();
    assert_ne!(before, after);
    let steered = handle(
        &mut session,
        run(
            3,
            vec![Edit::SteerLatent {
                sae_id,
                latent: latent as usize,
                mode: SteerMode::SetProjection { value: 5.0 },
                positions: Some(vec![1]),
            }],
        ),
    );
    assert_ne!(
        finished(&steered, Variant::Intervened).per_token_nll,
        before
    );
    // The decoder direction through the unembedding, then detaching.
    let info = handle(
        &mut session,
        Command::InspectLatent(InspectLatent {
            sae_id,
            latent: latent as usize,
            k: 3,
        }),
    );
    assert!(matches!(&info[0], Event::LatentInfo(l) if l.top.len() == 3 && l.decoder_norm > 0.0));
    // A second SAE at another hook streams beside the first.
    let second = handle(
        &mut session,
        Command::AttachSae(AttachSae {
            path: common::fixtures().join("sae/topk"),
            hook: None,
        }),
    );
    assert!(
        matches!(&second[0], Event::SaeAttached(a) if a.cfg.hook_name == "blocks.0.hook_mlp_out")
    );
    let both = handle(&mut session, run(5, vec![]));
    assert_eq!(
        both.iter()
            .filter(|e| matches!(e, Event::SaeReady(r) if r.variant == Variant::Baseline))
            .count(),
        2
    );
    let detached = handle(&mut session, Command::DetachSae(DetachSae { sae_id }));
    assert!(matches!(&detached[0], Event::SaeDetached(d) if d.sae_id == sae_id));
    let events = handle(&mut session, run(6, vec![]));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::SaeReady(_)))
            .count(),
        1,
        "only the second SAE is left"
    );
}

#[test]
fn training_and_evaluation_jobs_report_progress_attach_and_cancel() {
    struct CancelJob(JobId);
    impl dendrite::worker::session::Cancel for CancelJob {
        fn is_cancelled(&self, _: RunId) -> bool {
            false
        }
        fn is_job_cancelled(&self, job: JobId) -> bool {
            job == self.0
        }
    }
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let out = tempfile::tempdir().unwrap();
    let opts = common::tiny_sae_training(out.path().join("sae"), 12);
    let events = handle(
        &mut session,
        Command::TrainSae(TrainSaeJob {
            job_id: 5,
            opts: opts.clone(),
        }),
    );
    let progress = events
        .iter()
        .filter(|e| matches!(e, Event::JobProgress(p) if p.job_id == 5 && p.train.is_some()))
        .count();
    assert_eq!(progress, 12, "one progress event per step");
    let finished = events.iter().position(
        |e| matches!(e, Event::JobFinished(f) if matches!(f.outcome, JobOutcome::Trained { .. })),
    );
    let attached = events
        .iter()
        .position(|e| matches!(e, Event::SaeAttached(_)));
    assert!(finished.is_some() && attached > finished, "{events:?}");
    let Some(Event::SaeAttached(a)) = attached.map(|i| &events[i]) else {
        unreachable!()
    };
    assert!(out.path().join("sae/cfg.json").exists());

    // Evaluate it over the held-out text.
    let events = handle(
        &mut session,
        Command::EvaluateSae(EvaluateSaeJob {
            job_id: 6,
            sae_id: a.sae_id,
            corpus: opts.corpus.clone(),
            tokens: 128,
        }),
    );
    let Some(Event::JobFinished(JobFinished {
        outcome: JobOutcome::Evaluated { report, .. },
        ..
    })) = events.last()
    else {
        panic!("{:?}", events.last())
    };
    assert!(report.reconstruction.as_ref().unwrap().l0.unwrap() <= 4.0);
    assert!(report.downstream.is_some());

    // A cancelled job stops and says so; nothing new is attached.
    let events = handle_with(
        &mut session,
        Command::TrainSae(TrainSaeJob {
            job_id: 7,
            opts: dendrite::sae::train::TrainOptions {
                out: out.path().join("cancelled"),
                ..opts
            },
        }),
        &CancelJob(7),
    );
    assert!(matches!(
        events.last(),
        Some(Event::JobFinished(f)) if f.outcome == JobOutcome::Cancelled
    ));
    assert!(!out.path().join("cancelled/cfg.json").exists());
}

#[test]
fn resample_ablation_takes_the_heads_output_from_another_prompt() {
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let run = |id: RunId, source: &str| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: vec![Edit::ResampleHead {
                layer: 1,
                head: 2,
                source: source.into(),
            }],
            sparsity: Method::Zero,
            lens: false,
            patterns: true,
            have_baseline: None,
        })
    };
    let events = handle(&mut session, run(1, "xyzxyzxyz"));
    let (base, edited) = (
        finished(&events, Variant::Baseline),
        finished(&events, Variant::Intervened),
    );
    assert_ne!(base.per_token_nll, edited.per_token_nll);
    // Its own prompt as the source changes nothing.
    let events = handle(&mut session, run(2, "abcabc"));
    let same = finished(&events, Variant::Intervened);
    for (a, b) in same.per_token_nll.iter().zip(&base.per_token_nll) {
        assert!((a - b).abs() < 1e-5);
    }
    // A shorter source is a clear error.
    let events = handle(&mut session, run(3, "ab"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Error(e) if e.message.contains("resample source has 2 positions"))),
        "{events:?}"
    );
}

#[test]
fn prompt_runs_go_on_while_a_job_trains_and_a_cancelled_job_stops() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    let out = tempfile::tempdir().unwrap();
    // Long enough to still be running when the prompt has finished.
    let opts = common::tiny_sae_training(out.path().join("sae"), 1_000_000);
    w.send(Command::TrainSae(TrainSaeJob { job_id: 40, opts }));
    until(&w, |e| matches!(e, Event::JobProgress(p) if p.job_id == 40));
    w.send(run(41, "hello world", vec![]));
    let events = until(&w, |e| matches!(e, Event::LensReady(_) | Event::Error(_)));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RunFinished(f) if f.run_id == 41)),
        "the run finished while the job trains"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::JobFinished(_))));
    w.cancel_job(40);
    let events = until(&w, |e| matches!(e, Event::JobFinished(_) | Event::Error(_)));
    assert!(matches!(
        events.last(),
        Some(Event::JobFinished(f)) if f.job_id == 40 && f.outcome == JobOutcome::Cancelled
    ));
    assert!(!out.path().join("sae/cfg.json").exists());
}

/// Generate streams the baseline's and the intervened continuation's tokens in turn, each the
/// tokens `generate` makes on its own, then both generations; a newer run cancels it.
#[test]
fn generation_streams_both_continuations_in_turn_and_is_cancelled_by_a_newer_run() {
    use dendrite::model::generate::{GenerateOptions, generate};
    let mut session = Session::new();
    handle(
        &mut session,
        Command::LoadModel(LoadModel {
            path: fixtures().join("tiny/llama"),
        }),
    );
    let clamp = Intervention::neurons("blocks.1.mlp.hook_post", vec![5], ValueOp::Set(4.0));
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let request = |run_id| {
        Command::Generate(GenerateRequest {
            run_id,
            text: "hello".into(),
            bos: dendrite::model::BosMode::No,
            interventions: vec![Edit::Hook(clamp.clone())],
            options: opts.clone(),
            watch: None,
        })
    };
    let events = handle(&mut session, request(1));
    let streamed = |variant: Variant| -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::TokenGenerated(t) if t.variant == variant => Some(t.token.id),
                _ => None,
            })
            .collect()
    };
    let variants: Vec<Variant> = events
        .iter()
        .filter_map(|e| match e {
            Event::TokenGenerated(t) => Some(t.variant),
            _ => None,
        })
        .take(4)
        .collect();
    assert_eq!(
        variants,
        [
            Variant::Baseline,
            Variant::Intervened,
            Variant::Baseline,
            Variant::Intervened
        ],
        "the two continuations alternate"
    );
    let model = dendrite::model::open(fixtures().join("tiny/llama")).unwrap();
    let ids = model
        .encode_prompt("hello", dendrite::model::BosMode::No)
        .unwrap();
    let decode = |ids: &[u32]| model.tokenizer.decode(ids);
    for (variant, spec) in [
        (Variant::Baseline, HookSpec::default()),
        (
            Variant::Intervened,
            HookSpec::default().with_intervention(clamp.clone()),
        ),
    ] {
        let alone = generate(&model.transformer, &ids, &spec, &opts, &decode, &mut |_| {
            true
        })
        .unwrap();
        assert_eq!(streamed(variant), alone.generated_ids(), "{variant:?}");
        let finished = events.iter().find_map(|e| match e {
            Event::GenerationFinished(f) if f.variant == variant => Some(f),
            _ => None,
        });
        assert_eq!(
            finished.unwrap().generation.generated_ids(),
            alone.generated_ids()
        );
    }
    assert_ne!(streamed(Variant::Baseline), streamed(Variant::Intervened));

    // Cancelled after the first baseline token: both report what they have.
    let mut events = Vec::new();
    let steps = std::cell::Cell::new(0);
    session.handle(
        request(3),
        &|id| {
            steps.set(steps.get() + 1);
            id < 4 && steps.get() > 1
        },
        &mut |e| events.push(e),
    );
    let finished: Vec<&GenerationFinished> = events
        .iter()
        .filter_map(|e| match e {
            Event::GenerationFinished(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 2, "{events:?}");
    assert!(
        finished.iter().all(|f| f.run_id == 3
            && f.generation.stop == dendrite::model::generate::StopReason::Cancelled)
    );
    assert_eq!(finished[0].generation.tokens.len(), 1);
    assert_eq!(finished[1].generation.tokens.len(), 0);
}

/// The watched neuron's activation reported with each generated token is the full pass's
/// activation, over prompt and continuation, at the position that step read.
#[test]
fn a_watched_neuron_reports_its_activation_at_each_generated_position() {
    use dendrite::model::generate::GenerateOptions;
    let mut session = Session::new();
    handle(
        &mut session,
        Command::LoadModel(LoadModel {
            path: fixtures().join("tiny/llama"),
        }),
    );
    let clamp = Intervention::neurons("blocks.0.mlp.hook_post", vec![3], ValueOp::Scale(-2.0));
    let events = handle(
        &mut session,
        Command::Generate(GenerateRequest {
            run_id: 1,
            text: "hello world".into(),
            bos: dendrite::model::BosMode::No,
            interventions: vec![Edit::Hook(clamp.clone())],
            options: GenerateOptions {
                max_new_tokens: 5,
                ..GenerateOptions::default()
            },
            watch: Some(Watch::Neuron {
                layer: 1,
                neuron: 7,
            }),
        }),
    );
    let model = dendrite::model::open(fixtures().join("tiny/llama")).unwrap();
    let prompt = model
        .encode_prompt("hello world", dendrite::model::BosMode::No)
        .unwrap();
    for (variant, spec) in [
        (Variant::Baseline, HookSpec::default()),
        (
            Variant::Intervened,
            HookSpec::default().with_intervention(clamp.clone()),
        ),
    ] {
        let streamed: Vec<(u32, f32)> = events
            .iter()
            .filter_map(|e| match e {
                Event::TokenGenerated(t) if t.variant == variant => {
                    Some((t.token.id, t.input_activation.expect("watched")))
                }
                _ => None,
            })
            .collect();
        assert_eq!(streamed.len(), 5);
        let mut all = prompt.clone();
        all.extend(streamed.iter().map(|(id, _)| id));
        let hook = "blocks.1.mlp.hook_post";
        let spec = HookSpec {
            capture: vec![hook.into()],
            ..spec
        };
        let out = model
            .transformer
            .forward(&[all], &spec, &mut dendrite::model::NoObserver)
            .unwrap();
        let acts = out.captures[hook].get(0).unwrap().to_vec2::<f32>().unwrap();
        for (k, (_, act)) in streamed.iter().enumerate() {
            let expected = acts[prompt.len() - 1 + k][7];
            assert!(
                (act - expected).abs() < 1e-4,
                "{variant:?} step {k}: {act} vs {expected}"
            );
        }
    }
}

#[test]
fn a_last_position_clamp_reports_what_a_fresh_run_reports() {
    let clamp_at_last = |v: f32, last: usize| {
        Intervention::neurons("blocks.1.mlp.hook_post", vec![3], ValueOp::Set(v))
            .at_positions(vec![last])
    };
    let run = |id: RunId, edits: Vec<Edit>, have: Option<RunId>| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: edits,
            sparsity: Method::Zero,
            lens: false,
            patterns: true,
            have_baseline: have,
        })
    };
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let first = handle(&mut session, run(1, Vec::new(), None));
    let n = finished(&first, Variant::Baseline).predictions.len();
    let mut have = 1;
    let mut last = Vec::new();
    for (id, v) in [(2, 30.0), (3, -30.0), (4, 5.0)] {
        last = handle(
            &mut session,
            run(id, vec![Edit::Hook(clamp_at_last(v, n - 1))], Some(have)),
        );
        have = id;
    }
    let mut fresh = Session::new();
    handle(&mut fresh, Command::LoadModel(LoadModel { path: tiny() }));
    let direct = handle(
        &mut fresh,
        run(1, vec![Edit::Hook(clamp_at_last(5.0, n - 1))], None),
    );
    let (mine, theirs) = (
        finished(&last, Variant::Intervened),
        finished(&direct, Variant::Intervened),
    );
    assert_eq!(mine.predictions.len(), theirs.predictions.len());
    for (a, b) in mine.predictions.iter().zip(&theirs.predictions) {
        assert_eq!(
            a.iter().map(|p| p.id).collect::<Vec<_>>(),
            b.iter().map(|p| p.id).collect::<Vec<_>>()
        );
        for (x, y) in a.iter().zip(b) {
            assert!((x.prob - y.prob).abs() < 1e-5);
        }
    }
    assert_eq!(mine.per_token_nll.len(), theirs.per_token_nll.len());
    for (x, y) in mine.per_token_nll.iter().zip(&theirs.per_token_nll) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // The clamp moved the last position's prediction (the comparison is not vacuous).
    let baseline = &finished(&first, Variant::Baseline).predictions[n - 1];
    assert_ne!(
        baseline.iter().map(|p| p.id).collect::<Vec<_>>(),
        mine.predictions[n - 1]
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>()
    );
}

#[test]
fn after_a_panic_the_next_run_recomputes_instead_of_trusting_the_caches() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    let clamp = |v: f32| {
        vec![Intervention::neurons(
            "blocks.1.mlp.hook_post",
            vec![2],
            ValueOp::Set(v),
        )]
    };
    let lens = |e: &Event| {
        matches!(e, Event::LensReady(l) if l.variant == Variant::Intervened)
            || matches!(e, Event::Error(_))
    };
    w.send(run(1, "the same prompt", clamp(1.0)));
    until(&w, lens);
    // Unchanged up to layer 1, the intervened pass reruns from there ...
    w.send(run(2, "the same prompt", clamp(2.0)));
    let events = until(&w, lens);
    assert!(finished(&events, Variant::Intervened).recomputed_from >= 1);
    // ... but after a panic the caches may be half written: everything is recomputed.
    w.send(Command::Panic);
    assert!(matches!(next(&w), Event::Error(e) if e.message.contains("panic")));
    w.send(run(3, "the same prompt", clamp(3.0)));
    let events = until(&w, lens);
    assert_eq!(finished(&events, Variant::Intervened).recomputed_from, -1);
    assert_eq!(finished(&events, Variant::Baseline).recomputed_from, -1);
}

#[test]
fn a_model_load_can_be_cancelled_and_the_open_model_stays() {
    let w = WorkerHandle::spawn(|| {}).unwrap();
    loaded(&w);
    // SmolLM2 takes a few hundred ms to load: cancelled at once, it never opens.
    let big = common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(w.send(Command::LoadModel(LoadModel { path: big })));
    w.cancel_load();
    let events = until(&w, |e| matches!(e, Event::ModelLoaded(_) | Event::Error(_)));
    match events.last() {
        Some(Event::Error(e)) => assert!(e.message.contains("cancelled"), "{e:?}"),
        other => panic!("expected the cancelled load's error, got {other:?}"),
    }
    // The tiny model is still the open one.
    w.send(run(1, "still here", vec![]));
    let events = until(&w, |e| matches!(e, Event::LensReady(_) | Event::Error(_)));
    assert!(
        matches!(events.last(), Some(Event::LensReady(_))),
        "{events:?}"
    );
    finished(&events, Variant::Baseline);
}

/// A pruning edit runs the intervened pass on a pruned copy (its losses are the pruned model's,
/// computed directly) while the baseline stays dense; a new sparsity rebuilds the copy and the
/// pass, and 0 % gives the dense numbers back.
#[test]
fn a_pruning_edit_runs_the_intervened_pass_on_pruned_weights() {
    use dendrite::model::prune::{PruneMethod, PruneScope, prune};
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let run = |id: RunId, sparsity: f32| {
        Command::Run(RunPrompt {
            run_id: id,
            text: "abcabcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: vec![Edit::Prune {
                method: PruneMethod::Magnitude,
                scope: PruneScope::All,
                sparsity,
            }],
            sparsity: Method::Zero,
            lens: false,
            patterns: false,
            have_baseline: None,
        })
    };
    let model = dendrite::model::open(tiny()).unwrap();
    let ids = model
        .encode_prompt("abcabcabc", dendrite::model::BosMode::Auto)
        .unwrap();
    let direct = |s: f64| {
        let (pruned, _) = prune(
            &model.transformer,
            PruneMethod::Magnitude,
            PruneScope::All,
            s,
        )
        .unwrap();
        let out = pruned
            .forward(
                std::slice::from_ref(&ids),
                &HookSpec::default(),
                &mut dendrite::model::NoObserver,
            )
            .unwrap();
        out.per_token_nll(&ids, 0).unwrap()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let events = handle(&mut session, run(1, 0.5));
    let (dense, pruned) = (
        finished(&events, Variant::Baseline).per_token_nll.clone(),
        finished(&events, Variant::Intervened).per_token_nll.clone(),
    );
    assert!(close(&pruned, &direct(0.5)), "{pruned:?}");
    assert!(!close(&pruned, &dense));
    assert_eq!(intervened_layers(&events), (0..2).collect::<Vec<_>>());
    let events = handle(&mut session, run(2, 0.8));
    assert!(close(
        &finished(&events, Variant::Intervened).per_token_nll,
        &direct(0.8)
    ));
    let events = handle(&mut session, run(3, 0.0));
    assert!(close(
        &finished(&events, Variant::Intervened).per_token_nll,
        &dense
    ));
}

/// A sparsify edit cuts every MLP in the intervened pass: with top-k, no token keeps more than
/// k nonzero activations in any layer, while the baseline keeps its own.
#[test]
fn a_sparsify_edit_cuts_every_mlp_of_the_intervened_pass() {
    use dendrite::analysis::sparsify::SparsifyMethod;
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let k = 3;
    let events = handle(
        &mut session,
        Command::Run(RunPrompt {
            run_id: 1,
            text: "abcabcabc".into(),
            bos: dendrite::model::BosMode::Auto,
            interventions: vec![Edit::Sparsify {
                method: SparsifyMethod::TopK { k },
            }],
            sparsity: Method::Zero,
            lens: false,
            patterns: false,
            have_baseline: None,
        }),
    );
    let mut checked = 0;
    let mut baseline_dense = false;
    for e in &events {
        if let Event::LayerReady(l) = e {
            let s = &l.summary;
            for row in s.mlp_post.chunks_exact(s.d_mlp) {
                let nonzero = row.iter().filter(|&&v| v != 0.0).count();
                match l.variant {
                    Variant::Intervened => {
                        assert!(nonzero <= k, "layer {}: {nonzero} > {k}", s.layer);
                        checked += 1;
                    }
                    Variant::Baseline => baseline_dense |= nonzero > k,
                }
            }
        }
    }
    assert!(checked > 0);
    assert!(baseline_dense, "the baseline is not cut");
    assert_ne!(
        finished(&events, Variant::Baseline).per_token_nll,
        finished(&events, Variant::Intervened).per_token_nll
    );
}

/// Cancels every job.
struct CancelJobs;

impl dendrite::worker::session::Cancel for CancelJobs {
    fn is_cancelled(&self, _: RunId) -> bool {
        false
    }
    fn is_job_cancelled(&self, _: JobId) -> bool {
        true
    }
}

/// A pruning sweep reports, for each level, the loss the pruned model gives when run directly
/// and the knee from those losses; a sparsification sweep draws every asked method over its
/// grid and finds a PPL-p% point within the bound; a cancelled sweep reports so.
#[test]
fn sweeps_measure_what_the_pruned_and_sparsified_models_give() {
    use dendrite::analysis::sparsify::SparsifyMethod;
    use dendrite::analysis::sweep::{
        LossText, SparsifyText, SweepPoint, allowed_loss, evaluate_sparsify, mean_loss, sequences,
    };
    use dendrite::model::prune::{PruneMethod, PruneScope, knee, prune};
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let text = LossText::Prompt {
        text: "abcabcabc abcabc".into(),
        bos: dendrite::model::BosMode::Auto,
    };
    let outcome = |events: &[Event]| -> JobOutcome {
        assert!(
            events.iter().any(|e| matches!(e, Event::JobProgress(_))),
            "progress is reported"
        );
        events
            .iter()
            .find_map(|e| match e {
                Event::JobFinished(f) if f.job_id == 5 => Some(f.outcome.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the sweep finished: {events:?}"))
    };
    let levels = vec![0.0, 0.3, 0.6, 0.9];
    let prune_job = Command::Sweep(SweepJob {
        job_id: 5,
        text: text.clone(),
        kind: SweepKind::Prune {
            method: PruneMethod::Magnitude,
            scope: PruneScope::All,
            levels: levels.clone(),
        },
    });
    let JobOutcome::Swept(report) = outcome(&handle(&mut session, prune_job.clone())) else {
        panic!("a sweep report")
    };
    let SweepReport::Prune(sweep) = *report else {
        panic!("a pruning sweep")
    };
    let model = dendrite::model::open(tiny()).unwrap();
    let seqs = sequences(&model, &text).unwrap();
    let dense = mean_loss(&model.transformer, &seqs, &HookSpec::default()).unwrap();
    assert_eq!(sweep.dense_mean_loss, dense);
    assert_eq!(sweep.points.len(), levels.len());
    for (point, &s) in sweep.points.iter().zip(&levels) {
        let (pruned, report) = prune(
            &model.transformer,
            PruneMethod::Magnitude,
            PruneScope::All,
            s,
        )
        .unwrap();
        let loss = mean_loss(&pruned, &seqs, &HookSpec::default()).unwrap();
        assert_eq!(
            point,
            &SweepPoint {
                parameter: s,
                sparsity: report.achieved_sparsity,
                mean_loss: loss
            }
        );
    }
    assert_eq!(sweep.points[0].mean_loss, dense, "0 % is the dense model");
    let curve: Vec<(f64, f64)> = sweep
        .points
        .iter()
        .map(|p| (p.parameter, p.mean_loss))
        .collect();
    assert_eq!(sweep.knee, knee(&curve, dense, 0.01));
    assert!(sweep.knee.is_some(), "0 % is within 1 % of dense");

    let methods = vec![
        SparsifyMethod::TopK { k: 0 },
        SparsifyMethod::Cats { k: 0.0 },
    ];
    let JobOutcome::Swept(report) = outcome(&handle(
        &mut session,
        Command::Sweep(SweepJob {
            job_id: 5,
            text: text.clone(),
            kind: SweepKind::Sparsify {
                methods,
                search: SparsifyMethod::Cats { k: 0.0 },
                ppl_p: 5.0,
                calibration: None,
            },
        }),
    )) else {
        panic!("a sweep report")
    };
    let SweepReport::Sparsify(sweep) = *report else {
        panic!("a sparsification sweep")
    };
    assert_eq!(sweep.dense_mean_loss, dense);
    let names: Vec<&str> = sweep.curves.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(names, ["topk", "cats"]);
    for curve in &sweep.curves {
        assert_eq!(curve.points.len(), 7);
        for p in &curve.points {
            assert!(
                (0.0..=1.0).contains(&p.sparsity) && p.mean_loss.is_finite(),
                "{p:?}"
            );
        }
    }
    // CATS at a higher quantile cuts more.
    let cats = &sweep.curves[1].points;
    assert!(cats.last().unwrap().sparsity > cats[0].sparsity, "{cats:?}");
    let found = sweep.found.expect("a PPL-p% point");
    assert!(
        found.mean_loss <= allowed_loss(dense, 5.0) + 1e-9,
        "{found:?}"
    );
    assert_eq!(sweep.searched, "cats");

    // Calibrated on a file: each point is the method with its cuts from that file's text.
    let dir = tempfile::tempdir().unwrap();
    let calibration_file = dir.path().join("calibration.txt");
    std::fs::write(&calibration_file, "cab cab bca abc cba bac ".repeat(8)).unwrap();
    let calibration = LossText::Corpus {
        path: calibration_file,
        tokens: 64,
    };
    let sparsify_job = |calibration: LossText| {
        Command::Sweep(SweepJob {
            job_id: 5,
            text: text.clone(),
            kind: SweepKind::Sparsify {
                methods: vec![SparsifyMethod::Cats { k: 0.0 }],
                search: SparsifyMethod::Cats { k: 0.0 },
                ppl_p: 5.0,
                calibration: Some(calibration),
            },
        })
    };
    let JobOutcome::Swept(report) =
        outcome(&handle(&mut session, sparsify_job(calibration.clone())))
    else {
        panic!("a sweep report")
    };
    let SweepReport::Sparsify(calibrated) = *report else {
        panic!("a sparsification sweep")
    };
    let calibration_seqs = sequences(&model, &calibration).unwrap();
    let first_scored = |seq: &[u32]| model.tokenizer.first_scored(seq);
    let by_file = SparsifyText {
        seqs: &seqs,
        calibration: &calibration_seqs,
        first_scored: &first_scored,
    };
    for p in &calibrated.curves[0].points {
        let method = SparsifyMethod::Cats { k: 0.0 }.with_value(p.parameter);
        assert_eq!(
            p,
            &evaluate_sparsify(&model.transformer, method, &by_file).unwrap()
        );
    }
    assert_ne!(
        calibrated.curves[0].points, sweep.curves[1].points,
        "another calibration text gives other cuts"
    );
    // A calibration file that is not there is an error that names it.
    let events = handle(
        &mut session,
        sparsify_job(LossText::Corpus {
            path: dir.path().join("missing.txt"),
            tokens: 64,
        }),
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Error(e) if e.message.contains("missing.txt"))),
        "{events:?}"
    );

    let events = handle_with(&mut session, prune_job, &CancelJobs);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::JobFinished(JobFinished {
                outcome: JobOutcome::Cancelled,
                ..
            })
        )),
        "{events:?}"
    );
}

/// A pruning edit generates its continuation on the pruned weights, and a sparsification edit
/// with its cuts calibrated on the prompt: each equals generating directly with them.
#[test]
fn pruned_and_sparsified_models_generate_their_own_continuations() {
    use dendrite::analysis::sparsify::{SparsifyMethod, calibrate, interventions};
    use dendrite::model::generate::{GenerateOptions, generate};
    use dendrite::model::prune::{PruneMethod, PruneScope, prune};
    let path = fixtures().join("tiny/llama");
    let mut session = Session::new();
    handle(
        &mut session,
        Command::LoadModel(LoadModel { path: path.clone() }),
    );
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let model = dendrite::model::open(&path).unwrap();
    let bos = dendrite::model::BosMode::No;
    let ids = model.encode_prompt("hello world", bos).unwrap();
    let decode = |ids: &[u32]| model.tokenizer.decode(ids);
    let (pruned, _) = prune(
        &model.transformer,
        PruneMethod::Magnitude,
        PruneScope::All,
        0.6,
    )
    .unwrap();
    let method = SparsifyMethod::Cats { k: 0.5 };
    let rules = calibrate(&model.transformer, method, std::slice::from_ref(&ids)).unwrap();
    let cut = HookSpec {
        interventions: interventions(&model.transformer, &rules, &method.to_string()),
        ..HookSpec::default()
    };
    for (edit, weights, spec) in [
        (
            Edit::Prune {
                method: PruneMethod::Magnitude,
                scope: PruneScope::All,
                sparsity: 0.6,
            },
            &pruned,
            HookSpec::default(),
        ),
        (Edit::Sparsify { method }, &model.transformer, cut),
    ] {
        let events = handle(
            &mut session,
            Command::Generate(GenerateRequest {
                run_id: 1,
                text: "hello world".into(),
                bos,
                interventions: vec![edit.clone()],
                options: opts.clone(),
                watch: None,
            }),
        );
        let generated = |variant: Variant| {
            events
                .iter()
                .find_map(|e| match e {
                    Event::GenerationFinished(f) if f.variant == variant => {
                        Some(f.generation.generated_ids())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{edit:?}: {variant:?} finished: {events:?}"))
        };
        let alone = generate(weights, &ids, &spec, &opts, &decode, &mut |_| true).unwrap();
        assert_eq!(
            generated(Variant::Intervened),
            alone.generated_ids(),
            "{edit:?}"
        );
        let dense = generate(
            &model.transformer,
            &ids,
            &HookSpec::default(),
            &opts,
            &decode,
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(generated(Variant::Baseline), dense.generated_ids());
    }
}

/// Another prompt's cores are its sentence cores at every MLP layer, as `measure` finds them.
#[test]
fn another_prompts_core_neurons_are_measured_at_every_layer() {
    use dendrite::analysis::core_neurons::{CoreOptions, measure};
    let mut session = Session::new();
    handle(&mut session, Command::LoadModel(LoadModel { path: tiny() }));
    let request = CoresRequest {
        text: "abc abd abe".into(),
        bos: dendrite::model::BosMode::Auto,
        alpha: 0.3,
    };
    let events = handle(&mut session, Command::Cores(request.clone()));
    let [Event::CoresReady(report)] = events.as_slice() else {
        panic!("{events:?}")
    };
    let model = dendrite::model::open(tiny()).unwrap();
    let ids = model.encode_prompt("abc abd abe", request.bos).unwrap();
    let direct = measure(
        &model.transformer,
        &ids,
        "blocks.*.mlp.hook_post",
        model.tokenizer.first_scored(&ids),
        CoreOptions {
            alpha: 0.3,
            ..CoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.request, request);
    assert_eq!(report.n_tokens, ids.len());
    let cores: Vec<Vec<usize>> = direct.into_iter().map(|l| l.core.core).collect();
    assert_eq!(report.cores, cores);
    assert_eq!(cores.len(), 2, "one per layer");
}
