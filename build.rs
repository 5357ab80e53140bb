//! Compiles `proto/onnx.proto` with prost-build. protox parses the schema in pure Rust, so a
//! fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // Tensor payloads decode as `bytes::Bytes` sharing the memory map: zero-copy initializers.
    config.bytes([".onnx.TensorProto.raw_data"]);
    config.compile_fds(descriptors)?;
    Ok(())
}
