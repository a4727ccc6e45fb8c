//! Cached Debian kernel + busybox initramfs for QEMU TCG test guests.
//!
//! [`debian_kernel`] downloads the kernel Debian's `linux-image-amd64` currently names
//! (`apt-get download`, `dpkg -x`) once and keeps it under [`crate::cache_dir`]. The
//! [`InitramfsBuilder`] writes a `cpio -H newc` archive itself (no staging directory, no root):
//! busybox-static with its applet symlinks, chosen kernel modules (with their dependencies, in
//! load order), extra files and an `/init`. Archives are cached by a hash of their content, so a
//! second test run reuses them. [`standard_guest`] is the guest most tests boot; its `/init` is
//! [`STANDARD_INIT`].
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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

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

    /// Every module file of this kernel, by normalised name (`-` replaced by `_`).
    fn module_index(&self) -> BTreeMap<String, PathBuf> {
        let mut index = BTreeMap::new();
        let mut stack = vec![self.modules_dir().join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let file = entry.file_name().to_string_lossy().to_string();
                let stem = file
                    .strip_suffix(".ko")
                    .or_else(|| file.strip_suffix(".ko.xz"))
                    .or_else(|| file.strip_suffix(".ko.zst"));
                if let Some(stem) = stem {
                    index.insert(stem.replace('-', "_"), path);
                }
            }
        }
        index
    }

    /// Names of modules built into the kernel (nothing to load for them).
    fn builtin_modules(&self) -> BTreeSet<String> {
        let text =
            std::fs::read_to_string(self.modules_dir().join("modules.builtin")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(|f| f.strip_suffix(".ko"))
            .map(|s| s.replace('-', "_"))
            .collect()
    }
}

fn run(what: &str, cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}; run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "{what} failed ({cmd:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The kernel package Debian's `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`.
fn debian_kernel_package() -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|s| s.trim().to_string())
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
}

/// A kernel already unpacked in the cache (used when apt cannot tell the current version).
fn any_cached_kernel(cache: &Path) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("kernel-")
                .map(str::to_string)
        })
        .collect();
    found.sort();
    found.pop()
}

