//! `zfs send` and `zfs receive` as streams: the pieces that SendVolume/ReceiveVolume, backups
//! and restores are built from.
//!
//! Both programs run with argv (no shell) and are killed when their owner is dropped. A send is
//! read in chunks of at most [`CHUNK`] bytes while its SHA-256 is computed. A receive is fed
//! chunk by chunk (the caller's pace: nothing is buffered beyond one chunk) and always holds the
//! last chunk back: `zfs receive` commits a snapshot only after reading the stream's final
//! record, so it cannot keep anything before [`Receiver::finish`] has compared the checksum and
//! byte count with what the sender announced. A mismatch kills it instead.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use crate::command;
use crate::storage::StorageError;

/// The largest chunk a send yields (well below gRPC's 4 MiB message limit).
pub const CHUNK: usize = 1 << 20;

fn spawn_err(what: &str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        context: format!("cannot run {what}"),
        source,
    }
}

/// Collects a child's stderr in the background (so a chatty child never blocks on it).
fn drain_stderr(child: &mut Child) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text).await;
        }
        text.trim().to_string()
    })
}

/// A running `zfs send`.
pub struct Sender {
    child: Child,
    stdout: ChildStdout,
    stderr: JoinHandle<String>,
    hasher: Sha256,
    count: u64,
    what: String,
}

/// What a finished stream was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSum {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub byte_count: u64,
}

impl Sender {
    /// `zfs send [-i base] snapshot`.
    pub fn start(snapshot: &str, base: Option<&str>) -> Result<Self, StorageError> {
        let mut args = vec!["send"];
        if let Some(base) = base {
            args.extend(["-i", base]);
        }
        args.push(snapshot);
        let mut child = command::streaming("zfs", &args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(spawn_err("zfs send"))?;
        let stderr = drain_stderr(&mut child);
        let stdout = child.stdout.take().ok_or_else(|| StorageError::Io {
            context: "zfs send has no stdout".into(),
            source: std::io::Error::other("no stdout"),
        })?;
        Ok(Self {
            child,
            stdout,
            stderr,
            hasher: Sha256::new(),
            count: 0,
            what: format!("zfs {}", args.join(" ")),
        })
    }

    /// The next chunk (up to [`CHUNK`] bytes), `None` at the end of the stream.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        let mut buf = BytesMut::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            let n = self
                .stdout
                .read_buf(&mut buf)
                .await
                .map_err(|source| StorageError::Io {
                    context: format!("cannot read from {}", self.what),
                    source,
                })?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        self.hasher.update(&buf);
        self.count += buf.len() as u64;
        Ok(Some(buf.freeze()))
    }

    /// Waits for `zfs send` to exit (after [`Sender::next_chunk`] returned `None`); its
    /// failure (with stderr) is an error.
    pub async fn finish(mut self) -> Result<StreamSum, StorageError> {
        let status = self.child.wait().await.map_err(|source| StorageError::Io {
            context: format!("cannot wait for {}", self.what),
            source,
        })?;
        let stderr = self.stderr.await.unwrap_or_default();
        if !status.success() {
            return Err(StorageError::Io {
                context: format!("{} failed ({status}): {stderr}", self.what),
                source: std::io::Error::other("zfs send failed"),
            });
        }
        Ok(StreamSum {
            sha256: hex::encode(self.hasher.finalize()),
            byte_count: self.count,
        })
    }
}

/// A running `zfs receive` fed by the caller.
pub struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<String>>,
    held: Option<Bytes>,
    hasher: Sha256,
    count: u64,
    dataset: String,
    /// Set once `zfs receive` refused the stream: the rest is only hashed, so that a damaged
    /// stream is still told apart (DATA_LOSS) from one ZFS does not accept.
    refused: Option<StorageError>,
}

