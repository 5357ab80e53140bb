//! Plan-time fusion of the int8 Linear unit (`session/fuse_int8.rs`): on small hand-built
//! graphs in every form the rewrite emits, the fused step's outputs equal the unfused nodes'
//! (`Options::no_kernel_fusion`) bit for bit, and the fusion happens exactly when its
//! conditions hold (seen through the step names of a profiled run).

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use onnx_dynq::ir::attrs::{attr_float, attr_int};
use onnx_dynq::ir::{Node, Tensor};
use onnx_dynq::onnx::ValueInfoProto;
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::Value;

mod common;
use common::graphs::{fused_and_plain, graph, model_with, ms_node, node, untyped, vi};

const K: usize = 37;
const N: usize = 70;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() * 127.0) as i8).collect()
    }
    fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| ((self.next() + 1.0) * 127.0) as u8)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    None,
    Relu,
    Clip6,
    ClipMinOnly,
    ClipOldOpset,
    LeakyRelu,
}

#[derive(Clone, Debug)]
struct Form {
    a_shape: Vec<usize>,
    bias: bool,
    act: Act,
    per_channel: bool,
    w_u8: bool,
    /// Mul operands in the other order (scale first; w_scale first).
    swapped: bool,
}

impl Default for Form {
    fn default() -> Self {
        Form {
            a_shape: vec![5, K],
            bias: false,
            act: Act::None,
            per_channel: false,
            w_u8: false,
            swapped: false,
        }
    }
}

/// The weights and nodes of one rewritten Linear reading `x` and writing `y`.
struct Parts {
    inits: Vec<Tensor>,
    nodes: Vec<Node>,
}

fn linear(f: &Form, rng: &mut Rng, p: &str, x: &str, y: &str) -> Parts {
    let n = |s: &str| format!("{p}{s}");
    let mut inits = vec![];
    let cols = if f.per_channel { N } else { 1 };
    let shape: &[usize] = if f.per_channel { &[N] } else { &[] };
    if f.w_u8 {
        inits.push(Tensor::from_vec(n("W"), &[K, N], rng.u8s(K * N)));
        inits.push(Tensor::from_vec(n("Wz"), shape, rng.u8s(cols)));
    } else {
        inits.push(Tensor::from_vec(n("W"), &[K, N], rng.i8s(K * N)));
        inits.push(Tensor::from_vec(n("Wz"), shape, vec![0i8; cols]));
    }
    let scales: Vec<f32> = rng
        .f32s(cols)
        .iter()
        .map(|v| v.abs() * 0.01 + 1e-3)
        .collect();
    inits.push(Tensor::from_vec(n("Ws"), shape, scales));
    let mut nodes = vec![
        node(
            "DynamicQuantizeLinear",
            &[x],
            &[&n("xq"), &n("xs"), &n("xz")],
        ),
        node(
            "MatMulInteger",
            &[&n("xq"), &n("W"), &n("xz"), &n("Wz")],
            &[&n("mi")],
        ),
        node("Cast", &[&n("mi")], &[&n("mf")]).with_attr(attr_int("to", 1)),
    ];
    if f.swapped {
        nodes.push(node("Mul", &[&n("Ws"), &n("xs")], &[&n("sc")]));
    } else {
        nodes.push(node("Mul", &[&n("xs"), &n("Ws")], &[&n("sc")]));
    }
    let mut cur = n("p");
    if f.swapped {
        nodes.push(node("Mul", &[&n("sc"), &n("mf")], &[&cur]));
    } else {
        nodes.push(node("Mul", &[&n("mf"), &n("sc")], &[&cur]));
    }
    if f.bias {
        inits.push(Tensor::from_vec(n("bias"), &[N], rng.f32s(N)));
        let next = n("pb");
        nodes.push(node("Add", &[&cur, &n("bias")], &[&next]));
        cur = next;
    }
    let act = match f.act {
        Act::None => None,
        Act::Relu => Some(node("Relu", &[&cur], &[y])),
        Act::Clip6 => {
            inits.push(Tensor::from_vec(n("lo"), &[], vec![0f32]));
            inits.push(Tensor::from_vec(n("hi"), &[], vec![6f32]));
            Some(node("Clip", &[&cur, &n("lo"), &n("hi")], &[y]))
        }
        Act::ClipMinOnly => {
            inits.push(Tensor::from_vec(n("lo"), &[], vec![-0.05f32]));
            Some(node("Clip", &[&cur, &n("lo")], &[y]))
        }
        Act::ClipOldOpset => Some(
            node("Clip", &[&cur], &[y])
                .with_attr(attr_float("min", -0.1))
                .with_attr(attr_float("max", 0.08)),
        ),
        Act::LeakyRelu => {
            Some(node("LeakyRelu", &[&cur], &[y]).with_attr(attr_float("alpha", 0.3)))
        }
    };
    match act {
        Some(a) => nodes.push(a),
        None => {
            let last = nodes.last_mut().unwrap();
            last.proto.output[0] = y.to_string();
        }
    }
    Parts { inits, nodes }
}

