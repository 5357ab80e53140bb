//! An unmodified load -> save is lossless: decoded protos are equal, and the saved file passes
//! `onnx.checker.check_model(full_check=True)` and gives identical outputs in onnxruntime.

mod common;

use std::path::Path;

use onnx_dynq::model::{ExternalDataMode, SaveOptions};
use onnx_dynq::onnx::{GraphProto, ModelProto, TensorProto};

const CHECK: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
src, dst, npz = sys.argv[1], sys.argv[2], sys.argv[3]
from onnx.external_data_helper import _get_all_tensors
def norm(m):
    # DEFAULT set explicitly (as onnx.load does after reading external data) equals unset.
    for t in _get_all_tensors(m):
        if t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")
    return m
a, b = norm(onnx.load(src)), norm(onnx.load(dst))
assert a == b, "decoded protos differ after load -> save"
onnx.checker.check_model(dst, full_check=True)
data = np.load(npz)
feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
so = ort.SessionOptions(); so.intra_op_num_threads = 1
ra = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)
rb = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"]).run(None, feeds)
for x, y in zip(ra, rb):
    assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), "outputs differ"
print("ok", len(ra))
"#;

/// Clears `data_location` where it is DEFAULT: set or unset, it means the same.
fn normalized(mut m: ModelProto) -> ModelProto {
    fn tensor(t: &mut TensorProto) {
        if t.data_location == Some(0) {
            t.data_location = None;
        }
    }
    fn graph(g: &mut GraphProto) {
        g.initializer.iter_mut().for_each(tensor);
        for n in &mut g.node {
            for a in &mut n.attribute {
                a.t.iter_mut().for_each(tensor);
                a.tensors.iter_mut().for_each(tensor);
                a.g.iter_mut().for_each(graph);
                a.graphs.iter_mut().for_each(graph);
            }
        }
    }
    m.graph.iter_mut().for_each(graph);
    m
}

fn round_trip(src: &Path, mode: ExternalDataMode) {
    let model = onnx_dynq::load(src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(src.file_name().unwrap());
    let opts = SaveOptions {
        external_data: mode,
        protect: vec![src.to_path_buf()],
        ..Default::default()
    };
    onnx_dynq::model::save(&model, &dst, &opts).unwrap();
    // Our own decoder sees the same model again.
    let again = onnx_dynq::load(&dst).unwrap();
    assert!(
        normalized(model.to_proto()) == normalized(again.to_proto()),
        "decoded protos differ: {}",
        src.display()
    );
    let npz = src.with_extension("npz");
    let out = common::run_python(CHECK, &[src, &dst, &npz]);
    assert!(out.starts_with("ok"), "{out}");
}

#[test]
fn every_fixture_round_trips_inline() {
    for f in common::fixture_models() {
        round_trip(&f, ExternalDataMode::Never);
    }
}

#[test]
fn inline_fixtures_re_encode_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for f in common::fixture_models() {
        let model = onnx_dynq::load(&f).unwrap();
        if !model.external_files.is_empty() {
            continue;
        }
        let dst = dir.path().join("m.onnx");
        onnx_dynq::model::save(&model, &dst, &SaveOptions::default()).unwrap();
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&dst).unwrap(),
            "{}",
            f.display()
        );
    }
}

#[test]
fn every_fixture_round_trips_with_external_data() {
    for f in common::fixture_models() {
        round_trip(&f, ExternalDataMode::Always);
    }
}

#[test]
fn external_data_input_keeps_external_data_by_default() {
    let src = common::fixture("word_lm_dynamo.onnx");
    let model = onnx_dynq::load(&src).unwrap();
    assert_eq!(model.external_files.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("copy.onnx");
    let saved = onnx_dynq::model::save(&model, &dst, &SaveOptions::default()).unwrap();
    assert_eq!(
        saved.external_file.as_deref(),
        Some(dir.path().join("copy.onnx.data").as_path())
    );
    assert!(saved.external_bytes > 500_000, "{saved:?}");
    round_trip(&src, ExternalDataMode::Auto);
}

#[test]
fn saving_over_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    std::fs::copy(common::fixture("mlp.onnx"), &src).unwrap();
    let before = std::fs::read(&src).unwrap();
    let model = onnx_dynq::load(&src).unwrap();
    let opts = SaveOptions {
        protect: vec![src.clone()],
        ..Default::default()
    };
    let err = onnx_dynq::model::save(&model, &src, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&src).unwrap(), before);
}

#[test]
fn failed_save_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_dynq::load(common::fixture("mlp.onnx")).unwrap();
    // The destination is a directory: the rename fails after the temp file was written.
    let dst = dir.path().join("out.onnx");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("keep"), b"x").unwrap();
    assert!(onnx_dynq::model::save(&model, &dst, &SaveOptions::default()).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("out.onnx")],
        "temp files left behind"
    );
}

#[test]
fn saving_is_deterministic() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for f in common::fixture_models() {
        let (a, b) = (da.path().join("m.onnx"), db.path().join("m.onnx"));
        onnx_dynq::model::save(&onnx_dynq::load(&f).unwrap(), &a, &SaveOptions::default()).unwrap();
        onnx_dynq::model::save(&onnx_dynq::load(&f).unwrap(), &b, &SaveOptions::default()).unwrap();
        for name in ["m.onnx", "m.onnx.data"] {
            let (x, y) = (
                std::fs::read(da.path().join(name)).ok(),
                std::fs::read(db.path().join(name)).ok(),
            );
            assert!(
                x == y,
                "{} differs between two saves of {}",
                name,
                f.display()
            );
        }
    }
}
