//! Control-plane benchmarks (not tests; run with `cargo bench -p mvirt-api`):
//!
//! 1. Scheduler: placements per second for 10,000 pending VMs on 1,000 nodes.
//! 2. Spec propagation: 1,000 simulated nodes watch their specs; one change that concerns every
//!    node (a new template); time until each stream has delivered it (p50/p99).
//! 3. Writes: a 3-member mvirt-api cluster on loopback — three `mvirt-api` processes, like the
//!    etcd members it is compared with, each with audit logging on (an mvirt-log daemon of its
//!    own on a unix socket, the API's `--log-endpoint`, as in production) — creating VMs (REST,
//!    on the leader) at 1, 16 and 128 concurrent clients, side by side with a 3-member etcd
//!    cluster (apt `etcd-server`) doing puts of the same payload size through its native gRPC
//!    API (the `etcd-client` crate) on its leader. Throughput and p50/p99. The setup the bench
//!    had before runs in the same rounds for comparison: a second mvirt-api cluster without
//!    audit logging against etcd's JSON gateway (`POST /v3/kv/put`).
//!
//! Set `MVIRT_BENCH_QUICK=1` for a short run; `MVIRT_BENCH_CONC=1,128` runs only the write
//! comparison at those concurrencies, `MVIRT_BENCH_NO_ETCD=1` leaves etcd out,
//! `MVIRT_BENCH_OLD=0` leaves the old setup out, `MVIRT_BENCH_WRITES=N` makes N writes per
//! run, `MVIRT_BENCH_HTTP=2` drives mvirt-api over HTTP/2 on ceil(clients / 16) connections like
//! etcd's gRPC column (default: HTTP/1.1, a connection per client),
//! `MVIRT_BENCH_ROUNDS=N` runs each level N times (default 3, 1 when quick), the systems
//! taking turns at going first; the row gives medians and each round's ratio. Each write row
//! also gives the CPU time (user + system) the system's processes (mvirt-api's members and
//! their mvirt-log daemons, or etcd's three) used per successful write — for mvirt-api also the
//! mvirt-log daemons' share —, and the CPU time the load generator (this process) used per
//! write: it shares the cores with both systems.
//!
//! `MVIRT_BENCH_METRICS=1`: only the cost of metrics — two 3-member mvirt-api clusters (audit
//! on, as in production), one with metrics on (each member its own `--metrics-listen`) and one
//! with `--metrics-listen off` (nothing recorded), creating VMs side by side in the same rounds
//! (`MVIRT_BENCH_CONC`, `MVIRT_BENCH_WRITES`, `MVIRT_BENCH_ROUNDS` apply); the ratio on/off is
//! the cost. Afterwards the on cluster's `/metrics` must show the writes and the off cluster's
//! members must serve none.
//!
//! `MVIRT_BENCH_BASELINE=<path to an mvirt-api binary>`: the same two-cluster comparison, this
//! build against that binary (say, a copy of `target/release/mvirt-api` built from the commit
//! before a change), both with metrics on — on a machine shared with other work a change shows
//! itself in this ratio, measured in the same rounds, rather than in two separate runs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvirt_api::model::*;
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use mvirt_api::scheduler::{schedule, Strategy};
use mvirt_api::server::{self, Running, ServerConfig};
use mvirt_api::state::State;
use mvirt_testsupport::net::free_port;
use mvirt_testsupport::process::ChildGuard;
use serde_json::json;

const GIB: u64 = 1 << 30;

fn quick() -> bool {
    std::env::var_os("MVIRT_BENCH_QUICK").is_some()
}

fn meta(id: String, name: String) -> Meta {
    Meta {
        id,
        name,
        project: "default".into(),
        labels: BTreeMap::new(),
        revision: 1,
        spec_revision: 1,
        created_at: "t".into(),
        updated_at: "t".into(),
        trace_id: None,
    }
}

