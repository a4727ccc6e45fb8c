//! The SQLite store behind mvirt-log.
//!
//! `logs(id, timestamp_ns, message, level, component, dedup_key, trace_id)` holds one row per entry; the
//! `log_objects(log_id, object_id)` junction says which objects an entry concerns. `id` is the
//! write order (a single writer assigns it), so "everything after id N" is a gap-free way to
//! follow new entries. Pages are ordered by `(timestamp_ns, id)` and continued with a cursor
//! that encodes the last row delivered, so entries written between two pages never shift them.
//!
//! The store is synchronous (rusqlite); callers run it on blocking threads. One connection
//! writes; reads use a small pool of their own connections (WAL lets them run beside writes).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rusqlite::{params_from_iter, types::Value, Connection, OptionalExtension};

use mvirt_common::error::{ErrorKind, HasErrorKind};
use mvirt_common::sqlite::{self, SqliteError};

use crate::level::Level;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE logs (
    id           INTEGER PRIMARY KEY,
    timestamp_ns INTEGER NOT NULL,
    message      TEXT    NOT NULL,
    level        INTEGER NOT NULL,
    component    TEXT    NOT NULL,
    dedup_key    TEXT
);
CREATE UNIQUE INDEX logs_dedup_key ON logs(dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX logs_time ON logs(timestamp_ns, id);
CREATE INDEX logs_component_time ON logs(component, timestamp_ns, id);
CREATE TABLE log_objects (
    object_id TEXT    NOT NULL,
    log_id    INTEGER NOT NULL REFERENCES logs(id) ON DELETE CASCADE,
    PRIMARY KEY (object_id, log_id)
) WITHOUT ROWID;
CREATE INDEX log_objects_log ON log_objects(log_id);
"#,
    r#"
ALTER TABLE logs ADD COLUMN trace_id TEXT;
CREATE INDEX logs_trace ON logs(trace_id, timestamp_ns, id) WHERE trace_id IS NOT NULL;
"#,
];

/// Largest page a query may ask for.
pub const MAX_LIMIT: u32 = 10_000;
/// Page size when the query gives none.
pub const DEFAULT_LIMIT: u32 = 100;
const READER_POOL: usize = 4;
/// The writer connection's page cache, at most (SQLite's `cache_size` in KiB; the default is
/// 2 MiB). Filled only as pages are used.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("malformed cursor: {0}")]
    InvalidCursor(&'static str),
    #[error("cursor belongs to a query with the other order")]
    CursorOrderMismatch,
}

impl HasErrorKind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidCursor(_) | StoreError::CursorOrderMismatch => {
                ErrorKind::InvalidArgument
            }
            StoreError::Open(_) | StoreError::Sqlite(_) => ErrorKind::Internal,
        }
    }
}

/// An entry to write (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub timestamp_ns: i64,
    pub message: String,
    pub level: Level,
    pub component: String,
    pub object_ids: Vec<String>,
    pub dedup_key: Option<String>,
    /// The request whose work wrote the entry (see `mvirt_common::trace`).
    pub trace_id: Option<String>,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub id: i64,
    pub timestamp_ns: i64,
    pub message: String,
    pub level: Level,
    pub component: String,
    pub object_ids: Vec<String>,
    pub trace_id: Option<String>,
}

/// The outcome of writing one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: i64,
    /// False when the dedup key was already stored (a retry): nothing new was written.
    pub new: bool,
}

/// Which entries a query selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub object_id: Option<String>,
    pub component: Option<String>,
    /// Empty: every level.
    pub levels: Vec<Level>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub contains: Option<String>,
    pub trace_id: Option<String>,
}

impl Filter {
    /// Whether `entry` matches (used for live entries in follow mode).
    pub fn matches(&self, entry: &StoredEntry) -> bool {
        self.object_id
            .as_ref()
            .is_none_or(|o| entry.object_ids.iter().any(|e| e == o))
            && self
                .component
                .as_ref()
                .is_none_or(|c| &entry.component == c)
            && (self.levels.is_empty() || self.levels.contains(&entry.level))
            && self.since_ns.is_none_or(|s| entry.timestamp_ns >= s)
            && self.until_ns.is_none_or(|u| entry.timestamp_ns < u)
            && self
                .contains
                .as_ref()
                .is_none_or(|t| entry.message.contains(t.as_str()))
            && self
                .trace_id
                .as_ref()
                .is_none_or(|t| entry.trace_id.as_ref() == Some(t))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

/// Where the next page starts: just past this row in the query's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub order: Order,
    pub timestamp_ns: i64,
    pub id: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let order = match self.order {
            Order::NewestFirst => 'n',
            Order::OldestFirst => 'o',
        };
        URL_SAFE_NO_PAD.encode(format!("v1:{order}:{}:{}", self.timestamp_ns, self.id))
    }

