//! The node-to-node transfer channel (`NodePeer`, `src/transfer.rs`) between two real mvirt-zfs
//! daemons (each on its own zfs-fuse pool), over mutual TLS with node certificates of a test
//! cluster CA. The target's spec is the input the control plane would give (a watch channel
//! holding a `NodeSpec` with the transfer grant), so the grant rules are tested on their own.
//!
//! Proves: a full and an incremental push arrive with the bytes of the source's snapshots
//! (checksum end to end); a volume the grant does not list, another node's certificate, a
//! member's certificate and a wrong token are refused and nothing is received; a grant that
//! reaches the target's spec late is waited for; a relay connects a source socket to the socket
//! registered for the VM on the target, both ways.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mvirt_api::proto::{node_peer_server::NodePeerServer, NodeSpec, TransferGrant};
use mvirt_common::listen::{ListenAddr, Listener, SocketOptions};
use mvirt_common::tls::{self as ctls, CertStore, ClusterCa, PeerIdentity};
use mvirt_common::Shutdown;
use mvirt_node::daemons::{Daemons, Endpoints};
use mvirt_node::transfer::{IncomingSockets, PeerDialer, PeerServer, TransferError};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto as zfs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);
const S1: &str = "0198a6c0-0000-7000-8000-00000000d001";
const S2: &str = "0198a6c0-0000-7000-8000-00000000d002";

struct Node {
    daemons: Daemons,
    _pool: TestPool,
}

/// One mvirt-zfs in-process on its own pool, and the agent's clients of it.
async fn node(dir: &Path, shutdown: &Shutdown) -> Node {
    let pool = TestPool::create();
    let config = mvirt_zfs::server::Config {
        pool: pool.name.clone(),
        parent_dataset: "mvirt".into(),
        data_dir: dir.join("zfs"),
        import_dir: None,
        log_endpoint: String::new(),
        compression: "on".into(),
        backup_dir: dir.join("zfs-backups"),
    };
    let daemon = mvirt_zfs::server::Daemon::prepare(&config, shutdown)
        .await
        .expect("mvirt-zfs prepares");
    let socket = ListenAddr::Unix(dir.join("zfs.sock"));
    let listener = Listener::bind(&socket, &SocketOptions::default())
        .await
        .expect("bind zfs.sock");
    let endpoint = listener.endpoint();
    tokio::spawn(daemon.serve(listener, shutdown.clone()));
    let endpoints = Endpoints {
        api: "http://127.0.0.1:1".into(),
        vmm: format!("unix:{}", dir.join("none-vmm.sock").display()),
        zfs: endpoint,
        ebpf: format!("unix:{}", dir.join("none-ebpf.sock").display()),
        log: String::new(),
    };
    let api = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let daemons = Daemons::connect_lazy(&endpoints, "unused", api).expect("clients");
    Node {
        daemons,
        _pool: pool,
    }
}

fn store(ca: &ClusterCa, identity: PeerIdentity) -> CertStore {
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    CertStore::from_issued(&ca.issue(identity, &sans, HOUR).unwrap()).unwrap()
}

fn grant(endpoint: &str, volume_ids: &[&str]) -> TransferGrant {
    TransferGrant {
        id: "0198a6c0-0000-7000-8000-00000000a001".into(),
        source_node_id: "node-a".into(),
        target_node_id: "node-b".into(),
        target_endpoint: endpoint.to_string(),
        volume_ids: volume_ids.iter().map(|s| s.to_string()).collect(),
        vm_id: "0198a6c0-0000-7000-8000-00000000b001".into(),
        token: "grant-token-1".into(),
        purpose: "test".into(),
    }
}

fn spec_with(grants: Vec<TransferGrant>) -> Option<NodeSpec> {
    Some(NodeSpec {
        node_id: "node-b".into(),
        revision: 1,
        transfers: grants,
        ..Default::default()
    })
}

