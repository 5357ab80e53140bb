//! `rewrite --activations per-token`: on models whose activations have outlier tokens (a 3-D
//! MatMul -> Relu -> MatMul + bias stack, and a 2-D Gemm with transB and a bias), at the
//! opsets on both sides of the Reduce ops' `axes` change (17 and 18):
//! - the output passes `check_model(full_check=True)` and runs in onnxruntime;
//! - it is much closer to the float model than the per-tensor rewrite of the same weights;
//! - our runtime agrees with onnxruntime on the same quantized file, and runs each per-token
//!   Linear as one fused step that gives the unfused nodes' values;
//! - with `--features tract`, tract-onnx runs the same file and agrees with our runtime.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::fixture_io::{read_npz, to_f64};
use common::graphs::fused_and_plain;
use common::*;
use onnx_dynq::runtime::{Options, Session};

/// Writes `<out>/<name>.onnx` and `<out>/<name>.npz` (key `input.x`): the float model and an
/// input whose rows (tokens) differ in magnitude by up to 40x.
const BUILD_PY: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out, opset = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
K, H, N = 128, 256, 96
def init(name, a): return nh.from_array(a.astype(np.float32), name)
W1 = rng.standard_normal((K, H)) / np.sqrt(K)
W2 = rng.standard_normal((H, N)) / np.sqrt(H)
b2 = rng.standard_normal(N) * 0.1
stack = h.make_graph(
    [h.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
     h.make_node("Relu", ["h"], ["r"], name="act"),
     h.make_node("MatMul", ["r", "W2"], ["p"], name="fc2"),
     h.make_node("Add", ["p", "b2"], ["y"], name="fc2_bias")],
    "stack",
    [h.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", K])],
    [h.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", N])],
    [init("W1", W1), init("W2", W2), init("b2", b2)])
Wg = rng.standard_normal((N, K)) / np.sqrt(K)
gemm = h.make_graph(
    [h.make_node("Gemm", ["x", "Wg", "bg"], ["y"], name="linear", transB=1)],
    "gemm",
    [h.make_tensor_value_info("x", T.FLOAT, ["batch", K])],
    [h.make_tensor_value_info("y", T.FLOAT, ["batch", N])],
    [init("Wg", Wg), init("bg", rng.standard_normal(N) * 0.1)])
for name, g, shape in [("stack", stack, (2, 12, K)), ("gemm", gemm, (24, K))]:
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, f"{out}/{name}.onnx")
    x = rng.standard_normal(shape).astype(np.float32)
    rows = x.reshape(-1, K)
    rows[3] *= 40.0
    rows[9] *= 12.0
    rows[10] *= 0.05
    np.savez(f"{out}/{name}.npz", **{"input.x": x})
"#;

/// Runs `model` in onnxruntime on the npz's inputs; writes `ort.<output>` arrays to `out`.
const ORT_PY: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, feeds, out = sys.argv[1:4]
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
d = np.load(feeds)
res = s.run(None, {k[6:]: d[k] for k in d.files if k.startswith("input.")})
np.savez(out, **{"ort." + o.name: r for o, r in zip(s.get_outputs(), res)})
"#;

fn build(dir: &Path, opset: i64) {
    py(BUILD_PY, &[dir.to_str().unwrap(), &opset.to_string()]);
}

fn quantize(dir: &Path, name: &str, activations: &str) -> PathBuf {
    let out = dir.join(format!("{name}_{activations}.onnx"));
    // uint8 weights: onnxruntime's u8 x s8 MatMulInteger on AVX2 machines without VNNI sums
    // byte pairs in saturating i16 (vpmaddubsw), which would blur the comparison with the float
    // model by an error of onnxruntime's making; its u8 x u8 path is exact everywhere.
    let args = [
        "--weight-type",
        "uint8",
        "--per-channel",
        "--activations",
        activations,
        "--min-weight-elements",
        "1",
        "--min-inner-dim",
        "1",
    ];
    rewrite(&dir.join(format!("{name}.onnx")), &out, &args);
    out
}

/// |ours - onnxruntime| on the same quantized file, over the output's largest magnitude.
fn ours_vs_ort(model: &Path, feeds_npz: &Path) -> f64 {
    let ort_npz = model.with_extension("ort.npz");
    py(
        ORT_PY,
        &[
            model.to_str().unwrap(),
            feeds_npz.to_str().unwrap(),
            ort_npz.to_str().unwrap(),
        ],
    );
    let want: HashMap<String, _> = read_npz(&ort_npz).into_iter().collect();
    let m = onnx_dynq::load(model).unwrap();
    let session = Session::new(&m, &Options::with_threads(1)).unwrap();
    let feed = read_npz(feeds_npz)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("input.").to_string(), v))
        .collect();
    let got = session.run(feed).unwrap();
    got.iter()
        .map(|(name, g)| rel_diff(name, g, &want[&format!("ort.{name}")]))
        .fold(0.0, f64::max)
}

