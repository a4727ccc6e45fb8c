//! `mvirt pod`: pods — OCI containers in a microVM. `run` creates a one-container pod from
//! flags and waits until it runs, `create -f` sends a pod file with several containers,
//! `logs` streams container output, `exec` runs a command in a container over a WebSocket
//! (with the command's exit code as the CLI's), and the actions and reads mirror `mvirt vm`.
//!
//! The verbs are declared here (not in `cli.rs`) so the pod kind stays one module; `cli.rs`
//! only names [`PodCmd`].

pub mod exec;
pub mod logs;
pub mod spec;

use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::Value;

use crate::cli::ListArgs;
use crate::client::{ApiClient, ApiError, EventCursor};
use crate::output;
use crate::resources as res;

use super::ctx::Ctx;
use super::parse::{parse_labels, size};

#[derive(Debug, Subcommand)]
pub enum PodCmd {
    /// List pods with their phase and container states.
    List(ListArgs),
    /// Show one pod (spec, status, each container's state).
    Show { pod: String },
    /// Create a pod with one container (named after the pod) and wait until it runs.
    #[command(
        after_help = "Examples:\n  mvirt pod run web --image 127.0.0.1:5000/httpd:1 --network demo-net --sg web --port http=80\n  \
mvirt pod run job --image busybox:1 --env MODE=once --restart never --command -- /bin/sh -c 'echo hi; sleep 600'\n  \
mvirt pod run cache --image redis:7 --cpus 2 --memory 1G --detach -- --maxmemory 256mb"
    )]
    Run(Box<PodRunArgs>),
    /// Create a pod from a JSON or YAML file (several containers; `-` reads stdin).
    #[command(
        after_help = "Example file (pod.yaml):\n  name: app\n  spec:\n    vcpus: 1\n    \
memory_bytes: 536870912\n    network_interfaces: [{network_id: demo-net, security_group_ids: [web]}]\n    \
containers:\n      - {name: web, image: 127.0.0.1:5000/httpd:1}\n      \
- {name: writer, image: 127.0.0.1:5000/busybox:1, command: [/bin/sh, -c, 'while true; do date; sleep 1; done']}\n\n\
Networks, security groups and NICs may be given by name. The file is the body of POST /v1/pods \
(name, project, labels, spec)."
    )]
    Create {
        /// The pod file (JSON or YAML), `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Print a container's output (`[container] line`); `-f` follows new lines.
    #[command(
        after_help = "Examples:\n  mvirt pod logs web\n  mvirt pod logs app -c writer -f --tail 20"
    )]
    Logs(PodLogsArgs),
    /// Run a command in a container; the command's exit code becomes mvirt's.
    #[command(
        after_help = "Examples:\n  mvirt pod exec web -- cat /etc/os-release\n  \
mvirt pod exec app -c writer -it -- /bin/sh\n  echo data | mvirt pod exec app -c web -i -- tee /tmp/x"
    )]
    Exec(PodExecArgs),
    /// Start a stopped pod.
    Start { pod: String },
    /// Stop a pod: its containers gracefully, then its microVM.
    Stop {
        pod: String,
        /// Kill the pod's microVM at once instead.
        #[arg(long)]
        force: bool,
    },
    /// Restart a pod's microVM (its containers start again).
    Restart { pod: String },
    /// Delete a pod with its microVM and owned NICs.
    Delete { pod: String },
}

