//! Accuracy bars, measured in onnxruntime against the float model.
//!
//! The word-LM bar (issue 4): with the embedding, the LSTMs and the decoder quantized, the
//! file is >= 3.9x smaller, the logits have cosine >= 0.999 and the top-1 prediction agrees
//! on >= 99% of positions.
//!
//! The size ratio depends on the model's shape: the float vectors that stay (decoder bias,
//! per-row table scales, LSTM biases) grow with the vocabulary like the int8 data, so the
//! ratio is about `4 / (1 + 4 / emb)`: 3.97 for the tutorial's emb 512, 3.76 for the
//! fixture's emb 64 (where the incumbent reaches 3.78). So 3.9x is checked on a
//! tutorial-shaped LM built here, and the fixture must be as small as the incumbent's output
//! within 2%. Size assertions need the LSTM rewriter (branch `quant-rnn`); until it is
//! merged, the placeholder reports "not merged yet" and only those assertions wait.

mod common;

use common::*;

/// Compares float and quantized word LMs on 24 windows of the held-out sample (840 positions,
/// zero initial state) plus the sample itself. Prints JSON.
const LM_EVAL: &str = r#"
import json, sys, numpy as np, onnxruntime as ort
f, q, npz, save = sys.argv[1:5]
so = ort.SessionOptions(); so.intra_op_num_threads = 1
sf = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
sq = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
d = np.load(npz)
ids = d["input.input"]                       # [35, 2]
stream = np.concatenate([ids[:, 0], ids[:, 1]])
wins = np.stack([np.roll(stream, -k)[:35] for k in range(0, 72, 3)], axis=1)
L, H = d["input.h0"].shape[0], d["input.h0"].shape[2]
batches = [{"input": wins, "h0": np.zeros((L, wins.shape[1], H), np.float32), "c0": np.zeros((L, wins.shape[1], H), np.float32)},
           {k[6:]: d[k] for k in d.files if k.startswith("input.")}]
a, b = [], []
for feeds in batches:
    a.append(sf.run(["logits"], feeds)[0].reshape(-1, sf.get_outputs()[0].shape[-1]))
    b.append(sq.run(["logits"], feeds)[0].reshape(a[-1].shape))
np.savez(save, **{f"b{i}.{k}": v for i, fd in enumerate(batches) for k, v in fd.items()},
         **{f"b{i}.float": v for i, v in enumerate(a)})
a = np.concatenate(a).astype(np.float64); b = np.concatenate(b).astype(np.float64)
cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
print(json.dumps({"cos": cos, "top1": top1, "positions": a.shape[0]}))
"#;

