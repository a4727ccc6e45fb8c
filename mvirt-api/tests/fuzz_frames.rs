//! Fuzzing what another member or a node agent sends: the Raft listener's JSON bodies
//! (AppendEntries, Vote, InstallSnapshot, forwarded writes and heartbeats), the framed
//! AppendEntries stream, and NodeService's protobuf requests — decoded as tonic decodes them,
//! and the decodable ones sent through the real NodeService of an in-process member, whose
//! validation must turn every one into an answer (accepted or an error status), never a
//! panic or a hang.
//!
//! Short run: `cargo test -p mvirt-api --test fuzz_frames`. Long run:
//! `MVIRT_FUZZ_CASES=100000 cargo test --release -p mvirt-api --test fuzz_frames`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mvirt_api::app::HeartbeatForward;
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use mvirt_api::raft::{Batch, MemberId, TypeConfig, MAX_FRAME};
use mvirt_api::state::{Command, Proposal};
use mvirt_testsupport::fuzz::{bytes, mutate, CountingAlloc, Target};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;
use rand::rngs::StdRng;
use rand::Rng;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn log_id(index: u64) -> LogId<MemberId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

/// Valid bodies of every Raft listener route, as JSON.
fn raft_samples() -> Vec<Vec<u8>> {
    let vote = Vote::new_committed(3, 1);
    let proposal = Proposal {
        command: Command::Noop,
        idempotency: None,
        trace_id: None,
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(6)),
        entries: vec![Entry {
            log_id: log_id(7),
            payload: EntryPayload::Normal(Batch {
                id: 9,
                proposals: vec![proposal.clone(), proposal.clone()].into(),
            }),
        }],
        leader_commit: Some(log_id(6)),
    };
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: Default::default(),
        offset: 0,
        data: vec![1, 2, 3, 4],
        done: true,
    };
    let heartbeat = HeartbeatForward {
        node_id: "0190b5d2-0000-7000-8000-000000000001".into(),
        capacity: None,
        pod_artefacts_version: None,
    };
    [
        serde_json::to_vec(&append),
        serde_json::to_vec(&VoteRequest::new(vote, Some(log_id(7)))),
        serde_json::to_vec(&snapshot),
        serde_json::to_vec(&proposal),
        serde_json::to_vec(&heartbeat),
        Ok(br#"{"command":{"op":"update_statuses","node_id":"n","reports":[{"kind":"vm","id":"v","status":{"phase":"running"}}],"now":0}}"#.to_vec()),
    ]
    .into_iter()
    .map(|r| r.expect("serialize a sample"))
    .collect()
}

fn json_soup(rng: &mut StdRng) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "null",
        "true",
        "-1",
        "1e999",
        "18446744073709551616",
        "\"op\"",
        "\"command\"",
        "\"create_network\"",
        "\"create_vm\"",
        "\"update_statuses\"",
        "\"register_node\"",
        "\"vote\"",
        "\"entries\"",
        "\"log_id\"",
        "\"payload\"",
        "\"Normal\"",
        "\"Membership\"",
        "\"leader_id\"",
        "\"data\"",
        "\"\\ud800\"",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "{\"a\":",
    ];
    (0..rng.gen_range(0..64))
        .flat_map(|_| TOKENS[rng.gen_range(0..TOKENS.len())].bytes())
        .collect()
}

#[test]
fn raft_listener_bodies_never_panic_hang_or_allocate_without_bound() {
    let samples = raft_samples();
    Target::new("api/raft-bodies", 3000)
        .alloc_limit(4 << 20)
        .run(
            |rng| {
                if rng.gen_bool(0.2) {
                    json_soup(rng)
                } else {
                    let sample = samples[rng.gen_range(0..samples.len())].clone();
                    mutate(rng, sample)
                }
            },
            |body| {
                let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(body);
                let _ = serde_json::from_slice::<VoteRequest<MemberId>>(body);
                let _ = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(body);
                let _ = serde_json::from_slice::<Proposal>(body);
                let _ = serde_json::from_slice::<HeartbeatForward>(body);
            },
        );
}

