//! The fusion passes on every ONNX backend node test case (the models that ship inside the
//! `onnx` wheel, exported by `scripts/export_conformance.py`; see tests/conformance.rs): fusing
//! never fails, and wherever the built-in runtime runs the original, it runs the fused model
//! and gets the same outputs (integers exactly, floats within 1e-5 relative + 1e-6 absolute).
//! Cases cover Identity, Dropout (training mode included), BatchNormalization, Squeeze and
//! Unsqueeze in both opset forms, Shape, If/Loop/Scan bodies and many more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_dynq::ir::Tensor;
use onnx_dynq::onnx::TensorProto;
use onnx_dynq::passes::fuse::fuse;
use onnx_dynq::runtime::ops::default_registry;
use onnx_dynq::runtime::{Options, Session, Value};
use prost::Message;

mod common;

use common::backend_cases::cases_dir;
use common::python;

fn inputs(dir: &Path, model: &onnx_dynq::Model) -> Option<HashMap<String, Value>> {
    let names: Vec<String> = model
        .graph
        .real_inputs()
        .map(|v| v.name().to_string())
        .collect();
    let mut feeds = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let bytes = std::fs::read(dir.join(format!("input_{i}.pb"))).ok()?;
        let t = Tensor::new(TensorProto::decode(bytes.as_slice()).ok()?).ok()?;
        feeds.insert(name.clone(), Value::from_tensor(&t).ok()?);
    }
    Some(feeds)
}

fn same(a: &Value, b: &Value) -> Result<(), String> {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return Err(format!(
            "{:?} {:?} vs {:?} {:?}",
            a.dtype(),
            a.shape(),
            b.dtype(),
            b.shape()
        ));
    }
    let close = |x: f64, y: f64| {
        (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-6 + 1e-5 * x.abs()
    };
    let ok = match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.iter().zip(y).all(|(&p, &q)| close(p as f64, q as f64)),
        (Value::F64(x), Value::F64(y)) => x.iter().zip(y).all(|(&p, &q)| close(p, q)),
        (Value::F16(x), Value::F16(y)) => {
            x.iter().zip(y).all(|(p, q)| close(p.to_f64(), q.to_f64()))
        }
        _ => format!("{a:?}") == format!("{b:?}"),
    };
    if ok {
        Ok(())
    } else {
        Err("values differ".into())
    }
}

#[test]
fn fusion_keeps_every_backend_node_case() {
    let dir = cases_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let (mut compared, mut fired_in) = (0, 0);
    let mut failures = Vec::new();
    let fused_dir = tempfile::tempdir().unwrap();
    let mut per_pass: std::collections::BTreeMap<String, usize> = Default::default();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let Ok(model) = onnx_dynq::load(case.join("model.onnx")) else {
            continue;
        };
        let mut fused = model.clone();
        let report = match fuse(&mut fused) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: fuse failed: {e}"));
                continue;
            }
        };
        if report.total() > 0 {
            fired_in += 1;
            let dst = fused_dir.path().join(format!("{name}.onnx"));
            if let Err(e) = onnx_dynq::save(&fused, &dst, &Default::default()) {
                failures.push(format!("{name}: saving the fused model failed: {e}"));
            }
        }
        for p in &report.passes {
            *per_pass.entry(p.pass.clone()).or_insert(0) += p.fired;
        }
        if !default_registry().unsupported(&model.graph).is_empty() {
            continue;
        }
        let Some(feeds) = inputs(case, &model) else {
            continue;
        };
        let run = |m: &onnx_dynq::Model| {
            Session::new(m, &Options::with_threads(1)).and_then(|s| s.run(feeds.clone()))
        };
        let Ok(want) = run(&model) else {
            continue;
        };
        match run(&fused) {
            Err(e) => failures.push(format!("{name}: fused model fails: {e}")),
            Ok(got) => {
                compared += 1;
                for ((n, a), (_, b)) in want.iter().zip(&got) {
                    if let Err(e) = same(a, b) {
                        failures.push(format!("{name}: output {n}: {e}"));
                    }
                }
            }
        }
    }
    println!("{compared} cases compared, passes fired in {fired_in}: {per_pass:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared > 700, "only {compared} cases compared");
    assert!(fired_in > 50, "passes fired in only {fired_in} cases");
    let out = py_check(fused_dir.path(), &dir);
    println!("{}", out.trim());
}

/// Every fused model (argv[1]/NAME.onnx) of a case whose original passes the checker must
/// pass `check_model(full_check=True)`, and where onnxruntime runs the original it must run
/// the fused one with the same outputs (1e-5 relative; 1e-3 for float16, whose constant
/// folds may round differently by one ulp).
const CHECK_PY: &str = r#"
import glob, os, sys, numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper
ort.set_default_logger_severity(3)
fused_dir, cases = sys.argv[1], sys.argv[2]
bad, ran = [], 0
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
for f in sorted(glob.glob(os.path.join(fused_dir, "*.onnx"))):
    name = os.path.basename(f)[:-5]
    d = os.path.join(cases, name)
    try:
        onnx.checker.check_model(os.path.join(d, "model.onnx"), full_check=True)
    except Exception:
        continue
    try:
        onnx.checker.check_model(f, full_check=True)
    except Exception as e:
        bad.append(f"{name}: check_model: {e}"); continue
    try:
        s0 = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
        feeds = {}
        for k, i in enumerate(s0.get_inputs()):
            t = onnx.TensorProto(); t.ParseFromString(open(os.path.join(d, f"input_{k}.pb"), "rb").read())
            feeds[i.name] = numpy_helper.to_array(t)
        want = s0.run(None, feeds)
    except Exception:
        continue
    try:
        got = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"]).run(None, feeds)
        for a, b in zip(want, got):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
            if a.dtype.kind == "f":
                rtol = 1e-3 if a.dtype == np.float16 else 1e-5
                assert np.allclose(a, b, rtol=rtol, atol=1e-6, equal_nan=True), float(np.nanmax(np.abs(a.astype(np.float64) - b)))
            else:
                assert (a == b).all()
        ran += 1
    except Exception as e:
        bad.append(f"{name}: onnxruntime: {e}")
assert not bad, "\n".join(bad)
assert ran > 100, ran
print(f"{ran} fused models agree with their originals in onnxruntime")
"#;

fn py_check(fused: &Path, cases: &Path) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(CHECK_PY)
        .arg(fused)
        .arg(cases)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python ({}): {e}", python().display()));
    assert!(
        out.status.success(),
        "python check of the fused cases failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