fn model(
    inputs: Vec<ValueInfoProto>,
    outputs: &[&str],
    parts: Parts,
    opset: i64,
) -> onnx_dynq::Model {
    let outputs = outputs.iter().map(|o| untyped(o)).collect();
    let mut g = graph(inputs, outputs, parts.nodes);
    for t in parts.inits {
        g.add_initializer(t);
    }
    model_with(g, &[("", opset), ("com.microsoft", 1)])
}

fn input(rng: &mut Rng, shape: &[usize]) -> Value {
    let n: usize = shape.iter().product();
    // Spread so that negative, positive and clipped outputs all occur.
    let v: Vec<f32> = rng.f32s(n).iter().map(|x| x * 4.0 + 0.5).collect();
    Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn assert_same(a: &[(String, Value)], b: &[(String, Value)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(va.shape(), vb.shape(), "{what}: {na}");
        let (Value::F32(x), Value::F32(y)) = (va, vb) else {
            assert_eq!(va, vb, "{what}: {na}");
            continue;
        };
        for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
            assert!(
                p.to_bits() == q.to_bits() || p == q || (p.is_nan() && q.is_nan()),
                "{what}: {na}[{i}] fused {p} vs unfused {q}"
            );
        }
    }
}

fn fused_step(ops: &[String]) -> Option<&String> {
    ops.iter()
        .find(|o| o.contains("MatMulInteger+") || o.contains("MatMul+"))
}

fn check_form(f: &Form, seed: u64) {
    let mut rng = Rng(seed);
    let parts = linear(f, &mut rng, "", "x", "y");
    let opset = if f.act == Act::ClipOldOpset { 10 } else { 17 };
    let m = model(
        vec![vi("x", DataType::Float, &f.a_shape)],
        &["y"],
        parts,
        opset,
    );
    let feed: HashMap<String, Value> = [("x".to_string(), input(&mut rng, &f.a_shape))].into();
    let (a, b, ops) = fused_and_plain(&m, &feed);
    assert_same(&a, &b, &format!("{f:?}"));
    let step = fused_step(&ops).unwrap_or_else(|| panic!("{f:?}: not fused: {ops:?}"));
    assert!(
        step.starts_with("DynamicQuantizeLinear+MatMulInteger+Cast+Mul+Mul"),
        "{f:?}: {step}"
    );
    assert_eq!(step.contains("+Add"), f.bias, "{f:?}: {step}");
    let act_name = match f.act {
        Act::None => None,
        Act::Relu => Some("+Relu"),
        Act::LeakyRelu => Some("+LeakyRelu"),
        _ => Some("+Clip"),
    };
    if let Some(a) = act_name {
        assert!(step.ends_with(a), "{f:?}: {step}");
    }
    assert_eq!(ops.len(), 1, "{f:?}: one step expected, got {ops:?}");
    let mut expected = f.a_shape.clone();
    *expected.last_mut().unwrap() = N;
    assert_eq!(a[0].1.shape(), &expected[..]);
}

