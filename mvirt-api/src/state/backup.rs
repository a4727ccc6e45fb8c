//! Backups: a `zfs send` stream of one volume, written by the volume's node into its backup
//! directory. A backup belongs to the node that took it and outlives its volume; a restore
//! (a new volume with `spec.backup_id`) happens on that node. A VM's backup is one backup per
//! volume, asked for in one command. Retention (`backup_keep_last` on the volume) is applied
//! here, deterministically, when a node reports a backup ready.

use std::collections::BTreeSet;

use serde_json::json;

use super::{refuse_if_used, ApiError, Applied, Change, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Backup {
    type Spec = BackupSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Backup, &new.meta)?;
        let vol = s.get::<Volume>(&new.spec.volume_id)?;
        if vol.meta.project != new.meta.project {
            return Err(ApiError::invalid(format!(
                "volume {} is in project {:?}, not {:?}: a backup lives in its volume's project",
                vol.meta.id, vol.meta.project, new.meta.project
            )));
        }
        let Some(node_id) = vol.node_id.clone() else {
            return Err(ApiError::conflict(format!(
                "volume {} is on no node yet: a backup is taken on the volume's node",
                vol.meta.name
            )));
        };
        if new.spec.incremental {
            let has_base = s.backups.values().any(|b| {
                b.spec.volume_id == vol.meta.id
                    && b.node_id.as_deref() == Some(node_id.as_str())
                    && b.status.phase != Phase::Failed
            });
            if !has_base {
                return Err(ApiError::conflict(format!(
                    "volume {} has no backup to base an incremental one on: take a full backup first",
                    vol.meta.name
                )));
            }
        }
        new.volume_name = vol.meta.name.clone();
        new.node_id = Some(node_id);
        new.status = Status::default();
        Ok(())
    }

    fn update_spec(s: &mut State, _: u64, id: &str, new: BackupSpec) -> SpecChanged {
        if new != s.backups[id].spec {
            return Err(ApiError::invalid(
                "a backup's spec cannot change; take a new backup",
            ));
        }
        Ok((false, Vec::new()))
    }

    /// Refused while other backups are increments on this one, unless `force`: then they go
    /// too. Volumes being restored from it keep nothing of it once restored; a restore still
    /// waiting for it holds it.
    fn delete(s: &mut State, _: u64, id: &str, force: bool) -> Removed {
        let restoring: Vec<String> = s
            .volumes
            .values()
            .filter(|v| v.spec.backup_id.as_deref() == Some(id) && v.status.phase != Phase::Ready)
            .map(|v| format!("volume/{}", v.meta.id))
            .collect();
        refuse_if_used(restoring, || {
            format!("backup {id} is being restored into a new volume")
        })?;
        let dependents = s.backup_dependents(id);
        if !force {
            let holders = dependents.iter().map(|d| format!("backup/{d}")).collect();
            refuse_if_used(holders, || {
                format!("backups depend on backup {id} (increments on it): delete them first, or use force=true")
            })?;
        }
        let mut changes = Vec::new();
        for dep in dependents {
            if let Some(b) = s.backups.remove(&dep) {
                changes.push(State::removed(Kind::Backup, &dep, &b.meta.project));
            }
        }
        s.backups.remove(id);
        Ok(changes)
    }
}

impl State {
    /// Creates a backup, or all of a VM's backups at once (all or none). Answers the backup,
    /// or `{"items": [...]}` for a VM's backups.
    pub(super) fn create_backups(&mut self, at: u64, backups: &[Backup]) -> Applied {
        let mut checked = Vec::new();
        for b in backups {
            if self.backups.contains_key(&b.meta.id) {
                return self.same_or_exists(Kind::Backup, &b.meta.id);
            }
            let mut b = b.clone();
            Backup::check_create(self, &mut b)?;
            if checked.iter().any(|c: &Backup| c.meta.name == b.meta.name) {
                return Err(ApiError::exists(format!(
                    "two backups named {:?} in one request",
                    b.meta.name
                )));
            }
            checked.push(b);
        }
        let mut changes = Vec::new();
        let mut created = Vec::new();
        for mut b in checked {
            super::stamp_new(&mut b.meta, at);
            let id = b.meta.id.clone();
            self.backups.insert(id.clone(), b);
            let change = self.change(Kind::Backup, &id, "created");
            if let Some(object) = &change.object {
                created.push(object.to_value());
            }
            changes.push(change);
        }
        // A VM's backups answer as a list (even of one); a volume's backup as the object.
        let of_vm = backups.first().is_some_and(|b| b.vm_id.is_some());
        let value = if created.len() == 1 && !of_vm {
            Json::of(&created[0])
        } else {
            Json::of(&json!({ "items": created }))
        };
        Ok((value, changes))
    }

