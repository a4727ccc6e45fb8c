//! `mvirt tui`: a full-screen terminal UI.
//!
//! Three kinds of threads of control, joined by channels so the draw loop never waits on the
//! network: an input thread (crossterm's blocking `read`), the command worker (one task per
//! API call, results sent back as `Msg`), and the events worker that follows `/v1/events` and
//! reconnects from the last revision it saw. The draw loop owns the `App` and only reacts to
//! messages: `app.update(msg)` returns commands for the worker, then the screen is redrawn.

pub mod app;
pub mod ui;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::client::ApiClient;
use app::{App, Cmd, Kind, Msg, SnapshotAction, VmForm};

pub async fn run(api: ApiClient) -> std::io::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(std::io::Error::other(
            "mvirt tui needs a terminal (stdin and stdout must be a TTY)",
        ));
    }
    let (msg_tx, mut msg_rx) = unbounded_channel::<Msg>();
    let (cmd_tx, cmd_rx) = unbounded_channel::<Cmd>();

    let input_tx = msg_tx.clone();
    std::thread::spawn(move || loop {
        let msg = match crossterm::event::read() {
            Ok(crossterm::event::Event::Key(k)) => Msg::Key(k),
            Ok(crossterm::event::Event::Resize(w, h)) => Msg::Resize(w, h),
            Ok(_) => continue,
            Err(_) => break,
        };
        if input_tx.send(msg).is_err() {
            break;
        }
    });
    tokio::spawn(command_worker(api.clone(), cmd_rx, msg_tx.clone()));
    tokio::spawn(events_worker(api.clone(), msg_tx.clone()));
    tokio::spawn(stats_worker(api.clone(), msg_tx.clone()));

    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(&api.base, &api.project);
    if let Ok(s) = terminal.size() {
        app.update(Msg::Resize(s.width, s.height));
    }
    for c in app.initial_commands() {
        let _ = cmd_tx.send(c);
    }
    let result = loop {
        if let Err(e) = terminal.draw(|f| ui::draw(f, &app)) {
            break Err(e);
        }
        let Some(first) = msg_rx.recv().await else {
            break Ok(());
        };
        // Apply everything already queued before drawing again (bursts of events).
        let mut batch = vec![first];
        while let Ok(m) = msg_rx.try_recv() {
            batch.push(m);
        }
        for m in batch {
            for c in app.update(m) {
                let _ = cmd_tx.send(c);
            }
        }
        if app.quit {
            break Ok(());
        }
    };
    ratatui::restore();
    result
}

/// Reads every online node's stats every [`STATS_EVERY`] for the usage charts. A failed
/// reading (no node, the API away) is skipped: the charts wait for the next.
async fn stats_worker(api: ApiClient, tx: UnboundedSender<Msg>) {
    loop {
        if let Ok(sample) = crate::top::sample(&api).await {
            if tx.send(Msg::Stats(Box::new(sample))).is_err() {
                return;
            }
        }
        tokio::time::sleep(STATS_EVERY).await;
    }
}

