//! The com.microsoft ops of onnxruntime's transformer optimizer and quantizer in our runtime
//! against onnxruntime (1.32) on the same files:
//! - one small model per op and attribute variant (tests/ms_transformer_cases.py: Attention's
//!   mask forms, unidirectional, past/present, attention_bias, qkv_hidden_sizes, scale and
//!   mask_filter_value; QAttention with int8/uint8 weights, per-tensor and per-column scales,
//!   past; MultiHeadAttention with separate, packed and `[B, N, L, H]` keys and values,
//!   bias, masks, attention_bias and past/present; GroupQueryAttention on prompts (separate and
//!   packed QKV, one or several key/value heads), decoding and later prompts with a past,
//!   local windows, softcap, scale and smooth softmax; EmbedLayerNormalization with and without segments, mask, position_ids and the sum
//!   output; MatMulNBits at 2, 4 and 8 bits with packed, float and no zero points, g_idx, a
//!   ragged last block and bias; the gelu, layer-norm and FusedMatMul ops). Where onnxruntime
//!   refuses a model (Attention's 4-D mask) ours must refuse it too.
//! - end to end (tests/ms_transformer_e2e.py): a BERT encoder in the classic export's graph
//!   pattern, run through onnxruntime's transformer optimizer (EmbedLayerNormalization,
//!   Attention with a raw 2-D mask or EmbedLayerNormalization's mask index,
//!   SkipLayerNormalization, BiasGelu) and then `quantize_dynamic` (QEmbedLayerNormalization,
//!   QAttention, MatMulInteger); the committed fixtures/transformer/bert_encoder.onnx through
//!   both (its attention is not fused); and an MLP through `MatMulNBitsQuantizer` at 4 and 8
//!   bits.
//!
//! Every output must match onnxruntime's within 1e-4 of its scale (max(1, max |output|));
//! integer outputs exactly.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::fixture_io::{compare, read_npz, split_sample};
use onnx_dynq::runtime::{Session, Value};

const TOL: f64 = 1e-4;

/// Runs `model` on the inputs of `npz` and compares with its outputs; returns the worst
/// |ours - onnxruntime| / scale over the outputs.
fn check(model: &Path, npz: &Path) -> f64 {
    let name = model.file_stem().unwrap().to_string_lossy().into_owned();
    let (feed, want) = split_sample(&read_npz(npz));
    let m = onnx_dynq::load(model).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let s = Session::new(&m, &common::ort_like_options())
        .unwrap_or_else(|e| panic!("{name}: plan: {e}"));
    let got: HashMap<String, Value> = s
        .run(feed)
        .unwrap_or_else(|e| panic!("{name}: run: {e}"))
        .into_iter()
        .collect();
    let mut worst = 0.0f64;
    for (out, w) in &want {
        let g = got
            .get(out)
            .unwrap_or_else(|| panic!("{name}: no output {out}"));
        assert_eq!(g.dtype(), w.dtype(), "{name}: output {out} type");
        assert_eq!(g.shape(), w.shape(), "{name}: output {out} shape");
        let d = compare(g, w, TOL);
        assert!(
            d.ok(),
            "{name}: output {out} differs from onnxruntime by {:e} (limit {:e})",
            d.max_abs,
            d.limit
        );
        worst = worst.max(d.max_abs / (d.limit / TOL));
    }
    worst
}

/// Makes the cases whose names start with one of `prefixes` and checks each.
fn run_cases(prefixes: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_python(
        include_str!("ms_transformer_cases.py"),
        &[dir.path(), Path::new(prefixes)],
    );
    let cases: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert!(!cases.is_empty(), "no cases for {prefixes}");
    let mut worst = 0.0f64;
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let model = dir.path().join(format!("{name}.onnx"));
        if let Some(ort_err) = c["error"].as_str() {
            // onnxruntime refuses the model: ours must refuse it too, at plan or run time.
            let m = onnx_dynq::load(&model).unwrap();
            let (feed, _) = split_sample(&read_npz(&dir.path().join(format!("{name}.npz"))));
            let ours = Session::new(&m, &common::ort_like_options()).and_then(|s| s.run(feed));
            let e = ours.err().unwrap_or_else(|| {
                panic!("{name}: onnxruntime refuses it ({ort_err}) but our runtime runs it")
            });
            eprintln!("{name}: refused, as by onnxruntime: {e}");
            continue;
        }
        let rel = check(&model, &dir.path().join(format!("{name}.npz")));
        eprintln!("{name}: max |ours - onnxruntime| / scale = {rel:.2e}");
        worst = worst.max(rel);
    }
    eprintln!("{prefixes}: {} cases, worst {worst:.2e}", cases.len());
}

