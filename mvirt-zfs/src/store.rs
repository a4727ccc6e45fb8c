//! SQLite metadata: volumes, snapshots, templates and import jobs.
//!
//! The pool is the truth about data; this database is the truth about what mvirt asked for
//! (names, requested sizes, which template a volume came from, import progress). Both carry the
//! same ids (datasets have an `mvirt:id` property), which is what drift detection compares.
//! Calls are short and synchronous behind one mutex.

use std::path::Path;
use std::sync::Mutex;

use mvirt_common::{ErrorKind, HasErrorKind};
use rusqlite::{params, Connection, OptionalExtension, Row};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size_bytes INTEGER NOT NULL,
    spec_size_bytes INTEGER NOT NULL,
    template_id TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (volume_id, name)
);
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    source_url TEXT NOT NULL,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    kernel_url TEXT NOT NULL,
    initramfs_url TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    has_kernel INTEGER NOT NULL,
    has_initramfs INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE import_jobs (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    source_url TEXT NOT NULL,
    phase TEXT NOT NULL,
    bytes_done INTEGER NOT NULL,
    bytes_total INTEGER NOT NULL,
    rate_bytes_per_sec INTEGER NOT NULL,
    error TEXT NOT NULL,
    detected_format TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX import_jobs_template ON import_jobs (template_id, created_at);
"#,
    r#"
ALTER TABLE templates ADD COLUMN kernel_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE templates ADD COLUMN initramfs_sha256 TEXT NOT NULL DEFAULT '';
"#,
    // Volumes received from another node and not promoted yet (see storage::replica).
    r#"
CREATE TABLE replicas (
    volume_id TEXT PRIMARY KEY REFERENCES volumes(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
"#,
];

/// Failure of a metadata operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open metadata database")]
    Open(#[from] mvirt_common::sqlite::SqliteError),
    #[error("the name {0:?} is already used by another object")]
    NameTaken(String),
    #[error("metadata database failure")]
    Sql(#[source] rusqlite::Error),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

impl HasErrorKind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NameTaken(_) => ErrorKind::AlreadyExists,
            _ => ErrorKind::Internal,
        }
    }
}

fn sql_err(name: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |err| match &err {
        rusqlite::Error::SqliteFailure(e, Some(msg))
            if e.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains(".name") =>
        {
            StoreError::NameTaken(name.to_string())
        }
        _ => StoreError::Sql(err),
    }
}

/// What a volume is, as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    /// Current virtual size (grows with resize).
    pub size_bytes: u64,
    /// The size given at creation (for idempotent creates).
    pub spec_size_bytes: u64,
    pub template_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub volume_id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateState {
    Importing,
    Ready,
}

impl TemplateState {
    fn as_str(self) -> &'static str {
        match self {
            TemplateState::Importing => "importing",
            TemplateState::Ready => "ready",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "importing" => Ok(TemplateState::Importing),
            "ready" => Ok(TemplateState::Ready),
            other => Err(StoreError::Corrupt(format!("template state {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    pub id: String,
    pub name: String,
    pub state: TemplateState,
    pub size_bytes: u64,
    pub source_url: String,
    /// Requested format: `auto`, `raw` or `qcow2`.
    pub format: String,
    pub sha256: String,
    pub kernel_url: String,
    pub initramfs_url: String,
    /// Lowercase hex SHA-256 the kernel / initramfs download must have; empty = not verified.
    pub kernel_sha256: String,
    pub initramfs_sha256: String,
    pub cmdline: String,
    pub has_kernel: bool,
    pub has_initramfs: bool,
    pub created_at: i64,
}

/// Where an import job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Downloading,
    Converting,
    Finalizing,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Downloading => "downloading",
            Phase::Converting => "converting",
            Phase::Finalizing => "finalizing",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => Phase::Pending,
            "downloading" => Phase::Downloading,
            "converting" => Phase::Converting,
            "finalizing" => Phase::Finalizing,
            "completed" => Phase::Completed,
            "failed" => Phase::Failed,
            "cancelled" => Phase::Cancelled,
            other => return Err(StoreError::Corrupt(format!("job phase {other:?}"))),
        })
    }
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub template_id: String,
    pub source_url: String,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: u64,
    pub error: String,
    /// `raw` or `qcow2` once the content has been recognised, else empty.
    pub detected_format: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The metadata database.
pub struct Store {
    conn: Mutex<Connection>,
}

fn volume_from_row(row: &Row) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        size_bytes: row.get::<_, i64>(2)? as u64,
        spec_size_bytes: row.get::<_, i64>(3)? as u64,
        template_id: row.get(4)?,
        created_at: row.get(5)?,
    })
}
const VOLUME_COLS: &str = "id, name, size_bytes, spec_size_bytes, template_id, created_at";

