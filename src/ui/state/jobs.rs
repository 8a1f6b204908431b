//! The long job (training, evaluation, a corpus scan, auto-interpretation) as the window
//! shows it: progress, the live training curves, and how it ended.

use crate::worker::{JobFinished, JobId, JobOutcome, JobProgress};

/// A long job (training, evaluation) as the UI shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: JobId,
    pub title: String,
    pub fraction: f32,
    pub message: String,
    /// Training curves: (step, loss, L0, FVE, dead fraction), at most [`MAX_CURVE_POINTS`].
    pub curve: Vec<[f64; 5]>,
    pub outcome: Option<JobOutcome>,
}

/// Curve points kept for a job's live plot (every other point is dropped when full).
pub const MAX_CURVE_POINTS: usize = 1000;

impl JobView {
    pub fn new(id: JobId, title: String) -> Self {
        JobView {
            id,
            title,
            fraction: 0.0,
            message: "starting…".into(),
            curve: Vec::new(),
            outcome: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.outcome.is_none()
    }

    /// Progress of this job (others' are ignored).
    pub fn progress(&mut self, p: JobProgress) {
        if p.job_id != self.id {
            return;
        }
        self.fraction = p.fraction;
        self.message = p.message;
        if let Some(t) = p.train {
            if self.curve.len() >= MAX_CURVE_POINTS {
                // Halve the resolution: keep every other point.
                self.curve = self.curve.iter().step_by(2).copied().collect();
            }
            self.curve
                .push([t.step as f64, t.loss, t.l0, t.fve, t.dead_frac]);
        }
    }

    pub fn finished(&mut self, f: JobFinished) {
        if f.job_id == self.id {
            self.fraction = 1.0;
            self.outcome = Some(f.outcome);
        }
    }

    /// The job failed with `message`: it is over.
    pub fn failed(&mut self, message: &str) {
        if self.outcome.is_none() {
            self.outcome = Some(JobOutcome::Cancelled);
            self.message = format!("failed: {message}");
        }
    }
}