    pub fn decode(text: &str) -> Result<Cursor, StoreError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::InvalidCursor("not base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor("not text"))?;
        let mut parts = text.split(':');
        if parts.next() != Some("v1") {
            return Err(StoreError::InvalidCursor("unknown version"));
        }
        let order = match parts.next() {
            Some("n") => Order::NewestFirst,
            Some("o") => Order::OldestFirst,
            _ => return Err(StoreError::InvalidCursor("unknown order")),
        };
        let timestamp_ns = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(StoreError::InvalidCursor("bad timestamp"))?;
        let id = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(StoreError::InvalidCursor("bad id"))?;
        if parts.next().is_some() {
            return Err(StoreError::InvalidCursor("trailing data"));
        }
        Ok(Cursor {
            order,
            timestamp_ns,
            id,
        })
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<StoredEntry>,
    pub next: Option<Cursor>,
    /// The id of the newest entry in the database when the page was read: entries written
    /// later have larger ids.
    pub watermark: i64,
}

/// The mvirt-log database.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let writer = sqlite::open(path, MIGRATIONS)?;
        // Every entry inserts into five indexes; with SQLite's default 2 MiB page cache their
        // pages were read back from the OS on most inserts once the store held ~100,000
        // entries (a third of the daemon's CPU under a stream of audited writes).
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        Ok(Store {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => sqlite::open(&self.path, MIGRATIONS)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
        result
    }

    /// Writes `entries` in one transaction: all are stored or none.
    pub fn insert(&self, entries: &[NewEntry]) -> Result<Vec<Written>, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        let mut written = Vec::with_capacity(entries.len());
        {
            let mut insert_log = tx.prepare_cached(
                "INSERT INTO logs (timestamp_ns, message, level, component, dedup_key, trace_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )?;
            let mut insert_object = tx.prepare_cached(
                "INSERT OR IGNORE INTO log_objects (object_id, log_id) VALUES (?1, ?2)",
            )?;
            let mut find_key = tx.prepare_cached("SELECT id FROM logs WHERE dedup_key = ?1")?;
            for entry in entries {
                let changed = insert_log.execute(rusqlite::params![
                    entry.timestamp_ns,
                    entry.message,
                    entry.level.code(),
                    entry.component,
                    entry.dedup_key,
                    entry.trace_id,
                ])?;
                if changed == 0 {
                    // Only a dedup key can conflict: the entry is already stored.
                    let id: i64 = find_key.query_row([&entry.dedup_key], |r| r.get(0))?;
                    written.push(Written { id, new: false });
                    continue;
                }
                let id = tx.last_insert_rowid();
                for object_id in &entry.object_ids {
                    insert_object.execute(rusqlite::params![object_id, id])?;
                }
                written.push(Written { id, new: true });
            }
        }
        tx.commit()?;
        Ok(written)
    }

    /// One page of entries matching `filter` in `order`, continuing after `cursor`.
    pub fn query(
        &self,
        filter: &Filter,
        order: Order,
        limit: u32,
        cursor: Option<Cursor>,
    ) -> Result<Page, StoreError> {
        if let Some(cursor) = cursor {
            if cursor.order != order {
                return Err(StoreError::CursorOrderMismatch);
            }
        }
        let (mut sql, mut args) = select_matching(filter);
        if let Some(cursor) = cursor {
            let op = match order {
                Order::NewestFirst => "<",
                Order::OldestFirst => ">",
            };
            sql.push_str(&format!(" AND (l.timestamp_ns, l.id) {op} (?, ?)"));
            args.push(Value::Integer(cursor.timestamp_ns));
            args.push(Value::Integer(cursor.id));
        }
        let direction = match order {
            Order::NewestFirst => "DESC",
            Order::OldestFirst => "ASC",
        };
        sql.push_str(&format!(
            " ORDER BY l.timestamp_ns {direction}, l.id {direction} LIMIT ?"
        ));
        args.push(Value::Integer(i64::from(limit) + 1));
        self.with_reader(|conn| {
            // One read transaction: the page and the watermark come from the same snapshot.
            conn.execute_batch("BEGIN DEFERRED")?;
            let result = fetch(conn, &sql, args).and_then(|entries| {
                let watermark: Option<i64> =
                    conn.query_row("SELECT max(id) FROM logs", [], |r| r.get(0))?;
                Ok((entries, watermark.unwrap_or(0)))
            });
            conn.execute_batch("COMMIT")?;
            let (mut entries, watermark) = result?;
            let next = if entries.len() > limit as usize {
                entries.truncate(limit as usize);
                entries.last().map(|e| Cursor {
                    order,
                    timestamp_ns: e.timestamp_ns,
                    id: e.id,
                })
            } else {
                None
            };
            Ok(Page {
                entries,
                next,
                watermark,
            })
        })
    }

    /// Entries matching `filter` written after `after_id`, in write order (follow catch-up).
    pub fn written_after(
        &self,
        filter: &Filter,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let (mut sql, mut args) = select_matching(filter);
        sql.push_str(" AND l.id > ? ORDER BY l.id ASC LIMIT ?");
        args.push(Value::Integer(after_id));
        args.push(Value::Integer(i64::from(limit)));
        self.with_reader(|conn| fetch(conn, &sql, args))
    }

    /// The id of the newest entry written (0 when empty).
    pub fn last_id(&self) -> Result<i64, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row("SELECT max(id) FROM logs", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()?
                .flatten()
                .unwrap_or(0))
        })
    }

    /// Deletes entries older than `min_timestamp_ns` and, beyond `max_rows`, the oldest ones.
    /// Returns how many entries were deleted.
    pub fn apply_retention(
        &self,
        min_timestamp_ns: Option<i64>,
        max_rows: Option<u64>,
    ) -> Result<u64, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut deleted = 0u64;
        if let Some(min) = min_timestamp_ns {
            deleted += conn.execute("DELETE FROM logs WHERE timestamp_ns < ?1", [min])? as u64;
        }
        if let Some(max_rows) = max_rows {
            let cutoff: Option<i64> = conn
                .query_row(
                    "SELECT id FROM logs ORDER BY id DESC LIMIT 1 OFFSET ?1",
                    [max_rows as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(cutoff) = cutoff {
                deleted += conn.execute("DELETE FROM logs WHERE id <= ?1", [cutoff])? as u64;
            }
        }
        Ok(deleted)
    }

    /// Number of stored entries.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            Ok(conn.query_row("SELECT count(*) FROM logs", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }
}

