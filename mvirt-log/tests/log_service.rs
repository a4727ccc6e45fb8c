//! LogService against a real server on a unix socket with a temporary SQLite file.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use mvirt_common::listen::ListenAddr;
use mvirt_common::Shutdown;
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::proto::{
    query_response, LogBatchRequest, LogEntry, LogLevel, LogRequest, Order, QueryRequest,
};
use mvirt_log::retention::RetentionPolicy;
use mvirt_log::server::{BoundServer, Config};
use mvirt_testsupport::process::wait_until_async;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

struct Running {
    addr: ListenAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(dir: &Path, listen: ListenAddr) -> Running {
        let config = Config {
            listen,
            data_dir: dir.to_path_buf(),
            retention: RetentionPolicy::default(),
        };
        let server = BoundServer::bind(config).await.expect("bind mvirt-log");
        let addr = server.local_addr();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("serve") });
        Running {
            addr,
            shutdown,
            task,
        }
    }

    async fn client(&self) -> LogServiceClient<Channel> {
        LogServiceClient::connect(self.addr.endpoint())
            .await
            .expect("connect")
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("server task");
    }
}

/// The server's unix socket in the test's directory, as under /run/mvirt in production.
fn socket_in(dir: &Path) -> ListenAddr {
    ListenAddr::Unix(dir.join("log.sock"))
}

fn entry(message: &str, level: LogLevel, component: &str, objects: &[&str], ts: i64) -> LogEntry {
    LogEntry {
        message: message.into(),
        level: level as i32,
        component: component.into(),
        object_ids: objects.iter().map(|s| s.to_string()).collect(),
        timestamp_ns: ts,
        ..Default::default()
    }
}

/// Runs a query and returns (entries, next_cursor), asserting that the page ends.
async fn query(
    client: &mut LogServiceClient<Channel>,
    request: QueryRequest,
) -> (Vec<LogEntry>, String) {
    let mut stream = client.query(request).await.expect("query").into_inner();
    let mut entries = Vec::new();
    while let Some(item) = stream.next().await {
        match item.expect("stream item").item {
            Some(query_response::Item::Entry(e)) => entries.push(e),
            Some(query_response::Item::PageEnd(end)) => return (entries, end.next_cursor),
            None => panic!("empty stream item"),
        }
    }
    panic!("query stream ended without PageEnd");
}

fn q(limit: u32) -> QueryRequest {
    QueryRequest {
        limit,
        ..Default::default()
    }
}

fn messages(entries: &[LogEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.message.as_str()).collect()
}