impl Receiver {
    /// `zfs receive [-F] dataset`.
    pub fn start(dataset: &str, force: bool) -> Result<Self, StorageError> {
        let mut args = vec!["receive"];
        if force {
            args.push("-F");
        }
        args.push(dataset);
        let mut child = command::streaming("zfs", &args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(spawn_err("zfs receive"))?;
        let stderr = drain_stderr(&mut child);
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            stderr: Some(stderr),
            held: None,
            hasher: Sha256::new(),
            count: 0,
            dataset: dataset.to_string(),
            refused: None,
        })
    }

    /// Why `zfs receive` refused the stream, if it did.
    pub fn take_refusal(&mut self) -> Option<StorageError> {
        self.refused.take()
    }

    /// Bytes received so far.
    pub fn byte_count(&self) -> u64 {
        self.count
    }

    /// Feeds `data`; the newest chunk is held back until [`Receiver::finish`].
    pub async fn push(&mut self, data: Bytes) -> Result<(), StorageError> {
        if data.is_empty() {
            return Ok(());
        }
        self.hasher.update(&data);
        self.count += data.len() as u64;
        if self.refused.is_some() {
            return Ok(());
        }
        if let Some(previous) = self.held.replace(data) {
            if let Err(err) = self.write(&previous).await {
                self.held = None;
                self.refused = Some(err);
            }
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.refused().await);
        };
        if stdin.write_all(data).await.is_err() {
            // `zfs receive` stopped reading: it refused the stream.
            return Err(self.refused().await);
        }
        Ok(())
    }

    /// The error for a receive that exited or failed: its stderr.
    async fn refused(&mut self) -> StorageError {
        self.stdin = None;
        let status = self.child.wait().await.ok();
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        StorageError::InvalidArgument(format!(
            "zfs receive into {} refused the stream after {} bytes ({}): {}",
            self.dataset,
            self.count,
            status.map_or_else(|| "no status".to_string(), |s| s.to_string()),
            if stderr.is_empty() {
                "no message"
            } else {
                &stderr
            }
        ))
    }

    /// Compares the stream with what the sender announced; only when both the SHA-256 and
    /// the byte count match is the held-back chunk written and `zfs receive` let finish.
    /// Otherwise it is killed (DATA_LOSS) and nothing was committed.
    pub async fn finish(
        mut self,
        expected_sha256: &str,
        expected_count: u64,
    ) -> Result<StreamSum, StorageError> {
        let sha256 = hex::encode(self.hasher.clone().finalize());
        if !sha256.eq_ignore_ascii_case(expected_sha256.trim()) || self.count != expected_count {
            let mut message = format!(
                "stream checksum mismatch: the sender announced {expected_count} bytes with sha256 {expected_sha256}, {} bytes with sha256 {sha256} arrived; nothing was kept",
                self.count
            );
            if let Some(refused) = self.refused.take() {
                message.push_str(&format!(" ({refused})"));
            }
            self.abort().await;
            return Err(StorageError::DataLoss(message));
        }
        if let Some(refused) = self.refused.take() {
            self.abort().await;
            return Err(refused);
        }
        if let Some(last) = self.held.take() {
            self.write(&last).await?;
        }
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        let status = self.child.wait().await.map_err(|source| StorageError::Io {
            context: "cannot wait for zfs receive".into(),
            source,
        })?;
        if !status.success() {
            self.stdin = None;
            let stderr = match self.stderr.take() {
                Some(task) => task.await.unwrap_or_default(),
                None => String::new(),
            };
            return Err(StorageError::InvalidArgument(format!(
                "zfs receive into {} refused the stream ({status}): {stderr}",
                self.dataset
            )));
        }
        Ok(StreamSum {
            sha256,
            byte_count: self.count,
        })
    }

    /// Kills `zfs receive` before it saw the end of the stream (nothing is committed).
    pub async fn abort(mut self) {
        self.held = None;
        self.stdin = None;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(task) = self.stderr.take() {
            task.abort();
        }
    }
}

/// Lowercase hex SHA-256 and size of a file, read in chunks.
pub async fn hash_file(path: &std::path::Path) -> std::io::Result<StreamSum> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut count = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        count += n as u64;
    }
    Ok(StreamSum {
        sha256: hex::encode(hasher.finalize()),
        byte_count: count,
    })
}
