fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    tonic_prost_build::configure().compile_protos(&["proto/node.proto"], &["proto"])?;
    Ok(())
}
