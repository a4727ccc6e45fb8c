//! The Raft log and vote in SQLite (`<data-dir>/raft-log.db`), written by one thread.
//!
//! `append` makes the entries readable at once (an in-memory overlay, `recent`) and queues
//! them for the writer thread; the writer commits them with `synchronous=FULL` (durable when
//! the commit returns) and only then reports the flush to openraft. With the vendored
//! openraft patch the leader therefore sends AppendEntries while its own fsync runs, and
//! counts itself towards the quorum only once the flush is reported — the followers' and the
//! leader's fsyncs overlap instead of running one after the other. Appends that queue up while a
//! commit runs go into the next transaction together (one fsync for several).
//!
//! Every other write (vote, truncate, purge) goes through the same queue and is awaited, so the
//! order openraft issues them in is the order they reach the disk.
//!
//! The overlay keeps the newest [`RECENT`] entries after they are written, too: replication
//! and the state machine read entries right after they were appended, and serving them from
//! memory spares every member a SQLite read and a JSON decode per entry.

// openraft's StorageError is large and fixed by the trait signatures.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rusqlite::Connection;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::raft::{MemberId, TypeConfig};
use crate::store;
use crate::writer::Queue;

type StorageResult<T> = Result<T, StorageError<MemberId>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// How many jobs may wait for the writer before `append` waits for it (backpressure).
const QUEUE: usize = 1024;

/// At most this many queued appends are committed in one transaction.
const MERGE: usize = 64;

/// Written entries kept in the overlay (only the newest; older ones are read from SQLite).
const RECENT: usize = 1024;

/// The committed hint rides along with an append at most this often. Written with every
/// append, its row's page was about 4 KiB of each ~10 KiB append (WAL frames are whole pages),
/// and every byte of an append is on the fsync everybody waits for. A restart then re-applies
/// up to a second of committed entries more slowly (as the leader confirms them), which is all
/// an older hint costs.
const COMMITTED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A write other than an append (vote, truncate, purge).
type WriteOp = Box<dyn FnOnce(&mut Connection) -> Result<(), store::StoreError> + Send>;

