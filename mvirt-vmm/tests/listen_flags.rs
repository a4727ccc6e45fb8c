//! The `mvirt-vmm` binary listens on `/run/mvirt/vmm.sock` by default; TCP only with
//! `--allow-tcp`, and then it logs a warning (issue 17: any local user who reaches mvirt-vmm can
//! start a VM with a host file as its disk).

#[test]
fn tcp_is_refused_without_allow_tcp_and_warned_about_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that is a file: the daemon stops right after binding its listener.
    let not_a_dir = dir.path().join("data");
    std::fs::write(&not_a_dir, b"").unwrap();
    mvirt_testsupport::local_daemon::assert_tcp_needs_allow_tcp_and_warns(
        env!("CARGO_BIN_EXE_mvirt-vmm"),
        "vmm",
        &[
            "--data-dir",
            not_a_dir.to_str().unwrap(),
            "--log-endpoint",
            "",
        ],
    );
}
