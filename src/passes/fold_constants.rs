//! Constant folding: nodes whose inputs are all constant are evaluated once, with the
//! runtime's own op implementations, and replaced by initializers.
//!
//! This is what lets the rewrite quantize weights that exporters compute instead of storing:
//! torch's dynamo exporter feeds each LSTM's W/R/B through Slice/Concat/Unsqueeze chains over
//! the flat parameters, with slice bounds derived from `Shape(h0)`. `Shape` of a value whose
//! requested dims are statically known folds too, so those chains collapse to one initializer
//! per weight.
//!
//! What is not folded: initializers that are also graph inputs (a caller may override them),
//! nodes with subgraphs, random ops, ops outside the default domain, and nodes whose outputs
//! would be much larger than their inputs (folding `Expand` or `ConstantOfShape` into a big
//! initializer would grow the file). Initializers nothing reads any more are dropped.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::ir::graph::node_reads;
use crate::ir::shape::{Dim, ValueType, infer_types, infer_types_and_values};
use crate::ir::{Graph, Node, Tensor};
use crate::model::Model;
use crate::onnx::tensor_proto::DataType;
use crate::passes::quantize::policy::static_shape_slice;
use crate::runtime::Value;
use crate::runtime::ops::{BuildCtx, default_registry};

/// Output may exceed input by this many bytes (small shape vectors from nothing, scalars).
const GROWTH_ALLOWANCE: usize = 4096;

const NEVER_FOLD: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

/// Folds constants in the model's graph and subgraphs. Returns how many nodes were folded.
pub fn fold_constants(model: &mut Model) -> Result<usize> {
    let opset = model.opset("").unwrap_or(1);
    fold_graph(&mut model.graph, opset, &HashMap::new())
}

fn fold_graph(
    g: &mut Graph,
    opset: i64,
    outer_types: &HashMap<String, ValueType>,
) -> Result<usize> {
    let mut folded = 0;
    if g.nodes.iter().any(|n| !n.subgraphs.is_empty()) {
        let types = infer_types(g, outer_types);
        for n in &mut g.nodes {
            for s in &mut n.subgraphs {
                folded += fold_graph(&mut s.graph, opset, &types)?;
            }
        }
    }
    Ok(folded + fold_graph_shallow(g, opset, outer_types)?)
}

/// Folds constants in `g` itself, not in its subgraphs (the fusion pass manager walks those).
/// Returns how many nodes were folded.
pub fn fold_graph_shallow(
    g: &mut Graph,
    opset: i64,
    outer_types: &HashMap<String, ValueType>,
) -> Result<usize> {
    let (types, known) = infer_types_and_values(g, outer_types);
    let defined_before: HashSet<String> = g.defined_names().into_iter().map(String::from).collect();
    let mut folded = 0;
    let overridable: HashSet<String> = g
        .proto
        .input
        .iter()
        .map(|v| v.name().to_string())
        .filter(|n| g.initializers.contains_key(n))
        .collect();
    // Known shape values may derive from an overridable initializer; trust them only when the
    // graph has none.
    let known = if overridable.is_empty() {
        known
    } else {
        HashMap::new()
    };
    let mut values: HashMap<String, Value> = HashMap::new();
    let mut keep = Vec::with_capacity(g.nodes.len());
    let order = g.topo_order()?;
    let mut nodes: Vec<Option<Node>> = std::mem::take(&mut g.nodes).into_iter().map(Some).collect();
    let mut new_inits: Vec<Tensor> = Vec::new();
    for i in order {
        let node = nodes[i].take().expect("each node once");
        let outputs = known_shape_value(&node, &types, &known)
            .or_else(|| try_fold(&node, g, &overridable, &types, &mut values, opset));
        match outputs {
            Some(outputs) => {
                for (name, v) in node.outputs().iter().zip(outputs) {
                    if !name.is_empty() {
                        new_inits.push(v.to_tensor(name));
                        values.insert(name.clone(), v);
                    }
                }
                folded += 1;
            }
            None => keep.push(node),
        }
    }
    g.nodes = keep;
    for t in new_inits {
        g.add_initializer(t);
    }
    if folded > 0 {
        drop_unread_initializers(g);
        // value_info of folded values nothing reads any more would describe nothing.
        let defined: HashSet<String> = g.defined_names().into_iter().map(String::from).collect();
        g.proto
            .value_info
            .retain(|v| !defined_before.contains(v.name()) || defined.contains(v.name()));
    }
    Ok(folded)
}

