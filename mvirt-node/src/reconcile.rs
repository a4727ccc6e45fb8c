//! One reconcile pass: converge the local daemons to a desired set.
//!
//! Deletes run first, in reverse dependency order (VMs, routes, NICs, volumes, templates,
//! security groups, networks), then creates and updates in dependency order: networks, security
//! groups, NICs and routes (mvirt-ebpf) alongside templates and volumes (mvirt-zfs) — the two
//! branches do not depend on each other — and VMs last. Every local object is created with the API's
//! id, and only objects recorded in the [`Ledger`] are ever deleted. A failure touches one
//! resource: it is reported as that resource's status and retried on the next pass. When a
//! daemon cannot even be listed, its kinds are skipped this pass and nothing is reported for
//! them (the API keeps the last status a node reported: nothing is invented).
//!
//! Calls that may take long — template imports, graceful VM stops and restarts — run in
//! background tasks so a pass never waits for them; they wake the agent when they end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tonic::{Code, Status};

use mvirt_api::proto as api;
use mvirt_api::proto::{Phase, ResourceKind, ResourceStatus};
use mvirt_common::names::local_name;
use mvirt_ebpf::proto as net;
use mvirt_log::AuditLogger;
use mvirt_vmm::proto as vmm;
use mvirt_zfs::proto as zfs;

use crate::daemons::Daemons;
use crate::devices;
use crate::imports::{ImportState, ImportTracker};
use crate::ledger::{Kind, Ledger, LedgerError};
use crate::snapshots;

/// Labels the agent puts on every VM it creates.
pub const MANAGED_BY_LABEL: &str = "mvirt.io/managed-by";
pub const NODE_LABEL: &str = "mvirt.io/node-id";
const MIB: u64 = 1024 * 1024;

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

pub struct Reconciler {
    daemons: Daemons,
    ledger: Arc<Ledger>,
    imports: Arc<ImportTracker>,
    wake: Arc<Notify>,
    audit: AuditLogger,
    settings: Settings,
    /// VMs with a stop/restart running in the background.
    vm_operations: Arc<Mutex<HashSet<String>>>,
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

fn failed(kind: ResourceKind, id: &str, what: &str, err: &Status) -> ResourceStatus {
    status(
        kind,
        id,
        Phase::Failed,
        format!("{what}: {}", err.message()),
    )
}

fn ledger_status(err: LedgerError) -> Status {
    Status::internal(format!(
        "agent state: {}",
        mvirt_common::error::error_chain(&err)
    ))
}

/// The value of one convergence step, or its default when the step could not even list its
/// daemon (the kind is then skipped this pass and retried on the next).
fn or_skipped<T: Default>(what: &str, result: Result<T, Status>) -> T {
    result.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "{what} skipped this pass");
        T::default()
    })
}

