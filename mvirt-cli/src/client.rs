//! The REST client: one `ApiClient` per command, JSON in and out, the API's error envelope
//! (`{"error":{"code","message","details"}}`) turned into a typed [`ApiError`] that knows its
//! exit code, and a small Server-Sent-Events reader for `/v1/events`.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::trust::Trust;

/// Process exit codes (documented in the README and in `mvirt --help`).
pub mod exit {
    pub const OK: i32 = 0;
    /// The API refused or failed the request (validation, internal error, no leader, ...).
    pub const API: i32 = 1;
    /// Bad command line (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    /// Already exists, in use, wrong state, or an `If-Match` precondition failed.
    pub const CONFLICT: i32 = 4;
    /// The API cannot be reached, or rejected the credentials.
    pub const UNREACHABLE_OR_AUTH: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error envelope (or at least an error status).
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    #[error("cannot reach the mvirt API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server's certificate is not from the trusted cluster CA.
    #[error("{0}")]
    Tls(String),
    #[error("the API sent a response that is not valid JSON: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Usage(String),
    /// Refused before any request: the object is not in a state the command can change (a
    /// volume to detach that is not attached, a NIC to attach that already is).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Other(String),
}

impl ApiError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ApiError::Api { status, code, .. } => match (*status, code.as_str()) {
                (404, _) | (_, "not_found") => exit::NOT_FOUND,
                (409, _) | (412, _) | (_, "conflict") | (_, "already_exists") => exit::CONFLICT,
                (401, _) | (403, _) => exit::UNREACHABLE_OR_AUTH,
                _ => exit::API,
            },
            ApiError::Unreachable { .. } | ApiError::Tls(_) => exit::UNREACHABLE_OR_AUTH,
            ApiError::Usage(_) | ApiError::Config(_) => exit::USAGE,
            ApiError::Conflict(_) => exit::CONFLICT,
            ApiError::BadResponse(_) | ApiError::Other(_) => exit::API,
        }
    }

    /// The message shown to the user: the API's own message, plus a hint where one helps.
    pub fn display_message(&self) -> String {
        match self {
            ApiError::Api {
                status,
                code,
                message,
                details,
            } => {
                let mut s = format!("{message} ({code}, HTTP {status})");
                if let Some(obj) = details.as_object().filter(|o| !o.is_empty()) {
                    for (k, v) in obj {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        s.push_str(&format!("\n  {k}: {v}"));
                    }
                }
                if *status == 401 {
                    s.push_str("\nhint: run `mvirt login` or set MVIRT_TOKEN");
                }
                s
            }
            other => other.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.exit_code() == exit::NOT_FOUND
    }
}

/// Turns an error response body into [`ApiError::Api`], tolerating bodies that are not the
/// envelope (a proxy's HTML page, an empty body).
pub fn error_from_body(status: u16, body: &str) -> ApiError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = field("code").unwrap_or_else(|| default_code(status).to_string());
    let message = field("message").unwrap_or_else(|| {
        let trimmed = body.trim();
        if trimmed.is_empty() {
            format!("HTTP {status}")
        } else {
            trimmed.chars().take(300).collect()
        }
    });
    let details = err
        .and_then(|e| e.get("details"))
        .cloned()
        .unwrap_or(Value::Null);
    ApiError::Api {
        status,
        code,
        message,
        details,
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "conflict",
        412 => "precondition_failed",
        413 => "payload_too_large",
        503 => "no_leader",
        _ => "internal",
    }
}

/// A client bound to one API URL, token and project. An `https://` client verifies the server
/// against exactly one CA ([`Trust`]): the pinned cluster CA or `--ca-file`.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http(s)://host:port` without a trailing slash.
    pub base: String,
    token: Option<String>,
    pub project: String,
    /// Sent as `If-Match: "<revision>"` on updates, deletes and resizes when set.
    pub if_match: Option<u64>,
    /// The CA an `https://` API is verified against (`None` for `http://`).
    trust: Option<Trust>,
    /// The TLS configuration built from `trust` (also used for WebSockets).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `--show-trace`: print each answer's `X-Request-Id` on stderr.
    pub show_trace: bool,
}

