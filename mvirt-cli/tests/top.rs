//! `mvirt top --once` against a real API relaying `GET /v1/nodes/{id}/stats` to a node-agent
//! double whose `GetStats` reads /proc (see `common::EchoConsole`): two processes started by
//! the test stand in for two VMs' hypervisors — one burns a CPU (`yes`), one sleeps. The
//! table and its JSON form show the busy one before the idle one with a CPU share /proc
//! bears out, the idle one near zero, their resident memory as /proc has it, and the node with
//! its memory; `--show-trace` prints the request id of every call; bad flags are refused.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A child process killed (and reaped) when the test ends, even when it fails.
struct Stand(Child);

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// user + system CPU seconds of `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks = mvirt_common::metrics::clock_ticks_per_second();
    (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / ticks
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_shows_each_vms_usage_from_its_node_sorted_by_cpu() {
    // No heartbeats come from the double: the node must not go offline during the test.
    let api = start_api_with(|c| c.node_offline_after = Duration::from_secs(600)).await;
    let guests = Guests::default();
    let secret = "top-secret";
    let (endpoint, server) = start_echo_console_with(&api, secret, guests.clone()).await;
    api.register_node("hv-top", &endpoint, secret).await;
    api.json(&["network", "create", "lan", "--ipv4", "10.7.0.0/24"])
        .await;
    api.json(&[
        "template",
        "import",
        "deb",
        "--source",
        "http://127.0.0.1:1/deb.raw",
        "--no-wait",
    ])
    .await;
    let mut ids = Vec::new();
    for name in ["busy", "idle"] {
        let vm = api
            .json(&[
                "vm",
                "create",
                name,
                "--memory",
                "256M",
                "--template",
                "deb",
                "--network",
                "lan",
            ])
            .await;
        ids.push(id_of(&vm));
    }
    let busy = Stand(
        Command::new("yes")
            .stdout(Stdio::null())
            .spawn()
            .expect("start yes"),
    );
    let idle = Stand(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep"),
    );
    guests
        .lock()
        .unwrap()
        .extend([(ids[0].clone(), busy.0.id()), (ids[1].clone(), idle.0.id())]);

    let cpu_before = cpu_seconds(busy.0.id());
    let rows = api.json(&["top", "--once", "--interval", "1"]).await;
    let cpu_used = cpu_seconds(busy.0.id()) - cpu_before;
    let rows = rows.as_array().expect("a JSON list of rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:#?}"))
            .clone()
    };
    let (busy_row, idle_row, node_row) = (row("busy"), row("idle"), row("hv-top"));
    assert_eq!(busy_row["kind"], "vm");
    assert_eq!(busy_row["node"], "hv-top");
    assert_eq!(busy_row["id"], ids[0].as_str());
    let cpu = |r: &Value| r["cpu_percent"].as_f64().unwrap_or(-1.0);
    // `yes` keeps a CPU busy as far as this shared machine lets it. The two samples were at
    // least the interval (1 s) apart inside the command's run, so the CPU time the row shows
    // for them cannot exceed what /proc counted over the whole run.
    assert!(cpu(&busy_row) > 5.0, "busy: {busy_row}");
    assert!(
        cpu(&busy_row) / 100.0 <= cpu_used + 0.02,
        "busy shows {} % but used {cpu_used} s in the whole run: {busy_row}",
        cpu(&busy_row)
    );
    assert!((0.0..5.0).contains(&cpu(&idle_row)), "idle: {idle_row}");
    // Sorted by CPU, busiest first (the node itself may be busier: this machine is shared).
    let cpus: Vec<f64> = rows.iter().map(cpu).collect();
    assert!(
        cpus.windows(2).all(|w| w[0] >= w[1]),
        "sorted by CPU: {rows:#?}"
    );
    let at = |name: &str| rows.iter().position(|r| r["name"] == name).unwrap();
    assert!(at("busy") < at("idle"), "{rows:#?}");
    // Memory as /proc has it (the resident set moves little for these two).
    let rss = rss_bytes(idle.0.id()) as f64;
    let shown = idle_row["memory_bytes"].as_f64().unwrap();
    assert!(
        (shown - rss).abs() <= rss * 0.5,
        "idle RSS {rss} vs {idle_row}"
    );
    assert_eq!(node_row["kind"], "node");
    assert!(
        node_row["memory_total_bytes"].as_u64().unwrap() > 0,
        "{node_row}"
    );
    let node_cpu = cpu(&node_row);
    assert!((0.0..=100.0).contains(&node_cpu), "{node_row}");
    // No NIC counters behind the double: no network rate is invented.
    assert!(busy_row["net_rx_bytes_per_sec"].is_null() || busy_row["net_rx_bytes_per_sec"] == 0.0);

    // The table, with `--show-trace` naming each call's request id on stderr.
    let out = api
        .mvirt(&["top", "--once", "--interval", "0.5", "--show-trace"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("CPU%") && lines[0].contains("NET TX/S"),
        "{}",
        out.stdout
    );
    let line_of = |name: &str| lines.iter().position(|l| l.contains(name)).unwrap();
    assert!(line_of("busy") < line_of("idle"), "{}", out.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("node") && l.contains("hv-top")),
        "{}",
        out.stdout
    );
    let ids: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("request-id: "))
        .collect();
    assert!(ids.len() >= 4, "{out:?}");
    assert!(ids.iter().all(|id| id.len() == 32), "{out:?}");

    api.fails(&["top", "--once", "--interval", "0"], 2, "--interval")
        .await;
    api.fails(&["top", "--once", "--interval=-1"], 2, "invalid --interval")
        .await;
    // The live view needs a terminal.
    api.fails(&["top"], 1, "terminal").await;

    server.abort();
}
