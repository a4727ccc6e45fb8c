//! One reconcile pass: converge the local daemons to a desired set.
//!
//! Every kind of resource has one [`Reconciler`] in its own module (`network`, `security_group`,
//! `nic`, `route`, `template`, `volume`, `vm`): it says what is desired, observes what its daemon
//! has, converges one resource, reports it and deletes it. This module holds the trait and the
//! driver, written once for every kind: [`converge_kind`] (observe once, converge each desired
//! resource, turn each [`Outcome`] into a status) and [`NodeReconciler::delete_undesired`]
//! (delete what the ledger owns and the desired set no longer names).
//!
//! A pass deletes first, in reverse dependency order (VMs, routes, NICs, volumes, templates,
//! security groups, networks), then creates and updates in dependency order: networks, security
//! groups, NICs and routes (mvirt-ebpf) alongside templates and volumes (mvirt-zfs) — the two
//! branches do not depend on each other — and VMs last. Every local object is created with the
//! API's id, and only objects recorded in the [`Ledger`] are ever deleted. A failure touches one
//! resource: it is reported as that resource's status and retried on the next pass. When a
//! daemon cannot even be listed, its kinds are skipped this pass and nothing is reported for
//! them (the API keeps the last status a node reported: nothing is invented).
//!
//! Calls that may take long — template imports, graceful VM stops and restarts — run in
//! background tasks so a pass never waits for them; they wake the agent when they end.

mod backup;
mod migration;
mod network;
mod nic;
mod pod;
mod power;
mod replication;
mod route;
mod security_group;
mod template;
mod vm;
mod volume;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use crate::daemons::DaemonChannel;
use tokio::sync::Notify;
use tonic::{Code, Status};

use mvirt_api::proto as api;
use mvirt_api::proto::{Phase, ResourceKind, ResourceStatus};
use mvirt_ebpf::proto::net_service_client::NetServiceClient;
use mvirt_log::AuditLogger;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;

use crate::daemons::Daemons;
use crate::devices;
use crate::imports::ImportTracker;
use crate::ledger::{Kind, Ledger, LedgerError};

pub use route::derived_id;
pub use vm::{MANAGED_BY_LABEL, NODE_LABEL};

/// Fixed settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    /// UEFI firmware for VMs whose root volume has no kernel. `None`: such VMs fail with a
    /// clear message.
    pub firmware: Option<String>,
    /// Seconds a graceful stop waits before the hard stop.
    pub stop_timeout_secs: u32,
}

/// What every kind's reconciler works with: the daemons, the agent's ledger and audit log.
pub struct Context {
    pub daemons: Daemons,
    pub ledger: Arc<Ledger>,
    /// Template imports followed in the background.
    pub imports: Arc<ImportTracker>,
    /// Woken when background work ends, for another pass.
    pub wake: Arc<Notify>,
    pub audit: AuditLogger,
    pub settings: Settings,
    /// Dials other nodes' NodePeer (volume pushes, relays: see [`crate::transfer`]).
    pub peers: crate::transfer::PeerDialer,
    /// Local sockets incoming relays reach (incoming migrations prepared on this node).
    pub incoming: crate::transfer::IncomingSockets,
    /// Where outgoing migrations listen for their hypervisor's stream (unix sockets).
    pub migration_dir: std::path::PathBuf,
}

impl Context {
    fn net(&self) -> NetServiceClient<DaemonChannel> {
        self.daemons.net.clone()
    }

    fn zfs(&self) -> ZfsServiceClient<DaemonChannel> {
        self.daemons.zfs.clone()
    }

    fn vmm(&self) -> VmServiceClient<DaemonChannel> {
        self.daemons.vmm.clone()
    }

    /// The VMs mvirt-vmm has.
    async fn vms_here(&self) -> Result<Vec<vmm::Vm>, Status> {
        let listed = self.vmm().list_vms(vmm::ListVmsRequest::default()).await?;
        Ok(listed.into_inner().vms)
    }

