//! The domain model: every resource the control plane stores, as plain serde data.
//!
//! A resource is `Meta` (id, name, project, labels, revisions, times) + a `spec` (what the user
//! asked for, validated in `validate.rs`) + a `status` (what nodes report, changed only by
//! `UpdateResourceStatus`). These same types are the REST JSON (and OpenAPI schemas); the proto
//! types of NodeService are converted at the edge in `grpc.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A string-valued enum of the model: serde and the OpenAPI schema use the given strings. (The
/// enums carry no doc comment of their own: the schema of each field that has one keeps the
/// field's description only.)
macro_rules! string_enum {
    ($name:ident { $($(#[$vm:meta])* $variant:ident = $s:tt),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant),+
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($s),+]))
                    .into()
            }
        }

        impl ToSchema for $name {}

        impl $name {
            /// The string this value is in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();

            /// The value whose JSON string is `s`.
            fn from_str(s: &str) -> Result<Self, ()> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    // Where a resource is, as its node reports it (empty until the first report).
    Phase {
        #[default]
        Unknown = "",
        Pending = "pending",
        Creating = "creating",
        Ready = "ready",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        Importing = "importing",
        Deleting = "deleting",
    }
}

string_enum! {
    // Whether a node is reachable, as the control plane sees it.
    NodeState {
        #[default]
        Online = "online",
        Offline = "offline",
    }
}

string_enum! {
    // What a VM's node is asked to keep it in.
    DesiredState {
        #[default]
        Running = "running",
        Stopped = "stopped",
    }
}

string_enum! {
    // How the last stop of a VM was requested.
    StopMode {
        #[default]
        Graceful = "graceful",
        Force = "force",
    }
}

string_enum! {
    // How a VM boots.
    BootMode {
        #[default]
        Uefi = "uefi",
        DirectKernel = "direct_kernel",
    }
}

string_enum! {
    // Whether the scheduler has placed a VM.
    SchedulingState {
        #[default]
        Pending = "pending",
        Scheduled = "scheduled",
    }
}

string_enum! {
    // What `POST /v1/vms/{id}/{action}` asks of a VM.
    VmAction {
        #[default]
        Start = "start",
        Stop = "stop",
        Kill = "kill",
        Restart = "restart",
    }
}

string_enum! {
    // What an API token may do (README "Tokens and roles"): everything; project-scoped writes
    // and reads; reads only; or only NodeService, bound to one node.
    Role {
        #[default]
        Admin = "admin",
        Operator = "operator",
        Viewer = "viewer",
        Node = "node",
    }
}

/// Identity and bookkeeping shared by every resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Meta {
    pub id: String,
    pub name: String,
    /// Project name (projects themselves carry their own name here).
    pub project: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Raft log index that last changed this object (its ETag).
    pub revision: u64,
    /// Raft log index that last changed what a node must do (spec, placement); status reports
    /// do not move it.
    pub spec_revision: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The request id (`X-Request-Id`) of the last request that changed this object; its
    /// work can be followed in every process's audit entries (`GET /v1/logs?trace_id=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What nodes report. Empty phase until the first report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    #[serde(default)]
    #[schema(inline)]
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default)]
    pub observed_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Volumes: the generation of the last rollback the node carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Pods: each container's state, as the pod's node last reported it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStatus>,
    /// Pods: the version of the pod artefacts (kernel + initramfs) the microVM booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artefacts_version: Option<String>,
    /// For resources that exist on several nodes (templates, networks, security groups): each
    /// node's own report, by node id. The top-level fields then mirror the least advanced node
    /// (failed before pending/importing before ready), so one node's success never hides
    /// another's failure.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, PerNodeStatus>,
    /// Backups: what the node's mvirt-zfs wrote, once the backup is `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupReport>,
    /// Replications: one entry per volume and target, as the source node last reported it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaReport>,
}

/// One node's report on a resource that lives on several nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PerNodeStatus {
    #[schema(inline)]
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bytes_total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
}

// ------------------------------------------------------------------------------------ projects

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default)]
    pub description: String,
}

