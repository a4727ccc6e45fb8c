//! `mvirt top`: live usage of the nodes and their VMs and pods.
//!
//! Every refresh reads `GET /v1/nodes` and, for each online node, `GET /v1/nodes/{id}/stats`
//! (sampled live on the node by its agent: the hypervisor processes' `/proc` counters and the
//! eBPF NIC counters; nothing is stored). The counters are totals, so every rate — CPU %, disk
//! and network bytes per second — is the difference between two samples divided by the time
//! between them ([`rows`]). CPU % of a VM or pod is of one CPU (100 % = one CPU busy, as in
//! `top`); a node's is of all its CPUs. Rows are sorted by CPU, busiest first.
//!
//! The live view (ratatui) refreshes every `--interval` seconds (2 by default) until `q`;
//! `--once` takes two samples one interval apart and prints one table (or `-o json|yaml`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::client::{ApiClient, ApiError};
use crate::output::{self, Format};

/// One reading of every online node's stats, with the names to show.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// `GET /v1/nodes/{id}/stats` of each node that answered, by node id.
    pub nodes: HashMap<String, Value>,
    /// Node, VM and pod names by id.
    pub names: HashMap<String, String>,
    /// Nodes whose stats could not be read, with why (offline, agent unreachable).
    pub unavailable: Vec<(String, String)>,
}

/// What a row shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `node`, `vm` or `pod`.
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    /// The node's name (a node's own row: itself).
    pub node: String,
    /// `None` until two samples exist (or the process just started).
    pub cpu_percent: Option<f64>,
    /// Resident memory of the hypervisor process; for a node, memory in use.
    pub memory_bytes: u64,
    /// A node's memory; 0 for guests.
    pub memory_total_bytes: u64,
    pub disk_read_bytes_per_sec: Option<f64>,
    pub disk_write_bytes_per_sec: Option<f64>,
    /// Summed over the guest's NICs; rx = from the guest, tx = to the guest.
    pub net_rx_bytes_per_sec: Option<f64>,
    pub net_tx_bytes_per_sec: Option<f64>,
}

/// Reads the stats of every online node (one request per node, concurrently).
pub async fn sample(api: &ApiClient) -> Result<Sample, ApiError> {
    let nodes = api.list_all("/v1/nodes", &[]).await?;
    let mut out = Sample::default();
    let mut online = Vec::new();
    for node in &nodes {
        let id = output::text_at(node, "id");
        let name = output::text_at(node, "name");
        out.names.insert(id.clone(), name.clone());
        let state = output::text_at(node, "status.state");
        if state == "online" {
            online.push(id);
        } else {
            out.unavailable.push((name, format!("node is {state}")));
        }
    }
    let reads = online.iter().map(|id| async move {
        let path = format!("/v1/nodes/{}/stats", crate::commands::ctx::encode(id));
        (id.clone(), api.get(&path, &[]).await)
    });
    for (id, result) in futures::future::join_all(reads).await {
        match result {
            Ok(stats) => {
                out.nodes.insert(id, stats);
            }
            Err(e) => {
                let name = out.names.get(&id).cloned().unwrap_or(id);
                out.unavailable.push((name, e.to_string()));
            }
        }
    }
    // Names of what runs there: one list of each kind (without a project: every project the
    // token sees). A kind that cannot be listed shows ids.
    for path in ["/v1/vms", "/v1/pods"] {
        if let Ok(items) = api.list_all(path, &[]).await {
            for item in items {
                out.names
                    .insert(output::text_at(&item, "id"), output::text_at(&item, "name"));
            }
        }
    }
    Ok(out)
}

fn f64_at(v: &Value, key: &str) -> Option<f64> {
    output::lookup(v, key).and_then(Value::as_f64)
}

fn u64_at(v: &Value, key: &str) -> u64 {
    output::lookup(v, key).and_then(Value::as_u64).unwrap_or(0)
}

/// The rate of a counter between two readings `seconds` apart; `None` without both or when it
/// went backwards (the process restarted: its counters began again).
fn rate(before: Option<f64>, now: Option<f64>, seconds: f64) -> Option<f64> {
    let (before, now) = (before?, now?);
    (seconds > 0.0 && now >= before).then(|| (now - before) / seconds)
}

