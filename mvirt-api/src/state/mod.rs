//! The materialised state and the deterministic `apply` of commands.
//!
//! A REST or gRPC call is validated syntactically (`validate.rs`), turned into a [`Command`] with
//! every id and timestamp already minted, and proposed to Raft. Once committed, every member runs
//! [`State::apply`] with the command and its log index. `apply` checks everything that depends on
//! the state (references, uniqueness, conflicts, `If-Match`) *before* mutating anything, so a
//! rejected command leaves the state untouched; then it mutates and returns the [`Change`]s (which
//! the store persists and which become events). Nothing here reads a clock, a random source or
//! the environment: the same log gives the same state on every member.
//!
//! Layout: `apply` (here) dispatches each command. The steps every kind shares — existence,
//! `If-Match`, name uniqueness, stamping revisions, reporting changes — are the generic
//! [`State::create`], [`State::update`] and [`State::delete`] here; what differs per kind is its
//! [`Resource`] implementation in one module per kind (`project.rs`, `node.rs`, `network.rs`,
//! `nic.rs`, `security_group.rs`, `template.rs`, `volume.rs`, `vm.rs`), next to that kind's own
//! commands (actions, snapshots, rules). `token.rs` holds the bookkeeping kinds (API and join
//! tokens, idempotency records), `status.rs` the node reports, `rows.rs` the row encoding the
//! store and snapshots use, `names.rs` the name index, `command.rs` the commands and
//! `error.rs` [`ApiError`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::*;

mod backup;
mod cold_move;
mod command;
mod drain;
mod error;
mod ha;
mod migration;
mod names;
mod network;
mod nic;
mod node;
mod pod;
mod project;
pub mod removals;
mod replication;
mod rows;
mod security_group;
mod status;
mod template;
mod token;
mod vm;
mod volume;

#[cfg(test)]
mod tests;

pub use cold_move::COLD_MOVE_INTERVAL_SECS;
pub use command::{
    Command, Idempotency, IdempotencyRecord, Placement, Proposal, SnapshotReport, Spec,
    StatusReport, Update,
};
pub use error::{ApiError, ErrorCode};
pub use ha::HaDecision;
pub use migration::{MigrationLoss, MigrationUpdate, ReportedPhase};

use names::NameIndex;

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
    /// The event for this change, if its kind is visible to users. API and join tokens become
    /// events (`token.created`, `token.updated`, `token.deleted`, `join_token.…`; `/v1/events`
    /// shows them to admins only) without their `hash`: the change carries the stored form (it
    /// is also the row), the event never does. Idempotency records make no event.
    pub fn event(&self, revision: u64) -> Option<Event> {
        let object = match self.kind {
            Kind::Idempotency => return None,
            Kind::Token | Kind::JoinToken => self.object.as_ref().map(without_hash),
            _ => self.object.clone(),
        };
        Some(Event {
            revision,
            event_type: format!("{}.{}", self.kind.as_str(), self.verb),
            kind: self.kind.as_str().into(),
            id: self.id.clone(),
            project: self.project.clone(),
            object,
        })
    }
}

/// A token's JSON without its `hash` (what an event about it may show).
fn without_hash(object: &Json) -> Json {
    let mut v = object.to_value();
    if let Some(fields) = v.as_object_mut() {
        fields.remove("hash");
    }
    Json::of(&v)
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
    #[serde(default)]
    pub pods: BTreeMap<String, Pod>,
    #[serde(default)]
    pub backups: BTreeMap<String, Backup>,
    #[serde(default)]
    pub replications: BTreeMap<String, Replication>,
    pub tokens: BTreeMap<String, ApiToken>,
    pub join_tokens: BTreeMap<String, JoinToken>,
    pub idempotency: BTreeMap<String, IdempotencyRecord>,
    pub counters: Counters,
    /// Name → id for the named kinds: derived from the maps above, built on first use and
    /// kept current by [`State::apply`] from the changes every command reports.
    #[serde(skip)]
    names: NameIndex,
    /// The trace ids of recent removals, for the node specs (derived, not persisted).
    #[serde(skip)]
    pub removals: removals::RecentRemovals,
    /// The trace id of the proposal being applied (set only inside [`State::apply`]): objects
    /// a command creates carry it from the start, so [`State::apply`] need not serialize them
    /// a second time to stamp it.
    #[serde(skip)]
    applying_trace: Option<String>,
}

