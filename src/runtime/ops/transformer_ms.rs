//! Transformer ops of the `com.microsoft` domain that onnxruntime's transformer optimizer emits,
//! as onnxruntime's CPU kernels compute them (docs/ContribOperators.md of microsoft/onnxruntime,
//! onnxruntime/contrib_ops/cpu/bert/*). All float32.
//!
//! - `Gelu(X)`: `0.5 · x · (1 + erf(x / √2))`.
//! - `BiasGelu(A, B)`: `Gelu(A + B)`, B of shape `[C]` broadcast over the last axis.
//! - `FastGelu(X, bias?)`: `y = x + bias`, `0.5 · y · (1 + tanh(√(2/π) · (y + 0.044715 · y³)))`.
//! - `BiasAdd(X, bias, skip)`: `X + bias + skip`, X and skip `[N, S, C]`, bias `[C]`.
//! - `SkipLayerNormalization(input, skip, gamma, beta?, bias?)`: `s = input + skip + bias`,
//!   layer-normalized over the last axis with `epsilon` (default 1e-12), times gamma plus beta.
//!   Outputs: `output`, `mean` and `inv_std_var` (shape `[.., 1]`), `input_skip_bias_sum` (s).
//! - `SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`: the same with RMS
//!   normalization `s / √(mean(s²) + ε) · gamma`; outputs `output`, `mean` (unused, zeros),
//!   `inv_std_var`, `input_skip_bias_sum`.
//! - `SimplifiedLayerNormalization(X, scale)` (registered in both the default domain, where
//!   onnxruntime registers it, and `com.microsoft`): RMS normalization over the last axis
//!   (`axis` must be -1), `epsilon` default 1e-5.
//! - `FusedMatMul(A, B)`: `alpha · op(A) · op(B)` with numpy matmul broadcasting, where
//!   `transBatchA` moves A's first axis to just before its last (`[d0, .., dk, K]` →
//!   `[.., dk, d0, K]`) and `transA` then swaps the last two axes; likewise for B.
//!
//! - `EmbedLayerNormalization(input_ids, segment_ids?, word_embedding, position_embedding,
//!   segment_embedding?, gamma, beta, mask?, position_ids?)`: for token `(b, s)` the sum
//!   `e = word[input_ids] + position[p] + segment[segment_ids]` (int32 ids; `p` is
//!   `position_ids[b, s]`, or `position_ids[0, s]` for a `[1, S]` one, else `s`; an id out of
//!   its table's range is an error), layer-normalized over the hidden axis with `epsilon`
//!   (default 1e-12), times gamma plus beta. Outputs: `output [B, S, H]`, `mask_index [B]`
//!   (int32: per batch entry the number of mask values equal to 1; 0 without a mask) and the
//!   optional `embedding_sum [B, S, H]` (the sums e).
//! - `QEmbedLayerNormalization` (what `quantize_dynamic` makes of it): the same with the five
//!   tables (word, position, segment, gamma, beta) stored as uint8 with a per-tensor scale and
//!   zero point each (inputs 8-12 and 13-17), dequantized as `DequantizeLinear` does; no
//!   `position_ids`.
//!
//! Sums are accumulated in f64 and rounded to f32.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::linalg::matmul;
use super::util::{dname, err, from_vec, opt, req};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("com.microsoft", "Gelu", build_gelu);
    r.register("com.microsoft", "BiasGelu", build_bias_gelu);
    r.register("com.microsoft", "FastGelu", build_fast_gelu);
    r.register("com.microsoft", "BiasAdd", build_bias_add);
    r.register("com.microsoft", "SkipLayerNormalization", build_skip_ln);
    r.register(
        "com.microsoft",
        "SkipSimplifiedLayerNormalization",
        build_skip_simplified_ln,
    );
    r.register("", "SimplifiedLayerNormalization", build_simplified_ln);
    r.register(
        "com.microsoft",
        "SimplifiedLayerNormalization",
        build_simplified_ln,
    );
    r.register("com.microsoft", "FusedMatMul", build_fused_matmul);
    r.register("com.microsoft", "EmbedLayerNormalization", build_embed_ln);
    r.register("com.microsoft", "QEmbedLayerNormalization", build_qembed_ln);
}

