//! The materialised state and the deterministic `apply` of commands.
//!
//! A REST or gRPC call is validated syntactically (`validate.rs`), turned into a [`Command`] with
//! every id and timestamp already minted, and proposed to Raft. Once committed, every member runs
//! [`State::apply`] with the command and its log index. `apply` checks everything that depends on
//! the state (references, uniqueness, conflicts, `If-Match`) *before* mutating anything, so a
//! rejected command leaves the state untouched; then it mutates and returns the [`Change`]s (which
//! the store persists and which become events). Nothing here reads a clock, a random source or
//! the environment: the same log gives the same state on every member.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::*;

/// The error every layer returns to REST/gRPC clients: `{"code","message","details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Value,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }
    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::new("not_found", format!("{} {id} not found", kind.as_str()))
            .with_details(json!({"kind": kind.as_str(), "id": id}))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new("conflict", message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new("already_exists", message)
    }
    pub fn precondition(expected: u64, actual: u64) -> Self {
        Self::new(
            "precondition_failed",
            format!("If-Match revision {expected} does not match current revision {actual}"),
        )
        .with_details(json!({"expected": expected, "actual": actual}))
    }
    pub fn no_leader(message: impl Into<String>) -> Self {
        Self::new("no_leader", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new("unauthenticated", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new("permission_denied", message)
    }

    /// The HTTP status for this error code.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "invalid_argument" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" => 404,
            "already_exists" | "conflict" => 409,
            "precondition_failed" => 412,
            "payload_too_large" => 413,
            "unsupported_media_type" => 415,
            "no_leader" | "unavailable" => 503,
            "not_implemented" => 501,
            _ => 500,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self.code.as_str() {
            "invalid_argument" | "payload_too_large" => tonic::Code::InvalidArgument,
            "unauthenticated" => tonic::Code::Unauthenticated,
            "permission_denied" => tonic::Code::PermissionDenied,
            "not_found" => tonic::Code::NotFound,
            "already_exists" => tonic::Code::AlreadyExists,
            "conflict" | "precondition_failed" => tonic::Code::FailedPrecondition,
            "no_leader" | "unavailable" => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        tonic::Status::new(err.grpc_code(), err.message)
    }
}

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
    pub vm_id: String,
    pub node_id: String,
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
    Update {
        kind: Kind,
        id: String,
        if_match: Option<u64>,
        labels: Option<BTreeMap<String, String>>,
        spec: Option<Value>,
        now: String,
    },
    Delete {
        kind: Kind,
        id: String,
        if_match: Option<u64>,
        force: bool,
    },
    VmAction {
        id: String,
        action: String,
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
        state: String,
        capacity: Option<Capacity>,
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

/// A request as it travels through Raft: the command plus its optional idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    #[serde(default)]
    pub idempotency: Option<Idempotency>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = serde_json::to_value(&self.command)
            .ok()
            .and_then(|v| v.get("op").and_then(|o| o.as_str().map(String::from)))
            .unwrap_or_else(|| "noop".into());
        write!(f, "{op}")
    }
}

/// The result of applying one proposal, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub revision: u64,
    pub result: Result<Json, ApiError>,
}

/// One persisted change: the new object (or `None` = removed). Visible kinds become events.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub id: String,
    pub project: String,
    pub verb: &'static str,
    /// The object as it is after this change, serialized once (event payload and response).
    pub object: Option<Json>,
}

impl Change {
    /// The event for this change, if its kind is visible to users.
    pub fn event(&self, revision: u64) -> Option<Event> {
        match self.kind {
            Kind::Token | Kind::JoinToken | Kind::Idempotency => None,
            kind => Some(Event {
                revision,
                event_type: format!("{}.{}", kind.as_str(), self.verb),
                kind: kind.as_str().into(),
                id: self.id.clone(),
                project: self.project.clone(),
                object: self.object.clone(),
            }),
        }
    }
}

/// Counters kept with the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Control-plane member ids are never reused: the next one to hand out (bootstrap is 1).
    pub next_member_id: u64,
    /// Last revision at which something was removed from (or moved off) some node's desired
    /// set. Node spec revisions include it so that removals are never missed by a watcher.
    pub last_removal_revision: u64,
}

/// The whole materialised state, keyed by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub projects: BTreeMap<String, Project>,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    pub nics: BTreeMap<String, Nic>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub templates: BTreeMap<String, Template>,
    pub volumes: BTreeMap<String, Volume>,
    pub vms: BTreeMap<String, Vm>,
    pub tokens: BTreeMap<String, ApiToken>,
    pub join_tokens: BTreeMap<String, JoinToken>,
    pub idempotency: BTreeMap<String, IdempotencyRecord>,
    pub counters: Counters,
    /// Name → id for the named kinds: derived from the maps above, built on first use and
    /// kept current by [`State::apply`] from the changes every command reports.
    #[serde(skip)]
    names: NameIndex,
}

/// Key of the name index: kind, project (empty for the cluster-wide kinds), name.
type NameKey = (Kind, String, String);

/// The name index behind [`State::id_by_name`]: a create checks its name's uniqueness without
/// scanning every object of its kind (that scan was the top CPU cost of a VM create once the
/// state held thousands of VMs). Derived data: it never takes part in equality.
#[derive(Debug, Clone, Default)]
struct NameIndex(std::sync::OnceLock<NameMaps>);

#[derive(Debug, Clone, Default)]
struct NameMaps {
    by_name: std::collections::HashMap<NameKey, String>,
    by_id: std::collections::HashMap<(Kind, String), NameKey>,
}

impl PartialEq for NameIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn name_key(kind: Kind, meta: &Meta) -> NameKey {
    let project = if matches!(kind, Kind::Project | Kind::Node) {
        String::new()
    } else {
        meta.project.clone()
    };
    (kind, project, meta.name.clone())
}

const NAMED_KINDS: [Kind; 8] = [
    Kind::Project,
    Kind::Node,
    Kind::Network,
    Kind::Nic,
    Kind::SecurityGroup,
    Kind::Template,
    Kind::Volume,
    Kind::Vm,
];

impl NameMaps {
    fn build(state: &State) -> Self {
        let mut maps = NameMaps::default();
        for kind in NAMED_KINDS {
            for meta in state.metas(kind) {
                maps.set(kind, &meta.id, Some(meta));
            }
        }
        maps
    }

    /// Records that object `id` of `kind` now has `meta` (`None`: it is gone).
    fn set(&mut self, kind: Kind, id: &str, meta: Option<&Meta>) {
        if let Some(old) = self.by_id.remove(&(kind, id.to_string())) {
            if self.by_name.get(&old).is_some_and(|v| v == id) {
                self.by_name.remove(&old);
            }
        }
        if let Some(meta) = meta {
            let key = name_key(kind, meta);
            self.by_name.insert(key.clone(), id.to_string());
            self.by_id.insert((kind, id.to_string()), key);
        }
    }
}

/// The id of the built-in `default` project (fixed so every member agrees without a command).
pub const DEFAULT_PROJECT_ID: &str = "00000000-0000-4000-8000-000000000001";
pub const DEFAULT_PROJECT: &str = "default";

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// One object of the state as it is shown (a node as its view, see [`State::node_view`]),
/// serializable straight from its type; `null` if it does not exist.
struct ObjectRef<'a> {
    state: &'a State,
    kind: Kind,
    id: &'a str,
}

impl Serialize for ObjectRef<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (s, id) = (self.state, self.id);
        match self.kind {
            Kind::Project => s.projects.get(id).serialize(ser),
            Kind::Node => s.nodes.get(id).map(|n| s.node_view(n)).serialize(ser),
            Kind::Network => s.networks.get(id).serialize(ser),
            Kind::Nic => s.nics.get(id).serialize(ser),
            Kind::SecurityGroup => s.security_groups.get(id).serialize(ser),
            Kind::Template => s.templates.get(id).serialize(ser),
            Kind::Volume => s.volumes.get(id).serialize(ser),
            Kind::Vm => s.vms.get(id).serialize(ser),
            Kind::Token => s.tokens.get(id).serialize(ser),
            Kind::JoinToken => s.join_tokens.get(id).serialize(ser),
            Kind::Idempotency => s.idempotency.get(id).serialize(ser),
        }
    }
}

type Applied = Result<(Json, Vec<Change>), ApiError>;

fn stamp(meta: &mut Meta, index: u64, now: &str, spec_changed: bool) {
    meta.revision = index;
    if spec_changed {
        meta.spec_revision = index;
    }
    meta.updated_at = now.to_string();
}

fn check_if_match(if_match: Option<u64>, actual: u64) -> Result<(), ApiError> {
    match if_match {
        Some(expected) if expected != actual => Err(ApiError::precondition(expected, actual)),
        _ => Ok(()),
    }
}

impl State {
    /// A fresh state with the `default` project, as every member starts.
    pub fn initial() -> Self {
        let mut state = State::default();
        state.counters.next_member_id = 2;
        state.projects.insert(
            DEFAULT_PROJECT_ID.into(),
            Project {
                meta: Meta {
                    id: DEFAULT_PROJECT_ID.into(),
                    name: DEFAULT_PROJECT.into(),
                    project: DEFAULT_PROJECT.into(),
                    labels: BTreeMap::new(),
                    revision: 0,
                    spec_revision: 0,
                    created_at: "1970-01-01T00:00:00Z".into(),
                    updated_at: "1970-01-01T00:00:00Z".into(),
                },
                description: "The default project".into(),
            },
        );
        state
    }

    pub fn project_by_name(&self, name: &str) -> Option<&Project> {
        self.projects.values().find(|p| p.meta.name == name)
    }

    fn require_project(&self, name: &str) -> Result<(), ApiError> {
        if self.project_by_name(name).is_some() {
            Ok(())
        } else {
            Err(ApiError::not_found(Kind::Project, name))
        }
    }

    /// The id of the object of `kind` named `name` (in `project`; projects and nodes are
    /// cluster-wide).
    pub fn id_by_name(&self, kind: Kind, project: &str, name: &str) -> Option<String> {
        if !NAMED_KINDS.contains(&kind) {
            return None;
        }
        let cluster_wide = matches!(kind, Kind::Project | Kind::Node);
        let key = (
            kind,
            if cluster_wide { "" } else { project }.to_string(),
            name.to_string(),
        );
        let maps = self.names.0.get_or_init(|| NameMaps::build(self));
        let id = maps.by_name.get(&key)?;
        // Trust, but verify: a map changed without a reported change (only tests do that)
        // falls back to the scan.
        if self
            .meta(kind, id)
            .is_some_and(|m| name_key(kind, m) == key)
        {
            return Some(id.clone());
        }
        self.metas(kind)
            .find(|m| m.name == name && (cluster_wide || m.project == project))
            .map(|m| m.id.clone())
    }

    /// Keeps the name index (if built) in step with what a command changed.
    fn index_names(&mut self, changes: &[Change]) {
        let Some(mut maps) = self.names.0.take() else {
            return;
        };
        for c in changes {
            if NAMED_KINDS.contains(&c.kind) {
                maps.set(c.kind, &c.id, self.meta(c.kind, &c.id));
            }
        }
        let _ = self.names.0.set(maps);
    }

    fn name_taken(&self, kind: Kind, project: &str, name: &str) -> bool {
        self.id_by_name(kind, project, name).is_some()
    }

    /// The object of `kind` with `id` as JSON.
    pub fn object(&self, kind: Kind, id: &str) -> Option<Value> {
        self.contains(kind, id).then(|| {
            to_value(&ObjectRef {
                state: self,
                kind,
                id,
            })
        })
    }

    /// The object of `kind` with `id` as JSON text, serialized straight from its type.
    pub fn object_json(&self, kind: Kind, id: &str) -> Option<Json> {
        self.contains(kind, id).then(|| {
            Json::of(&ObjectRef {
                state: self,
                kind,
                id,
            })
        })
    }

