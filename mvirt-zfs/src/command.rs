//! Running external programs (`zfs`, `qemu-img`, decompressors): argv only, never a shell.
//!
//! Every call is logged at debug level with its full argv, and a failure becomes a typed
//! [`CommandError`] that carries the program's stderr. Children are killed when the future that
//! owns them is dropped, so cancelling an operation also stops the program it was running.

use std::process::Stdio;

use tokio::process::Command;

/// Failure to run an external program.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {args}` did not finish within {seconds} s (killed)")]
    TimedOut {
        program: String,
        args: String,
        seconds: u64,
    },
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

impl CommandError {
    /// The program's stderr, empty when it could not be started.
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Spawn { .. } | CommandError::TimedOut { .. } => "",
        }
    }
}

/// How long an administrative command (`zfs`, `qemu-img info`) may take. zfs-fuse has been
/// seen to wedge: a bounded wait turns that into an error instead of a hung operation.
pub const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `program` with `args`, returning its stdout when it exits with status 0 within
/// [`RUN_TIMEOUT`] (the child is killed otherwise).
pub async fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    tracing::debug!(program, ?args, "running");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT, child)
        .await
        .map_err(|_| CommandError::TimedOut {
            program: program.to_string(),
            args: args.join(" "),
            seconds: RUN_TIMEOUT.as_secs(),
        })?
        .map_err(|source| CommandError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            program: program.to_string(),
            args: args.join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// A command builder for programs whose stdin/stdout are streamed by the caller.
pub fn streaming(program: &str, args: &[&str]) -> Command {
    tracing::debug!(program, ?args, "running (streaming)");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}
