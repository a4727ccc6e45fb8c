//! `mvirt vm`: VMs, their actions, and changes after create (resize, attach, detach) done as
//! a read-modify-write of the spec at the read revision.

use serde_json::{json, Value};

use crate::cli::{VmCmd, VmCreateArgs, VmDeviceArgs, VmMigrateArgs};
use crate::client::{ApiClient, ApiError};
use crate::output;
use crate::resources as res;

use super::ctx::{set_given, Ctx};
use super::parse::{parse_labels, size, ssh_key};
use super::update::update_spec;

/// The JSON body of `POST /v1/vms` for `mvirt vm create` (names already resolved to ids).
pub fn vm_create_body(
    a: &VmCreateArgs,
    project: &str,
    ids: &VmCreateIds,
) -> Result<Value, ApiError> {
    let mut spec = json!({
        "vcpus": a.cpus,
        "memory_bytes": size(&a.memory)?,
        "hostname": a.hostname.clone().unwrap_or_else(|| a.name.clone()),
        "desired_state": if a.stopped { "stopped" } else { "running" },
        "hugepages": a.hugepages,
        "nested_virtualization": a.nested_virtualization,
        "volume_ids": ids.volumes,
        "ssh_authorized_keys": ids.ssh_keys,
    });
    if let Some(t) = &ids.template {
        spec["root_volume"] = json!({"template_id": t, "size_bytes": size(&a.disk_size)?});
    }
    if !ids.networks.is_empty() {
        spec["network_interfaces"] = ids
            .networks
            .iter()
            .map(|n| json!({"network_id": n, "security_group_ids": ids.security_groups}))
            .collect();
    }
    set_given(
        &mut spec,
        [
            ("user_data", ids.user_data.clone()),
            ("node_selector", a.node_selector.clone()),
        ],
    );
    Ok(
        json!({"name": a.name, "project": project, "labels": parse_labels(&a.labels)?, "spec": spec}),
    )
}

/// Ids and file contents gathered for a VM create.
#[derive(Debug, Default)]
pub struct VmCreateIds {
    pub template: Option<String>,
    pub networks: Vec<String>,
    pub security_groups: Vec<String>,
    pub volumes: Vec<String>,
    pub ssh_keys: Vec<String>,
    pub user_data: Option<String>,
}

pub async fn run(ctx: &Ctx, c: VmCmd) -> Result<(), ApiError> {
    let r = &res::VMS;
    match c {
        VmCmd::List(a) => ctx.list(r, &a).await,
        VmCmd::Show { vm } => ctx.show(r, &vm).await,
        VmCmd::Create(a) => {
            let ids = VmCreateIds {
                template: match &a.template {
                    Some(t) => Some(ctx.resolve_id(&res::TEMPLATES, t).await?),
                    None => None,
                },
                networks: ctx.resolve_all(&res::NETWORKS, &a.network).await?,
                security_groups: ctx
                    .resolve_all(&res::SECURITY_GROUPS, &a.security_groups)
                    .await?,
                volumes: ctx.resolve_all(&res::VOLUMES, &a.volume).await?,
                ssh_keys: a
                    .ssh_key
                    .iter()
                    .map(|k| ssh_key(k))
                    .collect::<Result<_, _>>()?,
                user_data: match &a.user_data {
                    Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                        ApiError::Usage(format!("cannot read --user-data {}: {e}", p.display()))
                    })?),
                    None => None,
                },
            };
            let body = vm_create_body(&a, &ctx.api.project, &ids)?;
            ctx.create(r, body).await
        }
        VmCmd::Start { vm } => vm_action(ctx, &vm, "start", "start requested").await,
        VmCmd::Stop { vm } => vm_action(ctx, &vm, "stop", "stop requested").await,
        VmCmd::Kill { vm } => vm_action(ctx, &vm, "kill", "kill requested").await,
        VmCmd::Restart { vm } => vm_action(ctx, &vm, "restart", "restart requested").await,
        VmCmd::Migrate(a) => migrate(ctx, &a).await,
        VmCmd::Delete { vm } => ctx.delete(r, &vm, &[]).await,
        VmCmd::Console(a) => crate::console::run(&ctx.api, &a.vm).await,
        VmCmd::Resize(a) => {
            let memory = a.memory.as_deref().map(size).transpose()?;
            let v = update_vm_spec(&ctx.api, &a.vm, |spec| {
                resize_spec(spec, a.vcpus, memory);
                Ok(())
            })
            .await?;
            let memory = output::lookup(&v, "spec.memory_bytes")
                .and_then(Value::as_u64)
                .map(output::human_bytes)
                .unwrap_or_default();
            let what = format!(
                "vm {}: resized to {} vCPUs, {memory} memory",
                a.vm,
                output::text_at(&v, "spec.vcpus")
            );
            ctx.done(&v, &with_conditions(what, &v))
        }
        VmCmd::Attach(a) => vm_devices(ctx, &a, DeviceChange::Attach).await,
        VmCmd::Detach(a) => vm_devices(ctx, &a, DeviceChange::Detach).await,
    }
}

