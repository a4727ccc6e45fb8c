//! openraft (0.9) glue: the type configuration, the SQLite-backed log store and state machine,
//! and the member-to-member network (HTTP + JSON on the Raft listener, authenticated with the
//! cluster secret that every member receives at bootstrap or join).
//!
//! The three parts follow openraft's `raft-kv` examples: [`LogStore`] persists entries and the
//! vote, [`StateMachine`] applies committed entries to [`State`] (writing the changes to SQLite
//! in the same transaction as the applied log id), [`HttpNetworkFactory`] sends RPCs.

// openraft's StorageError is large and fixed by the trait signatures.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::model::{Event, Kind, Member};
use crate::state::{Change, Outcome, Proposal, State};
use crate::store;

openraft::declare_raft_types!(
    /// mvirt-api's Raft types: a batch of proposals per entry in, one outcome per proposal
    /// out, members addressed by `Member`.
    pub TypeConfig:
        D = Batch,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = Member,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// What one Raft log entry carries: proposals applied in order, all at the entry's log index
/// (their shared revision). The leader's [`crate::proposer::Proposer`] groups concurrent
/// proposals so that they cost one log append and one replication round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(f, "batch of {}", many.len()),
        }
    }
}
pub type MemberId = u64;
type StorageResult<T> = Result<T, StorageError<MemberId>>;

/// The state every part of the daemon reads: the materialised state, the applied revision and
/// the live event feed.
pub struct Shared {
    pub state: RwLock<State>,
    pub applied: watch::Sender<u64>,
    pub events: broadcast::Sender<Event>,
    pub db_path: PathBuf,
}

impl Shared {
    /// A read guard on the state (poisoning means a panic in apply: propagate it).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        match self.state.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        match self.state.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn applied_revision(&self) -> u64 {
        *self.applied.borrow()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// ------------------------------------------------------------------------------------ log store

/// The Raft log and vote in SQLite.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    /// The latest committed log id openraft reported, not yet written: it is a restart hint
    /// (entries up to it may be re-applied without waiting for the leader), not something a
    /// decision depends on, so it rides along with the next log append instead of costing an
    /// fsync of its own on every commit. Losing the newest value in a crash only means an
    /// older hint.
    pending_committed: Arc<Mutex<Option<String>>>,
}

