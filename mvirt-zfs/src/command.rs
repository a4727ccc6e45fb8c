//! Running external programs (`zfs`, `qemu-img`, decompressors): argv only, never a shell.
//!
//! A call runs through [`mvirt_common::command`]: logged at debug level with its full argv, a
//! failure becomes a typed [`CommandError`] that carries the program's stderr, and children are
//! killed when the future that owns them is dropped, so cancelling an operation also stops the
//! program it was running. Programs whose output is streamed (`qemu-img convert` with its
//! progress, `zfs send | zfs recv`) are spawned through [`streaming`].

use std::process::Stdio;

use tokio::process::Command;

pub use mvirt_common::command::CommandError;
use mvirt_common::command::ExternalCommand;

/// How long an administrative command (`zfs`, `qemu-img info`) may take. zfs-fuse has been
/// seen to wedge: a bounded wait turns that into an error instead of a hung operation.
pub const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `program` with `args`, returning its stdout when it exits with status 0 within
/// [`RUN_TIMEOUT`] (the child is killed otherwise).
pub async fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    ExternalCommand::new(program)
        .args(args)
        .capture_stdout()
        .timeout(RUN_TIMEOUT)
        .run()
        .await
        .map(|output| output.stdout)
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
