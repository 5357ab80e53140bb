//! The fusion passes on every fixture: the built-in runtime computes the same outputs before
//! and after (1e-5 relative to each output's largest magnitude), the fused file passes
//! `onnx.checker.check_model(full_check=True)` and runs in onnxruntime close to torch's
//! stored outputs; and the `fuse` command and `rewrite --no-fuse` do what they say.

mod common;

use std::collections::HashMap;
use std::path::Path;

use onnx_dynq::model::SaveOptions;
use onnx_dynq::passes::fuse::{FuseOptions, PASSES, fuse, fuse_with};
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

/// Asserts that every output of `after` equals the one of `before` within 1e-5 of its largest
/// magnitude.
fn assert_same_outputs(what: &str, a: &[(String, Value)], b: &[(String, Value)]) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}");
        assert_eq!(va.shape(), vb.shape(), "{what}: {na}");
        assert_eq!(va.dtype(), vb.dtype(), "{what}: {na}");
        let (x, y) = (floats(va), floats(vb));
        let scale = x.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(&y)
            .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{what}: output {na} changed by {diff} (largest magnitude {scale})"
        );
    }
}

/// Each pass on its own keeps every fixture's outputs (the test below runs them together).
#[test]
fn each_pass_alone_keeps_every_fixture_output() {
    let mut fired = std::collections::BTreeMap::new();
    for f in common::fixture_models() {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let before = onnx_dynq::load(&f).unwrap();
        let feeds = feeds(&f);
        let want = run(&before, &feeds);
        for pass in PASSES {
            let mut after = before.clone();
            let options = FuseOptions {
                only: Some(pass.name),
                ..Default::default()
            };
            let report = fuse_with(&mut after, options).unwrap();
            *fired.entry(pass.name).or_insert(0) += report.total();
            assert_same_outputs(
                &format!("{name} after {}", pass.name),
                &want,
                &run(&after, &feeds),
            );
        }
    }
    // The fixtures exercise the passes they were exported with (not every pass: the unit
    // tests cover the rest).
    for pass in [
        "fold_constants",
        "conv_batchnorm",
        "matmul_add",
        "transpose_weight",
    ] {
        assert!(
            fired[pass] > 0,
            "{pass} never fired on the fixtures: {fired:?}"
        );
    }
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
        assert_same_outputs(&name, &run(&before, &feeds), &run(&after, &feeds));
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

/// Writes a noisy model (argv: path, opset) with one instance of everything the passes fold:
/// Identity, Dropout, MatMul + Add(bias first) in 2-D and 3-D, Transpose of a weight, Clip as
/// ReLU and as ReLU6, Conv (grouped, no bias) + BatchNormalization + Add, a cancelling Transpose
/// pair, Unsqueeze + Squeeze, Flatten + Reshape, a Shape -> Gather chain on a known dim, and
/// (opset 11+) a Gemm without C followed by a bias Add.
const NOISY_PY: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out, opset = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
def init(name, a): return nh.from_array(np.asarray(a), name)
inits = [
    init("w1", rng.standard_normal((8, 6)).astype(np.float32)),
    init("b1", rng.standard_normal((6,)).astype(np.float32)),
    init("w2t", rng.standard_normal((5, 6)).astype(np.float32)),
    init("b2", rng.standard_normal((1, 1, 5)).astype(np.float32)),
    init("zero", np.array(0, np.float32)), init("six", np.array(6, np.float32)),
    init("cw", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
    init("s", rng.standard_normal((4,)).astype(np.float32)),
    init("bb", rng.standard_normal((4,)).astype(np.float32)),
    init("mean", rng.standard_normal((4,)).astype(np.float32)),
    init("var", (rng.random((4,)) + 0.5).astype(np.float32)),
    init("cadd", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)),
    init("i1", np.array(1, np.int64)), init("ax0", np.array([0], np.int64)),
    init("ax1", np.array([1], np.int64)), init("shp", np.array([-1, 16], np.int64)),
]
def unsq(x, y, axes):
    if opset >= 13: return h.make_node("Unsqueeze", [x, axes], [y])
    return h.make_node("Unsqueeze", [x], [y], axes=[int(nh.to_array([i for i in inits if i.name == axes][0])[0])])
def sq(x, y, axes):
    if opset >= 13: return h.make_node("Squeeze", [x, axes], [y])
    return h.make_node("Squeeze", [x], [y], axes=[int(nh.to_array([i for i in inits if i.name == axes][0])[0])])
clip = (h.make_node("Clip", ["g1", "zero"], ["r1"]) if opset >= 11 else h.make_node("Clip", ["g1"], ["r1"], min=0.0))
nodes = [
    # 2-D Linear: Identity, MatMul + Add(bias first), Clip(min 0) -> Gemm + Relu
    h.make_node("Identity", ["x"], ["xi"]),
    h.make_node("MatMul", ["xi", "w1"], ["m1"]),
    h.make_node("Add", ["b1", "m1"], ["g1"]),
    clip,
    h.make_node("Dropout", ["r1"], ["d1"]),
    # 3-D Linear: Unsqueeze, Transpose(W) -> MatMul, Add([1,1,N]) , ReLU6
    unsq("d1", "u1", "ax0"),
    h.make_node("Transpose", ["w2t"], ["w2"], perm=[1, 0]),
    h.make_node("MatMul", ["u1", "w2"], ["m2"]),
    h.make_node("Add", ["m2", "b2"], ["a2"]),
    (h.make_node("Clip", ["a2", "zero", "six"], ["y1"]) if opset >= 11 else h.make_node("Clip", ["a2"], ["y1"], min=0.0, max=6.0)),
    # Conv (no bias, 2 groups) + BN, then Transpose pair and a Reshape chain
    h.make_node("Conv", ["img", "cw"], ["c"], group=2, pads=[1, 1, 1, 1]),
    h.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["bn"], epsilon=1e-3),
    h.make_node("Add", ["cadd", "bn"], ["bna"]),
    h.make_node("Transpose", ["bna"], ["t1"], perm=[0, 2, 3, 1]),
    h.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
    unsq("t2", "t3", "ax1"),
    sq("t3", "t4", "ax1"),
    h.make_node("Flatten", ["t4"], ["f"]),
    h.make_node("Reshape", ["f", "shp"], ["y2"]),
    # Shape chain with a symbolic batch: Gather(Shape(x), 1) is known
    h.make_node("Shape", ["x"], ["sh"]),
    h.make_node("Gather", ["sh", "i1"], ["k"]),
    unsq("k", "ku", "ax0"),
    h.make_node("Cast", ["ku"], ["y3"], to=T.INT64),
]
outs = [h.make_tensor_value_info("y1", T.FLOAT, None), h.make_tensor_value_info("y2", T.FLOAT, None), h.make_tensor_value_info("y3", T.INT64, None)]
if opset >= 11:
    # Gemm without C (optional from opset 11) + Add of a [1, N] bias
    inits += [init("w3", rng.standard_normal((3, 8)).astype(np.float32)), init("b3", rng.standard_normal((1, 3)).astype(np.float32))]
    nodes += [h.make_node("Gemm", ["x", "w3"], ["g3"], transB=1, alpha=0.5, beta=2.0), h.make_node("Add", ["g3", "b3"], ["y4"])]
    outs.append(h.make_tensor_value_info("y4", T.FLOAT, None))
