//! Per-container log files: stdout and stderr, one line per record, with timestamps.
//!
//! The format is the CRI one, so the files are readable with the usual tools:
//! `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <F|P> <content>`, where `P` marks a
//! partial line (a line longer than [`MAX_LINE`] is split). One file per container, appended
//! across restarts. Readers follow it through a counter of written bytes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::watch;

/// Longest line stored as one record.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record read back from a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub timestamp_ns: i64,
    pub stream: String,
    pub content: Vec<u8>,
}

/// The writer side of a container's log file.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    written: watch::Sender<u64>,
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let (written, _) = watch::channel(len);
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            written,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record.
    pub fn append(&self, stream: Stream, content: &[u8], partial: bool) {
        let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut record = Vec::with_capacity(content.len() + 48);
        record.extend_from_slice(ts.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.extend_from_slice(if partial { b" P " } else { b" F " });
        record.extend_from_slice(content);
        record.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&record) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write container log");
            return;
        }
        drop(file);
        self.written.send_modify(|n| *n += record.len() as u64);
    }

    /// A receiver that changes whenever a record is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Copies `reader` into the log, line by line, on a thread until EOF.
    pub fn capture(
        self: &Arc<Self>,
        stream: Stream,
        reader: impl Read + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) => return,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            log.append(stream, &line, false);
                        } else {
                            // Cut at MAX_LINE, or the last bytes before EOF.
                            log.append(stream, &line, line.len() >= MAX_LINE);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        })
    }
}

/// Parses one line of a log file.
pub fn parse_record(line: &[u8]) -> Option<LogRecord> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let _tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let timestamp_ns = DateTime::parse_from_rfc3339(ts)
        .ok()?
        .with_timezone(&Utc)
        .timestamp_nanos_opt()?;
    Some(LogRecord {
        timestamp_ns,
        stream: stream.to_string(),
        content: content.to_vec(),
    })
}

/// Reads the complete records from byte `offset` on; returns them and the offset after the
/// last complete line.
pub fn read_records(path: &Path, offset: u64) -> std::io::Result<(Vec<LogRecord>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    let records = bytes[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_record)
        .collect();
    Ok((records, offset + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_timestamps_and_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(&dir.path().join("c.log")).unwrap();
        log.append(Stream::Stdout, b"hello world", false);
        log.append(Stream::Stderr, b"oops", false);
        let (records, offset) = read_records(log.path(), 0).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].content, b"hello world");
        assert_eq!(records[1].stream, "stderr");
        assert!(records[0].timestamp_ns > 0);
        assert!(records[0].timestamp_ns <= records[1].timestamp_ns);

        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.push(b'\n');
        log.capture(Stream::Stdout, std::io::Cursor::new(input))
            .join()
            .unwrap();
        let (more, _) = read_records(log.path(), offset).unwrap();
        assert_eq!(more.len(), 2);
        assert_eq!(more[0].content.len() + more[1].content.len(), long.len());
    }
}
