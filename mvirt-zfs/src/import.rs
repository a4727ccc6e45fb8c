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

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvirt_common::validate::{self, InvalidName};
use mvirt_common::{ErrorKind, HasErrorKind};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::fetch::{self, Compression, Content, FetchError, Format, Source};
use crate::layout::{self, PROP_ID, PROP_KIND};
use crate::qemu_img::{self, QemuImgError};
use crate::storage::{Storage, SECTOR};
use crate::store::{self, JobRecord, Phase, StoreError, TemplateRecord, TemplateState};
use crate::zfs::ZfsError;

/// How long opening a source and reading its first bytes may take before `start` gives up.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP source may send nothing before the import fails.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
const PERSIST_EVERY: Duration = Duration::from_secs(1);
const CHUNK: usize = 1024 * 1024;
/// Zero blocks of this size are skipped (left as holes) when writing images.
const SPARSE_BLOCK: usize = 64 * 1024;
static ZEROS: [u8; SPARSE_BLOCK] = [0; SPARSE_BLOCK];
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

    async fn run(self: Arc<Self>, job: JobRun, mut progress: Progress, cancel: CancellationToken) {
        let template_id = job.req.id.clone();
        let name = job.req.name.clone();
        // Biased towards the job: once it has marked the template ready, a cancel that arrives
        // in the same instant must not report CANCELLED for a template that was kept.
        let result = tokio::select! {
            biased;
            r = self.execute(job, &mut progress) => r,
            _ = cancel.cancelled() => Err(if self.shutdown.is_cancelled() {
                ImportError::Interrupted("mvirt-zfs shut down".into())
            } else {
                ImportError::Cancelled
            }),
        };
        let job_id = progress.job.id.clone();
        match result {
            Ok(size) => {
                progress.finish(Phase::Completed, String::new());
                self.storage.audit.audit(
                    format!("imported template {name} ({size} bytes)"),
                    &[&template_id, &job_id],
                );
            }
            Err(err) => {
                let _guard = self.storage.locks.lock(&template_id).await;
                if let Err(cleanup) = self.remove_partial_template(&template_id).await {
                    tracing::error!(template_id, error = %mvirt_common::error::error_chain(&cleanup), "cannot remove a failed import");
                }
                let message = mvirt_common::error::error_chain(&err);
                let phase = if matches!(err, ImportError::Cancelled) {
                    Phase::Cancelled
                } else {
                    Phase::Failed
                };
                if phase == Phase::Cancelled {
                    self.storage.audit.audit(
                        format!("cancelled import of template {name}"),
                        &[&template_id, &job_id],
                    );
                } else {
                    self.storage.audit.error(
                        format!("import of template {name} failed: {message}"),
                        &[&template_id, &job_id],
                    );
                }
                progress.finish(phase, message);
            }
        }
        self.running().remove(&job_id);
    }

    async fn execute(&self, job: JobRun, progress: &mut Progress) -> Result<u64, ImportError> {
        let JobRun {
            req,
            kernel,
            initramfs,
            mut content,
            head,
            format,
            direct,
        } = job;
        let storage = &self.storage;
        let dir = storage.layout.template_dir(&req.id);
        let image = dir.join(layout::IMAGE_FILE);
        let target = match format {
            Format::Qcow2 => dir.join(layout::STAGING_FILE),
            _ => image.clone(),
        };

        let boot_files: Vec<&BootFile> = [kernel.as_ref(), initramfs.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        let written;
        let actual;
        if let Some(source_path) = &direct {
            // The image is not downloaded: the boot files are, first.
            let mut done = 0;
            for file in &boot_files {
                done += self.fetch_boot_file(file, &dir, progress, done).await?;
            }
            // CONVERTING straight from the local qcow2 file (no staging copy); the checksum is
            // computed from a second read of the file while qemu-img converts it.
            let total = fetch::qcow2_header(&head)?.virtual_size;
            progress.set_phase(Phase::Converting, total);
            let mut reader = std::mem::replace(&mut content.reader, Box::new(tokio::io::empty()));
            let verify = !req.sha256.is_empty();
            let hashing = async move {
                if verify {
                    tokio::io::copy(&mut reader, &mut tokio::io::sink()).await
                } else {
                    Ok(0)
                }
            };
            let converting = qemu_img::convert_to_raw(source_path, "qcow2", &image, |percent| {
                progress.update((percent / 100.0 * total as f64) as u64)
            });
            let (hashed, converted) = tokio::join!(hashing, converting);
            hashed.map_err(FetchError::Read)?;
            converted?;
            progress.update(total);
            written = total;
            actual = finish_content(content).await?;
        } else {
            // DOWNLOADING
            let mut writer = SparseWriter::create(&target).await?;
            writer.write(&head).await?;
            let mut chunk = vec![0u8; CHUNK];
            // Progress is also published while no bytes arrive, so a stalled source shows.
            let mut ticker = tokio::time::interval(PUBLISH_EVERY);
            loop {
                let n = tokio::select! {
                    read = content.reader.read(&mut chunk) => read.map_err(FetchError::Read)?,
                    _ = ticker.tick() => {
                        progress.update(content.downloaded.load(Ordering::Relaxed));
                        continue;
                    }
                };
                if n == 0 {
                    break;
                }
                writer.write(&chunk[..n]).await?;
                progress.update(content.downloaded.load(Ordering::Relaxed));
            }
            written = writer.finish().await?;
            let downloaded = content.downloaded.clone();
            actual = finish_content(content).await?;
            // The final count of the download is always shown, not coalesced away.
            progress.update(downloaded.load(Ordering::Relaxed));
            progress.persist();
            progress.publish();
        }
        if !req.sha256.is_empty() && actual != req.sha256 {
            return Err(ImportError::ChecksumMismatch {
                artifact: Artifact::Image,
                expected: req.sha256.clone(),
                actual,
            });
        }
        if direct.is_none() {
            // Counted after the image's bytes.
            let mut done = progress.job.bytes_done;
            for file in &boot_files {
                done += self.fetch_boot_file(file, &dir, progress, done).await?;
            }
        }
        if !req.cmdline.is_empty() {
            tokio::fs::write(dir.join(layout::CMDLINE_FILE), format!("{}\n", req.cmdline))
                .await
                .map_err(io_err("cannot write cmdline"))?;
        }

        // CONVERTING (downloaded qcow2)
        if format == Format::Qcow2 && direct.is_none() {
            let total = fetch::qcow2_header(&head)?.virtual_size;
            progress.set_phase(Phase::Converting, total);
            qemu_img::convert_to_raw(&target, "qcow2", &image, |percent| {
                progress.update((percent / 100.0 * total as f64) as u64)
            })
            .await?;
            progress.update(total);
            tokio::fs::remove_file(&target)
                .await
                .map_err(io_err("cannot remove the qcow2 staging file"))?;
        }
        let size = tokio::fs::metadata(&image)
            .await
            .map_err(io_err(format!("cannot stat {}", image.display())))?
            .len();
        if size == 0 {
            return Err(FetchError::NotAnImage("the image is empty".into()).into());
        }
        if format != Format::Qcow2 && !written.is_multiple_of(SECTOR) {
            return Err(FetchError::NotAnImage(format!(
                "a raw image must be a whole number of {SECTOR}-byte sectors, this one has {written} bytes"
            ))
            .into());
        }

        // FINALIZING (the byte counters keep their final values)
        progress.job.phase = Phase::Finalizing;
        progress.persist();
        progress.publish();
        storage
            .zfs
            .snapshot(&storage.layout.template_base(&req.id))
            .await?;
        storage
            .store
            .mark_template_ready(&req.id, size, kernel.is_some(), initramfs.is_some())?;
        Ok(size)
    }

    /// Downloads a kernel or initramfs into the template's directory, reporting its bytes as
    /// `offset` + what arrived, and checks its checksum. Returns the bytes downloaded.
    async fn fetch_boot_file(
        &self,
        file: &BootFile,
        dir: &Path,
        progress: &mut Progress,
        offset: u64,
    ) -> Result<u64, ImportError> {
        let dest = dir.join(match file.artifact {
            Artifact::Kernel => layout::KERNEL_FILE,
            _ => layout::INITRAMFS_FILE,
        });
        let mut content = fetch::open(&file.source, Compression::None, &self.client).await?;
        let mut out = tokio::fs::File::create(&dest)
            .await
            .map_err(io_err(format!("cannot create {}", dest.display())))?;
        let mut chunk = vec![0u8; CHUNK];
        let mut ticker = tokio::time::interval(PUBLISH_EVERY);
        loop {
            let n = tokio::select! {
                read = content.reader.read(&mut chunk) => read.map_err(FetchError::Read)?,
                _ = ticker.tick() => {
                    progress.update(offset + content.downloaded.load(Ordering::Relaxed));
                    continue;
                }
            };
            if n == 0 {
                break;
            }
            out.write_all(&chunk[..n])
                .await
                .map_err(io_err(format!("cannot write {}", dest.display())))?;
            progress.update(offset + content.downloaded.load(Ordering::Relaxed));
        }
        out.sync_all()
            .await
            .map_err(io_err(format!("cannot sync {}", dest.display())))?;
        let downloaded = content.downloaded.load(Ordering::Relaxed);
        let actual = finish_content(content).await?;
        if !file.sha256.is_empty() && actual != file.sha256 {
            return Err(ImportError::ChecksumMismatch {
                artifact: file.artifact,
                expected: file.sha256.clone(),
                actual,
            });
        }
        progress.update(offset + downloaded);
        progress.persist();
        progress.publish();
        Ok(downloaded)
    }
}

