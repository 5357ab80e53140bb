//! Output guarantees of `rewrite`: deterministic bytes, atomic writes (a failing save leaves
//! nothing behind), the input protected, external data in and out, and the JSON report.

mod common;

use std::path::Path;

use common::*;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_runs_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["word_lm", "if_branch", "mlp_fp16"] {
        let a = dir.path().join(format!("{f}_a.onnx"));
        let b = dir.path().join(format!("{f}_b.onnx"));
        let args = [
            "--min-weight-elements",
            "1",
            "--min-inner-dim",
            "1",
            "--per-channel",
        ];
        rewrite(&fixture(&format!("{f}.onnx")), &a, &args);
        rewrite(&fixture(&format!("{f}.onnx")), &b, &args);
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(x == y, "{f}: two runs differ");
    }
}

#[test]
fn a_failing_save_leaves_no_output_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    // OUT is an existing, non-empty folder: the final rename fails.
    let out = dir.path().join("out.onnx");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let before = entries(dir.path());
    let r = cli(&[
        "rewrite",
        fixture("mlp.onnx").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(entries(dir.path()), before, "leftovers after a failed save");
    assert_eq!(entries(&out), vec!["keep".to_string()]);
    // With external data: the data file must not be left behind either.
    let r = cli(&[
        "rewrite",
        fixture("mlp.onnx").to_str().unwrap(),
        out.to_str().unwrap(),
        "--external-data",
    ]);
    assert!(!r.status.success());
    assert_eq!(entries(dir.path()), before, "leftovers after a failed save");
    // A missing folder: nothing is created.
    let missing = dir.path().join("nope").join("out.onnx");
    let r = cli(&[
        "rewrite",
        fixture("mlp.onnx").to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert_eq!(entries(dir.path()), before);
}

#[test]
fn refuses_to_overwrite_the_input_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(fixture("mlp.onnx"), &model).unwrap();
    let original = std::fs::read(&model).unwrap();
    let r = cli(&["rewrite", model.to_str().unwrap(), model.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("--overwrite-input"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(std::fs::read(&model).unwrap(), original);
    rewrite(&model, &model, &["--overwrite-input"]);
    assert!(std::fs::read(&model).unwrap().len() < original.len());
    let v = compare(&model, &fixture("mlp.npz"), None);
    assert!(min_cos(&v) >= 0.999, "{v}");
}

#[test]
fn external_data_input_and_output_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let ext = src.join("lm.onnx");
    py(
        r#"
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,
          location="lm.weights", size_threshold=1024)
"#,
        &[
            fixture("word_lm.onnx").to_str().unwrap(),
            ext.to_str().unwrap(),
        ],
    );
    assert!(src.join("lm.weights").exists());
    // Default (auto): the input had external data, so the output has too.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("q.onnx");
    rewrite(&ext, &out, &[]);
    assert!(
        out_dir.join("q.onnx.data").exists(),
        "{:?}",
        entries(&out_dir)
    );
    // Moving the input away must not matter: the output is self-contained.
    std::fs::rename(&src, dir.path().join("gone")).unwrap();
    let v = compare(&out, &fixture("word_lm.npz"), None);
    assert!(min_cos(&v) >= 0.999, "{v}");
    // --external-data forces it for an inline input.
    let out2 = out_dir.join("q2.onnx");
    rewrite(&fixture("mlp.onnx"), &out2, &["--external-data"]);
    assert!(out_dir.join("q2.onnx.data").exists());
    let v = compare(&out2, &fixture("mlp.npz"), None);
    assert!(min_cos(&v) >= 0.999, "{v}");
}

#[test]
fn overwriting_an_external_data_input_in_place_works() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("lm.onnx");
    std::fs::copy(fixture("word_lm_dynamo.onnx"), &model).unwrap();
    std::fs::copy(
        fixture("word_lm_dynamo.onnx.data"),
        dir.path().join("word_lm_dynamo.onnx.data"),
    )
    .unwrap();
    // The input's data file is protected too.
    let data_named_out = dir.path().join("word_lm_dynamo.onnx");
    let r = cli(&[
        "rewrite",
        model.to_str().unwrap(),
        data_named_out.to_str().unwrap(),
    ]);
    assert!(!r.status.success(), "overwrote the input's external data");
    rewrite(&model, &model, &["--overwrite-input"]);
    let v = compare(&model, &fixture("word_lm_dynamo.npz"), None);
    assert!(min_cos(&v) >= 0.999, "{v}");
}

#[test]
fn report_lists_every_candidate_with_bytes_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let o = rewrite(
        &fixture("word_lm.onnx"),
        &out,
        &["--report", report.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let r = read_report(&report);
    let t = &r["totals"];
    let summary = format!(
        "quantized {} node(s), skipped {}",
        t["nodes_quantized"], t["nodes_skipped"]
    );
    assert!(stdout.starts_with(&summary), "{stdout} vs {summary}");
    // Gather and MatMul at least (the LSTMs once their rewriter is merged).
    assert!(t["nodes_quantized"].as_u64().unwrap() >= 2, "{t}");
    let nodes = r["nodes"].as_array().unwrap();
    let ops: Vec<&str> = nodes
        .iter()
        .map(|n| n["op_type"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["Gather", "LSTM", "LSTM", "MatMul"]);
    let mut before = 0;
    let mut after = 0;
    for n in nodes {
        let (b, a) = (
            n["weight_bytes_before"].as_u64().unwrap(),
            n["weight_bytes_after"].as_u64().unwrap(),
        );
        assert!(b > 0, "{n}");
        if n["quantized"] == true {
            // int8 plus scales: a bit over a quarter.
            assert!(a * 3 < b, "{n}");
        } else {
            assert_eq!(a, b, "{n}");
            assert!(!n["reason"].as_str().unwrap().is_empty());
        }
        before += b;
        after += a;
    }
    let t = &r["totals"];
    assert_eq!(t["weight_bytes_before"], before);
    assert_eq!(t["weight_bytes_after"], after);
    assert_eq!(
        t["file_bytes_after"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
    assert_eq!(
        t["file_bytes_before"].as_u64().unwrap(),
        std::fs::metadata(fixture("word_lm.onnx")).unwrap().len()
    );
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let r = cli(&[
        "rewrite",
        fixture("mlp.onnx").to_str().unwrap(),
        out.to_str().unwrap(),
        "--ops",
        "Softmax",
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Softmax") && err.lines().count() == 1, "{err}");
    assert!(!out.exists());
    let r = cli(&["rewrite", "/nonexistent.onnx", out.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(!out.exists());
}