fn snapshot_from_row(row: &Row) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: row.get(0)?,
        volume_id: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
    })
}
const SNAPSHOT_COLS: &str = "id, volume_id, name, created_at";

type RawTemplate = (TemplateRecord, String);
fn template_from_row(row: &Row) -> rusqlite::Result<RawTemplate> {
    Ok((
        TemplateRecord {
            id: row.get(0)?,
            name: row.get(1)?,
            state: TemplateState::Importing,
            size_bytes: row.get::<_, i64>(3)? as u64,
            source_url: row.get(4)?,
            format: row.get(5)?,
            sha256: row.get(6)?,
            kernel_url: row.get(7)?,
            initramfs_url: row.get(8)?,
            cmdline: row.get(9)?,
            has_kernel: row.get(10)?,
            has_initramfs: row.get(11)?,
            created_at: row.get(12)?,
            kernel_sha256: row.get(13)?,
            initramfs_sha256: row.get(14)?,
        },
        row.get(2)?,
    ))
}
const TEMPLATE_COLS: &str = "id, name, state, size_bytes, source_url, format, sha256, kernel_url, initramfs_url, cmdline, has_kernel, has_initramfs, created_at, kernel_sha256, initramfs_sha256";

fn finish_template((mut t, state): RawTemplate) -> Result<TemplateRecord, StoreError> {
    t.state = TemplateState::parse(&state)?;
    Ok(t)
}

type RawJob = (JobRecord, String);
fn job_from_row(row: &Row) -> rusqlite::Result<RawJob> {
    Ok((
        JobRecord {
            id: row.get(0)?,
            template_id: row.get(1)?,
            source_url: row.get(2)?,
            phase: Phase::Pending,
            bytes_done: row.get::<_, i64>(4)? as u64,
            bytes_total: row.get::<_, i64>(5)? as u64,
            rate_bytes_per_sec: row.get::<_, i64>(6)? as u64,
            error: row.get(7)?,
            detected_format: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
        },
        row.get(3)?,
    ))
}
const JOB_COLS: &str = "id, template_id, source_url, phase, bytes_done, bytes_total, rate_bytes_per_sec, error, detected_format, created_at, updated_at";

