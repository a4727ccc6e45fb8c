//! The skeleton every daemon's `main.rs` stands on: the flags they share, and start-up
//! (tracing, runtime, signals, binding, error report) written once.
//!
//! A daemon's `main.rs` declares its own flags in a clap struct that flattens [`DaemonArgs`]
//! (the local daemons: `--listen`, `--allow-tcp`, `--socket-group`, `--data-dir`,
//! `--log-format`) or [`CommonArgs`] (`--data-dir`, `--log-format`; daemons that listen
//! differently), and a [`DaemonSpec`] constant. Start-up then flows:
//!
//! 1. [`DaemonSpec::parse`]: every flag gets its environment variable `<env_prefix>_<FLAG>`
//!    (`--data-dir` of mvirt-vmm reads `MVIRT_VMM_DATA_DIR`) unless it names one itself, and
//!    the shared flags get this daemon's defaults (its socket under `/run/mvirt`, its
//!    directory under `/var/lib/mvirt`), so every daemon spells them alike;
//! 2. [`DaemonSpec::serve`] (local daemons) or [`DaemonSpec::run`]: tracing
//!    ([`crate::telemetry`]), a tokio runtime, the [`Shutdown`] fired by SIGINT/SIGTERM, the
//!    listener bound ([`crate::listen`]), and the service the daemon's `lib.rs` exposes run
//!    until it returns (its gRPC server, built on [`crate::grpc::GrpcServer`], serves the
//!    health service and drains on shutdown);
//! 3. a failure is logged and printed as the whole error chain, and the process exits 1.

use std::error::Error;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, CommandFactory, FromArgMatches};

use crate::error::error_chain;
use crate::listen::{Listen, ListenAddr, Listener, SocketOptions};
use crate::metrics::MetricsListen;
use crate::telemetry::{self, LogFormat};
use crate::Shutdown;

/// What tells one daemon's start-up from another's.
#[derive(Debug, Clone, Copy)]
pub struct DaemonSpec {
    /// The binary's name, used in log lines and error messages (`mvirt-vmm`).
    pub name: &'static str,
    /// Every flag's environment variable is this, `_`, and the flag in upper case with `_`
    /// for `-` (`MVIRT_VMM` → `MVIRT_VMM_DATA_DIR`).
    pub env_prefix: &'static str,
    /// Default of `--listen` when the flag has none of its own.
    pub listen: Option<&'static str>,
    /// Default of `--data-dir`.
    pub data_dir: &'static str,
    /// What this daemon keeps in `--data-dir` (the flag's help).
    pub data_dir_help: &'static str,
    /// The tracing filter when `RUST_LOG` is unset.
    pub log_filter: &'static str,
    /// Default of `--metrics-listen` (`None`: off unless asked for). See [`crate::metrics`].
    pub metrics_listen: Option<&'static str>,
}

/// Flags every daemon has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Directory of the daemon's state (the default and what it holds: per daemon).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The daemon's own log output: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// Where Prometheus scrapes this daemon's metrics (`GET /metrics`): a TCP host:port or
    /// "off". The default (per daemon) is on loopback; when it is taken the daemon logs an error
    /// and runs without metrics, while an address given here that cannot be bound stops it.
    #[arg(long)]
    pub metrics_listen: Option<MetricsListen>,
}

/// How a local daemon (vmm, zfs, ebpf, log) listens: see [`crate::listen`].
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// gRPC listen address: a unix socket (`/path` or `unix:/path`; mode 0600, see
    /// --socket-group) or, only with --allow-tcp, a TCP host:port.
    #[arg(long)]
    pub listen: ListenAddr,
    /// Allow --listen to be a TCP address. TCP has no access control: every local user (and
    /// anyone who reaches the address) can call this daemon. For development only.
    #[arg(long)]
    pub allow_tcp: bool,
    /// Give the unix socket this group and mode 0660 (default: mode 0600, only the daemon's
    /// user and root may connect).
    #[arg(long)]
    pub socket_group: Option<String>,
}

impl SocketArgs {
    pub fn listen(&self) -> Listen {
        Listen {
            addr: self.listen.clone(),
            allow_tcp: self.allow_tcp,
            socket: SocketOptions {
                group: self.socket_group.clone(),
            },
        }
    }
}

/// The flags of a local daemon: how it listens, where its state is, how it logs.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A start-up failure that has been logged and printed already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub message: String,
}

impl DaemonSpec {
    /// The clap command of `F` with this daemon's environment variables and defaults.
    pub fn command<F: CommandFactory>(&self) -> clap::Command {
        F::command().mut_args(|arg| self.complete(arg))
    }