    /// Records in the ledger that the agent owns `kind/id`, before the create call.
    fn claim(&self, kind: Kind, id: &str) -> Result<(), Status> {
        self.ledger.claim(kind, id).map_err(|err| {
            Status::internal(format!(
                "agent state: {}",
                mvirt_common::error::error_chain(&err)
            ))
        })
    }

    /// Creates `kind/id` with `call`: ownership is recorded in the ledger first, the create is
    /// audited as "created <noun> <id>". The outer error is the ledger's (it stops the kind);
    /// the inner one the daemon's.
    async fn create<T>(
        &self,
        kind: Kind,
        noun: &str,
        id: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, Status> {
        self.claim(kind, id)?;
        let created = call.await.map(tonic::Response::into_inner);
        if created.is_ok() {
            self.audit.audit(format!("created {noun} {id}"), &[id]);
        }
        Ok(created)
    }
}

/// What converging one resource came to.
#[derive(Debug)]
pub enum Outcome<C> {
    /// It exists as desired; `C` is what its daemon has, handed to the kinds that depend on it.
    Ready(C),
    /// It exists, but the change this pass asked for failed: reported failed, yet still usable
    /// by the kinds that depend on it.
    Degraded(C, Failure),
    /// Not there yet: waiting for what the message says.
    Pending(String),
    /// Not there yet: being made in the background (a backup stream being written).
    Running(String),
    /// A template import at work.
    Importing { bytes_done: u64, bytes_total: u64 },
    /// Not there, and it cannot be made now.
    Failed(Failure),
}

impl<C> Outcome<C> {
    /// `Ready` when the call succeeded, `Failed` with `what` otherwise.
    fn of_call(what: &'static str, result: Result<C, Status>) -> Self {
        match result {
            Ok(converged) => Outcome::Ready(converged),
            Err(error) => Outcome::Failed(Failure::Call { what, error }),
        }
    }
}

/// Why a resource is failed.
#[derive(Debug)]
pub enum Failure {
    /// A daemon refused the call named `what`.
    Call { what: &'static str, error: Status },
    /// A reason known without a call (an import that failed, an import cancelled by the user).
    Reason(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Call { what, error } => write!(f, "{what}: {}", error.message()),
            Failure::Reason(reason) => f.write_str(reason),
        }
    }
}

/// A resource of the desired set: its id, the trace id of the request that last changed it,
/// and where the set lists its kind.
pub trait DesiredResource: Sized {
    fn all(spec: &api::NodeSpec) -> &[Self];
    fn id(&self) -> &str;
    /// Empty when the API sent none.
    fn trace_id(&self) -> &str;
}

macro_rules! desired_resources {
    ($($resource:ty => $field:ident),* $(,)?) => {$(
        impl DesiredResource for $resource {
            fn all(spec: &api::NodeSpec) -> &[Self] {
                &spec.$field
            }
            fn id(&self) -> &str {
                &self.id
            }
            fn trace_id(&self) -> &str {
                &self.trace_id
            }
        }
    )*};
}

desired_resources!(
    api::NetworkSpec => networks,
    api::SecurityGroupSpec => security_groups,
    api::NicSpec => nics,
    api::RouteSpec => routes,
    api::TemplateSpec => templates,
    api::VolumeSpec => volumes,
    api::VmSpec => vms,
    api::PodSpec => pods,
    api::BackupSpec => backups,
);

/// What [`Reconciler::converge`] returns: an error stops the kind for this pass.
pub type Converging<C> = Result<Outcome<C>, Status>;

/// One kind of resource on this node, converged by the driver in this module.
///
/// A reconciler is built for one pass (it may borrow what the kinds before it converged, as
/// volumes borrow the ready templates); [`Reconciler::delete`] needs nothing of a pass.
pub trait Reconciler: Sync {
    /// The kind in the ledger and in status reports.
    const KIND: Kind;
    /// Whether a VM (or pod) here may still hold an object of this kind after it is no longer
    /// desired (NICs and volumes): then it is deleted only once no VM or pod config names it.
    const HELD_BY_VMS: bool = false;

    /// The API's spec of one resource.
    type Desired: DesiredResource + Sync;
    /// What the daemon has, listed once a pass.
    type Observed: Send + Sync;
    /// What a converged resource is: reported, and handed to the kinds that depend on it.
    type Converged: Send;

