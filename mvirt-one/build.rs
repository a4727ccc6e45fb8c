fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/one.proto");
    tonic_prost_build::configure()
        .build_server(cfg!(feature = "server"))
        .compile_protos(&["proto/one.proto"], &["proto"])?;
    Ok(())
}