    /// The backups that are increments on `id`, directly or through others (as reported by the
    /// node), plus incrementals of the same volume that are not ready yet (their base is not
    /// known until the node reports it).
    fn backup_dependents(&self, id: &str) -> Vec<String> {
        let Some(root) = self.backups.get(id) else {
            return Vec::new();
        };
        let mut found: BTreeSet<String> = BTreeSet::new();
        let mut frontier = vec![id.to_string()];
        while let Some(base) = frontier.pop() {
            for b in self.backups.values() {
                let on_base = b
                    .status
                    .backup
                    .as_ref()
                    .and_then(|r| r.base_backup_id.as_deref())
                    == Some(base.as_str());
                if on_base && found.insert(b.meta.id.clone()) {
                    frontier.push(b.meta.id.clone());
                }
            }
        }
        for b in self.backups.values() {
            let unresolved = b.spec.incremental
                && b.status.backup.is_none()
                && b.status.phase != Phase::Failed
                && b.spec.volume_id == root.spec.volume_id
                && b.meta.id > root.meta.id;
            if unresolved {
                found.insert(b.meta.id.clone());
            }
        }
        found.into_iter().collect()
    }

    /// Applies the retention of the volume of backup `id` (if it is ready and its volume asks
    /// for one): keeps the newest `backup_keep_last` ready backups of that volume on that
    /// node and every backup they are increments on; removes the other ready ones.
    pub(super) fn apply_backup_retention(&mut self, index: u64, id: &str) -> Vec<Change> {
        let Some(b) = self.backups.get(id) else {
            return Vec::new();
        };
        if b.status.phase != Phase::Ready {
            return Vec::new();
        }
        let (volume_id, node_id) = (b.spec.volume_id.clone(), b.node_id.clone());
        let Some(keep_last) = self
            .volumes
            .get(&volume_id)
            .and_then(|v| v.spec.backup_keep_last)
        else {
            return Vec::new();
        };
        // Ids are UUIDv7: id order is creation order.
        let ready: Vec<&Backup> = self
            .backups
            .values()
            .filter(|b| {
                b.spec.volume_id == volume_id
                    && b.node_id == node_id
                    && b.status.phase == Phase::Ready
            })
            .collect();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for b in ready.iter().rev().take(keep_last.max(1) as usize) {
            let mut next = Some(b.meta.id.clone());
            while let Some(id) = next.take() {
                if !keep.insert(id.clone()) {
                    break;
                }
                next = self
                    .backups
                    .get(&id)
                    .and_then(|b| b.status.backup.as_ref())
                    .and_then(|r| r.base_backup_id.clone());
            }
        }
        let gone: Vec<(String, String)> = ready
            .iter()
            .filter(|b| !keep.contains(&b.meta.id))
            .map(|b| (b.meta.id.clone(), b.meta.project.clone()))
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        self.counters.last_removal_revision = index;
        gone.into_iter()
            .map(|(id, project)| {
                self.backups.remove(&id);
                State::removed(Kind::Backup, &id, &project)
            })
            .collect()
    }