/// `SELECT ... WHERE <filter>` with its arguments; callers append ordering and limits.
fn select_matching(filter: &Filter) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT l.id, l.timestamp_ns, l.message, l.level, l.component, l.trace_id FROM logs l",
    );
    let mut args = Vec::new();
    if let Some(object_id) = &filter.object_id {
        sql.push_str(" JOIN log_objects o ON o.log_id = l.id AND o.object_id = ?");
        args.push(Value::Text(object_id.clone()));
    }
    sql.push_str(" WHERE 1 = 1");
    if let Some(component) = &filter.component {
        sql.push_str(" AND l.component = ?");
        args.push(Value::Text(component.clone()));
    }
    if !filter.levels.is_empty() {
        let marks = vec!["?"; filter.levels.len()].join(", ");
        sql.push_str(&format!(" AND l.level IN ({marks})"));
        args.extend(
            filter
                .levels
                .iter()
                .map(|l| Value::Integer(i64::from(l.code()))),
        );
    }
    if let Some(since) = filter.since_ns {
        sql.push_str(" AND l.timestamp_ns >= ?");
        args.push(Value::Integer(since));
    }
    if let Some(until) = filter.until_ns {
        sql.push_str(" AND l.timestamp_ns < ?");
        args.push(Value::Integer(until));
    }
    if let Some(text) = &filter.contains {
        sql.push_str(" AND instr(l.message, ?) > 0");
        args.push(Value::Text(text.clone()));
    }
    if let Some(trace_id) = &filter.trace_id {
        sql.push_str(" AND l.trace_id = ?");
        args.push(Value::Text(trace_id.clone()));
    }
    (sql, args)
}