#[derive(Debug, Args, Clone)]
pub struct PodRunArgs {
    /// Pod name (also the container's name).
    pub name: String,
    /// OCI image reference, e.g. registry.local:5000/httpd:2.4.
    #[arg(long)]
    pub image: String,
    /// Network (id or name) to give the pod a NIC on (repeatable).
    #[arg(long)]
    pub network: Vec<String>,
    /// Security group (id or name) for the pod's NICs (repeatable).
    #[arg(long = "sg")]
    pub security_groups: Vec<String>,
    /// vCPUs of the pod's microVM.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory of the pod's microVM, e.g. 512M, 1G.
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Environment variable `K=V` of the container (repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// A port the container serves: `80`, `http=80`, `53/udp` (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// The arguments after `--` are the container's command (replacing the image's
    /// entrypoint) instead of arguments to it.
    #[arg(long)]
    pub command: bool,
    /// always, on_failure or never.
    #[arg(long = "restart", default_value = "always", value_parser = ["always", "on_failure", "never"])]
    pub restart_policy: String,
    /// Node id, node name or labels `k=v,k2=v2`.
    #[arg(long)]
    pub node_selector: Option<String>,
    /// Guest hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Return once the pod is created instead of waiting until it runs.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// How long to wait until the pod runs, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The container's arguments (or its command with --command).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct PodLogsArgs {
    /// Pod id or name.
    pub pod: String,
    /// Container (required when the pod has more than one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep the stream open and print new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines so far.
    #[arg(long)]
    pub tail: Option<u64>,
}

#[derive(Debug, Args, Clone)]
pub struct PodExecArgs {
    /// Pod id or name.
    pub pod: String,
    /// Container (required when the pod has more than one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Run the command in a terminal (the local one goes to raw mode; resizes follow).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`; each is passed as it is, never through a shell.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, c: PodCmd) -> Result<(), ApiError> {
    let r = &res::PODS;
    match c {
        PodCmd::List(a) => ctx.list(r, &a).await,
        PodCmd::Show { pod } => ctx.show(r, &pod).await,
        PodCmd::Run(a) => pod_run(ctx, &a).await,
        PodCmd::Create { file } => pod_create(ctx, &file).await,
        PodCmd::Logs(a) => pod_logs(ctx, &a).await,
        PodCmd::Exec(a) => {
            // Reached only through `run_exec` (the exit code is the remote command's).
            let code = exec_code(&ctx.api, &a).await?;
            if code == 0 {
                Ok(())
            } else {
                Err(ApiError::Other(format!("the command exited with {code}")))
            }
        }
        PodCmd::Start { pod } => pod_action(ctx, &pod, "start", false, "start requested").await,
        PodCmd::Stop { pod, force } => {
            let what = if force {
                "forced stop requested"
            } else {
                "stop requested"
            };
            pod_action(ctx, &pod, "stop", force, what).await
        }
        PodCmd::Restart { pod } => {
            pod_action(ctx, &pod, "restart", false, "restart requested").await
        }
        PodCmd::Delete { pod } => ctx.delete(r, &pod, &[]).await,
    }
}

/// `mvirt pod exec`: the process exit code is the remote command's (or an error's code).
pub async fn run_exec(g: &crate::cli::GlobalArgs, a: &PodExecArgs) -> i32 {
    let result = match super::ctx::client_for(g) {
        Ok(api) => exec_code(&api, a).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", e.display_message());
            exec::failure_code(&e)
        }
    }
}

async fn exec_code(api: &ApiClient, a: &PodExecArgs) -> Result<i32, ApiError> {
    if let Some(c) = &a.container {
        spec::check_container_name(c)?;
    }
    if a.command.first().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::Usage("exec needs a command after `--`".into()));
    }
    let id = resolve(api, &a.pod).await?;
    let req = exec::ExecRequest {
        pod: id,
        container: a.container.clone(),
        tty: a.tty,
        command: a.command.clone(),
        size: None,
    };
    exec::run(api, &req, a.stdin).await
}

/// The id of pod `pod` (id or name) in the client's project.
async fn resolve(api: &ApiClient, pod: &str) -> Result<String, ApiError> {
    let v = api
        .get(
            &super::ctx::item_path(&res::PODS, pod),
            &[("project", api.project.clone())],
        )
        .await?;
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::BadResponse(format!("pod {pod}: the response has no id")))
}

async fn pod_logs(ctx: &Ctx, a: &PodLogsArgs) -> Result<(), ApiError> {
    if let Some(c) = &a.container {
        spec::check_container_name(c)?;
    }
    let id = resolve(&ctx.api, &a.pod).await?;
    let q = logs::logs_query(&ctx.api.project, a.container.as_deref(), a.follow, a.tail);
    logs::stream(&ctx.api, &id, &q, |v| {
        ctx.print_stream_item(v, logs::log_line)
    })
    .await
}

async fn pod_action(
    ctx: &Ctx,
    pod: &str,
    action: &str,
    force: bool,
    what: &str,
) -> Result<(), ApiError> {
    let path = format!("{}/{action}", super::ctx::item_path(&res::PODS, pod));
    let mut q = ctx.pq();
    if force {
        q.push(("force", "true".into()));
    }
    let v = ctx.api.post(&path, &q, &serde_json::json!({})).await?;
    ctx.done(&v, &format!("pod {pod}: {what}"))
}

