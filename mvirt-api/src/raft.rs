//! openraft (0.9) glue: the type configuration, the SQLite-backed log store and state machine,
//! and the member-to-member network (HTTP + JSON on the Raft listener, authenticated with the
//! cluster secret that every member receives at bootstrap or join).
//!
//! The three parts follow openraft's `raft-kv` examples: [`LogStore`] (`raftlog.rs`) persists
//! entries and the vote, [`StateMachine`] applies committed entries to [`State`] (its writer
//! thread, `persist.rs`, writes the changes to SQLite in one transaction with the applied log
//! id), [`HttpNetworkFactory`] sends RPCs.

// openraft's StorageError is large and fixed by the trait signatures.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::Cursor;
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
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::model::{Event, Kind, Member};
use crate::state::{Change, Outcome, Proposal, State};
use crate::{persist, store};

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
///
/// `id` is a random number the leader's proposer picked: when a member applies the entry it
/// hands the outcomes straight to a proposer waiting for that id ([`Shared::waiters`]), which
/// saves the hops back through the Raft core. 0 = nobody waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub id: u64,
    pub proposals: Proposals,
}

/// The proposals of a [`Batch`], shared (`Arc`): openraft clones an entry for every read of the
/// log (replication to each follower, apply), and a deep copy of every proposal's objects was
/// ~3 % of the leader's CPU in the write benchmark.
///
/// On the wire and in the log they are the plain JSON list, and that JSON is made once: the
/// leader encodes it for its own log and reuses it for every follower's AppendEntries, and a
/// follower keeps the text it received (it decoded the proposals from that very text) for its
/// log. Before, each batch was encoded three times on the leader (log and two followers) and
/// once more on each follower.
#[derive(Clone, Default)]
pub struct Proposals {
    list: Arc<Vec<Proposal>>,
    /// `list` as JSON: made on first use, or kept from the text it was decoded from.
    json: Arc<std::sync::OnceLock<Box<serde_json::value::RawValue>>>,
}

impl From<Vec<Proposal>> for Proposals {
    fn from(list: Vec<Proposal>) -> Self {
        Proposals {
            list: Arc::new(list),
            json: Arc::default(),
        }
    }
}

impl Proposals {
    /// The length of their JSON if it is made already.
    pub fn encoded_len(&self) -> Option<usize> {
        self.json.get().map(|json| json.get().len())
    }
}

impl std::ops::Deref for Proposals {
    type Target = [Proposal];

    fn deref(&self) -> &[Proposal] {
        &self.list
    }
}

impl std::fmt::Debug for Proposals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.list.fmt(f)
    }
}

impl PartialEq for Proposals {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Serialize for Proposals {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = match self.json.get() {
            Some(json) => json,
            None => {
                let json = serde_json::value::to_raw_value(self.list.as_slice())
                    .map_err(serde::ser::Error::custom)?;
                self.json.get_or_init(|| json)
            }
        };
        json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Proposals {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let list: Vec<Proposal> =
            serde_json::from_str(json.get()).map_err(serde::de::Error::custom)?;
        Ok(Proposals {
            list: Arc::new(list),
            json: Arc::new(json.into()),
        })
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.proposals[..] {
            [one] => write!(f, "{one}"),
            many => write!(f, "batch of {}", many.len()),
        }
    }
}
pub type MemberId = u64;
pub use crate::raftlog::LogStore;
type StorageResult<T> = Result<T, StorageError<MemberId>>;

/// The state every part of the daemon reads: the materialised state, the applied revision and
/// the live event feed.
pub struct Shared {
    pub state: RwLock<State>,
    pub applied: watch::Sender<u64>,
    pub events: broadcast::Sender<Event>,
    pub db_path: PathBuf,
    /// Proposers waiting for the outcomes of their batch, by [`Batch::id`].
    pub waiters: Waiters,
}

/// See [`Shared::waiters`].
pub type Waiters = Mutex<WaiterMap>;
/// Per batch id, what hands the applied outcomes (in proposal order) to their proposers.
pub type WaiterMap = std::collections::HashMap<u64, Box<dyn FnOnce(Vec<Outcome>) + Send>>;

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

// ------------------------------------------------------------------------------ state machine

/// A snapshot's data (also written by `backup::finish_restore`).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub(crate) state: State,
}

