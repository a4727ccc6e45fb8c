//! `AuditLogger`: how every daemon writes to mvirt-log without ever waiting for it.
//!
//! `log()` stamps the entry with the current time, a unique dedup key and the trace id of the
//! work it runs for (`mvirt_common::trace::current`), emits it as a tracing
//! event, and hands it to a background task through a bounded channel (`try_send`: the caller
//! never blocks). The task sends entries in batches with `LogBatch`: after the first entry of a
//! batch it waits up to [`LINGER`] (25 ms) for more, so a steady trickle of entries costs one
//! call — one transaction and fsync in mvirt-log — per 25 ms instead of one per entry (a `flush`
//! or a full batch ends the wait). While mvirt-log is unreachable it keeps them in a bounded
//! buffer and retries with back-off, so entries logged during an outage are delivered once it
//! comes back. The dedup key makes a retry after a lost
//! answer harmless: the server stores each key once. Entries that do not fit (channel or buffer
//! full) are counted, reported by [`AuditLogger::dropped`], and announced to mvirt-log with a
//! WARN entry as soon as it is reachable again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::level::Level;
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::{LogBatchRequest, LogEntry};

/// Entries waiting in the channel between callers and the sender task.
const CHANNEL_CAPACITY: usize = 4096;
/// Entries the sender task keeps while mvirt-log is unreachable.
const BUFFER_CAPACITY: usize = 100_000;
/// Entries per `LogBatch` call.
const BATCH_SIZE: usize = 1000;
/// How long the sender waits after the first entry of a batch for more to join it. Callers
/// never wait for delivery, so this only delays when an entry becomes visible in mvirt-log.
pub const LINGER: Duration = Duration::from_millis(25);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long `flush` waits by default.
const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

enum Message {
    Entry(LogEntry),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    component: String,
    sender: Option<mpsc::Sender<Message>>,
    dropped: AtomicU64,
    delivered: AtomicU64,
    batches: AtomicU64,
}

/// A cheap, cloneable handle for writing audit entries. See the module docs.
#[derive(Clone)]
pub struct AuditLogger {
    shared: Arc<Shared>,
}

/// Creates a logger for `component` that delivers to the mvirt-log at `endpoint`
/// (`unix:/run/mvirt/log.sock`, or `http://host:port` when it listens on TCP). An empty endpoint gives a logger that only emits tracing events.
/// Must be called inside a tokio runtime (it spawns the sender task).
pub fn create_audit_logger(endpoint: &str, component: &str) -> AuditLogger {
    AuditLogger::new(endpoint, component)
}

