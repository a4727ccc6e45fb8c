//! The `mvirt` command-line client of this checkout, for tests of other packages that drive it
//! as a user would (`env!("CARGO_BIN_EXE_mvirt")` exists only inside mvirt-cli's own tests).
//!
//! `MVIRT_CLI_BINARY` when set; else `mvirt` next to the running test's own target directory
//! (`<target>/debug/mvirt`, where a `cargo test --workspace` or `cargo build -p mvirt-cli`
//! puts it, whatever `CARGO_TARGET_DIR` is) when it is newer than every source it is built
//! from (mvirt-cli, mvirt-common, `Cargo.lock`); else it is built once with
//! `cargo build -p mvirt-cli --bin mvirt` into a target directory of its own under the test
//! cache, so it never waits on the lock of the running `cargo test` and a stale binary is never
//! used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

fn newest_mtime(path: &Path) -> SystemTime {
    let Ok(meta) = std::fs::metadata(path) else {
        return SystemTime::UNIX_EPOCH;
    };
    if !meta.is_dir() {
        return meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        newest = newest.max(newest_mtime(&entry.path()));
    }
    newest
}

/// The profile directory the running test binary was built into (`<target>/debug` for
/// `<target>/debug/deps/<test>-<hash>`).
fn own_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    deps.parent().map(Path::to_path_buf)
}

/// The path of this checkout's `mvirt` binary (see the module documentation); built on first
/// use when no fresh one exists.
pub fn mvirt_cli_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("MVIRT_CLI_BINARY") {
                return PathBuf::from(path);
            }
            let root = crate::workspace_root();
            let sources = newest_mtime(&root.join("mvirt-cli/src"))
                .max(newest_mtime(&root.join("mvirt-cli/Cargo.toml")))
                .max(newest_mtime(&root.join("mvirt-common/src")))
                .max(newest_mtime(&root.join("mvirt-common/Cargo.toml")))
                .max(newest_mtime(&root.join("Cargo.lock")));
            if let Some(built) = own_profile_dir().map(|dir| dir.join("mvirt")) {
                let fresh = std::fs::metadata(&built)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= sources);
                if fresh {
                    return built;
                }
            }
            let target = crate::cache_dir().join("mvirt-cli-target");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!("building the mvirt CLI into {}", target.display());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args(["build", "-p", "mvirt-cli", "--bin", "mvirt", "--target-dir"])
                .arg(&target)
                .status()
                .expect("run cargo build -p mvirt-cli");
            assert!(status.success(), "cargo build -p mvirt-cli failed");
            target.join("debug").join("mvirt")
        })
        .clone()
}
