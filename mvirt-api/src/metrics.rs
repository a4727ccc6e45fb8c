//! mvirt-api's Prometheus metrics (see `mvirt_common::metrics` and the README's table): Raft
//! (term, leader changes, log/commit/apply/snapshot indexes, log append latency — each append
//! is one SQLite transaction with `synchronous=FULL`, so its fsync — and proposals in flight)
//! and the scheduler (pending VMs and pods, placement delay by kind, round time). REST routes and NodeService
//! calls are counted by `mvirt_common::metrics` itself.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use mvirt_common::metrics::prometheus::metrics::counter::Counter;
use mvirt_common::metrics::prometheus::metrics::gauge::Gauge;
use mvirt_common::metrics::prometheus::metrics::histogram::Histogram;
use mvirt_common::metrics::prometheus::registry::Unit;
use mvirt_common::metrics::{self, HistogramFamily, Kind, Sampled, Snapshot};
use mvirt_common::Shutdown;
use openraft::ServerState;

use crate::app::App;
use crate::model::Kind as ObjectKind;
use crate::state::{Placement, State};

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-api";

pub struct ApiMetrics {
    term: Gauge,
    leader_changes: Counter,
    is_leader: Gauge,
    last_log_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    log_append: Histogram,
    log_appended_entries: Counter,
    proposals_in_flight: Gauge,
    /// Label `kind`: `vm` or `pod`.
    placement_delay: HistogramFamily,
    round: Histogram,
    sampled: Sampled,
}

pub fn get() -> &'static ApiMetrics {
    static METRICS: OnceLock<ApiMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = ApiMetrics {
            term: Gauge::default(),
            leader_changes: Counter::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            log_append: metrics::latency_histogram(),
            log_appended_entries: Counter::default(),
            proposals_in_flight: Gauge::default(),
            placement_delay: metrics::slow_family(),
            round: metrics::latency_histogram(),
            sampled: Sampled::default(),
        };
        metrics::register(DAEMON, |r| {
            r.register(
                "mvirt_raft_term",
                "Current Raft term of this member",
                m.term.clone(),
            );
            r.register(
                "mvirt_raft_leader_changes",
                "Times this member saw the leader change (including to none)",
                m.leader_changes.clone(),
            );
            r.register(
                "mvirt_raft_is_leader",
                "1 while this member is the leader",
                m.is_leader.clone(),
            );
            r.register(
                "mvirt_raft_last_log_index",
                "Index of the last entry in this member's Raft log",
                m.last_log_index.clone(),
            );
            r.register(
                "mvirt_raft_commit_index",
                "Index of the last entry known committed (durable on a majority)",
                m.commit_index.clone(),
            );
            r.register(
                "mvirt_raft_applied_index",
                "Index of the last entry applied to the state",
                m.applied_index.clone(),
            );
            r.register(
                "mvirt_raft_snapshot_index",
                "Index of the last entry in this member's latest snapshot",
                m.snapshot_index.clone(),
            );
            r.register_with_unit(
                "mvirt_raft_log_append_duration",
                "Time to write one batch of log entries durably (SQLite commit with fsync)",
                Unit::Seconds,
                m.log_append.clone(),
            );
            r.register(
                "mvirt_raft_log_appended_entries",
                "Log entries written to this member's Raft log",
                m.log_appended_entries.clone(),
            );
            r.register(
                "mvirt_raft_proposals_in_flight",
                "Writes proposed on this member and waiting for their applied outcome",
                m.proposals_in_flight.clone(),
            );
            r.register_with_unit(
                "mvirt_scheduler_placement_delay",
                "Time from a VM's or pod's creation until the scheduler placed it (on the leader)",
                Unit::Seconds,
                m.placement_delay.clone(),
            );
            r.register_with_unit(
                "mvirt_scheduler_round_duration",
                "Time one scheduler round held the state to decide placements",
                Unit::Seconds,
                m.round.clone(),
            );
            r.register_collector(Box::new(m.sampled.clone()));
        });
        m
    })
}

/// One durable log append of `entries` entries that took `took`.
pub fn log_appended(entries: usize, took: Duration) {
    if !mvirt_common::metrics::enabled() {
        return;
    }
    let m = get();
    m.log_append.observe(took.as_secs_f64());
    m.log_appended_entries.inc_by(entries as u64);
}