    fn contains(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Project => self.projects.contains_key(id),
            Kind::Node => self.nodes.contains_key(id),
            Kind::Network => self.networks.contains_key(id),
            Kind::Nic => self.nics.contains_key(id),
            Kind::SecurityGroup => self.security_groups.contains_key(id),
            Kind::Template => self.templates.contains_key(id),
            Kind::Volume => self.volumes.contains_key(id),
            Kind::Vm => self.vms.contains_key(id),
            Kind::Token => self.tokens.contains_key(id),
            Kind::JoinToken => self.join_tokens.contains_key(id),
            Kind::Idempotency => self.idempotency.contains_key(id),
        }
    }

    /// A node with `allocated` filled in from what is placed on it.
    pub fn node_view(&self, node: &Node) -> Node {
        let mut view = node.clone();
        view.allocated = self.allocated_on(&node.meta.id);
        view.console_secret.clear();
        view
    }

    /// Everything placed on a node: VM vCPUs and memory, volume sizes.
    pub fn allocated_on(&self, node_id: &str) -> Capacity {
        let mut cap = Capacity::default();
        for vm in self.vms.values() {
            if vm.node_id.as_deref() == Some(node_id) {
                cap.vcpus += vm.spec.vcpus;
                cap.memory_bytes += vm.spec.memory_bytes;
            }
        }
        for vol in self.volumes.values() {
            if vol.node_id.as_deref() == Some(node_id) {
                cap.storage_bytes += vol.spec.size_bytes;
            }
        }
        cap
    }

    /// Drops a removed node's reports from every multi-node resource and re-derives their
    /// top-level status.
    fn forget_node_reports(&mut self, index: u64, node_id: &str) -> Vec<Change> {
        let mut touched = Vec::new();
        let statuses = self
            .networks
            .iter_mut()
            .map(|(id, o)| (Kind::Network, id, &mut o.status, &mut o.meta))
            .chain(
                self.security_groups
                    .iter_mut()
                    .map(|(id, o)| (Kind::SecurityGroup, id, &mut o.status, &mut o.meta)),
            )
            .chain(
                self.templates
                    .iter_mut()
                    .map(|(id, o)| (Kind::Template, id, &mut o.status, &mut o.meta)),
            );
        for (kind, id, status, meta) in statuses {
            if status.nodes.contains_key(node_id) {
                let mut nodes = std::mem::take(&mut status.nodes);
                nodes.remove(node_id);
                *status = aggregate_node_reports(nodes, status.observed_revision);
                meta.revision = index;
                touched.push((kind, id.clone()));
            }
        }
        touched
            .into_iter()
            .map(|(kind, id)| self.change(kind, &id, "status"))
            .collect()
    }

    fn change(&self, kind: Kind, id: &str, verb: &'static str) -> Change {
        let object = self.object_json(kind, id);
        let project = self
            .meta(kind, id)
            .map(|m| m.project.clone())
            .unwrap_or_default();
        Change {
            kind,
            id: id.to_string(),
            project,
            verb,
            object,
        }
    }

    fn removed(kind: Kind, id: &str, project: &str) -> Change {
        Change {
            kind,
            id: id.to_string(),
            project: project.to_string(),
            verb: "deleted",
            object: None,
        }
    }

    /// What a `Prune` with these bounds would remove: idempotency keys and join-token ids.
    pub fn prunable(&self, idempotency_before_ms: i64, now_ms: i64) -> (Vec<String>, Vec<String>) {
        let keys = self
            .idempotency
            .values()
            .filter(|r| r.created_at_ms < idempotency_before_ms)
            .map(|r| r.key.clone())
            .collect();
        let tokens = self
            .join_tokens
            .values()
            .filter(|t| t.used || t.expires_at_ms < now_ms)
            .map(|t| t.id.clone())
            .collect();
        (keys, tokens)
    }

    /// Applies one committed proposal at log `index`. Deterministic; on error nothing changed.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> (Outcome, Vec<Change>) {
        if let Some(idem) = &proposal.idempotency {
            if let Some(record) = self.idempotency.get(&idem.key) {
                let result = if record.fingerprint == idem.fingerprint {
                    self.object_json(record.kind, &record.id)
                        .ok_or_else(|| ApiError::not_found(record.kind, &record.id))
                } else {
                    Err(ApiError::conflict(
                        "Idempotency-Key was already used with a different request",
                    )
                    .with_details(json!({"key": idem.key})))
                };
                return (
                    Outcome {
                        revision: index,
                        result,
                    },
                    Vec::new(),
                );
            }
        }
        let result = self.apply_command(index, &proposal.command);
        match result {
            Ok((value, mut changes)) => {
                if let (Some(idem), Some(kind_id)) =
                    (&proposal.idempotency, created_kind_id(&proposal.command))
                {
                    let record = IdempotencyRecord {
                        key: idem.key.clone(),
                        fingerprint: idem.fingerprint.clone(),
                        kind: kind_id.0,
                        id: kind_id.1,
                        created_at_ms: idem.created_at_ms,
                    };
                    self.idempotency.insert(idem.key.clone(), record);
                    changes.push(self.change(Kind::Idempotency, &idem.key, "created"));
                }
                self.index_names(&changes);
                (
                    Outcome {
                        revision: index,
                        result: Ok(value),
                    },
                    changes,
                )
            }
            Err(err) => (
                Outcome {
                    revision: index,
                    result: Err(err),
                },
                Vec::new(),
            ),
        }
    }

    fn apply_command(&mut self, index: u64, command: &Command) -> Applied {
        match command {
            Command::Noop => Ok((Json::null(), Vec::new())),
            Command::CreateProject { project } => {
                if self.projects.contains_key(&project.meta.id) {
                    return self.same_or_exists(Kind::Project, &project.meta.id);
                }
                if self.name_taken(Kind::Project, "", &project.meta.name) {
                    return Err(name_exists(Kind::Project, &project.meta.name));
                }
                let mut project = project.clone();
                stamp_new(&mut project.meta, index);
                let id = project.meta.id.clone();
                self.projects.insert(id.clone(), project);
                self.created(Kind::Project, &id)
            }
            Command::CreateNetwork { network } => {
                if self.networks.contains_key(&network.meta.id) {
                    return self.same_or_exists(Kind::Network, &network.meta.id);
                }
                self.check_new(Kind::Network, &network.meta)?;
                let mut network = network.clone();
                network.spec.tunnel_key = Some(self.tunnel_key_for(&network)?);
                stamp_new(&mut network.meta, index);
                let id = network.meta.id.clone();
                self.networks.insert(id.clone(), network);
                self.created(Kind::Network, &id)
            }
            Command::CreateNic { nic } => {
                if self.nics.contains_key(&nic.meta.id) {
                    return self.same_or_exists(Kind::Nic, &nic.meta.id);
                }
                self.check_new(Kind::Nic, &nic.meta)?;
                let mut nic = nic.clone();
                self.allocate_nic(&mut nic, &BTreeSet::new(), &BTreeSet::new())?;
                stamp_new(&mut nic.meta, index);
                let id = nic.meta.id.clone();
                self.nics.insert(id.clone(), nic);
                self.created(Kind::Nic, &id)
            }
            Command::CreateSecurityGroup { security_group } => {
                if self.security_groups.contains_key(&security_group.meta.id) {
                    return self.same_or_exists(Kind::SecurityGroup, &security_group.meta.id);
                }
                self.check_new(Kind::SecurityGroup, &security_group.meta)?;
                self.check_rules(&security_group.meta.id, &security_group.spec.rules)?;
                let mut sg = security_group.clone();
                stamp_new(&mut sg.meta, index);
                let id = sg.meta.id.clone();
                self.security_groups.insert(id.clone(), sg);
                self.created(Kind::SecurityGroup, &id)
            }
            Command::CreateTemplate { template } => {
                if self.templates.contains_key(&template.meta.id) {
                    return self.same_or_exists(Kind::Template, &template.meta.id);
                }
                self.check_new(Kind::Template, &template.meta)?;
                let mut template = template.clone();
                stamp_new(&mut template.meta, index);
                let id = template.meta.id.clone();
                self.templates.insert(id.clone(), template);
                self.created(Kind::Template, &id)
            }
            Command::CreateVolume { volume } => {
                if self.volumes.contains_key(&volume.meta.id) {
                    return self.same_or_exists(Kind::Volume, &volume.meta.id);
                }
                self.check_new(Kind::Volume, &volume.meta)?;
                let home = self.volume_home(volume)?;
                let mut volume = volume.clone();
                volume.node_id = home;
                stamp_new(&mut volume.meta, index);
                let id = volume.meta.id.clone();
                self.volumes.insert(id.clone(), volume);
                self.created(Kind::Volume, &id)
            }
            Command::CreateVm {
                vm,
                owned_volumes,
                owned_nics,
            } => self.create_vm(index, vm, owned_volumes, owned_nics),
            Command::Update {
                kind,
                id,
                if_match,
                labels,
                spec,
                now,
            } => self.update(
                index,
                *kind,
                id,
                *if_match,
                labels.as_ref(),
                spec.as_ref(),
                now,
            ),
            Command::Delete {
                kind,
                id,
                if_match,
                force,
            } => self.delete(index, *kind, id, *if_match, *force),
            Command::VmAction { id, action, now } => {
                let vm = self
                    .vms
                    .get_mut(id)
                    .ok_or_else(|| ApiError::not_found(Kind::Vm, id))?;
                match action.as_str() {
                    "start" => vm.spec.desired_state = "running".into(),
                    "stop" => {
                        vm.spec.desired_state = "stopped".into();
                        vm.stop_mode = "graceful".into();
                    }
                    "kill" => {
                        vm.spec.desired_state = "stopped".into();
                        vm.stop_mode = "force".into();
                    }
                    "restart" => {
                        vm.spec.desired_state = "running".into();
                        vm.restart_generation += 1;
                    }
                    other => return Err(ApiError::invalid(format!("unknown VM action {other:?}"))),
                }
                stamp(&mut vm.meta, index, now, true);
                let change = self.change(Kind::Vm, id, action_verb(action));
                Ok((
                    change.object.clone().unwrap_or_else(Json::null),
                    vec![change],
                ))
            }
            Command::ResizeVolume {
                id,
                size_bytes,
                if_match,
                now,
            } => {
                let vol = self
                    .volumes
                    .get_mut(id)
                    .ok_or_else(|| ApiError::not_found(Kind::Volume, id))?;
                check_if_match(*if_match, vol.meta.revision)?;
                if *size_bytes < vol.spec.size_bytes {
                    return Err(ApiError::invalid(format!(
                        "volumes only grow: {} < current size {}",
                        size_bytes, vol.spec.size_bytes
                    )));
                }
                vol.spec.size_bytes = *size_bytes;
                stamp(&mut vol.meta, index, now, true);
                self.updated(Kind::Volume, id)
            }
            Command::CreateSnapshot {
                volume_id,
                snapshot,
            } => {
                let vol = self
                    .volumes
                    .get_mut(volume_id)
                    .ok_or_else(|| ApiError::not_found(Kind::Volume, volume_id))?;
                if vol.snapshots.iter().any(|s| s.name == snapshot.name) {
                    return Err(ApiError::exists(format!(
                        "volume {volume_id} already has a snapshot named {:?}",
                        snapshot.name
                    )));
                }
                let mut snapshot = snapshot.clone();
                snapshot.status = SnapshotStatus::default();
                vol.snapshots.push(snapshot.clone());
                stamp(&mut vol.meta, index, &snapshot.created_at, true);
                let change = self.change(Kind::Volume, volume_id, "snapshot_created");
                Ok((Json::of(&snapshot), vec![change]))
            }
            Command::DeleteSnapshot {
                volume_id,
                snapshot_id,
                now,
            } => {
                let vol = self
                    .volumes
                    .get_mut(volume_id)
                    .ok_or_else(|| ApiError::not_found(Kind::Volume, volume_id))?;
                let pending_target = vol.rollback.as_ref().filter(|r| {
                    &r.snapshot_id == snapshot_id
                        && vol.status.rollback_generation.unwrap_or(0) < r.generation
                });
                if pending_target.is_some() {
                    return Err(ApiError::conflict(format!(
                        "snapshot {snapshot_id} is the target of a rollback the volume's node has not carried out yet"
                    )));
                }
                let before = vol.snapshots.len();
                vol.snapshots.retain(|s| &s.id != snapshot_id);
                if vol.snapshots.len() == before {
                    return Err(ApiError::new(
                        "not_found",
                        format!("snapshot {snapshot_id} not found on volume {volume_id}"),
                    ));
                }
                stamp(&mut vol.meta, index, now, true);
                self.counters.last_removal_revision = index;
                let change = self.change(Kind::Volume, volume_id, "snapshot_deleted");
                Ok((Json::null(), vec![change]))
            }
            Command::RollbackSnapshot {
                volume_id,
                snapshot_id,
                now,
            } => self.rollback_snapshot(index, volume_id, snapshot_id, now),
            Command::CancelImport { id, now } => {
                let t = self
                    .templates
                    .get_mut(id)
                    .ok_or_else(|| ApiError::not_found(Kind::Template, id))?;
                let everywhere_ready = !t.status.nodes.is_empty()
                    && t.status.nodes.values().all(|n| n.phase == "ready");
                if t.spec.source_snapshot.is_some() || everywhere_ready {
                    return Err(ApiError::conflict(format!(
                        "template {} has no import to cancel",
                        t.meta.name
                    )));
                }
                t.import_cancelled = true;
                stamp(&mut t.meta, index, now, true);
                let change = self.change(Kind::Template, id, "import_cancelled");
                Ok((
                    change.object.clone().unwrap_or_else(Json::null),
                    vec![change],
                ))
            }
            Command::PromoteSnapshot {
                volume_id,
                snapshot_id,
                template,
            } => self.promote_snapshot(index, volume_id, snapshot_id, template),
            Command::AddRule {
                security_group_id,
                rule,
                now,
            } => {
                let sg = self
                    .security_groups
                    .get(security_group_id)
                    .ok_or_else(|| ApiError::not_found(Kind::SecurityGroup, security_group_id))?;
                let mut rules = sg.spec.rules.clone();
                rules.push(rule.clone());
                self.check_rules(security_group_id, &rules)?;
                let sg = self
                    .security_groups
                    .get_mut(security_group_id)
                    .ok_or_else(|| ApiError::not_found(Kind::SecurityGroup, security_group_id))?;
                sg.spec.rules = rules;
                stamp(&mut sg.meta, index, now, true);
                let change = self.change(Kind::SecurityGroup, security_group_id, "updated");
                Ok((Json::of(rule), vec![change]))
            }
            Command::DeleteRule {
                security_group_id,
                rule_id,
                now,
            } => {
                let sg = self
                    .security_groups
                    .get_mut(security_group_id)
                    .ok_or_else(|| ApiError::not_found(Kind::SecurityGroup, security_group_id))?;
                let before = sg.spec.rules.len();
                sg.spec.rules.retain(|r| r.id.as_deref() != Some(rule_id));
                if sg.spec.rules.len() == before {
                    return Err(ApiError::new(
                        "not_found",
                        format!("rule {rule_id} not found in security group {security_group_id}"),
                    ));
                }
                stamp(&mut sg.meta, index, now, true);
                self.updated(Kind::SecurityGroup, security_group_id)
            }
            Command::RegisterNode { node } => self.register_node(index, node),
            Command::SetNodeState {
                id,
                state,
                capacity,
                now,
            } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| ApiError::not_found(Kind::Node, id))?;
                let mut changed = false;
                let mut state_changed = false;
                if &node.status.state != state {
                    node.status.state = state.clone();
                    node.status.last_state_change_at = Some(now.clone());
                    changed = true;
                    state_changed = true;
                }
                if let Some(cap) = capacity {
                    if &node.status.capacity != cap {
                        node.status.capacity = *cap;
                        changed = true;
                    }
                }
                if !changed {
                    return Ok((
                        self.object_json(Kind::Node, id).unwrap_or_else(Json::null),
                        Vec::new(),
                    ));
                }
                stamp(&mut node.meta, index, now, false);
                let (value, mut changes) = self.updated(Kind::Node, id)?;
                if state_changed {
                    // Its VMs say so too: their status is the node's last word until it is back.
                    let vm_ids: Vec<String> = self
                        .vms
                        .values()
                        .filter(|v| v.node_id.as_deref() == Some(id.as_str()))
                        .map(|v| v.meta.id.clone())
                        .collect();
                    for vm_id in vm_ids {
                        if let Some(vm) = self.vms.get_mut(&vm_id) {
                            vm.node_state = Some(state.clone());
                            vm.meta.revision = index;
                            vm.meta.updated_at = now.clone();
                        }
                        changes.push(self.change(Kind::Vm, &vm_id, "node_state"));
                    }
                }
                Ok((value, changes))
            }
            Command::UpdateStatuses {
                node_id,
                reports,
                now,
            } => self.update_statuses(index, node_id, reports, now),
            Command::Schedule {
                placements,
                pending,
                now,
            } => self.schedule(index, placements, pending, now),
            Command::CreateToken { token } => {
                if self.tokens.values().any(|t| t.name == token.name) {
                    return Err(name_exists(Kind::Token, &token.name));
                }
                let mut token = token.clone();
                token.revision = index;
                let id = token.id.clone();
                self.tokens.insert(id.clone(), token.clone());
                Ok((
                    Json::of(&token),
                    vec![self.change(Kind::Token, &id, "created")],
                ))
            }
            Command::DeleteToken { id } => {
                let token = self
                    .tokens
                    .get(id)
                    .ok_or_else(|| ApiError::not_found(Kind::Token, id))?;
                if token.role == "admin"
                    && self.tokens.values().filter(|t| t.role == "admin").count() == 1
                {
                    return Err(ApiError::conflict("cannot revoke the last admin token"));
                }
                self.tokens.remove(id);
                Ok((Json::null(), vec![State::removed(Kind::Token, id, "")]))
            }
            Command::CreateJoinToken { token } => {
                let id = token.id.clone();
                self.join_tokens.insert(id.clone(), token.clone());
                Ok((
                    Json::null(),
                    vec![self.change(Kind::JoinToken, &id, "created")],
                ))
            }
            Command::Prune {
                idempotency_before_ms,
                now_ms,
            } => {
                let (keys, tokens) = self.prunable(*idempotency_before_ms, *now_ms);
                let mut changes = Vec::new();
                for key in keys {
                    self.idempotency.remove(&key);
                    changes.push(State::removed(Kind::Idempotency, &key, ""));
                }
                for id in tokens {
                    self.join_tokens.remove(&id);
                    changes.push(State::removed(Kind::JoinToken, &id, ""));
                }
                Ok((Json::of(&json!({"pruned": changes.len()})), changes))
            }
            Command::ConsumeJoinToken { hash, now_ms } => {
                let token = self
                    .join_tokens
                    .values_mut()
                    .find(|t| &t.hash == hash)
                    .ok_or_else(|| ApiError::forbidden("unknown join token"))?;
                if token.used {
                    return Err(ApiError::forbidden("join token already used"));
                }
                if token.expires_at_ms < *now_ms {
                    return Err(ApiError::forbidden("join token expired"));
                }
                token.used = true;
                let id = token.id.clone();
                let member_id = self.counters.next_member_id;
                self.counters.next_member_id += 1;
                Ok((
                    Json::of(&json!({"member_id": member_id})),
                    vec![self.change(Kind::JoinToken, &id, "updated")],
                ))
            }
        }
    }

    /// The tunnel key (VXLAN VNI) of a new network: the one it asks for when no other network
    /// has it, else one past the largest key in use, else (all keys up to the maximum ever
    /// handed out) the smallest free one. Derived from the stored networks only, so every
    /// member computes the same key and a snapshot carries it in the networks' specs.
    fn tunnel_key_for(&self, network: &Network) -> Result<u32, ApiError> {
        let used: std::collections::BTreeSet<u32> = self
            .networks
            .values()
            .filter_map(|n| n.spec.tunnel_key)
            .collect();
        if let Some(k) = network.spec.tunnel_key {
            if let Some(other) = self
                .networks
                .values()
                .find(|n| n.spec.tunnel_key == Some(k))
            {
                return Err(ApiError::conflict(format!(
                    "tunnel_key {k} is used by network {} ({})",
                    other.meta.name, other.meta.id
                )));
            }
            return Ok(k);
        }
        match used.last() {
            None => Ok(1),
            Some(&max) if max < MAX_TUNNEL_KEY => Ok(max + 1),
            Some(_) => (1..=MAX_TUNNEL_KEY)
                .find(|k| !used.contains(k))
                .ok_or_else(|| ApiError::conflict("every tunnel key (VXLAN VNI) is in use")),
        }
    }

    fn same_or_exists(&self, kind: Kind, id: &str) -> Applied {
        // The id is minted by the API, so a repeat is a replay of the same create.
        Err(ApiError::exists(format!(
            "{} {id} already exists",
            kind.as_str()
        )))
    }

    fn check_new(&self, kind: Kind, meta: &Meta) -> Result<(), ApiError> {
        self.require_project(&meta.project)?;
        if self.name_taken(kind, &meta.project, &meta.name) {
            return Err(name_exists(kind, &meta.name));
        }
        Ok(())
    }

    fn created(&self, kind: Kind, id: &str) -> Applied {
        let change = self.change(kind, id, "created");
        Ok((
            change.object.clone().unwrap_or_else(Json::null),
            vec![change],
        ))
    }

    fn updated(&self, kind: Kind, id: &str) -> Applied {
        let change = self.change(kind, id, "updated");
        Ok((
            change.object.clone().unwrap_or_else(Json::null),
            vec![change],
        ))
    }

    /// A volume's snapshot that its node holds (`ready`): only those can be rolled back to or
    /// promoted.
    fn ready_snapshot(&self, volume_id: &str, snapshot_id: &str) -> Result<&Volume, ApiError> {
        let vol = self
            .volumes
            .get(volume_id)
            .ok_or_else(|| ApiError::not_found(Kind::Volume, volume_id))?;
        let snap = vol
            .snapshots
            .iter()
            .find(|s| s.id == snapshot_id)
            .ok_or_else(|| {
                ApiError::new(
                    "not_found",
                    format!("snapshot {snapshot_id} not found on volume {volume_id}"),
                )
            })?;
        if snap.status.phase != "ready" {
            return Err(ApiError::conflict(format!(
                "snapshot {} is {} on its node, not ready{}",
                snap.name,
                snap.status.phase,
                if snap.status.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", snap.status.message)
                }
            )));
        }
        Ok(vol)
    }

    /// Rolls a volume back to one of its snapshots: refused while a VM that uses the volume
    /// runs or is asked to; snapshots newer than the target go (as `zfs rollback -r` destroys
    /// them on the node).
    fn rollback_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snapshot_id: &str,
        now: &str,
    ) -> Applied {
        let vol = self.ready_snapshot(volume_id, snapshot_id)?;
        if let Some(vm) = vol.vm_id.as_deref().and_then(|id| self.vms.get(id)) {
            let phase = vm.status.phase.as_str();
            if vm.spec.desired_state == "running" || !matches!(phase, "" | "stopped" | "failed") {
                return Err(ApiError::conflict(format!(
                    "volume {} is used by VM {} ({}, desired {}): stop the VM before a rollback",
                    vol.meta.name,
                    vm.meta.name,
                    if phase.is_empty() { "pending" } else { phase },
                    vm.spec.desired_state
                ))
                .with_details(json!({"vm_id": vm.meta.id})));
            }
        }
        let generation = vol.rollback.as_ref().map_or(0, |r| r.generation) + 1;
        let vol = self
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| ApiError::not_found(Kind::Volume, volume_id))?;
        if let Some(pos) = vol.snapshots.iter().position(|s| s.id == snapshot_id) {
            vol.snapshots.truncate(pos + 1);
        }
        vol.rollback = Some(VolumeRollback {
            snapshot_id: snapshot_id.to_string(),
            generation,
            requested_at: now.to_string(),
        });
        stamp(&mut vol.meta, index, now, true);
        self.counters.last_removal_revision = index;
        let change = self.change(Kind::Volume, volume_id, "rollback");
        Ok((
            self.object_json(Kind::Volume, volume_id)
                .unwrap_or_else(Json::null),
            vec![change],
        ))
    }

    /// Creates a template from a volume's snapshot. The copy is made on the volume's node, so
    /// the template lives there only and VMs cloning it are placed there.
    fn promote_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snapshot_id: &str,
        template: &Template,
    ) -> Applied {
        if self.templates.contains_key(&template.meta.id) {
            return self.same_or_exists(Kind::Template, &template.meta.id);
        }
        let vol = self.ready_snapshot(volume_id, snapshot_id)?;
        let Some(node_id) = vol.node_id.clone() else {
            return Err(ApiError::conflict(format!(
                "volume {} is on no node yet",
                vol.meta.name
            )));
        };
        self.check_new(Kind::Template, &template.meta)?;
        let mut template = template.clone();
        template.node_id = Some(node_id);
        template.spec.source_snapshot = Some(SnapshotSource {
            volume_id: volume_id.to_string(),
            snapshot_id: snapshot_id.to_string(),
        });
        stamp_new(&mut template.meta, index);
        let id = template.meta.id.clone();
        self.templates.insert(id.clone(), template);
        self.created(Kind::Template, &id)
    }

    /// Checks a new volume's references and returns the node it must live on: the node it is
    /// pinned to, or the one node a template promoted from a snapshot exists on.
    fn volume_home(&self, volume: &Volume) -> Result<Option<String>, ApiError> {
        let mut home = None;
        if let Some(template_id) = &volume.spec.template_id {
            let template = self
                .templates
                .get(template_id)
                .ok_or_else(|| ApiError::not_found(Kind::Template, template_id))?;
            home = template.node_id.clone();
        }
        if let Some(node_id) = &volume.spec.node_id {
            if !self.nodes.contains_key(node_id) {
                return Err(ApiError::not_found(Kind::Node, node_id));
            }
            if let Some(h) = home.as_ref().filter(|h| *h != node_id) {
                return Err(ApiError::conflict(format!(
                    "the template exists only on node {h}; a volume cloned from it cannot be pinned to node {node_id}"
                )));
            }
            home = Some(node_id.clone());
        }
        Ok(home)
    }

    fn check_rules(&self, own_id: &str, rules: &[SecurityGroupRule]) -> Result<(), ApiError> {
        let mut ids = BTreeSet::new();
        for rule in rules {
            if let Some(id) = &rule.id {
                if !ids.insert(id.clone()) {
                    return Err(ApiError::invalid(format!("duplicate rule id {id}")));
                }
            }
            if let Some(remote) = &rule.remote_group_id {
                if remote != own_id && !self.security_groups.contains_key(remote) {
                    return Err(ApiError::not_found(Kind::SecurityGroup, remote));
                }
            }
        }
        Ok(())
    }

    /// Fills in MAC and addresses of a NIC (requested ones must be free). `extra_macs` and
    /// `extra_ips` are taken by NICs minted in the same command.
    fn allocate_nic(
        &self,
        nic: &mut Nic,
        extra_macs: &BTreeSet<String>,
        extra_ips: &BTreeSet<IpAddr>,
    ) -> Result<(), ApiError> {
        let network = self
            .networks
            .get(&nic.spec.network_id)
            .ok_or_else(|| ApiError::not_found(Kind::Network, &nic.spec.network_id))?;
        if network.meta.project != nic.meta.project {
            return Err(ApiError::invalid(format!(
                "network {} is in project {}, not {}",
                network.meta.id, network.meta.project, nic.meta.project
            )));
        }
        for sg in &nic.spec.security_group_ids {
            let group = self
                .security_groups
                .get(sg)
                .ok_or_else(|| ApiError::not_found(Kind::SecurityGroup, sg))?;
            if group.meta.project != nic.meta.project {
                return Err(ApiError::invalid(format!(
                    "security group {sg} is in another project"
                )));
            }
        }
        let mut used_ips: BTreeSet<IpAddr> = extra_ips.clone();
        for other in self.nics.values() {
            if other.spec.network_id == nic.spec.network_id {
                for addr in [&other.spec.ipv4_address, &other.spec.ipv6_address]
                    .into_iter()
                    .flatten()
                {
                    if let Ok(ip) = addr.parse() {
                        used_ips.insert(ip);
                    }
                }
            }
        }
        nic.spec.ipv4_address = crate::ipam::allocate(
            network.spec.ipv4_prefix.as_deref(),
            nic.spec.ipv4_address.as_deref(),
            &used_ips,
        )
        .map_err(|e| e.with_details(json!({"network_id": network.meta.id})))?;
        nic.spec.ipv6_address = crate::ipam::allocate(
            network.spec.ipv6_prefix.as_deref(),
            nic.spec.ipv6_address.as_deref(),
            &used_ips,
        )
        .map_err(|e| e.with_details(json!({"network_id": network.meta.id})))?;
        let mut used_macs: BTreeSet<String> = extra_macs.clone();
        used_macs.extend(
            self.nics
                .values()
                .filter_map(|n| n.spec.mac_address.clone()),
        );
        match &nic.spec.mac_address {
            Some(mac) => {
                if used_macs.contains(mac) {
                    return Err(ApiError::conflict(format!("MAC address {mac} is in use")));
                }
            }
            None => nic.spec.mac_address = Some(crate::ipam::mac_for(&nic.meta.id, &used_macs)),
        }
        Ok(())
    }

    fn create_vm(
        &mut self,
        index: u64,
        vm: &Vm,
        owned_volumes: &[Volume],
        owned_nics: &[Nic],
    ) -> Applied {
        if self.vms.contains_key(&vm.meta.id) {
            return self.same_or_exists(Kind::Vm, &vm.meta.id);
        }
        self.check_new(Kind::Vm, &vm.meta)?;
        // Owned volumes and NICs: validate and allocate before touching anything.
        let mut volumes = Vec::new();
        for vol in owned_volumes {
            self.check_new(Kind::Volume, &vol.meta)?;
            if volumes
                .iter()
                .any(|v: &Volume| v.meta.name == vol.meta.name)
            {
                return Err(name_exists(Kind::Volume, &vol.meta.name));
            }
            let mut vol = vol.clone();
            vol.node_id = self.volume_home(&vol)?;
            volumes.push(vol);
        }
        let mut nics = Vec::new();
        let mut macs = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for nic in owned_nics {
            self.check_new(Kind::Nic, &nic.meta)?;
            if nics.iter().any(|n: &Nic| n.meta.name == nic.meta.name) {
                return Err(name_exists(Kind::Nic, &nic.meta.name));
            }
            let mut nic = nic.clone();
            self.allocate_nic(&mut nic, &macs, &ips)?;
            macs.extend(nic.spec.mac_address.clone());
            for addr in [&nic.spec.ipv4_address, &nic.spec.ipv6_address]
                .into_iter()
                .flatten()
            {
                if let Ok(ip) = addr.parse() {
                    ips.insert(ip);
                }
            }
            nics.push(nic);
        }
        let owned_nic_ids: BTreeSet<&str> = nics.iter().map(|n| n.meta.id.as_str()).collect();
        let mut pinned_node: Option<String> = None;
        for vid in &vm.spec.volume_ids {
            let vol = match volumes.iter().find(|v| &v.meta.id == vid) {
                Some(owned) => owned,
                None => {
                    let vol = self
                        .volumes
                        .get(vid)
                        .ok_or_else(|| ApiError::not_found(Kind::Volume, vid))?;
                    self.check_attachable_volume(vol, &vm.meta)?;
                    vol
                }
            };
            if let Some(node) = &vol.node_id {
                if pinned_node.as_ref().is_some_and(|p| p != node) {
                    return Err(ApiError::conflict(
                        "the VM's volumes live on different nodes",
                    ));
                }
                pinned_node = Some(node.clone());
            }
        }
        for nid in &vm.spec.nic_ids {
            if owned_nic_ids.contains(nid.as_str()) {
                continue;
            }
            let nic = self
                .nics
                .get(nid)
                .ok_or_else(|| ApiError::not_found(Kind::Nic, nid))?;
            self.check_attachable_nic(nic, &vm.meta)?;
        }
        // Mutate.
        let mut changes = Vec::new();
        for mut vol in volumes {
            vol.vm_id = Some(vm.meta.id.clone());
            stamp_new(&mut vol.meta, index);
            let id = vol.meta.id.clone();
            self.volumes.insert(id.clone(), vol);
            changes.push(self.change(Kind::Volume, &id, "created"));
        }
        for mut nic in nics {
            nic.vm_id = Some(vm.meta.id.clone());
            stamp_new(&mut nic.meta, index);
            let id = nic.meta.id.clone();
            self.nics.insert(id.clone(), nic);
            changes.push(self.change(Kind::Nic, &id, "created"));
        }
        for vid in &vm.spec.volume_ids {
            if let Some(vol) = self.volumes.get_mut(vid) {
                if vol.vm_id.is_none() {
                    vol.vm_id = Some(vm.meta.id.clone());
                    vol.meta.revision = index;
                    changes.push(self.change(Kind::Volume, vid, "attached"));
                }
            }
        }
        for nid in &vm.spec.nic_ids {
            if let Some(nic) = self.nics.get_mut(nid) {
                if nic.vm_id.is_none() {
                    nic.vm_id = Some(vm.meta.id.clone());
                    nic.meta.revision = index;
                    changes.push(self.change(Kind::Nic, nid, "attached"));
                }
            }
        }
        let mut vm = vm.clone();
        stamp_new(&mut vm.meta, index);
        vm.node_id = None;
        vm.scheduling = Scheduling {
            state: "pending".into(),
            reason: "waiting for the scheduler".into(),
        };
        let id = vm.meta.id.clone();
        self.vms.insert(id.clone(), vm);
        let change = self.change(Kind::Vm, &id, "created");
        let value = change.object.clone().unwrap_or_else(Json::null);
        changes.push(change);
        Ok((value, changes))
    }

    fn check_attachable_volume(&self, vol: &Volume, vm: &Meta) -> Result<(), ApiError> {
        if vol.meta.project != vm.project {
            return Err(ApiError::invalid(format!(
                "volume {} is in another project",
                vol.meta.id
            )));
        }
        if let Some(other) = &vol.vm_id {
            if other != &vm.id {
                return Err(ApiError::conflict(format!(
                    "volume {} is attached to VM {other}",
                    vol.meta.id
                ))
                .with_details(json!({"volume_id": vol.meta.id, "vm_id": other})));
            }
        }
        Ok(())
    }

    fn check_attachable_nic(&self, nic: &Nic, vm: &Meta) -> Result<(), ApiError> {
        if nic.meta.project != vm.project {
            return Err(ApiError::invalid(format!(
                "NIC {} is in another project",
                nic.meta.id
            )));
        }
        if let Some(other) = &nic.vm_id {
            if other != &vm.id {
                return Err(ApiError::conflict(format!(
                    "NIC {} is attached to VM {other}",
                    nic.meta.id
                ))
                .with_details(json!({"nic_id": nic.meta.id, "vm_id": other})));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        index: u64,
        kind: Kind,
        id: &str,
        if_match: Option<u64>,
        labels: Option<&BTreeMap<String, String>>,
        spec: Option<&Value>,
        now: &str,
    ) -> Applied {
        let meta = self
            .meta(kind, id)
            .ok_or_else(|| ApiError::not_found(kind, id))?
            .clone();
        check_if_match(if_match, meta.revision)?;
        let parse = |v: &Value| -> Result<_, ApiError> { Ok(v.clone()) };
        let mut spec_changed = false;
        let mut changes = Vec::new();
        match (kind, spec) {
            (_, None) => {}
            (Kind::Network, Some(v)) => {
                let mut new: NetworkSpec = from_spec(parse(v)?)?;
                let net = &self.networks[id];
                if new.ipv4_prefix != net.spec.ipv4_prefix
                    || new.ipv6_prefix != net.spec.ipv6_prefix
                {
                    return Err(ApiError::invalid("a network's prefixes cannot change"));
                }
                match new.tunnel_key {
                    None => new.tunnel_key = net.spec.tunnel_key,
                    Some(k) if Some(k) != net.spec.tunnel_key => {
                        return Err(ApiError::invalid("a network's tunnel_key cannot change"))
                    }
                    Some(_) => {}
                }
                spec_changed = new != net.spec;
                if let Some(n) = self.networks.get_mut(id) {
                    n.spec = new;
                }
            }
            (Kind::Nic, Some(v)) => {
                let mut new: NicSpec = from_spec(parse(v)?)?;
                let nic = &self.nics[id];
                if new.network_id != nic.spec.network_id {
                    return Err(ApiError::invalid("a NIC's network cannot change"));
                }
                // Addresses and MAC are fixed once allocated; omitted means "keep".
                for (field, old, newv) in [
                    ("mac_address", &nic.spec.mac_address, &mut new.mac_address),
                    (
                        "ipv4_address",
                        &nic.spec.ipv4_address,
                        &mut new.ipv4_address,
                    ),
                    (
                        "ipv6_address",
                        &nic.spec.ipv6_address,
                        &mut new.ipv6_address,
                    ),
                ] {
                    match newv {
                        None => *newv = old.clone(),
                        Some(x) if Some(&*x) != old.as_ref() => {
                            return Err(ApiError::invalid(format!("{field} cannot change")))
                        }
                        _ => {}
                    }
                }
                for sg in &new.security_group_ids {
                    if !self.security_groups.contains_key(sg) {
                        return Err(ApiError::not_found(Kind::SecurityGroup, sg));
                    }
                }
                spec_changed = new != nic.spec;
                if new.security_group_ids != nic.spec.security_group_ids {
                    // Leaving a group removes the NIC from other nodes' remote-group expansions.
                    self.counters.last_removal_revision = index;
                }
                if let Some(n) = self.nics.get_mut(id) {
                    n.spec = new;
                }
            }
            (Kind::SecurityGroup, Some(v)) => {
                let new: SecurityGroupSpec = from_spec(parse(v)?)?;
                self.check_rules(id, &new.rules)?;
                spec_changed = new != self.security_groups[id].spec;
                if let Some(s) = self.security_groups.get_mut(id) {
                    s.spec = new;
                }
            }
            (Kind::Template, Some(v)) => {
                let new: TemplateSpec = from_spec(parse(v)?)?;
                if new != self.templates[id].spec {
                    return Err(ApiError::invalid(
                        "a template's source cannot change; create a new template",
                    ));
                }
            }
            (Kind::Volume, Some(v)) => {
                let new: VolumeSpec = from_spec(parse(v)?)?;
                let vol = &self.volumes[id];
                if new.template_id != vol.spec.template_id || new.node_id != vol.spec.node_id {
                    return Err(ApiError::invalid(
                        "a volume's template and node cannot change",
                    ));
                }
                if new.size_bytes < vol.spec.size_bytes {
                    return Err(ApiError::invalid("volumes only grow"));
                }
                spec_changed = new != vol.spec;
                if let Some(v) = self.volumes.get_mut(id) {
                    v.spec = new;
                }
            }
            (Kind::Vm, Some(v)) => {
                let new: VmSpec = from_spec(parse(v)?)?;
                changes.extend(self.update_vm_spec(index, id, new)?);
                spec_changed = true;
            }
            (Kind::Node, Some(v)) => {
                let new: NodeSpec = from_spec(parse(v)?)?;
                if let Some(n) = self.nodes.get_mut(id) {
                    n.spec = new;
                }
            }
            (Kind::Project, Some(_)) => {
                return Err(ApiError::invalid(
                    "projects have no spec; update labels only",
                ))
            }
            (other, Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "{} cannot be updated",
                    other.as_str()
                )))
            }
        }
        if let Some(meta) = self.meta_mut(kind, id) {
            if let Some(labels) = labels {
                meta.labels = labels.clone();
            }
            stamp(meta, index, now, spec_changed);
        }
        let change = self.change(kind, id, "updated");
        let value = change.object.clone().unwrap_or_else(Json::null);
        changes.push(change);
        Ok((value, changes))
    }

    fn update_vm_spec(
        &mut self,
        index: u64,
        id: &str,
        mut new: VmSpec,
    ) -> Result<Vec<Change>, ApiError> {
        let vm = self.vms[id].clone();
        let asks_owned = new.root_volume.is_some() || !new.network_interfaces.is_empty();
        let changed_owned = new.root_volume != vm.spec.root_volume
            || new.network_interfaces != vm.spec.network_interfaces;
        if asks_owned && changed_owned {
            return Err(ApiError::invalid(
                "root_volume and network_interfaces are create-only; attach existing volumes and NICs with volume_ids and nic_ids",
            ));
        }
        new.root_volume = vm.spec.root_volume.clone();
        new.network_interfaces = vm.spec.network_interfaces.clone();
        if new.hugepages != vm.spec.hugepages
            || new.nested_virtualization != vm.spec.nested_virtualization
        {
            return Err(ApiError::invalid(
                "hugepages and nested_virtualization are fixed after create",
            ));
        }
        let placed = vm.node_id.is_some();
        if placed && (new.vcpus != vm.spec.vcpus || new.memory_bytes != vm.spec.memory_bytes) {
            // Resizing a placed VM would need a capacity re-check on its node.
            let node = vm.node_id.clone().unwrap_or_default();
            let mut alloc = self.allocated_on(&node);
            alloc.vcpus = alloc.vcpus - vm.spec.vcpus + new.vcpus;
            alloc.memory_bytes = alloc.memory_bytes - vm.spec.memory_bytes + new.memory_bytes;
            if let Some(n) = self.nodes.get(&node) {
                if alloc.vcpus > n.status.capacity.vcpus
                    || alloc.memory_bytes > n.status.capacity.memory_bytes
                {
                    return Err(ApiError::conflict(format!(
                        "node {node} has no capacity for the new size"
                    )));
                }
            }
        }
        let old_vols: BTreeSet<&String> = vm.spec.volume_ids.iter().collect();
        let new_vols: BTreeSet<&String> = new.volume_ids.iter().collect();
        let old_nics: BTreeSet<&String> = vm.spec.nic_ids.iter().collect();
        let new_nics: BTreeSet<&String> = new.nic_ids.iter().collect();
        for vid in new_vols.difference(&old_vols) {
            let vol = self
                .volumes
                .get(*vid)
                .ok_or_else(|| ApiError::not_found(Kind::Volume, vid))?;
            self.check_attachable_volume(vol, &vm.meta)?;
            if let (Some(vn), Some(n)) = (&vol.node_id, &vm.node_id) {
                if vn != n {
                    return Err(ApiError::conflict(format!(
                        "volume {vid} lives on node {vn}, the VM runs on {n}"
                    )));
                }
            }
        }
        for vid in old_vols.difference(&new_vols) {
            if self.volumes.get(*vid).and_then(|v| v.owner_vm_id.as_ref()) == Some(&vm.meta.id) {
                return Err(ApiError::conflict(format!(
                    "volume {vid} belongs to the VM and cannot be detached"
                )));
            }
        }
        for nid in new_nics.difference(&old_nics) {
            let nic = self
                .nics
                .get(*nid)
                .ok_or_else(|| ApiError::not_found(Kind::Nic, nid))?;
            self.check_attachable_nic(nic, &vm.meta)?;
        }
        for nid in old_nics.difference(&new_nics) {
            if self.nics.get(*nid).and_then(|n| n.owner_vm_id.as_ref()) == Some(&vm.meta.id) {
                return Err(ApiError::conflict(format!(
                    "NIC {nid} belongs to the VM and cannot be detached"
                )));
            }
        }
        let mut changes = Vec::new();
        for vid in new_vols.difference(&old_vols) {
            if let Some(vol) = self.volumes.get_mut(*vid) {
                vol.vm_id = Some(vm.meta.id.clone());
                if vol.node_id.is_none() {
                    vol.node_id = vm.node_id.clone();
                }
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Volume, vid, "attached"));
        }
        for vid in old_vols.difference(&new_vols) {
            if let Some(vol) = self.volumes.get_mut(*vid) {
                vol.vm_id = None;
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Volume, vid, "detached"));
        }
        for nid in new_nics.difference(&old_nics) {
            if let Some(nic) = self.nics.get_mut(*nid) {
                nic.vm_id = Some(vm.meta.id.clone());
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Nic, nid, "attached"));
        }
        for nid in old_nics.difference(&new_nics) {
            if let Some(nic) = self.nics.get_mut(*nid) {
                nic.vm_id = None;
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Nic, nid, "detached"));
            self.counters.last_removal_revision = index;
        }
        if !old_vols.is_subset(&new_vols) {
            self.counters.last_removal_revision = index;
        }
        if let Some(v) = self.vms.get_mut(id) {
            v.spec = new;
        }
        Ok(changes)
    }

    fn delete(
        &mut self,
        index: u64,
        kind: Kind,
        id: &str,
        if_match: Option<u64>,
        force: bool,
    ) -> Applied {
        let meta = self
            .meta(kind, id)
            .ok_or_else(|| ApiError::not_found(kind, id))?
            .clone();
        check_if_match(if_match, meta.revision)?;
        let mut changes = Vec::new();
        match kind {
            Kind::Project => {
                if meta.id == DEFAULT_PROJECT_ID {
                    return Err(ApiError::conflict("the default project cannot be deleted"));
                }
                let p = &meta.name;
                let holders: Vec<String> = [
                    Kind::Vm,
                    Kind::Volume,
                    Kind::Nic,
                    Kind::Network,
                    Kind::SecurityGroup,
                    Kind::Template,
                ]
                .into_iter()
                .flat_map(|kind| {
                    self.metas(kind)
                        .filter(|m| &m.project == p)
                        .map(move |m| format!("{}/{}", kind.as_str(), m.id))
                })
                .collect();
                if !holders.is_empty() {
                    return Err(in_use(
                        format!("project {p} still holds resources"),
                        holders,
                    ));
                }
                self.projects.remove(id);
            }
            Kind::Network => {
                let nics: Vec<String> = self
                    .nics
                    .values()
                    .filter(|n| n.spec.network_id == id)
                    .map(|n| n.meta.id.clone())
                    .collect();
                if !nics.is_empty() && !force {
                    return Err(in_use(
                        format!("network {id} has NICs (delete them or use force=true)"),
                        nics.iter().map(|n| format!("nic/{n}")).collect(),
                    ));
                }
                for nic_id in nics {
                    changes.extend(self.remove_nic(index, &nic_id));
                }
                self.networks.remove(id);
            }
            Kind::Nic => {
                if let Some(vm) = self.nics.get(id).and_then(|n| n.vm_id.clone()) {
                    return Err(in_use(
                        format!("NIC {id} is attached to VM {vm}"),
                        vec![format!("vm/{vm}")],
                    ));
                }
                self.nics.remove(id);
            }
            Kind::SecurityGroup => {
                let mut users: Vec<String> = self
                    .nics
                    .values()
                    .filter(|n| n.spec.security_group_ids.iter().any(|s| s == id))
                    .map(|n| format!("nic/{}", n.meta.id))
                    .collect();
                users.extend(
                    self.security_groups
                        .values()
                        .filter(|s| {
                            s.meta.id != id
                                && s.spec
                                    .rules
                                    .iter()
                                    .any(|r| r.remote_group_id.as_deref() == Some(id))
                        })
                        .map(|s| format!("security_group/{}", s.meta.id)),
                );
                if !users.is_empty() {
                    return Err(in_use(format!("security group {id} is in use"), users));
                }
                self.security_groups.remove(id);
            }
            Kind::Template => {
                let clones: Vec<String> = self
                    .volumes
                    .values()
                    .filter(|v| v.spec.template_id.as_deref() == Some(id))
                    .map(|v| format!("volume/{}", v.meta.id))
                    .collect();
                if !clones.is_empty() {
                    return Err(in_use(format!("template {id} has clones"), clones));
                }
                self.templates.remove(id);
            }
            Kind::Volume => {
                if let Some(vm) = self.volumes.get(id).and_then(|v| v.vm_id.clone()) {
                    return Err(in_use(
                        format!("volume {id} is attached to VM {vm}"),
                        vec![format!("vm/{vm}")],
                    ));
                }
                self.volumes.remove(id);
            }
            Kind::Vm => {
                changes.extend(self.remove_vm(index, id));
                return Ok((Json::null(), changes));
            }
            Kind::Node => {
                let placed: Vec<String> = self
                    .vms
                    .values()
                    .filter(|v| v.node_id.as_deref() == Some(id))
                    .map(|v| format!("vm/{}", v.meta.id))
                    .chain(
                        self.volumes
                            .values()
                            .filter(|v| v.node_id.as_deref() == Some(id))
                            .map(|v| format!("volume/{}", v.meta.id)),
                    )
                    .collect();
                if !placed.is_empty() {
                    return Err(in_use(
                        format!("node {id} still has resources placed on it"),
                        placed,
                    ));
                }
                self.nodes.remove(id);
                changes.extend(self.forget_node_reports(index, id));
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "{} cannot be deleted here",
                    other.as_str()
                )))
            }
        }
        self.counters.last_removal_revision = index;
        changes.push(State::removed(kind, id, &meta.project));
        Ok((Json::null(), changes))
    }

    fn remove_nic(&mut self, index: u64, nic_id: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(nic) = self.nics.remove(nic_id) {
            if let Some(vm_id) = &nic.vm_id {
                if let Some(vm) = self.vms.get_mut(vm_id) {
                    vm.spec.nic_ids.retain(|n| n != nic_id);
                    vm.meta.revision = index;
                    vm.meta.spec_revision = index;
                    changes.push(self.change(Kind::Vm, vm_id, "updated"));
                }
            }
            changes.push(State::removed(Kind::Nic, nic_id, &nic.meta.project));
        }
        self.counters.last_removal_revision = index;
        changes
    }

    /// Deletes a VM: its owned volumes and NICs go with it; attached ones are detached.
    fn remove_vm(&mut self, index: u64, vm_id: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(vm) = self.vms.remove(vm_id) else {
            return changes;
        };
        for vid in &vm.spec.volume_ids {
            let owned = self
                .volumes
                .get(vid)
                .and_then(|v| v.owner_vm_id.clone())
                .as_deref()
                == Some(vm_id);
            if owned {
                if let Some(vol) = self.volumes.remove(vid) {
                    changes.push(State::removed(Kind::Volume, vid, &vol.meta.project));
                }
            } else if let Some(vol) = self.volumes.get_mut(vid) {
                vol.vm_id = None;
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
                changes.push(self.change(Kind::Volume, vid, "detached"));
            }
        }
        for nid in &vm.spec.nic_ids {
            let owned = self
                .nics
                .get(nid)
                .and_then(|n| n.owner_vm_id.clone())
                .as_deref()
                == Some(vm_id);
            if owned {
                if let Some(nic) = self.nics.remove(nid) {
                    changes.push(State::removed(Kind::Nic, nid, &nic.meta.project));
                }
            } else if let Some(nic) = self.nics.get_mut(nid) {
                nic.vm_id = None;
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
                changes.push(self.change(Kind::Nic, nid, "detached"));
            }
        }
        self.counters.last_removal_revision = index;
        changes.push(State::removed(Kind::Vm, vm_id, &vm.meta.project));
        changes
    }

    fn register_node(&mut self, index: u64, node: &Node) -> Applied {
        let id = node.meta.id.clone();
        if let Some(existing) = self.nodes.get(&id) {
            // Re-registration (agent restart): refresh what the agent says about itself.
            if existing.meta.name != node.meta.name
                && self.name_taken(Kind::Node, "", &node.meta.name)
            {
                return Err(name_exists(Kind::Node, &node.meta.name));
            }
            let mut updated = existing.clone();
            updated.meta.name = node.meta.name.clone();
            updated.meta.labels = node.meta.labels.clone();
            updated.status.address = node.status.address.clone();
            updated.status.capacity = node.status.capacity;
            updated.status.agent_version = node.status.agent_version.clone();
            updated.status.console_endpoint = node.status.console_endpoint.clone();
            updated.console_secret = node.console_secret.clone();
            if updated.status.state != "online" {
                updated.status.state = "online".into();
                updated.status.last_state_change_at = Some(node.meta.updated_at.clone());
            }
            if updated == *existing {
                return Ok((
                    self.object_json(Kind::Node, &id).unwrap_or_else(Json::null),
                    Vec::new(),
                ));
            }
            let now = node.meta.updated_at.clone();
            stamp(&mut updated.meta, index, &now, true);
            self.nodes.insert(id.clone(), updated);
            return self.updated(Kind::Node, &id);
        }
        if self.name_taken(Kind::Node, "", &node.meta.name) {
            return Err(name_exists(Kind::Node, &node.meta.name));
        }
        let mut node = node.clone();
        stamp_new(&mut node.meta, index);
        self.nodes.insert(id.clone(), node);
        self.created(Kind::Node, &id)
    }

    fn update_statuses(
        &mut self,
        index: u64,
        node_id: &str,
        reports: &[StatusReport],
        now: &str,
    ) -> Applied {
        if !self.nodes.contains_key(node_id) {
            return Err(ApiError::not_found(Kind::Node, node_id));
        }
        let mut accepted = 0u32;
        let mut unknown = Vec::new();
        let mut changes = Vec::new();
        for report in reports {
            let mut status = report.status.clone();
            status.node_id = Some(node_id.to_string());
            status.updated_at = Some(now.to_string());
            // A volume's snapshots ride along with the volume's report.
            let snapshots_changed = report.kind == Kind::Volume
                && self
                    .volumes
                    .get_mut(&report.id)
                    .filter(|v| v.node_id.as_deref() == Some(node_id))
                    .is_some_and(|v| apply_snapshot_reports(v, &report.snapshots));
            let slot: Option<(&mut Status, &mut Meta)> = match report.kind {
                Kind::Vm => self
                    .vms
                    .get_mut(&report.id)
                    .filter(|v| v.node_id.as_deref() == Some(node_id))
                    .map(|v| (&mut v.status, &mut v.meta)),
                Kind::Volume => self
                    .volumes
                    .get_mut(&report.id)
                    .filter(|v| v.node_id.is_none() || v.node_id.as_deref() == Some(node_id))
                    .map(|v| (&mut v.status, &mut v.meta)),
                Kind::Nic => self
                    .nics
                    .get_mut(&report.id)
                    .map(|v| (&mut v.status, &mut v.meta)),
                Kind::Network => self
                    .networks
                    .get_mut(&report.id)
                    .map(|v| (&mut v.status, &mut v.meta)),
                Kind::SecurityGroup => self
                    .security_groups
                    .get_mut(&report.id)
                    .map(|v| (&mut v.status, &mut v.meta)),
                Kind::Template => self
                    .templates
                    .get_mut(&report.id)
                    .map(|v| (&mut v.status, &mut v.meta)),
                _ => None,
            };
            let Some((slot, meta)) = slot else {
                unknown.push(report.id.clone());
                continue;
            };
            accepted += 1;
            let status = if report.kind.is_multi_node() {
                merge_node_report(slot, node_id, status)
            } else {
                status
            };
            let mut same = slot.clone();
            same.updated_at = status.updated_at.clone();
            same.nodes.values_mut().for_each(|n| n.updated_at = None);
            let mut cmp = status.clone();
            cmp.nodes.values_mut().for_each(|n| n.updated_at = None);
            if same == cmp && !snapshots_changed {
                continue;
            }
            *slot = status;
            meta.revision = index;
            meta.updated_at = now.to_string();
            changes.push(self.change(report.kind, &report.id, "status"));
        }
        Ok((
            Json::of(&json!({"accepted": accepted, "unknown_ids": unknown})),
            changes,
        ))
    }

    fn schedule(
        &mut self,
        index: u64,
        placements: &[Placement],
        pending: &[(String, String)],
        now: &str,
    ) -> Applied {
        let mut changes = Vec::new();
        let mut placed = 0u32;
        for p in placements {
            let Some(vm) = self.vms.get(&p.vm_id) else {
                continue;
            };
            if vm.node_id.is_some() {
                continue;
            }
            let Some(node) = self.nodes.get(&p.node_id) else {
                continue;
            };
            // Re-check capacity against the state at apply time: the decision is only applied
            // if it is still valid.
            let alloc = self.allocated_on(&p.node_id);
            let storage: u64 = vm
                .spec
                .volume_ids
                .iter()
                .filter_map(|v| self.volumes.get(v))
                .filter(|v| v.node_id.is_none())
                .map(|v| v.spec.size_bytes)
                .sum();
            let cap = node.status.capacity;
            if node.status.state != "online"
                || alloc.vcpus + vm.spec.vcpus > cap.vcpus
                || alloc.memory_bytes + vm.spec.memory_bytes > cap.memory_bytes
                || alloc.storage_bytes + storage > cap.storage_bytes
            {
                continue;
            }
            let vol_ids = vm.spec.volume_ids.clone();
            let node_state = node.status.state.clone();
            if let Some(vm) = self.vms.get_mut(&p.vm_id) {
                vm.node_id = Some(p.node_id.clone());
                vm.node_state = Some(node_state);
                vm.scheduling = Scheduling {
                    state: "scheduled".into(),
                    reason: String::new(),
                };
                stamp(&mut vm.meta, index, now, true);
            }
            for vid in vol_ids {
                if let Some(vol) = self.volumes.get_mut(&vid) {
                    if vol.node_id.is_none() {
                        vol.node_id = Some(p.node_id.clone());
                        stamp(&mut vol.meta, index, now, true);
                        changes.push(self.change(Kind::Volume, &vid, "placed"));
                    }
                }
            }
            placed += 1;
            changes.push(self.change(Kind::Vm, &p.vm_id, "scheduled"));
        }
        for (vm_id, reason) in pending {
            if let Some(vm) = self.vms.get_mut(vm_id) {
                if vm.node_id.is_none() && &vm.scheduling.reason != reason {
                    vm.scheduling = Scheduling {
                        state: "pending".into(),
                        reason: reason.clone(),
                    };
                    vm.meta.revision = index;
                    vm.meta.updated_at = now.to_string();
                    changes.push(self.change(Kind::Vm, vm_id, "pending"));
                }
            }
        }
        Ok((Json::of(&json!({"placed": placed})), changes))
    }

    /// Every object of `kind`'s `Meta`, in id order.
    pub fn metas(&self, kind: Kind) -> Box<dyn Iterator<Item = &Meta> + '_> {
        fn of<T>(
            m: &BTreeMap<String, T>,
            meta: fn(&T) -> &Meta,
        ) -> Box<dyn Iterator<Item = &Meta> + '_> {
            Box::new(m.values().map(meta))
        }
        match kind {
            Kind::Project => of(&self.projects, |o| &o.meta),
            Kind::Node => of(&self.nodes, |o| &o.meta),
            Kind::Network => of(&self.networks, |o| &o.meta),
            Kind::Nic => of(&self.nics, |o| &o.meta),
            Kind::SecurityGroup => of(&self.security_groups, |o| &o.meta),
            Kind::Template => of(&self.templates, |o| &o.meta),
            Kind::Volume => of(&self.volumes, |o| &o.meta),
            Kind::Vm => of(&self.vms, |o| &o.meta),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The `Meta` of object `id` of `kind`, if it exists.
    pub fn meta(&self, kind: Kind, id: &str) -> Option<&Meta> {
        match kind {
            Kind::Project => self.projects.get(id).map(|o| &o.meta),
            Kind::Node => self.nodes.get(id).map(|o| &o.meta),
            Kind::Network => self.networks.get(id).map(|o| &o.meta),
            Kind::Nic => self.nics.get(id).map(|o| &o.meta),
            Kind::SecurityGroup => self.security_groups.get(id).map(|o| &o.meta),
            Kind::Template => self.templates.get(id).map(|o| &o.meta),
            Kind::Volume => self.volumes.get(id).map(|o| &o.meta),
            Kind::Vm => self.vms.get(id).map(|o| &o.meta),
            _ => None,
        }
    }

    fn meta_mut(&mut self, kind: Kind, id: &str) -> Option<&mut Meta> {
        match kind {
            Kind::Project => self.projects.get_mut(id).map(|o| &mut o.meta),
            Kind::Node => self.nodes.get_mut(id).map(|o| &mut o.meta),
            Kind::Network => self.networks.get_mut(id).map(|o| &mut o.meta),
            Kind::Nic => self.nics.get_mut(id).map(|o| &mut o.meta),
            Kind::SecurityGroup => self.security_groups.get_mut(id).map(|o| &mut o.meta),
            Kind::Template => self.templates.get_mut(id).map(|o| &mut o.meta),
            Kind::Volume => self.volumes.get_mut(id).map(|o| &mut o.meta),
            Kind::Vm => self.vms.get_mut(id).map(|o| &mut o.meta),
            _ => None,
        }
    }

    /// Loads one persisted row (kind, id, json) into the state.
    pub fn load_row(&mut self, kind: Kind, id: &str, json: &str) -> Result<(), serde_json::Error> {
        // Rebuilt on the next lookup.
        self.names = NameIndex::default();
        let id = id.to_string();
        match kind {
            Kind::Project => {
                self.projects.insert(id, serde_json::from_str(json)?);
            }
            Kind::Node => {
                self.nodes.insert(id, serde_json::from_str(json)?);
            }
            Kind::Network => {
                self.networks.insert(id, serde_json::from_str(json)?);
            }
            Kind::Nic => {
                self.nics.insert(id, serde_json::from_str(json)?);
            }
            Kind::SecurityGroup => {
                self.security_groups.insert(id, serde_json::from_str(json)?);
            }
            Kind::Template => {
                self.templates.insert(id, serde_json::from_str(json)?);
            }
            Kind::Volume => {
                self.volumes.insert(id, serde_json::from_str(json)?);
            }
            Kind::Vm => {
                self.vms.insert(id, serde_json::from_str(json)?);
            }
            Kind::Token => {
                self.tokens.insert(id, serde_json::from_str(json)?);
            }
            Kind::JoinToken => {
                self.join_tokens.insert(id, serde_json::from_str(json)?);
            }
            Kind::Idempotency => {
                self.idempotency.insert(id, serde_json::from_str(json)?);
            }
        }
        Ok(())
    }

    /// Every row of the state as (kind, id, json), for snapshots and full rewrites.
    pub fn rows(&self) -> Vec<(Kind, String, String)> {
        let mut rows = Vec::new();
        fn push<T: Serialize>(
            rows: &mut Vec<(Kind, String, String)>,
            kind: Kind,
            map: &BTreeMap<String, T>,
        ) {
            for (id, v) in map {
                rows.push((
                    kind,
                    id.clone(),
                    serde_json::to_string(v).unwrap_or_default(),
                ));
            }
        }
        push(&mut rows, Kind::Project, &self.projects);
        // Nodes are stored without the derived `allocated` field.
        push(&mut rows, Kind::Node, &self.nodes);
        push(&mut rows, Kind::Network, &self.networks);
        push(&mut rows, Kind::Nic, &self.nics);
        push(&mut rows, Kind::SecurityGroup, &self.security_groups);
        push(&mut rows, Kind::Template, &self.templates);
        push(&mut rows, Kind::Volume, &self.volumes);
        push(&mut rows, Kind::Vm, &self.vms);
        push(&mut rows, Kind::Token, &self.tokens);
        push(&mut rows, Kind::JoinToken, &self.join_tokens);
        push(&mut rows, Kind::Idempotency, &self.idempotency);
        rows
    }

    /// The stored form of one object (what `rows` would give for it).
    pub fn stored_json(&self, kind: Kind, id: &str) -> Option<String> {
        match kind {
            Kind::Node => serde_json::to_string(self.nodes.get(id)?).ok(),
            _ if self.contains(kind, id) => serde_json::to_string(&ObjectRef {
                state: self,
                kind,
                id,
            })
            .ok(),
            _ => None,
        }
    }
}

