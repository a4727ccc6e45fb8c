fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mvirt.proto");
    println!("cargo:rerun-if-changed=proto/pod.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/mvirt.proto", "proto/pod.proto"], &["proto"])?;
    Ok(())
}
