//! Replication schedules (`NodeSpec.replications`), run in background tasks — never inside a
//! pass, since a stream takes as long as the volume is large.
//!
//! **Source** (the VM's node): every `interval_secs` one round: a replication snapshot of each
//! volume (mvirt-zfs `CreateReplicationSnapshot`, a fresh UUIDv7 shared by the round), pushed to
//! each target through `NodePeer.PushVolume` with the target's grant — an increment from the
//! replica's newest snapshot, or a full stream when the target holds no replica yet — then the
//! volume's replication snapshots pruned to `keep` (only when every target took this round's
//! snapshot: a target behind still needs its base). The statuses (one [`api::ReplicaReport`]
//! per volume and target) are reported by the next pass, which the round wakes.
//!
//! **Restart-safe without local state**: the base of an increment is the newest snapshot the
//! task knows the target took; a new task (agent restart, changed spec) tries the newest older
//! local snapshot, and when the target refuses it (mvirt-zfs answers `FAILED_PRECONDITION`
//! naming the replica's newest snapshot) the one named, if it is still here. Only a target with
//! no replica at all (`NOT_FOUND`) gets a full stream; so a restart never sends a volume twice.
//! The first round of a new task waits until the newest local snapshot is `interval_secs` old.
//!
//! **Target**: every `interval_secs` the replicas of the schedule's volumes held here are pruned
//! to `keep` (mvirt-zfs `PruneReplicationSnapshots`; a volume without a replica here is skipped).
//!
//! A schedule that leaves the spec stops (a stream in flight is dropped: the target's
//! mvirt-zfs keeps nothing of an unfinished stream). Replicas and snapshots stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Code;

use mvirt_api::proto as api;
use mvirt_api::proto::{Phase, ResourceKind, ResourceStatus};
use mvirt_log::AuditLogger;
use mvirt_zfs::proto as zfs;

use super::{status, Context};
use crate::daemons::Daemons;
use crate::transfer::{PeerDialer, TransferError};

/// What a source task found on its last round, by (volume id, target node id).
#[derive(Debug, Default)]
struct Progress {
    /// Whether a round ended (nothing is reported before: the API keeps the last report).
    rounds: u64,
    replicas: BTreeMap<(String, String), api::ReplicaReport>,
}

