//! `onnx-dynq verify` on a fixture and its onnxruntime-quantized version: metrics checked
//! against numpy's on onnxruntime's outputs for the same inputs, and the exit statuses.

mod common;

use std::path::Path;

const PREPARE: &str = r#"
import sys, json, numpy as np, onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic, QuantType
src, dst, npz, x_npy = sys.argv[1:5]
quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
x = np.load(npz)["input.x"]
np.save(x_npy, x)
def run(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].astype(np.float64)
f, q = run(src), run(dst)
d = np.abs(f - q)
print(json.dumps({
    "max_abs": float(d.max()), "mean_abs": float(d.mean()),
    "cosine": float((f * q).sum() / np.sqrt((f * f).sum() * (q * q).sum())),
    "sqnr_db": float(10 * np.log10((f * f).sum() / ((f - q) ** 2).sum())),
    "top1": float((f.argmax(-1) == q.argmax(-1)).mean()),
}))
"#;

struct Setup {
    _dir: tempfile::TempDir,
    float: String,
    quant: String,
    x: String,
    want: serde_json::Value,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // A private copy: quantize_dynamic writes `<stem>-inferred.onnx` next to its input, so two
    // tests quantizing the fixture in place would race on that file.
    let src = dir.path().join("mlp.onnx");
    std::fs::copy(common::fixture("mlp.onnx"), &src).unwrap();
    let dst = dir.path().join("mlp.q.onnx");
    let x = dir.path().join("x.npy");
    let out = common::run_python(
        PREPARE,
        &[&src, &dst, &common::fixture("mlp.npz"), Path::new(&x)],
    );
    Setup {
        float: src.display().to_string(),
        quant: dst.display().to_string(),
        x: format!("x={}", x.display()),
        want: serde_json::from_str(out.trim()).unwrap(),
        _dir: dir,
    }
}

#[test]
fn metrics_match_numpy_on_onnxruntime_outputs() {
    let s = setup();
    // The metrics are numpy's on onnxruntime's outputs: on a machine where onnxruntime's
    // u8 x s8 products saturate, the runtime is asked to compute them that way too.
    let mut args = vec!["verify", &s.float, &s.quant, "--input", &s.x, "--json"];
    if common::ort_saturates_u8s8() {
        args.push("--ort-u8s8-saturation");
    }
    let out = common::cli(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pass"], true);
    let o = &r["outputs"][0];
    assert_eq!(o["name"], "y");
    let m = &o["metrics"];
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    // Our runtime and onnxruntime agree on the quantized output to ~1e-6 of its scale, so the
    // metrics agree closely (the error itself is ~1e-2, so max/mean-abs within 1e-4 absolute).
    for k in ["max_abs", "mean_abs"] {
        assert!(
            (get(m, k) - get(&s.want, k)).abs() < 1e-4,
            "{k}: {} vs {}",
            m[k],
            s.want[k]
        );
    }
    assert!((get(m, "cosine") - get(&s.want, "cosine")).abs() < 1e-6);
    assert!((get(m, "sqnr_db") - get(&s.want, "sqnr_db")).abs() < 0.05);
    assert_eq!(get(m, "top1"), get(&s.want, "top1"));
    assert!(get(m, "cosine") > 0.99 && get(m, "cosine") < 1.0);
}

#[test]
fn exit_statuses() {
    let s = setup();
    let out = common::cli(&[
        "verify",
        &s.float,
        &s.quant,
        "--input",
        &s.x,
        "--max-abs",
        "1e-9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL"), "{text}");
    let out = common::cli(&[
        "verify",
        &s.float,
        &s.quant,
        "--random-inputs",
        "--seed",
        "3",
        "--dim",
        "batch=4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::cli(&["verify", &s.float, "/nonexistent.onnx", "--random-inputs"]);
    assert_eq!(out.status.code(), Some(2));
    // The same model against itself: identical outputs.
    let out = common::cli(&["verify", &s.float, &s.float, "--input", &s.x, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outputs"][0]["metrics"]["cosine"].as_f64().unwrap(), 1.0);
    assert_eq!(r["outputs"][0]["metrics"]["max_abs"].as_f64().unwrap(), 0.0);
}