g = h.make_graph(nodes, "noisy",
    [h.make_tensor_value_info("x", T.FLOAT, ["N", 8]), h.make_tensor_value_info("img", T.FLOAT, [1, 2, 4, 4])],
    outs,
    inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
m.ir_version = 7
m = onnx.shape_inference.infer_shapes(m)
onnx.checker.check_model(m, full_check=True)
onnx.save(m, out)
print("ok")
"#;

/// Checks the fused model (argv[2]) fully, compares it with the original (argv[1]) in
/// onnxruntime (no graph optimizations) to 1e-5 relative, and prints its op types as JSON.
const SAME_IN_ORT_PY: &str = r#"
import json, sys, numpy as np, onnx, onnxruntime as ort
a, b = sys.argv[1], sys.argv[2]
onnx.checker.check_model(b, full_check=True)
m = onnx.load(b)
print(json.dumps([n.op_type for n in m.graph.node]))
rng = np.random.default_rng(1)
feeds = {"x": rng.standard_normal((3, 8)).astype(np.float32), "img": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)}
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
ra = ort.InferenceSession(a, so, providers=["CPUExecutionProvider"]).run(None, feeds)
rb = ort.InferenceSession(b, so, providers=["CPUExecutionProvider"]).run(None, feeds)
for x, y in zip(ra, rb):
    assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape)
    d = float(np.abs(x.astype(np.float64) - y).max()); s = float(np.abs(x).max())
    assert d <= 1e-5 * max(s, 1e-12), (d, s)
