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
    let clang = std::env::var("MVIRT_CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .args([
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            "bpf/datapath.c",
            "-o",
        ])
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
