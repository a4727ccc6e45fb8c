//! `mvirt node`: hypervisor nodes (cordon, labels, host facts).

use serde_json::json;

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
