//! SQLite persistence in two files (WAL each):
//! - `<data-dir>/raft-log.db`: the Raft log and vote (`synchronous=FULL`: an append is on disk
//!   when `commit` returns, so an acknowledged append survives a crash);
//! - `<data-dir>/mvirt-api.db`: the materialised state machine, events and the current snapshot.
//!
//! Two files, because SQLite has one writer per database: in one file the state machine's
//! apply transactions and WAL checkpoints held the write lock that the next log append (with
//! its fsync) waited for, and the other way round. Every apply batch — changed rows, events,
//! last applied log id — is one transaction, so the state machine is never half-applied after a
//! crash.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Event, Kind};
use crate::state::{Counters, State};

const MIGRATIONS: &[&str] = &["
CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE raft_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sm_objects (kind TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE sm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, revision INTEGER NOT NULL, json TEXT NOT NULL);
CREATE INDEX events_revision ON events (revision);
CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), meta TEXT NOT NULL, data BLOB NOT NULL);
"];

/// The Raft log's own database file (next to the state database).
pub const LOG_DB_FILE: &str = "raft-log.db";

const LOG_MIGRATIONS: &[&str] = &["
CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE raft_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"];

/// How many events are kept for `Last-Event-ID` resumption (older ones are pruned).
pub const EVENTS_RETAINED: i64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database")]
    Open(#[from] mvirt_common::sqlite::SqliteError),
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt stored JSON")]
    Json(#[from] serde_json::Error),
    #[error("unknown stored kind {0:?}")]
    Kind(String),
    #[error("cannot start the state writer thread")]
    Thread(#[from] std::io::Error),
}

/// Checkpoints one database's WAL on a thread of its own, beside its writer, which runs with
/// `wal_autocheckpoint=0`: SQLite's automatic checkpoint runs inside a commit every ~1,000
/// pages, and whatever queued behind that commit waited for the copy and the fsync.
///
/// A checkpoint alone does not bound the WAL: SQLite starts writing it from the beginning again
/// only when a write transaction begins while every frame has been copied back. A writer that
/// commits every millisecond (the Raft log at one client) never sees that moment, because
/// frames arrive while the checkpoint copies and syncs; its WAL then grew without end, and every
/// append extended the file, so each fsync also wrote the inode and block bitmaps. So each round
/// has two steps: a passive checkpoint that copies the bulk while the writer goes on, then (once
/// a second) a second one under the writer's [`WriteGate`] that copies the few frames appended
/// meanwhile. The writer's next transaction then restarts the WAL, and appends overwrite the
/// same blocks. The thread ends when the `Checkpointer` is dropped.
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

/// Held by a database's writer thread around each of its transactions, and by its checkpoint
/// thread for the short final copy of a round (see [`Checkpointer`]).
#[derive(Clone, Default)]
pub struct WriteGate(std::sync::Arc<parking_lot::Mutex<()>>);

impl WriteGate {
    /// Runs one of the writer's transactions. A waiting checkpoint thread gets the gate next:
    /// an unfair unlock would let a writer that commits back to back take it again at once.
    pub fn transaction<R>(&self, f: impl FnOnce() -> R) -> R {
        let held = self.0.lock();
        let r = f();
        parking_lot::MutexGuard::unlock_fair(held);
        r
    }
}

/// The largest WAL a writer leaves behind when it restarts it (SQLite's `journal_size_limit`):
/// a burst may grow it further, a restart then gives the space back down to this.
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

impl Checkpointer {
    /// How often the WAL is copied into the database file.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);
    /// Every this many rounds (once a second) the round ends with the gated copy that lets the
    /// writer restart the WAL. The writer waits for that copy and its fsync (0.2–1 ms), so it
    /// is not done every round: the WAL then holds about a second of appends.
    const RESTART_EVERY: u32 = 4;

    /// Starts checkpointing the database that `writer` (its one writer connection) and `conn`
    /// (a connection of the checkpoint thread's own) are open on. The writer stops
    /// checkpointing itself, trims the WAL to [`WAL_SIZE_LIMIT`] when it restarts it, and must
    /// run each transaction through the returned gate.
    pub fn start(
        writer: &Connection,
        conn: Connection,
        thread_name: &str,
    ) -> Result<(Self, WriteGate), StoreError> {
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let gate = WriteGate::default();
        let held = gate.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let name = thread_name.to_string();
        let checkpoint =
            move || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                let mut round = 0u32;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::EVERY)
                {
                    round = round.wrapping_add(1);
                    let done = checkpoint().and_then(|busy| {
                        if !round.is_multiple_of(Self::RESTART_EVERY) {
                            return Ok(busy);
                        }
                        let _writer_waits = held.0.lock();
                        checkpoint()
                    });
                    if let Err(e) = done {
                        tracing::warn!(thread = %name, error = %e, "checkpoint failed; retrying");
                    }
                }
            })?;
        Ok((Self { _stop: stop }, gate))
    }
}

