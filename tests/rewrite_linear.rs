//! MatMul and Gemm rewrites against onnxruntime: every Gemm attribute combination (transA,
//! transB, alpha, beta, each shape of C), MatMul with batch dims, every weight option, node
//! names kept, and `--exclude` by the original name.

mod common;

use std::path::Path;

use common::*;

/// Writes linear.onnx (16 Gemms + 3 MatMuls, one output each) and linear.npz (inputs).
const MAKE_LINEAR: &str = r#"
import sys, itertools, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out = sys.argv[1]
rng = np.random.default_rng(0)
M, K, N = 4, 96, 80
nodes, inits, outs = [], [], []
inputs = [h.make_tensor_value_info("a", T.FLOAT, [M, K]), h.make_tensor_value_info("at", T.FLOAT, [K, M]),
          h.make_tensor_value_info("x3", T.FLOAT, ["b", "s", K]), h.make_tensor_value_info("x1", T.FLOAT, [K])]
feeds = {"a": rng.standard_normal((M, K)), "at": rng.standard_normal((K, M)),
         "x3": rng.standard_normal((2, 3, K)), "x1": rng.standard_normal(K)}
cshapes = [None, [N], [1, N], [M, N], []]
i = 0
for ta, tb, alpha, beta in itertools.product([0, 1], [0, 1], [1.0, 0.5], [1.0, -2.0]):
    cs = cshapes[i % len(cshapes)]
    w = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32) * 0.1
    inits.append(nh.from_array(w, f"w{i}"))
    ins = ["at" if ta else "a", f"w{i}"]
    if cs is not None:
        inits.append(nh.from_array(rng.standard_normal(cs).astype(np.float32), f"c{i}"))
        ins.append(f"c{i}")
    nodes.append(h.make_node("Gemm", ins, [f"y{i}"], name=f"gemm_{i}", transA=ta, transB=tb, alpha=alpha, beta=beta))
    outs.append(h.make_tensor_value_info(f"y{i}", T.FLOAT, [M, N]))
    i += 1
for j, (x, shape) in enumerate([("x3", ["b", "s", N]), ("x1", [N]), ("a", [M, N])]):
    inits.append(nh.from_array((rng.standard_normal((K, N)) * 0.1).astype(np.float32), f"mw{j}"))
    nodes.append(h.make_node("MatMul", [x, f"mw{j}"], [f"m{j}"], name=f"matmul_{j}"))
    outs.append(h.make_tensor_value_info(f"m{j}", T.FLOAT, shape))
g = h.make_graph(nodes, "linear", inputs, outs, inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
onnx.checker.check_model(m, full_check=True)
onnx.save(m, out + "/linear.onnx")
np.savez(out + "/linear.npz", **{"input." + k: v.astype(np.float32) for k, v in feeds.items()})
"#;

/// Prints `name op_type` of the node writing each graph output.
const WRITERS: &str = r#"
import sys, onnx
m = onnx.load(sys.argv[1])
by_out = {o: n for n in m.graph.node for o in n.output}
for o in m.graph.output:
    n = by_out[o.name]
    print(o.name, n.name, n.op_type)
"#;

fn make(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    py(MAKE_LINEAR, &[dir.to_str().unwrap()]);
    (dir.join("linear.onnx"), dir.join("linear.npz"))
}

const ALL: [&str; 4] = ["--min-weight-elements", "1", "--min-inner-dim", "1"];

#[test]
fn every_gemm_form_and_matmul_rank_matches_float() {
    let dir = tempfile::tempdir().unwrap();
    let (model, feeds) = make(dir.path());
    let option_sets: [&[&str]; 5] = [
        &[],
        &["--per-channel"],
        &["--weight-type", "uint8"],
        &["--asymmetric", "--per-channel"],
        &["--reduce-range", "--weight-type", "uint8", "--symmetric"],
    ];
    for (k, extra) in option_sets.iter().enumerate() {
        let out = dir.path().join(format!("q{k}.onnx"));
        let report = dir.path().join(format!("q{k}.json"));
        let mut args: Vec<&str> = ALL.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--report", report.to_str().unwrap()]);
        rewrite(&model, &out, &args);
        let r = read_report(&report);
        assert_eq!(r["totals"]["nodes_quantized"], 19, "{extra:?}: {r}");
        let v = compare(&out, &model, Some(&feeds));
        let ops = ops(&v);
        assert!(!ops.contains(&"Gemm".to_string()), "{extra:?}: {ops:?}");
        assert!(!ops.contains(&"MatMul".to_string()), "{extra:?}: {ops:?}");
        for (name, o) in v["outputs"].as_object().unwrap() {
            let cos = o["cos"].as_f64().unwrap();
            // 7-bit weights lose about one bit.
            let bar = if extra.contains(&"--reduce-range") {
                0.999
            } else {
                0.9995
            };
            assert!(cos >= bar, "{extra:?}: output {name}: cos {cos} ({o})");
        }
    }
}

#[test]
fn the_node_writing_the_output_keeps_the_original_name_and_exclude_works() {
    let dir = tempfile::tempdir().unwrap();
    let (model, feeds) = make(dir.path());
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("q.json");
    let mut args: Vec<&str> = ALL.to_vec();
    args.extend_from_slice(&["--exclude", "gemm_3", "--report", report.to_str().unwrap()]);
    rewrite(&model, &out, &args);
    let writers = py(WRITERS, &[out.to_str().unwrap()]);
    for line in writers.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (output, name, op) = (f[0], f[1], f[2]);
        if let Some(i) = output.strip_prefix('y') {
            assert_eq!(name, format!("gemm_{i}"), "{line}");
            if i == "3" {
                assert_eq!(op, "Gemm", "excluded node must stay: {line}");
            } else {
                assert!(op == "Add" || op == "Mul", "{line}");
            }
        } else {
            let j = output.strip_prefix('m').unwrap();
            assert_eq!(name, format!("matmul_{j}"), "{line}");
        }
    }
    let r = read_report(&report);
    let g3 = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "gemm_3")
        .unwrap();
    assert_eq!(g3["quantized"], false);
    assert!(g3["reason"].as_str().unwrap().contains("--exclude"), "{g3}");
    assert_eq!(g3["weight_bytes_before"], g3["weight_bytes_after"]);
    assert!(min_cos(&compare(&out, &model, Some(&feeds))) > 0.999);
}

/// What onnxruntime makes of the rewrite at load: the MatMulInteger chains must fuse into
/// DynamicQuantizeMatMul (bias included), else the output is slower than it needs to be.
#[test]
fn onnxruntime_fuses_the_emitted_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.onnx");
    rewrite(&fixture("mlp.onnx"), &out, &ALL);
    let opt = dir.path().join("opt.onnx");
    let ops = py(
        r#"
import sys, onnxruntime as ort
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
so.optimized_model_filepath = sys.argv[2]
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
import onnx
print(" ".join(n.op_type for n in onnx.load(sys.argv[2]).graph.node))
"#,
        &[out.to_str().unwrap(), opt.to_str().unwrap()],
    );
    let ops: Vec<&str> = ops.split_whitespace().collect();
    assert_eq!(
        ops.iter()
            .filter(|o| **o == "DynamicQuantizeMatMul")
            .count(),
        3,
        "{ops:?}"
    );
    assert!(
        !ops.iter()
            .any(|o| ["MatMulInteger", "Add", "Cast"].contains(o)),
        "{ops:?}"
    );
}