#[test]
fn attention_matches_onnxruntime() {
    run_cases("attn_");
}

#[test]
fn multi_head_attention_matches_onnxruntime() {
    run_cases("mha_");
}

#[test]
fn group_query_attention_matches_onnxruntime() {
    run_cases("gqa_");
}

#[test]
fn qattention_matches_onnxruntime() {
    run_cases("qattn_");
}

#[test]
fn embed_layer_normalization_matches_onnxruntime() {
    run_cases("eln_");
}

#[test]
fn matmul_nbits_matches_onnxruntime() {
    run_cases("mnb_");
}

#[test]
fn gelu_layer_norm_and_fused_matmul_match_onnxruntime() {
    run_cases("gelu,bias_gelu,fast_gelu,skip_,fused_matmul");
}

/// The models of tests/ms_transformer_e2e.py, made once per test run.
fn e2e_dir() -> &'static (tempfile::TempDir, serde_json::Value) {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, serde_json::Value)> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = common::repo().join("fixtures");
        let out = common::run_python(
            include_str!("ms_transformer_e2e.py"),
            &[dir.path(), &fixtures],
        );
        let last = out.lines().last().unwrap_or("");
        let summary: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!("e2e script output is not JSON ({e}): {out}");
        });
        (dir, summary)
    })
}

/// Checks the e2e model `name`, first that it holds each op of `ops`.
fn check_e2e(name: &str, ops: &[&str]) {
    let (dir, summary) = e2e_dir();
    for op in ops {
        assert!(
            summary[name][op].as_u64().unwrap_or(0) > 0,
            "{name} has no {op}: {}",
            summary[name]
        );
    }
    let rel = check(
        &dir.path().join(format!("{name}.onnx")),
        &dir.path().join(format!("{name}.npz")),
    );
    eprintln!(
        "{name} ({}): max |ours - onnxruntime| / scale = {rel:.2e}",
        summary[name]
    );
}

#[test]
fn bert_through_the_transformer_optimizer_matches_onnxruntime() {
    check_e2e("bert", &["LayerNormalization", "Softmax"]);
    let fused = [
        "EmbedLayerNormalization",
        "Attention",
        "SkipLayerNormalization",
        "BiasGelu",
    ];
    check_e2e("bert_opt_raw", &fused);
    check_e2e("bert_opt_index", &fused);
}

#[test]
fn optimized_bert_through_quantize_dynamic_matches_onnxruntime() {
    check_e2e(
        "bert_opt_q",
        &["QEmbedLayerNormalization", "QAttention", "MatMulInteger"],
    );
}

/// The committed TorchScript encoder: the optimizer fuses its layer norms and GELUs but not its
/// attention (whose mask the export builds with IsNaN/Where, a pattern the optimizer does not
/// match); then quantize_dynamic per channel.
#[test]
fn bert_fixture_through_the_optimizer_and_quantizer_matches_onnxruntime() {
    check_e2e("fixture_opt", &["SkipLayerNormalization", "BiasGelu"]);
    check_e2e(
        "fixture_opt_q",
        &["SkipLayerNormalization", "MatMulInteger"],
    );
}

#[test]
fn mlp_through_the_matmul_nbits_quantizer_matches_onnxruntime() {
    check_e2e("mlp", &["MatMul"]);
    check_e2e("mlp_nbits4", &["MatMulNBits"]);
    check_e2e("mlp_nbits8", &["MatMulNBits"]);
}
