//! PID-1 duties inside a pod microVM: the filesystems every Linux userland expects, kernel
//! modules listed in the initramfs, networking, readiness, and power-off.
//!
//! Order at boot: [`early_setup`] (synchronous, before tracing and tokio: mounts, modules),
//! then [`start`] inside the runtime (network configuration in the background, the readiness
//! connection to the host once OneService is about to listen), then the server runs; when it
//! returns (Shutdown), [`power_off`] syncs and powers the VM off. PID 1 must never exit, so
//! every failure here is logged and survived.

use std::path::Path;
use std::process::ExitCode;

use mvirt_common::Shutdown;
use nix::mount::{mount, MsFlags};

/// Kernel modules to load at boot, one path per line, in dependency order.
pub const MODULES_FILE: &str = "/etc/mvirt-one/modules";
/// The test-support initramfs layout: module names, in order, each at `/lib/modules/<name>.ko`.
pub const MODULE_NAMES_FILE: &str = "/etc/mvirt-modules";
pub use crate::client::{READY_MESSAGE, READY_PORT_PARAM};

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
        if e != nix::errno::Errno::EBUSY {
            eprintln!("mvirt-one: mount {fstype} on {target}: {e}");
        }
    }
}

static INIT_AFTER_BOOT_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Kernel uptime when init started (0 when not PID 1).
pub fn init_after_boot_ms() -> u64 {
    INIT_AFTER_BOOT_MS.get().copied().unwrap_or(0)
}

/// Kernel uptime (`/proc/uptime`) in milliseconds.
pub fn kernel_uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

/// Mounts proc, sys, devtmpfs, devpts, /run, /tmp, cgroup2 and loads the listed modules.
pub fn early_setup() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None);
    let _ = INIT_AFTER_BOOT_MS.set(kernel_uptime_ms());
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None);
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    );
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    load_modules(&module_paths());
    if let Ok(hostname) = std::fs::read_to_string("/etc/hostname") {
        let _ = nix::unistd::sethostname(hostname.trim());
    }
}

fn module_paths() -> Vec<String> {
    let lines = |path: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    if Path::new(MODULES_FILE).exists() {
        lines(MODULES_FILE)
    } else {
        lines(MODULE_NAMES_FILE)
            .into_iter()
            .map(|name| format!("/lib/modules/{name}.ko"))
            .collect()
    }
}

fn load_modules(modules: &[String]) {
    for module in modules {
        let file = match std::fs::File::open(module) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("mvirt-one: module {module}: {e}");
                continue;
            }
        };
        use std::os::fd::AsRawFd;
        // SAFETY: finit_module reads the module from a valid open fd and an empty C string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                eprintln!("mvirt-one: load {module}: {e}");
            }
        }
    }
}

/// A `key=value` parameter of the kernel command line.
pub fn cmdline_param(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Background duties once tokio runs: networking, and the readiness connection to the host.
pub async fn start(shutdown: Shutdown) {
    // Ctrl-Alt-Del becomes SIGINT to init instead of an immediate reboot; the daemon's signal
    // handler turns it into a clean shutdown.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(error = %e, "cannot disable Ctrl-Alt-Del");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    watch_power_button(shutdown.clone());
    let ready_port = cmdline_param(&cmdline, READY_PORT_PARAM).and_then(|p| p.parse::<u32>().ok());
    // Ready means usable: OneService listens at once (Health answers), but the host is told
    // only once the network is configured, so the first pull does not race DHCP.
    tokio::spawn(async move {
        crate::network::configure_all(shutdown).await;
        if let Some(port) = ready_port {
            announce_ready(port).await;
        }
    });
}

/// Linux input event codes (`linux/input-event-codes.h`).
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// The `/dev/input/event*` nodes of ACPI power buttons (needs the `button` and `evdev` modules).
fn power_button_devices() -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .map(|n| n.trim() == "Power Button")
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect()
}

/// Shuts down (stop containers, power off) when the VMM presses the ACPI power button, which
/// is how a hypervisor asks a guest to stop gracefully.
fn watch_power_button(shutdown: Shutdown) {
    for device in power_button_devices() {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let Ok(mut file) = std::fs::File::open(&device) else {
                tracing::warn!(device = %device.display(), "cannot open the power button");
                return;
            };
            tracing::info!(device = %device.display(), "watching the power button");
            // struct input_event: timeval (16 bytes), type u16, code u16, value i32.
            let mut event = [0u8; 24];
            while file.read_exact(&mut event).is_ok() {
                let kind = u16::from_ne_bytes([event[16], event[17]]);
                let code = u16::from_ne_bytes([event[18], event[19]]);
                let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    tracing::info!("power button pressed: shutting down");
                    shutdown.trigger();
                    return;
                }
            }
        });
    }
}

/// Connects to the host (CID 2) on `port` and says `READY`. The host connects back to
/// OneService; this connection only tells it when.
async fn announce_ready(port: u32) {
    use tokio::io::AsyncWriteExt;
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, port);
    match tokio_vsock::VsockStream::connect(addr).await {
        Ok(mut stream) => {
            let _ = stream.write_all(READY_MESSAGE).await;
            let _ = stream.shutdown(std::net::Shutdown::Both);
            tracing::info!(port, "announced readiness to the host");
        }
        Err(e) => tracing::warn!(port, error = %e, "cannot announce readiness to the host"),
    }
}

/// Syncs and powers the VM off. Only returns if the kernel refuses.
pub fn power_off() -> ExitCode {
    tracing::info!("powering off");
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(error = %e, "power off failed");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line_parameters_are_found_by_key() {
        let cmdline = "console=ttyS0 mvirt.ready_port=9000 quiet";
        assert_eq!(
            cmdline_param(cmdline, READY_PORT_PARAM).as_deref(),
            Some("9000")
        );
        assert_eq!(cmdline_param(cmdline, "mvirt.other"), None);
    }
}