    /// The ids of the local objects the desired set names (route destinations have their own).
    fn local_ids(spec: &api::NodeSpec) -> HashSet<String> {
        Self::Desired::all(spec)
            .iter()
            .map(|want| want.id().to_string())
            .collect()
    }

    /// Lists what the daemon has. An error skips the kind this pass.
    fn observe(&self) -> impl Future<Output = Result<Self::Observed, Status>> + Send;

    /// Brings one resource to its desired state. An error (the ledger cannot be written, a
    /// listing failed) stops the kind for this pass; a refused change is an [`Outcome`].
    fn converge(
        &self,
        want: &Self::Desired,
        seen: &Self::Observed,
    ) -> impl Future<Output = Converging<Self::Converged>> + Send;

    /// Adds what a status report says about a resource that exists (addresses, sizes, a VM's
    /// phase) to `status`, which starts `ready` with no message.
    fn report(&self, _want: &Self::Desired, _have: &Self::Converged, _status: &mut ResourceStatus) {
    }

    /// Deletes the local object `id` of this kind; one that is gone already counts as deleted.
    fn delete(cx: &Context, id: &str) -> impl Future<Output = Result<(), Status>> + Send;
}

/// A delete call's result, where an object that does not exist counts as deleted.
fn deleted<T>(result: Result<T, Status>) -> Result<(), Status> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
    }
}

fn status(
    kind: ResourceKind,
    id: &str,
    phase: Phase,
    message: impl Into<String>,
) -> ResourceStatus {
    ResourceStatus {
        kind: kind as i32,
        id: id.to_string(),
        phase: phase as i32,
        message: message.into(),
        ..Default::default()
    }
}

fn resource_kind(kind: Kind) -> ResourceKind {
    match kind {
        Kind::Network => ResourceKind::Network,
        Kind::SecurityGroup => ResourceKind::SecurityGroup,
        Kind::Template => ResourceKind::Template,
        Kind::Volume => ResourceKind::Volume,
        Kind::Nic => ResourceKind::Nic,
        Kind::Route => ResourceKind::Route,
        Kind::Vm => ResourceKind::Vm,
        Kind::Pod => ResourceKind::Pod,
        Kind::Backup => ResourceKind::Backup,
    }
}

/// The status report of one converged resource.
fn report<R: Reconciler>(
    reconciler: &R,
    want: &R::Desired,
    outcome: &Outcome<R::Converged>,
) -> ResourceStatus {
    let mut s = status(resource_kind(R::KIND), want.id(), Phase::Ready, "");
    match outcome {
        Outcome::Ready(have) => reconciler.report(want, have, &mut s),
        Outcome::Degraded(have, failure) => {
            reconciler.report(want, have, &mut s);
            s.phase = Phase::Failed as i32;
            s.message = failure.to_string();
        }
        Outcome::Pending(waiting) => {
            s.phase = Phase::Pending as i32;
            s.message = waiting.clone();
        }
        Outcome::Running(working) => {
            s.phase = Phase::Running as i32;
            s.message = working.clone();
        }
        Outcome::Importing {
            bytes_done,
            bytes_total,
        } => {
            s.phase = Phase::Importing as i32;
            s.import_bytes_done = *bytes_done;
            s.import_bytes_total = *bytes_total;
        }
        Outcome::Failed(failure) => {
            s.phase = Phase::Failed as i32;
            s.message = failure.to_string();
        }
    }
    s
}