enum Job {
    Append {
        rows: Vec<(u64, String)>,
        committed: Option<String>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Any other write, run in queue order; `done` gets its result.
    Other {
        op: WriteOp,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The latest committed log id openraft reported and not yet written, and when a hint last rode
/// along with an append (see [`COMMITTED_EVERY`]).
struct CommittedHint {
    newest: Option<String>,
    sent_at: std::time::Instant,
}

/// Entries appended but not yet committed to SQLite, and the newest [`RECENT`] committed
/// ones, by index.
type Recent = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

/// The Raft log and vote. Clones share the writer and the overlay (openraft's log readers are
/// clones).
#[derive(Clone)]
pub struct LogStore {
    /// Read connection (WAL: readers do not wait for the writer's fsync).
    conn: Arc<Mutex<Connection>>,
    tx: mpsc::Sender<Job>,
    recent: Recent,
    /// The latest committed log id openraft reported, not yet written: it is a restart hint
    /// (entries up to it may be re-applied without waiting for the leader), not something a
    /// decision depends on, so it rides along with a log append (at most every
    /// [`COMMITTED_EVERY`]) instead of costing an fsync of its own on every commit. Losing the
    /// newest value in a crash only means an older hint.
    committed: Arc<Mutex<CommittedHint>>,
    failed: Arc<Mutex<Option<String>>>,
    /// Dropped with the last clone: the checkpoint thread then ends.
    _checkpoint: Arc<store::Checkpointer>,
}

impl LogStore {
    /// Opens the log that belongs to the state database at `state_db`: it lives next to it in
    /// its own file ([`store::LOG_DB_FILE`]), so log appends never wait for the state
    /// machine's transactions or checkpoints.
    pub fn open(state_db: &std::path::Path) -> Result<Self, store::StoreError> {
        let path = state_db.with_file_name(store::LOG_DB_FILE);
        let write_conn = store::open_log(&path)?;
        // The writer never checkpoints (see `store::Checkpointer`): appends never wait for one.
        let (checkpoint, gate) = store::Checkpointer::start(
            &write_conn,
            store::open_log(&path)?,
            "mvirt-api-log-checkpoint",
        )?;
        let read_conn = store::open_log(&path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let recent: Recent = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(Mutex::new(None));
        let (p, f) = (recent.clone(), failed.clone());
        std::thread::Builder::new()
            .name("mvirt-api-log-writer".into())
            .spawn(move || run(write_conn, gate, rx, p, f))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(read_conn)),
            tx,
            recent,
            committed: Arc::new(Mutex::new(CommittedHint {
                newest: None,
                sent_at: std::time::Instant::now(),
            })),
            failed,
            _checkpoint: Arc::new(checkpoint),
        })
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> StorageResult<Option<T>> {
        let conn = lock(&self.conn);
        let raw = store::log_get_meta(&conn, key).map_err(|e| StorageIOError::read_logs(&e))?;
        match raw {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StorageIOError::read_logs(&e).into()),
        }
    }

    fn check(&self) -> Result<(), std::io::Error> {
        match lock(&self.failed).as_ref() {
            Some(e) => Err(std::io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    /// Runs `op` on the writer after everything queued before it and waits for it.
    async fn write(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<(), store::StoreError> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        self.check()?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Other {
                op: Box::new(op),
                done,
            })
            .await
            .map_err(|_| std::io::Error::other("log writer stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err("log writer stopped".into()))
            .map_err(std::io::Error::other)
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = range_to_bounds(&range);
        // The overlay first, then SQLite: the writer removes an entry from the overlay only
        // after its commit, so every appended entry is in at least one of the two reads.
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = lock(&self.recent)
            .range(start..end)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        if end.checked_sub(start) == Some(out.len() as u64) {
            // All of it from memory (the usual case: replication and apply read new entries).
            return Ok(out.into_values().collect());
        }
        let rows = {
            let conn = lock(&self.conn);
            store::log_range(&conn, start, end).map_err(|e| StorageIOError::read_logs(&e))?
        };
        for s in rows {
            let entry: Entry<TypeConfig> =
                serde_json::from_str(&s).map_err(|e| StorageIOError::read_logs(&e))?;
            // An overlay entry is newer than a stored one at the same index.
            out.entry(entry.log_id.index).or_insert(entry);
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<MemberId>> = self.get_json("last_purged")?;
        let pending_last = lock(&self.recent).values().next_back().map(|e| e.log_id);
        let stored_last = {
            let conn = lock(&self.conn);
            match store::log_last(&conn).map_err(|e| StorageIOError::read_logs(&e))? {
                Some(s) => {
                    let entry: Entry<TypeConfig> =
                        serde_json::from_str(&s).map_err(|e| StorageIOError::read_logs(&e))?;
                    Some(entry.log_id)
                }
                None => None,
            }
        };
        let last_log_id = pending_last.max(stored_last).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MemberId>) -> StorageResult<()> {
        let json = serde_json::to_string(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.write(move |c| store::log_set_meta(c, "vote", &json))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    /// The stored vote, always as *uncommitted*. openraft restores the leadership of a member
    /// whose stored vote is its own committed one, in the same term. Our leader replicates
    /// before its own append is on disk (the vendored patch), so after a crash its followers
    /// may hold entries it lost, and it would write other entries under the same log ids.
    /// Uncommitted, the vote still forbids voting twice in its term, and a restarted leader
    /// campaigns in a new term instead (found by `tests/membership_chaos.rs`).
    async fn read_vote(&mut self) -> StorageResult<Option<Vote<MemberId>>> {
        let vote: Option<Vote<MemberId>> = self.get_json("vote")?;
        Ok(vote.map(|mut vote| {
            vote.committed = false;
            vote
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId<MemberId>>) -> StorageResult<()> {
        let json = serde_json::to_string(&committed).map_err(|e| StorageIOError::write_logs(&e))?;
        crate::metrics::committed(committed.as_ref().map(|c| c.index));
        lock(&self.committed).newest = Some(json);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<MemberId>>> {
        if let Some(json) = lock(&self.committed).newest.as_deref() {
            return serde_json::from_str::<Option<LogId<MemberId>>>(json)
                .map_err(|e| StorageIOError::read_logs(&e).into());
        }
        Ok(self
            .get_json::<Option<LogId<MemberId>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.check().map_err(|e| StorageIOError::write_logs(&e))?;
        let mut rows = Vec::new();
        {
            let mut recent = lock(&self.recent);
            for entry in entries {
                let json =
                    serde_json::to_string(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
                rows.push((entry.log_id.index, json));
                recent.insert(entry.log_id.index, entry);
            }
        }
        let committed = {
            let mut hint = lock(&self.committed);
            if hint.sent_at.elapsed() >= COMMITTED_EVERY {
                hint.sent_at = std::time::Instant::now();
                hint.newest.take()
            } else {
                None
            }
        };
        self.tx
            .send(Job::Append {
                rows,
                committed,
                callback,
            })
            .await
            .map_err(|_| {
                StorageIOError::write_logs(&std::io::Error::other("log writer stopped")).into()
            })
    }

    async fn truncate(&mut self, log_id: LogId<MemberId>) -> StorageResult<()> {
        let from = log_id.index;
        self.write(move |c| store::log_truncate(c, from))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        lock(&self.recent).retain(|i, _| *i < from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<MemberId>) -> StorageResult<()> {
        let json =
            serde_json::to_string(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        let upto = log_id.index;
        self.write(move |c| store::log_purge(c, upto, &json))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        lock(&self.recent).retain(|i, _| *i > upto);
        Ok(())
    }
}

fn run(
    mut conn: Connection,
    gate: store::WriteGate,
    rx: mpsc::Receiver<Job>,
    recent: Recent,
    failed: Arc<Mutex<Option<String>>>,
) {
    let mut queue = Queue::new(rx);
    while let Some(job) = queue.take() {
        let result = gate.transaction(|| match job {
            Job::Append {
                rows,
                committed,
                callback,
            } => {
                let mut all = rows;
                let mut hint = committed;
                let mut callbacks = vec![callback];
                let more = queue.merge(MERGE, |job| match job {
                    Job::Append {
                        rows,
                        committed,
                        callback,
                    } => Ok((rows, committed, callback)),
                    other => Err(other),
                });
                for (rows, committed, callback) in more {
                    all.extend(rows);
                    hint = committed.or(hint);
                    callbacks.push(callback);
                }
                // synchronous=FULL: durable once commit returned.
                let since = std::time::Instant::now();
                let r =
                    store::log_append(&mut conn, &all, hint.as_deref()).map_err(|e| e.to_string());
                crate::metrics::log_appended(all.len(), since.elapsed());
                if let (Ok(()), Some(written)) = (&r, all.iter().map(|(i, _)| *i).max()) {
                    // Keep the newest RECENT entries; never drop one not yet written.
                    let mut recent = lock(&recent);
                    while recent.len() > RECENT {
                        match recent.first_key_value() {
                            Some((&first, _)) if first <= written => recent.remove(&first),
                            _ => break,
                        };
                    }
                }
                for cb in callbacks {
                    cb.log_io_completed(r.clone().map_err(std::io::Error::other));
                }
                r
            }
            Job::Other { op, done } => {
                let r = op(&mut conn).map_err(|e| e.to_string());
                let _ = done.send(r.clone());
                r
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "Raft log write failed; this member stops");
            *lock(&failed) = Some(e);
            queue.fail_all(fail);
            return;
        }
    }
}

fn fail(job: Job) {
    let msg = "Raft log writer stopped after a failed write";
    match job {
        Job::Append { callback, .. } => {
            callback.log_io_completed(Err(std::io::Error::other(msg)));
        }
        Job::Other { done, .. } => {
            let _ = done.send(Err(msg.into()));
        }
    }
}
