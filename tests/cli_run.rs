//! `onnx-dynq run`: inputs from .npy files or random data, summaries, JSON, latency, .npz output.

use std::path::PathBuf;
use std::process::Command;

use onnx_dynq::runtime::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .display()
        .to_string()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn runs_on_npy_inputs_and_saves_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = onnx_dynq::npy::read_npz(std::path::Path::new(&fixture("mlp.npz"))).unwrap();
    let x = &data.iter().find(|(k, _)| k == "input.x").unwrap().1;
    let want = &data.iter().find(|(k, _)| k == "output.y").unwrap().1;
    let xp = dir.path().join("x.npy");
    std::fs::write(&xp, onnx_dynq::npy::to_npy(x)).unwrap();
    let outp = dir.path().join("out.npz");
    let out = bin()
        .args(["run", &fixture("mlp.onnx"), "--input"])
        .arg(format!("x={}", xp.display()))
        .arg("--output")
        .arg(&outp)
        .arg("--json")
        .output()
        .unwrap();
    let j = json(&out);
    let y = &j["outputs"][0];
    assert_eq!(y["name"], "y");
    assert_eq!(y["shape"], serde_json::json!([2, 10]));
    assert_eq!(y["dtype"], "float32");
    let w = want.as_f32().unwrap();
    let (min, max) = w
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    assert!((y["min"].as_f64().unwrap() - min as f64).abs() < 1e-4);
    assert!((y["max"].as_f64().unwrap() - max as f64).abs() < 1e-4);
    assert!((y["mean"].as_f64().unwrap() - mean as f64).abs() < 1e-4);
    assert!(j.get("latency_ms").is_none());
    let saved = onnx_dynq::npy::read_npz(&outp).unwrap();
    assert_eq!(saved[0].0, "y");
    let Value::F32(s) = &saved[0].1 else {
        panic!("saved output is not float32")
    };
    assert!(s.iter().zip(w.iter()).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn random_inputs_are_seeded_and_repeat_reports_latency() {
    let run = |seed: &str| {
        json(
            &bin()
                .args([
                    "run",
                    &fixture("mlp.onnx"),
                    "--random-inputs",
                    "--seed",
                    seed,
                    "--repeat",
                    "3",
                    "--json",
                    "--threads",
                    "1",
                ])
                .output()
                .unwrap(),
        )
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a["outputs"], b["outputs"]);
    assert_ne!(a["outputs"], c["outputs"]);
    let lat = &a["latency_ms"];
    let (p50, p90) = (lat["p50"].as_f64().unwrap(), lat["p90"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p90, "{lat}");
    // The symbolic batch dim defaults to 1, or takes --dim.
    assert_eq!(a["outputs"][0]["shape"], serde_json::json!([1, 10]));
    let d = json(
        &bin()
            .args([
                "run",
                &fixture("mlp.onnx"),
                "--random-inputs",
                "--dim",
                "batch=4",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(d["outputs"][0]["shape"], serde_json::json!([4, 10]));
    let p = json(
        &bin()
            .args([
                "run",
                &fixture("mlp.onnx"),
                "--random-inputs",
                "--profile",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    let ops = p["profile_ms"].as_array().expect("profile_ms array");
    assert!(!ops.is_empty());
    assert!(
        ops.iter()
            .all(|o| o["op"].is_string() && o["ms"].as_f64().is_some_and(|m| m >= 0.0))
    );
}

#[test]
fn text_summary_and_clear_errors() {
    let out = bin()
        .args([
            "run",
            &fixture("if_branch.onnx"),
            "--random-inputs",
            "--repeat",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("y: shape [") && text.contains("float32") && text.contains("mean"),
        "{text}"
    );
    assert!(text.contains("p50") && text.contains("p90"), "{text}");
    let out = bin().args(["run", &fixture("mlp.onnx")]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input 'x' not given"), "{err}");
}

/// `--inputs DIR` with one .npz sample runs it (as `verify` and `rewrite` read samples); a
/// folder of several is refused, naming how many.
#[test]
fn runs_the_one_sample_of_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    std::fs::create_dir(&one).unwrap();
    std::fs::copy(fixture("mlp.npz"), one.join("sample.npz")).unwrap();
    let data = onnx_dynq::npy::read_npz(std::path::Path::new(&fixture("mlp.npz"))).unwrap();
    let want = data
        .iter()
        .find(|(k, _)| k == "output.y")
        .unwrap()
        .1
        .clone();
    let outp = dir.path().join("out.npz");
    let out = bin()
        .args(["run", &fixture("mlp.onnx"), "--inputs"])
        .arg(&one)
        .arg("--output")
        .arg(&outp)
        .arg("--json")
        .output()
        .unwrap();
    json(&out);
    let saved = onnx_dynq::npy::read_npz(&outp).unwrap();
    let (Value::F32(got), Value::F32(w)) = (&saved[0].1, &want) else {
        panic!("outputs are not float32")
    };
    assert!(got.iter().zip(w.iter()).all(|(a, b)| (a - b).abs() < 1e-4));

    std::fs::copy(fixture("mlp.npz"), one.join("second.npz")).unwrap();
    let out = bin()
        .args(["run", &fixture("mlp.onnx"), "--inputs"])
        .arg(&one)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds 2 samples"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
