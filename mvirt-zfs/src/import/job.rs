//! A job task: download (and convert) into the template's dataset, check the checksums,
//! snapshot `@base`; on failure or cancellation, remove what it wrote.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::sparse::SparseWriter;
use super::{
    io_err, Artifact, BootFile, ImportError, ImportManager, ImportRequest, CHUNK, PUBLISH_EVERY,
};
use crate::fetch::{self, Compression, Content, FetchError, Format};
use crate::layout;
use crate::qemu_img;
use crate::storage::SECTOR;
use crate::store::Phase;

impl ImportManager {
    pub(super) async fn run(
        self: Arc<Self>,
        job: JobRun,
        mut progress: Progress,
        cancel: CancellationToken,
    ) {
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

    pub(super) async fn execute(
        &self,
        job: JobRun,
        progress: &mut Progress,
    ) -> Result<u64, ImportError> {
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
    pub(super) async fn fetch_boot_file(
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

pub(super) async fn finish_content(content: Content) -> Result<String, ImportError> {
    Ok(content.finish().await?)
}

/// Everything a job task needs, prepared by `start`.
pub(super) struct JobRun {
    pub(super) req: ImportRequest,
    pub(super) kernel: Option<BootFile>,
    pub(super) initramfs: Option<BootFile>,
    pub(super) content: Content,
    pub(super) head: Vec<u8>,
    pub(super) format: Format,
    /// A local, uncompressed qcow2 source: converted in place, without a staging copy.
    pub(super) direct: Option<PathBuf>,
}
