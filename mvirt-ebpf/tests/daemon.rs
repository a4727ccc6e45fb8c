//! The `mvirt-ebpf` binary: documented flags, a loud refusal to run without its datapath, and TCP
//! only with `--allow-tcp` (with a warning).

use std::process::Command;

#[test]
fn help_says_what_the_daemon_does_and_names_every_env_var() {
    let out = Command::new(env!("CARGO_BIN_EXE_mvirt-ebpf"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("eBPF datapath"), "{help}");
    for var in [
        "MVIRT_EBPF_LISTEN",
        "MVIRT_EBPF_DATA_DIR",
        "MVIRT_EBPF_BPF_PIN_DIR",
        "MVIRT_EBPF_UPLINK",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
}

#[test]
fn the_daemon_refuses_to_start_when_the_ebpf_datapath_cannot_be_loaded() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    // Pinning maps on a non-bpffs directory fails: the datapath cannot be set up.
    let out = Command::new(env!("CARGO_BIN_EXE_mvirt-ebpf"))
        .args(["--log-endpoint", ""])
        .arg("--listen")
        .arg(dir.path().join("ebpf.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--bpf-pin-dir")
        .arg(dir.path().join("not-bpffs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the daemon must not run without its datapath"
    );
    assert!(stderr.contains("eBPF datapath"), "unclear error: {stderr}");
}

/// The daemon listens on `/run/mvirt/ebpf.sock` by default; TCP only with `--allow-tcp`, and then
/// it logs a warning (issue 17: the daemon has no authentication of its own).
#[test]
fn tcp_is_refused_without_allow_tcp_and_warned_about_with_it() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    // A pin directory that is not on bpffs (as above): the daemon stops right after binding its
    // listener, before any program is attached.
    let data = dir.path().join("data");
    let pins = dir.path().join("not-bpffs");
    mvirt_testsupport::local_daemon::assert_tcp_needs_allow_tcp_and_warns(
        env!("CARGO_BIN_EXE_mvirt-ebpf"),
        "ebpf",
        &[
            "--log-endpoint",
            "",
            "--data-dir",
            data.to_str().unwrap(),
            "--bpf-pin-dir",
            pins.to_str().unwrap(),
        ],
    );
}