async fn create_volume(daemons: &Daemons, id: &str, name: &str) -> zfs::Volume {
    daemons
        .zfs
        .clone()
        .create_volume(zfs::CreateVolumeRequest {
            id: id.into(),
            name: name.into(),
            size_bytes: 32 * 1024 * 1024,
        })
        .await
        .expect("CreateVolume")
        .into_inner()
}

/// Writes `tag` repeated over the first `mib` MiB of the image at `offset_mib`.
fn write_at(path: &str, offset_mib: u64, mib: u64, tag: &str) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset_mib * 1024 * 1024)).unwrap();
    let block: Vec<u8> = tag.bytes().cycle().take(1024 * 1024).collect();
    for _ in 0..mib {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

async fn snapshot(daemons: &Daemons, volume_id: &str, snapshot_id: &str) {
    daemons
        .zfs
        .clone()
        .create_replication_snapshot(zfs::CreateReplicationSnapshotRequest {
            volume_id: volume_id.into(),
            snapshot_id: snapshot_id.into(),
        })
        .await
        .expect("CreateReplicationSnapshot");
}

async fn replicas(daemons: &Daemons) -> Vec<zfs::Volume> {
    daemons
        .zfs
        .clone()
        .list_replicas(zfs::ListReplicasRequest {})
        .await
        .expect("ListReplicas")
        .into_inner()
        .volumes
}

fn code(err: &TransferError) -> tonic::Code {
    match err {
        TransferError::Target(status) | TransferError::Source(status) => status.code(),
        other => panic!("expected a status from a side, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_relays_reach_the_target_only_under_a_grant() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let a = node(dir_a.path(), &shutdown).await;
    let b = node(dir_b.path(), &shutdown).await;

    // The target's NodePeer over TLS with its node certificate, as the agent serves it.
    let ca = ClusterCa::generate().unwrap();
    let server_store = store(&ca, PeerIdentity::Node("node-b".into()));
    let server_tls = ctls::server_config(
        &server_store,
        ctls::ClientAuth::Required(ca.cert_pem().to_string()),
    )
    .unwrap();
    let (spec_tx, spec_rx) = watch::channel::<Option<NodeSpec>>(None);
    let incoming = IncomingSockets::default();
    let listener = mvirt_common::grpc::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let endpoint = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let server = mvirt_common::grpc::GrpcServer::for_daemon("mvirt-node")
        .add_service(
            NodePeerServer::new(PeerServer::new(
                "node-b".into(),
                spec_rx,
                b.daemons.clone(),
                incoming.clone(),
                true,
            ))
            .max_decoding_message_size(8 * 1024 * 1024),
        )
        .await;
    let stop = shutdown.clone();
    tokio::spawn(async move { server.serve_tls(listener, Some(server_tls), stop).await });

    let ca_pem = Some(ca.cert_pem().to_string());
    let as_a = PeerDialer::new(
        ca_pem.clone(),
        Some(store(&ca, PeerIdentity::Node("node-a".into()))),
    );
    let as_c = PeerDialer::new(
        ca_pem.clone(),
        Some(store(&ca, PeerIdentity::Node("node-c".into()))),
    );
    let as_member = PeerDialer::new(ca_pem.clone(), Some(store(&ca, PeerIdentity::Member(1))));

    let volume_id = "0198a6c0-0000-7000-8000-00000000c001";
    let other_id = "0198a6c0-0000-7000-8000-00000000c002";
    let volume = create_volume(&a.daemons, volume_id, "disk-a").await;
    create_volume(&a.daemons, other_id, "disk-other").await;
    write_at(&volume.path, 0, 4, "first-generation ");
    snapshot(&a.daemons, volume_id, S1).await;
    snapshot(&a.daemons, other_id, S1).await;
    let granted = grant(&endpoint, &[volume_id]);

    // A grant that reaches the target's spec a moment after the call is waited for.
    let late = spec_tx.clone();
    let late_grant = granted.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = late.send(spec_with(vec![late_grant]));
    });
    let full = as_a
        .push_volume(&a.daemons, &granted, volume_id, S1, "")
        .await
        .expect("the full push");
    assert_eq!(full.snapshot_id, S1);
    assert!(full.byte_count > 4 * 1024 * 1024 / 2, "{full:?}");
    let on_b = replicas(&b.daemons).await;
    let replica = on_b
        .iter()
        .find(|v| v.id == volume_id)
        .expect("the replica");
    assert_eq!(replica.replica_source, "node:node-a");
    assert_eq!(
        common::sha256_of(Path::new(&replica.path)),
        common::sha256_of(Path::new(&volume.path))
    );

    // An increment on top of it.
    write_at(&volume.path, 8, 2, "second-generation ");
    snapshot(&a.daemons, volume_id, S2).await;
    let inc = as_a
        .push_volume(&a.daemons, &granted, volume_id, S2, S1)
        .await
        .expect("the incremental push");
    assert_eq!(inc.snapshot_id, S2);
    assert!(
        inc.byte_count < full.byte_count,
        "only the change: {inc:?} vs {full:?}"
    );
    let on_b = replicas(&b.daemons).await;
    let replica = on_b.iter().find(|v| v.id == volume_id).unwrap();
    assert_eq!(
        common::sha256_of(Path::new(&replica.path)),
        common::sha256_of(Path::new(&volume.path))
    );

    // Refusals: a volume outside the grant, another node, a member, a wrong token.
    let err = as_a
        .push_volume(&a.daemons, &granted, other_id, S1, "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    let err = as_c
        .push_volume(&a.daemons, &granted, volume_id, S2, "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("not node node-c"), "{err}");
    let err = as_member
        .push_volume(&a.daemons, &granted, volume_id, S2, "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    let mut wrong = granted.clone();
    wrong.token = "not-the-token".into();
    let err = as_a
        .push_volume(&a.daemons, &wrong, volume_id, S2, "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::Unauthenticated, "{err}");
    let ids: Vec<String> = replicas(&b.daemons)
        .await
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(
        ids,
        vec![volume_id.to_string()],
        "nothing else was received"
    );

    // A relay: bytes from a source socket reach the socket registered for the VM on the
    // target, and its answer comes back.
    let vm_id = granted.vm_id.clone();
    let err = {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        drop(ours);
        as_a.relay(&granted, &vm_id, theirs).await.unwrap_err()
    };
    assert_eq!(
        code(&err),
        tonic::Code::FailedPrecondition,
        "nothing registered yet: {err}"
    );
    let target_socket = dir_b.path().join("incoming.sock");
    let target = tokio::net::UnixListener::bind(&target_socket).unwrap();
    incoming.insert(&vm_id, target_socket.clone());
    let echo = tokio::spawn(async move {
        let (mut conn, _) = target.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        let answer: Vec<u8> = got.iter().rev().copied().collect();
        conn.write_all(&answer).await.unwrap();
        conn.shutdown().await.unwrap();
        got.len()
    });
    let (mut ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    let dialer = Arc::new(as_a);
    let relay = {
        let dialer = dialer.clone();
        let granted = granted.clone();
        let vm_id = vm_id.clone();
        tokio::spawn(async move { dialer.relay(&granted, &vm_id, theirs).await })
    };
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ours.write_all(&payload).await.unwrap();
    ours.shutdown().await.unwrap();
    let mut answer = Vec::new();
    ours.read_to_end(&mut answer).await.unwrap();
    assert_eq!(echo.await.unwrap(), payload.len());
    let expected: Vec<u8> = payload.iter().rev().copied().collect();
    assert!(answer == expected, "the answer came back through the relay");
    relay.await.unwrap().expect("the relay ends cleanly");
    // Another VM's relay is refused.
    let (_ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    let err = dialer
        .relay(&granted, "0198a6c0-0000-7000-8000-00000000b999", theirs)
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    shutdown.trigger();
}