async fn pod_run(ctx: &Ctx, a: &PodRunArgs) -> Result<(), ApiError> {
    // Everything that can be checked locally is, before names are resolved or anything sent.
    let mut r = spec::RunSpec {
        name: a.name.clone(),
        image: a.image.clone(),
        vcpus: a.cpus,
        memory_bytes: size(&a.memory)?,
        env: a.env.clone(),
        ports: a.ports.clone(),
        args: a.args.clone(),
        command_given: a.command,
        restart_policy: a.restart_policy.clone(),
        network_ids: a.network.clone(),
        security_group_ids: a.security_groups.clone(),
        hostname: a.hostname.clone(),
        node_selector: a.node_selector.clone(),
        labels: parse_labels(&a.labels)?,
    };
    spec::run_body(&r, &ctx.api.project)?;
    r.network_ids = ctx.resolve_all(&res::NETWORKS, &a.network).await?;
    r.security_group_ids = ctx
        .resolve_all(&res::SECURITY_GROUPS, &a.security_groups)
        .await?;
    let body = spec::run_body(&r, &ctx.api.project)?;
    let created = ctx.api.create(res::PODS.path, &body).await?;
    let id = created
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if a.detach {
        return ctx.done(&created, &format!("pod {} created ({id})", a.name));
    }
    let revision = created.get("revision").and_then(Value::as_u64);
    let running = wait_running(
        &ctx.api,
        &id,
        revision,
        Duration::from_secs(a.timeout),
        |s| eprintln!("pod {}: {s}", a.name),
    )
    .await?;
    let ip = output::text_at(&running, "status.ipv4_addresses");
    let at = if ip.is_empty() {
        String::new()
    } else {
        format!(" at {ip}")
    };
    ctx.done(&running, &format!("pod {} is running ({id}){at}", a.name))
}

async fn pod_create(ctx: &Ctx, file: &std::path::Path) -> Result<(), ApiError> {
    let (text, source) = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| ApiError::Usage(format!("cannot read the pod from stdin: {e}")))?;
        (s, "stdin".to_string())
    } else {
        let s = std::fs::read_to_string(file).map_err(|e| {
            ApiError::Usage(format!("cannot read the pod file {}: {e}", file.display()))
        })?;
        (s, file.display().to_string())
    };
    let mut body = spec::parse_pod_file(&text, &source)?;
    // The file's project, else the command's; names resolve in that project.
    let mut api = ctx.api.clone();
    match body.get("project").and_then(Value::as_str) {
        Some(p) => api.project = p.to_string(),
        None => body["project"] = Value::String(api.project.clone()),
    }
    let in_project = Ctx {
        api,
        format: ctx.format,
    };
    for (at, kind, name) in spec::references(&body) {
        let r = match kind {
            spec::Reference::Network => &res::NETWORKS,
            spec::Reference::SecurityGroup => &res::SECURITY_GROUPS,
            spec::Reference::Nic => &res::NICS,
        };
        let id = in_project.resolve_id(r, &name).await?;
        spec::set_at(&mut body, &at, &id);
    }
    in_project.create(&res::PODS, body).await
}

/// Where a pod is on its way to running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProgress {
    Running,
    /// It will not get there: the status message (or the failed containers' messages).
    Failed(String),
    /// Still on its way: what it is doing (shown when it changes).
    Waiting(String),
}

