//! Session behaviour on small hand-built graphs: planning errors, input checks, outer-scope
//! values in Loop/If/Scan bodies, bare-graph sessions and thread options.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn, array};
use onnx_dynq::ir::attrs::{attr_int, attr_ints};
use onnx_dynq::ir::{Graph, Node, Tensor};
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::onnx::{AttributeProto, GraphProto, attribute_proto::AttributeType};
use onnx_dynq::runtime::{Options, Session, Value};

mod common;
use common::graphs::{graph, model, node, untyped, vi_sym as vi};

fn graph_attr(name: &str, g: Graph) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        g: Some(g.into_proto()),
        r#type: Some(AttributeType::Graph as i32),
        ..Default::default()
    }
}

/// Lifts graph attributes into `subgraphs` the way the loader does.
fn lift(n: Node) -> Node {
    let mut p = GraphProto::default();
    p.node.push(n.proto);
    let g = Graph::from_proto(p).unwrap();
    g.nodes.into_iter().next().unwrap()
}

fn f32v(a: ArrayD<f32>) -> Value {
    Value::F32(a)
}

fn run1(s: &Session, feed: Vec<(&str, Value)>) -> Vec<(String, Value)> {
    s.run(feed.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        .unwrap()
}

#[test]
fn unsupported_op_is_reported_at_planning() {
    let g = graph(
        vec![vi("x", DataType::Float, &[2])],
        vec![vi("y", DataType::Float, &[2])],
        vec![Node::new(
            "weird",
            "NoSuchOp",
            "",
            vec!["x".into()],
            vec!["y".into()],
        )],
    );
    let err = Session::new(&model(g, 17), &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unsupported: op NoSuchOp (node weird)"),
        "{err}"
    );
}

#[test]
fn inputs_are_checked_against_declared_types() {
    let g = graph(
        vec![vi("x", DataType::Float, &[-1, 3])],
        vec![vi("y", DataType::Float, &[-1, 3])],
        vec![node("Relu", &["x"], &["y"])],
    );
    let s = Session::new(&model(g, 17), &Options::default()).unwrap();
    // A symbolic dim takes any size at run time.
    let out = run1(
        &s,
        vec![("x", f32v(ArrayD::from_elem(IxDyn(&[4, 3]), -1.0f32)))],
    );
    assert_eq!(out[0].1.shape(), &[4, 3]);
    let e = |feed: HashMap<String, Value>| s.run(feed).err().unwrap().to_string();
    let wrong_type = e([("x".to_string(), Value::I64(ArrayD::zeros(IxDyn(&[1, 3]))))].into());
    assert!(
        wrong_type.contains("'x'")
            && wrong_type.contains("int64")
            && wrong_type.contains("float32"),
        "{wrong_type}"
    );
    let wrong_rank = e([("x".to_string(), f32v(ArrayD::zeros(IxDyn(&[3]))))].into());
    assert!(wrong_rank.contains("rank"), "{wrong_rank}");
    let wrong_dim = e([("x".to_string(), f32v(ArrayD::zeros(IxDyn(&[1, 4]))))].into());
    assert!(wrong_dim.contains("dim 1 must be 3"), "{wrong_dim}");
    let missing = e(HashMap::new());
    assert!(missing.contains("missing input 'x'"), "{missing}");
}

#[test]
fn runtime_errors_name_the_node() {
    let g = graph(
        vec![
            vi("a", DataType::Float, &[2]),
            vi("b", DataType::Float, &[3]),
        ],
        vec![vi("y", DataType::Float, &[])],
        vec![Node::new(
            "adder",
            "Add",
            "",
            vec!["a".into(), "b".into()],
            vec!["y".into()],
        )],
    );
    let s = Session::new(&model(g, 17), &Options::default()).unwrap();
    let err = s
        .run(
            [
                ("a".to_string(), f32v(ArrayD::zeros(IxDyn(&[2])))),
                ("b".to_string(), f32v(ArrayD::zeros(IxDyn(&[3])))),
            ]
            .into(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("'adder'") && err.contains("broadcast"),
        "{err}"
    );
}

#[test]
fn loop_reads_outer_scope_values_and_stacks_scan_outputs() {
    // y = y0 + M * w, with the per-iteration y stacked as a scan output.
    let body = graph(
        vec![untyped("i"), untyped("c_in"), untyped("y_in")],
        vec![untyped("c_out"), untyped("y_out"), untyped("y_scan")],
        vec![
            node("Identity", &["c_in"], &["c_out"]),
            node("Add", &["y_in", "w"], &["y_out"]),
            node("Identity", &["y_out"], &["y_scan"]),
        ],
    );
    let lp = lift(
        Node::new(
            "loop",
            "Loop",
            "",
            vec!["M".into(), "".into(), "y0".into()],
            vec!["y".into(), "ys".into()],
        )
        .with_attr(graph_attr("body", body)),
    );
    let mut g = graph(
        vec![
            vi("y0", DataType::Float, &[2]),
            vi("M", DataType::Int64, &[]),
        ],
        vec![
            vi("y", DataType::Float, &[2]),
            vi("ys", DataType::Float, &[3, 2]),
        ],
        vec![lp],
    );
    g.add_initializer(Tensor::from_array(
        "w",
        &array![1.0f32, 10.0].into_dyn().view(),
    ));
    let s = Session::new(&model(g, 13), &Options::default()).unwrap();
    let out = run1(
        &s,
        vec![
            ("y0", f32v(array![0.5f32, 0.0].into_dyn())),
            ("M", Value::I64(ndarray::arr0(3).into_dyn())),
        ],
    );
    assert_eq!(out[0].1, f32v(array![3.5f32, 30.0].into_dyn()));
    assert_eq!(
        out[1].1,
        f32v(array![[1.5f32, 10.0], [2.5, 20.0], [3.5, 30.0]].into_dyn())
    );
}

#[test]
fn if_branches_see_outer_values_and_nested_graphs_plan() {
    let then_g = graph(
        vec![],
        vec![untyped("t")],
        vec![node("Mul", &["x", "x"], &["t"])],
    );
    let else_g = graph(
        vec![],
        vec![untyped("e")],
        vec![node("Neg", &["x"], &["e"])],
    );
    let iff = lift(
        Node::new("if", "If", "", vec!["c".into()], vec!["y".into()])
            .with_attr(graph_attr("then_branch", then_g))
            .with_attr(graph_attr("else_branch", else_g)),
    );
    let g = graph(
        vec![vi("c", DataType::Bool, &[]), vi("x", DataType::Float, &[2])],
        vec![untyped("y")],
        vec![iff],
    );
    let s = Session::new(&model(g, 13), &Options::default()).unwrap();
    let x = f32v(array![3.0f32, -2.0].into_dyn());
    let t = run1(
        &s,
        vec![
            ("c", Value::Bool(ndarray::arr0(true).into_dyn())),
            ("x", x.clone()),
        ],
    );
    assert_eq!(t[0].1, f32v(array![9.0f32, 4.0].into_dyn()));
    let e = run1(
        &s,
        vec![
            ("c", Value::Bool(ndarray::arr0(false).into_dyn())),
            ("x", x),
        ],
    );
    assert_eq!(e[0].1, f32v(array![-3.0f32, 2.0].into_dyn()));
}

#[test]
fn bare_graph_session_with_outer_names_and_constant_folding() {
    // z = Relu(x) + Reshape(Constant, shape): the constant branch folds at planning time.
    let mut c = Node::new("c", "Constant", "", vec![], vec!["k".into()]);
    c.proto.attribute.push(onnx_dynq::ir::attrs::attr_tensor(
        "value",
        Tensor::from_array("k", &array![1.0f32, 2.0, 3.0, 4.0].into_dyn().view()),
    ));
    let mut g = graph(
        vec![untyped("x")],
        vec![untyped("z")],
        vec![
            c,
            node("Reshape", &["k", "shape"], &["k2"]),
            node("Relu", &["x"], &["rx"]),
            node("Add", &["rx", "k2"], &["s"]),
            node("Mul", &["s", "outer"], &["z"]),
        ],
    );
    g.add_initializer(Tensor::from_array(
        "shape",
        &array![2i64, 2].into_dyn().view(),
    ));
    let opsets: HashMap<String, i64> = [(String::new(), 17)].into();
    let s = Session::from_graph(&g, &opsets, &["outer".to_string()], &Options::default()).unwrap();
    let outer = f32v(ndarray::arr0(2.0f32).into_dyn());
    let out = s
        .run_with(
            vec![f32v(array![[-1.0f32, 1.0], [2.0, -2.0]].into_dyn())],
            &[&outer],
        )
        .unwrap();
    assert_eq!(out[0], f32v(array![[2.0f32, 6.0], [10.0, 8.0]].into_dyn()));
}

#[test]
fn scan_with_reverse_direction() {
    // Running sum over a reversed sequence; the state starts at 0.
    let body = graph(
        vec![untyped("s_in"), untyped("x_t")],
        vec![untyped("s_out"), untyped("y_t")],
        vec![
            node("Add", &["s_in", "x_t"], &["s_out"]),
            node("Identity", &["s_out"], &["y_t"]),
        ],
    );
    let scan = lift(
        Node::new(
            "scan",
            "Scan",
            "",
            vec!["s0".into(), "xs".into()],
            vec!["s".into(), "ys".into()],
        )
        .with_attr(graph_attr("body", body))
        .with_attr(attr_int("num_scan_inputs", 1))
        .with_attr(attr_ints("scan_input_directions", vec![1])),
    );
    let g = graph(
        vec![
            vi("s0", DataType::Float, &[1]),
            vi("xs", DataType::Float, &[3, 1]),
        ],
        vec![untyped("s"), untyped("ys")],
        vec![scan],
    );
    let s = Session::new(&model(g, 16), &Options::default()).unwrap();
    let out = run1(
        &s,
        vec![
            ("s0", f32v(array![0.0f32].into_dyn())),
            ("xs", f32v(array![[1.0f32], [2.0], [3.0]].into_dyn())),
        ],
    );
    assert_eq!(out[0].1, f32v(array![6.0f32].into_dyn()));
    assert_eq!(out[1].1, f32v(array![[3.0f32], [5.0], [6.0]].into_dyn()));
}

#[test]
fn thread_counts_give_the_same_matmul() {
    let g = graph(
        vec![
            vi("a", DataType::Float, &[-1, 256]),
            vi("b", DataType::Float, &[256, 300]),
        ],
        vec![untyped("y")],
        vec![node("MatMul", &["a", "b"], &["y"])],
    );
    let m = model(g, 17);
    let a = ArrayD::from_shape_fn(IxDyn(&[200, 256]), |i| {
        ((i[0] * 31 + i[1] * 7) % 17) as f32 - 8.0
    });
    let b = ArrayD::from_shape_fn(IxDyn(&[256, 300]), |i| {
        ((i[0] * 3 + i[1] * 11) % 13) as f32 * 0.25
    });
    let mut res = Vec::new();
    for threads in [1, 2] {
        let s = Session::new(&m, &Options::with_threads(threads)).unwrap();
        res.push(
            run1(&s, vec![("a", f32v(a.clone())), ("b", f32v(b.clone()))])
                .remove(0)
                .1,
        );
    }
    assert_eq!(res[0], res[1]);
    let y = res[0].as_f32().unwrap();
    let want: f32 = (0..256).map(|p| a[[5, p]] * b[[p, 7]]).sum();
    assert!((y[[5, 7]] - want).abs() <= 1e-3 * want.abs().max(1.0));
}
