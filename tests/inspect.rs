//! `inspect --json` on every fixture agrees with the onnx Python package's view of the model:
//! versions, interface, op histogram (subgraphs included) and initializer bytes; and the
//! quantization candidates are the ones a user would expect.

mod common;

use serde_json::Value;

const FACTS: &str = r#"
import sys, json, collections, onnx, numpy as np
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
hist = collections.Counter()
inits = 0
def walk(g):
    global inits
    for t in g.initializer:
        inits += numpy_helper.to_array(t).nbytes
    for n in g.node:
        hist[(n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type] += 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH: walk(a.g)
            for sg in a.graphs: walk(sg)
walk(m.graph)
init_names = {t.name for t in m.graph.initializer}
print(json.dumps({
  "ir_version": m.ir_version,
  "opsets": sorted([[o.domain or "ai.onnx", o.version] for o in m.opset_import]),
  "inputs": [i.name for i in m.graph.input if i.name not in init_names],
  "outputs": [o.name for o in m.graph.output],
  "hist": hist, "init_bytes": inits}))
"#;

fn inspect_json(path: &std::path::Path) -> Value {
    let out = common::cli(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_agrees_with_onnx_on_every_fixture() {
    for f in common::fixture_models() {
        let ours = inspect_json(&f);
        let theirs: Value =
            serde_json::from_str(&common::run_python(FACTS, &[f.as_path()])).unwrap();
        let name = f.display();
        assert_eq!(ours["ir_version"], theirs["ir_version"], "{name}");
        let mut opsets: Vec<(String, i64)> = ours["opsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["domain"].as_str().unwrap().to_string(),
                    o["version"].as_i64().unwrap(),
                )
            })
            .collect();
        opsets.sort();
        let expected: Vec<(String, i64)> =
            serde_json::from_value(theirs["opsets"].clone()).unwrap();
        assert_eq!(opsets, expected, "{name}");
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            serde_json::json!(names(&ours["inputs"])),
            theirs["inputs"],
            "{name}"
        );
        assert_eq!(
            serde_json::json!(names(&ours["outputs"])),
            theirs["outputs"],
            "{name}"
        );
        assert_eq!(ours["op_histogram"], theirs["hist"], "{name}");
        assert_eq!(ours["initializer_bytes"], theirs["init_bytes"], "{name}");
        // Every candidate node is listed exactly once, quantizable or not.
        let listed = ours["quantizable"].as_array().unwrap().len()
            + ours["skipped"].as_array().unwrap().len();
        let hist = theirs["hist"].as_object().unwrap();
        let candidates: u64 = ["MatMul", "Gemm", "LSTM", "GRU", "RNN", "Gather", "Conv"]
            .iter()
            .filter_map(|op| hist.get(*op).and_then(Value::as_u64))
            .sum();
        assert_eq!(listed as u64, candidates, "{name}");
    }
}

fn quantizable_ops(v: &Value) -> Vec<String> {
    let mut ops: Vec<String> = v["quantizable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["op_type"].as_str().unwrap().to_string())
        .collect();
    ops.sort();
    ops
}

#[test]
fn word_lm_candidates() {
    let v = inspect_json(&common::fixture("word_lm.onnx"));
    let ops = quantizable_ops(&v);
    // The embedding, both LSTM layers, and the decoder.
    assert!(ops.contains(&"Gather".to_string()), "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "LSTM").count(), 2, "{ops:?}");
    assert!(ops.iter().any(|o| o == "MatMul" || o == "Gemm"), "{ops:?}");
}

#[test]
fn dynamo_word_lm_weights_behind_constant_chains_are_candidates() {
    let v = inspect_json(&common::fixture("word_lm_dynamo.onnx"));
    let ops = quantizable_ops(&v);
    assert_eq!(
        ops.iter().filter(|o| *o == "LSTM").count(),
        2,
        "{ops:?}: {v}"
    );
}

#[test]
fn conv_is_off_by_default_and_on_request() {
    let f = common::fixture("conv_bn_relu.onnx");
    let v = inspect_json(&f);
    let skipped = v["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|d| d["op_type"] == "Conv" && d["reason"].as_str().unwrap().contains("--ops"))
    );
    let out = common::cli(&[
        "inspect",
        "--json",
        "--ops",
        "Conv",
        "--min-weight-elements",
        "1",
        "--min-inner-dim",
        "1",
        f.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["quantizable"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["op_type"] == "Conv"),
        "{v}"
    );
}

#[test]
fn if_branch_weights_are_found_through_outer_scope() {
    // Its branch weights are 64x64, under the default size threshold.
    let f = common::fixture("if_branch.onnx");
    let out = common::cli(&[
        "inspect",
        "--json",
        "--min-weight-elements",
        "4096",
        f.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = v["quantizable"].as_array().unwrap();
    assert!(
        q.iter().any(|d| !d["scope"].as_str().unwrap().is_empty()),
        "no quantizable node inside the If branches: {v}"
    );
}

#[test]
fn small_weights_are_skipped_with_the_threshold_named() {
    let f = common::fixture("mlp.onnx");
    let out = common::cli(&[
        "inspect",
        "--json",
        "--min-weight-elements",
        "100000000",
        f.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["quantizable"].as_array().unwrap().is_empty());
    assert!(v["skipped"].as_array().unwrap().iter().all(|d| {
        d["reason"]
            .as_str()
            .unwrap()
            .contains("--min-weight-elements")
    }));
}

#[test]
fn text_output_lists_the_essentials() {
    let out = common::cli(&["inspect", common::fixture("word_lm.onnx").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "ir_version",
        "inputs:",
        "outputs:",
        "ops (",
        "initializers (",
        "quantizable (",
        "left float (",
    ] {
        assert!(s.contains(want), "{want} missing:\n{s}");
    }
}

#[test]
fn unknown_fields_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(common::fixture("mlp.onnx")).unwrap();
    // Field 100 (varint) = 1: not in the onnx 1.23 schema.
    bytes.extend_from_slice(&[0xA0, 0x06, 0x01]);
    let p = dir.path().join("extra.onnx");
    std::fs::write(&p, &bytes).unwrap();
    let v = inspect_json(&p);
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{v}");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("unknown to the onnx 1.23 schema")
    );
    assert!(
        inspect_json(&common::fixture("mlp.onnx"))["warnings"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
