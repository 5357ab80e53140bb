//! Helpers shared by the integration tests: the repository's fixtures, the CLI binary, and a
//! Python with onnx and onnxruntime for cross-checks.
//!
//! Python is found through `ONNX_DYNQ_PYTHON`, then `<repo>/.venv/bin/python`, then `python3`.
//! A test that needs it fails with a clear message when it is missing: `.ci/run` installs it.

#![allow(dead_code)]

pub mod backend_cases;
pub mod fixture_io;
pub mod graphs;
pub mod protos;
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

/// Runs the CLI expecting the failure contract: exit 2, one line on stderr, no panic, each of
/// `expect` in it. Returns the message.
pub fn cli_fails(args: &[&str], expect: &[&str]) -> String {
    let out = cli(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for e in expect {
        assert!(err.contains(e), "'{e}' not in: {err}");
    }
    err
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

/// Runs the CLI binary: cargo's, or `ONNX_DYNQ_BIN` when set (a copy taken right after the
/// build, for machines where several checkouts share one target folder and its binary).
pub fn cli(args: &[&str]) -> Output {
    let bin =
        std::env::var_os("ONNX_DYNQ_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_onnx-dynq").into());
    Command::new(bin)
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
feeds_npz = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
save = sys.argv[4] if len(sys.argv) > 4 else None
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
    f_in = {i.name for i in f.get_inputs()}
    want = dict(zip([o.name for o in f.get_outputs()], f.run(None, {k: v for k, v in feeds.items() if k in f_in})))
names_in = {i.name for i in q.get_inputs()}
feeds = {k: v for k, v in feeds.items() if k in names_in}
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
if save:
    np.savez(save, **{"got." + k: v for k, v in got.items()}, **{"want." + k: v for k, v in want.items()},
             **{"input." + k: v for k, v in feeds.items()})
print(json.dumps({"outputs": res, "ops": ops}))
"#;

/// Compares `model` against an npz of expected outputs (or a float reference model plus an
/// npz of inputs) in onnxruntime, after `onnx.checker.check_model(full_check=True)`.
pub fn compare(model: &Path, reference: &Path, feeds: Option<&Path>) -> serde_json::Value {
    let saved = tempfile::NamedTempFile::with_suffix(".npz").expect("temp file");
    let args = vec![
        model.to_str().unwrap(),
        reference.to_str().unwrap(),
        feeds.map_or("", |f| f.to_str().unwrap()),
        saved.path().to_str().unwrap(),
    ];
    let out = py(COMPARE_PY, &args);
    let mut v: serde_json::Value =
        serde_json::from_str(out.trim()).expect("compare output is JSON");
    if ort_saturates_u8s8() {
        exact_metrics(model, saved.path(), &mut v);
    }
    v
}

/// Whether this machine's onnxruntime computes uint8 x int8 integer products with saturating
/// byte pairs (its kernel on x86 with AVX2 but no VNNI): then its int8 outputs differ from the
/// ONNX definition, and the tests compare with onnxruntime through the runtime's emulation of
/// that kernel. Probed once: `[255, 255] x [127, 127]` is 64770 exactly, 32767 saturated.
pub fn ort_saturates_u8s8() -> bool {
    static SATURATES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SATURATES.get_or_init(|| {
        let out = py(
            r#"
import numpy as np, onnxruntime as ort
from onnx import helper as h, TensorProto as T
g = h.make_graph([h.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
    [h.make_tensor_value_info("a", T.UINT8, [1, 2]), h.make_tensor_value_info("b", T.INT8, [2, 1])],
    [h.make_tensor_value_info("y", T.INT32, [1, 1])])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
print(int(s.run(None, {"a": np.full((1, 2), 255, np.uint8), "b": np.full((2, 1), 127, np.int8)})[0][0, 0]))
"#,
            &[],
        );
        match out.trim() {
            "64770" => false,
            "32767" => true,
            other => panic!("onnxruntime MatMulInteger probe gave {other}"),
        }
    })
}

/// Runtime options for comparing with this machine's onnxruntime.
pub fn ort_like_options() -> onnx_dynq::runtime::Options {
    onnx_dynq::runtime::Options {
        threads: 1,
        ort_u8s8_saturation: ort_saturates_u8s8(),
        ..Default::default()
    }
}

/// On a machine whose onnxruntime saturates u8 x s8 products, `compare`'s accuracy figures
/// come from the runtime computing the ONNX definition instead (what the model means, and what
/// onnxruntime computes elsewhere), after checking that onnxruntime's outputs are what the
/// runtime predicts for this machine's kernel.
fn exact_metrics(model: &Path, saved: &Path, v: &mut serde_json::Value) {
    use onnx_dynq::runtime::{Options, Session};
    let arrays: std::collections::HashMap<String, onnx_dynq::runtime::Value> =
        onnx_dynq::npy::read_npz(saved)
            .unwrap()
            .into_iter()
            .collect();
    let m = onnx_dynq::load(model).unwrap();
    let feed: std::collections::HashMap<String, onnx_dynq::runtime::Value> = arrays
        .iter()
        .filter_map(|(k, a)| Some((k.strip_prefix("input.")?.to_string(), a.clone())))
        .collect();
    let exact = Session::new(&m, &Options::with_threads(1))
        .unwrap()
        .run(feed.clone())
        .unwrap();
    let like_ort = Session::new(&m, &ort_like_options())
        .unwrap()
        .run(feed)
        .unwrap();
    for ((name, e), (_, o)) in exact.iter().zip(&like_ort) {
        let Some(want) = arrays.get(&format!("want.{name}")) else {
            continue;
        };
        let got_ort = fixture_io::to_f64(&arrays[&format!("got.{name}")]);
        let (o, e, w) = (
            fixture_io::to_f64(o),
            fixture_io::to_f64(e),
            fixture_io::to_f64(want),
        );
        let scale = got_ort.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        let d = o
            .iter()
            .zip(got_ort.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        // float16 outputs carry the rounding of float16 arithmetic between the two runtimes.
        let rel = if matches!(
            arrays[&format!("got.{name}")],
            onnx_dynq::runtime::Value::F16(_)
        ) {
            1e-2
        } else {
            2e-4
        };
        assert!(
            d <= rel * scale,
            "{}: output {name}: the runtime's emulation of onnxruntime's saturating u8 x s8 kernel differs from onnxruntime by {d} (scale {scale})",
            model.display()
        );
        let cos = {
            let (dot, ne, nw) = e
                .iter()
                .zip(w.iter())
                .fold((0.0, 0.0, 0.0), |(d, a, b), (x, y)| {
                    (d + x * y, a + x * x, b + y * y)
                });
            dot / (ne.sqrt() * nw.sqrt() + 1e-30)
        };
        let max_abs = e
            .iter()
            .zip(w.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let top1 = if w.ndim() == 0 || w.shape().last() == Some(&0) {
            1.0
        } else {
            let n = *w.shape().last().unwrap();
            let argmax = |a: &[f64]| {
                a.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
                        if x > bv { (i, x) } else { (bi, bv) }
                    })
                    .0
            };
            let (ev, wv): (Vec<f64>, Vec<f64>) =
                (e.iter().copied().collect(), w.iter().copied().collect());
            let rows = ev.len() / n;
            let same = ev
                .chunks(n)
                .zip(wv.chunks(n))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count();
            same as f64 / rows.max(1) as f64
        };
        v["outputs"][name.as_str()] = serde_json::json!({"cos": cos, "max_abs": max_abs, "top1": top1, "ort_cos_saturated": v["outputs"][name.as_str()]["cos"].clone()});
    }
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

/// Python: argv model, float model, sample npz. Checks the model fully, runs both in
/// onnxruntime (1 thread) and prints the valid-token cosine mean and the pooled cosine min of
/// the first output, as scripts/bench_accuracy.py computes them.
const ENCODER_ORT_PY: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
model, float_model, npz = sys.argv[1:4]
onnx.checker.check_model(model, full_check=True)
d = np.load(npz)
feeds = {k[6:]: d[k] for k in d.files if k.startswith("input.")}
def run(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)
f, q = run(float_model), run(model)
mask = feeds["attention_mask"].astype(bool)
cos = (f * q).sum(-1) / np.linalg.norm(f, axis=-1) / np.linalg.norm(q, axis=-1)
m = mask[..., None]
pf, pq = (f * m).sum(1) / m.sum(1), (q * m).sum(1) / m.sum(1)
pooled = (pf * pq).sum(-1) / np.linalg.norm(pf, axis=-1) / np.linalg.norm(pq, axis=-1)
print(cos[mask].mean(), pooled.min())
"#;

/// An encoder `model` against its `float` form in onnxruntime on the sample `npz` (inputs
/// `input.NAME`, with an attention_mask), after the full check: (valid-token hidden-state
/// cosine mean, pooled-embedding cosine min) of the first output.
pub fn encoder_cosines_in_onnxruntime(model: &Path, float: &Path, npz: &Path) -> (f64, f64) {
    let out = py(
        ENCODER_ORT_PY,
        &[
            model.to_str().unwrap(),
            float.to_str().unwrap(),
            npz.to_str().unwrap(),
        ],
    );
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}