// ------------------------------------------------------------------------------------ nodes

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// False = cordoned: nothing new is placed here.
    #[serde(default = "default_true")]
    pub schedulable: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// `online` or `offline`.
    #[schema(inline)]
    pub state: NodeState,
    pub address: String,
    pub capacity: Capacity,
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state_change_at: Option<String>,
    /// The agent's NodeAgent endpoint (console relay); empty = none.
    #[serde(default)]
    pub console_endpoint: String,
    /// The version of the pod artefacts (kernel + initramfs of pod microVMs) the node's
    /// mvirt-vmm serves, from their manifest; empty when the node has none usable (missing or
    /// failing verification: then it cannot run pods).
    #[serde(default)]
    pub pod_artefacts_version: String,
    /// The node's last drain (`POST /v1/nodes/{id}/drain`), while it runs and after it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<NodeDrain>,
}

/// Where a node drain is: `draining` (VMs are migrating off), then `drained` (nothing that
/// can move is left on it), `failed` (something could not move: see `failed`) or `cancelled`
/// (`DELETE /v1/nodes/{id}/drain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    #[default]
    Draining,
    Drained,
    Failed,
    Cancelled,
}

/// Something a drain could not move off the node, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrainFailure {
    /// `vm` or `pod`.
    pub kind: String,
    pub id: String,
    pub reason: String,
}

/// `POST /v1/nodes/{id}/drain` (no options yet: `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {}

/// A node drain: the node is cordoned and its running VMs migrate live to other nodes, one at
/// a time; each next migration starts when the previous one is reported completed or failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeDrain {
    pub id: String,
    #[schema(inline)]
    pub state: DrainState,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// VMs still to move (not started yet), in the order they will go.
    #[serde(default)]
    pub remaining: Vec<String>,
    /// VMs migrating right now.
    #[serde(default)]
    pub migrating: Vec<String>,
    /// VMs moved off the node (live or cold).
    #[serde(default)]
    pub moved: Vec<String>,
    /// Pods moved off the node (re-created on another one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_pods: Vec<String>,
    /// VMs and pods that could not move (no node to take it, a failed migration or cold
    /// move, a stopped VM not reported stopped yet): the node still holds them.
    #[serde(default)]
    pub failed: Vec<DrainFailure>,
    /// Seed of the drain's migrations' grant tokens. Stored (replicated), never shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(ignore)]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
    /// Sum of what is placed on the node (filled when read, not stored).
    #[serde(default)]
    pub allocated: Capacity,
    /// Secret the API presents to the agent's console relay. Stored (replicated), never shown:
    /// views for REST and events clear it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(ignore)]
    pub console_secret: String,
}

// ------------------------------------------------------------------------------------ networks

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub ipv4_prefix: Option<String>,
    #[serde(default)]
    pub ipv6_prefix: Option<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    #[serde(default)]
    pub is_public: bool,
    /// VXLAN VNI that names the network between nodes (1..=16777215). Allocated by the control
    /// plane when omitted on create (unique in the cluster, never reused while the network
    /// exists); a requested key is refused with 409 when another network has it. Fixed after
    /// create: an update may omit it or repeat it.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16777215)]
    pub tunnel_key: Option<u32>,
}

/// The largest VXLAN VNI.
pub const MAX_TUNNEL_KEY: u32 = 0xff_ffff;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: NetworkSpec,
    pub status: Status,
}

// ------------------------------------------------------------------------------------ NICs

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub network_id: String,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub ipv6_address: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Prefixes (CIDR, in the network's address families) routed to this NIC, for a VM that
    /// routes for others. Changeable.
    #[serde(default)]
    pub routed_prefixes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: NicSpec,
    pub status: Status,
    /// The VM this NIC is attached to.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// Set when the NIC was created by and belongs to a VM (deleted with it).
    #[serde(default)]
    pub owner_vm_id: Option<String>,
    /// The pod this NIC is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,
    /// Set when the NIC was created by and belongs to a pod (deleted with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_pod_id: Option<String>,
}

// ------------------------------------------------------------------------------ security groups

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRule {
    /// Minted by the API when omitted.
    #[serde(default)]
    pub id: Option<String>,
    #[schema(inline)]
    pub direction: Direction,
    #[serde(default)]
    #[schema(inline)]
    pub protocol: Protocol,
    #[serde(default)]
    pub port_min: u16,
    #[serde(default)]
    pub port_max: u16,
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub description: String,
}

string_enum! {
    // Which traffic a security-group rule admits: to the NIC or from it.
    Direction {
        #[default]
        Ingress = "ingress",
        Egress = "egress",
    }
}

