//! mvirt-log benchmark: ingest rate for single `Log` calls and for `LogBatch`, and `Query` latency
//! by object id over 1,000,000 entries. Each number is reported next to a baseline measured in
//! the same run: the same rows written straight into SQLite through the store (no gRPC), and the
//! same query run directly on the store.
//!
//! Run with `cargo bench -p mvirt-log` (release build). Set `MVIRT_BENCH_ENTRIES` to change the
//! database size for the query part (default 1,000,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mvirt_common::Shutdown;
use mvirt_log::level::Level;
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::proto::{LogBatchRequest, LogEntry, LogLevel, LogRequest, QueryRequest};
use mvirt_log::retention::RetentionPolicy;
use mvirt_log::server::{BoundServer, Config};
use mvirt_log::store::{Filter, NewEntry, Order, Store};
use tokio_stream::StreamExt;

const OBJECTS: usize = 100_000;

fn wire(i: usize) -> LogEntry {
    LogEntry {
        message: format!("vm {i} changed state to running"),
        level: LogLevel::Audit as i32,
        component: "bench".into(),
        object_ids: vec![format!("obj-{}", i % OBJECTS)],
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
        ..Default::default()
    }
}

fn domain(i: usize) -> NewEntry {
    NewEntry {
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
        message: format!("vm {i} changed state to running"),
        level: Level::Audit,
        component: "bench".into(),
        object_ids: vec![format!("obj-{}", i % OBJECTS)],
        dedup_key: None,
        trace_id: None,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("MVIRT_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = BoundServer::bind(Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("server"),
        retention: RetentionPolicy::default(),
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    let client = LogServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    // Baseline store: the same rows straight into SQLite.
    let baseline = Arc::new(Store::open(&dir.path().join("baseline/log.db")).expect("store"));

    println!("# mvirt-log benchmark ({total} entries for the query part)");

    // 1. Single Log calls, 16 concurrent clients (each call durable before it answers).
    let single_total = 8_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..single_total / 16 {
                client
                    .log(LogRequest {
                        entry: Some(wire(w * 1_000_000 + i)),
                    })
                    .await
                    .expect("log");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let single_rate = single_total as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..2_000 {
        baseline.insert(&[domain(i)]).expect("insert");
    }
    let baseline_single = 2_000.0 / start.elapsed().as_secs_f64();
    println!(
        "single Log (16 clients): {single_rate:.0} entries/s; baseline one-row SQLite transactions: {baseline_single:.0}/s; ratio {:.2}",
        single_rate / baseline_single
    );

    // 2. LogBatch of 1000 entries; also fills the database for the query part.
    let start = Instant::now();
    let mut client_b = client.clone();
    let mut written = 0;
    while written < total {
        let n = 1000.min(total - written);
        client_b
            .log_batch(LogBatchRequest {
                entries: (written..written + n).map(wire).collect(),
            })
            .await
            .expect("batch");
        written += n;
    }
    let batch_rate = total as f64 / start.elapsed().as_secs_f64();
    let sample = 200_000.min(total);
    let start = Instant::now();
    let mut done = 0;
    while done < sample {
        let rows: Vec<_> = (done..done + 1000).map(domain).collect();
        baseline.insert(&rows).expect("insert");
        done += 1000;
    }
    let baseline_batch = sample as f64 / start.elapsed().as_secs_f64();
    println!(
        "LogBatch(1000): {batch_rate:.0} entries/s (target >= 50000); baseline direct store batches: {baseline_batch:.0}/s; ratio {:.2}",
        batch_rate / baseline_batch
    );

    // 3. Query by object id over the full database.
    let mut grpc_samples = Vec::new();
    let mut direct_samples = Vec::new();
    let server_store = Store::open(&dir.path().join("server/log.db")).expect("open");
    for k in 0..1000 {
        let object = format!("obj-{}", (k * 7919) % OBJECTS);
        let start = Instant::now();
        let mut stream = client_b
            .query(QueryRequest {
                object_id: object.clone(),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner();
        let mut n = 0;
        while let Some(item) = stream.next().await {
            item.expect("item");
            n += 1;
        }
        grpc_samples.push(start.elapsed());
        assert!(n > 1, "query returned entries");
        let filter = Filter {
            object_id: Some(object),
            ..Filter::default()
        };
        let start = Instant::now();
        server_store
            .query(&filter, Order::NewestFirst, 100, None)
            .expect("direct query");
        direct_samples.push(start.elapsed());
    }
    let p50 = percentile(&mut grpc_samples, 0.5);
    let p99 = percentile(&mut grpc_samples, 0.99);
    let d50 = percentile(&mut direct_samples, 0.5);
    let d99 = percentile(&mut direct_samples, 0.99);
    println!(
        "Query by object id over {total}: p50 {:.2} ms, p99 {:.2} ms (target p99 <= 5 ms); direct store p50 {:.2} ms, p99 {:.2} ms; p99 ratio {:.2}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3,
        p99.as_secs_f64() / d99.as_secs_f64()
    );
    shutdown.trigger();
    let _ = task.await;
}
