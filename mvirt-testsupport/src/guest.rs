//! Cached Debian kernel + busybox initramfs for QEMU TCG test guests.
//!
//! [`debian_kernel`] downloads the kernel Debian's `linux-image-amd64` currently names
//! (`apt-get download`, `dpkg-deb -x`) once and keeps it under [`crate::cache_dir`]. The
//! [`InitramfsBuilder`] writes a `cpio -H newc` archive itself (no staging directory, no root):
//! busybox-static with its applet symlinks, chosen kernel modules (with their dependencies, in
//! load order), extra files and an `/init`. Archives are cached by a hash of their content, so a
//! second test run reuses them. [`standard_guest`] is the guest most tests boot; its `/init` is
//! [`STANDARD_INIT`]. The generic parts (kernel fetch, module resolution, the cpio writer) are
//! `mvirt-podimage`'s, which builds the product pod image from them; this module adds busybox,
//! the test init and panics instead of errors.
//!
//! Everything here is safe to call from several test processes at once: artefacts are built in
//! a temporary path inside the cache directory and renamed into place atomically.
//!
//! Modules are copied to `/lib/modules/<name>.ko` and listed, in load order, in
//! `/etc/mvirt-modules`; `/sbin/load-modules` (always present when modules were added) loads
//! them with `insmod`. A custom `/init` calls `/sbin/load-modules` itself.
//!
//! Markers printed by the standard init on the serial console, for tests to wait on:
//! - `MVIRT-CIDATA-FOUND dev=<dev>` then `MVIRT-USERDATA-BEGIN` / user-data / `MVIRT-USERDATA-END`,
//!   `MVIRT-CIDATA-HOSTNAME <h>` and `MVIRT-CIDATA-INSTANCE-ID <id>` when a cidata disk exists;
//! - `MVIRT-ACPI-IGNORED` when the cmdline has `mvirt.ignore_acpi`, else `MVIRT-ACPID-STARTED`;
//! - `MVIRT-DHCP-BOUND ip=<ip> router=<r>` when udhcpc gets a lease on eth0;
//! - `MVIRT-GUEST-BOOTED hostname=<h>` once init is done, before the shell starts.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use mvirt_podimage::cpio::Archive;
use mvirt_podimage::kernel::{self, KernelPackage, ModuleIndex};
use sha2::{Digest, Sha256};

use crate::cache_dir;

/// A Debian kernel unpacked in the cache.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// A directory containing `lib/modules/<version>`.
    pub modules_root: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
}

impl GuestKernel {
    /// `<modules_root>/lib/modules/<version>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(&self.version)
    }

    fn module_index(&self) -> ModuleIndex {
        or_panic(
            ModuleIndex::load(&self.modules_dir(), &self.version),
            "cannot index the kernel's modules",
        )
    }
}

/// Unwraps, or panics with the error and its causes (and where to look).
fn or_panic<T, E: std::error::Error>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|error| {
        let mut text = format!("{what}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        panic!("{text} (scripts/setup.sh installs what test guests need)")
    })
}

/// The Debian kernel (the version `apt-cache depends linux-image-amd64` names), downloaded and
/// unpacked once into the cache by `mvirt_podimage::kernel::fetch`. Safe when several test
/// processes call it concurrently.
pub fn debian_kernel() -> GuestKernel {
    let cache = cache_dir();
    let kernel = match KernelPackage::host_default() {
        Ok(package) => or_panic(kernel::fetch(&cache, &package), "cannot fetch the kernel"),
        // apt cannot tell the current version: a kernel already in the cache will do, else
        // (a machine whose package lists were never fetched) fetch the lists once.
        Err(_) => match kernel::cached_kernels(&cache).pop() {
            Some(kernel) => kernel,
            None => {
                or_panic(kernel::refresh_package_lists(), "apt-get update");
                let package = or_panic(
                    KernelPackage::host_default(),
                    "apt-cache does not name a kernel for linux-image-amd64 even after apt-get update",
                );
                or_panic(kernel::fetch(&cache, &package), "cannot fetch the kernel")
            }
        },
    };
    GuestKernel {
        version: kernel.release().to_string(),
        vmlinuz: kernel.vmlinuz,
        modules_root: kernel.modules_root,
    }
}