/// Reads a pod's progress from its phase, scheduling and container states.
pub fn pod_progress(pod: &Value) -> PodProgress {
    let text = |p: &str| output::text_at(pod, p);
    let phase = text("status.phase");
    let message = text("status.message");
    let container_messages = || {
        output::lookup(pod, "status.containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let m = c.get("message").and_then(Value::as_str).unwrap_or_default();
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                (!m.is_empty()).then(|| format!("{name}: {m}"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match phase.as_str() {
        "running" => PodProgress::Running,
        "failed" => {
            let why = [message, container_messages()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            PodProgress::Failed(if why.is_empty() {
                "no reason given".into()
            } else {
                why
            })
        }
        _ => {
            let sched = text("scheduling.state");
            let reason = text("scheduling.reason");
            let mut s = if phase.is_empty() {
                if sched.is_empty() {
                    "pending".to_string()
                } else {
                    sched
                }
            } else {
                phase
            };
            for extra in [reason, message, container_messages()] {
                if !extra.is_empty() {
                    s.push_str(&format!(": {extra}"));
                }
            }
            PodProgress::Waiting(s)
        }
    }
}

/// Waits until pod `id` runs (returns it), fails (its message, exit 1), is deleted, or
/// `timeout` passes; follows `/v1/events` from `revision` (the create's), so no report is
/// missed, and tells `progress` each new waiting state.
pub async fn wait_running(
    api: &ApiClient,
    id: &str,
    revision: Option<u64>,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Value, ApiError> {
    let path = super::ctx::item_path(&res::PODS, id);
    let q = [("project", api.project.clone())];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut cursor = EventCursor::after(Some(revision.unwrap_or(0).saturating_sub(1)));
    let mut current = api.get(&path, &q).await?;
    let mut last = String::new();
    loop {
        match pod_progress(&current) {
            PodProgress::Running => return Ok(current),
            PodProgress::Failed(why) => {
                return Err(ApiError::Other(format!(
                    "pod {} failed: {why}",
                    name_of(&current, id)
                )))
            }
            PodProgress::Waiting(s) => {
                if s != last {
                    progress(&s);
                    last = s;
                }
            }
        }
        let next = tokio::time::timeout_at(deadline, next_change(api, id, &mut cursor)).await;
        match next {
            Ok(Ok(Some(obj))) => current = obj,
            Ok(Ok(None)) => {
                return Err(ApiError::Other(format!(
                    "pod {} was deleted while waiting for it to run",
                    name_of(&current, id)
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ApiError::Other(format!(
                    "pod {} is not running after {} s (last: {last}); it stays, see `mvirt pod show {}`",
                    name_of(&current, id),
                    timeout.as_secs(),
                    name_of(&current, id)
                )))
            }
        }
    }
}

fn name_of(pod: &Value, id: &str) -> String {
    pod.get("name")
        .and_then(Value::as_str)
        .unwrap_or(id)
        .to_string()
}

/// The pod's next state from the event stream (`None`: deleted); reconnects after a drop.
async fn next_change(
    api: &ApiClient,
    id: &str,
    cursor: &mut EventCursor,
) -> Result<Option<Value>, ApiError> {
    loop {
        let stream = api
            .sse(
                "/v1/events",
                &[("type", "pod".to_string())],
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<PodCmd, clap::Error> {
        let mut all = vec!["mvirt", "pod"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.command {
            Command::Pod(p) => p,
            other => panic!("parsed {other:?}"),
        })
    }

    #[test]
    fn run_takes_everything_after_dashdash_as_it_is() {
        let PodCmd::Run(a) = parse(&[
            "run",
            "web",
            "--image",
            "r/i:1",
            "--env",
            "A=1",
            "-e",
            "B=2",
            "--network",
            "n1",
            "--network",
            "n2",
            "--command",
            "-d",
            "--",
            "/bin/sh",
            "-c",
            "echo $A; exit 3",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert_eq!(a.network, ["n1", "n2"]);
        assert!(a.command && a.detach);
        assert_eq!(a.args, ["/bin/sh", "-c", "echo $A; exit 3"]);
        assert!(parse(&["run", "web"]).is_err(), "--image is required");
        assert!(parse(&["run", "web", "--image", "i", "--restart", "sometimes"]).is_err());
    }

    #[test]
    fn exec_needs_a_command_and_keeps_its_flags_apart() {
        let PodCmd::Exec(a) = parse(&[
            "exec", "web", "-c", "writer", "-it", "--", "ls", "-la", "-t",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.container.as_deref(), Some("writer"));
        assert!(a.stdin && a.tty);
        assert_eq!(a.command, ["ls", "-la", "-t"]);
        assert!(parse(&["exec", "web"]).is_err(), "a command is required");
        assert!(parse(&["exec", "web", "--"]).is_err());
    }

    #[test]
    fn logs_flags_parse() {
        let PodCmd::Logs(a) = parse(&["logs", "app", "-c", "web", "-f", "--tail", "5"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (a.container.as_deref(), a.follow, a.tail),
            (Some("web"), true, Some(5))
        );
        assert!(parse(&["logs", "app", "--tail", "-1"]).is_err());
        assert!(parse(&["logs", "app", "--tail", "x"]).is_err());
    }

    #[test]
    fn progress_reads_phase_scheduling_and_container_messages() {
        assert_eq!(
            pod_progress(&json!({"status": {"phase": "running"}})),
            PodProgress::Running
        );
        assert_eq!(
            pod_progress(
                &json!({"scheduling": {"state": "pending", "reason": "no node has 64 GiB free"}, "status": {}})
            ),
            PodProgress::Waiting("pending: no node has 64 GiB free".into())
        );
        assert_eq!(
            pod_progress(&json!({"status": {"phase": "creating", "containers": [
                {"name": "web", "state": "waiting", "message": "pulling image"}]}})),
            PodProgress::Waiting("creating: web: pulling image".into())
        );
        assert_eq!(
            pod_progress(
                &json!({"status": {"phase": "failed", "message": "image pull failed",
                "containers": [{"name": "web", "message": "manifest unknown"}]}})
            ),
            PodProgress::Failed("image pull failed; web: manifest unknown".into())
        );
        assert_eq!(
            pod_progress(&json!({"status": {"phase": "failed"}})),
            PodProgress::Failed("no reason given".into())
        );
    }
}