/// Opens the state database (state machine, events, snapshot).
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    Ok(mvirt_common::sqlite::open(path, MIGRATIONS)?)
}

/// Opens the Raft log database (log entries, vote, committed and purge points).
pub fn open_log(path: &Path) -> Result<Connection, StoreError> {
    Ok(mvirt_common::sqlite::open(path, LOG_MIGRATIONS)?)
}

// ------------------------------------------------------------------------------------ log

pub fn log_get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM raft_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn log_set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO raft_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// Appends serialized entries `(index, json)` in one transaction (replacing same indexes),
/// together with the latest committed log id if one is pending.
pub fn log_append(
    conn: &mut Connection,
    entries: &[(u64, String)],
    committed: Option<&str>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?1, ?2)")?;
        for (idx, json) in entries {
            stmt.execute(params![*idx as i64, json])?;
        }
    }
    if let Some(committed) = committed {
        tx.prepare_cached(
            "INSERT INTO raft_meta (key, value) VALUES ('committed', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?
        .execute([committed])?;
    }
    tx.commit()?;
    Ok(())
}

pub fn log_range(
    conn: &Connection,
    start: u64,
    end_exclusive: u64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
    let rows = stmt.query_map(
        params![start as i64, end_exclusive.min(i64::MAX as u64) as i64],
        |r| r.get::<_, String>(0),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn log_last(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// Deletes entries with index >= `from` (conflicting suffix).
pub fn log_truncate(conn: &Connection, from: u64) -> Result<(), StoreError> {
    conn.execute("DELETE FROM raft_log WHERE idx >= ?1", [from as i64])?;
    Ok(())
}

/// Deletes entries with index <= `upto` and records the purge point in the same transaction.
pub fn log_purge(conn: &mut Connection, upto: u64, purged_json: &str) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM raft_log WHERE idx <= ?1", [upto as i64])?;
    tx.execute(
        "INSERT INTO raft_meta (key, value) VALUES ('last_purged', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [purged_json],
    )?;
    tx.commit()?;
    Ok(())
}

// ------------------------------------------------------------------------------ state machine

/// What the state machine loads at start.
pub struct LoadedState {
    pub state: State,
    pub last_applied: Option<String>,
    pub last_membership: Option<String>,
}

pub fn sm_load(conn: &Connection) -> Result<LoadedState, StoreError> {
    let mut state = State::initial();
    {
        let mut stmt = conn.prepare("SELECT kind, id, json FROM sm_objects")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(0)?;
            let id: String = row.get(1)?;
            let json: String = row.get(2)?;
            let kind = Kind::parse(&kind).ok_or(StoreError::Kind(kind))?;
            state.load_row(kind, &id, &json)?;
        }
    }
    if let Some(counters) = sm_get_meta(conn, "counters")? {
        state.counters = serde_json::from_str::<Counters>(&counters)?;
    }
    Ok(LoadedState {
        state,
        last_applied: sm_get_meta(conn, "last_applied")?,
        last_membership: sm_get_meta(conn, "last_membership")?,
    })
}

fn sm_get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM sm_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn set_meta(tx: &rusqlite::Transaction<'_>, key: &str, value: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sm_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// One applied batch, prepared while the state was locked: the final form of every changed
/// row (`None` = removed), the events, and the new applied point.
pub struct AppliedBatch<'a> {
    pub rows: &'a [(Kind, String, Option<String>)],
    pub events: &'a [Event],
    pub counters: &'a str,
    pub last_applied: &'a str,
    pub last_membership: &'a str,
}

pub fn sm_commit(conn: &mut Connection, batch: AppliedBatch<'_>) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO sm_objects (kind, id, json) VALUES (?1, ?2, ?3) ON CONFLICT(kind, id) DO UPDATE SET json = excluded.json",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM sm_objects WHERE kind = ?1 AND id = ?2")?;
        for (kind, id, json) in batch.rows {
            match json {
                Some(json) => upsert.execute(params![kind.as_str(), id, json])?,
                None => delete.execute(params![kind.as_str(), id])?,
            };
        }
        let mut insert_event =
            tx.prepare_cached("INSERT INTO events (revision, json) VALUES (?1, ?2)")?;
        for event in batch.events {
            insert_event.execute(params![
                event.revision as i64,
                serde_json::to_string(event)?
            ])?;
        }
    }
    set_meta(&tx, "counters", batch.counters)?;
    set_meta(&tx, "last_applied", batch.last_applied)?;
    set_meta(&tx, "last_membership", batch.last_membership)?;
    if !batch.events.is_empty() {
        tx.prepare_cached("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1")?
            .execute([EVENTS_RETAINED])?;
    }
    tx.commit()?;
    Ok(())
}

