//! Plan-time fusion of the erf-GELU chain (`Div`, `Erf`, `Add`, `Mul`, `Mul`) into one pass,
//! and the buffer hand-over to shape-only ops (Reshape and friends): outputs are bit-identical
//! to the unfused graph (`Options::no_kernel_fusion`) in every association and operand order,
//! chains with an intermediate that must exist are not fused, and a value still read later is
//! never handed over.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use onnx_dynq::ir::{Node, Tensor};
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::Value;

mod common;
use common::graphs::{self, graph, model, node, run_profiled, untyped, vi};

/// Deterministic values spread over [-6, 6), where erf goes from -1 to 1, plus special values.
fn input(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let specials = [
        0.0, -0.0, 1e-30, -1e-30, 3.925, -3.925, 0.921875, 40.0, -40.0,
    ];
    let v = (0..n)
        .map(|i| {
            if i % 17 == 0 {
                return specials[(i / 17) % specials.len()];
            }
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 12.0 - 6.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

fn scalar(name: &str, v: f32, rank1: bool) -> Tensor {
    let shape: &[usize] = if rank1 { &[1] } else { &[] };
    Tensor::from_array(
        name,
        &ArrayD::from_shape_vec(IxDyn(shape), vec![v])
            .unwrap()
            .view(),
    )
}

/// The chain as exporters write it; `scale_first`: `x * ((erf + 1) * 0.5)` (torch dynamo),
/// else `(x * (erf + 1)) * 0.5`; `swap` puts the constants first in Add and the Muls.
fn gelu_nodes(scale_first: bool, swap: bool) -> Vec<Node> {
    let two = |a: &str, b: &str| {
        if swap {
            [b.to_string(), a.to_string()]
        } else {
            [a.to_string(), b.to_string()]
        }
    };
    let add = two("e", "one");
    let mut nodes = vec![
        node("Div", &["x", "sqrt2"], &["d"]),
        node("Erf", &["d"], &["e"]),
        node("Add", &[&add[0], &add[1]], &["u"]),
    ];
    if scale_first {
        let m1 = two("u", "half");
        nodes.push(node("Mul", &[&m1[0], &m1[1]], &["v"]));
        nodes.push(node("Mul", &["x", "v"], &["y"]));
    } else {
        nodes.push(node("Mul", &["x", "u"], &["v"]));
        let m2 = two("v", "half");
        nodes.push(node("Mul", &[&m2[0], &m2[1]], &["y"]));
    }
    nodes
}

fn gelu_model(
    x_shape: &[usize],
    nodes: Vec<Node>,
    outputs: &[&str],
    rank1: bool,
) -> onnx_dynq::Model {
    let mut g = graph(
        vec![vi("x", DataType::Float, x_shape)],
        outputs.iter().map(|o| untyped(o)).collect(),
        nodes,
    );
    g.add_initializer(scalar("sqrt2", std::f32::consts::SQRT_2, rank1));
    g.add_initializer(scalar("one", 1.0, rank1));
    g.add_initializer(scalar("half", 0.5, rank1));
    model(g, 17)
}

fn feed(x: ArrayD<f32>) -> HashMap<String, Value> {
    HashMap::from([("x".to_string(), Value::F32(x))])
}

fn assert_bits_equal(a: &[(String, Value)], b: &[(String, Value)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}");
        let (fa, fb) = (va.as_f32().unwrap(), vb.as_f32().unwrap());
        assert_eq!(fa.shape(), fb.shape(), "{what} {na}");
        for (i, (x, y)) in fa.iter().zip(fb).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "{what} {na}[{i}]: fused {x} vs unfused {y}"
            );
        }
    }
}

const FUSED: &str = "Div+Erf+Add+Mul+Mul";