#[test]
fn every_form_fuses_and_matches_the_unfused_nodes() {
    let acts = [
        Act::None,
        Act::Relu,
        Act::Clip6,
        Act::ClipMinOnly,
        Act::ClipOldOpset,
        Act::LeakyRelu,
    ];
    let mut seed = 1;
    for act in acts {
        for bias in [false, true] {
            for (per_channel, w_u8) in [(false, false), (true, false), (false, true), (true, true)]
            {
                seed += 1;
                check_form(
                    &Form {
                        act,
                        bias,
                        per_channel,
                        w_u8,
                        ..Default::default()
                    },
                    seed,
                );
            }
        }
    }
}

#[test]
fn batch_dims_rank_one_and_operand_order() {
    for (i, a_shape) in [vec![2, 3, K], vec![K], vec![1, 7, 4, K], vec![0, K]]
        .into_iter()
        .enumerate()
    {
        for swapped in [false, true] {
            check_form(
                &Form {
                    a_shape: a_shape.clone(),
                    bias: true,
                    act: Act::Relu,
                    swapped,
                    per_channel: i % 2 == 0,
                    ..Default::default()
                },
                100 + i as u64,
            );
        }
    }
}

#[test]
fn all_zero_input_gives_bias_only() {
    let f = Form {
        bias: true,
        ..Default::default()
    };
    let mut rng = Rng(9);
    let parts = linear(&f, &mut rng, "", "x", "y");
    let m = model(vec![vi("x", DataType::Float, &[5, K])], &["y"], parts, 17);
    let zero = Value::F32(ArrayD::zeros(IxDyn(&[5, K])));
    let feed: HashMap<String, Value> = [("x".to_string(), zero)].into();
    let (a, b, ops) = fused_and_plain(&m, &feed);
    assert!(fused_step(&ops).is_some());
    assert_same(&a, &b, "all-zero input");
}

/// Builds the default chain, then lets `edit` change the graph before planning.
fn edited(edit: impl FnOnce(&mut Parts, &mut Vec<String>)) -> Vec<String> {
    let f = Form {
        bias: true,
        act: Act::Relu,
        ..Default::default()
    };
    let mut rng = Rng(77);
    let mut parts = linear(&f, &mut rng, "", "x", "y");
    let mut outs = vec!["y".to_string()];
    edit(&mut parts, &mut outs);
    let outs_ref: Vec<&str> = outs.iter().map(String::as_str).collect();
    let m = model(
        vec![vi("x", DataType::Float, &[5, K])],
        &outs_ref,
        parts,
        17,
    );
    let feed: HashMap<String, Value> = [("x".to_string(), input(&mut rng, &[5, K]))].into();
    let (a, b, ops) = fused_and_plain(&m, &feed);
    assert_same(&a, &b, "edited graph");
    ops
}

#[test]
fn an_intermediate_with_two_readers_is_not_fused_through() {
    // The Cast output is also read by another node: nothing can fuse.
    let ops = edited(|p, outs| {
        p.nodes.push(node("Neg", &["mf"], &["extra"]));
        outs.push("extra".into());
    });
    assert!(fused_step(&ops).is_none(), "{ops:?}");
    // The product before the bias is read twice: the chain stops at the scale Mul.
    let ops = edited(|p, outs| {
        p.nodes.push(node("Neg", &["p"], &["extra"]));
        outs.push("extra".into());
    });
    let step = fused_step(&ops).unwrap();
    assert!(step.ends_with("+Mul+Mul"), "{step}");
    assert!(ops.contains(&"Add".to_string()) && ops.contains(&"Relu".to_string()));
}

#[test]
fn a_graph_output_intermediate_is_not_fused_through() {
    let ops = edited(|_, outs| outs.push("mi".into()));
    assert!(fused_step(&ops).is_none(), "{ops:?}");
    let ops = edited(|_, outs| outs.push("pb".into()));
    let step = fused_step(&ops).unwrap();
    assert!(step.ends_with("+Add"), "{step}");
    assert!(ops.contains(&"Relu".to_string()));
    // The DynamicQuantizeLinear's scale is an output: it stays a step of its own and the
    // fused step reads its outputs.
    let ops = edited(|_, outs| outs.push("xs".into()));
    assert!(
        ops.contains(&"DynamicQuantizeLinear".to_string()),
        "{ops:?}"
    );
    assert!(fused_step(&ops).unwrap().starts_with("MatMulInteger+"));
}

