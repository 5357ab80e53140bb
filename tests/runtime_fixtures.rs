//! The committed fixtures, fed their stored inputs and compared with PyTorch's stored outputs
//! (threads 1 and 2).

use onnx_dynq::runtime::{Options, Session, Value};

mod common;

use common::fixture;
use common::fixture_io::split_sample;

fn max_abs_diff(a: &Value, b: &Value) -> f64 {
    let f = |v: &Value| -> Vec<f64> {
        match v {
            Value::F32(a) => a.iter().map(|&x| x as f64).collect(),
            Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
            Value::F64(a) => a.iter().copied().collect(),
            other => panic!("unexpected output type {:?}", other.dtype()),
        }
    };
    f(a).iter()
        .zip(f(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn check(name: &str, tol: f64) {
    let model = onnx_dynq::load(fixture(&format!("{name}.onnx"))).unwrap();
    let data = onnx_dynq::npy::read_npz(&fixture(&format!("{name}.npz"))).unwrap();
    let (feed, want) = split_sample(&data);
    for threads in [1, 2] {
        let s = Session::new(&model, &Options::with_threads(threads)).unwrap();
        let out = s.run(feed.clone()).unwrap();
        assert_eq!(out.len(), want.len());
        for (n, v) in &out {
            let w = &want[n];
            assert_eq!(v.dtype(), w.dtype(), "{name}: output {n}");
            assert_eq!(v.shape(), w.shape(), "{name}: output {n}");
            let d = max_abs_diff(v, w);
            assert!(
                d < tol,
                "{name}: output {n} differs from torch by {d} (tolerance {tol})"
            );
        }
    }
}

#[test]
fn mlp_matches_torch() {
    check("mlp", 1e-4);
}

#[test]
fn mlp_fp16_matches_torch() {
    check("mlp_fp16", 1e-2);
}

#[test]
fn if_branch_matches_torch() {
    check("if_branch", 1e-4);
}

#[test]
fn recurrent_and_conv_fixtures_match_torch() {
    // Recurrent and conv kernels come from the kernels family; the session plans them like
    // any other op, including the dynamo export's Slice/Concat chains over flat weights.
    for name in ["gru", "bilstm", "conv_bn_relu", "word_lm", "word_lm_dynamo"] {
        check(name, 1e-4);
    }
}
