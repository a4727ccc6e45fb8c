//! Wrapper around the `ip` and `nft` programs: argv only (never a shell), every call logged,
//! failures returned with the program's stderr. Names reaching these command lines are
//! interface names built by this crate (`model::tap_name`) or validated flags.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        args: String,
        status: String,
        stderr: String,
    },
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, CommandError> {
    tracing::debug!(program, ?args, "running");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .map_err(|source| CommandError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
            .map_err(|source| CommandError::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CommandError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            program,
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String, CommandError> {
    run("ip", args, None)
}

/// Runs `nft -f -` with `script` on stdin.
pub fn nft_script(script: &str) -> Result<String, CommandError> {
    run("nft", &["-f", "-"], Some(script))
}

/// Runs `nft <args>`.
pub fn nft(args: &[&str]) -> Result<String, CommandError> {
    run("nft", args, None)
}

/// Whether a network interface exists.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