/// max |got - want| over want's largest magnitude.
fn rel_diff(name: &str, got: &onnx_dynq::runtime::Value, want: &onnx_dynq::runtime::Value) -> f64 {
    let (g, w) = (to_f64(got), to_f64(want));
    assert_eq!(g.shape(), w.shape(), "{name}");
    let scale = w.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    let d = g
        .iter()
        .zip(w.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    d / scale
}

/// The plan runs every per-token Linear as one step, equal to the unfused nodes' values.
fn check_fused(model: &Path, feeds_npz: &Path, what: &str) {
    let m = onnx_dynq::load(model).unwrap();
    let feed = read_npz(feeds_npz)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("input.").to_string(), v))
        .collect();
    let (fused, plain, ops) = fused_and_plain(&m, &feed);
    let linear = ops
        .iter()
        .filter(|o| o.contains("Round+Unsqueeze+Add+Clip+Cast+MatMulInteger+Cast"))
        .count();
    assert!(
        linear > 0 && !ops.iter().any(|o| o == "Unsqueeze" || o == "MatMulInteger"),
        "{what}: per-token Linear not fused: {ops:?}"
    );
    for ((name, f), (_, p)) in fused.iter().zip(&plain) {
        let (f, p) = (to_f64(f), to_f64(p));
        let scale = p.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        let d = f
            .iter()
            .zip(p.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            d <= 1e-6 * scale,
            "{what}: {name}: fused differs from unfused by {d}"
        );
    }
}

#[test]
fn per_token_is_valid_accurate_and_agrees_with_onnxruntime() {
    for opset in [17, 18] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), opset);
        for name in ["stack", "gemm"] {
            let float = dir.path().join(format!("{name}.onnx"));
            let feeds = dir.path().join(format!("{name}.npz"));
            let token = quantize(dir.path(), name, "per-token");
            let tensor = quantize(dir.path(), name, "per-tensor");
            let r_token = compare(&token, &float, Some(&feeds));
            let r_tensor = compare(&tensor, &float, Some(&feeds));
            let ops = common::ops(&r_token);
            assert!(
                ops.iter().any(|o| o == "MatMulInteger")
                    && ops.iter().any(|o| o == "ReduceMax")
                    && !ops.iter().any(|o| o == "DynamicQuantizeLinear"),
                "opset {opset} {name}: not the per-token form: {ops:?}"
            );
            let (c_token, c_tensor) = (min_cos(&r_token), min_cos(&r_tensor));
            eprintln!(
                "opset {opset} {name}: cosine per-token {c_token:.6}, per-tensor {c_tensor:.6}"
            );
            assert!(
                c_token > 0.9998,
                "opset {opset} {name}: per-token cosine {c_token}"
            );
            assert!(
                (1.0 - c_token) * 4.0 < 1.0 - c_tensor,
                "opset {opset} {name}: per-token ({c_token}) should be far closer to float than per-tensor ({c_tensor})"
            );
            check_fused(&token, &feeds, &format!("opset {opset} {name}"));
            let d = ours_vs_ort(&token, &feeds);
            assert!(
                d <= 1e-4,
                "opset {opset} {name}: our runtime differs from onnxruntime by {d} of the output scale"
            );
            #[cfg(feature = "tract")]
            {
                let d = ours_vs_tract(&token, &feeds);
                assert!(
                    d <= 1e-4,
                    "opset {opset} {name}: our runtime differs from tract by {d} of the output scale"
                );
            }
        }
    }
}

/// |ours - tract| on the same quantized file, over the output's largest magnitude.
#[cfg(feature = "tract")]
fn ours_vs_tract(model: &Path, feeds_npz: &Path) -> f64 {
    let feed: HashMap<String, _> = read_npz(feeds_npz)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("input.").to_string(), v))
        .collect();
    let theirs = common::tract::run_tract_caught(model, &feed)
        .unwrap_or_else(|e| panic!("tract cannot run {}: {e}", model.display()));
    let m = onnx_dynq::load(model).unwrap();
    let ours = Session::new(&m, &Options::with_threads(1))
        .unwrap()
        .run(feed)
        .unwrap();
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(&theirs)
        .map(|((name, g), t)| rel_diff(name, g, t))
        .fold(0.0, f64::max)
}
