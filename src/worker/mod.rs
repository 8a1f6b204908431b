//! The background worker: a named thread that owns the model and answers [`Command`]s with
//! [`Event`]s over bounded channels. A newer run cancels the running pass between layers
//! (latest wins) and a running generation between tokens; a panic inside a job becomes an
//! [`Event::Error`] and the worker keeps serving; dropping the [`WorkerHandle`] cancels and
//! joins the thread.

pub mod protocol;
pub mod session;
pub mod stores;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};

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

/// Commands the channel holds; beyond, they wait in the handle's overflow queue (sending never
/// blocks the UI thread).
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
    /// Loads are numbered in the order they enter the channel (the worker counts them the
    /// same way); loads up to this number are cancelled (the user cancelled, or opened
    /// another model).
    cancel_loads_through: Arc<AtomicU64>,
    /// Commands waiting for room in the channel while the worker is busy (a load, a long
    /// pass): sending never blocks the UI thread, and runs waiting here coalesce.
    overflow: Mutex<Overflow>,
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
        let cancel_loads_through = Arc::new(AtomicU64::new(0));
        let cancellation = Cancellation {
            latest_run: latest_run.clone(),
            latest_generation_stop: latest_generation_stop.clone(),
            cancelled_job: cancelled_job.clone(),
            cancel_loads_through: cancel_loads_through.clone(),
            current_load: AtomicU64::new(0),
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
            cancel_loads_through,
            overflow: Mutex::new(Overflow::default()),
            thread: Some(thread),
        })
    }

    /// Queues a command without ever blocking: a prompt run supersedes every earlier one at
    /// once (their passes stop at the next layer), a model load the one loading. When the
    /// channel is full (the worker is busy), the command waits in an overflow queue, where
    /// runs coalesce, until [`Self::try_recv`] finds room. Returns false if the worker has
    /// stopped.
    pub fn send(&self, command: Command) -> bool {
        if let Some(id) = command.run_id() {
            self.latest_run.fetch_max(id, Ordering::SeqCst);
        }
        if let Some(id) = command.stops_generations_before() {
            self.latest_generation_stop.fetch_max(id, Ordering::SeqCst);
        }
        enqueue(
            &self.commands,
            &self.overflow,
            &self.cancel_loads_through,
            command,
        )
    }

    /// Stops the model load in progress and drops those waiting; the open model stays.
    pub fn cancel_load(&self) {
        let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        overflow
            .waiting
            .retain(|c| !matches!(c, Command::LoadModel(_)));
        self.cancel_loads_through
            .fetch_max(overflow.loads_sent, Ordering::SeqCst);
    }

    /// Cancels a running job (it stops at its next step and reports `JobOutcome::Cancelled`).
    pub fn cancel_job(&self, job: JobId) {
        self.cancelled_job.store(job, Ordering::SeqCst);
    }

    /// The next event, if one is waiting (and commands waiting for room go out).
    pub fn try_recv(&self) -> Option<Event> {
        {
            let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            if !overflow.waiting.is_empty() {
                flush(&self.commands, &mut overflow, &self.cancel_loads_through);
            }
        }
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
        self.cancel_loads_through.store(u64::MAX, Ordering::SeqCst);
        let _ = self.commands.try_send(Command::Shutdown);
        self.events.take();
        if let Some(thread) = self.thread.take() {
            join_within(thread, "the worker");
        }
    }
}

/// How long dropping a handle waits for its thread (a pass stops at its next layer, a job at
/// its next step; a thread stuck beyond this is left behind rather than hang the app's exit).
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Joins `thread` if it ends within [`JOIN_TIMEOUT`]; otherwise says so and leaves it.
pub(crate) fn join_within(thread: JoinHandle<()>, name: &str) {
    let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if thread.is_finished() {
        let _ = thread.join();
    } else {
        eprintln!(
            "dendrite: {name} did not stop within {} s; leaving it",
            JOIN_TIMEOUT.as_secs()
        );
    }
}

/// Commands waiting for room in the channel, and how many loads have entered it.
#[derive(Default)]
struct Overflow {
    waiting: VecDeque<Command>,
    loads_sent: u64,
}

