//! UI responsiveness on SmolLM2-135M, headless (egui_kittest, no renderer: this times layout
//! and tessellation on the CPU, which is what the app's thread does each frame):
//! - frame time p50/p99 while a 256-token run streams its 30 layers;
//! - time from changing a clamp (as releasing its slider does) to every view updated, 64 tokens,
//!   clamping early, middle and late layers, with the logit lens tab closed and open;
//! - on the Generate tab, time from pressing Continue to the first token, beside the prompt's
//!   forward and a decode step.
//!
//! Run: `cargo bench --bench ui` (needs scripts/fetch_models.sh). See BENCHMARKS.md.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dendrite::ui::DendriteApp;
use dendrite::ui::state::{Action, EditSpec, Tab};
use egui_kittest::Harness;

fn model_path() -> String {
    std::env::var("DENDRITE_BENCH_MODEL")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into())
}

fn harness(prompt: String) -> Harness<'static, DendriteApp> {
    let path = model_path();
    let h = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .build_eframe(move |cc| {
            let mut app = DendriteApp::new(&cc.egui_ctx, None, Some(path.into())).expect("worker");
            app.state.prompt = prompt;
            app
        });
    h.ctx
        .set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
    h
}

/// When the app next wants a frame: repaint requests (the worker's wake-ups, egui's own, a
/// spinner's) are scheduled as eframe schedules them, so the bench draws the frames a window
/// would.
fn frame_schedule(h: &Harness<'_, DendriteApp>) -> Arc<Mutex<Option<Instant>>> {
    let due = Arc::new(Mutex::new(Some(Instant::now())));
    let d = due.clone();
    h.ctx.set_request_repaint_callback(move |info| {
        let at = Instant::now() + info.delay;
        if let Ok(mut due) = d.lock() {
            *due = Some(due.map_or(at, |t| t.min(at)));
        }
    });
    due
}

/// A window with vsync (eframe's default) draws at most one frame per display refresh.
const REFRESH: Duration = Duration::from_micros(16_667);

