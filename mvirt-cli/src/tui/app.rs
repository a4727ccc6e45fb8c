//! The TUI's state and its transitions: `App::update` takes a message (a key, a worker result,
//! an event from `/v1/events`) and returns the I/O commands to hand to the workers. No I/O and
//! no terminal here, so every transition and every screen is testable.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::Value;

use crate::console::EscapeDetector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Vms,
    Nodes,
    Networks,
    Storage,
    Logs,
    Pods,
}

pub const VIEWS: [View; 6] = [
    View::Vms,
    View::Nodes,
    View::Networks,
    View::Storage,
    View::Logs,
    View::Pods,
];

impl View {
    pub fn title(self) -> &'static str {
        match self {
            View::Vms => "VMs",
            View::Nodes => "Nodes",
            View::Networks => "Networks",
            View::Storage => "Storage",
            View::Logs => "Logs",
            View::Pods => "Pods",
        }
    }

    fn index(self) -> usize {
        VIEWS.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// Resource collections the TUI keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Vm,
    Node,
    Network,
    Volume,
    Template,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Vm,
        Kind::Node,
        Kind::Network,
        Kind::Volume,
        Kind::Template,
        Kind::Pod,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Kind::Vm => "/v1/vms",
            Kind::Node => "/v1/nodes",
            Kind::Network => "/v1/networks",
            Kind::Volume => "/v1/volumes",
            Kind::Template => "/v1/templates",
            Kind::Pod => "/v1/pods",
        }
    }

    /// The `kind` string of events.
    pub fn from_event_kind(s: &str) -> Option<Kind> {
        Some(match s {
            "vm" => Kind::Vm,
            "node" => Kind::Node,
            "network" => Kind::Network,
            "volume" => Kind::Volume,
            "template" => Kind::Template,
            "pod" => Kind::Pod,
            _ => return None,
        })
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Node => "node",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Template => "template",
            Kind::Pod => "pod",
        }
    }
}

/// What the app asks the workers to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Load(Kind),
    LoadLogs,
    VmAction {
        id: String,
        name: String,
        action: &'static str,
    },
    Delete {
        kind: Kind,
        id: String,
        name: String,
    },
    CreateVm(VmForm),
    /// A snapshot action on a volume: `POST /v1/volumes/{id}/snapshots[/{snapshot}/{action}]`.
    VolumeSnapshot {
        volume_id: String,
        volume: String,
        action: SnapshotAction,
    },
    /// Set a VM's vCPUs and memory (read, change, write back at the read revision).
    ResizeVm {
        id: String,
        name: String,
        vcpus: u32,
        memory_bytes: u64,
    },
    OpenConsole {
        id: String,
    },
    ConsoleInput(Vec<u8>),
    CloseConsole,
    /// `POST /v1/pods/{id}/{action}` (start, stop, restart).
    PodAction {
        id: String,
        name: String,
        action: &'static str,
    },
    /// Follow a pod container's logs (the last lines first) until `ClosePodLogs`.
    OpenPodLogs {
        id: String,
        container: String,
    },
    ClosePodLogs,
    /// A shell (`/bin/sh` with a terminal) in a pod's container; input and detach as for the
    /// console (`ConsoleInput`, `CloseConsole`).
    OpenExec {
        id: String,
        container: String,
        cols: u16,
        rows: u16,
    },
    /// The exec terminal's new size.
    ExecResize {
        cols: u16,
        rows: u16,
    },
}

/// What comes back to the app.
#[derive(Debug, Clone)]
pub enum Msg {
    Key(KeyEvent),
    Resize(u16, u16),
    Loaded(Kind, Vec<Value>),
    LoadFailed(Kind, String),
    Logs(Vec<Value>),
    /// One `/v1/events` event (`{"revision","type","kind","id","object"}`).
    Event(Value),
    /// The events stream connected (true) or dropped (false, with the reason).
    Stream(bool, String),
    Done(String),
    Failed(String),
    ConsoleOutput(Vec<u8>),
    ConsoleClosed(String),
    /// Lines of the followed pod logs (`[container] line`) of pod `pod_id`.
    PodLogs {
        pod_id: String,
        lines: Vec<String>,
    },
    /// The followed logs ended (why).
    PodLogsEnded {
        pod_id: String,
        why: String,
    },
    /// A reading of every online node's stats (the stats worker, every 2 s).
    Stats(Box<crate::top::Sample>),
}

