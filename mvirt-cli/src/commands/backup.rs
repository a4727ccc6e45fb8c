//! `mvirt backup`: backups of volumes and VMs (`POST /v1/volumes/{id}/backups`,
//! `POST /v1/vms/{id}/backups`), listing, restoring into a new volume, the retention rule of a
//! volume's backups (`spec.backup_keep_last`), deleting.

use serde_json::{json, Value};

use crate::cli::BackupCmd;
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::Ctx;
use super::parse::size;
use super::update::update_spec;

pub async fn run(ctx: &Ctx, c: BackupCmd) -> Result<(), ApiError> {
    let r = &res::BACKUPS;
    match c {
        BackupCmd::List { list, volume } => {
            let mut items = ctx.api.list_all(r.path, &ctx.list_query(r, &list)).await?;
            if let Some(volume) = volume {
                let id = ctx.resolve_id(&res::VOLUMES, &volume).await?;
                items.retain(|b| b.pointer("/spec/volume_id").and_then(Value::as_str) == Some(&id));
            }
            ctx.print_list(&items, r.columns)
        }
        BackupCmd::Show { backup } => ctx.show(r, &backup).await,
        BackupCmd::Create {
            volume,
            vm,
            name,
            incremental,
        } => {
            let mut body = json!({"incremental": incremental});
            if let Some(name) = &name {
                body["name"] = json!(name);
            }
            match (volume, vm) {
                (_, Some(vm)) => {
                    let v = ctx.post_below(&res::VMS, &vm, "backups", &body).await?;
                    let n = v.get("items").and_then(Value::as_array).map_or(0, Vec::len);
                    ctx.done(
                        &v,
                        &format!("{n} backup(s) of VM {vm} asked for (one per volume)"),
                    )
                }
                (Some(volume), None) => {
                    let v = ctx
                        .post_below(&res::VOLUMES, &volume, "backups", &body)
                        .await?;
                    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
                    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
                    ctx.done(
                        &v,
                        &format!("backup {name} ({id}) of volume {volume} asked for"),
                    )
                }
                (None, None) => Err(ApiError::Usage("--volume or --vm is required".into())),
            }
        }
        BackupCmd::Restore {
            backup,
            name,
            size: sz,
        } => {
            let mut body = json!({"name": name});
            if let Some(sz) = sz {
                body["size_bytes"] = json!(size(&sz)?);
            }
            let v = ctx.post_below(r, &backup, "restore", &body).await?;
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            ctx.done(
                &v,
                &format!("volume {name} ({id}) is being restored from backup {backup}"),
            )
        }
        BackupCmd::Retention {
            volume,
            keep_last,
            off,
        } => {
            let keep = if off { None } else { keep_last };
            let v = update_spec(&ctx.api, &res::VOLUMES, &volume, |spec| {
                match keep {
                    Some(n) => spec["backup_keep_last"] = json!(n),
                    None => {
                        if let Some(o) = spec.as_object_mut() {
                            o.remove("backup_keep_last");
                        }
                    }
                }
                Ok(())
            })
            .await?;
            let what = match keep {
                Some(n) => format!("volume {volume} keeps its newest {n} ready backup(s)"),
                None => format!("volume {volume} keeps every backup"),
            };
            ctx.done(&v, &what)
        }
        BackupCmd::Delete { backup, force } => {
            let extra = if force {
                vec![("force", "true".to_string())]
            } else {
                Vec::new()
            };
            ctx.delete(r, &backup, &extra).await
        }
    }
}