/// Converges every desired resource of one kind and pushes each one's status to `out`. Returns
/// what converged (ready or degraded), by id, for the kinds that depend on this one; when the
/// kind is skipped this pass, what converged before it stopped.
async fn converge_kind<R: Reconciler>(
    reconciler: &R,
    spec: &api::NodeSpec,
    out: &mut Vec<ResourceStatus>,
) -> HashMap<String, R::Converged> {
    let mut converged = HashMap::new();
    let observed = match reconciler.observe().await {
        Ok(observed) => observed,
        Err(err) => {
            tracing::warn!(kind = R::KIND.as_str(), error = %err, "kind skipped this pass");
            return converged;
        }
    };
    for want in R::Desired::all(spec) {
        // The resource is converged in the trace of the request that last changed it: its
        // log lines carry the id (span field), and so do the daemon calls made for it
        // (`x-mvirt-trace-id`) and the audit entries written meanwhile.
        let trace_id = want.trace_id();
        let span = tracing::info_span!(
            "reconcile",
            kind = R::KIND.as_str(),
            id = want.id(),
            trace_id = tracing::field::Empty
        );
        if !trace_id.is_empty() {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        let converging = mvirt_common::trace::scope(
            Some(trace_id.to_string()),
            reconciler.converge(want, &observed),
        );
        let outcome = match tracing::Instrument::instrument(converging, span).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(kind = R::KIND.as_str(), error = %err, "kind stopped this pass");
                // Like a kind that cannot be listed: its dependents see nothing of it.
                return HashMap::new();
            }
        };
        out.push(report(reconciler, want, &outcome));
        if let Outcome::Ready(have) | Outcome::Degraded(have, _) = outcome {
            converged.insert(want.id().to_string(), have);
        }
    }
    converged
}