fn nic_sum(guest: &Value, key: &str) -> Option<f64> {
    let nics = guest.get("nics")?.as_array()?;
    Some(nics.iter().map(|n| u64_at(n, key) as f64).sum())
}

/// The rows of `now`, with rates against `before` (the previous sample, if any), sorted by
/// CPU (busiest first; rows without a CPU figure last), nodes before guests at equal CPU.
pub fn rows(before: Option<&Sample>, now: &Sample) -> Vec<Row> {
    let mut rows = Vec::new();
    let name_of = |id: &str| now.names.get(id).cloned().unwrap_or_else(|| id.to_string());
    for (node_id, stats) in &now.nodes {
        let node_name = name_of(node_id);
        let previous = before.and_then(|b| b.nodes.get(node_id));
        let seconds = previous
            .map(|p| {
                (u64_at(stats, "sampled_at_ms") as f64 - u64_at(p, "sampled_at_ms") as f64) / 1000.0
            })
            .unwrap_or(0.0);
        if let Some(host) = stats.get("host").filter(|h| !h.is_null()) {
            let old = previous.and_then(|p| p.get("host"));
            let busy = rate(
                old.and_then(|h| f64_at(h, "cpu_busy_seconds")),
                f64_at(host, "cpu_busy_seconds"),
                1.0,
            );
            let idle = rate(
                old.and_then(|h| f64_at(h, "cpu_idle_seconds")),
                f64_at(host, "cpu_idle_seconds"),
                1.0,
            );
            let cpu_percent = match (busy, idle) {
                (Some(b), Some(i)) if b + i > 0.0 => Some(100.0 * b / (b + i)),
                _ => None,
            };
            let total = u64_at(host, "memory_total_bytes");
            rows.push(Row {
                kind: "node",
                id: node_id.clone(),
                name: node_name.clone(),
                node: node_name.clone(),
                cpu_percent,
                memory_bytes: total.saturating_sub(u64_at(host, "memory_available_bytes")),
                memory_total_bytes: total,
                disk_read_bytes_per_sec: None,
                disk_write_bytes_per_sec: None,
                net_rx_bytes_per_sec: None,
                net_tx_bytes_per_sec: None,
            });
        }
        for (kind, list) in [("vm", "vms"), ("pod", "pods")] {
            let Some(guests) = stats.get(list).and_then(Value::as_array) else {
                continue;
            };
            for guest in guests {
                let id = output::text_at(guest, "id");
                let old = previous
                    .and_then(|p| p.get(list))
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|g| output::text_at(g, "id") == id))
                    // Another process (a restart) started its counters again.
                    .filter(|g| u64_at(g, "pid") == u64_at(guest, "pid"));
                let counter = |key: &str| {
                    rate(
                        old.and_then(|g| f64_at(g, key)),
                        f64_at(guest, key),
                        seconds,
                    )
                };
                let running = guest.get("running").and_then(Value::as_bool) == Some(true);
                let net = |key: &str| {
                    rate(
                        old.and_then(|g| nic_sum(g, key)),
                        nic_sum(guest, key),
                        seconds,
                    )
                };
                rows.push(Row {
                    kind,
                    name: name_of(&id),
                    id,
                    node: node_name.clone(),
                    cpu_percent: if running {
                        counter("cpu_seconds").map(|r| 100.0 * r)
                    } else {
                        None
                    },
                    memory_bytes: u64_at(guest, "memory_rss_bytes"),
                    memory_total_bytes: 0,
                    disk_read_bytes_per_sec: running.then(|| counter("disk_read_bytes")).flatten(),
                    disk_write_bytes_per_sec: running
                        .then(|| counter("disk_write_bytes"))
                        .flatten(),
                    net_rx_bytes_per_sec: net("rx_bytes"),
                    net_tx_bytes_per_sec: net("tx_bytes"),
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        let cpu = |r: &Row| r.cpu_percent.unwrap_or(-1.0);
        cpu(b)
            .total_cmp(&cpu(a))
            .then_with(|| (a.kind != "node").cmp(&(b.kind != "node")))
            .then_with(|| a.name.cmp(&b.name))
    });
    rows
}

pub const HEADERS: [&str; 9] = [
    "KIND", "NAME", "NODE", "CPU%", "MEMORY", "DISK R/s", "DISK W/s", "NET RX/s", "NET TX/s",
];

fn per_second(rate: Option<f64>) -> String {
    rate.map(|r| output::human_bytes(r.round() as u64))
        .unwrap_or_else(|| "-".into())
}

/// A row's cells, in [`HEADERS`] order.
pub fn cells(row: &Row) -> Vec<String> {
    let memory = if row.memory_total_bytes > 0 {
        format!(
            "{}/{}",
            output::human_bytes(row.memory_bytes),
            output::human_bytes(row.memory_total_bytes)
        )
    } else {
        output::human_bytes(row.memory_bytes)
    };
    vec![
        row.kind.to_string(),
        row.name.clone(),
        row.node.clone(),
        row.cpu_percent
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(|| "-".into()),
        memory,
        per_second(row.disk_read_bytes_per_sec),
        per_second(row.disk_write_bytes_per_sec),
        per_second(row.net_rx_bytes_per_sec),
        per_second(row.net_tx_bytes_per_sec),
    ]
}

fn unavailable_lines(sample: &Sample) -> String {
    sample
        .unavailable
        .iter()
        .map(|(node, why)| format!("node {node}: no stats ({why})\n"))
        .collect()
}

/// `mvirt top`: the live view, or with `once` one table from two samples `interval` apart.
pub async fn run(
    api: &ApiClient,
    format: Format,
    once: bool,
    interval: Duration,
) -> Result<(), ApiError> {
    if interval.is_zero() {
        return Err(ApiError::Usage("--interval must be more than 0".into()));
    }
    if once {
        let first = sample(api).await?;
        tokio::time::sleep(interval).await;
        let second = sample(api).await?;
        let rows = rows(Some(&first), &second);
        let text = match format {
            Format::Table => {
                let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
                output::render_table(&HEADERS, &cells) + &unavailable_lines(&second)
            }
            Format::Json => {
                serde_json::to_string_pretty(&rows).map_err(|e| ApiError::Other(e.to_string()))?
                    + "\n"
            }
            Format::Yaml => {
                serde_yaml::to_string(&rows).map_err(|e| ApiError::Other(e.to_string()))?
            }
        };
        print!("{text}");
        return Ok(());
    }
    live(api, interval)
        .await
        .map_err(|e| ApiError::Other(e.to_string()))
}

/// The full-screen view: redrawn on every sample and on resize; `q`, Esc or Ctrl+c quit.
async fn live(api: &ApiClient, interval: Duration) -> std::io::Result<()> {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(std::io::Error::other(
            "mvirt top needs a terminal; use --once for a table",
        ));
    }
    let (key_tx, mut key_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || loop {
        match event::read() {
            Ok(Event::Key(k))
                if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL)) =>
            {
                let _ = key_tx.send(());
                break;
            }
            Ok(Event::Resize(..)) => {
                // A redraw happens on the next tick; nothing else to do.
            }
            Ok(_) => {}
            Err(_) => break,
        }
    });
    let mut terminal = ratatui::try_init()?;
    let mut previous: Option<Sample> = None;
    let mut view = View::default();
    let result = loop {
        let started = Instant::now();
        match sample(api).await {
            Ok(now) => {
                view.rows = rows(previous.as_ref(), &now);
                view.notes = unavailable_lines(&now);
                view.error = None;
                previous = Some(now);
            }
            Err(e) => view.error = Some(e.display_message()),
        }
        view.url = api.base.clone();
        if let Err(e) = terminal.draw(|f| view.draw(f, f.area())) {
            break Err(e);
        }
        let wait = interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = key_rx.recv() => break Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    };
    ratatui::restore();
    result
}