/// The id of the built-in `default` project (fixed so every member agrees without a command).
pub const DEFAULT_PROJECT_ID: &str = "00000000-0000-4000-8000-000000000001";
pub const DEFAULT_PROJECT: &str = "default";

/// What `apply` gives back for one command: the response object and the changes.
type Applied = Result<(Json, Vec<Change>), ApiError>;
/// What a kind's spec update reports: whether the spec changed, and other objects it changed.
type SpecChanged = Result<(bool, Vec<Change>), ApiError>;
/// The changes a kind's delete made besides removing the object itself.
type Removed = Result<Vec<Change>, ApiError>;

/// A kind as rows of the state: its map, keyed by id. Every kind, the bookkeeping ones too.
pub(crate) trait Stored: Clone + Serialize + DeserializeOwned {
    const KIND: Kind;
    fn map(state: &State) -> &BTreeMap<String, Self>;
    fn map_mut(state: &mut State) -> &mut BTreeMap<String, Self>;
}

/// A user-facing kind (it has [`Meta`]): the rules its creates, updates and deletes obey.
/// The generic [`State::create`], [`State::update`] and [`State::delete`] run the steps every
/// kind shares around these; a new kind implements this trait in a module of its own.
pub(crate) trait Resource: Stored + HasMeta {
    /// What `PUT` replaces.
    type Spec;
    /// Checks a new object against the state (its project exists, its name is free, its
    /// references hold) and completes what the state decides (addresses, keys, its node).
    /// Changes nothing.
    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Self::KIND, new.meta())
    }
    /// Checks the new spec of object `id` against its old one and the state, then stores it.
    fn update_spec(s: &mut State, at: u64, id: &str, new: Self::Spec) -> SpecChanged;
    /// Checks that nothing holds object `id` (unless `force` lets it take its dependents
    /// along) and removes it with what goes with it.
    fn delete(s: &mut State, at: u64, id: &str, force: bool) -> Removed;
}

/// The identity and bookkeeping of a user-facing kind.
pub(crate) trait HasMeta {
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
}

/// `Stored` for a kind's type and its map in [`State`] (and `Meta` access for resources).
macro_rules! stored {
    ($ty:ty, $kind:expr, $field:ident) => {
        impl Stored for $ty {
            const KIND: Kind = $kind;
            fn map(state: &State) -> &BTreeMap<String, Self> {
                &state.$field
            }
            fn map_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
                &mut state.$field
            }
        }
    };
    ($ty:ty, $kind:expr, $field:ident, meta) => {
        stored!($ty, $kind, $field);
        impl HasMeta for $ty {
            fn meta(&self) -> &Meta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
        }
    };
}

stored!(Project, Kind::Project, projects, meta);
stored!(Node, Kind::Node, nodes, meta);
stored!(Network, Kind::Network, networks, meta);
stored!(Nic, Kind::Nic, nics, meta);
stored!(SecurityGroup, Kind::SecurityGroup, security_groups, meta);
stored!(Template, Kind::Template, templates, meta);
stored!(Volume, Kind::Volume, volumes, meta);
stored!(Vm, Kind::Vm, vms, meta);
stored!(Pod, Kind::Pod, pods, meta);
stored!(Backup, Kind::Backup, backups, meta);
stored!(Replication, Kind::Replication, replications, meta);
stored!(ApiToken, Kind::Token, tokens);
stored!(JoinToken, Kind::JoinToken, join_tokens);
stored!(IdempotencyRecord, Kind::Idempotency, idempotency);

/// A kind that VMs attach (volumes, NICs) and may own.
pub(crate) trait Attachable: Resource {
    /// How messages name the kind.
    const LABEL: &'static str;
    fn vm_id(&self) -> Option<&String>;
    fn vm_id_mut(&mut self) -> &mut Option<String>;
    fn owner_vm_id(&self) -> Option<&String>;
    /// The pod the object is attached to (only NICs attach to pods).
    fn pod_id(&self) -> Option<&String> {
        None
    }
}

