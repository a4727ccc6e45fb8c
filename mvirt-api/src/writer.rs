//! The receiving end that both SQLite writer threads (`raftlog.rs`, `persist.rs`) share: take
//! the next job, merge the consecutive jobs of one kind that queued up meanwhile, and — after a
//! failed write — answer everything still waiting and stop.

use tokio::sync::mpsc;

/// A writer thread's queue. A job that ends a merge is put back and comes next.
pub struct Queue<J> {
    rx: mpsc::Receiver<J>,
    next: Option<J>,
}

impl<J> Queue<J> {
    pub fn new(rx: mpsc::Receiver<J>) -> Self {
        Self { rx, next: None }
    }

    /// The next job, waiting for one; `None` once every sender is gone.
    pub fn take(&mut self) -> Option<J> {
        self.next.take().or_else(|| self.rx.blocking_recv())
    }

    /// Up to `max` more jobs already queued that `take` accepts; the first one it refuses
    /// (handed back as `Err`) is put back.
    pub fn merge<T>(&mut self, max: usize, take: impl Fn(J) -> Result<T, J>) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max {
            let Ok(job) = self.rx.try_recv() else { break };
            match take(job) {
                Ok(t) => out.push(t),
                Err(job) => {
                    self.next = Some(job);
                    break;
                }
            }
        }
        out
    }

    /// After a failed write: closes the queue and hands every job still in it to `fail`.
    pub fn fail_all(mut self, fail: impl Fn(J)) {
        self.rx.close();
        self.next.take().into_iter().for_each(&fail);
        while let Ok(job) = self.rx.try_recv() {
            fail(job);
        }
    }
}
