//! SQLite persistence of networks, NICs, security groups and routes.
//!
//! Each object is one row: its id, the columns needed for relations, and the domain object as
//! JSON. The datapath is derived from this state on every change and at start, so the database
//! is the only source of truth; the pinned eBPF maps are a cache of it.

use std::path::Path;
use std::sync::Mutex;

use mvirt_common::{ErrorKind, HasErrorKind};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Network, Nic, Route, SecurityGroup};

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE networks (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE nics (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    body TEXT NOT NULL
);
CREATE TABLE security_groups (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    body TEXT NOT NULL
);
",
    // 2: a rule's remote-group target gains the addresses of members on other nodes:
    // {"Group": "<id>"} becomes {"Group": {"id": "<id>", "remote_addresses": []}}.
    "
UPDATE security_groups SET body = json_set(body, '$.spec.rules', json((
    SELECT json_group_array(
        CASE WHEN json_type(r.value, '$.target.Group') = 'text'
        THEN json_set(r.value, '$.target', json_object('Group', json_object(
            'id', json_extract(r.value, '$.target.Group'),
            'remote_addresses', json_array())))
        ELSE json(r.value) END
        ORDER BY r.key)
    FROM json_each(security_groups.body, '$.spec.rules') AS r)))
WHERE json_array_length(body, '$.spec.rules') > 0;
",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database")]
    Open(#[from] mvirt_common::sqlite::SqliteError),
    #[error("database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("stored object is corrupt")]
    Corrupt(#[from] serde_json::Error),
}

impl HasErrorKind for StoreError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// The daemon's database.
pub struct Store {
    conn: Mutex<Connection>,
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    Ok(serde_json::to_string(value)?)
}

fn decode<T: DeserializeOwned>(body: String) -> Result<T, StoreError> {
    Ok(serde_json::from_str(&body)?)
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(mvirt_common::sqlite::open(path, MIGRATIONS)?),
        })
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(mvirt_common::sqlite::open_in_memory(MIGRATIONS)?),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    fn list<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(decode(body?)?);
            }
            Ok(out)
        })
    }

    fn get<T: DeserializeOwned>(&self, sql: &str, id: &str) -> Result<Option<T>, StoreError> {
        self.with(|c| {
            let body: Option<String> = c.query_row(sql, [id], |r| r.get(0)).optional()?;
            body.map(decode).transpose()
        })
    }

    /// Inserts a network and returns its datapath index.
    pub fn insert_network(&self, network: &Network) -> Result<u32, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO networks (id, body) VALUES (?1, '{}')",
                params![network.id],
            )?;
            let idx = c.last_insert_rowid() as u32;
            let mut stored = network.clone();
            stored.index = idx;
            c.execute(
                "UPDATE networks SET body = ?2 WHERE id = ?1",
                params![network.id, encode(&stored)?],
            )?;
            Ok(idx)
        })
    }

    pub fn update_network(&self, network: &Network) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE networks SET body = ?2 WHERE id = ?1",
                params![network.id, encode(network)?],
            )?;
            Ok(())
        })
    }

    pub fn get_network(&self, id: &str) -> Result<Option<Network>, StoreError> {
        self.get("SELECT body FROM networks WHERE id = ?1", id)
    }

    pub fn list_networks(&self) -> Result<Vec<Network>, StoreError> {
        self.list("SELECT body FROM networks ORDER BY idx")
    }

    pub fn delete_network(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM networks WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn upsert_nic(&self, nic: &Nic) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO nics (id, network_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![nic.id, nic.spec.network_id, encode(nic)?],
            )?;
            Ok(())
        })
    }

    pub fn get_nic(&self, id: &str) -> Result<Option<Nic>, StoreError> {
        self.get("SELECT body FROM nics WHERE id = ?1", id)
    }

    pub fn list_nics(&self) -> Result<Vec<Nic>, StoreError> {
        self.list("SELECT body FROM nics ORDER BY rowid")
    }

    pub fn delete_nic(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM nics WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn upsert_security_group(&self, sg: &SecurityGroup) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO security_groups (id, body) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![sg.id, encode(sg)?],
            )?;
            Ok(())
        })
    }

    pub fn get_security_group(&self, id: &str) -> Result<Option<SecurityGroup>, StoreError> {
        self.get("SELECT body FROM security_groups WHERE id = ?1", id)
    }

    pub fn list_security_groups(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        self.list("SELECT body FROM security_groups ORDER BY rowid")
    }

    pub fn delete_security_group(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM security_groups WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn insert_route(&self, route: &Route) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO routes (id, network_id, body) VALUES (?1, ?2, ?3)",
                params![route.id, route.spec.network_id, encode(route)?],
            )?;
            Ok(())
        })
    }

    pub fn get_route(&self, id: &str) -> Result<Option<Route>, StoreError> {
        self.get("SELECT body FROM routes WHERE id = ?1", id)
    }

    pub fn list_routes(&self) -> Result<Vec<Route>, StoreError> {
        self.list("SELECT body FROM routes ORDER BY rowid")
    }

    pub fn delete_route(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM routes WHERE id = ?1", [id])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RuleTarget;

    #[test]
    fn migration_2_gives_stored_remote_group_rules_an_empty_address_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.sqlite");
        // A database as the first schema version wrote it.
        let old = r#"{"id":"00000000-0000-4000-8000-000000000001","spec":{"name":"db","rules":[
            {"id":"00000000-0000-4000-8000-00000000000a","direction":"Ingress","protocol":"Tcp",
             "ports":[5432,5432],"target":{"Group":"00000000-0000-4000-8000-000000000002"}},
            {"id":"00000000-0000-4000-8000-00000000000b","direction":"Ingress","protocol":"Icmp",
             "ports":null,"target":"Any"},
            {"id":"00000000-0000-4000-8000-00000000000c","direction":"Egress","protocol":"Udp",
             "ports":null,"target":{"Cidr":"10.0.0.0/8"}}]},"created_at":7}"#;
        {
            let c = mvirt_common::sqlite::open(&path, &MIGRATIONS[..1]).unwrap();
            c.execute(
                "INSERT INTO security_groups (id, body) VALUES (?1, ?2)",
                params!["00000000-0000-4000-8000-000000000001", old],
            )
            .unwrap();
            c.execute(
                "INSERT INTO security_groups (id, body) VALUES ('e', ?1)",
                [r#"{"id":"e","spec":{"name":"","rules":[]},"created_at":1}"#],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let sg = store
            .get_security_group("00000000-0000-4000-8000-000000000001")
            .unwrap()
            .unwrap();
        let targets: Vec<RuleTarget> = sg.spec.rules.iter().map(|r| r.target.clone()).collect();
        assert_eq!(
            targets,
            vec![
                RuleTarget::group("00000000-0000-4000-8000-000000000002"),
                RuleTarget::Any,
                RuleTarget::Cidr("10.0.0.0/8".parse().unwrap()),
            ],
            "rules keep their order and content"
        );
        assert_eq!(sg.spec.rules[0].ports, Some((5432, 5432)));
        assert_eq!(sg.created_at, 7);
        assert!(store
            .get_security_group("e")
            .unwrap()
            .unwrap()
            .spec
            .rules
            .is_empty());
    }
}
