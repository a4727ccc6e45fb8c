//! The commands that travel through Raft: what a write asks for, fully minted (ids, times)
//! before it is proposed, so that applying it is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::*;

/// Idempotency of creates: the key the client sent and a fingerprint of its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
    /// When the request arrived (minted before proposing); records are pruned after the
    /// retention window (`--idempotency-retention-secs`).
    #[serde(default)]
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    pub fingerprint: String,
    pub kind: Kind,
    pub id: String,
    #[serde(default)]
    pub created_at_ms: i64,
}

/// A placement decided by the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The VM's id, or the pod's when `kind` is `pod`.
    pub vm_id: String,
    pub node_id: String,
    /// What is placed: `vm` (the default, as the log always had it) or `pod`.
    #[serde(default = "placed_kind", skip_serializing_if = "is_vm")]
    pub kind: Kind,
}

fn placed_kind() -> Kind {
    Kind::Vm
}

fn is_vm(kind: &Kind) -> bool {
    *kind == Kind::Vm
}

/// One status report from a node (domain form of `proto::ResourceStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub kind: Kind,
    pub id: String,
    pub status: Status,
    /// Volumes: the state of each of the volume's snapshots on its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotReport>,
    /// VMs: the source node's report on the VM's live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::MigrationUpdate>,
}

/// One snapshot's state as the volume's node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub id: String,
    pub status: SnapshotStatus,
}

/// A state change, fully minted before it is proposed. (Variants carry whole objects; a
/// command lives briefly and is serialized into the log, so boxing buys nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    CreateProject {
        project: Project,
    },
    CreateNetwork {
        network: Network,
    },
    CreateNic {
        nic: Nic,
    },
    CreateSecurityGroup {
        security_group: SecurityGroup,
    },
    CreateTemplate {
        template: Template,
    },
    CreateVolume {
        volume: Volume,
    },
    CreateVm {
        vm: Vm,
        owned_volumes: Vec<Volume>,
        owned_nics: Vec<Nic>,
    },
    CreatePod {
        pod: Pod,
        owned_nics: Vec<Nic>,
    },
    /// One backup, or a VM's backups (one per volume) asked for at once.
    CreateBackups {
        backups: Vec<Backup>,
    },
    CreateReplication {
        replication: Replication,
    },
    /// Start, stop (graceful or forced) or restart a pod.
    PodAction {
        id: String,
        action: PodAction,
        #[serde(default)]
        force: bool,
        now: String,
    },
    Update(Update),
    Delete {
        kind: Kind,
        id: String,
        if_match: Option<u64>,
        force: bool,
    },
    VmAction {
        id: String,
        action: VmAction,
        now: String,
    },
    /// Starts a live migration (`node`: the target's id or name; `None`: the scheduler's pick).
    MigrateVm {
        id: String,
        node: Option<String>,
        migration_id: String,
        grant_token: String,
        now: String,
    },
    /// Cordons node `id` and migrates its running VMs off it, one at a time (`state/drain.rs`).
    /// The drain's migrations' ids and grant tokens derive from `drain_id` and `secret`.
    DrainNode {
        id: String,
        drain_id: String,
        secret: String,
        now: String,
    },
    /// Ends node `id`'s drain (no new migrations; running ones finish) and uncordons it.
    UndrainNode {
        id: String,
        #[serde(default)]
        if_match: Option<u64>,
        now: String,
    },
    /// The leader's HA monitor (`crate::ha`): a VM on a lost node moves to the node holding its
    /// replicas, or stays with the reason.
    HaFailover {
        decision: super::HaDecision,
        now: String,
    },
    /// The leader's monitor: a migration whose source or target node is lost ends `failed`.
    EndMigrationOnNodeLoss {
        loss: super::MigrationLoss,
        now: String,
    },
    ResizeVolume {
        id: String,
        size_bytes: u64,
        if_match: Option<u64>,
        now: String,
    },
    CreateSnapshot {
        volume_id: String,
        snapshot: VolumeSnapshot,
    },
    DeleteSnapshot {
        volume_id: String,
        snapshot_id: String,
        now: String,
    },
    RollbackSnapshot {
        volume_id: String,
        snapshot_id: String,
        now: String,
    },
    /// Stops a template's imports on every node.
    CancelImport {
        id: String,
        now: String,
    },
    /// A new template copied from a volume's snapshot on the volume's node.
    PromoteSnapshot {
        volume_id: String,
        snapshot_id: String,
        template: Template,
    },
    AddRule {
        security_group_id: String,
        rule: SecurityGroupRule,
        now: String,
    },
    DeleteRule {
        security_group_id: String,
        rule_id: String,
        now: String,
    },
    RegisterNode {
        node: Node,
    },
    SetNodeState {
        id: String,
        state: NodeState,
        capacity: Option<Capacity>,
        /// The node's pod artefacts version from a heartbeat (`None` = unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_artefacts_version: Option<String>,
        now: String,
    },
    UpdateStatuses {
        node_id: String,
        reports: Vec<StatusReport>,
        now: String,
    },
    Schedule {
        placements: Vec<Placement>,
        pending: Vec<(String, String)>,
        now: String,
    },
    CreateToken {
        token: ApiToken,
    },
    DeleteToken {
        id: String,
    },
    /// A node token's first `Register`: from now on it acts for this node only.
    BindToken {
        id: String,
        node_id: String,
    },
    CreateJoinToken {
        token: JoinToken,
    },
    /// A joining member presents a join token; apply marks it used and mints the member id.
    ConsumeJoinToken {
        hash: String,
        now_ms: i64,
    },
    /// Housekeeping by the leader: forgets idempotency records created before
    /// `idempotency_before_ms` and join tokens that are used or expired at `now_ms`.
    Prune {
        idempotency_before_ms: i64,
        now_ms: i64,
    },
    /// A no-op used by linearizable reads through the log and by tests.
    Noop,
}