    /// The backup a new volume is restored from: it must be ready; the volume lives on its node
    /// and is at least as large as the volume it was taken of.
    pub(super) fn restore_source(&self, volume: &Volume) -> Result<Option<String>, ApiError> {
        let Some(backup_id) = &volume.spec.backup_id else {
            return Ok(None);
        };
        if volume.spec.template_id.is_some() {
            return Err(ApiError::invalid(
                "a volume is restored from a backup or cloned from a template, not both",
            ));
        }
        let b = self.get::<Backup>(backup_id)?;
        let Some(report) = b
            .status
            .backup
            .as_ref()
            .filter(|_| b.status.phase == Phase::Ready)
        else {
            return Err(ApiError::conflict(format!(
                "backup {} is {}, not ready: only a ready backup can be restored",
                b.meta.name,
                if b.status.phase == Phase::Unknown {
                    Phase::Pending
                } else {
                    b.status.phase
                }
            )));
        };
        if volume.spec.size_bytes < report.volume_size_bytes {
            return Err(ApiError::invalid(format!(
                "size_bytes {} is smaller than the backed-up volume ({} bytes)",
                volume.spec.size_bytes, report.volume_size_bytes
            )));
        }
        if let Some(pin) = volume
            .spec
            .node_id
            .as_ref()
            .filter(|n| Some(*n) != b.node_id.as_ref())
        {
            return Err(ApiError::conflict(format!(
                "backup {} is on node {}; a volume restored from it cannot be pinned to node {pin}",
                b.meta.name,
                b.node_id.as_deref().unwrap_or("")
            )));
        }
        Ok(b.node_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn backup(id: &str, name: &str, incremental: bool) -> Proposal {
        p(Command::CreateBackups {
            backups: vec![Backup::new(
                meta(id, name),
                BackupSpec {
                    volume_id: "v1".into(),
                    incremental,
                },
            )],
        })
    }

    /// The node reports backup `id` ready, an increment on `base`.
    fn ready(s: &mut State, index: u64, id: &str, base: Option<&str>) -> Vec<Change> {
        let report = StatusReport {
            kind: Kind::Backup,
            id: id.into(),
            status: Status {
                phase: Phase::Ready,
                backup: Some(BackupReport {
                    size_bytes: 10,
                    sha256: "ab".into(),
                    base_backup_id: base.map(String::from),
                    volume_size_bytes: 1 << 30,
                }),
                ..Status::default()
            },
            snapshots: Vec::new(),
            migration: None,
        };
        let command = Command::UpdateStatuses {
            node_id: "n1".into(),
            reports: vec![report],
            now: "t2".into(),
        };
        let (outcome, changes) = s.apply(index, &p(command));
        outcome.result.unwrap();
        changes
    }

    fn with_volume_on_node() -> State {
        let mut s = state_after(&[volume("v1", "data")]);
        s.volumes.get_mut("v1").unwrap().node_id = Some("n1".into());
        s.nodes.insert("n1".into(), online_node("n1", "one"));
        s
    }

    #[test]
    fn a_backup_goes_to_its_volumes_node_and_an_increment_needs_a_base() {
        let mut s = state_after(&[volume("v1", "data")]);
        let err = refused(&mut s, 2, &backup("b1", "first", false));
        assert_eq!(err.code, ErrorCode::Conflict, "{err}");
        assert!(err.message.contains("on no node"), "{err}");

        let mut s = with_volume_on_node();
        let err = refused(&mut s, 2, &backup("b0", "inc", true));
        assert!(err.message.contains("take a full backup first"), "{err}");
        s.apply(3, &backup("b1", "first", false)).0.result.unwrap();
        assert_eq!(s.backups["b1"].node_id.as_deref(), Some("n1"));
        assert_eq!(s.backups["b1"].volume_name, "data");
        s.apply(4, &backup("b2", "second", true)).0.result.unwrap();
        // The backup outlives its volume.
        s.apply(5, &delete(Kind::Volume, "v1")).0.result.unwrap();
        assert!(s.backups.contains_key("b1"));
    }

    #[test]
    fn a_backup_with_increments_on_it_is_deleted_only_with_them() {
        let mut s = with_volume_on_node();
        s.apply(2, &backup("b1", "full", false)).0.result.unwrap();
        s.apply(3, &backup("b2", "inc", true)).0.result.unwrap();
        // b2's base is not reported yet: it may be b1, so b1 is held.
        let err = refused(&mut s, 4, &delete(Kind::Backup, "b1"));
        assert_eq!(err.details["in_use_by"][0], "backup/b2");
        ready(&mut s, 5, "b1", None);
        ready(&mut s, 6, "b2", Some("b1"));
        let err = refused(&mut s, 7, &delete(Kind::Backup, "b1"));
        assert_eq!(err.details["in_use_by"][0], "backup/b2");
        let force = p(Command::Delete {
            kind: Kind::Backup,
            id: "b1".into(),
            if_match: None,
            force: true,
        });
        let (outcome, changes) = s.apply(8, &force);
        outcome.result.unwrap();
        assert!(s.backups.is_empty());
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn retention_keeps_the_newest_ready_backups_and_their_bases() {
        let mut s = with_volume_on_node();
        s.volumes.get_mut("v1").unwrap().spec.backup_keep_last = Some(2);
        s.apply(2, &backup("b1", "one", false)).0.result.unwrap();
        s.apply(3, &backup("b2", "two", false)).0.result.unwrap();
        s.apply(4, &backup("b3", "three", true)).0.result.unwrap();
        s.apply(5, &backup("b4", "four", false)).0.result.unwrap();
        assert!(ready(&mut s, 6, "b1", None).len() == 1);
        ready(&mut s, 7, "b2", None);
        ready(&mut s, 8, "b3", Some("b1"));
        // Newest two ready: b3 (with its base b1) and b2.
        assert_eq!(s.backups.len(), 4);
        let changes = ready(&mut s, 9, "b4", None);
        // Newest two: b4, b3 (+ b1, its base); b2 goes.
        let gone: Vec<&str> = changes
            .iter()
            .filter(|c| c.object.is_none())
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(gone, ["b2"]);
        let left: Vec<&String> = s.backups.keys().collect();
        assert_eq!(left, ["b1", "b3", "b4"]);
    }

    #[test]
    fn a_restore_needs_a_ready_backup_and_lives_on_its_node() {
        let mut s = with_volume_on_node();
        s.apply(2, &backup("b1", "full", false)).0.result.unwrap();
        let restore = |id: &str, size: u64| {
            let mut v = volume(id, id);
            if let Command::CreateVolume { volume } = &mut v.command {
                volume.spec.backup_id = Some("b1".into());
                volume.spec.size_bytes = size;
            }
            v
        };
        let err = refused(&mut s, 3, &restore("r1", 1 << 30));
        assert!(err.message.contains("not ready"), "{err}");
        ready(&mut s, 4, "b1", None);
        let err = refused(&mut s, 5, &restore("r1", 1 << 20));
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
        s.apply(6, &restore("r1", 1 << 30)).0.result.unwrap();
        assert_eq!(s.volumes["r1"].node_id.as_deref(), Some("n1"));
        // Held while the restore is not done.
        let err = refused(&mut s, 7, &delete(Kind::Backup, "b1"));
        assert_eq!(err.details["in_use_by"][0], "volume/r1");
    }
}