/// The modules the standard guest loads, in dependency order (TESTING.md's list plus the power
/// button, input events for acpid, and the filesystems a cidata seed uses).
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_mmio",
    "failover",
    "net_failover",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_blk",
];

/// Modules the standard init needs beyond virtio: ACPI power button, evdev (acpid reads
/// `/dev/input/event*`), vfat and iso9660 for cidata seeds.
pub const STANDARD_EXTRA_MODULES: &[&str] = &[
    "button",
    "evdev",
    "fat",
    "vfat",
    "cdrom",
    "isofs",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
];

/// Builds a cpio (newc) initramfs: busybox, modules, files and an `/init`.
#[derive(Debug, Clone)]
pub struct InitramfsBuilder {
    archive: Archive,
    /// Module names in load order, and their (decompressed) contents.
    modules: Vec<(String, Vec<u8>)>,
}

impl Default for InitramfsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

const LOAD_MODULES: &str = r#"#!/bin/sh
# Loads the modules listed in /etc/mvirt-modules, in order.
[ -f /etc/mvirt-modules ] || exit 0
while read m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err || echo "mvirt-guest: insmod $m failed: $(cat /tmp/insmod.err)"
done < /etc/mvirt-modules
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc event handler: configure the interface from the lease.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        ip route replace "$2" dev "$interface" onlink 2>/dev/null
        ip route replace "$1" via "$2" dev "$interface" onlink
        shift 2
      done
    fi
    for r in $router; do
      ip route replace "$r" dev "$interface"
      ip route replace default via "$r" dev "$interface" onlink
      break
    done
    if [ -n "$dns" ]; then
      : > /etc/resolv.conf
      for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    fi
    echo "MVIRT-DHCP-BOUND ip=$ip router=$router"
    ;;
esac
exit 0
"#;

const POWER_BUTTON_HANDLER: &str = r#"#!/bin/sh
echo "MVIRT-POWER-BUTTON"
sync
poweroff -f
"#;

/// The `/init` of [`standard_guest`].
pub const STANDARD_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /mnt/cidata /var/run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
/sbin/load-modules
mdev -s 2>/dev/null
hostname mvirt-guest

# cloud-init NoCloud seed: a filesystem labelled cidata or CIDATA.
# Block devices may appear shortly after their driver loads.
cidata=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  cidata=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
  [ -n "$cidata" ] && break
  ls /sys/block | grep -q '^vd' || break
  sleep 0.2
done
if [ -n "$cidata" ]; then
  echo "MVIRT-CIDATA-FOUND dev=$cidata"
  if mount -o ro "$cidata" /mnt/cidata; then
    echo "MVIRT-USERDATA-BEGIN"
    cat /mnt/cidata/user-data 2>/dev/null
    echo
    echo "MVIRT-USERDATA-END"
    h=$(grep -E '^(local-hostname|hostname):' /mnt/cidata/meta-data | head -n 1 | sed 's/^[^:]*:[ ]*//' | tr -d '"\r')
    iid=$(grep -E '^instance-id:' /mnt/cidata/meta-data | head -n 1 | sed 's/^[^:]*:[ ]*//' | tr -d '"\r')
    echo "MVIRT-CIDATA-INSTANCE-ID $iid"
    if [ -n "$h" ]; then
      echo "MVIRT-CIDATA-HOSTNAME $h"
      hostname "$h"
    fi
  else
    echo "MVIRT-CIDATA-MOUNT-FAILED dev=$cidata"
  fi
fi

if grep -q 'mvirt.ignore_acpi' /proc/cmdline; then
  echo "MVIRT-ACPI-IGNORED"