async fn finish_content(content: Content) -> Result<String, ImportError> {
    Ok(content.finish().await?)
}

/// Everything a job task needs, prepared by `start`.
struct JobRun {
    req: ImportRequest,
    kernel: Option<BootFile>,
    initramfs: Option<BootFile>,
    content: Content,
    head: Vec<u8>,
    format: Format,
    /// A local, uncompressed qcow2 source: converted in place, without a staging copy.
    direct: Option<PathBuf>,
}

/// A job's state, published to watchers and persisted.
struct Progress {
    job: JobRecord,
    tx: watch::Sender<JobRecord>,
    store: Arc<store::Store>,
    last_publish: Instant,
    last_persist: Instant,
    phase_started: Instant,
    phase_start_bytes: u64,
}

impl Progress {
    fn new(job: JobRecord, tx: watch::Sender<JobRecord>, store: Arc<store::Store>) -> Self {
        let now = Instant::now();
        Self {
            phase_start_bytes: job.bytes_done,
            job,
            tx,
            store,
            last_publish: now,
            last_persist: now,
            phase_started: now,
        }
    }

    fn persist(&mut self) {
        self.job.updated_at = store::now();
        if let Err(err) = self.store.update_job(&self.job) {
            tracing::warn!(job = %self.job.id, error = %mvirt_common::error::error_chain(&err), "cannot persist import progress");
        }
        self.last_persist = Instant::now();
    }

