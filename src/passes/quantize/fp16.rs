//! fp16 models. DynamicQuantizeLinear, MatMulInteger's float companions and the com.microsoft
//! quantized ops are float32-only, so emitting them on float16 values is invalid ONNX (the
//! incumbent does exactly that). Instead a float16 node is rewritten through a float32 view
//! of itself: run-time float16 inputs get a Cast to float32 in front, float16 constants are
//! converted to float32 before quantization (so the weight is quantized from its exact
//! values), the rewriter of the node's family runs on the view, and every output is cast
//! back to float16 under its original name. The final Cast carries the original node's name.

use std::collections::HashMap;

use half::f16;

use super::rewrite::{NodeCtx, RewriteResult};
use crate::ir::attrs::attr_int;
use crate::ir::shape::ValueType;
use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

pub type Rewriter = fn(&Node, &mut NodeCtx) -> RewriteResult;

fn dtype_of(ctx: &NodeCtx, name: &str) -> DataType {
    match (ctx.constants)(name) {
        Some(t) => t.data_type().unwrap_or(DataType::Undefined),
        None => ctx
            .types
            .get(name)
            .map_or(DataType::Undefined, ValueType::dtype),
    }
}

/// Whether any input of the node is float16.
pub fn is_fp16(node: &Node, ctx: &NodeCtx) -> bool {
    node.inputs()
        .iter()
        .filter(|i| !i.is_empty())
        .any(|i| dtype_of(ctx, i) == DataType::Float16)
}

fn lookup<'x, F: Fn(&str) -> Option<&'x Tensor>>(
    f: &'x F,
) -> &'x dyn Fn(&str) -> Option<&'x Tensor> {
    f
}

/// Rewrites a float16 node with `inner` on its float32 view (see the module doc).
pub fn rewrite_via_f32(node: &Node, ctx: &mut NodeCtx, inner: Rewriter) -> RewriteResult {
    let mut converted: HashMap<String, Tensor> = HashMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut types = ctx.types.clone();
    let mut pre = Vec::new();
    let mut view = node.clone();
    view.subgraphs.clear();
    for (i, inp) in node.inputs().iter().enumerate() {
        if inp.is_empty() || dtype_of(ctx, inp) != DataType::Float16 {
            continue;
        }
        if let Some(new) = renamed.get(inp) {
            view.proto.input[i] = new.clone();
            continue;
        }
        let new = ctx.names.fresh(&format!("{inp}_f32"));
        let shape = types.get(inp).and_then(|t| t.shape.clone());
        if let Some(t) = (ctx.constants)(inp) {
            let a = t
                .view::<f16>()
                .map_err(|e| super::rewrite::Skip(e.to_string()))?;
            let f = a.mapv(f16::to_f32);
            converted.insert(new.clone(), Tensor::from_array(&new, &f.view()));
        } else {
            pre.push(
                Node::new(
                    ctx.names.fresh(&format!("{}_cast_{i}_f32", node.name())),
                    "Cast",
                    "",
                    vec![inp.clone()],
                    vec![new.clone()],
                )
                .with_attr(attr_int("to", DataType::Float as i64)),
            );
        }
        types.insert(new.clone(), ValueType::new(DataType::Float, shape));
        renamed.insert(inp.clone(), new.clone());
        view.proto.input[i] = new;
    }
    let mut post = Vec::new();
    for (j, out) in node.outputs().iter().enumerate() {
        if out.is_empty() {
            continue;
        }
        let new = ctx.names.fresh(&format!("{out}_f32"));
        let shape = types.get(out).and_then(|t| t.shape.clone());
        types.insert(new.clone(), ValueType::new(DataType::Float, shape));
        let name = if post.is_empty() {
            node.name().to_string()
        } else {
            ctx.names.fresh(&format!("{}_cast_out_{j}", node.name()))
        };
        post.push(
            Node::new(name, "Cast", "", vec![new.clone()], vec![out.clone()])
                .with_attr(attr_int("to", DataType::Float16 as i64)),
        );
        view.proto.output[j] = new;
    }
    let inner_name = ctx.names.fresh(&format!("{}_f32", node.name()));
    view.proto.name = Some(inner_name);

    let outer = ctx.constants;
    let chained = |n: &str| converted.get(n).or_else(|| outer(n));
    let mut inner_ctx = NodeCtx {
        constants: lookup(&chained),
        types: &types,
        names: &mut *ctx.names,
        weights: ctx.weights,
        per_channel: ctx.per_channel,
        lstm_mode: ctx.lstm_mode,
        activations: ctx.activations,
        opset: ctx.opset,
        defer_values: ctx.defer_values,
    };
    let mut rep = inner(&view, &mut inner_ctx)?;
    // Converted constants the new nodes still read (a reused bias) become initializers.
    let mut used: Vec<String> = Vec::new();
    for n in &rep.nodes {
        for i in n.inputs() {
            if converted.contains_key(i) && !used.contains(i) {
                used.push(i.clone());
            }
        }
    }
    for u in used {
        if let Some(t) = converted.remove(&u) {
            rep.initializers.push(t);
        }
    }
    pre.append(&mut rep.nodes);
    pre.append(&mut post);
    rep.nodes = pre;
    rep.note = format!(
        "{} (fp16 model: float32 inside, cast at the boundaries)",
        rep.note
    );
    Ok(rep)
}
