//! `LogService`: translates gRPC calls into store operations.
//!
//! Writes go through one writer thread that commits whatever arrived together in a single
//! transaction (group commit), answers each caller once its entries are durable, and then
//! publishes the new entries on a broadcast channel. `Query` with `follow` subscribes to that
//! channel *before* reading its page, remembers the page's watermark (the newest id in the same
//! snapshot) and then delivers only live entries above it: nothing is missed and nothing is sent
//! twice. A subscriber that falls behind the channel catches up from the database by id.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use mvirt_common::error::{to_status, ErrorKind, HasErrorKind};
use mvirt_common::version::VersionInfo;
use mvirt_common::Shutdown;

use crate::level::Level;
use crate::proto::log_service_server::LogService;
use crate::proto::{self, query_response, LogEntry, PageEnd, QueryResponse};
use crate::store::{
    Cursor, Filter, NewEntry, Order, Store, StoreError, StoredEntry, Written, MAX_LIMIT,
};

/// Longest message accepted (bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most entries in one `LogBatch`.
pub const MAX_BATCH: usize = 10_000;
/// Most entries one group commit collects.
const GROUP_COMMIT_ENTRIES: usize = 20_000;
const LIVE_CHANNEL: usize = 8192;
const FOLLOW_CATCH_UP_PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log writer has stopped")]
    WriterGone,
    #[error("writing entries failed: {0}")]
    Write(String),
}

impl HasErrorKind for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Invalid(_) => ErrorKind::InvalidArgument,
            ServiceError::Store(e) => e.kind(),
            ServiceError::WriterGone => ErrorKind::Unavailable,
            ServiceError::Write(_) => ErrorKind::Internal,
        }
    }
}
mvirt_common::impl_status_from!(ServiceError);

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(message.into())
}

struct WriteRequest {
    entries: Vec<NewEntry>,
    reply: oneshot::Sender<Result<Vec<Written>, String>>,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    requests: mpsc::Sender<WriteRequest>,
}

