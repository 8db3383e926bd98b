//! Generates the gRPC code with protox, a pure-Rust protobuf compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/arachne/v1/cluster.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // File contents stay in the buffer they were received into instead of being copied out of it.
    tonic_prost_build::configure()
        .bytes(".arachne.v1.BlobChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