fn action_verb(action: &str) -> &'static str {
    match action {
        "start" => "start_requested",
        "stop" => "stop_requested",
        "kill" => "kill_requested",
        _ => "restart_requested",
    }
}

fn stamp_new(meta: &mut Meta, index: u64) {
    meta.revision = index;
    meta.spec_revision = index;
}

fn name_exists(kind: Kind, name: &str) -> ApiError {
    ApiError::exists(format!("a {} named {name:?} already exists", kind.as_str()))
        .with_details(json!({"kind": kind.as_str(), "name": name}))
}

fn in_use(message: String, holders: Vec<String>) -> ApiError {
    ApiError::conflict(message).with_details(json!({"in_use_by": holders}))
}

fn from_spec<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid spec: {e}")))
}

/// The (kind, id) a create command creates, for the idempotency record.
fn created_kind_id(command: &Command) -> Option<(Kind, String)> {
    Some(match command {
        Command::CreateProject { project } => (Kind::Project, project.meta.id.clone()),
        Command::CreateNetwork { network } => (Kind::Network, network.meta.id.clone()),
        Command::CreateNic { nic } => (Kind::Nic, nic.meta.id.clone()),
        Command::CreateSecurityGroup { security_group } => {
            (Kind::SecurityGroup, security_group.meta.id.clone())
        }
        Command::CreateTemplate { template } => (Kind::Template, template.meta.id.clone()),
        Command::CreateVolume { volume } => (Kind::Volume, volume.meta.id.clone()),
        Command::CreateVm { vm, .. } => (Kind::Vm, vm.meta.id.clone()),
        _ => return None,
    })
}

