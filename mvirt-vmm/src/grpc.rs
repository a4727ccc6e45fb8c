//! `VmService`: translates between proto messages and the domain types of [`crate::vmm`], and
//! maps [`VmmError`] to `tonic::Status`. No VM logic lives here.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{BootSource, CloudInitSpec, DiskSpec, NicSpec, VmRecord, VmSpec, VmState};
use crate::proto;
use crate::proto::vm_service_server::VmService;
use crate::vmm::{DeviceChange, VmEventKind, Vmm, VmmError};

pub struct VmGrpc {
    vmm: Vmm,
    pods: crate::pod::PodManager,
    lease: Option<crate::lease::FenceLease>,
}

impl VmGrpc {
    pub fn new(vmm: Vmm, pods: crate::pod::PodManager) -> Self {
        Self {
            vmm,
            pods,
            lease: None,
        }
    }

    /// Serves `RenewFenceLease` with `lease` (without one it is UNIMPLEMENTED).
    pub fn with_lease(mut self, lease: crate::lease::FenceLease) -> Self {
        self.lease = Some(lease);
        self
    }
}

impl VmGrpc {
    /// VmService does not reach the microVMs of pods (PodService owns them).
    fn vm_only(&self, id: &str) -> Result<(), Status> {
        match self.vmm.get(id) {
            Ok(vm) if vm.spec.is_pod_vm() => Err(VmmError::NotFound(id.to_string()).into()),
            _ => Ok(()),
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn spec_from_proto(config: proto::VmConfig) -> Result<VmSpec, Status> {
    let boot = match config.boot {
        Some(proto::vm_config::Boot::Kernel(k)) => BootSource::Kernel {
            kernel: k.kernel,
            initramfs: non_empty(k.initramfs),
            cmdline: k.cmdline,
        },
        Some(proto::vm_config::Boot::Firmware(f)) => BootSource::Firmware {
            firmware: non_empty(f.firmware),
        },
        None => return Err(invalid("config.boot is required (kernel or firmware)")),
    };
    Ok(VmSpec {
        name: config.name,
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        boot,
        disks: config.disks.into_iter().map(disk_from_proto).collect(),
        nics: config.nics.into_iter().map(nic_from_proto).collect(),
        cloud_init: config.cloud_init.map(|c| CloudInitSpec {
            user_data: c.user_data,
            network_config: c.network_config,
            hostname: c.hostname,
            ssh_authorized_keys: c.ssh_authorized_keys,
        }),
        hugepages: config.hugepages,
        nested_virtualization: config.nested_virtualization,
        labels: config.labels.into_iter().collect(),
        vsock: None,
    })
}

fn disk_from_proto(d: proto::Disk) -> DiskSpec {
    DiskSpec {
        id: d.id,
        path: d.path,
        read_only: d.read_only,
    }
}

pub(crate) fn nic_from_proto(n: proto::Nic) -> NicSpec {
    NicSpec {
        id: n.id,
        tap: n.tap,
        mac: n.mac.to_lowercase(),
    }
}

pub(crate) fn nic_to_proto(n: &NicSpec) -> proto::Nic {
    proto::Nic {
        id: n.id.clone(),
        tap: n.tap.clone(),
        mac: n.mac.clone(),
    }
}

pub fn spec_to_proto(spec: &VmSpec) -> proto::VmConfig {
    let boot = match &spec.boot {
        BootSource::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => proto::vm_config::Boot::Kernel(proto::KernelBoot {
            kernel: kernel.clone(),
            initramfs: initramfs.clone().unwrap_or_default(),
            cmdline: cmdline.clone(),
        }),
        BootSource::Firmware { firmware } => {
            proto::vm_config::Boot::Firmware(proto::FirmwareBoot {
                firmware: firmware.clone().unwrap_or_default(),
            })
        }
    };
    proto::VmConfig {
        name: spec.name.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        boot: Some(boot),
        disks: spec
            .disks
            .iter()
            .map(|d| proto::Disk {
                id: d.id.clone(),
                path: d.path.clone(),
                read_only: d.read_only,
            })
            .collect(),
        nics: spec.nics.iter().map(nic_to_proto).collect(),
        cloud_init: spec.cloud_init.as_ref().map(|c| proto::CloudInit {
            user_data: c.user_data.clone(),
            network_config: c.network_config.clone(),
            hostname: c.hostname.clone(),
            ssh_authorized_keys: c.ssh_authorized_keys.clone(),
        }),
        hugepages: spec.hugepages,
        nested_virtualization: spec.nested_virtualization,
        labels: spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn state_to_proto(state: VmState) -> proto::VmState {
    match state {
        VmState::Stopped => proto::VmState::Stopped,
        VmState::Starting => proto::VmState::Starting,
        VmState::Running => proto::VmState::Running,
        VmState::Stopping => proto::VmState::Stopping,
        VmState::Failed => proto::VmState::Failed,
    }
}

pub fn vm_to_proto(vm: &VmRecord) -> proto::Vm {
    proto::Vm {
        id: vm.id.clone(),
        config: Some(spec_to_proto(&vm.spec)),
        state: state_to_proto(vm.state) as i32,
        state_reason: vm.state_reason.clone(),
        pid: vm.process.map(|p| p.pid).unwrap_or(0),
        hypervisor: vm.hypervisor.clone(),
        created_at_ms: vm.created_at_ms,
        updated_at_ms: vm.updated_at_ms,
        started_at_ms: vm.started_at_ms,
        pending_changes: vm.pending_changes.clone(),
    }
}

fn change_to_proto(change: DeviceChange) -> proto::DeviceChangeResponse {
    proto::DeviceChangeResponse {
        vm: Some(vm_to_proto(&change.vm)),
        applied_live: change.applied_live,
        message: change.message,
    }
}

pub(crate) fn timeout(seconds: u32) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds as u64))
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl VmService for VmGrpc {
    async fn get_version(
        &self,
        _request: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        let v = mvirt_common::version::VersionInfo::new("mvirt-vmm", env!("CARGO_PKG_VERSION"));
        Ok(Response::new(proto::VersionInfo {
            component: v.component,
            version: v.version,
            git_commit: v.git_commit,
            hypervisor: self.vmm.hypervisor_name().to_string(),
        }))
    }

    async fn get_system_info(
        &self,
        _request: Request<proto::GetSystemInfoRequest>,
    ) -> Result<Response<proto::SystemInfo>, Status> {
        let info = self.vmm.system_info()?;
        let (running_pods, defined_pods) = self.pods.counts()?;
        let (pod_artefacts_version, pod_artefacts_error) = match self.pods.artefacts().await {
            Ok(a) => (a.version, String::new()),
            Err(e) => (String::new(), mvirt_common::error::error_chain(&e)),
        };
        let h = info.host;
        Ok(Response::new(proto::SystemInfo {
            hostname: h.hostname,
            cpu_model: h.cpu_model,
            cpu_cores: h.cpu_cores,
            memory_total_bytes: h.memory_total_bytes,
            memory_available_bytes: h.memory_available_bytes,
            hugepages_total: h.hugepages_total,
            hugepages_free: h.hugepages_free,
            hugepage_size_bytes: h.hugepage_size_bytes,
            numa_nodes: h.numa_nodes,
            disks: h
                .disks
                .into_iter()
                .map(|d| proto::HostDisk {
                    name: d.name,
                    size_bytes: d.size_bytes,
                    rotational: d.rotational,
                })
                .collect(),
            nics: h
                .nics
                .into_iter()
                .map(|n| proto::HostNic {
                    name: n.name,
                    mac: n.mac,
                    up: n.up,
                    mtu: n.mtu,
                })
                .collect(),
            allocated_vcpus: info.allocated_vcpus,
            allocated_memory_bytes: info.allocated_memory_bytes,
            running_vms: info.running_vms,
            defined_vms: info.defined_vms,
            hypervisor: info.hypervisor,
            kvm_usable: info.kvm_usable,
            pod_artefacts_version,
            pod_artefacts_error,
            running_pods,
            defined_pods,
        }))
    }

    async fn create_vm(
        &self,
        request: Request<proto::CreateVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let req = request.into_inner();
        let config = req.config.ok_or_else(|| invalid("config is required"))?;
        let spec = spec_from_proto(config)?;
        let vm = self.vmm.create(&req.id, spec).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn get_vm(
        &self,
        request: Request<proto::GetVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.get(&id)?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn list_vms(
        &self,
        request: Request<proto::ListVmsRequest>,
    ) -> Result<Response<proto::ListVmsResponse>, Status> {
        let selector: BTreeMap<String, String> =
            request.into_inner().label_selector.into_iter().collect();
        let mut vms = self.vmm.list(&selector)?;
        vms.retain(|vm| !vm.spec.is_pod_vm());
        Ok(Response::new(proto::ListVmsResponse {
            vms: vms.iter().map(vm_to_proto).collect(),
        }))
    }

    async fn delete_vm(
        &self,
        request: Request<proto::DeleteVmRequest>,
    ) -> Result<Response<proto::DeleteVmResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.id)?;
        self.vmm.delete(&req.id, req.force).await?;
        Ok(Response::new(proto::DeleteVmResponse {}))
    }

    async fn start_vm(
        &self,
        request: Request<proto::StartVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.start(&id).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn stop_vm(
        &self,
        request: Request<proto::StopVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.id)?;
        let vm = self.vmm.stop(&req.id, timeout(req.timeout_seconds)).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn kill_vm(
        &self,
        request: Request<proto::KillVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.kill(&id).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn restart_vm(
        &self,
        request: Request<proto::RestartVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.id)?;
        let vm = self
            .vmm
            .restart(&req.id, timeout(req.timeout_seconds))
            .await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn resize_vm(
        &self,
        request: Request<proto::ResizeVmRequest>,
    ) -> Result<Response<proto::DeviceChangeResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.id)?;
        if req.vcpus == 0 && req.memory_mib == 0 {
            return Err(invalid("resize needs vcpus or memory_mib"));
        }
        let change = self
            .vmm
            .resize(
                &req.id,
                (req.vcpus > 0).then_some(req.vcpus),
                (req.memory_mib > 0).then_some(req.memory_mib),
            )
            .await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn attach_disk(
        &self,
        request: Request<proto::AttachDiskRequest>,
    ) -> Result<Response<proto::DeviceChangeResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.vm_id)?;
        let disk = req.disk.ok_or_else(|| invalid("disk is required"))?;
        let change = self
            .vmm
            .attach_disk(&req.vm_id, disk_from_proto(disk))
            .await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn detach_disk(
        &self,
        request: Request<proto::DetachDiskRequest>,
    ) -> Result<Response<proto::DeviceChangeResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.vm_id)?;
        let change = self.vmm.detach_disk(&req.vm_id, &req.disk_id).await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn attach_nic(
        &self,
        request: Request<proto::AttachNicRequest>,
    ) -> Result<Response<proto::DeviceChangeResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.vm_id)?;
        let nic = req.nic.ok_or_else(|| invalid("nic is required"))?;
        let change = self.vmm.attach_nic(&req.vm_id, nic_from_proto(nic)).await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn detach_nic(
        &self,
        request: Request<proto::DetachNicRequest>,
    ) -> Result<Response<proto::DeviceChangeResponse>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.vm_id)?;
        let change = self.vmm.detach_nic(&req.vm_id, &req.nic_id).await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn renew_fence_lease(
        &self,
        request: Request<proto::RenewFenceLeaseRequest>,
    ) -> Result<Response<proto::RenewFenceLeaseResponse>, Status> {
        let lease = self
            .lease
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this daemon holds no fence lease"))?;
        let req = request.into_inner();
        let expires_at_ms = lease.renew(req.ttl_ms, req.vm_ids).map_err(invalid)?;
        Ok(Response::new(proto::RenewFenceLeaseResponse {
            expires_at_ms,
        }))
    }