/// The Debian kernel (the version `apt-cache depends linux-image-amd64` names), downloaded and
/// unpacked once into the cache. Safe when several test processes call it concurrently.
pub fn debian_kernel() -> GuestKernel {
    let cache = cache_dir();
    let version = match debian_kernel_package() {
        Some(pkg) => pkg.trim_start_matches("linux-image-").to_string(),
        None => any_cached_kernel(&cache)
            .or_else(|| {
                // A machine whose package lists were never fetched: fetch them once.
                run("apt-get update", Command::new("apt-get").args(["update", "-qq"]));
                debian_kernel_package().map(|p| p.trim_start_matches("linux-image-").to_string())
            })
            .unwrap_or_else(|| {
                panic!("apt-cache does not name a kernel for linux-image-amd64 even after apt-get update")
            }),
    };
    let dir = cache.join(format!("kernel-{version}"));
    let kernel = GuestKernel {
        vmlinuz: dir.join("vmlinuz"),
        modules_root: dir.join("root"),
        version: version.clone(),
    };
    if kernel.vmlinuz.exists() {
        return kernel;
    }

    let work = tempfile::Builder::new()
        .prefix(".kernel-build-")
        .tempdir_in(&cache)
        .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", cache.display()));
    let package = format!("linux-image-{version}");
    run(
        "apt-get download",
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(work.path()),
    );
    let deb = std::fs::read_dir(work.path())
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", work.path().display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("apt-get download left no .deb for {package}"));
    let unpacked = work.path().join("x");
    run(
        "dpkg -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
    );
    let out = work.path().join("out");
    std::fs::create_dir_all(out.join("root/lib/modules")).expect("create kernel dir in temp");
    std::fs::rename(
        unpacked.join(format!("boot/vmlinuz-{version}")),
        out.join("vmlinuz"),
    )
    .unwrap_or_else(|e| panic!("no boot/vmlinuz-{version} in {package}: {e}"));
    // Debian ships modules under /lib (bookworm) or /usr/lib (later releases).
    let modules = [
        unpacked.join("lib/modules").join(&version),
        unpacked.join("usr/lib/modules").join(&version),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("no lib/modules/{version} in {package}"));
    std::fs::rename(&modules, out.join("root/lib/modules").join(&version))
        .expect("move modules in temp dir");
    let _ = std::fs::remove_file(&deb);
    match std::fs::rename(&out, &dir) {
        Ok(()) => {}
        // Another process won the race: its copy is as good as ours.
        Err(_) if kernel.vmlinuz.exists() => {}
        Err(e) => panic!("cannot move the kernel into {}: {e}", dir.display()),
    }
    kernel
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

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { contents: Vec<u8>, mode: u32 },
    HostFile { path: PathBuf, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// Builds a cpio (newc) initramfs: busybox, modules, files and an `/init`.
#[derive(Debug, Clone)]
pub struct InitramfsBuilder {
    nodes: BTreeMap<String, Node>,
    /// Module names in load order, and the file each comes from.
    modules: Vec<(String, PathBuf)>,
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
        let mut builder = Self {
            nodes: BTreeMap::new(),
            modules: Vec::new(),
        };
        for dir in [
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root",
            "mnt", "run", "var",
        ] {
            builder.nodes.insert(dir.to_string(), Node::Dir);
        }
        builder.nodes.insert(
            "dev/console".into(),
            Node::CharDev {
                major: 5,
                minor: 1,
                mode: 0o600,
            },
        );
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("busybox not found: run scripts/setup.sh (busybox-static)"));
        builder.nodes.insert(
            "bin/busybox".into(),
            Node::HostFile {
                path: busybox.clone(),
                mode: 0o755,
            },
        );
        let list = run(
            "busybox --list-full",
            Command::new(&busybox).arg("--list-full"),
        );
        for applet in String::from_utf8_lossy(&list).lines() {
            let applet = applet.trim().trim_start_matches('/');
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            builder
                .nodes
                .insert(applet.to_string(), Node::Symlink("/bin/busybox".into()));
        }
        builder.nodes.insert(
            "etc/passwd".into(),
            Node::File {
                contents: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
                mode: 0o644,
            },
        );
        builder.nodes.insert(
            "etc/group".into(),
            Node::File {
                contents: b"root:x:0:\n".to_vec(),
                mode: 0o644,
            },
        );
        builder
    }

    /// Adds kernel modules (and, first, the modules they depend on) to the archive, in load
    /// order. `.ko.xz` modules are decompressed. Built-in modules are skipped.
    pub fn with_modules(mut self, kernel: &GuestKernel, modules: &[&str]) -> Self {
        let index = kernel.module_index();
        let builtin = kernel.builtin_modules();
        let mut loaded: BTreeSet<String> = self.modules.iter().map(|(n, _)| n.clone()).collect();
        fn visit(
            name: &str,
            index: &BTreeMap<String, PathBuf>,
            builtin: &BTreeSet<String>,
            loaded: &mut BTreeSet<String>,
            out: &mut Vec<(String, PathBuf)>,
            depth: usize,
        ) {
            let name = name.replace('-', "_");
            if loaded.contains(&name) || builtin.contains(&name) {
                return;
            }
            assert!(depth < 32, "module dependency cycle at {name}");
            let path = index
                .get(&name)
                .unwrap_or_else(|| panic!("kernel has no module {name}"))
                .clone();
            for dep in module_depends(&path) {
                visit(&dep, index, builtin, loaded, out, depth + 1);
            }
            loaded.insert(name.clone());
            out.push((name, path));
        }
        for module in modules {
            visit(module, &index, &builtin, &mut loaded, &mut self.modules, 0);
        }
        self
    }

    /// The virtio modules of TESTING.md (net, blk, pci, mmio, vsock), loaded by the standard init.
    pub fn virtio_modules(self, kernel: &GuestKernel) -> Self {
        self.with_modules(kernel, VIRTIO_MODULES)
    }

    /// A file with the given contents and mode (parents are created).
    pub fn file(mut self, guest_path: &str, contents: Vec<u8>, mode: u32) -> Self {
        self.nodes.insert(
            guest_path.trim_start_matches('/').to_string(),
            Node::File { contents, mode },
        );
        self
    }

    /// A copy of a host file (read at build time).
    pub fn host_file(mut self, guest_path: &str, host_path: &Path, mode: u32) -> Self {
        self.nodes.insert(
            guest_path.trim_start_matches('/').to_string(),
            Node::HostFile {
                path: host_path.to_path_buf(),
                mode,
            },
        );
        self
    }

    /// The `/init` script (PID 1).
    pub fn init_script(self, script: &str) -> Self {
        self.file("/init", script.as_bytes().to_vec(), 0o755)
    }

    /// Writes the archive (uncompressed newc, which the kernel unpacks faster under TCG than
    /// gzip) into the cache, named by the hash of its content, and returns its path.
    pub fn build(self) -> PathBuf {
        let mut nodes = self.nodes;
        if !self.modules.is_empty() {
            let mut order = String::new();
            for (name, path) in &self.modules {
                nodes.insert(
                    format!("lib/modules/{name}.ko"),
                    Node::File {
                        contents: read_module(path),
                        mode: 0o644,
                    },
                );
                order.push_str(name);
                order.push('\n');
            }
            nodes.insert(
                "etc/mvirt-modules".into(),
                Node::File {
                    contents: order.into_bytes(),
                    mode: 0o644,
                },
            );
            nodes.insert(
                "sbin/load-modules".into(),
                Node::File {
                    contents: LOAD_MODULES.as_bytes().to_vec(),
                    mode: 0o755,
                },
            );
        }
        // Every parent directory exists before its children.
        let parents: Vec<String> = nodes
            .keys()
            .flat_map(|p| {
                let mut acc = Vec::new();
                let mut cur = Path::new(p).parent();
                while let Some(dir) = cur {
                    if !dir.as_os_str().is_empty() {
                        acc.push(dir.to_string_lossy().to_string());
                    }
                    cur = dir.parent();
                }
                acc
            })
            .collect();
        for dir in parents {
            nodes.entry(dir).or_insert(Node::Dir);
        }

        let mut archive = CpioWriter::default();
        // BTreeMap order puts "a" before "a/b", so directories precede their contents.
        for (path, node) in &nodes {
            match node {
                Node::Dir => archive.entry(path, 0o040755, 0, 0, &[]),
                Node::File { contents, mode } => {
                    archive.entry(path, 0o100000 | mode, 0, 0, contents)
                }
                Node::HostFile { path: host, mode } => {
                    let contents = std::fs::read(host)
                        .unwrap_or_else(|e| panic!("cannot read {}: {e}", host.display()));
                    archive.entry(path, 0o100000 | mode, 0, 0, &contents)
                }
                Node::Symlink(target) => archive.entry(path, 0o120777, 0, 0, target.as_bytes()),
                Node::CharDev { major, minor, mode } => {
                    archive.entry(path, 0o020000 | mode, *major, *minor, &[])
                }
            }
        }
        let bytes = archive.finish();
        let hash = hex(&Sha256::digest(&bytes)[..12]);
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `depends=` entry of a module's `.modinfo` section.
fn module_depends(path: &Path) -> Vec<String> {
    let bytes = read_module(path);
    let needle = b"depends=";
    let mut i = 0;
    while let Some(pos) = find(&bytes[i..], needle) {
        let start = i + pos;
        // `.modinfo` entries are NUL-separated: the key starts right after a NUL.
        if start == 0 || bytes[start - 1] == 0 {
            let value_start = start + needle.len();
            let end = bytes[value_start..]
                .iter()
                .position(|b| *b == 0)
                .map(|p| value_start + p)
                .unwrap_or(bytes.len());
            return String::from_utf8_lossy(&bytes[value_start..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        i = start + 1;
    }
    Vec::new()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A module file's bytes, decompressed when it is `.ko.xz` or `.ko.zst`.
fn read_module(path: &Path) -> Vec<u8> {
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        run("xz -dc", Command::new("xz").arg("-dc").arg(path))
    } else if name.ends_with(".zst") {
        run("zstd -dc", Command::new("zstd").arg("-dcq").arg(path))
    } else {
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }
}

/// Writes the `newc` (SVR4, no CRC) cpio format.
#[derive(Default)]
struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev_major: u32, rdev_minor: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            rdev_major,
            rdev_minor,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 0, 0, &[]);
        self.out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpio_writer_produces_an_archive_cpio_extracts() {
        let mut archive = CpioWriter::default();
        archive.entry("etc", 0o040755, 0, 0, &[]);
        archive.entry("etc/hello", 0o100644, 0, 0, b"hi there\n");
        archive.entry("etc/link", 0o120777, 0, 0, b"hello");
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hello")).unwrap(),
            "hi there\n"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("etc/link")).unwrap(),
            PathBuf::from("hello")
        );
    }

    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("virtio_net.ko");
        std::fs::write(
            &ko,
            b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net_failover\0vermagic=6.1\0",
        )
        .unwrap();
        assert_eq!(
            module_depends(&ko),
            vec!["virtio_ring", "virtio", "net_failover"]
        );
        let none = dir.path().join("plain.ko");
        std::fs::write(&none, b"\0depends=\0").unwrap();
        assert!(module_depends(&none).is_empty());
    }
}
