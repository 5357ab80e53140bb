//! Element type and shape inference for the values of a graph: what the passes need to decide
//! (is this MatMul's input float32? what is its inner dimension? is the batch dim symbolic?).
//!
//! Known dims stay numbers, symbolic dims keep their `dim_param` names, and anything the rules
//! cannot tell becomes [`Dim::Unknown`] (or an unknown rank). Inference never fails: an op it
//! does not know gives outputs of unknown type.

use std::collections::HashMap;

use crate::onnx::{
    TypeProto, ValueInfoProto, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use super::graph::{Graph, Node};
use super::tensor::Tensor;

mod contrib;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// What is known of a tensor value: its element type (`DataType as i32`, 0 when unknown) and
/// its shape (`None` when even the rank is unknown).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ValueType {
    pub elem: i32,
    pub shape: Option<Vec<Dim>>,
}

impl ValueType {
    pub fn new(elem: DataType, shape: Option<Vec<Dim>>) -> Self {
        ValueType {
            elem: elem as i32,
            shape,
        }
    }

    pub fn dtype(&self) -> DataType {
        DataType::try_from(self.elem).unwrap_or(DataType::Undefined)
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// The dims as numbers when all are known.
    pub fn static_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(Dim::known).collect()
    }

    pub fn from_value_info(v: &ValueInfoProto) -> Option<Self> {
        v.r#type.as_ref().and_then(Self::from_type_proto)
    }

    pub fn from_type_proto(t: &TypeProto) -> Option<Self> {
        let Some(type_proto::Value::TensorType(tt)) = &t.value else {
            return None;
        };
        let shape = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Dim::Known(*v),
                    Some(tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                        Dim::Sym(p.clone())
                    }
                    _ => Dim::Unknown,
                })
                .collect()
        });
        Some(ValueType {
            elem: tt.elem_type(),
            shape,
        })
    }

    pub fn of_tensor(t: &Tensor) -> Self {
        ValueType {
            elem: t.proto.data_type(),
            shape: Some(t.dims().iter().map(|&d| Dim::Known(d)).collect()),
        }
    }

    /// Shape as text: `[seq, 1, 64]`, or `[?]` for an unknown rank.
    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "[?]".into(),
            Some(s) => format!(
                "[{}]",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Types of every value in `graph` (and not in its subgraphs) that the rules can tell.
/// `outer` supplies the types of outer-scope values for a subgraph.
pub fn infer_types(
    graph: &Graph,
    outer: &HashMap<String, ValueType>,
) -> HashMap<String, ValueType> {
    infer_types_and_values(graph, outer).0
}

/// [`infer_types`], plus the values of the small integer tensors (shape vectors and the
/// scalars around them) the rules could tell, with symbolic dims where they are not numbers.
/// Values are by output name; a scalar is a one-element vector.
pub fn infer_types_and_values(
    graph: &Graph,
    outer: &HashMap<String, ValueType>,
) -> (HashMap<String, ValueType>, HashMap<String, Vec<Dim>>) {
    let mut types = outer.clone();
    for v in graph
        .proto
        .input
        .iter()
        .chain(&graph.proto.value_info)
        .chain(&graph.proto.output)
    {
        if let Some(t) = ValueType::from_value_info(v) {
            types.insert(v.name().to_string(), t);
        }
    }
    // Small integer tensors whose values are known, possibly symbolically: shape vectors
    // (Shape -> Slice/Gather -> Concat chains) and the scalars around them.
    let mut vals: HashMap<String, Vec<Dim>> = HashMap::new();
    for (name, t) in &graph.initializers {
        types.insert(name.clone(), ValueType::of_tensor(t));
        if let Some(v) = small_int_values(t) {
            vals.insert(name.clone(), v);
        }
    }
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| (0..graph.nodes.len()).collect());
    for i in order {
        let node = &graph.nodes[i];
        let inputs: Vec<Option<&ValueType>> = node
            .inputs()
            .iter()
            .map(|n| if n.is_empty() { None } else { types.get(n) })
            .collect();
        let known = |k: usize| -> Option<Vec<Dim>> { vals.get(node.input(k)?).cloned() };
        let consts = |k: usize| -> Option<Vec<i64>> { known(k)?.iter().map(Dim::known).collect() };
        let outs = infer_node(node, &inputs, &consts, &known);
        let value = propagate_values(node, &inputs, &known);
        for (name, t) in node.outputs().iter().zip(outs) {
            if name.is_empty() {
                continue;
            }
            // Declared value_info wins where it is more specific than the rule.
            let keep_declared = types
                .get(name)
                .is_some_and(|d| d.elem != 0 && d.shape.is_some() && t.shape.is_none());
            if !keep_declared && (t.elem != 0 || !types.contains_key(name)) {
                types.insert(name.clone(), t);
            }
        }
        if let (Some(v), Some(o)) = (value, node.outputs().first()) {
            vals.insert(o.clone(), v);
        }
    }
    (types, vals)
}