/// Reads a VM, lets `edit` change its spec, and writes it back at the revision that was read
/// (see `update::update_spec`).
pub async fn update_vm_spec(
    api: &ApiClient,
    vm: &str,
    edit: impl Fn(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    update_spec(api, &res::VMS, vm, edit).await
}

/// Sets the vCPUs and/or memory in a VM spec.
pub fn resize_spec(spec: &mut Value, vcpus: Option<u32>, memory_bytes: Option<u64>) {
    if let Some(n) = vcpus {
        spec["vcpus"] = json!(n);
    }
    if let Some(m) = memory_bytes {
        spec["memory_bytes"] = json!(m);
    }
}

/// Whether `vm attach` or `vm detach` edits a device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChange {
    Attach,
    Detach,
}

/// Adds `id` to or removes it from the id list `field` (`volume_ids`, `nic_ids`) of the spec of
/// `vm`; `what` names the device (`volume data`) in the error when it is already (or not) there.
pub fn change_device(
    spec: &mut Value,
    field: &str,
    id: &str,
    change: DeviceChange,
    what: &str,
    vm: &str,
) -> Result<(), ApiError> {
    let mut ids: Vec<Value> = spec
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pos = ids.iter().position(|v| v.as_str() == Some(id));
    match (change, pos) {
        (DeviceChange::Attach, None) => ids.push(json!(id)),
        (DeviceChange::Detach, Some(p)) => {
            ids.remove(p);
        }
        (DeviceChange::Attach, Some(_)) => {
            return Err(ApiError::Conflict(format!(
                "{what} is already attached to vm {vm}"
            )))
        }
        (DeviceChange::Detach, None) => {
            return Err(ApiError::Conflict(format!(
                "{what} is not attached to vm {vm}"
            )))
        }
    }
    spec[field] = Value::Array(ids);
    Ok(())
}

