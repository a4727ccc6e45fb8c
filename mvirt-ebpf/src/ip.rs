//! Wrapper around the `ip` and `nft` programs, run through [`mvirt_common::command`]: argv
//! only (never a shell), every call logged, bounded in time, failures returned with the
//! program's stderr. Names reaching these command lines are interface names built by this crate
//! (`model::tap_name`) or validated flags.

pub use mvirt_common::command::CommandError;
use mvirt_common::command::ExternalCommand;

/// How long one `ip` or `nft` call may take: they answer in milliseconds, so a call still
/// running after this is wedged (a kernel lock, a hung netlink peer).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The daemon's datapath code is synchronous (it runs under the manager's lock), so the calls
/// block until the program ends.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CommandError> {
    let mut command = ExternalCommand::new(program)
        .args(args)
        .capture_stdout()
        .timeout(TIMEOUT);
    if let Some(input) = stdin {
        command = command.stdin(input);
    }
    command.run_blocking().map(|output| output.stdout)
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