/// Puts `command` behind those waiting in `overflow` (coalescing runs and loads), then sends
/// what fits in the channel. Never blocks. False if the worker has stopped.
fn enqueue(
    commands: &Sender<Command>,
    overflow: &Mutex<Overflow>,
    cancel_loads_through: &AtomicU64,
    command: Command,
) -> bool {
    let mut overflow = overflow.lock().unwrap_or_else(|e| e.into_inner());
    overflow.waiting.push_back(command);
    let coalesced = coalesce(overflow.waiting.drain(..).collect());
    overflow.waiting.extend(coalesced);
    flush(commands, &mut overflow, cancel_loads_through)
}

/// Sends what the overflow queue holds until the channel is full; a load entering the channel
/// cancels the loads before it. False if the worker has stopped.
fn flush(
    commands: &Sender<Command>,
    overflow: &mut Overflow,
    cancel_loads_through: &AtomicU64,
) -> bool {
    while let Some(command) = overflow.waiting.pop_front() {
        let load = matches!(command, Command::LoadModel(_));
        match commands.try_send(command) {
            Ok(()) if load => {
                overflow.loads_sent += 1;
                cancel_loads_through.fetch_max(overflow.loads_sent - 1, Ordering::SeqCst);
            }
            Ok(()) => {}
            Err(TrySendError::Full(command)) => {
                overflow.waiting.push_front(command);
                break;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
    true
}

/// Of a batch of waiting commands, runs keep only the newest (latest wins), and so do model
/// loads; everything else runs in order.
fn coalesce(mut pending: Vec<Command>) -> Vec<Command> {
    let last_run = pending.iter().rposition(|c| matches!(c, Command::Run(_)));
    let last_load = pending
        .iter()
        .rposition(|c| matches!(c, Command::LoadModel(_)));
    let mut i = 0;
    pending.retain(|c| {
        let keep = match c {
            Command::Run(_) => Some(i) == last_run,
            Command::LoadModel(_) => Some(i) == last_load,
            _ => true,
        };
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
    cancel_loads_through: Arc<AtomicU64>,
    /// The number of the load being handled (the worker counts loads as they arrive).
    current_load: AtomicU64,
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

    fn is_load_cancelled(&self) -> bool {
        self.cancel_loads_through.load(Ordering::SeqCst) >= self.current_load.load(Ordering::SeqCst)
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
    let mut loads_received = 0u64;
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
        // Loads are numbered as the handle numbered them entering the channel; of a batch
        // only the last runs (coalesced), numbered after all of them.
        loads_received += pending
            .iter()
            .filter(|c| matches!(c, Command::LoadModel(_)))
            .count() as u64;
        for command in coalesce(pending) {
            if matches!(command, Command::Shutdown) {
                return;
            }
            if matches!(command, Command::LoadModel(_)) {
                cancel.current_load.store(loads_received, Ordering::SeqCst);
            }
            let mut disconnected = false;
            let mut emit = |e: Event| {
                if events.send(e).is_err() {
                    disconnected = true;
                }
                wake();
            };
            let (request, _) = command.request();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                session.handle(command, &cancel, &mut emit)
            }));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                // The pass may have stopped halfway through updating a cache: the next run
                // recomputes everything rather than trust it.
                session.forget_caches();
                emit(Event::Error(ErrorEvent {
                    request,
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
    fn sending_to_a_busy_worker_never_blocks_and_waiting_runs_coalesce() {
        // A worker that reads nothing: its channel fills at once.
        let (tx, rx) = bounded::<Command>(2);
        let overflow = Mutex::new(Overflow::default());
        let cancel_loads = AtomicU64::new(0);
        let (done_tx, done_rx) = bounded(1);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for id in 1..=50 {
                    assert!(enqueue(&tx, &overflow, &cancel_loads, run(id)));
                    if id == 25 {
                        assert!(enqueue(&tx, &overflow, &cancel_loads, Command::Shutdown));
                    }
                }
                let _ = done_tx.send(());
            });
            // A blocking send would never get here.
            assert!(
                done_rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_ok(),
                "sending blocked on a full channel"
            );
        });
        // The channel holds the first two runs; of the rest only the newest waits, after the
        // command that came between.
        let waiting: Vec<Command> = overflow.lock().unwrap().waiting.drain(..).collect();
        assert!(
            matches!(waiting.as_slice(), [Command::Shutdown, Command::Run(r)] if r.run_id == 50)
        );
        let sent: Vec<RunId> = rx.try_iter().filter_map(|c| c.run_id()).collect();
        assert_eq!(sent, [1, 2]);
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