fn unknown() -> ValueType {
    ValueType::default()
}

fn same_elem(t: Option<&ValueType>, shape: Option<Vec<Dim>>) -> ValueType {
    ValueType {
        elem: t.map_or(0, |t| t.elem),
        shape,
    }
}

/// Numpy-style broadcasting of shapes.
pub fn broadcast(shapes: &[Option<&Vec<Dim>>]) -> Option<Vec<Dim>> {
    let shapes: Vec<&Vec<Dim>> = shapes.iter().copied().collect::<Option<_>>()?;
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let cur = &out[off + i];
            out[off + i] = match (cur, d) {
                (Dim::Known(1), d) => d.clone(),
                (c, Dim::Known(1)) => c.clone(),
                (Dim::Known(a), Dim::Known(b)) if a == b => Dim::Known(*a),
                (Dim::Sym(a), Dim::Sym(b)) if a == b => Dim::Sym(a.clone()),
                (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                _ => Dim::Unknown,
            };
        }
    }
    Some(out)
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn infer_node(
    node: &Node,
    inputs: &[Option<&ValueType>],
    consts: &dyn Fn(usize) -> Option<Vec<i64>>,
    known: &dyn Fn(usize) -> Option<Vec<Dim>>,
) -> Vec<ValueType> {
    let x = inputs.first().copied().flatten();
    let xs = x.and_then(|t| t.shape.clone());
    let n_out = node.outputs().len();
    let attr_i = |name: &str, d: i64| node.attr::<i64>(name).ok().flatten().unwrap_or(d);
    let attr_ints = |name: &str| node.attr::<Vec<i64>>(name).ok().flatten();
    let op = node.op_type();
    let one = |t: ValueType| {
        let mut v = vec![t];
        v.resize(n_out, unknown());
        v
    };
    if !node.domain().is_empty() && node.domain() != "com.microsoft" {
        return vec![unknown(); n_out];
    }
    if let Some(outs) = contrib::infer(node, inputs) {
        return outs;
    }
    match op {
        "Identity"
        | "Relu"
        | "LeakyRelu"
        | "Sigmoid"
        | "HardSigmoid"
        | "Tanh"
        | "Exp"
        | "Log"
        | "Neg"
        | "Abs"
        | "Sqrt"
        | "Erf"
        | "Gelu"
        | "Softmax"
        | "LogSoftmax"
        | "Clip"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Reciprocal"
        | "Sin"
        | "Cos"
        | "Not"
        | "Elu"
        | "Selu"
        | "Softplus"
        | "HardSwish"
        | "PRelu"
        | "LayerNormalization"
        | "BatchNormalization"
        | "InstanceNormalization"
        | "Dropout"
        | "Sign" => {
            let mut v = vec![same_elem(x, xs.clone())];
            if op == "Dropout" && n_out > 1 {
                v.push(ValueType::new(DataType::Bool, xs));
            }
            v.resize(n_out, unknown());
            v
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Mod" | "Sum" | "Mean" => {
            one(same_elem(
                x,
                broadcast(
                    &inputs
                        .iter()
                        .map(|t| t.and_then(|t| t.shape.as_ref()))
                        .collect::<Vec<_>>(),
                ),
            ))
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            one(ValueType::new(
                DataType::Bool,
                broadcast(
                    &inputs
                        .iter()
                        .map(|t| t.and_then(|t| t.shape.as_ref()))
                        .collect::<Vec<_>>(),
                ),
            ))
        }
        "Where" => one(same_elem(
            inputs.get(1).copied().flatten(),
            broadcast(
                &inputs
                    .iter()
                    .map(|t| t.and_then(|t| t.shape.as_ref()))
                    .collect::<Vec<_>>(),
            ),
        )),
        "Cast" => one(ValueType {
            elem: attr_i("to", 0) as i32,
            shape: xs,
        }),
        "CastLike" => one(ValueType {
            elem: inputs.get(1).copied().flatten().map_or(0, |t| t.elem),
            shape: xs,
        }),
        "Shape" => {
            let n = xs.as_ref().map(|s| {
                let r = s.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
                let start = clampi(attr_i("start", 0));
                let end = clampi(attr_i("end", r));
                (end - start).max(0)
            });
            one(ValueType::new(
                DataType::Int64,
                Some(vec![n.map_or(Dim::Unknown, Dim::Known)]),
            ))
        }
        "Size" => one(ValueType::new(DataType::Int64, Some(vec![]))),
        "MatMul" | "MatMulInteger" => {
            let b = inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|t| t.shape.clone());
            let shape = matmul_shape(xs.as_ref(), b.as_ref());
            let elem = if op == "MatMulInteger" {
                DataType::Int32 as i32
            } else {
                x.map_or(0, |t| t.elem)
            };
            one(ValueType { elem, shape })
        }
        "Gemm" => {
            let b = inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|t| t.shape.clone());
            let shape = match (xs, b) {
                (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
                    let m = if attr_i("transA", 0) != 0 {
                        &a[1]
                    } else {
                        &a[0]
                    };
                    let n = if attr_i("transB", 0) != 0 {
                        &b[0]
                    } else {
                        &b[1]
                    };
                    Some(vec![m.clone(), n.clone()])
                }
                _ => Some(vec![Dim::Unknown, Dim::Unknown]),
            };
            one(same_elem(x, shape))
        }
        "Transpose" => one(same_elem(
            x,
            xs.map(|s| {
                let perm = attr_ints("perm").unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                perm.iter()
                    .map(|&p| s.get(p as usize).cloned().unwrap_or(Dim::Unknown))
                    .collect()
            }),
        )),
        "Reshape" => one(same_elem(
            x,
            known(1).map(|target| reshape_shape(xs.as_ref(), &target, attr_i("allowzero", 0) != 0)),
        )),
        "Flatten" => one(same_elem(
            x,
            xs.map(|s| {
                let axis = norm_axis(attr_i("axis", 1), s.len() + 1)
                    .unwrap_or(1)
                    .min(s.len());
                vec![product(&s[..axis]), product(&s[axis..])]
            }),
        )),
        "Squeeze" => {
            let axes = attr_ints("axes").or_else(|| consts(1));
            one(same_elem(
                x,
                xs.and_then(|s| {
                    let r = s.len();
                    match axes {
                        Some(axes) => {
                            let ax: Vec<usize> =
                                axes.iter().filter_map(|&a| norm_axis(a, r)).collect();
                            Some(
                                s.iter()
                                    .enumerate()
                                    .filter(|(i, _)| !ax.contains(i))
                                    .map(|(_, d)| d.clone())
                                    .collect(),
                            )
                        }
                        None if s.iter().all(|d| d.known().is_some()) => {
                            Some(s.into_iter().filter(|d| *d != Dim::Known(1)).collect())
                        }
                        None => None,
                    }
                }),
            ))
        }
        "Unsqueeze" => {
            let axes = attr_ints("axes").or_else(|| consts(1));
            one(same_elem(
                x,
                match (xs, axes) {
                    (Some(s), Some(axes)) => {
                        let r = s.len() + axes.len();
                        let ax: Vec<usize> = axes.iter().filter_map(|&a| norm_axis(a, r)).collect();
                        let mut it = s.into_iter();
                        Some(
                            (0..r)
                                .map(|i| {
                                    if ax.contains(&i) {
                                        Dim::Known(1)
                                    } else {
                                        it.next().unwrap_or(Dim::Unknown)
                                    }
                                })
                                .collect(),
                        )
                    }
                    _ => None,
                },
            ))
        }
        "Concat" => {
            let shapes: Option<Vec<&Vec<Dim>>> = inputs
                .iter()
                .map(|t| t.and_then(|t| t.shape.as_ref()))
                .collect();
            one(same_elem(
                x,
                shapes.and_then(|shapes| {
                    let first = shapes.first()?;
                    let axis = norm_axis(attr_i("axis", 0), first.len())?;
                    let mut out = (*first).clone();
                    out[axis] = shapes
                        .iter()
                        .map(|s| s.get(axis).and_then(Dim::known))
                        .sum::<Option<i64>>()
                        .map_or(Dim::Unknown, Dim::Known);
                    Some(out)
                }),
            ))
        }
        "Gather" => {
            let idx = inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|t| t.shape.clone());
            one(same_elem(
                x,
                match (xs, idx) {
                    (Some(s), Some(idx)) => norm_axis(attr_i("axis", 0), s.len()).map(|a| {
                        let mut out = s[..a].to_vec();
                        out.extend(idx);
                        out.extend_from_slice(&s[a + 1..]);
                        out
                    }),
                    _ => None,
                },
            ))
        }
        "Slice" | "Split" | "Pad" | "Expand" | "Tile" | "GatherElements" | "MaxPool"
        | "AveragePool" | "Conv" | "ConvInteger" => {
            // Rank is preserved; dims along the touched axes are left unknown.
            let shape = xs.map(|s| {
                if op == "Conv" || op == "ConvInteger" || op.ends_with("Pool") {
                    let mut v = vec![s[0].clone()];
                    v.resize(s.len(), Dim::Unknown);
                    v
                } else {
                    vec![Dim::Unknown; s.len()]
                }
            });
            let shape = if op == "Expand" { None } else { shape };
            let elem = if op == "ConvInteger" {
                DataType::Int32 as i32
            } else {
                x.map_or(0, |t| t.elem)
            };
            vec![ValueType { elem, shape }; n_out]
        }
        "GlobalAveragePool" | "GlobalMaxPool" => one(same_elem(
            x,
            xs.map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) })
                    .collect()
            }),
        )),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" => {
            let keep = attr_i("keepdims", 1) != 0;
            let axes = attr_ints("axes").or_else(|| consts(1));
            one(same_elem(
                x,
                xs.map(|s| {
                    let r = s.len();
                    let ax: Vec<usize> = match &axes {
                        Some(a) if !a.is_empty() => {
                            a.iter().filter_map(|&a| norm_axis(a, r)).collect()
                        }
                        _ if attr_i("noop_with_empty_axes", 0) != 0 => vec![],
                        _ => (0..r).collect(),
                    };
                    s.into_iter()
                        .enumerate()
                        .filter_map(|(i, d)| match (ax.contains(&i), keep) {
                            (true, true) => Some(Dim::Known(1)),
                            (true, false) => None,
                            _ => Some(d),
                        })
                        .collect()
                }),
            ))
        }
        "Constant" => {
            let t = node.attr_tensor("value").ok().flatten();
            one(t.map(|t| ValueType::of_tensor(&t)).unwrap_or_default())
        }
        "ConstantOfShape" => {
            let elem = node
                .attr_tensor("value")
                .ok()
                .flatten()
                .map_or(DataType::Float as i32, |t| t.proto.data_type());
            one(ValueType {
                elem,
                shape: known(0),
            })
        }
        "Range" => one(same_elem(x, Some(vec![Dim::Unknown]))),
        "LSTM" | "GRU" | "RNN" | "DynamicQuantizeLSTM" => rnn_shapes(node, inputs, x, n_out),
        "DynamicQuantizeLinear" => vec![
            ValueType::new(DataType::Uint8, xs),
            ValueType::new(DataType::Float, Some(vec![])),
            ValueType::new(DataType::Uint8, Some(vec![])),
        ],
        "QuantizeLinear" => {
            let zp = inputs
                .get(2)
                .copied()
                .flatten()
                .map_or(DataType::Uint8 as i32, |t| t.elem);
            one(ValueType {
                elem: zp,
                shape: xs,
            })
        }
        "DequantizeLinear" => {
            let s = inputs
                .get(1)
                .copied()
                .flatten()
                .map_or(DataType::Float as i32, |t| t.elem);
            one(ValueType { elem: s, shape: xs })
        }
        "DynamicQuantizeMatMul" | "MatMulIntegerToFloat" => {
            let b = inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|t| t.shape.clone());
            one(ValueType::new(
                DataType::Float,
                matmul_shape(xs.as_ref(), b.as_ref()),
            ))
        }
        _ => vec![unknown(); n_out],
    }
}