#[test]
fn fused_gelu_is_bit_identical_in_every_form() {
    for scale_first in [true, false] {
        for swap in [false, true] {
            for rank1 in [false, true] {
                let what = format!("scale_first={scale_first} swap={swap} rank1={rank1}");
                let m = gelu_model(&[3, 5, 67], gelu_nodes(scale_first, swap), &["y"], rank1);
                let (fused, plain, ops) = graphs::fused_and_plain(&m, &feed(input(&[3, 5, 67])));
                assert_eq!(ops, vec![FUSED.to_string()], "{what}");
                assert_bits_equal(&fused, &plain, &what);
                // And against the definition in f64 (MLAS's erf is within 6e-8 of erf).
                let x = input(&[3, 5, 67]);
                for (a, &xv) in fused[0].1.as_f32().unwrap().iter().zip(&x) {
                    let want =
                        0.5 * xv as f64 * (1.0 + erf64(xv as f64 / std::f64::consts::SQRT_2));
                    assert!(
                        (*a as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{what}: {a} vs {want}"
                    );
                }
            }
        }
    }
}

/// erf by its Taylor series / continued fraction is overkill here: Abramowitz-Stegun 7.1.26
/// is only 1.5e-7 accurate, so use the series for |x| < 3 and 1 beyond (erfc(3) = 2.2e-5 is
/// visible, so compute erfc by its continued fraction there).
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // Σ (-1)^n x^(2n+1) / (n! (2n+1)) · 2/√π
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

#[test]
fn gelu_chain_with_a_needed_intermediate_is_not_fused() {
    // `u` is a graph output, so it must exist.
    let m = gelu_model(&[2, 33], gelu_nodes(true, false), &["y", "u"], false);
    let (fused, plain, ops) = graphs::fused_and_plain(&m, &feed(input(&[2, 33])));
    assert!(ops.iter().all(|t| !t.contains('+')), "{ops:?}");
    assert_bits_equal(&fused, &plain, "u returned");
    // `e` read twice.
    let mut nodes = gelu_nodes(false, false);
    nodes.push(node("Neg", &["e"], &["n"]));
    let m = gelu_model(&[2, 33], nodes, &["y", "n"], false);
    let (fused, plain, ops) = graphs::fused_and_plain(&m, &feed(input(&[2, 33])));
    assert!(ops.iter().all(|t| !t.contains('+')), "{ops:?}");
    assert_bits_equal(&fused, &plain, "e read twice");
}

#[test]
fn gelu_input_read_later_or_returned_stays_intact() {
    // x is returned and also read after the chain: the fused step must not overwrite it.
    let mut nodes = vec![node("Relu", &["x0"], &["x"])];
    nodes.extend(gelu_nodes(true, false));
    nodes.push(node("Sub", &["y", "x"], &["z"]));
    let mut g = graph(
        vec![vi("x0", DataType::Float, &[4, 40])],
        vec![untyped("z"), untyped("x")],
        nodes,
    );
    g.add_initializer(scalar("sqrt2", std::f32::consts::SQRT_2, false));
    g.add_initializer(scalar("one", 1.0, false));
    g.add_initializer(scalar("half", 0.5, false));
    let m = model(g, 17);
    let feed = HashMap::from([("x0".to_string(), Value::F32(input(&[4, 40])))]);
    let (fused, plain, ops) = graphs::fused_and_plain(&m, &feed);
    assert!(ops.iter().any(|t| t == FUSED), "{ops:?}");
    assert_bits_equal(&fused, &plain, "x read later");
}

#[test]
fn gelu_on_a_lower_rank_input_runs_the_original_nodes() {
    // A scalar x with [1]-shaped constants broadcasts to [1]: the fused step falls back.
    let m = gelu_model(&[], gelu_nodes(true, false), &["y"], true);
    let x = ArrayD::from_shape_vec(IxDyn(&[]), vec![0.7f32]).unwrap();
    let (fused, plain, ops) = graphs::fused_and_plain(&m, &feed(x));
    assert_eq!(ops, vec![FUSED.to_string()]);
    assert_eq!(fused[0].1.shape(), &[1]);
    assert_bits_equal(&fused, &plain, "scalar x");
}

#[test]
fn reshape_takes_a_dead_buffer_and_copies_a_live_one() {
    // r is read by Reshape and later by Add (copied), s only by Unsqueeze and Squeeze (handed
    // over); x itself is a caller-owned graph input that Flatten may take.
    let nodes = vec![
        node("Relu", &["x"], &["r"]),
        node("Reshape", &["r", "shape"], &["a"]),
        node("Add", &["r", "r"], &["b"]),
        node("Neg", &["b"], &["s"]),
        node("Unsqueeze", &["s", "axes"], &["c"]),
        node("Squeeze", &["c", "axes"], &["d"]),
        node("Flatten", &["a"], &["f"]),
    ];
    let mut g = graph(
        vec![vi("x", DataType::Float, &[2, 3, 4])],
        vec![untyped("f"), untyped("b"), untyped("d")],
        nodes,
    );
    let shape = ArrayD::from_shape_vec(IxDyn(&[2]), vec![6i64, 4]).unwrap();
    g.add_initializer(Tensor::from_array("shape", &shape.view()));
    let axes = ArrayD::from_shape_vec(IxDyn(&[1]), vec![0i64]).unwrap();
    g.add_initializer(Tensor::from_array("axes", &axes.view()));
    let m = model(g, 17);
    let x = input(&[2, 3, 4]);
    let (outs, _) = run_profiled(&graphs::session(&m, false), feed(x.clone()));
    let relu: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    let f = outs[0].1.as_f32().unwrap();
    assert_eq!(f.shape(), &[6, 4]);
    assert_eq!(f.iter().copied().collect::<Vec<_>>(), relu);
    let b = outs[1].1.as_f32().unwrap();
    assert_eq!(b.shape(), &[2, 3, 4]);
    assert!(b.iter().zip(&relu).all(|(b, r)| *b == r + r));
    let d = outs[2].1.as_f32().unwrap();
    assert_eq!(d.shape(), &[2, 3, 4]);
    assert!(d.iter().zip(b).all(|(d, b)| *d == -b));
}