    type ConsoleStream = BoxStream<proto::ConsoleOutput>;

    async fn console(
        &self,
        request: Request<Streaming<proto::ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let mut inputs = request.into_inner();
        let first = inputs
            .next()
            .await
            .ok_or_else(|| invalid("the first console message must name the VM"))??;
        let vm_id = first.vm_id.clone();
        self.vm_only(&vm_id)?;
        let inputs = inputs.map(|m| m.map(|m| m.data));
        console_stream(&self.vmm, &vm_id, first.data, inputs).await
    }

    async fn prepare_incoming_migration(
        &self,
        request: Request<proto::PrepareIncomingMigrationRequest>,
    ) -> Result<Response<proto::IncomingMigration>, Status> {
        let req = request.into_inner();
        let config = req.config.ok_or_else(|| invalid("config is required"))?;
        let spec = spec_from_proto(config)?;
        let (vm, socket) = self.vmm.prepare_incoming(&req.id, spec).await?;
        Ok(Response::new(proto::IncomingMigration {
            vm: Some(vm_to_proto(&vm)),
            socket_path: socket.display().to_string(),
        }))
    }

    type MigrateVmStream = BoxStream<proto::MigrationProgress>;

    async fn migrate_vm(
        &self,
        request: Request<proto::MigrateVmRequest>,
    ) -> Result<Response<Self::MigrateVmStream>, Status> {
        let req = request.into_inner();
        self.vm_only(&req.id)?;
        if !req.destination_socket.starts_with('/') {
            return Err(invalid("destination_socket must be an absolute path"));
        }
        let downtime = match req.max_downtime_ms {
            0 => std::time::Duration::from_millis(300),
            ms => std::time::Duration::from_millis(u64::from(ms)),
        };
        let rx = self
            .vmm
            .migrate(
                &req.id,
                std::path::PathBuf::from(req.destination_socket),
                req.with_disks,
                downtime,
            )
            .await?;
        let stream = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
            if done {
                return None;
            }
            // The first item is the current value; afterwards each change.
            let stats = rx.borrow_and_update().clone();
            let finished = !matches!(
                stats.status,
                crate::hypervisor::MigrationStatus::Active
                    | crate::hypervisor::MigrationStatus::None
            );
            if !finished && rx.changed().await.is_err() {
                let stats = rx.borrow().clone();
                return Some((Ok(migration_to_proto(&stats)), (rx, true)));
            }
            Some((Ok(migration_to_proto(&stats)), (rx, finished)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_migration(
        &self,
        request: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.cancel_migration(&id).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn complete_incoming_migration(
        &self,
        request: Request<proto::CompleteIncomingMigrationRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.complete_incoming(&id).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    async fn resume_migrated_vm(
        &self,
        request: Request<proto::ResumeMigratedVmRequest>,
    ) -> Result<Response<proto::Vm>, Status> {
        let id = request.into_inner().id;
        self.vm_only(&id)?;
        let vm = self.vmm.resume_migrated(&id).await?;
        Ok(Response::new(vm_to_proto(&vm)))
    }

    type WatchVmsStream = BoxStream<proto::VmEvent>;

    async fn watch_vms(
        &self,
        request: Request<proto::WatchVmsRequest>,
    ) -> Result<Response<Self::WatchVmsStream>, Status> {
        // Subscribe before listing so that no change falls between the two.
        let mut events = self.vmm.subscribe();
        let initial = if request.into_inner().include_initial {
            let mut vms = self.vmm.list(&BTreeMap::new())?;
            vms.retain(|vm| !vm.spec.is_pod_vm());
            vms
        } else {
            Vec::new()
        };
        let stop = self.vmm.shutdown_token();
        let output = async_stream::stream! {
            for vm in initial {
                yield Ok(proto::VmEvent {
                    r#type: proto::VmEventType::Initial as i32,
                    vm: Some(vm_to_proto(&vm)),
                });
            }
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = events.recv() => next,
                };
                match next {
                    Ok(event) if event.vm.spec.is_pod_vm() => {}
                    Ok(event) => {
                        let kind = match event.kind {
                            VmEventKind::Created => proto::VmEventType::Created,
                            VmEventKind::StateChanged => proto::VmEventType::StateChanged,
                            VmEventKind::Updated => proto::VmEventType::Updated,
                            VmEventKind::Deleted => proto::VmEventType::Deleted,
                        };
                        yield Ok(proto::VmEvent { r#type: kind as i32, vm: Some(vm_to_proto(&event.vm)) });
                    }
                    Err(RecvError::Lagged(n)) => {
                        yield Err(Status::data_loss(format!("watcher fell behind by {n} events: watch again with include_initial")));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(output)))
    }
}

/// The serial console of a running VM (or pod microVM) as a gRPC stream: the scrollback, then
/// live output; `first_input` and everything `inputs` yields go to the guest.
pub(crate) async fn console_stream(
    vmm: &Vmm,
    id: &str,
    first_input: Vec<u8>,
    mut inputs: impl tokio_stream::Stream<Item = Result<Vec<u8>, Status>> + Send + Unpin + 'static,
) -> Result<Response<BoxStream<proto::ConsoleOutput>>, Status> {
    let hub = vmm.console(id)?;
    let (scrollback, live) = hub.subscribe();
    let unavailable = || Status::from(VmmError::ConsoleUnavailable(id.to_string()));
    let mut live = live.ok_or_else(unavailable)?;
    if !first_input.is_empty() {
        hub.send_input(Bytes::from(first_input))
            .await
            .map_err(|_| unavailable())?;
    }
    // Input from this viewer, until it hangs up.
    let input_hub = hub.clone();
    tokio::spawn(async move {
        while let Some(Ok(data)) = inputs.next().await {
            if !data.is_empty() && input_hub.send_input(Bytes::from(data)).await.is_err() {
                break;
            }
        }
    });
    let stop = vmm.shutdown_token();
    let output = async_stream::stream! {
        if !scrollback.is_empty() {
            yield Ok(proto::ConsoleOutput { data: scrollback });
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = live.recv() => next,
            };
            match next {
                Ok(data) => yield Ok(proto::ConsoleOutput { data: data.to_vec() }),
                Err(RecvError::Lagged(n)) => {
                    let note = format!("\r\n[mvirt: {n} console chunks dropped: viewer too slow]\r\n");
                    yield Ok(proto::ConsoleOutput { data: note.into_bytes() });
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Response::new(Box::pin(output)))
}

fn migration_to_proto(stats: &crate::hypervisor::MigrationStats) -> proto::MigrationProgress {
    use crate::hypervisor::MigrationStatus as S;
    let status = match stats.status {
        S::None | S::Active => proto::MigrationStatus::Active,
        S::Completed => proto::MigrationStatus::Completed,
        S::Failed => proto::MigrationStatus::Failed,
        S::Cancelled => proto::MigrationStatus::Cancelled,
    };
    proto::MigrationProgress {
        status: status as i32,
        transferred_bytes: stats.transferred_bytes,
        remaining_bytes: stats.remaining_bytes,
        total_bytes: stats.total_bytes,
        disk_transferred_bytes: stats.disk_transferred_bytes,
        downtime_ms: stats.downtime_ms,
        total_time_ms: stats.total_time_ms,
        error: stats.error.clone(),
    }
}
