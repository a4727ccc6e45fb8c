//! Group commit on the leader: concurrent proposals are coalesced into one Raft entry.
//!
//! Every `client_write` is one log entry, with its own trip through the Raft core, the log
//! writer and the replication streams. The [`Proposer`] queues proposals and hands them to
//! Raft as one [`Batch`] per log entry: while [`MAX_IN_FLIGHT`] batches are on their way
//! (appended, replicated to a majority, fsynced there, applied), the proposals that arrive
//! meanwhile wait and then go together in the next one. A lone write is proposed at once, so a
//! single client pays no extra latency. The outcomes come straight from the state machine
//! (`Shared::waiters`, keyed by the batch's random id) rather than back through the Raft core.
//!
//! Durability is unchanged: a proposal is acknowledged only with the outcome of its applied
//! entry, which is committed only once it is durable on a majority. Every proposal of a batch
//! shares the entry's log index as its revision and is applied in queue order.

use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::{Batch, Raft, Shared};
use crate::state::{Outcome, Proposal};

/// At most this many proposals go into one Raft entry.
pub const MAX_BATCH: usize = 256;
/// At most this many batches are in flight at once (later ones are appended and replicated
/// while earlier ones wait for their quorum; the leader does not wait for its own fsync before
/// replicating). Measured with the write benchmark: 2 → 8 raised 16 clients from ~0.6× to
/// ~0.75× of etcd (quick runs); 32 was worse than 8 at 16 and 128 clients (smaller batches).
pub const MAX_IN_FLIGHT: usize = 8;

/// Why a proposal was not applied.
#[derive(Debug, Clone)]
pub enum WriteFailure {
    /// This member is not (or no longer) the leader and the entry was not appended: safe to
    /// retry on the new leader. The proposal comes back for that (the caller hands it over
    /// rather than keep a copy of every write).
    NotLeader(Box<Proposal>),
    /// Raft failed after the entry may have been appended: the outcome is unknown.
    Unknown(String),
}

type Reply = oneshot::Sender<Result<Outcome, WriteFailure>>;

/// The leader-side write queue. Cheap to share; the background task ends when the last
/// `Proposer` is dropped.
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Proposal, Reply)>,
}

impl Proposer {
    /// Starts the batching task (needs a Tokio runtime).
    pub fn start(raft: Raft, shared: Arc<Shared>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, shared, rx));
        Self { tx }
    }

    /// Proposes through Raft on this member and waits for the applied outcome.
    pub async fn write(&self, proposal: Proposal) -> Result<Outcome, WriteFailure> {
        let _in_flight = crate::metrics::InFlight::start();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((proposal, reply))
            .map_err(|_| WriteFailure::Unknown("raft is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(WriteFailure::Unknown("raft is shutting down".into())))
    }
}

async fn run(raft: Raft, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(Proposal, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Wait for a free slot first: whatever queues up meanwhile joins the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut proposals = vec![first.0];
        let mut replies = vec![first.1];
        while proposals.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((p, r)) => {
                    proposals.push(p);
                    replies.push(r);
                }
                Err(_) => break,
            }
        }
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !waiters(&shared).contains_key(&id) {
                break id;
            }
        };
        // The state machine hands the outcomes straight to the callers as soon as it applied
        // the entry (`Shared::waiters`) and frees the in-flight slot; openraft's own response
        // comes a few hops later and is only used if that did not happen.
        let waiting = Arc::new(std::sync::Mutex::new(Some((replies, permit))));
        let from_apply = waiting.clone();
        waiters(&shared).insert(
            id,
            Box::new(move |outcomes| {
                if let Some((replies, _permit)) = take(&from_apply) {
                    deliver(replies, Ok(outcomes), &[]);
                }
            }),
        );
        // Handed to the Raft core from here (no task in between); a task waits for openraft's
        // response.
        let proposals: crate::raft::Proposals = proposals.into();
        // Shared, not copied: only a refused batch hands its proposals back.
        let kept = proposals.clone();
        let response = raft.client_write_ff(Batch { id, proposals }).await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = match response {
                Ok(rx) => match rx.await {
                    Ok(Ok(resp)) => Ok(resp.data),
                    Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(NotLeader),
                    Ok(Err(e)) => Err(e.to_string().into()),
                    Err(_) => Err(String::from("raft is shutting down").into()),
                },
                Err(fatal) => Err(fatal.to_string().into()),
            };
            waiters(&shared).remove(&id);
            if let Some((replies, _permit)) = take(&waiting) {
                deliver(replies, result, &kept);
            }
        });
    }
}

type Waiting = std::sync::Mutex<Option<(Vec<Reply>, tokio::sync::OwnedSemaphorePermit)>>;

fn take(w: &Waiting) -> Option<(Vec<Reply>, tokio::sync::OwnedSemaphorePermit)> {
    match w.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

/// Why a batch was not applied (a [`WriteFailure`] without the proposals).
enum BatchFailure {
    NotLeader,
    Unknown(String),
}
use BatchFailure::NotLeader;

impl From<String> for BatchFailure {
    fn from(e: String) -> Self {
        BatchFailure::Unknown(e)
    }
}

/// Answers each proposer of a batch with its outcome (or the batch's failure; a proposer whose
/// batch went to a member that is not the leader gets its proposal back from `proposals`).
fn deliver(
    replies: Vec<Reply>,
    result: Result<Vec<Outcome>, BatchFailure>,
    proposals: &[Proposal],
) {
    match result {
        Ok(outcomes) if outcomes.len() == replies.len() => {
            for (r, o) in replies.into_iter().zip(outcomes) {
                // The caller may have gone away (client disconnected): fine.
                let _ = r.send(Ok(o));
            }
        }
        Ok(outcomes) => {
            let msg = format!(
                "raft applied {} outcomes for a batch of {}",
                outcomes.len(),
                replies.len()
            );
            tracing::error!("{msg}");
            for r in replies {
                let _ = r.send(Err(WriteFailure::Unknown(msg.clone())));
            }
        }
        Err(BatchFailure::NotLeader) => {
            for (i, r) in replies.into_iter().enumerate() {
                let failure = match proposals.get(i) {
                    Some(p) => WriteFailure::NotLeader(Box::new(p.clone())),
                    None => WriteFailure::Unknown("raft refused a batch it was not given".into()),
                };
                let _ = r.send(Err(failure));
            }
        }
        Err(BatchFailure::Unknown(e)) => {
            for r in replies {
                let _ = r.send(Err(WriteFailure::Unknown(e.clone())));
            }
        }
    }
}

fn waiters(shared: &Shared) -> std::sync::MutexGuard<'_, crate::raft::WaiterMap> {
    match shared.waiters.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