fn f32_arr<'a>(v: &'a Value, what: &str) -> Result<&'a ArrayD<f32>> {
    match v {
        Value::F32(a) => Ok(a),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

fn f32_vec(v: &Value, what: &str) -> Result<Vec<f32>> {
    Ok(f32_arr(v, what)?.iter().copied().collect())
}

/// A per-channel vector of the last axis' length `c` (or None when the input is absent).
fn channel(ins: &[Option<&Value>], i: usize, c: usize, what: &str) -> Result<Option<Vec<f32>>> {
    let Some(v) = opt(ins, i) else {
        return Ok(None);
    };
    let v = f32_vec(v, what)?;
    if v.len() != c {
        return Err(err(format!(
            "{what} has {} values, expected {c} (the last axis)",
            v.len()
        )));
    }
    Ok(Some(v))
}

fn last_dim(a: &ArrayD<f32>, what: &str) -> Result<usize> {
    a.shape()
        .last()
        .copied()
        .ok_or_else(|| err(format!("{what} must have at least one axis")))
}

fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

fn fast_gelu(y: f32) -> f32 {
    let y = f64::from(y);
    let k = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * y * (1.0 + (k * (y + 0.044715 * y * y * y)).tanh())) as f32
}

/// `f(x + bias[last axis])` elementwise.
fn biased(x: &ArrayD<f32>, bias: Option<&[f32]>, f: impl Fn(f32) -> f32) -> Result<Value> {
    let c = last_dim(x, "X")?.max(1);
    let data: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| f(v + bias.map_or(0.0, |b| b[i % c])))
        .collect();
    Ok(Value::F32(from_vec(x.shape(), data)?))
}

fn build_gelu(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        Ok(vec![biased(f32_arr(req(ins, 0)?, "X")?, None, gelu)?])
    })))
}

fn bias_op(ins: &[Option<&Value>], f: fn(f32) -> f32) -> Result<Vec<Value>> {
    let x = f32_arr(req(ins, 0)?, "X")?;
    let b = channel(ins, 1, last_dim(x, "X")?, "bias")?;
    Ok(vec![biased(x, b.as_deref(), f)?])
}

fn build_bias_gelu(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        req(ins, 1)?;
        bias_op(ins, gelu)
    })))
}

fn build_fast_gelu(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        bias_op(ins, fast_gelu)
    })))
}

fn build_bias_add(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let x = f32_arr(req(ins, 0)?, "X")?;
        let c = last_dim(x, "X")?;
        let b = channel(ins, 1, c, "bias")?;
        let skip = f32_arr(req(ins, 2)?, "skip")?;
        if skip.shape() != x.shape() {
            return Err(err(format!(
                "skip has shape {:?}, X {:?}",
                skip.shape(),
                x.shape()
            )));
        }
        let b = b.unwrap_or_default();
        let data: Vec<f32> = x
            .iter()
            .zip(skip.iter())
            .enumerate()
            .map(|(i, (&a, &s))| a + b[i % c.max(1)] + s)
            .collect();
        Ok(vec![Value::F32(from_vec(x.shape(), data)?)])
    })))
}

/// Normalizes each row of `s` (rows of length `c`): layer norm (`simplified` false) or RMS
/// norm. Returns `(output, mean, inv_std)`.
fn normalize_rows(
    s: &[f32],
    c: usize,
    eps: f64,
    simplified: bool,
    gamma: &[f32],
    beta: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = s.len().checked_div(c).unwrap_or(0);
    let mut out = Vec::with_capacity(s.len());
    let mut means = Vec::with_capacity(rows);
    let mut inv_stds = Vec::with_capacity(rows);
    for row in s.chunks(c.max(1)) {
        let n = row.len() as f64;
        let mean = if simplified {
            0.0
        } else {
            row.iter().map(|&v| f64::from(v)).sum::<f64>() / n
        };
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let y = (f64::from(v) - mean) * inv * f64::from(gamma[j])
                + beta.map_or(0.0, |b| f64::from(b[j]));
            out.push(y as f32);
        }
        means.push(mean as f32);
        inv_stds.push(inv as f32);
    }
    (out, means, inv_stds)
}

/// The shape `x.shape[..-1] + [1]` of per-row statistics.
fn stat_shape(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(l) = s.last_mut() {
        *l = 1;
    }
    s
}

fn skip_norm(ins: &[Option<&Value>], eps: f64, simplified: bool) -> Result<Vec<Value>> {
    let x = f32_arr(req(ins, 0)?, "input")?;
    let skip = f32_arr(req(ins, 1)?, "skip")?;
    let c = last_dim(x, "input")?;
    let shape = x.shape().to_vec();
    // skip may be [N, S, C] like input or [S, C] / [C] broadcast over the leading axes.
    let sl = skip.len();
    if sl == 0 || x.len() % sl.max(1) != 0 || skip.shape().last() != Some(&c) {
        return Err(err(format!(
            "skip has shape {:?}, input {shape:?}",
            skip.shape()
        )));
    }
    let gamma = channel(ins, 2, c, "gamma")?.ok_or_else(|| err("gamma is required"))?;
    let (beta, bias) = if simplified {
        (None, channel(ins, 3, c, "bias")?)
    } else {
        (channel(ins, 3, c, "beta")?, channel(ins, 4, c, "bias")?)
    };
    let skip: Vec<f32> = skip.iter().copied().collect();
    let sum: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v + skip[i % sl] + bias.as_ref().map_or(0.0, |b| b[i % c]))
        .collect();
    let (out, mean, inv) = normalize_rows(&sum, c, eps, simplified, &gamma, beta.as_deref());
    let ss = stat_shape(&shape);
    Ok(vec![
        Value::F32(from_vec(&shape, out)?),
        Value::F32(from_vec(&ss, mean)?),
        Value::F32(from_vec(&ss, inv)?),
        Value::F32(from_vec(&shape, sum)?),
    ])
}

