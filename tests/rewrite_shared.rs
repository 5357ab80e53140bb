//! Weights read by more than one node: the quantized weight is stored once and shared, and a
//! weight also read by a node left float keeps its float copy. Every output passes
//! `check_model(full_check=True)` and agrees with the float model in onnxruntime.

mod common;

use std::path::Path;

use common::*;

/// Writes three models into argv[1]:
/// - twice.onnx: `y1 = a @ W`, `y2 = b @ W` (one weight, two MatMuls), plus `y3 = a @ V`
///   where V is a different weight;
/// - tied.onnx: a tied embedding LM head: `e = Gather(W, ids)`, `y = e @ Transpose(W)`
///   (with a small random Linear in between so the product is not trivial);
/// - gemm_tied.onnx: `e = Gather(W, ids)`, `y = Gemm(e, W, transB=1)`;
///
/// and feeds.npz with inputs for all of them.
const MAKE: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out = sys.argv[1]
rng = np.random.default_rng(3)
M, K, N, V, D = 5, 64, 48, 300, 32
W = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
Vw = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
g = h.make_graph(
    [h.make_node("MatMul", ["a", "W"], ["y1"], name="mm1"),
     h.make_node("MatMul", ["b", "W"], ["y2"], name="mm2"),
     h.make_node("MatMul", ["a", "V"], ["y3"], name="mm3")],
    "twice",
    [h.make_tensor_value_info("a", T.FLOAT, [M, K]), h.make_tensor_value_info("b", T.FLOAT, [M, K])],
    [h.make_tensor_value_info(y, T.FLOAT, [M, N]) for y in ("y1", "y2", "y3")],
    [nh.from_array(W, "W"), nh.from_array(Vw, "V")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
onnx.checker.check_model(m, full_check=True)
onnx.save(m, out + "/twice.onnx")

E = (rng.standard_normal((V, D)) * 0.5).astype(np.float32)
L = (rng.standard_normal((D, D)) * 0.3).astype(np.float32)
ids = h.make_tensor_value_info("ids", T.INT64, [2, 7])
for name, head in (
    ("tied", [h.make_node("Transpose", ["E"], ["Et"], name="tr", perm=[1, 0]),
              h.make_node("MatMul", ["hdn", "Et"], ["y"], name="head")]),
    ("gemm_tied", [h.make_node("Reshape", ["hdn", "shape"], ["hdn2"], name="flat"),
                   h.make_node("Gemm", ["hdn2", "E"], ["y"], name="head", transB=1)]),
):
    inits = [nh.from_array(E, "E"), nh.from_array(L, "L")]
    shape = [2, 7, V]
    if name == "gemm_tied":
        inits.append(nh.from_array(np.array([14, D], np.int64), "shape"))
        shape = [14, V]
    g = h.make_graph(
        [h.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
         h.make_node("MatMul", ["emb", "L"], ["hdn"], name="mix")] + head,
        name, [ids], [h.make_tensor_value_info("y", T.FLOAT, shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, out + f"/{name}.onnx")
np.savez(out + "/feeds.npz", **{"input.a": rng.standard_normal((M, K)).astype(np.float32),
                                "input.b": rng.standard_normal((M, K)).astype(np.float32),
                                "input.ids": rng.integers(-V, V, (2, 7)).astype(np.int64)})
"#;

/// Checks the model, compares it with the float model in onnxruntime on the feeds it takes,
/// and prints `cos min` then one line per initializer: `name dtype dims`.
const CHECK: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
q_path, f_path, feeds_path = sys.argv[1:4]
onnx.checker.check_model(q_path, full_check=True)
so = ort.SessionOptions(); so.intra_op_num_threads = 1
q = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
f = ort.InferenceSession(f_path, so, providers=["CPUExecutionProvider"])
d = np.load(feeds_path)
feeds = {i.name: d["input." + i.name] for i in f.get_inputs()}
cos = 1.0
for w, g in zip(f.run(None, feeds), q.run(None, feeds)):
    w = w.astype(np.float64).ravel(); g = g.astype(np.float64).ravel()
    cos = min(cos, float(w @ g / (np.linalg.norm(w) * np.linalg.norm(g))))
print("cos", cos)
m = onnx.load(q_path)
for t in m.graph.initializer:
    print(t.name, onnx.TensorProto.DataType.Name(t.data_type), "x".join(map(str, t.dims)) or "scalar")
"#;

struct Checked {
    cos: f64,
    /// (name, dtype, dims) of each initializer.
    inits: Vec<(String, String, String)>,
}

impl Checked {
    fn count(&self, dtype: &str, dims: &str) -> usize {
        self.inits
            .iter()
            .filter(|(_, t, d)| t == dtype && d == dims)
            .count()
    }

    fn has(&self, name: &str) -> bool {
        self.inits.iter().any(|(n, _, _)| n == name)
    }
}

fn check(q: &Path, f: &Path, feeds: &Path) -> Checked {
    let out = py(
        CHECK,
        &[
            q.to_str().unwrap(),
            f.to_str().unwrap(),
            feeds.to_str().unwrap(),
        ],
    );
    let mut lines = out.lines();
    let cos = lines
        .next()
        .and_then(|l| l.strip_prefix("cos "))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("unexpected checker output: {out}"));
    let inits = lines
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (v[0].to_string(), v[1].to_string(), v[2].to_string())
        })
        .collect();
    // Where onnxruntime's u8 x s8 products saturate, the cosine is the ONNX definition's
    // (see `common::compare`).
    let cos = if ort_saturates_u8s8() {
        min_cos(&compare(q, f, Some(feeds)))
    } else {
        cos
    };
    Checked { cos, inits }
}

/// Every node, int8 weights (the sharing of int8 forms is what these tests count).
const ALL: [&str; 6] = [
    "--min-weight-elements",
    "1",
    "--min-inner-dim",
    "1",
    "--weight-type",
    "int8",
];

/// Bytes of the initializers `check` listed.
fn init_bytes(c: &Checked) -> u64 {
    c.inits
        .iter()
        .map(|(_, dtype, dims)| {
            let n: u64 = match dims.as_str() {
                "scalar" => 1,
                d => d.split('x').map(|d| d.parse::<u64>().unwrap()).product(),
            };
            n * if dtype == "FLOAT" { 4 } else { 1 }
        })
        .sum()
}

/// The report's totals count each tensor once, however many nodes read it: before, the
/// input's float weights (`float_bytes`); after, exactly the output's initializers.
fn check_totals(report: &Path, float_bytes: u64, c: &Checked) {
    let t = &read_report(report)["totals"];
    assert_eq!(t["weight_bytes_before"].as_u64(), Some(float_bytes), "{t}");
    assert_eq!(
        t["weight_bytes_after"].as_u64(),
        Some(init_bytes(c)),
        "{t} vs {:?}",
        c.inits
    );
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn two_matmuls_on_one_weight_share_its_quantized_copy() {
    let dir = tempfile::tempdir().unwrap();
    py(MAKE, &[dir.path().to_str().unwrap()]);
    let (input, feeds) = (dir.path().join("twice.onnx"), dir.path().join("feeds.npz"));
    for per_channel in [false, true] {
        let out = dir.path().join(format!("twice_q_{per_channel}.onnx"));
        let report = dir.path().join("report.json");
        let mut args = ALL.to_vec();
        args.extend(["--report", report.to_str().unwrap()]);
        if per_channel {
            args.push("--per-channel");
        }
        rewrite(&input, &out, &args);
        let c = check(&out, &input, &feeds);
        check_totals(&report, 2 * 64 * 48 * 4, &c);
        assert!(c.cos > 0.999, "per_channel {per_channel}: cos {}", c.cos);
        // W and V (equal shapes, different values): two int8 matrices, not three.
        assert_eq!(c.count("INT8", "64x48"), 2, "{:?}", c.inits);
        assert!(
            c.has("W_quantized") && c.has("V_quantized"),
            "{:?}",
            c.inits
        );
        assert!(
            !c.has("W") && !c.has("V"),
            "float weights left: {:?}",
            c.inits
        );
        if per_channel {
            // Scales and zero points of W shared too: one [48] set per weight.
            assert_eq!(c.count("FLOAT", "48"), 2, "{:?}", c.inits);
            assert_eq!(c.count("INT8", "48"), 2, "{:?}", c.inits);
        }
        // Two 64x48 int8 matrices and a few hundred bytes of graph, scales and names.
        let weights = 2 * 64 * 48;
        assert!(
            size(&out) < weights + 2048,
            "{} bytes for {weights} bytes of int8 weights",
            size(&out)
        );
    }
}

#[test]
fn a_weight_also_read_by_a_float_node_keeps_its_float_copy() {
    let dir = tempfile::tempdir().unwrap();
    py(MAKE, &[dir.path().to_str().unwrap()]);
    let (input, feeds) = (dir.path().join("twice.onnx"), dir.path().join("feeds.npz"));
    let out = dir.path().join("twice_excl.onnx");
    let report = dir.path().join("report.json");
    let mut args = ALL.to_vec();
    args.extend(["--exclude", "mm2", "--report", report.to_str().unwrap()]);
    rewrite(&input, &out, &args);
    let c = check(&out, &input, &feeds);
    check_totals(&report, 2 * 64 * 48 * 4, &c);
    assert!(c.cos > 0.999, "cos {}", c.cos);
    assert!(c.has("W"), "mm2 stays float and needs W: {:?}", c.inits);
    assert!(c.has("W_quantized"), "{:?}", c.inits);
    assert_eq!(c.count("INT8", "64x48"), 2, "{:?}", c.inits);
}

/// Tied embedding and output layer: the Gather quantizes the table `[V, D]` per row, the head
/// needs `[D, V]` (the transpose) for MatMulInteger. The forms differ, so each is stored once
/// (two int8 tensors) and the float table goes, since no float reader is left.
#[test]
fn tied_embedding_and_head_keep_one_copy_per_form() {
    let dir = tempfile::tempdir().unwrap();
    py(MAKE, &[dir.path().to_str().unwrap()]);
    let feeds = dir.path().join("feeds.npz");
    for model in ["tied", "gemm_tied"] {
        let input = dir.path().join(format!("{model}.onnx"));
        for per_channel in [false, true] {
            let out = dir.path().join(format!("{model}_q_{per_channel}.onnx"));
            let mut args = ALL.to_vec();
            if per_channel {
                args.push("--per-channel");
            }
            rewrite(&input, &out, &args);
            let c = check(&out, &input, &feeds);
            assert!(
                c.cos > 0.995,
                "{model} per_channel {per_channel}: cos {}",
                c.cos
            );
            assert!(!c.has("E"), "{model}: float table left: {:?}", c.inits);
            assert_eq!(c.count("INT8", "300x32"), 1, "{model}: {:?}", c.inits);
            assert_eq!(c.count("INT8", "32x300"), 1, "{model}: {:?}", c.inits);
            assert!(
                size(&out) < 2 * 300 * 32 + 300 * 4 * 3 + 32 * 32 + 2048,
                "{model}: {} bytes",
                size(&out)
            );
        }
    }
}