fn product(dims: &[Dim]) -> Dim {
    dims.iter()
        .map(Dim::known)
        .product::<Option<i64>>()
        .map_or(Dim::Unknown, Dim::Known)
}

fn matmul_shape(a: Option<&Vec<Dim>>, b: Option<&Vec<Dim>>) -> Option<Vec<Dim>> {
    let (a, b) = (a?, b?);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2 = if a.len() == 1 {
        vec![Dim::Known(1), a[0].clone()]
    } else {
        a.clone()
    };
    let b2 = if b.len() == 1 {
        vec![b[0].clone(), Dim::Known(1)]
    } else {
        b.clone()
    };
    let batch = broadcast(&[
        Some(&a2[..a2.len() - 2].to_vec()),
        Some(&b2[..b2.len() - 2].to_vec()),
    ])?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Some(out)
}

fn reshape_shape(input: Option<&Vec<Dim>>, target: &[Dim], allowzero: bool) -> Vec<Dim> {
    let mut out: Vec<Dim> = target
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Dim::Known(0) if !allowzero => input
                .and_then(|s| s.get(i).cloned())
                .unwrap_or(Dim::Unknown),
            Dim::Known(-1) => Dim::Unknown,
            t => t.clone(),
        })
        .collect();
    if let Some(pos) = target.iter().position(|t| *t == Dim::Known(-1)) {
        let total = input.map(|s| product(s)).and_then(|d| d.known());
        let rest = out
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != pos)
            .map(|(_, d)| d.known())
            .product::<Option<i64>>();
        if let (Some(t), Some(r)) = (total, rest)
            && r > 0
        {
            out[pos] = Dim::Known(t / r);
        } else if let Some(input) = input {
            // Symbolic dims cancel: [seq, batch, 64] -> [0, 0, -1] or [-1, 64] with the same
            // symbolic factors on both sides.
            out[pos] = cancel_symbolic(input, &out, pos).unwrap_or(Dim::Unknown);
        }
    }
    out
}

