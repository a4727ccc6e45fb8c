//! A job's progress: published to watchers at every change (coalesced to a few per second)
//! and persisted to SQLite about once a second.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{PERSIST_EVERY, PUBLISH_EVERY};
use crate::store::{self, JobRecord, Phase};

/// A job's state, published to watchers and persisted.
pub(super) struct Progress {
    pub(super) job: JobRecord,
    pub(super) tx: watch::Sender<JobRecord>,
    pub(super) store: Arc<store::Store>,
    pub(super) last_publish: Instant,
    pub(super) last_persist: Instant,
    pub(super) phase_started: Instant,
    pub(super) phase_start_bytes: u64,
}

impl Progress {
    pub(super) fn new(
        job: JobRecord,
        tx: watch::Sender<JobRecord>,
        store: Arc<store::Store>,
    ) -> Self {
        let now = Instant::now();
        Self {
            phase_start_bytes: job.bytes_done,
            job,
            tx,
            store,
            last_publish: now,
            last_persist: now,
            phase_started: now,
        }
    }

    pub(super) fn persist(&mut self) {
        self.job.updated_at = store::now();
        if let Err(err) = self.store.update_job(&self.job) {
            tracing::warn!(job = %self.job.id, error = %mvirt_common::error::error_chain(&err), "cannot persist import progress");
        }
        self.last_persist = Instant::now();
    }

    pub(super) fn publish(&mut self) {
        self.tx.send_replace(self.job.clone());
        self.last_publish = Instant::now();
    }

    pub(super) fn set_phase(&mut self, phase: Phase, total: u64) {
        self.job.phase = phase;
        self.job.bytes_total = total;
        self.job.bytes_done = 0;
        self.job.rate_bytes_per_sec = 0;
        self.phase_started = Instant::now();
        self.phase_start_bytes = 0;
        self.persist();
        self.publish();
    }

    pub(super) fn update(&mut self, done: u64) {
        crate::metrics::import_progress(self.job.phase, done.saturating_sub(self.job.bytes_done));
        self.job.bytes_done = done;
        let elapsed = self.phase_started.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            self.job.rate_bytes_per_sec =
                (done.saturating_sub(self.phase_start_bytes) as f64 / elapsed) as u64;
        }
        if self.job.bytes_total != 0 && done > self.job.bytes_total {
            self.job.bytes_total = done;
        }
        if self.last_persist.elapsed() >= PERSIST_EVERY {
            self.persist();
        }
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        }
    }

    pub(super) fn finish(&mut self, phase: Phase, error: String) {
        crate::metrics::import_finished(phase);
        self.job.phase = phase;
        self.job.error = error;
        if phase == Phase::Completed && self.job.bytes_total == 0 {
            self.job.bytes_total = self.job.bytes_done;
        }
        self.persist();
        self.publish();
    }
}
