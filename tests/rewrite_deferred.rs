//! Weights whose int8 values are computed while the output is written (`rewrite` defers
//! them; see src/ir/deferred.rs and src/model/prefetch.rs) give exactly the bytes of the
//! eager rewrite: inline and with external data, for every weight option, with large weights
//! in the main graph, shared between two nodes and in both branches of an If. The CLI's
//! output also passes `check_model(full_check=True)` and agrees with the float model in
//! onnxruntime.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use onnx_dynq::model::{ExternalDataMode, SaveOptions, SaveProgress};
use onnx_dynq::passes::fuse::{FuseOptions, fuse_with};
use onnx_dynq::passes::quantize::weights::{WeightQuantOptions, WeightType};
use onnx_dynq::passes::quantize::{QuantizeOptions, quantize};

/// Writes argv[1]/big.onnx and argv[1]/feeds.npz. Every weight but `small` holds more
/// than 64 Ki elements (the size from which values are deferred):
/// - `emb = Gather(E[1200, 64], ids)`, then `h = emb @ W[64, 1100] + b`;
/// - `e2 = Gather(T[17000, 8], ids2)`: enough rows for the scales to be deferred too;
/// - `y1 = h @ V[1100, 80]`, `y2 = Gemm(h, V^T stored as Vt[80, 1100], transB=1)`: two forms
///   of one matrix, and `y3 = h @ V` again (shared with y1);
/// - `z = If(flag) then h @ A[1100, 70] else h @ B[1100, 70]` with A and B outer-scope
///   initializers;
/// - a small MatMul (below the threshold).
const MAKE: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out = sys.argv[1]
rng = np.random.default_rng(11)
def w(*shape, s=0.1):
    return (rng.standard_normal(shape) * s).astype(np.float32)
E, W, b, V, A, B, S = w(1200, 64, s=0.5), w(64, 1100), w(1100), w(1100, 80), w(1100, 70), w(1100, 70), w(80, 8)
branch = lambda name, weight: h.make_graph(
    [h.make_node("MatMul", ["h", weight], ["z_" + name], name="mm_" + name)],
    name, [], [h.make_tensor_value_info("z_" + name, T.FLOAT, [2, 5, 70])])
nodes = [
    h.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
    h.make_node("Gather", ["Tb", "ids2"], ["e2"], name="embed2"),
    h.make_node("MatMul", ["emb", "W"], ["hw"], name="lin"),
    h.make_node("Add", ["hw", "b"], ["h"], name="lin_bias"),
    h.make_node("MatMul", ["h", "V"], ["y1"], name="head1"),
    h.make_node("Reshape", ["h", "flat"], ["h2"], name="flatten"),
    h.make_node("Gemm", ["h2", "Vt"], ["y2"], name="head2", transB=1),
    h.make_node("MatMul", ["h", "V"], ["y3"], name="head3"),
    h.make_node("MatMul", ["y1", "S"], ["ys"], name="small"),
    h.make_node("If", ["flag"], ["z"], name="branch",
                then_branch=branch("then", "A"), else_branch=branch("else", "B")),
]
g = h.make_graph(
    nodes, "big",
    [h.make_tensor_value_info("ids", T.INT64, [2, 5]), h.make_tensor_value_info("flag", T.BOOL, []),
     h.make_tensor_value_info("ids2", T.INT64, [3])],
    [h.make_tensor_value_info("y1", T.FLOAT, [2, 5, 80]), h.make_tensor_value_info("y2", T.FLOAT, [10, 80]),
     h.make_tensor_value_info("y3", T.FLOAT, [2, 5, 80]), h.make_tensor_value_info("ys", T.FLOAT, [2, 5, 8]),
     h.make_tensor_value_info("z", T.FLOAT, [2, 5, 70]), h.make_tensor_value_info("e2", T.FLOAT, [3, 8])],
    [nh.from_array(E, "E"), nh.from_array(W, "W"), nh.from_array(b, "b"), nh.from_array(V, "V"),
     nh.from_array(np.ascontiguousarray(V.T), "Vt"), nh.from_array(A, "A"), nh.from_array(B, "B"),
     nh.from_array(S, "S"), nh.from_array(np.array([10, 1100], np.int64), "flat"),
     nh.from_array(w(17000, 8, s=1.0), "Tb")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
onnx.checker.check_model(m, full_check=True)
onnx.save(m, out + "/big.onnx")
np.savez(out + "/feeds.npz", **{"input.ids": rng.integers(0, 1200, (2, 5)).astype(np.int64),
                                "input.ids2": np.array([0, 16999, 12345], np.int64),
                                "input.flag": np.array(True)})
"#;

fn options(weights: WeightQuantOptions, per_channel: bool, defer: bool) -> QuantizeOptions {
    QuantizeOptions {
        weights,
        per_channel,
        defer_values: defer,
        ..Default::default()
    }
}

/// Fuses, quantizes (deferred or not) and saves `input` to `output`; returns the bytes of
/// the model file and of its external data file (empty when inline). Checks the progress
/// the save reports.
fn rewrite_lib(
    input: &Path,
    output: &Path,
    opts: &QuantizeOptions,
    external: bool,
) -> (Vec<u8>, Vec<u8>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut model = onnx_dynq::load(input).unwrap();
    fuse_with(&mut model, FuseOptions::default()).unwrap();
    quantize(&mut model, opts, &mut |_, _, _| {}).unwrap();
    let save = SaveOptions {
        external_data: if external {
            ExternalDataMode::Always
        } else {
            ExternalDataMode::Never
        },
        protect: vec![input.to_path_buf()],
        progress: Some(SaveProgress(Arc::new({
            let calls = calls.clone();
            move |done, total| calls.lock().unwrap().push((done, total))
        }))),
    };
    let saved = onnx_dynq::save(&model, output, &save).unwrap();
    let data = saved
        .external_file
        .map(|p| std::fs::read(p).unwrap())
        .unwrap_or_default();
    let model_file = std::fs::read(output).unwrap();
    // The progress goes up to the size of the file that holds the tensors.
    let calls = calls.lock().unwrap();
    let &(last, total) = calls.last().expect("progress was reported");
    assert_eq!(last, total);
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1)
    );
    if external {
        // Alignment padding is not counted.
        assert!(total <= data.len() as u64 && total + 64 * 20 > data.len() as u64);
    } else {
        assert_eq!(total, model_file.len() as u64);
    }
    (model_file, data)
}

