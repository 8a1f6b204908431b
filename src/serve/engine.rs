//! The server's engine: one named thread that owns the model and runs queued generation jobs
//! one at a time, sending each token back to the request that asked for it. The queue is
//! bounded (a full queue is refused, not waited on); a job whose request has gone (the client
//! disconnected, so its receiver was dropped) stops at its next token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;

use crate::model::generate::{GenerateOptions, GeneratedToken, Generator, StopReason};
use crate::model::{HookSpec, Intervention, Model};

/// Tokens a job may have in flight to its request before the engine waits for it.
const EVENTS_IN_FLIGHT: usize = 64;

/// One generation request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub interventions: Vec<Intervention>,
    pub opts: GenerateOptions,
    /// Dropping the receiver stops the job.
    events: tokio::sync::mpsc::Sender<JobEvent>,
}

impl Job {
    /// A job and the receiver of its events.
    pub fn new(
        prompt: Vec<u32>,
        interventions: Vec<Intervention>,
        opts: GenerateOptions,
    ) -> (Self, tokio::sync::mpsc::Receiver<JobEvent>) {
        let (events, rx) = tokio::sync::mpsc::channel(EVENTS_IN_FLIGHT);
        (
            Job {
                prompt,
                interventions,
                opts,
                events,
            },
            rx,
        )
    }
}

/// What a job reports.
#[derive(Debug)]
pub enum JobEvent {
    Token(TokenOut),
    /// The last event of a job that ran.
    Done(Finished),
    /// The job could not run (bad interventions for this prompt, …) or failed mid-way.
    Failed(String),
}

/// A generated token, with the text it adds to the visible continuation.
#[derive(Debug)]
pub struct TokenOut {
    pub token: GeneratedToken,
    /// The token's own text.
    pub text: String,
    /// The alternatives' texts (`token.top`'s order).
    pub top_texts: Vec<String>,
    /// New visible text: held back while it could still become a stop string or ends in an
    /// incomplete character; empty for a final EOS.
    pub delta: String,
    /// Whether the token is part of the visible completion (a final EOS is not).
    pub visible: bool,
}

