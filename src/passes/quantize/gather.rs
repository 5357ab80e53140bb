//! Gather over an embedding table (ONNX Gather, opsets 1/11/13, axis 0, a constant float
//! table `[V, D]`, run-time indices of any shape `I`; output `I ++ [D]`).
//!
//! The table is stored as int8 with one scale per row (symmetric by default; asymmetric with a
//! per-row zero point when asked), which is at least as accurate as the incumbent's single
//! uint8 scale for the whole table. The indices gather both the rows and their scales:
//!
//! ```text
//! Gather(table_q, ids) ─Cast(float)─[Sub(·, Unsqueeze(Gather(zero_points, ids)))]─▶
//!     Mul(·, Unsqueeze(Gather(scales, ids), -1)) ─▶ original output
//! ```
//!
//! Gather's negative-index rule applies to both gathers alike. `--reduce-range` is ignored
//! for tables: it exists for the int8 product's saturation, which a lookup never does.

use super::deferred_weights::quantize_weight_deferred;
use super::matmul::check_opset;
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::weights::{WeightQuantOptions, WeightSrc, WeightType, quantize_weight};
use crate::ir::attrs::{attr_int, attr_ints};
use crate::ir::{NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;

pub fn rewrite_gather(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    check_opset(ctx)?;
    let axis = node
        .attr_or::<i64>("axis", 0)
        .map_err(|e| Skip(e.to_string()))?;
    if axis != 0 {
        return Err(Skip(format!("gathers along axis {axis}, not 0")));
    }
    let (Some(table_name), Some(ids)) = (node.input(0), node.input(1)) else {
        return Err(Skip("Gather needs a table and indices".into()));
    };
    let Some(y) = node.outputs().first().filter(|o| !o.is_empty()) else {
        return Err(Skip("Gather has no output".into()));
    };
    let table = super::matmul::weight_2d(ctx, table_name)?;
    let view = WeightSrc::from_tensor(table).map_err(|e| Skip(e.to_string()))?;
    let opts = WeightQuantOptions {
        reduce_range: false,
        ..ctx.weights
    };
    let rows = view.shape()[0];
    let mut q = if ctx.defer_values {
        quantize_weight_deferred(view, Some(0), &opts)
    } else {
        quantize_weight(view, Some(0), &opts)
    };

    let names = &mut *ctx.names;
    let stem = node.name().to_string();
    let mut out = Replacement::default();
    let t_q = names.fresh(&format!("{table_name}_quantized"));
    let t_scale = names.fresh(&format!("{table_name}_scale"));
    out.initializers.push(q.take_values_tensor(&t_q));
    out.initializers.push(q.scale_tensor(&t_scale, &[rows]));

    let rows_q = names.fresh(&format!("{y}_quantized"));
    out.nodes.push(
        Node::new(
            names.fresh(&format!("{stem}_rows")),
            "Gather",
            "",
            vec![t_q, ids.to_string()],
            vec![rows_q.clone()],
        )
        .with_attr(attr_int("axis", 0)),
    );
    let rows_f = names.fresh(&format!("{y}_float"));
    out.nodes.push(
        Node::new(
            names.fresh(&format!("{stem}_cast")),
            "Cast",
            "",
            vec![rows_q],
            vec![rows_f.clone()],
        )
        .with_attr(attr_int("to", DataType::Float as i64)),
    );
    let centered = if q.zero_points.iter().all(|&z| z == 0) {
        rows_f
    } else {
        let t_zp = names.fresh(&format!("{table_name}_zero_point"));
        let zps: Vec<f32> = q.zero_points.iter().map(|&z| z as f32).collect();
        out.initializers.push(Tensor::from_vec(&t_zp, &[rows], zps));
        let z = gather_column(names, &mut out, ctx.opset, &stem, &t_zp, ids, "zero_point");
        let c = names.fresh(&format!("{y}_centered"));
        out.nodes.push(Node::new(
            names.fresh(&format!("{stem}_sub_zero_point")),
            "Sub",
            "",
            vec![rows_f, z],
            vec![c.clone()],
        ));
        c
    };
    let s = gather_column(names, &mut out, ctx.opset, &stem, &t_scale, ids, "scale");
    out.nodes.push(Node::new(
        stem.clone(),
        "Mul",
        "",
        vec![centered, s],
        vec![y.clone()],
    ));
    let kind = match opts.weight_type {
        WeightType::Int8 => "int8",
        WeightType::Uint8 => "uint8",
    };
    let sym = if opts.symmetric {
        "symmetric"
    } else {
        "asymmetric"
    };
    out.note = format!("{kind} table, per-row {sym} scales");
    Ok(out)
}

/// `Unsqueeze(Gather(vector, ids), -1)`: one value per looked-up row, broadcastable against
/// the rows.
fn gather_column(
    names: &mut NameGen,
    out: &mut Replacement,
    opset: i64,
    stem: &str,
    vector: &str,
    ids: &str,
    what: &str,
) -> String {
    let g = names.fresh(&format!("{vector}_gathered"));
    out.nodes.push(
        Node::new(
            names.fresh(&format!("{stem}_{what}")),
            "Gather",
            "",
            vec![vector.to_string(), ids.to_string()],
            vec![g.clone()],
        )
        .with_attr(attr_int("axis", 0)),
    );
    let u = names.fresh(&format!("{vector}_per_row"));
    let node_name = names.fresh(&format!("{stem}_{what}_unsqueeze"));
    // Unsqueeze takes `axes` as an input from opset 13 on, as an attribute before.
    let node = if opset >= 13 {
        let axes = names.fresh(&format!("{stem}_{what}_axes"));
        out.initializers
            .push(Tensor::from_vec(&axes, &[1], vec![-1i64]));
        Node::new(node_name, "Unsqueeze", "", vec![g, axes], vec![u.clone()])
    } else {
        Node::new(node_name, "Unsqueeze", "", vec![g], vec![u.clone()])
            .with_attr(attr_ints("axes", vec![-1]))
    };
    out.nodes.push(node);
    u
}
