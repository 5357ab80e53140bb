//! Raw protobuf builders for tests that write model files byte by byte (malformed or
//! adversarial models the IR would not let them build).

use onnx_dynq::onnx::{NodeProto, ValueInfoProto};

/// A default-domain node with a name.
pub fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// An untyped graph input or output.
pub fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}
