//! Small hand-built graphs for the runtime tests: value infos, nodes, graphs and models built
//! from protos, and single-threaded session runs (fused or with `no_kernel_fusion`) that also
//! return the op types of the executed plan steps, so tests can see what was fused.

use std::collections::HashMap;

use onnx_dynq::Model;
use onnx_dynq::ir::{Graph, Node};
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::onnx::{
    GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};
use onnx_dynq::runtime::session::NamedValues;
use onnx_dynq::runtime::{Options, Session, Value};

/// A typed value info; dims < 0 are symbolic ("N").
pub fn vi_sym(name: &str, dt: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d < 0 {
                tensor_shape_proto::dimension::Value::DimParam("N".into())
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dt as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A typed value info with fixed dims.
pub fn vi(name: &str, dt: DataType, dims: &[usize]) -> ValueInfoProto {
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    vi_sym(name, dt, &dims)
}

/// A value info with a name only (the runtime infers the type).
pub fn untyped(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A default-domain node named `{op}_{first output}`.
pub fn node(op: &str, ins: &[&str], outs: &[&str]) -> Node {
    Node::new(
        format!("{op}_{}", outs[0]),
        op,
        "",
        ins.iter().map(|s| s.to_string()).collect(),
        outs.iter().map(|s| s.to_string()).collect(),
    )
}

/// A `com.microsoft` node named like `node`.
pub fn ms_node(op: &str, ins: &[&str], outs: &[&str]) -> Node {
    let mut n = node(op, ins, outs);
    n.proto.domain = Some("com.microsoft".into());
    n
}

/// A graph named "g" with these inputs, outputs and nodes (no initializers).
pub fn graph(inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>, nodes: Vec<Node>) -> Graph {
    let mut g = Graph::from_proto(GraphProto {
        name: Some("g".into()),
        input: inputs,
        output: outputs,
        ..Default::default()
    })
    .unwrap();
    g.nodes = nodes;
    g
}

/// An IR-8 model of `g` importing the given `(domain, version)` opsets.
pub fn model_with(g: Graph, opsets: &[(&str, i64)]) -> Model {
    let mut p = ModelProto {
        ir_version: Some(8),
        opset_import: opsets
            .iter()
            .map(|&(domain, version)| OperatorSetIdProto {
                domain: Some(domain.into()),
                version: Some(version),
            })
            .collect(),
        ..Default::default()
    };
    p.graph = Some(g.into_proto());
    Model::from_proto(p).unwrap()
}

/// An IR-8 model of `g` importing only the default domain at `opset`.
pub fn model(g: Graph, opset: i64) -> Model {
    model_with(g, &[("", opset)])
}

/// A single-threaded session, with plan-time kernel fusion unless `no_fusion`.
pub fn session(m: &Model, no_fusion: bool) -> Session {
    let opts = Options {
        threads: 1,
        no_kernel_fusion: no_fusion,
        ..Default::default()
    };
    Session::new(m, &opts).unwrap()
}

/// Runs `s` profiled; returns the outputs and the op types of the executed steps (a fused
/// step's op type joins its nodes' with '+').
pub fn run_profiled(s: &Session, feed: HashMap<String, Value>) -> (NamedValues, Vec<String>) {
    let (outs, times) = s.run_profiled(feed).unwrap();
    (outs, times.into_iter().map(|t| t.op_type).collect())
}

/// Runs `m` fused and unfused; returns (fused outputs, unfused outputs, fused step op types).
pub fn fused_and_plain(
    m: &Model,
    feed: &HashMap<String, Value>,
) -> (NamedValues, NamedValues, Vec<String>) {
    let (a, ops) = run_profiled(&session(m, false), feed.clone());
    let b = session(m, true).run(feed.clone()).unwrap();
    (a, b, ops)
}