/// The state machine: [`State`] in memory (shared for reads), every applied batch written to
/// SQLite with its applied log id.
pub struct StateMachine {
    /// A read connection (the current snapshot); all writes go through `writer`.
    conn: Arc<Mutex<Connection>>,
    writer: persist::Writer,
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
        // skip the per-commit fsync and are written by a background thread
        // ([`persist::Writer`]); a snapshot (a synced commit on that thread, after every batch
        // before it, before the log is purged) syncs the WAL including everything before it.
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
        let writer =
            persist::Writer::start(conn, store::open(&shared.db_path)?, shared.events.clone())?;
        Ok(Self {
            conn: Arc::new(Mutex::new(store::open(&shared.db_path)?)),
            writer,
            shared,
            last_applied,
            last_membership,
            snapshot_seq: 0,
        })
    }
}

/// Runs CPU-heavy synchronous work (applying a batch of hundreds of commands, cloning the
/// whole state for a snapshot: milliseconds) without holding up the async workers: on a
/// multi-thread runtime the current worker hands its other tasks to a new one first
/// (`block_in_place`), so REST handlers, the Raft core and the replication streams keep
/// running meanwhile. On a current-thread runtime (in-process tests) it just runs.
fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Applies of at most this many proposals run on the async worker itself: one proposal takes
/// 10–20 µs, less than `block_in_place`'s hand-over of the worker to another thread (a thread
/// wake-up each way), which at one client was a large part of every write's latency.
const APPLY_INLINE_MAX: usize = 16;