fn bench_scheduler() {
    let mut state = State::initial();
    for n in 0..1000 {
        let id = format!("node-{n:04}");
        state.nodes.insert(
            id.clone(),
            Node {
                meta: meta(id.clone(), id),
                spec: NodeSpec { schedulable: true },
                status: NodeStatus {
                    state: NodeState::Online,
                    address: "127.0.0.1".into(),
                    capacity: Capacity {
                        vcpus: 64,
                        memory_bytes: 256 * GIB,
                        storage_bytes: 10_000 * GIB,
                    },
                    agent_version: "bench".into(),
                    last_state_change_at: None,
                    console_endpoint: String::new(),
                    pod_artefacts_version: String::new(),
                    drain: None,
                },
                allocated: Capacity::default(),
                console_secret: String::new(),
            },
        );
    }
    for v in 0..10_000 {
        let id = format!("vm-{v:05}");
        state.vms.insert(
            id.clone(),
            Vm {
                meta: meta(id.clone(), id),
                spec: serde_json::from_value(json!({"vcpus": 2, "memory_bytes": 4 * GIB}))
                    .unwrap_or_else(|e| panic!("{e}")),
                status: Status::default(),
                node_id: None,
                node_state: None,
                scheduling: Scheduling::default(),
                stop_mode: StopMode::Graceful,
                restart_generation: 0,
                migration: None,
                ha_status: None,
            },
        );
    }
    for strategy in [Strategy::Spread, Strategy::Binpack] {
        let start = Instant::now();
        let decision = schedule(&state, strategy);
        let elapsed = start.elapsed();
        println!(
            "scheduler {strategy:?}: {} placements of 10000 VMs on 1000 nodes in {:.1} ms = {:.0} placements/s",
            decision.placements.len(),
            elapsed.as_secs_f64() * 1000.0,
            decision.placements.len() as f64 / elapsed.as_secs_f64()
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn start_member(
    ip: [u8; 4],
    dir: &std::path::Path,
    join: Option<(String, String)>,
) -> Running {
    let mut config = ServerConfig::for_tests(IpAddr::from(ip), dir);
    // Plain HTTP and gRPC, as the etcd members it is compared with (see bench_writes).
    config.insecure_plaintext = true;
    if let Some((url, token)) = join {
        config.join = Some(url);
        config.join_token = Some(token);
    }
    server::start(config, mvirt_common::Shutdown::new())
        .await
        .unwrap_or_else(|e| panic!("start member: {e}"))
}

async fn wait_ok(http: &reqwest::Client, url: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).bearer_auth(token).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} not ready");
}

fn authed<T>(msg: T, auth: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        auth.parse().unwrap_or_else(|e| panic!("{e}")),
    );
    r
}