/// The AppendEntries stream: a 4-byte length, then that many bytes of JSON. `read_frame`
/// refuses lengths over `MAX_FRAME` but allocates the declared length before reading it, so a
/// member can make its peer hold up to `MAX_FRAME` bytes: the cap here says so.
#[test]
fn raft_stream_frames_never_panic_hang_or_allocate_past_the_frame_limit() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let samples = raft_samples();
    Target::new("api/raft-frames", 2000)
        .alloc_limit(MAX_FRAME + (1 << 20))
        .run(
            |rng| {
                let body = mutate(rng, samples[0].clone());
                let declared: u32 = match rng.gen_range(0..10) {
                    0 => rng.gen(),
                    1 => MAX_FRAME as u32 + 1,
                    _ => (body.len() as u32 + rng.gen_range(0..3)).saturating_sub(1),
                };
                let mut stream = declared.to_be_bytes().to_vec();
                stream.extend_from_slice(&body);
                if rng.gen_bool(0.2) {
                    stream = mutate(rng, stream);
                }
                stream
            },
            |stream| {
                rt.block_on(async {
                    let mut reader = stream.as_slice();
                    while let Ok(Some(frame)) = mvirt_api::raft::read_frame(&mut reader).await {
                        let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&frame);
                    }
                })
            },
        );
}