async fn vm_devices(ctx: &Ctx, a: &VmDeviceArgs, change: DeviceChange) -> Result<(), ApiError> {
    let mut devices = Vec::new();
    for (r, field, names) in [
        (&res::VOLUMES, "volume_ids", &a.volumes),
        (&res::NICS, "nic_ids", &a.nics),
    ] {
        for n in names {
            devices.push((
                field,
                ctx.resolve_id(r, n).await?,
                format!("{} {n}", r.name),
            ));
        }
    }
    let vm = &a.vm;
    let v = update_vm_spec(&ctx.api, vm, |spec| {
        for (field, id, what) in &devices {
            change_device(spec, field, id, change, what, vm)?;
        }
        Ok(())
    })
    .await?;
    let verb = match change {
        DeviceChange::Attach => "attached",
        DeviceChange::Detach => "detached",
    };
    let list = devices
        .iter()
        .map(|(_, _, what)| what.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    ctx.done(&v, &with_conditions(format!("vm {vm}: {list} {verb}"), &v))
}

/// `what`, followed by one line per condition of the object that holds, e.g.
/// `restart required: memory shrinks at the next boot`.
pub fn with_conditions(what: String, v: &Value) -> String {
    let mut s = what;
    for c in output::lookup(v, "status.conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("true"))
    {
        let kind = c.get("type").map(output::text).unwrap_or_default();
        let message = c.get("message").map(output::text).unwrap_or_default();
        s.push_str(&format!("\n{}: {message}", kind.replace('_', " ")));
    }
    s
}

/// The body of `POST /v1/vms/{id}/migrate`.
pub fn migrate_body(node: Option<&str>) -> Value {
    match node {
        Some(node) => json!({ "node": node }),
        None => json!({}),
    }
}

/// What a VM's `migration` says, in one line; `None` while it runs.
pub fn migration_outcome(vm: &str, v: &Value) -> Option<Result<String, String>> {
    let m = v.get("migration")?;
    let target = output::text_at(m, "target_node_id");
    let cold = m.get("cold").and_then(Value::as_bool).unwrap_or(false);
    let sent = || {
        output::human_bytes(
            m.get("bytes_transferred")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        )
    };
    match m.get("phase").and_then(Value::as_str)? {
        "completed" if cold => Some(Ok(format!(
            "vm {vm}: moved cold to node {target} (stopped there, {} of volumes sent)",
            sent()
        ))),
        "failed" | "cancelled" if cold => Some(Err(format!(
            "vm {vm}: cold move to node {target} failed: {}",
            output::text_at(m, "error")
        ))),
        "completed" => Some(Ok(format!(
            "vm {vm}: migrated to node {target} (downtime {} ms, {} sent)",
            output::text_at(m, "downtime_ms"),
            output::human_bytes(
                m.get("bytes_transferred")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            )
        ))),
        "failed" | "cancelled" => Some(Err(format!(
            "vm {vm}: migration to node {target} failed: {}",
            output::text_at(m, "error")
        ))),
        _ => None,
    }
}

async fn migrate(ctx: &Ctx, a: &VmMigrateArgs) -> Result<(), ApiError> {
    let v = ctx
        .post_below(
            &res::VMS,
            &a.vm,
            "migrate",
            &migrate_body(a.node.as_deref()),
        )
        .await?;
    if !a.wait {
        let target = output::lookup(&v, "migration.target_node_id")
            .map(output::text)
            .unwrap_or_default();
        let what = if output::lookup(&v, "migration.cold").and_then(Value::as_bool) == Some(true) {
            "cold move"
        } else {
            "migration"
        };
        return ctx.done(&v, &format!("vm {}: {what} to node {target} started", a.vm));
    }
    let id = output::text_at(&v, "id");
    // Generous: a migration copies the VM's memory and every block of its disks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    loop {
        let v = ctx.get(&res::VMS, &id).await?;
        match migration_outcome(&a.vm, &v) {
            Some(Ok(line)) => return ctx.done(&v, &line),
            Some(Err(line)) => return Err(ApiError::Other(line)),
            None if std::time::Instant::now() > deadline => {
                return Err(ApiError::Other(format!(
                    "vm {}: the migration did not end within an hour (still {})",
                    a.vm,
                    output::text_at(&v, "migration.phase")
                )))
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

async fn vm_action(ctx: &Ctx, vm: &str, action: &str, what: &str) -> Result<(), ApiError> {
    let v = ctx.post_below(&res::VMS, vm, action, &json!({})).await?;
    ctx.done(&v, &format!("vm {vm}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn migrate_names_the_node_only_when_given_and_says_how_it_ended() {
        assert_eq!(migrate_body(None), json!({}));
        assert_eq!(migrate_body(Some("node-b")), json!({"node": "node-b"}));
        let vm = |m: Value| json!({"id": "v", "migration": m});
        assert_eq!(migration_outcome("web", &json!({"id": "v"})), None);
        let running = vm(json!({"phase": "transferring", "target_node_id": "n2"}));
        assert_eq!(migration_outcome("web", &running), None);
        let done = vm(json!({"phase": "completed", "target_node_id": "n2",
            "downtime_ms": 42, "bytes_transferred": 2048}));
        let line = migration_outcome("web", &done).unwrap().unwrap();
        assert!(
            line.contains("migrated to node n2") && line.contains("42 ms"),
            "{line}"
        );
        let failed = vm(json!({"phase": "failed", "target_node_id": "n2", "error": "target gone"}));
        let line = migration_outcome("web", &failed).unwrap().unwrap_err();
        assert!(line.ends_with("failed: target gone"), "{line}");
        // A stopped VM moves cold: said so, without a downtime.
        let cold = vm(
            json!({"phase": "completed", "target_node_id": "n2", "cold": true,
            "bytes_transferred": 4096}),
        );
        let line = migration_outcome("web", &cold).unwrap().unwrap();
        assert_eq!(
            line,
            "vm web: moved cold to node n2 (stopped there, 4KiB of volumes sent)"
        );
        let cancelled = vm(
            json!({"phase": "cancelled", "target_node_id": "n2", "cold": true,
            "error": "cancelled: the VM was asked to start"}),
        );
        let line = migration_outcome("web", &cancelled).unwrap().unwrap_err();
        assert!(
            line.starts_with("vm web: cold move to node n2 failed: cancelled"),
            "{line}"
        );
        let cli = Cli::try_parse_from(["mvirt", "vm", "migrate", "web", "--node", "b", "--wait"]);
        assert!(cli.is_ok(), "{cli:?}");
    }

    #[test]
    fn vm_create_body_has_root_volume_nics_keys_and_selector() {
        let cli = Cli::try_parse_from([
            "mvirt",
            "vm",
            "create",
            "web",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--template",
            "t",
            "--disk-size",
            "20G",
            "--network",
            "n",
            "--node-selector",
            "zone=a",
            "--stopped",
            "--nested-virtualization",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("parsed wrong command")
        };
        let ids = VmCreateIds {
            template: Some("tid".into()),
            networks: vec!["nid".into()],
            ssh_keys: vec!["ssh-ed25519 AAA".into()],
            ..Default::default()
        };
        let b = vm_create_body(&a, "default", &ids).unwrap();
        assert_eq!(b["spec"]["vcpus"], 2);
        assert_eq!(b["spec"]["memory_bytes"], 1u64 << 30);
        assert_eq!(
            b["spec"]["root_volume"],
            json!({"template_id":"tid","size_bytes":20u64<<30})
        );
        assert_eq!(b["spec"]["network_interfaces"][0]["network_id"], "nid");
        assert_eq!(b["spec"]["node_selector"], "zone=a");
        assert_eq!(b["spec"]["desired_state"], "stopped");
        assert_eq!(b["spec"]["nested_virtualization"], true);
        assert_eq!(b["spec"]["hugepages"], false);
        assert_eq!(b["spec"]["ssh_authorized_keys"][0], "ssh-ed25519 AAA");
        assert_eq!(b["spec"]["hostname"], "web");
    }

    /// A scripted API: answers each request with the next `(status, body)` and records each
    /// request's method, path and `If-Match`.
    async fn scripted_api(
        responses: Vec<(u16, Value)>,
    ) -> (ApiClient, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in responses {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let line = text.lines().next().unwrap_or_default();
                let mut parts = line.split(' ');
                let method = parts.next().unwrap_or_default();
                let path = parts
                    .next()
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default();
                let if_match = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("if-match:")
                            .map(|v| v.trim().to_string())
                    })
                    .unwrap_or_default();
                log.lock()
                    .unwrap()
                    .push(format!("{method} {path} {if_match}").trim().to_string());
                let body = body.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        (ApiClient::new(&url, None, "default").unwrap(), seen)
    }

    fn vm_at(revision: u64, vcpus: u32) -> Value {
        json!({"id": "v1", "name": "web", "revision": revision,
            "spec": {"vcpus": vcpus, "memory_bytes": 1u64 << 30, "volume_ids": [], "nic_ids": []}})
    }

    fn refused(expected: u64, actual: u64) -> (u16, Value) {
        (
            412,
            json!({"error": {"code": "precondition_failed", "message": "If-Match revision does not match",
                "details": {"expected": expected, "actual": actual}}}),
        )
    }

    #[tokio::test]
    async fn a_spec_changed_between_read_and_write_is_a_conflict_and_not_overwritten() {
        let (api, seen) =
            scripted_api(vec![(200, vm_at(5, 1)), refused(5, 6), (200, vm_at(6, 3))]).await;
        let e = update_vm_spec(&api, "web", |spec| {
            resize_spec(spec, Some(2), None);
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), crate::client::exit::CONFLICT);
        let msg = e.display_message();
        assert!(
            msg.contains("vm web was changed by someone else after it was read at revision 5, it is now at revision 6"),
            "{msg}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            ["GET /v1/vms/web", "PUT /v1/vms/v1 \"5\"", "GET /v1/vms/v1"],
            "one write only"
        );
    }

    #[tokio::test]
    async fn a_revision_moved_by_status_only_is_read_again_and_the_edit_reapplied() {
        let mut done = vm_at(7, 2);
        done["spec"]["vcpus"] = json!(2);
        let (api, seen) = scripted_api(vec![
            (200, vm_at(5, 1)),
            refused(5, 6),
            (200, vm_at(6, 1)),
            (200, done),
        ])
        .await;
        let v = update_vm_spec(&api, "web", |spec| {
            resize_spec(spec, Some(2), None);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(v["spec"]["vcpus"], 2);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /v1/vms/web",
                "PUT /v1/vms/v1 \"5\"",
                "GET /v1/vms/v1",
                "PUT /v1/vms/v1 \"6\""
            ]
        );
    }

    #[test]
    fn attaching_twice_and_detaching_what_is_absent_are_refused() {
        let mut spec = json!({"volume_ids": ["a"]});
        let attach = |spec: &mut Value, id| {
            change_device(
                spec,
                "volume_ids",
                id,
                DeviceChange::Attach,
                "volume x",
                "web",
            )
        };
        assert!(attach(&mut spec, "b").is_ok());
        assert_eq!(spec["volume_ids"], json!(["a", "b"]));
        let e = attach(&mut spec, "a").unwrap_err();
        assert_eq!(e.to_string(), "volume x is already attached to vm web");
        let e = change_device(
            &mut spec,
            "volume_ids",
            "c",
            DeviceChange::Detach,
            "volume c",
            "web",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "volume c is not attached to vm web");
        change_device(
            &mut spec,
            "volume_ids",
            "a",
            DeviceChange::Detach,
            "volume a",
            "web",
        )
        .unwrap();
        assert_eq!(spec["volume_ids"], json!(["b"]));
    }
}
