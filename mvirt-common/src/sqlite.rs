//! Opening a daemon's SQLite database the same way everywhere.
//!
//! WAL journal (readers never block the writer), `synchronous=FULL` so that a committed
//! transaction survives power loss (synced with `fdatasync`: the workspace's `.cargo/config.toml`
//! builds the bundled SQLite with `HAVE_FDATASYNC`, as distribution builds are), a busy timeout instead of immediate `SQLITE_BUSY`, foreign keys
//! enforced, and schema migrations applied in order and recorded in `PRAGMA user_version`.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Errors from opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot create directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migration {version} failed")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: usize, known: usize },
    #[error("sqlite pragma failed")]
    Pragma(#[source] rusqlite::Error),
}

/// Opens (creating if needed) the database at `path` and applies `migrations`.
///
/// `migrations[i]` moves the schema from version `i` to `i + 1`; each runs in its own
/// transaction together with the `user_version` bump, so a crash never leaves half a migration.
pub fn open(path: &Path, migrations: &[&str]) -> Result<Connection, SqliteError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| SqliteError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let mut conn = Connection::open(path).map_err(|source| SqliteError::Open {
        path: path.display().to_string(),
        source,
    })?;
    configure(&conn)?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

/// Opens an in-memory database with the same settings (for unit tests).
pub fn open_in_memory(migrations: &[&str]) -> Result<Connection, SqliteError> {
    let mut conn = Connection::open_in_memory().map_err(|source| SqliteError::Open {
        path: ":memory:".into(),
        source,
    })?;
    configure(&conn)?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<(), SqliteError> {
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(SqliteError::Pragma)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(SqliteError::Pragma)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(SqliteError::Pragma)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(SqliteError::Pragma)?;
    Ok(())
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), SqliteError> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(SqliteError::Pragma)? as usize;
    if current > migrations.len() {
        return Err(SqliteError::TooNew {
            found: current,
            known: migrations.len(),
        });
    }
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        let version = index + 1;
        let tx = conn
            .transaction()
            .map_err(|source| SqliteError::Migration { version, source })?;
        tx.execute_batch(sql)
            .map_err(|source| SqliteError::Migration { version, source })?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(|source| SqliteError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| SqliteError::Migration { version, source })?;
        tracing::debug!(version, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE a (id INTEGER PRIMARY KEY);";
    const V2: &str = "ALTER TABLE a ADD COLUMN name TEXT;";

    #[test]
    fn migrations_apply_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/db.sqlite");
        {
            let conn = open(&path, &[V1]).unwrap();
            conn.execute("INSERT INTO a (id) VALUES (1)", []).unwrap();
        }
        let conn = open(&path, &[V1, V2]).unwrap();
        conn.execute("UPDATE a SET name = 'x' WHERE id = 1", [])
            .unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(open(&path, &[V1, V2]).unwrap());
        let err = open(&path, &[V1]).unwrap_err();
        assert!(matches!(err, SqliteError::TooNew { found: 2, known: 1 }));
    }

    #[test]
    fn a_failed_migration_leaves_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(open(&path, &[V1]).unwrap());
        let err = open(
            &path,
            &[V1, "CREATE TABLE b (x); SELECT nope FROM missing;"],
        )
        .unwrap_err();
        assert!(matches!(err, SqliteError::Migration { version: 2, .. }));
        let conn = open(&path, &[V1]).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }
}
