//! The recurrent rewriters (LSTM, GRU, RNN) against onnxruntime.
//!
//! `tests/rnn/make_models.py` builds small models with onnx.helper (random weights; forward,
//! reverse, bidirectional; layout 0 and 1; with and without bias and initial states; peepholes;
//! fp16; the features the Scan form cannot express). Each is rewritten here in every mode
//! (ort, onnx, weight-only), per-tensor and per-channel, and with other weight options on a
//! few; the replacement is spliced in as the driver does; `tests/rnn/compare.py` checks each
//! result with `onnx.checker` (full check) and compares its outputs with the float model's in
//! onnxruntime.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_dynq::ir::NameGen;
use onnx_dynq::ir::shape::infer_types;
use onnx_dynq::model::{Model, SaveOptions, load, save};
use onnx_dynq::passes::fold_constants::fold_constants;
use onnx_dynq::passes::quantize::gru_rnn::rewrite_gru_rnn;
use onnx_dynq::passes::quantize::lstm::rewrite_lstm;
use onnx_dynq::passes::quantize::policy::LstmMode;
use onnx_dynq::passes::quantize::rewrite::{ActivationQuant, NodeCtx, RewriteResult};
use onnx_dynq::passes::quantize::weights::{WeightQuantOptions, WeightType};
use serde_json::Value;

use common::python;

fn run_python(args: &[&Path]) -> String {
    let py = python();
    let mut cmd = Command::new(&py);
    if common::ort_saturates_u8s8() {
        // compare.py then measures the ONNX definition (see its doc).
        cmd.env("ONNX_DYNQ_EXACT_BIN", env!("CARGO_BIN_EXE_onnx-dynq"));
    }
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set ONNX_DYNQ_PYTHON to a python with onnx, onnxruntime and numpy", py.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed (it needs onnx, onnxruntime and numpy; set ONNX_DYNQ_PYTHON):\n{}",
        py.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rnn")
        .join(name)
}

/// Rewrites the model's single recurrent node and splices the replacement in, as the driver
/// does. `Err` carries the skip reason.
fn rewrite(
    model: &mut Model,
    mode: LstmMode,
    per_channel: bool,
    weights: WeightQuantOptions,
) -> Result<String, String> {
    let idx = model
        .graph
        .nodes
        .iter()
        .position(|n| matches!(n.op_type(), "LSTM" | "GRU" | "RNN"))
        .expect("a recurrent node");
    rewrite_at(model, idx, mode, per_channel, weights)
}

fn rewrite_at(
    model: &mut Model,
    idx: usize,
    mode: LstmMode,
    per_channel: bool,
    weights: WeightQuantOptions,
) -> Result<String, String> {
    let opset = model.opset("").expect("default opset");
    let mut names = NameGen::new(&model.graph);
    let types = infer_types(&model.graph, &HashMap::new());
    let g = &model.graph;
    let constants = |n: &str| g.initializers.get(n);
    let node = &g.nodes[idx];
    let mut ctx = NodeCtx {
        constants: &constants,
        types: &types,
        names: &mut names,
        weights,
        per_channel,
        lstm_mode: mode,
        opset,
        defer_values: false,
        activations: ActivationQuant::PerTensor,
    };
    let result: RewriteResult = if node.op_type() == "LSTM" {
        rewrite_lstm(node, &mut ctx)
    } else {
        rewrite_gru_rnn(node, &mut ctx)
    };
    let rep = result.map_err(|s| s.0)?;
    assert!(!rep.note.is_empty());
    model.graph.nodes.splice(idx..idx + 1, rep.nodes);
    for t in rep.initializers {
        model.graph.add_initializer(t);
    }
    for (d, v) in rep.opsets {
        model.require_opset(&d, v);
    }
    model
        .validate()
        .map_err(|e| format!("invalid after rewrite: {e}"))?;
    Ok(rep.note)
}

fn mode_name(m: LstmMode) -> &'static str {
    match m {
        LstmMode::Ort => "ort",
        LstmMode::Onnx => "onnx",
        LstmMode::WeightOnly => "weight-only",
    }
}