"#;

#[test]
fn noisy_models_fuse_into_valid_onnx_that_onnxruntime_runs_the_same() {
    let dir = tempfile::tempdir().unwrap();
    // Before opset 11 Gemm's C is required and Clip takes attributes: the 2-D Linear stays
    // MatMul + Add (bias second), Clip(min 0) still becomes Relu.
    let before_11 = [
        "MatMul",
        "Add",
        "Relu",
        "Unsqueeze",
        "MatMul",
        "Add",
        "Clip",
        "Conv",
        "Reshape",
    ];
    let from_11 = [
        "Gemm",
        "Relu",
        "Unsqueeze",
        "MatMul",
        "Add",
        "Clip",
        "Conv",
        "Reshape",
        "Gemm",
    ];
    for opset in ["10", "11", "13", "17"] {
        let src = dir.path().join(format!("noisy{opset}.onnx"));
        let dst = dir.path().join(format!("fused{opset}.onnx"));
        common::py(NOISY_PY, &[src.to_str().unwrap(), opset]);
        let o = common::cli(&["fuse", src.to_str().unwrap(), dst.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = common::py(
            SAME_IN_ORT_PY,
            &[src.to_str().unwrap(), dst.to_str().unwrap()],
        );
        let ops: Vec<String> = serde_json::from_str(out.trim()).unwrap();
        let want: &[&str] = if opset == "10" { &before_11 } else { &from_11 };
        assert_eq!(ops, want, "opset {opset}");
        let text = String::from_utf8_lossy(&o.stdout);
        let units = if opset == "10" {
            "2 Linear unit(s), 2 with bias, 2 with activation"
        } else {
            "3 Linear unit(s), 3 with bias, 2 with activation"
        };
        assert!(text.contains(units), "{text}");
    }
}

#[test]
fn fuse_output_is_byte_identical_across_runs_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("word_lm_dynamo.onnx");
    let mut files = Vec::new();
    for k in 0..2 {
        let sub = dir.path().join(format!("run{k}"));
        std::fs::create_dir(&sub).unwrap();
        let out = sub.join("fused.onnx");
        let o = common::cli(&["fuse", src.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut bytes = std::fs::read(&out).unwrap();
        if let Ok(d) = std::fs::read(sub.join("fused.onnx.data")) {
            bytes.extend(d);
        }
        files.push(bytes);
    }
    assert!(files[0] == files[1]);
}

#[test]
fn quantized_linear_relu_units_end_in_bias_then_activation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let o = common::rewrite(
        &common::fixture("mlp.onnx"),
        &out,
        &[
            "--report",
            report.to_str().unwrap(),
            "--min-weight-elements",
            "1",
            "--min-inner-dim",
            "1",
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("3 Linear unit(s) (2 with activation)"),
        "{stdout}"
    );
    let r = common::read_report(&report);
    let units: Vec<&str> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["unit"].as_str())
        .collect();
    assert_eq!(
        units,
        ["Linear+bias+Relu", "Linear+bias+Relu", "Linear+bias"]
    );
    // Each Relu reads the bias Add, which reads the rescale Mul of the Cast int32 product.
    let m = onnx_dynq::load(&out).unwrap();
    let g = &m.graph;
    let producers = g.producers();
    let op_of = |v: &str| g.nodes[producers[v].0].op_type().to_string();
    let relus: Vec<_> = g.nodes.iter().filter(|n| n.op_type() == "Relu").collect();
    assert_eq!(relus.len(), 2);
    for relu in relus {
        let add = &g.nodes[producers[relu.input(0).unwrap()].0];
        assert_eq!(add.op_type(), "Add");
        assert_eq!(op_of(add.input(0).unwrap()), "Mul");
        let mul = &g.nodes[producers[add.input(0).unwrap()].0];
        assert_eq!(op_of(mul.input(0).unwrap()), "Cast");
    }
}
