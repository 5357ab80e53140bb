//! `onnx-dynq rewrite --verify`: the word LM fixture rewritten with the default `--lstm ort`
//! (com.microsoft `DynamicQuantizeLSTM`, run by our runtime) passes; an impossible tolerance
//! exits 1 with the output still written; the verdict equals `onnx-dynq verify`'s on the same
//! pair and inputs.

mod common;

use serde_json::Value;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn word_lm_passes_and_agrees_with_verify() {
    let dir = tempfile::tempdir().unwrap();
    let float = common::fixture("word_lm.onnx");
    let quant = dir.path().join("wl.q.onnx");
    let report = dir.path().join("report.json");
    let out = common::cli(&[
        "rewrite",
        float.to_str().unwrap(),
        quant.to_str().unwrap(),
        "--verify",
        "--report",
        report.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verify: within tolerance"), "{text}");
    let model = std::fs::read(&quant).unwrap();
    assert!(
        model.windows(19).any(|w| w == b"DynamicQuantizeLSTM"),
        "the default rewrite should use DynamicQuantizeLSTM"
    );

    let r = common::read_report(&report);
    let v = &r["verify"];
    assert_eq!(v["pass"], true, "{v}");
    assert_eq!(v["tolerance"]["min_cosine"], 0.99);
    let names: Vec<&str> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["logits", "hn", "cn"]);
    // The quantize report itself is still there.
    assert!(r["totals"]["nodes_quantized"].as_u64().unwrap() >= 2);

    // `verify` with the same (default) random inputs gives the same metrics.
    let out = common::cli(&[
        "verify",
        float.to_str().unwrap(),
        quant.to_str().unwrap(),
        "--random-inputs",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (a, b) in v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["outputs"].as_array().unwrap())
    {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["metrics"], b["metrics"], "{}", a["name"]);
    }
}

#[test]
fn impossible_tolerance_exits_1_with_the_output_written() {
    let dir = tempfile::tempdir().unwrap();
    let float = common::fixture("word_lm.onnx");
    let quant = dir.path().join("wl.q.onnx");
    let report = dir.path().join("report.json");
    let out = common::cli(&[
        "rewrite",
        float.to_str().unwrap(),
        quant.to_str().unwrap(),
        "--verify",
        "--max-abs",
        "1e-9",
        "--seed",
        "3",
        "--dim",
        "batch=2",
        "--report",
        report.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("verify: OUTSIDE tolerance") && text.contains("written all the same"),
        "{text}"
    );
    assert!(text.contains("FAIL (max-abs"), "{text}");
    // The output is complete and loads; the report records the failed verdict.
    onnx_dynq::load(&quant).unwrap();
    let r = common::read_report(&report);
    assert_eq!(r["verify"]["pass"], false);
    assert_eq!(
        r["verify"]["outputs"][0]["shape"],
        serde_json::json!([35, 2, 1000])
    );
}
