//! Control-plane benchmarks (not tests; run with `cargo bench -p mvirt-api`):
//!
//! 1. Scheduler: placements per second for 10,000 pending VMs on 1,000 nodes.
//! 2. Spec propagation: 1,000 simulated nodes watch their specs; one change that concerns every
//!    node (a new template); time until each stream has delivered it (p50/p99).
//! 3. Writes: a 3-member mvirt-api cluster on loopback — three `mvirt-api` processes, like the
//!    etcd members it is compared with — creating VMs (REST, on the leader) at 1, 16 and 128
//!    concurrent clients, side by side with a 3-member etcd cluster (if `etcd` is installed)
//!    doing puts of the same payload size through its JSON gateway on its leader. Throughput
//!    and p50/p99.
//!
//! Set `MVIRT_BENCH_QUICK=1` for a short run; `MVIRT_BENCH_CONC=1,128` runs only the write
//! comparison at those concurrencies, `MVIRT_BENCH_NO_ETCD=1` leaves etcd out,
//! `MVIRT_BENCH_WRITES=N` makes N writes per run, `MVIRT_BENCH_ROUNDS=N` runs each level N times
//! (default 3, 1 when quick), alternating which system goes first; the row gives medians and
//! each round's ratio. Each write row also gives the CPU time (user + system) the three
//! members (or etcd's three) used per successful write.

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

/// Runs `load` and returns its result with the CPU time `pids` spent per operation.
async fn with_cpu<Fut: std::future::Future<Output = Load>>(pids: &[u32], load: Fut) -> Load {
    let before = cpu_time(pids);
    let mut l = load.await;
    let ops = (l.ok as f64).max(1.0);
    l.cpu_per_op = Duration::from_secs_f64((cpu_time(pids) - before).as_secs_f64() / ops);
    l
}