/// How often the TUI reads usage.
pub const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs each command as its own task so a slow call never holds up the others.
async fn command_worker(api: ApiClient, mut rx: UnboundedReceiver<Cmd>, tx: UnboundedSender<Msg>) {
    use crate::commands::pod::exec::Input;
    let mut console_input: Option<UnboundedSender<Vec<u8>>> = None;
    let mut exec_input: Option<tokio::sync::mpsc::Sender<Input>> = None;
    let mut pod_logs: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::OpenConsole { id } => {
                let (in_tx, in_rx) = unbounded_channel();
                console_input = Some(in_tx);
                tokio::spawn(console_task(api.clone(), id, in_rx, tx.clone()));
            }
            Cmd::OpenExec {
                id,
                container,
                cols,
                rows,
            } => {
                let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
                exec_input = Some(in_tx);
                let req = crate::commands::pod::exec::ExecRequest {
                    pod: id,
                    container: Some(container),
                    tty: true,
                    command: vec!["/bin/sh".into()],
                    size: Some((cols, rows)),
                };
                tokio::spawn(exec_task(api.clone(), req, in_rx, tx.clone()));
            }
            Cmd::ConsoleInput(bytes) => {
                if let Some(c) = &console_input {
                    let _ = c.send(bytes.clone());
                }
                if let Some(e) = &exec_input {
                    let _ = e.send(Input::Stdin(bytes)).await;
                }
            }
            Cmd::ExecResize { cols, rows } => {
                if let Some(e) = &exec_input {
                    let _ = e.send(Input::Resize(cols, rows)).await;
                }
            }
            Cmd::CloseConsole => {
                console_input = None;
                exec_input = None;
            }
            Cmd::OpenPodLogs { id, container } => {
                if let Some(t) = pod_logs.take() {
                    t.abort();
                }
                pod_logs = Some(tokio::spawn(pod_logs_task(
                    api.clone(),
                    id,
                    container,
                    tx.clone(),
                )));
            }
            Cmd::ClosePodLogs => {
                if let Some(t) = pod_logs.take() {
                    t.abort();
                }
            }
            other => {
                let api = api.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    for m in execute(&api, other).await {
                        let _ = tx.send(m);
                    }
                });
            }
        }
    }
}

fn item_path(kind: Kind, id: &str) -> String {
    format!("{}/{}", kind.path(), crate::commands::ctx::encode(id))
}

async fn execute(api: &ApiClient, cmd: Cmd) -> Vec<Msg> {
    let project = vec![("project", api.project.clone())];
    match cmd {
        Cmd::Load(kind) => {
            let q = if kind == Kind::Node { vec![] } else { project };
            match api.list_all(kind.path(), &q).await {
                Ok(items) => vec![Msg::Loaded(kind, items)],
                Err(e) => vec![Msg::LoadFailed(kind, e.display_message())],
            }
        }
        Cmd::LoadLogs => match api.get("/v1/logs", &[("limit", "200".into())]).await {
            Ok(v) => vec![Msg::Logs(crate::commands::logs::entries(&v))],
            Err(e) => vec![Msg::Failed(format!("logs: {}", e.display_message()))],
        },
        Cmd::PodAction { id, name, action } => {
            let path = format!("{}/{action}", item_path(Kind::Pod, &id));
            match api.post(&path, &[], &serde_json::json!({})).await {
                Ok(v) => vec![
                    Msg::Done(format!("{action} of pod {name} requested")),
                    Msg::Event(serde_json::json!({"kind": "pod", "id": id, "object": v})),
                ],
                Err(e) => vec![Msg::Failed(e.display_message())],
            }
        }
        Cmd::VmAction { id, name, action } => {
            let path = format!("{}/{action}", item_path(Kind::Vm, &id));
            match api.post(&path, &[], &serde_json::json!({})).await {
                Ok(_) => vec![Msg::Done(format!("{action} of vm {name} requested"))],
                Err(e) => vec![Msg::Failed(e.display_message())],
            }
        }
        Cmd::Delete { kind, id, name } => match api.delete(&item_path(kind, &id), &[]).await {
            Ok(_) => vec![
                Msg::Done(format!("{} {name} deleted", kind.singular())),
                Msg::Event(deleted(kind, &id)),
            ],
            Err(e) => vec![Msg::Failed(e.display_message())],
        },
        Cmd::CreateVm(form) => match create_vm(api, &form).await {
            Ok(v) => {
                let ev = serde_json::json!({"kind": "vm", "id": v.get("id").cloned().unwrap_or(Value::Null), "object": v});
                vec![
                    Msg::Done(format!("vm {} created", form.name())),
                    Msg::Event(ev),
                ]
            }
            Err(e) => vec![Msg::Failed(e.display_message())],
        },
        Cmd::VolumeSnapshot {
            volume_id,
            volume,
            action,
        } => {
            let base = format!("{}/snapshots", item_path(Kind::Volume, &volume_id));
            let (path, body, done) = match &action {
                SnapshotAction::Take { name } => (
                    base,
                    serde_json::json!({"name": name}),
                    format!("snapshot {name} of volume {volume} requested"),
                ),
                SnapshotAction::Rollback { id, name } => (
                    format!("{base}/{id}/rollback"),
                    serde_json::json!({}),
                    format!("rollback of volume {volume} to {name} accepted"),
                ),
                SnapshotAction::Promote { id, template, .. } => (
                    format!("{base}/{id}/promote"),
                    serde_json::json!({"name": template}),
                    format!("template {template} created"),
                ),
            };
            match api.post(&path, &[], &body).await {
                // The volume's new state arrives through the event stream.
                Ok(_) => vec![Msg::Done(done)],
                Err(e) => vec![Msg::Failed(e.display_message())],
            }
        }
        Cmd::ResizeVm {
            id,
            name,
            vcpus,
            memory_bytes,
        } => {
            let resized = crate::commands::vm::update_vm_spec(api, &id, |spec| {
                crate::commands::vm::resize_spec(spec, Some(vcpus), Some(memory_bytes));
                Ok(())
            })
            .await;
            match resized {
                Ok(v) => {
                    let what = format!(
                        "vm {name} resized to {vcpus} vCPUs, {}",
                        crate::output::human_bytes(memory_bytes)
                    );
                    let done = crate::commands::vm::with_conditions(what, &v).replace('\n', "; ");
                    let ev = serde_json::json!({"kind": "vm", "id": id, "object": v});
                    vec![Msg::Done(done), Msg::Event(ev)]
                }
                Err(e) => vec![Msg::Failed(e.display_message())],
            }
        }
        Cmd::OpenConsole { .. }
        | Cmd::ConsoleInput(_)
        | Cmd::CloseConsole
        | Cmd::OpenExec { .. }
        | Cmd::ExecResize { .. }
        | Cmd::OpenPodLogs { .. }
        | Cmd::ClosePodLogs => vec![],
    }
}

