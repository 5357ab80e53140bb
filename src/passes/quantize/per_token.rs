//! Per-token (per-row) dynamic quantization of a MatMul/Gemm activation, in standard ONNX ops.
//!
//! `DynamicQuantizeLinear` gives the whole activation one scale, so one outlier token (or a
//! few outlier channels in some tokens: transformer FFN inputs after GELU) coarsens every
//! other row. Here each row of `A [.., K]` (each token) gets its own asymmetric uint8 scale
//! and zero point, computed exactly as DynamicQuantizeLinear computes them for the whole
//! tensor:
//!
//! ```text
//! A2    = Reshape(A, [-1, K])                      (when A is not 2-D)
//! lo,hi = Min(ReduceMin(A2, 1), 0), Max(ReduceMax(A2, 1), 0)     per row, [M]
//! s     = Max((hi - lo) / 255, FLT_MIN)            (an all-zero row gets a tiny scale, q = 0)
//! z     = Clip(Round(-lo / s), 0, 255)             float, [M]
//! A_q   = Cast<uint8>(Clip(Round(A2 / s[:, None]) + z[:, None], 0, 255))
//!         (= QuantizeLinear(A2, s, uint8(z), axis 0), spelled out because tract requires
//!         QuantizeLinear's scale to be a constant)
//! acc   = MatMulInteger(A_q, W_q, -, W_zp)         Σ_k A_q[m,k] · (W_q[k,n] - W_zp[n])
//! Y2    = (Cast(acc) - z[m] · c[n]) · (s[m] · W_scale[n])     c[n] = Σ_k (W_q[k,n] - W_zp[n])
//! Y     = Reshape(Y2, A.shape[:-1] ++ [N])
//! ```
//!
//! The row zero point is applied as the rank-1 correction `z ⊗ c` after the integer product
//! rather than as MatMulInteger's per-row `a_zero_point`: the ONNX spec allows the latter,
//! but onnxruntime's kernel accepts only a scalar there, and the output must load everywhere.
//! `c` is a constant computed from the quantized weight at rewrite time.
//!
//! Needs opset 13 (Unsqueeze with an axes input); the reductions take `axes` as an attribute
//! before opset 18 and as an input from 18.

use ndarray::ArrayD;

use crate::ir::attrs::{attr_int, attr_ints};
use crate::ir::{NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;

use super::rewrite::Replacement;
use super::weights::QValues;

/// Opset the per-token form needs.
pub const MIN_OPSET: i64 = 13;

/// The per-row quantized activation.
pub struct RowQuantized {
    /// uint8 `[M, K]`.
    pub q: String,
    /// float `[M, 1]` scales.
    pub scale_col: String,
    /// float `[M, 1]` zero points.
    pub zero_point_col: String,
    /// `A.shape[:-1]` (int64), when `A` was reshaped to 2-D: `Y` takes back that shape.
    pub lead_dims: Option<String>,
}

struct Emit<'a> {
    out: &'a mut Replacement,
    names: &'a mut NameGen,
    stem: &'a str,
}

impl Emit<'_> {
    fn node(&mut self, op: &str, inputs: Vec<String>, hint: &str) -> String {
        self.node_with(op, inputs, hint, vec![])
    }

    fn node_with(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        hint: &str,
        attrs: Vec<crate::onnx::AttributeProto>,
    ) -> String {
        let y = self.names.fresh(&format!("{}_{hint}", self.stem));
        let mut n = Node::new(
            self.names.fresh(&format!("{}_{op}", self.stem)),
            op,
            "",
            inputs,
            vec![y.clone()],
        );
        for a in attrs {
            n = n.with_attr(a);
        }
        self.out.nodes.push(n);
        y
    }

    fn constant<T: crate::ir::tensor::Element>(
        &mut self,
        hint: &str,
        dims: &[usize],
        v: Vec<T>,
    ) -> String {
        let n = self.names.fresh(&format!("{}_{hint}", self.stem));
        self.out.initializers.push(Tensor::from_vec(&n, dims, v));
        n
    }

    /// `ReduceMin`/`ReduceMax` over axis 1 without keeping it, in the form of `opset`.
    fn reduce_rows(&mut self, op: &str, x: &str, opset: i64, hint: &str) -> String {
        let keep = attr_int("keepdims", 0);
        if opset >= 18 {
            let axes = self.constant("axis1", &[1], vec![1i64]);
            self.node_with(op, vec![x.to_string(), axes], hint, vec![keep])
        } else {
            self.node_with(
                op,
                vec![x.to_string()],
                hint,
                vec![keep, attr_ints("axes", vec![1])],
            )
        }
    }
}

