//! The `mvirt-log` binary's listen flags, as an operator uses them: a unix socket with mode 0600
//! (0660 and a group with --socket-group), TCP refused without --allow-tcp and warned about
//! with it. The same flags, from the same mvirt-common code, are on mvirt-vmm, -zfs and -ebpf.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mvirt_testsupport::process::wait_until;

const BINARY: &str = env!("CARGO_BIN_EXE_mvirt-log");

fn start(dir: &Path, args: &[&str]) -> Child {
    Command::new(BINARY)
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--log-format", "text"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(child: Child) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn the_socket_is_0600_or_0660_with_a_group_and_gone_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/log.sock");
    let child = start(dir.path(), &["--listen", socket.to_str().unwrap()]);
    wait_until("the socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    stop(child);
    assert!(!socket.exists());

    let socket = dir.path().join("run/grouped.sock");
    let child = start(
        dir.path(),
        &[
            "--listen",
            &format!("unix:{}", socket.display()),
            "--socket-group",
            "daemon",
        ],
    );
    wait_until("the socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 1, "group daemon");
    stop(child);
}

#[test]
fn tcp_is_refused_without_allow_tcp_and_warned_about_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-tcp"), "{stderr}");

    let mut child = start(dir.path(), &["--listen", "127.0.0.1:0", "--allow-tcp"]);
    // The database is opened after the bind, so once it exists the warning has been logged.
    wait_until("mvirt-log on TCP", Duration::from_secs(10), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mvirt-log exited: {status}");
        }
        dir.path().join("data/log.db").exists().then_some(())
    });
    let output = stop(child);
    assert!(
        output.contains("WARN") && output.contains("listening on TCP"),
        "{output}"
    );
}