/// How many points a usage chart keeps (2 s apart: four minutes).
pub const USAGE_POINTS: usize = 120;

/// The recent usage of one node, VM or pod: one point per stats reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSeries {
    /// CPU %, of one CPU for a VM or pod, of all CPUs for a node.
    pub cpu_percent: std::collections::VecDeque<u64>,
    /// Network bytes per second, both directions (a node: summed over its guests).
    pub net_bytes_per_sec: std::collections::VecDeque<u64>,
}

impl UsageSeries {
    fn push(&mut self, cpu: u64, net: u64) {
        for (series, value) in [
            (&mut self.cpu_percent, cpu),
            (&mut self.net_bytes_per_sec, net),
        ] {
            series.push_back(value);
            if series.len() > USAGE_POINTS {
                series.pop_front();
            }
        }
    }
}

/// The charts' data: the last reading (rates need the previous one) and a series per id.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    last: Option<crate::top::Sample>,
    pub series: std::collections::HashMap<String, UsageSeries>,
}

impl Usage {
    /// Adds one point per node, VM and pod from a new reading.
    pub fn add(&mut self, sample: crate::top::Sample) {
        let rows = crate::top::rows(self.last.as_ref(), &sample);
        let net = |r: &crate::top::Row| {
            r.net_rx_bytes_per_sec.unwrap_or(0.0) + r.net_tx_bytes_per_sec.unwrap_or(0.0)
        };
        for row in &rows {
            // A first reading (or a restarted process) has no rates yet.
            let Some(cpu) = row.cpu_percent else {
                continue;
            };
            let net = if row.kind == "node" {
                rows.iter()
                    .filter(|g| g.kind != "node" && g.node == row.node)
                    .map(net)
                    .sum()
            } else {
                net(row)
            };
            self.series
                .entry(row.id.clone())
                .or_default()
                .push(cpu.round() as u64, net.round() as u64);
        }
        self.last = Some(sample);
    }
}

/// What the storage view does with the selected volume's snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Take a snapshot with this name.
    Take { name: String },
    /// Roll back to this snapshot (id, name).
    Rollback { id: String, name: String },
    /// Copy this snapshot into a template named `template`.
    Promote {
        id: String,
        name: String,
        template: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    VmAction {
        id: String,
        name: String,
        action: &'static str,
    },
    PodAction {
        id: String,
        name: String,
        action: &'static str,
    },
    VolumeSnapshot {
        volume_id: String,
        volume: String,
        action: SnapshotAction,
    },
    Delete {
        kind: Kind,
        id: String,
        name: String,
    },
    ResizeVm {
        id: String,
        name: String,
        vcpus: u32,
        memory_bytes: u64,
    },
}

impl Confirm {
    pub fn question(&self) -> String {
        match self {
            Confirm::VmAction { name, action, .. } => format!("{action} vm {name}?"),
            Confirm::PodAction { name, action, .. } => format!("{action} pod {name}?"),
            Confirm::VolumeSnapshot { volume, action, .. } => match action {
                SnapshotAction::Take { name } => format!("snapshot volume {volume} as {name}?"),
                SnapshotAction::Rollback { name, .. } => {
                    format!("roll volume {volume} back to snapshot {name}?")
                }
                SnapshotAction::Promote { name, template, .. } => {
                    format!("promote snapshot {name} of volume {volume} to template {template}?")
                }
            },
            Confirm::Delete { kind, name, .. } => format!("delete {} {name}?", kind.singular()),
            Confirm::ResizeVm {
                name,
                vcpus,
                memory_bytes,
                ..
            } => format!(
                "resize vm {name} to {vcpus} vCPUs, {}?",
                crate::output::human_bytes(*memory_bytes)
            ),
        }
    }