/// The dim at `pos` of `out` such that both shapes hold the same number of elements, when
/// the symbolic factors on both sides match up.
fn cancel_symbolic(input: &[Dim], out: &[Dim], pos: usize) -> Option<Dim> {
    let mut syms: Vec<&str> = Vec::new();
    let mut known_in = 1i64;
    for d in input {
        match d {
            Dim::Known(v) => known_in *= v,
            Dim::Sym(s) => syms.push(s),
            Dim::Unknown => return None,
        }
    }
    let mut known_out = 1i64;
    for (i, d) in out.iter().enumerate() {
        if i == pos {
            continue;
        }
        match d {
            Dim::Known(v) => known_out *= v,
            Dim::Sym(s) => {
                let at = syms.iter().position(|x| x == s)?;
                syms.remove(at);
            }
            Dim::Unknown => return None,
        }
    }
    if known_out == 0 || known_in % known_out != 0 {
        return None;
    }
    match (syms.as_slice(), known_in / known_out) {
        ([], v) => Some(Dim::Known(v)),
        ([s], 1) => Some(Dim::Sym(s.to_string())),
        _ => None,
    }
}

/// Values of an integer initializer small enough to be a shape operand.
fn small_int_values(t: &Tensor) -> Option<Vec<Dim>> {
    if t.dims().len() > 1 || t.numel() > 64 {
        return None;
    }
    Some(t.to_i64_vec().ok()?.into_iter().map(Dim::Known).collect())
}