else
  # acpid only watches the event devices that exist when it starts: wait for the power
  # button's node (devtmpfs creates it asynchronously after the module loads).
  for i in $(seq 1 30); do
    pb=$(grep -l "Power Button" /sys/class/input/event*/device/name 2>/dev/null | head -n 1 | cut -d/ -f5)
    [ -n "$pb" ] && [ -e "/dev/input/$pb" ] && break
    sleep 0.1
  done
  mkdir -p /var/log
  acpid -c /etc/acpi -l /var/log/acpid.log
  echo "MVIRT-ACPID-STARTED"
fi

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -i eth0 -s /etc/udhcpc.script -t 5 -T 2 -A 5 -b 2>/dev/null &
fi

echo "MVIRT-GUEST-BOOTED hostname=$(hostname)"
while true; do
  setsid cttyhack sh -l
done
"#;

impl InitramfsBuilder {
    /// busybox-static with its applet symlinks, `/dev` (with `/dev/console`), `/proc`, `/sys`.
    pub fn new() -> Self {
        let mut archive = Archive::new();
        for dir in [
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root",
            "mnt", "run", "var",
        ] {
            archive.dir(dir);
        }
        archive.char_dev("dev/console", 5, 1, 0o600);
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("busybox not found: run scripts/setup.sh (busybox-static)"));
        archive.host_file("bin/busybox", &busybox, 0o755);
        let list = or_panic(
            mvirt_podimage::command::run(&busybox.to_string_lossy(), &["--list-full"], None),
            "busybox --list-full",
        );
        for applet in String::from_utf8_lossy(&list).lines() {
            let applet = applet.trim().trim_start_matches('/');
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            archive.symlink(applet, "/bin/busybox");
        }
        archive.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        );
        archive.file("etc/group", b"root:x:0:\n".to_vec(), 0o644);
        Self {
            archive,
            modules: Vec::new(),
        }
    }

    /// Adds kernel modules (and, first, the modules they depend on) to the archive, in load
    /// order. `.ko.xz` modules are decompressed. Built-in modules are skipped.
    pub fn with_modules(mut self, kernel: &GuestKernel, modules: &[&str]) -> Self {
        let loaded: BTreeSet<String> = self.modules.iter().map(|(n, _)| n.clone()).collect();
        let resolved = or_panic(
            kernel.module_index().resolve(modules, &loaded),
            "cannot resolve kernel modules",
        );
        self.modules
            .extend(resolved.into_iter().map(|m| (m.name, m.contents)));
        self
    }

    /// The virtio modules of TESTING.md (net, blk, pci, mmio, vsock), loaded by the standard init.
    pub fn virtio_modules(self, kernel: &GuestKernel) -> Self {
        self.with_modules(kernel, VIRTIO_MODULES)
    }

    /// A file with the given contents and mode (parents are created).
    pub fn file(mut self, guest_path: &str, contents: Vec<u8>, mode: u32) -> Self {
        self.archive.file(guest_path, contents, mode);
        self
    }

    /// A copy of a host file (read at build time).
    pub fn host_file(mut self, guest_path: &str, host_path: &Path, mode: u32) -> Self {
        self.archive.host_file(guest_path, host_path, mode);
        self
    }

    /// The `/init` script (PID 1).
    pub fn init_script(self, script: &str) -> Self {
        self.file("/init", script.as_bytes().to_vec(), 0o755)
    }

    /// Writes the archive (uncompressed newc, which the kernel unpacks faster under TCG than
    /// gzip) into the cache, named by the hash of its content, and returns its path.
    pub fn build(self) -> PathBuf {
        let mut archive = self.archive;
        if !self.modules.is_empty() {
            let mut order = String::new();
            for (name, contents) in self.modules {
                archive.file(&format!("lib/modules/{name}.ko"), contents, 0o644);
                order.push_str(&name);
                order.push('\n');
            }
            archive.file("etc/mvirt-modules", order.into_bytes(), 0o644);
            archive.file("sbin/load-modules", LOAD_MODULES.as_bytes().to_vec(), 0o755);
        }
        let bytes = or_panic(archive.to_bytes(), "cannot write the initramfs");
        let hash = hex::encode(&Sha256::digest(&bytes)[..12]);
        let cache = cache_dir();
        let target = cache.join(format!("initramfs-{hash}.cpio"));
        if target.exists() {
            return target;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".initramfs-")
            .tempfile_in(&cache)
            .unwrap_or_else(|e| panic!("cannot create a temp file in {}: {e}", cache.display()));
        tmp.write_all(&bytes).expect("write initramfs");
        let _ = std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        );
        tmp.persist(&target)
            .unwrap_or_else(|e| panic!("cannot persist {}: {e}", target.display()));
        target
    }
}