/// Builds a snapshot from the state captured when the builder was created. The capture (a
/// clone) happens on the state-machine worker; encoding and writing it happen here, in the task
/// openraft spawns for the build, so applies do not wait for a whole-state JSON encoding.
pub struct SnapshotBuilder {
    writer: persist::Writer,
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
        // JSON encoding of the whole state: off the async workers. The synced write goes
        // through the state writer, after every batch applied before the capture.
        let data =
            tokio::task::spawn_blocking(move || serde_json::to_vec(&SnapshotPayload { state }))
                .await
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.writer
            .snapshot(meta_json, data.clone())
            .await
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let proposals: usize = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(batch) => batch.proposals.len(),
                _ => 1,
            })
            .sum();
        let apply = || {
            let mut outcomes = Vec::new();
            let mut ready = Vec::new();
            let mut changes: Vec<(u64, Change)> = Vec::new();
            let mut member_events: Vec<Event> = Vec::new();
            let mut state = self.shared.write();
            let mut last = self.last_applied;
            for entry in entries {
                let index = entry.log_id.index;
                last = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => outcomes.push(Vec::new()),
                    EntryPayload::Normal(batch) => {
                        let mut batch_outcomes = Vec::with_capacity(batch.proposals.len());
                        for proposal in batch.proposals.iter() {
                            let (outcome, c) = state.apply(index, proposal);
                            changes.extend(c.into_iter().map(|c| (index, c)));
                            batch_outcomes.push(outcome);
                        }
                        // A proposer waiting for this batch (on the leader) gets the outcomes
                        // themselves, once the rows are handed to the writer; openraft's own
                        // response then carries none (the proposer uses it only when no
                        // waiter was there, and a failed apply answers with the error).
                        let waiter = (batch.id != 0)
                            .then(|| lock(&self.shared.waiters).remove(&batch.id))
                            .flatten();
                        match waiter {
                            Some(deliver) => {
                                ready.push((deliver, batch_outcomes));
                                outcomes.push(Vec::new());
                            }
                            None => outcomes.push(batch_outcomes),
                        }
                    }
                    EntryPayload::Membership(m) => {
                        member_events.extend(membership_events(
                            index,
                            self.last_membership.membership(),
                            m,
                        ));
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        outcomes.push(Vec::new());
                    }
                }
            }
            // A row is the object after its last change in these entries: that change's JSON
            // (every mutation is followed by its change, so it is the final form), except for
            // nodes and pods, whose stored form differs from the view their events show (a
            // node's relay secret, a pod's registry secrets), and VMs while a migration's grant
            // token is stored.
            let mut rows: std::collections::BTreeMap<(Kind, String), Option<String>> =
                std::collections::BTreeMap::new();
            let mut events = Vec::new();
            for (revision, change) in &changes {
                events.extend(change.event(*revision));
            }
            if !member_events.is_empty() {
                // In log order with the others (a sort by revision keeps each entry's own order).
                events.extend(member_events);
                events.sort_by_key(|e| e.revision);
            }
            for (_, change) in changes.into_iter().rev() {
                let key = (change.kind, change.id);
                if rows.contains_key(&key) {
                    continue;
                }
                let secret = key.0 == Kind::Vm && state.vm_holds_secret(&key.1);
                let json = match (key.0, change.object) {
                    (Kind::Node | Kind::Pod, _) | (_, None) => state.stored_json(key.0, &key.1),
                    _ if secret => state.stored_json(key.0, &key.1),
                    (_, Some(object)) => Some(String::from(object)),
                };
                debug_assert_eq!(
                    json,
                    state.stored_json(key.0, &key.1),
                    "{key:?} changed after its last change was recorded"
                );
                rows.insert(key, json);
            }
            let counters = serde_json::to_string(&state.counters)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            let rows: Vec<(Kind, String, Option<String>)> =
                rows.into_iter().map(|((k, i), j)| (k, i, j)).collect();
            Ok::<_, StorageError<MemberId>>((outcomes, rows, events, counters, last, ready))
        };
        let (outcomes, rows, events, counters, last, ready) = if proposals <= APPLY_INLINE_MAX {
            apply()
        } else {
            off_the_workers(apply)
        }?;
        let last_applied_json =
            serde_json::to_string(&last).map_err(|e| StorageIOError::write_state_machine(&e))?;
        let membership_json = serde_json::to_string(&self.last_membership)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        // Persisted by the writer thread; openraft does not wait for the transaction (see
        // `persist`). Events are published once written.
        self.writer
            .applied(persist::Applied {
                rows,
                events,
                counters,
                last_applied: last_applied_json,
                last_membership: membership_json,
            })
            .await
            .map_err(|e| StorageIOError::write_state_machine(&std::io::Error::other(e)))?;
        self.last_applied = last;
        self.shared
            .applied
            .send_replace(last.map(|l| l.index).unwrap_or(0));
        for (deliver, o) in ready {
            deliver(o);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let state = off_the_workers(|| self.shared.read().clone());
        let snapshot_id = format!(
            "{}-{}",
            self.last_applied.map(|l| l.index).unwrap_or(0),
            self.snapshot_seq
        );
        SnapshotBuilder {
            writer: self.writer.clone(),
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
        let meta_json =
            serde_json::to_string(meta).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.writer
            .replace(
                payload.state.clone(),
                last_applied_json,
                membership_json,
                meta_json,
                data,
            )
            .await
            .map_err(|e| StorageIOError::write_state_machine(&std::io::Error::other(e)))?;
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

/// Names the member a Raft RPC is meant for; a member refuses RPCs meant for another (an
/// address that reaches the wrong member, e.g. its own, never feeds it a stranger's messages).
pub const TARGET_HEADER: &str = "x-mvirt-raft-target";

/// Sends Raft RPCs as `POST https://<raft_addr>/raft/<rpc>` with a JSON body (over mutual TLS:
/// `client` presents the member certificate; `http` with `--insecure-plaintext`).
#[derive(Clone)]
pub struct HttpNetworkFactory {
    pub client: reqwest::Client,
    pub secret: Arc<String>,
    /// `https` or `http`.
    pub scheme: &'static str,
}

pub struct HttpConnection {
    client: reqwest::Client,
    secret: Arc<String>,
    scheme: &'static str,
    target: MemberId,
    addr: String,
    /// The AppendEntries stream to this member (opened on first use, dropped on any error).
    /// In a mutex only because openraft wants the connection `Sync`; `&mut self` reaches it
    /// with `get_mut`, without locking.
    stream: tokio::sync::Mutex<Option<reqwest::Upgraded>>,
    /// A call on `stream` has started and not read its answer yet. openraft drops an
    /// AppendEntries future at its own timeout (the heartbeat interval), which can fall between
    /// our frame going out and the answer coming back; that answer would then be read as the
    /// answer to the next request, and the leader would take it for a follower whose log went
    /// backwards (openraft panics on that). So a call that finds this set drops the stream first.
    stream_busy: bool,
    /// The member does not offer the stream (an older build): AppendEntries go by HTTP POST.
    no_stream: bool,
    /// Recent failures, to log an unreachable peer once instead of on every heartbeat.
    failures: VecDeque<String>,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> Self::Network {
        HttpConnection {
            client: self.client.clone(),
            secret: self.secret.clone(),
            scheme: self.scheme,
            target,
            addr: node.raft_addr.clone(),
            stream: tokio::sync::Mutex::new(None),
            stream_busy: false,
            no_stream: false,
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
        let url = format!("{}://{}/raft/{rpc}", self.scheme, self.addr);
        let sent = self
            .client
            .post(&url)
            .bearer_auth(self.secret.as_str())
            .header(TARGET_HEADER, self.target)
            .timeout(option.hard_ttl().max(Duration::from_millis(500)))
            .json(req)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.note_failure(format!("{url}: {e}"));
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

/// Why the AppendEntries stream could not carry a call.
enum StreamError {
    NotOffered,
    Io(std::io::Error),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Io(e)
    }
}

/// The protocol name of the AppendEntries stream (`Upgrade:` header on `GET /raft/stream`).
pub const STREAM_PROTOCOL: &str = "mvirt-raft-append";

/// The largest AppendEntries frame either side accepts (also the body limit of
/// `POST /raft/append`, [`crate::raftapi::APPEND_BODY_LIMIT`]).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Writes one frame: a big-endian u32 length, then the bytes.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(body);
    send_frame(w, seal_frame(frame)?).await
}

/// `value`'s JSON as one frame, encoded straight after the length's place (no second copy of
/// the body, as [`write_frame`] makes). `size_hint`: the expected JSON length, so that a large
/// frame (an AppendEntries of many batches) is not grown and copied step by step.
pub fn encode_frame<T: Serialize>(value: &T, size_hint: usize) -> std::io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(4 + size_hint.min(MAX_FRAME));
    frame.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut frame, value).map_err(std::io::Error::other)?;
    seal_frame(frame)
}

/// Fills in the length of a frame whose first 4 bytes were left for it.
fn seal_frame(mut frame: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let len = u32::try_from(frame.len() - 4)
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("frame too large"))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Sends a frame made by [`encode_frame`].
pub async fn send_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: Vec<u8>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(&frame).await?;
    w.flush().await
}