/// Known (possibly symbolic) values of a node's first output, for the ops that move shape
/// vectors around.
fn propagate_values(
    node: &Node,
    inputs: &[Option<&ValueType>],
    known: &dyn Fn(usize) -> Option<Vec<Dim>>,
) -> Option<Vec<Dim>> {
    if !node.domain().is_empty() {
        return None;
    }
    let int_out = |v: Vec<Dim>| Some(v);
    match node.op_type() {
        "Constant" => small_int_values(&node.attr_tensor("value").ok()??)
            .or_else(|| {
                let v = node.attr::<Vec<i64>>("value_ints").ok()??;
                Some(v.into_iter().map(Dim::Known).collect())
            })
            .or_else(|| {
                let v = node.attr::<i64>("value_int").ok()??;
                Some(vec![Dim::Known(v)])
            }),
        "Shape" => {
            let s = inputs.first().copied().flatten()?.shape.clone()?;
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(node.attr::<i64>("start").ok()?.unwrap_or(0));
            let end = clamp(node.attr::<i64>("end").ok()?.unwrap_or(r));
            int_out(s.get(start..end.max(start))?.to_vec())
        }
        "Identity" | "Cast" | "Squeeze" | "Unsqueeze" | "Reshape" | "Flatten" => {
            let elem = inputs.first().copied().flatten()?.dtype();
            if !matches!(elem, DataType::Int64 | DataType::Int32) {
                return None;
            }
            known(0)
        }
        "Concat" => {
            let mut out = Vec::new();
            for k in 0..node.inputs().len() {
                out.extend(known(k)?);
            }
            int_out(out)
        }
        "Gather" => {
            let data = known(0)?;
            let idx = known(1)?;
            idx.iter()
                .map(|i| {
                    let i = i.known()?;
                    let i = if i < 0 { i + data.len() as i64 } else { i };
                    data.get(usize::try_from(i).ok()?).cloned()
                })
                .collect()
        }
        "Slice" => {
            let data = known(0)?;
            let n = data.len() as i64;
            let first = |k: usize| -> Option<i64> { known(k)?.first()?.known() };
            let (start, end) = match node.attr::<Vec<i64>>("starts").ok()? {
                Some(s) => (*s.first()?, *node.attr::<Vec<i64>>("ends").ok()??.first()?),
                None => (first(1)?, first(2)?),
            };
            let step = if node.input(4).is_some() {
                first(4)?
            } else {
                1
            };
            if step != 1 {
                return None;
            }
            let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let (s, e) = (clamp(start), clamp(end));
            int_out(data.get(s..e.max(s))?.to_vec())
        }
        "Mul" | "Add" | "Sub" | "Div" => {
            let (a, b) = (known(0)?, known(1)?);
            let len = a.len().max(b.len());
            if !(a.len() == len || a.len() == 1) || !(b.len() == len || b.len() == 1) {
                return None;
            }
            let at = |v: &Vec<Dim>, i: usize| v[if v.len() == 1 { 0 } else { i }].clone();
            (0..len)
                .map(|i| {
                    let (x, y) = (at(&a, i), at(&b, i));
                    Some(match (node.op_type(), &x, &y) {
                        (_, Dim::Known(p), Dim::Known(q)) => Dim::Known(match node.op_type() {
                            "Mul" => p.checked_mul(*q)?,
                            "Add" => p.checked_add(*q)?,
                            "Sub" => p.checked_sub(*q)?,
                            _ => p.checked_div(*q)?,
                        }),
                        ("Mul" | "Div", d, Dim::Known(1)) | ("Mul", Dim::Known(1), d) => d.clone(),
                        ("Add" | "Sub", d, Dim::Known(0)) | ("Add", Dim::Known(0), d) => d.clone(),
                        _ => Dim::Unknown,
                    })
                })
                .collect()
        }
        _ => None,
    }
}