#[tokio::test]
async fn an_entry_round_trips_with_all_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    let id = client
        .log(LogRequest {
            entry: Some(entry(
                "vm created",
                LogLevel::Audit,
                "vmm",
                &["vm-1", "vol-1"],
                1_000,
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert!(!id.is_empty());
    let (entries, next) = query(&mut client, q(10)).await;
    assert_eq!(entries.len(), 1);
    assert!(next.is_empty());
    let e = &entries[0];
    assert_eq!(e.id, id);
    assert_eq!(e.message, "vm created");
    assert_eq!(e.level, LogLevel::Audit as i32);
    assert_eq!(e.component, "vmm");
    assert_eq!(e.timestamp_ns, 1_000);
    let mut objects = e.object_ids.clone();
    objects.sort();
    assert_eq!(objects, ["vm-1", "vol-1"]);

    // A zero timestamp means "now".
    client
        .log(LogRequest {
            entry: Some(entry("now", LogLevel::Info, "vmm", &[], 0)),
        })
        .await
        .unwrap();
    let (entries, _) = query(&mut client, q(1)).await;
    assert_eq!(entries[0].message, "now");
    assert!(entries[0].timestamp_ns > 1_600_000_000_000_000_000);
    server.stop().await;
}

#[tokio::test]
async fn every_filter_and_both_orders_select_the_right_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    let entries = vec![
        entry("vm a created", LogLevel::Audit, "vmm", &["a"], 10),
        entry("volume b cloned", LogLevel::Audit, "zfs", &["b", "a"], 20),
        entry("retrying import", LogLevel::Warn, "zfs", &["b"], 30),
        entry("import failed", LogLevel::Error, "zfs", &["c"], 40),
        entry("probe", LogLevel::Debug, "ebpf", &[], 50),
        entry("vm a started", LogLevel::Info, "vmm", &["a"], 60),
    ];
    client.log_batch(LogBatchRequest { entries }).await.unwrap();

    let (all, _) = query(&mut client, q(100)).await;
    assert_eq!(
        messages(&all),
        [
            "vm a started",
            "probe",
            "import failed",
            "retrying import",
            "volume b cloned",
            "vm a created"
        ],
        "newest first is the default"
    );
    let (oldest, _) = query(
        &mut client,
        QueryRequest {
            order: Order::OldestFirst as i32,
            ..q(100)
        },
    )
    .await;
    assert_eq!(messages(&oldest)[0], "vm a created");
    assert_eq!(messages(&oldest)[5], "vm a started");

    let cases: Vec<(QueryRequest, Vec<&str>)> = vec![
        (
            QueryRequest {
                object_id: "a".into(),
                ..q(100)
            },
            vec!["vm a started", "volume b cloned", "vm a created"],
        ),
        (
            QueryRequest {
                component: "zfs".into(),
                ..q(100)
            },
            vec!["import failed", "retrying import", "volume b cloned"],
        ),
        (
            QueryRequest {
                levels: vec![LogLevel::Warn as i32, LogLevel::Error as i32],
                ..q(100)
            },
            vec!["import failed", "retrying import"],
        ),
        (
            QueryRequest {
                since_ns: 20,
                until_ns: 40,
                ..q(100)
            },
            vec!["retrying import", "volume b cloned"],
        ),
        (
            QueryRequest {
                contains: "import".into(),
                ..q(100)
            },
            vec!["import failed", "retrying import"],
        ),
        (
            QueryRequest {
                object_id: "b".into(),
                levels: vec![LogLevel::Audit as i32],
                component: "zfs".into(),
                ..q(100)
            },
            vec!["volume b cloned"],
        ),
        (
            QueryRequest {
                object_id: "nobody".into(),
                ..q(100)
            },
            vec![],
        ),
    ];
    for (request, expected) in cases {
        let (found, _) = query(&mut client, request.clone()).await;
        assert_eq!(messages(&found), expected, "query {request:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn pagination_walks_every_entry_once_in_both_orders_even_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    // Several entries share a timestamp, so the cursor must break ties by id.
    let entries: Vec<_> = (0..250)
        .map(|i| {
            entry(
                &format!("e{i}"),
                LogLevel::Info,
                "c",
                &["obj"],
                1_000 + i / 3,
            )
        })
        .collect();
    let ids = client
        .log_batch(LogBatchRequest { entries })
        .await
        .unwrap()
        .into_inner()
        .ids;
    let expected: HashSet<String> = ids.into_iter().collect();

    for order in [Order::NewestFirst, Order::OldestFirst] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let (page, next) = query(
                &mut client,
                QueryRequest {
                    order: order as i32,
                    cursor: cursor.clone(),
                    object_id: "obj".into(),
                    ..q(40)
                },
            )
            .await;
            pages += 1;
            seen.extend(
                page.iter()
                    .map(|e| (e.timestamp_ns, e.id.parse::<i64>().unwrap())),
            );
            // Writes between pages (other objects, and later timestamps) must not disturb them.
            client
                .log(LogRequest {
                    entry: Some(entry("noise", LogLevel::Info, "c", &["other"], 1_010)),
                })
                .await
                .unwrap();
            if next.is_empty() {
                break;
            }
            cursor = next;
        }
        assert_eq!(pages, 7, "250 entries in pages of 40");
        let unique: HashSet<String> = seen.iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(seen.len(), 250, "no duplicates");
        assert_eq!(unique, expected, "no gaps");
        let mut sorted = seen.clone();
        sorted.sort();
        if order == Order::NewestFirst {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "pages are in {order:?} order");
    }
    server.stop().await;
}

#[tokio::test]
async fn follow_delivers_live_entries_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    for i in 0..20 {
        client
            .log(LogRequest {
                entry: Some(entry(
                    &format!("before {i}"),
                    LogLevel::Audit,
                    "vmm",
                    &["vm"],
                    0,
                )),
            })
            .await
            .unwrap();
    }
    // A writer runs while the follower reads its page and switches to live entries.
    let mut writer_client = server.client().await;
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..300 {
            let level = if i % 3 == 0 {
                LogLevel::Debug
            } else {
                LogLevel::Audit
            };
            let id = writer_client
                .log(LogRequest {
                    entry: Some(entry(&format!("during {i}"), level, "vmm", &["vm"], 0)),
                })
                .await
                .unwrap()
                .into_inner()
                .id;
            if level == LogLevel::Audit {
                ids.push(id);
            }
        }
        ids
    });
    let mut stream = client
        .query(QueryRequest {
            follow: true,
            order: Order::OldestFirst as i32,
            levels: vec![LogLevel::Audit as i32],
            object_id: "vm".into(),
            ..q(10_000)
        })
        .await
        .unwrap()
        .into_inner();
    let written_during = writer.await.unwrap();
    let mut seen = Vec::new();
    let mut page_ended = false;
    let expected_total = 20 + written_during.len();
    while seen.len() < expected_total {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("follow stream stalled")
            .expect("stream open")
            .expect("item");
        match item.item {
            Some(query_response::Item::Entry(e)) => {
                assert_eq!(
                    e.level,
                    LogLevel::Audit as i32,
                    "filter applies to live entries"
                );
                seen.push(e.id)
            }
            Some(query_response::Item::PageEnd(_)) => page_ended = true,
            None => panic!("empty item"),
        }
    }
    assert!(page_ended);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no duplicate between history and live"
    );
    for id in &written_during {
        assert!(
            unique.contains(id),
            "entry {id} written during the switch was missed"
        );
    }
    // Nothing else arrives that should not.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "unexpected extra item: {extra:?}");
    server.stop().await;
}