/// The JSON length to expect for `rpc`: its batches' proposals as far as they are encoded
/// already (the leader's own log append usually encoded them first), plus room for the rest.
pub fn append_size_hint(rpc: &AppendEntriesRequest<TypeConfig>) -> usize {
    rpc.entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(batch) => 128 + batch.proposals.encoded_len().unwrap_or(0),
            _ => 256,
        })
        .sum::<usize>()
        + 256
}

/// Reads one frame; `None` on a clean end of stream before it.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    // Read into spare capacity: no zeroing of a buffer that is overwritten at once. At most
    // 1 MiB is reserved up front; a larger frame grows as its bytes arrive, so a declared
    // length alone never reserves up to MAX_FRAME.
    let mut body = Vec::with_capacity(len.min(1 << 20));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut off after {} of {len} bytes", body.len()),
        ));
    }
    Ok(Some(body))
}

impl HttpConnection {
    fn note_failure(&mut self, e: String) {
        if self.failures.is_empty() {
            tracing::debug!(target_member = self.target, error = %e, "raft peer unreachable");
        }
        self.failures.push_back(e);
        if self.failures.len() > 8 {
            self.failures.pop_front();
        }
    }

    /// AppendEntries over the member's stream (opened first if needed): one frame out, one
    /// frame back — no HTTP request per call, no connection-pool hop.
    async fn append_on_stream(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>>, StreamError> {
        if self.stream_busy {
            // The previous call was dropped before it read its answer: start afresh.
            *self.stream.get_mut() = None;
            self.stream_busy = false;
        }
        if self.stream.get_mut().is_none() {
            let url = format!("{}://{}/raft/stream", self.scheme, self.addr);
            let resp = self
                .client
                .get(&url)
                .bearer_auth(self.secret.as_str())
                .header(TARGET_HEADER, self.target)
                .header(reqwest::header::CONNECTION, "upgrade")
                .header(reqwest::header::UPGRADE, STREAM_PROTOCOL)
                .send()
                .await
                .map_err(std::io::Error::other)?;
            match resp.status() {
                reqwest::StatusCode::SWITCHING_PROTOCOLS => {}
                reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                    return Err(StreamError::NotOffered)
                }
                other => {
                    return Err(StreamError::Io(std::io::Error::other(format!(
                        "stream refused: {other}"
                    ))))
                }
            }
            *self.stream.get_mut() = Some(resp.upgrade().await.map_err(std::io::Error::other)?);
        }
        let Some(stream) = self.stream.get_mut().as_mut() else {
            return Err(StreamError::Io(std::io::Error::other("no stream")));
        };
        self.stream_busy = true;
        send_frame(stream, encode_frame(rpc, append_size_hint(rpc))?).await?;
        let frame = read_frame(stream).await?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream closed")
        })?;
        self.stream_busy = false;
        Ok(serde_json::from_slice(&frame).map_err(std::io::Error::other)?)
    }
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        if self.no_stream {
            return self.call("append", &rpc, &option).await;
        }
        let ttl = option.hard_ttl().max(Duration::from_millis(500));
        match tokio::time::timeout(ttl, self.append_on_stream(&rpc)).await {
            Ok(Ok(result)) => {
                self.failures.clear();
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Err(StreamError::NotOffered)) => {
                self.no_stream = true;
                self.call("append", &rpc, &option).await
            }
            Ok(Err(StreamError::Io(e))) => {
                *self.stream.get_mut() = None;
                self.note_failure(e.to_string());
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(_) => {
                // The frame may be half written: this stream is done.
                *self.stream.get_mut() = None;
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "append timed out");
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
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

/// The events one membership log entry makes, against the membership before it: a member in
/// the new set only → `member.joined` (as a learner: voters are added once caught up), gone →
/// `member.removed` (object `null`), learner ↔ voter → `member.updated`. The object is
/// `{"id","api_url","raft_addr","role"}` with role `voter` or `learner` (who leads is not a
/// membership change: `/v1/controlplane` tells). A joint configuration counts its members of
/// either side as voters, so a change through joint consensus makes its events once. Applied
/// on every member at the entry's log index, like every other event; members belong to no
/// project.
pub fn membership_events(
    revision: u64,
    old: &openraft::Membership<MemberId, Member>,
    new: &openraft::Membership<MemberId, Member>,
) -> Vec<Event> {
    let role = |m: &openraft::Membership<MemberId, Member>, id: &MemberId| {
        if m.voter_ids().any(|v| v == *id) {
            "voter"
        } else {
            "learner"
        }
    };
    let event = |id: MemberId, verb: &str, object: Option<crate::model::Json>| Event {
        revision,
        event_type: format!("member.{verb}"),
        kind: "member".into(),
        id: id.to_string(),
        project: String::new(),
        object,
    };
    let view = |id: MemberId, member: &Member, role: &str| {
        Some(crate::model::Json::of(&serde_json::json!({
            "id": id,
            "api_url": member.api_url,
            "raft_addr": member.raft_addr,
            "role": role,
        })))
    };
    let mut events = Vec::new();
    for (id, member) in new.nodes() {
        let now = role(new, id);
        match old.get_node(id) {
            None => events.push(event(*id, "joined", view(*id, member, now))),
            Some(before) if role(old, id) != now || before != member => {
                events.push(event(*id, "updated", view(*id, member, now)))
            }
            Some(_) => {}
        }
    }
    for (id, _) in old.nodes() {
        if new.get_node(id).is_none() {
            events.push(event(*id, "removed", None));
        }
    }
    events
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
        // openraft's default, pinned: the Raft listener's snapshot body limit
        // (`raftapi::SNAPSHOT_BODY_LIMIT`) is sized for chunks of this size.
        snapshot_max_chunk_size: 3 * 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 4).max(5),
        purge_batch_size: 64,
        // An entry is a batch of up to `proposer::MAX_BATCH` proposals: keep one AppendEntries
        // (one follower fsync) to a bounded size when a follower catches up.
        max_payload_entries: 64,
        ..Default::default()
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::state::Command;

    fn proposals() -> Vec<Proposal> {
        vec![
            Proposal {
                command: Command::Noop,
                idempotency: None,
                trace_id: Some("req-1".into()),
            },
            Proposal {
                command: Command::Noop,
                idempotency: None,
                trace_id: Some("a \"quoted\" ünïcode\n id".into()),
            },
            Proposal {
                command: Command::Noop,
                idempotency: None,
                trace_id: None,
            },
        ]
    }

    /// The form the derived `Serialize` wrote before the JSON was cached: logs written by
    /// earlier versions hold it.
    fn old_form(id: u64, list: &[Proposal]) -> String {
        serde_json::to_string(&serde_json::json!({ "id": id, "proposals": list })).unwrap()
    }

    #[test]
    fn batch_json_is_the_plain_list_and_made_once() {
        let batch = Batch {
            id: 7,
            proposals: proposals().into(),
        };
        let first = serde_json::to_string(&batch).unwrap();
        let as_value: serde_json::Value = serde_json::from_str(&first).unwrap();
        let old: serde_json::Value = serde_json::from_str(&old_form(7, &proposals())).unwrap();
        assert_eq!(as_value, old);
        // A clone (what openraft hands to each follower's replication) reuses the same text.
        let clone = batch.clone();
        assert!(Arc::ptr_eq(&batch.proposals.json, &clone.proposals.json));
        assert_eq!(serde_json::to_string(&clone).unwrap(), first);
    }

    #[test]
    fn entries_written_before_still_decode_and_keep_their_text() {
        // Old entry JSON, with the whitespace and field order another encoder might use and no
        // `id` (entries from before the proposer's batch ids).
        let list = proposals();
        let log_id =
            serde_json::to_string(&LogId::new(openraft::CommittedLeaderId::new(2, 1), 5)).unwrap();
        let old = format!(
            r#"{{"log_id":{log_id},"payload":{{"Normal":{{ "proposals" : {} }}}}}}"#,
            serde_json::to_string_pretty(&list).unwrap()
        );
        let entry: Entry<TypeConfig> = serde_json::from_str(&old).unwrap();
        assert_eq!(entry.log_id.index, 5);
        let EntryPayload::Normal(batch) = &entry.payload else {
            panic!("not a normal entry: {entry:?}");
        };
        assert_eq!(batch.id, 0);
        assert_eq!(&batch.proposals[..], &list[..]);
        // Written again (a follower's log), it decodes to the same entry.
        let again: Entry<TypeConfig> =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(again, entry);
        // And a batch in the current form decodes as well.
        let current: Batch = serde_json::from_str(&old_form(9, &list)).unwrap();
        assert_eq!((current.id, &current.proposals[..]), (9, &list[..]));
    }

    #[test]
    fn a_batch_that_is_not_a_list_of_proposals_is_refused() {
        for bad in [
            r#"{"id":1,"proposals":{}}"#,
            r#"{"id":1,"proposals":[{"command":{"op":"no_such_op"}}]}"#,
            r#"{"id":1}"#,
        ] {
            assert!(serde_json::from_str::<Batch>(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod membership_event_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn member(i: u64) -> Member {
        Member {
            api_url: format!("https://127.0.0.{i}:8443"),
            raft_addr: format!("127.0.0.{i}:7000"),
        }
    }

    fn membership(configs: &[&[u64]], nodes: &[u64]) -> openraft::Membership<MemberId, Member> {
        let configs = configs
            .iter()
            .map(|c| c.iter().copied().collect::<BTreeSet<u64>>())
            .collect();
        let nodes: BTreeMap<u64, Member> = nodes.iter().map(|i| (*i, member(*i))).collect();
        openraft::Membership::new(configs, nodes)
    }

    fn summary(events: &[Event]) -> Vec<(String, String, serde_json::Value)> {
        events
            .iter()
            .map(|e| {
                assert_eq!(
                    (e.kind.as_str(), e.revision, e.project.as_str()),
                    ("member", 9, "")
                );
                let role = e
                    .object
                    .as_ref()
                    .map(|o| o.to_value()["role"].clone())
                    .unwrap_or(serde_json::Value::Null);
                (e.event_type.clone(), e.id.clone(), role)
            })
            .collect()
    }

    #[test]
    fn joins_role_changes_and_removals_make_one_event_each() {
        let one = membership(&[&[1]], &[1]);
        let learner = membership(&[&[1]], &[1, 2]);
        let joint = membership(&[&[1], &[1, 2]], &[1, 2]);
        let two = membership(&[&[1, 2]], &[1, 2]);
        let joined = membership_events(9, &one, &learner);
        assert_eq!(
            summary(&joined),
            vec![("member.joined".into(), "2".into(), "learner".into())]
        );
        let object = joined[0].object.as_ref().unwrap().to_value();
        assert_eq!(object["api_url"], "https://127.0.0.2:8443");
        assert_eq!(object["raft_addr"], "127.0.0.2:7000");
        assert_eq!(object["id"], 2);
        assert_eq!(
            summary(&membership_events(9, &learner, &joint)),
            vec![("member.updated".into(), "2".into(), "voter".into())]
        );
        // Leaving the joint configuration changes no one's role.
        assert!(membership_events(9, &joint, &two).is_empty());
        // Removal of member 1 through joint consensus: one event, at the end.
        let leaving = membership(&[&[1, 2], &[2]], &[1, 2]);
        assert!(membership_events(9, &two, &leaving).is_empty());
        let gone = membership(&[&[2]], &[2]);
        assert_eq!(
            summary(&membership_events(9, &leaving, &gone)),
            vec![("member.removed".into(), "1".into(), serde_json::Value::Null)]
        );
        assert!(membership_events(9, &gone, &gone).is_empty());
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use openraft::Vote;

    /// A member's `/raft/stream` stand-in on loopback: answers each AppendEntries frame with a
    /// response that names the request (its `leader_commit` index) — a `Success` for request
    /// 2, a `Conflict` for anything else — and holds its first answer back for 300 ms.
    async fn slow_first_answer_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut answered = 0usize;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let first = answered == 0;
                answered += 1;
                tokio::spawn(serve_one(tcp, first));
            }
        });
        addr
    }

    async fn serve_one(tcp: tokio::net::TcpStream, first_connection: bool) {
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut first_frame = first_connection;
                    while let Ok(Some(frame)) = read_frame(&mut io).await {
                        let req: AppendEntriesRequest<TypeConfig> =
                            serde_json::from_slice(&frame).unwrap();
                        if first_frame {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            first_frame = false;
                        }
                        let resp: Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>> =
                            Ok(match req.leader_commit.map(|l| l.index) {
                                Some(2) => AppendEntriesResponse::Success,
                                _ => AppendEntriesResponse::Conflict,
                            });
                        if send_frame(&mut io, encode_frame(&resp, 64).unwrap())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                async {
                    http::Response::builder()
                        .status(http::StatusCode::SWITCHING_PROTOCOLS)
                        .header(http::header::CONNECTION, "upgrade")
                        .header(http::header::UPGRADE, STREAM_PROTOCOL)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .with_upgrades()
            .await;
    }

    fn request(commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), commit)),
        }
    }

    /// openraft drops an AppendEntries call at its own timeout; the answer to that call must
    /// never be taken for the answer to the next one (a leader then sees a follower's log go
    /// backwards and its Raft core panics).
    #[tokio::test]
    async fn an_answer_to_a_dropped_call_is_never_read_as_the_next_calls_answer() {
        let addr = slow_first_answer_server().await;
        let mut conn = HttpConnection {
            client: reqwest::Client::new(),
            secret: Arc::new("secret".into()),
            scheme: "http",
            target: 2,
            addr,
            stream: tokio::sync::Mutex::new(None),
            stream_busy: false,
            no_stream: false,
            failures: VecDeque::new(),
        };
        // Request 1 is dropped after its frame went out, before its (late) answer came.
        let dropped = tokio::time::timeout(
            Duration::from_millis(150),
            conn.append_on_stream(&request(1)),
        )
        .await;
        assert!(dropped.is_err(), "the first answer was meant to come late");
        // Request 2 must get request 2's answer.
        let answer = match conn.append_on_stream(&request(2)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("remote error: {e}"),
            Err(StreamError::Io(e)) => panic!("stream error: {e}"),
            Err(StreamError::NotOffered) => panic!("stream not offered"),
        };
        assert!(
            matches!(answer, AppendEntriesResponse::Success),
            "request 2 read {answer:?}: the dropped request's answer"
        );
    }
}
