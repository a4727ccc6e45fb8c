fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/log.proto");
    tonic_prost_build::configure().compile_protos(&["proto/log.proto"], &["proto"])?;
    Ok(())
}
