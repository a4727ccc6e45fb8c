//! `mvirt-one`: flags and start-up only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mvirt_common::daemon::{CommonArgs, DaemonSpec};
use mvirt_one::grpc::Mode;
use mvirt_one::runtime::RuntimeConfig;
use mvirt_one::server::{self, BoundListener, DaemonConfig, Listen};

/// PID 1 and container runtime of mvirt pod microVMs.
///
/// As /init of a pod VM (PID 1) it mounts /proc, /sys, /dev, /run, /tmp and cgroups, reaps
/// orphans, configures every network interface (DHCPv4; SLAAC by the kernel), serves OneService
/// on vsock port 1024, announces readiness to the host (CID 2) on the port given as
/// `mvirt.ready_port=` on the kernel command line, and powers the VM off on Shutdown.
/// Anywhere else it runs in local mode: the same OneService on TCP or a unix socket, for tests
/// and development (run as root: containers need namespaces and overlayfs).
#[derive(Parser, Debug)]
#[command(name = "mvirt-one", version, about, long_about)]
struct Cli {
    /// Where OneService listens: tcp:HOST:PORT, unix:PATH or vsock:PORT. Default: vsock:1024
    /// as PID 1, tcp:127.0.0.1:50060 otherwise.
    #[arg(long)]
    listen: Option<Listen>,

    #[command(flatten)]
    common: CommonArgs,

    /// Registries (host:port) reached over plain HTTP; loopback registries always are.
    #[arg(long, value_delimiter = ',')]
    insecure_registries: Vec<String>,

    /// mvirt-log endpoint for audit entries; empty: tracing only.
    #[arg(long, default_value = "")]
    log_endpoint: String,

    /// Force init (PID-1) or local mode instead of deciding by the process id.
    #[arg(long, value_parser = ["auto", "init", "local"], default_value = "auto")]
    mode: String,

    #[command(subcommand)]
    launcher: Option<Launcher>,
}

/// Internal: the launcher processes the daemon re-executes itself as.
#[derive(Subcommand, Debug)]
enum Launcher {
    #[command(hide = true)]
    LaunchContainer {
        #[arg(long)]
        spec: String,
    },
    #[command(hide = true)]
    LaunchExec {
        #[arg(long)]
        spec: String,
    },
}

fn run_launcher(launcher: Launcher) -> ExitCode {
    let code = match launcher {
        Launcher::LaunchContainer { spec } => match serde_json::from_str(&spec) {
            Ok(spec) => mvirt_one::launch::run_container(&spec),
            Err(e) => {
                eprintln!("mvirt-one launch-container: bad spec: {e}");
                127
            }
        },
        Launcher::LaunchExec { spec } => match serde_json::from_str(&spec) {
            Ok(spec) => mvirt_one::launch::run_exec(&spec),
            Err(e) => {
                eprintln!("mvirt-one launch-exec: bad spec: {e}");
                127
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-one",
    env_prefix: "MVIRT_ONE",
    listen: None,
    data_dir: "/run/mvirt-one",
    data_dir_help: "Image cache and container directories (a tmpfs inside the VM).",
    log_filter: "info",
    metrics_listen: None,
};

fn main() -> ExitCode {
    let cli: Cli = match DAEMON.try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        // As PID 1 the kernel passes unknown command-line words as arguments; exiting would
        // panic the kernel, so ignore them (flags still come from the environment).
        Err(e) if std::process::id() == 1 => {
            eprintln!("mvirt-one: ignoring init arguments: {e}");
            match DAEMON.try_parse_from(["mvirt-one"]) {
                Ok(cli) => cli,
                Err(e) => e.exit(),
            }
        }
        Err(e) => e.exit(),
    };
    if let Some(launcher) = cli.launcher {
        return run_launcher(launcher);
    }
    let mode = match cli.mode.as_str() {
        "init" => Mode::Init,
        "local" => Mode::Local,
        _ if std::process::id() == 1 => Mode::Init,
        _ => Mode::Local,
    };
    if mode == Mode::Init {
        // Mount /proc, /dev etc. before anything (tracing, tokio) may need them.
        mvirt_one::init::early_setup();
    }
    let listen = cli.listen.unwrap_or(match mode {
        Mode::Init => Listen::Vsock(mvirt_one::client::ONE_VSOCK_PORT),
        Mode::Local => Listen::Tcp(([127, 0, 0, 1], 50060).into()),
    });
    let launcher = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("mvirt-one: cannot find its own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = DaemonConfig {
        mode,
        listen,
        runtime: RuntimeConfig {
            data_dir: cli.common.data_dir,
            launcher,
            insecure_registries: cli.insecure_registries,
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        },
        log_endpoint: cli.log_endpoint,
    };
    // As PID 1, Ctrl-Alt-Del arrives as SIGINT (see init::start) and shuts down cleanly.
    let result = DAEMON.run_reported(cli.common.log_format, |shutdown| async move {
        let listener = BoundListener::bind(&config.listen).await?;
        // After binding: the readiness announcement must not precede the listener.
        if mode == Mode::Init {
            mvirt_one::init::start(shutdown.clone()).await;
        }
        server::serve(config, listener, shutdown).await.map(drop)
    });
    // As PID 1, returning would panic the kernel: the VM powers off, failed or not.
    match result {
        _ if mode == Mode::Init => mvirt_one::init::power_off(),
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