macro_rules! attachable {
    ($ty:ty, $label:literal) => {
        impl Attachable for $ty {
            const LABEL: &'static str = $label;
            fn vm_id(&self) -> Option<&String> {
                self.vm_id.as_ref()
            }
            fn vm_id_mut(&mut self) -> &mut Option<String> {
                &mut self.vm_id
            }
            fn owner_vm_id(&self) -> Option<&String> {
                self.owner_vm_id.as_ref()
            }
        }
    };
}

attachable!(Volume, "volume");

impl Attachable for Nic {
    const LABEL: &'static str = "NIC";
    fn vm_id(&self) -> Option<&String> {
        self.vm_id.as_ref()
    }
    fn vm_id_mut(&mut self) -> &mut Option<String> {
        &mut self.vm_id
    }
    fn owner_vm_id(&self) -> Option<&String> {
        self.owner_vm_id.as_ref()
    }
    fn pod_id(&self) -> Option<&String> {
        self.pod_id.as_ref()
    }
}

/// Evaluates `$body` with `$T` the type of the resource kind `$kind`, or `$other` for a kind
/// that is no [`Resource`].
macro_rules! with_resource {
    ($kind:expr, $T:ident => $body:expr, _ => $other:expr) => {
        match $kind {
            Kind::Project => with_resource!(@ $T = Project, $body),
            Kind::Node => with_resource!(@ $T = Node, $body),
            Kind::Network => with_resource!(@ $T = Network, $body),
            Kind::Nic => with_resource!(@ $T = Nic, $body),
            Kind::SecurityGroup => with_resource!(@ $T = SecurityGroup, $body),
            Kind::Template => with_resource!(@ $T = Template, $body),
            Kind::Volume => with_resource!(@ $T = Volume, $body),
            Kind::Vm => with_resource!(@ $T = Vm, $body),
            Kind::Pod => with_resource!(@ $T = Pod, $body),
            Kind::Backup => with_resource!(@ $T = Backup, $body),
            Kind::Replication => with_resource!(@ $T = Replication, $body),
            Kind::Token | Kind::JoinToken | Kind::Idempotency => $other,
        }
    };
    (@ $T:ident = $ty:ty, $body:expr) => {{
        type $T = $ty;
        $body
    }};
}
pub(crate) use with_resource;

fn stamp(meta: &mut Meta, index: u64, now: &str, spec_changed: bool) {
    meta.revision = index;
    if spec_changed {
        meta.spec_revision = index;
    }
    meta.updated_at = now.to_string();
}

fn stamp_new(meta: &mut Meta, index: u64) {
    meta.revision = index;
    meta.spec_revision = index;
}

impl State {
    /// [`stamp_new`], and the trace id of the proposal being applied (see `applying_trace`).
    fn stamp_created(&self, meta: &mut Meta, index: u64) {
        stamp_new(meta, index);
        if self.applying_trace.is_some() {
            meta.trace_id.clone_from(&self.applying_trace);
        }
    }
}

fn check_if_match(if_match: Option<u64>, actual: u64) -> Result<(), ApiError> {
    match if_match {
        Some(expected) if expected != actual => Err(ApiError::precondition(expected, actual)),
        _ => Ok(()),
    }
}

fn name_exists(kind: Kind, name: &str) -> ApiError {
    ApiError::exists(format!("a {} named {name:?} already exists", kind.as_str()))
        .with_details(json!({"kind": kind.as_str(), "name": name}))
}

