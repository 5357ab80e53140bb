//! MatMul with a constant 2-D weight `B [K, N]` (ONNX MatMul, opset 1/9/13: numpy matmul
//! semantics, so `A` may carry any number of batch and sequence dims in front of `K`).
//!
//! Rewrite (the incumbent's pattern, which onnxruntime fuses at load into
//! `DynamicQuantizeMatMul`, or `MatMulIntegerToFloat` when A's quantization is shared):
//!
//! ```text
//! A ─DynamicQuantizeLinear─▶ (A_q u8, A_scale, A_zp)
//! MatMulInteger(A_q, B_q, A_zp, B_zp) ─Cast(float)─▶ Mul(·, Mul(A_scale, B_scale)) [─Add(·, bias)]
//! ```
//!
//! `B_q` is int8 (or uint8) with one scale for the tensor or, per channel, one per output
//! column (`B_scale`, `B_zp` shaped `[N]`, which MatMulInteger's `b_zero_point` accepts). The
//! order of the scale Mul's inputs (A's scale first) and a 1-D constant bias as the Add's
//! second input are what onnxruntime's MatMulIntegerToFloat fusion matches. The last node
//! writes the original output and carries the original node's name.

use super::int_product::{dynamic_quantize, rescale};
use ndarray::ArrayD;

use super::deferred_weights::quantize_weight_deferred;
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::transposed::quantize_weight_transposed;
use super::weights::{WeightSrc, WeightType, quantize_weight};
use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

/// Opset that DynamicQuantizeLinear needs.
pub const MIN_OPSET: i64 = 11;

/// What an int8 linear layer computes: `alpha * (A @ W) + bias`.
pub(crate) struct Linear<'w> {
    /// Float input (after any transpose).
    pub a: String,
    /// `[K, N]`, or `[N, K]` when `weight_transposed`.
    pub weight: WeightSrc<'w>,
    /// The product reads the transpose of `weight` (Gemm's `transB`).
    pub weight_transposed: bool,
    /// Folded into the weight scale.
    pub alpha: f32,
    /// Added after the product (broadcast against `[.., N]`).
    pub bias: Option<ArrayD<f32>>,
    /// Reuse this existing constant as the bias instead of a new initializer.
    pub bias_name: Option<String>,
    /// Base for new names (the weight's name).
    pub base: String,
    pub output: String,
    pub node_name: String,
}