/// A kernel, an initramfs and the kernel command line to boot them with.
#[derive(Debug, Clone)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
}

/// The standard command line: serial console, early TSC frequency (else `-M microvm` sometimes
/// hangs in calibration under TCG), and reboot (which QEMU's `-no-reboot` turns into an exit)
/// on panic.
pub const STANDARD_CMDLINE: &str = "console=ttyS0 tsc_early_khz=2100000 panic=-1";

/// The standard test guest, see [`STANDARD_INIT`]: mounts, virtio modules, cidata seed
/// (user-data, hostname), acpid (power button → poweroff, unless `mvirt.ignore_acpi`), udhcpc on
/// eth0, marker `MVIRT-GUEST-BOOTED hostname=<h>`, then a shell on the serial console.
pub fn standard_guest() -> TestGuest {
    let kernel = debian_kernel();
    let initramfs = InitramfsBuilder::new()
        .virtio_modules(&kernel)
        .with_modules(&kernel, STANDARD_EXTRA_MODULES)
        .file(
            "/etc/udhcpc.script",
            UDHCPC_SCRIPT.as_bytes().to_vec(),
            0o755,
        )
        .file(
            "/etc/acpi/PWRF/00000080",
            POWER_BUTTON_HANDLER.as_bytes().to_vec(),
            0o755,
        )
        .init_script(STANDARD_INIT)
        .build();
    TestGuest {
        kernel: kernel.vmlinuz,
        initramfs,
        cmdline: STANDARD_CMDLINE.to_string(),
    }
}

/// The standard guest's initramfs (modules, DHCP script, power-button handler) with another
/// `/init` (used by `mvirt-dev-image` for the embedded default's template).
pub fn standard_initramfs_with_init(init: &str) -> PathBuf {
    let kernel = debian_kernel();
    InitramfsBuilder::new()
        .virtio_modules(&kernel)
        .with_modules(&kernel, STANDARD_EXTRA_MODULES)
        .file(
            "/etc/udhcpc.script",
            UDHCPC_SCRIPT.as_bytes().to_vec(),
            0o755,
        )
        .file(
            "/etc/acpi/PWRF/00000080",
            POWER_BUTTON_HANDLER.as_bytes().to_vec(),
            0o755,
        )
        .init_script(init)
        .build()
}

/// The number after `marker` on the last console line that starts with it: a guest's
/// `/proc/uptime` seconds as the migration tests' guests print them (`UPTIME 12.34 …`).
/// Panics when there is no such line or no number.
pub fn uptime_of(text: &str, marker: &str) -> f64 {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(marker))
        .unwrap_or_else(|| panic!("no {marker} line in {text}"));
    line[marker.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad uptime line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_lists_modules_in_load_order_next_to_busybox() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = GuestKernel {
            vmlinuz: dir.path().join("vmlinuz"),
            modules_root: dir.path().to_path_buf(),
            version: "6.1.0-1-amd64".into(),
        };
        let drivers = kernel.modules_dir().join("kernel/drivers");
        std::fs::create_dir_all(&drivers).unwrap();
        std::fs::write(drivers.join("vsock.ko"), b"\0depends=\0").unwrap();
        std::fs::write(
            drivers.join("vmw_vsock_virtio_transport.ko"),
            b"\0depends=vsock\0",
        )
        .unwrap();
        let builder =
            InitramfsBuilder::new().with_modules(&kernel, &["vmw_vsock_virtio_transport"]);
        let names: Vec<&str> = builder.modules.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vsock", "vmw_vsock_virtio_transport"]);
        assert!(builder.archive.contains("bin/sh"));
    }
}