fn finish_job((mut j, phase): RawJob) -> Result<JobRecord, StoreError> {
    j.phase = Phase::parse(&phase)?;
    Ok(j)
}

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

    // --- volumes ---

    pub fn insert_volume(&self, v: &VolumeRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO volumes (id, name, size_bytes, spec_size_bytes, template_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![v.id, v.name, v.size_bytes as i64, v.spec_size_bytes as i64, v.template_id, v.created_at],
            )
            .map_err(sql_err(&v.name))?;
        Ok(())
    }

    pub fn get_volume(&self, id: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {VOLUME_COLS} FROM volumes WHERE id = ?1"),
                [id],
                volume_from_row,
            )
            .optional()
            .map_err(StoreError::Sql)
    }

    pub fn volume_name_owner(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT id FROM volumes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(StoreError::Sql)
    }

    pub fn list_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {VOLUME_COLS} FROM volumes ORDER BY created_at, id"
            ))
            .map_err(StoreError::Sql)?;
        let rows = stmt
            .query_map([], volume_from_row)
            .map_err(StoreError::Sql)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Sql)
    }

    pub fn set_volume_size(&self, id: &str, size: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE volumes SET size_bytes = ?2 WHERE id = ?1",
                params![id, size as i64],
            )
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    /// Inserts a received volume and its replica row in one transaction.
    pub fn insert_replica(&self, v: &VolumeRecord, source: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::Sql)?;
        tx.execute(
            "INSERT INTO volumes (id, name, size_bytes, spec_size_bytes, template_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.id, v.name, v.size_bytes as i64, v.spec_size_bytes as i64, v.template_id, v.created_at],
        )
        .map_err(sql_err(&v.name))?;
        tx.execute(
            "INSERT INTO replicas (volume_id, source, received_at) VALUES (?1, ?2, ?3)",
            params![v.id, source, v.created_at],
        )
        .map_err(StoreError::Sql)?;
        tx.commit().map_err(StoreError::Sql)
    }

    /// The source of replica `id`, `None` when it is no replica.
    pub fn replica_source(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT source FROM replicas WHERE volume_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::Sql)
    }

    /// Every replica's source, by volume id.
    pub fn replica_sources(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT volume_id, source FROM replicas")
            .map_err(StoreError::Sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(StoreError::Sql)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Sql)
    }

    /// Forgets that volume `id` is a replica (it was promoted).
    pub fn delete_replica(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM replicas WHERE volume_id = ?1", [id])
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    pub fn delete_volume(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM volumes WHERE id = ?1", [id])
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    // --- snapshots ---

    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO snapshots (id, volume_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![s.id, s.volume_id, s.name, s.created_at],
            )
            .map_err(sql_err(&s.name))?;
        Ok(())
    }

    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE id = ?1"),
                [id],
                snapshot_from_row,
            )
            .optional()
            .map_err(StoreError::Sql)
    }

    pub fn list_snapshots(&self, volume_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE volume_id = ?1 ORDER BY created_at, rowid"
            ))
            .map_err(StoreError::Sql)?;
        let rows = stmt
            .query_map([volume_id], snapshot_from_row)
            .map_err(StoreError::Sql)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Sql)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    // --- templates ---

    pub fn insert_template(&self, t: &TemplateRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!("INSERT INTO templates ({TEMPLATE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
                params![
                    t.id, t.name, t.state.as_str(), t.size_bytes as i64, t.source_url, t.format,
                    t.sha256, t.kernel_url, t.initramfs_url, t.cmdline, t.has_kernel,
                    t.has_initramfs, t.created_at, t.kernel_sha256, t.initramfs_sha256
                ],
            )
            .map_err(sql_err(&t.name))?;
        Ok(())
    }

    pub fn get_template(&self, id: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {TEMPLATE_COLS} FROM templates WHERE id = ?1"),
                [id],
                template_from_row,
            )
            .optional()
            .map_err(StoreError::Sql)?;
        raw.map(finish_template).transpose()
    }

    pub fn template_name_owner(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT id FROM templates WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(StoreError::Sql)
    }

    pub fn list_templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TEMPLATE_COLS} FROM templates ORDER BY created_at, id"
            ))
            .map_err(StoreError::Sql)?;
        let rows = stmt
            .query_map([], template_from_row)
            .map_err(StoreError::Sql)?;
        rows.map(|r| r.map_err(StoreError::Sql).and_then(finish_template))
            .collect()
    }

    pub fn mark_template_ready(
        &self,
        id: &str,
        size: u64,
        has_kernel: bool,
        has_initramfs: bool,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE templates SET state = 'ready', size_bytes = ?2, has_kernel = ?3, has_initramfs = ?4 WHERE id = ?1",
                params![id, size as i64, has_kernel, has_initramfs],
            )
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    pub fn delete_template(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM templates WHERE id = ?1", [id])
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    // --- import jobs ---

    pub fn insert_job(&self, j: &JobRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!("INSERT INTO import_jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    j.id, j.template_id, j.source_url, j.phase.as_str(), j.bytes_done as i64,
                    j.bytes_total as i64, j.rate_bytes_per_sec as i64, j.error, j.detected_format,
                    j.created_at, j.updated_at
                ],
            )
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    pub fn update_job(&self, j: &JobRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE import_jobs SET phase = ?2, bytes_done = ?3, bytes_total = ?4, rate_bytes_per_sec = ?5, error = ?6, detected_format = ?7, updated_at = ?8 WHERE id = ?1",
                params![
                    j.id, j.phase.as_str(), j.bytes_done as i64, j.bytes_total as i64,
                    j.rate_bytes_per_sec as i64, j.error, j.detected_format, j.updated_at
                ],
            )
            .map_err(StoreError::Sql)?;
        Ok(())
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLS} FROM import_jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(StoreError::Sql)?;
        raw.map(finish_job).transpose()
    }

    /// The newest job of a template.
    pub fn latest_job(&self, template_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLS} FROM import_jobs WHERE template_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"),
                [template_id],
                job_from_row,
            )
            .optional()
            .map_err(StoreError::Sql)?;
        raw.map(finish_job).transpose()
    }

    pub fn list_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {JOB_COLS} FROM import_jobs ORDER BY created_at, rowid"
            ))
            .map_err(StoreError::Sql)?;
        let rows = stmt.query_map([], job_from_row).map_err(StoreError::Sql)?;
        rows.map(|r| r.map_err(StoreError::Sql).and_then(finish_job))
            .collect()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str, name: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: name.into(),
            size_bytes: 1024,
            spec_size_bytes: 1024,
            template_id: None,
            created_at: 1,
        }
    }

    #[test]
    fn volume_names_are_unique() {
        let store = Store::open_in_memory().unwrap();
        store.insert_volume(&volume("a", "web")).unwrap();
        let err = store.insert_volume(&volume("b", "web")).unwrap_err();
        assert!(
            matches!(err, StoreError::NameTaken(ref n) if n == "web"),
            "{err:?}"
        );
        store.set_volume_size("a", 4096).unwrap();
        assert_eq!(store.get_volume("a").unwrap().unwrap().size_bytes, 4096);
    }

    #[test]
    fn snapshots_go_with_their_volume() {
        let store = Store::open_in_memory().unwrap();
        store.insert_volume(&volume("a", "web")).unwrap();
        let snap = SnapshotRecord {
            id: "s".into(),
            volume_id: "a".into(),
            name: "before".into(),
            created_at: 2,
        };
        store.insert_snapshot(&snap).unwrap();
        assert_eq!(store.list_snapshots("a").unwrap(), vec![snap]);
        store.delete_volume("a").unwrap();
        assert!(store.get_snapshot("s").unwrap().is_none());
    }

    #[test]
    fn jobs_round_trip_with_their_phase() {
        let store = Store::open_in_memory().unwrap();
        let mut job = JobRecord {
            id: "j".into(),
            template_id: "t".into(),
            source_url: "http://x/y.img".into(),
            phase: Phase::Pending,
            bytes_done: 0,
            bytes_total: 0,
            rate_bytes_per_sec: 0,
            error: String::new(),
            detected_format: String::new(),
            created_at: 1,
            updated_at: 1,
        };
        store.insert_job(&job).unwrap();
        job.phase = Phase::Downloading;
        job.bytes_done = 10;
        store.update_job(&job).unwrap();
        assert_eq!(store.latest_job("t").unwrap(), Some(job.clone()));
        assert_eq!(store.list_jobs().unwrap(), vec![job]);
    }
}
