//! The running control-plane member: Raft, the shared state, and what every front end needs —
//! proposing a command (forwarded to the leader when this member is a follower), linearizable
//! reads through the leader's read index, node liveness (leader memory), the scheduler loop and
//! membership changes.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::proposer::{Proposer, WriteFailure};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Capacity, Kind, Member, NodeState};
use crate::raft::{MemberId, Raft, Shared};
use crate::scheduler::{self, Strategy};
use crate::state::{ApiError, Command, ErrorCode, Outcome, Proposal, Update};

mod membership;

pub use membership::{
    JoinLimiter, Removal, HAND_OVER_WITHIN, JOIN_FAILURE_BURST, JOIN_FAILURE_REFILL,
};

/// How long a write waits for a leader (election in progress) before answering 503.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// The current time as RFC 3339 (UTC, seconds). Minted before proposing, never in `apply`.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new resource id: a time-ordered UUID (v7), so rows created together sit together in the
/// state database's key index (random v4 ids scattered every checkpoint over the whole index)
/// and an id sorts by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// sha256 hex of a secret (tokens are stored hashed).
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A random secret: 32 bytes, hex.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A heartbeat forwarded from a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatForward {
    pub node_id: String,
    pub capacity: Option<Capacity>,
    /// The node's pod artefacts version, when the heartbeat carries it (`None` = unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_artefacts_version: Option<String>,
}

/// Default for `--idempotency-retention-secs`: one day, like Stripe's idempotency keys.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often the leader looks for prunable records.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

pub struct App {
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub member_id: MemberId,
    pub me: Member,
    pub secret: Arc<String>,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    pub node_offline_after: Duration,
    pub heartbeat_interval: Duration,
    pub strategy: Strategy,
    pub audit: mvirt_log::AuditLogger,
    pub log_endpoint: String,
    /// How long an `Idempotency-Key` is remembered (pruned by the leader afterwards).
    pub idempotency_retention: Duration,
    /// The cluster CA and this member's certificate (`None` with `--insecure-plaintext`).
    pub tls: Option<Arc<crate::tls::MemberTls>>,
    /// HA: a node silent for this long (the agents' fencing time plus a margin) is lost and
    /// its HA VMs are restarted elsewhere (`crate::ha`).
    pub ha_lost_after: Duration,
    /// Last heartbeat per node, kept by the leader only.
    liveness: Mutex<HashMap<String, Instant>>,
    /// When this member last became leader (nodes get a grace period after a failover).
    leader_since: Mutex<Option<Instant>>,
    /// One membership change at a time.
    membership_lock: tokio::sync::Mutex<()>,
    /// Failed joins per source address (`POST /v1/controlplane/join`).
    pub join_limiter: JoinLimiter,
    /// Group commit of this member's writes while it leads.
    proposer: Proposer,
    /// What the last scheduling round saw (leader only).
    last_round: Mutex<Option<LastRound>>,
}