/// Where this machine's onnxruntime saturates u8 x s8 products (x86 without VNNI), the bar is
/// measured on the ONNX definition: the runtime's logits on the same windows, against the
/// float logits onnxruntime computed. onnxruntime's own figures stay in the result as
/// `ort_cos` and `ort_top1`.
fn exact_lm_eval(
    quant: &std::path::Path,
    saved: &std::path::Path,
    ort: serde_json::Value,
) -> serde_json::Value {
    use onnx_dynq::runtime::{Options, Session, Value};
    let arrays: std::collections::HashMap<String, Value> = onnx_dynq::npy::read_npz(saved)
        .unwrap()
        .into_iter()
        .collect();
    let s = Session::new(&onnx_dynq::load(quant).unwrap(), &Options::with_threads(1)).unwrap();
    let (mut dot, mut na, mut nb, mut same, mut rows) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    for b in 0.. {
        let Some(float) = arrays.get(&format!("b{b}.float")) else {
            break;
        };
        let feed = ["input", "h0", "c0"]
            .map(|k| (k.to_string(), arrays[&format!("b{b}.{k}")].clone()))
            .into();
        let outs = s.run(feed).unwrap();
        let q = &outs.iter().find(|(n, _)| n == "logits").unwrap().1;
        let (f, q) = (fixture_io::to_f64(float), fixture_io::to_f64(q));
        let n = *f.shape().last().unwrap();
        let (fv, qv): (Vec<f64>, Vec<f64>) =
            (f.iter().copied().collect(), q.iter().copied().collect());
        assert_eq!(fv.len(), qv.len());
        for (x, y) in fv.iter().zip(&qv) {
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
        let argmax = |r: &[f64]| (0..r.len()).fold(0, |bi, i| if r[i] > r[bi] { i } else { bi });
        for (fr, qr) in fv.chunks(n).zip(qv.chunks(n)) {
            same += usize::from(argmax(fr) == argmax(qr));
            rows += 1;
        }
    }
    serde_json::json!({
        "cos": dot / (na.sqrt() * nb.sqrt()),
        "top1": same as f64 / rows as f64,
        "positions": rows,
        "ort_cos": ort["cos"],
        "ort_top1": ort["top1"],
    })
}

#[test]
fn word_lm_meets_the_accuracy_and_size_bar() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("word_lm.onnx");
    for extra in [&[][..], &["--per-channel"][..]] {
        let out = dir.path().join("q.onnx");
        let report = dir.path().join("q.json");
        let saved = dir.path().join("lm_eval.npz");
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--report", report.to_str().unwrap()]);
        rewrite(&model, &out, &args);
        let r = read_report(&report);
        let nodes = r["nodes"].as_array().unwrap();
        for op in ["Gather", "MatMul"] {
            let n = nodes.iter().find(|n| n["op_type"] == op).unwrap();
            assert_eq!(n["quantized"], true, "{n}");
        }
        let e: serde_json::Value = serde_json::from_str(
            py(
                LM_EVAL,
                &[
                    model.to_str().unwrap(),
                    out.to_str().unwrap(),
                    fixture("word_lm.npz").to_str().unwrap(),
                    saved.to_str().unwrap(),
                ],
            )
            .trim(),
        )
        .unwrap();
        let e = if ort_saturates_u8s8() {
            exact_lm_eval(&out, &saved, e)
        } else {
            e
        };
        let (cos, top1) = (e["cos"].as_f64().unwrap(), e["top1"].as_f64().unwrap());
        assert!(cos >= 0.999, "{extra:?}: logits cosine {cos} ({e})");
        assert!(top1 >= 0.99, "{extra:?}: top-1 agreement {top1} ({e})");
        let lstms: Vec<_> = nodes.iter().filter(|n| n["op_type"] == "LSTM").collect();
        assert_eq!(lstms.len(), 2);
        for n in &lstms {
            assert_eq!(n["quantized"], true, "{n}");
        }
        let before = std::fs::metadata(&model).unwrap().len() as f64;
        let after = std::fs::metadata(&out).unwrap().len() as f64;
        // The default stores the decoder (MatMul) per channel, a scale and a zero point per
        // output column: measured against the incumbent's per-channel form, as --per-channel.
        let inc = dir.path().join("incumbent.onnx");
        py(
            "import sys\nfrom onnxruntime.quantization import quantize_dynamic\nquantize_dynamic(sys.argv[1], sys.argv[2], per_channel=True)",
            &[model.to_str().unwrap(), inc.to_str().unwrap()],
        );
        let incumbent = std::fs::metadata(&inc).unwrap().len() as f64;
        assert!(
            after <= incumbent * 1.02,
            "{extra:?}: {after} bytes vs the incumbent's {incumbent}"
        );
        // Per channel adds a scale and a zero point per output column (the default's
        // decoder: 3.65x) and, with --per-channel, per LSTM gate row.
        let floor = if extra.is_empty() { 3.6 } else { 3.5 };
        assert!(
            before / after >= floor,
            "{extra:?}: only {:.2}x smaller",
            before / after
        );
    }
}

/// Writes a word LM with the tutorial's shape but a smaller vocabulary (4000 x 512 embedding,
/// 2-layer LSTM 256, Linear 256 -> 4000; 17.5 MB) with random weights, and sample inputs.
const MAKE_TUTORIAL_LM: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
d = sys.argv[1]
rng = np.random.default_rng(3)
V, E, H, S, B = 4000, 512, 256, 35, 4
def u(*shape, a=0.1):
    return rng.uniform(-a, a, shape).astype(np.float32)
inits = [nh.from_array(u(V, E), "emb"), nh.from_array(u(H, V), "dec_w"), nh.from_array(u(V), "dec_b"),
         nh.from_array(np.array([1], np.int64), "axis1")]
nodes = [h.make_node("Gather", ["emb", "input"], ["x0"], name="encoder")]
x, n_in = "x0", E
for l in range(2):
    inits += [nh.from_array(u(1, 4 * H, n_in), f"W{l}"), nh.from_array(u(1, 4 * H, H), f"R{l}"),
              nh.from_array(u(1, 8 * H), f"B{l}")]
    nodes += [h.make_node("LSTM", [x, f"W{l}", f"R{l}", f"B{l}"], [f"y{l}"], name=f"lstm{l}", hidden_size=H),
              h.make_node("Squeeze", [f"y{l}", "axis1"], [f"x{l + 1}"])]
    x, n_in = f"x{l + 1}", H
