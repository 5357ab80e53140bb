//! Weight-only form of a recurrent op: `W` and `R` stored as int8/uint8, `DequantizeLinear`
//! (per-tensor, or per-axis from opset 13) in front of the unchanged float op. Portable and
//! smaller, no speed-up.

use crate::ir::attrs::attr_int;
use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

use super::recurrent_build::Builder;
use super::recurrent_common::{QuantRecurrent, RecurrentAttrs, type_name};
use super::rewrite::{NodeCtx, Replacement, RewriteResult};

/// Weight-only: `W` and `R` as int8/uint8 initializers, `DequantizeLinear` in front of the
/// float op (which keeps every attribute, layout included).
pub fn rewrite_weight_only(node: &Node, ctx: &mut NodeCtx, a: &RecurrentAttrs) -> RewriteResult {
    let prefix = node.display_name().to_string();
    let mut b = Builder::new(ctx.names, ctx.opset, &prefix);
    let mut new = node.clone();
    new.proto.name = Some(b.names.fresh(&format!("{prefix}_weight_only")));
    for (idx, what, w) in [(1usize, "W", a.w3()), (2, "R", a.r3())] {
        let q = QuantRecurrent::new(w, ctx.per_channel, &ctx.weights);
        let deq = dequantize(&mut b, &q, what);
        let deq = if a.fp16 {
            b.cast(&deq, DataType::Float16)
        } else {
            deq
        };
        new.proto.input[idx] = deq;
    }
    let note = format!(
        "weight-only {} {} (DequantizeLinear + float {})",
        if ctx.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        type_name(&ctx.weights),
        node.op_type()
    );
    b.nodes.push(new);
    Ok(Replacement {
        nodes: b.nodes,
        initializers: b.inits,
        opsets: vec![],
        note,
    })
}

/// Float `[D, rows, cols]` from a quantized weight. DequantizeLinear needs opset 10, per-axis
/// opset 13; below that the dequantization is spelled out with Cast/Sub/Mul over broadcast
/// scale and zero point tensors.
fn dequantize(b: &mut Builder, q: &QuantRecurrent, what: &str) -> String {
    let (d, rows, cols) = (q.dirs, q.rows, q.cols);
    if !q.per_channel && (b.opset >= 13 || (d == 1 && b.opset >= 10)) {
        let values = b.init_with(&format!("{what}_quantized"), |n| q.values(n));
        let (scale, zp, attrs) = if d == 1 {
            let s = b.init_f32(&format!("{what}_scale"), &[], vec![q.q.scales[0]]);
            let z = zp_init(b, q, what, &[]);
            (s, z, vec![])
        } else {
            let s = b.init_with(&format!("{what}_scale"), |n| q.scale_tensor(n));
            let z = b.init_with(&format!("{what}_zero_point"), |n| q.zero_point_tensor(n));
            (s, z, vec![attr_int("axis", 0)])
        };
        return b.op1("DequantizeLinear", &[&values, &scale, &zp], attrs);
    }
    if q.per_channel && b.opset >= 13 {
        // Per row: values viewed as [D*rows, cols], axis 0, then reshaped back.
        let flat = b.init_with(&format!("{what}_quantized"), |n| {
            let mut t = q.values(n);
            t.proto.dims = vec![(d * rows) as i64, cols as i64];
            t
        });
        let s = b.init_with(&format!("{what}_scale"), |n| {
            let mut t = q.scale_tensor(n);
            t.proto.dims = vec![(d * rows) as i64];
            t
        });
        let z = b.init_with(&format!("{what}_zero_point"), |n| {
            let mut t = q.zero_point_tensor(n);
            t.proto.dims = vec![(d * rows) as i64];
            t
        });
        let deq = b.op1(
            "DequantizeLinear",
            &[&flat, &s, &z],
            vec![attr_int("axis", 0)],
        );
        let shape = b.init_i64("shape", &[3], vec![d as i64, rows as i64, cols as i64]);
        return b.op1("Reshape", &[&deq, &shape], vec![]);
    }
    // Spelled out: (float(q) - zp) * scale, with scale/zp shaped [D, 1, 1] or [D, rows, 1].
    let values = b.init_with(&format!("{what}_quantized"), |n| q.values(n));
    let pshape = if q.per_channel {
        vec![d, rows, 1]
    } else {
        vec![d, 1, 1]
    };
    let s = b.init_f32(&format!("{what}_scale"), &pshape, q.q.scales.clone());
    let zf: Vec<f32> = q.q.zero_points.iter().map(|&z| z as f32).collect();
    let f = b.cast(&values, DataType::Float);
    let centered = if zf.iter().any(|&z| z != 0.0) {
        let z = b.init_f32(&format!("{what}_zero_point"), &pshape, zf);
        b.op1("Sub", &[&f, &z], vec![])
    } else {
        f
    };
    b.op1("Mul", &[&centered, &s], vec![])
}

fn zp_init(b: &mut Builder, q: &QuantRecurrent, what: &str, dims: &[usize]) -> String {
    let z = q.q.zero_points[0];
    if q.is_int8() {
        b.init_with(&format!("{what}_zero_point"), |n| {
            Tensor::from_vec(n, dims, vec![z as i8])
        })
    } else {
        b.init_with(&format!("{what}_zero_point"), |n| {
            Tensor::from_vec(n, dims, vec![z as u8])
        })
    }
}
