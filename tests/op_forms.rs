//! The attribute forms of ops whose operands moved to inputs in later opsets (the ONNX node
//! cases only exercise the newest forms): Squeeze/Unsqueeze before 13, Slice before 10, Split
//! before 13, Pad before 11, Clip before 11, ReduceSum before 13 and ReduceMean before 18,
//! each checked on a small case by hand against the input form.

use ndarray::{ArrayD, IxDyn, array};
use onnx_dynq::ir::Node;
use onnx_dynq::ir::attrs::{attr_float, attr_int, attr_ints, attr_string};
use onnx_dynq::onnx::AttributeProto;
use onnx_dynq::runtime::Value;
use onnx_dynq::runtime::ops::{BuildCtx, default_registry};

fn run(
    op: &str,
    opset: i64,
    attrs: Vec<AttributeProto>,
    n_out: usize,
    ins: &[Option<Value>],
) -> Vec<Value> {
    let mut node = Node::new(
        "n",
        op,
        "",
        ins.iter()
            .enumerate()
            .map(|(i, v)| {
                if v.is_some() {
                    format!("i{i}")
                } else {
                    String::new()
                }
            })
            .collect(),
        (0..n_out).map(|i| format!("o{i}")).collect(),
    );
    node.proto.attribute = attrs;
    let b = default_registry().get("", op).expect("registered");
    let ctx = BuildCtx {
        opset,
        const_inputs: vec![],
    };
    let op = b(&node, &ctx).unwrap();
    let refs: Vec<Option<&Value>> = ins.iter().map(Option::as_ref).collect();
    op.run(&refs).unwrap()
}

fn f(a: ArrayD<f32>) -> Value {
    Value::F32(a)
}

fn i(v: &[i64]) -> Option<Value> {
    Some(Value::I64(
        ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap(),
    ))
}

