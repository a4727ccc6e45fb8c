//! Live migration of an idle guest (512 MiB, 1 vCPU, a 64 MiB disk, QEMU TCG) between two
//! mvirt-vmm daemons on this host, two ways side by side in the same run, alternating:
//!
//! - **mvirt**: `MigrateVm` on the source's mvirt-vmm to a unix socket the "source agent"
//!   listens on, relayed over the node-to-node channel (`NodePeer.Relay`, gRPC over mutual TLS
//!   with node certificates, `src/transfer.rs`) to the target agent, which connects it to the
//!   incoming socket `PrepareIncomingMigration` opened; then `CompleteIncomingMigration`.
//! - **qemu**: QEMU's own migration of the same guest with the same settings (block migration,
//!   zero-blocks, downtime limit, bandwidth cap), QMP `migrate` straight to the target's
//!   incoming socket, polled every 10 ms; then the same `CompleteIncomingMigration`.
//!
//! The guest ping-pongs between the two daemons. Printed per way: wall time (migrate call →
//! guest running on the target), QEMU's `total-time` and `downtime`; medians and the ratios
//! mvirt / qemu. Targets (issue 23): total ≤ 1.2×, downtime ≤ 1.5×. Nothing is asserted.
//!
//! Run as root: `cargo bench -p mvirt-node --bench migration` (`MVIRT_BENCH_ROUNDS`, default 8).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvirt_api::proto::{node_peer_server::NodePeerServer, NodeSpec, TransferGrant};
use mvirt_common::tls::{self as ctls, CertStore, ClusterCa, PeerIdentity};
use mvirt_common::Shutdown;
use mvirt_node::daemons::{Daemons, Endpoints};
use mvirt_node::transfer::{IncomingSockets, PeerDialer, PeerServer};
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const MEMORY_MIB: u64 = 512;
const DOWNTIME_MS: u64 = 300;

struct Host {
    client: VmServiceClient<Channel>,
    data_dir: PathBuf,
    disk: PathBuf,
    daemons: Daemons,
    _running: mvirt_vmm::RunningVmm,
}

