//! Plan-time Linear fusion (`MatMul/Gemm [+ Add(bias)] [+ Relu | Clip | LeakyRelu]` as one
//! packed-kernel step): every fused form agrees with the unfused graph (run with
//! `Options::no_kernel_fusion`) and with an f64 reference; chains whose intermediate is read
//! twice or is a graph output are not fused.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use onnx_dynq::ir::attrs::{attr_float, attr_int};
use onnx_dynq::ir::{Node, Tensor};
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::{Session, Value};

mod common;
use common::graphs::{self, graph, model, node, run_profiled, untyped, vi};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn arr(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), values(shape.iter().product(), seed)).unwrap()
}

/// Initializers by name.
type Inits<'a> = HashMap<&'a str, ArrayD<f32>>;

struct Case {
    name: &'static str,
    opset: i64,
    nodes: Vec<Node>,
    inits: Vec<(&'static str, ArrayD<f32>)>,
    /// Input `x` shape.
    x: Vec<usize>,
    outputs: Vec<&'static str>,
    /// The op types of the steps the fused plan should have (from a profiled run).
    fused_steps: Vec<&'static str>,
    /// f64 reference of the first output from x and the initializers.
    reference: fn(&ArrayD<f32>, &Inits) -> ArrayD<f64>,
}

fn session(c: &Case, no_fusion: bool) -> Session {
    let outputs = c.outputs.iter().map(|o| untyped(o)).collect();
    let mut g = graph(
        vec![vi("x", DataType::Float, &c.x)],
        outputs,
        c.nodes.clone(),
    );
    for (name, a) in &c.inits {
        g.add_initializer(Tensor::from_array(*name, &a.view()));
    }
    graphs::session(&model(g, c.opset), no_fusion)
}

fn run(s: &Session, x: &ArrayD<f32>) -> (Vec<(String, Value)>, Vec<String>) {
    run_profiled(s, HashMap::from([("x".to_string(), Value::F32(x.clone()))]))
}

/// `x·W (+ b)` in f64, `x` of any rank ≥ 2 against `W [K, N]`.
fn linear64(x: &ArrayD<f32>, w: &ArrayD<f32>, b: Option<&ArrayD<f32>>) -> ArrayD<f64> {
    let k = w.shape()[0];
    let n = w.shape()[1];
    let rows = x.len() / k;
    let xs = x.as_slice().unwrap();
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for j in 0..n {
            let mut s: f64 = (0..k)
                .map(|p| xs[r * k + p] as f64 * w[[p, j]] as f64)
                .sum();
            if let Some(b) = b {
                s += b[[j]] as f64;
            }
            out.push(s);
        }
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = n;
    ArrayD::from_shape_vec(IxDyn(&shape), out).unwrap()
}

fn cases() -> Vec<Case> {
    let (k, n) = (70, 45);
    let w = arr(&[k, n], 1);
    let b = arr(&[n], 2);
    let wt = w.t().as_standard_layout().into_owned();
    let scalar = |v: f32| ArrayD::from_elem(IxDyn(&[]), v);
    vec![
        Case {
            name: "MatMul+Add (3-D A)",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["y"]),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![3, 5, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Add"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])),
        },
        Case {
            name: "Add(bias, MatMul)+Relu",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["b", "mm"], &["z"]),
                node("Relu", &["z"], &["y"]),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![13, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Add+Relu"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])).mapv(|v| v.max(0.0)),
        },
        Case {
            name: "MatMul+Relu (no bias)",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Relu", &["mm"], &["y"]),
            ],
            inits: vec![("w", w.clone())],
            x: vec![1, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Relu"],
            reference: |x, i| linear64(x, &i["w"], None).mapv(|v| v.max(0.0)),
        },
        Case {
            name: "MatMul+Add+Clip (opset 13 bounds as inputs)",
            opset: 13,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["z"]),
                node("Clip", &["z", "lo", "hi"], &["y"]),
            ],
            inits: vec![
                ("w", w.clone()),
                ("b", b.clone()),
                ("lo", scalar(-0.5)),
                ("hi", scalar(0.75)),
            ],
            x: vec![7, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Add+Clip"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])).mapv(|v| v.clamp(-0.5, 0.75)),
        },
        Case {
            name: "MatMul+Add+Clip (opset 6 attributes, min only)",
            opset: 6,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["z"]),
                node("Clip", &["z"], &["y"]).with_attr(attr_float("min", 0.1)),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![7, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Add+Clip"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])).mapv(|v| v.max(0.1)),
        },
        Case {
            name: "MatMul+Add+LeakyRelu",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["z"]),
                node("LeakyRelu", &["z"], &["y"]).with_attr(attr_float("alpha", 0.2)),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![2, 9, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul+Add+LeakyRelu"],
            reference: |x, i| {
                linear64(x, &i["w"], Some(&i["b"])).mapv(|v| if v < 0.0 { 0.2 * v } else { v })
            },
        },
        Case {
            name: "Gemm(transB, alpha, beta, C)+Relu",
            opset: 13,
            nodes: vec![
                node("Gemm", &["x", "wt", "b"], &["z"])
                    .with_attr(attr_int("transB", 1))
                    .with_attr(attr_float("alpha", 0.5))
                    .with_attr(attr_float("beta", 2.0)),
                node("Relu", &["z"], &["y"]),
            ],
            inits: vec![("wt", wt.clone()), ("b", b.clone())],
            x: vec![11, k],
            outputs: vec!["y"],
            fused_steps: vec!["Gemm+Relu"],
            reference: |x, i| {
                let w = i["wt"].t().to_owned();
                let b2 = i["b"].mapv(|v| 2.0 * v);
                let plain = linear64(x, &w, None);
                let n = b2.len();
                ArrayD::from_shape_fn(plain.raw_dim(), |d| {
                    (0.5 * plain[[d[0], d[1]]] + b2[[d[1] % n]] as f64).max(0.0)
                })
            },
        },
        Case {
            name: "not fused: MatMul output read twice",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["y"]),
                node("Relu", &["mm"], &["r"]),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![4, k],
            outputs: vec!["y", "r"],
            fused_steps: vec!["MatMul", "Add", "Relu"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])),
        },
        Case {
            name: "not fused past a graph output",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b"], &["z"]),
                node("Relu", &["z"], &["y"]),
            ],
            inits: vec![("w", w.clone()), ("b", b.clone())],
            x: vec![4, k],
            outputs: vec!["z", "y"],
            fused_steps: vec!["MatMul+Add", "Relu"],
            reference: |x, i| linear64(x, &i["w"], Some(&i["b"])),
        },
        Case {
            name: "not fused: bias is not a row",
            opset: 17,
            nodes: vec![
                node("MatMul", &["x", "w"], &["mm"]),
                node("Add", &["mm", "b2"], &["y"]),
            ],
            inits: vec![("w", w.clone()), ("b2", arr(&[4, n], 3))],
            x: vec![4, k],
            outputs: vec!["y"],
            fused_steps: vec!["MatMul", "Add"],
            reference: |x, i| {
                let p = linear64(x, &i["w"], None);
                let b2 = i["b2"].mapv(f64::from);
                p + b2
            },
        },
    ]
}