string_enum! {
    // The protocol a security-group rule matches (`any` when omitted).
    Protocol {
        #[default]
        Any = "any",
        Tcp = "tcp",
        Udp = "udp",
        Icmp = "icmp",
        Icmpv6 = "icmpv6",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    #[serde(default)]
    pub rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroup {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: SecurityGroupSpec,
    pub status: Status,
}

// ------------------------------------------------------------------------------------ templates

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// `file://` or `http(s)://` image to import on every node. Empty for a template promoted
    /// from a snapshot (then `source_snapshot` names it).
    #[serde(default)]
    pub source_url: String,
    /// Set by `POST /v1/volumes/{id}/snapshots/{sid}/promote`: the template is a copy of that
    /// snapshot, made on the volume's node, and exists on that node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot: Option<SnapshotSource>,
    /// The image's format (`raw` when omitted).
    #[serde(default)]
    #[schema(inline)]
    pub format: ImageFormat,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub kernel_url: Option<String>,
    #[serde(default)]
    pub initramfs_url: Option<String>,
    /// SHA-256 of the file at `kernel_url` (64 lowercase hex characters; needs `kernel_url`).
    /// Every node verifies its download and fails the import on a mismatch.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub kernel_sha256: Option<String>,
    /// SHA-256 of the file at `initramfs_url` (64 lowercase hex characters; needs
    /// `initramfs_url`). Every node verifies its download and fails the import on a mismatch.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub initramfs_sha256: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
}

string_enum! {
    // The format of a template's image.
    ImageFormat {
        #[default]
        Raw = "raw",
        Qcow2 = "qcow2",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: TemplateSpec,
    pub status: Status,
    /// The one node a template promoted from a snapshot lives on (VMs cloning it are placed
    /// there); none for imported templates, which every node imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Set by `POST /v1/templates/{id}/cancel`: nodes stop a running import and start none
    /// (copies already imported stay usable).
    #[serde(default)]
    pub import_cancelled: bool,
}

// ------------------------------------------------------------------------------------ volumes

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub size_bytes: u64,
    #[serde(default)]
    pub template_id: Option<String>,
    /// Pin the volume to a node (otherwise it goes where its first VM is placed).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Create-only: the volume is restored from this backup (on the backup's node; the
    /// backup must be `ready`). Excludes `template_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Backup retention: when a new backup of this volume is ready, only the newest
    /// `backup_keep_last` ready backups are kept (with the backups they are increments on).
    /// Unset: every backup is kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_keep_last: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSnapshot {
    pub id: String,
    pub name: String,
    pub created_at: String,
    /// What the volume's node reports: `pending` until ZFS holds the snapshot (or while the
    /// volume is on no node yet), then `ready`, or `failed` with the reason.
    #[serde(default)]
    pub status: SnapshotStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotStatus {
    /// `pending`, `ready` or `failed`.
    #[schema(inline)]
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    /// Bytes held only by this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
}

impl Default for SnapshotStatus {
    fn default() -> Self {
        Self {
            phase: Phase::Pending,
            message: String::new(),
            used_bytes: None,
        }
    }
}

/// A rollback asked for through `POST /v1/volumes/{id}/snapshots/{sid}/rollback`. The volume's
/// node carries it out once (it remembers the generation it applied) and reports the generation
/// in `status.rollback_generation`; until they match, the rollback is pending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeRollback {
    pub snapshot_id: String,
    /// Counts the rollbacks of this volume (1 for the first).
    pub generation: u64,
    pub requested_at: String,
}

/// Where a template promoted from a volume snapshot comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSource {
    pub volume_id: String,
    pub snapshot_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: VolumeSpec,
    pub status: Status,
    /// Where the volume lives (set by pinning or by its first VM's placement).
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub owner_vm_id: Option<String>,
    /// The VM the volume is attached to.
    #[serde(default)]
    pub vm_id: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<VolumeSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<VolumeRollback>,
    /// Set by an HA failover: the volume's node holds a replica of it, which its agent
    /// promotes (mvirt-zfs `PromoteReplica`) instead of creating the volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_replica: bool,
}

impl Volume {
    /// A new volume as a create asks for it: on no node, attached to nothing, no snapshots.
    pub fn new(meta: Meta, spec: VolumeSpec) -> Volume {
        Volume {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            owner_vm_id: None,
            vm_id: None,
            snapshots: Vec::new(),
            rollback: None,
            promote_replica: false,
        }
    }
}

