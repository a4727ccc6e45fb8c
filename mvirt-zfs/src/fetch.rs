//! Import sources: `file://` (inside the import directory) and `http(s)://`, optionally
//! compressed, read as one byte stream; plus recognising what the bytes are.
//!
//! The downloaded bytes pass through a [`Tap`] that counts them (progress) and hashes them
//! (SHA-256 is verified over exactly what was downloaded, before decompression). A `.gz`, `.xz`
//! or `.zst` source is piped through `gzip -dc`, `xz -dc` or `zstd -dc`; the decompressed
//! content is what gets written into the image.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::TryStreamExt;
use mvirt_common::{ErrorKind, HasErrorKind};
use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::command;

/// Bytes of content inspected to recognise the image format (covers the btrfs superblock at
/// 64 KiB + 64).
pub const HEAD_LEN: usize = 68 * 1024;

/// Failure to open or read a source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid source URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported URL scheme {0:?}: use file://, http:// or https://")]
    UnsupportedScheme(String),
    #[error("file:// sources are disabled: the daemon has no --import-dir")]
    NoImportDir,
    #[error("{path} is outside the import directory {dir}")]
    OutsideImportDir { path: String, dir: String },
    #[error("source file {path} cannot be opened")]
    FileUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("reading the source failed")]
    Read(#[source] std::io::Error),
    #[error("cannot decompress the source with {program}: {stderr}")]
    Decompress { program: String, stderr: String },
    #[error("cannot start the decompressor")]
    DecompressorSpawn(#[source] std::io::Error),
    #[error("{0}")]
    NotAnImage(String),
}

impl HasErrorKind for FetchError {
    fn kind(&self) -> ErrorKind {
        match self {
            FetchError::InvalidUrl { .. }
            | FetchError::UnsupportedScheme(_)
            | FetchError::OutsideImportDir { .. }
            | FetchError::HttpStatus { .. }
            | FetchError::Decompress { .. }
            | FetchError::NotAnImage(_) => ErrorKind::InvalidArgument,
            FetchError::NoImportDir => ErrorKind::FailedPrecondition,
            FetchError::FileUnreadable { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ErrorKind::NotFound
            }
            FetchError::FileUnreadable { .. } => ErrorKind::InvalidArgument,
            FetchError::Unreachable { .. } => ErrorKind::Unavailable,
            FetchError::Read(_) => ErrorKind::Unavailable,
            FetchError::DecompressorSpawn(_) => ErrorKind::Internal,
        }
    }
}

/// Where bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(Url),
}

/// How the source is compressed (from its path's extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    fn from_path(path: &str) -> Self {
        if path.ends_with(".gz") {
            Compression::Gzip
        } else if path.ends_with(".xz") {
            Compression::Xz
        } else if path.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
    fn program(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Xz => Some("xz"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

/// Parses and checks a source URL. `file://` paths must resolve (symlinks followed) inside
/// `import_dir`.
pub fn parse_source(
    url: &str,
    import_dir: Option<&Path>,
) -> Result<(Source, Compression), FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let compression = Compression::from_path(parsed.path());
    match parsed.scheme() {
        "http" | "https" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(FetchError::InvalidUrl {
                    url: url.to_string(),
                    reason: "no host".into(),
                });
            }
            Ok((Source::Http(parsed), compression))
        }
        "file" => {
            let dir = import_dir.ok_or(FetchError::NoImportDir)?;
            let path = parsed.to_file_path().map_err(|()| FetchError::InvalidUrl {
                url: url.to_string(),
                reason: "not a local absolute path".into(),
            })?;
            let canonical = path
                .canonicalize()
                .map_err(|source| FetchError::FileUnreadable {
                    path: path.display().to_string(),
                    source,
                })?;
            let dir = dir
                .canonicalize()
                .map_err(|source| FetchError::FileUnreadable {
                    path: dir.display().to_string(),
                    source,
                })?;
            if !canonical.starts_with(&dir) {
                return Err(FetchError::OutsideImportDir {
                    path: path.display().to_string(),
                    dir: dir.display().to_string(),
                });
            }
            Ok((Source::File(canonical), compression))
        }
        other => Err(FetchError::UnsupportedScheme(other.to_string())),
    }
}