fn build_skip_ln(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = f64::from(node.attr_or::<f32>("epsilon", 1e-12)?);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        skip_norm(ins, eps, false)
    })))
}

fn build_skip_simplified_ln(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = f64::from(node.attr_or::<f32>("epsilon", 1e-12)?);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        skip_norm(ins, eps, true)
    })))
}

fn build_simplified_ln(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = f64::from(node.attr_or::<f32>("epsilon", 1e-5)?);
    let axis = node.attr_or::<i64>("axis", -1)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = f32_arr(req(ins, 0)?, "X")?;
        let rank = x.ndim() as i64;
        if axis != -1 && axis != rank - 1 {
            return Err(err(format!(
                "axis {axis} is not supported (only the last axis)"
            )));
        }
        let c = last_dim(x, "X")?;
        let gamma = channel(ins, 1, c, "scale")?.ok_or_else(|| err("scale is required"))?;
        let xs: Vec<f32> = x.iter().copied().collect();
        let (out, _, inv) = normalize_rows(&xs, c, eps, true, &gamma, None);
        Ok(vec![
            Value::F32(from_vec(x.shape(), out)?),
            Value::F32(from_vec(&stat_shape(x.shape()), inv)?),
        ])
    })))
}

/// The operand permuted as FusedMatMul's `transBatch*` and `trans*` attributes ask.
fn fused_operand(a: &ArrayD<f32>, trans: bool, trans_batch: bool) -> Result<ArrayD<f32>> {
    let r = a.ndim();
    let mut perm: Vec<usize> = (0..r).collect();
    if trans_batch && r > 2 {
        perm = (1..r - 1).chain([0, r - 1]).collect();
    }
    if trans {
        if r < 2 {
            return Err(err("a transposed operand must have at least 2 axes"));
        }
        perm.swap(r - 2, r - 1);
    }
    Ok(a.view()
        .permuted_axes(IxDyn(&perm))
        .as_standard_layout()
        .into_owned())
}

fn build_fused_matmul(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let alpha = node.attr_or::<f32>("alpha", 1.0)?;
    let flag = |n: &str| -> Result<bool> { Ok(node.attr_or::<i64>(n, 0)? != 0) };
    let (ta, tb) = (flag("transA")?, flag("transB")?);
    let (tba, tbb) = (flag("transBatchA")?, flag("transBatchB")?);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let a = fused_operand(f32_arr(req(ins, 0)?, "A")?, ta, tba)?;
        let b = fused_operand(f32_arr(req(ins, 1)?, "B")?, tb, tbb)?;
        let y = matmul(&Value::F32(a), &Value::F32(b))?;
        Ok(vec![match y {
            Value::F32(y) if alpha != 1.0 => Value::F32(y.mapv(|v| v * alpha)),
            y => y,
        }])
    })))
}

/// Int32 (or int64) token ids as i64, checked to be `[B, S]`-shaped when `shape` is given.
fn ids(v: &Value, what: &str) -> Result<Vec<i64>> {
    super::util::ints(v, what)
}

/// Row `id` of an `[rows, h]` embedding table, or an error naming the table.
fn table_row<'a>(table: &'a [f32], h: usize, id: i64, what: &str) -> Result<&'a [f32]> {
    let rows = table.len().checked_div(h).unwrap_or(0);
    usize::try_from(id)
        .ok()
        .filter(|&i| i < rows)
        .map(|i| &table[i * h..(i + 1) * h])
        .ok_or_else(|| err(format!("{what} id {id} is out of range [0, {rows})")))
}

/// An embedding table `[rows, h]` as a flat vector, checked to have `h` columns.
fn table(v: &Value, h: Option<usize>, what: &str) -> Result<(Vec<f32>, usize)> {
    let a = f32_arr(v, what)?;
    match (a.shape(), h) {
        ([_, c], None) => Ok((a.iter().copied().collect(), *c)),
        ([_, c], Some(h)) if *c == h => Ok((a.iter().copied().collect(), h)),
        (s, _) => Err(err(format!(
            "{what} must be [rows, hidden{}], got {s:?}",
            h.map_or(String::new(), |h| format!(" = {h}"))
        ))),
    }
}