async fn host(dir: &Path, cache: &Path, name: &str) -> Host {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut config = mvirt_vmm::vmm::VmmConfig::new(data_dir.clone());
    config.allowed_dirs.push(cache.to_path_buf());
    config.allowed_dirs.push(dir.to_path_buf());
    config.hypervisor = mvirt_vmm::hypervisor::HypervisorChoice::Qemu;
    config.qemu.accel = mvirt_vmm::hypervisor::qemu::Accel::Tcg;
    let socket = mvirt_common::listen::ListenAddr::Unix(data_dir.join("vmm.sock"));
    let running = mvirt_vmm::start(config, socket).await.expect("mvirt-vmm");
    let client = VmServiceClient::connect(running.endpoint()).await.unwrap();
    let disk = dir.join(format!("{name}.img"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let endpoints = Endpoints {
        api: "http://127.0.0.1:1".into(),
        vmm: running.endpoint(),
        zfs: format!("unix:{}", data_dir.join("none-zfs.sock").display()),
        ebpf: format!("unix:{}", data_dir.join("none-ebpf.sock").display()),
        log: String::new(),
    };
    let api = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let daemons = Daemons::connect_lazy(&endpoints, "unused", api).unwrap();
    Host {
        client,
        data_dir,
        disk,
        daemons,
        _running: running,
    }
}

fn config(disk: &Path) -> vmm::VmConfig {
    let g = mvirt_testsupport::guest::standard_guest();
    vmm::VmConfig {
        name: "bench-mover".into(),
        vcpus: 1,
        memory_mib: MEMORY_MIB,
        boot: Some(vmm::vm_config::Boot::Kernel(vmm::KernelBoot {
            kernel: g.kernel.display().to_string(),
            initramfs: g.initramfs.display().to_string(),
            cmdline: g.cmdline.clone(),
        })),
        disks: vec![vmm::Disk {
            id: "root".into(),
            path: disk.display().to_string(),
            read_only: false,
        }],
        ..Default::default()
    }
}

/// A QMP session on a unix socket (the bench's own client: the baseline is QEMU alone).
struct Qmp {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn connect(path: &Path) -> Qmp {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        let (read, write) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(read).lines(),
            write,
        };
        qmp.lines.next_line().await.unwrap();
        qmp.call("qmp_capabilities", json!({})).await;
        qmp
    }

    async fn call(&mut self, command: &str, arguments: Value) -> Value {
        let line = json!({"execute": command, "arguments": arguments}).to_string() + "\n";
        self.write.write_all(line.as_bytes()).await.unwrap();
        loop {
            let line = self.lines.next_line().await.unwrap().unwrap();
            let value: Value = serde_json::from_str(&line).unwrap();
            if let Some(ret) = value.get("return") {
                return ret.clone();
            }
            if let Some(err) = value.get("error") {
                panic!("QMP {command}: {err}");
            }
        }
    }
}

struct Sample {
    wall: Duration,
    total_ms: u64,
    downtime_ms: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("run as root");
        std::process::exit(1);
    }
    let rounds: usize = std::env::var("MVIRT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let cache = mvirt_testsupport::cache_dir();
    let mut hosts = [
        host(dir.path(), &cache, "x").await,
        host(dir.path(), &cache, "y").await,
    ];

    // Both hosts serve NodePeer over TLS with node certificates; each may relay to the other.
    let ca = ClusterCa::generate().unwrap();
    let sans = vec!["127.0.0.1".to_string()];
    let cert = |id: &str| {
        CertStore::from_issued(
            &ca.issue(
                PeerIdentity::Node(id.into()),
                &sans,
                Duration::from_secs(3600),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let vm_id = "0198a6c0-0000-7000-8000-0000000be001".to_string();
    let shutdown = Shutdown::new();
    let mut endpoints = Vec::new();
    let mut incomings = Vec::new();
    let mut dialers = Vec::new();
    let names = ["x", "y"];
    let listeners = [
        mvirt_common::grpc::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
        mvirt_common::grpc::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
    ];
    for l in &listeners {
        endpoints.push(format!(
            "https://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ));
    }
    let grant = |from: usize, to: usize| TransferGrant {
        id: format!("0198a6c0-0000-7000-8000-0000000bf00{from}"),
        source_node_id: names[from].into(),
        target_node_id: names[to].into(),
        target_endpoint: endpoints[to].clone(),
        volume_ids: vec![],
        vm_id: vm_id.clone(),
        token: format!("token-{from}"),
        purpose: "bench".into(),
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let store = cert(names[i]);
        let tls = ctls::server_config(
            &store,
            ctls::ClientAuth::Required(ca.cert_pem().to_string()),
        )
        .unwrap();
        let spec = NodeSpec {
            node_id: names[i].into(),
            revision: 1,
            transfers: vec![grant(1 - i, i)],
            ..Default::default()
        };
        let (_tx, rx) = tokio::sync::watch::channel(Some(spec));
        std::mem::forget(_tx);
        let incoming = IncomingSockets::default();
        let server = mvirt_common::grpc::GrpcServer::for_daemon("mvirt-node")
            .add_service(NodePeerServer::new(PeerServer::new(
                names[i].into(),
                rx,
                hosts[i].daemons.clone(),
                incoming.clone(),
                true,
            )))
            .await;
        let stop = shutdown.clone();
        tokio::spawn(async move { server.serve_tls(listener, Some(tls), stop).await });
        incomings.push(incoming);
        dialers.push(Arc::new(PeerDialer::new(
            Some(ca.cert_pem().to_string()),
            Some(store),
        )));
    }

    // Boot the guest on x and let it settle (idle: its shell waits on the console).
    let x = &mut hosts[0];
    x.client
        .create_vm(vmm::CreateVmRequest {
            id: vm_id.clone(),
            config: Some(config(&x.disk)),
        })
        .await
        .unwrap();
    x.client
        .start_vm(vmm::StartVmRequest { id: vm_id.clone() })
        .await
        .unwrap();
    let log = x.data_dir.join("run").join(&vm_id).join("console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("MVIRT-GUEST-BOOTED")
    {
        assert!(Instant::now() < deadline, "the guest did not boot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load at start: {}", load().trim());
    let mut mvirt = Vec::new();
    let mut qemu = Vec::new();
    let mut at = 0usize;
    for round in 0..rounds {
        let (from, to) = (at, 1 - at);
        // Alternate which way goes first in each pair of rounds.
        let via_mvirt = (round % 4 == 0) || (round % 4 == 3);
        let target_config = config(&hosts[to].disk);
        let prepared = hosts[to]
            .client
            .prepare_incoming_migration(vmm::PrepareIncomingMigrationRequest {
                id: vm_id.clone(),
                config: Some(target_config),
            })
            .await
            .expect("PrepareIncomingMigration")
            .into_inner();
        let incoming_socket = PathBuf::from(&prepared.socket_path);
        let started = Instant::now();
        let (total_ms, downtime_ms) = if via_mvirt {
            incomings[to].insert(&vm_id, incoming_socket.clone());
            let out = hosts[from].data_dir.join(format!("out-{round}.sock"));
            let listener = tokio::net::UnixListener::bind(&out).unwrap();
            let dialer = dialers[from].clone();
            let g = grant(from, to);
            let id = vm_id.clone();
            let relay = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                dialer.relay(&g, &id, stream).await
            });
            let mut progress = hosts[from]
                .client
                .migrate_vm(vmm::MigrateVmRequest {
                    id: vm_id.clone(),
                    destination_socket: out.display().to_string(),
                    with_disks: true,
                    max_downtime_ms: DOWNTIME_MS as u32,
                })
                .await
                .unwrap()
                .into_inner();
            let mut last = None;
            while let Some(p) = progress.next().await {
                last = Some(p.unwrap());
            }
            let last = last.unwrap();
            assert_eq!(
                last.status,
                vmm::MigrationStatus::Completed as i32,
                "{last:?}"
            );
            let _ = relay.await;
            (last.total_time_ms, last.downtime_ms)
        } else {
            let control = hosts[from]
                .data_dir
                .join("run")
                .join(&vm_id)
                .join("control.sock");
            let mut qmp = Qmp::connect(&control).await;
            qmp.call(
                "migrate-set-capabilities",
                json!({"capabilities": [
                    {"capability": "block", "state": true},
                    {"capability": "zero-blocks", "state": true},
                ]}),
            )
            .await;
            qmp.call(
                "migrate-set-parameters",
                json!({"downtime-limit": DOWNTIME_MS, "max-bandwidth": 10u64 << 30}),
            )
            .await;
            qmp.call(
                "migrate",
                json!({"uri": format!("unix:{}", incoming_socket.display())}),
            )
            .await;
            loop {
                let info = qmp.call("query-migrate", json!({})).await;
                match info["status"].as_str() {
                    Some("completed") => {
                        break (
                            info["total-time"].as_u64().unwrap_or(0),
                            info["downtime"].as_u64().unwrap_or(0),
                        )
                    }
                    Some("failed") | Some("cancelled") => panic!("QEMU's migration: {info}"),
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        hosts[to]
            .client
            .complete_incoming_migration(vmm::CompleteIncomingMigrationRequest {
                id: vm_id.clone(),
            })
            .await
            .expect("CompleteIncomingMigration");
        let wall = started.elapsed();
        incomings[to].remove(&vm_id);
        hosts[from]
            .client
            .delete_vm(vmm::DeleteVmRequest {
                id: vm_id.clone(),
                force: true,
            })
            .await
            .unwrap();
        let sample = Sample {
            wall,
            total_ms,
            downtime_ms,
        };
        println!(
            "round {round}: {} {} → {}: wall {:?}, QEMU total {} ms, downtime {} ms",
            if via_mvirt { "mvirt" } else { "qemu " },
            names[from],
            names[to],
            sample.wall,
            sample.total_ms,
            sample.downtime_ms
        );
        if via_mvirt {
            mvirt.push(sample);
        } else {
            qemu.push(sample);
        }
        at = to;
    }
    println!("load at end: {}", load().trim());
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let wall = |s: &Sample| s.wall.as_secs_f64() * 1000.0;
    let total = |s: &Sample| s.total_ms as f64;
    let down = |s: &Sample| s.downtime_ms as f64;
    println!(
        "median wall: mvirt {:.0} ms, qemu {:.0} ms, ratio {:.2}",
        m(&mvirt, wall),
        m(&qemu, wall),
        m(&mvirt, wall) / m(&qemu, wall)
    );
    println!(
        "median QEMU total-time: mvirt {:.0} ms, qemu {:.0} ms, ratio {:.2} (target ≤ 1.2)",
        m(&mvirt, total),
        m(&qemu, total),
        m(&mvirt, total) / m(&qemu, total)
    );
    println!(
        "median downtime: mvirt {:.0} ms, qemu {:.0} ms, ratio {:.2} (target ≤ 1.5)",
        m(&mvirt, down),
        m(&qemu, down),
        m(&mvirt, down) / m(&qemu, down).max(1.0)
    );
    let _ = hosts[at]
        .client
        .delete_vm(vmm::DeleteVmRequest {
            id: vm_id.clone(),
            force: true,
        })
        .await;
    shutdown.trigger();
}