/// What the last scheduling round saw, so the next one can skip what cannot have changed.
#[derive(Clone, Copy)]
struct LastRound {
    key: scheduler::CapacityKey,
    newest: u64,
    full_at: Instant,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        shared: Arc<Shared>,
        member_id: MemberId,
        me: Member,
        secret: String,
        data_dir: PathBuf,
        node_offline_after: Duration,
        strategy: Strategy,
        audit: mvirt_log::AuditLogger,
        log_endpoint: String,
    ) -> Self {
        let proposer = Proposer::start(raft.clone(), shared.clone());
        Self {
            shared,
            member_id,
            me,
            secret: Arc::new(secret),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            data_dir,
            heartbeat_interval: (node_offline_after / 5).max(Duration::from_millis(200)),
            node_offline_after,
            strategy,
            audit,
            log_endpoint,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            tls: None,
            ha_lost_after: crate::ha::DEFAULT_LOST_AFTER,
            liveness: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            membership_lock: tokio::sync::Mutex::new(()),
            join_limiter: JoinLimiter::default(),
            proposer,
            last_round: Mutex::new(None),
            raft,
        }
    }

    /// Proposes through Raft on this member (it must be the leader), batched with concurrent
    /// proposals; waits for the applied outcome.
    pub async fn write_local(&self, proposal: Proposal) -> Result<Outcome, WriteFailure> {
        self.proposer.write(proposal).await
    }

    /// The current leader as this member sees it.
    pub fn leader(&self) -> Option<(MemberId, Member)> {
        // Borrowed, not cloned: every write asks (the metrics hold the whole membership and
        // the replication state).
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits until this member knows a leader (until `deadline`).
    pub async fn wait_for_leader(&self, deadline: Instant) -> Option<(MemberId, Member)> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(left, rx.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Proposes a command and returns its outcome; forwards to the leader when needed.
    pub async fn propose(&self, mut proposal: Proposal) -> Result<Outcome, ApiError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let leader = self
                .wait_for_leader(deadline)
                .await
                .ok_or_else(|| ApiError::no_leader("no Raft leader elected; retry later"))?;
            if leader.0 == self.member_id {
                match self.write_local(proposal).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(WriteFailure::NotLeader(back)) => {
                        // Lost leadership before the entry was appended: safe to retry.
                        proposal = *back;
                        self.wait_leader_change(leader.0, deadline).await?;
                        continue;
                    }
                    Err(WriteFailure::Unknown(e)) => {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("write outcome unknown: {e}"),
                        ))
                    }
                }
            }
            match self.forward::<_, Result<Outcome, ApiError>>(&leader.1, "write", &proposal).await {
                Ok(result) => match result {
                    Err(e) if e.code == ErrorCode::NoLeader && Instant::now() < deadline => {
                        self.wait_leader_change(leader.0, deadline).await?;
                        continue;
                    }
                    other => return other,
                },
                Err(Forward::NotSent(e)) => {
                    tracing::debug!(error = %e, "leader unreachable, waiting for a new one");
                    self.wait_leader_change(leader.0, deadline).await?;
                }
                Err(Forward::Unknown(e)) => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("the leader did not answer ({e}); the write may or may not have been applied — retry with the same Idempotency-Key"),
                    ))
                }
            }
        }
    }

    async fn wait_leader_change(&self, old: MemberId, deadline: Instant) -> Result<(), ApiError> {
        let mut rx = self.raft.metrics();
        loop {
            let cur = rx.borrow().current_leader;
            if cur.is_some() && cur != Some(old) {
                return Ok(());
            }
            // The old leader may come back (a brief blip): recheck on a short period.
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| ApiError::no_leader("no Raft leader reachable; retry later"))?;
            let step = left.min(Duration::from_millis(300));
            if tokio::time::timeout(step, rx.changed()).await.is_err() && cur == Some(old) {
                return Ok(());
            }
        }
    }

    /// Proposes and unwraps: `(revision, result object)` or the command's error. Successful
    /// commands are written to the audit log with the ids they touched.
    pub async fn submit(
        &self,
        command: Command,
        idempotency: Option<crate::state::Idempotency>,
    ) -> Result<(u64, Value), ApiError> {
        let (revision, json) = self.submit_json(command, idempotency).await?;
        Ok((revision, json.to_value()))
    }

    /// [`Self::submit`] with the result as the JSON text `apply` made (for a response that
    /// passes it on as it is).
    pub async fn submit_json(
        &self,
        command: Command,
        idempotency: Option<crate::state::Idempotency>,
    ) -> Result<(u64, crate::model::Json), ApiError> {
        let proposal = Proposal {
            command,
            idempotency,
            // The REST request (or gRPC call) this write is part of, if any.
            trace_id: mvirt_common::trace::current(),
        };
        let summary = proposal.to_string();
        let ids = related_ids(&proposal.command);
        let outcome = self.propose(proposal).await?;
        let value = outcome.result?;
        if !matches!(
            summary.as_str(),
            "update_statuses" | "schedule" | "set_node_state"
        ) || !ids.is_empty()
        {
            let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
            self.audit
                .audit(format!("{summary} (revision {})", outcome.revision), &refs);
        }
        Ok((outcome.revision, value))
    }

    /// Waits until this member has applied everything the leader had committed when the read
    /// started (Raft read index), so a read never goes back in time.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let leader = self
            .wait_for_leader(deadline)
            .await
            .ok_or_else(|| ApiError::no_leader("no Raft leader elected; retry later"))?;
        let index = if leader.0 == self.member_id {
            match self.raft.ensure_linearizable().await {
                Ok(log_id) => log_id.map(|l| l.index).unwrap_or(0),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    return Err(ApiError::no_leader(
                        "leadership changed during the read; retry",
                    ))
                }
                Err(e) => return Err(ApiError::no_leader(format!("read index failed: {e}"))),
            }
        } else {
            match self
                .forward::<_, Result<u64, ApiError>>(&leader.1, "read-index", &())
                .await
            {
                Ok(r) => r?,
                Err(Forward::NotSent(e)) | Err(Forward::Unknown(e)) => {
                    return Err(ApiError::no_leader(format!(
                        "leader unreachable for the read index: {e}"
                    )))
                }
            }
        };
        let mut rx = self.shared.applied.subscribe();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= index {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        match tokio::time::timeout(LEADER_WAIT, wait).await {
            Ok(true) => Ok(()),
            _ => Err(ApiError::no_leader(
                "this member is not catching up with the leader",
            )),
        }
    }

    /// POSTs to the leader's Raft listener.
    pub async fn forward<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        leader: &Member,
        rpc: &str,
        body: &Req,
    ) -> Result<Resp, Forward> {
        let url = format!("{}://{}/raft/{rpc}", self.scheme(), leader.raft_addr);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(self.secret.as_str())
            .timeout(Duration::from_secs(15))
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Forward::NotSent(e.to_string())
                } else {
                    Forward::Unknown(e.to_string())
                }
            })?;
        if !resp.status().is_success() {
            return Err(Forward::Unknown(format!(
                "leader answered {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| Forward::Unknown(e.to_string()))
    }

    // -------------------------------------------------------------------------- node liveness

    /// Records a node heartbeat (on the leader; followers forward it) and proposes a state or
    /// capacity change only when something actually changed.
    pub async fn heartbeat(&self, hb: HeartbeatForward) -> Result<(), ApiError> {
        if !self.is_leader() {
            let leader = self
                .wait_for_leader(Instant::now() + LEADER_WAIT)
                .await
                .ok_or_else(|| ApiError::no_leader("no Raft leader elected"))?;
            if leader.0 != self.member_id {
                return match self
                    .forward::<_, Result<(), ApiError>>(&leader.1, "heartbeat", &hb)
                    .await
                {
                    Ok(r) => r,
                    Err(Forward::NotSent(e)) | Err(Forward::Unknown(e)) => {
                        Err(ApiError::no_leader(e))
                    }
                };
            }
        }
        let (known, needs_write) = {
            let state = self.shared.read();
            match state.nodes.get(&hb.node_id) {
                None => (false, false),
                Some(node) => (
                    true,
                    node.status.state != NodeState::Online
                        || hb.capacity.is_some_and(|c| c != node.status.capacity)
                        || hb
                            .pod_artefacts_version
                            .as_ref()
                            .is_some_and(|v| *v != node.status.pod_artefacts_version),
                ),
            }
        };
        if !known {
            return Err(ApiError::not_found(Kind::Node, &hb.node_id));
        }
        locked(&self.liveness).insert(hb.node_id.clone(), Instant::now());
        if needs_write {
            self.submit(
                Command::SetNodeState {
                    id: hb.node_id.clone(),
                    state: NodeState::Online,
                    capacity: hb.capacity,
                    pod_artefacts_version: hb.pod_artefacts_version.clone(),
                    now: now(),
                },
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Marks a registered node as seen now (Register counts as a heartbeat).
    pub fn touch(&self, node_id: &str) {
        locked(&self.liveness).insert(node_id.to_string(), Instant::now());
    }

    /// Leader housekeeping, run on every applied change and on a short tick: nodes that went
    /// silent become offline, pending VMs get scheduled.
    pub async fn run_leader_loop(self: Arc<Self>, shutdown: mvirt_common::Shutdown) {
        let mut applied = self.shared.applied.subscribe();
        let tick =
            (self.node_offline_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        // Under a burst of writes, one round per gap is enough: a round always looks at the
        // latest state, so coalescing wake-ups loses nothing. A round costs O(VMs) under the
        // state's read lock, which applies (and so every write) wait behind, and proposes one
        // command: at most 10 rounds a second (a new VM is placed within ~100 ms, well inside
        // the seconds a VM takes to boot; the write benchmark at 128 clients went from 0.82× to
        // 1.10× of etcd against 50 rounds a second). When rounds get expensive (a busy
        // machine), they are spaced out to keep that under ~10 % of the time, but never more
        // than MAX_ROUND_GAP apart.
        const ROUND_GAP: Duration = Duration::from_millis(100);
        const MAX_ROUND_GAP: Duration = Duration::from_millis(200);
        let mut gap = ROUND_GAP;
        let mut last_round = Instant::now();
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = applied.changed() => {},
                _ = tokio::time::sleep(tick) => {},
            }
            let next = last_round + gap;
            if Instant::now() < next {
                tokio::time::sleep_until(next.into()).await;
            }
            applied.borrow_and_update();
            last_round = Instant::now();
            if !self.is_leader() {
                *locked(&self.leader_since) = None;
                continue;
            }
            let since = *locked(&self.leader_since).get_or_insert_with(Instant::now);
            if let Err(e) = self.mark_offline_nodes(since).await {
                tracing::warn!(error = %e, "could not mark silent nodes offline");
            }
            self.ha_round(since).await;
            match self.schedule_round().await {
                Ok(cost) => gap = (cost * 10).clamp(ROUND_GAP, MAX_ROUND_GAP),
                Err(e) => tracing::warn!(error = %e, "scheduling round failed"),
            }
            self.promote_caught_up_learners().await;
            let prune_every = PRUNE_EVERY.min(self.idempotency_retention / 2);
            if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                last_prune = Some(Instant::now());
                if let Err(e) = self.prune_once().await {
                    tracing::warn!(error = %e, "pruning round failed");
                }
            }
        }
    }

    /// Forgets idempotency records past their retention and used or expired join tokens.
    /// Proposes only when there is something to remove.
    async fn prune_once(&self) -> Result<(), ApiError> {
        let now_ms = now_ms();
        let before_ms = now_ms - self.idempotency_retention.as_millis() as i64;
        let (keys, tokens) = self.shared.read().prunable(before_ms, now_ms);
        if keys.is_empty() && tokens.is_empty() {
            return Ok(());
        }
        tracing::info!(
            idempotency_records = keys.len(),
            join_tokens = tokens.len(),
            "pruning"
        );
        self.submit(
            Command::Prune {
                idempotency_before_ms: before_ms,
                now_ms,
            },
            None,
        )
        .await
        .map(|_| ())
    }

    /// Promotes learners that caught up with the log. Normally the join does this itself; this
    /// covers a leader that died between adding the learner and promoting it.
    async fn promote_caught_up_learners(&self) {
        let Ok(_guard) = self.membership_lock.try_lock() else {
            return;
        };
        let metrics = self.raft.metrics().borrow().clone();
        let learners: Vec<MemberId> = metrics
            .membership_config
            .membership()
            .learner_ids()
            .collect();
        if learners.is_empty() {
            return;
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        for id in learners {
            let caught_up = replication
                .get(&id)
                .and_then(|m| *m)
                .is_some_and(|matched| matched.index + 100 >= last);
            if !caught_up {
                continue;
            }
            let mut after: BTreeSet<MemberId> =
                metrics.membership_config.membership().voter_ids().collect();
            after.insert(id);
            if let Err(e) = self
                .check_quorum_after(&after, &format!("promoting member {id}"))
                .await
            {
                tracing::warn!(member_id = id, error = %e.message, "learner not promoted");
                continue;
            }
            match self
                .change_voters(0, |voters| {
                    voters.insert(id);
                })
                .await
            {
                Ok(()) => tracing::info!(member_id = id, "caught-up learner promoted to voter"),
                Err(e) => {
                    tracing::debug!(member_id = id, error = %e.message, "learner promotion deferred")
                }
            }
        }
    }

    async fn mark_offline_nodes(&self, leader_since: Instant) -> Result<(), ApiError> {
        let online: Vec<String> = {
            let state = self.shared.read();
            state
                .nodes
                .values()
                .filter(|n| n.status.state == NodeState::Online)
                .map(|n| n.meta.id.clone())
                .collect()
        };
        let silent: Vec<String> = {
            let live = locked(&self.liveness);
            online
                .into_iter()
                .filter(|id| {
                    let last = live
                        .get(id)
                        .copied()
                        .unwrap_or(leader_since)
                        .max(leader_since);
                    last.elapsed() > self.node_offline_after
                })
                .collect()
        };
        for id in silent {
            tracing::warn!(node_id = %id, "node missed its heartbeats: offline");
            self.submit(
                Command::SetNodeState {
                    id,
                    state: NodeState::Offline,
                    capacity: None,
                    pod_artefacts_version: None,
                    now: now(),
                },
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// The HA monitor's round (`crate::ha`): nodes silent for `ha_lost_after` (counted from
    /// their last heartbeat, or from when this member became leader) are lost; each HA VM on
    /// one is moved to the node with its newest replica, or marked stuck with the reason.
    async fn ha_round(&self, leader_since: Instant) {
        let silent: Vec<(String, u64)> = {
            let live = locked(&self.liveness);
            let state = self.shared.read();
            state
                .nodes
                .keys()
                .filter_map(|id| {
                    let last = live
                        .get(id)
                        .copied()
                        .unwrap_or(leader_since)
                        .max(leader_since);
                    (last.elapsed() > self.ha_lost_after)
                        .then(|| (id.clone(), last.elapsed().as_secs()))
                })
                .collect()
        };
        if silent.is_empty() {
            return;
        }
        // Migrations with an end on a lost node end first (`crate::ha::lost_migrations`).
        let losses = crate::ha::lost_migrations(&self.shared.read(), &silent);
        for loss in losses {
            let what = format!(
                "migration {} of VM {} failed: node {} is lost (no heartbeat for {} s)",
                loss.migration_id, loss.vm_id, loss.lost_node_id, loss.silent_secs
            );
            let vm_id = loss.vm_id.clone();
            let command = Command::EndMigrationOnNodeLoss { loss, now: now() };
            match self.submit(command, None).await {
                Ok(_) => {
                    tracing::warn!("{what}");
                    self.audit.warn(what, &[&vm_id]);
                }
                Err(e) => tracing::warn!(vm_id = %vm_id, error = %e, "migration end not applied"),
            }
        }
        let lost: Vec<String> = silent.into_iter().map(|(id, _)| id).collect();
        let decisions = crate::ha::decide(&self.shared.read(), &lost, chrono::Utc::now());
        for decision in decisions {
            let vm_id = decision.vm_id.clone();
            let what = match &decision.to_node_id {
                Some(to) => format!(
                    "HA failover of VM {vm_id} from lost node {} to node {to}: {}",
                    decision.from_node_id, decision.message
                ),
                None => format!(
                    "HA VM {vm_id} on lost node {} stays: {}",
                    decision.from_node_id, decision.message
                ),
            };
            let command = Command::HaFailover {
                decision,
                now: now(),
            };
            match self.submit(command, None).await {
                Ok(_) => {
                    tracing::warn!("{what}");
                    self.audit.warn(what, &[&vm_id]);
                }
                Err(e) => tracing::warn!(vm_id = %vm_id, error = %e, "HA failover not applied"),
            }
        }
    }

    /// One scheduler round: proposes placements (if any).
    pub async fn schedule_once(&self) -> Result<(), ApiError> {
        self.schedule_round().await.map(|_| ())
    }

    /// [`Self::schedule_once`], returning how long the decision held the state lock.
    async fn schedule_round(&self) -> Result<Duration, ApiError> {
        // A full round looks at every pending VM against every node. While nothing that could
        // make room changed (same capacity key), only VMs created or changed since the last
        // round can be placed, so only they are looked at; a full round still runs every
        // FULL_ROUND_EVERY as a safety net.
        const FULL_ROUND_EVERY: Duration = Duration::from_secs(5);
        let started = Instant::now();
        let decision = {
            let state = self.shared.read();
            let mut last = locked(&self.last_round);
            let previous = last
                .filter(|r| r.full_at.elapsed() < FULL_ROUND_EVERY)
                .map(|r| (r.key, r.newest));
            let (key, newest, decision) = scheduler::round(&state, self.strategy, previous);
            crate::metrics::scheduled(&state, &decision.placements, started.elapsed());
            let full_at = match *last {
                Some(r) if previous.is_some_and(|(k, _)| k == key) => r.full_at,
                _ => Instant::now(),
            };
            // Placements move the key (the next round is full); pending reasons do not move a
            // VM's spec_revision, so VMs looked at now are not looked at again until the key
            // moves. Should a decision not get applied, the periodic full round retries it.
            *last = Some(LastRound {
                key,
                newest,
                full_at,
            });
            decision
        };
        let cost = started.elapsed();
        if decision.is_empty() {
            return Ok(cost);
        }
        self.submit(
            Command::Schedule {
                placements: decision.placements,
                pending: decision.pending,
                now: now(),
            },
            None,
        )
        .await?;
        Ok(cost)
    }
}

/// Why a forward to the leader failed.
#[derive(Debug)]
pub enum Forward {
    /// The request never reached the leader (connection refused): safe to retry elsewhere.
    NotSent(String),
    /// The request may have been processed.
    Unknown(String),
}

/// The ids a command is about (for audit entries).
fn related_ids(command: &Command) -> Vec<String> {
    match command {
        Command::CreateProject { project } => vec![project.meta.id.clone()],
        Command::CreateNetwork { network } => vec![network.meta.id.clone()],
        Command::CreateNic { nic } => vec![nic.meta.id.clone(), nic.spec.network_id.clone()],
        Command::CreateSecurityGroup { security_group } => vec![security_group.meta.id.clone()],
        Command::CreateTemplate { template } => vec![template.meta.id.clone()],
        Command::CreateVolume { volume } => vec![volume.meta.id.clone()],
        Command::CreateVm {
            vm,
            owned_volumes,
            owned_nics,
        } => std::iter::once(vm.meta.id.clone())
            .chain(owned_volumes.iter().map(|v| v.meta.id.clone()))
            .chain(owned_nics.iter().map(|n| n.meta.id.clone()))
            .collect(),
        Command::CreateBackups { backups } => backups
            .iter()
            .flat_map(|b| [b.meta.id.clone(), b.spec.volume_id.clone()])
            .chain(backups.iter().filter_map(|b| b.vm_id.clone()).take(1))
            .collect(),
        Command::CreateReplication { replication } => {
            vec![replication.meta.id.clone(), replication.spec.vm_id.clone()]
        }
        Command::CreatePod { pod, owned_nics } => std::iter::once(pod.meta.id.clone())
            .chain(owned_nics.iter().map(|n| n.meta.id.clone()))
            .collect(),
        Command::Update(Update { id, .. })
        | Command::Delete { id, .. }
        | Command::VmAction { id, .. }
        | Command::MigrateVm { id, .. }
        | Command::DrainNode { id, .. }
        | Command::UndrainNode { id, .. }
        | Command::PodAction { id, .. } => {
            vec![id.clone()]
        }
        Command::ResizeVolume { id, .. } | Command::CancelImport { id, .. } => vec![id.clone()],
        Command::CreateSnapshot {
            volume_id,
            snapshot,
        } => vec![volume_id.clone(), snapshot.id.clone()],
        Command::DeleteSnapshot {
            volume_id,
            snapshot_id,
            ..
        }
        | Command::RollbackSnapshot {
            volume_id,
            snapshot_id,
            ..
        } => vec![volume_id.clone(), snapshot_id.clone()],
        Command::PromoteSnapshot {
            volume_id,
            snapshot_id,
            template,
        } => vec![
            template.meta.id.clone(),
            volume_id.clone(),
            snapshot_id.clone(),
        ],
        Command::AddRule {
            security_group_id, ..
        }
        | Command::DeleteRule {
            security_group_id, ..
        } => {
            vec![security_group_id.clone()]
        }
        Command::RegisterNode { node } => vec![node.meta.id.clone()],
        Command::SetNodeState { id, .. } => vec![id.clone()],
        Command::EndMigrationOnNodeLoss { loss, .. } => {
            vec![loss.vm_id.clone(), loss.lost_node_id.clone()]
        }
        Command::HaFailover { decision, .. } => std::iter::once(decision.vm_id.clone())
            .chain([decision.from_node_id.clone()])
            .chain(decision.to_node_id.clone())
            .collect(),
        Command::UpdateStatuses { .. } => vec![],
        Command::Schedule { placements, .. } => placements
            .iter()
            .flat_map(|p| [p.vm_id.clone(), p.node_id.clone()])
            .collect(),
        Command::CreateToken { token } => vec![token.id.clone()],
        Command::DeleteToken { id } => vec![id.clone()],
        Command::BindToken { id, node_id } => vec![id.clone(), node_id.clone()],
        Command::CreateJoinToken { token } => vec![token.id.clone()],
        Command::ConsumeJoinToken { .. } | Command::Prune { .. } | Command::Noop => vec![],
    }
}