/// Folds one node's report on a multi-node resource into its status: the report is kept under
/// the node's id and the top-level fields are re-derived from all nodes' reports.
/// Copies a node's snapshot reports into the volume's snapshots; true when one changed.
/// Snapshots the node does not mention keep their state (pending until it reports them).
fn apply_snapshot_reports(volume: &mut Volume, reports: &[SnapshotReport]) -> bool {
    let mut changed = false;
    for r in reports {
        if let Some(snap) = volume.snapshots.iter_mut().find(|s| s.id == r.id) {
            if snap.status != r.status {
                snap.status = r.status.clone();
                changed = true;
            }
        }
    }
    changed
}

fn merge_node_report(current: &Status, node_id: &str, report: Status) -> Status {
    let mut nodes = current.nodes.clone();
    nodes.insert(
        node_id.to_string(),
        PerNodeStatus {
            phase: report.phase,
            message: report.message,
            updated_at: report.updated_at,
            import_bytes_done: report.import_bytes_done,
            import_bytes_total: report.import_bytes_total,
        },
    );
    aggregate_node_reports(nodes, report.observed_revision)
}

/// The top-level status of a multi-node resource: a copy of the least advanced node's report
/// (failed, then anything in progress, then ready; ties go to the smallest node id), with the
/// node named in the message when more than one node reports.
pub(crate) fn aggregate_node_reports(
    nodes: BTreeMap<String, PerNodeStatus>,
    observed_revision: u64,
) -> Status {
    fn rank(phase: &str) -> u8 {
        match phase {
            "failed" => 0,
            "ready" | "running" => 2,
            _ => 1,
        }
    }
    let worst = nodes
        .iter()
        .min_by_key(|(id, n)| (rank(&n.phase), id.as_str()))
        .map(|(id, n)| (id.clone(), n.clone()));
    let Some((worst_id, worst)) = worst else {
        return Status::default();
    };
    let message = if nodes.len() > 1 && !worst.message.is_empty() {
        format!("node {worst_id}: {}", worst.message)
    } else {
        worst.message.clone()
    };
    // Neither side hides the other: a node's failure shows in the phase, and the nodes where
    // the resource is usable show in a condition (a failed import on one node never hides the
    // ready copy on another).
    let ready: Vec<&str> = nodes
        .iter()
        .filter(|(_, n)| rank(&n.phase) == 2)
        .map(|(id, _)| id.as_str())
        .collect();
    let mut conditions = Vec::new();
    if nodes.len() > 1 && !ready.is_empty() && ready.len() < nodes.len() {
        conditions.push(Condition {
            kind: "ready_on_nodes".into(),
            status: "true".into(),
            message: format!(
                "ready on {} of {} nodes: {}",
                ready.len(),
                nodes.len(),
                ready.join(", ")
            ),
        });
    }
    Status {
        phase: worst.phase.clone(),
        message,
        conditions,
        node_id: Some(worst_id),
        observed_revision,
        updated_at: worst.updated_at.clone(),
        import_bytes_done: worst.import_bytes_done,
        import_bytes_total: worst.import_bytes_total,
        nodes,
        ..Status::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, name: &str) -> Meta {
        Meta {
            id: id.into(),
            name: name.into(),
            project: DEFAULT_PROJECT.into(),
            labels: BTreeMap::new(),
            revision: 0,
            spec_revision: 0,
            created_at: "t0".into(),
            updated_at: "t0".into(),
        }
    }

    fn p(command: Command) -> Proposal {
        Proposal {
            command,
            idempotency: None,
        }
    }

    fn network(id: &str, name: &str) -> Proposal {
        p(Command::CreateNetwork {
            network: Network {
                meta: meta(id, name),
                spec: NetworkSpec {
                    ipv4_prefix: Some("10.0.0.0/24".into()),
                    ..Default::default()
                },
                status: Status::default(),
            },
        })
    }

    fn nic(id: &str, name: &str, net: &str) -> Proposal {
        p(Command::CreateNic {
            nic: Nic {
                meta: meta(id, name),
                spec: NicSpec {
                    network_id: net.into(),
                    ..Default::default()
                },
                status: Status::default(),
                vm_id: None,
                owner_vm_id: None,
            },
        })
    }

    #[test]
    fn the_name_index_follows_creates_deletes_and_loads() {
        let mut s = State::initial();
        // Built before anything exists, so every later answer comes from its upkeep.
        assert_eq!(s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"), None);
        let ok = |s: &mut State, i: u64, prop: Proposal| {
            let (o, _) = s.apply(i, &prop);
            o.result.map(|_| ())
        };
        ok(&mut s, 1, network("n1", "net")).unwrap();
        assert_eq!(
            s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
            Some("n1".into())
        );
        assert_eq!(s.id_by_name(Kind::Network, "other", "net"), None);
        assert_eq!(s.id_by_name(Kind::Nic, DEFAULT_PROJECT, "net"), None);
        assert!(ok(&mut s, 2, network("n2", "net")).is_err(), "name taken");
        let delete = p(Command::Delete {
            kind: Kind::Network,
            id: "n1".into(),
            if_match: None,
            force: false,
        });
        ok(&mut s, 3, delete).unwrap();
        assert_eq!(s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"), None);
        ok(&mut s, 4, network("n3", "net")).unwrap();
        assert_eq!(
            s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
            Some("n3".into())
        );
        // Projects are cluster-wide: found from any project.
        assert_eq!(
            s.id_by_name(Kind::Project, "whatever", DEFAULT_PROJECT),
            Some(DEFAULT_PROJECT_ID.into())
        );
        // A snapshot (serde) and a load from rows rebuild it.
        let json = serde_json::to_string(&s).unwrap();
        let restored: State = serde_json::from_str(&json).unwrap();
        assert_eq!(
            restored.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
            Some("n3".into())
        );
        let mut loaded = State::initial();
        for (kind, id, json) in s.rows() {
            loaded.load_row(kind, &id, &json).unwrap();
        }
        assert_eq!(
            loaded.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
            Some("n3".into())
        );
    }

    #[test]
    fn tunnel_keys_are_allocated_unique_fixed_and_survive_snapshots_and_loads() {
        let mut s = State::initial();
        let key = |s: &State, id: &str| s.networks[id].spec.tunnel_key;
        for i in 0..50 {
            let (o, _) = s.apply(i + 1, &network(&format!("n{i}"), &format!("net{i}")));
            o.result.unwrap();
        }
        let keys: BTreeSet<u32> = (0..50).filter_map(|i| key(&s, &format!("n{i}"))).collect();
        assert_eq!(keys.len(), 50, "every network has its own key");
        // A requested key is honoured when free and refused (409) when taken.
        let mut asked = network("asked", "asked");
        let mut taken = network("taken", "taken");
        if let Command::CreateNetwork { network } = &mut asked.command {
            network.spec.tunnel_key = Some(4242);
        }
        if let Command::CreateNetwork { network } = &mut taken.command {
            network.spec.tunnel_key = key(&s, "n7");
        }
        s.apply(60, &asked).0.result.unwrap();
        assert_eq!(key(&s, "asked"), Some(4242));
        let err = s.apply(61, &taken).0.result.unwrap_err();
        assert_eq!(err.http_status(), 409, "{err:?}");
        // Updates keep the key (omitted) and refuse a different one.
        let update = |k: Option<u32>| {
            p(Command::Update {
                kind: Kind::Network,
                id: "n3".into(),
                if_match: None,
                labels: None,
                spec: Some(json!({"ipv4_prefix": "10.0.0.0/24", "tunnel_key": k})),
                now: "t1".into(),
            })
        };
        let before = key(&s, "n3");
        s.apply(62, &update(None)).0.result.unwrap();
        assert_eq!(key(&s, "n3"), before);
        assert!(s.apply(63, &update(Some(99_999))).0.result.is_err());
        // The next key never repeats one in use, and the keys come back from rows.
        s.apply(64, &network("n50", "net50")).0.result.unwrap();
        let k50 = key(&s, "n50").unwrap();
        assert!(
            s.networks
                .values()
                .filter(|n| n.spec.tunnel_key == Some(k50))
                .count()
                == 1
        );
        let mut loaded = State::initial();
        for (kind, id, json) in s.rows() {
            loaded.load_row(kind, &id, &json).unwrap();
        }
        assert_eq!(key(&loaded, "n50"), Some(k50));
    }

    fn volume(id: &str, name: &str) -> Proposal {
        p(Command::CreateVolume {
            volume: Volume {
                meta: meta(id, name),
                spec: VolumeSpec {
                    size_bytes: 1 << 30,
                    ..Default::default()
                },
                status: Status::default(),
                node_id: None,
                owner_vm_id: None,
                vm_id: None,
                snapshots: Vec::new(),
                rollback: None,
            },
        })
    }

    fn snapshot(volume_id: &str, id: &str, name: &str) -> Proposal {
        p(Command::CreateSnapshot {
            volume_id: volume_id.into(),
            snapshot: VolumeSnapshot {
                id: id.into(),
                name: name.into(),
                created_at: "t1".into(),
                status: SnapshotStatus::default(),
            },
        })
    }

    #[test]
    fn rollbacks_need_a_ready_snapshot_drop_newer_ones_and_count_generations() {
        let mut s = State::initial();
        s.apply(1, &volume("v1", "data")).0.result.unwrap();
        s.volumes.get_mut("v1").unwrap().node_id = Some("node".into());
        s.apply(2, &snapshot("v1", "s1", "one")).0.result.unwrap();
        s.apply(3, &snapshot("v1", "s2", "two")).0.result.unwrap();
        let rollback = |sid: &str| {
            p(Command::RollbackSnapshot {
                volume_id: "v1".into(),
                snapshot_id: sid.into(),
                now: "t2".into(),
            })
        };
        let err = s.apply(4, &rollback("s1")).0.result.unwrap_err();
        assert_eq!(err.http_status(), 409, "a pending snapshot: {err:?}");
        for sid in ["s1", "s2"] {
            s.volumes
                .get_mut("v1")
                .unwrap()
                .snapshots
                .iter_mut()
                .find(|x| x.id == sid)
                .unwrap()
                .status
                .phase = "ready".into();
        }
        s.apply(5, &rollback("s1")).0.result.unwrap();
        let v = &s.volumes["v1"];
        assert_eq!(v.rollback.as_ref().unwrap().generation, 1);
        assert_eq!(v.snapshots.len(), 1, "the newer snapshot is gone");
        // The target of a rollback the node has not carried out cannot be deleted.
        let delete = p(Command::DeleteSnapshot {
            volume_id: "v1".into(),
            snapshot_id: "s1".into(),
            now: "t3".into(),
        });
        assert_eq!(s.apply(6, &delete).0.result.unwrap_err().http_status(), 409);
        s.apply(7, &rollback("s1")).0.result.unwrap();
        assert_eq!(s.volumes["v1"].rollback.as_ref().unwrap().generation, 2);
        s.volumes.get_mut("v1").unwrap().status.rollback_generation = Some(2);
        s.apply(8, &delete).0.result.unwrap();

        // Promotion: the template lives on the volume's node; clones are pinned there.
        s.apply(9, &snapshot("v1", "s3", "three")).0.result.unwrap();
        s.volumes.get_mut("v1").unwrap().snapshots[0].status.phase = "ready".into();
        let promote = p(Command::PromoteSnapshot {
            volume_id: "v1".into(),
            snapshot_id: "s3".into(),
            template: Template {
                meta: meta("t1", "golden"),
                spec: TemplateSpec::default(),
                status: Status::default(),
                node_id: None,
                import_cancelled: false,
            },
        });
        s.apply(10, &promote).0.result.unwrap();
        assert_eq!(s.templates["t1"].node_id.as_deref(), Some("node"));
        let mut clone = volume("v2", "clone");
        if let Command::CreateVolume { volume } = &mut clone.command {
            volume.spec.template_id = Some("t1".into());
        }
        s.apply(11, &clone).0.result.unwrap();
        assert_eq!(s.volumes["v2"].node_id.as_deref(), Some("node"));
    }

    #[test]
    fn a_failed_node_never_hides_the_ready_copy_of_another() {
        let node = |phase: &str, message: &str| PerNodeStatus {
            phase: phase.into(),
            message: message.into(),
            ..Default::default()
        };
        let nodes = BTreeMap::from([
            ("a".to_string(), node("ready", "")),
            ("b".to_string(), node("failed", "checksum mismatch")),
        ]);
        let s = aggregate_node_reports(nodes, 7);
        assert_eq!(s.phase, "failed");
        assert_eq!(s.message, "node b: checksum mismatch");
        assert_eq!(s.nodes["a"].phase, "ready");
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].message, "ready on 1 of 2 nodes: a");
    }

    fn log() -> Vec<Proposal> {
        vec![
            network("n1", "net"),
            nic("c1", "a", "n1"),
            nic("c2", "b", "n1"),
            network("n2", "net"), // refused: name taken
            p(Command::Delete {
                kind: Kind::Network,
                id: "n1".into(),
                if_match: None,
                force: false,
            }), // refused: NICs
            p(Command::Delete {
                kind: Kind::Nic,
                id: "c1".into(),
                if_match: None,
                force: false,
            }),
            nic("c3", "c", "n1"),
        ]
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_state_and_outcomes() {
        let run = || {
            let mut s = State::initial();
            let outcomes: Vec<Outcome> = log()
                .iter()
                .enumerate()
                .map(|(i, p)| s.apply(i as u64 + 1, p).0)
                .collect();
            (s, outcomes)
        };
        let (a, oa) = run();
        let (b, ob) = run();
        assert_eq!(a, b);
        assert_eq!(oa, ob);
        // c1's address was freed and reused by c3 (first free).
        assert_eq!(a.nics["c3"].spec.ipv4_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(oa[3].result.as_ref().unwrap_err().code, "already_exists");
        assert_eq!(oa[4].result.as_ref().unwrap_err().code, "conflict");
    }

    #[test]
    fn prune_forgets_old_idempotency_records_and_spent_join_tokens_only() {
        let mut s = State::initial();
        let keyed = |key: &str, at: i64, prop: Proposal| Proposal {
            idempotency: Some(Idempotency {
                key: key.into(),
                fingerprint: key.into(),
                created_at_ms: at,
            }),
            ..prop
        };
        s.apply(1, &keyed("old", 1_000, network("n1", "a")))
            .0
            .result
            .unwrap();
        s.apply(2, &keyed("new", 5_000, network("n2", "b")))
            .0
            .result
            .unwrap();
        let join = |id: &str, expires_at_ms: i64| {
            p(Command::CreateJoinToken {
                token: JoinToken {
                    id: id.into(),
                    hash: format!("hash-{id}"),
                    expires_at_ms,
                    used: false,
                },
            })
        };
        s.apply(3, &join("used", 10_000)).0.result.unwrap();
        s.apply(4, &join("expired", 2_000)).0.result.unwrap();
        s.apply(5, &join("live", 10_000)).0.result.unwrap();
        s.apply(
            6,
            &p(Command::ConsumeJoinToken {
                hash: "hash-used".into(),
                now_ms: 3_000,
            }),
        )
        .0
        .result
        .unwrap();

        let (outcome, changes) = s.apply(
            7,
            &p(Command::Prune {
                idempotency_before_ms: 3_000,
                now_ms: 3_000,
            }),
        );
        assert_eq!(outcome.result.unwrap().to_value()["pruned"], 3);
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|c| c.verb == "deleted"));
        assert_eq!(s.idempotency.keys().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(s.join_tokens.keys().collect::<Vec<_>>(), vec!["live"]);
        // The resources the records pointed at stay.
        assert!(s.networks.contains_key("n1"));
        assert_eq!(s.prunable(3_000, 3_000), (vec![], vec![]));
    }

    #[test]
    fn a_refused_command_changes_nothing_and_emits_no_event() {
        let mut s = State::initial();
        for (i, prop) in log().iter().take(3).enumerate() {
            s.apply(i as u64 + 1, prop).0.result.unwrap();
        }
        let before = s.clone();
        let (outcome, changes) = s.apply(
            10,
            &p(Command::Delete {
                kind: Kind::Network,
                id: "n1".into(),
                if_match: Some(99),
                force: true,
            }),
        );
        assert_eq!(outcome.result.unwrap_err().code, "precondition_failed");
        assert!(changes.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn every_change_carries_the_revision_of_its_command() {
        let mut s = State::initial();
        let (_, changes) = s.apply(7, &network("n1", "net"));
        let events: Vec<Event> = changes.iter().filter_map(|c| c.event(7)).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "network.created");
        assert_eq!(s.networks["n1"].meta.revision, 7);
        assert_eq!(s.networks["n1"].meta.spec_revision, 7);
    }
}
