//! Bad input never panics: each case gives a one-line error naming the problem and a non-zero
//! exit code from the CLI.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use common::protos::{node, value};

use onnx_dynq::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    tensor_proto::DataLocation, tensor_proto::DataType,
};

fn weight(name: &str, dims: Vec<i64>, bytes: usize) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(DataType::Float as i32),
        raw_data: Some(Bytes::from(vec![0u8; bytes])),
        ..Default::default()
    }
}

/// x -> Relu -> y, plus `extra` nodes and initializers.
fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn good() -> ModelProto {
    model(vec![node("relu", "Relu", &["x"], &["y"])], vec![])
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs `inspect` and returns stderr, checking the failure contract.
fn fails(path: &Path, expect: &[&str]) -> String {
    common::cli_fails(&["inspect", path.to_str().unwrap()], expect)
}

#[test]
fn the_good_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.onnx", &good().encode_to_vec());
    let out = common::cli(&["inspect", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn empty_truncated_and_random_files() {
    let dir = tempfile::tempdir().unwrap();
    fails(
        &write(dir.path(), "empty.onnx", b""),
        &["empty.onnx", "empty"],
    );
    let full = common::fixture("mlp.onnx");
    let bytes = std::fs::read(&full).unwrap();
    for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        fails(&write(dir.path(), "cut.onnx", &bytes[..cut]), &["cut.onnx"]);
    }
    // Deterministic pseudo-random bytes (xorshift), several seeds.
    for seed in 1..20u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        fails(&write(dir.path(), "noise.onnx", &noise), &["noise.onnx"]);
    }
    fails(&dir.path().join("missing.onnx"), &["missing.onnx"]);
    fails(dir.path(), &["not a regular file"]);
}

#[test]
fn dangling_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(vec![node("add", "Add", &["x", "ghost"], &["y"])], vec![]);
    fails(
        &write(dir.path(), "m.onnx", &m.encode_to_vec()),
        &["'add'", "'ghost'", "not produced"],
    );
}

#[test]
fn cycles_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(
        vec![
            node("a", "Add", &["x", "b_out"], &["a_out"]),
            node("b", "Relu", &["a_out"], &["b_out"]),
            node("c", "Relu", &["a_out"], &["y"]),
        ],
        vec![],
    );
    fails(&write(dir.path(), "m.onnx", &m.encode_to_vec()), &["cycle"]);
    let m = model(vec![node("self", "Add", &["x", "y"], &["y"])], vec![]);
    fails(
        &write(dir.path(), "s.onnx", &m.encode_to_vec()),
        &["'self'", "cycle"],
    );
}

#[test]
fn unknown_ir_version_and_opset() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = good();
    m.ir_version = Some(99);
    fails(
        &write(dir.path(), "ir.onnx", &m.encode_to_vec()),
        &["IR version 99"],
    );
    let mut m = good();
    m.ir_version = None;
    fails(
        &write(dir.path(), "ir0.onnx", &m.encode_to_vec()),
        &["IR version 0"],
    );
    let mut m = good();
    m.opset_import[0].version = Some(99);
    fails(
        &write(dir.path(), "op.onnx", &m.encode_to_vec()),
        &["opset 99"],
    );
    let mut m = good();
    m.opset_import.clear();
    fails(
        &write(dir.path(), "noop.onnx", &m.encode_to_vec()),
        &["opset"],
    );
}

#[test]
fn tensor_size_disagreeing_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(
        vec![node("add", "Add", &["x", "w"], &["y"])],
        vec![weight("w", vec![4, 4], 60)],
    );
    fails(
        &write(dir.path(), "m.onnx", &m.encode_to_vec()),
        &["'w'", "64 bytes", "60 bytes"],
    );
    // A huge declared shape with no data must not allocate.
    let m = model(
        vec![node("add", "Add", &["x", "w"], &["y"])],
        vec![weight("w", vec![1 << 40, 1 << 20], 16)],
    );
    fails(
        &write(dir.path(), "huge.onnx", &m.encode_to_vec()),
        &["'w'"],
    );
}

fn external(location: &str, offset: u64, length: u64) -> ModelProto {
    let mut w = weight("w", vec![4], 0);
    w.raw_data = None;
    w.data_location = Some(DataLocation::External as i32);
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    w.external_data = vec![
        kv("location", location.into()),
        kv("offset", offset.to_string()),
        kv("length", length.to_string()),
    ];
    model(vec![node("add", "Add", &["x", "w"], &["y"])], vec![w])
}

#[test]
fn external_data_is_confined_and_checked() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "w.bin", &[0u8; 16]);
    write(root.path(), "outside.bin", &[0u8; 16]);
    std::os::unix::fs::symlink(root.path().join("outside.bin"), dir.join("link.bin")).unwrap();

    let ok = write(&dir, "ok.onnx", &external("w.bin", 0, 16).encode_to_vec());
    let out = common::cli(&["inspect", ok.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let abs = root.path().join("outside.bin");
    let p = write(
        &dir,
        "abs.onnx",
        &external(abs.to_str().unwrap(), 0, 16).encode_to_vec(),
    );
    fails(&p, &["'w'", "absolute"]);
    let p = write(
        &dir,
        "up.onnx",
        &external("../outside.bin", 0, 16).encode_to_vec(),
    );
    fails(&p, &["'w'", "leaves the model's folder"]);
    let p = write(
        &dir,
        "link.onnx",
        &external("link.bin", 0, 16).encode_to_vec(),
    );
    fails(&p, &["'w'", "symlink"]);
    let p = write(&dir, "past.onnx", &external("w.bin", 8, 16).encode_to_vec());
    fails(&p, &["'w'", "past the end"]);
    let p = write(
        &dir,
        "huge.onnx",
        &external("w.bin", u64::MAX, 16).encode_to_vec(),
    );
    fails(&p, &["'w'", "past the end"]);
    let p = write(&dir, "size.onnx", &external("w.bin", 0, 12).encode_to_vec());
    fails(&p, &["'w'", "16 bytes", "12 bytes"]);
    let p = write(
        &dir,
        "gone.onnx",
        &external("nope.bin", 0, 16).encode_to_vec(),
    );
    fails(&p, &["'w'", "nope.bin"]);
}