#[test]
fn deferred_values_write_the_same_bytes_as_eager_ones() {
    let dir = tempfile::tempdir().unwrap();
    run_python(MAKE, &[dir.path()]);
    let input = dir.path().join("big.onnx");
    std::fs::create_dir(dir.path().join("eager")).unwrap();
    std::fs::create_dir(dir.path().join("lazy")).unwrap();
    let weight_options = [
        WeightQuantOptions::default(),
        WeightQuantOptions {
            weight_type: WeightType::Uint8,
            symmetric: false,
            reduce_range: false,
        },
        WeightQuantOptions {
            weight_type: WeightType::Int8,
            symmetric: true,
            reduce_range: true,
        },
    ];
    for weights in weight_options {
        for per_channel in [false, true] {
            for external in [false, true] {
                let case = format!("{weights:?} per_channel {per_channel} external {external}");
                // Same file names in two folders: the model names its data file.
                let eager = rewrite_lib(
                    &input,
                    &dir.path().join("eager").join("m.onnx"),
                    &options(weights, per_channel, false),
                    external,
                );
                let lazy = rewrite_lib(
                    &input,
                    &dir.path().join("lazy").join("m.onnx"),
                    &options(weights, per_channel, true),
                    external,
                );
                assert!(eager.0 == lazy.0, "{case}: model files differ");
                assert!(eager.1 == lazy.1, "{case}: external data files differ");
                assert_eq!(external, !eager.1.is_empty(), "{case}");
            }
        }
    }
}

#[test]
fn deferred_output_of_the_cli_is_valid_and_agrees_with_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    run_python(MAKE, &[dir.path()]);
    let input = dir.path().join("big.onnx");
    let feeds = dir.path().join("feeds.npz");
    for extra in [&[][..], &["--per-channel"][..], &["--external-data"][..]] {
        let output = dir.path().join("q.onnx");
        let report = dir.path().join("report.json");
        let mut args = vec!["--report", report.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = rewrite(&input, &output, &args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = read_report(&report);
        let quantized: Vec<&str> = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["quantized"].as_bool() == Some(true))
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        for node in [
            "embed", "embed2", "head1", "head2", "head3", "mm_then", "mm_else",
        ] {
            assert!(
                quantized.contains(&node),
                "{extra:?}: {node} not quantized: {quantized:?}"
            );
        }
        let v = compare(&output, &input, Some(&feeds));
        assert!(min_cos(&v) > 0.999, "{extra:?}: {v}");
    }
}