/// Draws frames when the app asks for them (at most one per [`REFRESH`]) until `done`; returns
/// each frame's duration (ms).
fn wait(h: &mut Harness<'_, DendriteApp>, done: impl Fn(&DendriteApp) -> bool) -> Vec<f64> {
    let due = frame_schedule(h);
    let mut frames = Vec::new();
    let started = Instant::now();
    let mut last_frame: Option<Instant> = None;
    while !done(h.state()) {
        assert!(started.elapsed() < Duration::from_secs(120), "timed out");
        let now = Instant::now();
        let refreshed = last_frame.is_none_or(|t| now - t >= REFRESH);
        let frame_due = refreshed
            && due
                .lock()
                .map(|mut d| d.take_if(|t| *t <= now).is_some())
                .unwrap_or(true);
        if frame_due {
            last_frame = Some(now);
            h.step();
            frames.push(now.elapsed().as_secs_f64() * 1e3);
        } else {
            // A window sleeps until the next repaint is due.
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    frames
}

/// Every view of the intervened pass is in, the logit lens included.
fn lens_updated(a: &DendriteApp) -> bool {
    a.state.is_complete()
        && a.state
            .runs
            .intervened
            .as_ref()
            .is_some_and(|p| p.lens_complete())
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The longest run of words from a fixed text that is at most `n_tokens` tokens.
fn prompt(n_tokens: usize) -> String {
    let tokenizer = dendrite::model::open_tokenizer(model_path()).expect("tokenizer");
    let words = "The quick brown fox jumps over the lazy dog while the curious cat watches from the warm windowsill. "
        .repeat(n_tokens / 10 + 1);
    let mut text = String::new();
    for word in words.split_inclusive(' ') {
        let longer = format!("{text}{word}");
        if tokenizer
            .encode(longer.trim_end(), false)
            .expect("encodes")
            .len()
            > n_tokens
        {
            break;
        }
        text = longer;
    }
    text.trim_end().to_string()
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: this one only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    dendrite::tune_threads();
    // 1. Frames while a ~256-token run streams.
    let mut h = harness(String::new());
    wait(&mut h, |a| a.state.model.is_some());
    h.state_mut().act(Action::SetPrompt(prompt(256)));
    h.state_mut().act(Action::Run);
    let mut frames = wait(&mut h, |a| a.state.is_complete());
    let tokens = h.state().state.runs.baseline.tokens.len();
    let (p50, p99) = (percentile(&mut frames, 0.5), percentile(&mut frames, 0.99));
    println!(
        "frames while a {tokens}-token run streams: {} frames, p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        frames.len(),
        frames.iter().copied().fold(0.0, f64::max)
    );

    // 2. Clamp change → all views updated, 64 tokens, for clamps early, mid and late; with
    //    the logit lens tab closed (the lens is computed only while its tab is open) and open.
    let mut h = harness(String::new());
    wait(&mut h, |a| a.state.model.is_some());
    h.state_mut().act(Action::SetPrompt(prompt(64)));
    h.state_mut().act(Action::Run);
    wait(&mut h, |a| a.state.is_complete());
    let tokens = h.state().state.runs.baseline.tokens.len();
    for lens_tab in [false, true] {
        h.state_mut().act(Action::SetTab(if lens_tab {
            Tab::Lens
        } else {
            Tab::Neurons
        }));
        for layer in [5, 15, 25] {
            let clamp = |value: f32| EditSpec::Neuron {
                layer,
                neuron: 123,
                value,
                scale: false,
            };
            h.state_mut().act(Action::AddIntervention(clamp(10.0)));
            wait(&mut h, |a| {
                a.state.is_complete() && (!lens_tab || lens_updated(a))
            });
            let mut latencies = Vec::new();
            let mut frames = Vec::new();
            for i in 0..10 {
                let started = Instant::now();
                h.state_mut().act(Action::EditIntervention(
                    0,
                    clamp(if i % 2 == 0 { -10.0 } else { 10.0 }),
                ));
                frames.extend(wait(&mut h, |a| {
                    a.state.is_complete() && (!lens_tab || lens_updated(a))
                }));
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "clamp change at L{layer} → all views updated ({tokens} tokens, lens tab {}): median {:.1} ms (min {:.1}, max {:.1}); {:.1} frames per change, p50 {:.2} ms, max {:.2} ms",
                if lens_tab { "open" } else { "closed" },
                percentile(&mut latencies.clone(), 0.5),
                latencies.iter().copied().fold(f64::MAX, f64::min),
                latencies.iter().copied().fold(0.0, f64::max),
                frames.len() as f64 / latencies.len() as f64,
                percentile(&mut frames, 0.5),
                frames.iter().copied().fold(0.0, f64::max),
            );
            h.state_mut().act(Action::RemoveIntervention(0));
            wait(&mut h, |a| a.state.is_complete());
        }
    }

    // 3. Generate with a clamp: time from pressing Continue to the first token on screen,
    //    against the prompt's own forward (the baseline's prefill) and a decode step.
    h.state_mut().act(Action::SetTab(Tab::Generate));
    h.state_mut().act(Action::AddIntervention(EditSpec::Neuron {
        layer: 15,
        neuron: 123,
        value: 10.0,
        scale: false,
    }));
    wait(&mut h, |a| a.state.is_complete());
    let mut settings = h.state().state.generate_settings.clone();
    settings.max_new_tokens = 32;
    h.state_mut().act(Action::SetGenerateSettings(settings));
    let (mut ttft, mut prefill, mut decode, mut frames) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        h.state_mut().act(Action::Generate);
        frames.extend(wait(&mut h, |a| {
            a.state.generation.as_ref().is_some_and(|g| !g.is_running())
        }));
        let g = h.state().state.generation.clone().expect("a generation");
        let base = g.baseline.finished.expect("finished");
        ttft.push(g.first_token_ms.expect("timed"));
        prefill.push(base.prefill_ms);
        decode.push(base.decode_ms / base.tokens.len().saturating_sub(1).max(1) as f64);
    }
    println!(
        "generate ({tokens}-token prompt, clamp at L15, 32 tokens × 2 continuations): time to first token median {:.1} ms; the prompt's forward (prefill) {:.1} ms; a decode step {:.1} ms; frames p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut ttft, 0.5),
        percentile(&mut prefill, 0.5),
        percentile(&mut decode, 0.5),
        percentile(&mut frames.clone(), 0.5),
        percentile(&mut frames, 0.99),
    );
}