/// One running schedule: what it was started with, and its task.
struct Running {
    spec: api::ReplicationSpec,
    grants: Vec<api::TransferGrant>,
    progress: Arc<Mutex<Progress>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The schedules running on this node, by replication id.
#[derive(Default)]
pub struct Operations {
    running: Mutex<HashMap<String, Running>>,
}

impl Operations {
    /// Starts, restarts (changed spec or grants) and stops the schedules so that exactly the
    /// node's desired ones run, and pushes a status for each one this node is the source of
    /// and that finished a round.
    pub fn converge(&self, cx: &Context, spec: &api::NodeSpec, out: &mut Vec<ResourceStatus>) {
        let me = cx.settings.node_id.as_str();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let desired: HashMap<&str, &api::ReplicationSpec> = spec
            .replications
            .iter()
            .filter(|r| r.source_node_id == me || r.targets.iter().any(|t| t.node_id == me))
            .map(|r| (r.id.as_str(), r))
            .collect();
        running.retain(|id, _| desired.contains_key(id.as_str()));
        for (id, want) in desired {
            let grants: Vec<api::TransferGrant> = want
                .targets
                .iter()
                .filter_map(|t| spec.transfers.iter().find(|g| g.id == t.grant_id))
                .cloned()
                .collect();
            let same = running
                .get(id)
                .is_some_and(|r| same_schedule(&r.spec, want) && r.grants == grants);
            if !same {
                let progress = Arc::new(Mutex::new(Progress::default()));
                let task = if want.source_node_id == me {
                    tokio::spawn(source_task(
                        Source {
                            daemons: cx.daemons.clone(),
                            peers: cx.peers.clone(),
                            wake: cx.wake.clone(),
                            audit: cx.audit.clone(),
                            spec: want.clone(),
                            grants: grants.clone(),
                            progress: progress.clone(),
                        },
                        mvirt_common::trace::current(),
                    ))
                } else {
                    tokio::spawn(target_task(cx.daemons.clone(), want.clone()))
                };
                tracing::info!(replication = %id, source = %want.source_node_id, "replication schedule started");
                running.insert(
                    id.to_string(),
                    Running {
                        spec: want.clone(),
                        grants,
                        progress,
                        task,
                    },
                );
            }
            let r = &running[id];
            if r.spec.source_node_id == me {
                if let Some(s) = report(id, &r.progress.lock().unwrap_or_else(|e| e.into_inner())) {
                    out.push(s);
                }
            }
        }
    }
}

/// Whether two specs of one schedule ask for the same work (the trace id does not count).
fn same_schedule(a: &api::ReplicationSpec, b: &api::ReplicationSpec) -> bool {
    let mut a = a.clone();
    a.trace_id = b.trace_id.clone();
    &a == b
}

/// The status of a schedule after at least one round: ready when every volume reached every
/// target on its last attempt, failed with the first error otherwise.
fn report(id: &str, progress: &Progress) -> Option<ResourceStatus> {
    if progress.rounds == 0 {
        return None;
    }
    let first_error = progress
        .replicas
        .values()
        .find(|r| !r.last_error.is_empty())
        .map(|r| {
            format!(
                "volume {} to node {}: {}",
                r.volume_id, r.target_node_id, r.last_error
            )
        });
    let mut s = match first_error {
        Some(error) => status(ResourceKind::Replication, id, Phase::Failed, error),
        None => status(ResourceKind::Replication, id, Phase::Ready, ""),
    };
    s.replicas = progress.replicas.values().cloned().collect();
    Some(s)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a source task works with.
struct Source {
    daemons: Daemons,
    peers: PeerDialer,
    wake: Arc<Notify>,
    audit: AuditLogger,
    spec: api::ReplicationSpec,
    grants: Vec<api::TransferGrant>,
    progress: Arc<Mutex<Progress>>,
}

async fn source_task(s: Source, trace: Option<String>) {
    let interval = Duration::from_secs(u64::from(s.spec.interval_secs.max(1)));
    // Resume the schedule where it was: the next round is due one interval after the newest
    // replication snapshot of the first volume.
    if let Some(volume) = s.spec.volume_ids.first() {
        if let Ok(snaps) = local_snapshots(&s.daemons, volume).await {
            if let Some(newest) = snaps.last() {
                let age = (unix_now() - newest.created_at).max(0) as u64;
                if age < interval.as_secs() {
                    tokio::time::sleep(Duration::from_secs(interval.as_secs() - age)).await;
                }
            }
        }
    }
    // The snapshot each target is known to hold, by (volume, target).
    let mut bases: HashMap<(String, String), String> = HashMap::new();
    loop {
        let started = tokio::time::Instant::now();
        mvirt_common::trace::scope(trace.clone(), s.round(&mut bases)).await;
        s.progress.lock().unwrap_or_else(|e| e.into_inner()).rounds += 1;
        s.wake.notify_one();
        tokio::time::sleep_until(started + interval).await;
    }
}

/// The volume's replication snapshots here, oldest first.
async fn local_snapshots(
    daemons: &Daemons,
    volume_id: &str,
) -> Result<Vec<zfs::ReplicationSnapshot>, tonic::Status> {
    Ok(daemons
        .zfs
        .clone()
        .list_replication_snapshots(zfs::ListReplicationSnapshotsRequest {
            volume_id: volume_id.to_string(),
        })
        .await?
        .into_inner()
        .snapshots)
}

/// The snapshot id a refused increment names as the replica's newest.
fn named_newest(message: &str) -> Option<&str> {
    let tail = message.split("its newest snapshot is ").nth(1)?;
    let id: &str = tail
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .next()?;
    (!id.is_empty()).then_some(id)
}

impl Source {
    /// One round: snapshot, push to every target, prune.
    async fn round(&self, bases: &mut HashMap<(String, String), String>) {
        let snapshot_id = uuid::Uuid::now_v7().to_string();
        for volume in &self.spec.volume_ids {
            let created = self
                .daemons
                .zfs
                .clone()
                .create_replication_snapshot(zfs::CreateReplicationSnapshotRequest {
                    volume_id: volume.clone(),
                    snapshot_id: snapshot_id.clone(),
                })
                .await;
            if let Err(error) = created {
                let reason = format!("create replication snapshot: {}", error.message());
                for grant in &self.grants {
                    self.record(volume, &grant.target_node_id, Err(reason.clone()));
                }
                continue;
            }
            let mut all_took_it = true;
            for grant in &self.grants {
                let key = (volume.clone(), grant.target_node_id.clone());
                match self
                    .push(grant, volume, &snapshot_id, bases.get(&key).cloned())
                    .await
                {
                    Ok(pushed) => {
                        self.audit.audit(
                            format!(
                                "replicated volume {volume} to node {} (snapshot {snapshot_id}, {} bytes, {})",
                                grant.target_node_id,
                                pushed.bytes,
                                if pushed.incremental { "incremental" } else { "full" }
                            ),
                            &[volume, &snapshot_id],
                        );
                        bases.insert(key, snapshot_id.clone());
                        self.record(volume, &grant.target_node_id, Ok(pushed));
                    }
                    Err(reason) => {
                        all_took_it = false;
                        tracing::warn!(volume = %volume, target = %grant.target_node_id, error = %reason, "replication failed");
                        self.record(volume, &grant.target_node_id, Err(reason));
                    }
                }
            }
            if all_took_it {
                let pruned = self
                    .daemons
                    .zfs
                    .clone()
                    .prune_replication_snapshots(zfs::PruneReplicationSnapshotsRequest {
                        volume_id: volume.clone(),
                        keep_last: self.spec.keep.max(1),
                    })
                    .await;
                if let Err(error) = pruned {
                    tracing::warn!(volume = %volume, error = %error, "pruning replication snapshots failed");
                }
            }
        }
    }

    /// Pushes `snapshot_id` of `volume` to the grant's target: an increment from `known` (or
    /// the newest older snapshot here), the base the target names, or a full stream when it
    /// has no replica.
    async fn push(
        &self,
        grant: &api::TransferGrant,
        volume: &str,
        snapshot_id: &str,
        known: Option<String>,
    ) -> Result<Pushed, String> {
        let local = local_snapshots(&self.daemons, volume)
            .await
            .map_err(|e| format!("list replication snapshots: {}", e.message()))?;
        let here = |id: &str| local.iter().any(|s| s.id == id);
        let mut base = known.filter(|b| here(b)).or_else(|| {
            local
                .iter()
                .rev()
                .find(|s| s.id != snapshot_id)
                .map(|s| s.id.clone())
        });
        // At most: the guess, the base the target names, then a full stream.
        for _ in 0..3 {
            let from = base.clone().unwrap_or_default();
            let pushed = self
                .peers
                .push_volume(&self.daemons, grant, volume, snapshot_id, &from)
                .await;
            match pushed {
                Ok(done) => {
                    return Ok(Pushed {
                        snapshot_id: done.snapshot_id,
                        bytes: done.byte_count,
                        incremental: !from.is_empty(),
                    })
                }
                Err(TransferError::Target(status)) if !from.is_empty() => {
                    match status.code() {
                        // The target has no replica of the volume yet.
                        Code::NotFound => base = None,
                        Code::FailedPrecondition => match named_newest(status.message()) {
                            Some(newest) if newest == snapshot_id => {
                                // It took this very snapshot already (a retried round).
                                return Ok(Pushed {
                                    snapshot_id: snapshot_id.to_string(),
                                    bytes: 0,
                                    incremental: true,
                                });
                            }
                            Some(newest) if here(newest) && Some(newest) != base.as_deref() => {
                                base = Some(newest.to_string())
                            }
                            _ => {
                                return Err(format!(
                                    "the replica holds none of this node's replication snapshots ({}); delete it on the target to start over",
                                    status.message()
                                ))
                            }
                        },
                        _ => return Err(TransferError::Target(status).to_string()),
                    }
                }
                Err(TransferError::Target(status)) if status.code() == Code::AlreadyExists => {
                    // A full stream onto a replica this node has no snapshot of (the VM came
                    // here by a migration or failover, or the snapshots were pruned away).
                    return Err(format!(
                        "the target holds a replica of the volume but none of this node's replication snapshots ({}); delete it on the target to start over",
                        status.message()
                    ));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        Err("no base the target accepts".into())
    }

    /// Records the outcome of one volume's push to one target.
    fn record(&self, volume: &str, target: &str, outcome: Result<Pushed, String>) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let r = progress
            .replicas
            .entry((volume.to_string(), target.to_string()))
            .or_insert_with(|| api::ReplicaReport {
                volume_id: volume.to_string(),
                target_node_id: target.to_string(),
                ..Default::default()
            });
        let now = unix_now();
        match outcome {
            Ok(pushed) => {
                r.last_snapshot_id = pushed.snapshot_id;
                r.last_replicated_at = now;
                r.last_bytes = pushed.bytes;
                r.last_incremental = pushed.incremental;
                r.last_error.clear();
                r.lag_secs = 0;
            }
            Err(reason) => {
                r.last_error = reason;
                r.lag_secs = if r.last_replicated_at > 0 {
                    (now - r.last_replicated_at).max(0) as u64
                } else {
                    0
                };
            }
        }
    }
}

/// One successful push.
struct Pushed {
    snapshot_id: String,
    bytes: u64,
    incremental: bool,
}

/// A target's task: prunes the replicas of the schedule's volumes held here, every interval.
async fn target_task(daemons: Daemons, spec: api::ReplicationSpec) {
    let interval = Duration::from_secs(u64::from(spec.interval_secs.max(1)));
    loop {
        tokio::time::sleep(interval).await;
        for volume in &spec.volume_ids {
            let pruned = daemons
                .zfs
                .clone()
                .prune_replication_snapshots(zfs::PruneReplicationSnapshotsRequest {
                    volume_id: volume.clone(),
                    keep_last: spec.keep.max(1),
                })
                .await;
            match pruned {
                Ok(done) if !done.get_ref().deleted_snapshot_ids.is_empty() => {
                    tracing::debug!(volume = %volume, deleted = done.get_ref().deleted_snapshot_ids.len(), "replica pruned")
                }
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => {
                    tracing::warn!(volume = %volume, error = %status, "pruning a replica failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_replicas_newest_snapshot() {
        let m = "replica v cannot take an increment from a: its newest snapshot is 0190a5b0-0000-7000-8000-000000000001";
        assert_eq!(
            named_newest(m),
            Some("0190a5b0-0000-7000-8000-000000000001")
        );
        let wrapped = format!("the target node: status: FailedPrecondition, message: \"{m}\"");
        assert_eq!(
            named_newest(&wrapped),
            Some("0190a5b0-0000-7000-8000-000000000001")
        );
        assert_eq!(named_newest("replica v has no replication snapshot"), None);
    }

    #[test]
    fn nothing_is_reported_before_a_round_and_the_first_error_after() {
        let mut p = Progress::default();
        assert!(report("r", &p).is_none());
        p.rounds = 1;
        p.replicas.insert(
            ("v".into(), "n".into()),
            api::ReplicaReport {
                volume_id: "v".into(),
                target_node_id: "n".into(),
                last_error: "down".into(),
                ..Default::default()
            },
        );
        let s = report("r", &p).unwrap();
        assert_eq!(s.phase, Phase::Failed as i32);
        assert_eq!(s.message, "volume v to node n: down");
        assert_eq!(s.replicas.len(), 1);
    }
}
