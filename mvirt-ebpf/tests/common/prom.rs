//! The daemon's Prometheus endpoint as an operator reads it: a listener started for the test
//! (stopped on drop, also on a panic) and a parser of the text format.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};

use mvirt_common::Shutdown;

/// The metrics listener of this test process (the registry is per process).
pub struct MetricsListener {
    pub addr: std::net::SocketAddr,
    shutdown: Shutdown,
}

impl MetricsListener {
    pub async fn start() -> Self {
        let shutdown = Shutdown::new();
        let served = mvirt_common::metrics::serve(
            mvirt_ebpf::metrics::DAEMON,
            "127.0.0.1:0".parse().unwrap(),
            shutdown.clone(),
        )
        .await
        .expect("metrics listener");
        Self {
            addr: served.addr,
            shutdown,
        }
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// One sample of the Prometheus text: metric name, labels, value.
pub type Sample = (String, HashMap<String, String>, f64);

/// `GET /metrics` over plain HTTP/1.0 (the server closes the connection after the answer).
pub fn scrape(addr: std::net::SocketAddr) -> Vec<Sample> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("a number"))
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `want`.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0]
}