/// Appends the per-row quantization of `a` (inner dimension `k`; `rank` when known).
pub fn quantize_rows(
    out: &mut Replacement,
    names: &mut NameGen,
    stem: &str,
    a: &str,
    k: usize,
    rank: Option<usize>,
    opset: i64,
) -> RowQuantized {
    let mut e = Emit { out, names, stem };
    let (a2, lead_dims) = if rank == Some(2) {
        (a.to_string(), None)
    } else {
        let shape2 = e.constant("rows_shape", &[2], vec![-1i64, k as i64]);
        let a2 = e.node("Reshape", vec![a.to_string(), shape2], "rows");
        let shape = e.node("Shape", vec![a.to_string()], "in_shape");
        let zero = e.constant("lead_start", &[1], vec![0i64]);
        let last = e.constant("lead_end", &[1], vec![-1i64]);
        let lead = e.node("Slice", vec![shape, zero, last], "lead_dims");
        (a2, Some(lead))
    };
    let zero = e.constant("zero", &[], vec![0f32]);
    let hi = e.reduce_rows("ReduceMax", &a2, opset, "row_max");
    let lo = e.reduce_rows("ReduceMin", &a2, opset, "row_min");
    let hi = e.node("Max", vec![hi, zero.clone()], "row_hi");
    let lo = e.node("Min", vec![lo, zero.clone()], "row_lo");
    let range = e.node("Sub", vec![hi, lo.clone()], "row_range");
    let c255 = e.constant("qmax", &[], vec![255f32]);
    let scale = e.node("Div", vec![range, c255.clone()], "row_scale_raw");
    let tiny = e.constant("min_scale", &[], vec![f32::MIN_POSITIVE]);
    let scale = e.node("Max", vec![scale, tiny], "row_scale");
    let neg_lo = e.node("Neg", vec![lo], "row_neg_lo");
    let zp = e.node("Div", vec![neg_lo, scale.clone()], "row_zp_raw");
    let zp = e.node("Round", vec![zp], "row_zp_round");
    let zp = e.node("Clip", vec![zp, zero.clone(), c255.clone()], "row_zp");
    // QuantizeLinear(A2, s, z, axis 0) spelled out: tract (0.23) requires QuantizeLinear's
    // scale to be a constant. The quantize and the epilogue read their own Unsqueezes so
    // that every intermediate has one reader (the runtime fuses the whole chain).
    let axes = e.constant("col_axis", &[1], vec![1i64]);
    let scale_q = e.node(
        "Unsqueeze",
        vec![scale.clone(), axes.clone()],
        "q_scale_col",
    );
    let zp_q = e.node("Unsqueeze", vec![zp.clone(), axes.clone()], "q_zp_col");
    let scaled = e.node("Div", vec![a2, scale_q], "rows_scaled");
    let rounded = e.node("Round", vec![scaled], "rows_rounded");
    let shifted = e.node("Add", vec![rounded, zp_q], "rows_shifted");
    let clipped = e.node("Clip", vec![shifted, zero, c255], "rows_clipped");
    let q = e.node_with(
        "Cast",
        vec![clipped],
        "rows_quantized",
        vec![attr_int("to", DataType::Uint8 as i64)],
    );
    let scale_col = e.node("Unsqueeze", vec![scale, axes.clone()], "row_scale_col");
    let zero_point_col = e.node("Unsqueeze", vec![zp, axes], "row_zp_col");
    RowQuantized {
        q,
        scale_col,
        zero_point_col,
        lead_dims,
    }
}

/// `c[n] = Σ_k (W_q[k, n] - W_zp[n])` of a `[K, N]` quantized weight (`zero_points` one per
/// column or one for all).
pub fn column_sums(values: &QValues, zero_points: &[i32]) -> Vec<f32> {
    fn sums<T: Copy + Into<i32>>(a: &ArrayD<T>, zps: &[i32]) -> Vec<f32> {
        let n = a.shape().get(1).copied().unwrap_or(0);
        let mut acc = vec![0i64; n];
        for row in a.rows() {
            for (s, &v) in acc.iter_mut().zip(row.iter()) {
                *s += v.into() as i64;
            }
        }
        let k = a.shape()[0] as i64;
        acc.iter()
            .enumerate()
            .map(|(j, &s)| {
                let z = if zps.len() == 1 { zps[0] } else { zps[j] };
                (s - k * z as i64) as f32
            })
            .collect()
    }
    match values {
        QValues::I8(a) => sums(a, zero_points),
        QValues::U8(a) => sums(a, zero_points),
    }
}

/// What the float epilogue reads and writes.
pub struct Epilogue {
    /// The int32 product `[M, N]`.
    pub int_out: String,
    /// The constant `c` (float `[N]`).
    pub col_sums: String,
    /// The weight's scale (scalar or `[N]`).
    pub w_scale: String,
    pub n_cols: usize,
    /// `(node name, output)` for the last Mul when it is the replacement's final node.
    pub writes: Option<(String, String)>,
}

/// Appends the float epilogue `(Cast(acc) - z ⊗ c) · (s ⊗ W_scale)`. Returns the 2-D result
/// and, when `A` was reshaped, the shape (`A.shape[:-1] ++ [N]`) to reshape it back to.
pub fn rescale_rows(
    out: &mut Replacement,
    names: &mut NameGen,
    stem: &str,
    rows: &RowQuantized,
    ep: Epilogue,
) -> (String, Option<String>) {
    let Epilogue {
        int_out,
        col_sums,
        w_scale,
        n_cols,
        writes,
    } = ep;
    let mut e = Emit { out, names, stem };
    let accf = e.node_with(
        "Cast",
        vec![int_out],
        "acc_float",
        vec![attr_int("to", DataType::Float as i64)],
    );
    let corr = e.node(
        "Mul",
        vec![rows.zero_point_col.clone(), col_sums],
        "zp_correction",
    );
    let centered = e.node("Sub", vec![accf, corr], "acc_centered");
    let scale = e.node("Mul", vec![rows.scale_col.clone(), w_scale], "out_scale");
    let y2 = match writes {
        Some((node, y)) => {
            e.out.nodes.push(Node::new(
                node,
                "Mul",
                "",
                vec![centered, scale],
                vec![y.clone()],
            ));
            y
        }
        None => e.node("Mul", vec![centered, scale], "rows_out"),
    };
    let shape = rows.lead_dims.as_ref().map(|lead| {
        let n = e.constant("out_cols", &[1], vec![n_cols as i64]);
        e.node_with(
            "Concat",
            vec![lead.clone(), n],
            "out_shape",
            vec![attr_int("axis", 0)],
        )
    });
    (y2, shape)
}