    fn publish(&mut self) {
        self.tx.send_replace(self.job.clone());
        self.last_publish = Instant::now();
    }

    fn set_phase(&mut self, phase: Phase, total: u64) {
        self.job.phase = phase;
        self.job.bytes_total = total;
        self.job.bytes_done = 0;
        self.job.rate_bytes_per_sec = 0;
        self.phase_started = Instant::now();
        self.phase_start_bytes = 0;
        self.persist();
        self.publish();
    }

    fn update(&mut self, done: u64) {
        self.job.bytes_done = done;
        let elapsed = self.phase_started.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            self.job.rate_bytes_per_sec =
                (done.saturating_sub(self.phase_start_bytes) as f64 / elapsed) as u64;
        }
        if self.job.bytes_total != 0 && done > self.job.bytes_total {
            self.job.bytes_total = done;
        }
        if self.last_persist.elapsed() >= PERSIST_EVERY {
            self.persist();
        }
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        }
    }

    fn finish(&mut self, phase: Phase, error: String) {
        self.job.phase = phase;
        self.job.error = error;
        if phase == Phase::Completed && self.job.bytes_total == 0 {
            self.job.bytes_total = self.job.bytes_done;
        }
        self.persist();
        self.publish();
    }
}

/// Writes a stream into a file, leaving all-zero blocks as holes.
struct SparseWriter {
    file: tokio::fs::File,
    path: PathBuf,
    buf: Vec<u8>,
    pos: u64,
    seek_pending: bool,
}