impl Command {
    /// The command's name: its `op` tag in the log (`create_vm`, `schedule`, ...), without
    /// serializing it (audit summaries name every write's op).
    pub fn op(&self) -> &'static str {
        match self {
            Command::CreateProject { .. } => "create_project",
            Command::CreateNetwork { .. } => "create_network",
            Command::CreateNic { .. } => "create_nic",
            Command::CreateSecurityGroup { .. } => "create_security_group",
            Command::CreateTemplate { .. } => "create_template",
            Command::CreateVolume { .. } => "create_volume",
            Command::CreateVm { .. } => "create_vm",
            Command::CreatePod { .. } => "create_pod",
            Command::CreateBackups { .. } => "create_backups",
            Command::CreateReplication { .. } => "create_replication",
            Command::PodAction { .. } => "pod_action",
            Command::Update(_) => "update",
            Command::Delete { .. } => "delete",
            Command::VmAction { .. } => "vm_action",
            Command::MigrateVm { .. } => "migrate_vm",
            Command::DrainNode { .. } => "drain_node",
            Command::UndrainNode { .. } => "undrain_node",
            Command::HaFailover { .. } => "ha_failover",
            Command::EndMigrationOnNodeLoss { .. } => "end_migration_node_lost",
            Command::ResizeVolume { .. } => "resize_volume",
            Command::CreateSnapshot { .. } => "create_snapshot",
            Command::DeleteSnapshot { .. } => "delete_snapshot",
            Command::RollbackSnapshot { .. } => "rollback_snapshot",
            Command::CancelImport { .. } => "cancel_import",
            Command::PromoteSnapshot { .. } => "promote_snapshot",
            Command::AddRule { .. } => "add_rule",
            Command::DeleteRule { .. } => "delete_rule",
            Command::RegisterNode { .. } => "register_node",
            Command::SetNodeState { .. } => "set_node_state",
            Command::UpdateStatuses { .. } => "update_statuses",
            Command::Schedule { .. } => "schedule",
            Command::CreateToken { .. } => "create_token",
            Command::DeleteToken { .. } => "delete_token",
            Command::BindToken { .. } => "bind_token",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::ConsumeJoinToken { .. } => "consume_join_token",
            Command::Prune { .. } => "prune",
            Command::Noop => "noop",
        }
    }
}

/// A request as it travels through Raft: the command plus its optional idempotency key and
/// the trace id of the request that asked for it (stamped on the objects it changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    #[serde(default)]
    pub idempotency: Option<Idempotency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.command.op())
    }
}

/// A change of an object's labels and/or spec (`PUT /v1/<kind>/{id}`). The spec stays typed
/// from the REST body to `apply`; only the log holds it as JSON, next to its kind (the wire
/// form is the one the log always had: `kind`, `id`, `if_match`, `labels`, `spec`, `now`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "UpdateWire")]
pub struct Update {
    pub kind: Kind,
    pub id: String,
    pub if_match: Option<u64>,
    pub labels: Option<BTreeMap<String, String>>,
    /// The new spec; its variant is always `kind`'s.
    pub spec: Option<Spec>,
    pub now: String,
}