#[derive(Debug)]
pub struct Finished {
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The whole visible completion (EOS left out, cut before a stop string).
    pub text: String,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Counts for `GET /dendrite/status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub running: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub tokens_generated: AtomicU64,
}

#[derive(Serialize)]
pub struct StatsSnapshot {
    pub queued: usize,
    pub queue_capacity: usize,
    pub running: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub tokens_generated: u64,
}

/// The queue was full.
#[derive(Debug)]
pub struct Busy {
    pub capacity: usize,
}

pub struct Engine {
    jobs: Option<Sender<Job>>,
    capacity: usize,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread on `model`, with at most `capacity` jobs waiting.
    pub fn spawn(model: Arc<Model>, capacity: usize) -> std::io::Result<Self> {
        let (jobs, rx) = bounded::<Job>(capacity);
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("dendrite-serve-engine".into())
            .spawn(move || run(&model, rx, &thread_stats))?;
        Ok(Engine {
            jobs: Some(jobs),
            capacity,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let busy = Busy {
            capacity: self.capacity,
        };
        let Some(jobs) = &self.jobs else {
            return Err(busy);
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(busy),
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            queued: self.jobs.as_ref().map_or(0, Sender::len),
            queue_capacity: self.capacity,
            running: s.running.load(Ordering::SeqCst),
            completed: s.completed.load(Ordering::SeqCst),
            cancelled: s.cancelled.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            tokens_generated: s.tokens_generated.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the job it is running (whose request has
        // gone with the server, so it stops at its next token).
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(model: &Model, jobs: Receiver<Job>, stats: &Stats) {
    for job in jobs {
        if job.events.is_closed() {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        stats.running.store(1, Ordering::SeqCst);
        let events = job.events.clone();
        // A panic in a job is that job's failure; the engine keeps serving.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(model, &job, stats)));
        let failure = match outcome {
            Ok(Ok(Outcome::Finished)) => {
                stats.completed.fetch_add(1, Ordering::SeqCst);
                None
            }
            Ok(Ok(Outcome::Cancelled)) => {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("internal error while generating (the server recovered)".into()),
        };
        if let Some(message) = failure {
            stats.failed.fetch_add(1, Ordering::SeqCst);
            let _ = events.blocking_send(JobEvent::Failed(message));
        }
        stats.running.store(0, Ordering::SeqCst);
    }
}

enum Outcome {
    Finished,
    Cancelled,
}

fn run_job(model: &Model, job: &Job, stats: &Stats) -> anyhow::Result<Outcome> {
    let spec = HookSpec {
        interventions: job.interventions.clone(),
        ..HookSpec::default()
    };
    let mut generator = Generator::new(&model.transformer, &job.prompt, spec, job.opts.clone())?;
    let decode = |ids: &[u32]| model.tokenizer.decode(ids);
    let mut text = TextStream::new(job.opts.stops.strings.clone());
    loop {
        if job.events.is_closed() {
            return Ok(Outcome::Cancelled);
        }
        let Some(token) = generator.step(&decode)?.cloned() else {
            break;
        };
        stats.tokens_generated.fetch_add(1, Ordering::SeqCst);
        let g = generator.generation();
        let ids = visible_ids(&g.generated_ids(), generator.is_done(), g.stop, &job.opts);
        let visible = ids.len() == g.tokens.len();
        let delta = text.next(&decode(&ids), generator.is_done());
        let out = TokenOut {
            text: model.tokenizer.token_text(token.id),
            top_texts: model.tokenizer.alternative_texts(&token.top),
            token,
            delta,
            visible,
        };
        if job.events.blocking_send(JobEvent::Token(out)).is_err() {
            return Ok(Outcome::Cancelled);
        }
    }
    let g = generator.into_generation();
    let ids = visible_ids(&g.generated_ids(), true, g.stop, &job.opts);
    let finished = Finished {
        stop: g.stop,
        prompt_tokens: g.prompt_ids.len(),
        completion_tokens: g.tokens.len(),
        text: text.whole(&decode(&ids)),
        prefill_ms: g.prefill_ms,
        decode_ms: g.decode_ms,
    };
    let _ = job.events.blocking_send(JobEvent::Done(finished));
    Ok(Outcome::Finished)
}

/// The generated ids that make the visible text: all but a final EOS.
fn visible_ids(ids: &[u32], done: bool, stop: StopReason, opts: &GenerateOptions) -> Vec<u32> {
    match ids.split_last() {
        Some((last, rest)) if done && stop == StopReason::Eos && opts.stops.eos.contains(last) => {
            rest.to_vec()
        }
        _ => ids.to_vec(),
    }
}

/// Turns the growing decoded continuation into deltas that never show a stop string or half a
/// character: text that could still become a stop string is held back until it cannot.
#[derive(Debug)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of the text already sent.
    sent: usize,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream { stops, sent: 0 }
    }

    /// The visible text: cut before the first stop string.
    fn visible<'a>(&self, full: &'a str) -> (&'a str, bool) {
        let cut = self
            .stops
            .iter()
            .filter_map(|s| full.find(s.as_str()))
            .min();
        match cut {
            Some(at) => (&full[..at], true),
            None => (full, false),
        }
    }

    /// The new text to send, given the whole continuation decoded so far.
    pub fn next(&mut self, full: &str, done: bool) -> String {
        let (visible, stopped) = self.visible(full);
        let mut end = visible.len();
        if !(done || stopped) {
            // A decoder shows an incomplete multi-byte character as U+FFFD: wait for the rest.
            if visible.ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
            // Hold back the longest tail that begins a stop string.
            let held = self
                .stops
                .iter()
                .flat_map(|s| {
                    s.char_indices()
                        .skip(1)
                        .map(|(i, _)| &s[..i])
                        .filter(|prefix| visible[..end].ends_with(prefix))
                        .map(str::len)
                        .max()
                })
                .max()
                .unwrap_or(0);
            end -= held;
        }
        if end <= self.sent || !visible.is_char_boundary(self.sent) {
            return String::new();
        }
        let delta = visible[self.sent..end].to_string();
        self.sent = end;
        delta
    }

    /// The whole visible completion.
    pub fn whole(&self, full: &str) -> String {
        self.visible(full).0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one by one (the decoded text grows by each) and collects the deltas.
    fn deltas(stops: &[&str], pieces: &[&str]) -> Vec<String> {
        let mut stream = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut full = String::new();
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            full.push_str(p);
            out.push(stream.next(&full, i + 1 == pieces.len()));
        }
        out
    }

    #[test]
    fn text_that_may_become_a_stop_string_waits_and_a_stop_string_is_never_sent() {
        // "\n\n" could follow the first "\n": held, then sent when it does not.
        assert_eq!(
            deltas(&["\n\n"], &["Hi", "\n", "there", "\n", "\n", "more"]),
            ["Hi", "", "\nthere", "", "", ""]
        );
        assert_eq!(
            deltas(&["END"], &["a", "EN", "x", "END"]),
            ["a", "", "ENx", ""]
        );
        assert_eq!(deltas(&[], &["a", "b"]), ["a", "b"]);
        let s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.whole("abENDcd"), "ab");
    }

    #[test]
    fn half_a_character_waits_for_the_rest() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.next("caf\u{FFFD}", false), "caf");
        assert_eq!(s.next("café", false), "é");
        // At the end what is there is sent.
        assert_eq!(s.next("café\u{FFFD}", true), "\u{FFFD}");
    }
}
