//! Transformers that onnxruntime's transformer optimizer has fused (the step onnxruntime's
//! docs advise before `quantize_dynamic`):
//! - SkipLayerNormalization, BiasGelu and FastGelu in the com.microsoft domain sit between the
//!   MatMuls of the committed fixtures: the rewrite must still know that those MatMuls read
//!   float tensors and quantize every Linear the unfused model has;
//! - a fused com.microsoft Attention (tests/ms_transformer_e2e.py's BERT, with a raw mask and
//!   with EmbedLayerNormalization's mask index) becomes QAttention, and one with an attribute
//!   QAttention lacks stays float and says why.
//!
//! Every output passes `check_model(full_check=True)` and agrees with the optimized float model
//! in onnxruntime and in `--verify`.

mod common;

use std::path::Path;

use common::*;

/// Optimizes argv[1] (model_type argv[2]: 4 heads, hidden 64, as the fixtures are) into
/// argv[3] with the optimizer's pure-python fusions (opt_level 0: no onnxruntime graph
/// passes, no torch), and prints the com.microsoft op types it wrote.
const OPTIMIZE_PY: &str = r#"
import sys, onnx
from onnxruntime.transformers import optimizer
src, kind, out = sys.argv[1:4]
m = optimizer.optimize_model(src, model_type=kind, num_heads=4, hidden_size=64, opt_level=0)
m.save_model_to_file(out)
print(" ".join(sorted({n.op_type for n in onnx.load(out).graph.node if n.domain == "com.microsoft"})))
"#;

/// Quantized MatMul/Gemm nodes of a rewrite report.
fn quantized_linears(report: &serde_json::Value) -> usize {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["quantized"].as_bool() == Some(true)
                && matches!(n["op_type"].as_str(), Some("MatMul" | "Gemm"))
        })
        .count()
}

/// Rewrites `model` into `out` (every MatMul, however small) with `--verify` on the inputs of
/// `npz`, checks the verdict, and returns the `--report`.
fn rewrite_verified(model: &Path, npz: &Path, out: &Path) -> serde_json::Value {
    let samples = out.with_extension("samples");
    std::fs::create_dir_all(&samples).unwrap();
    std::fs::copy(npz, samples.join("sample.npz")).unwrap();
    let report = out.with_extension("json");
    let run = rewrite(
        model,
        out,
        &[
            "--min-weight-elements",
            "1",
            "--min-inner-dim",
            "1",
            "--inputs",
            samples.to_str().unwrap(),
            "--verify",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("verify: within tolerance"),
        "{}: {stdout}",
        model.display()
    );
    read_report(&report)
}

#[test]
fn optimized_transformers_quantize_every_linear() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kind, gelu) in [
        ("bert_encoder", "bert", "BiasGelu"),
        ("gpt2_decoder", "gpt2", "FastGelu"),
    ] {
        let float = fixture(&format!("transformer/{name}.onnx"));
        let npz = fixture(&format!("transformer/{name}.npz"));
        let optimized = dir.path().join(format!("{name}_opt.onnx"));
        let fused = py(
            OPTIMIZE_PY,
            &[float.to_str().unwrap(), kind, optimized.to_str().unwrap()],
        );
        assert!(
            fused.contains("SkipLayerNormalization") && fused.contains(gelu),
            "{name}: the optimizer wrote {fused}"
        );
        let mut counts = Vec::new();
        for (model, tag) in [(&float, "plain"), (&optimized, "optimized")] {
            let out = dir.path().join(format!("{name}_{tag}_q.onnx"));
            let r = rewrite_verified(model, &npz, &out);
            for n in r["nodes"].as_array().unwrap() {
                let reason = n["reason"].as_str().unwrap_or("");
                assert!(
                    !reason.contains("unknown element type"),
                    "{name} {tag}: {n}"
                );
            }
            counts.push(quantized_linears(&r));
            let v = compare(&out, model, Some(&npz));
            assert!(min_cos(&v) > 0.999, "{name} {tag} in onnxruntime: {v}");
        }
        assert!(
            counts[0] > 0 && counts[1] == counts[0],
            "{name}: quantized MatMul/Gemm nodes, plain / optimized: {counts:?}"
        );
    }
}

/// tests/ms_transformer_e2e.py's optimized BERTs, plus a copy of the raw-mask one whose
/// Attention nodes carry `qkv_hidden_sizes` (which QAttention has no form of).
const E2E_PY: &str = r#"
import runpy, sys, onnx
from onnx import helper
out, fixtures, script = sys.argv[1:4]
sys.argv = [script, out, fixtures]
runpy.run_path(script, run_name="__main__")
m = onnx.load(f"{out}/bert_opt_raw.onnx")
for n in m.graph.node:
    if n.op_type == "Attention":
        h = 32
        n.attribute.append(helper.make_attribute("qkv_hidden_sizes", [h, h, h]))
onnx.save(m, f"{out}/bert_opt_qkv.onnx")
"#;

#[test]
fn fused_attention_becomes_qattention() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo().join("tests/ms_transformer_e2e.py");
    py(
        E2E_PY,
        &[
            dir.path().to_str().unwrap(),
            repo().join("fixtures").to_str().unwrap(),
            script.to_str().unwrap(),
        ],
    );
    for name in ["bert_opt_raw", "bert_opt_index", "bert_opt_qkv"] {
        let model = dir.path().join(format!("{name}.onnx"));
        let npz = dir.path().join(format!(
            "{}.npz",
            if name == "bert_opt_qkv" {
                "bert_opt_raw"
            } else {
                name
            }
        ));
        let out = dir.path().join(format!("{name}_q.onnx"));
        let r = rewrite_verified(&model, &npz, &out);
        let attention: Vec<&serde_json::Value> = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["op_type"] == "Attention")
            .collect();
        assert_eq!(attention.len(), 2, "{name}: {r}");
        for n in &attention {
            let reason = n["reason"].as_str().unwrap();
            if name == "bert_opt_qkv" {
                assert_eq!(n["quantized"], false, "{n}");
                assert!(
                    reason.contains("'qkv_hidden_sizes' has no QAttention form"),
                    "{n}"
                );
            } else {
                assert_eq!(n["quantized"], true, "{n}");
                assert!(reason.starts_with("QAttention"), "{n}");
            }
        }
        let v = compare(&out, &model, Some(&npz));
        let ops = ops(&v);
        let fused = name != "bert_opt_qkv";
        assert_eq!(
            ops.iter().any(|o| o == "QAttention"),
            fused,
            "{name}: {ops:?}"
        );
        assert_eq!(
            ops.iter().any(|o| o == "Attention"),
            !fused,
            "{name}: {ops:?}"
        );
        assert!(min_cos(&v) > 0.999, "{name} in onnxruntime: {v}");
    }
}
