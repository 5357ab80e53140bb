//! The limits the README states, checked: subgraph nesting is refused beyond
//! [`MAX_SUBGRAPH_NESTING`](onnx_dynq::model::MAX_SUBGRAPH_NESTING) levels with one short line
//! naming the file, and a model at the limit loads and runs.

mod common;

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use prost::Message;

use common::protos::{model_of, node, value};
use onnx_dynq::model::MAX_SUBGRAPH_NESTING;
use onnx_dynq::onnx::{
    AttributeProto, GraphProto, ModelProto, TensorProto, attribute_proto::AttributeType,
    tensor_proto::DataType,
};
use onnx_dynq::runtime::{Options, Session, Value};

fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(g),
        ..Default::default()
    }
}

/// A body that returns the outer `x` plus a Constant 0 (a tensor inside the deepest body
/// takes the most protobuf nesting).
fn leaf(out: &str) -> GraphProto {
    let mut zero = node("zero", "Constant", &[], &["zero"]);
    zero.attribute = vec![AttributeProto {
        name: Some("value".into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(TensorProto {
            data_type: Some(DataType::Float as i32),
            float_data: vec![0.0],
            ..Default::default()
        }),
        ..Default::default()
    }];
    GraphProto {
        name: Some("leaf".into()),
        node: vec![zero, node("add", "Add", &["x", "zero"], &[out])],
        output: vec![value(out)],
        ..Default::default()
    }
}

/// `depth` Ifs, each in the then-branch of the one before; the else-branches are leaves.
fn nested_ifs(depth: usize) -> ModelProto {
    let mut inner = leaf("y0");
    for level in 1..=depth {
        let out = format!("y{level}");
        let mut n = node(&format!("if{level}"), "If", &["cond"], &[&out]);
        n.attribute = vec![
            graph_attr("then_branch", inner),
            graph_attr("else_branch", leaf(&format!("e{level}"))),
        ];
        inner = GraphProto {
            name: Some(format!("level{level}")),
            node: vec![n],
            output: vec![value(&out)],
            ..Default::default()
        };
    }
    inner.input = vec![value("cond"), value("x")];
    model_of(inner)
}

#[test]
fn nesting_beyond_the_limit_is_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.onnx");
    std::fs::write(&deep, nested_ifs(50).encode_to_vec()).unwrap();
    let err = common::cli_fails(
        &["inspect", deep.to_str().unwrap()],
        &[
            "deep.onnx: not a valid ONNX model",
            &format!("subgraphs nested deeper than {MAX_SUBGRAPH_NESTING} levels"),
        ],
    );
    assert!(err.len() < 300, "{} bytes: {err}", err.len());
    // One level past the limit fails the same way, from the library too.
    let e =
        onnx_dynq::model::load_bytes(nested_ifs(MAX_SUBGRAPH_NESTING + 1).encode_to_vec().into())
            .unwrap_err()
            .to_string();
    assert!(e.contains("nested deeper than"), "{e}");
}

#[test]
fn nesting_at_the_limit_loads_and_runs() {
    let m = onnx_dynq::model::load_bytes(nested_ifs(MAX_SUBGRAPH_NESTING).encode_to_vec().into())
        .unwrap();
    let s = Session::new(&m, &Options::default()).unwrap();
    let x = Value::F32(ArrayD::from_elem(IxDyn(&[2]), 1.5));
    for cond in [true, false] {
        let out = s
            .run(HashMap::from([
                (
                    "cond".to_string(),
                    Value::Bool(ArrayD::from_elem(IxDyn(&[]), cond)),
                ),
                ("x".to_string(), x.clone()),
            ]))
            .unwrap();
        assert_eq!(out[0].1, x);
    }
}