#[test]
fn fused_linear_forms_agree_with_the_unfused_graph_and_f64() {
    for c in cases() {
        let x = arr(&c.x, 7);
        let inits: Inits = c.inits.iter().cloned().collect();
        let (fused, fused_types) = run(&session(&c, false), &x);
        let (plain, plain_types) = run(&session(&c, true), &x);
        assert_eq!(fused_types, c.fused_steps, "{}", c.name);
        assert!(
            plain_types.iter().all(|t| !t.contains('+')),
            "{}: {plain_types:?}",
            c.name
        );
        assert_eq!(fused.len(), plain.len());
        for ((nf, vf), (np, vp)) in fused.iter().zip(&plain) {
            assert_eq!(nf, np);
            let (f, p) = (vf.as_f32().unwrap(), vp.as_f32().unwrap());
            assert_eq!(f.shape(), p.shape(), "{}", c.name);
            for (a, b) in f.iter().zip(p) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{} {nf}: {a} vs {b}",
                    c.name
                );
            }
        }
        let want = (c.reference)(&x, &inits);
        let got = fused[0].1.as_f32().unwrap();
        assert_eq!(got.shape(), want.shape(), "{}", c.name);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                c.name
            );
        }
    }
}

/// A fused step whose A the kernel does not take falls back to the original ops, whose errors
/// name the fused step.
#[test]
fn fused_step_falls_back_for_other_inputs() {
    let mut c = cases().remove(0);
    c.x = vec![3, 5, 71];
    let s = session(&c, false);
    let feed = HashMap::from([("x".to_string(), Value::F32(arr(&[3, 5, 71], 1)))]);
    let e = s.run(feed).unwrap_err().to_string();
    assert!(e.contains("MatMul_mm+Add_y") && e.contains("inner"), "{e}");
}

/// The same for a fused Gemm: a 3-D A is Gemm's own error.
#[test]
fn fused_gemm_falls_back_to_gemm_errors() {
    let mut c = cases()
        .into_iter()
        .find(|c| c.name.starts_with("Gemm"))
        .unwrap();
    c.x = vec![2, 11, 70];
    let s = session(&c, false);
    let feed = HashMap::from([("x".to_string(), Value::F32(arr(&[2, 11, 70], 1)))]);
    let e = s.run(feed).unwrap_err().to_string();
    assert!(e.contains("Gemm_z+Relu_y") && e.contains("2-D"), "{e}");
}