fn deleted(kind: Kind, id: &str) -> Value {
    serde_json::json!({"kind": kind.singular(), "id": id, "object": null})
}

async fn create_vm(api: &ApiClient, f: &VmForm) -> Result<Value, crate::client::ApiError> {
    let v = |i: usize| f.values[i].trim().to_string();
    let opt = |i: usize| Some(v(i)).filter(|s| !s.is_empty());
    let cpus: u32 = v(1)
        .parse()
        .map_err(|_| crate::client::ApiError::Usage(format!("vCPUs {:?} is not a number", v(1))))?;
    let args = crate::cli::VmCreateArgs {
        name: v(0),
        cpus,
        memory: v(2),
        template: opt(3),
        disk_size: opt(4).unwrap_or_else(|| "10G".into()),
        network: opt(5).into_iter().collect(),
        security_groups: vec![],
        volume: vec![],
        ssh_key: opt(6).into_iter().collect(),
        user_data: None,
        node_selector: None,
        hostname: None,
        stopped: false,
        hugepages: false,
        nested_virtualization: false,
        labels: vec![],
    };
    let project = vec![("project", api.project.clone())];
    let id_of = |x: Value| {
        x.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut ids = crate::commands::vm::VmCreateIds::default();
    if let Some(t) = &args.template {
        ids.template = Some(id_of(
            api.get(&item_path(Kind::Template, t), &project).await?,
        ));
    }
    for n in &args.network {
        ids.networks.push(id_of(
            api.get(&item_path(Kind::Network, n), &project).await?,
        ));
    }
    ids.ssh_keys = args.ssh_key.clone();
    let body = crate::commands::vm::vm_create_body(&args, &api.project, &ids)?;
    api.create("/v1/vms", &body).await
}

/// Follows `/v1/events` for the TUI's lifetime, resuming from the last revision after drops.
async fn events_worker(api: ApiClient, tx: UnboundedSender<Msg>) {
    let head = match api.get("/v1/projects", &[("limit", "1".into())]).await {
        Ok(v) => v.get("revision").and_then(Value::as_u64),
        Err(_) => None,
    };
    let mut cursor = crate::client::EventCursor::after(head);
    loop {
        match api.sse("/v1/events", &[], cursor.resume_after()).await {
            Ok(stream) => {
                let _ = tx.send(Msg::Stream(true, String::new()));
                futures::pin_mut!(stream);
                let mut why = "the API closed the stream".to_string();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                                continue;
                            };
                            if cursor.accept(&v) && tx.send(Msg::Event(v)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            why = e.display_message();
                            break;
                        }
                    }
                }
                if tx.send(Msg::Stream(false, why)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if tx.send(Msg::Stream(false, e.display_message())).is_err() {
                    return;
                }
            }
        }
        // Back off before reconnecting so a down API is not hammered.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

async fn console_task(
    api: ApiClient,
    vm_id: String,
    mut input: UnboundedReceiver<Vec<u8>>,
    tx: UnboundedSender<Msg>,
) {
    use tokio_tungstenite::tungstenite::Message;
    let ws = match crate::console::connect(&api, &vm_id).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = tx.send(Msg::ConsoleClosed(e.display_message()));
            return;
        }
    };
    let _ = tx.send(Msg::ConsoleOutput(Vec::new()));
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            m = source.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = tx.send(Msg::ConsoleOutput(b.to_vec())); }
                Some(Ok(Message::Text(t))) => { let _ = tx.send(Msg::ConsoleOutput(t.as_bytes().to_vec())); }
                Some(Ok(Message::Close(_))) | None => { let _ = tx.send(Msg::ConsoleClosed("closed by the API".into())); return; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { let _ = tx.send(Msg::ConsoleClosed(e.to_string())); return; }
            },
            i = input.recv() => match i {
                Some(bytes) => { if sink.send(Message::Binary(bytes.into())).await.is_err() { return; } }
                None => { let _ = sink.send(Message::Close(None)).await; return; }
            },
        }
    }
}