impl AuditLogger {
    /// See [`create_audit_logger`].
    pub fn new(endpoint: &str, component: &str) -> Self {
        let sender = if endpoint.trim().is_empty() {
            None
        } else {
            match mvirt_common::grpc::client_endpoint(endpoint) {
                Ok(endpoint) => {
                    let channel = endpoint
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(10))
                        .connect_lazy();
                    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                    Some((tx, rx, channel))
                }
                Err(err) => {
                    tracing::error!(endpoint, error = %err, "invalid mvirt-log endpoint: audit entries go to tracing only");
                    None
                }
            }
        };
        let shared = Arc::new(Shared {
            component: component.to_string(),
            sender: sender.as_ref().map(|(tx, _, _)| tx.clone()),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        if let Some((_, rx, channel)) = sender {
            let task = SenderTask {
                client: LogServiceClient::new(channel),
                receiver: rx,
                buffer: VecDeque::new(),
                flush_waiters: Vec::new(),
                shared: shared.clone(),
                reported_dropped: 0,
            };
            tokio::spawn(task.run());
        }
        Self { shared }
    }

    /// A logger that only emits tracing events (tests, tools).
    pub fn tracing_only(component: &str) -> Self {
        Self::new("", component)
    }

    pub fn component(&self) -> &str {
        &self.shared.component
    }

    /// Records an entry. Never blocks; see the module docs for what happens under pressure.
    pub fn log(&self, level: Level, message: impl Into<String>, object_ids: &[&str]) {
        let message = message.into();
        emit_tracing(level, &self.shared.component, &message, object_ids);
        let Some(sender) = &self.shared.sender else {
            return;
        };
        let entry = LogEntry {
            id: String::new(),
            timestamp_ns: now_ns(),
            message,
            level: level.code(),
            component: self.shared.component.clone(),
            object_ids: object_ids.iter().map(|s| s.to_string()).collect(),
            // Time-ordered (UUIDv7): mvirt-log's unique index on the key then grows at its end
            // instead of taking every insert at a random page.
            dedup_key: uuid::Uuid::now_v7().to_string(),
            trace_id: mvirt_common::trace::current().unwrap_or_default(),
        };
        if sender.try_send(Message::Entry(entry)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A state change.
    pub fn audit(&self, message: impl Into<String>, object_ids: &[&str]) {
        self.log(Level::Audit, message, object_ids)
    }
    pub fn info(&self, message: impl Into<String>, object_ids: &[&str]) {
        self.log(Level::Info, message, object_ids)
    }
    pub fn warn(&self, message: impl Into<String>, object_ids: &[&str]) {
        self.log(Level::Warn, message, object_ids)
    }
    pub fn error(&self, message: impl Into<String>, object_ids: &[&str]) {
        self.log(Level::Error, message, object_ids)
    }
    pub fn debug(&self, message: impl Into<String>, object_ids: &[&str]) {
        self.log(Level::Debug, message, object_ids)
    }

    /// Entries lost because the buffer was full, since the logger was created.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Entries stored by mvirt-log, since the logger was created.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// `LogBatch` calls that stored entries, since the logger was created.
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Waits (up to 10 s) until everything logged before the call is stored. Returns whether it
    /// was. Call on shutdown.
    pub async fn flush(&self) -> bool {
        self.flush_within(DEFAULT_FLUSH_TIMEOUT).await
    }

    /// [`flush`](Self::flush) with an explicit limit.
    pub async fn flush_within(&self, timeout: Duration) -> bool {
        let Some(sender) = &self.shared.sender else {
            return true;
        };
        let (tx, rx) = oneshot::channel();
        let wait = async { sender.send(Message::Flush(tx)).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

struct SenderTask {
    client: LogServiceClient<Channel>,
    receiver: mpsc::Receiver<Message>,
    buffer: VecDeque<LogEntry>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    shared: Arc<Shared>,
    reported_dropped: u64,
}

impl SenderTask {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.buffer.is_empty() {
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                match self.receiver.recv().await {
                    Some(message) => self.accept(message),
                    // Every logger handle is gone and nothing is pending.
                    None => return,
                }
                self.linger().await;
            }
            while let Ok(message) = self.receiver.try_recv() {
                self.accept(message);
            }
            self.add_drop_report();
            if self.buffer.is_empty() {
                continue;
            }
            let batch: Vec<LogEntry> = self.buffer.iter().take(BATCH_SIZE).cloned().collect();
            let count = batch.len();
            match self
                .client
                .log_batch(LogBatchRequest { entries: batch })
                .await
            {
                Ok(_) => {
                    self.buffer.drain(..count);
                    self.shared
                        .delivered
                        .fetch_add(count as u64, Ordering::Relaxed);
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    backoff = MIN_BACKOFF;
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    // The server will never accept this batch; keep the rest flowing.
                    tracing::error!(error = %status, count, "mvirt-log rejected audit entries");
                    self.buffer.drain(..count);
                    self.shared
                        .dropped
                        .fetch_add(count as u64, Ordering::Relaxed);
                }
                Err(status) => {
                    tracing::debug!(error = %status, pending = self.buffer.len(), "mvirt-log unreachable, retrying");
                    // Keep draining callers while waiting so they do not see a full channel.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            message = self.receiver.recv() => match message {
                                Some(message) => self.accept(message),
                                None => break,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Collects more entries for the batch that just began, for at most [`LINGER`]; returns at
    /// once when a flush waits, the batch is full or every logger handle is gone.
    async fn linger(&mut self) {
        let until = tokio::time::sleep(LINGER);
        tokio::pin!(until);
        while self.flush_waiters.is_empty() && self.buffer.len() < BATCH_SIZE {
            tokio::select! {
                _ = &mut until => return,
                message = self.receiver.recv() => match message {
                    Some(message) => self.accept(message),
                    None => return,
                },
            }
        }
    }

    fn accept(&mut self, message: Message) {
        match message {
            Message::Entry(entry) => {
                if self.buffer.len() >= BUFFER_CAPACITY {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.buffer.push_back(entry);
                }
            }
            Message::Flush(waiter) => self.flush_waiters.push(waiter),
        }
    }

    /// Queues one WARN entry saying how many entries were lost since the last report.
    fn add_drop_report(&mut self) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_dropped && self.buffer.len() < BUFFER_CAPACITY {
            let lost = dropped - self.reported_dropped;
            self.reported_dropped = dropped;
            self.buffer.push_back(LogEntry {
                id: String::new(),
                timestamp_ns: now_ns(),
                message: format!("audit logger dropped {lost} entries: buffer full"),
                level: Level::Warn.code(),
                component: self.shared.component.clone(),
                object_ids: Vec::new(),
                dedup_key: uuid::Uuid::now_v7().to_string(),
                trace_id: String::new(),
            });
        }
    }
}

fn emit_tracing(level: Level, component: &str, message: &str, object_ids: &[&str]) {
    let enabled = match level {
        Level::Audit | Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
    };
    if !enabled {
        // Nobody records it: skip joining the ids (every audited write passes here).
        return;
    }
    let ids = object_ids.join(",");
    match level {
        Level::Audit => tracing::info!(audit = true, component, objects = %ids, "{message}"),
        Level::Info => tracing::info!(component, objects = %ids, "{message}"),
        Level::Warn => tracing::warn!(component, objects = %ids, "{message}"),
        Level::Error => tracing::error!(component, objects = %ids, "{message}"),
        Level::Debug => tracing::debug!(component, objects = %ids, "{message}"),
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