/// Why the deletes of a pass stopped before the end (they are retried on the next pass).
#[derive(Debug, thiserror::Error)]
enum DeletesWait {
    #[error("cannot list VMs: NIC and volume deletes wait")]
    VmsUnlisted(#[source] Status),
    #[error("cannot list pods: NIC deletes wait")]
    PodsUnlisted(#[source] Status),
    #[error("cannot read the ledger")]
    Ledger(#[source] LedgerError),
}

/// Converges this node, pass after pass. Holds what outlives a pass: the context and the VM
/// operations running in the background.
pub struct NodeReconciler {
    cx: Context,
    power: power::Operations,
    migrations: migration::Operations,
    pods: pod::Operations,
    backups: backup::Operations,
    replications: replication::Operations,
}

impl NodeReconciler {
    pub fn new(cx: Context) -> Self {
        Self {
            cx,
            power: power::Operations::default(),
            migrations: migration::Operations::default(),
            pods: pod::Operations::default(),
            backups: backup::Operations::default(),
            replications: replication::Operations::default(),
        }
    }

    /// Converges to `spec` and returns the status of every desired resource it could observe.
    pub async fn reconcile(&self, spec: &api::NodeSpec) -> Vec<ResourceStatus> {
        let cx = &self.cx;
        if let Err(why) = self.delete_undesired(spec).await {
            tracing::warn!(error = %mvirt_common::error::error_chain(&why), "deletes stopped this pass");
        }

        // Storage (mvirt-zfs) and networking (mvirt-ebpf) do not depend on each other: converge
        // both at once; VMs need both.
        let mut storage_out = Vec::new();
        let mut network_out = Vec::new();
        let storage = async {
            let templates =
                converge_kind(&template::TemplateReconciler { cx }, spec, &mut storage_out).await;
            let volumes = volume::VolumeReconciler {
                cx,
                spec,
                templates: &templates,
            };
            let volumes = converge_kind(&volumes, spec, &mut storage_out).await;
            let backups = backup::BackupReconciler {
                cx,
                operations: &self.backups,
            };
            converge_kind(&backups, spec, &mut storage_out).await;
            volumes
        };
        let networking = async {
            let out = &mut network_out;
            converge_kind(&network::NetworkReconciler { cx }, spec, out).await;
            converge_kind(
                &security_group::SecurityGroupReconciler { cx, spec },
                spec,
                out,
            )
            .await;
            let nics = converge_kind(&nic::NicReconciler::new(cx, spec), spec, out).await;
            converge_kind(&route::RouteReconciler { cx }, spec, out).await;
            nics
        };
        let (volumes, nics) = tokio::join!(storage, networking);
        let mut out = network_out;
        out.append(&mut storage_out);
        let volumes = volume::objects(volumes);
        self.migrations.retain(spec);
        let vms = vm::VmReconciler::new(cx, &self.power, &self.migrations, spec, &volumes, &nics);
        converge_kind(&vms, spec, &mut out).await;
        let pods = pod::PodReconciler::new(cx, &self.pods, &nics);
        converge_kind(&pods, spec, &mut out).await;
        // Replication schedules run in their own tasks; this starts and stops them.
        self.replications.converge(cx, spec, &mut out);
        for s in &mut out {
            s.observed_revision = spec.revision;
        }
        out
    }

    /// Deletes, in reverse dependency order, the owned objects the desired set no longer names.
    async fn delete_undesired(&self, spec: &api::NodeSpec) -> Result<(), DeletesWait> {
        let mut deletes = Deletes {
            cx: &self.cx,
            spec,
            held: None,
        };
        deletes.of::<pod::PodReconciler>().await?;
        deletes.of::<vm::VmReconciler>().await?;
        deletes.of::<route::RouteReconciler>().await?;
        deletes.of::<nic::NicReconciler>().await?;
        deletes.of::<backup::BackupReconciler>().await?;
        deletes.of::<volume::VolumeReconciler>().await?;
        deletes.of::<template::TemplateReconciler>().await?;
        deletes
            .of::<security_group::SecurityGroupReconciler>()
            .await?;
        deletes.of::<network::NetworkReconciler>().await
    }
}

/// The deletes of one pass.
struct Deletes<'a> {
    cx: &'a Context,
    spec: &'a api::NodeSpec,
    /// The NIC and volume ids VM configs here still name, listed once when first needed.
    held: Option<HashSet<String>>,
}

impl Deletes<'_> {
    /// Deletes the owned objects of one kind that are no longer desired.
    async fn of<R: Reconciler>(&mut self) -> Result<(), DeletesWait> {
        let cx = self.cx;
        let owned = cx.ledger.owned(R::KIND).map_err(DeletesWait::Ledger)?;
        let wanted = R::local_ids(self.spec);
        if R::HELD_BY_VMS && self.held.is_none() {
            let vms = cx.vms_here().await.map_err(DeletesWait::VmsUnlisted)?;
            let pods = cx.pods_here().await.map_err(DeletesWait::PodsUnlisted)?;
            let mut held = devices::in_use(&vms);
            held.extend(pod::nics_in_use(&pods));
            self.held = Some(held);
        }
        let held = self.held.as_ref().filter(|_| R::HELD_BY_VMS);
        for id in owned.difference(&wanted) {
            if held.is_some_and(|held| held.contains(id)) {
                tracing::debug!(kind = R::KIND.as_str(), id = %id, "still attached to a VM here");
                continue;
            }
            // In the trace of the request that removed it (when the spec still names it): the
            // daemon calls carry the id, and so do the audit entries written meanwhile.
            let trace_id = self.spec.removed_trace_ids.get(id).cloned();
            let span = tracing::info_span!(
                "delete",
                kind = R::KIND.as_str(),
                id = %id,
                trace_id = tracing::field::Empty
            );
            if let Some(trace_id) = &trace_id {
                span.record("trace_id", tracing::field::display(trace_id));
            }
            let deleting = async {
                R::delete(cx, id).await?;
                if let Err(err) = cx.ledger.release(R::KIND, id) {
                    tracing::error!(error = %mvirt_common::error::error_chain(&err), "cannot update the ledger");
                }
                cx.audit
                    .audit(format!("deleted {} {id}", R::KIND.as_str()), &[id]);
                Ok::<(), Status>(())
            };
            let deleting = mvirt_common::trace::scope(trace_id, deleting);
            if let Err(err) = tracing::Instrument::instrument(deleting, span).await {
                tracing::warn!(kind = R::KIND.as_str(), id = %id, error = %err, "delete failed; retrying on the next pass");
            }
        }
        Ok(())
    }
}

/// Keys a daemon's listing by id.
fn by_id<T>(items: Vec<T>, id: impl Fn(&T) -> &str) -> HashMap<String, T> {
    items
        .into_iter()
        .map(|item| (id(&item).to_string(), item))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind without a daemon: `observed` is what "the daemon has", each desired id converges
    /// to the outcome its name asks for.
    struct Fake {
        observed: Result<Vec<String>, Code>,
    }

    impl Reconciler for Fake {
        const KIND: Kind = Kind::Network;
        type Desired = api::NetworkSpec;
        type Observed = Vec<String>;
        type Converged = String;

        async fn observe(&self) -> Result<Vec<String>, Status> {
            self.observed
                .clone()
                .map_err(|code| Status::new(code, "down"))
        }

        async fn converge(
            &self,
            want: &api::NetworkSpec,
            observed: &Vec<String>,
        ) -> Result<Outcome<String>, Status> {
            Ok(match want.id.as_str() {
                "ready" => Outcome::Ready(format!("seen: {}", observed.contains(&want.id))),
                "degraded" => Outcome::Degraded(
                    "old".into(),
                    Failure::Call {
                        what: "update",
                        error: Status::unavailable("busy"),
                    },
                ),
                "pending" => Outcome::Pending("waiting for x".into()),
                "importing" => Outcome::Importing {
                    bytes_done: 1,
                    bytes_total: 2,
                },
                "ledger" => return Err(Status::internal("agent state")),
                _ => Outcome::Failed(Failure::Reason("no".into())),
            })
        }

        fn report(&self, _want: &api::NetworkSpec, have: &String, status: &mut ResourceStatus) {
            status.fields.insert("have".into(), have.clone());
        }

        async fn delete(_cx: &Context, _id: &str) -> Result<(), Status> {
            Ok(())
        }
    }

    fn spec_of(ids: &[&str]) -> api::NodeSpec {
        api::NodeSpec {
            networks: ids
                .iter()
                .map(|id| api::NetworkSpec {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_desired_resource_is_reported_and_only_existing_ones_are_handed_on() {
        let fake = Fake {
            observed: Ok(vec!["ready".into()]),
        };
        let spec = spec_of(&["ready", "degraded", "pending", "importing", "failed"]);
        let mut out = Vec::new();
        let converged = converge_kind(&fake, &spec, &mut out).await;

        let phases: Vec<(String, i32, String)> = out
            .iter()
            .map(|s| (s.id.clone(), s.phase, s.message.clone()))
            .collect();
        assert_eq!(
            phases,
            vec![
                ("ready".into(), Phase::Ready as i32, String::new()),
                (
                    "degraded".into(),
                    Phase::Failed as i32,
                    "update: busy".into()
                ),
                (
                    "pending".into(),
                    Phase::Pending as i32,
                    "waiting for x".into()
                ),
                ("importing".into(), Phase::Importing as i32, String::new()),
                ("failed".into(), Phase::Failed as i32, "no".into()),
            ]
        );
        assert!(out.iter().all(|s| s.kind == ResourceKind::Network as i32));
        assert_eq!(out[0].fields["have"], "seen: true");
        assert_eq!(out[1].fields["have"], "old");
        assert_eq!(
            (out[3].import_bytes_done, out[3].import_bytes_total),
            (1, 2)
        );
        let mut handed_on: Vec<&String> = converged.keys().collect();
        handed_on.sort();
        assert_eq!(handed_on, ["degraded", "ready"]);
    }

    #[tokio::test]
    async fn a_kind_whose_daemon_cannot_be_listed_reports_nothing() {
        let fake = Fake {
            observed: Err(Code::Unavailable),
        };
        let mut out = Vec::new();
        let converged = converge_kind(&fake, &spec_of(&["ready"]), &mut out).await;
        assert!(out.is_empty() && converged.is_empty());
    }

    #[tokio::test]
    async fn a_kind_stopped_midway_keeps_the_statuses_so_far_and_hands_nothing_on() {
        let fake = Fake {
            observed: Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let converged =
            converge_kind(&fake, &spec_of(&["ready", "ledger", "failed"]), &mut out).await;
        assert_eq!(out.len(), 1);
        assert!(converged.is_empty());
    }

    #[test]
    fn a_delete_of_an_object_already_gone_succeeds() {
        assert!(deleted(Err::<(), _>(Status::not_found("gone"))).is_ok());
        assert!(deleted(Err::<(), _>(Status::unavailable("down"))).is_err());
        assert!(deleted(Ok::<_, Status>(())).is_ok());
    }
}
