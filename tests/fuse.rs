//! The fusion passes on every fixture: the built-in runtime computes the same outputs before
//! and after (1e-5 relative to each output's largest magnitude), the fused file passes
//! `onnx.checker.check_model(full_check=True)` and runs in onnxruntime close to torch's
//! stored outputs; and the `fuse` command and `rewrite --no-fuse` do what they say.

mod common;

use std::collections::HashMap;
use std::path::Path;

use onnx_dynq::model::SaveOptions;
use onnx_dynq::passes::fuse::fuse;
use onnx_dynq::runtime::{Options, Session, Value};

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::F32(a) => a.iter().map(|&x| x as f64).collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
        Value::F64(a) => a.iter().copied().collect(),
        other => panic!("unexpected output type {:?}", other.dtype()),
    }
}

fn run(model: &onnx_dynq::Model, feeds: &HashMap<String, Value>) -> Vec<(String, Value)> {
    Session::new(model, &Options::with_threads(1))
        .unwrap()
        .run(feeds.clone())
        .unwrap()
}

fn feeds(model: &Path) -> HashMap<String, Value> {
    onnx_dynq::npy::read_npz(&model.with_extension("npz"))
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("input.").map(|n| (n.to_string(), v)))
        .collect()
}

#[test]
fn fused_fixtures_compute_the_same_outputs_and_are_valid_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let mut fired_total = 0;
    for f in common::fixture_models() {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let before = onnx_dynq::load(&f).unwrap();
        let mut after = before.clone();
        let report = fuse(&mut after).unwrap();
        fired_total += report.total();
        let feeds = feeds(&f);
        let (a, b) = (run(&before, &feeds), run(&after, &feeds));
        assert_eq!(a.len(), b.len(), "{name}");
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb, "{name}");
            assert_eq!(va.shape(), vb.shape(), "{name}: {na}");
            assert_eq!(va.dtype(), vb.dtype(), "{name}: {na}");
            let (x, y) = (floats(va), floats(vb));
            let scale = x.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            let diff = x
                .iter()
                .zip(&y)
                .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{name}: output {na} changed by {diff} (largest magnitude {scale})"
            );
        }
        let dst = dir.path().join(f.file_name().unwrap());
        onnx_dynq::model::save(&after, &dst, &SaveOptions::default()).unwrap();
        let cmp = common::compare(&dst, &f.with_extension("npz"), None);
        let tol = if name.contains("fp16") { 1e-2 } else { 1e-4 };
        for (out, m) in cmp["outputs"].as_object().unwrap() {
            let d = m["max_abs"].as_f64().unwrap();
            assert!(
                d < tol,
                "{name}: onnxruntime output {out} is {d} from torch"
            );
        }
    }
    assert!(fired_total > 0);
}

#[test]
fn conv_bn_relu_fixture_loses_its_batchnorms() {
    let mut m = onnx_dynq::load(common::fixture("conv_bn_relu.onnx")).unwrap();
    let r = fuse(&mut m).unwrap();
    let fired: HashMap<&str, usize> = r
        .passes
        .iter()
        .map(|p| (p.pass.as_str(), p.fired))
        .collect();
    assert_eq!(fired["conv_batchnorm"], 2);
    let ops: Vec<&str> = m.graph.nodes.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Conv", "Relu", "Conv", "Relu"]);
}

#[test]
fn word_lm_bias_add_follows_the_quantized_product() {
    // After fusion and the rewrite, the decoder's bias Add reads the rescale Mul's output
    // first and a 1-D bias second, and writes the model output.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    common::rewrite(
        &common::fixture("word_lm.onnx"),
        &out,
        &[
            "--report",
            report.to_str().unwrap(),
            "--min-weight-elements",
            "1000",
            "--min-inner-dim",
            "8",
        ],
    );
    let m = onnx_dynq::load(&out).unwrap();
    let g = &m.graph;
    let add = g
        .nodes
        .iter()
        .find(|n| n.outputs() == ["logits"])
        .expect("a node writes logits");
    assert_eq!(add.op_type(), "Add");
    let producers = g.producers();
    let (p, _) = producers[add.input(0).unwrap()];
    assert_eq!(g.nodes[p].op_type(), "Mul");
    assert_eq!(
        g.initializer(add.input(1).unwrap()).unwrap().dims().len(),
        1
    );
    let r = common::read_report(&report);
    let units: Vec<&str> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["unit"].as_str())
        .collect();
    assert_eq!(units, ["Linear+bias"]);
    let fired = &r["fusion"]["passes"];
    assert!(
        fired
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pass"] == "matmul_add" && p["fired"] == 1)
    );
}

#[test]
fn fuse_command_writes_a_fused_model_and_protects_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("conv_bn_relu.onnx");
    let out = dir.path().join("fused.onnx");
    let rep = dir.path().join("fuse.json");
    let o = common::cli(&[
        "fuse",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("conv_batchnorm 2"), "{text}");
    let m = onnx_dynq::load(&out).unwrap();
    assert!(
        m.graph
            .nodes
            .iter()
            .all(|n| n.op_type() != "BatchNormalization")
    );
    let r = common::read_report(&rep);
    assert!(
        r["passes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pass"] == "conv_batchnorm" && p["fired"] == 2)
    );
    let o = common::cli(&["fuse", src.to_str().unwrap(), src.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
}

#[test]
fn rewrite_fuses_by_default_and_not_with_no_fuse() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("conv_bn_relu.onnx");
    let count_bn = |p: &Path| {
        let m = onnx_dynq::load(p).unwrap();
        m.graph
            .nodes
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization")
            .count()
    };
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    let rep = dir.path().join("a.json");
    let out = common::rewrite(&src, &a, &["--report", rep.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fused: conv_batchnorm 2"));
    assert_eq!(count_bn(&a), 0);
    assert!(common::read_report(&rep)["fusion"].is_object());
    let rep = dir.path().join("b.json");
    let out = common::rewrite(&src, &b, &["--no-fuse", "--report", rep.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("fused:"));
    assert_eq!(count_bn(&b), 2);
    assert!(common::read_report(&rep).get("fusion").is_none());
}

#[test]
fn inspect_shows_fire_counts() {
    let src = common::fixture("conv_bn_relu.onnx");
    let o = common::cli(&["inspect", "--json", src.to_str().unwrap()]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = v["fusion"]["passes"].as_array().unwrap();
    assert!(
        p.iter()
            .any(|p| p["pass"] == "conv_batchnorm" && p["fired"] == 2)
    );
    let o = common::cli(&["inspect", src.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("fusion passes"), "{text}");
    // inspect does not change the op histogram: it reports the model as stored.
    assert_eq!(v["op_histogram"]["BatchNormalization"], 2);
}
