//! The memory budget (`--max-memory`, `runtime::Options::max_memory`): a tensor sized by
//! input data beyond it, or an element count that overflows, stops the run with a one-line
//! error naming the node (exit 2) instead of aborting the process.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use prost::Message;

use common::protos::{model_of, node, value};
use onnx_dynq::onnx::{GraphProto, ModelProto, NodeProto};
use onnx_dynq::runtime::{Options, Session, Value};

/// A model of `nodes` with untyped graph inputs `inputs` and output `y` (opset 17).
fn model(nodes: Vec<NodeProto>, inputs: &[&str], outputs: &[&str]) -> ModelProto {
    model_of(GraphProto {
        name: Some("g".into()),
        node: nodes,
        input: inputs.iter().map(|n| value(n)).collect(),
        output: outputs.iter().map(|n| value(n)).collect(),
        ..Default::default()
    })
}

fn i64s(v: &[i64]) -> Value {
    Value::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
}

fn scalar_i64(v: i64) -> Value {
    Value::I64(ArrayD::from_elem(IxDyn(&[]), v))
}

fn f32s(shape: &[usize]) -> Value {
    Value::F32(ArrayD::zeros(IxDyn(shape)))
}

/// Writes the model and its inputs (as .npy) to `dir`; returns the `run` arguments.
fn setup(dir: &Path, m: &ModelProto, feed: &[(&str, Value)]) -> Vec<String> {
    let path = dir.join("m.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let mut args = vec!["run".to_string(), path.to_str().unwrap().to_string()];
    for (name, v) in feed {
        let p: PathBuf = dir.join(format!("{name}.npy"));
        std::fs::write(&p, onnx_dynq::npy::to_npy(v)).unwrap();
        args.push("--input".into());
        args.push(format!("{name}={}", p.display()));
    }
    args
}

/// `run` arguments for a model of one node `name` (`op`) reading the fed values, in `dir`.
fn one_node(dir: &Path, name: &str, op: &str, feed: &[(&str, Value)]) -> Vec<String> {
    let inputs: Vec<&str> = feed.iter().map(|(n, _)| *n).collect();
    let m = model(vec![node(name, op, &inputs, &["y"])], &inputs, &["y"]);
    setup(dir, &m, feed)
}

fn fails(args: &[String], expect: &[&str]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::cli_fails(&args, expect)
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

const HUGE: i64 = 1 << 20;

#[test]
fn constant_of_shape_of_2_20_squared_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = one_node(
        dir.path(),
        "fill",
        "ConstantOfShape",
        &[("shape", i64s(&[HUGE, HUGE]))],
    );
    // The default budget, whatever this machine's memory.
    fails(
        &args,
        &[
            "node 'fill' (ConstantOfShape)",
            "output of 4 TiB exceeds the memory budget of",
            "raise --max-memory",
        ],
    );
    fails(
        &with(args.clone(), &["--max-memory", "16G"]),
        &["node 'fill' (ConstantOfShape): output of 4 TiB exceeds the memory budget of 16 GiB"],
    );
    // A small budget refuses a small tensor, a larger one lets it through.
    let small = one_node(
        dir.path(),
        "fill",
        "ConstantOfShape",
        &[("shape", i64s(&[1000]))],
    );
    fails(
        &with(small.clone(), &["--max-memory", "1K"]),
        &["node 'fill' (ConstantOfShape): output of 3.9 KiB exceeds the memory budget of 1 KiB"],
    );
    let ok = common::cli(
        &with(small, &["--max-memory", "8K"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn expand_tile_and_range_from_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = i64s(&[HUGE, HUGE]);
    let expand = one_node(
        dir.path(),
        "grow",
        "Expand",
        &[("x", f32s(&[1, 1])), ("shape", huge.clone())],
    );
    fails(
        &with(expand, &["--max-memory", "16G"]),
        &["node 'grow' (Expand): output of 4 TiB exceeds the memory budget of 16 GiB"],
    );
    let tile = one_node(
        dir.path(),
        "repeat",
        "Tile",
        &[("x", f32s(&[2, 3])), ("reps", huge)],
    );
    fails(
        &with(tile, &["--max-memory", "512M"]),
        &["node 'repeat' (Tile): output of 24 TiB exceeds the memory budget of 512 MiB"],
    );
    let range = one_node(
        dir.path(),
        "count",
        "Range",
        &[
            ("start", scalar_i64(0)),
            ("limit", scalar_i64(1 << 50)),
            ("delta", scalar_i64(1)),
        ],
    );
    fails(
        &range,
        &["node 'count' (Range): output of 8 PiB exceeds the memory budget"],
    );
}

#[test]
fn overflowing_shape_products_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fill = one_node(
        dir.path(),
        "fill",
        "ConstantOfShape",
        &[("shape", i64s(&[1 << 40, 1 << 40, 1 << 40]))],
    );
    fails(
        &fill,
        &[
            "node 'fill' (ConstantOfShape): output shape [1099511627776, 1099511627776, 1099511627776] has more elements than memory can address",
        ],
    );
    // Broadcasting [n, 1] against [1, n] squares the size.
    let add = one_node(
        dir.path(),
        "outer",
        "Add",
        &[("a", f32s(&[1 << 17, 1])), ("b", f32s(&[1, 1 << 17]))],
    );
    fails(
        &with(add, &["--max-memory", "1G"]),
        &["node 'outer' (Add): output of 64 GiB exceeds the memory budget of 1 GiB"],
    );
    // A Reshape target whose product overflows is refused, not wrapped around.
    let reshape = one_node(
        dir.path(),
        "flat",
        "Reshape",
        &[("x", f32s(&[0])), ("shape", i64s(&[1 << 62, 1 << 62]))],
    );
    fails(
        &reshape,
        &[
            "node 'flat' (Reshape)",
            "more elements than memory can address",
        ],
    );
}

#[test]
fn verify_and_rewrite_verify_take_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let run = one_node(
        dir.path(),
        "fill",
        "ConstantOfShape",
        &[("shape", i64s(&[4096]))],
    );
    let (model_path, input) = (&run[1], &run[3]);
    fails(
        &[
            "verify",
            model_path,
            model_path,
            "--input",
            input,
            "--max-memory",
            "4K",
        ]
        .map(String::from),
        &["node 'fill' (ConstantOfShape): output of 16 KiB exceeds the memory budget of 4 KiB"],
    );
    let out = dir.path().join("out.onnx");
    fails(
        &[
            "rewrite",
            model_path,
            out.to_str().unwrap(),
            "--verify",
            "--input",
            input,
            "--max-memory",
            "4K",
        ]
        .map(String::from),
        &["node 'fill' (ConstantOfShape): output of 16 KiB exceeds the memory budget of 4 KiB"],
    );
    // A bad size is a usage error (clap's, exit 2).
    let out = common::cli(&["run", model_path, "--input", input, "--max-memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'lots' is not a size (e.g. 512M, 8G"), "{err}");
}

/// The session counts the values alive at once, not only each allocation on its own.
#[test]
fn values_alive_together_count_against_the_budget() {
    let m = onnx_dynq::model::Model::from_proto(model(
        vec![
            node("first", "Relu", &["x"], &["a"]),
            node("second", "Neg", &["a"], &["b"]),
            node("third", "Sigmoid", &["b"], &["c"]),
        ],
        &["x"],
        &["a", "b", "c"],
    ))
    .unwrap();
    let run = |budget: u64| {
        let options = Options {
            max_memory: Some(budget),
            ..Default::default()
        };
        let s = Session::new(&m, &options).unwrap();
        s.run(HashMap::from([("x".to_string(), f32s(&[256]))]))
    };
    // x, a, b and c are 1 KiB each; x dies after `first`, the outputs a, b and c stay.
    assert!(run(3 << 10).is_ok());
    let e = run((3 << 10) - 1).unwrap_err().to_string();
    assert!(
        e.contains("node 'third' (Sigmoid): outputs of 1 KiB exceed the memory budget of 3.0 KiB with 2 KiB already in use"),
        "{e}"
    );
}