    fn into_cmd(self) -> Cmd {
        match self {
            Confirm::VmAction { id, name, action } => Cmd::VmAction { id, name, action },
            Confirm::PodAction { id, name, action } => Cmd::PodAction { id, name, action },
            Confirm::VolumeSnapshot {
                volume_id,
                volume,
                action,
            } => Cmd::VolumeSnapshot {
                volume_id,
                volume,
                action,
            },
            Confirm::Delete { kind, id, name } => Cmd::Delete { kind, id, name },
            Confirm::ResizeVm {
                id,
                name,
                vcpus,
                memory_bytes,
            } => Cmd::ResizeVm {
                id,
                name,
                vcpus,
                memory_bytes,
            },
        }
    }
}

pub const FORM_FIELDS: [&str; 7] = [
    "Name",
    "vCPUs",
    "Memory",
    "Template",
    "Disk size",
    "Network",
    "SSH key",
];

/// The create-VM form: free text fields, validated by the worker and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct VmForm {
    pub values: [String; 7],
    pub focus: usize,
}

impl Default for VmForm {
    fn default() -> Self {
        VmForm {
            values: [
                String::new(),
                "1".into(),
                "512M".into(),
                String::new(),
                "10G".into(),
                String::new(),
                String::new(),
            ],
            focus: 0,
        }
    }
}

impl VmForm {
    pub fn name(&self) -> &str {
        self.values[0].trim()
    }
}

/// The resize prompt of the VM view: one line `<vCPUs> <memory>`, filled with the VM's current
/// values.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizePrompt {
    pub id: String,
    pub name: String,
    pub input: String,
}

impl ResizePrompt {
    /// `4 8G` into (vCPUs, memory bytes).
    pub fn parse(&self) -> Result<(u32, u64), String> {
        let mut words = self.input.split_whitespace();
        let (Some(cpus), Some(memory), None) = (words.next(), words.next(), words.next()) else {
            return Err("type vCPUs and memory, e.g. 4 8G".into());
        };
        let vcpus: u32 = cpus
            .parse()
            .map_err(|_| format!("vCPUs {cpus:?} is not a number"))?;
        let memory_bytes = crate::output::parse_size(memory)?;
        Ok((vcpus, memory_bytes))
    }
}

pub struct ConsoleView {
    pub vm_id: String,
    /// The VM's name, or `pod/container` for an exec.
    pub vm_name: String,
    pub screen: vt100::Parser,
    pub connected: bool,
    /// A shell in a pod's container rather than a VM's serial console.
    pub exec: bool,
    escape: EscapeDetector,
}

/// The followed logs of one container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodLogsView {
    pub pod_id: String,
    pub pod_name: String,
    pub container: String,
    /// `[container] line`, oldest first, at most [`POD_LOG_LINES`].
    pub lines: Vec<String>,
    /// Set when the stream ended (the reason).
    pub ended: Option<String>,
}

/// How many log lines the pod logs view keeps.
pub const POD_LOG_LINES: usize = 2000;

pub enum Modal {
    Confirm(Confirm),
    CreateVm(VmForm),
    Resize(ResizePrompt),
    Console(Box<ConsoleView>),
    PodLogs(PodLogsView),
    Help,
}

pub struct App {
    pub view: View,
    pub vms: Vec<Value>,
    pub nodes: Vec<Value>,
    pub networks: Vec<Value>,
    pub volumes: Vec<Value>,
    pub templates: Vec<Value>,
    pub pods: Vec<Value>,
    pub logs: Vec<Value>,
    selected: [usize; 6],
    /// The container selected in the pod detail pane (index into the pod's containers).
    pub pod_container: usize,
    pub modal: Option<Modal>,
    /// Last outcome or error, shown above the footer.
    pub status: String,
    /// Whether the live event stream is connected.
    pub live: bool,
    pub quit: bool,
    pub size: (u16, u16),
    pub project: String,
    pub api_url: String,
    /// Recent CPU and network usage, charted under the VM, node and pod lists.
    pub usage: Usage,
}