// -------------------------------------------------------------------------------- backups

/// What a backup is of. A backup is taken on its volume's node by that node's mvirt-zfs (a
/// `zfs send` stream file in its backup directory) and outlives the volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    pub volume_id: String,
    /// An increment on the volume's newest backup (the volume must have a backup already).
    #[serde(default)]
    pub incremental: bool,
}

/// A backup of one volume. `status.phase`: empty until the node reports (pending), `running`
/// while the stream is written, `ready` with `status.backup` (size, SHA-256, base), or
/// `failed` with the reason in `status.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: BackupSpec,
    pub status: Status,
    /// The node that holds the backup (the volume's node when it was taken).
    #[serde(default)]
    pub node_id: Option<String>,
    /// The volume's name when the backup was asked for.
    #[serde(default)]
    pub volume_name: String,
    /// Set when the backup was taken as part of a VM's backup (`POST /v1/vms/{id}/backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

impl Backup {
    /// A new backup as a create asks for it: on no node until the state checks its volume.
    pub fn new(meta: Meta, spec: BackupSpec) -> Backup {
        Backup {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            volume_name: String::new(),
            vm_id: None,
        }
    }
}

/// A ready backup as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct BackupReport {
    /// Size and lowercase hex SHA-256 of the stream file.
    pub size_bytes: u64,
    pub sha256: String,
    /// The backup this one is an increment on (`null`: a full backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backup_id: Option<String>,
    /// The volume's size when the backup was taken (a restore needs at least this much).
    pub volume_size_bytes: u64,
}

// ---------------------------------------------------------------------------- replications

/// A VM's replication schedule: every `interval_secs` its node takes a replication snapshot of
/// each of the VM's volumes and sends it (incrementally after the first time) to each target
/// node, where it is kept as a replica (read-only, promoted by HA failover). Both sides keep
/// the newest `keep` replication snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSpec {
    /// The VM (id) whose volumes are replicated.
    pub vm_id: String,
    /// Partner node ids (1 to 4, not the VM's node).
    pub targets: Vec<String>,
    /// Seconds between two replications (10 to 86400).
    pub interval_secs: u32,
    /// Replication snapshots kept on the source and on each replica (1 to 100; default 3).
    #[serde(default = "default_replication_keep")]
    pub keep: u32,
}

fn default_replication_keep() -> u32 {
    3
}

/// A replication schedule. The source is the VM's node, wherever the VM is now;
/// `status.replicas` holds one entry per volume and target as that node reports it;
/// `status.phase` is `ready` when every volume reached every target on its last attempt,
/// `failed` (with the first error in `status.message`) otherwise, `pending` while the VM is on
/// no node, empty until the source reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replication {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: ReplicationSpec,
    pub status: Status,
}

impl Replication {
    pub fn new(meta: Meta, spec: ReplicationSpec) -> Replication {
        Replication {
            meta,
            spec,
            status: Status::default(),
        }
    }
}

/// One volume's replication to one target node, as the source node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct ReplicaReport {
    pub volume_id: String,
    pub target_node_id: String,
    /// The newest replication snapshot the target holds (`null`: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_id: Option<String>,
    /// When the last successful push ended (RFC 3339; `null`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replicated_at: Option<String>,
    /// Bytes of the last successful stream.
    pub last_bytes: u64,
    /// Whether the last successful stream was an increment.
    pub last_incremental: bool,
    /// Why the last attempt failed (`null` after a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Seconds between the last success and the report: the data a failover to this target
    /// would lose, as of the report.
    pub lag_secs: u64,
}