/// A hyphenated UUID derived from a parent id and a name (route destinations).
pub fn derived_id(parent: &str, name: &str) -> String {
    let namespace = uuid::Uuid::parse_str(parent).unwrap_or(uuid::Uuid::NAMESPACE_OID);
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

impl Reconciler {
    pub fn new(
        daemons: Daemons,
        ledger: Arc<Ledger>,
        imports: Arc<ImportTracker>,
        wake: Arc<Notify>,
        audit: AuditLogger,
        settings: Settings,
    ) -> Self {
        Self {
            daemons,
            ledger,
            imports,
            wake,
            audit,
            settings,
            vm_operations: Arc::default(),
        }
    }

    /// Converges to `spec` and returns the status of every desired resource it could observe.
    pub async fn reconcile(&self, spec: &api::NodeSpec) -> Vec<ResourceStatus> {
        let mut out = Vec::new();
        let desired = DesiredIds::of(spec);
        self.delete_undesired(&desired).await;

        // Storage (mvirt-zfs) and networking (mvirt-ebpf) do not depend on each other: converge
        // both at once; VMs need both.
        let mut storage_out = Vec::new();
        let mut network_out = Vec::new();
        let storage = async {
            let templates = or_skipped("templates", self.templates(spec, &mut storage_out).await);
            or_skipped(
                "volumes",
                self.volumes(spec, &templates, &mut storage_out).await,
            )
        };
        let networking = async {
            or_skipped("networks", self.networks(spec, &mut network_out).await);
            or_skipped(
                "security groups",
                self.security_groups(spec, &mut network_out).await,
            );
            let nics = or_skipped("NICs", self.nics(spec, &mut network_out).await);
            or_skipped("routes", self.routes(spec, &mut network_out).await);
            nics
        };
        let (volumes, nics) = tokio::join!(storage, networking);
        out.append(&mut network_out);
        out.append(&mut storage_out);
        or_skipped("VMs", self.vms(spec, &volumes, &nics, &mut out).await);
        for s in &mut out {
            s.observed_revision = spec.revision;
        }
        out
    }

    // ------------------------------------------------------------------ deletes

    async fn delete_undesired(&self, desired: &DesiredIds) {
        let steps: [(Kind, &HashSet<String>); 7] = [
            (Kind::Vm, &desired.vms),
            (Kind::Route, &desired.routes),
            (Kind::Nic, &desired.nics),
            (Kind::Volume, &desired.volumes),
            (Kind::Template, &desired.templates),
            (Kind::SecurityGroup, &desired.security_groups),
            (Kind::Network, &desired.networks),
        ];
        // NICs and volumes a VM here still holds wait for the VM pass to detach them.
        let mut in_use: Option<HashSet<String>> = None;
        for (kind, wanted) in steps {
            if matches!(kind, Kind::Nic | Kind::Volume) && in_use.is_none() {
                match self
                    .daemons
                    .vmm
                    .clone()
                    .list_vms(vmm::ListVmsRequest::default())
                    .await
                {
                    Ok(r) => in_use = Some(devices::in_use(&r.into_inner().vms)),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot list VMs: NIC and volume deletes wait");
                        return;
                    }
                }
            }
            let owned = match self.ledger.owned(kind) {
                Ok(owned) => owned,
                Err(err) => {
                    tracing::error!(error = %mvirt_common::error::error_chain(&err), "cannot read the ledger");
                    return;
                }
            };
            for id in owned.difference(wanted) {
                if matches!(kind, Kind::Nic | Kind::Volume)
                    && in_use.as_ref().is_some_and(|u| u.contains(id))
                {
                    tracing::debug!(kind = kind.as_str(), id = %id, "still attached to a VM here");
                    continue;
                }
                match self.delete_one(kind, id).await {
                    Ok(()) => {
                        if let Err(err) = self.ledger.release(kind, id) {
                            tracing::error!(error = %mvirt_common::error::error_chain(&err), "cannot update the ledger");
                        }
                        if kind == Kind::Template {
                            self.imports.forget(id);
                        }
                        self.audit
                            .audit(format!("deleted {} {id}", kind.as_str()), &[id]);
                    }
                    Err(err) => {
                        tracing::warn!(kind = kind.as_str(), id = %id, error = %err, "delete failed; retrying on the next pass")
                    }
                }
            }
        }
    }

    async fn delete_one(&self, kind: Kind, id: &str) -> Result<(), Status> {
        let d = &self.daemons;
        let id_s = id.to_string();
        let result = match kind {
            Kind::Vm => {
                // The VM goes first: kill it (its owner asked for deletion), then delete.
                match d
                    .vmm
                    .clone()
                    .kill_vm(vmm::KillVmRequest { id: id_s.clone() })
                    .await
                {
                    Ok(_) => {}
                    Err(s)
                        if s.code() == Code::NotFound || s.code() == Code::FailedPrecondition => {}
                    Err(s) => return Err(s),
                }
                d.vmm
                    .clone()
                    .delete_vm(vmm::DeleteVmRequest {
                        id: id_s,
                        force: true,
                    })
                    .await
                    .map(|_| ())
            }
            Kind::Route => d
                .net
                .clone()
                .delete_route(net::DeleteRouteRequest { id: id_s })
                .await
                .map(|_| ()),
            Kind::Nic => d
                .net
                .clone()
                .delete_nic(net::DeleteNicRequest { id: id_s })
                .await
                .map(|_| ()),
            Kind::Volume => d
                .zfs
                .clone()
                .delete_volume(zfs::DeleteVolumeRequest {
                    id: id_s,
                    force: false,
                })
                .await
                .map(|_| ()),
            Kind::Template => {
                // A template deleted while it imports: the import is cancelled, not finished.
                let mut zfs = d.zfs.clone();
                let jobs = zfs
                    .list_import_jobs(zfs::ListImportJobsRequest {})
                    .await?
                    .into_inner()
                    .jobs;
                for job in jobs
                    .iter()
                    .filter(|j| j.template_id == id && import_running(j))
                {
                    zfs.cancel_import_job(zfs::CancelImportJobRequest {
                        job_id: job.id.clone(),
                    })
                    .await?;
                    self.audit.audit(
                        format!("cancelled the import of deleted template {id}"),
                        &[id],
                    );
                }
                zfs.delete_template(zfs::DeleteTemplateRequest {
                    id: id_s,
                    detach_clones: false,
                })
                .await
                .map(|_| ())
            }
            Kind::SecurityGroup => d
                .net
                .clone()
                .delete_security_group(net::DeleteSecurityGroupRequest { id: id_s })
                .await
                .map(|_| ()),
            Kind::Network => d
                .net
                .clone()
                .delete_network(net::DeleteNetworkRequest { id: id_s })
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s),
        }
    }

    fn claim(&self, kind: Kind, id: &str) -> Result<(), Status> {
        self.ledger.claim(kind, id).map_err(ledger_status)
    }

    // ------------------------------------------------------------------ networks

    async fn networks(
        &self,
        spec: &api::NodeSpec,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<(), Status> {
        let mut client = self.daemons.net.clone();
        let existing: HashMap<String, net::Network> = client
            .list_networks(net::ListNetworksRequest {})
            .await?
            .into_inner()
            .networks
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        for want in &spec.networks {
            let kind = ResourceKind::Network;
            let result = match existing.get(&want.id) {
                Some(have) if have.tunnel_key != want.tunnel_key => {
                    // The key names the network's tunnel traffic on every node; it is fixed in
                    // mvirt-ebpf once created, so a difference is reported, never papered over.
                    Err(Status::failed_precondition(format!(
                        "network {} has tunnel key {} on this node but {} in the cluster",
                        want.id, have.tunnel_key, want.tunnel_key
                    )))
                }
                Some(have) => {
                    if have.dns_servers != want.dns_servers || have.ntp_servers != want.ntp_servers
                    {
                        client
                            .update_network(net::UpdateNetworkRequest {
                                id: want.id.clone(),
                                dns_servers: want.dns_servers.clone(),
                                ntp_servers: want.ntp_servers.clone(),
                            })
                            .await
                            .map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                None => {
                    self.claim(Kind::Network, &want.id)?;
                    let r = client
                        .create_network(net::CreateNetworkRequest {
                            id: want.id.clone(),
                            name: want.name.clone(),
                            ipv4_prefix: want.ipv4_prefix.clone(),
                            ipv6_prefix: want.ipv6_prefix.clone(),
                            dns_servers: want.dns_servers.clone(),
                            ntp_servers: want.ntp_servers.clone(),
                            public: want.is_public,
                            tunnel_key: want.tunnel_key,
                        })
                        .await
                        .map(|_| ());
                    if r.is_ok() {
                        self.audit
                            .audit(format!("created network {}", want.id), &[&want.id]);
                    }
                    r
                }
            };
            out.push(match result {
                Ok(()) => status(kind, &want.id, Phase::Ready, ""),
                Err(e) => failed(kind, &want.id, "network", &e),
            });
        }
        Ok(())
    }

    // ------------------------------------------------------------------ security groups

    async fn security_groups(
        &self,
        spec: &api::NodeSpec,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<(), Status> {
        let mut client = self.daemons.net.clone();
        let mut existing: HashMap<String, net::SecurityGroup> = client
            .list_security_groups(net::ListSecurityGroupsRequest {})
            .await?
            .into_inner()
            .security_groups
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        // Rules may name other groups (also in cycles), which mvirt-ebpf wants to exist first:
        // missing groups are created empty, then every group gets its rules.
        let mut failures: HashMap<&str, Status> = HashMap::new();
        for want in &spec.security_groups {
            if existing.contains_key(&want.id) {
                continue;
            }
            self.claim(Kind::SecurityGroup, &want.id)?;
            let created = client
                .create_security_group(net::CreateSecurityGroupRequest {
                    id: want.id.clone(),
                    name: want.name.clone(),
                    rules: Vec::new(),
                })
                .await;
            match created {
                Ok(g) => {
                    existing.insert(want.id.clone(), g.into_inner());
                }
                Err(e) => {
                    failures.insert(&want.id, e);
                }
            }
        }
        for want in &spec.security_groups {
            let rules: Vec<net::SecurityGroupRule> = want.rules.iter().map(net_rule).collect();
            let result = match (failures.remove(want.id.as_str()), existing.get(&want.id)) {
                (Some(e), _) => Err(e),
                (None, Some(have)) if have.rules == rules => Ok(()),
                (None, _) => client
                    .update_security_group(net::UpdateSecurityGroupRequest {
                        id: want.id.clone(),
                        rules,
                    })
                    .await
                    .map(|_| ()),
            };
            out.push(match result {
                Ok(()) => status(ResourceKind::SecurityGroup, &want.id, Phase::Ready, ""),
                Err(e) => failed(ResourceKind::SecurityGroup, &want.id, "security group", &e),
            });
        }
        Ok(())
    }

    // ------------------------------------------------------------------ templates

    /// Returns the templates that are ready locally.
    async fn templates(
        &self,
        spec: &api::NodeSpec,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<HashMap<String, zfs::Template>, Status> {
        let mut client = self.daemons.zfs.clone();
        let existing: HashMap<String, zfs::Template> = client
            .list_templates(zfs::ListTemplatesRequest {})
            .await?
            .into_inner()
            .templates
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let mut ready = HashMap::new();
        let mut jobs: Option<Vec<zfs::ImportJob>> = None;
        for want in &spec.templates {
            let kind = ResourceKind::Template;
            if let Some(t) = existing.get(&want.id) {
                if t.state == zfs::TemplateState::Ready as i32 {
                    let mut s = status(kind, &want.id, Phase::Ready, "");
                    s.import_bytes_done = t.size_bytes;
                    s.import_bytes_total = t.size_bytes;
                    out.push(s);
                    ready.insert(want.id.clone(), t.clone());
                    continue;
                }
            }
            if want.import_cancelled {
                // Stop what runs and start nothing; a copy imported before stays (above).
                let jobs = client
                    .list_import_jobs(zfs::ListImportJobsRequest {})
                    .await?
                    .into_inner()
                    .jobs;
                for job in jobs
                    .iter()
                    .filter(|j| j.template_id == want.id && import_running(j))
                {
                    client
                        .cancel_import_job(zfs::CancelImportJobRequest {
                            job_id: job.id.clone(),
                        })
                        .await?;
                    self.audit.audit(
                        format!("cancelled the import of template {}", want.id),
                        &[&want.id],
                    );
                }
                out.push(status(kind, &want.id, Phase::Failed, "import cancelled"));
                continue;
            }
            match self.imports.get(&want.id) {
                Some(ImportState::Running {
                    bytes_done,
                    bytes_total,
                }) => {
                    let mut s = status(kind, &want.id, Phase::Importing, "");
                    s.import_bytes_done = bytes_done;
                    s.import_bytes_total = bytes_total;
                    out.push(s);
                    continue;
                }
                Some(ImportState::Failed { reason }) => {
                    out.push(status(kind, &want.id, Phase::Failed, reason));
                    continue;
                }
                // Completed but not listed as ready yet: look again below.
                Some(ImportState::Completed) | None => {}
            }
            // Is mvirt-zfs already importing it (agent restart)?
            if jobs.is_none() {
                jobs = Some(
                    client
                        .list_import_jobs(zfs::ListImportJobsRequest {})
                        .await?
                        .into_inner()
                        .jobs,
                );
            }
            let running = jobs.as_ref().and_then(|jobs| {
                jobs.iter()
                    .find(|j| j.template_id == want.id && import_running(j))
            });
            if !want.source_snapshot_id.is_empty() {
                // Promoted from a volume's snapshot on this node: copied, not imported.
                self.claim(Kind::Template, &want.id)?;
                match client
                    .promote_snapshot_to_template(zfs::PromoteSnapshotToTemplateRequest {
                        volume_id: want.source_volume_id.clone(),
                        snapshot_id: want.source_snapshot_id.clone(),
                        template_id: want.id.clone(),
                        name: local_name(&want.name, &want.id),
                    })
                    .await
                {
                    Ok(t) => {
                        let t = t.into_inner();
                        self.audit.audit(
                            format!(
                                "promoted snapshot {} of volume {} to template {}",
                                want.source_snapshot_id, want.source_volume_id, want.id
                            ),
                            &[&want.id, &want.source_volume_id, &want.source_snapshot_id],
                        );
                        let mut s = status(kind, &want.id, Phase::Ready, "");
                        s.import_bytes_done = t.size_bytes;
                        s.import_bytes_total = t.size_bytes;
                        out.push(s);
                        ready.insert(want.id.clone(), t);
                    }
                    Err(e) => out.push(failed(kind, &want.id, "promote snapshot", &e)),
                }
                continue;
            }
            let job_id = match running {
                Some(job) => job.id.clone(),
                None => {
                    self.claim(Kind::Template, &want.id)?;
                    match client
                        .import_template(zfs::ImportTemplateRequest {
                            id: want.id.clone(),
                            name: local_name(&want.name, &want.id),
                            source_url: want.source_url.clone(),
                            format: want.format,
                            sha256: want.sha256.clone(),
                            kernel_url: want.kernel_url.clone(),
                            initramfs_url: want.initramfs_url.clone(),
                            kernel_sha256: want.kernel_sha256.clone(),
                            initramfs_sha256: want.initramfs_sha256.clone(),
                            cmdline: want.cmdline.clone(),
                        })
                        .await
                    {
                        Ok(job) => {
                            self.audit.audit(
                                format!("importing template {} from {}", want.id, want.source_url),
                                &[&want.id],
                            );
                            job.into_inner().id
                        }
                        Err(e) => {
                            out.push(failed(kind, &want.id, "import", &e));
                            continue;
                        }
                    }
                }
            };
            self.imports
                .follow(client.clone(), &want.id, &job_id, self.wake.clone());
            out.push(status(kind, &want.id, Phase::Importing, ""));
        }
        Ok(ready)
    }

    // ------------------------------------------------------------------ volumes

    /// Returns the volumes that exist locally.
    async fn volumes(
        &self,
        spec: &api::NodeSpec,
        templates: &HashMap<String, zfs::Template>,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<HashMap<String, zfs::Volume>, Status> {
        let mut client = self.daemons.zfs.clone();
        let mut existing: HashMap<String, zfs::Volume> = client
            .list_volumes(zfs::ListVolumesRequest {})
            .await?
            .into_inner()
            .volumes
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        // A pending rollback must know whether the volume's VMs run here.
        let rollback_pending = spec
            .volumes
            .iter()
            .any(|v| v.rollback_generation > snapshots::applied_generation(&self.ledger, &v.id));
        let local_vms: HashMap<String, vmm::Vm> = if rollback_pending {
            self.daemons
                .vmm
                .clone()
                .list_vms(vmm::ListVmsRequest::default())
                .await?
                .into_inner()
                .vms
                .into_iter()
                .map(|v| (v.id.clone(), v))
                .collect()
        } else {
            HashMap::new()
        };
        for want in &spec.volumes {
            let kind = ResourceKind::Volume;
            if let Some(have) = existing.get(&want.id) {
                let mut result = Ok(());
                if want.size_bytes > have.size_bytes {
                    result = client
                        .resize_volume(zfs::ResizeVolumeRequest {
                            id: want.id.clone(),
                            size_bytes: want.size_bytes,
                        })
                        .await
                        .map(|r| {
                            existing.insert(want.id.clone(), r.into_inner());
                        });
                }
                let users = snapshots::running_users(spec, &local_vms, &want.id);
                let snaps =
                    snapshots::converge(&mut client, &self.ledger, &self.audit, want, &users).await;
                let mut s = match result {
                    Ok(()) => {
                        let mut s = status(kind, &want.id, Phase::Ready, snaps.rollback_problem);
                        s.used_bytes = existing.get(&want.id).map(|v| v.used_bytes).unwrap_or(0);
                        s
                    }
                    Err(e) => failed(kind, &want.id, "resize", &e),
                };
                s.snapshots = snaps.snapshots;
                s.rollback_generation = snaps.rollback_generation;
                out.push(s);
                continue;
            }
            let name = local_name(&want.name, &want.id);
            let created = if want.template_id.is_empty() {
                self.claim(Kind::Volume, &want.id)?;
                client
                    .create_volume(zfs::CreateVolumeRequest {
                        id: want.id.clone(),
                        name,
                        size_bytes: want.size_bytes,
                    })
                    .await
            } else if templates.contains_key(&want.template_id) {
                self.claim(Kind::Volume, &want.id)?;
                client
                    .clone_from_template(zfs::CloneFromTemplateRequest {
                        template_id: want.template_id.clone(),
                        volume_id: want.id.clone(),
                        name,
                        size_bytes: want.size_bytes,
                    })
                    .await
            } else {
                out.push(status(
                    kind,
                    &want.id,
                    Phase::Pending,
                    format!("waiting for template {} to be imported", want.template_id),
                ));
                continue;
            };
            match created {
                Ok(volume) => {
                    let volume = volume.into_inner();
                    self.audit
                        .audit(format!("created volume {}", want.id), &[&want.id]);
                    let mut s = status(kind, &want.id, Phase::Ready, "");
                    s.used_bytes = volume.used_bytes;
                    out.push(s);
                    existing.insert(want.id.clone(), volume);
                }
                Err(e) => out.push(failed(kind, &want.id, "create volume", &e)),
            }
        }
        Ok(existing)
    }

    // ------------------------------------------------------------------ NICs

    /// Returns the NICs that exist locally.
    async fn nics(
        &self,
        spec: &api::NodeSpec,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<HashMap<String, net::Nic>, Status> {
        let mut client = self.daemons.net.clone();
        let mut existing: HashMap<String, net::Nic> = client
            .list_nics(net::ListNicsRequest::default())
            .await?
            .into_inner()
            .nics
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        let hostnames: HashMap<&str, &str> = spec
            .vms
            .iter()
            .flat_map(|vm| {
                vm.nic_ids
                    .iter()
                    .map(move |n| (n.as_str(), vm.hostname.as_str()))
            })
            .collect();
        for want in &spec.nics {
            let kind = ResourceKind::Nic;
            let result = match existing.get(&want.id) {
                Some(have) => {
                    let sorted = |v: &[String]| {
                        let mut v = v.to_vec();
                        v.sort();
                        v
                    };
                    if sorted(&have.security_group_ids) != sorted(&want.security_group_ids)
                        || sorted(&have.routed_prefixes) != sorted(&want.routed_prefixes)
                    {
                        client
                            .update_nic(net::UpdateNicRequest {
                                id: want.id.clone(),
                                hostname: have.hostname.clone(),
                                routed_prefixes: want.routed_prefixes.clone(),
                                security_group_ids: want.security_group_ids.clone(),
                            })
                            .await
                            .map(|r| {
                                existing.insert(want.id.clone(), r.into_inner());
                            })
                    } else {
                        Ok(())
                    }
                }
                None => {
                    self.claim(Kind::Nic, &want.id)?;
                    client
                        .create_nic(net::CreateNicRequest {
                            id: want.id.clone(),
                            network_id: want.network_id.clone(),
                            name: local_name(&want.name, &want.id),
                            mac_address: want.mac_address.clone(),
                            ipv4_address: want.ipv4_address.clone(),
                            ipv6_address: want.ipv6_address.clone(),
                            routed_prefixes: want.routed_prefixes.clone(),
                            hostname: hostnames
                                .get(want.id.as_str())
                                .map(|h| h.to_string())
                                .unwrap_or_default(),
                            security_group_ids: want.security_group_ids.clone(),
                        })
                        .await
                        .map(|r| {
                            self.audit
                                .audit(format!("created NIC {}", want.id), &[&want.id]);
                            existing.insert(want.id.clone(), r.into_inner());
                        })
                }
            };
            out.push(match result {
                Ok(()) => {
                    let mut s = status(kind, &want.id, Phase::Ready, "");
                    if !want.ipv4_address.is_empty() {
                        s.ipv4_addresses.push(want.ipv4_address.clone());
                    }
                    if !want.ipv6_address.is_empty() {
                        s.ipv6_addresses.push(want.ipv6_address.clone());
                    }
                    if let Some(nic) = existing.get(&want.id) {
                        s.fields.insert("tap".into(), nic.tap_name.clone());
                    }
                    s
                }
                Err(e) => failed(kind, &want.id, "NIC", &e),
            });
        }
        Ok(existing)
    }

    // ------------------------------------------------------------------ routes

    async fn routes(
        &self,
        spec: &api::NodeSpec,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<(), Status> {
        let mut client = self.daemons.net.clone();
        let existing: HashSet<String> = client
            .list_routes(net::ListRoutesRequest::default())
            .await?
            .into_inner()
            .routes
            .into_iter()
            .map(|r| r.id)
            .collect();
        for want in &spec.routes {
            let mut result = Ok(());
            for destination in &want.destinations {
                let id = derived_id(&want.id, destination);
                if existing.contains(&id) {
                    continue;
                }
                self.claim(Kind::Route, &id)?;
                if let Err(e) = client
                    .create_route(net::CreateRouteRequest {
                        id,
                        network_id: want.network_id.clone(),
                        destination: destination.clone(),
                        remote_node: want.node_address.clone(),
                    })
                    .await
                {
                    result = Err(e);
                }
            }
            out.push(match result {
                Ok(()) => status(ResourceKind::Route, &want.id, Phase::Ready, ""),
                Err(e) => failed(ResourceKind::Route, &want.id, "route", &e),
            });
        }
        Ok(())
    }

    // ------------------------------------------------------------------ VMs

    async fn vms(
        &self,
        spec: &api::NodeSpec,
        volumes: &HashMap<String, zfs::Volume>,
        nics: &HashMap<String, net::Nic>,
        out: &mut Vec<ResourceStatus>,
    ) -> Result<(), Status> {
        let mut client = self.daemons.vmm.clone();
        let existing: HashMap<String, vmm::Vm> = client
            .list_vms(vmm::ListVmsRequest::default())
            .await?
            .into_inner()
            .vms
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        let nic_specs: HashMap<&str, &api::NicSpec> =
            spec.nics.iter().map(|n| (n.id.as_str(), n)).collect();
        for want in &spec.vms {
            let kind = ResourceKind::Vm;
            let mut problems = Vec::new();
            let vm = match existing.get(&want.id) {
                Some(vm) => {
                    let (vm, p) =
                        devices::converge(&mut client, want, vm.clone(), volumes, nics).await;
                    problems = p;
                    vm
                }
                None => {
                    let config = match self.vm_config(want, volumes, nics) {
                        Ok(config) => config,
                        Err(waiting) => {
                            out.push(status(kind, &want.id, Phase::Pending, waiting));
                            continue;
                        }
                    };
                    self.claim(Kind::Vm, &want.id)?;
                    match client
                        .create_vm(vmm::CreateVmRequest {
                            id: want.id.clone(),
                            config: Some(config),
                        })
                        .await
                    {
                        Ok(vm) => {
                            self.audit
                                .audit(format!("created VM {}", want.id), &[&want.id]);
                            vm.into_inner()
                        }
                        Err(e) => {
                            out.push(failed(kind, &want.id, "create VM", &e));
                            continue;
                        }
                    }
                }
            };
            let vm = self.converge_power(want, vm).await;
            let mut s = self.vm_status(want, &vm, &nic_specs);
            if !vm.pending_changes.is_empty() {
                s.conditions.push(api::Condition {
                    r#type: "restart_required".into(),
                    status: "true".into(),
                    message: format!(
                        "applies at the next boot: {}",
                        vm.pending_changes.join("; ")
                    ),
                });
            }
            if !problems.is_empty() {
                s.conditions.push(api::Condition {
                    r#type: "devices_pending".into(),
                    status: "true".into(),
                    message: problems.join("; "),
                });
            }
            out.push(s);
        }
        Ok(())
    }

    /// The VmConfig for a spec, or why it cannot be built yet.
    fn vm_config(
        &self,
        want: &api::VmSpec,
        volumes: &HashMap<String, zfs::Volume>,
        nics: &HashMap<String, net::Nic>,
    ) -> Result<vmm::VmConfig, String> {
        let mut disks = Vec::new();
        for id in &want.volume_ids {
            let volume = volumes
                .get(id)
                .ok_or_else(|| format!("waiting for volume {id}"))?;
            disks.push(vmm::Disk {
                id: id.clone(),
                path: volume.path.clone(),
                read_only: false,
            });
        }
        let mut vm_nics = Vec::new();
        for id in &want.nic_ids {
            let nic = nics
                .get(id)
                .ok_or_else(|| format!("waiting for NIC {id}"))?;
            vm_nics.push(vmm::Nic {
                id: id.clone(),
                tap: nic.tap_name.clone(),
                mac: nic.mac_address.clone(),
            });
        }
        let root = want.volume_ids.first().and_then(|id| volumes.get(id));
        let direct = match api::BootMode::try_from(want.boot_mode).unwrap_or_default() {
            api::BootMode::DirectKernel => true,
            api::BootMode::Uefi => false,
            api::BootMode::Unspecified => root.is_some_and(|v| !v.kernel_path.is_empty()),
        };
        let boot = if direct {
            let root = root.ok_or("direct kernel boot needs a root volume")?;
            if root.kernel_path.is_empty() {
                return Err(format!(
                    "direct kernel boot asked for, but root volume {} has no kernel",
                    root.id
                ));
            }
            let cmdline = if want.kernel_cmdline.is_empty() {
                root.cmdline.clone()
            } else {
                want.kernel_cmdline.clone()
            };
            vmm::vm_config::Boot::Kernel(vmm::KernelBoot {
                kernel: root.kernel_path.clone(),
                initramfs: root.initramfs_path.clone(),
                cmdline,
            })
        } else {
            let firmware = self
                .settings
                .firmware
                .clone()
                .ok_or("UEFI boot needs firmware: start mvirt-node with --firmware")?;
            vmm::vm_config::Boot::Firmware(vmm::FirmwareBoot { firmware })
        };
        let mut meta_data = String::new();
        if !want.ssh_authorized_keys.is_empty() {
            meta_data.push_str("public-keys:\n");
            for key in &want.ssh_authorized_keys {
                meta_data.push_str(&format!("  - \"{}\"\n", key.replace('"', "")));
            }
        }
        let mut labels = HashMap::new();
        labels.insert(MANAGED_BY_LABEL.to_string(), "mvirt-node".to_string());
        labels.insert(NODE_LABEL.to_string(), self.settings.node_id.clone());
        Ok(vmm::VmConfig {
            name: want.name.clone(),
            vcpus: want.vcpus,
            memory_mib: want.memory_bytes.div_ceil(MIB),
            boot: Some(boot),
            disks,
            nics: vm_nics,
            cloud_init: Some(vmm::CloudInit {
                user_data: want.user_data.clone(),
                meta_data,
                network_config: String::new(),
                hostname: if want.hostname.is_empty() {
                    want.name.clone()
                } else {
                    want.hostname.clone()
                },
            }),
            hugepages: want.hugepages,
            nested_virtualization: want.nested_virtualization,
            labels,
        })
    }

    /// Starts, stops or restarts the VM as the spec asks. Long operations go to the background.
    async fn converge_power(&self, want: &api::VmSpec, vm: vmm::Vm) -> vmm::Vm {
        let state = vmm::VmState::try_from(vm.state).unwrap_or_default();
        let desired = api::DesiredState::try_from(want.desired_state).unwrap_or_default();
        let busy = self
            .vm_operations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&want.id);
        if busy {
            return vm;
        }
        let mut client = self.daemons.vmm.clone();
        let running = matches!(state, vmm::VmState::Running | vmm::VmState::Starting);
        match desired {
            api::DesiredState::Stopped => {
                if running {
                    let force = want.stop_mode == api::StopMode::Force as i32;
                    self.background(&want.id, move |mut client, id, timeout| async move {
                        if force {
                            client.kill_vm(vmm::KillVmRequest { id }).await.map(|_| ())
                        } else {
                            client
                                .stop_vm(vmm::StopVmRequest {
                                    id,
                                    timeout_seconds: timeout,
                                })
                                .await
                                .map(|_| ())
                        }
                    });
                    self.audit
                        .audit(format!("stopping VM {}", want.id), &[&want.id]);
                }
                vm
            }
            api::DesiredState::Running | api::DesiredState::Unspecified => {
                let generation_key = format!("restart_generation:{}", want.id);
                let acted = self
                    .ledger
                    .get(&generation_key)
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if want.restart_generation > acted {
                    let _ = self
                        .ledger
                        .set(&generation_key, &want.restart_generation.to_string());
                    if running {
                        self.audit
                            .audit(format!("restarting VM {}", want.id), &[&want.id]);
                        self.background(&want.id, |mut client, id, timeout| async move {
                            client
                                .restart_vm(vmm::RestartVmRequest {
                                    id,
                                    timeout_seconds: timeout,
                                })
                                .await
                                .map(|_| ())
                        });
                        return vm;
                    }
                }
                if matches!(state, vmm::VmState::Stopped | vmm::VmState::Failed) {
                    match client
                        .start_vm(vmm::StartVmRequest {
                            id: want.id.clone(),
                        })
                        .await
                    {
                        Ok(vm) => {
                            self.audit
                                .audit(format!("started VM {}", want.id), &[&want.id]);
                            return vm.into_inner();
                        }
                        Err(e) => {
                            let mut vm = vm;
                            vm.state = vmm::VmState::Failed as i32;
                            vm.state_reason = format!("start failed: {}", e.message());
                            return vm;
                        }
                    }
                }
                vm
            }
        }
    }

    /// Runs a VM operation in the background; the VM is skipped by passes until it ends.
    fn background<F, Fut>(&self, id: &str, operation: F)
    where
        F: FnOnce(
                vmm::vm_service_client::VmServiceClient<tonic::transport::Channel>,
                String,
                u32,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.vm_operations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        let operations = self.vm_operations.clone();
        let wake = self.wake.clone();
        let client = self.daemons.vmm.clone();
        let id = id.to_string();
        let timeout = self.settings.stop_timeout_secs;
        tokio::spawn(async move {
            if let Err(err) = operation(client, id.clone(), timeout).await {
                tracing::warn!(vm = %id, error = %err, "VM operation failed");
            }
            operations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            wake.notify_one();
        });
    }

    fn vm_status(
        &self,
        want: &api::VmSpec,
        vm: &vmm::Vm,
        nic_specs: &HashMap<&str, &api::NicSpec>,
    ) -> ResourceStatus {
        let phase = match vmm::VmState::try_from(vm.state).unwrap_or_default() {
            vmm::VmState::Running => Phase::Running,
            vmm::VmState::Starting => Phase::Creating,
            vmm::VmState::Stopping => Phase::Stopping,
            vmm::VmState::Stopped => Phase::Stopped,
            vmm::VmState::Failed => Phase::Failed,
            vmm::VmState::Unspecified => Phase::Pending,
        };
        let mut s = status(ResourceKind::Vm, &want.id, phase, vm.state_reason.clone());
        for id in &want.nic_ids {
            if let Some(nic) = nic_specs.get(id.as_str()) {
                if !nic.ipv4_address.is_empty() {
                    s.ipv4_addresses.push(nic.ipv4_address.clone());
                }
                if !nic.ipv6_address.is_empty() {
                    s.ipv6_addresses.push(nic.ipv6_address.clone());
                }
            }
        }
        s.fields.insert("hypervisor".into(), vm.hypervisor.clone());
        if vm.pid != 0 {
            s.fields.insert("pid".into(), vm.pid.to_string());
        }
        s
    }
}

/// Converts an API security-group rule into mvirt-ebpf's form.
fn net_rule(rule: &api::SecurityGroupRuleSpec) -> net::SecurityGroupRule {
    let protocol = match api::Protocol::try_from(rule.protocol).unwrap_or_default() {
        api::Protocol::Unspecified | api::Protocol::Any => net::Protocol::All,
        api::Protocol::Tcp => net::Protocol::Tcp,
        api::Protocol::Udp => net::Protocol::Udp,
        api::Protocol::Icmp => net::Protocol::Icmp,
        api::Protocol::Icmpv6 => net::Protocol::Icmpv6,
    };
    let direction = match api::Direction::try_from(rule.direction).unwrap_or_default() {
        api::Direction::Egress => net::Direction::Egress,
        api::Direction::Ingress => net::Direction::Ingress,
        api::Direction::Unspecified => net::Direction::Unspecified,
    };
    net::SecurityGroupRule {
        id: rule.id.clone(),
        direction: direction as i32,
        protocol: protocol as i32,
        port_min: rule.port_min,
        port_max: rule.port_max,
        cidr: rule.cidr.clone(),
        remote_security_group_id: rule.remote_group_id.clone(),
        remote_addresses: rule.remote_addresses.clone(),
    }
}

/// Whether an import job is still at work.
fn import_running(job: &zfs::ImportJob) -> bool {
    matches!(
        zfs::ImportPhase::try_from(job.phase),
        Ok(zfs::ImportPhase::Pending
            | zfs::ImportPhase::Downloading
            | zfs::ImportPhase::Converting
            | zfs::ImportPhase::Finalizing)
    )
}

/// The ids a desired set names, by kind.
#[derive(Debug, Default)]
pub struct DesiredIds {
    pub networks: HashSet<String>,
    pub security_groups: HashSet<String>,
    pub templates: HashSet<String>,
    pub volumes: HashSet<String>,
    pub nics: HashSet<String>,
    pub routes: HashSet<String>,
    pub vms: HashSet<String>,
}

impl DesiredIds {
    pub fn of(spec: &api::NodeSpec) -> Self {
        Self {
            networks: spec.networks.iter().map(|n| n.id.clone()).collect(),
            security_groups: spec.security_groups.iter().map(|s| s.id.clone()).collect(),
            templates: spec.templates.iter().map(|t| t.id.clone()).collect(),
            volumes: spec.volumes.iter().map(|v| v.id.clone()).collect(),
            nics: spec.nics.iter().map(|n| n.id.clone()).collect(),
            routes: spec
                .routes
                .iter()
                .flat_map(|r| r.destinations.iter().map(|d| derived_id(&r.id, d)))
                .collect(),
            vms: spec.vms.iter().map(|v| v.id.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_stay_unique_across_projects_in_one_millisecond() {
        // UUIDv7 ids minted in the same millisecond share their first 13 characters.
        let a = local_name("web", "0190f3a2-7c41-7a6b-9c1d-7e5a3b2c1d0f");
        let b = local_name("web", "0190f3a2-7c41-7b6b-9c1d-7e5a3b2c1d0f");
        assert_ne!(a, b);
        assert_eq!(a, "web-0190f3a27c417a6b9c1d7e5a3b2c1d0f");
    }

    #[test]
    fn route_ids_are_stable_and_distinct_per_destination() {
        let parent = "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f";
        assert_eq!(
            derived_id(parent, "10.0.0.5/32"),
            derived_id(parent, "10.0.0.5/32")
        );
        assert_ne!(
            derived_id(parent, "10.0.0.5/32"),
            derived_id(parent, "fd00::5/128")
        );
        assert!(mvirt_common::validate::resource_id("route", &derived_id(parent, "x")).is_ok());
    }

    #[test]
    fn security_group_rules_translate_protocols_and_directions() {
        let rule = api::SecurityGroupRuleSpec {
            id: "r".into(),
            direction: api::Direction::Ingress as i32,
            protocol: api::Protocol::Tcp as i32,
            port_min: 22,
            port_max: 22,
            cidr: "0.0.0.0/0".into(),
            remote_group_id: String::new(),
            remote_addresses: Vec::new(),
        };
        let translated = net_rule(&rule);
        assert_eq!(translated.protocol, net::Protocol::Tcp as i32);
        assert_eq!(translated.direction, net::Direction::Ingress as i32);
        let any = net_rule(&api::SecurityGroupRuleSpec {
            protocol: api::Protocol::Any as i32,
            ..rule
        });
        assert_eq!(any.protocol, net::Protocol::All as i32);
    }
}
