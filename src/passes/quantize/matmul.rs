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
use super::per_token;
use super::rewrite::ActivationQuant;
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

/// Builds the DynamicQuantizeLinear + MatMulInteger + Cast + Mul + Mul (+ Add) chain, or with
/// per-token activations the chain of [`super::per_token`].
pub(crate) fn int8_linear(l: Linear<'_>, ctx: &mut NodeCtx, out: &mut Replacement) {
    let per_token =
        ctx.activations == ActivationQuant::PerToken && ctx.opset >= per_token::MIN_OPSET;
    let axis = ctx.per_channel.then_some(1);
    let (k, n_cols) = if l.weight_transposed {
        (l.weight.shape()[1], l.weight.shape()[0])
    } else {
        (l.weight.shape()[0], l.weight.shape()[1])
    };
    // The per-token epilogue needs the weight's column sums now, so its values are not
    // deferred to the save.
    let defer = ctx.defer_values && !per_token;
    let mut q = match (l.weight_transposed, defer) {
        (true, defer) => {
            quantize_weight_transposed(&l.weight, ctx.per_channel, &ctx.weights, defer)
        }
        (false, true) => quantize_weight_deferred(l.weight, axis, &ctx.weights),
        (false, false) => quantize_weight(l.weight, axis, &ctx.weights),
    };
    let names = &mut *ctx.names;
    let shape: Vec<usize> = if axis.is_some() { vec![n_cols] } else { vec![] };
    let w_q = names.fresh(&format!("{}_quantized", l.base));
    let w_scale = names.fresh(&format!("{}_scale", l.base));
    let w_zp = names.fresh(&format!("{}_zero_point", l.base));
    let mut scale_t = q.scale_tensor(&w_scale, &shape);
    if l.alpha != 1.0 {
        let scales: Vec<f32> = q.scales.iter().map(|s| s * l.alpha).collect();
        scale_t = Tensor::from_vec(&w_scale, &shape, scales);
    }
    let col_sums = per_token.then(|| {
        let n = names.fresh(&format!("{}_column_sums", l.base));
        let sums = per_token::column_sums(&q.values, &q.zero_points);
        Tensor::from_vec(&n, &[n_cols], sums)
    });
    out.initializers.push(q.take_values_tensor(&w_q));
    out.initializers.push(scale_t);
    out.initializers.push(q.zero_point_tensor(&w_zp, &shape));

    let bias_name = match (l.bias, l.bias_name) {
        (_, Some(n)) => Some(n),
        (Some(b), None) => {
            let n = names.fresh(&format!("{}_bias", l.base));
            out.initializers.push(Tensor::from_array(&n, &b.view()));
            Some(n)
        }
        (None, None) => None,
    };
    let stem = &l.node_name;
    let int_out = names.fresh(&format!("{}_int32", l.output));
    let (product, out_shape) = if let Some(sums) = col_sums {
        let rank = ctx
            .types
            .get(&l.a)
            .and_then(|t| t.shape.as_ref())
            .map(Vec::len);
        let rows = per_token::quantize_rows(out, names, stem, &l.a, k, rank, ctx.opset);
        out.nodes.push(Node::new(
            names.fresh(&format!("{stem}_MatMulInteger")),
            "MatMulInteger",
            "",
            vec![rows.q.clone(), w_q, String::new(), w_zp],
            vec![int_out.clone()],
        ));
        let sums_name = sums.name().to_string();
        out.initializers.push(sums);
        let is_last = bias_name.is_none() && rows.lead_dims.is_none();
        let (y2, shape) = per_token::rescale_rows(
            out,
            names,
            stem,
            &rows,
            per_token::Epilogue {
                int_out,
                col_sums: sums_name,
                w_scale,
                n_cols,
                writes: is_last.then(|| (l.node_name.clone(), l.output.clone())),
            },
        );
        (Product::Value(y2), shape)
    } else {
        let a = dynamic_quantize(out, names, stem, &l.a);
        out.nodes.push(Node::new(
            names.fresh(&format!("{stem}_MatMulInteger")),
            "MatMulInteger",
            "",
            vec![a.q, w_q, a.zero_point, w_zp],
            vec![int_out.clone()],
        ));
        let (cast_out, scale) = rescale(out, names, stem, &l.output, int_out, a.scale, w_scale);
        (Product::Scaled(cast_out, scale), None)
    };
    // The chain's last node writes the original output under the original node's name.
    let mut last = |op: &str, inputs: Vec<String>, is_last: bool, hint: &str| -> String {
        let (name, y) = if is_last {
            (l.node_name.clone(), l.output.clone())
        } else {
            (
                names.fresh(&format!("{stem}_{hint}")),
                names.fresh(&format!("{}_{hint}", l.output)),
            )
        };
        out.nodes
            .push(Node::new(name, op, "", inputs, vec![y.clone()]));
        y
    };
    let reshape_last = out_shape.is_some();
    let product = match product {
        Product::Scaled(cast_out, scale) => last(
            "Mul",
            vec![cast_out, scale],
            bias_name.is_none() && !reshape_last,
            "unbiased",
        ),
        Product::Value(v) => v,
    };
    let biased = match bias_name {
        Some(b) => last("Add", vec![product, b], !reshape_last, "biased"),
        None => product,
    };
    if let Some(shape) = out_shape {
        last("Reshape", vec![biased, shape], true, "reshaped");
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
    let act = if per_token {
        ", per-token activations"
    } else {
        ""
    };
    out.note = format!("MatMulInteger, {gran} {sym} {kind}{rr}{act}");
}

/// The integer product turned back into float: either still to be multiplied by its scale
/// (per-tensor: the Mul onnxruntime's fusion matches is emitted with the output), or done.
enum Product {
    Scaled(String, String),
    Value(String),
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
