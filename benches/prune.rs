//! The pruning slider on SmolLM2-135M (issue 14): a move of the incremental magnitude pruner
//! (1 %, 5 % and 50 % of the weights), the forward pass of the pruned model (masked views),
//! the worker's whole handling of a slider move (prune, then the intervened pass over the
//! prompt), one-shot pruning, and the plain forward the target compares with. Needs
//! `scripts/fetch_models.sh`; see BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use dendrite::analysis::sparsity::Method;
use dendrite::model::prune::{MagnitudePruner, PruneMethod, PruneScope, prune};
use dendrite::model::{self, BosMode, HookSpec, NoObserver};
use dendrite::worker::{Command, Edit, LoadModel, RunPrompt, Session};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog while the curious cat watches \
                      from the warm windowsill.";

fn bench(c: &mut Criterion) {
    dendrite::tune_threads();
    let path = std::env::var("DENDRITE_BENCH_MODEL")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = model::open(&path).expect("run scripts/fetch_models.sh first");
    let t = &model.transformer;
    let ids = vec![
        model
            .encode_prompt(PROMPT, BosMode::Auto)
            .expect("tokenize"),
    ];
    let mut group = c.benchmark_group("prune_slider");
    group.sample_size(10);
    group.bench_function(format!("forward_{}", ids[0].len()), |b| {
        b.iter(|| {
            t.forward(&ids, &HookSpec::default(), &mut NoObserver)
                .expect("forward")
        })
    });
    // The slider's first touch: each matrix's magnitude order and the copy.
    group.bench_function("pruner_new", |b| {
        b.iter(|| MagnitudePruner::new(t, PruneScope::All).expect("pruner"))
    });
    let mut pruner = MagnitudePruner::new(t, PruneScope::All).expect("pruner");
    pruner
        .set_sparsity(t, PruneMethod::Magnitude, 0.5)
        .expect("prune");
    let pruned = pruner.model().clone();
    group.bench_function("pruned_forward_50pct", |b| {
        b.iter(|| {
            pruned
                .forward(&ids, &HookSpec::default(), &mut NoObserver)
                .expect("forward")
        })
    });
    drop(pruned);
    for step in [0.01, 0.05, 0.5] {
        let mut flip = false;
        group.bench_function(format!("pruner_move_{}pct", step * 100.0), |b| {
            b.iter(|| {
                flip = !flip;
                let s = if flip { 0.5 + step } else { 0.5 };
                pruner
                    .set_sparsity(t, PruneMethod::Magnitude, s)
                    .expect("move")
            })
        });
    }
    // Magnitude-global: the cuts come from bisecting the pooled order.
    let mut flip = false;
    group.bench_function("pruner_move_global_50pct", |b| {
        b.iter(|| {
            flip = !flip;
            let s = if flip { 0.9 } else { 0.4 };
            pruner
                .set_sparsity(t, PruneMethod::MagnitudeGlobal, s)
                .expect("move")
        })
    });
    drop(pruner);
    let mut session = Session::new();
    session.handle(
        Command::LoadModel(LoadModel { path: path.into() }),
        &|_| false,
        &mut |_| {},
    );
    let mut run_id = 0;
    let mut run = |edit: Edit| {
        run_id += 1;
        let mut events = 0;
        session.handle(
            Command::Run(RunPrompt {
                run_id,
                text: PROMPT.into(),
                bos: BosMode::Auto,
                interventions: vec![edit],
                sparsity: Method::Zero,
                lens: false,
                patterns: false,
                have_baseline: None,
            }),
            &|_| false,
            &mut |_| events += 1,
        );
        events
    };
    let slider = |sparsity: f32| Edit::Prune {
        method: PruneMethod::Magnitude,
        scope: PruneScope::All,
        sparsity,
    };
    // What any edit at layer 0 costs the worker (the whole intervened pass, its summaries):
    // the slider's move adds the pruning to this.
    let clamp = |value: f32| {
        Edit::Hook(model::Intervention::neurons(
            "blocks.0.mlp.hook_post",
            vec![1],
            model::ValueOp::Set(value),
        ))
    };
    run(clamp(1.0));
    let mut flip = false;
    group.bench_function("worker_clamp_layer0", |b| {
        b.iter(|| {
            flip = !flip;
            run(clamp(if flip { 2.0 } else { 1.0 }))
        })
    });
    run(slider(0.5));
    for step in [0.01, 0.05, 0.4] {
        group.bench_function(format!("worker_slider_move_{}pct", step * 100.0), |b| {
            b.iter(|| {
                flip = !flip;
                run(slider(if flip { 0.5 + step } else { 0.5 }))
            })
        });
    }
    group.bench_function("one_shot_prune", |b| {
        b.iter(|| prune(t, PruneMethod::Magnitude, PruneScope::All, 0.5).expect("prune"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
