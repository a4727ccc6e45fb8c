//! The state machine's SQLite writer: one thread that persists applied batches off the apply
//! path.
//!
//! Applying a committed entry changes the in-memory [`State`] (which every read serves from)
//! and hands the changed rows to this writer; the Raft core does not wait for the SQLite
//! transaction. That is safe because the state database is derived data: the Raft log holds
//! every committed entry durably, and after a crash openraft re-applies whatever the state
//! database had not written yet (from its `last_applied` up to the committed point). The log is
//! only purged up to a snapshot, and a snapshot is written by this same thread, after every
//! batch applied before it, with a synced commit — so the log never loses an entry the state
//! database still needs.
//!
//! Consecutive batches that queue up while a transaction runs are merged into the next one, so
//! under load the state database costs one transaction per burst rather than one per entry.
//! Events reach live subscribers (`/v1/events`) only after they are persisted, so a client that
//! subscribes and then reads the backlog from SQLite never misses one in between.
//!
//! A failed write is fatal for the member: the writer stops, and the next apply reports the
//! error to openraft, which shuts Raft down (as a failed synchronous write did before).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::model::{Event, Kind};
use crate::state::State;
use crate::store;
use crate::writer::Queue;

/// How many applied batches may wait for the writer before apply waits for it (backpressure).
const QUEUE: usize = 1024;

/// What one apply call changed, ready to write.
pub struct Applied {
    /// The final form of every changed row (`None` = removed), in key order.
    pub rows: Vec<(Kind, String, Option<String>)>,
    pub events: Vec<Event>,
    pub counters: String,
    pub last_applied: String,
    pub last_membership: String,
}