    fn complete(&self, mut arg: Arg) -> Arg {
        let id = arg.get_id().as_str().to_string();
        if arg.is_positional() || id == "help" || id == "version" {
            return arg;
        }
        if arg.get_env().is_none() {
            let env = format!("{}_{}", self.env_prefix, id.to_uppercase());
            // clap keeps `&'static str`s; this runs once per flag at start-up.
            arg = arg.env(&*Box::leak(env.into_boxed_str()));
        }
        let default = match id.as_str() {
            "data_dir" => {
                arg = arg.help(self.data_dir_help);
                Some(self.data_dir)
            }
            "listen" => self.listen,
            "metrics_listen" => self.metrics_listen,
            _ => None,
        };
        match default {
            Some(default) if arg.get_default_values().is_empty() => {
                arg.default_value(default).required(false)
            }
            _ => arg,
        }
    }

    /// Parses the process's arguments (and environment), exiting with clap's message on error.
    pub fn parse<F: CommandFactory + FromArgMatches>(&self) -> F {
        self.try_parse_from(std::env::args_os())
            .unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name) and the environment.
    pub fn try_parse_from<F, I, T>(&self, args: I) -> Result<F, clap::Error>
    where
        F: CommandFactory + FromArgMatches,
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = self.command::<F>();
        let mut matches = command.try_get_matches_from_mut(args)?;
        F::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
    }

    /// Installs the tracing subscriber for this daemon.
    pub fn init_tracing(&self, format: LogFormat) {
        telemetry::init_with_filter(self.name, format, self.log_filter);
    }

    /// Sets up tracing, starts a tokio runtime, arms the [`Shutdown`] that SIGINT and SIGTERM
    /// fire, and runs `service` to its end. A failure is logged and printed with its causes.
    pub fn run<Fut, E>(&self, format: LogFormat, service: impl FnOnce(Shutdown) -> Fut) -> ExitCode
    where
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn Error>>,
    {
        match self.run_reported(format, service) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    }

    /// [`DaemonSpec::run`], handing back the (already reported) failure to callers that end
    /// differently (mvirt-one as PID 1 powers the VM off).
    pub fn run_reported<Fut, E>(
        &self,
        format: LogFormat,
        service: impl FnOnce(Shutdown) -> Fut,
    ) -> Result<(), Reported>
    where
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn Error>>,
    {
        self.init_tracing(format);
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| self.report("cannot start the async runtime", &e))?;
        runtime.block_on(async {
            let shutdown = Shutdown::on_signals()
                .map_err(|e| self.report("cannot install signal handlers", &e))?;
            service(shutdown).await.map_err(|e| {
                let e: Box<dyn Error> = e.into();
                self.report("failed", &*e)
            })
        })
    }

    /// [`DaemonSpec::run`] with the shared flags: also starts the `/metrics` listener
    /// (`--metrics-listen`) before `service` runs.
    pub fn run_daemon<Fut, E>(
        &self,
        common: &CommonArgs,
        service: impl FnOnce(Shutdown) -> Fut,
    ) -> ExitCode
    where
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn Error>>,
    {
        let metrics = common.metrics_listen;
        let spec = *self;
        self.run(common.log_format, |shutdown| async move {
            spec.start_metrics(metrics, &shutdown).await?;
            service(shutdown).await.map_err(Into::into)
        })
    }

    /// Starts the `/metrics` listener. The daemon's default address being taken is logged
    /// (the daemon runs without metrics: a second daemon on a host, a test); an address the
    /// operator chose that cannot be bound is an error. `off` switches recording off for the
    /// whole process ([`crate::metrics::disable`]).
    pub async fn start_metrics(
        &self,
        listen: Option<MetricsListen>,
        shutdown: &Shutdown,
    ) -> Result<Option<std::net::SocketAddr>, Box<dyn Error>> {
        let addr = match listen {
            Some(MetricsListen::Addr(addr)) => addr,
            Some(MetricsListen::Off) => {
                // Nobody can scrape them: record nothing either.
                crate::metrics::disable();
                tracing::info!("metrics off (--metrics-listen off): nothing is recorded");
                return Ok(None);
            }
            None => return Ok(None),
        };
        match crate::metrics::serve(self.name, addr, shutdown.clone()).await {
            Ok(server) => Ok(Some(server.addr)),
            Err(err) if Some(addr.to_string().as_str()) == self.metrics_listen => {
                tracing::error!(error = %err, "running without metrics: the default metrics address is taken (set --metrics-listen)");
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// [`DaemonSpec::run`] for a local daemon: binds `args`' listener (refusing TCP without
    /// `--allow-tcp`), starts the metrics listener, then runs `service` on it.
    pub fn serve<Fut, E>(
        &self,
        args: &DaemonArgs,
        service: impl FnOnce(Listener, Shutdown) -> Fut,
    ) -> ExitCode
    where
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn Error>>,
    {
        let listen = args.socket.listen();
        let metrics = args.common.metrics_listen;
        let spec = *self;
        self.run(args.common.log_format, |shutdown| async move {
            let listener = listen.bind().await.map_err(Box::<dyn Error>::from)?;
            spec.start_metrics(metrics, &shutdown).await?;
            service(listener, shutdown).await.map_err(Into::into)
        })
    }

    fn report(&self, what: &str, err: &dyn Error) -> Reported {
        let message = error_chain(err);
        tracing::error!(error = %message, "{} {what}", self.name);
        eprintln!("{}: {what}: {message}", self.name);
        Reported { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const SPEC: DaemonSpec = DaemonSpec {
        name: "mvirt-test",
        env_prefix: "MVIRT_DAEMON_TEST",
        listen: Some("/run/mvirt/test.sock"),
        data_dir: "/var/lib/mvirt/test",
        data_dir_help: "Where the test keeps nothing.",
        log_filter: "info",
        metrics_listen: Some("127.0.0.1:50069"),
    };

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long, default_value_t = 7)]
        answer: u32,
        #[arg(long, env = "SOMETHING_ELSE")]
        named: Option<String>,
    }

    #[test]
    fn shared_flags_get_the_daemons_defaults() {
        let flags: Flags = SPEC.try_parse_from(["mvirt-test"]).unwrap();
        assert_eq!(
            flags.daemon.socket.listen,
            ListenAddr::Unix("/run/mvirt/test.sock".into())
        );
        assert!(!flags.daemon.socket.allow_tcp);
        assert_eq!(flags.daemon.socket.socket_group, None);
        assert_eq!(
            flags.daemon.common.data_dir,
            PathBuf::from("/var/lib/mvirt/test")
        );
        assert_eq!(flags.daemon.common.log_format, LogFormat::Auto);
        assert_eq!(
            flags.daemon.common.metrics_listen,
            Some(MetricsListen::Addr("127.0.0.1:50069".parse().unwrap()))
        );
        assert_eq!(flags.answer, 7);
        let off: Flags = SPEC
            .try_parse_from(["mvirt-test", "--metrics-listen", "off"])
            .unwrap();
        assert_eq!(off.daemon.common.metrics_listen, Some(MetricsListen::Off));
        assert!(SPEC
            .try_parse_from::<Flags, _, _>(["mvirt-test", "--metrics-listen", "nowhere"])
            .is_err());
    }

    #[test]
    fn flags_parse_as_every_daemon_spells_them() {
        let flags: Flags = SPEC
            .try_parse_from([
                "mvirt-test",
                "--listen",
                "127.0.0.1:9",
                "--allow-tcp",
                "--socket-group",
                "mvirt",
                "--data-dir",
                "/tmp/x",
                "--log-format",
                "json",
            ])
            .unwrap();
        let listen = flags.daemon.socket.listen();
        assert_eq!(listen.addr, ListenAddr::Tcp("127.0.0.1:9".parse().unwrap()));
        assert!(listen.allow_tcp);
        assert_eq!(listen.socket.group.as_deref(), Some("mvirt"));
        assert_eq!(flags.daemon.common.log_format, LogFormat::Json);
        assert!(SPEC
            .try_parse_from::<Flags, _, _>(["mvirt-test", "--log-format", "yaml"])
            .is_err());
    }

    #[test]
    fn every_flag_gets_an_environment_variable_unless_it_names_one() {
        let command = SPEC.command::<Flags>();
        let env = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("listen").as_deref(), Some("MVIRT_DAEMON_TEST_LISTEN"));
        assert_eq!(
            env("socket_group").as_deref(),
            Some("MVIRT_DAEMON_TEST_SOCKET_GROUP")
        );
        assert_eq!(env("answer").as_deref(), Some("MVIRT_DAEMON_TEST_ANSWER"));
        assert_eq!(env("named").as_deref(), Some("SOMETHING_ELSE"));
        // A prefix of its own: tests running in parallel must not see this variable.
        let spec = DaemonSpec {
            env_prefix: "MVIRT_DAEMON_ENV_TEST",
            ..SPEC
        };
        std::env::set_var("MVIRT_DAEMON_ENV_TEST_ANSWER", "42");
        let flags: Flags = spec.try_parse_from(["mvirt-test"]).unwrap();
        assert_eq!(flags.answer, 42);
    }

    #[test]
    fn a_failing_service_exits_with_failure_and_a_good_one_with_success() {
        let failed = SPEC.run_reported(LogFormat::Text, |_| async {
            Err::<(), _>(std::io::Error::other("disk on fire"))
        });
        assert_eq!(
            failed,
            Err(Reported {
                message: "disk on fire".into()
            })
        );
        let ok = SPEC.run(LogFormat::Text, |_| async { Ok::<(), std::io::Error>(()) });
        assert_eq!(ok, ExitCode::SUCCESS);
    }
}
