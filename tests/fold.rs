//! Constant folding keeps every fixture's outputs (checked in onnxruntime against the
//! fixture's expected outputs) and collapses the dynamo exporter's weight chains into
//! initializers the rewrite can quantize.

mod common;

use onnx_dynq::model::SaveOptions;
use onnx_dynq::passes::fold_constants::fold_constants;

const SAME_OUTPUTS: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
src, dst, npz = sys.argv[1], sys.argv[2], sys.argv[3]
onnx.checker.check_model(dst, full_check=True)
data = np.load(npz)
feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
so = ort.SessionOptions(); so.intra_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
ra = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)
rb = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"]).run(None, feeds)
for x, y in zip(ra, rb):
    assert x.shape == y.shape and x.dtype == y.dtype
    assert np.array_equal(x, y), float(np.abs(x.astype(np.float64) - y).max())
print("ok")
"#;

#[test]
fn folding_keeps_outputs_on_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for f in common::fixture_models() {
        let mut model = onnx_dynq::load(&f).unwrap();
        fold_constants(&mut model).unwrap();
        let dst = dir.path().join(f.file_name().unwrap());
        onnx_dynq::model::save(&model, &dst, &SaveOptions::default()).unwrap();
        common::run_python(SAME_OUTPUTS, &[&f, &dst, &f.with_extension("npz")]);
    }
}

#[test]
fn dynamo_lstm_weights_become_initializers() {
    let mut model = onnx_dynq::load(common::fixture("word_lm_dynamo.onnx")).unwrap();
    let before = model.graph.nodes.len();
    let folded = fold_constants(&mut model).unwrap();
    assert!(folded >= 100, "folded only {folded} of {before} nodes");
    let g = &model.graph;
    let lstms: Vec<_> = g.nodes.iter().filter(|n| n.op_type() == "LSTM").collect();
    assert_eq!(lstms.len(), 2);
    for l in lstms {
        for (i, dims) in [(1, [1, 256, 64]), (2, [1, 256, 64]), (3, [1, 512, 0])] {
            let t = g
                .initializer(l.input(i).unwrap())
                .unwrap_or_else(|| panic!("input {i} of {} is not an initializer", l.name()));
            assert_eq!(&t.dims()[..2], &dims[..2], "{}", l.name());
        }
    }
    // The flat torch parameters are gone: only the folded weights remain.
    assert!(g.initializer("rnn.weight_ih_l0").is_none());
}

#[test]
fn folding_is_a_no_op_on_a_graph_without_constant_work() {
    let mut model = onnx_dynq::load(common::fixture("mlp.onnx")).unwrap();
    let before = model.to_proto();
    assert_eq!(fold_constants(&mut model).unwrap(), 0);
    assert!(before == model.to_proto());
}