// ------------------------------------------------------------------------------------ VMs

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RootVolumeRequest {
    pub template_id: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceRequest {
    pub network_id: String,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub ipv6_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub hostname: Option<String>,
    /// `uefi`, `direct_kernel`, or omitted (direct kernel when the root template has a kernel).
    #[serde(default)]
    #[schema(inline)]
    pub boot_mode: Option<BootMode>,
    #[serde(default)]
    pub volume_ids: Vec<String>,
    #[serde(default)]
    pub nic_ids: Vec<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// `running` (default) or `stopped`.
    #[serde(default)]
    #[schema(inline)]
    pub desired_state: DesiredState,
    /// A node id, a node name, or `k=v,k2=v2` labels.
    #[serde(default)]
    pub node_selector: Option<String>,
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// Create-only: an owned root volume cloned from a template (prepended to `volume_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolumeRequest>,
    /// Create-only: owned NICs (appended to `nic_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterfaceRequest>,
    /// Back the guest's memory with the host's hugepages (the VM fails to start, with the
    /// reason, on a node without enough free hugepages). Fixed after create.
    #[serde(default)]
    pub hugepages: bool,
    /// Expose the CPU's virtualization extensions to the guest. Fixed after create.
    #[serde(default)]
    pub nested_virtualization: bool,
    /// High availability: when the VM's node is lost, the VM is restarted on the online node
    /// holding its newest replica (needs a replication schedule; see `ha_status` in the object).
    #[serde(default)]
    pub ha: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Scheduling {
    /// `pending` or `scheduled`.
    #[schema(inline)]
    pub state: SchedulingState,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: VmSpec,
    pub status: Status,
    #[serde(default)]
    pub node_id: Option<String>,
    /// The state of the VM's node (`online`/`offline`) as the control plane sees it, kept
    /// current when the node's state changes. While it is `offline`, `status` is only the node's
    /// last report and may be stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub node_state: Option<NodeState>,
    pub scheduling: Scheduling,
    /// `graceful` or `force`: how the last stop was requested.
    #[serde(default)]
    #[schema(inline)]
    pub stop_mode: StopMode,
    #[serde(default)]
    pub restart_generation: u64,
    /// The VM's live migration: the running one, or the last one (`mvirt-api`
    /// `state/migration.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// What the HA monitor last did with this `ha` VM (`mvirt-api` `ha.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_status: Option<HaStatus>,
}

/// `failed_over`: the VM's node was lost and the VM was moved to the node holding its newest
/// replica; `stuck`: its node is lost and it stays there (`message` says why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HaState {
    #[default]
    FailedOver,
    Stuck,
}

/// The HA monitor's last action on a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HaStatus {
    #[schema(inline)]
    pub state: HaState,
    /// Why the VM is stuck, or what the failover did.
    pub message: String,
    /// The lost node.
    pub from_node_id: String,
    /// Where the VM was restarted (`failed_over`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node_id: Option<String>,
    /// When the monitor acted (RFC 3339).
    pub at: String,
    /// The oldest `last_replicated_at` of the replicas the VM was restarted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicated_at: Option<String>,
    /// The data-loss window: seconds between `replicated_at` and `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss_secs: Option<u64>,
}

impl Vm {
    /// A new VM as a create asks for it: not placed yet.
    pub fn new(meta: Meta, spec: VmSpec) -> Vm {
        Vm {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            node_state: None,
            scheduling: Scheduling::default(),
            stop_mode: StopMode::Graceful,
            restart_generation: 0,
            migration: None,
            ha_status: None,
        }
    }

    /// The VM as REST, events and audit show it: the migration's grant token removed.
    pub fn view(&self) -> Vm {
        let mut view = self.clone();
        if let Some(m) = view.migration.as_mut() {
            m.grant_token.clear();
        }
        view
    }
}

string_enum! {
    // Where a live migration is: `pending` (the target prepares), `transferring` (memory and
    // disks on the way), `completing` (the target takes over), then one of the ends.
    MigrationPhase {
        #[default]
        Pending = "pending",
        Transferring = "transferring",
        Completing = "completing",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl MigrationPhase {
    /// Still running (not completed, failed or cancelled).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            MigrationPhase::Pending | MigrationPhase::Transferring | MigrationPhase::Completing
        )
    }
}

/// A VM's live migration from its node to another (`POST /v1/vms/{id}/migrate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Migration {
    pub id: String,
    #[schema(inline)]
    pub phase: MigrationPhase,
    pub source_node_id: String,
    pub target_node_id: String,
    /// Bytes sent so far (memory and disks), as the source's hypervisor counts them.
    #[serde(default)]
    pub bytes_transferred: u64,
    /// What is left to send in this round (0 when unknown).
    #[serde(default)]
    pub bytes_remaining: u64,
    /// The guest's pause at the switch-over (completed migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed or was cancelled; the VM runs on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The secret of the transfer grant (source → target). Stored (replicated), never shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(ignore)]
    pub grant_token: String,
    /// A cold move of a stopped VM (mvirt-api README, "Cold move"): its volumes are sent to
    /// the target as replicas and promoted there; no hypervisor stream, no downtime.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold: bool,
}