/// Refuses a change while `holders` (`kind/id`) use what it would remove.
fn refuse_if_used(holders: Vec<String>, message: impl FnOnce() -> String) -> Result<(), ApiError> {
    if holders.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(message()).with_details(json!({"in_use_by": holders})))
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
                    trace_id: None,
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

    /// A node with `allocated` filled in from what is placed on it.
    pub fn node_view(&self, node: &Node) -> Node {
        let mut view = node.clone();
        view.allocated = self.allocated_on(&node.meta.id);
        view.console_secret.clear();
        if let Some(drain) = view.status.drain.as_mut() {
            drain.secret.clear();
        }
        view
    }

    /// Everything placed on a node: VM and pod vCPUs and memory, volume sizes.
    pub fn allocated_on(&self, node_id: &str) -> Capacity {
        let mut cap = Capacity::default();
        for vm in self.vms.values() {
            if vm.node_id.as_deref() == Some(node_id) {
                cap.vcpus += vm.spec.vcpus;
                cap.memory_bytes += vm.spec.memory_bytes;
            }
        }
        for pod in self.pods.values() {
            if pod.node_id.as_deref() == Some(node_id) {
                cap.vcpus += pod.spec.vcpus;
                cap.memory_bytes += pod.spec.memory_bytes;
            }
        }
        for vol in self.volumes.values() {
            if vol.node_id.as_deref() == Some(node_id) {
                cap.storage_bytes += vol.spec.size_bytes;
            }
        }
        cap
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
        self.applying_trace.clone_from(&proposal.trace_id);
        let result = self.apply_command(index, &proposal.command);
        self.applying_trace = None;
        match result {
            Ok((mut value, mut changes)) => {
                if let Some(trace_id) = &proposal.trace_id {
                    value = self.stamp_trace(trace_id, &mut changes, value);
                }
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

    /// Records `trace_id` as the last request that changed each object in `changes` (its
    /// `meta.trace_id`), and refreshes their payloads — and the response, when it is one of
    /// them. Objects a command removed are remembered in [`State::removals`].
    fn stamp_trace(&mut self, trace_id: &str, changes: &mut [Change], mut value: Json) -> Json {
        for change in changes.iter_mut() {
            if change.object.is_none() {
                // Removed: the node specs name it with this trace until the agents deleted it.
                self.removals.record(&change.id, trace_id);
                continue;
            }
            // Created with the trace id already (`stamp_created`): its JSON carries it.
            let stamped = with_resource!(change.kind, R => match R::map_mut(self).get_mut(&change.id) {
                Some(object) if object.meta().trace_id.as_deref() == Some(trace_id) => false,
                Some(object) => {
                    object.meta_mut().trace_id = Some(trace_id.to_string());
                    true
                }
                None => false,
            }, _ => false);
            if !stamped {
                continue;
            }
            let fresh = self.object_json(change.kind, &change.id);
            if let (Some(old), Some(new)) = (&change.object, &fresh) {
                if *old == value {
                    value = new.clone();
                }
            }
            change.object = fresh;
        }
        value
    }

    /// Runs one command: the kind's module does the work, the shared steps are below.
    // A table: one line per command.
    #[rustfmt::skip]
    fn apply_command(&mut self, at: u64, command: &Command) -> Applied {
        use Command as C;
        match command {
            C::Noop => Ok((Json::null(), Vec::new())),
            C::CreateProject { project } => self.create(at, project),
            C::CreateNetwork { network } => self.create(at, network),
            C::CreateNic { nic } => self.create(at, nic),
            C::CreateSecurityGroup { security_group } => self.create(at, security_group),
            C::CreateTemplate { template } => self.create(at, template),
            C::CreateVolume { volume } => self.create(at, volume),
            C::CreateVm { vm, owned_volumes: v, owned_nics: n } => self.create_vm(at, vm, v, n),
            C::CreatePod { pod, owned_nics: n } => self.create_pod(at, pod, n),
            C::CreateBackups { backups } => self.create_backups(at, backups),
            C::CreateReplication { replication } => self.create(at, replication),
            C::PodAction { id, action, force, now } => self.pod_action(at, id, *action, *force, now),
            C::Update(update) => self.apply_update(at, update),
            C::Delete { kind, id, if_match: m, force: f } => self.apply_delete(at, *kind, id, *m, *f),
            C::VmAction { id, action, now } => self.vm_action(at, id, *action, now),
            C::MigrateVm { id, node, migration_id: m, grant_token: t, now } => self.migrate_vm(at, id, node.as_deref(), m, t, now),
            C::DrainNode { id, drain_id: d, secret, now } => self.drain_node(at, id, d, secret, now),
            C::UndrainNode { id, if_match: m, now } => self.undrain_node(at, id, *m, now),
            C::HaFailover { decision, now } => self.ha_failover(at, decision, now),
            C::EndMigrationOnNodeLoss { loss, now } => self.migration_node_lost(at, loss, now),
            C::ResizeVolume { id, size_bytes: b, if_match: m, now } => self.resize_volume(at, id, *b, *m, now),
            C::CreateSnapshot { volume_id: v, snapshot } => self.create_snapshot(at, v, snapshot),
            C::DeleteSnapshot { volume_id: v, snapshot_id: s, now } => self.delete_snapshot(at, v, s, now),
            C::RollbackSnapshot { volume_id: v, snapshot_id: s, now } => self.rollback_snapshot(at, v, s, now),
            C::CancelImport { id, now } => self.cancel_import(at, id, now),
            C::PromoteSnapshot { volume_id: v, snapshot_id: s, template: t } => self.promote_snapshot(at, v, s, t),
            C::AddRule { security_group_id: g, rule, now } => self.add_rule(at, g, rule, now),
            C::DeleteRule { security_group_id: g, rule_id: r, now } => self.delete_rule(at, g, r, now),
            C::RegisterNode { node } => self.register_node(at, node),
            C::SetNodeState { id, state, capacity: c, pod_artefacts_version: v, now } => self.set_node_state(at, id, *state, c.as_ref(), v.as_deref(), now),
            C::UpdateStatuses { node_id: n, reports: r, now } => self.update_statuses(at, n, r, now),
            C::Schedule { placements: p, pending: w, now } => self.schedule(at, p, w, now),
            C::CreateToken { token } => self.create_token(at, token),
            C::DeleteToken { id } => self.delete_token(id),
            C::BindToken { id, node_id } => self.bind_token(at, id, node_id),
            C::CreateJoinToken { token } => self.create_join_token(token),
            C::Prune { idempotency_before_ms: b, now_ms: n } => self.prune(*b, *n),
            C::ConsumeJoinToken { hash, now_ms } => self.consume_join_token(hash, *now_ms),
        }
    }

    /// A delete goes to its kind's [`Resource::delete`].
    fn apply_delete(
        &mut self,
        at: u64,
        kind: Kind,
        id: &str,
        m: Option<u64>,
        force: bool,
    ) -> Applied {
        with_resource!(kind, R => self.delete::<R>(at, id, m, force), _ => Err(ApiError::not_found(kind, id)))
    }

    /// Creates `new` (of any kind) at log index `at`.
    fn create<R: Resource>(&mut self, at: u64, new: &R) -> Applied {
        let id = new.meta().id.clone();
        if R::map(self).contains_key(&id) {
            return self.same_or_exists(R::KIND, &id);
        }
        let mut new = new.clone();
        R::check_create(self, &mut new)?;
        self.stamp_created(new.meta_mut(), at);
        R::map_mut(self).insert(id.clone(), new);
        self.created(R::KIND, &id)
    }

    /// An update's spec goes to its kind's [`Resource::update_spec`].
    fn apply_update(&mut self, at: u64, u: &Update) -> Applied {
        let Some(spec) = &u.spec else {
            return with_resource!(u.kind, R => self.update::<R>(at, u, None),
                _ => Err(ApiError::not_found(u.kind, &u.id)));
        };
        if spec.kind() != u.kind {
            return Err(ApiError::invalid(format!(
                "a {} spec for a {}",
                spec.kind().as_str(),
                u.kind.as_str()
            )));
        }
        match spec.clone() {
            Spec::Node(s) => self.update::<Node>(at, u, Some(s)),
            Spec::Network(s) => self.update::<Network>(at, u, Some(s)),
            Spec::Nic(s) => self.update::<Nic>(at, u, Some(s)),
            Spec::SecurityGroup(s) => self.update::<SecurityGroup>(at, u, Some(s)),
            Spec::Template(s) => self.update::<Template>(at, u, Some(s)),
            Spec::Volume(s) => self.update::<Volume>(at, u, Some(s)),
            Spec::Vm(s) => self.update::<Vm>(at, u, Some(s)),
            Spec::Pod(s) => self.update::<Pod>(at, u, Some(s)),
            Spec::Backup(s) => self.update::<Backup>(at, u, Some(s)),
            Spec::Replication(s) => self.update::<Replication>(at, u, Some(s)),
        }
    }

    /// Updates labels and/or the spec of object `u.id` of kind `R`.
    fn update<R: Resource>(&mut self, at: u64, u: &Update, spec: Option<R::Spec>) -> Applied {
        check_if_match(u.if_match, self.get::<R>(&u.id)?.meta().revision)?;
        let (spec_changed, mut changes) = match spec {
            None => (false, Vec::new()),
            Some(spec) => R::update_spec(self, at, &u.id, spec)?,
        };
        if let Some(object) = R::map_mut(self).get_mut(&u.id) {
            let meta = object.meta_mut();
            if let Some(labels) = &u.labels {
                meta.labels = labels.clone();
            }
            stamp(meta, at, &u.now, spec_changed);
        }
        let change = self.change(R::KIND, &u.id, "updated");
        let value = change.object.clone().unwrap_or_else(Json::null);
        changes.push(change);
        Ok((value, changes))
    }

    /// Deletes object `id` of kind `R`.
    fn delete<R: Resource>(
        &mut self,
        at: u64,
        id: &str,
        if_match: Option<u64>,
        force: bool,
    ) -> Applied {
        let meta = self.get::<R>(id)?.meta().clone();
        check_if_match(if_match, meta.revision)?;
        let mut changes = R::delete(self, at, id, force)?;
        self.counters.last_removal_revision = at;
        changes.push(State::removed(R::KIND, id, &meta.project));
        Ok((Json::null(), changes))
    }

    /// Object `id` of kind `T`, or `not_found`.
    fn get<T: Stored>(&self, id: &str) -> Result<&T, ApiError> {
        T::map(self)
            .get(id)
            .ok_or_else(|| ApiError::not_found(T::KIND, id))
    }

    /// Object `id` of kind `T` to change, or `not_found`.
    fn get_mut<T: Stored>(&mut self, id: &str) -> Result<&mut T, ApiError> {
        T::map_mut(self)
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found(T::KIND, id))
    }

    /// Stores `new` as the spec (`spec_of`) of object `id` of kind `R`; whether it changed.
    fn store_spec<R: Resource>(
        &mut self,
        id: &str,
        new: R::Spec,
        spec_of: fn(&mut R) -> &mut R::Spec,
    ) -> bool
    where
        R::Spec: PartialEq,
    {
        let Some(spec) = R::map_mut(self).get_mut(id).map(spec_of) else {
            return false;
        };
        let changed = *spec != new;
        *spec = new;
        changed
    }

    fn same_or_exists(&self, kind: Kind, id: &str) -> Applied {
        // The id is minted by the API, so a repeat is a replay of the same create.
        Err(ApiError::exists(format!(
            "{} {id} already exists",
            kind.as_str()
        )))
    }

    /// A new object's project exists and its name is free there.
    fn check_new(&self, kind: Kind, meta: &Meta) -> Result<(), ApiError> {
        self.require_project(&meta.project)?;
        self.check_unique_name(kind, &meta.project, &meta.name)
    }

    fn check_unique_name(&self, kind: Kind, project: &str, name: &str) -> Result<(), ApiError> {
        if self.name_taken(kind, project, name) {
            return Err(name_exists(kind, name));
        }
        Ok(())
    }

    fn created(&self, kind: Kind, id: &str) -> Applied {
        self.answer(kind, id, "created")
    }

    fn updated(&self, kind: Kind, id: &str) -> Applied {
        self.answer(kind, id, "updated")
    }

    /// The change `verb` of one object, which is also the answer.
    fn answer(&self, kind: Kind, id: &str, verb: &'static str) -> Applied {
        let change = self.change(kind, id, verb);
        Ok((
            change.object.clone().unwrap_or_else(Json::null),
            vec![change],
        ))
    }

    /// Every object of `kind`'s `Meta`, in id order.
    pub fn metas(&self, kind: Kind) -> Box<dyn Iterator<Item = &Meta> + '_> {
        with_resource!(kind, R => Box::new(R::map(self).values().map(R::meta)),
            _ => Box::new(std::iter::empty()))
    }

    /// The `Meta` of object `id` of `kind`, if it exists.
    pub fn meta(&self, kind: Kind, id: &str) -> Option<&Meta> {
        with_resource!(kind, R => R::map(self).get(id).map(R::meta), _ => None)
    }
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
        Command::CreatePod { pod, .. } => (Kind::Pod, pod.meta.id.clone()),
        Command::CreateBackups { backups } => (Kind::Backup, backups.first()?.meta.id.clone()),
        Command::CreateReplication { replication } => {
            (Kind::Replication, replication.meta.id.clone())
        }
        _ => return None,
    })
}
