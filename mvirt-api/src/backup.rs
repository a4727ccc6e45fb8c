//! Control-plane backups (`mvirt-api backup`) and disaster recovery (`mvirt-api restore`).
//!
//! **Backup** copies a member's state database while the member runs: `VACUUM INTO` reads it
//! in one transaction, so the copy is the state machine exactly as it was after one applied
//! batch (objects, counters, events and the applied log id are written together). The copy
//! also carries the cluster CA (certificate and key: node agents and their certificates keep
//! trusting a restored cluster), the member id and, on the bootstrap member, the admin token.
//! One SQLite file, mode 0600: it holds secrets.
//!
//! **Restore** turns a backup into the data directory of a new one-member cluster, for when a
//! majority of the members is lost for good (a single lost member is replaced by a join, not
//! restored). The state database is put in place and a marker (`restore.json`) left; the next
//! start of `mvirt-api` on that directory ([`finish_restore`], called by `server::start` once
//! it knows the member's own addresses) makes the state's membership this one member, stores
//! a snapshot of the state (the log before it counts as purged, so members that join later
//! receive it), and starts Raft in the term after the backup's. Everything committed up to the
//! backup's applied index is there; the old members must never be started again (they would
//! form a cluster of their own).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::model::Member;
use crate::raft::{MemberId, SnapshotPayload};
use crate::store;

/// The state database and the Raft log database of a data directory.
const STATE_DB: &str = "mvirt-api.db";
/// Left by `restore`, removed by the first start once the restore is complete.
pub const RESTORE_MARKER: &str = "restore.json";
const IDENTITY_FILE: &str = "member.json";
/// Version of the backup file's layout (table `mvirt_backup`).
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the backup's state cannot be read")]
    Store(#[from] store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] mvirt_common::tls::TlsError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sql(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sql {
        path: path.display().to_string(),
        source,
    }
}

/// What a backup holds besides the state (table `mvirt_backup`, one row per key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The member the backup was taken from.
    pub member_id: MemberId,
    /// Index of the last log entry applied in the copied state.
    pub applied_index: u64,
    pub created_at_ms: i64,
    /// Whether the cluster CA (and with it TLS) is in the backup (absent: --insecure-plaintext).
    pub has_ca: bool,
    pub has_admin_token: bool,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    member_id: MemberId,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    member_id: MemberId,
    applied_index: u64,
    created_at_ms: i64,
}

/// An upper bound of the log entries a cluster appends per millisecond (a million writes a
/// second; a member sustains a few ten thousand). See [`finish_restore`].
const MAX_ENTRIES_PER_MS: u64 = 1_000;

