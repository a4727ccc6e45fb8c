//! SQLite persistence of VMs and pods: one row per VM with its spec (JSON), its state and the identity
//! of its hypervisor process. The store is the daemon's memory across restarts: recovery reads
//! it to find the processes to adopt. Calls are short and synchronous behind one mutex.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::model::{ProcessIdentity, VmRecord, VmSpec, VmState};
use crate::pod::model::PodRecord;

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    hypervisor TEXT NOT NULL,
    pid INTEGER,
    pid_start_time INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL DEFAULT 0,
    pending_changes TEXT NOT NULL DEFAULT '[]'
);
",
    "
CREATE TABLE pods (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the VM database")]
    Open(#[from] mvirt_common::sqlite::SqliteError),
    #[error("VM database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("stored VM {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
}

pub struct Store {
    conn: Mutex<Connection>,
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<(VmRecordRaw,)> {
    Ok((VmRecordRaw {
        id: row.get(0)?,
        spec: row.get(1)?,
        state: row.get(2)?,
        state_reason: row.get(3)?,
        hypervisor: row.get(4)?,
        pid: row.get(5)?,
        pid_start_time: row.get(6)?,
        created_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        started_at_ms: row.get(9)?,
        pending_changes: row.get(10)?,
    },))
}

struct VmRecordRaw {
    id: String,
    spec: String,
    state: String,
    state_reason: String,
    hypervisor: String,
    pid: Option<i64>,
    pid_start_time: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
    started_at_ms: i64,
    pending_changes: String,
}

impl VmRecordRaw {
    fn into_record(self) -> Result<VmRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: self.id.clone(),
            reason,
        };
        let spec: VmSpec =
            serde_json::from_str(&self.spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        let state = VmState::parse(&self.state)
            .ok_or_else(|| corrupt(format!("unknown state {:?}", self.state)))?;
        let pending_changes: Vec<String> = serde_json::from_str(&self.pending_changes)
            .map_err(|e| corrupt(format!("pending changes: {e}")))?;
        let process = match (self.pid, self.pid_start_time) {
            (Some(pid), Some(start)) if pid > 0 => Some(ProcessIdentity {
                pid: pid as u32,
                start_time: start as u64,
            }),
            _ => None,
        };
        Ok(VmRecord {
            id: self.id,
            spec,
            state,
            state_reason: self.state_reason,
            hypervisor: self.hypervisor,
            process,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            started_at_ms: self.started_at_ms,
            pending_changes,
        })
    }
}

const COLUMNS: &str = "id, spec, state, state_reason, hypervisor, pid, pid_start_time, \
                       created_at_ms, updated_at_ms, started_at_ms, pending_changes";

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = mvirt_common::sqlite::open(path, MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = mvirt_common::sqlite::open_in_memory(MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&vm.spec).map_err(|e| StoreError::Corrupt {
            id: vm.id.clone(),
            reason: e.to_string(),
        })?;
        let pending = serde_json::to_string(&vm.pending_changes).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            &format!(
                "INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                vm.id,
                spec,
                vm.state.as_str(),
                vm.state_reason,
                vm.hypervisor,
                vm.process.map(|p| p.pid as i64),
                vm.process.map(|p| p.start_time as i64),
                vm.created_at_ms,
                vm.updated_at_ms,
                vm.started_at_ms,
                pending,
            ],
        )?;
        Ok(())
    }

    /// Writes every mutable field of `vm` (spec, state, process, timestamps).
    pub fn update(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&vm.spec).map_err(|e| StoreError::Corrupt {
            id: vm.id.clone(),
            reason: e.to_string(),
        })?;
        let pending = serde_json::to_string(&vm.pending_changes).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            "UPDATE vms SET spec = ?2, state = ?3, state_reason = ?4, hypervisor = ?5, pid = ?6,
                 pid_start_time = ?7, updated_at_ms = ?8, started_at_ms = ?9, pending_changes = ?10
             WHERE id = ?1",
            params![
                vm.id,
                spec,
                vm.state.as_str(),
                vm.state_reason,
                vm.hypervisor,
                vm.process.map(|p| p.pid as i64),
                vm.process.map(|p| p.start_time as i64),
                vm.updated_at_ms,
                vm.started_at_ms,
                pending,
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<VmRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE id = ?1"),
                [id],
                row_to_record,
            )
            .optional()?;
        raw.map(|(r,)| r.into_record()).transpose()
    }

    pub fn list(&self) -> Result<Vec<VmRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM vms ORDER BY created_at_ms, id"
        ))?;
        let raws = stmt
            .query_map([], row_to_record)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(|(r,)| r.into_record()).collect()
    }

    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM vms WHERE id = ?1", [id])? > 0)
    }

    /// Inserts or replaces a pod's record (one JSON document per pod: a pod's process state
    /// lives in the record of its microVM, in `vms`).
    pub fn put_pod(&self, pod: &PodRecord) -> Result<(), StoreError> {
        let record = serde_json::to_string(pod).map_err(|e| StoreError::Corrupt {
            id: pod.id.clone(),
            reason: e.to_string(),
        })?;
        self.conn().execute(
            "INSERT INTO pods (id, record, created_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET record = excluded.record",
            params![pod.id, record, pod.created_at_ms],
        )?;
        Ok(())
    }

    pub fn get_pod(&self, id: &str) -> Result<Option<PodRecord>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .query_row("SELECT record FROM pods WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()?;
        raw.map(|r| parse_pod(id, &r)).transpose()
    }

    pub fn list_pods(&self) -> Result<Vec<PodRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, record FROM pods ORDER BY created_at_ms, id")?;
        let raws = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raws.iter().map(|(id, r)| parse_pod(id, r)).collect()
    }

    pub fn delete_pod(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM pods WHERE id = ?1", [id])?
            > 0)
    }
}

fn parse_pod(id: &str, record: &str) -> Result<PodRecord, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("pod record: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootSource, VmSpec};

    fn record(id: &str) -> VmRecord {
        VmRecord {
            id: id.into(),
            spec: VmSpec {
                name: "a".into(),
                vcpus: 1,
                memory_mib: 64,
                boot: BootSource::Firmware { firmware: None },
                disks: vec![],
                nics: vec![],
                cloud_init: None,
                hugepages: false,
                nested_virtualization: false,
                labels: Default::default(),
                vsock: None,
            },
            state: VmState::Stopped,
            state_reason: "created".into(),
            hypervisor: "qemu".into(),
            process: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            started_at_ms: 0,
            pending_changes: vec![],
        }
    }

    #[test]
    fn records_survive_reopening_with_their_process_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.db");
        {
            let store = Store::open(&path).unwrap();
            let mut vm = record("v1");
            store.insert(&vm).unwrap();
            vm.state = VmState::Running;
            vm.process = Some(ProcessIdentity {
                pid: 42,
                start_time: 7,
            });
            vm.pending_changes = vec!["vcpus 2".into()];
            store.update(&vm).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let vm = store.get("v1").unwrap().unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.process.unwrap().pid, 42);
        assert_eq!(vm.pending_changes, vec!["vcpus 2".to_string()]);
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.delete("v1").unwrap());
        assert!(store.get("v1").unwrap().is_none());
        assert!(!store.delete("v1").unwrap());
    }
}
