//! com.microsoft `DynamicQuantizeLSTM` in our runtime against onnxruntime on the same files.
//!
//! - The MLAS sigmoid/tanh the op reproduces, bit for bit against onnxruntime's `Sigmoid` and
//!   `Tanh` (the same MLAS routines its LSTM calls).
//! - Every LSTM model of `tests/rnn/make_models.py` (forward, reverse, bidirectional, layout 1,
//!   fp16, `sequence_lens`, initial states, peepholes, clip, `input_forget`, other activations,
//!   only `Y_h` as output) and the `word_lm` fixture, rewritten by `onnx-dynq rewrite` (default
//!   `--lstm ort`) per-tensor and per-channel, int8 and uint8 weights: our outputs must be
//!   within 1e-4 of the float output's scale (max |float output|, the float model run in our
//!   runtime) of onnxruntime's, both single-threaded.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use onnx_dynq::runtime::ops::rnn_quant::{mlas_logistic, mlas_tanh};
use onnx_dynq::runtime::{Options, Session, Value};

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
        other => panic!("unexpected output type {:?}", other.dtype()),
    }
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() { f64::NAN } else { m.max(d) })
}

const ACTIVATIONS_PY: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
out = sys.argv[1]
rng = np.random.default_rng(3)
x = np.concatenate([np.linspace(-25, 25, 20001), rng.normal(0, 3, 20000), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
n = x.size
g = helper.make_graph(
    [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Tanh", ["x"], ["t"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
    [helper.make_tensor_value_info("s", TensorProto.FLOAT, [n]),
     helper.make_tensor_value_info("t", TensorProto.FLOAT, [n])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
sg, th = s.run(None, {"x": x})
np.savez(out, x=x, s=sg, t=th)
"#;

/// The op's sigmoid and tanh are onnxruntime's bit for bit (on this CPU: the x86-64 FMA3
/// kernels; the test says so when it runs elsewhere).
#[test]
fn mlas_activations_match_onnxruntime_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("act.npz");
    common::run_python(ACTIVATIONS_PY, &[&npz]);
    let data: HashMap<String, Value> = onnx_dynq::npy::read_npz(&npz)
        .unwrap()
        .into_iter()
        .collect();
    let get = |k: &str| {
        data[k]
            .as_f32()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<f32>>()
    };
    let (x, s, t) = (get("x"), get("s"), get("t"));
    let mut bad = Vec::new();
    for i in 0..x.len() {
        if mlas_logistic(x[i]).to_bits() != s[i].to_bits() {
            bad.push(format!(
                "sigmoid({}) = {} vs {}",
                x[i],
                mlas_logistic(x[i]),
                s[i]
            ));
        }
        if mlas_tanh(x[i]).to_bits() != t[i].to_bits() {
            bad.push(format!("tanh({}) = {} vs {}", x[i], mlas_tanh(x[i]), t[i]));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} values differ from onnxruntime, e.g. {:?}",
        bad.len(),
        2 * x.len(),
        &bad[..bad.len().min(5)]
    );
}

/// Runs each job's model in onnxruntime (one thread) on its npz inputs and writes
/// `input.*`/`output.*` to the job's `out`.
const ORT_RUN_PY: &str = r#"
import json, sys, numpy as np, onnxruntime as ort
for job in json.load(open(sys.argv[1])):
    d = np.load(job["npz"])
    feeds = {(k[6:] if k.startswith("input.") else k): d[k] for k in d.files if not k.startswith("output.")}
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    s = ort.InferenceSession(job["file"], so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    res = s.run(None, feeds)
    out = {"input." + k: v for k, v in feeds.items()}
    out.update({"output." + o.name: r for o, r in zip(s.get_outputs(), res)})
    np.savez(job["out"], **out)
"#;

struct Job {
    tag: String,
    float: PathBuf,
    file: PathBuf,
    npz: PathBuf,
    out: PathBuf,
}

/// Compares our runtime with onnxruntime on every job; returns one line per job.
fn check_jobs(dir: &Path, jobs: &[Job]) -> Vec<String> {
    let list: Vec<_> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "file": j.file.to_str().unwrap(),
                "npz": j.npz.to_str().unwrap(),
                "out": j.out.to_str().unwrap(),
            })
        })
        .collect();
    let jobs_file = dir.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&list).unwrap()).unwrap();
    common::run_python(ORT_RUN_PY, &[&jobs_file]);
    let mut failures = Vec::new();
    for j in jobs {
        let data = onnx_dynq::npy::read_npz(&j.out).unwrap();
        let feed: HashMap<String, Value> = data
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("input.").map(|n| (n.to_string(), v.clone())))
            .collect();
        let opts = Options::with_threads(1);
        let quant = onnx_dynq::load(&j.file).unwrap();
        let got = Session::new(&quant, &common::ort_like_options())
            .and_then(|s| s.run(feed.clone()))
            .unwrap_or_else(|e| panic!("{}: our runtime failed: {e}", j.tag));
        let float = onnx_dynq::load(&j.float).unwrap();
        let fl: HashMap<String, Value> = Session::new(&float, &opts)
            .and_then(|s| s.run(feed))
            .unwrap_or_else(|e| panic!("{}: float model failed: {e}", j.tag))
            .into_iter()
            .collect();
        for (n, v) in &got {
            let scale = floats(&fl[n]).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let want = data
                .iter()
                .find(|(k, _)| k == &format!("output.{n}"))
                .map(|(_, v)| floats(v))
                .unwrap_or_else(|| panic!("{}: no onnxruntime output {n}", j.tag));
            let d = max_abs(&floats(v), &want);
            eprintln!(
                "{} {n}: max-abs vs onnxruntime {d:.3e} (float scale {scale:.3e})",
                j.tag
            );
            if d.is_nan() || d > 1e-4 * scale {
                failures.push(format!(
                    "{} output {n}: max-abs {d:e} vs onnxruntime exceeds 1e-4 x {scale:e}",
                    j.tag
                ));
            }
        }
    }
    failures
}

