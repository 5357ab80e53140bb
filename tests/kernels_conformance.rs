//! Runs the recurrent, convolution and pooling ops directly (without a session) on
//! - the ONNX backend node test cases for LSTM, GRU, RNN, Conv, MaxPool, AveragePool and
//!   GlobalAveragePool (single-node models shipped with the `onnx` wheel), and
//! - own cases whose expected outputs come from onnxruntime (bidirectional/reverse with
//!   `sequence_lens`, `layout = 1`, activations, clip, grouped/dilated/strided Conv, ...).
//!
//! Both sets are dumped by `tests/kernels_cases.py`, run with the python named by
//! `ONNX_DYNQ_PYTHON`, else `<repo>/.venv/bin/python`, else `python3`; the test fails (never
//! skips) when python, onnx or onnxruntime is missing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use onnx_dynq::ir::Tensor;
use onnx_dynq::onnx::TensorProto;
use onnx_dynq::runtime::Value;
use onnx_dynq::runtime::ops::{BuildCtx, Registry, conv, rnn};
use prost::Message;

/// Cases expected to fail, with the reason. Every other case must pass.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

use common::python;

fn dump(mode: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels_cases.py");
    let py = python();
    let out = Command::new(&py)
        .arg(&script)
        .arg(mode)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python '{}' (set ONNX_DYNQ_PYTHON to a python with onnx and \
                 onnxruntime): {e}",
                py.display()
            )
        });
    assert!(
        out.status.success(),
        "{} {} {mode} failed (needs onnx, numpy and onnxruntime):\n{}",
        py.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn read_value(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let proto = TensorProto::decode(bytes.as_slice()).expect("TensorProto");
    let t = Tensor::new(proto).expect("valid tensor");
    Value::from_tensor(&t).expect("supported type")
}

fn as_f64(v: &Value) -> Vec<f64> {
    match v {
        Value::F32(a) => a.iter().map(|&x| x as f64).collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
        Value::F64(a) => a.iter().copied().collect(),
        Value::I64(a) => a.iter().map(|&x| x as f64).collect(),
        Value::I32(a) => a.iter().map(|&x| x as f64).collect(),
        Value::I8(a) => a.iter().map(|&x| x as f64).collect(),
        Value::U8(a) => a.iter().map(|&x| x as f64).collect(),
        Value::Bool(a) => a.iter().map(|&x| x as u8 as f64).collect(),
        Value::I16(a) => a.iter().map(|&x| x as f64).collect(),
        Value::U16(a) => a.iter().map(|&x| x as f64).collect(),
        Value::U32(a) => a.iter().map(|&x| x as f64).collect(),
        Value::U64(a) => a.iter().map(|&x| x as f64).collect(),
        Value::BF16(a) => a.iter().map(|x| x.to_f64()).collect(),
    }
}

fn registry() -> Registry {
    let mut r = Registry::default();
    rnn::register(&mut r);
    conv::register(&mut r);
    r
}

/// Runs one dumped case; `Err` describes the first mismatch.
fn run_case(dir: &Path, rtol: f64, atol: f64) -> Result<(), String> {
    let model = onnx_dynq::load(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let g = &model.graph;
    let [node] = g.nodes.as_slice() else {
        return Err(format!("{} nodes, expected 1", g.nodes.len()));
    };
    let mut values: HashMap<String, Value> = HashMap::new();
    for (i, vi) in g.inputs().iter().enumerate() {
        if g.initializer(vi.name()).is_none() {
            values.insert(
                vi.name().to_string(),
                read_value(&dir.join(format!("input_{i}.pb"))),
            );
        }
    }
    let consts: HashMap<String, Value> = g
        .initializers
        .iter()
        .map(|(n, t)| Ok((n.clone(), Value::from_tensor(t).map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    let ctx = BuildCtx {
        opset: model.opset("").unwrap_or(22),
        const_inputs: node.inputs().iter().map(|n| consts.get(n)).collect(),
    };
    let builder = registry()
        .get(node.domain(), node.op_type())
        .ok_or_else(|| format!("no builder for {}", node.op_type()))?;
    let op = builder(node, &ctx).map_err(|e| e.to_string())?;
    let inputs: Vec<Option<&Value>> = node
        .inputs()
        .iter()
        .map(|n| {
            if n.is_empty() {
                None
            } else {
                values.get(n).or_else(|| consts.get(n))
            }
        })
        .collect();
    let outs = op.run(&inputs).map_err(|e| e.to_string())?;
    for (i, vi) in g.outputs().iter().enumerate() {
        let pos = node
            .outputs()
            .iter()
            .position(|n| n == vi.name())
            .ok_or_else(|| format!("graph output {} is not the node's", vi.name()))?;
        let got = outs
            .get(pos)
            .ok_or_else(|| format!("op returned {} outputs, need #{pos}", outs.len()))?;
        let want = read_value(&dir.join(format!("output_{i}.pb")));
        if got.dtype() != want.dtype() || got.shape() != want.shape() {
            return Err(format!(
                "output {}: got {:?} {:?}, expected {:?} {:?}",
                vi.name(),
                got.dtype(),
                got.shape(),
                want.dtype(),
                want.shape()
            ));
        }
        let (a, b) = (as_f64(got), as_f64(&want));
        let mut worst: Option<(usize, f64)> = None;
        for (k, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let excess = (x - y).abs() - (atol + rtol * y.abs());
            if (excess > 0.0 || x.is_nan() != y.is_nan()) && worst.is_none_or(|(_, w)| excess > w) {
                worst = Some((k, excess));
            }
        }
        if let Some((k, _)) = worst {
            return Err(format!(
                "output {}: element {k} is {}, expected {} (rtol {rtol}, atol {atol})",
                vi.name(),
                a[k],
                b[k]
            ));
        }
    }
    Ok(())
}

fn run_all(mode: &str, min_cases: usize) {
    let dir = dump(mode);
    let list = std::fs::read_to_string(dir.path().join("cases.txt")).expect("cases.txt");
    let (mut passed, mut failed, mut known) = (0, Vec::new(), 0);
    let mut total = 0;
    for line in list.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(rtol), Some(atol)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        total += 1;
        let (rtol, atol) = (rtol.parse().unwrap_or(1e-3), atol.parse().unwrap_or(1e-7));
        let result = run_case(&dir.path().join(name), rtol, atol);
        let listed = KNOWN_FAILURES.iter().find(|(n, _)| *n == name);
        match (result, listed) {
            (Ok(()), _) => passed += 1,
            (Err(e), Some((_, why))) => {
                println!("known failure {name}: {e} ({why})");
                known += 1;
            }
            (Err(e), None) => {
                println!("FAIL {name}: {e}");
                failed.push(name.to_string());
            }
        }
    }
    println!(
        "{mode}: {passed} passed, {} failed, {known} known failures",
        failed.len()
    );
    assert!(total >= min_cases, "only {total} {mode} cases were dumped");
    assert!(failed.is_empty(), "failing {mode} cases: {failed:?}");
}

#[test]
fn onnx_backend_node_cases() {
    run_all("backend", 60);
}

#[test]
fn onnxruntime_cases() {
    run_all("ort", 30);
}
