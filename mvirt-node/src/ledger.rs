//! The agent's own persistent state, in SQLite in its data dir: the node id, the last desired
//! revision fully reconciled, and the set of local objects the agent owns.
//!
//! Ownership is recorded *before* the create call (write-ahead), so an agent killed between
//! the call and its answer still knows the object is its own after a restart. An object is
//! released only after its delete succeeded (or it was already gone).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};

use mvirt_common::sqlite::{self, SqliteError};

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE owned (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"#];

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("agent state database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// Kinds of local objects the agent manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Network,
    SecurityGroup,
    Template,
    Volume,
    Nic,
    Route,
    Vm,
    Pod,
    Backup,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::SecurityGroup => "security_group",
            Kind::Template => "template",
            Kind::Volume => "volume",
            Kind::Nic => "nic",
            Kind::Route => "route",
            Kind::Vm => "vm",
            Kind::Pod => "pod",
            Kind::Backup => "backup",
        }
    }
}

/// The agent's persistent state.
pub struct Ledger {
    conn: Mutex<Connection>,
}

impl Ledger {
    /// Opens (or creates) `<data_dir>/agent.db`.
    pub fn open(data_dir: &Path) -> Result<Ledger, LedgerError> {
        let conn = sqlite::open(&data_dir.join("agent.db"), MIGRATIONS)?;
        Ok(Ledger {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// A number kept under `key`: 0 when there is none (or it cannot be read).
    pub fn counter(&self, key: &str) -> u64 {
        self.get(key)
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn set_counter(&self, key: &str, value: u64) -> Result<(), LedgerError> {
        self.set(key, &value.to_string())
    }

    /// The node id the API gave this host, once registered.
    pub fn node_id(&self) -> Result<Option<String>, LedgerError> {
        self.get("node_id")
    }

    pub fn set_node_id(&self, id: &str) -> Result<(), LedgerError> {
        self.set("node_id", id)
    }

    /// The last desired revision that was fully reconciled.
    pub fn applied_revision(&self) -> Result<u64, LedgerError> {
        Ok(self
            .get("applied_revision")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_applied_revision(&self, revision: u64) -> Result<(), LedgerError> {
        self.set("applied_revision", &revision.to_string())
    }

    /// Records that the agent owns (or is about to create) `kind/id`.
    pub fn claim(&self, kind: Kind, id: &str) -> Result<(), LedgerError> {
        self.owned_row(
            "INSERT OR IGNORE INTO owned (kind, id) VALUES (?1, ?2)",
            kind,
            id,
        )
    }

    /// Forgets `kind/id` after it was deleted.
    pub fn release(&self, kind: Kind, id: &str) -> Result<(), LedgerError> {
        self.owned_row("DELETE FROM owned WHERE kind = ?1 AND id = ?2", kind, id)
    }

    fn owned_row(&self, statement: &str, kind: Kind, id: &str) -> Result<(), LedgerError> {
        self.conn().execute(statement, [kind.as_str(), id])?;
        Ok(())
    }

    pub fn owns(&self, kind: Kind, id: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM owned WHERE kind = ?1 AND id = ?2",
                [kind.as_str(), id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every id of `kind` the agent owns.
    pub fn owned(&self, kind: Kind) -> Result<HashSet<String>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM owned WHERE kind = ?1")?;
        let ids = stmt
            .query_map([kind.as_str()], |r| r.get(0))?
            .collect::<Result<HashSet<String>, _>>()?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_and_identity_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            ledger.set_node_id("n1").unwrap();
            ledger.set_applied_revision(42).unwrap();
            ledger.claim(Kind::Vm, "a").unwrap();
            ledger.claim(Kind::Vm, "a").unwrap();
            ledger.claim(Kind::Volume, "b").unwrap();
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.node_id().unwrap().as_deref(), Some("n1"));
        assert_eq!(ledger.applied_revision().unwrap(), 42);
        assert!(ledger.owns(Kind::Vm, "a").unwrap());
        assert!(!ledger.owns(Kind::Vm, "b").unwrap());
        assert_eq!(ledger.owned(Kind::Volume).unwrap().len(), 1);
        ledger.release(Kind::Vm, "a").unwrap();
        assert!(ledger.owned(Kind::Vm).unwrap().is_empty());
    }
}