/// The rewrite option sets each model is rewritten with.
const VARIANTS: &[(&str, &[&str])] = &[
    ("pt", &[]),
    ("pc", &["--per-channel"]),
    ("u8", &["--weight-type", "uint8"]),
    ("u8pc", &["--weight-type", "uint8", "--per-channel"]),
    ("i8asym", &["--asymmetric"]),
];

#[test]
fn rewritten_lstm_models_match_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = common::repo().join("tests/rnn/make_models.py");
    common::run_python(
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
        &[&script, d],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
    let mut jobs = Vec::new();
    for case in manifest.as_array().unwrap() {
        if case["op"] != "LSTM" {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let float = d.join(format!("{name}.onnx"));
        for (vname, extra) in VARIANTS {
            let tag = format!("{name}.{vname}");
            let file = d.join(format!("{tag}.q.onnx"));
            let mut args = vec!["--min-weight-elements", "0", "--min-inner-dim", "0"];
            args.extend_from_slice(extra);
            common::rewrite(&float, &file, &args);
            let text = std::fs::read(&file).unwrap();
            assert!(
                text.windows(19).any(|w| w == b"DynamicQuantizeLSTM"),
                "{tag}: the rewrite did not emit DynamicQuantizeLSTM"
            );
            jobs.push(Job {
                out: d.join(format!("{tag}.ort.npz")),
                npz: d.join(format!("{name}.npz")),
                tag,
                float: float.clone(),
                file,
            });
        }
    }
    assert!(jobs.len() >= 5 * 12, "only {} jobs", jobs.len());
    let failures = check_jobs(d, &jobs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rewritten_word_lm_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let float = common::fixture("word_lm.onnx");
    let mut jobs = Vec::new();
    for (vname, extra) in VARIANTS {
        let tag = format!("word_lm.{vname}");
        let file = d.join(format!("{tag}.q.onnx"));
        common::rewrite(&float, &file, extra);
        jobs.push(Job {
            out: d.join(format!("{tag}.ort.npz")),
            npz: common::fixture("word_lm.npz"),
            tag,
            float: float.clone(),
            file,
        });
    }
    let failures = check_jobs(d, &jobs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