impl App {
    pub fn new(api_url: &str, project: &str) -> App {
        App {
            view: View::Vms,
            vms: vec![],
            nodes: vec![],
            networks: vec![],
            volumes: vec![],
            templates: vec![],
            pods: vec![],
            logs: vec![],
            selected: [0; 6],
            pod_container: 0,
            modal: None,
            status: "loading…".into(),
            live: false,
            quit: false,
            size: (80, 24),
            project: project.into(),
            api_url: api_url.into(),
            usage: Usage::default(),
        }
    }

    /// The commands to run at start.
    pub fn initial_commands(&self) -> Vec<Cmd> {
        let mut c: Vec<Cmd> = Kind::ALL.iter().map(|k| Cmd::Load(*k)).collect();
        c.push(Cmd::LoadLogs);
        c
    }

    pub fn items(&self, kind: Kind) -> &Vec<Value> {
        match kind {
            Kind::Vm => &self.vms,
            Kind::Node => &self.nodes,
            Kind::Network => &self.networks,
            Kind::Volume => &self.volumes,
            Kind::Template => &self.templates,
            Kind::Pod => &self.pods,
        }
    }

    fn items_mut(&mut self, kind: Kind) -> &mut Vec<Value> {
        match kind {
            Kind::Vm => &mut self.vms,
            Kind::Node => &mut self.nodes,
            Kind::Network => &mut self.networks,
            Kind::Volume => &mut self.volumes,
            Kind::Template => &mut self.templates,
            Kind::Pod => &mut self.pods,
        }
    }

    /// The collection the current view's selection moves over.
    pub fn view_kind(&self) -> Option<Kind> {
        match self.view {
            View::Vms => Some(Kind::Vm),
            View::Nodes => Some(Kind::Node),
            View::Networks => Some(Kind::Network),
            View::Storage => Some(Kind::Volume),
            View::Logs => None,
            View::Pods => Some(Kind::Pod),
        }
    }

    fn view_len(&self) -> usize {
        match self.view_kind() {
            Some(k) => self.items(k).len(),
            None => self.logs.len(),
        }
    }

    pub fn selected(&self) -> usize {
        self.selected[self.view.index()].min(self.view_len().saturating_sub(1))
    }