#[tokio::test]
async fn entries_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    client
        .log(LogRequest {
            entry: Some(entry("kept", LogLevel::Audit, "vmm", &["vm-9"], 5)),
        })
        .await
        .unwrap();
    server.stop().await;

    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    let (entries, _) = query(
        &mut client,
        QueryRequest {
            object_id: "vm-9".into(),
            ..q(10)
        },
    )
    .await;
    assert_eq!(messages(&entries), ["kept"]);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_logger_delivers_entries_logged_while_the_server_was_down_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = socket_in(dir.path());
    let logger = mvirt_log::create_audit_logger(&addr.endpoint(), "tester");
    for i in 0..50 {
        logger.audit(format!("offline {i}"), &["vm-offline"]);
    }
    // Nothing listens yet: the logger must not block, and keeps the entries.
    assert!(!logger.flush_within(Duration::from_millis(300)).await);

    let server = Running::start(dir.path(), addr.clone()).await;
    assert!(
        logger.flush().await,
        "entries delivered once the server is up"
    );
    logger.info("after", &["vm-offline"]);
    assert!(logger.flush().await);
    let mut client = server.client().await;
    let (entries, _) = query(
        &mut client,
        QueryRequest {
            object_id: "vm-offline".into(),
            order: Order::OldestFirst as i32,
            ..q(1000)
        },
    )
    .await;
    assert_eq!(entries.len(), 51, "each entry stored exactly once");
    assert_eq!(entries[0].message, "offline 0");
    assert_eq!(entries[50].message, "after");
    assert_eq!(entries[0].component, "tester");
    assert_eq!(logger.dropped(), 0);
    assert_eq!(logger.delivered(), 51);

    // The server restarts while the logger keeps logging: nothing is lost.
    server.stop().await;
    for i in 0..10 {
        logger.audit(format!("during restart {i}"), &["vm-offline"]);
    }
    let server = Running::start(dir.path(), addr.clone()).await;
    assert!(logger.flush().await);
    let mut client = server.client().await;
    let (entries, _) = query(
        &mut client,
        QueryRequest {
            object_id: "vm-offline".into(),
            ..q(1000)
        },
    )
    .await;
    assert_eq!(entries.len(), 61);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_logger_sends_a_trickle_of_entries_in_batches_at_most_one_per_linger() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let logger = mvirt_log::create_audit_logger(&server.addr.endpoint(), "tester");
    // One entry about every millisecond: without the linger each would go in a call (a
    // transaction and an fsync in mvirt-log) of its own.
    let started = std::time::Instant::now();
    for i in 0..200 {
        logger.audit(format!("trickle {i}"), &["vm-trickle"]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(logger.flush().await, "a flush sends what lingers");
    let elapsed = started.elapsed();
    assert_eq!(logger.delivered(), 200);
    // Every batch but the last (which the flush may cut short) waited the whole linger before it
    // was sent, and the next one began after that: batches began at least LINGER apart.
    let bound = (elapsed.as_millis() / mvirt_log::audit::LINGER.as_millis()) as u64 + 1;
    assert!(
        logger.batches() <= bound,
        "{} LogBatch calls in {elapsed:?}: more than one per {:?}",
        logger.batches(),
        mvirt_log::audit::LINGER
    );
    let mut client = server.client().await;
    let (entries, _) = query(
        &mut client,
        QueryRequest {
            object_id: "vm-trickle".into(),
            order: Order::OldestFirst as i32,
            ..q(1000)
        },
    )
    .await;
    let got: Vec<String> = entries.into_iter().map(|e| e.message).collect();
    let want: Vec<String> = (0..200).map(|i| format!("trickle {i}")).collect();
    assert_eq!(got, want, "every entry stored once, in order");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_entry_with_the_same_dedup_key_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;
    let mut e = entry("once", LogLevel::Audit, "c", &["x"], 7);
    e.dedup_key = "key-1".into();
    let first = client
        .log(LogRequest {
            entry: Some(e.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let second = client
        .log(LogRequest { entry: Some(e) })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(first, second);
    let (entries, _) = query(&mut client, q(10)).await;
    assert_eq!(entries.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_writers_are_all_stored_with_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..100 {
                ids.push(
                    client
                        .log(LogRequest {
                            entry: Some(entry(
                                &format!("w{w} {i}"),
                                LogLevel::Info,
                                "load",
                                &[&format!("writer-{w}")],
                                0,
                            )),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .id,
                );
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(all.insert(id), "duplicate id");
        }
    }
    assert_eq!(all.len(), 1600);
    let mut client = server.client().await;
    let (entries, _) = query(
        &mut client,
        QueryRequest {
            object_id: "writer-3".into(),
            order: Order::OldestFirst as i32,
            ..q(1000)
        },
    )
    .await;
    let expected: Vec<String> = (0..100).map(|i| format!("w3 {i}")).collect();
    assert_eq!(
        messages(&entries),
        expected,
        "each writer's entries in its order"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let mut client = server.client().await;

    let cases = [
        (
            entry("", LogLevel::Info, "c", &[], 0),
            "message must not be empty",
        ),
        (
            entry("x", LogLevel::Unspecified, "c", &[], 0),
            "unknown level",
        ),
        (entry("x", LogLevel::Info, "", &[], 0), "component"),
        (entry("x", LogLevel::Info, "c", &[""], 0), "object id"),
    ];
    for (bad, expected) in cases {
        let status = client
            .log(LogRequest { entry: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let mut unknown = entry("x", LogLevel::Info, "c", &[], 0);
    unknown.level = 42;
    let status = client
        .log(LogRequest {
            entry: Some(unknown),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // One bad entry fails the whole batch; nothing of it is written.
    let status = client
        .log_batch(LogBatchRequest {
            entries: vec![
                entry("good", LogLevel::Info, "c", &[], 0),
                entry("", LogLevel::Info, "c", &[], 0),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("entry 1"), "{}", status.message());

    for (request, expected) in [
        (q(0), "limit"),
        (q(10_001), "limit"),
        (
            QueryRequest {
                since_ns: 100,
                until_ns: 50,
                ..q(10)
            },
            "reversed",
        ),
        (
            QueryRequest {
                cursor: "not-a-cursor".into(),
                ..q(10)
            },
            "cursor",
        ),
    ] {
        let status = client.query(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let (entries, _) = query(&mut client, q(10)).await;
    assert!(entries.is_empty(), "nothing was written: {entries:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_health_service_reports_log_service_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), socket_in(dir.path())).await;
    let channel = mvirt_common::grpc::client_endpoint(&server.addr.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = wait_until_async("health SERVING", Duration::from_secs(5), || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "mvirt.log.v1.LogService".into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().status)
        }
    })
    .await;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let _ = &mut health;
    server.stop().await;
}
