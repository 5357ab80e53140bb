//! Transformers that onnxruntime's transformer optimizer has fused (the step onnxruntime's
//! docs advise before `quantize_dynamic`):
//! - SkipLayerNormalization, BiasGelu and FastGelu in the com.microsoft domain sit between the
//!   MatMuls of the committed fixtures: the rewrite must still know that those MatMuls read
//!   float tensors and quantize every Linear the unfused model has;
//! - a fused com.microsoft Attention (tests/ms_transformer_e2e.py's BERT, with a raw mask and
//!   with EmbedLayerNormalization's mask index) becomes QAttention, and one with an attribute
//!   QAttention lacks stays float and says why; its EmbedLayerNormalization becomes
//!   QEmbedLayerNormalization.
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

/// tests/ms_transformer_e2e.py's optimized BERTs, plus two copies of the raw-mask one: with
/// `qkv_hidden_sizes` on its Attention nodes, and with EmbedLayerNormalization's
/// `embedding_sum` output used (as a graph output); the quantized ops have no form of either.
const E2E_PY: &str = r#"
import runpy, sys, onnx
from onnx import helper, TensorProto
out, fixtures, script = sys.argv[1:4]
sys.argv = [script, out, fixtures]
runpy.run_path(script, run_name="__main__")
m = onnx.load(f"{out}/bert_opt_raw.onnx")
for n in m.graph.node:
    if n.op_type == "Attention":
        n.attribute.append(helper.make_attribute("qkv_hidden_sizes", [32, 32, 32]))
onnx.save(m, f"{out}/bert_opt_qkv.onnx")
m = onnx.load(f"{out}/bert_opt_raw.onnx")
for n in m.graph.node:
    if n.op_type == "EmbedLayerNormalization":
        while len(n.output) < 2:
            n.output.append("")
        if not n.output[1]:
            n.output[1] = "mask_index_unused"
        n.output.append("embedding_sum")
m.graph.output.append(helper.make_tensor_value_info("embedding_sum", TensorProto.FLOAT, ["batch", "seq", 32]))
onnx.save(m, f"{out}/bert_opt_sum.onnx")
"#;

/// The report entries of `op_type`; checks each is quantized into `quantized_op` or, when
/// `float_because` is given, left float with a reason containing it.
fn check_family(
    r: &serde_json::Value,
    op_type: &str,
    quantized_op: &str,
    float_because: Option<&str>,
) {
    let nodes: Vec<&serde_json::Value> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["op_type"] == op_type)
        .collect();
    assert!(!nodes.is_empty(), "no {op_type} in {r}");
    for n in nodes {
        let reason = n["reason"].as_str().unwrap();
        match float_because {
            Some(why) => {
                assert_eq!(n["quantized"], false, "{n}");
                assert!(reason.contains(why), "{n}");
            }
            None => {
                assert_eq!(n["quantized"], true, "{n}");
                assert!(reason.starts_with(quantized_op), "{n}");
            }
        }
    }
}

#[test]
fn fused_attention_and_embeddings_become_quantized_ops() {
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
    // (model, its inputs, why Attention stays float, why EmbedLayerNormalization does)
    let cases = [
        ("bert_opt_raw", "bert_opt_raw", None, None),
        ("bert_opt_index", "bert_opt_index", None, None),
        (
            "bert_opt_qkv",
            "bert_opt_raw",
            Some("'qkv_hidden_sizes' has no QAttention form"),
            None,
        ),
        (
            "bert_opt_sum",
            "bert_opt_raw",
            None,
            Some("embedding_sum output has no QEmbedLayerNormalization form"),
        ),
    ];
    for (name, inputs, attention_float, eln_float) in cases {
        let model = dir.path().join(format!("{name}.onnx"));
        let npz = dir.path().join(format!("{inputs}.npz"));
        let out = dir.path().join(format!("{name}_q.onnx"));
        let r = rewrite_verified(&model, &npz, &out);
        check_family(&r, "Attention", "QAttention", attention_float);
        check_family(
            &r,
            "EmbedLayerNormalization",
            "QEmbedLayerNormalization",
            eln_float,
        );
        let v = compare(&out, &model, Some(&npz));
        let ops = ops(&v);
        for (float_op, quantized_op, stays_float) in [
            ("Attention", "QAttention", attention_float.is_some()),
            (
                "EmbedLayerNormalization",
                "QEmbedLayerNormalization",
                eln_float.is_some(),
            ),
        ] {
            assert_eq!(
                ops.iter().any(|o| o == float_op),
                stays_float,
                "{name}: {ops:?}"
            );
            assert_eq!(
                ops.iter().any(|o| o == quantized_op),
                !stays_float,
                "{name}: {ops:?}"
            );
        }
        assert!(min_cos(&v) > 0.999, "{name} in onnxruntime: {v}");
    }
}