    pub fn selected_item(&self) -> Option<&Value> {
        self.view_kind()
            .and_then(|k| self.items(k).get(self.selected()))
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Cmd> {
        match msg {
            Msg::Key(k) => self.key(k),
            Msg::Resize(w, h) => {
                self.size = (w, h);
                if let Some(Modal::Console(c)) = &mut self.modal {
                    let (rows, cols) = console_size(w, h);
                    c.screen.set_size(rows, cols);
                    if c.exec {
                        return vec![Cmd::ExecResize { cols, rows }];
                    }
                }
                vec![]
            }
            Msg::Loaded(kind, mut items) => {
                sort_by_name(&mut items);
                *self.items_mut(kind) = items;
                if self.status == "loading…" {
                    self.status.clear();
                }
                vec![]
            }
            Msg::LoadFailed(kind, e) => {
                self.status = format!("loading {}s failed: {e}", kind.singular());
                vec![]
            }
            Msg::Logs(items) => {
                self.logs = items;
                vec![]
            }
            Msg::Event(ev) => {
                self.apply_event(&ev);
                vec![]
            }
            Msg::Stream(up, why) => {
                self.live = up;
                if !up {
                    self.status = format!("live updates interrupted: {why} (reconnecting)");
                }
                vec![]
            }
            Msg::Done(s) => {
                self.status = s;
                vec![]
            }
            Msg::Failed(s) => {
                self.status = format!("error: {s}");
                vec![]
            }
            Msg::ConsoleOutput(bytes) => {
                if let Some(Modal::Console(c)) = &mut self.modal {
                    c.screen.process(&bytes);
                    c.connected = true;
                }
                vec![]
            }
            Msg::ConsoleClosed(why) => {
                if let Some(Modal::Console(c)) = &mut self.modal {
                    c.connected = false;
                    let what = if c.exec { "exec in" } else { "console of" };
                    self.status = format!("{what} {} closed: {why}", c.vm_name);
                }
                vec![]
            }
            Msg::PodLogs { pod_id, lines } => {
                if let Some(Modal::PodLogs(v)) = &mut self.modal {
                    if v.pod_id == pod_id {
                        v.lines.extend(lines);
                        let extra = v.lines.len().saturating_sub(POD_LOG_LINES);
                        v.lines.drain(..extra);
                    }
                }
                vec![]
            }
            Msg::PodLogsEnded { pod_id, why } => {
                if let Some(Modal::PodLogs(v)) = &mut self.modal {
                    if v.pod_id == pod_id {
                        v.ended = Some(why);
                    }
                }
                vec![]
            }
            Msg::Stats(sample) => {
                self.usage.add(*sample);
                vec![]
            }
        }
    }

    /// Upserts or removes the object an event carries.
    pub fn apply_event(&mut self, ev: &Value) {
        let Some(kind) = ev
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::from_event_kind)
        else {
            return;
        };
        let Some(id) = ev.get("id").and_then(Value::as_str) else {
            return;
        };
        let project = self.project.clone();
        let items = self.items_mut(kind);
        let pos = items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(id));
        match ev.get("object").filter(|o| !o.is_null()) {
            None => {
                if let Some(p) = pos {
                    items.remove(p);
                }
            }
            Some(obj) => {
                let in_project = kind == Kind::Node
                    || obj.get("project").and_then(Value::as_str) == Some(project.as_str());
                if !in_project {
                    return;
                }
                let rev = |v: &Value| v.get("revision").and_then(Value::as_u64).unwrap_or(0);
                match pos {
                    Some(p) if rev(&items[p]) > rev(obj) => {} // stale replay
                    Some(p) => items[p] = obj.clone(),
                    None => {
                        items.push(obj.clone());
                        sort_by_name(items);
                    }
                }
            }
        }
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Cmd> {
        if k.kind == crossterm::event::KeyEventKind::Release {
            return vec![];
        }
        match self.modal.take() {
            Some(Modal::Confirm(c)) => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => {
                    self.status = format!("{}…", c.question().trim_end_matches('?'));
                    vec![c.into_cmd()]
                }
                KeyCode::Char('n') | KeyCode::Esc | KeyCode::Char('q') => vec![],
                _ => {
                    self.modal = Some(Modal::Confirm(c));
                    vec![]
                }
            },
            Some(Modal::CreateVm(f)) => self.form_key(f, k),
            Some(Modal::Resize(p)) => self.resize_key(p, k),
            Some(Modal::Console(c)) => self.console_key(c, k),
            Some(Modal::PodLogs(v)) => match k.code {
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('l') => {
                    self.status = format!("stopped following {}/{}", v.pod_name, v.container);
                    vec![Cmd::ClosePodLogs]
                }
                _ => {
                    self.modal = Some(Modal::PodLogs(v));
                    vec![]
                }
            },
            Some(Modal::Help) => vec![],
            None => self.view_key(k),
        }
    }

    fn view_key(&mut self, k: KeyEvent) -> Vec<Cmd> {
        let before = self.view;
        let mut cmds = self.view_key_inner(k);
        // The audit log has no live feed here: refresh it whenever the view is entered.
        if self.view == View::Logs && before != View::Logs {
            cmds.push(Cmd::LoadLogs);
        }
        cmds
    }

    fn view_key_inner(&mut self, k: KeyEvent) -> Vec<Cmd> {
        let idx = self.view.index();
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => self.quit = true,
            KeyCode::Tab | KeyCode::Right => self.view = VIEWS[(idx + 1) % VIEWS.len()],
            KeyCode::BackTab | KeyCode::Left => {
                self.view = VIEWS[(idx + VIEWS.len() - 1) % VIEWS.len()]
            }
            KeyCode::Char(c @ '1'..='6') => self.view = VIEWS[(c as usize) - ('1' as usize)],
            KeyCode::Down | KeyCode::Char('j') => {
                let n = self.view_len();
                self.selected[idx] = (self.selected() + 1).min(n.saturating_sub(1));
                self.pod_container = 0;
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected[idx] = self.selected().saturating_sub(1);
                self.pod_container = 0;
            }
            KeyCode::Char(c @ ('s' | 'o' | 'R')) if self.view == View::Pods => {
                let action = match c {
                    's' => "start",
                    'o' => "stop",
                    _ => "restart",
                };
                if let Some((id, name)) = self.selected_ident() {
                    self.modal = Some(Modal::Confirm(Confirm::PodAction { id, name, action }));
                }
            }
            KeyCode::Char('c') if self.view == View::Pods => {
                let n = self
                    .selected_item()
                    .map(pod_containers)
                    .unwrap_or_default()
                    .len();
                if n > 0 {
                    self.pod_container = (self.selected_pod_container_index() + 1) % n;
                }
            }
            KeyCode::Char('l') if self.view == View::Pods => {
                if let Some(((id, name), container)) =
                    self.selected_ident().zip(self.selected_pod_container())
                {
                    self.modal = Some(Modal::PodLogs(PodLogsView {
                        pod_id: id.clone(),
                        pod_name: name,
                        container: container.clone(),
                        lines: vec![],
                        ended: None,
                    }));
                    return vec![Cmd::OpenPodLogs { id, container }];
                }
            }
            KeyCode::Enter if self.view == View::Pods => {
                if let Some(((id, name), container)) =
                    self.selected_ident().zip(self.selected_pod_container())
                {
                    let (rows, cols) = console_size(self.size.0, self.size.1);
                    self.modal = Some(Modal::Console(Box::new(ConsoleView {
                        vm_id: id.clone(),
                        vm_name: format!("{name}/{container}"),
                        screen: vt100::Parser::new(rows, cols, 500),
                        connected: false,
                        exec: true,
                        escape: EscapeDetector::default(),
                    })));
                    return vec![Cmd::OpenExec {
                        id,
                        container,
                        cols,
                        rows,
                    }];
                }
            }
            KeyCode::Char('?') => self.modal = Some(Modal::Help),
            KeyCode::Char('r') => {
                self.status = "reloading…".into();
                return match self.view_kind() {
                    Some(Kind::Volume) => vec![Cmd::Load(Kind::Volume), Cmd::Load(Kind::Template)],
                    Some(kind) => vec![Cmd::Load(kind)],
                    None => vec![Cmd::LoadLogs],
                };
            }
            KeyCode::Char('n') if self.view == View::Vms => {
                self.modal = Some(Modal::CreateVm(VmForm::default()))
            }
            KeyCode::Char(c @ ('s' | 'o' | 'x' | 'R')) if self.view == View::Vms => {
                let action = match c {
                    's' => "start",
                    'o' => "stop",
                    'x' => "kill",
                    _ => "restart",
                };
                if let Some((id, name)) = self.selected_ident() {
                    self.modal = Some(Modal::Confirm(Confirm::VmAction { id, name, action }));
                }
            }
            KeyCode::Char('e') if self.view == View::Vms => {
                if let Some(prompt) = self.resize_prompt() {
                    self.modal = Some(Modal::Resize(prompt));
                }
            }
            KeyCode::Char(c @ ('S' | 'B' | 'P')) if self.view == View::Storage => {
                if let Some(confirm) = self.snapshot_confirm(c) {
                    self.modal = Some(Modal::Confirm(confirm));
                }
            }
            KeyCode::Char('d') | KeyCode::Delete => {
                if let (Some(kind), Some((id, name))) = (self.view_kind(), self.selected_ident()) {
                    if kind != Kind::Node {
                        self.modal = Some(Modal::Confirm(Confirm::Delete { kind, id, name }));
                    }
                }
            }
            KeyCode::Enter if self.view == View::Vms => {
                if let Some((id, name)) = self.selected_ident() {
                    let (rows, cols) = console_size(self.size.0, self.size.1);
                    self.modal = Some(Modal::Console(Box::new(ConsoleView {
                        vm_id: id.clone(),
                        vm_name: name,
                        screen: vt100::Parser::new(rows, cols, 500),
                        connected: false,
                        exec: false,
                        escape: EscapeDetector::default(),
                    })));
                    return vec![Cmd::OpenConsole { id }];
                }
            }
            _ => {}
        }
        vec![]
    }

    /// `S` takes a snapshot of the selected volume; `B` rolls it back to its newest snapshot;
    /// `P` promotes that snapshot to a template.
    fn snapshot_confirm(&mut self, key: char) -> Option<Confirm> {
        let vol = self.selected_item()?;
        if vol.get("spec").and_then(|s| s.get("source_url")).is_some() {
            return None; // a template row
        }
        let (volume_id, volume) = self.selected_ident()?;
        let newest = vol
            .get("snapshots")
            .and_then(Value::as_array)
            .and_then(|a| a.last())
            .and_then(|s| {
                Some((
                    s.get("id")?.as_str()?.to_string(),
                    s.get("name")?.as_str()?.to_string(),
                ))
            });
        let action = match (key, newest) {
            ('S', _) => SnapshotAction::Take {
                name: format!("snap-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")),
            },
            ('B', Some((id, name))) => SnapshotAction::Rollback { id, name },
            ('P', Some((id, name))) => {
                let template: String = format!("{volume}-{name}").chars().take(63).collect();
                SnapshotAction::Promote {
                    id,
                    name,
                    template: template.trim_end_matches('-').to_string(),
                }
            }
            _ => {
                self.status = format!("volume {volume} has no snapshot");
                return None;
            }
        };
        Some(Confirm::VolumeSnapshot {
            volume_id,
            volume,
            action,
        })
    }

    /// `e` on a VM: the resize prompt, filled with its current vCPUs and memory.
    fn resize_prompt(&self) -> Option<ResizePrompt> {
        let vm = self.selected_item()?;
        let (id, name) = self.selected_ident()?;
        let spec = vm.get("spec");
        let vcpus = spec
            .and_then(|s| s.get("vcpus"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let memory = spec
            .and_then(|s| s.get("memory_bytes"))
            .and_then(Value::as_u64)
            .map(crate::output::human_bytes)
            .unwrap_or_else(|| "512M".into());
        Some(ResizePrompt {
            id,
            name,
            input: format!("{vcpus} {memory}"),
        })
    }

    /// Typing edits the prompt; Enter asks for confirmation of the parsed size, Esc cancels.
    fn resize_key(&mut self, mut p: ResizePrompt, k: KeyEvent) -> Vec<Cmd> {
        match k.code {
            KeyCode::Esc => return vec![],
            KeyCode::Enter => match p.parse() {
                Ok((vcpus, memory_bytes)) => {
                    self.modal = Some(Modal::Confirm(Confirm::ResizeVm {
                        id: p.id,
                        name: p.name,
                        vcpus,
                        memory_bytes,
                    }));
                    return vec![];
                }
                Err(e) => self.status = e,
            },
            KeyCode::Backspace => {
                p.input.pop();
            }
            KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => p.input.push(c),
            _ => {}
        }
        self.modal = Some(Modal::Resize(p));
        vec![]
    }

    /// The index of the container selected in the pod detail pane (0 when out of range).
    pub fn selected_pod_container_index(&self) -> usize {
        let n = self
            .selected_item()
            .map(pod_containers)
            .unwrap_or_default()
            .len();
        if self.pod_container < n {
            self.pod_container
        } else {
            0
        }
    }

    /// The name of the container selected in the pod detail pane.
    pub fn selected_pod_container(&self) -> Option<String> {
        let pod = self.selected_item()?;
        pod_containers(pod)
            .get(self.selected_pod_container_index())
            .cloned()
    }

    fn selected_ident(&self) -> Option<(String, String)> {
        let it = self.selected_item()?;
        let id = it.get("id").and_then(Value::as_str)?.to_string();
        let name = it
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&id)
            .to_string();
        Some((id, name))
    }

    fn form_key(&mut self, mut f: VmForm, k: KeyEvent) -> Vec<Cmd> {
        match k.code {
            KeyCode::Esc => return vec![],
            KeyCode::Enter => {
                if f.name().is_empty() {
                    self.status = "the VM needs a name".into();
                    f.focus = 0;
                } else {
                    self.status = format!("creating vm {}…", f.name());
                    return vec![Cmd::CreateVm(f)];
                }
            }
            KeyCode::Tab | KeyCode::Down => f.focus = (f.focus + 1) % FORM_FIELDS.len(),
            KeyCode::BackTab | KeyCode::Up => {
                f.focus = (f.focus + FORM_FIELDS.len() - 1) % FORM_FIELDS.len()
            }
            KeyCode::Backspace => {
                f.values[f.focus].pop();
            }
            KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
                f.values[f.focus].push(c)
            }
            _ => {}
        }
        self.modal = Some(Modal::CreateVm(f));
        vec![]
    }

    fn console_key(&mut self, mut c: Box<ConsoleView>, k: KeyEvent) -> Vec<Cmd> {
        let bytes = key_bytes(&k);
        let f = c.escape.feed(&bytes);
        let mut cmds = Vec::new();
        if !f.forward.is_empty() {
            cmds.push(Cmd::ConsoleInput(f.forward));
        }
        if f.detach {
            cmds.push(Cmd::CloseConsole);
            self.status = format!("detached from {}", c.vm_name);
        } else {
            self.modal = Some(Modal::Console(c));
        }
        cmds
    }
}

