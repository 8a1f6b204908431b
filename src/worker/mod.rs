//! The background worker: a named thread that owns the model and answers [`Command`]s with
//! [`Event`]s over bounded channels. A newer run cancels the running pass between layers
//! (latest wins) and a running generation between tokens; a panic inside a job becomes an
//! [`Event::Error`] and the worker keeps serving; dropping the [`WorkerHandle`] cancels and
//! joins the thread.

pub mod protocol;
pub mod session;
pub mod stores;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};

pub use protocol::*;
pub use session::Session;

/// How the worker wakes the UI after sending events (the app passes egui's repaint request).
pub trait Wake: Send + Sync + 'static {
    fn wake(&self);
}

impl<F: Fn() + Send + Sync + 'static> Wake for F {
    fn wake(&self) {
        self()
    }
}

/// Commands waiting at most; senders block beyond (the UI sends a few per frame at most).
const COMMAND_CAPACITY: usize = 64;
/// Events waiting at most; the worker blocks beyond until the UI drains (backpressure).
const EVENT_CAPACITY: usize = 4096;

pub struct WorkerHandle {
    commands: Sender<Command>,
    events: Option<Receiver<Event>>,
    /// The newest prompt run; passes for older ids stop between layers.
    latest_run: Arc<AtomicU64>,
    /// The newest request that stops generations ([`Command::stops_generations_before`]).
    latest_generation_stop: Arc<AtomicU64>,
    /// The job the user cancelled (checked between training steps / evaluated sequences).
    cancelled_job: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts the worker thread.
    pub fn spawn(wake: impl Wake) -> std::io::Result<Self> {
        let (command_tx, command_rx) = bounded::<Command>(COMMAND_CAPACITY);
        let (event_tx, event_rx) = bounded::<Event>(EVENT_CAPACITY);
        let latest_run = Arc::new(AtomicU64::new(0));
        let latest_generation_stop = Arc::new(AtomicU64::new(0));
        let cancelled_job = Arc::new(AtomicU64::new(0));
        let cancellation = Cancellation {
            latest_run: latest_run.clone(),
            latest_generation_stop: latest_generation_stop.clone(),
            cancelled_job: cancelled_job.clone(),
        };
        // Long jobs run on their own threads and hand results back through the channels.
        let background = session::Background {
            events: event_tx.clone(),
            commands: command_tx.clone(),
            wake: Arc::new(move || wake.wake()),
            cancelled_job: cancelled_job.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("dendrite-worker".into())
            .spawn(move || serve(command_rx, event_tx, cancellation, background))?;
        Ok(WorkerHandle {
            commands: command_tx,
            events: Some(event_rx),
            latest_run,
            latest_generation_stop,
            cancelled_job,
            thread: Some(thread),
        })
    }

    /// Queues a command. A prompt run supersedes every earlier one at once (their passes stop
    /// at the next layer). Returns false if the worker has stopped.
    pub fn send(&self, command: Command) -> bool {
        if let Some(id) = command.run_id() {
            self.latest_run.fetch_max(id, Ordering::SeqCst);
        }
        if let Some(id) = command.stops_generations_before() {
            self.latest_generation_stop.fetch_max(id, Ordering::SeqCst);
        }
        self.commands.send(command).is_ok()
    }

    /// Cancels a running job (it stops at its next step and reports `JobOutcome::Cancelled`).
    pub fn cancel_job(&self, job: JobId) {
        self.cancelled_job.store(job, Ordering::SeqCst);
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.as_ref()?.try_recv().ok()
    }

    /// The event channel (tests block on it with a timeout).
    pub fn events(&self) -> Option<&Receiver<Event>> {
        self.events.as_ref()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // Cancel whatever runs, stop the loop, and unblock a worker waiting to send.
        self.latest_run.store(u64::MAX, Ordering::SeqCst);
        self.latest_generation_stop
            .store(u64::MAX, Ordering::SeqCst);
        self.cancelled_job.store(u64::MAX, Ordering::SeqCst);
        let _ = self.commands.try_send(Command::Shutdown);
        self.events.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Of a batch of waiting commands, runs keep only the newest (latest wins); everything else
/// runs in order.
fn coalesce(mut pending: Vec<Command>) -> Vec<Command> {
    let last_run = pending.iter().rposition(|c| matches!(c, Command::Run(_)));
    let mut i = 0;
    pending.retain(|c| {
        let keep = !matches!(c, Command::Run(_)) || Some(i) == last_run;
        i += 1;
        keep
    });
    pending
}

/// What the UI has superseded or cancelled, shared with the worker thread.
struct Cancellation {
    latest_run: Arc<AtomicU64>,
    latest_generation_stop: Arc<AtomicU64>,
    cancelled_job: Arc<AtomicU64>,
}

impl session::Cancel for Cancellation {
    fn is_cancelled(&self, run_id: RunId) -> bool {
        self.latest_run.load(Ordering::SeqCst) > run_id
    }

    fn is_job_cancelled(&self, job: JobId) -> bool {
        let c = self.cancelled_job.load(Ordering::SeqCst);
        c == job || c == u64::MAX
    }

    fn is_generation_cancelled(&self, id: RunId) -> bool {
        self.latest_generation_stop.load(Ordering::SeqCst) > id
    }
}

fn serve(
    commands: Receiver<Command>,
    events: Sender<Event>,
    cancel: Cancellation,
    background: session::Background,
) {
    let wake = background.wake.clone();
    let mut session = Session::with_background(background);
    loop {
        let Ok(first) = commands.recv() else { return };
        let mut pending = vec![first];
        loop {
            match commands.try_recv() {
                Ok(c) => pending.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        for command in coalesce(pending) {
            if matches!(command, Command::Shutdown) {
                return;
            }
            let mut disconnected = false;
            let mut emit = |e: Event| {
                if events.send(e).is_err() {
                    disconnected = true;
                }
                wake();
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                session.handle(command, &cancel, &mut emit)
            }));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                emit(Event::Error(ErrorEvent {
                    context: "the worker".into(),
                    message: format!("internal error (the worker recovered): {message}"),
                }));
            }
            if disconnected {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: RunId) -> Command {
        Command::Run(RunPrompt {
            run_id: id,
            text: String::new(),
            bos: crate::model::BosMode::Auto,
            interventions: vec![],
            sparsity: crate::analysis::sparsity::Method::Zero,
            lens: true,
            patterns: true,
            have_baseline: None,
        })
    }

    #[test]
    fn coalescing_keeps_only_the_newest_run() {
        let probe = Command::ProbeHeads(ProbeHeads {
            run_id: 9,
            repeat_len: 4,
            batch: 1,
            seed: 0,
        });
        let out = coalesce(vec![run(1), probe.clone(), run(2), run(3)]);
        assert_eq!(out, vec![probe, run(3)]);
        assert_eq!(coalesce(vec![Command::Shutdown]), vec![Command::Shutdown]);
    }
}