/// Follows one container's logs (the last 200 lines, then new ones) into `PodLogs` messages.
async fn pod_logs_task(
    api: ApiClient,
    pod_id: String,
    container: String,
    tx: UnboundedSender<Msg>,
) {
    use crate::commands::pod::logs;
    let q = logs::logs_query(&api.project, Some(&container), true, Some(200));
    let send_tx = tx.clone();
    let id = pod_id.clone();
    let result = logs::stream(&api, &pod_id, &q, |v| {
        let _ = send_tx.send(Msg::PodLogs {
            pod_id: id.clone(),
            lines: vec![logs::log_line(v)],
        });
    })
    .await;
    let why = match result {
        Ok(()) => "the stream ended".to_string(),
        Err(e) => e.display_message(),
    };
    let _ = tx.send(Msg::PodLogsEnded { pod_id, why });
}

/// A shell in a pod's container: the exec WebSocket's stdout and stderr go to the terminal
/// view, keystrokes and resizes to the shell; ends with the shell's exit code.
async fn exec_task(
    api: ApiClient,
    req: crate::commands::pod::exec::ExecRequest,
    input: tokio::sync::mpsc::Receiver<crate::commands::pod::exec::Input>,
    tx: UnboundedSender<Msg>,
) {
    use crate::commands::pod::exec;
    let (path, q) = exec::exec_query(&req, &api.project);
    let ws = match crate::commands::ctx::websocket(&api, &path, &q).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = tx.send(Msg::ConsoleClosed(e.display_message()));
            return;
        }
    };
    let _ = tx.send(Msg::ConsoleOutput(Vec::new()));
    let mut out = MsgWriter(tx.clone());
    let mut err = MsgWriter(tx.clone());
    let why = match exec::session(ws, input, true, &mut out, &mut err).await {
        Ok(code) => format!("the shell exited with {code}"),
        Err(e) => e.display_message(),
    };
    let _ = tx.send(Msg::ConsoleClosed(why));
}

/// Writes bytes as `ConsoleOutput` messages (the exec session's stdout and stderr).
struct MsgWriter(UnboundedSender<Msg>);

impl tokio::io::AsyncWrite for MsgWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let _ = self.0.send(Msg::ConsoleOutput(buf.to_vec()));
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
