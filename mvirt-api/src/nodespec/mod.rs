//! The full desired set of one node (what `WatchSpecs` streams), computed from the state.
//!
//! Its revision is the greatest `spec_revision` of everything that went into it, or the last
//! revision at which anything was removed from some node's set, whichever is greater. So the
//! revision moves forward exactly when the set may have changed, and a watcher that resumes from
//! the last revision it saw misses nothing.
//!
//! One module per kind turns that kind's objects into their proto form: `vm.rs`, `volume.rs`,
//! `pod.rs`, `nic.rs`, `network.rs`, `security_group.rs`, `template.rs`, and `route.rs` (the NICs of the
//! node's networks that live on other nodes). Each takes a [`Desired`], which knows the node
//! and keeps the revision; a new kind adds a module and one line in [`desired_for`].

mod backup;
mod network;
mod nic;
mod pod;
mod replication;
mod route;
mod security_group;
mod template;
mod transfer;
mod vm;
mod volume;

pub use pod::container_status;
pub use replication::replica_reports;

use crate::proto;
use crate::state::State;

/// What the per-kind modules share while one node's set is computed.
pub(crate) struct Desired<'a> {
    state: &'a State,
    node_id: &'a str,
    revision: u64,
}

impl<'a> Desired<'a> {
    /// Everything that goes into the set moves its revision.
    fn bump(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    /// The id of the project named `name` (empty if it is gone).
    fn project_id(&self, name: &str) -> String {
        self.state
            .project_by_name(name)
            .map(|p| p.meta.id.clone())
            .unwrap_or_default()
    }
}

/// Computes the desired set for `node_id` and its revision.
pub fn desired_for(state: &State, node_id: &str) -> proto::NodeSpec {
    let mut cx = Desired {
        state,
        node_id,
        revision: state.counters.last_removal_revision,
    };
    if let Some(node) = state.nodes.get(node_id) {
        cx.bump(node.meta.spec_revision);
    }
    let (vms, vm_ids) = vm::vms(&mut cx);
    let (pods, pod_ids) = pod::pods(&mut cx);
    let volumes = volume::volumes(&mut cx);
    let attached = nic::nics(&mut cx, &vm_ids, &pod_ids);
    let networks = network::networks(&mut cx, &attached.network_ids);
    let security_groups = security_group::security_groups(&mut cx, attached.security_group_ids);
    let templates = template::templates(&mut cx);
    let routes = route::routes(&mut cx, &attached.network_ids);
    let backups = backup::backups(&mut cx);
    let replications = replication::replications(&mut cx);
    // Before the literal: every part must bump the revision before it is read.
    let transfers = transfer::grants(&mut cx);
    proto::NodeSpec {
        node_id: node_id.to_string(),
        revision: cx.revision,
        networks,
        security_groups,
        templates,
        volumes,
        nics: attached.nics,
        routes,
        vms,
        pods,
        transfers,
        backups,
        replications,
        removed_trace_ids: state.removals.trace_ids().clone(),
    }
}
