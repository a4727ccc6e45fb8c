fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/zfs.proto");
    tonic_prost_build::configure()
        // Stream chunks (SendVolume/ReceiveVolume) as `Bytes`: passed on without copying.
        .bytes(".mvirt.zfs.v1.VolumeStreamChunk.data")
        .bytes(".mvirt.zfs.v1.ReceiveVolumeRequest.data")
        .compile_protos(&["proto/zfs.proto"], &["proto"])?;
    Ok(())
}