impl SparseWriter {
    async fn create(path: &Path) -> Result<Self, ImportError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(CHUNK + SPARSE_BLOCK),
            pos: 0,
            seek_pending: false,
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ImportError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush(false).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, all: bool) -> Result<(), ImportError> {
        let n = if all {
            self.buf.len()
        } else {
            self.buf.len() / SPARSE_BLOCK * SPARSE_BLOCK
        };
        let context = || format!("cannot write {}", self.path.display());
        // Consecutive data blocks go out in one write (fewer syscalls and FUSE requests);
        // all-zero blocks are skipped with a seek and stay holes.
        let mut offset = 0;
        while offset < n {
            let is_zero = |block: &[u8]| block == &ZEROS[..block.len()];
            let block_len = |at: usize| SPARSE_BLOCK.min(n - at);
            if is_zero(&self.buf[offset..offset + block_len(offset)]) {
                self.seek_pending = true;
                self.pos += block_len(offset) as u64;
                offset += block_len(offset);
                continue;
            }
            let mut end = offset + block_len(offset);
            while end < n && !is_zero(&self.buf[end..end + block_len(end)]) {
                end += block_len(end);
            }
            if self.seek_pending {
                self.file
                    .seek(SeekFrom::Start(self.pos))
                    .await
                    .map_err(io_err(context()))?;
                self.seek_pending = false;
            }
            self.file
                .write_all(&self.buf[offset..end])
                .await
                .map_err(io_err(context()))?;
            self.pos += (end - offset) as u64;
            offset = end;
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// Flushes, sets the final length (trailing holes) and syncs. Returns the length.
    async fn finish(mut self) -> Result<u64, ImportError> {
        self.flush(true).await?;
        let context = format!("cannot finish {}", self.path.display());
        self.file
            .set_len(self.pos)
            .await
            .map_err(io_err(context.clone()))?;
        self.file.sync_all().await.map_err(io_err(context))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_blocks_become_holes_and_data_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut writer = SparseWriter::create(&path).await.unwrap();
        let mut data = vec![0u8; 8 * 1024 * 1024];
        data[100] = 1;
        data[5 * 1024 * 1024 + 7] = 2;
        for piece in data.chunks(300_000) {
            writer.write(piece).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back, data);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1024 * 1024, "allocated {allocated} bytes");
    }

    #[tokio::test]
    async fn runs_of_data_and_holes_across_chunks_come_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut writer = SparseWriter::create(&path).await.unwrap();
        // Data runs of 1..5 blocks between holes of 1..3 blocks, and a tail of 1000 bytes.
        let mut data = Vec::new();
        let mut byte = 1u8;
        for i in 0..60usize {
            let run = (i % 5 + 1) * SPARSE_BLOCK;
            data.extend(std::iter::repeat_n(byte, run));
            byte = byte.wrapping_add(1).max(1);
            data.extend(std::iter::repeat_n(0u8, (i % 3 + 1) * SPARSE_BLOCK));
        }
        data.extend(std::iter::repeat_n(7u8, 1000));
        for piece in data.chunks(777_777) {
            writer.write(piece).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
