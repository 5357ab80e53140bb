//! Transformers that onnxruntime's transformer optimizer has fused (the step onnxruntime's
//! docs advise before `quantize_dynamic`): SkipLayerNormalization, BiasGelu and FastGelu in
//! the com.microsoft domain now sit between the MatMuls. The rewrite must still know that
//! those MatMuls read float tensors and quantize every Linear the unfused model has; the
//! output passes `check_model(full_check=True)` and agrees with the optimized float model in
//! onnxruntime and in `--verify`.

mod common;

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
            let report = dir.path().join(format!("{name}_{tag}.json"));
            let samples = dir.path().join(format!("{name}_samples"));
            std::fs::create_dir_all(&samples).unwrap();
            std::fs::copy(&npz, samples.join("sample.npz")).unwrap();
            let run = rewrite(
                model,
                &out,
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
            assert!(stdout.contains("verify: within tolerance"), "{stdout}");
            let r = read_report(&report);
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