struct Load {
    throughput: f64,
    /// Successful operations.
    ok: usize,
    /// CPU time of the measured system's processes per successful operation (set by `with_cpu`).
    cpu_per_op: Duration,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
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
/// its log in `<dir>/member.log`.
struct MemberProc {
    _guard: ChildGuard,
    url: String,
    dir: std::path::PathBuf,
}

fn spawn_member(ip: &str, dir: &std::path::Path, join: Option<(&str, &str)>) -> MemberProc {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(dir.join("member.log")).unwrap_or_else(|e| panic!("{e}"));
    let rest = free_port_on(ip);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvirt-api"));
    cmd.arg("--listen")
        .arg(format!("{ip}:{rest}"))
        .arg("--grpc-listen")
        .arg(format!("{ip}:{}", free_port_on(ip)))
        .arg("--raft-listen")
        .arg(format!("{ip}:{}", free_port_on(ip)))
        .arg("--data-dir")
        .arg(dir)
        .arg("--log-endpoint")
        .arg("")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    if let Some((url, token)) = join {
        cmd.arg("--join").arg(url).arg("--token").arg(token);
    }
    MemberProc {
        _guard: ChildGuard::spawn("mvirt-api", &mut cmd),
        url: format!("http://{ip}:{rest}"),
        dir: dir.to_path_buf(),
    }
}

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn bench_writes() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = spawn_member("127.0.0.21", &root.path().join("a"), None);
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
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_ok(&http, &format!("{}/v1/projects", a.url), &token).await;
    let mut members = vec![a];
    for (ip, name) in [("127.0.0.22", "b"), ("127.0.0.23", "c")] {
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
        let joined = spawn_member(ip, &root.path().join(name), Some((&members[0].url, &t)));
        members.push(joined);
    }
    // Wait for 3 voters; the load goes to the leader (as etcd's goes to one member).
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
    // `MVIRT_BENCH_NO_ETCD=1`: mvirt-api alone (for profiling it).
    let etcd = if std::env::var_os("MVIRT_BENCH_NO_ETCD").is_some() {
        None
    } else {
        start_etcd()
    };
    let mut etcd_leader = String::new();
    if let Some(e) = &etcd {
        etcd_leader = wait_etcd(&http, &e.client_urls).await;
    } else {
        println!("etcd not installed (apt etcd-server): mvirt-api numbers only");
    }
    let member_pids: Vec<u32> = members.iter().map(|m| m._guard.id()).collect();
    let etcd_pids: Vec<u32> = etcd
        .as_ref()
        .map(|e| e.children.iter().map(|c| c.id()).collect())
        .unwrap_or_default();
    // `MVIRT_BENCH_WRITES=N`: N writes per concurrency level (longer runs for profiling).
    let per = std::env::var("MVIRT_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 200 } else { 2000 });
    let body_len = serde_json::to_vec(&json!({"name": "vm-000000-00000", "spec": {"vcpus": 1, "memory_bytes": 1073741824u64, "node_selector": "none-such"}}))
        .map(|v| v.len())
        .unwrap_or(100);
    println!("writes: {per} operations per run, payload ~{body_len} bytes");
    println!(
        "{:>11} | {:>22} | {:>22} | ratio",
        "concurrency", "mvirt-api VM create", "etcd put"
    );
    let concs: Vec<usize> = std::env::var("MVIRT_BENCH_CONC")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1usize, 16, 128]);
    // Each level runs `rounds` times, the two systems alternating which goes first, and the
    // row gives medians: single runs on this shared 2-core machine move by ±15 %.
    let rounds: usize = std::env::var("MVIRT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 1 } else { 3 })
        .max(1);
    println!(
        "{rounds} interleaved round(s) per level after one warm-up round; medians, and the ratios in round order"
    );
    for (level, concurrency) in concs.into_iter().enumerate() {
        let mut ours_runs = Vec::new();
        let mut theirs_runs = Vec::new();
        // Before the first level, one round that is not recorded: both clusters have just
        // started (empty files that still grow, cold caches, new connections), and the system
        // that happened to go first paid for that alone.
        let warm_up = usize::from(level == 0);
        for r in 0..warm_up + rounds {
            if r == warm_up {
                ours_runs.clear();
                theirs_runs.clear();
            }
            let tag = level * 100 + r;
            // Every other recorded round etcd goes first.
            let ours_first = (r + warm_up) % 2 == 0;
            for ours in [ours_first, !ours_first] {
                if ours {
                    let http2 = http.clone();
                    let url = format!("{leader}/v1/vms");
                    let tok = token.clone();
                    ours_runs.push(
                        with_cpu(&member_pids, run_load("mvirt-api", concurrency, per, move |i| {
                            let http = http2.clone();
                            let url = url.clone();
                            let tok = tok.clone();
                            async move {
                                // Pending VMs (the selector matches no node), so only the control plane works.
                                let body = json!({"name": format!("vm-{tag:06}-{i:05}"), "spec": {"vcpus": 1, "memory_bytes": 1073741824u64, "node_selector": "none-such"}});
                                matches!(http.post(&url).bearer_auth(&tok).json(&body).send().await, Ok(r) if r.status().as_u16() == 201)
                            }
                        }))
                        .await,
                    );
                } else {
                    theirs_runs.extend(
                        etcd_load(
                            &http,
                            &etcd,
                            &etcd_leader,
                            &etcd_pids,
                            concurrency,
                            per,
                            tag,
                            body_len,
                        )
                        .await,
                    );
                }
            }
        }
        let mut ratios: Vec<f64> = ours_runs
            .iter()
            .zip(&theirs_runs)
            .map(|(o, t)| o.throughput / t.throughput.max(1e-9))
            .collect();
        // Printed in round order (mvirt-api goes first in the 1st, 3rd, ... round).
        let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.sort_by(f64::total_cmp);
        let fmt = |l: &Load| {
            format!(
                "{:>7.0}/s p50 {:>5.1} p99 {:>5.1} ms cpu {:>4.0} µs/op{}",
                l.throughput,
                l.p50.as_secs_f64() * 1000.0,
                l.p99.as_secs_f64() * 1000.0,
                l.cpu_per_op.as_secs_f64() * 1e6,
                if l.errors > 0 {
                    format!(" ({} errors)", l.errors)
                } else {
                    String::new()
                }
            )
        };
        let ours = median_load(ours_runs);
        if theirs_runs.is_empty() {
            println!("{concurrency:>11} | {} | {:>22} |", fmt(&ours), "-");
        } else {
            println!(
                "{concurrency:>11} | {} | {} | {:.2}x (rounds {})",
                fmt(&ours),
                fmt(&median_load(theirs_runs)),
                ratios[ratios.len() / 2],
                per_round.join(", ")
            );
        }
    }
    drop(members);
}

/// One etcd load run (puts of `body_len` bytes on its leader), if etcd runs.
#[allow(clippy::too_many_arguments)]
async fn etcd_load(
    http: &reqwest::Client,
    etcd: &Option<Etcd>,
    leader: &str,
    pids: &[u32],
    concurrency: usize,
    per: usize,
    tag: usize,
    body_len: usize,
) -> Option<Load> {
    etcd.as_ref()?;
    let http = http.clone();
    let url = format!("{leader}/v3/kv/put");
    Some(
        with_cpu(
            pids,
            run_load("etcd", concurrency, per, move |i| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let key = b64.encode(format!("vm-{tag:06}-{i:05}"));
                    let value = b64.encode(vec![b'x'; body_len]);
                    let body = json!({"key": key, "value": value});
                    matches!(http.post(&url).json(&body).send().await, Ok(r) if r.status().is_success())
                }
            }),
        )
        .await,
    )
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
    Load {
        throughput,
        ok: runs.iter().map(|l| l.ok).sum(),
        cpu_per_op: Duration::from_secs_f64(cpu),
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // `MVIRT_BENCH_CONC=1,128`: only the write comparison, at these concurrencies.
    if std::env::var_os("MVIRT_BENCH_CONC").is_none() {
        bench_scheduler();
        runtime.block_on(bench_propagation());
    }
    runtime.block_on(bench_writes());
}
