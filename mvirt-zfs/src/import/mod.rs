//! Template imports: a job per `ImportTemplate`, with progress, cancellation and restart safety.
//!
//! `start` does everything that can fail because of the caller's input before it answers: it
//! validates the request, opens the source (so an unreachable URL, an HTTP error or a path
//! outside the import directory is an immediate gRPC error) and reads the first bytes to
//! recognise the format (content that is not a disk image is refused). Only then does it record
//! the template (state importing) and the job, and spawn the job task:
//!
//! 1. DOWNLOADING: the content streams into the template's dataset, raw straight into
//!    `disk.raw` (zero blocks become holes), qcow2 into a staging file; the SHA-256 of the
//!    downloaded bytes is checked at the end. Kernel and initramfs are fetched next to it, each
//!    checked against its own SHA-256 when one is given. `bytes_total` of this phase counts
//!    image, kernel and initramfs (their sizes are learned when `start` opens them), and
//!    `bytes_done` runs through all three in that order.
//! 2. CONVERTING (qcow2 only): `qemu-img convert` to `disk.raw`, progress from its `-p` output.
//!    A local uncompressed qcow2 (`file://`) skips the staging copy: qemu-img reads the source
//!    itself while the checksum is computed alongside; its kernel and initramfs are then
//!    downloaded first (DOWNLOADING counts only them).
//! 3. FINALIZING: snapshot `@base`, template marked ready.
//!
//! Progress goes to watchers through a `watch` channel at every change (coalesced to a few per
//! second) and to SQLite about once a second. Cancelling drops the job's future, which kills any
//! child program; every failure removes the dataset and the template row, so nothing is left
//! behind but the job's record with its reason. At start, [`ImportManager::recover`] marks jobs
//! a previous process left running as failed and removes their half-written datasets.

mod job;
mod progress;
mod sparse;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvirt_common::validate::{self, InvalidName};
use mvirt_common::{ErrorKind, HasErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::fetch::{self, Compression, FetchError, Format, Source};
use crate::layout::{PROP_ID, PROP_KIND};
use crate::qemu_img::QemuImgError;
use crate::storage::Storage;
use crate::store::{self, JobRecord, Phase, StoreError, TemplateRecord, TemplateState};
use crate::zfs::ZfsError;
use job::JobRun;
use progress::Progress;

/// How long opening a source and reading its first bytes may take before `start` gives up.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP source may send nothing before the import fails.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
const PERSIST_EVERY: Duration = Duration::from_secs(1);
const CHUNK: usize = 1024 * 1024;
const MAX_CMDLINE: usize = 4096;

/// Failure of an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("import job {0} not found")]
    JobNotFound(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("timed out after {0:?} opening the source")]
    Timeout(Duration),
    #[error("{artifact} checksum mismatch: expected sha256 {expected}, the downloaded {artifact} has {actual}")]
    ChecksumMismatch {
        artifact: Artifact,
        expected: String,
        actual: String,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl HasErrorKind for ImportError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImportError::InvalidName(_)
            | ImportError::InvalidArgument(_)
            | ImportError::ChecksumMismatch { .. } => ErrorKind::InvalidArgument,
            ImportError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ImportError::JobNotFound(_) => ErrorKind::NotFound,
            ImportError::Fetch(e) => e.kind(),
            ImportError::Timeout(_) => ErrorKind::Unavailable,
            ImportError::Cancelled | ImportError::Interrupted(_) => ErrorKind::Aborted,
            ImportError::QemuImg(e) => e.kind(),
            ImportError::Zfs(e) => e.kind(),
            ImportError::Store(e) => e.kind(),
            ImportError::Io { .. } => ErrorKind::Internal,
        }
    }
}
mvirt_common::impl_status_from!(ImportError);

/// The files an import downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    Image,
    Kernel,
    Initramfs,
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Artifact::Image => "image",
            Artifact::Kernel => "kernel",
            Artifact::Initramfs => "initramfs",
        })
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImportError {
    let context = context.into();
    move |source| ImportError::Io { context, source }
}

/// What the caller asked to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    pub id: String,
    pub name: String,
    pub source_url: String,
    pub format: Format,
    pub sha256: String,
    pub kernel_url: String,
    pub initramfs_url: String,
    /// Lowercase hex SHA-256 of the kernel / initramfs download; empty = not verified.
    pub kernel_sha256: String,
    pub initramfs_sha256: String,
    pub cmdline: String,
}

