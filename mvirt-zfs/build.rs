fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/zfs.proto");
    tonic_prost_build::configure().compile_protos(&["proto/zfs.proto"], &["proto"])?;
    Ok(())
}