impl LogStore {
    /// Opens the log that belongs to the state database at `state_db`: it lives next to it in
    /// its own file ([`store::LOG_DB_FILE`]), so log appends never wait for the state
    /// machine's transactions or checkpoints.
    pub fn open(state_db: &std::path::Path) -> Result<Self, store::StoreError> {
        let path = state_db.with_file_name(store::LOG_DB_FILE);
        Ok(Self {
            conn: Arc::new(Mutex::new(store::open_log(&path)?)),
            pending_committed: Arc::new(Mutex::new(None)),
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
        let conn = lock(&self.conn);
        let rows =
            store::log_range(&conn, start, end).map_err(|e| StorageIOError::read_logs(&e))?;
        rows.iter()
            .map(|s| serde_json::from_str(s).map_err(|e| StorageIOError::read_logs(&e).into()))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<MemberId>> = self.get_json("last_purged")?;
        let last = {
            let conn = lock(&self.conn);
            store::log_last(&conn).map_err(|e| StorageIOError::read_logs(&e))?
        };
        let last_log_id = match last {
            Some(s) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_str(&s).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
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
        let conn = lock(&self.conn);
        store::log_set_meta(&conn, "vote", &json).map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<MemberId>>> {
        self.get_json("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<MemberId>>) -> StorageResult<()> {
        let json = serde_json::to_string(&committed).map_err(|e| StorageIOError::write_logs(&e))?;
        *lock(&self.pending_committed) = Some(json);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<MemberId>>> {
        if let Some(json) = lock(&self.pending_committed).as_deref() {
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
        let mut rows = Vec::new();
        for entry in entries {
            let json = serde_json::to_string(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            rows.push((entry.log_id.index, json));
        }
        // SQLite blocks (fsync): keep it off the async worker threads. Appends stay ordered:
        // openraft calls `append` one at a time and we wait for each. (Running it in place with
        // `block_in_place` instead measured no different in the benchmark.)
        let conn = self.conn.clone();
        let committed = self.pending_committed.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = lock(&conn);
            let committed = lock(&committed).take();
            store::log_append(&mut conn, &rows, committed.as_deref())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        match result {
            Ok(()) => {
                // synchronous=FULL: the transaction is durable once commit returned.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<MemberId>) -> StorageResult<()> {
        let conn = lock(&self.conn);
        store::log_truncate(&conn, log_id.index).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<MemberId>) -> StorageResult<()> {
        let json =
            serde_json::to_string(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        let mut conn = lock(&self.conn);
        store::log_purge(&mut conn, log_id.index, &json)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------ state machine

#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    state: State,
}

/// The state machine: [`State`] in memory (shared for reads), every applied batch written to
/// SQLite with its applied log id.
pub struct StateMachine {
    conn: Arc<Mutex<Connection>>,
    shared: Arc<Shared>,
    last_applied: Option<LogId<MemberId>>,
    last_membership: StoredMembership<MemberId, Member>,
    snapshot_seq: u64,
}

impl StateMachine {
    /// Opens the state machine and loads the persisted state into `shared`.
    pub fn open(shared: Arc<Shared>) -> Result<Self, store::StoreError> {
        let conn = store::open(&shared.db_path)?;
        // Applied batches are re-derivable from the Raft log (fsynced on every append): after a
        // power loss openraft re-applies whatever the state machine lost. So its transactions
        // skip the per-commit fsync; a snapshot (written through a fully synced connection
        // before the log is purged) syncs the WAL including everything before it.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let loaded = store::sm_load(&conn)?;
        let last_applied: Option<LogId<MemberId>> = match &loaded.last_applied {
            Some(s) => serde_json::from_str(s)?,
            None => None,
        };
        let last_membership = match &loaded.last_membership {
            Some(s) => serde_json::from_str(s)?,
            None => StoredMembership::default(),
        };
        *shared.write() = loaded.state;
        shared
            .applied
            .send_replace(last_applied.map(|l| l.index).unwrap_or(0));
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            shared,
            last_applied,
            last_membership,
            snapshot_seq: 0,
        })
    }
}

/// Builds a snapshot from the state captured when the builder was created. The capture (a
/// clone) happens on the state-machine worker; encoding and writing it happen here, in the task
/// openraft spawns for the build, so applies do not wait for a whole-state JSON encoding.
pub struct SnapshotBuilder {
    db_path: PathBuf,
    state: Option<State>,
    meta: SnapshotMeta<MemberId, Member>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let meta_json = serde_json::to_string(&self.meta)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let state = self.state.take().ok_or_else(|| {
            let e = std::io::Error::other("snapshot builder used twice");
            StorageIOError::write_snapshot(None, &e)
        })?;
        let db_path = self.db_path.clone();
        // JSON encoding of the whole state and the synced write: off the async workers.
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let data = serde_json::to_vec(&SnapshotPayload { state }).map_err(|e| e.to_string())?;
            let conn = store::open(&db_path).map_err(|e| e.to_string())?;
            store::snapshot_save(&conn, &meta_json, &data).map_err(|e| e.to_string())?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e)))?;
        tracing::info!(last_log_id = ?self.meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<MemberId>>, StoredMembership<MemberId, Member>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<Outcome>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Apply under the write lock; prepare the rows there, write them after releasing it
        // (readers are not blocked by SQLite; what they see is committed in the Raft log).
        let (outcomes, rows, events, counters, last) = {
            let mut outcomes = Vec::new();
            let mut changes: Vec<(u64, Change)> = Vec::new();
            let mut state = self.shared.write();
            let mut last = self.last_applied;
            for entry in entries {
                let index = entry.log_id.index;
                last = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => outcomes.push(Vec::new()),
                    EntryPayload::Normal(batch) => {
                        let mut batch_outcomes = Vec::with_capacity(batch.0.len());
                        for proposal in &batch.0 {
                            let (outcome, c) = state.apply(index, proposal);
                            changes.extend(c.into_iter().map(|c| (index, c)));
                            batch_outcomes.push(outcome);
                        }
                        outcomes.push(batch_outcomes);
                    }
                    EntryPayload::Membership(m) => {
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        outcomes.push(Vec::new());
                    }
                }
            }
            let mut rows: std::collections::BTreeMap<(Kind, String), Option<String>> =
                std::collections::BTreeMap::new();
            let mut events = Vec::new();
            for (revision, change) in &changes {
                rows.insert(
                    (change.kind, change.id.clone()),
                    state.stored_json(change.kind, &change.id),
                );
                events.extend(change.event(*revision));
            }
            let counters = serde_json::to_string(&state.counters)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            let rows: Vec<(Kind, String, Option<String>)> =
                rows.into_iter().map(|((k, i), j)| (k, i, j)).collect();
            (outcomes, rows, events, counters, last)
        };
        let last_applied_json =
            serde_json::to_string(&last).map_err(|e| StorageIOError::write_state_machine(&e))?;
        let membership_json = serde_json::to_string(&self.last_membership)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        // SQLite blocks: keep it off the async worker threads.
        let conn = self.conn.clone();
        let events = tokio::task::spawn_blocking(move || {
            store::sm_commit(
                &mut lock(&conn),
                store::AppliedBatch {
                    rows: &rows,
                    events: &events,
                    counters: &counters,
                    last_applied: &last_applied_json,
                    last_membership: &membership_json,
                },
            )
            .map(|()| events)
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(&e))?
        .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.last_applied = last;
        for event in events {
            // No receiver is fine: nobody is watching.
            let _ = self.shared.events.send(event);
        }
        self.shared
            .applied
            .send_replace(last.map(|l| l.index).unwrap_or(0));
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let state = self.shared.read().clone();
        let snapshot_id = format!(
            "{}-{}",
            self.last_applied.map(|l| l.index).unwrap_or(0),
            self.snapshot_seq
        );
        SnapshotBuilder {
            db_path: self.shared.db_path.clone(),
            state: Some(state),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let payload: SnapshotPayload =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let last_applied_json = serde_json::to_string(&meta.last_log_id)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let membership_json = serde_json::to_string(&meta.last_membership)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let mut conn = lock(&self.conn);
        store::sm_replace(
            &mut conn,
            &payload.state,
            &last_applied_json,
            &membership_json,
        )
        .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let meta_json =
            serde_json::to_string(meta).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        store::snapshot_save(&conn, &meta_json, &data)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        drop(conn);
        *self.shared.write() = payload.state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.shared
            .applied
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let loaded = store::snapshot_load(&lock(&self.conn))
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        match loaded {
            None => Ok(None),
            Some((meta, data)) => {
                let meta: SnapshotMeta<MemberId, Member> = serde_json::from_str(&meta)
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            }
        }
    }
}

// ------------------------------------------------------------------------------------ network

/// Sends Raft RPCs as `POST http://<raft_addr>/raft/<rpc>` with a JSON body.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    pub client: reqwest::Client,
    pub secret: Arc<String>,
}

pub struct HttpConnection {
    client: reqwest::Client,
    secret: Arc<String>,
    target: MemberId,
    addr: String,
    /// Recent failures, to log an unreachable peer once instead of on every heartbeat.
    failures: VecDeque<String>,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> Self::Network {
        HttpConnection {
            client: self.client.clone(),
            secret: self.secret.clone(),
            target,
            addr: node.raft_addr.clone(),
            failures: VecDeque::new(),
        }
    }
}

impl HttpConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<MemberId, Member, E>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let url = format!("http://{}/raft/{rpc}", self.addr);
        let sent = self
            .client
            .post(&url)
            .bearer_auth(self.secret.as_str())
            .timeout(option.hard_ttl().max(Duration::from_millis(500)))
            .json(req)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if self.failures.is_empty() {
                    tracing::debug!(target_member = self.target, %url, error = %e, "raft peer unreachable");
                }
                self.failures.push_back(e.to_string());
                if self.failures.len() > 8 {
                    self.failures.pop_front();
                }
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        self.failures.clear();
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let err = std::io::Error::other(format!("{status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let result: Result<Resp, E> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MemberId>,
        RPCError<MemberId, Member, RaftError<MemberId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The openraft configuration: loopback/LAN timings; a snapshot every `snapshot_every` entries
/// (the log before it is purged, keeping a tail so that slightly lagging followers catch up
/// from the log rather than a snapshot).
pub fn config(snapshot_every: u64) -> openraft::Config {
    let snapshot_every = snapshot_every.max(10);
    openraft::Config {
        cluster_name: "mvirt".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 4).max(5),
        purge_batch_size: 64,
        // An entry is a batch of up to `proposer::MAX_BATCH` proposals: keep one AppendEntries
        // (one follower fsync) to a bounded size when a follower catches up.
        max_payload_entries: 64,
        ..Default::default()
    }
}