struct RunningJob {
    cancel: CancellationToken,
    progress: watch::Receiver<JobRecord>,
}

/// Starts, tracks and cancels import jobs.
pub struct ImportManager {
    storage: Arc<Storage>,
    import_dir: Option<PathBuf>,
    client: reqwest::Client,
    running: Mutex<HashMap<String, RunningJob>>,
    shutdown: CancellationToken,
}

/// Sources of one import, checked.
struct Sources {
    image: (Source, Compression),
    kernel: Option<Source>,
    initramfs: Option<Source>,
}

/// A kernel or initramfs to fetch: where from, its size when the source announced one, and the
/// checksum it must have (empty: not verified).
struct BootFile {
    artifact: Artifact,
    source: Source,
    size: Option<u64>,
    sha256: String,
}

/// A checksum as given (any case, surrounding blanks), normalised; `what` names it in errors.
fn normalise_sha256(what: &str, value: &str) -> Result<String, ImportError> {
    let value = value.trim().to_ascii_lowercase();
    if !value.is_empty() && (value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ImportError::InvalidArgument(format!(
            "{what} must be 64 hexadecimal digits"
        )));
    }
    Ok(value)
}

impl ImportManager {
    pub fn new(
        storage: Arc<Storage>,
        import_dir: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Self {
        // A source that sends nothing for READ_TIMEOUT fails the job rather than hanging it.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            storage,
            import_dir,
            client,
            running: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, req: &mut ImportRequest) -> Result<Sources, ImportError> {
        validate::resource_id("template id", &req.id)?;
        validate::dns_label("template name", &req.name)?;
        req.sha256 = normalise_sha256("sha256", &req.sha256)?;
        req.kernel_sha256 = normalise_sha256("kernel_sha256", &req.kernel_sha256)?;
        req.initramfs_sha256 = normalise_sha256("initramfs_sha256", &req.initramfs_sha256)?;
        for (sum, url, name) in [
            (&req.kernel_sha256, &req.kernel_url, "kernel"),
            (&req.initramfs_sha256, &req.initramfs_url, "initramfs"),
        ] {
            if !sum.is_empty() && url.is_empty() {
                return Err(ImportError::InvalidArgument(format!(
                    "{name}_sha256 is given without {name}_url"
                )));
            }
        }
        if req.cmdline.len() > MAX_CMDLINE || req.cmdline.contains(['\0', '\n']) {
            return Err(ImportError::InvalidArgument(format!(
                "cmdline must be one line of at most {MAX_CMDLINE} bytes"
            )));
        }
        if req.source_url.is_empty() {
            return Err(ImportError::InvalidArgument(
                "source_url is required".into(),
            ));
        }
        let dir = self.import_dir.as_deref();
        let image = fetch::parse_source(&req.source_url, dir)?;
        let extra = |url: &str| -> Result<Option<Source>, ImportError> {
            if url.is_empty() {
                return Ok(None);
            }
            let (source, compression) = fetch::parse_source(url, dir)?;
            if compression != Compression::None {
                return Err(ImportError::InvalidArgument(format!(
                    "{url}: kernel and initramfs sources are used as they are (no decompression)"
                )));
            }
            Ok(Some(source))
        };
        Ok(Sources {
            image,
            kernel: extra(&req.kernel_url)?,
            initramfs: extra(&req.initramfs_url)?,
        })
    }

    /// Starts an import, or returns the job of an identical one. See the module docs.
    pub async fn start(self: &Arc<Self>, mut req: ImportRequest) -> Result<JobRecord, ImportError> {
        let sources = self.check(&mut req)?;
        let store = &self.storage.store;
        let _guard = self.storage.locks.lock(&req.id).await;
        if let Some(existing) = store.get_template(&req.id)? {
            let same = existing.name == req.name
                && existing.source_url == req.source_url
                && existing.format == req.format.as_str()
                && existing.sha256 == req.sha256
                && existing.kernel_url == req.kernel_url
                && existing.initramfs_url == req.initramfs_url
                && existing.kernel_sha256 == req.kernel_sha256
                && existing.initramfs_sha256 == req.initramfs_sha256
                && existing.cmdline == req.cmdline;
            if !same {
                return Err(ImportError::AlreadyExists(format!(
                    "template {} already exists with a different spec",
                    req.id
                )));
            }
            if let Some(job) = store.latest_job(&req.id)? {
                return Ok(self.current(job));
            }
            return Err(ImportError::AlreadyExists(format!(
                "template {} already exists",
                req.id
            )));
        }
        if let Some(owner) = store.template_name_owner(&req.name)? {
            return Err(ImportError::AlreadyExists(format!(
                "template name {:?} is already used by template {owner}",
                req.name
            )));
        }

        let (image, compression) = &sources.image;
        let boot_file = |artifact, source: Option<Source>, sha256: &str| {
            let client = &self.client;
            let sha256 = sha256.to_string();
            async move {
                let Some(source) = source else {
                    return Ok::<_, ImportError>(None);
                };
                // Opened now for its size (and so that a bad URL fails the call, not the
                // job); fetched after the image.
                let size = fetch::size(&source, client).await?;
                Ok(Some(BootFile {
                    artifact,
                    source,
                    size,
                    sha256,
                }))
            }
        };
        let preflight = async {
            let mut content = fetch::open(image, *compression, &self.client).await?;
            let head = content.read_head(fetch::HEAD_LEN).await?;
            let format = fetch::detect(&head, req.format)?;
            let kernel = boot_file(Artifact::Kernel, sources.kernel, &req.kernel_sha256).await?;
            let initramfs = boot_file(
                Artifact::Initramfs,
                sources.initramfs,
                &req.initramfs_sha256,
            )
            .await?;
            Ok::<_, ImportError>((content, head, format, kernel, initramfs))
        };
        let (content, head, format, kernel, initramfs) =
            tokio::time::timeout(PREFLIGHT_TIMEOUT, preflight)
                .await
                .map_err(|_| ImportError::Timeout(PREFLIGHT_TIMEOUT))??;
        let direct = match (&sources.image, format) {
            ((Source::File(path), Compression::None), Format::Qcow2) => Some(path.clone()),
            _ => None,
        };
        // DOWNLOADING's total: the image (unless qemu-img reads it in place), kernel and
        // initramfs; unknown (0) when one of them announced no size.
        let image_total = if direct.is_some() {
            Some(0)
        } else {
            content.total
        };
        let download_total = image_total
            .and_then(|image| {
                [kernel.as_ref(), initramfs.as_ref()]
                    .into_iter()
                    .flatten()
                    .try_fold(image, |sum, f| f.size.map(|size| sum + size))
            })
            .unwrap_or(0);

        let dataset = self.storage.layout.template_dataset(&req.id);
        // No record of this template exists (checked above, under its lock): a dataset of its
        // id is what an earlier start left when it was cut off after creating it.
        self.storage.zfs.destroy_if_exists(&dataset).await?;
        self.storage
            .zfs
            .create(
                &dataset,
                false,
                &[(PROP_ID, &req.id), (PROP_KIND, "template")],
            )
            .await?;
        let now = store::now();
        let inserted = store.insert_template(&TemplateRecord {
            id: req.id.clone(),
            name: req.name.clone(),
            state: TemplateState::Importing,
            size_bytes: 0,
            source_url: req.source_url.clone(),
            format: req.format.as_str().to_string(),
            sha256: req.sha256.clone(),
            kernel_url: req.kernel_url.clone(),
            initramfs_url: req.initramfs_url.clone(),
            kernel_sha256: req.kernel_sha256.clone(),
            initramfs_sha256: req.initramfs_sha256.clone(),
            cmdline: req.cmdline.clone(),
            has_kernel: false,
            has_initramfs: false,
            created_at: now,
        });
        if let Err(err) = inserted {
            let _ = self.storage.zfs.destroy_if_exists(&dataset).await;
            return Err(err.into());
        }
        let job = JobRecord {
            id: uuid::Uuid::new_v4().to_string(),
            template_id: req.id.clone(),
            source_url: req.source_url.clone(),
            phase: Phase::Downloading,
            bytes_done: if direct.is_some() {
                0
            } else {
                content.downloaded.load(Ordering::Relaxed)
            },
            bytes_total: download_total,
            rate_bytes_per_sec: 0,
            error: String::new(),
            detected_format: format.as_str().to_string(),
            created_at: now,
            updated_at: now,
        };
        if let Err(err) = store.insert_job(&job) {
            let _ = self.storage.zfs.destroy_if_exists(&dataset).await;
            let _ = store.delete_template(&req.id);
            return Err(err.into());
        }
        let (tx, rx) = watch::channel(job.clone());
        let cancel = self.shutdown.child_token();
        self.running().insert(
            job.id.clone(),
            RunningJob {
                cancel: cancel.clone(),
                progress: rx,
            },
        );
        self.storage.audit.audit(
            format!(
                "started import of template {} from {} ({} image)",
                req.name,
                req.source_url,
                format.as_str()
            ),
            &[&req.id, &job.id],
        );
        let progress = Progress::new(job.clone(), tx, self.storage.store.clone());
        let manager = self.clone();
        let job_run = JobRun {
            req,
            kernel,
            initramfs,
            content,
            head,
            format,
            direct,
        };
        tokio::spawn(async move { manager.run(job_run, progress, cancel).await });
        Ok(job)
    }

    /// The live state of a job if it is running, else the stored one.
    fn current(&self, job: JobRecord) -> JobRecord {
        match self.running().get(&job.id) {
            Some(running) => running.progress.borrow().clone(),
            None => job,
        }
    }

    pub fn get(&self, job_id: &str) -> Result<JobRecord, ImportError> {
        if let Some(running) = self.running().get(job_id) {
            return Ok(running.progress.borrow().clone());
        }
        self.storage
            .store
            .get_job(job_id)?
            .ok_or_else(|| ImportError::JobNotFound(job_id.to_string()))
    }

    pub fn list(&self) -> Result<Vec<JobRecord>, ImportError> {
        let jobs = self.storage.store.list_jobs()?;
        Ok(jobs.into_iter().map(|j| self.current(j)).collect())
    }

    /// A receiver of the job's progress; `None` when the job is not running (finished).
    pub fn watch(
        &self,
        job_id: &str,
    ) -> Result<Result<watch::Receiver<JobRecord>, JobRecord>, ImportError> {
        if let Some(running) = self.running().get(job_id) {
            return Ok(Ok(running.progress.clone()));
        }
        let job = self
            .storage
            .store
            .get_job(job_id)?
            .ok_or_else(|| ImportError::JobNotFound(job_id.to_string()))?;
        Ok(Err(job))
    }

    /// Cancels a running job and waits until it has cleaned up. A finished job is returned as
    /// it is.
    pub async fn cancel(&self, job_id: &str) -> Result<JobRecord, ImportError> {
        let running = self
            .running()
            .get(job_id)
            .map(|r| (r.cancel.clone(), r.progress.clone()));
        let Some((token, mut rx)) = running else {
            return self.get(job_id);
        };
        token.cancel();
        let done = rx
            .wait_for(|job| job.phase.is_terminal())
            .await
            .map(|j| j.clone());
        match done {
            Ok(job) => Ok(job),
            Err(_) => self.get(job_id),
        }
    }

    /// Marks jobs a previous process left unfinished as failed and removes what they wrote.
    pub async fn recover(&self) -> Result<usize, ImportError> {
        let store = &self.storage.store;
        let mut recovered = 0;
        for mut job in store.list_jobs()? {
            if job.phase.is_terminal() {
                continue;
            }
            let reason = format!(
                "interrupted: mvirt-zfs stopped during the {} phase; nothing was kept, import again",
                job.phase.as_str()
            );
            self.remove_partial_template(&job.template_id).await?;
            job.phase = Phase::Failed;
            job.error = reason.clone();
            job.rate_bytes_per_sec = 0;
            job.updated_at = store::now();
            store.update_job(&job)?;
            self.storage.audit.warn(
                format!("import job {} {reason}", job.id),
                &[&job.template_id, &job.id],
            );
            recovered += 1;
        }
        // Templates stuck importing without a job (crash between the two inserts).
        for template in store.list_templates()? {
            if template.state == TemplateState::Importing {
                self.remove_partial_template(&template.id).await?;
            }
        }
        Ok(recovered)
    }

    async fn remove_partial_template(&self, template_id: &str) -> Result<(), ImportError> {
        let store = &self.storage.store;
        match store.get_template(template_id)? {
            Some(t) if t.state == TemplateState::Ready => return Ok(()),
            _ => {}
        }
        self.storage
            .zfs
            .destroy_if_exists(&self.storage.layout.template_dataset(template_id))
            .await?;
        store.delete_template(template_id)?;
        Ok(())
    }
}