#[test]
fn a_non_constant_bias_or_clip_bound_is_not_fused() {
    let ops = edited(|p, _| {
        for n in &mut p.nodes {
            if n.op_type() == "Add" {
                n.proto.input[1] = "x2".into();
            }
        }
        p.nodes.insert(0, node("Neg", &["x"], &["xn"]));
        p.nodes.insert(1, node("ReduceMean", &["xn"], &["x2"]));
    });
    let step = fused_step(&ops).unwrap();
    assert!(step.ends_with("+Mul+Mul"), "{step}");
}

#[test]
fn shared_quantization_feeds_two_fused_steps() {
    let f = Form {
        bias: true,
        act: Act::LeakyRelu,
        per_channel: true,
        ..Default::default()
    };
    let mut rng = Rng(5);
    let mut a = linear(&f, &mut rng, "a_", "x", "ya");
    let b = linear(&f, &mut rng, "b_", "x", "yb");
    // The second Linear reuses the first one's DynamicQuantizeLinear.
    for n in b.nodes.into_iter().skip(1) {
        let mut n = n;
        for i in n.proto.input.iter_mut() {
            for s in ["xq", "xs", "xz"] {
                if *i == format!("b_{s}") {
                    *i = format!("a_{s}");
                }
            }
        }
        a.nodes.push(n);
    }
    a.inits.extend(b.inits);
    let m = model(
        vec![vi("x", DataType::Float, &[3, 4, K])],
        &["ya", "yb"],
        a,
        17,
    );
    let feed: HashMap<String, Value> = [("x".to_string(), input(&mut rng, &[3, 4, K]))].into();
    let (x, y, ops) = fused_and_plain(&m, &feed);
    assert_same(&x, &y, "shared quantization");
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert_eq!(ops[0], "DynamicQuantizeLinear");
    assert!(
        ops[1..]
            .iter()
            .all(|o| o.starts_with("MatMulInteger+") && o.ends_with("LeakyRelu"))
    );
}

#[test]
fn com_microsoft_ops_fuse_with_their_activation() {
    let mut rng = Rng(11);
    let w = Tensor::from_vec("W", &[K, N], rng.i8s(K * N));
    let wu = Tensor::from_vec("Wu", &[K, N], rng.u8s(K * N));
    let wz = Tensor::from_vec("Wz", &[N], rng.u8s(N));
    let ws = Tensor::from_vec(
        "Ws",
        &[N],
        rng.f32s(N).iter().map(|v| v.abs() * 0.01).collect(),
    );
    let bias = Tensor::from_vec("bias", &[N], rng.f32s(N));
    let nodes = vec![
        ms_node(
            "DynamicQuantizeMatMul",
            &["x", "W", "Ws", "", "bias"],
            &["d"],
        ),
        node("Relu", &["d"], &["y1"]),
        node("DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
        ms_node(
            "MatMulIntegerToFloat",
            &["xq", "Wu", "xs", "Ws", "xz", "Wz"],
            &["e"],
        ),
        node("LeakyRelu", &["e"], &["y2"]),
        ms_node("DynamicQuantizeMatMul", &["x", "Wu", "Ws", "Wz"], &["y3"]),
    ];
    let parts = Parts {
        inits: vec![w, wu, wz, ws, bias],
        nodes,
    };
    let m = model(
        vec![vi("x", DataType::Float, &[2, 3, K])],
        &["y1", "y2", "y3"],
        parts,
        17,
    );
    let feed: HashMap<String, Value> = [("x".to_string(), input(&mut rng, &[2, 3, K]))].into();
    let (a, b, ops) = fused_and_plain(&m, &feed);
    assert_same(&a, &b, "com.microsoft");
    assert!(
        ops.contains(&"DynamicQuantizeMatMul+Relu".to_string()),
        "{ops:?}"
    );
    assert!(
        ops.contains(&"MatMulIntegerToFloat+LeakyRelu".to_string()),
        "{ops:?}"
    );
    assert!(
        ops.contains(&"DynamicQuantizeMatMul".to_string()),
        "{ops:?}"
    );
    assert_eq!(ops.len(), 4, "{ops:?}");
}
