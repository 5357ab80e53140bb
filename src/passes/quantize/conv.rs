//! Conv with a constant weight `W [M, C/group, k1, ..., kn]` (ONNX Conv, opsets 1/11), taken
//! only when the user asks for it (`--ops ...,Conv`): onnxruntime has no fast ConvInteger on
//! CPU, so on most models this makes inference slower (REFERENCE.md §1).
//!
//! ```text
//! X ─DynamicQuantizeLinear─▶ ConvInteger(X_q, W_q, X_zp, W_zp) ─Cast(float)─▶
//!     Mul(·, Mul(X_scale, W_scale)) [─Add(·, bias as [1, M, 1, ..])] ─▶ original output
//! ```
//!
//! Per channel, the scales are shaped `[1, M, 1, ..]` to broadcast over the output. The
//! weight zero point is always a scalar: ONNX allows one per output channel, but onnxruntime's
//! ConvInteger rejects that, so per-channel asymmetric weights (whose zero points differ) fall
//! back to one scale for the tensor.

use super::int_product::{dynamic_quantize, rescale};
use super::matmul::check_opset;
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::weights::{QValues, quantize_weight};
use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

const COPIED_ATTRS: [&str; 6] = [
    "auto_pad",
    "dilations",
    "group",
    "kernel_shape",
    "pads",
    "strides",
];

pub fn rewrite_conv(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    check_opset(ctx)?;
    let (Some(x), Some(wn)) = (node.input(0), node.input(1)) else {
        return Err(Skip("Conv needs X and W".into()));
    };
    let Some(y) = node.outputs().first().filter(|o| !o.is_empty()) else {
        return Err(Skip("Conv has no output".into()));
    };
    let w = (ctx.constants)(wn).ok_or_else(|| {
        Skip(format!(
            "weight '{wn}' is computed by nodes the rewrite cannot fold yet"
        ))
    })?;
    if w.data_type().ok() != Some(DataType::Float) {
        return Err(Skip(format!("weight '{wn}' is not float32")));
    }
    let rank = w.dims().len();
    if rank < 3 {
        return Err(Skip(format!(
            "weight '{wn}' has rank {rank}, expected 3 or more"
        )));
    }
    let m = w.shape()[0];
    let view = w.view::<f32>().map_err(|e| Skip(e.to_string()))?;
    let mut q = quantize_weight(view.view(), ctx.per_channel.then_some(0), &ctx.weights);
    let mut per_channel = ctx.per_channel;
    if q.zero_points.windows(2).any(|p| p[0] != p[1]) {
        q = quantize_weight(view.view(), None, &ctx.weights);
        per_channel = false;
    }
    let bias = match node.input(2) {
        None => None,
        Some(b) => {
            let t = (ctx.constants)(b).ok_or_else(|| {
                Skip(format!(
                    "bias '{b}' is computed by nodes the rewrite cannot fold yet"
                ))
            })?;
            let v = t.as_slice::<f32>().map_err(|e| Skip(e.to_string()))?;
            if v.len() != m {
                return Err(Skip(format!(
                    "bias '{b}' has {} values, expected {m}",
                    v.len()
                )));
            }
            Some((b.to_string(), v.into_owned()))
        }
    };

    let mut bshape = vec![1usize; rank];
    bshape[1] = m;
    let names = &mut *ctx.names;
    let stem = node.name().to_string();
    let mut out = Replacement::default();
    let w_q = names.fresh(&format!("{wn}_quantized"));
    let w_scale = names.fresh(&format!("{wn}_scale"));
    let w_zp = names.fresh(&format!("{wn}_zero_point"));
    out.initializers.push(q.values_tensor(&w_q));
    out.initializers.push(if per_channel {
        q.scale_tensor(&w_scale, &bshape)
    } else {
        q.scale_tensor(&w_scale, &[])
    });
    out.initializers.push(match &q.values {
        QValues::I8(_) => Tensor::from_vec(&w_zp, &[], vec![q.zero_points[0] as i8]),
        QValues::U8(_) => Tensor::from_vec(&w_zp, &[], vec![q.zero_points[0] as u8]),
    });

    let xq = dynamic_quantize(&mut out, names, &stem, x);
    let int_out = names.fresh(&format!("{y}_int32"));
    let mut ci = Node::new(
        names.fresh(&format!("{stem}_ConvInteger")),
        "ConvInteger",
        "",
        vec![xq.q, w_q, xq.zero_point, w_zp],
        vec![int_out.clone()],
    );
    for a in COPIED_ATTRS {
        if let Some(p) = node.attribute(a) {
            ci = ci.with_attr(p.clone());
        }
    }
    out.nodes.push(ci);
    let (cast_out, scale) = rescale(&mut out, names, &stem, y, int_out, xq.scale, w_scale);
    match bias {
        None => out.nodes.push(Node::new(
            stem,
            "Mul",
            "",
            vec![cast_out, scale],
            vec![y.clone()],
        )),
        Some((b, v)) => {
            let prod = names.fresh(&format!("{y}_unbiased"));
            out.nodes.push(Node::new(
                names.fresh(&format!("{stem}_output_mul")),
                "Mul",
                "",
                vec![cast_out, scale],
                vec![prod.clone()],
            ));
            let bn = names.fresh(&format!("{b}_reshaped"));
            out.initializers.push(Tensor::from_vec(&bn, &bshape, v));
            out.nodes
                .push(Node::new(stem, "Add", "", vec![prod, bn], vec![y.clone()]));
        }
    }
    out.note = format!(
        "ConvInteger, {} {}",
        if per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        if ctx.weights.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        }
    );
    Ok(out)
}
