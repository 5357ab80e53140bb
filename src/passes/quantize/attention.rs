//! com.microsoft `Attention` (onnxruntime's fused self-attention, which its transformer
//! optimizer writes for BERT-style models) with a constant weight `W [in, 3 * hidden]`
//! becomes, as onnxruntime's `quantize_dynamic` makes it:
//!
//! ```text
//! X ─DynamicQuantizeLinear─▶ QAttention(X_q, W_q, bias, X_scale, W_scale, mask_index,
//!                                       X_zp, W_zp, past)  (com.microsoft) ─▶ output, present
//! ```
//!
//! `QAttention` quantizes its input per tensor (there is no per-token form) and takes the
//! weight per tensor or per column (`W_scale`, `W_zp` shaped `[3 * hidden]`). The model
//! already needs onnxruntime (or the built-in runtime) for `Attention`, so the com.microsoft
//! op costs no portability. Only what `QAttention` can express is taken: the policy leaves
//! float an `Attention` with `qkv_hidden_sizes`, rotary or shared-buffer attributes, or an
//! `attention_bias` / `past_sequence_length` input.

use super::int_product::dynamic_quantize;
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip, attribute_outside};
use super::weights::quantize_weight;
use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

/// The attributes `QAttention` shares with `Attention`.
const SHARED_ATTRS: [&str; 4] = ["num_heads", "unidirectional", "mask_filter_value", "scale"];

/// Why `node` has no `QAttention` form, if it has none.
pub fn unsupported(node: &Node) -> Option<String> {
    if let Some(a) = attribute_outside(node, &SHARED_ATTRS) {
        return Some(format!("attribute '{a}' has no QAttention form"));
    }
    [(5, "attention_bias"), (6, "past_sequence_length")]
        .into_iter()
        .find(|(i, _)| node.input(*i).is_some())
        .map(|(_, what)| format!("input {what} has no QAttention form"))
}

pub fn rewrite_attention(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    let (Some(x), Some(wn)) = (node.input(0), node.input(1)) else {
        return Err(Skip("Attention needs input and weights".into()));
    };
    if node.outputs().first().is_none_or(|o| o.is_empty()) {
        return Err(Skip("Attention has no output".into()));
    }
    if let Some(why) = unsupported(node) {
        return Err(Skip(why));
    }
    let w = (ctx.constants)(wn).ok_or_else(|| {
        Skip(format!(
            "weight '{wn}' is computed by nodes the rewrite cannot fold yet"
        ))
    })?;
    if w.data_type().ok() != Some(DataType::Float) || w.dims().len() != 2 {
        return Err(Skip(format!("weight '{wn}' is not a float32 matrix")));
    }
    let n_cols = w.shape()[1];
    let src = super::weights::WeightSrc::from_tensor(w).map_err(|e| Skip(e.to_string()))?;
    let axis = ctx.per_channel.then_some(1);
    let mut q = quantize_weight(src, axis, &ctx.weights);

    let names = &mut *ctx.names;
    let stem = node.name().to_string();
    let mut out = Replacement::default();
    let shape: Vec<usize> = if axis.is_some() { vec![n_cols] } else { vec![] };
    let [w_q, w_scale, w_zp] = q.push_initializers(&mut out.initializers, names, wn, &shape);
    // QAttention's bias is required; Attention's is optional.
    let bias = match node.input(2) {
        Some(b) => b.to_string(),
        None => {
            let b = names.fresh(&format!("{wn}_zero_bias"));
            out.initializers
                .push(Tensor::from_vec(&b, &[n_cols], vec![0f32; n_cols]));
            b
        }
    };
    let xq = dynamic_quantize(&mut out, names, &stem, x);
    let optional = |i: usize| node.input(i).unwrap_or("").to_string();
    let mut inputs = vec![
        xq.q,
        w_q,
        bias,
        xq.scale,
        w_scale,
        optional(3),
        xq.zero_point,
        w_zp,
        optional(4),
    ];
    while inputs.last().is_some_and(|i| i.is_empty()) {
        inputs.pop();
    }
    let mut qa = Node::new(
        stem,
        "QAttention",
        "com.microsoft",
        inputs,
        node.outputs().to_vec(),
    );
    for a in &node.proto.attribute {
        qa = qa.with_attr(a.clone());
    }
    out.nodes.push(qa);
    out.opsets.push(("com.microsoft".into(), 1));
    out.note = format!(
        "QAttention (com.microsoft), per-tensor activations, {} {} weight",
        if axis.is_some() {
            "per-channel"
        } else {
            "per-tensor"
        },
        match q.values {
            super::weights::QValues::I8(_) => "int8",
            super::weights::QValues::U8(_) => "uint8",
        }
    );
    Ok(out)
}
