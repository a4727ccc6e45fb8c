//! Builds the small bootable template the embedded default (`scripts/up.sh`) imports: the
//! Debian kernel, a busybox initramfs whose init applies the NoCloud seed (hostname, SSH keys)
//! and runs DHCP on eth0, and a raw data disk. Prints the three paths, one per line.
//!
//! Usage: `mvirt-dev-image <output-dir>`. Everything is built from Debian packages (the kernel
//! with `apt-get download`, busybox from `busybox-static`) and cached; a second run is instant.

use std::path::PathBuf;
use std::process::ExitCode;

use mvirt_testsupport::guest;

/// Marker in the standard init after which the seed's SSH keys are installed.
const KEYS_AFTER: &str = "      hostname \"$h\"\n    fi\n";
const INSTALL_KEYS: &str = r#"    if grep -q '^public-keys:' /mnt/cidata/meta-data; then
      mkdir -p /root/.ssh
      sed -n 's/^[ ]*- *//p' /mnt/cidata/meta-data | tr -d '"' > /root/.ssh/authorized_keys
      chmod 600 /root/.ssh/authorized_keys
      echo "MVIRT-SSH-KEYS installed=$(wc -l < /root/.ssh/authorized_keys)"
    fi
"#;

fn main() -> ExitCode {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: mvirt-dev-image <output-dir>");
        return ExitCode::from(2);
    };
    if let Err(err) = std::fs::create_dir_all(&out) {
        eprintln!("mvirt-dev-image: cannot create {}: {err}", out.display());
        return ExitCode::FAILURE;
    }
    let Some(at) = guest::STANDARD_INIT.find(KEYS_AFTER) else {
        eprintln!("mvirt-dev-image: the standard guest init changed; update INSTALL_KEYS");
        return ExitCode::FAILURE;
    };
    let split = at + KEYS_AFTER.len();
    let init = format!(
        "{}{}{}",
        &guest::STANDARD_INIT[..split],
        INSTALL_KEYS,
        &guest::STANDARD_INIT[split..]
    );
    let kernel = guest::debian_kernel();
    let initramfs = guest::standard_initramfs_with_init(&init);
    let targets = [
        (kernel.vmlinuz.clone(), out.join("vmlinuz")),
        (initramfs, out.join("initramfs.img")),
    ];
    for (from, to) in &targets {
        if let Err(err) = std::fs::copy(from, to) {
            eprintln!(
                "mvirt-dev-image: cannot copy {} to {}: {err}",
                from.display(),
                to.display()
            );
            return ExitCode::FAILURE;
        }
    }
    // The root disk: 64 MiB, sparse; the guest runs from its initramfs and sees it as /dev/vda.
    let disk = out.join("disk.raw");
    let result = std::fs::File::create(&disk).and_then(|f| f.set_len(64 * 1024 * 1024));
    if let Err(err) = result {
        eprintln!("mvirt-dev-image: cannot create {}: {err}", disk.display());
        return ExitCode::FAILURE;
    }
    println!("{}", disk.display());
    println!("{}", out.join("vmlinuz").display());
    println!("{}", out.join("initramfs.img").display());
    ExitCode::SUCCESS
}
