//! Quantized ops against onnxruntime:
//! - every fixture quantized by onnxruntime's `quantize_dynamic` (per-tensor and per-channel):
//!   our runtime's outputs on the quantized file must match onnxruntime's on the same file
//!   within 1e-4 of the float output's scale (max |float output|);
//! - the com.microsoft ops `MatMulIntegerToFloat` and `DynamicQuantizeMatMul` on small models
//!   built with onnx.helper, against onnxruntime.
//!
//! LSTM is among the quantized op types: its com.microsoft `DynamicQuantizeLSTM` runs in our
//! runtime (runtime/ops/rnn_quant.rs).

mod common;

use std::collections::HashMap;
use std::path::Path;

use onnx_dynq::runtime::{Session, Value};

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
        other => panic!("unexpected output type {:?}", other.dtype()),
    }
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() { f64::NAN } else { m.max(d) })
}

/// Quantizes `name` with onnxruntime into `dir` and writes onnxruntime's outputs on the
/// fixture's inputs to `<dir>/<name>.<mode>.ort.npz`.
const QUANTIZE: &str = r#"
import sys, numpy as np, onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic, QuantType
src, dst, npz, out, per_channel = sys.argv[1:6]
ops = ["MatMul", "Conv", "Gather", "Gemm", "Attention", "LSTM"]
quantize_dynamic(src, dst, per_channel=(per_channel == "1"), weight_type=QuantType.QInt8,
                 op_types_to_quantize=ops)
d = np.load(npz)
feed = {k[len("input."):]: v for k, v in d.items() if k.startswith("input.")}
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"])
res = s.run(None, feed)
np.savez(out, **{"output." + o.name: r for o, r in zip(s.get_outputs(), res)})
"#;

fn check_fixture(name: &str, per_channel: bool) {
    let dir = tempfile::tempdir().unwrap();
    // A private copy: quantize_dynamic writes `<stem>-inferred.onnx` next to its input, so the
    // per-tensor and per-channel tests of one fixture would race on that file.
    let src = dir.path().join(format!("{name}.onnx"));
    std::fs::copy(common::fixture(&format!("{name}.onnx")), &src).unwrap();
    let npz = common::fixture(&format!("{name}.npz"));
    let dst = dir.path().join(format!("{name}.q.onnx"));
    let out = dir.path().join(format!("{name}.ort.npz"));
    let pc = if per_channel { "1" } else { "0" };
    common::run_python(QUANTIZE, &[&src, &dst, &npz, &out, Path::new(pc)]);
    let data = onnx_dynq::npy::read_npz(&npz).unwrap();
    let feed: HashMap<String, Value> = data
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("input.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let ort = onnx_dynq::npy::read_npz(&out).unwrap();
    let model = onnx_dynq::load(&dst).unwrap();
    let s = Session::new(&model, &common::ort_like_options()).unwrap();
    let got = s.run(feed).unwrap();
    for (n, v) in &got {
        let float = data
            .iter()
            .find(|(k, _)| k == &format!("output.{n}"))
            .map(|(_, v)| floats(v))
            .unwrap_or_else(|| panic!("{name}: no float output {n}"));
        let scale = float.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let want = ort
            .iter()
            .find(|(k, _)| k == &format!("output.{n}"))
            .map(|(_, v)| floats(v))
            .unwrap_or_else(|| panic!("{name}: no onnxruntime output {n}"));
        let d = max_abs(&floats(v), &want);
        eprintln!(
            "{name} per_channel={per_channel} {n}: max-abs vs onnxruntime {d:.3e} (float scale {scale:.3e})"
        );
        assert!(
            d <= 1e-4 * scale,
            "{name} (per_channel={per_channel}) output {n}: max-abs {d:e} vs onnxruntime exceeds 1e-4 x {scale:e}"
        );
    }
}

#[test]
fn quantize_dynamic_fixtures_match_onnxruntime() {
    for name in [
        "mlp",
        "conv_bn_relu",
        "gru",
        "bilstm",
        "if_branch",
        "word_lm",
    ] {
        for per_channel in [false, true] {
            check_fixture(name, per_channel);
        }
    }
}

/// Builds a model around one com.microsoft node, runs onnxruntime on random inputs and saves
/// model, inputs and outputs.
const MS_OP: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
op, path, npz = sys.argv[1:4]
rng = np.random.default_rng(7)
M, K, N = 5, 37, 19
inits, names, feed = [], [], {}
a = rng.standard_normal((2, M, K)).astype(np.float32)
w = rng.integers(-128, 128, (K, N)).astype(np.int8)
bs = (rng.random(N).astype(np.float32) + 0.5) * 0.01
bz = rng.integers(-5, 5, N).astype(np.int8)
bias = rng.standard_normal(N).astype(np.float32)
def init(name, v):
    inits.append(numpy_helper.from_array(v, name)); names.append(name)
if op == "DynamicQuantizeMatMul":
    names.append("A"); feed["A"] = a
    init("B", w); init("b_scale", bs); init("b_zp", bz); init("bias", bias)
    ins = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, M, K])]
else:
    aq = rng.integers(0, 256, (2, M, K)).astype(np.uint8)
    names.append("A"); feed["A"] = aq
    init("B", w); init("a_scale", np.array(0.02, np.float32)); init("b_scale", bs)
    init("a_zp", np.array(131, np.uint8)); init("b_zp", bz); init("bias", bias)
    ins = [helper.make_tensor_value_info("A", TensorProto.UINT8, [2, M, K])]
node = helper.make_node(op, names, ["Y"], domain="com.microsoft")
g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
onnx.save(m, path)
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
np.savez(npz, **{"input.A": feed["A"], "output.Y": s.run(None, feed)[0]})
"#;

fn check_ms_op(op: &str, tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let npz = dir.path().join("m.npz");
    common::run_python(MS_OP, &[Path::new(op), &path, &npz]);
    let data = onnx_dynq::npy::read_npz(&npz).unwrap();
    let get = |k: &str| data.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let model = onnx_dynq::load(&path).unwrap();
    let s = Session::new(&model, &common::ort_like_options()).unwrap();
    let out = s
        .run(HashMap::from([("A".to_string(), get("input.A"))]))
        .unwrap();
    let d = max_abs(&floats(&out[0].1), &floats(&get("output.Y")));
    eprintln!("{op}: max-abs vs onnxruntime {d:e}");
    assert!(d <= tol, "{op}: max-abs {d:e} vs onnxruntime");
}

#[test]
fn matmul_integer_to_float_matches_onnxruntime() {
    check_ms_op("MatMulIntegerToFloat", 1e-5);
}

#[test]
fn dynamic_quantize_matmul_matches_onnxruntime() {
    check_ms_op("DynamicQuantizeMatMul", 1e-5);
}
