//! f32 `Sigmoid`, `Tanh` and `Erf` in our runtime against onnxruntime's on the same model: bit for bit,
//! over a dense grid, random values, large magnitudes, subnormals, ±0, ±inf and NaN, in a shape
//! whose length is not a multiple of the vector width (so the kernels' tails run too).
//! onnxruntime computes all three with MLAS's approximations, which `kernels::activation`
//! reproduces; this holds on an x86-64 CPU with FMA3 (what onnxruntime dispatches there).

mod common;

use std::collections::HashMap;

use onnx_dynq::runtime::{Options, Session, Value};

const MAKE_PY: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
model, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754944e-38,
           3.4028235e38, -3.4028235e38, 17.3, -17.3, 18.0, -18.0, 9.0, -9.0, 1e-30, -1e-30,
           0.921875, -0.921875, 0.92187494, 3.925, -3.925, 3.7251, 4.5]
x = np.concatenate([np.linspace(-30, 30, 30001), rng.normal(0, 4, 10000),
                    rng.uniform(-1e6, 1e6, 1000), special]).astype(np.float32)
x = x[: (x.size // 7) * 7].reshape(7, -1)
g = helper.make_graph(
    [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Tanh", ["x"], ["t"]),
     helper.make_node("Erf", ["x"], ["e"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
    [helper.make_tensor_value_info("s", TensorProto.FLOAT, list(x.shape)),
     helper.make_tensor_value_info("t", TensorProto.FLOAT, list(x.shape)),
     helper.make_tensor_value_info("e", TensorProto.FLOAT, list(x.shape))])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.save(m, model)
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
sg, th, er = s.run(None, {"x": x})
np.savez(out, x=x, s=sg, t=th, e=er)
"#;

#[test]
fn sigmoid_tanh_and_erf_match_onnxruntime_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("act.onnx");
    let npz = dir.path().join("act.npz");
    common::run_python(MAKE_PY, &[&model, &npz]);
    let data: HashMap<String, Value> = onnx_dynq::npy::read_npz(&npz)
        .unwrap()
        .into_iter()
        .collect();
    let m = onnx_dynq::model::load(&model).unwrap();
    let session = Session::new(&m, &Options::with_threads(1)).unwrap();
    let outs: HashMap<String, Value> = session
        .run(HashMap::from([("x".to_string(), data["x"].clone())]))
        .unwrap()
        .into_iter()
        .collect();
    let x: Vec<f32> = data["x"].as_f32().unwrap().iter().copied().collect();
    assert!(x.len() > 40_000 && !x.len().is_multiple_of(8));
    for name in ["s", "t", "e"] {
        // Unoptimized builds do not inline the scalar erf into the FMA loop, so its
        // `mul_add`s go through compiler-builtins' software `fmaf`, which rounds some of
        // erf's results one ulp away (optimized builds give onnxruntime's bits exactly).
        let ulp_slack = u32::from(cfg!(debug_assertions) && name == "e");
        let got = outs[name].as_f32().unwrap();
        let want = data[name].as_f32().unwrap();
        assert_eq!(got.shape(), want.shape());
        let bad: Vec<String> = x
            .iter()
            .zip(got.iter().zip(want.iter()))
            .filter(|(_, (g, w))| {
                g.to_bits().abs_diff(w.to_bits()) > ulp_slack && !(g.is_nan() && w.is_nan())
            })
            .map(|(x, (g, w))| format!("{name}({x:e}) = {g:e} vs onnxruntime {w:e}"))
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} values differ, e.g. {:?}",
            bad.len(),
            x.len(),
            &bad[..bad.len().min(5)]
        );
    }
}