/// Writes a backup of the member whose data directory is `data_dir` to `out` (which must not
/// exist). The member may be running.
pub fn backup(data_dir: &Path, out: &Path) -> Result<BackupInfo, BackupError> {
    let identity_path = data_dir.join(IDENTITY_FILE);
    let identity: Identity = serde_json::from_str(
        &std::fs::read_to_string(&identity_path).map_err(io(&identity_path))?,
    )?;
    let db = data_dir.join(STATE_DB);
    if !db.exists() {
        return Err(BackupError::Invalid(format!(
            "{}: no state database: is {} a mvirt-api data directory?",
            db.display(),
            data_dir.display()
        )));
    }
    if out.exists() {
        return Err(BackupError::Invalid(format!(
            "{}: exists already (a backup never overwrites a file)",
            out.display()
        )));
    }
    let partial = partial_path(out);
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        // Read-only: a backup never writes to the member's database (no migration, no WAL
        // checkpoint). VACUUM INTO copies inside one read transaction: a consistent state.
        let src =
            Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(&db))?;
        src.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql(&db))?;
        src.execute("VACUUM INTO ?1", [partial.to_string_lossy().as_ref()])
            .map_err(sql(&db))?;
        drop(src);
        std::fs::set_permissions(
            &partial,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(io(&partial))?;

        let conn = Connection::open(&partial).map_err(sql(&partial))?;
        let last_applied = applied_log_id(&conn, &partial)?;
        let tls_dir = mvirt_common::tls::tls_dir(data_dir);
        let ca = if mvirt_common::tls::ClusterCa::exists(&tls_dir) {
            Some(mvirt_common::tls::ClusterCa::load(&tls_dir)?)
        } else {
            None
        };
        let admin_path = data_dir.join(crate::server::ADMIN_TOKEN_FILE);
        let admin_token = match std::fs::read_to_string(&admin_path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&admin_path)(e)),
        };
        let created_at_ms = crate::app::now_ms();
        let mut rows: Vec<(&str, String)> = vec![
            ("format", FORMAT.to_string()),
            ("member_id", identity.member_id.to_string()),
            ("created_at_ms", created_at_ms.to_string()),
        ];
        if let Some(ca) = &ca {
            rows.push(("ca_pem", ca.cert_pem().to_string()));
            rows.push(("ca_key_pem", ca.key_pem().to_string()));
        }
        if let Some(token) = &admin_token {
            rows.push(("admin_token", token.clone()));
        }
        let tx = conn.unchecked_transaction().map_err(sql(&partial))?;
        tx.execute_batch(
            "CREATE TABLE mvirt_backup (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             DELETE FROM snapshot;",
        )
        .map_err(sql(&partial))?;
        for (key, value) in &rows {
            tx.execute(
                "INSERT INTO mvirt_backup (key, value) VALUES (?1, ?2)",
                [key, &value.as_str()],
            )
            .map_err(sql(&partial))?;
        }
        tx.commit().map_err(sql(&partial))?;
        conn.execute_batch("VACUUM").map_err(sql(&partial))?;
        drop(conn);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io(&partial))?;
        std::fs::rename(&partial, out).map_err(io(out))?;
        mvirt_common::durable::sync_parent(out).map_err(io(out))?;
        Ok(BackupInfo {
            member_id: identity.member_id,
            applied_index: last_applied.index,
            created_at_ms,
            has_ca: ca.is_some(),
            has_admin_token: admin_token.is_some(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn applied_log_id(conn: &Connection, path: &Path) -> Result<LogId<MemberId>, BackupError> {
    let raw: Option<String> = conn
        .query_row(
            "SELECT value FROM sm_meta WHERE key = 'last_applied'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql(path))?;
    let applied: Option<LogId<MemberId>> = match raw {
        Some(raw) => serde_json::from_str(&raw)?,
        None => None,
    };
    applied.ok_or_else(|| {
        BackupError::Invalid(format!(
            "{}: the state has never applied a log entry (nothing to back up or restore)",
            path.display()
        ))
    })
}

/// Reads what a backup file holds, checking its format.
pub fn inspect(file: &Path) -> Result<BackupInfo, BackupError> {
    let conn =
        Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(file))?;
    let info = read_info(&conn, file)?;
    Ok(info.0)
}

type Secrets = (Option<(String, String)>, Option<String>);

fn read_info(conn: &Connection, file: &Path) -> Result<(BackupInfo, Secrets), BackupError> {
    let not_backup = || {
        BackupError::Invalid(format!(
            "{}: not a mvirt-api backup (made by `mvirt-api backup`)",
            file.display()
        ))
    };
    let mut rows = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT key, value FROM mvirt_backup")
            .map_err(|_| not_backup())?;
        let mut q = stmt.query([]).map_err(sql(file))?;
        while let Some(row) = q.next().map_err(sql(file))? {
            let key: String = row.get(0).map_err(sql(file))?;
            let value: String = row.get(1).map_err(sql(file))?;
            rows.insert(key, value);
        }
    }
    let format: u32 = rows
        .get("format")
        .and_then(|f| f.parse().ok())
        .ok_or_else(not_backup)?;
    if format != FORMAT {
        return Err(BackupError::Invalid(format!(
            "{}: backup format {format}, this mvirt-api reads format {FORMAT}",
            file.display()
        )));
    }
    let number = |key: &str| -> Result<u64, BackupError> {
        rows.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(not_backup)
    };
    let ca = match (rows.get("ca_pem"), rows.get("ca_key_pem")) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => return Err(not_backup()),
    };
    let admin_token = rows.get("admin_token").cloned();
    let info = BackupInfo {
        member_id: number("member_id")?,
        applied_index: applied_log_id(conn, file)?.index,
        created_at_ms: rows
            .get("created_at_ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(not_backup)?,
        has_ca: ca.is_some(),
        has_admin_token: admin_token.is_some(),
    };
    Ok((info, (ca, admin_token)))
}

/// Prepares `data_dir` (absent or empty of mvirt-api files) to become a one-member cluster
/// holding the state of `file` on the next start of `mvirt-api --data-dir <data_dir>`.
pub fn restore(file: &Path, data_dir: &Path) -> Result<BackupInfo, BackupError> {
    for name in [
        IDENTITY_FILE,
        STATE_DB,
        store::LOG_DB_FILE,
        RESTORE_MARKER,
        mvirt_common::tls::TLS_DIR,
        crate::server::ADMIN_TOKEN_FILE,
    ] {
        let path = data_dir.join(name);
        if path.exists() {
            return Err(BackupError::Invalid(format!(
                "{} exists: restore only into a new data directory (nothing was changed)",
                path.display()
            )));
        }
    }
    let conn =
        Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(file))?;
    let (info, (ca, admin_token)) = read_info(&conn, file)?;
    drop(conn);
    mvirt_common::durable::create_dir_all(data_dir, 0o755).map_err(io(data_dir))?;

    let db = data_dir.join(STATE_DB);
    let partial = partial_path(&db);
    let tls_dir = mvirt_common::tls::tls_dir(data_dir);
    let result = (|| {
        std::fs::copy(file, &partial).map_err(io(&partial))?;
        std::fs::set_permissions(
            &partial,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(io(&partial))?;
        {
            let conn = Connection::open(&partial).map_err(sql(&partial))?;
            conn.execute_batch("DROP TABLE mvirt_backup")
                .map_err(sql(&partial))?;
        }
        // The state must load as the daemon loads it (migrations, every row) before anything
        // is put in place.
        let conn = store::open(&partial)?;
        store::sm_load(&conn)?;
        drop(conn);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io(&partial))?;
        if let Some((cert, key)) = &ca {
            mvirt_common::tls::ClusterCa::from_pem(cert, key)?.save(&tls_dir)?;
        }
        if let Some(token) = &admin_token {
            let path = data_dir.join(crate::server::ADMIN_TOKEN_FILE);
            mvirt_common::durable::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
                .map_err(io(&path))?;
        }
        std::fs::rename(&partial, &db).map_err(io(&db))?;
        // Last: only a complete restore is ever finished by a start.
        let marker = data_dir.join(RESTORE_MARKER);
        let json = serde_json::to_vec(&Marker {
            member_id: info.member_id,
            applied_index: info.applied_index,
            created_at_ms: info.created_at_ms,
        })?;
        mvirt_common::durable::write_atomic(&marker, &json, 0o600).map_err(io(&marker))?;
        Ok(())
    })();
    if result.is_err() {
        for path in [
            partial.clone(),
            db.clone(),
            data_dir.join(crate::server::ADMIN_TOKEN_FILE),
        ] {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir_all(&tls_dir);
    }
    result.map(|()| info)
}

/// Called by `server::start` before Raft starts: when `restore` left its marker in
/// `data_dir`, makes the restored state a one-member cluster of `me` and returns the member
/// id to use (the caller writes `member.json` with a new cluster secret, then calls
/// [`restore_done`]). Idempotent until then.
///
/// The restored state continues at a log index past any the old cluster can have reached after
/// the backup ([`MAX_ENTRIES_PER_MS`] for every millisecond since, plus a minute), and that
/// index is recorded as a removal for every node (`last_removal_revision`): revisions are log
/// indexes, and node agents keep the revision they applied last. So every agent receives its
/// host's restored desired state as newer than anything it saw, and removes what was created
/// after the backup, as after any deletion.
pub fn finish_restore(data_dir: &Path, me: &Member) -> Result<Option<MemberId>, BackupError> {
    let marker_path = data_dir.join(RESTORE_MARKER);
    let raw = match std::fs::read(&marker_path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&marker_path)(e)),
    };
    let marker: Marker = serde_json::from_slice(&raw)?;
    let id = marker.member_id;
    let db = data_dir.join(STATE_DB);
    let mut conn = store::open(&db)?;
    let backed_up = applied_log_id(&conn, &db)?;
    let mut loaded = store::sm_load(&conn)?;
    let last_applied = if backed_up.index > marker.applied_index {
        // A start that stopped after this transaction but before `restore_done`.
        backed_up
    } else {
        let since_ms = (crate::app::now_ms() - marker.created_at_ms).max(0) as u64 + 60_000;
        LogId::new(
            backed_up.leader_id,
            backed_up.index + since_ms.saturating_mul(MAX_ENTRIES_PER_MS),
        )
    };
    loaded.state.counters.last_removal_revision = last_applied.index;
    let membership = StoredMembership::new(
        Some(last_applied),
        Membership::new(
            vec![BTreeSet::from([id])],
            BTreeMap::from([(id, me.clone())]),
        ),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(last_applied),
        last_membership: membership.clone(),
        snapshot_id: format!("{}-restored", last_applied.index),
    };
    let counters = serde_json::to_string(&loaded.state.counters)?;
    let data = serde_json::to_vec(&SnapshotPayload {
        state: loaded.state,
    })?;
    {
        let tx = conn.transaction().map_err(sql(&db))?;
        for (key, value) in [
            ("last_membership", serde_json::to_string(&membership)?),
            ("last_applied", serde_json::to_string(&last_applied)?),
            ("counters", counters),
        ] {
            tx.execute(
                "INSERT INTO sm_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value.as_str()],
            )
            .map_err(sql(&db))?;
        }
        tx.commit().map_err(sql(&db))?;
    }
    store::snapshot_save(&conn, &serde_json::to_string(&meta)?, &data)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(sql(&db))?;
    drop(conn);

    // The log starts after the restored state (as after a purge up to a snapshot); the vote
    // is the backup's term, so this member's first election is in a newer one.
    let log_path = data_dir.join(store::LOG_DB_FILE);
    let log = store::open_log(&log_path)?;
    log.execute("DELETE FROM raft_log", [])
        .map_err(sql(&log_path))?;
    let purged = serde_json::to_string(&Some(last_applied))?;
    store::log_set_meta(&log, "last_purged", &serde_json::to_string(&last_applied)?)?;
    store::log_set_meta(&log, "committed", &purged)?;
    store::log_set_meta(
        &log,
        "vote",
        &serde_json::to_string(&Vote::new(last_applied.leader_id.get_term(), id))?,
    )?;
    log.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(sql(&log_path))?;
    drop(log);
    tracing::info!(
        member_id = id,
        applied_index = last_applied.index,
        "restored from a backup: a one-member cluster with the backup's state"
    );
    Ok(Some(id))
}

/// Removes the restore marker once `member.json` is written.
pub fn restore_done(data_dir: &Path) -> Result<(), BackupError> {
    let marker = data_dir.join(RESTORE_MARKER);
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    mvirt_common::durable::sync_dir(data_dir).map_err(io(data_dir))
}
