//! `mvirt events`: the event stream, replayed up to now or followed.

use futures::StreamExt;
use serde_json::Value;

use crate::cli::EventsArgs;
use crate::client::ApiError;
use crate::output::{self, Format};
use crate::resources as res;

use super::ctx::Ctx;

/// One line for an event in table mode.
pub fn event_line(ev: &Value) -> String {
    let s = |k: &str| output::text_at(ev, k);
    let name = s("object.name");
    format!(
        "{:>6}  {:<24} {:<10} {} {}",
        s("revision"),
        s("type"),
        s("project"),
        name,
        s("id")
    )
    .trim_end()
    .to_string()
}

pub async fn run(ctx: &Ctx, a: EventsArgs) -> Result<(), ApiError> {
    let mut q = Vec::new();
    if !a.all_projects {
        q.push(("project", ctx.api.project.clone()));
    }
    if let Some(t) = &a.event_type {
        q.push(("type", t.clone()));
    }
    // Without --follow: replay history (from --from-revision, else from the start) up to the
    // revision the API has applied now, then stop. With --follow: the live feed (after
    // --from-revision when given).
    let head = if a.follow {
        None
    } else {
        let page = ctx
            .api
            .get(res::PROJECTS.path, &[("limit", "1".into())])
            .await?;
        Some(page.get("revision").and_then(Value::as_u64).unwrap_or(0))
    };
    let start = if a.follow {
        a.from_revision
    } else {
        Some(a.from_revision.unwrap_or(0))
    };
    if let (Some(h), Some(l)) = (head, start) {
        if h <= l {
            return Ok(());
        }
    }
    let mut cursor = crate::client::EventCursor::after(start);
    if ctx.format == Format::Table {
        ctx.print(&format!(
            "{:>6}  {:<24} {:<10} {} {}\n",
            "REV", "TYPE", "PROJECT", "NAME", "ID"
        ));
    }
    loop {
        let stream = ctx.api.sse("/v1/events", &q, cursor.resume_after()).await?;
        futures::pin_mut!(stream);
        loop {
            let next = match head {
                // The backlog arrives at once; when the filtered stream goes quiet, the events up
                // to `head` that match have all been shown (the head revision itself may carry no
                // matching event, so waiting for it alone could hang).
                Some(_) => {
                    match tokio::time::timeout(std::time::Duration::from_secs(2), stream.next())
                        .await
                    {
                        Ok(n) => n,
                        Err(_) => return Ok(()),
                    }
                }
                None => stream.next().await,
            };
            let Some(item) = next else { break };
            let ev = item?;
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let rev = v.get("revision").and_then(Value::as_u64);
            if let (Some(h), Some(r)) = (head, rev) {
                if r > h {
                    return Ok(());
                }
            }
            if cursor.accept(&v) {
                ctx.print_stream_item(&v, event_line);
            }
        }
        if head.is_some() {
            return Ok(());
        }
    }
}
