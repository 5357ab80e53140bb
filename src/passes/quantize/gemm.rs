//! Gemm with a constant weight (ONNX Gemm, opsets 1-13): `Y = alpha * A' B' + beta * C`, where
//! `A' = transA ? Aᵀ : A` and `B' = transB ? Bᵀ : B`; A and B are 2-D, C is optional and
//! unidirectionally broadcastable to `[M, N]`.
//!
//! Every attribute combination is rewritten into the MatMul chain (see matmul.rs): `transB`
//! is folded into the stored weight (always `[K, N]`), `alpha` into the weight scale, and
//! `beta * C` into a constant bias (1-D `[N]` whenever C is a row, the shape onnxruntime's
//! fusion needs; other broadcastable shapes are kept as they are). `transA` inserts a
//! Transpose of A. The node writing the Gemm's output keeps the Gemm's name, so reports and
//! `--exclude` keep referring to it (the incumbent renames it).

use ndarray::{ArrayD, IxDyn};

use super::matmul::{Linear, check_opset, int8_linear, weight_2d};
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::weights::WeightSrc;
use crate::ir::Node;
use crate::ir::attrs::attr_ints;
use crate::onnx::tensor_proto::DataType;

pub fn rewrite_gemm(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    check_opset(ctx)?;
    let attr_i = |k: &str| -> Result<i64, Skip> {
        node.attr_or::<i64>(k, 0).map_err(|e| Skip(e.to_string()))
    };
    let attr_f = |k: &str| -> Result<f32, Skip> {
        node.attr_or::<f32>(k, 1.0).map_err(|e| Skip(e.to_string()))
    };
    let (trans_a, trans_b) = (attr_i("transA")? != 0, attr_i("transB")? != 0);
    let (alpha, beta) = (attr_f("alpha")?, attr_f("beta")?);
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return Err(Skip("Gemm needs inputs A and B".into()));
    };
    let Some(y) = node.outputs().first().filter(|o| !o.is_empty()) else {
        return Err(Skip("Gemm has no output".into()));
    };
    let w = weight_2d(ctx, b)?;
    // Read in place; with transB the stored matrix is [N, K] and stays so (transposed.rs).
    let weight = WeightSrc::from_tensor(w).map_err(|e| Skip(e.to_string()))?;
    let n = weight.shape()[if trans_b { 0 } else { 1 }];

    let (bias, bias_name) = match node.input(2) {
        Some(c) if beta != 0.0 => bias_of(ctx, c, beta, n)?,
        _ => (None, None),
    };

    let mut out = Replacement::default();
    let a_in = if trans_a {
        let t = ctx.names.fresh(&format!("{a}_transposed"));
        out.nodes.push(
            Node::new(
                ctx.names.fresh(&format!("{}_transpose_a", node.name())),
                "Transpose",
                "",
                vec![a.to_string()],
                vec![t.clone()],
            )
            .with_attr(attr_ints("perm", vec![1, 0])),
        );
        t
    } else {
        a.to_string()
    };
    int8_linear(
        Linear {
            a: a_in,
            weight,
            weight_transposed: trans_b,
            alpha,
            bias,
            bias_name,
            base: b.to_string(),
            output: y.clone(),
            node_name: node.name().to_string(),
        },
        ctx,
        &mut out,
    );
    Ok(out)
}

/// `beta * C` as the bias to add after the product: either the existing constant (beta 1 and
/// already a vector) or a new tensor, squeezed to `[N]` when C is a row.
type Bias = (Option<ArrayD<f32>>, Option<String>);

fn bias_of(ctx: &NodeCtx, c: &str, beta: f32, n: usize) -> Result<Bias, Skip> {
    let t = (ctx.constants)(c).ok_or_else(|| {
        Skip(format!(
            "bias '{c}' is computed by nodes the rewrite cannot fold yet"
        ))
    })?;
    if t.data_type().ok() != Some(DataType::Float) {
        return Err(Skip(format!("bias '{c}' is not float32")));
    }
    let dims = t.shape();
    if dims.len() > 2 {
        return Err(Skip(format!("bias '{c}' has rank {}", dims.len())));
    }
    let is_row = dims.iter().rev().skip(1).all(|&d| d == 1) && dims.last() == Some(&n);
    if beta == 1.0 && dims.len() == 1 && dims[0] == n {
        return Ok((None, Some(c.to_string())));
    }
    let mut arr = t.to_array::<f32>().map_err(|e| Skip(e.to_string()))?;
    if beta != 1.0 {
        arr.mapv_inplace(|v| v * beta);
    }
    if is_row {
        arr = arr
            .into_shape_with_order(IxDyn(&[n]))
            .map_err(|e| Skip(e.to_string()))?;
    }
    Ok((Some(arr), None))
}