#[test]
fn squeeze_and_unsqueeze_attribute_forms() {
    let x = f(ArrayD::zeros(IxDyn(&[1, 3, 1])));
    let a = run(
        "Squeeze",
        11,
        vec![attr_ints("axes", vec![-1])],
        1,
        &[Some(x.clone())],
    );
    let b = run("Squeeze", 13, vec![], 1, &[Some(x.clone()), i(&[-1])]);
    assert_eq!(a[0].shape(), &[1, 3]);
    assert_eq!(a, b);
    // No axes: every 1-dim goes.
    assert_eq!(
        run("Squeeze", 11, vec![], 1, &[Some(x.clone())])[0].shape(),
        &[3]
    );
    let u = run(
        "Unsqueeze",
        11,
        vec![attr_ints("axes", vec![0, 4])],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(u[0].shape(), &[1, 1, 3, 1, 1]);
    assert_eq!(u, run("Unsqueeze", 13, vec![], 1, &[Some(x), i(&[4, 0])]));
}

#[test]
fn slice_attribute_form() {
    let x = f(array![[1.0f32, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]].into_dyn());
    let a = run(
        "Slice",
        9,
        vec![
            attr_ints("starts", vec![1]),
            attr_ints("ends", vec![1000]),
            attr_ints("axes", vec![1]),
        ],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(
        a[0],
        f(array![[2.0f32, 3.0, 4.0], [6.0, 7.0, 8.0]].into_dyn())
    );
    let b = run(
        "Slice",
        13,
        vec![],
        1,
        &[Some(x.clone()), i(&[1]), i(&[1000]), i(&[1])],
    );
    assert_eq!(a, b);
    // Input form with a negative step.
    let c = run(
        "Slice",
        13,
        vec![],
        1,
        &[Some(x), i(&[-1]), i(&[0]), i(&[1]), i(&[-2])],
    );
    assert_eq!(c[0], f(array![[4.0f32, 2.0], [8.0, 6.0]].into_dyn()));
}

#[test]
fn split_attribute_and_num_outputs_forms() {
    let x = f(array![1.0f32, 2.0, 3.0, 4.0, 5.0].into_dyn());
    let a = run(
        "Split",
        11,
        vec![attr_ints("split", vec![2, 3])],
        2,
        &[Some(x.clone())],
    );
    assert_eq!(a[0], f(array![1.0f32, 2.0].into_dyn()));
    assert_eq!(a[1], f(array![3.0f32, 4.0, 5.0].into_dyn()));
    assert_eq!(
        a,
        run("Split", 13, vec![], 2, &[Some(x.clone()), i(&[2, 3])])
    );
    // Opset 18: num_outputs with a smaller last chunk.
    let c = run("Split", 18, vec![attr_int("num_outputs", 2)], 2, &[Some(x)]);
    assert_eq!(c[0].shape(), &[3]);
    assert_eq!(c[1].shape(), &[2]);
}

#[test]
fn pad_attribute_form() {
    let x = f(array![[1.0f32, 2.0]].into_dyn());
    let a = run(
        "Pad",
        2,
        vec![
            attr_ints("pads", vec![0, 1, 1, 0]),
            attr_float("value", 9.0),
        ],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(
        a[0],
        f(array![[9.0f32, 1.0, 2.0], [9.0, 9.0, 9.0]].into_dyn())
    );
    let cv = Some(f(ndarray::arr0(9.0f32).into_dyn()));
    assert_eq!(
        a,
        run(
            "Pad",
            13,
            vec![],
            1,
            &[Some(x.clone()), i(&[0, 1, 1, 0]), cv]
        )
    );
    let e = run(
        "Pad",
        2,
        vec![
            attr_ints("pads", vec![0, 2, 0, 0]),
            attr_string("mode", "edge"),
        ],
        1,
        &[Some(x)],
    );
    assert_eq!(e[0], f(array![[1.0f32, 1.0, 1.0, 2.0]].into_dyn()));
}

#[test]
fn clip_attribute_form() {
    let x = f(array![-2.0f32, 0.5, 3.0].into_dyn());
    let a = run(
        "Clip",
        6,
        vec![attr_float("min", -1.0), attr_float("max", 1.0)],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(a[0], f(array![-1.0f32, 0.5, 1.0].into_dyn()));
    let lo = Some(f(ndarray::arr0(-1.0f32).into_dyn()));
    let hi = Some(f(ndarray::arr0(1.0f32).into_dyn()));
    assert_eq!(a, run("Clip", 13, vec![], 1, &[Some(x.clone()), lo, hi]));
    // Only a max (min omitted as an empty input name).
    let m = run(
        "Clip",
        13,
        vec![],
        1,
        &[Some(x), None, Some(f(ndarray::arr0(0.0f32).into_dyn()))],
    );
    assert_eq!(m[0], f(array![-2.0f32, 0.0, 0.0].into_dyn()));
}

#[test]
fn reduce_attribute_forms() {
    let x = f(array![[1.0f32, 2.0], [3.0, 5.0]].into_dyn());
    let s11 = run(
        "ReduceSum",
        11,
        vec![attr_ints("axes", vec![1]), attr_int("keepdims", 0)],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(s11[0], f(array![3.0f32, 8.0].into_dyn()));
    let s13 = run(
        "ReduceSum",
        13,
        vec![attr_int("keepdims", 0)],
        1,
        &[Some(x.clone()), i(&[1])],
    );
    assert_eq!(s11, s13);
    let m13 = run(
        "ReduceMean",
        13,
        vec![attr_ints("axes", vec![0])],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(m13[0], f(array![[2.0f32, 3.5]].into_dyn()));
    let m18 = run("ReduceMean", 18, vec![], 1, &[Some(x.clone()), i(&[0])]);
    assert_eq!(m13, m18);
    // Opset 18 with no axes input reduces everything, unless noop_with_empty_axes.
    let all = run(
        "ReduceMax",
        18,
        vec![attr_int("keepdims", 0)],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(all[0], f(ndarray::arr0(5.0f32).into_dyn()));
    let noop = run(
        "ReduceMax",
        18,
        vec![attr_int("noop_with_empty_axes", 1)],
        1,
        &[Some(x.clone())],
    );
    assert_eq!(noop[0], x);
}
