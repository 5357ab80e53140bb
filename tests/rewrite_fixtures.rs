//! The rewrite on the exported fixtures: valid ONNX (full check), runs in onnxruntime, close
//! to torch's outputs; subgraphs with outer-scope weights; fp16 models.

mod common;

use common::*;

const ALL: [&str; 6] = [
    "--min-weight-elements",
    "1",
    "--min-inner-dim",
    "1",
    "--ops",
    "MatMul,Gemm,LSTM,GRU,RNN,Gather,Conv",
];

const FIXTURES: [&str; 8] = [
    "mlp",
    "mlp_fp16",
    "word_lm",
    "word_lm_dynamo",
    "if_branch",
    "bilstm",
    "gru",
    "conv_bn_relu",
];

#[test]
fn default_policy_output_is_valid_and_close_to_torch() {
    let dir = tempfile::tempdir().unwrap();
    for f in FIXTURES {
        let out = dir.path().join(format!("{f}.onnx"));
        rewrite(&fixture(&format!("{f}.onnx")), &out, &[]);
        let v = compare(&out, &fixture(&format!("{f}.npz")), None);
        let cos = min_cos(&v);
        assert!(cos >= 0.999, "{f}: cos {cos}: {v}");
    }
}

#[test]
fn everything_quantized_output_is_valid_and_close_to_torch() {
    let dir = tempfile::tempdir().unwrap();
    for f in FIXTURES {
        let out = dir.path().join(format!("{f}.onnx"));
        let report = dir.path().join(format!("{f}.json"));
        let mut args = ALL.to_vec();
        args.extend_from_slice(&["--report", report.to_str().unwrap()]);
        rewrite(&fixture(&format!("{f}.onnx")), &out, &args);
        let v = compare(&out, &fixture(&format!("{f}.npz")), None);
        let cos = min_cos(&v);
        assert!(cos >= 0.995, "{f}: cos {cos}: {v}");
        let r = read_report(&report);
        let quantized = r["totals"]["nodes_quantized"].as_u64().unwrap();
        assert!(quantized >= 1, "{f}: nothing quantized: {r}");
        let ops = ops(&v);
        assert!(
            ops.contains(&"DynamicQuantizeLinear".to_string()) || f.starts_with("word_lm"),
            "{f}: {ops:?}"
        );
    }
}

#[test]
fn if_branches_reading_outer_weights_are_quantized_and_outer_floats_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("if.onnx");
    let report = dir.path().join("if.json");
    let mut args = ALL.to_vec();
    args.extend_from_slice(&["--report", report.to_str().unwrap()]);
    let model = fixture("if_branch.onnx");
    rewrite(&model, &out, &args);
    let r = read_report(&report);
    assert_eq!(r["totals"]["nodes_quantized"], 2, "{r}");
    for n in r["nodes"].as_array().unwrap() {
        assert!(n["scope"].as_str().unwrap().contains('/'), "{n}");
    }
    // Both branches: the sample input takes `then`, its negation takes `else`.
    let neg = dir.path().join("neg.npz");
    py(
        r#"
import sys, numpy as np
d = np.load(sys.argv[1])
np.savez(sys.argv[2], **{k: -d[k] for k in d.files if k.startswith("input.")})
"#,
        &[
            fixture("if_branch.npz").to_str().unwrap(),
            neg.to_str().unwrap(),
        ],
    );
    for feeds in [fixture("if_branch.npz"), neg] {
        let v = compare(&out, &model, Some(&feeds));
        assert!(min_cos(&v) >= 0.999, "{v}");
    }
    let inits = py(
        "import sys, onnx; print(' '.join(t.name for t in onnx.load(sys.argv[1]).graph.initializer))",
        &[out.to_str().unwrap()],
    );
    for w in ["a.weight", "b.weight"] {
        assert!(
            !inits.split_whitespace().any(|n| n == w),
            "{w} still in the main graph: {inits}"
        );
    }
}