impl ApiClient {
    /// A client of an `http://` API (or of an `https://` one when the URL is plain HTTP for a
    /// test double); `https://` needs [`ApiClient::with_trust`].
    pub fn new(base: &str, token: Option<String>, project: &str) -> Result<ApiClient, ApiError> {
        ApiClient::with_trust(base, token, project, None)
    }

    /// A client that verifies an `https://` API against `trust`. An `https://` URL without a
    /// CA is refused with a hint at `mvirt login` (the CLI does not fall back to the public web
    /// PKI: the cluster's certificates come from its own CA).
    pub fn with_trust(
        base: &str,
        token: Option<String>,
        project: &str,
        trust: Option<Trust>,
    ) -> Result<ApiClient, ApiError> {
        let base = base.trim_end_matches('/').to_string();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("mvirt-cli/", env!("CARGO_PKG_VERSION")));
        let mut tls = None;
        if base.starts_with("https://") {
            let Some(trust) = &trust else {
                return Err(ApiError::Usage(format!(
                    "no cluster CA is trusted for {base}: run `mvirt login {base}` (it shows the \
                     CA's fingerprint and pins it), or pass --ca-file (MVIRT_CA_FILE)"
                )));
            };
            let config = trust.client_config()?;
            builder = builder.use_preconfigured_tls((*config).clone());
            tls = Some(config);
        } else if !base.starts_with("http://") {
            return Err(ApiError::Usage(format!(
                "the API URL {base:?} must start with https:// (or http:// for an API run with \
                 --insecure-plaintext)"
            )));
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(ApiClient {
            http,
            base,
            token,
            project: project.to_string(),
            if_match: None,
            trust,
            tls,
            show_trace: false,
        })
    }