fn build_embed_ln(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = f64::from(node.attr_or::<f32>("epsilon", 1e-12)?);
    let outputs = node.outputs().len();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        embed_ln(ins, eps, outputs)
    })))
}

fn build_qembed_ln(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = f64::from(node.attr_or::<f32>("epsilon", 1e-12)?);
    let outputs = node.outputs().len();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        // Tables 2..=6 (word, position, segment, gamma, beta) with their scales at 8..=12
        // and zero points at 13..=17.
        let tables: Vec<Option<Value>> = (2..=6)
            .map(|i| {
                opt(ins, i)
                    .map(|q| super::quant::dequantize(q, req(ins, i + 6)?, opt(ins, i + 11), 1, 0))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let mut float_ins: Vec<Option<&Value>> = vec![opt(ins, 0), opt(ins, 1)];
        float_ins.extend(tables.iter().map(Option::as_ref));
        float_ins.push(opt(ins, 7));
        embed_ln(&float_ins, eps, outputs)
    })))
}

/// EmbedLayerNormalization on float tables; returns its first `outputs` outputs.
fn embed_ln(ins: &[Option<&Value>], eps: f64, outputs: usize) -> Result<Vec<Value>> {
    let idv = req(ins, 0)?;
    let (nb, sl) = match idv.shape() {
        [b, s] => (*b, *s),
        s => return Err(err(format!("input_ids must be [B, S], got {s:?}"))),
    };
    let input_ids = ids(idv, "input_ids")?;
    let same_shape = |i: usize, what: &str| -> Result<Option<Vec<i64>>> {
        let Some(v) = opt(ins, i) else {
            return Ok(None);
        };
        if v.shape() != [nb, sl] {
            return Err(err(format!(
                "{what} {:?} must have input_ids' shape {:?}",
                v.shape(),
                [nb, sl]
            )));
        }
        ids(v, what).map(Some)
    };
    let segment_ids = same_shape(1, "segment_ids")?;
    let mask = same_shape(7, "mask")?;
    let (word, h) = table(req(ins, 2)?, None, "word_embedding")?;
    let (pos, _) = table(req(ins, 3)?, Some(h), "position_embedding")?;
    let seg = opt(ins, 4)
        .map(|v| table(v, Some(h), "segment_embedding"))
        .transpose()?;
    let gamma = channel(ins, 5, h, "gamma")?.ok_or_else(|| err("gamma is required"))?;
    let beta = channel(ins, 6, h, "beta")?;
    let position_ids = match opt(ins, 8) {
        None => None,
        Some(v) if v.shape() == [nb, sl] || v.shape() == [1, sl] => {
            Some((ids(v, "position_ids")?, v.shape()[0] == 1))
        }
        Some(v) => {
            return Err(err(format!(
                "position_ids {:?} must be [B, S] or [1, S] with B={nb}, S={sl}",
                v.shape()
            )));
        }
    };
    let n = super::util::elem_count(&[nb, sl, h])?;
    let mut sum = Vec::with_capacity(n);
    for (t, &id) in input_ids.iter().enumerate() {
        let s = t % sl.max(1);
        let p = match &position_ids {
            Some((p, true)) => p[s],
            Some((p, false)) => p[t],
            None => s as i64,
        };
        let w = table_row(&word, h, id, "input_ids")?;
        let pe = table_row(&pos, h, p, "position")?;
        let se = match (&seg, &segment_ids) {
            (Some((table, _)), Some(sid)) => Some(table_row(table, h, sid[t], "segment_ids")?),
            _ => None,
        };
        for j in 0..h {
            sum.push(w[j] + pe[j] + se.map_or(0.0, |r| r[j]));
        }
    }
    let (out, _, _) = normalize_rows(&sum, h, eps, false, &gamma, beta.as_deref());
    let mask_index: Vec<i32> = match &mask {
        Some(m) => m
            .chunks(sl.max(1))
            .map(|row| row.iter().filter(|&&x| x == 1).count() as i32)
            .collect(),
        None => vec![0; nb],
    };
    let mut outs = vec![Value::F32(from_vec(&[nb, sl, h], out)?)];
    if outputs > 1 {
        outs.push(Value::I32(from_vec(&[nb], mask_index)?));
    }
    if outputs > 2 {
        outs.push(Value::F32(from_vec(&[nb, sl, h], sum)?));
    }
    Ok(outs)
}