nodes += [h.make_node("MatMul", [x, "dec_w"], ["mm"], name="decoder"), h.make_node("Add", ["mm", "dec_b"], ["logits"])]
g = h.make_graph(nodes, "lm", [h.make_tensor_value_info("input", T.INT64, [S, "batch"])],
                 [h.make_tensor_value_info("logits", T.FLOAT, [S, "batch", V])], inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
onnx.checker.check_model(m, full_check=True)
onnx.save(m, d + "/tutorial_lm.onnx")
np.savez(d + "/tutorial_lm.npz", **{"input.input": rng.integers(0, V, (S, B)).astype(np.int64)})
"#;

#[test]
fn tutorial_shaped_lm_is_at_least_3_9x_smaller() {
    let dir = tempfile::tempdir().unwrap();
    py(MAKE_TUTORIAL_LM, &[dir.path().to_str().unwrap()]);
    let model = dir.path().join("tutorial_lm.onnx");
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("q.json");
    rewrite(&model, &out, &["--report", report.to_str().unwrap()]);
    let v = compare(&out, &model, Some(&dir.path().join("tutorial_lm.npz")));
    assert!(min_cos(&v) >= 0.999, "{v}");
    let r = read_report(&report);
    let nodes = r["nodes"].as_array().unwrap();
    for n in nodes {
        assert_eq!(n["quantized"], true, "{n}");
    }
    let before = std::fs::metadata(&model).unwrap().len() as f64;
    let after = std::fs::metadata(&out).unwrap().len() as f64;
    assert!(before / after >= 3.9, "only {:.3}x smaller", before / after);
}

/// Gathers every row of the word LM's embedding through our table and through the
/// incumbent's (onnxruntime quantize_dynamic), and prints both max errors against float.
const GATHER_VS_INCUMBENT: &str = r#"
import json, sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
from onnxruntime.quantization import quantize_dynamic
src, ours, dirn = sys.argv[1:4]
table = next(nh.to_array(t) for t in onnx.load(src).graph.initializer if t.name == "encoder.weight")
g = h.make_graph([h.make_node("Gather", ["emb", "ids"], ["y"], name="lookup")], "g",
                 [h.make_tensor_value_info("ids", T.INT64, ["n"])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["n", table.shape[1]])], [nh.from_array(table, "emb")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
onnx.save(m, dirn + "/emb.onnx")
if ours == "-":
    quantize_dynamic(dirn + "/emb.onnx", dirn + "/emb_ort.onnx", op_types_to_quantize=["Gather"])
    print(json.dumps({"made": True})); sys.exit(0)
onnx.checker.check_model(ours, full_check=True)
ids = np.arange(table.shape[0], dtype=np.int64)
def run(p):
    return ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
o, i = run(ours) - table, run(dirn + "/emb_ort.onnx") - table
print(json.dumps({"ours": float(np.abs(o).max()), "incumbent": float(np.abs(i).max()),
                  "ours_rms": float(np.sqrt((o ** 2).mean())), "incumbent_rms": float(np.sqrt((i ** 2).mean()))}))
"#;

#[test]
fn embedding_table_is_at_least_as_accurate_as_the_incumbents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let src = fixture("word_lm.onnx");
    py(GATHER_VS_INCUMBENT, &[src.to_str().unwrap(), "-", d]);
    let emb = dir.path().join("emb.onnx");
    for extra in [
        &[][..],
        &["--asymmetric"][..],
        &["--weight-type", "uint8"][..],
    ] {
        let ours = dir.path().join("emb_ours.onnx");
        rewrite(&emb, &ours, extra);
        let e: serde_json::Value = serde_json::from_str(
            py(
                GATHER_VS_INCUMBENT,
                &[src.to_str().unwrap(), ours.to_str().unwrap(), d],
            )
            .trim(),
        )
        .unwrap();
        let (o, i) = (
            e["ours"].as_f64().unwrap(),
            e["incumbent"].as_f64().unwrap(),
        );
        let (or, ir) = (
            e["ours_rms"].as_f64().unwrap(),
            e["incumbent_rms"].as_f64().unwrap(),
        );
        eprintln!(
            "{extra:?}: max error ours {o:.3e}, incumbent {i:.3e}; rms ours {or:.3e}, incumbent {ir:.3e}"
        );
        // Per-row scales: a far smaller typical error in every mode.
        assert!(
            or < 0.8 * ir,
            "{extra:?}: our rms error {or} vs incumbent's {ir}"
        );
        if extra.is_empty() {
            // Symmetric rows use 254 steps over [-absmax, absmax], the incumbent 255 over the
            // table's [min, max]: on the row holding the table's extreme that can be a hair
            // coarser (up to 2x on a one-sided table), so the strict max-error bar is the
            // asymmetric modes', where each row's range lies inside the table's.
            assert!(
                o <= 1.05 * i,
                "{extra:?}: our max error {o} vs incumbent's {i}"
            );
        } else {
            assert!(o <= i, "{extra:?}: our max error {o} > incumbent's {i}");
        }
    }
}