/// An outer weight read by a quantized subgraph node and by a main-graph node left float
/// stays; one read only by quantized nodes goes.
#[test]
fn outer_weight_still_read_elsewhere_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("shared.onnx");
    py(
        r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(1)
w = nh.from_array((rng.standard_normal((64, 64)) * 0.1).astype(np.float32), "w")
v = nh.from_array((rng.standard_normal((64, 64)) * 0.1).astype(np.float32), "v")
def branch(name, weight):
    return h.make_graph([h.make_node("MatMul", ["x", weight], [name + "_y"], name=name + "_mm")], name, [],
                        [h.make_tensor_value_info(name + "_y", T.FLOAT, ["n", 64])])
nodes = [
    h.make_node("MatMul", ["x", "w"], ["kept"], name="main_mm"),
    h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
    h.make_node("Greater", ["s", "zero"], ["c"]),
    h.make_node("If", ["c"], ["y"], name="cond", then_branch=branch("t", "w"), else_branch=branch("e", "v")),
]
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 64])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["n", 64]), h.make_tensor_value_info("kept", T.FLOAT, ["n", 64])],
                 [w, v, nh.from_array(np.array(0, np.float32), "zero")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
onnx.checker.check_model(m, full_check=True)
onnx.save(m, sys.argv[1] + "/shared.onnx")
np.savez(sys.argv[1] + "/shared.npz", **{"input.x": rng.standard_normal((3, 64)).astype(np.float32)})
"#,
        &[dir.path().to_str().unwrap()],
    );
    let out = dir.path().join("q.onnx");
    let mut args = ALL.to_vec();
    args.extend_from_slice(&["--exclude", "main_mm"]);
    rewrite(&model, &out, &args);
    let v = compare(&out, &model, Some(&dir.path().join("shared.npz")));
    assert!(min_cos(&v) >= 0.999, "{v}");
    let inits = py(
        "import sys, onnx; print(' '.join(t.name for t in onnx.load(sys.argv[1]).graph.initializer))",
        &[out.to_str().unwrap()],
    );
    let inits: Vec<&str> = inits.split_whitespace().collect();
    assert!(inits.contains(&"w"), "{inits:?}");
    assert!(!inits.contains(&"v"), "{inits:?}");
}

#[test]
fn fp16_model_is_quantized_in_float32_and_keeps_fp16_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fp16.onnx");
    let report = dir.path().join("fp16.json");
    let mut args = ALL.to_vec();
    args.extend_from_slice(&["--report", report.to_str().unwrap()]);
    rewrite(&fixture("mlp_fp16.onnx"), &out, &args);
    let r = read_report(&report);
    assert_eq!(r["totals"]["nodes_quantized"], 3, "{r}");
    // compare() checks with full_check (DynamicQuantizeLinear on fp16 fails type checking)
    // and that the output dtype is still float16.
    let v = compare(&out, &fixture("mlp_fp16.npz"), None);
    assert!(min_cos(&v) >= 0.999, "{v}");
    let dql_inputs = py(
        r#"
import sys, onnx
m = onnx.shape_inference.infer_shapes(onnx.load(sys.argv[1]), strict_mode=True)
types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)}
print(" ".join(str(types.get(n.input[0])) for n in m.graph.node if n.op_type == "DynamicQuantizeLinear"))
"#,
        &[out.to_str().unwrap()],
    );
    let t: Vec<&str> = dql_inputs.split_whitespace().collect();
    assert_eq!(t.len(), 3, "{dql_inputs}");
    assert!(
        t.iter().all(|x| *x == "1"),
        "DynamicQuantizeLinear inputs must be float32: {t:?}"
    );
}

#[test]
fn dynamo_lstm_chains_are_folded_and_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dyn.onnx");
    let report = dir.path().join("dyn.json");
    rewrite(
        &fixture("word_lm_dynamo.onnx"),
        &out,
        &["--report", report.to_str().unwrap()],
    );
    let r = read_report(&report);
    let nodes = r["nodes"].as_array().unwrap();
    let lstms: Vec<_> = nodes.iter().filter(|n| n["op_type"] == "LSTM").collect();
    assert_eq!(lstms.len(), 2, "{r}");
    for n in lstms {
        assert_eq!(n["quantized"], true, "{n}");
    }
    // The decoder reads Transpose(decoder.weight): folded and quantized.
    let mm = nodes.iter().find(|n| n["op_type"] == "MatMul").unwrap();
    assert_eq!(mm["quantized"], true, "{mm}");
}

#[test]
fn dynamo_export_quantizes_as_well_as_the_torchscript_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for name in ["word_lm", "word_lm_dynamo"] {
        let out = dir.path().join(format!("{name}.q.onnx"));
        rewrite(
            &fixture(&format!("{name}.onnx")),
            &out,
            &["--external-data"],
        );
        let data = dir.path().join(format!("{name}.q.onnx.data"));
        sizes.push(std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0));
    }
    // Same weights, same quantization: the int8 payloads are within 2% of each other.
    let (a, b) = (sizes[0] as f64, sizes[1] as f64);
    assert!(
        (a - b).abs() / a < 0.02,
        "torchscript {a} vs dynamo {b} bytes of weights"
    );
}
