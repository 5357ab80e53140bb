//! Helpers shared by the integration tests: the repository's fixtures, the CLI binary, and a
//! Python with onnx and onnxruntime for cross-checks.
//!
//! Python is found through `ONNX_DYNQ_PYTHON`, then `<repo>/.venv/bin/python`, then `python3`.
//! A test that needs it fails with a clear message when it is missing: `.ci/run` installs it.

#![allow(dead_code)]

pub mod backend_cases;
pub mod fixture_io;
pub mod graphs;
#[cfg(feature = "tract")]
pub mod tract;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// Every committed fixture model, sorted.
pub fn fixture_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("fixtures"))
        .expect("fixtures folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures found");
    v
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ONNX_DYNQ_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Runs a Python snippet with `args` (as `sys.argv[1:]`) and returns its stdout. Panics with
/// the script's stderr when it fails, or when Python or its packages are missing.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let py = python();
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python ({}): {e}; set ONNX_DYNQ_PYTHON to a python with onnx, onnxruntime and numpy (.ci/run makes one)",
                py.display()
            )
        });
    if !out.status.success() {
        panic!(
            "python check failed ({}):\n{}\n{}",
            py.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
        .args(args)
        .output()
        .expect("run onnx-dynq")
}

/// Runs a Python snippet with `args` as `sys.argv[1:]`; panics with its stderr on failure.
/// Returns stdout.
pub fn py(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python ({}): {e}; set ONNX_DYNQ_PYTHON to a python with onnx, onnxruntime and numpy",
                python().display()
            )
        });
    assert!(
        out.status.success(),
        "python failed:\n--- code ---\n{code}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
