//! The name index: name → id for the named kinds, so that a create checks its name's
//! uniqueness without scanning every object of its kind.

use super::{Change, State};
use crate::model::{Kind, Meta};

/// Key of the name index: kind, project (empty for the cluster-wide kinds), name.
type NameKey = (Kind, String, String);

/// The name index behind [`State::id_by_name`]: a create checks its name's uniqueness without
/// scanning every object of its kind (that scan was the top CPU cost of a VM create once the
/// state held thousands of VMs). Derived data: it never takes part in equality.
#[derive(Debug, Clone, Default)]
pub(super) struct NameIndex(std::sync::OnceLock<NameMaps>);

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

const NAMED_KINDS: [Kind; 11] = [
    Kind::Project,
    Kind::Node,
    Kind::Network,
    Kind::Nic,
    Kind::SecurityGroup,
    Kind::Template,
    Kind::Volume,
    Kind::Vm,
    Kind::Pod,
    Kind::Backup,
    Kind::Replication,
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
        let id_key = (kind, id.to_string());
        // Most changes (status reports, scheduling, spec updates) keep the name: nothing to
        // do, and no rehashing or key allocation on every write of every member.
        if let (Some(meta), Some(old)) = (meta, self.by_id.get(&id_key)) {
            let cluster_wide = matches!(kind, Kind::Project | Kind::Node);
            if old.2 == meta.name
                && (cluster_wide || old.1 == meta.project)
                && self.by_name.get(old).is_some_and(|v| v == id)
            {
                return;
            }
        }
        if let Some(old) = self.by_id.remove(&id_key) {
            if self.by_name.get(&old).is_some_and(|v| v == id) {
                self.by_name.remove(&old);
            }
        }
        if let Some(meta) = meta {
            let key = name_key(kind, meta);
            self.by_name.insert(key.clone(), id.to_string());
            self.by_id.insert(id_key, key);
        }
    }
}

impl State {
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
    pub(super) fn index_names(&mut self, changes: &[Change]) {
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

    pub(super) fn name_taken(&self, kind: Kind, project: &str, name: &str) -> bool {
        self.id_by_name(kind, project, name).is_some()
    }
}