/// The committed index openraft saved.
pub fn committed(index: Option<u64>) {
    if !mvirt_common::metrics::enabled() {
        return;
    }
    if let Some(i) = index {
        get().commit_index.set(i as i64);
    }
}

/// Counts a proposal in flight while it lives (when metrics are on).
pub struct InFlight(bool);

impl InFlight {
    pub fn start() -> InFlight {
        let on = mvirt_common::metrics::enabled();
        if on {
            get().proposals_in_flight.inc();
        }
        InFlight(on)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 {
            get().proposals_in_flight.dec();
        }
    }
}

/// One scheduler round: its placements (their delay since the VM or pod was created, by
/// `kind`) and its time.
pub fn scheduled(state: &State, placements: &[Placement], round: Duration) {
    if !mvirt_common::metrics::enabled() {
        return;
    }
    let m = get();
    m.round.observe(round.as_secs_f64());
    let now = chrono::Utc::now();
    for p in placements {
        let (kind, created_at) = match p.kind {
            ObjectKind::Pod => ("pod", state.pods.get(&p.vm_id).map(|p| &p.meta.created_at)),
            _ => ("vm", state.vms.get(&p.vm_id).map(|v| &v.meta.created_at)),
        };
        let Some(created) = created_at.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        else {
            continue;
        };
        let delay = now.signed_duration_since(created.with_timezone(&chrono::Utc));
        m.placement_delay
            .get_or_create(&vec![("kind", kind.to_string())])
            .observe(delay.num_milliseconds().max(0) as f64 / 1000.0);
    }
}

/// Follows this member's Raft server state (term, leader: these change on elections only) until
/// `shutdown`, and reads the log indexes, pending VMs and pods and members on every scrape (they change
/// with every write, so following them would wake a task per write).
pub fn watch(app: &Arc<App>, shutdown: &Shutdown) {
    if !mvirt_common::metrics::enabled() {
        return;
    }
    let m = get();
    let mut rx = app.raft.server_metrics();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut leader = None;
        let mut first = true;
        loop {
            {
                let r = rx.borrow_and_update();
                m.term.set(r.vote.leader_id().get_term() as i64);
                m.is_leader.set((r.state == ServerState::Leader) as i64);
                if !first && r.current_leader != leader {
                    m.leader_changes.inc();
                }
                leader = r.current_leader;
                first = false;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = stop.wait() => return,
            }
        }
    });
    let app: Weak<App> = Arc::downgrade(app);
    let shutdown = shutdown.clone();
    metrics::on_scrape(
        DAEMON,
        Arc::new(move || {
            let (app, shutdown) = (app.upgrade(), shutdown.clone());
            Box::pin(async move {
                let Some(app) = app.filter(|_| !shutdown.is_triggered()) else {
                    return false;
                };
                let (pending, pending_pods, vms, nodes) = {
                    let state = app.shared.read();
                    let pending = state.vms.values().filter(|v| v.node_id.is_none()).count();
                    let pending_pods = state.pods.values().filter(|p| p.node_id.is_none()).count();
                    (pending, pending_pods, state.vms.len(), state.nodes.len())
                };
                let members = {
                    let r = app.raft.metrics();
                    let r = r.borrow();
                    m.last_log_index.set(r.last_log_index.unwrap_or(0) as i64);
                    m.applied_index
                        .set(r.last_applied.map(|l| l.index).unwrap_or(0) as i64);
                    m.snapshot_index
                        .set(r.snapshot.map(|l| l.index).unwrap_or(0) as i64);
                    r.membership_config.membership().voter_ids().count()
                };
                let mut s = Snapshot::default();
                for (name, help, value) in [
                    (
                        "mvirt_scheduler_pending_vms",
                        "VMs not placed on a node yet",
                        pending,
                    ),
                    (
                        "mvirt_scheduler_pending_pods",
                        "Pods not placed on a node yet",
                        pending_pods,
                    ),
                    ("mvirt_api_vms", "VMs in the desired state", vms),
                    ("mvirt_api_nodes", "Registered nodes", nodes),
                    (
                        "mvirt_raft_voters",
                        "Voting members of the Raft cluster",
                        members,
                    ),
                ] {
                    s.family(Kind::Gauge, name, help, None)
                        .add(vec![], value as f64);
                }
                m.sampled.replace(s);
                true
            })
        }),
    );
}