/// What the live view shows.
#[derive(Debug, Default)]
pub struct View {
    pub url: String,
    pub rows: Vec<Row>,
    pub notes: String,
    pub error: Option<String>,
}

impl View {
    pub fn draw(&self, frame: &mut ratatui::Frame, area: ratatui::layout::Rect) {
        use ratatui::layout::{Constraint, Layout};
        use ratatui::style::{Modifier, Style};
        use ratatui::text::Line;
        use ratatui::widgets::{Block, Borders, Paragraph, Row as TableRow, Table};
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(2),
        ])
        .areas(area);
        frame.render_widget(
            Paragraph::new(Line::from(format!(
                "mvirt top — {} — sorted by CPU — q quits",
                self.url
            ))),
            head,
        );
        let widths = [
            Constraint::Length(5),
            Constraint::Min(12),
            Constraint::Min(8),
            Constraint::Length(6),
            Constraint::Length(18),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ];
        let table = Table::new(self.rows.iter().map(|r| TableRow::new(cells(r))), widths)
            .header(TableRow::new(HEADERS).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::default().borders(Borders::TOP));
        frame.render_widget(table, body);
        let foot_text = match &self.error {
            Some(e) => format!("error: {e}"),
            None => self.notes.lines().next().unwrap_or("").to_string(),
        };
        frame.render_widget(Paragraph::new(foot_text), foot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(at_ms: i64, busy: f64, idle: f64, guests: Value) -> Sample {
        let mut s = Sample::default();
        s.names.insert("n1".into(), "node-1".into());
        s.names.insert("vm-a".into(), "alpha".into());
        s.nodes.insert(
            "n1".into(),
            json!({
                "node_id": "n1",
                "sampled_at_ms": at_ms,
                "host": {"cpus": 2, "cpu_busy_seconds": busy, "cpu_idle_seconds": idle,
                         "memory_total_bytes": 4096, "memory_available_bytes": 1024, "load1": 0.5},
                "vms": guests,
                "pods": [],
            }),
        );
        s
    }

    fn guest(id: &str, pid: u32, cpu: f64, disk_read: u64, rx: u64) -> Value {
        json!({"id": id, "running": true, "pid": pid, "cpu_seconds": cpu,
               "memory_rss_bytes": 2048, "disk_read_bytes": disk_read, "disk_write_bytes": 0,
               "nics": [{"nic_id": "x", "rx_bytes": rx, "tx_bytes": 0},
                        {"nic_id": "y", "rx_bytes": rx, "tx_bytes": 10}]})
    }

    #[test]
    fn rates_come_from_the_difference_of_two_samples() {
        let before = sample(
            10_000,
            100.0,
            300.0,
            json!([
                guest("vm-a", 7, 5.0, 1000, 100),
                guest("vm-b", 8, 1.0, 0, 0)
            ]),
        );
        let now = sample(
            12_000,
            101.0,
            304.0,
            json!([
                guest("vm-a", 7, 6.0, 5000, 1100),
                guest("vm-b", 9, 9.0, 0, 0)
            ]),
        );
        let rows = rows(Some(&before), &now);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        // alpha: 1 CPU-second in 2 s = 50 %; the node: 1 busy of 5 = 20 %; vm-b restarted (new
        // pid): no rate yet, last.
        assert_eq!(names, ["alpha", "node-1", "vm-b"]);
        let alpha = &rows[0];
        assert_eq!(alpha.cpu_percent, Some(50.0));
        assert_eq!(alpha.disk_read_bytes_per_sec, Some(2000.0));
        assert_eq!(alpha.net_rx_bytes_per_sec, Some(1000.0));
        assert_eq!(alpha.net_tx_bytes_per_sec, Some(0.0));
        assert_eq!(alpha.node, "node-1");
        let node = &rows[1];
        assert_eq!(node.cpu_percent, Some(20.0));
        assert_eq!((node.memory_bytes, node.memory_total_bytes), (3072, 4096));
        assert_eq!(rows[2].cpu_percent, None);
        assert_eq!(cells(&rows[2])[3], "-");
    }

    #[test]
    fn a_first_sample_has_no_rates() {
        let now = sample(1, 1.0, 1.0, json!([guest("vm-a", 7, 5.0, 0, 0)]));
        let rows = rows(None, &now);
        assert!(rows.iter().all(|r| r.cpu_percent.is_none()));
        assert_eq!(cells(&rows[0]).len(), HEADERS.len());
    }
}