/// Valid encodings of every NodeService request (and the NodeSpec a node decodes).
fn proto_samples() -> Vec<(u8, Vec<u8>)> {
    let id = "0190b5d2-0000-7000-8000-000000000001".to_string();
    let capacity = Some(proto::NodeCapacity {
        vcpus: 8,
        memory_bytes: 16 << 30,
        storage_bytes: 100 << 30,
    });
    vec![
        (
            0,
            proto::RegisterRequest {
                node_id: String::new(),
                name: "host-1".into(),
                address: "192.0.2.10".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                capacity,
                agent_version: "fuzz".into(),
                console_endpoint: "http://192.0.2.10:50057".into(),
                console_secret: "s".into(),
                csr_pem: String::new(),
                pod_artefacts_version: "0123456789abcdef".into(),
            }
            .encode_to_vec(),
        ),
        (
            1,
            proto::HeartbeatRequest {
                node_id: id.clone(),
                capacity,
                applied_revision: 5,
                pod_artefacts_version: Some("0123456789abcdef".into()),
            }
            .encode_to_vec(),
        ),
        (
            2,
            proto::DeregisterRequest {
                node_id: id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            3,
            proto::UpdateResourceStatusRequest {
                node_id: id.clone(),
                statuses: vec![proto::ResourceStatus {
                    kind: proto::ResourceKind::Vm as i32,
                    id: id.clone(),
                    phase: proto::Phase::Running as i32,
                    message: "ok".into(),
                    conditions: vec![proto::Condition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        message: String::new(),
                    }],
                    ipv4_addresses: vec!["10.0.0.5".into()],
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        ),
        (
            4,
            proto::WatchSpecsRequest {
                node_id: id,
                from_revision: 3,
            }
            .encode_to_vec(),
        ),
    ]
}

/// A string a node might send: valid ids and names, and the edge cases validation must catch.
fn text(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => String::new(),
        1 => NODE_ID.into(),
        2 => format!("0190b5d2-0000-7000-8000-{:012x}", rng.gen::<u32>()),
        3 if rng.gen() => NODE_ID.into(),
        3 => "host-1".into(),
        4 => "x".repeat(rng.gen_range(60..6000)),
        5 => "../../etc".into(),
        6 => "Ünïcødé\u{0}\n".into(),
        7 => "10.0.0.5".into(),
        8 => "zone=a".into(),
        _ => String::from_utf8_lossy(&bytes(rng, 0..40)).into_owned(),
    }
}

/// The node the live target registers first, so that requests naming it can succeed.
const NODE_ID: &str = "0190b5d2-0000-7000-8000-0000000000aa";

fn number(rng: &mut StdRng) -> u64 {
    [0, 1, 8, 16 << 30, u64::MAX, u64::MAX / 2, rng.gen()][rng.gen_range(0..7)]
}

fn capacity(rng: &mut StdRng) -> Option<proto::NodeCapacity> {
    rng.gen_bool(0.8).then(|| proto::NodeCapacity {
        vcpus: number(rng) as u32,
        memory_bytes: number(rng),
        storage_bytes: number(rng),
    })
}

fn strings(rng: &mut StdRng) -> Vec<String> {
    (0..rng.gen_range(0..4)).map(|_| text(rng)).collect()
}

fn status(rng: &mut StdRng) -> proto::ResourceStatus {
    proto::ResourceStatus {
        kind: rng.gen_range(-1..10),
        id: text(rng),
        phase: rng.gen_range(-1..12),
        message: text(rng),
        observed_revision: number(rng),
        ipv4_addresses: strings(rng),
        ipv6_addresses: strings(rng),
        import_bytes_done: number(rng),
        import_bytes_total: number(rng),
        used_bytes: number(rng),
        fields: (0..rng.gen_range(0..3))
            .map(|_| (text(rng), text(rng)))
            .collect(),
        snapshots: (0..rng.gen_range(0..3))
            .map(|_| proto::SnapshotStatus {
                id: text(rng),
                phase: rng.gen_range(-1..12),
                message: text(rng),
                used_bytes: number(rng),
            })
            .collect(),
        rollback_generation: number(rng),
        conditions: (0..rng.gen_range(0..20))
            .map(|_| proto::Condition {
                r#type: text(rng),
                status: text(rng),
                message: text(rng),
            })
            .collect(),
        containers: (0..rng.gen_range(0..20))
            .map(|_| proto::PodContainerStatus {
                name: text(rng),
                image: text(rng),
                image_digest: text(rng),
                state: rng.gen_range(-1..8),
                exit_code: rng.gen(),
                restart_count: rng.gen(),
                oom_killed: rng.gen(),
                message: text(rng),
                started_at_ms: rng.gen(),
                finished_at_ms: rng.gen(),
            })
            .collect(),
        artefacts_version: text(rng),
        backup: rng.gen_bool(0.3).then(|| proto::BackupReport {
            size_bytes: number(rng),
            sha256: text(rng),
            base_backup_id: text(rng),
            volume_size_bytes: number(rng),
        }),
        migration: rng.gen_bool(0.3).then(|| proto::MigrationReport {
            migration_id: text(rng),
            phase: rng.gen_range(-1..6),
            bytes_transferred: number(rng),
            bytes_remaining: number(rng),
            downtime_ms: number(rng),
            error: text(rng),
        }),
        replicas: (0..rng.gen_range(0..3))
            .map(|_| proto::ReplicaReport {
                volume_id: text(rng),
                target_node_id: text(rng),
                last_snapshot_id: text(rng),
                last_replicated_at: rng.gen(),
                last_bytes: number(rng),
                last_error: text(rng),
                lag_secs: number(rng),
                last_incremental: rng.gen(),
            })
            .collect(),
    }
}

/// `good` in a case meant to be valid, else any [`text`].
fn field(rng: &mut StdRng, valid: bool, good: &str) -> String {
    if valid && rng.gen_bool(0.9) {
        good.to_string()
    } else {
        text(rng)
    }
}

/// A request built field by field: half the cases from valid values (with an odd field out
/// now and then), half from [`text`] and [`number`]; sometimes one byte edit on top.
fn structured(rng: &mut StdRng) -> (u8, Vec<u8>) {
    let kind = rng.gen_range(0..5u8);
    let valid = rng.gen_bool(0.5);
    let node = field(rng, valid, NODE_ID);
    let encoded = match kind {
        0 => proto::RegisterRequest {
            node_id: node,
            name: field(rng, valid, "fuzz-node"),
            address: field(rng, valid, "192.0.2.20"),
            labels: (0..rng.gen_range(0..4))
                .map(|_| (field(rng, valid, "zone"), field(rng, valid, "a")))
                .collect(),
            capacity: if valid {
                Some(proto::NodeCapacity {
                    vcpus: 8,
                    memory_bytes: 16 << 30,
                    storage_bytes: 100 << 30,
                })
            } else {
                capacity(rng)
            },
            agent_version: text(rng),
            console_endpoint: field(rng, valid, ""),
            console_secret: text(rng),
            csr_pem: field(rng, valid, ""),
            pod_artefacts_version: field(rng, valid, "0123456789abcdef"),
        }
        .encode_to_vec(),
        1 => proto::HeartbeatRequest {
            node_id: node,
            capacity: capacity(rng),
            applied_revision: number(rng),
            pod_artefacts_version: rng.gen_bool(0.5).then(|| text(rng)),
        }
        .encode_to_vec(),
        2 => proto::DeregisterRequest { node_id: node }.encode_to_vec(),
        3 => proto::UpdateResourceStatusRequest {
            node_id: node,
            statuses: (0..rng.gen_range(0..8))
                .map(|_| {
                    let mut s = status(rng);
                    if valid {
                        s.kind = rng.gen_range(1..9);
                        s.id = format!("0190b5d2-0000-7000-8000-{:012x}", rng.gen::<u16>());
                        s.message = "fuzz".into();
                    }
                    s
                })
                .collect(),
        }
        .encode_to_vec(),
        _ => proto::WatchSpecsRequest {
            node_id: node,
            from_revision: number(rng),
        }
        .encode_to_vec(),
    };
    if rng.gen_bool(0.1) {
        let mut edited = encoded;
        if !edited.is_empty() {
            let i = rng.gen_range(0..edited.len());
            edited[i] = rng.gen();
        }
        (kind, edited)
    } else {
        (kind, encoded)
    }
}

/// A protobuf input: mutated valid encodings, or raw bytes.
fn proto_input(rng: &mut StdRng, samples: &[(u8, Vec<u8>)]) -> (u8, Vec<u8>) {
    let (kind, sample) = samples[rng.gen_range(0..samples.len())].clone();
    if rng.gen_bool(0.2) {
        (kind, bytes(rng, 0..512))
    } else {
        (kind, mutate(rng, sample))
    }
}

#[test]
fn nodeservice_requests_decode_without_panic_hang_or_unbounded_allocation() {
    let samples = proto_samples();
    Target::new("api/nodeservice-decode", 5000)
        .alloc_limit(1 << 20)
        .run(
            |rng| {
                if rng.gen() {
                    structured(rng).1
                } else {
                    proto_input(rng, &samples).1
                }
            },
            |input| {
                let data = input.as_slice();
                let _ = proto::RegisterRequest::decode(data);
                let _ = proto::HeartbeatRequest::decode(data);
                let _ = proto::DeregisterRequest::decode(data);
                let _ = proto::WatchSpecsRequest::decode(data);
                let _ = proto::UpdateResourceStatusRequest::decode(data);
                let _ = proto::NodeSpec::decode(data);
            },
        );
}

/// Panics anywhere in this process (the in-process member's handlers included).
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn nodeservice_answers_every_decodable_request_without_a_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let (member, mut client, node_token) = rt.block_on(async {
        let m = common::start_member().await;
        let node_token = m
            .create(
                "/v1/tokens",
                serde_json::json!({"name": "fuzz", "role": "node"}),
            )
            .await["token"]
            .as_str()
            .expect("node token")
            .to_string();
        let mut client = m.node_client(None).await;
        client
            .register(request(
                proto::RegisterRequest {
                    node_id: NODE_ID.into(),
                    name: "fuzz-node".into(),
                    address: "192.0.2.20".into(),
                    capacity: Some(proto::NodeCapacity {
                        vcpus: 8,
                        memory_bytes: 16 << 30,
                        storage_bytes: 100 << 30,
                    }),
                    ..Default::default()
                },
                &m.token,
            ))
            .await
            .expect("register the fuzz node");
        (m, client, node_token)
    });
    let samples = proto_samples();
    let admin_token = member.token.clone();
    let mut answers = std::collections::BTreeMap::<String, u64>::new();
    Target::new("api/nodeservice-live", 300)
        .alloc_limit(usize::MAX)
        .run(
            |rng| {
                let input = if rng.gen_bool(0.8) {
                    structured(rng)
                } else {
                    proto_input(rng, &samples)
                };
                (input, rng.gen_bool(0.5))
            },
            |((kind, input), as_node)| {
                let token = if *as_node { &node_token } else { &admin_token };
                let answer = rt.block_on(call(&mut client, token, *kind, input));
                *answers.entry(answer).or_default() += 1;
            },
        );
    eprintln!("NodeService answers: {answers:?}");
    // The mutations keep many requests valid: the service's accepting paths ran too.
    assert!(answers.get("OK").is_some_and(|n| *n > 0), "{answers:?}");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a NodeService request made the member panic"
    );
    drop(member);
}

