//! Helpers shared by the integration tests: the Python interpreter (with onnx and
//! onnxruntime) that serves as the reference, fixtures, and the CLI binary.
//!
//! Python is found via `ONNX_DYNQ_PYTHON`, then `<repo>/.venv/bin/python`, then `python3`.
//! Tests that need it FAIL (never skip) with a message saying how to provide it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture under `<repo>/fixtures`, which must exist.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo().join("fixtures").join(name);
    assert!(
        p.exists(),
        "fixture {} is missing: generate it with `python fixtures/make_fixtures.py`",
        p.display()
    );
    p
}

/// The Python interpreter, checked once to import onnx, onnxruntime and numpy.
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("ONNX_DYNQ_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([repo().join(".venv/bin/python"), PathBuf::from("python3")])
            .collect();
        for c in &candidates {
            let ok = Command::new(c)
                .args(["-c", "import onnx, onnxruntime, numpy"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return c.clone();
            }
        }
        panic!(
            "no Python with onnx, onnxruntime and numpy found (tried {candidates:?}); \
             set ONNX_DYNQ_PYTHON or create <repo>/.venv (pip install -r fixtures/requirements.txt)"
        )
    })
}

/// Runs a Python snippet with `args` as `sys.argv[1:]`; panics with its stderr on failure.
/// Returns stdout.
pub fn py(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "python failed:\n--- code ---\n{code}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the `onnx-dynq` binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
        .args(args)
        .output()
        .expect("running onnx-dynq")
}

/// Runs `onnx-dynq rewrite IN OUT ARGS...` and panics with stderr when it fails.
pub fn rewrite(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["rewrite", input.to_str().unwrap(), output.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(
        out.status.success(),
        "rewrite {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Python that checks a model fully and compares it in onnxruntime with a reference model
/// or with the outputs stored in an npz. Prints one JSON object:
/// `{"outputs": {name: {"cos":..., "max_abs":..., "top1":...}}, "ops": [...]}`.
pub const COMPARE_PY: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
path, ref = sys.argv[1], sys.argv[2]
feeds_npz = sys.argv[3] if len(sys.argv) > 3 else None
onnx.checker.check_model(path, full_check=True)
def sess(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
q = sess(path)
if ref.endswith(".npz"):
    d = np.load(ref)
    feeds = {k[6:]: d[k] for k in d.files if k.startswith("input.")}
    want = {k[7:]: d[k] for k in d.files if k.startswith("output.")}
else:
    f = sess(ref)
    d = np.load(feeds_npz)
    feeds = {k[6:]: d[k] for k in d.files if k.startswith("input.")}
    want = dict(zip([o.name for o in f.get_outputs()], f.run(None, feeds)))
got = dict(zip([o.name for o in q.get_outputs()], q.run(None, feeds)))
res = {}
for k, w in want.items():
    g = got[k]
    assert g.dtype == w.dtype, (k, g.dtype, w.dtype)
    assert g.shape == w.shape, (k, g.shape, w.shape)
    w = w.astype(np.float64); g = g.astype(np.float64)
    cos = float((w * g).sum() / (np.linalg.norm(w) * np.linalg.norm(g) + 1e-30))
    top1 = float((w.argmax(-1) == g.argmax(-1)).mean()) if w.ndim else 1.0
    res[k] = {"cos": cos, "max_abs": float(np.abs(w - g).max()), "top1": top1}
m = onnx.load(path, load_external_data=False)
ops = []
def walk(g):
    for n in g.node:
        ops.append(n.op_type)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH: walk(a.g)
            for sg in a.graphs: walk(sg)
walk(m.graph)
print(json.dumps({"outputs": res, "ops": ops}))
"#;

/// Compares `model` against an npz of expected outputs (or a float reference model plus an
/// npz of inputs) in onnxruntime, after `onnx.checker.check_model(full_check=True)`.
pub fn compare(model: &Path, reference: &Path, feeds: Option<&Path>) -> serde_json::Value {
    let mut args = vec![model.to_str().unwrap(), reference.to_str().unwrap()];
    if let Some(f) = feeds {
        args.push(f.to_str().unwrap());
    }
    let out = py(COMPARE_PY, &args);
    serde_json::from_str(out.trim()).expect("compare output is JSON")
}

/// Minimum cosine over the outputs of a `compare` result.
pub fn min_cos(v: &serde_json::Value) -> f64 {
    v["outputs"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o["cos"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min)
}

pub fn ops(v: &serde_json::Value) -> Vec<String> {
    v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

pub fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