/// `POST /v1/vms/{id}/migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The target node (id or name); the scheduler picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 253)]
    pub node: Option<String>,
}

// ------------------------------------------------------------------------------------ pods

string_enum! {
    // When a pod's container is restarted after it exits (Kubernetes semantics).
    RestartPolicy {
        #[default]
        Always = "always",
        OnFailure = "on_failure",
        Never = "never",
    }
}

string_enum! {
    // The transport protocol of a container port.
    PortProtocol {
        #[default]
        Tcp = "tcp",
        Udp = "udp",
    }
}

string_enum! {
    // A container's state, as mvirt-one reports it.
    ContainerState {
        #[default]
        Waiting = "waiting",
        Created = "created",
        Running = "running",
        Exited = "exited",
    }
}

string_enum! {
    // What `POST /v1/pods/{id}/{action}` asks of a pod.
    PodAction {
        #[default]
        Start = "start",
        Stop = "stop",
        Restart = "restart",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    /// A DNS label naming the port (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    #[schema(inline)]
    pub protocol: PortProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PodContainer {
    /// A DNS label, unique in the pod.
    pub name: String,
    /// OCI image reference, e.g. `registry.example:5000/team/app:1.2` or `...@sha256:...`.
    pub image: String,
    /// Overrides the image's ENTRYPOINT.
    #[serde(default)]
    pub command: Vec<String>,
    /// Overrides the image's CMD.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Empty = the image's.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// cgroup CPU limit in thousandths of a CPU (none = unlimited).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// cgroup memory limit (none = unlimited).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// `always` (default), `on_failure` or `never`.
    #[serde(default)]
    #[schema(inline)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// Credentials for one registry host, used for every container image on it. Write-only:
/// `password` and `token` are never returned (reads show `registry` and `username`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    /// `host[:port]`, as in the image references.
    pub registry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// With `username` (basic auth). Write-only; on an update, omitted = keep the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only)]
    pub password: Option<String>,
    /// A bearer token instead of username/password. Write-only; on an update, omitted = keep
    /// the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only)]
    pub token: Option<String>,
}

impl RegistryCredential {
    /// The credential without its secret, as reads, events and audit entries show it.
    pub fn redacted(&self) -> RegistryCredential {
        RegistryCredential {
            registry: self.registry.clone(),
            username: self.username.clone(),
            password: None,
            token: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// vCPUs of the pod's microVM.
    pub vcpus: u32,
    /// Memory of the pod's microVM (a multiple of 1 MiB, at least 128 MiB).
    pub memory_bytes: u64,
    /// Hostname of the containers (default: the pod's name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// At least one; fixed after create.
    pub containers: Vec<PodContainer>,
    /// Existing NICs to attach (in order, after the owned ones).
    #[serde(default)]
    pub nic_ids: Vec<String>,
    /// Create-only: owned NICs (created and deleted with the pod; listed first in `nic_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterfaceRequest>,
    /// A node id, a node name, or `k=v,k2=v2` labels.
    #[serde(default)]
    pub node_selector: Option<String>,
    /// `running` (default) or `stopped`.
    #[serde(default)]
    #[schema(inline)]
    pub desired_state: DesiredState,
    /// Registry credentials (write-only secrets, see `RegistryCredential`).
    #[serde(default)]
    pub registry_credentials: Vec<RegistryCredential>,
}

/// One container's state in a pod's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_digest: String,
    /// `waiting`, `created`, `running` or `exited`.
    #[serde(default)]
    #[schema(inline)]
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pod {
    #[serde(flatten)]
    pub meta: Meta,
    pub spec: PodSpec,
    /// What the pod's node reports (`containers` and `artefacts_version` besides the common
    /// fields).
    pub status: Status,
    #[serde(default)]
    pub node_id: Option<String>,
    /// The state of the pod's node (`online`/`offline`); while `offline`, `status` is only the
    /// node's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub node_state: Option<NodeState>,
    pub scheduling: Scheduling,
    /// `graceful` or `force`: how the last stop was requested.
    #[serde(default)]
    #[schema(inline)]
    pub stop_mode: StopMode,
    /// Moved by the restart action.
    #[serde(default)]
    pub restart_generation: u64,
}

impl Pod {
    /// A new pod as a create asks for it: not placed yet.
    pub fn new(meta: Meta, spec: PodSpec) -> Pod {
        Pod {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            node_state: None,
            scheduling: Scheduling::default(),
            stop_mode: StopMode::Graceful,
            restart_generation: 0,
        }
    }

    /// The pod as REST, events and audit show it: registry secrets removed.
    pub fn view(&self) -> Pod {
        let mut view = self.clone();
        view.spec.registry_credentials = self
            .spec
            .registry_credentials
            .iter()
            .map(RegistryCredential::redacted)
            .collect();
        view
    }
}

// ------------------------------------------------------------------------------------ auth

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// `admin`, `operator`, `viewer` or `node`.
    #[schema(inline)]
    pub role: Role,
    /// sha256 of the secret (hex); never shown over REST (see `rest::TokenView`).
    pub hash: String,
    pub created_at: String,
    pub revision: u64,
    /// Operator and viewer tokens: the projects (names) the token sees; empty = every project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// Node tokens: the node the token registered first (`BindToken`); it acts for that node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl ApiToken {
    /// Whether the token sees objects of `project` (empty scope = every project).
    pub fn sees(&self, project: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == project)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub hash: String,
    pub expires_at_ms: i64,
    pub used: bool,
}

/// A control-plane member as Raft knows it (openraft's `Node` type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// `http://host:port` of the member's REST API.
    pub api_url: String,
    /// `host:port` of the member's Raft listener.
    pub raft_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (raft {})", self.api_url, self.raft_addr)
    }
}

/// Kinds of resources, as used in events, status reports and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Project,
    Node,
    Network,
    Nic,
    SecurityGroup,
    Template,
    Volume,
    Vm,
    Pod,
    Backup,
    Replication,
    Token,
    JoinToken,
    Idempotency,
}