enum Job {
    Applied(Applied),
    /// Store a snapshot (durably) after everything queued before it.
    Snapshot {
        meta: String,
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Replace the whole state with an installed snapshot (durably).
    Replace {
        state: Box<State>,
        last_applied: String,
        last_membership: String,
        meta: String,
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle to the writer thread. Cheap to clone; the thread ends when the last handle is dropped
/// and the queue is drained.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    failed: Arc<Mutex<Option<String>>>,
    /// Dropped with the last handle: the checkpoint thread then ends.
    _checkpoint: Arc<store::Checkpointer>,
}

impl Writer {
    /// Starts the writer on `conn` (the state database); persisted events go to `events`.
    pub fn start(
        conn: Connection,
        checkpoint_conn: Connection,
        events: broadcast::Sender<Event>,
    ) -> std::io::Result<Self> {
        // The writer never checkpoints (see `store::Checkpointer`): a snapshot's synced commit
        // or the next batch never waits for one.
        let (checkpoint, gate) =
            store::Checkpointer::start(&conn, checkpoint_conn, "mvirt-api-sm-checkpoint")
                .map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let f = failed.clone();
        std::thread::Builder::new()
            .name("mvirt-api-sm-writer".into())
            .spawn(move || run(conn, gate, rx, events, f))?;
        Ok(Self {
            tx,
            failed,
            _checkpoint: Arc::new(checkpoint),
        })
    }

    fn failure(&self) -> Option<String> {
        match self.failed.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Queues an applied batch; waits only when the queue is full.
    pub async fn applied(&self, batch: Applied) -> Result<(), String> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.tx
            .send(Job::Applied(batch))
            .await
            .map_err(|_| "state writer stopped".to_string())
    }

    /// Stores a snapshot after everything queued before it, and waits until it is durable.
    pub async fn snapshot(&self, meta: String, data: Vec<u8>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.call(Job::Snapshot { meta, data, done }, rx).await
    }

    /// Replaces the state with an installed snapshot and waits until it is durable.
    pub async fn replace(
        &self,
        state: State,
        last_applied: String,
        last_membership: String,
        meta: String,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let job = Job::Replace {
            state: Box::new(state),
            last_applied,
            last_membership,
            meta,
            data,
            done,
        };
        self.call(job, rx).await
    }

    async fn call(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), String> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.tx
            .send(job)
            .await
            .map_err(|_| "state writer stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("state writer stopped".to_string()))
    }
}

/// At most this many queued batches are merged into one transaction.
const MERGE: usize = 256;

/// How long the writer lets applied batches gather before it writes them. Each transaction
/// costs a commit (every dirty page copied and checksummed into the WAL) regardless of how
/// few rows it holds; under load, one commit per ~10 ms instead of one per applied batch cut
/// the members' CPU per write. Nothing waits for this write but event subscribers (an event is
/// published once written), so it delays events by at most this much.
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

fn run(
    mut conn: Connection,
    gate: store::WriteGate,
    rx: mpsc::Receiver<Job>,
    events: broadcast::Sender<Event>,
    failed: Arc<Mutex<Option<String>>>,
) {
    let mut queue = Queue::new(rx);
    while let Some(job) = queue.take() {
        if matches!(job, Job::Applied(_)) {
            std::thread::sleep(LINGER);
        }
        let result = gate.transaction(|| match job {
            Job::Applied(first) => {
                let mut batches = vec![first];
                batches.extend(queue.merge(MERGE, |job| match job {
                    Job::Applied(b) => Ok(b),
                    other => Err(other),
                }));
                write_applied(&mut conn, batches, &events)
            }
            Job::Snapshot { meta, data, done } => {
                let r = synced(&mut conn, |c| store::snapshot_save(c, &meta, &data));
                let _ = done.send(r.clone());
                r
            }
            Job::Replace {
                state,
                last_applied,
                last_membership,
                meta,
                data,
                done,
            } => {
                let r = synced(&mut conn, |c| {
                    store::sm_replace(c, &state, &last_applied, &last_membership)?;
                    store::snapshot_save(c, &meta, &data)
                });
                let _ = done.send(r.clone());
                r
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "state database write failed; this member stops applying");
            match failed.lock() {
                Ok(mut g) => *g = Some(e),
                Err(p) => *p.into_inner() = Some(e),
            }
            queue.fail_all(fail);
            return;
        }
    }
}

fn fail(job: Job) {
    match job {
        Job::Applied(_) => {}
        Job::Snapshot { done, .. } | Job::Replace { done, .. } => {
            let _ = done.send(Err("state writer stopped after a failed write".into()));
        }
    }
}

/// Writes merged batches in one transaction, then publishes their events.
fn write_applied(
    conn: &mut Connection,
    batches: Vec<Applied>,
    events: &broadcast::Sender<Event>,
) -> Result<(), String> {
    let mut rows: BTreeMap<(Kind, String), Option<String>> = BTreeMap::new();
    let mut all_events = Vec::new();
    let mut last = None;
    for b in batches {
        for (kind, id, json) in b.rows {
            rows.insert((kind, id), json);
        }
        all_events.extend(b.events);
        last = Some((b.counters, b.last_applied, b.last_membership));
    }
    let Some((counters, last_applied, last_membership)) = last else {
        return Ok(());
    };
    let rows: Vec<(Kind, String, Option<String>)> =
        rows.into_iter().map(|((k, i), j)| (k, i, j)).collect();
    store::sm_commit(
        conn,
        store::AppliedBatch {
            rows: &rows,
            events: &all_events,
            counters: &counters,
            last_applied: &last_applied,
            last_membership: &last_membership,
        },
    )
    .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
    for event in all_events {
        // No receiver is fine: nobody is watching.
        let _ = events.send(event);
    }
    Ok(())
}

/// Runs `f` with `synchronous=FULL`, so its commit is durable (and with it everything written
/// before on this connection: a WAL sync covers all earlier frames).
fn synced(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<(), store::StoreError>,
) -> Result<(), String> {
    let run = |conn: &mut Connection| -> Result<(), store::StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")?;
        let r = f(conn);
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        r
    };
    run(conn).map_err(|e| format!("{e}: {}", source_chain(&e)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
