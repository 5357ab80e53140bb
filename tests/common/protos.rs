//! Raw protobuf builders for tests that write model files byte by byte (malformed or
//! adversarial models the IR would not let them build).

use onnx_dynq::onnx::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};

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

/// A model of `graph` importing the default domain at opset 17 (IR version 8).
pub fn model_of(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}