/// A pod's container names, in spec order.
pub fn pod_containers(pod: &Value) -> Vec<String> {
    crate::commands::pod::spec::container_names(pod)
}

fn sort_by_name(items: &mut [Value]) {
    items.sort_by(|a, b| {
        let n = |v: &Value| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        n(a).cmp(&n(b))
    });
}

/// The console's text area for a terminal of `w`×`h` (borders, header and footer removed).
pub fn console_size(w: u16, h: u16) -> (u16, u16) {
    (h.saturating_sub(6).max(5), w.saturating_sub(2).max(20))
}

/// The bytes a terminal would send for a key.
pub fn key_bytes(k: &KeyEvent) -> Vec<u8> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    match k.code {
        KeyCode::Char(c) if ctrl && c.is_ascii_alphabetic() => {
            vec![(c.to_ascii_lowercase() as u8) & 0x1f]
        }
        KeyCode::Char(c) => c.to_string().into_bytes(),
        KeyCode::Enter => vec![b'\r'],
        KeyCode::Backspace => vec![0x7f],
        KeyCode::Tab => vec![b'\t'],
        KeyCode::Esc => vec![0x1b],
        KeyCode::Up => b"\x1b[A".to_vec(),
        KeyCode::Down => b"\x1b[B".to_vec(),
        KeyCode::Right => b"\x1b[C".to_vec(),
        KeyCode::Left => b"\x1b[D".to_vec(),
        KeyCode::Home => b"\x1b[H".to_vec(),
        KeyCode::End => b"\x1b[F".to_vec(),
        KeyCode::Delete => b"\x1b[3~".to_vec(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests;