/// Counts and hashes the bytes read through it.
pub struct Tap<R> {
    inner: R,
    pub hasher: Arc<Mutex<Sha256>>,
    pub count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tap<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.hasher
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .update(new);
                    this.count.fetch_add(new.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// The content of a source being read: decompressed bytes, with the download counted and
/// hashed on the way.
pub struct Content {
    pub reader: BoxRead,
    /// Bytes downloaded so far (before decompression).
    pub downloaded: Arc<AtomicU64>,
    /// Download size when known (Content-Length or file size).
    pub total: Option<u64>,
    hasher: Arc<Mutex<Sha256>>,
    decompressor: Option<Decompressor>,
}

struct Decompressor {
    program: &'static str,
    child: Child,
    feeder: JoinHandle<std::io::Result<u64>>,
    stderr: JoinHandle<String>,
}

impl Drop for Decompressor {
    /// A cancelled import drops its content mid-stream: the decompressor is killed
    /// (`kill_on_drop`) and the task feeding it must not keep the download open.
    fn drop(&mut self) {
        self.feeder.abort();
        self.stderr.abort();
    }
}

/// Opens `source`: an HTTP GET (status checked) or the file.
pub async fn open(
    source: &Source,
    compression: Compression,
    client: &reqwest::Client,
) -> Result<Content, FetchError> {
    let (raw, total): (BoxRead, Option<u64>) =
        match source {
            Source::File(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|source| {
                    FetchError::FileUnreadable {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                let len = file.metadata().await.ok().map(|m| m.len());
                (Box::new(file), len)
            }
            Source::Http(url) => {
                let response = client.get(url.clone()).send().await.map_err(|source| {
                    FetchError::Unreachable {
                        url: url.to_string(),
                        source,
                    }
                })?;
                let status = response.status();
                if !status.is_success() {
                    return Err(FetchError::HttpStatus {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
                let total = response.content_length();
                let stream = response.bytes_stream().map_err(std::io::Error::other);
                (Box::new(tokio_util::io::StreamReader::new(stream)), total)
            }
        };
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let downloaded = Arc::new(AtomicU64::new(0));
    let tap = Tap {
        inner: raw,
        hasher: hasher.clone(),
        count: downloaded.clone(),
    };
    let (reader, decompressor): (BoxRead, _) = match compression.program() {
        None => (Box::new(tap), None),
        Some(program) => {
            let mut child = command::streaming(program, &["-dc"])
                .spawn()
                .map_err(FetchError::DecompressorSpawn)?;
            let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(FetchError::DecompressorSpawn(std::io::Error::other(
                    "decompressor pipes missing",
                )));
            };
            let mut tap = tap;
            let feeder = tokio::spawn(async move {
                let n = tokio::io::copy(&mut tap, &mut stdin).await?;
                drop(stdin);
                Ok(n)
            });
            let stderr = tokio::spawn(async move {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text).await;
                text
            });
            (
                Box::new(stdout),
                Some(Decompressor {
                    program,
                    child,
                    feeder,
                    stderr,
                }),
            )
        }
    };
    Ok(Content {
        reader,
        downloaded,
        total,
        hasher,
        decompressor,
    })
}

/// The size `source` announces (file size, HTTP Content-Length), checking on the way that it
/// can be opened. An HTTP body is not read: the request is dropped after its headers.
pub async fn size(source: &Source, client: &reqwest::Client) -> Result<Option<u64>, FetchError> {
    Ok(open(source, Compression::None, client).await?.total)
}

impl Content {
    /// Reads up to `max` bytes (fewer only at the end of the content).
    pub async fn read_head(&mut self, max: usize) -> Result<Vec<u8>, FetchError> {
        let mut head = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            let n = self
                .reader
                .read(&mut head[filled..])
                .await
                .map_err(FetchError::Read)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        Ok(head)
    }

    /// After the content reached its end: waits for the decompressor and returns the
    /// SHA-256 (lowercase hex) of the downloaded bytes.
    pub async fn finish(mut self) -> Result<String, FetchError> {
        if let Some(mut d) = self.decompressor.take() {
            let fed = (&mut d.feeder).await;
            let status = d.child.wait().await.map_err(FetchError::Read)?;
            let stderr = (&mut d.stderr).await.unwrap_or_default();
            if !status.success() {
                return Err(FetchError::Decompress {
                    program: d.program.to_string(),
                    stderr: stderr.trim().to_string(),
                });
            }
            match fed {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(FetchError::Read(err)),
                Err(err) => return Err(FetchError::Read(std::io::Error::other(err))),
            }
        }
        let hasher = self
            .hasher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Image formats an import can produce a raw disk from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Raw,
    Qcow2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

fn be_u32(head: &[u8], offset: usize) -> Option<u32> {
    let bytes: [u8; 4] = head.get(offset..offset + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn be_u64(head: &[u8], offset: usize) -> Option<u64> {
    let bytes: [u8; 8] = head.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// What an import needs from a qcow2 header (qemu's `docs/interop/qcow2.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Header {
    pub virtual_size: u64,
}

/// Reads and checks a qcow2 header. Only self-contained images are accepted: `qemu-img
/// convert` follows a backing file or an external data file named in the image, which would
/// copy whatever host file that names into the template.
pub fn qcow2_header(head: &[u8]) -> Result<Qcow2Header, FetchError> {
    let bad = |what: &str| FetchError::NotAnImage(format!("the qcow2 image {what}"));
    if !at(head, 0, b"QFI\xfb") {
        return Err(bad("has no qcow2 header"));
    }
    let version = be_u32(head, 4).ok_or_else(|| bad("header is truncated"))?;
    if !(2..=3).contains(&version) {
        return Err(bad(&format!("has unsupported version {version}")));
    }
    let backing_file_offset = be_u64(head, 8).ok_or_else(|| bad("header is truncated"))?;
    if backing_file_offset != 0 {
        return Err(bad(
            "refers to a backing file; only self-contained images are imported (flatten it with qemu-img convert first)",
        ));
    }
    let virtual_size = be_u64(head, 24).ok_or_else(|| bad("header is truncated"))?;
    if virtual_size == 0 {
        return Err(bad("has a virtual size of zero"));
    }
    if version >= 3 {
        let incompatible = be_u64(head, 72).ok_or_else(|| bad("header is truncated"))?;
        // Bit 2: the guest data lives in an external data file.
        if incompatible & (1 << 2) != 0 {
            return Err(bad(
                "keeps its data in an external data file; only self-contained images are imported",
            ));
        }
    }
    Ok(Qcow2Header { virtual_size })
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Decides what the content is from its first bytes.
///
/// qcow2 is recognised by its magic. Raw images have no magic, so `auto` accepts raw content
/// only when it starts like a disk: an MBR boot signature, a GPT header, or an ext2/3/4, XFS,
/// btrfs, squashfs or ISO 9660 filesystem. Anything else (an HTML error page, a text file, an
/// archive) is refused; `raw` imports it as it is. Other disk formats (VMDK, VHD(X), VDI) are
/// refused in every mode: they would boot as garbage.
pub fn detect(head: &[u8], requested: Format) -> Result<Format, FetchError> {
    if head.is_empty() {
        return Err(FetchError::NotAnImage("the source is empty".into()));
    }
    let other = if at(head, 0, b"KDMV") {
        Some("VMDK")
    } else if at(head, 0, b"vhdxfile") {
        Some("VHDX")
    } else if at(head, 0, b"conectix") {
        Some("VHD")
    } else if at(head, 64, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VDI")
    } else {
        None
    };
    let is_qcow2 = at(head, 0, b"QFI\xfb");
    if is_qcow2 && requested != Format::Raw {
        qcow2_header(head)?;
    }
    match requested {
        Format::Qcow2 if is_qcow2 => Ok(Format::Qcow2),
        Format::Qcow2 => Err(FetchError::NotAnImage(
            "the source is not a qcow2 image (no qcow2 header)".into(),
        )),
        _ if other.is_some() => Err(FetchError::NotAnImage(format!(
            "the source is a {} image; only raw and qcow2 are supported",
            other.unwrap_or_default()
        ))),
        Format::Raw => Ok(Format::Raw),
        Format::Auto if is_qcow2 => Ok(Format::Qcow2),
        Format::Auto => {
            let disk_like = at(head, 510, &[0x55, 0xaa])
                || at(head, 512, b"EFI PART")
                || at(head, 1080, &[0x53, 0xef])
                || at(head, 0, b"XFSB")
                || at(head, 0, b"hsqs")
                || at(head, 0x10040, b"_BHRfS_M")
                || at(head, 32769, b"CD001");
            if disk_like {
                Ok(Format::Raw)
            } else {
                Err(FetchError::NotAnImage(
                    "the source is not a recognised disk image (no qcow2 header, partition table or filesystem); pass format RAW to import it as a raw image anyway".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_their_first_bytes() {
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect(&mbr, Format::Auto).unwrap(), Format::Raw);
        let mut qcow2 = vec![0u8; 512];
        qcow2[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        qcow2[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(detect(&qcow2, Format::Auto).unwrap(), Format::Qcow2);
        assert_eq!(qcow2_header(&qcow2).unwrap().virtual_size, 1 << 30);
        let mut backed = qcow2.clone();
        backed[8..16].copy_from_slice(&512u64.to_be_bytes());
        let err = detect(&backed, Format::Qcow2).unwrap_err();
        assert!(err.to_string().contains("backing file"), "{err}");
        let mut external = qcow2.clone();
        external[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(detect(&external, Format::Auto).is_err());
        assert!(detect(b"QFI\xfb\0\0\0\x03", Format::Auto).is_err());
        let html = b"<html><body>404</body></html>".to_vec();
        let err = detect(&html, Format::Auto).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(detect(&html, Format::Raw).unwrap(), Format::Raw);
        assert!(detect(&mbr, Format::Qcow2).is_err());
        assert!(detect(b"KDMV....", Format::Raw).is_err());
        assert!(detect(b"", Format::Raw).is_err());
    }

    #[test]
    fn sources_are_checked_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("img.raw.gz");
        std::fs::write(&inside, b"x").unwrap();
        let url = format!("file://{}", inside.display());
        let (source, compression) = parse_source(&url, Some(dir.path())).unwrap();
        assert!(matches!(source, Source::File(_)));
        assert_eq!(compression, Compression::Gzip);
        assert!(matches!(
            parse_source("file:///etc/passwd", Some(dir.path())),
            Err(FetchError::OutsideImportDir { .. })
        ));
        let escape = format!("file://{}/../../etc/passwd", dir.path().display());
        assert!(parse_source(&escape, Some(dir.path())).is_err());
        assert!(matches!(
            parse_source(&url, None),
            Err(FetchError::NoImportDir)
        ));
        assert!(matches!(
            parse_source("ftp://example.org/x.img", None),
            Err(FetchError::UnsupportedScheme(_))
        ));
        assert!(parse_source("not a url", None).is_err());
        let (source, compression) = parse_source("http://127.0.0.1:1/a.qcow2.zst", None).unwrap();
        assert!(matches!(source, Source::Http(_)));
        assert_eq!(compression, Compression::Zstd);
    }
}