async fn bench_propagation() {
    let nodes = if quick() { 100 } else { 1000 };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let member = start_member([127, 0, 0, 1], dir.path(), None).await;
    let token = loop {
        if let Some(t) = member.admin_token() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let http = reqwest::Client::new();
    wait_ok(&http, &format!("{}/v1/projects", member.api_url()), &token).await;
    let channel = tonic::transport::Endpoint::from_shared(member.grpc_url())
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let auth = format!("Bearer {token}");
    let mut streams = Vec::new();
    for n in 0..nodes {
        let mut c = NodeServiceClient::new(channel.clone());
        let id = c
            .register(authed(
                proto::RegisterRequest {
                    name: format!("node-{n}"),
                    address: "127.0.0.1".into(),
                    capacity: Some(proto::NodeCapacity {
                        vcpus: 8,
                        memory_bytes: 8 * GIB,
                        storage_bytes: 100 * GIB,
                    }),
                    ..Default::default()
                },
                &auth,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .node_id;
        let mut s = c
            .watch_specs(authed(
                proto::WatchSpecsRequest {
                    node_id: id,
                    from_revision: 0,
                },
                &auth,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        // Drain the initial set.
        let first = s
            .message()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("stream closed"));
        streams.push((s, first.revision));
    }
    let start = Instant::now();
    let resp = http
        .post(format!("{}/v1/templates", member.api_url()))
        .bearer_auth(&token)
        .json(&json!({"name": "bench", "spec": {"source_url": "file:///bench.raw"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(resp.status().is_success());
    let mut tasks = Vec::new();
    for (mut s, rev) in streams {
        tasks.push(tokio::spawn(async move {
            loop {
                let spec = s.message().await.ok().flatten()?;
                if spec.revision > rev && !spec.templates.is_empty() {
                    return Some(start.elapsed());
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Some(d)) = t.await {
            lat.push(d);
        }
    }
    lat.sort();
    println!(
        "spec propagation to {} watching nodes: {} delivered, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        nodes,
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    member.stop().await;
}

/// CPU time (user + system) the processes have used so far, from `/proc/<pid>/stat`.
fn cpu_time(pids: &[u32]) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at field 3.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    Duration::from_secs_f64(total as f64 / ticks)
}

/// Runs `load` and returns its result with the CPU time `pids` spent per operation, and the
/// CPU time the load generator (this process: the clients, nothing else runs in it meanwhile)
/// spent per operation — it shares the two cores with the system under test.
async fn with_cpu<Fut: std::future::Future<Output = Load>>(pids: &[u32], load: Fut) -> Load {
    with_cpu_of(pids, &[], load).await
}

/// [`with_cpu`], also giving the share of `part` (some of `pids`: the mvirt-log daemons).
async fn with_cpu_of<Fut: std::future::Future<Output = Load>>(
    pids: &[u32],
    part: &[u32],
    load: Fut,
) -> Load {
    let me = [std::process::id()];
    let (before, part_before, client_before) = (cpu_time(pids), cpu_time(part), cpu_time(&me));
    let mut l = load.await;
    let ops = (l.ok as f64).max(1.0);
    l.cpu_per_op = Duration::from_secs_f64((cpu_time(pids) - before).as_secs_f64() / ops);
    l.part_cpu_per_op = Duration::from_secs_f64((cpu_time(part) - part_before).as_secs_f64() / ops);
    l.client_cpu_per_op =
        Duration::from_secs_f64((cpu_time(&me) - client_before).as_secs_f64() / ops);
    l
}

#[derive(Clone)]
struct Load {
    throughput: f64,
    /// Successful operations.
    ok: usize,
    /// CPU time of the measured system's processes per successful operation (set by `with_cpu`).
    cpu_per_op: Duration,
    /// CPU time of the load generator per successful operation (set by `with_cpu`).
    client_cpu_per_op: Duration,
    /// Of `cpu_per_op`, what the mvirt-log daemons used (set by `with_cpu_of`).
    part_cpu_per_op: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// `MVIRT_BENCH_HIST=1`: print each run's latency distribution (for finding a tail's source).
fn print_distribution(what: &str, sorted: &[Duration]) {
    if std::env::var_os("MVIRT_BENCH_HIST").is_none() || sorted.is_empty() {
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = sorted.iter().map(|d| ms(*d)).sum::<f64>() / sorted.len() as f64;
    let qs: Vec<String> = [0.1, 0.5, 0.9, 0.95, 0.99, 0.999]
        .iter()
        .map(|q| format!("p{} {:.2}", q * 100.0, ms(percentile(sorted, *q))))
        .collect();
    println!(
        "    {what}: mean {mean:.2} ms, {}, max {:.2}",
        qs.join(", "),
        ms(*sorted.last().unwrap())
    );
}

async fn run_load<F, Fut>(what: &str, concurrency: usize, total: usize, op: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return (lat, errors);
                }
                let t = Instant::now();
                if op(i).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    lat.sort();
    print_distribution(what, &lat);
    Load {
        throughput: lat.len() as f64 / elapsed.as_secs_f64(),
        ok: lat.len(),
        cpu_per_op: Duration::ZERO,
        client_cpu_per_op: Duration::ZERO,
        part_cpu_per_op: Duration::ZERO,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        errors,
    }
}

struct Etcd {
    children: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_etcd() -> Option<Etcd> {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    let mut client_urls = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("e{i}"));
        let child = Command::new(bin)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        children.push(child);
        client_urls.push(format!("http://127.0.0.1:{client}"));
    }
    Some(Etcd {
        children,
        client_urls,
        _dir: dir,
    })
}

/// One mvirt-api member as its own process (like the etcd members it is compared with), with
/// its log in `<dir>/member.log` and its audit entries going to `log_endpoint` (empty: none).
struct MemberProc {
    guard: ChildGuard,
    url: String,
    dir: std::path::PathBuf,
    /// `http://ip:port/metrics` when metrics are on.
    metrics_url: Option<String>,
}

/// With `metrics` the member serves them on a port of its own (else `--metrics-listen off`:
/// nothing is recorded).
fn spawn_member(
    bin: &std::path::Path,
    ip: &str,
    dir: &std::path::Path,
    log_endpoint: &str,
    join: Option<(&str, &str)>,
    metrics: bool,
) -> MemberProc {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(dir.join("member.log")).unwrap_or_else(|e| panic!("{e}"));
    let rest = free_port();
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(format!("{ip}:{rest}"))
        .arg("--grpc-listen")
        .arg(format!("{ip}:{}", free_port()))
        .arg("--raft-listen")
        .arg(format!("{ip}:{}", free_port()))
        .arg("--data-dir")
        .arg(dir)
        .arg("--log-endpoint")
        .arg(log_endpoint)
        // Without TLS, as the etcd members are run (their peer and client URLs are http://):
        // both sides pay for the same transport.
        .arg("--insecure-plaintext")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    if let Some((url, token)) = join {
        cmd.arg("--join").arg(url).arg("--token").arg(token);
    }
    let metrics_addr = metrics.then(|| format!("{ip}:{}", free_port()));
    cmd.arg("--metrics-listen")
        .arg(metrics_addr.as_deref().unwrap_or("off"));
    MemberProc {
        guard: ChildGuard::spawn("mvirt-api", &mut cmd),
        url: format!("http://{ip}:{rest}"),
        dir: dir.to_path_buf(),
        metrics_url: metrics_addr.map(|a| format!("http://{a}/metrics")),
    }
}

/// This bench binary, re-executed with this variable set to a directory, is an mvirt-log
/// daemon: `mvirt_log::server` (what the `mvirt-log` binary serves) on `<dir>/log.sock` with
/// the daemon's default retention, in a process of its own.
const LOG_DAEMON_ENV: &str = "MVIRT_BENCH_LOG_DAEMON";

fn run_log_daemon(dir: std::path::PathBuf) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let config = mvirt_log::server::Config {
            listen: format!("unix:{}", dir.join("log.sock").display())
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            data_dir: dir,
            // mvirt-log's defaults: 90 days, 10,000,000 entries, checked every 300 s.
            retention: mvirt_log::retention::RetentionPolicy {
                max_age: Some(Duration::from_secs(90 * 86_400)),
                max_rows: Some(10_000_000),
                interval: Duration::from_secs(300),
            },
        };
        let server = mvirt_log::server::BoundServer::bind(config)
            .await
            .unwrap_or_else(|e| panic!("mvirt-log: {e}"));
        if let Err(e) = server.serve(mvirt_common::Shutdown::new()).await {
            panic!("mvirt-log: {e}");
        }
    });
    std::process::exit(0)
}

/// An mvirt-log daemon of one member's host (production: every node runs its own, and the
/// API's `--log-endpoint` is its unix socket).
struct LogDaemon {
    guard: ChildGuard,
    socket: std::path::PathBuf,
    db: std::path::PathBuf,
}

async fn spawn_log_daemon(dir: &std::path::Path) -> LogDaemon {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.join("log.sock");
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(exe);
    cmd.env(LOG_DAEMON_ENV, dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let guard = ChildGuard::spawn("mvirt-log", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "mvirt-log did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    LogDaemon {
        guard,
        socket,
        db: dir.join("log.db"),
    }
}

/// A 3-member mvirt-api cluster (processes), with or without audit logging.
struct MvirtCluster {
    members: Vec<MemberProc>,
    logs: Vec<LogDaemon>,
    leader: String,
    token: String,
}

impl MvirtCluster {
    fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .map(|m| m.guard.id())
            .chain(self.logs.iter().map(|l| l.guard.id()))
            .collect()
    }

    fn log_pids(&self) -> Vec<u32> {
        self.logs.iter().map(|l| l.guard.id()).collect()
    }

    /// Audit entries the mvirt-log daemons stored.
    fn audit_entries(&self) -> u64 {
        self.logs
            .iter()
            .map(|l| {
                rusqlite::Connection::open(&l.db)
                    .and_then(|c| c.query_row("SELECT count(*) FROM logs", [], |r| r.get(0)))
                    .unwrap_or(0u64)
            })
            .sum()
    }
}

async fn start_cluster(
    http: &reqwest::Client,
    root: &std::path::Path,
    ips: [&str; 3],
    audit: bool,
) -> MvirtCluster {
    start_cluster_with(http, root, ips, audit, true, &this_build()).await
}

/// The `mvirt-api` binary built with this bench.
fn this_build() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_mvirt-api").into()
}

/// [`start_cluster`] with metrics on or off (`--metrics-listen off`), running `bin`.
async fn start_cluster_with(
    http: &reqwest::Client,
    root: &std::path::Path,
    ips: [&str; 3],
    audit: bool,
    metrics: bool,
    bin: &std::path::Path,
) -> MvirtCluster {
    let mut logs = Vec::new();
    let mut endpoints = Vec::new();
    for (i, _) in ips.iter().enumerate() {
        if audit {
            let l = spawn_log_daemon(&root.join(format!("log{i}"))).await;
            endpoints.push(format!("unix:{}", l.socket.display()));
            logs.push(l);
        } else {
            endpoints.push(String::new());
        }
    }
    let a = spawn_member(bin, ips[0], &root.join("a"), &endpoints[0], None, metrics);
    let token_path = a.dir.join(server::ADMIN_TOKEN_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(&token_path) {
            if !t.trim().is_empty() {
                break t.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "bootstrap member wrote no admin token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_ok(http, &format!("{}/v1/projects", a.url), &token).await;
    let mut members = vec![a];
    for (i, name) in [(1, "b"), (2, "c")] {
        let jt: serde_json::Value = http
            .post(format!("{}/v1/controlplane/join-tokens", members[0].url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = jt["token"].as_str().unwrap_or_default().to_string();
        let joined = spawn_member(
            bin,
            ips[i],
            &root.join(name),
            &endpoints[i],
            Some((&members[0].url, &t)),
            metrics,
        );
        members.push(joined);
    }
    // Wait for 3 voters; the load goes to the leader (as etcd's goes to its leader).
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let cp: serde_json::Value = match http
            .get(format!("{}/v1/controlplane", members[0].url))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let voters = cp["members"]
            .as_array()
            .map(|m| m.iter().filter(|x| x["role"] != "learner").count())
            .unwrap_or(0);
        let leader_url = cp["members"].as_array().and_then(|m| {
            m.iter()
                .find(|x| x["id"] == cp["leader_id"])
                .and_then(|x| x["api_url"].as_str().map(String::from))
        });
        if let (3, Some(url)) = (voters, leader_url) {
            break url;
        }
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    MvirtCluster {
        members,
        logs,
        leader,
        token,
    }
}

/// `MVIRT_BENCH_HTTP=2`: mvirt-api is driven over HTTP/2 (prior knowledge, the bench runs
/// without TLS; over TLS browsers get it by ALPN) on ceil(clients / 16) connections, as etcd's
/// gRPC column is; otherwise (the default) over HTTP/1.1, one keep-alive connection per client.
fn http2() -> bool {
    std::env::var("MVIRT_BENCH_HTTP").is_ok_and(|v| v == "2")
}

/// One HTTP/2 client (one connection, multiplexed) per 16 concurrent clients.
fn h2_clients(
    concurrency: usize,
) -> Arc<
    Vec<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            String,
        >,
    >,
> {
    let conns = concurrency.div_ceil(16).max(1);
    Arc::new(
        (0..conns)
            .map(|_| {
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                connector.set_nodelay(true);
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .http2_only(true)
                    .build(connector)
            })
            .collect(),
    )
}

/// What one column of the write comparison drives.
enum System {
    /// `POST /v1/vms` on the leader of an mvirt-api cluster.
    Mvirt {
        url: String,
        token: String,
        pids: Vec<u32>,
        /// Its mvirt-log daemons (none without audit logging).
        log_pids: Vec<u32>,
    },
    /// etcd puts through its native gRPC API (etcd-client) on its leader, over
    /// ceil(clients / 16) connections (HTTP/2 multiplexes the rest, as etcd's own
    /// `benchmark --conns` does).
    EtcdGrpc {
        clients: Vec<etcd_client::KvClient>,
        pids: Vec<u32>,
    },
    /// etcd puts through its JSON gateway (`POST /v3/kv/put`) on its leader: the bench before.
    EtcdJson { url: String, pids: Vec<u32> },
}

impl System {
    async fn load(
        &self,
        http: &reqwest::Client,
        concurrency: usize,
        per: usize,
        tag: usize,
        body_len: usize,
    ) -> Load {
        match self {
            System::Mvirt {
                url,
                token,
                pids,
                log_pids,
            } => {
                if http2() {
                    let clients = h2_clients(concurrency);
                    let (url, auth) = (format!("{url}/v1/vms"), format!("Bearer {token}"));
                    return with_cpu_of(pids, log_pids, run_load("mvirt-api", concurrency, per, move |i| {
                        let client = clients[i % clients.len()].clone();
                        let body = json!({"name": format!("vm-{tag:06}-{i:05}"), "spec": {"vcpus": 1, "memory_bytes": 1073741824u64, "node_selector": "none-such"}}).to_string();
                        let request = http::Request::post(&url)
                            .header(http::header::AUTHORIZATION, &auth)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(body);
                        async move {
                            let Ok(request) = request else { return false };
                            match client.request(request).await {
                                Ok(response) => {
                                    let created = response.status().as_u16() == 201;
                                    // Read the answer to its end, as a client does.
                                    created && http_body_util::BodyExt::collect(response.into_body()).await.is_ok()
                                }
                                Err(_) => false,
                            }
                        }
                    }))
                    .await;
                }
                let (http, url, tok) = (http.clone(), format!("{url}/v1/vms"), token.clone());
                with_cpu_of(pids, log_pids, run_load("mvirt-api", concurrency, per, move |i| {
                    let (http, url, tok) = (http.clone(), url.clone(), tok.clone());
                    async move {
                        // Pending VMs (the selector matches no node): only the control plane works.
                        let body = json!({"name": format!("vm-{tag:06}-{i:05}"), "spec": {"vcpus": 1, "memory_bytes": 1073741824u64, "node_selector": "none-such"}});
                        matches!(http.post(&url).bearer_auth(&tok).json(&body).send().await, Ok(r) if r.status().as_u16() == 201)
                    }
                }))
                .await
            }
            System::EtcdGrpc { clients, pids } => {
                let conns = concurrency.div_ceil(16).min(clients.len()).max(1);
                let clients: Vec<etcd_client::KvClient> = clients[..conns].to_vec();
                with_cpu(
                    pids,
                    run_load("etcd-grpc", concurrency, per, move |i| {
                        let mut kv = clients[i % clients.len()].clone();
                        async move {
                            let key = format!("vm-{tag:06}-{i:05}");
                            kv.put(key, vec![b'x'; body_len], None).await.is_ok()
                        }
                    }),
                )
                .await
            }
            System::EtcdJson { url, pids } => {
                let (http, url) = (http.clone(), format!("{url}/v3/kv/put"));
                with_cpu(pids, run_load("etcd-json", concurrency, per, move |i| {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        use base64::Engine;
                        let b64 = base64::engine::general_purpose::STANDARD;
                        let key = b64.encode(format!("vm-{tag:06}-{i:05}"));
                        let value = b64.encode(vec![b'x'; body_len]);
                        let body = json!({"key": key, "value": value});
                        matches!(http.post(&url).json(&body).send().await, Ok(r) if r.status().is_success())
                    }
                }))
                .await
            }
        }
    }
}

async fn bench_writes() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // `MVIRT_BENCH_OLD=0`: only the production setup (audit on, etcd over gRPC).
    let old = std::env::var("MVIRT_BENCH_OLD").map_or(true, |v| v != "0");
    let audited = start_cluster(
        &http,
        &root.path().join("audited"),
        ["127.0.0.21", "127.0.0.22", "127.0.0.23"],
        true,
    )
    .await;
    let plain = if old {
        Some(
            start_cluster(
                &http,
                &root.path().join("plain"),
                ["127.0.0.24", "127.0.0.25", "127.0.0.26"],
                false,
            )
            .await,
        )
    } else {
        None
    };
    // `MVIRT_BENCH_NO_ETCD=1`: mvirt-api alone (for profiling it).
    let etcd = if std::env::var_os("MVIRT_BENCH_NO_ETCD").is_some() {
        None
    } else {
        start_etcd()
    };
    // (label, system) in the order of the columns.
    let mut systems: Vec<(&str, System)> = vec![(
        "mvirt-api, audit on",
        System::Mvirt {
            url: audited.leader.clone(),
            token: audited.token.clone(),
            pids: audited.pids(),
            log_pids: audited.log_pids(),
        },
    )];
    if let Some(e) = &etcd {
        let leader = wait_etcd(&http, &e.client_urls).await;
        let pids: Vec<u32> = e.children.iter().map(|c| c.id()).collect();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let c = etcd_client::Client::connect([leader.as_str()], None)
                .await
                .unwrap_or_else(|e| panic!("etcd gRPC connect: {e}"));
            clients.push(c.kv_client());
        }
        systems.push((
            "etcd, gRPC",
            System::EtcdGrpc {
                clients,
                pids: pids.clone(),
            },
        ));
        if let Some(p) = &plain {
            systems.push((
                "mvirt-api, audit off",
                System::Mvirt {
                    url: p.leader.clone(),
                    token: p.token.clone(),
                    pids: p.pids(),
                    log_pids: p.log_pids(),
                },
            ));
            systems.push(("etcd, JSON gateway", System::EtcdJson { url: leader, pids }));
        }
    } else {
        println!("etcd not installed (apt etcd-server): mvirt-api numbers only");
    }
    // `MVIRT_BENCH_WRITES=N`: N writes per concurrency level (longer runs for profiling).
    let per = std::env::var("MVIRT_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 200 } else { 2000 });
    let body_len = serde_json::to_vec(&json!({"name": "vm-000000-00000", "spec": {"vcpus": 1, "memory_bytes": 1073741824u64, "node_selector": "none-such"}}))
        .map(|v| v.len())
        .unwrap_or(100);
    println!("writes: {per} operations per run, payload ~{body_len} bytes");
    let concs: Vec<usize> = std::env::var("MVIRT_BENCH_CONC")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1usize, 16, 128]);
    // Each level runs `rounds` times, the systems taking turns at going first, and the row
    // gives medians: single runs on this shared 2-core machine move by ±15 %.
    let rounds: usize = std::env::var("MVIRT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 1 } else { 3 })
        .max(1);
    println!(
        "{rounds} round(s) per level after one warm-up round, the systems rotating who goes first; medians, and the ratios in round order"
    );
    for (level, concurrency) in concs.into_iter().enumerate() {
        let mut runs: Vec<Vec<Load>> = systems.iter().map(|_| Vec::new()).collect();
        // Before the first level, one round that is not recorded: the clusters have just
        // started (empty files that still grow, cold caches, new connections).
        let warm_up = usize::from(level == 0);
        for r in 0..warm_up + rounds {
            if r == warm_up {
                runs.iter_mut().for_each(Vec::clear);
            }
            let tag = level * 100 + r;
            for k in 0..systems.len() {
                let s = (k + r) % systems.len();
                let l = systems[s]
                    .1
                    .load(&http, concurrency, per, tag, body_len)
                    .await;
                runs[s].push(l);
            }
        }
        let ratios = |a: usize, b: usize| -> Option<String> {
            let (ra, rb) = (runs.get(a)?, runs.get(b)?);
            let mut rs: Vec<f64> = ra
                .iter()
                .zip(rb)
                .map(|(x, y)| x.throughput / y.throughput.max(1e-9))
                .collect();
            let order: Vec<String> = rs.iter().map(|r| format!("{r:.2}")).collect();
            rs.sort_by(f64::total_cmp);
            Some(format!(
                "{:.2}x (rounds {})",
                rs[rs.len() / 2],
                order.join(", ")
            ))
        };
        println!("{concurrency} client(s):");
        for ((label, _), rs) in systems.iter().zip(&runs) {
            let l = median_load(rs.clone());
            println!(
                "  {label:<22} {:>7.0}/s p50 {:>5.1} p99 {:>5.1} ms cpu {:>4.0} µs/op{}, client {:>4.0} µs/op{}",
                l.throughput,
                l.p50.as_secs_f64() * 1000.0,
                l.p99.as_secs_f64() * 1000.0,
                l.cpu_per_op.as_secs_f64() * 1e6,
                if l.part_cpu_per_op.is_zero() {
                    String::new()
                } else {
                    format!(" (mvirt-log {:.0})", l.part_cpu_per_op.as_secs_f64() * 1e6)
                },
                l.client_cpu_per_op.as_secs_f64() * 1e6,
                if l.errors > 0 {
                    format!(" ({} errors)", l.errors)
                } else {
                    String::new()
                }
            );
        }
        if let Some(r) = ratios(0, 1) {
            println!("  mvirt-api / etcd, audit on vs gRPC (production): {r}");
        }
        if let Some(r) = ratios(2, 3) {
            println!("  mvirt-api / etcd, audit off vs JSON gateway (the bench before): {r}");
        }
    }
    // Audit entries reach mvirt-log asynchronously (a bounded queue that counts what it drops).
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "audit entries stored by the audited cluster's mvirt-log daemons: {}",
        audited.audit_entries()
    );
    drop(audited);
    drop(plain);
}
/// The median of each figure over several runs (taken separately).
fn median_load(mut runs: Vec<Load>) -> Load {
    let mid = runs.len() / 2;
    let pick = |runs: &mut Vec<Load>, key: fn(&Load) -> f64| {
        runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
        key(&runs[mid])
    };
    let throughput = pick(&mut runs, |l| l.throughput);
    let p50 = pick(&mut runs, |l| l.p50.as_secs_f64());
    let p99 = pick(&mut runs, |l| l.p99.as_secs_f64());
    let cpu = pick(&mut runs, |l| l.cpu_per_op.as_secs_f64());
    let client_cpu = pick(&mut runs, |l| l.client_cpu_per_op.as_secs_f64());
    let part_cpu = pick(&mut runs, |l| l.part_cpu_per_op.as_secs_f64());
    Load {
        throughput,
        ok: runs.iter().map(|l| l.ok).sum(),
        cpu_per_op: Duration::from_secs_f64(cpu),
        client_cpu_per_op: Duration::from_secs_f64(client_cpu),
        part_cpu_per_op: Duration::from_secs_f64(part_cpu),
        p50: Duration::from_secs_f64(p50),
        p99: Duration::from_secs_f64(p99),
        errors: runs.iter().map(|l| l.errors).sum(),
    }
}

/// Waits until the etcd cluster has a leader and returns the leader's client URL.
async fn wait_etcd(http: &reqwest::Client, urls: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for url in urls {
            let status = http
                .post(format!("{url}/v3/maintenance/status"))
                .json(&json!({}))
                .send()
                .await;
            let Ok(r) = status else { continue };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                continue;
            };
            let me = &v["header"]["member_id"];
            if !me.is_null() && *me == v["leader"] {
                return url.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not elect a leader");
}

fn main() {
    // Re-executed as the mvirt-log daemon of one member (see `spawn_log_daemon`).
    if let Some(dir) = std::env::var_os(LOG_DAEMON_ENV) {
        run_log_daemon(dir.into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // `MVIRT_BENCH_CONC=1,128`: only the write comparison, at these concurrencies.
    if std::env::var_os("MVIRT_BENCH_CONC").is_none() {
        bench_scheduler();
        runtime.block_on(bench_propagation());
    }
    if let Some(bin) = std::env::var_os("MVIRT_BENCH_BASELINE") {
        runtime.block_on(bench_two_clusters(Some(bin.into())));
        return;
    }
    if std::env::var_os("MVIRT_BENCH_METRICS").is_some() {
        runtime.block_on(bench_two_clusters(None));
        return;
    }
    runtime.block_on(bench_writes());
}

/// Two 3-member mvirt-api clusters (audit on) side by side: `MVIRT_BENCH_METRICS=1` compares
/// this build with metrics on and off, `MVIRT_BENCH_BASELINE=<mvirt-api binary>` this build
/// against another build (both with metrics on, as in production; see the module
/// documentation).
async fn bench_two_clusters(baseline: Option<std::path::PathBuf>) {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (labels, other_bin, other_metrics, what) = match &baseline {
        Some(bin) => (
            ["this build", "baseline"],
            bin.clone(),
            true,
            "this build / baseline",
        ),
        None => (
            ["metrics on", "metrics off"],
            this_build(),
            false,
            "on / off",
        ),
    };
    let on = start_cluster_with(
        &http,
        &root.path().join("on"),
        ["127.0.0.31", "127.0.0.32", "127.0.0.33"],
        true,
        true,
        &this_build(),
    )
    .await;
    let off = start_cluster_with(
        &http,
        &root.path().join("off"),
        ["127.0.0.34", "127.0.0.35", "127.0.0.36"],
        true,
        other_metrics,
        &other_bin,
    )
    .await;
    let system = |c: &MvirtCluster| System::Mvirt {
        url: c.leader.clone(),
        token: c.token.clone(),
        pids: c.pids(),
        log_pids: c.log_pids(),
    };
    let systems = [
        (format!("mvirt-api, {}", labels[0]), system(&on)),
        (format!("mvirt-api, {}", labels[1]), system(&off)),
    ];
    let per = std::env::var("MVIRT_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 200 } else { 2000 });
    let concs: Vec<usize> = std::env::var("MVIRT_BENCH_CONC")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1usize, 16, 128]);
    let rounds: usize = std::env::var("MVIRT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 1 } else { 5 })
        .max(1);
    println!(
        "{} vs {}: {per} writes per run, {rounds} round(s) per level after one warm-up, the two clusters taking turns at going first; medians",
        labels[0], labels[1]
    );
    for (level, concurrency) in concs.into_iter().enumerate() {
        let mut runs: [Vec<Load>; 2] = [Vec::new(), Vec::new()];
        let warm_up = usize::from(level == 0);
        for r in 0..warm_up + rounds {
            if r == warm_up {
                runs.iter_mut().for_each(Vec::clear);
            }
            for k in 0..2 {
                let s = (k + r) % 2;
                let l = systems[s]
                    .1
                    .load(&http, concurrency, per, 1000 + level * 100 + r, 0)
                    .await;
                runs[s].push(l);
            }
        }
        println!("{concurrency} client(s):");
        for ((label, _), rs) in systems.iter().zip(&runs) {
            let l = median_load(rs.clone());
            println!(
                "  {label:<24} {:>7.0}/s p50 {:>5.1} p99 {:>5.1} ms cpu {:>4.0} µs/op (mvirt-log {:.0}){}",
                l.throughput,
                l.p50.as_secs_f64() * 1000.0,
                l.p99.as_secs_f64() * 1000.0,
                l.cpu_per_op.as_secs_f64() * 1e6,
                l.part_cpu_per_op.as_secs_f64() * 1e6,
                if l.errors > 0 {
                    format!(" ({} errors)", l.errors)
                } else {
                    String::new()
                }
            );
        }
        let mut ratios: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(a, b)| a.throughput / b.throughput.max(1e-9))
            .collect();
        let order: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        ratios.sort_by(f64::total_cmp);
        let cpu = |rs: &Vec<Load>| median_load(rs.clone()).cpu_per_op.as_secs_f64();
        // Each round's CPU-per-write ratio too: the two runs of a round are back to back, so
        // they share the machine's load more closely than the medians of all rounds do.
        let cpu_order: Vec<String> = runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(a, b)| {
                format!(
                    "{:.3}",
                    a.cpu_per_op.as_secs_f64() / b.cpu_per_op.as_secs_f64().max(1e-12)
                )
            })
            .collect();
        let median = ratios[ratios.len() / 2];
        let cost = if baseline.is_some() {
            String::new()
        } else {
            format!("; cost {:+.1} %", (1.0 - median) * 100.0)
        };
        println!(
            "  throughput {what}: {median:.3}x (rounds {}){cost}; CPU per write {what}: {:.3}x (rounds {})",
            order.join(", "),
            cpu(&runs[0]) / cpu(&runs[1]).max(1e-12),
            cpu_order.join(", ")
        );
    }
    if baseline.is_some() {
        return;
    }
    // The switch works: the on cluster counted the writes, the off cluster serves no metrics.
    let mut counted = 0.0;
    for m in &on.members {
        let url = m.metrics_url.as_deref().unwrap_or_default();
        let text = http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("scrape {url}: {e}"))
            .text()
            .await
            .unwrap_or_default();
        counted += text
            .lines()
            .filter(|l| {
                l.starts_with("mvirt_http_requests_total{")
                    && l.contains("route=\"/v1/vms\"")
                    && l.contains("method=\"POST\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        counted > 0.0,
        "the metrics-on cluster counted no POST /v1/vms"
    );
    assert!(off.members.iter().all(|m| m.metrics_url.is_none()));
    println!("POST /v1/vms counted by the metrics-on cluster's members: {counted}");
}
