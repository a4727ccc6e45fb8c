//! `mvirt logs`: the audit log, queried or followed.

use futures::StreamExt;
use serde_json::Value;

use crate::cli::LogsArgs;
use crate::client::ApiError;
use crate::output::{self, Format};
use crate::resources as res;

use super::ctx::Ctx;
use super::parse::time_ns;

pub fn log_line(v: &Value) -> String {
    let s = |k: &str| output::text_at(v, k);
    let time = ["timestamp", "time"]
        .iter()
        .map(|k| s(k))
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| {
            output::lookup(v, "timestamp_ns")
                .and_then(Value::as_i64)
                .and_then(|ns| {
                    chrono::DateTime::from_timestamp(
                        ns / 1_000_000_000,
                        (ns % 1_000_000_000) as u32,
                    )
                })
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        });
    // A log line stands alone (no table to compare ids against): whole ids, greppable.
    let objs = output::lookup(v, "object_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(output::text).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let objs = if objs.is_empty() {
        String::new()
    } else {
        format!(" [{objs}]")
    };
    format!(
        "{time} {:<5} {:<12} {}{objs}",
        s("level").to_uppercase(),
        s("component"),
        s("message")
    )
}

/// The entries of a `GET /v1/logs` response (an array, or a page with `items`/`entries`).
pub fn entries(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => other
            .get("items")
            .or_else(|| other.get("entries"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    }
}

pub async fn run(ctx: &Ctx, a: LogsArgs) -> Result<(), ApiError> {
    let mut q: Vec<(&str, String)> = Vec::new();
    let since = a
        .since
        .as_deref()
        .map(|s| time_ns(s, chrono::Utc::now()))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| time_ns(s, chrono::Utc::now()))
        .transpose()?;
    for (k, v) in [
        ("object_id", a.object.clone()),
        ("component", a.component.clone()),
        ("level", a.level.clone()),
        ("since_ns", since.map(|n| n.to_string())),
        ("until_ns", until.map(|n| n.to_string())),
        ("text", a.text.clone()),
        ("trace_id", a.trace.clone()),
        ("limit", a.limit.map(|l| l.to_string())),
        ("order", a.follow.then(|| "oldest".to_string())),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    if !a.follow {
        let v = ctx.api.get("/v1/logs", &q).await?;
        let items = entries(&v);
        return match ctx.format {
            Format::Table => {
                let text: String = items.iter().map(|i| log_line(i) + "\n").collect();
                ctx.print(&text);
                Ok(())
            }
            _ => ctx.print_list(&items, res::LOGS),
        };
    }
    q.push(("follow", "true".into()));
    let stream = ctx.api.stream_raw("/v1/logs", &q).await?;
    futures::pin_mut!(stream);
    let mut sse = crate::client::SseParser::default();
    let mut lines = Vec::<u8>::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut values = Vec::new();
        if chunk.is_sse {
            for ev in sse.push(&chunk.data) {
                if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                    values.push(v);
                }
            }
        } else {
            // Newline-delimited JSON.
            lines.extend_from_slice(&chunk.data);
            while let Some(pos) = lines.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = lines.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    values.push(v);
                }
            }
        }
        for v in values {
            // A page-shaped chunk carries several entries.
            match v.get("items").and_then(Value::as_array) {
                Some(items) => items
                    .iter()
                    .for_each(|i| ctx.print_stream_item(i, log_line)),
                None => ctx.print_stream_item(&v, log_line),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_lines_accept_nanosecond_timestamps() {
        let l = log_line(
            &json!({"timestamp_ns": 1_700_000_000_000_000_000i64, "level":"audit","component":"api","message":"vm created","object_ids":["0123456789"]}),
        );
        assert_eq!(
            l,
            "2023-11-14T22:13:20.000Z AUDIT api          vm created [0123456789]"
        );
    }
}
