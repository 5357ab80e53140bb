//! The plan-time LSTM-cell fusion (`runtime/session/fuse_lstm_cell.rs`) on real Scan bodies:
//! the fixtures `word_lm` and `bilstm` rewritten with `--lstm onnx`, each Scan body extracted
//! as a model of its own (so the fused step shows in the top-level profile). Per body:
//! - the fusion fires;
//! - fused outputs equal the unfused ones bit for bit, and onnxruntime's on the same body;
//! - with a `c_prev` that broadcasts (one row for every batch row) the fused step takes its
//!   node-by-node path and still equals the unfused run and onnxruntime.

mod common;

use std::collections::HashMap;
use std::path::Path;

use onnx_dynq::runtime::{Options, Session, Value};

/// Extracts every Scan body of `sys.argv[1]` into `DIR/body{k}.onnx` with two input sets
/// (`body{k}_{full,bcast}.npz`: `input.NAME` and onnxruntime's `output.NAME`).
const EXTRACT_PY: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
src, out = sys.argv[1], sys.argv[2]
m = onnx.load(src)
rng = np.random.default_rng(5)
k = 0
for n in m.graph.node:
    if n.op_type != "Scan":
        continue
    body = [a.g for a in n.attribute if a.name == "body"][0]
    g = onnx.GraphProto(); g.CopyFrom(body)
    # Outer-scope values the body reads become initializers (copied from the main graph).
    have = {i.name for i in g.initializer} | {i.name for i in g.input}
    produced = {o for bn in g.node for o in bn.output}
    for bn in g.node:
        for i in bn.input:
            if i and i not in have and i not in produced:
                t = [x for x in m.graph.initializer if x.name == i][0]
                g.initializer.append(t); have.add(i)
    ins = [i.name for i in g.input]
    del g.input[:]
    for name in ins:
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    outs = [o.name for o in g.output]
    del g.output[:]
    for name in outs:
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    bm = helper.make_model(g, opset_imports=m.opset_import)
    bm.ir_version = m.ir_version
    path = f"{out}/body{k}.onnx"
    onnx.save(bm, path)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    # state0 (h) [B, H], state1 (c) [B, H], x_t [B, 4H] (the hoisted input projection).
    hid = [t for t in g.initializer if "R" in t.name and len(t.dims) == 2][0].dims[0]
    for tag, cb in (("full", 3), ("bcast", 1)):
        feed = {ins[0]: rng.normal(0, 0.5, (3, hid)).astype(np.float32),
                ins[1]: rng.normal(0, 1, (cb, hid)).astype(np.float32),
                ins[2]: rng.normal(0, 1.5, (3, 4 * hid)).astype(np.float32)}
        res = s.run(None, feed)
        d = {"input." + a: v for a, v in feed.items()}
        d.update({"output." + a: v for a, v in zip(outs, res)})
        np.savez(f"{out}/body{k}_{tag}.npz", **d)
    k += 1
print(k)
"#;

fn run(
    model: &Path,
    feeds: &HashMap<String, Value>,
    fuse: bool,
) -> (Vec<(String, Value)>, Vec<String>) {
    let m = onnx_dynq::load(model).unwrap();
    let opts = Options {
        no_kernel_fusion: !fuse,
        ..common::ort_like_options()
    };
    let s = Session::new(&m, &opts).unwrap();
    let (outs, times) = s.run_profiled(feeds.clone()).unwrap();
    (outs, times.into_iter().map(|t| t.op_type).collect())
}

fn bits_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => {
            x.shape() == y.shape() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => false,
    }
}

#[test]
fn fused_lstm_cell_is_bit_identical_to_the_nodes_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in ["word_lm", "bilstm"] {
        let q = dir.path().join(format!("{name}_scan.onnx"));
        common::rewrite(
            &common::fixture(&format!("{name}.onnx")),
            &q,
            &[
                "--lstm",
                "onnx",
                "--min-weight-elements",
                "1",
                "--min-inner-dim",
                "1",
            ],
        );
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let n: usize = common::run_python(EXTRACT_PY, &[&q, &sub])
            .trim()
            .parse()
            .unwrap();
        assert!(n > 0, "{name}: no Scan in the rewritten model");
        for k in 0..n {
            let body = sub.join(format!("body{k}.onnx"));
            for tag in ["full", "bcast"] {
                let data =
                    onnx_dynq::npy::read_npz(&sub.join(format!("body{k}_{tag}.npz"))).unwrap();
                let feeds: HashMap<String, Value> = data
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix("input.").map(|n| (n.to_string(), v.clone()))
                    })
                    .collect();
                let want: HashMap<String, Value> = data
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix("output.")
                            .map(|n| (n.to_string(), v.clone()))
                    })
                    .collect();
                let (fused, ops) = run(&body, &feeds, true);
                let (plain, _) = run(&body, &feeds, false);
                let what = format!("{name} body {k} ({tag})");
                assert!(
                    ops.iter().any(|o| o.starts_with("LstmCell(")),
                    "{what}: the LSTM cell was not fused; steps {ops:?}"
                );
                for ((n1, f), (_, p)) in fused.iter().zip(&plain) {
                    assert!(bits_equal(f, p), "{what}: {n1} fused differs from unfused");
                    assert!(
                        bits_equal(f, &want[n1]),
                        "{what}: {n1} differs from onnxruntime"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4);
}
