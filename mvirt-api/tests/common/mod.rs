//! Shared helpers for mvirt-api's integration tests: an in-process member on free ports with a
//! temporary data dir, and a small JSON client.
#![allow(dead_code)]

pub mod processes;

use std::net::IpAddr;

use mvirt_api::server::{self, Running, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Member {
    pub running: Option<Running>,
    pub url: String,
    pub grpc_url: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The cluster CA (PEM) the member's listeners are signed by.
    pub ca_pem: String,
}

pub async fn start_member() -> Member {
    start_member_with(|_| {}).await
}

pub async fn start_member_with(tweak: impl FnOnce(&mut ServerConfig)) -> Member {
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::for_tests(IpAddr::from([127, 0, 0, 1]), dir.path());
    tweak(&mut config);
    let running = server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("start mvirt-api");
    let token = running
        .admin_token()
        .expect("admin token written at bootstrap");
    let url = running.api_url();
    let grpc_url = running.grpc_url();
    let member = Member {
        url,
        grpc_url,
        token,
        http: client_for(&running),
        ca_pem: running.ca_pem().unwrap_or_default(),
        running: Some(running),
        dir,
    };
    // The token file appears only after the cluster committed the token: the first call works.
    let (s, body) = member.call(Method::GET, "/v1/projects", None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "first call with the fresh admin token: {body}"
    );
    member
}

impl Member {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A NodeService client trusting the member's CA, presenting `cert` when given.
    pub async fn node_client(
        &self,
        cert: Option<mvirt_common::tls::CertStore>,
    ) -> mvirt_api::proto::node_service_client::NodeServiceClient<tonic::transport::Channel> {
        node_service(&self.grpc_url, &self.ca_pem, cert).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates an object and returns it, asserting 201.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.post(path, body.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "POST {path} {body}: {v}");
        v
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// Asserts an error envelope with `code`.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(
        status.as_u16(),
        expected_status,
        "unexpected status, body {body}"
    );
    assert_eq!(
        body["error"]["code"], code,
        "unexpected error code in {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
}

/// A reqwest client trusting `ca_pem` (a member's `<data-dir>/tls/ca.pem`).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    let tls = mvirt_common::tls::client_config(ca_pem, None).expect("client TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .expect("reqwest client")
}

/// A reqwest client for `running`: trusting its CA, or plain with `--insecure-plaintext`.
pub fn client_for(running: &Running) -> reqwest::Client {
    match running.ca_pem() {
        Some(ca) => https_client(&ca),
        None => reqwest::Client::new(),
    }
}

/// A NodeService client over TLS trusting `ca_pem`, presenting `cert` when given.
pub async fn node_service(
    url: &str,
    ca_pem: &str,
    cert: Option<mvirt_common::tls::CertStore>,
) -> mvirt_api::proto::node_service_client::NodeServiceClient<tonic::transport::Channel> {
    let tls = mvirt_common::tls::client_config(ca_pem, cert).expect("client TLS config");
    let channel = mvirt_common::tls::grpc_connect(url, Some(tls))
        .await
        .expect("connect NodeService");
    mvirt_api::proto::node_service_client::NodeServiceClient::new(channel)
}

/// A member certificate for `member_id` issued from the CA in `data_dir/tls` (what a member
/// presents on the Raft listener).
pub fn member_cert(data_dir: &std::path::Path, member_id: u64) -> mvirt_common::tls::CertStore {
    let ca = mvirt_common::tls::ClusterCa::load(&mvirt_common::tls::tls_dir(data_dir))
        .expect("cluster CA in the data dir");
    let issued = ca
        .issue(
            mvirt_common::tls::PeerIdentity::Member(member_id),
            &["127.0.0.1".to_string()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    mvirt_common::tls::CertStore::from_issued(&issued).unwrap()
}

/// A reqwest client presenting the certificate of `member_id` (issued from the CA in
/// `data_dir`), trusting that CA: what a member uses on the Raft listener.
pub fn member_http(data_dir: &std::path::Path, member_id: u64) -> reqwest::Client {
    let ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).unwrap();
    let tls =
        mvirt_common::tls::client_config(&ca, Some(member_cert(data_dir, member_id))).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap()
}

/// A TLS connection to a member's Raft listener at `addr` (`ip:port`) presenting the
/// certificate of `member_id` (issued from the CA in `data_dir`).
pub async fn raft_connect(
    addr: &str,
    data_dir: &std::path::Path,
    member_id: u64,
) -> mvirt_common::tls::ClientStream {
    let ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).unwrap();
    let config =
        mvirt_common::tls::client_config(&ca, Some(member_cert(data_dir, member_id))).unwrap();
    let host = addr.rsplit_once(':').unwrap().0;
    mvirt_common::tls::connect(addr, host, config)
        .await
        .expect("TLS connection to the Raft listener")
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
