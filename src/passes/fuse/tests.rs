//! Unit tests of each pass on small graphs: it fires where it should, not where a constraint
//! fails, and the runtime computes the same outputs before and after.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use crate::ir::attrs::{attr_float, attr_int, attr_ints};
use crate::ir::{Graph, Node, Tensor};
use crate::model::Model;
use crate::onnx::tensor_proto::DataType;
use crate::onnx::{
    GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};
use crate::runtime::{Options, Session, Value};

use super::{FuseReport, fuse};

/// A float value info; dims < 0 are the symbolic "N".
fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d < 0 {
                tensor_shape_proto::dimension::Value::DimParam("N".into())
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn n(op: &str, ins: &[&str], outs: &[&str]) -> Node {
    Node::new(
        format!("{op}_{}", outs[0]),
        op,
        "",
        ins.iter().map(|s| s.to_string()).collect(),
        outs.iter().map(|s| s.to_string()).collect(),
    )
}

/// Deterministic pseudo-random floats in [-1, 1).
fn rand(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn w(name: &str, dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(name, dims, rand(seed, dims.iter().product()))
}

struct Case {
    inputs: Vec<(&'static str, Vec<i64>)>,
    outputs: Vec<&'static str>,
    nodes: Vec<Node>,
    inits: Vec<Tensor>,
    opset: i64,
}

impl Case {
    fn model(&self) -> Model {
        let mut g = Graph::from_proto(GraphProto {
            name: Some("g".into()),
            input: self.inputs.iter().map(|(n, d)| vi(n, d)).collect(),
            output: self
                .outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: Some(o.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .unwrap();
        g.nodes = self.nodes.clone();
        for t in &self.inits {
            g.add_initializer(t.clone());
        }
        let mut p = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            ..Default::default()
        };
        p.graph = Some(g.into_proto());
        Model::from_proto(p).unwrap()
    }

    /// Fuses, checks the runtime agrees before and after (1e-5 relative to the output's
    /// largest magnitude), and returns the fused model and the fire counts.
    fn fuse(&self) -> (Model, HashMap<String, usize>) {
        let before = self.model();
        let mut after = before.clone();
        let report = fuse(&mut after).unwrap();
        let feeds: HashMap<String, Value> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, (name, dims))| {
                let shape: Vec<usize> = dims
                    .iter()
                    .map(|&d| if d < 0 { 3 } else { d as usize })
                    .collect();
                let len = shape.iter().product();
                let a = ArrayD::from_shape_vec(IxDyn(&shape), rand(100 + i as u64, len)).unwrap();
                (name.to_string(), Value::F32(a))
            })
            .collect();
        let run = |m: &Model| {
            Session::new(m, &Options::with_threads(1))
                .unwrap()
                .run(feeds.clone())
                .unwrap()
        };
        for ((na, a), (nb, b)) in run(&before).iter().zip(run(&after)) {
            assert_eq!(na, &nb);
            let (Some(a), Some(b)) = (a.as_f32(), b.as_f32()) else {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{na}");
                continue;
            };
            assert_eq!(a.shape(), b.shape(), "{na}");
            let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{na}: differs by {diff} (scale {scale})"
            );
        }
        (after, counts(&report))
    }
}

fn counts(r: &FuseReport) -> HashMap<String, usize> {
    r.passes.iter().map(|p| (p.pass.clone(), p.fired)).collect()
}

fn ops(m: &Model) -> Vec<&str> {
    m.graph.nodes.iter().map(|n| n.op_type()).collect()
}

fn linear(extra: Vec<Node>, outputs: Vec<&'static str>) -> Case {
    let mut nodes = vec![n("MatMul", &["x", "w"], &["a"])];
    nodes.extend(extra);
    Case {
        inputs: vec![("x", vec![-1, 4])],
        outputs,
        nodes,
        inits: vec![w("w", &[4, 5], 1), w("b", &[5], 2)],
        opset: 17,
    }
}

#[test]
fn identity_and_inference_dropout_are_removed() {
    let c = linear(
        vec![
            n("Identity", &["a"], &["i"]),
            n("Dropout", &["i"], &["d"]),
            n("Relu", &["d"], &["y"]),
        ],
        vec!["y"],
    );
    let (m, k) = c.fuse();
    assert_eq!(k["remove_identity"], 2);
    assert_eq!(ops(&m), ["MatMul", "Relu"]);
}

#[test]
fn identity_writing_a_graph_output_renames_its_producer() {
    let c = linear(vec![n("Identity", &["a"], &["y"])], vec!["y"]);
    let (m, _) = c.fuse();
    assert_eq!(ops(&m), ["MatMul"]);
    assert_eq!(m.graph.nodes[0].outputs(), ["y"]);
    // Input straight to output: nothing to rename, the Identity stays.
    let c = Case {
        inputs: vec![("x", vec![2])],
        outputs: vec!["y"],
        nodes: vec![n("Identity", &["x"], &["y"])],
        inits: vec![],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["remove_identity"], 0);
    assert_eq!(ops(&m), ["Identity"]);
}

#[test]
fn dropout_in_training_mode_or_with_a_used_mask_stays() {
    let mut c = linear(
        vec![
            n("Dropout", &["a", "", "t"], &["d"]),
            n("Relu", &["d"], &["y"]),
        ],
        vec!["y"],
    );
    c.inits.push(Tensor::from_vec("t", &[], vec![true]));
    assert_eq!(counts(&fuse(&mut c.model()).unwrap())["remove_identity"], 0);
    c.inits.pop();
    c.inits.push(Tensor::from_vec("t", &[], vec![false]));
    let (_, k) = c.fuse();
    assert_eq!(k["remove_identity"], 1);

    let c = linear(
        vec![n("Dropout", &["a"], &["y", "mask"])],
        vec!["y", "mask"],
    );
    let (_, k) = c.fuse();
    assert_eq!(k["remove_identity"], 0);

    // Opset 6: is_test=0 is training mode.
    let mut c = linear(vec![n("Dropout", &["a"], &["y"])], vec!["y"]);
    c.opset = 6;
    assert_eq!(counts(&fuse(&mut c.model()).unwrap())["remove_identity"], 0);
    c.nodes[1] = n("Dropout", &["a"], &["y"]).with_attr(attr_int("is_test", 1));
    assert_eq!(counts(&fuse(&mut c.model()).unwrap())["remove_identity"], 1);
}

#[test]
fn transposed_constant_weight_is_stored_transposed() {
    let c = Case {
        inputs: vec![("x", vec![-1, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("Transpose", &["w"], &["wt"]).with_attr(attr_ints("perm", vec![1, 0])),
            n("MatMul", &["x", "wt"], &["y"]),
        ],
        inits: vec![w("w", &[5, 4], 3)],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["transpose_weight"], 1);
    assert_eq!(ops(&m), ["MatMul"]);
    let b = m
        .graph
        .initializer(m.graph.nodes[0].input(1).unwrap())
        .unwrap();
    assert_eq!(b.dims(), [4, 5]);
    assert!(m.graph.initializer("w").is_none());

    // A second reader of the transposed weight: left to constant folding, not this pass.
    let mut c2 = c;
    c2.nodes.push(n("Neg", &["wt"], &["z"]));
    c2.outputs.push("z");
    let (_, k) = c2.fuse();
    assert_eq!(k["transpose_weight"], 0);
}

fn conv_bn(group: i64, bias: bool) -> Case {
    let mut conv_in = vec!["x", "cw"];
    if bias {
        conv_in.push("cb");
    }
    Case {
        inputs: vec![("x", vec![1, 4, 5, 5])],
        outputs: vec!["y"],
        nodes: vec![
            n("Conv", &conv_in, &["c"])
                .with_attr(attr_int("group", group))
                .with_attr(attr_ints("pads", vec![1, 1, 1, 1])),
            n(
                "BatchNormalization",
                &["c", "s", "bb", "mean", "var"],
                &["bn"],
            )
            .with_attr(attr_float("epsilon", 1e-3)),
            n("Relu", &["bn"], &["y"]),
        ],
        inits: vec![
            w("cw", &[6, (4 / group) as usize, 3, 3], 4),
            w("cb", &[6], 5),
            w("s", &[6], 6),
            w("bb", &[6], 7),
            w("mean", &[6], 8),
            Tensor::from_vec(
                "var",
                &[6],
                rand(9, 6).iter().map(|v| v.abs() + 0.1).collect(),
            ),
        ],
        opset: 17,
    }
}

#[test]
fn conv_batchnorm_folds_with_and_without_bias_and_groups() {
    for (group, bias) in [(1, true), (1, false), (2, false), (2, true)] {
        let (m, k) = conv_bn(group, bias).fuse();
        assert_eq!(k["conv_batchnorm"], 1, "group {group} bias {bias}");
        assert_eq!(ops(&m), ["Conv", "Relu"]);
        assert_eq!(m.graph.nodes[0].name(), "Conv_c");
        assert!(m.graph.initializer("mean").is_none());
    }
}

#[test]
fn conv_batchnorm_needs_constant_params_and_a_private_conv_output() {
    let mut c = conv_bn(1, true);
    c.inits.retain(|t| t.name() != "s");
    c.inputs.push(("s", vec![6]));
    assert_eq!(c.fuse().1["conv_batchnorm"], 0);

    let mut c = conv_bn(1, true);
    c.outputs.push("c");
    assert_eq!(c.fuse().1["conv_batchnorm"], 0);

    let mut c = conv_bn(1, true);
    c.nodes[1] = c.nodes[1].clone().with_attr(attr_int("training_mode", 1));
    assert_eq!(counts(&fuse(&mut c.model()).unwrap())["conv_batchnorm"], 0);
}

#[test]
fn matmul_add_becomes_gemm_in_2d() {
    let (m, k) = linear(vec![n("Add", &["b", "a"], &["y"])], vec!["y"]).fuse();
    assert_eq!(k["matmul_add"], 1);
    assert_eq!(ops(&m), ["Gemm"]);
    let g = &m.graph.nodes[0];
    assert_eq!(g.name(), "MatMul_a");
    assert_eq!(g.inputs(), ["x", "w", "b"]);
    assert_eq!(g.outputs(), ["y"]);
}

#[test]
fn matmul_add_in_nd_puts_a_vector_bias_second() {
    let c = Case {
        inputs: vec![("x", vec![-1, 2, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("MatMul", &["x", "w"], &["a"]),
            n("Add", &["b", "a"], &["y"]),
        ],
        inits: vec![w("w", &[4, 5], 1), w("b", &[1, 1, 5], 2)],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["matmul_add"], 1);
    assert_eq!(ops(&m), ["MatMul", "Add"]);
    let add = &m.graph.nodes[1];
    assert_eq!(add.input(0), Some("a"));
    assert_eq!(
        m.graph.initializer(add.input(1).unwrap()).unwrap().dims(),
        [5]
    );
    // Already in that form: nothing to do.
    let mut again = m.clone();
    assert_eq!(counts(&fuse(&mut again).unwrap())["matmul_add"], 0);
}

#[test]
fn matmul_add_needs_a_constant_bias_and_a_private_product() {
    let mut c = linear(vec![n("Add", &["b", "a"], &["y"])], vec!["y"]);
    c.inits.retain(|t| t.name() != "b");
    c.inputs.push(("b", vec![5]));
    assert_eq!(c.fuse().1["matmul_add"], 0);
    let c = linear(
        vec![n("Add", &["b", "a"], &["y"]), n("Neg", &["a"], &["z"])],
        vec!["y", "z"],
    );
    assert_eq!(c.fuse().1["matmul_add"], 0);
}

#[test]
fn relu_spellings_after_a_linear_become_relu_and_units_are_counted() {
    let mut c = linear(
        vec![
            n("Add", &["a", "b"], &["s"]),
            n("Clip", &["s", "zero"], &["y"]),
        ],
        vec!["y"],
    );
    c.inits.push(Tensor::from_vec("zero", &[], vec![0f32]));
    let (m, k) = c.fuse();
    assert_eq!(k["linear_activation"], 1);
    assert_eq!(ops(&m), ["Gemm", "Relu"]);
    let r = fuse(&mut m.clone()).unwrap();
    assert_eq!(r.units.with_activation, 1);

    let mut c = linear(vec![n("Max", &["a", "zero"], &["y"])], vec!["y"]);
    c.inits.push(Tensor::from_vec("zero", &[], vec![0f32]));
    let (m, k) = c.fuse();
    assert_eq!(k["linear_activation"], 1);
    assert_eq!(ops(&m), ["MatMul", "Relu"]);

    // ReLU6 stays a Clip and counts as a unit with activation.
    let mut c = linear(vec![n("Clip", &["a", "zero", "six"], &["y"])], vec!["y"]);
    c.inits.push(Tensor::from_vec("zero", &[], vec![0f32]));
    c.inits.push(Tensor::from_vec("six", &[], vec![6f32]));
    let (m, k) = c.fuse();
    assert_eq!(k["linear_activation"], 0);
    let labels = super::units::unit_labels(&m.graph, 17);
    assert_eq!(
        labels[&(String::new(), "MatMul_a".to_string())],
        "Linear+Relu6"
    );
}

#[test]
fn reshape_chains_merge_and_transpose_pairs_compose_or_cancel() {
    let c = Case {
        inputs: vec![("x", vec![2, 3, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("Unsqueeze", &["x", "ax"], &["u"]),
            n("Reshape", &["u", "shape"], &["r"]),
            n("Transpose", &["r"], &["t1"]).with_attr(attr_ints("perm", vec![1, 0, 2])),
            n("Transpose", &["t1"], &["t2"]).with_attr(attr_ints("perm", vec![1, 0, 2])),
            n("Transpose", &["t2"], &["t3"]).with_attr(attr_ints("perm", vec![2, 0, 1])),
            n("Transpose", &["t3"], &["y"]).with_attr(attr_ints("perm", vec![0, 2, 1])),
        ],
        inits: vec![
            Tensor::from_vec("ax", &[1], vec![0i64]),
            Tensor::from_vec("shape", &[3], vec![6i64, 2, 2]),
        ],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["shape_chain"], 3);
    assert_eq!(ops(&m), ["Reshape", "Transpose"]);
    assert_eq!(
        m.graph.nodes[1].attr::<Vec<i64>>("perm").unwrap(),
        Some(vec![2, 1, 0])
    );
}

#[test]
fn unsqueeze_squeeze_of_the_same_axes_cancels() {
    let mk = |un_axes: i64, sq_axes: i64| Case {
        inputs: vec![("x", vec![2, 1])],
        outputs: vec!["y"],
        nodes: vec![
            n("Unsqueeze", &["x", "a1"], &["u"]),
            n("Squeeze", &["u", "a2"], &["s"]),
            n("Relu", &["s"], &["y"]),
        ],
        inits: vec![
            Tensor::from_vec("a1", &[1], vec![un_axes]),
            Tensor::from_vec("a2", &[1], vec![sq_axes]),
        ],
        opset: 17,
    };
    let (m, k) = mk(1, -2).fuse();
    assert_eq!(k["shape_chain"], 1);
    assert_eq!(ops(&m), ["Relu"]);
    assert_eq!(mk(0, 2).fuse().1["shape_chain"], 0);
}

#[test]
fn shape_gather_of_a_known_dim_folds_while_the_batch_dim_stays() {
    let c = Case {
        inputs: vec![("x", vec![-1, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("Shape", &["x"], &["s"]),
            n("Gather", &["s", "i0"], &["b"]),
            n("Gather", &["s", "i1"], &["f"]),
            n("Unsqueeze", &["b", "ax"], &["bu"]),
            n("Unsqueeze", &["f", "ax"], &["fu"]),
            n("Concat", &["bu", "fu"], &["shape"]).with_attr(attr_int("axis", 0)),
            n("Reshape", &["x", "shape"], &["y"]),
        ],
        inits: vec![
            Tensor::from_vec("i0", &[], vec![0i64]),
            Tensor::from_vec("i1", &[], vec![1i64]),
            Tensor::from_vec("ax", &[1], vec![0i64]),
        ],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["fold_constants"], 2, "Gather(s, 1) and its Unsqueeze");
    assert_eq!(
        ops(&m),
        ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    );
}

#[test]
fn fusing_is_deterministic_and_idempotent() {
    let c = conv_bn(2, false);
    let (a, _) = c.fuse();
    let (b, _) = c.fuse();
    use prost::Message;
    assert_eq!(a.to_proto().encode_to_vec(), b.to_proto().encode_to_vec());
    let mut again = a.clone();
    assert_eq!(fuse(&mut again).unwrap().total(), 0);
}

fn branch(nodes: Vec<Node>, output: &str) -> Graph {
    let mut g = Graph::from_proto(GraphProto {
        name: Some(format!("g_{output}")),
        output: vec![vi(output, &[-1, 4])],
        ..Default::default()
    })
    .unwrap();
    g.nodes = nodes;
    g
}

fn if_node(then_g: Graph, else_g: Graph) -> Node {
    use crate::ir::Subgraph;
    use crate::onnx::{AttributeProto, attribute_proto::AttributeType};
    let attr = |name: &str| AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Graph as i32),
        ..Default::default()
    };
    let mut n = n("If", &["cond"], &["y"])
        .with_attr(attr("then_branch"))
        .with_attr(attr("else_branch"));
    n.subgraphs = vec![
        Subgraph {
            attr: "then_branch".into(),
            index: None,
            graph: then_g,
        },
        Subgraph {
            attr: "else_branch".into(),
            index: None,
            graph: else_g,
        },
    ];
    n
}

#[test]
fn passes_run_inside_if_branches_and_keep_branch_outputs() {
    let then_g = branch(
        vec![
            n("Identity", &["a"], &["t1"]),
            n("Relu", &["t1"], &["t_out"]),
        ],
        "t_out",
    );
    // A pass-through of an outer value: the branch output must stay.
    let else_g = branch(vec![n("Identity", &["a"], &["e_out"])], "e_out");
    for cond in [true, false] {
        let c = Case {
            inputs: vec![("x", vec![-1, 4])],
            outputs: vec!["y"],
            nodes: vec![
                n("MatMul", &["x", "w4"], &["a"]),
                if_node(then_g.clone(), else_g.clone()),
            ],
            inits: vec![
                w("w4", &[4, 4], 1),
                Tensor::from_vec("cond", &[], vec![cond]),
            ],
            opset: 17,
        };
        let (m, k) = c.fuse();
        assert_eq!(k["remove_identity"], 1);
        let s = &m.graph.nodes[1].subgraphs;
        let ops = |g: &Graph| {
            g.nodes
                .iter()
                .map(|n| n.op_type().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ops(&s[0].graph), ["Relu"]);
        assert_eq!(s[0].graph.nodes[0].inputs(), ["a"]);
        assert_eq!(ops(&s[1].graph), ["Identity"]);
    }
}

#[test]
fn identity_read_from_inside_a_branch_is_renamed_there() {
    let then_g = branch(vec![n("Relu", &["i"], &["t_out"])], "t_out");
    let else_g = branch(vec![n("Neg", &["i"], &["e_out"])], "e_out");
    let c = Case {
        inputs: vec![("x", vec![-1, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("MatMul", &["x", "w4"], &["a"]),
            n("Identity", &["a"], &["i"]),
            if_node(then_g, else_g),
        ],
        inits: vec![
            w("w4", &[4, 4], 1),
            Tensor::from_vec("cond", &[], vec![false]),
        ],
        opset: 17,
    };
    let (m, k) = c.fuse();
    assert_eq!(k["remove_identity"], 1);
    assert_eq!(m.graph.nodes[1].subgraphs[1].graph.nodes[0].inputs(), ["a"]);
}

#[test]
fn unread_nodes_are_removed_but_not_graph_outputs() {
    let c = linear(
        vec![n("Relu", &["a"], &["y"]), n("Neg", &["a"], &["unused"])],
        vec!["y"],
    );
    let (m, k) = c.fuse();
    assert_eq!(k["remove_dead"], 1);
    assert_eq!(ops(&m), ["MatMul", "Relu"]);
}

#[test]
fn matmul_add_stays_matmul_when_gemm_conversion_is_off() {
    let c = linear(vec![n("Add", &["b", "a"], &["y"])], vec!["y"]);
    let mut m = c.model();
    let opts = super::FuseOptions {
        matmul_to_gemm: false,
        ..Default::default()
    };
    let r = super::fuse_with(&mut m, opts).unwrap();
    assert_eq!(counts(&r)["matmul_add"], 1);
    assert_eq!(ops(&m), ["MatMul", "Add"]);
    assert_eq!(m.graph.nodes[1].inputs(), ["a", "b"]);
}

#[test]
fn leaky_relu_after_a_gemm_is_a_unit_with_activation() {
    let c = Case {
        inputs: vec![("x", vec![-1, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("Gemm", &["x", "w", "b"], &["a"]),
            n("LeakyRelu", &["a"], &["y"]).with_attr(attr_float("alpha", 0.1)),
        ],
        inits: vec![w("w", &[4, 5], 1), w("b", &[5], 2)],
        opset: 17,
    };
    let labels = super::units::unit_labels(&c.model().graph, 17);
    assert_eq!(
        labels[&(String::new(), "Gemm_a".to_string())],
        "Linear+bias+LeakyRelu"
    );
    let u = super::units::count_units(&c.model().graph, 17);
    assert_eq!((u.linear, u.with_bias, u.with_activation), (1, 1, 1));
}

#[test]
fn gemm_without_c_takes_a_following_bias_add() {
    let mk = |bias_dims: &[usize]| Case {
        inputs: vec![("x", vec![3, 4])],
        outputs: vec!["y"],
        nodes: vec![
            n("Gemm", &["x", "w"], &["a"])
                .with_attr(attr_int("transB", 1))
                .with_attr(attr_float("alpha", 0.5))
                .with_attr(attr_float("beta", 3.0)),
            n("Add", &["b", "a"], &["y"]),
        ],
        inits: vec![w("w", &[5, 4], 1), w("b", bias_dims, 2)],
        opset: 13,
    };
    for dims in [&[5][..], &[1, 5], &[3, 5], &[3, 1]] {
        let (m, k) = mk(dims).fuse();
        assert_eq!(k["matmul_add"], 1, "{dims:?}");
        assert_eq!(ops(&m), ["Gemm"]);
        assert_eq!(m.graph.nodes[0].inputs(), ["x", "w", "b"]);
        assert_eq!(m.graph.nodes[0].attr::<f32>("beta").unwrap(), None);
    }
    // A bias that broadcasts the output to a higher rank is not Gemm's C.
    let (m, k) = mk(&[1, 1, 5]).fuse();
    assert_eq!(k["matmul_add"], 0);
    assert_eq!(ops(&m), ["Gemm", "Add"]);
}

#[test]
fn conv_takes_a_per_channel_add_as_its_bias() {
    let mk = |dims: &[usize], bias: bool| {
        let mut c = conv_bn(1, bias);
        c.nodes[1] = n("Add", &["k", "c"], &["bn"]);
        c.inits.push(w("k", dims, 11));
        c
    };
    for (dims, bias) in [
        (&[1, 6, 1, 1][..], true),
        (&[6, 1, 1], false),
        (&[1], true),
        (&[1, 1, 1, 1], false),
    ] {
        let (m, k) = mk(dims, bias).fuse();
        assert_eq!(k["conv_add"], 1, "{dims:?}");
        assert_eq!(ops(&m), ["Conv", "Relu"]);
    }
    // [5] broadcasts along the width, [1, 6, 1, 1, 1] raises the rank, [1, 6, 5, 1] varies
    // along the height: not a bias.
    for dims in [&[5][..], &[1, 6, 1, 1, 1], &[1, 6, 5, 1]] {
        let (m, k) = mk(dims, true).fuse();
        assert_eq!(k["conv_add"], 0, "{dims:?}");
        assert_eq!(ops(&m), ["Conv", "Add", "Relu"]);
    }
}