impl Writer {
    /// Starts the writer thread; it stops when every handle is dropped.
    pub fn spawn(store: Arc<Store>, live: broadcast::Sender<Arc<StoredEntry>>) -> Writer {
        let (requests, mut receiver) = mpsc::channel::<WriteRequest>(1024);
        std::thread::Builder::new()
            .name("mvirt-log-writer".into())
            .spawn(move || {
                while let Some(first) = receiver.blocking_recv() {
                    let mut group = vec![first];
                    let mut size = group[0].entries.len();
                    while size < GROUP_COMMIT_ENTRIES {
                        match receiver.try_recv() {
                            Ok(next) => {
                                size += next.entries.len();
                                group.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    commit_group(&store, &live, group);
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the log writer thread"));
        Writer { requests }
    }

    /// Writes `entries` atomically; returns once they are durable.
    pub async fn write(&self, entries: Vec<NewEntry>) -> Result<Vec<Written>, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(WriteRequest { entries, reply })
            .await
            .map_err(|_| ServiceError::WriterGone)?;
        answer
            .await
            .map_err(|_| ServiceError::WriterGone)?
            .map_err(ServiceError::Write)
    }
}

/// Commits a group of requests in one transaction; if that fails, each request on its own so
/// that one bad request cannot fail the others.
fn commit_group(
    store: &Store,
    live: &broadcast::Sender<Arc<StoredEntry>>,
    group: Vec<WriteRequest>,
) {
    let all: Vec<NewEntry> = group.iter().flat_map(|r| r.entries.clone()).collect();
    match store.insert(&all) {
        Ok(written) => {
            publish(live, &all, &written);
            let mut offset = 0;
            for request in group {
                let n = request.entries.len();
                let _ = request.reply.send(Ok(written[offset..offset + n].to_vec()));
                offset += n;
            }
        }
        Err(_) if group.len() > 1 => {
            for request in group {
                let result = store.insert(&request.entries);
                if let Ok(written) = &result {
                    publish(live, &request.entries, written);
                }
                let _ = request
                    .reply
                    .send(result.map_err(|e| mvirt_common::error::error_chain(&e)));
            }
        }
        Err(err) => {
            let message = mvirt_common::error::error_chain(&err);
            tracing::error!(error = %message, "writing log entries failed");
            for request in group {
                let _ = request.reply.send(Err(message.clone()));
            }
        }
    }
}

fn publish(live: &broadcast::Sender<Arc<StoredEntry>>, entries: &[NewEntry], written: &[Written]) {
    crate::metrics::written(entries, written);
    for (entry, w) in entries.iter().zip(written) {
        if w.new {
            let _ = live.send(Arc::new(StoredEntry {
                id: w.id,
                timestamp_ns: entry.timestamp_ns,
                message: entry.message.clone(),
                level: entry.level,
                component: entry.component.clone(),
                object_ids: entry.object_ids.clone(),
                trace_id: entry.trace_id.clone(),
            }));
        }
    }
}

/// The `LogService` implementation.
pub struct LogServiceImpl {
    store: Arc<Store>,
    writer: Writer,
    live: broadcast::Sender<Arc<StoredEntry>>,
    shutdown: Shutdown,
}

impl LogServiceImpl {
    pub fn new(store: Arc<Store>, shutdown: Shutdown) -> Self {
        let (live, _) = broadcast::channel(LIVE_CHANNEL);
        let writer = Writer::spawn(store.clone(), live.clone());
        Self {
            store,
            writer,
            live,
            shutdown,
        }
    }
}

/// Validates a wire entry and turns it into a store entry.
fn new_entry(entry: LogEntry, now_ns: i64) -> Result<NewEntry, ServiceError> {
    if entry.message.trim().is_empty() {
        return Err(invalid("message must not be empty"));
    }
    if entry.message.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
            entry.message.len()
        )));
    }
    let level = Level::from_code(entry.level).ok_or_else(|| {
        invalid(format!(
            "unknown level {}: use AUDIT, INFO, WARN, ERROR or DEBUG",
            entry.level
        ))
    })?;
    if entry.component.trim().is_empty() {
        return Err(invalid("component must not be empty"));
    }
    if entry.timestamp_ns < 0 {
        return Err(invalid("timestamp_ns must not be negative"));
    }
    if let Some(bad) = entry
        .object_ids
        .iter()
        .find(|o| o.is_empty() || o.len() > 256)
    {
        return Err(invalid(format!(
            "object id {bad:?} must be 1 to 256 characters"
        )));
    }
    if !entry.trace_id.is_empty() && !mvirt_common::trace::is_valid(&entry.trace_id) {
        return Err(invalid(format!(
            "trace_id {:?} must be 1 to {} characters of A-Z a-z 0-9 . _ : -",
            entry.trace_id,
            mvirt_common::trace::MAX_LEN
        )));
    }
    Ok(NewEntry {
        timestamp_ns: if entry.timestamp_ns == 0 {
            now_ns
        } else {
            entry.timestamp_ns
        },
        message: entry.message,
        level,
        component: entry.component,
        object_ids: entry.object_ids,
        dedup_key: Some(entry.dedup_key).filter(|k| !k.is_empty()),
        trace_id: Some(entry.trace_id).filter(|t| !t.is_empty()),
    })
}

fn to_wire(entry: &StoredEntry) -> LogEntry {
    LogEntry {
        id: entry.id.to_string(),
        timestamp_ns: entry.timestamp_ns,
        message: entry.message.clone(),
        level: entry.level.code(),
        component: entry.component.clone(),
        object_ids: entry.object_ids.clone(),
        dedup_key: String::new(),
        trace_id: entry.trace_id.clone().unwrap_or_default(),
    }
}

/// A validated query.
struct ParsedQuery {
    filter: Filter,
    order: Order,
    limit: u32,
    cursor: Option<Cursor>,
    follow: bool,
}

fn parse_query(q: proto::QueryRequest) -> Result<ParsedQuery, ServiceError> {
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {}",
            q.limit
        )));
    }
    let mut levels = Vec::new();
    for code in &q.levels {
        levels
            .push(Level::from_code(*code).ok_or_else(|| invalid(format!("unknown level {code}")))?);
    }
    let since = (q.since_ns != 0).then_some(q.since_ns);
    let until = (q.until_ns != 0).then_some(q.until_ns);
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(invalid(format!(
                "time range is empty or reversed: since_ns {s} must be before until_ns {u}"
            )));
        }
    }
    let order = match proto::Order::try_from(q.order) {
        Ok(proto::Order::NewestFirst) => Order::NewestFirst,
        Ok(proto::Order::OldestFirst) => Order::OldestFirst,
        Err(_) => return Err(invalid(format!("unknown order {}", q.order))),
    };
    let cursor = if q.cursor.is_empty() {
        None
    } else {
        Some(Cursor::decode(&q.cursor)?)
    };
    if cursor.is_some_and(|c| c.order != order) {
        return Err(StoreError::CursorOrderMismatch.into());
    }
    Ok(ParsedQuery {
        filter: Filter {
            object_id: Some(q.object_id).filter(|s| !s.is_empty()),
            component: Some(q.component).filter(|s| !s.is_empty()),
            levels,
            since_ns: since,
            until_ns: until,
            contains: Some(q.contains).filter(|s| !s.is_empty()),
            trace_id: Some(q.trace_id).filter(|s| !s.is_empty()),
        },
        order,
        limit: q.limit,
        cursor,
        follow: q.follow,
    })
}

