//! `mvirt volume`: volumes, resizing and snapshots (snapshots by id or name: the API takes
//! either).

use serde_json::{json, Value};

use crate::cli::{SnapshotCmd, VolumeCmd};
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{encode, set_given, Ctx};
use super::parse::size;

pub async fn run(ctx: &Ctx, c: VolumeCmd) -> Result<(), ApiError> {
    let r = &res::VOLUMES;
    match c {
        VolumeCmd::List(a) => ctx.list(r, &a).await,
        VolumeCmd::Show { volume } => ctx.show(r, &volume).await,
        VolumeCmd::Create {
            name,
            size: sz,
            template,
            node,
            keep_backups,
        } => {
            let mut spec = json!({"size_bytes": size(&sz)?});
            let template_id = match template {
                Some(t) => Some(ctx.resolve_id(&res::TEMPLATES, &t).await?),
                None => None,
            };
            let node_id = match node {
                Some(n) => Some(ctx.resolve_id(&res::NODES, &n).await?),
                None => None,
            };
            set_given(
                &mut spec,
                [("template_id", template_id), ("node_id", node_id)],
            );
            if let Some(n) = keep_backups {
                spec["backup_keep_last"] = json!(n);
            }
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": spec}),
            )
            .await
        }
        VolumeCmd::Resize { volume, size: sz } => {
            let body = json!({"size_bytes": size(&sz)?});
            let v = ctx.post_below(r, &volume, "resize", &body).await?;
            ctx.done(&v, &format!("volume {volume} resized to {sz}"))
        }
        VolumeCmd::Delete { volume } => ctx.delete(r, &volume, &[]).await,
        VolumeCmd::Snapshot(c) => snapshot(ctx, c).await,
    }
}

async fn snapshot(ctx: &Ctx, c: SnapshotCmd) -> Result<(), ApiError> {
    let r = &res::VOLUMES;
    let below = |snapshot: &str, action: &str| format!("snapshots/{}/{action}", encode(snapshot));
    match c {
        SnapshotCmd::List { volume } => {
            ctx.list_within(r, &volume, "snapshots", res::SNAPSHOTS)
                .await
        }
        SnapshotCmd::Create { volume, name } => {
            let v = ctx
                .post_below(r, &volume, "snapshots", &json!({"name": name}))
                .await?;
            ctx.done(&v, &format!("snapshot {name} of volume {volume} created"))
        }
        SnapshotCmd::Delete { volume, snapshot } => {
            let sub = format!("snapshots/{}", encode(&snapshot));
            let v = ctx.delete_below(r, &volume, &sub).await?;
            ctx.done(
                &v,
                &format!("snapshot {snapshot} of volume {volume} deleted"),
            )
        }
        SnapshotCmd::Rollback { volume, snapshot } => {
            let v = ctx
                .post_below(r, &volume, &below(&snapshot, "rollback"), &json!({}))
                .await?;
            let generation = v
                .pointer("/rollback/generation")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            ctx.done(
                &v,
                &format!(
                    "volume {volume}: rollback to snapshot {snapshot} accepted (generation {generation}; done when status.rollback_generation shows it)"
                ),
            )
        }
        SnapshotCmd::Promote {
            volume,
            snapshot,
            name,
        } => {
            let v = ctx
                .post_below(
                    r,
                    &volume,
                    &below(&snapshot, "promote"),
                    &json!({"name": name}),
                )
                .await?;
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            ctx.done(
                &v,
                &format!(
                    "template {name} ({id}) created from snapshot {snapshot} of volume {volume}"
                ),
            )
        }
    }
}
