//! The `mvirt-zfs` binary listens on `/run/mvirt/zfs.sock` by default; TCP only with
//! `--allow-tcp`, and then it logs a warning (issue 17: the daemon has no authentication of its
//! own).

#[test]
fn tcp_is_refused_without_allow_tcp_and_warned_about_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that is a file and a pool that does not exist: the daemon stops right
    // after binding its listener, touching no pool.
    let not_a_dir = dir.path().join("data");
    std::fs::write(&not_a_dir, b"").unwrap();
    let pool = format!("mvirt-no-such-pool-{}", mvirt_testsupport::unique_suffix());
    mvirt_testsupport::local_daemon::assert_tcp_needs_allow_tcp_and_warns(
        env!("CARGO_BIN_EXE_mvirt-zfs"),
        "zfs",
        &[
            "--data-dir",
            not_a_dir.to_str().unwrap(),
            "--pool",
            &pool,
            "--import-dir",
            dir.path().to_str().unwrap(),
            "--log-endpoint",
            "",
        ],
    );
}