/// Replaces the whole state machine (snapshot install).
pub fn sm_replace(
    conn: &mut Connection,
    state: &State,
    last_applied: &str,
    last_membership: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM sm_objects", [])?;
    {
        let mut stmt =
            tx.prepare_cached("INSERT INTO sm_objects (kind, id, json) VALUES (?1, ?2, ?3)")?;
        for (kind, id, json) in state.rows() {
            stmt.execute(params![kind.as_str(), id, json])?;
        }
    }
    set_meta(&tx, "counters", &serde_json::to_string(&state.counters)?)?;
    set_meta(&tx, "last_applied", last_applied)?;
    set_meta(&tx, "last_membership", last_membership)?;
    tx.commit()?;
    Ok(())
}

pub fn snapshot_save(conn: &Connection, meta: &str, data: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO snapshot (id, meta, data) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET meta = excluded.meta, data = excluded.data",
        params![meta, data],
    )?;
    Ok(())
}

pub fn snapshot_load(conn: &Connection) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    Ok(conn
        .query_row("SELECT meta, data FROM snapshot WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// Events with revision > `after`, oldest first, at most `limit`.
pub fn events_after(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT json FROM events WHERE revision > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        r.get::<_, String>(0)
    })?;
    let mut events = Vec::new();
    for json in rows {
        events.push(serde_json::from_str(&json?)?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL header's checkpoint sequence number: SQLite adds one each time a writer starts
    /// the WAL over from its beginning.
    fn wal_restarts(wal: &Path) -> u32 {
        let header = std::fs::read(wal).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// A writer that commits back to back (no idle moment between its transactions) still
    /// gets its WAL restarted, so the WAL stays the size of about a second of appends instead
    /// of growing by every append: the checkpoint thread's final copy under the gate leaves the
    /// writer's next transaction a fully copied WAL. Without that step, passive checkpoints
    /// alone never let this writer restart.
    #[test]
    fn back_to_back_writer_restarts_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_DB_FILE);
        let mut conn = open_log(&path).unwrap();
        let checkpoint = open_log(&path).unwrap();
        let (_checkpoint, gate) = Checkpointer::start(&conn, checkpoint, "test-ckpt").unwrap();
        let wal = path.with_file_name(format!("{LOG_DB_FILE}-wal"));
        let entry = "x".repeat(500);
        let mut idx = 0;
        let mut append = |conn: &mut Connection| {
            idx += 1;
            gate.transaction(|| log_append(conn, &[(idx, entry.clone())], Some("c")))
                .unwrap();
        };
        append(&mut conn);
        let before = wal_restarts(&wal);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(4) {
            append(&mut conn);
        }
        // A restart about once a second (rounds slip a little on a busy machine).
        let restarts = wal_restarts(&wal) - before;
        assert!(
            restarts >= 2,
            "the WAL was restarted {restarts} times in 4 s of appends"
        );
    }
}
