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
        running: Some(running),
        url,
        grpc_url,
        token,
        dir,
        http: reqwest::Client::new(),
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

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