fn request<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r.set_timeout(std::time::Duration::from_secs(5));
    r
}

/// Sends the decoded request, if it decodes; any answer is fine except a transport failure
/// (what a handler panic looks like from the client). Returns what came back, for the tally.
async fn call(
    client: &mut NodeServiceClient<tonic::transport::Channel>,
    token: &str,
    kind: u8,
    input: &[u8],
) -> String {
    let decoded = match kind {
        0 => proto::RegisterRequest::decode(input).is_ok(),
        1 => proto::HeartbeatRequest::decode(input).is_ok(),
        2 => proto::DeregisterRequest::decode(input).is_ok(),
        3 => proto::UpdateResourceStatusRequest::decode(input).is_ok(),
        _ => proto::WatchSpecsRequest::decode(input).is_ok(),
    };
    if !decoded {
        return "not decodable".into();
    }
    let status = match kind {
        0 => match proto::RegisterRequest::decode(input) {
            Ok(m) => client.register(request(m, token)).await.err(),
            Err(_) => None,
        },
        1 => match proto::HeartbeatRequest::decode(input) {
            Ok(m) => client.heartbeat(request(m, token)).await.err(),
            Err(_) => None,
        },
        2 => match proto::DeregisterRequest::decode(input) {
            Ok(m) => client.deregister(request(m, token)).await.err(),
            Err(_) => None,
        },
        3 => match proto::UpdateResourceStatusRequest::decode(input) {
            Ok(m) => client.update_resource_status(request(m, token)).await.err(),
            Err(_) => None,
        },
        _ => match proto::WatchSpecsRequest::decode(input) {
            // The first message (or the refusal) is the answer; the stream is dropped. A watch
            // from a revision not reached yet rightly waits for a change.
            Ok(m) => match client.watch_specs(request(m, token)).await {
                Ok(mut stream) => {
                    let first = std::time::Duration::from_millis(300);
                    match tokio::time::timeout(first, stream.get_mut().message()).await {
                        Ok(message) => message.err(),
                        Err(_) => return "watching".into(),
                    }
                }
                Err(e) => Some(e),
            },
            Err(_) => None,
        },
    };
    match status {
        Some(status) => {
            assert!(
                !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                "NodeService failed instead of answering: {status:?}"
            );
            format!("{:?}", status.code())
        }
        None => "OK".into(),
    }
}
