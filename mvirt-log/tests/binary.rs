//! The `mvirt-log` binary: flags, environment variables, serving, and a clean exit on SIGTERM.

use std::process::Command;
use std::time::Duration;

use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::proto::{GetVersionRequest, LogEntry, LogLevel, LogRequest};
use mvirt_testsupport::process::{wait_until_async, ChildGuard};

#[test]
fn help_says_what_the_daemon_does_and_names_its_environment_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_mvirt-log"))
        .arg("--help")
        .output()
        .expect("run mvirt-log --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("audit log"), "{text}");
    assert!(text.contains("MVIRT_LOG_LISTEN"), "{text}");
    assert!(text.contains("MVIRT_LOG_DATA_DIR"), "{text}");
}

#[tokio::test]
async fn the_binary_serves_on_its_configured_address_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log.sock");
    let endpoint = format!("unix:{}", socket.display());
    let mut child = ChildGuard::spawn(
        "mvirt-log",
        Command::new(env!("CARGO_BIN_EXE_mvirt-log"))
            .env("MVIRT_LOG_LISTEN", &socket)
            .env("MVIRT_LOG_DATA_DIR", dir.path()),
    );
    let mut client = wait_until_async("mvirt-log to listen", Duration::from_secs(20), || async {
        LogServiceClient::connect(endpoint.clone()).await.ok()
    })
    .await;
    let version = client
        .get_version(GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.component, "mvirt-log");
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
    client
        .log(LogRequest {
            entry: Some(LogEntry {
                message: "hello".into(),
                level: LogLevel::Audit as i32,
                component: "test".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert!(dir.path().join("log.db").exists());
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .expect("mvirt-log exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