impl Kind {
    /// Kinds that exist on several nodes at once, whose status is kept per node.
    pub fn is_multi_node(self) -> bool {
        matches!(self, Kind::Network | Kind::SecurityGroup | Kind::Template)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::Node => "node",
            Kind::Network => "network",
            Kind::Nic => "nic",
            Kind::SecurityGroup => "security_group",
            Kind::Template => "template",
            Kind::Volume => "volume",
            Kind::Vm => "vm",
            Kind::Pod => "pod",
            Kind::Backup => "backup",
            Kind::Replication => "replication",
            Kind::Token => "token",
            Kind::JoinToken => "join_token",
            Kind::Idempotency => "idempotency",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "project" => Kind::Project,
            "node" => Kind::Node,
            "network" => Kind::Network,
            "nic" => Kind::Nic,
            "security_group" => Kind::SecurityGroup,
            "template" => Kind::Template,
            "volume" => Kind::Volume,
            "vm" => Kind::Vm,
            "pod" => Kind::Pod,
            "backup" => Kind::Backup,
            "replication" => Kind::Replication,
            "token" => Kind::Token,
            "join_token" => Kind::JoinToken,
            "idempotency" => Kind::Idempotency,
            _ => return None,
        })
    }
}

/// One change, appended by `apply`. `revision` is the Raft log index of the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub revision: u64,
    /// `<kind>.<verb>`, e.g. `vm.created`, `vm.status`, `network.deleted`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub project: String,
    /// The object after the change (`null` for deletions).
    #[schema(value_type = Object)]
    pub object: Option<Json>,
}

/// A JSON document kept as its text. `apply` serializes a changed object once, straight from
/// its type, and that text becomes the event, the response and the stored row as it is —
/// building a `serde_json::Value` tree per use and serializing it again was the largest part of
/// every member's CPU per write.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<serde_json::value::RawValue>);

impl Json {
    /// `v` as JSON (`null` if it cannot be serialized, which our types never fail to).
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Self {
        serde_json::value::to_raw_value(v)
            .map(Json)
            .unwrap_or_else(|_| Json::null())
    }

    pub fn null() -> Self {
        Json(serde_json::value::RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parsed into a `Value` (for callers that inspect or edit it).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl From<Json> for String {
    fn from(j: Json) -> String {
        String::from(Box::<str>::from(j.0))
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}
