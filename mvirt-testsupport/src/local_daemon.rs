//! The listen flags of a local daemon binary (mvirt-vmm, -zfs, -ebpf, -log) as an operator
//! meets them (issue 17, "Local daemons"): the default `--listen` is its unix socket under
//! `/run/mvirt/`, a TCP `--listen` is refused unless `--allow-tcp` is given too, and with it the
//! daemon logs a warning that TCP has no access control.
//!
//! The shared code is tested in mvirt-common (`tests/sockets.rs`); this checks that each
//! daemon's own `main.rs` goes through it, with the real binary and its real log output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of a daemon printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    /// stdout and stderr together (the log goes to one of them, errors to stderr).
    pub output: String,
}

/// Runs `binary` with `args` (no `RUST_LOG`, text logs) until it exits; panics after `limit`
/// (and kills it).
pub fn run_to_exit(binary: &str, args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let mut readers = Vec::new();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        readers.push(std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        }));
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the daemon") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
            panic!("{binary} {args:?} still ran after {limit:?}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        success: status.success(),
        output: readers.into_iter().map(|r| r.join().unwrap()).collect(),
    }
}

/// Asserts the listen flags of the local daemon `binary` (named `daemon`, e.g. `vmm`):
/// - `--help` names `/run/mvirt/<daemon>.sock` as the default of `--listen`;
/// - `--listen 127.0.0.1:0` without `--allow-tcp` is refused at once, naming `--allow-tcp`;
/// - with `--allow-tcp` the daemon logs a WARN that it listens on TCP.
///
/// `failing_args` make the daemon stop with an error right after it has bound its listener
/// (a data directory that is a file, a pool that does not exist, ...), so no daemon is left
/// running and nothing global is touched; `--metrics-listen off` and `--log-format text` are
/// added here.
pub fn assert_tcp_needs_allow_tcp_and_warns(binary: &str, daemon: &str, failing_args: &[&str]) {
    let help = run_to_exit(binary, &["--help"], Duration::from_secs(30));
    assert!(help.success, "{binary} --help: {}", help.output);
    let socket = format!("/run/mvirt/{daemon}.sock");
    assert!(
        help.output.contains(&format!("[default: {socket}]")),
        "the default --listen of {binary} is {socket}:\n{}",
        help.output
    );

    let mut args = vec![
        "--metrics-listen",
        "off",
        "--log-format",
        "text",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(failing_args);
    let refused = run_to_exit(binary, &args, Duration::from_secs(30));
    assert!(!refused.success, "{}", refused.output);
    assert!(
        refused.output.contains("--allow-tcp"),
        "the refusal names the flag: {}",
        refused.output
    );
    assert!(
        !refused.output.contains("listening on TCP"),
        "nothing was bound without the flag: {}",
        refused.output
    );

    args.push("--allow-tcp");
    let warned = run_to_exit(binary, &args, Duration::from_secs(60));
    assert!(
        warned.output.lines().any(|line| line.contains("WARN")
            && line.contains("listening on TCP")
            && line.contains("without authentication")),
        "{binary} warns when it listens on TCP:\n{}",
        warned.output
    );
}