fn rnn_shapes(
    node: &Node,
    inputs: &[Option<&ValueType>],
    x: Option<&ValueType>,
    n_out: usize,
) -> Vec<ValueType> {
    let hidden = node
        .attr::<i64>("hidden_size")
        .ok()
        .flatten()
        .map_or(Dim::Unknown, Dim::Known);
    let dirs = match node.attr::<String>("direction").ok().flatten().as_deref() {
        Some("bidirectional") => 2,
        _ => 1,
    };
    let layout = node.attr::<i64>("layout").ok().flatten().unwrap_or(0);
    let xs = x.and_then(|t| t.shape.clone());
    let (seq, batch) = match (&xs, layout) {
        (Some(s), 0) if s.len() == 3 => (s[0].clone(), s[1].clone()),
        (Some(s), 1) if s.len() == 3 => (s[1].clone(), s[0].clone()),
        _ => (Dim::Unknown, Dim::Unknown),
    };
    let elem = x.map_or(0, |t| t.elem);
    let _ = inputs;
    let d = Dim::Known(dirs);
    let y = if layout == 0 {
        vec![seq, d.clone(), batch.clone(), hidden.clone()]
    } else {
        vec![batch.clone(), seq, d.clone(), hidden.clone()]
    };
    let state = if layout == 0 {
        vec![d, batch, hidden]
    } else {
        vec![batch, d, hidden]
    };
    let mut v = vec![
        ValueType {
            elem,
            shape: Some(y),
        },
        ValueType {
            elem,
            shape: Some(state.clone()),
        },
        ValueType {
            elem,
            shape: Some(state),
        },
    ];
    v.truncate(n_out);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&d| Dim::Known(d)).collect()
    }

    #[test]
    fn broadcasts_like_numpy() {
        let a = vec![Dim::Sym("seq".into()), Dim::Known(1), Dim::Known(64)];
        let b = k(&[4, 1]);
        assert_eq!(
            broadcast(&[Some(&a), Some(&b)]).unwrap(),
            vec![Dim::Sym("seq".into()), Dim::Known(4), Dim::Known(64)]
        );
    }

    #[test]
    fn matmul_keeps_symbolic_batch_dims() {
        let a = vec![
            Dim::Sym("seq".into()),
            Dim::Sym("batch".into()),
            Dim::Known(64),
        ];
        let b = k(&[64, 1000]);
        assert_eq!(
            matmul_shape(Some(&a), Some(&b)).unwrap(),
            vec![
                Dim::Sym("seq".into()),
                Dim::Sym("batch".into()),
                Dim::Known(1000)
            ]
        );
        assert_eq!(
            matmul_shape(Some(&k(&[3])), Some(&k(&[3, 5]))).unwrap(),
            k(&[5])
        );
    }

    #[test]
    fn symbolic_dims_cancel_in_reshape() {
        let x = vec![Dim::Known(35), Dim::Sym("batch".into()), Dim::Known(64)];
        let target = vec![Dim::Known(-1), Dim::Sym("batch".into()), Dim::Known(64)];
        assert_eq!(reshape_shape(Some(&x), &target, false)[0], Dim::Known(35));
    }

    #[test]
    fn reshape_resolves_zero_and_minus_one() {
        let x = k(&[2, 3, 4]);
        assert_eq!(reshape_shape(Some(&x), &k(&[0, -1]), false), k(&[2, 12]));
        let sym = vec![Dim::Sym("b".into()), Dim::Known(3), Dim::Known(4)];
        assert_eq!(
            reshape_shape(Some(&sym), &k(&[0, -1]), false),
            vec![Dim::Sym("b".into()), Dim::Known(12)]
        );
        assert_eq!(
            reshape_shape(Some(&sym), &k(&[-1, 4]), false),
            vec![Dim::Unknown, Dim::Known(4)]
        );
    }
}