#[test]
fn recurrent_rewrites_match_float_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_python(&[&script("make_models.py"), d]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest.as_array().unwrap();
    assert!(cases.len() >= 15);

    let default = WeightQuantOptions::default();
    let variants: Vec<(&str, WeightQuantOptions)> = vec![
        (
            "u8asym",
            WeightQuantOptions {
                weight_type: WeightType::Uint8,
                symmetric: false,
                reduce_range: false,
            },
        ),
        (
            "i8asym",
            WeightQuantOptions {
                weight_type: WeightType::Int8,
                symmetric: false,
                reduce_range: false,
            },
        ),
        (
            "i8reduce",
            WeightQuantOptions {
                weight_type: WeightType::Int8,
                symmetric: true,
                reduce_range: true,
            },
        ),
    ];
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut opts = vec![("default", default)];
        if name.ends_with("bidi_init") || name == "lstm_bidi_l1" {
            opts.extend(variants.iter().cloned());
        }
        for mode in [LstmMode::Ort, LstmMode::Onnx, LstmMode::WeightOnly] {
            let expect = case["expect"][mode_name(mode)].as_str().unwrap_or("ok");
            for per_channel in [false, true] {
                for (oname, o) in &opts {
                    let mut model = load(d.join(format!("{name}.onnx"))).unwrap();
                    let tag = format!(
                        "{name}.{}.{}.{oname}",
                        mode_name(mode),
                        if per_channel { "pc" } else { "pt" }
                    );
                    match (rewrite(&mut model, mode, per_channel, *o), expect) {
                        (Ok(note), "ok") => {
                            let file = d.join(format!("{tag}.onnx"));
                            save(&model, &file, &SaveOptions::default()).unwrap();
                            jobs.push(serde_json::json!({
                                "case": name, "tag": tag, "note": note,
                                "file": file.to_str().unwrap(),
                                "fp16": case["fp16"],
                            }));
                        }
                        (Err(reason), "skip") => skipped.push(format!("{tag}: {reason}")),
                        (r, e) => failures.push(format!("{tag}: expected {e}, got {r:?}")),
                    }
                }
            }
        }
    }
    let jobs_file = d.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let out = run_python(&[&script("compare.py"), d, &jobs_file]);
    let mut n = 0;
    let mut worst = (0.0f64, 1.0f64);
    for line in out.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        n += 1;
        let tag = r["job"]["tag"].as_str().unwrap().to_string();
        if let Some(e) = r["error"].as_str() {
            failures.push(format!("{tag}: {e}"));
            continue;
        }
        if r["job"]["fp16"].as_bool() == Some(true)
            && r["dtypes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t != "float16")
        {
            failures.push(format!("{tag}: outputs are {}, not float16", r["dtypes"]));
        }
        for (i, m) in r["metrics"].as_array().unwrap().iter().enumerate() {
            let (max_abs, cos) = (
                m["max_abs"].as_f64().unwrap(),
                m["cosine"].as_f64().unwrap(),
            );
            worst = (worst.0.max(max_abs), worst.1.min(cos));
            // Outputs are ~1 in magnitude (a Relu RNN's a little more): the bound scales
            // with them above 1.
            let bound = 0.05 * m["ref_absmax"].as_f64().unwrap().max(1.0);
            if !(max_abs <= bound && cos >= 0.999) {
                failures.push(format!(
                    "{tag} output {i}: max abs {max_abs:.4}, cosine {cos:.6} (ref |max| {:.3}, {})",
                    m["ref_absmax"], r["runtime"]
                ));
            }
        }
    }
    assert_eq!(
        n,
        jobs.len(),
        "compare.py answered {n} of {} jobs",
        jobs.len()
    );
    eprintln!(
        "{} rewritten models compared, worst max abs {:.4}, worst cosine {:.6}; {} skipped as expected:",
        n,
        worst.0,
        worst.1,
        skipped.len()
    );
    for s in &skipped {
        eprintln!("  {s}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The committed fixtures (PyTorch exports: a bidirectional LSTM classifier, a GRU with
/// `linear_before_reset = 1`, a 2-layer word LM whose LSTMs read sliced initial states, and its
/// dynamo export whose weights are computed, folded first): every
/// recurrent node rewritten, outputs compared with torch's in the fixture's npz.
#[test]
fn fixture_recurrent_models_stay_close_to_torch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for name in ["bilstm", "gru", "word_lm", "word_lm_dynamo"] {
        for mode in [LstmMode::Ort, LstmMode::Onnx, LstmMode::WeightOnly] {
            for per_channel in [false, true] {
                let mut model = load(root.join(format!("{name}.onnx"))).unwrap();
                // The dynamo export computes W/R/B with Slice/Concat chains: fold them first,
                // as the driver does.
                fold_constants(&mut model).unwrap();
                let targets: Vec<String> = model
                    .graph
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.op_type(), "LSTM" | "GRU" | "RNN"))
                    .map(|n| n.name().to_string())
                    .collect();
                assert!(!targets.is_empty(), "{name} has no recurrent node");
                for t in &targets {
                    let idx = model
                        .graph
                        .nodes
                        .iter()
                        .position(|n| n.name() == t)
                        .unwrap();
                    let opts = WeightQuantOptions::default();
                    if let Err(e) = rewrite_at(&mut model, idx, mode, per_channel, opts) {
                        panic!("{name} {t} {}: {e}", mode_name(mode));
                    }
                }
                let tag = format!("{name}.{}.{per_channel}", mode_name(mode));
                let file = dir.path().join(format!("{tag}.onnx"));
                save(&model, &file, &SaveOptions::default()).unwrap();
                jobs.push(serde_json::json!({
                    "tag": tag, "file": file.to_str().unwrap(),
                    "npz": root.join(format!("{name}.npz")).to_str().unwrap(),
                }));
            }
        }
    }
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_vec(&jobs).unwrap()).unwrap();
    let out = run_python(&[&script("compare.py"), Path::new("--npz"), &jobs_file]);
    let mut failures = Vec::new();
    let mut n = 0;
    for line in out.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        n += 1;
        let tag = r["job"]["tag"].as_str().unwrap().to_string();
        if let Some(e) = r["error"].as_str() {
            failures.push(format!("{tag}: {e}"));
            continue;
        }
        for m in r["metrics"].as_array().unwrap() {
            let (max_abs, cos, absmax) = (
                m["max_abs"].as_f64().unwrap(),
                m["cosine"].as_f64().unwrap(),
                m["ref_absmax"].as_f64().unwrap(),
            );
            eprintln!(
                "{tag} {}: max abs {max_abs:.4} (ref |max| {absmax:.2}), cosine {cos:.6}",
                m["name"]
            );
            // Logits are not ~1 in magnitude: the error bound scales with them.
            if !(max_abs <= 0.05 * absmax.max(1.0) && cos >= 0.999) {
                failures.push(format!(
                    "{tag} {}: max abs {max_abs:.4} (ref |max| {absmax:.2}), cosine {cos:.6}",
                    m["name"]
                ));
            }
        }
    }
    assert_eq!(n, jobs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Not a check: rewrites every recurrent node of `$RNN_BENCH_MODEL` in each mode (per-tensor)
/// and writes `<model>.<mode>.onnx` beside it, for timing with onnxruntime.
/// `RNN_BENCH_MODEL=path cargo test --test rewrite_rnn -- --ignored write_bench_models`
#[test]
#[ignore]
fn write_bench_models() {
    let path = PathBuf::from(std::env::var("RNN_BENCH_MODEL").expect("set RNN_BENCH_MODEL"));
    for mode in [LstmMode::Ort, LstmMode::Onnx, LstmMode::WeightOnly] {
        let mut model = load(&path).unwrap();
        let targets: Vec<String> = model
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op_type(), "LSTM" | "GRU" | "RNN"))
            .map(|n| n.name().to_string())
            .collect();
        for t in &targets {
            let idx = model
                .graph
                .nodes
                .iter()
                .position(|n| n.name() == t)
                .unwrap();
            rewrite_at(&mut model, idx, mode, false, WeightQuantOptions::default()).unwrap();
        }
        let out = path.with_extension(format!("{}.onnx", mode_name(mode)));
        save(&model, &out, &SaveOptions::default()).unwrap();
        eprintln!("wrote {}", out.display());
    }
}
