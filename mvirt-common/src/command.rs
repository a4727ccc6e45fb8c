//! Running a short-lived external program (`zfs`, `ip`, `nft`, `mkfs.vfat`, …): argv only,
//! never a shell.
//!
//! A call flows: [`ExternalCommand::new`] with the program and its arguments → optional stdin,
//! stdout capture and time limit → [`ExternalCommand::run`] logs the command line at debug
//! level, spawns the child with `kill_on_drop` (dropping the future, or running out of time,
//! kills it), and turns a failure into a [`CommandError`] that names the program and carries
//! its exit status and trimmed stderr. Callers that are not async use
//! [`ExternalCommand::run_blocking`].
//!
//! Long-lived children (hypervisors, zfs-fuse) are not run through here: they are supervised
//! processes, not calls.

use std::ffi::{OsStr, OsString};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long a program may run unless the caller says otherwise. An administrative tool that
/// takes longer is wedged: a bounded wait turns that into an error instead of a hung call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Failure to run an external program.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lost contact with `{program} {args}` (stdin, stdout or wait)")]
    Io {
        program: String,
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {args}` did not finish within {} ms (killed)", timeout.as_millis())]
    TimedOut {
        program: String,
        args: String,
        timeout: Duration,
    },
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl CommandError {
    /// The program that failed.
    pub fn program(&self) -> &str {
        match self {
            CommandError::Spawn { program, .. }
            | CommandError::Io { program, .. }
            | CommandError::TimedOut { program, .. }
            | CommandError::Failed { program, .. } => program,
        }
    }

    /// The program's trimmed stderr; empty unless it ran and exited unsuccessfully.
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Spawn { .. }
            | CommandError::Io { .. }
            | CommandError::TimedOut { .. } => "",
        }
    }

    /// The exit status of a program that ran to its end unsuccessfully.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            CommandError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the program could not be started because it is not installed.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CommandError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a program that exited with status 0 wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Empty unless [`ExternalCommand::capture_stdout`] was asked for.
    pub stdout: String,
    pub stderr: String,
}

/// One call of an external program; see the module documentation.
#[derive(Debug, Clone)]
pub struct ExternalCommand {
    program: OsString,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    capture_stdout: bool,
    timeout: Duration,
}

impl ExternalCommand {
    /// `program` (looked up in `PATH` unless it is a path) with no arguments, stdout discarded,
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            stdin: None,
            capture_stdout: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Writes `input` to the program's stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Keeps what the program writes to stdout (otherwise it is discarded).
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    /// Kills the program and fails with [`CommandError::TimedOut`] after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn args_line(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the program to its end; `Ok` only when it exits with status 0 in time.
    pub async fn run(self) -> Result<CommandOutput, CommandError> {
        tracing::debug!(program = %self.program_name(), args = %self.args_line(), "running");
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| CommandError::Spawn {
            program: self.program_name(),
            source,
        })?;
        let io_err = |source| CommandError::Io {
            program: self.program_name(),
            args: self.args_line(),
            source,
        };
        let stdin = self.stdin.as_deref();
        let mut pipe = child.stdin.take();
        let finished = async {
            if let (Some(input), Some(pipe)) = (stdin, pipe.as_mut()) {
                // A program that exits without reading all of its input is judged by its
                // exit status, not by the broken pipe.
                match pipe.write_all(input).await {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
            }
            drop(pipe);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(self.timeout, finished)
            .await
            .map_err(|_| CommandError::TimedOut {
                program: self.program_name(),
                args: self.args_line(),
                timeout: self.timeout,
            })?
            .map_err(io_err)?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if !output.status.success() {
            return Err(CommandError::Failed {
                program: self.program_name(),
                args: self.args_line(),
                status: output.status,
                stderr,
            });
        }
        Ok(CommandOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        })
    }

    /// [`ExternalCommand::run`] for callers that are not async: the call runs on a thread of
    /// its own with a small runtime, so it works inside and outside a tokio runtime alike
    /// (the caller's thread blocks until the program ends or times out).
    pub fn run_blocking(self) -> Result<CommandOutput, CommandError> {
        let program = self.program_name();
        let spawn_err = |source| CommandError::Spawn {
            program: program.clone(),
            source,
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(spawn_err)?
                        .block_on(self.run())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_that_exits_zero_succeeds() {
        let output = ExternalCommand::new("true").run().await.unwrap();
        assert_eq!(output, CommandOutput::default());
    }

    #[tokio::test]
    async fn stdout_is_kept_only_when_asked_for() {
        let kept = ExternalCommand::new("echo")
            .arg("hello")
            .capture_stdout()
            .run()
            .await
            .unwrap();
        assert_eq!(kept.stdout, "hello\n");
        let discarded = ExternalCommand::new("echo")
            .arg("hello")
            .run()
            .await
            .unwrap();
        assert_eq!(discarded.stdout, "");
    }

    #[tokio::test]
    async fn a_failure_carries_the_program_its_status_and_trimmed_stderr() {
        let err = ExternalCommand::new("sh")
            .args(["-c", "echo '  broken  ' >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        assert_eq!(err.program(), "sh");
        assert_eq!(err.status().and_then(|s| s.code()), Some(3));
        assert_eq!(err.stderr(), "broken");
        assert!(matches!(err, CommandError::Failed { .. }));
    }

    #[tokio::test]
    async fn false_fails_with_exit_status_one() {
        let err = ExternalCommand::new("false").run().await.unwrap_err();
        assert_eq!(err.status().and_then(|s| s.code()), Some(1));
        assert_eq!(err.stderr(), "");
    }

    #[tokio::test]
    async fn a_program_over_its_time_is_killed() {
        let started = std::time::Instant::now();
        let err = ExternalCommand::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = ExternalCommand::new("/nonexistent/mvirt-no-such-tool")
            .run()
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(err.program(), "/nonexistent/mvirt-no-such-tool");
    }

    #[tokio::test]
    async fn stdin_reaches_the_program() {
        let output = ExternalCommand::new("cat")
            .stdin("piped input")
            .capture_stdout()
            .run()
            .await
            .unwrap();
        assert_eq!(output.stdout, "piped input");
    }

    #[test]
    fn blocking_runs_outside_a_runtime() {
        let output = ExternalCommand::new("echo")
            .arg("x")
            .capture_stdout()
            .run_blocking()
            .unwrap();
        assert_eq!(output.stdout, "x\n");
        let err = ExternalCommand::new("false").run_blocking().unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }));
    }

    #[tokio::test]
    async fn blocking_runs_inside_a_current_thread_runtime() {
        let err = ExternalCommand::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100))
            .run_blocking()
            .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err:?}");
    }
}
