//! Compiles the proto and the eBPF datapath (C, clang -target bpf) into OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/net.proto");
    tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_protos(&["proto/net.proto"], &["proto"])?;

    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return Ok(());
    }
    println!("cargo:rerun-if-changed=bpf/datapath.c");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("datapath.o");
    println!("cargo:rerun-if-env-changed=MVIRT_CLANG");
    println!("cargo:rerun-if-env-changed=MVIRT_BPF_CFLAGS");
    let clang = std::env::var("MVIRT_CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .args(include_flags()?)
        .args(["-c", "bpf/datapath.c", "-o"])
        .arg(&out)
        .status()
        .map_err(|e| {
            format!("cannot run {clang} (install clang + libbpf-dev: scripts/setup.sh): {e}")
        })?;
    if !status.success() {
        return Err(format!("{clang} failed to compile bpf/datapath.c ({status})").into());
    }
    Ok(())
}

/// Where the kernel UAPI headers (`asm/types.h` ...) are found for `-target bpf`: Debian keeps
/// them in the target's multiarch directory (`/usr/include/<arch>-linux-gnu`), which clang does
/// not search for the bpf target. `MVIRT_BPF_CFLAGS` (whitespace-separated, e.g. Nix's
/// `-isystem ${linuxHeaders}/include -isystem ${libbpf}/include`) replaces that default.
fn include_flags() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if let Ok(flags) = std::env::var("MVIRT_BPF_CFLAGS") {
        return Ok(flags.split_whitespace().map(str::to_string).collect());
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        other => {
            return Err(format!(
                "no default UAPI include directory for target arch {other}: set MVIRT_BPF_CFLAGS"
            )
            .into())
        }
    };
    Ok(vec![format!("-I/usr/include/{multiarch}")])
}
