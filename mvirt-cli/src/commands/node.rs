//! `mvirt node`: hypervisor nodes (cordon, drain, labels, host facts).

use serde_json::{json, Value};

use crate::cli::NodeCmd;
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{item_path, Ctx};
use super::parse::parse_labels;

pub async fn run(ctx: &Ctx, c: NodeCmd) -> Result<(), ApiError> {
    let r = &res::NODES;
    match c {
        NodeCmd::List(a) => ctx.list(r, &a).await,
        NodeCmd::Show { node } => ctx.show(r, &node).await,
        NodeCmd::Host { node } => {
            let v = ctx
                .api
                .get(&format!("{}/host", item_path(r, &node)), &[])
                .await?;
            ctx.print_object(&v)
        }
        NodeCmd::Cordon { node } => schedulable(ctx, &node, false).await,
        NodeCmd::Uncordon { node } => schedulable(ctx, &node, true).await,
        NodeCmd::Drain { node, wait } => drain(ctx, &node, wait).await,
        NodeCmd::Undrain { node } => {
            let v = ctx
                .api
                .delete(&format!("{}/drain", item_path(r, &node)), &[])
                .await?;
            ctx.done(&v, &format!("node {node} undrained (schedulable again)"))
        }
        NodeCmd::Label { node, labels } => {
            put(
                ctx,
                &node,
                json!({"labels": parse_labels(&labels)?}),
                "labelled",
            )
            .await
        }
        NodeCmd::Delete { node } => ctx.delete(r, &node, &[]).await,
    }
}

async fn schedulable(ctx: &Ctx, node: &str, schedulable: bool) -> Result<(), ApiError> {
    let body = json!({"spec": {"schedulable": schedulable}});
    let what = if schedulable {
        "uncordoned"
    } else {
        "cordoned"
    };
    put(ctx, node, body, what).await
}

/// An update of a node (nodes live in no project), confirmed as `node <node> <what>`.
async fn put(ctx: &Ctx, node: &str, body: serde_json::Value, what: &str) -> Result<(), ApiError> {
    let v = ctx
        .api
        .put(&item_path(&res::NODES, node), &[], &body)
        .await?;
    ctx.done(&v, &format!("node {node} {what}"))
}

/// `mvirt node drain`: starts the drain; with `wait`, prints each change of its progress and
/// ends with the outcome (an error when it ended failed or cancelled).
async fn drain(ctx: &Ctx, node: &str, wait: bool) -> Result<(), ApiError> {
    let path = format!("{}/drain", item_path(&res::NODES, node));
    let mut v = ctx.api.post(&path, &[], &json!({})).await?;
    if !wait {
        return ctx.done(&v, &format!("node {node}: {}", drain_progress(&v)));
    }
    let table = matches!(ctx.format, crate::output::Format::Table);
    let mut last = String::new();
    // Generous: each migration copies a VM's memory and every block of its disks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(24 * 3600);
    loop {
        let line = drain_progress(&v);
        if table && line != last {
            ctx.print(&format!("node {node}: {line}\n"));
            last = line;
        }
        match drain_outcome(node, &v) {
            Some(Ok(_)) => return if table { Ok(()) } else { ctx.print_object(&v) },
            Some(Err(why)) => {
                if !table {
                    ctx.print_object(&v)?;
                }
                return Err(ApiError::Other(why));
            }
            None if std::time::Instant::now() > deadline => {
                return Err(ApiError::Other(format!(
                    "node {node}: the drain did not end within a day"
                )))
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
        v = ctx.api.get(&item_path(&res::NODES, node), &[]).await?;
    }
}

/// One line on a node's drain: its state and counts, and what is migrating.
pub fn drain_progress(node: &Value) -> String {
    let d = &node["status"]["drain"];
    let Some(state) = d["state"].as_str() else {
        return "no drain".to_string();
    };
    let len = |k: &str| d[k].as_array().map_or(0, Vec::len);
    let mut line = format!(
        "{state}: {} moved, {} migrating, {} remaining, {} failed",
        len("moved"),
        len("migrating"),
        len("remaining"),
        len("failed")
    );
    if len("moved_pods") > 0 {
        line.push_str(&format!(", {} pods moved", len("moved_pods")));
    }
    let migrating: Vec<&str> = d["migrating"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !migrating.is_empty() {
        line.push_str(&format!(" (migrating: {})", migrating.join(", ")));
    }
    line
}

/// How the drain ended: `Ok` when drained, `Err(why)` when failed or cancelled (each thing that
/// stayed, with its reason), `None` while it runs.
pub fn drain_outcome(node: &str, v: &Value) -> Option<Result<(), String>> {
    let d = &v["status"]["drain"];
    match d["state"].as_str()? {
        "drained" => Some(Ok(())),
        "draining" => None,
        state => {
            let stayed: Vec<String> = d["failed"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| {
                            format!(
                                "{} {}: {}",
                                f["kind"].as_str().unwrap_or_default(),
                                f["id"].as_str().unwrap_or_default(),
                                f["reason"].as_str().unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Err(format!(
                "node {node}: drain {state}; {}",
                if stayed.is_empty() {
                    "nothing failed".to_string()
                } else {
                    stayed.join("; ")
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn drain_progress_and_outcome_say_what_moved_and_what_stayed() {
        assert_eq!(drain_progress(&json!({"status": {}})), "no drain");
        let node = |d: Value| json!({"status": {"drain": d}});
        let running = node(
            json!({"state": "draining", "moved": ["a"], "migrating": ["b"],
            "remaining": ["c", "d"], "failed": []}),
        );
        assert_eq!(
            drain_progress(&running),
            "draining: 1 moved, 1 migrating, 2 remaining, 0 failed (migrating: b)"
        );
        assert_eq!(drain_outcome("hv1", &running), None);
        let done = node(json!({"state": "drained", "moved": ["a"], "moved_pods": ["p"]}));
        assert_eq!(
            drain_progress(&done),
            "drained: 1 moved, 0 migrating, 0 remaining, 0 failed, 1 pods moved"
        );
        assert_eq!(drain_outcome("hv1", &done), Some(Ok(())));
        let failed = node(json!({"state": "failed", "failed": [
            {"kind": "vm", "id": "x", "reason": "node hv2 is cordoned"}]}));
        let why = drain_outcome("hv1", &failed).unwrap().unwrap_err();
        assert_eq!(why, "node hv1: drain failed; vm x: node hv2 is cordoned");
        assert!(Cli::try_parse_from(["mvirt", "node", "drain", "hv1", "--wait"]).is_ok());
        assert!(Cli::try_parse_from(["mvirt", "node", "undrain", "hv1"]).is_ok());
    }
}
