//! Running the host programs the builder needs (`apt-get`, `apt-cache`, `dpkg-deb`, `ldd`,
//! `strip`, `xz`, `zstd`): argv only, never a shell; a failure names the program and carries
//! its exit status and stderr.
//!
//! This crate runs offline, blocking and once per build, so it has its own small runner rather
//! than `mvirt_common::command` (async, and a dependency on the daemons' runtime stack).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// Failure to run a host program.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program} (scripts/setup.sh installs what the builder needs)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `program args…` (in `dir` when given) and returns its stdout.
pub fn run<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    dir: Option<&Path>,
) -> Result<Vec<u8>, CommandError> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().map_err(|source| CommandError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            program: program.to_string(),
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}