    /// The CA this client verifies the API against.
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_ref()
    }

    /// The connector for a WebSocket to this API: TLS against the same CA for `https://`.
    pub fn ws_connector(&self) -> Option<tokio_tungstenite::Connector> {
        self.tls.clone().map(tokio_tungstenite::Connector::Rustls)
    }

    /// A connection failure as the user should see it: when the TLS handshake failed because
    /// the server presents another CA than the trusted one, a message naming both fingerprints.
    pub async fn connect_error(&self, url: &str, reason: String) -> ApiError {
        if let Some(trust) = &self.trust {
            if crate::trust::is_certificate_error(&reason) {
                if let Some(message) = crate::trust::mismatch(&self.base, trust).await {
                    return ApiError::Tls(message);
                }
            }
        }
        ApiError::Unreachable {
            url: url.to_string(),
            reason,
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    fn conditional(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.if_match {
            Some(rev) => rb.header("If-Match", format!("\"{rev}\"")),
            None => rb,
        }
    }

    async fn unreachable(&self, e: reqwest::Error) -> ApiError {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        self.connect_error(&self.base, reason).await
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let resp = match rb.send().await {
            Ok(resp) => resp,
            Err(e) => return Err(self.unreachable(e).await),
        };
        let status = resp.status();
        if self.show_trace {
            if let Some(id) = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
            {
                eprintln!("request-id: {id}");
            }
        }
        let body = match resp.text().await {
            Ok(body) => body,
            Err(e) => return Err(self.unreachable(e).await),
        };
        if !status.is_success() {
            return Err(error_from_body(status.as_u16(), &body));
        }
        if status == StatusCode::NO_CONTENT || body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body)
            .map_err(|e| ApiError::BadResponse(format!("{e}: {}", truncate(&body, 200))))
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.send(self.request(Method::GET, path).query(query))
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> Result<Value, ApiError> {
        self.send(
            self.conditional(self.request(Method::POST, path))
                .query(query)
                .json(body),
        )
        .await
    }

    /// A create with an `Idempotency-Key`, so a retried command never creates twice.
    pub async fn create(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let key = uuid::Uuid::new_v4().to_string();
        self.send(
            self.request(Method::POST, path)
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    pub async fn put(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> Result<Value, ApiError> {
        self.send(
            self.conditional(self.request(Method::PUT, path))
                .query(query)
                .json(body),
        )
        .await
    }

    /// The write of a read-modify-write: applies only while the object is still at `revision`
    /// (`If-Match`), so a change made in between is refused (412) instead of overwritten. A
    /// global `--if-match` takes the place of `revision`.
    pub async fn put_at_revision(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
        revision: u64,
    ) -> Result<Value, ApiError> {
        let rev = self.if_match.unwrap_or(revision);
        self.send(
            self.request(Method::PUT, path)
                .header("If-Match", format!("\"{rev}\""))
                .query(query)
                .json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.send(
            self.conditional(self.request(Method::DELETE, path))
                .query(query),
        )
        .await
    }

    /// All pages of a list endpoint (`{"items","next_page_token"}`), concatenated.
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, ApiError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let page = self.get(path, &q).await?;
            match page.get("items").and_then(Value::as_array) {
                Some(a) => items.extend(a.iter().cloned()),
                None => match page {
                    Value::Array(a) => {
                        items.extend(a);
                        return Ok(items);
                    }
                    _ => {
                        return Err(ApiError::BadResponse(format!(
                            "{path}: no `items` in the list response"
                        )))
                    }
                },
            }
            token = page
                .get("next_page_token")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// Opens an SSE stream (e.g. `/v1/events`), optionally resuming after `last_event_id`.
    pub async fn sse(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<u64>,
    ) -> Result<impl Stream<Item = Result<SseEvent, ApiError>> + use<>, ApiError> {
        let mut rb = self
            .request(Method::GET, path)
            .query(query)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id.to_string());
        }
        let resp = match rb.send().await {
            Ok(resp) => resp,
            Err(e) => return Err(self.unreachable(e).await),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(error_from_body(status.as_u16(), &body));
        }
        let base = self.base.clone();
        let mut parser = SseParser::default();
        let stream = resp.bytes_stream().flat_map(move |chunk| {
            let out: Vec<Result<SseEvent, ApiError>> = match chunk {
                Ok(bytes) => parser.push(&bytes).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(ApiError::Unreachable {
                    url: base.clone(),
                    reason: e.to_string(),
                })],
            };
            futures::stream::iter(out)
        });
        Ok(stream)
    }

    /// A streaming GET whose body is a sequence of JSON lines or SSE (used for `logs --follow`).
    pub async fn stream_raw(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<impl Stream<Item = Result<bytes_chunk::Chunk, ApiError>> + use<>, ApiError> {
        let resp = match self.request(Method::GET, path).query(query).send().await {
            Ok(resp) => resp,
            Err(e) => return Err(self.unreachable(e).await),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(error_from_body(status.as_u16(), &body));
        }
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let base = self.base.clone();
        Ok(resp.bytes_stream().map(move |c| match c {
            Ok(b) => Ok(bytes_chunk::Chunk {
                data: b.to_vec(),
                is_sse,
            }),
            Err(e) => Err(ApiError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            }),
        }))
    }
}

pub mod bytes_chunk {
    /// A piece of a streamed response body.
    pub struct Chunk {
        pub data: Vec<u8>,
        pub is_sse: bool,
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Where a reader of `/v1/events` is, so it can reconnect without a gap or a duplicate.
///
/// Several events share one revision (a VM create also creates its volume and NIC), and the
/// API resumes *after* a revision. So a reconnect asks from the revision before the last one
/// seen, and the events of that last revision that were already delivered are skipped.
#[derive(Debug, Default, Clone)]
pub struct EventCursor {
    /// Every event up to this revision was delivered.
    complete: Option<u64>,
    /// The newest revision seen, and the events of it already delivered (`type/id`).
    partial: Option<(u64, std::collections::HashSet<String>)>,
}

impl EventCursor {
    /// A cursor that starts after `after` (`None`: the live feed only).
    pub fn after(after: Option<u64>) -> EventCursor {
        EventCursor {
            complete: after,
            partial: None,
        }
    }

    /// What to send as `Last-Event-ID` when (re)connecting.
    pub fn resume_after(&self) -> Option<u64> {
        match &self.partial {
            Some((r, _)) => Some(r.saturating_sub(1)),
            None => self.complete,
        }
    }

    /// The newest revision seen so far.
    pub fn revision(&self) -> Option<u64> {
        self.partial.as_ref().map(|(r, _)| *r).or(self.complete)
    }

    /// Records an event; false if it was delivered before (skip it).
    pub fn accept(&mut self, event: &Value) -> bool {
        let Some(rev) = event.get("revision").and_then(Value::as_u64) else {
            return true;
        };
        if self.complete.is_some_and(|c| rev <= c) {
            return false;
        }
        let key = format!(
            "{}/{}",
            event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            event.get("id").and_then(Value::as_str).unwrap_or_default()
        );
        match &mut self.partial {
            Some((r, seen)) if rev == *r => seen.insert(key),
            Some((r, _)) if rev < *r => false,
            _ => {
                if let Some((r, _)) = &self.partial {
                    self.complete = Some(*r);
                }
                self.partial = Some((rev, [key].into_iter().collect()));
                true
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: feed it chunks as they arrive, get complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data || self.current.event.is_some() {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "id" => self.current.id = Some(value),
                "event" => self.current.event = Some(value),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_message_code_and_details_are_kept() {
        let body = json!({"error":{"code":"conflict","message":"network n1 has NICs","details":{"nic_ids":["a"]}}});
        let e = error_from_body(409, &body.to_string());
        assert_eq!(e.exit_code(), exit::CONFLICT);
        let msg = e.display_message();
        assert!(
            msg.starts_with("network n1 has NICs (conflict, HTTP 409)"),
            "{msg}"
        );
        assert!(msg.contains("nic_ids: [\"a\"]"), "{msg}");
    }

    #[test]
    fn exit_codes_follow_the_status() {
        let code = |s: u16| error_from_body(s, "").exit_code();
        assert_eq!(code(404), exit::NOT_FOUND);
        assert_eq!(code(409), exit::CONFLICT);
        assert_eq!(code(412), exit::CONFLICT);
        assert_eq!(code(401), exit::UNREACHABLE_OR_AUTH);
        assert_eq!(code(403), exit::UNREACHABLE_OR_AUTH);
        assert_eq!(code(400), exit::API);
        assert_eq!(code(500), exit::API);
        assert_eq!(code(503), exit::API);
        let un = ApiError::Unreachable {
            url: "http://x".into(),
            reason: "refused".into(),
        };
        assert_eq!(un.exit_code(), exit::UNREACHABLE_OR_AUTH);
    }

    #[test]
    fn non_envelope_bodies_still_give_a_readable_error() {
        let e = error_from_body(502, "<html>bad gateway</html>");
        assert_eq!(
            e.display_message(),
            "<html>bad gateway</html> (internal, HTTP 502)"
        );
        let e = error_from_body(401, "");
        assert!(e.display_message().contains("mvirt login"));
    }

    #[test]
    fn event_cursor_resumes_inside_a_revision_without_duplicates() {
        let ev = |rev: u64, id: &str| json!({"revision": rev, "type": "vm.created", "id": id});
        let mut c = EventCursor::after(Some(4));
        assert_eq!(c.resume_after(), Some(4));
        assert!(!c.accept(&ev(4, "old")), "at or before the start");
        assert!(c.accept(&ev(5, "a")));
        assert!(c.accept(&ev(5, "b")));
        assert_eq!(c.resume_after(), Some(4), "revision 5 may be incomplete");
        // After a reconnect from 4 the API sends revision 5 again: only the missing event passes.
        assert!(!c.accept(&ev(5, "a")));
        assert!(!c.accept(&ev(5, "b")));
        assert!(c.accept(&ev(5, "c")));
        assert!(c.accept(&ev(6, "d")));
        assert_eq!(c.resume_after(), Some(5));
        assert_eq!(c.revision(), Some(6));
        assert!(!c.accept(&ev(5, "late")));
        assert_eq!(EventCursor::after(None).resume_after(), None);
    }

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_multiline_data() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nid: 7\nevent: vm.cre").is_empty());
        let evs = p.push(b"ated\ndata: {\"a\":\ndata: 1}\r\n\r\nid: 8\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                id: Some("7".into()),
                event: Some("vm.created".into()),
                data: "{\"a\":\n1}".into()
            }]
        );
        let evs = p.push(b"data: x\n\n");
        assert_eq!(evs[0].id.as_deref(), Some("8"));
        assert_eq!(evs[0].data, "x");
    }
}
