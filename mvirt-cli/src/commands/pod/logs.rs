//! `mvirt pod logs`: the pod's container output as NDJSON (`{"container","stream","time","line"}`
//! per line), read as it streams (`-f` keeps the response open) and printed as
//! `[container] line`, or as the JSON objects with `-o json`.

use futures::StreamExt;
use serde_json::Value;

use crate::client::{ApiClient, ApiError};

/// Splits a byte stream into JSON lines; a line may arrive in pieces.
#[derive(Debug, Default)]
pub struct NdjsonLines {
    buf: Vec<u8>,
}

impl NdjsonLines {
    /// The complete lines in `chunk` (plus what was buffered), parsed; blank lines are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<Value, String>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            if let Some(v) = parse_line(&line) {
                out.push(v);
            }
        }
        out
    }

    /// What is left when the stream ends (a last line without a newline).
    pub fn finish(&mut self) -> Option<Result<Value, String>> {
        let rest = std::mem::take(&mut self.buf);
        parse_line(&rest)
    }
}

fn parse_line(line: &[u8]) -> Option<Result<Value, String>> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(serde_json::from_str(text).map_err(|e| format!("{e}: {text}")))
}

/// `[container] line` (the line without its trailing newline).
pub fn log_line(entry: &Value) -> String {
    let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
    format!(
        "[{}] {}",
        field("container"),
        field("line").trim_end_matches(['\n', '\r'])
    )
}

/// The query of `GET /v1/pods/{id}/logs`.
pub fn logs_query(
    project: &str,
    container: Option<&str>,
    follow: bool,
    tail: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut q = vec![("project", project.to_string())];
    if let Some(c) = container {
        q.push(("container", c.to_string()));
    }
    q.push(("follow", follow.to_string()));
    if let Some(n) = tail {
        q.push(("tail", n.to_string()));
    }
    q
}

/// Streams the logs of pod `pod` (id or name), handing each entry to `each` as it arrives.
/// Ends when the API ends the response (at once without `follow`).
pub async fn stream(
    api: &ApiClient,
    pod: &str,
    query: &[(&'static str, String)],
    mut each: impl FnMut(&Value),
) -> Result<(), ApiError> {
    let path = format!("/v1/pods/{}/logs", crate::commands::ctx::encode(pod));
    let body = api.stream_raw(&path, query).await?;
    futures::pin_mut!(body);
    let mut lines = NdjsonLines::default();
    while let Some(chunk) = body.next().await {
        for v in lines.push(&chunk?.data) {
            each(&v.map_err(|e| ApiError::BadResponse(format!("a log line: {e}")))?);
        }
    }
    if let Some(v) = lines.finish() {
        each(&v.map_err(|e| ApiError::BadResponse(format!("a log line: {e}")))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_split_across_chunks_parse_once_complete() {
        let mut p = NdjsonLines::default();
        assert!(p
            .push(b"{\"container\":\"web\",\"stream\":\"stdout\",\"line\":\"a")
            .is_empty());
        let got = p.push(b"\"}\n\n{\"container\":\"writer\",\"line\":\"b\"}\n{\"cont");
        assert_eq!(got.len(), 2);
        assert_eq!(log_line(got[0].as_ref().unwrap()), "[web] a");
        assert_eq!(log_line(got[1].as_ref().unwrap()), "[writer] b");
        let got = p.push(b"ainer\":\"web\",\"line\":\"c\\n\"}");
        assert!(got.is_empty());
        assert_eq!(log_line(&p.finish().unwrap().unwrap()), "[web] c");
        assert!(p.finish().is_none());
        assert!(p.push(b"not json\n")[0].is_err());
    }

    #[test]
    fn the_query_carries_only_what_was_given() {
        assert_eq!(
            logs_query("p", None, false, None),
            vec![("project", "p".to_string()), ("follow", "false".into())]
        );
        assert_eq!(
            logs_query("p", Some("web"), true, Some(10)),
            vec![
                ("project", "p".to_string()),
                ("container", "web".into()),
                ("follow", "true".into()),
                ("tail", "10".into())
            ]
        );
        assert_eq!(log_line(&json!({"container": "c"})), "[c] ");
    }
}