fn entry_item(entry: &StoredEntry) -> QueryResponse {
    QueryResponse {
        item: Some(query_response::Item::Entry(to_wire(entry))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| to_status(&ServiceError::Store(e))),
        Err(e) => Err(Status::internal(format!("store task failed: {e}"))),
    }
}

#[tonic::async_trait]
impl LogService for LogServiceImpl {
    async fn get_version(
        &self,
        _request: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::GetVersionResponse>, Status> {
        let v = VersionInfo::new("mvirt-log", env!("CARGO_PKG_VERSION"));
        Ok(Response::new(proto::GetVersionResponse {
            component: v.component,
            version: v.version,
            git_commit: v.git_commit,
        }))
    }

    async fn log(
        &self,
        request: Request<proto::LogRequest>,
    ) -> Result<Response<proto::LogResponse>, Status> {
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| to_status(&invalid("entry is required")))?;
        let entry = new_entry(entry, crate::audit::now_ns())?;
        let written = self.writer.write(vec![entry]).await?;
        let id = written
            .first()
            .map(|w| w.id.to_string())
            .unwrap_or_default();
        Ok(Response::new(proto::LogResponse { id }))
    }

    async fn log_batch(
        &self,
        request: Request<proto::LogBatchRequest>,
    ) -> Result<Response<proto::LogBatchResponse>, Status> {
        let entries = request.into_inner().entries;
        if entries.is_empty() {
            return Err(to_status(&invalid("a batch needs at least one entry")));
        }
        if entries.len() > MAX_BATCH {
            return Err(to_status(&invalid(format!(
                "a batch holds at most {MAX_BATCH} entries, got {}",
                entries.len()
            ))));
        }
        let now = crate::audit::now_ns();
        let entries = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                new_entry(e, now).map_err(|err| match err {
                    ServiceError::Invalid(m) => invalid(format!("entry {i}: {m}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let written = self.writer.write(entries).await?;
        Ok(Response::new(proto::LogBatchResponse {
            ids: written.iter().map(|w| w.id.to_string()).collect(),
        }))
    }

    type QueryStream = ReceiverStream<Result<QueryResponse, Status>>;

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let query = parse_query(request.into_inner())?;
        // Subscribe before reading, so entries written meanwhile reach the live part.
        let live = query.follow.then(|| self.live.subscribe());
        let store = self.store.clone();
        let (filter, order, limit, cursor) =
            (query.filter.clone(), query.order, query.limit, query.cursor);
        let page = blocking(move || store.query(&filter, order, limit, cursor)).await?;

        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            for entry in &page.entries {
                if tx.send(Ok(entry_item(entry))).await.is_err() {
                    return;
                }
            }
            let end = QueryResponse {
                item: Some(query_response::Item::PageEnd(PageEnd {
                    next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
                })),
            };
            if tx.send(Ok(end)).await.is_err() {
                return;
            }
            if let Some(live) = live {
                follow(live, page.watermark, query.filter, store, tx, shutdown).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Delivers live entries with ids above `watermark` until the client goes away or the server
/// shuts down.
async fn follow(
    mut live: broadcast::Receiver<Arc<StoredEntry>>,
    watermark: i64,
    filter: Filter,
    store: Arc<Store>,
    tx: mpsc::Sender<Result<QueryResponse, Status>>,
    shutdown: Shutdown,
) {
    let mut last_seen = watermark;
    loop {
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
            _ = shutdown.wait() => return,
        };
        match received {
            Ok(entry) => {
                if entry.id <= last_seen {
                    continue;
                }
                last_seen = entry.id;
                if filter.matches(&entry) && tx.send(Ok(entry_item(&entry))).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too slow for the channel: read what was missed from the database.
                loop {
                    let (store, filter_copy) = (store.clone(), filter.clone());
                    let after = last_seen;
                    let missed = match blocking(move || {
                        store.written_after(&filter_copy, after, FOLLOW_CATCH_UP_PAGE)
                    })
                    .await
                    {
                        Ok(missed) => missed,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    let done = missed.len() < FOLLOW_CATCH_UP_PAGE as usize;
                    for entry in &missed {
                        last_seen = last_seen.max(entry.id);
                        if tx.send(Ok(entry_item(entry))).await.is_err() {
                            return;
                        }
                    }
                    if done {
                        break;
                    }
                }
                // Live entries still in the channel with ids up to `last_seen` were delivered by
                // the catch-up read and are skipped above.
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(message: &str, level: i32) -> LogEntry {
        LogEntry {
            message: message.into(),
            level,
            component: "test".into(),
            ..LogEntry::default()
        }
    }

    #[test]
    fn entries_are_validated_with_clear_messages() {
        let err = new_entry(wire("  ", 1), 1).unwrap_err();
        assert!(err.to_string().contains("message must not be empty"));
        let err = new_entry(wire("x", 99), 1).unwrap_err();
        assert!(err.to_string().contains("unknown level 99"));
        let err = new_entry(wire("x", 0), 1).unwrap_err();
        assert!(err.to_string().contains("unknown level 0"));
        let mut e = wire("x", 1);
        e.component.clear();
        assert!(new_entry(e, 1).is_err());
        let e = new_entry(wire("ok", 1), 42).unwrap();
        assert_eq!(e.timestamp_ns, 42);
        assert_eq!(e.trace_id, None);
        let mut traced = wire("ok", 1);
        traced.trace_id = "req-1".into();
        assert_eq!(
            new_entry(traced, 1).unwrap().trace_id.as_deref(),
            Some("req-1")
        );
        let mut bad = wire("ok", 1);
        bad.trace_id = "not a token".into();
        let err = new_entry(bad, 1).unwrap_err();
        assert!(err.to_string().contains("trace_id"), "{err}");
    }

    #[test]
    fn queries_are_validated() {
        let base = proto::QueryRequest {
            limit: 10,
            ..Default::default()
        };
        assert!(parse_query(base.clone()).is_ok());
        for bad in [
            proto::QueryRequest {
                limit: 0,
                ..base.clone()
            },
            proto::QueryRequest {
                limit: MAX_LIMIT + 1,
                ..base.clone()
            },
            proto::QueryRequest {
                since_ns: 10,
                until_ns: 5,
                ..base.clone()
            },
            proto::QueryRequest {
                cursor: "garbage!".into(),
                ..base.clone()
            },
            proto::QueryRequest {
                levels: vec![17],
                ..base.clone()
            },
            proto::QueryRequest {
                order: 9,
                ..base.clone()
            },
        ] {
            let status: Status = parse_query(bad).err().map(Status::from).unwrap();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
}