fn fetch(conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<StoredEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut entries = stmt
        .query_map(params_from_iter(args), |row| {
            let level: i32 = row.get(3)?;
            Ok(StoredEntry {
                id: row.get(0)?,
                timestamp_ns: row.get(1)?,
                message: row.get(2)?,
                level: Level::from_code(level).unwrap_or(Level::Info),
                component: row.get(4)?,
                object_ids: Vec::new(),
                trace_id: row.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut objects = conn.prepare_cached("SELECT object_id FROM log_objects WHERE log_id = ?1")?;
    for entry in &mut entries {
        entry.object_ids = objects
            .query_map([entry.id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, message: &str, level: Level, component: &str, objects: &[&str]) -> NewEntry {
        NewEntry {
            timestamp_ns: ts,
            message: message.into(),
            level,
            component: component.into(),
            object_ids: objects.iter().map(|s| s.to_string()).collect(),
            dedup_key: None,
            trace_id: None,
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            order: Order::OldestFirst,
            timestamp_ns: 123,
            id: 7,
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v1:n:1")).is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v2:n:1:2")).is_err());
    }

    #[test]
    fn a_dedup_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("log.db")).unwrap();
        let mut e = entry(1, "created", Level::Audit, "vmm", &["vm-1"]);
        e.dedup_key = Some("k1".into());
        let first = store.insert(std::slice::from_ref(&e)).unwrap();
        let second = store.insert(&[e]).unwrap();
        assert!(first[0].new);
        assert!(!second[0].new);
        assert_eq!(first[0].id, second[0].id);
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn entries_are_found_by_trace_id_and_an_old_database_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        // A database written before trace ids (schema version 1) keeps its entries.
        sqlite::open(&path, &MIGRATIONS[..1])
            .unwrap()
            .execute(
                "INSERT INTO logs (timestamp_ns, message, level, component) VALUES (1, 'old', 1, 'c')",
                [],
            )
            .unwrap();
        let store = Store::open(&path).unwrap();
        let mut traced = entry(2, "created", Level::Audit, "api", &["vm-1"]);
        traced.trace_id = Some("req-1".into());
        let mut other = entry(3, "created", Level::Audit, "node", &["vm-2"]);
        other.trace_id = Some("req-2".into());
        let mut also = entry(4, "started", Level::Audit, "vmm", &["vm-1"]);
        also.trace_id = Some("req-1".into());
        store.insert(&[traced, other, also]).unwrap();
        let by_trace = Filter {
            trace_id: Some("req-1".into()),
            ..Filter::default()
        };
        let page = store
            .query(&by_trace, Order::OldestFirst, 100, None)
            .unwrap();
        let found: Vec<_> = page
            .entries
            .iter()
            .map(|e| (e.component.as_str(), e.trace_id.as_deref()))
            .collect();
        assert_eq!(found, [("api", Some("req-1")), ("vmm", Some("req-1"))]);
        assert!(page.entries.iter().all(|e| by_trace.matches(e)));
        let all = store
            .query(&Filter::default(), Order::OldestFirst, 100, None)
            .unwrap();
        assert_eq!(all.entries[0].message, "old");
        assert_eq!(all.entries[0].trace_id, None);
        assert!(!by_trace.matches(&all.entries[0]));
    }

    #[test]
    fn retention_deletes_by_age_and_by_row_count_with_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("log.db")).unwrap();
        let entries: Vec<_> = (0..10)
            .map(|i| entry(i, &format!("m{i}"), Level::Info, "c", &["obj"]))
            .collect();
        store.insert(&entries).unwrap();
        assert_eq!(store.apply_retention(Some(3), None).unwrap(), 3);
        assert_eq!(store.apply_retention(None, Some(4)).unwrap(), 3);
        let page = store
            .query(&Filter::default(), Order::OldestFirst, 100, None)
            .unwrap();
        let messages: Vec<_> = page.entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["m6", "m7", "m8", "m9"]);
        let by_object = Filter {
            object_id: Some("obj".into()),
            ..Filter::default()
        };
        let page = store
            .query(&by_object, Order::OldestFirst, 100, None)
            .unwrap();
        assert_eq!(page.entries.len(), 4);
    }
}
