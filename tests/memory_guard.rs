//! The memory guard: with `DENDRITE_MEMORY_LIMIT_MIB` below what a model or a run needs, the
//! worker refuses it with the numbers and what to do, and the open model stays usable. (Its own
//! test binary: the limit is the process's environment.)

mod common;

use std::time::Duration;

use dendrite::analysis::sparsity::Method;
use dendrite::worker::*;

fn until(w: &WorkerHandle, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = w
            .events()
            .unwrap()
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker answers");
        let done = stop(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn error_of(events: &[Event]) -> &ErrorEvent {
    match events.last() {
        Some(Event::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn run(id: RunId, text: String, patterns: bool) -> Command {
    Command::Run(RunPrompt {
        run_id: id,
        text,
        bos: dendrite::model::BosMode::Auto,
        interventions: Vec::new(),
        sparsity: Method::Zero,
        lens: false,
        patterns,
        have_baseline: None,
    })
}

#[test]
fn models_saes_and_runs_beyond_the_memory_available_are_refused_and_the_open_model_stays() {
    // Safety: set before any thread of this test binary reads the environment.
    unsafe { std::env::set_var(dendrite::memory::LIMIT_ENV, "1024") };
    let w = WorkerHandle::spawn(|| {}).unwrap();
    let smol = common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    w.send(Command::LoadModel(LoadModel { path: smol.clone() }));
    let loaded = |e: &Event| matches!(e, Event::ModelLoaded(_) | Event::Error(_));
    assert!(matches!(
        until(&w, loaded).last(),
        Some(Event::ModelLoaded(_))
    ));

    // 7 000 tokens: ≈ 10 GiB of caches, and ≈ 49 GiB more of attention patterns.
    let long = "the cat sat on the mat. ".repeat(1000);
    let finished = |e: &Event| matches!(e, Event::RunFinished(_) | Event::Error(_));
    w.send(run(1, long.clone(), true));
    let e = error_of(&until(&w, finished)).clone();
    assert!(
        e.message.contains("needs about") && e.message.contains("only 1.0 GiB"),
        "{e:?}"
    );
    assert!(e.message.contains("deselect the head"), "{e:?}");
    w.send(run(2, long, false));
    let e = error_of(&until(&w, finished)).clone();
    assert!(e.message.contains("shorten the prompt"), "{e:?}");
    assert!(!e.message.contains("deselect"), "{e:?}");

    // A short run fits.
    w.send(run(3, "the cat sat".into(), true));
    assert!(matches!(
        until(&w, finished).last(),
        Some(Event::RunFinished(_))
    ));

    // Below what the model's weights take, a second model is refused; the first stays.
    unsafe { std::env::set_var(dendrite::memory::LIMIT_ENV, "200") };
    w.send(Command::LoadModel(LoadModel { path: smol }));
    let e = error_of(&until(&w, loaded)).clone();
    assert!(
        e.message.contains("135 M weights") && e.message.contains("200 MiB"),
        "{e:?}"
    );
    w.send(run(4, "the cat sat".into(), false));
    assert!(matches!(
        until(&w, finished).last(),
        Some(Event::RunFinished(_))
    ));

    // And an SAE larger than what is left.
    unsafe { std::env::set_var(dendrite::memory::LIMIT_ENV, "0") };
    let Err(sae) = dendrite::sae::open(common::fixtures().join("sae/topk")) else {
        panic!("the SAE opened with no memory to spare");
    };
    assert!(sae.to_string().contains("detach SAEs"), "{sae}");
}