/// Ops that only move shape values around (or do integer arithmetic on them): when shape
/// inference knows every value of their output, it is a constant even if an input is not
/// (`Gather(Shape(x), 1)` with x's dim 1 known and its dim 0 symbolic).
const SHAPE_VALUE_OPS: &[&str] = &[
    "Shape",
    "Gather",
    "Concat",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Identity",
    "Cast",
    "Flatten",
    "Mul",
    "Add",
    "Sub",
];

/// The single output of a shape-arithmetic node whose value shape inference knows fully.
fn known_shape_value(
    node: &Node,
    types: &HashMap<String, ValueType>,
    known: &HashMap<String, Vec<Dim>>,
) -> Option<Vec<Value>> {
    if !node.domain().is_empty()
        || !SHAPE_VALUE_OPS.contains(&node.op_type())
        || node.outputs().len() != 1
    {
        return None;
    }
    let out = node.outputs().first()?;
    let vals: Vec<i64> = known
        .get(out)?
        .iter()
        .map(Dim::known)
        .collect::<Option<_>>()?;
    let t = types.get(out)?;
    let shape: Vec<usize> = match t.shape.as_deref()? {
        [] if vals.len() == 1 => vec![],
        [d] if d.known().is_none_or(|n| n == vals.len() as i64) => vec![vals.len()],
        _ => return None,
    };
    let dims = ndarray::IxDyn(&shape);
    Some(vec![match t.dtype() {
        DataType::Int64 => Value::I64(ndarray::ArrayD::from_shape_vec(dims, vals).ok()?),
        DataType::Int32 => Value::I32(
            ndarray::ArrayD::from_shape_vec(
                dims,
                vals.iter()
                    .map(|&v| i32::try_from(v).ok())
                    .collect::<Option<_>>()?,
            )
            .ok()?,
        ),
        _ => return None,
    }])
}

/// The outputs of `node` when it can and should be folded.
fn try_fold(
    node: &Node,
    g: &Graph,
    overridable: &HashSet<String>,
    types: &HashMap<String, ValueType>,
    values: &mut HashMap<String, Value>,
    opset: i64,
) -> Option<Vec<Value>> {
    if !node.domain().is_empty()
        || !node.subgraphs.is_empty()
        || NEVER_FOLD.contains(&node.op_type())
    {
        return None;
    }
    if node.op_type() == "Shape" {
        let dims = static_shape_slice(node, types)?;
        let n = dims.len();
        return Some(vec![Value::I64(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), dims).ok()?,
        )]);
    }
    // Every input must be a constant we can materialize; check before copying any data.
    let is_const = |name: &String| {
        name.is_empty()
            || (!overridable.contains(name)
                && (values.contains_key(name) || g.initializer(name).is_some()))
    };
    if !node.inputs().iter().all(is_const) {
        return None;
    }
    let mut inputs: Vec<Option<Value>> = Vec::with_capacity(node.inputs().len());
    for name in node.inputs() {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        if overridable.contains(name) {
            return None;
        }
        let v = match values.get(name) {
            Some(v) => v.clone(),
            None => {
                let t = g.initializer(name)?;
                let v = Value::from_tensor(t).ok()?;
                values.insert(name.clone(), v.clone());
                v
            }
        };
        inputs.push(Some(v));
    }
    if node.op_type() != "Constant" && inputs.iter().all(Option::is_none) {
        return None;
    }
    let builder = default_registry().get("", node.op_type())?;
    let refs: Vec<Option<&Value>> = inputs.iter().map(Option::as_ref).collect();
    let ctx = BuildCtx {
        opset,
        const_inputs: refs.clone(),
    };
    let op = builder(node, &ctx).ok()?;
    let outputs = op.run(&refs).ok()?;
    if outputs.len() < node.outputs().iter().filter(|o| !o.is_empty()).count() {
        return None;
    }
    let bytes_in: usize = refs.iter().flatten().map(|v| byte_size(v)).sum();
    let bytes_out: usize = outputs.iter().map(byte_size).sum();
    if bytes_out > bytes_in + GROWTH_ALLOWANCE {
        return None;
    }
    Some(outputs)
}

fn byte_size(v: &Value) -> usize {
    v.len() * crate::ir::tensor::elem_size(v.dtype()).unwrap_or(1)
}

/// Removes initializers of `g` that no node (in any nested scope) reads and that are not graph
/// outputs or inputs.
fn drop_unread_initializers(g: &mut Graph) {
    let mut read: HashSet<String> = g.nodes.iter().flat_map(node_reads).collect();
    read.extend(g.proto.output.iter().map(|o| o.name().to_string()));
    read.extend(g.proto.input.iter().map(|i| i.name().to_string()));
    g.initializers.retain(|name, _| read.contains(name));
}