/// `Spec`, its `kind()` and a `From` for each kind's spec type.
macro_rules! specs {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// The spec of one kind, for an [`Update`].
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Spec {
            $($variant($ty)),*
        }

        impl Spec {
            /// The kind this spec belongs to.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Spec::$variant(_) => Kind::$variant),*
                }
            }
        }

        $(impl From<$ty> for Spec {
            fn from(spec: $ty) -> Spec {
                Spec::$variant(spec)
            }
        })*
    };
}

specs!(
    Node(NodeSpec),
    Network(NetworkSpec),
    Nic(NicSpec),
    SecurityGroup(SecurityGroupSpec),
    Template(TemplateSpec),
    Volume(VolumeSpec),
    Vm(VmSpec),
    Pod(PodSpec),
    Backup(BackupSpec),
    Replication(ReplicationSpec),
);

impl Spec {
    /// Reads the spec of `kind` from its log form.
    fn from_wire(kind: Kind, v: serde_json::Value) -> Result<Spec, String> {
        fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("invalid spec: {e}"))
        }
        Ok(match kind {
            Kind::Node => Spec::Node(typed(v)?),
            Kind::Network => Spec::Network(typed(v)?),
            Kind::Nic => Spec::Nic(typed(v)?),
            Kind::SecurityGroup => Spec::SecurityGroup(typed(v)?),
            Kind::Template => Spec::Template(typed(v)?),
            Kind::Volume => Spec::Volume(typed(v)?),
            Kind::Vm => Spec::Vm(typed(v)?),
            Kind::Pod => Spec::Pod(typed(v)?),
            Kind::Backup => Spec::Backup(typed(v)?),
            Kind::Replication => Spec::Replication(typed(v)?),
            other => return Err(format!("{} has no spec", other.as_str())),
        })
    }
}

/// The log form of an [`Update`], as it is read.
#[derive(Deserialize)]
struct UpdateWire {
    kind: Kind,
    id: String,
    if_match: Option<u64>,
    labels: Option<BTreeMap<String, String>>,
    spec: Option<serde_json::Value>,
    now: String,
}

impl TryFrom<UpdateWire> for Update {
    type Error = String;

    fn try_from(w: UpdateWire) -> Result<Self, String> {
        let spec = w.spec.map(|v| Spec::from_wire(w.kind, v)).transpose()?;
        Ok(Update {
            kind: w.kind,
            id: w.id,
            if_match: w.if_match,
            labels: w.labels,
            spec,
            now: w.now,
        })
    }
}

impl Serialize for Update {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            kind: Kind,
            id: &'a str,
            if_match: Option<u64>,
            labels: &'a Option<BTreeMap<String, String>>,
            spec: &'a Option<Spec>,
            now: &'a str,
        }
        Wire {
            kind: self.kind,
            id: &self.id,
            if_match: self.if_match,
            labels: &self.labels,
            spec: &self.spec,
            now: &self.now,
        }
        .serialize(ser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op()` names a command as its serialized `op` tag does (the audit summary used to read
    /// the tag from a serialized copy of the whole command).
    #[test]
    fn op_is_the_serialized_tag() {
        let now = "2026-01-01T00:00:00Z".to_string();
        let commands = [
            Command::Noop,
            Command::DeleteToken { id: "t".into() },
            Command::BindToken {
                id: "t".into(),
                node_id: "n".into(),
            },
            Command::Delete {
                kind: Kind::Vm,
                id: "v".into(),
                if_match: None,
                force: false,
            },
            Command::Schedule {
                placements: vec![],
                pending: vec![("v".into(), "r".into())],
                now: now.clone(),
            },
            Command::ConsumeJoinToken {
                hash: "h".into(),
                now_ms: 1,
            },
            Command::Prune {
                idempotency_before_ms: 0,
                now_ms: 1,
            },
            Command::CancelImport {
                id: "t".into(),
                now: now.clone(),
            },
            Command::DeleteSnapshot {
                volume_id: "v".into(),
                snapshot_id: "s".into(),
                now: now.clone(),
            },
            Command::Update(Update {
                kind: Kind::Vm,
                id: "v".into(),
                if_match: None,
                labels: Some(BTreeMap::new()),
                spec: None,
                now,
            }),
        ];
        for c in commands {
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["op"].as_str(), Some(c.op()), "{c:?}");
            let p = Proposal {
                command: c.clone(),
                idempotency: None,
                trace_id: None,
            };
            assert_eq!(p.to_string(), c.op());
        }
    }
}