/// Builds the DynamicQuantizeLinear + MatMulInteger + Cast + Mul + Mul (+ Add) chain.
pub(crate) fn int8_linear(l: Linear<'_>, ctx: &mut NodeCtx, out: &mut Replacement) {
    let names = &mut *ctx.names;
    let axis = ctx.per_channel.then_some(1);
    let n_cols = l.weight.shape()[if l.weight_transposed { 0 } else { 1 }];
    let mut q = match (l.weight_transposed, ctx.defer_values) {
        (true, defer) => {
            quantize_weight_transposed(&l.weight, ctx.per_channel, &ctx.weights, defer)
        }
        (false, true) => quantize_weight_deferred(l.weight, axis, &ctx.weights),
        (false, false) => quantize_weight(l.weight, axis, &ctx.weights),
    };
    let shape: Vec<usize> = if axis.is_some() { vec![n_cols] } else { vec![] };
    let w_q = names.fresh(&format!("{}_quantized", l.base));
    let w_scale = names.fresh(&format!("{}_scale", l.base));
    let w_zp = names.fresh(&format!("{}_zero_point", l.base));
    let mut scale_t = q.scale_tensor(&w_scale, &shape);
    if l.alpha != 1.0 {
        let scales: Vec<f32> = q.scales.iter().map(|s| s * l.alpha).collect();
        scale_t = Tensor::from_vec(&w_scale, &shape, scales);
    }
    out.initializers.push(q.take_values_tensor(&w_q));
    out.initializers.push(scale_t);
    out.initializers.push(q.zero_point_tensor(&w_zp, &shape));

    let stem = &l.node_name;
    let a = dynamic_quantize(out, names, stem, &l.a);
    let int_out = names.fresh(&format!("{}_int32", l.output));
    out.nodes.push(Node::new(
        names.fresh(&format!("{stem}_MatMulInteger")),
        "MatMulInteger",
        "",
        vec![a.q, w_q, a.zero_point, w_zp],
        vec![int_out.clone()],
    ));
    let (cast_out, scale) = rescale(out, names, stem, &l.output, int_out, a.scale, w_scale);
    let bias_name = match (l.bias, l.bias_name) {
        (_, Some(n)) => Some(n),
        (Some(b), None) => {
            let n = names.fresh(&format!("{}_bias", l.base));
            out.initializers.push(Tensor::from_array(&n, &b.view()));
            Some(n)
        }
        (None, None) => None,
    };
    match bias_name {
        None => out.nodes.push(Node::new(
            l.node_name.clone(),
            "Mul",
            "",
            vec![cast_out, scale],
            vec![l.output],
        )),
        Some(b) => {
            let prod = names.fresh(&format!("{}_unbiased", l.output));
            out.nodes.push(Node::new(
                names.fresh(&format!("{stem}_output_mul")),
                "Mul",
                "",
                vec![cast_out, scale],
                vec![prod.clone()],
            ));
            out.nodes.push(Node::new(
                l.node_name.clone(),
                "Add",
                "",
                vec![prod, b],
                vec![l.output],
            ));
        }
    }
    let kind = match ctx.weights.weight_type {
        WeightType::Int8 => "int8",
        WeightType::Uint8 => "uint8",
    };
    let sym = if ctx.weights.symmetric {
        "symmetric"
    } else {
        "asymmetric"
    };
    let gran = if ctx.per_channel {
        "per-channel"
    } else {
        "per-tensor"
    };
    let rr = if ctx.weights.reduce_range {
        ", reduced range"
    } else {
        ""
    };
    out.note = format!("MatMulInteger, {gran} {sym} {kind}{rr}");
}

/// Reads a constant float32 weight of rank 2.
pub(crate) fn weight_2d<'c>(ctx: &NodeCtx<'c>, name: &str) -> Result<&'c Tensor, Skip> {
    let t = (ctx.constants)(name).ok_or_else(|| {
        Skip(format!(
            "weight '{name}' is computed by nodes the rewrite cannot fold yet"
        ))
    })?;
    match t.data_type() {
        Ok(DataType::Float) => {}
        Ok(dt) => {
            return Err(Skip(format!(
                "weight '{name}' is {}, not float32",
                crate::ir::tensor::dtype_name(dt as i32)
            )));
        }
        Err(e) => return Err(Skip(e.to_string())),
    }
    if t.dims().len() != 2 {
        return Err(Skip(format!(
            "weight '{name}' has rank {}, expected 2",
            t.dims().len()
        )));
    }
    Ok(t)
}

pub(crate) fn check_opset(ctx: &NodeCtx) -> Result<(), Skip> {
    if ctx.opset < MIN_OPSET {
        return Err(Skip(format!(
            "the model's opset {} is below {MIN_OPSET}, which DynamicQuantizeLinear needs",
            ctx.opset
        )));
    }
    Ok(())
}

pub fn rewrite_matmul(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    check_opset(ctx)?;
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return Err(Skip("MatMul needs two inputs".into()));
    };
    let Some(y) = node.outputs().first().filter(|o| !o.is_empty()) else {
        return Err(Skip("MatMul has no output".into()));
    };
    let w = weight_2d(ctx, b)?;
    let weight = WeightSrc::from_tensor(w).map_err(|e| Skip(e.to_string()))?;
    let mut out = Replacement::default();
    int8_linear(
        Linear {
            a: a.to_string(),
            weight,
            weight_transposed: false,
            alpha: 1.0,
            bias: None,
            bias_name: None,
            base: b.to_string(),
            output: y.clone(),
            node_name: node.name().to_string(),
        },
        ctx,
        &mut out,
    );
    Ok(out)
}
