//! Following a template import to its end: a progress bar fed by the API's event stream.
//!
//! The import is driven by the node agents, which report `status.import_bytes_done/total` and
//! the phase (`importing`, `ready`, `failed`). We read the template once (it may already be
//! done), then follow `/v1/events` from the revision that created it, so no report is missed.

use futures::StreamExt;
use serde_json::Value;

use crate::client::{ApiClient, ApiError};
use crate::output::lookup;

/// What a template's status says about its import.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportState {
    Running {
        done: Option<u64>,
        total: Option<u64>,
    },
    Ready,
    Failed(String),
}

pub fn import_state(template: &Value) -> ImportState {
    let phase = lookup(template, "status.phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match phase {
        "ready" => ImportState::Ready,
        "failed" | "error" => {
            let msg = lookup(template, "status.message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            ImportState::Failed(msg.to_string())
        }
        _ => ImportState::Running {
            done: lookup(template, "status.import_bytes_done").and_then(Value::as_u64),
            total: lookup(template, "status.import_bytes_total").and_then(Value::as_u64),
        },
    }
}

/// Follows the import of template `id` until it is ready (returns the template) or failed.
pub async fn follow_import(
    api: &ApiClient,
    id: &str,
    from_revision: Option<u64>,
    bar: bool,
) -> Result<Value, ApiError> {
    let pb = if bar {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing {msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let path = format!("/v1/templates/{}", crate::commands::ctx::encode(id));
    let mut current = api.get(&path, &[]).await?;
    let mut cursor = crate::client::EventCursor::after(Some(from_revision.unwrap_or(0)));
    pb.set_message(
        lookup(&current, "name")
            .and_then(Value::as_str)
            .unwrap_or(id)
            .to_string(),
    );
    let result = loop {
        match import_state(&current) {
            ImportState::Ready => break Ok(current),
            ImportState::Failed(m) => {
                break Err(ApiError::Other(format!("template import failed: {m}")))
            }
            ImportState::Running { done, total } => {
                if let Some(t) = total {
                    pb.set_length(t);
                }
                if let Some(d) = done {
                    pb.set_position(d);
                }
            }
        }
        // Wait for the next change of this template on the event stream.
        match next_change(api, id, &mut cursor).await? {
            Some(obj) => current = obj,
            None => {
                return Err(ApiError::Other(format!(
                    "template {id} was deleted during its import"
                )))
            }
        }
    };
    pb.finish_and_clear();
    result
}

/// The template's next state from the event stream (`None` if it was deleted). Reconnects when
/// the server closes the stream, resuming after the last revision seen.
async fn next_change(
    api: &ApiClient,
    id: &str,
    cursor: &mut crate::client::EventCursor,
) -> Result<Option<Value>, ApiError> {
    loop {
        let stream = api
            .sse(
                "/v1/events",
                &[("type", "template".to_string())],
                cursor.resume_after(),
            )
            .await?;
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if !cursor.accept(&v) || v.get("id").and_then(Value::as_str) != Some(id) {
                continue;
            }
            return Ok(v.get("object").filter(|o| !o.is_null()).cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn import_state_follows_phase_and_counters() {
        assert_eq!(
            import_state(
                &json!({"status":{"phase":"importing","import_bytes_done":5,"import_bytes_total":10}})
            ),
            ImportState::Running {
                done: Some(5),
                total: Some(10)
            }
        );
        assert_eq!(
            import_state(&json!({"status":{"phase":""}})),
            ImportState::Running {
                done: None,
                total: None
            }
        );
        assert_eq!(
            import_state(&json!({"status":{"phase":"ready"}})),
            ImportState::Ready
        );
        assert_eq!(
            import_state(&json!({"status":{"phase":"failed","message":"checksum mismatch"}})),
            ImportState::Failed("checksum mismatch".into())
        );
    }
}
