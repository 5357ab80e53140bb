//! The attention ops of the `com.microsoft` domain that onnxruntime's transformer optimizer
//! and quantizer emit, as onnxruntime's CPU kernels compute them (docs/ContribOperators.md of
//! microsoft/onnxruntime, contrib_ops/cpu/bert/attention*.{h,cc},
//! contrib_ops/cpu/quantization/attention_quant.cc). All float32 (onnxruntime's CPU kernels
//! register no other type).
//!
//! - `Attention(input, weights, bias?, mask_index?, past?, attention_bias?,
//!   past_sequence_length?)`: the packed projection `input [B, S, D] · weights [D, Hq+Hk+Hv] +
//!   bias` is split into Q, K and V (`qkv_hidden_sizes` gives the three widths; all equal by
//!   default), each cut into `num_heads` heads. Then per head
//!   `softmax(scale · Q·Kᵀ + mask + attention_bias) · V`, with `scale` defaulting (attribute
//!   absent or 0) to `1/√(Hq/num_heads)`. Output `[B, S, Hv]`.
//! - The mask is additive: `mask_filter_value` (default -10000) where a key is hidden, 0
//!   elsewhere. `mask_index` (int32) is one of: 1-D `[B]`, the end position of the valid keys
//!   (key `j` hidden when `j >= end`); 1-D `[2B]`, end positions then start positions (also
//!   hidden when `j < min(start, T)`); 2-D `[B, T]` raw 0/1 mask (hidden where `<= 0`); 3-D
//!   `[B, S, T]` the same per query. `T = P + S` is the total key length with `P` past
//!   positions. Of the `[3B+2]` form (for packed batches) only the key lengths are used, as
//!   onnxruntime's CPU kernel does; the 4-D Megatron form is refused (as it is there).
//!   `unidirectional` hides keys `j > P + i` from query `i` with the lowest float (so a
//!   query whose other keys are all padding attends to those, as in onnxruntime).
//! - `past` `[2, B, N, P, H]` holds the past keys and values; they are prepended to the
//!   current ones, and the optional output `present` `[2, B, N, P+S, H]` is the concatenation.
//!   `past_sequence_length` (for a shared past/present buffer) is ignored; the
//!   `past_present_share_buffer` and `do_rotary` modes are refused.
//! - `attention_bias` (formerly `relative_position_bias`) `[B or 1, N or 1, S, T]` is added to
//!   the scores with the mask.
//! - `QAttention(input, weight, bias, input_scale, weight_scale, mask_index?,
//!   input_zero_point?, weight_zero_point?, past?)`: the same with an 8-bit projection:
//!   `QKV = f32((input - zi)·(weight - zw)) · (input_scale · weight_scale[col]) + bias[col]`,
//!   input uint8 (or int8), weight int8 or uint8, `weight_scale` / `weight_zero_point` per
//!   tensor or per output column; Q, K and V have equal widths.
//! - `MultiHeadAttention(query, key?, value?, bias?, key_padding_mask?, attention_bias?,
//!   past_key?, past_value?)`: Q, K and V given apart (already projected): query `[B, S, D]`;
//!   key and value `[B, L, D]` / `[B, L, Dv]`, or `[B, N, L, H]` (then used as given, without
//!   past). The packed forms (QKV `[B, S, N, 3, H]`, KV `[B, L, N, 2, H]`) are refused, as
//!   onnxruntime's CPU kernel refuses them. `bias` `[D+D+Dv]` is added to the 3-D Q, K and
//!   V. `key_padding_mask` takes `mask_index`'s forms; past and present keys and values are
//!   `[B, N, P, H]` and `[B, N, P+L, H]`; the optional fourth output (the scores) and
//!   `cache_indirection` (beam search) are refused.
//! - `GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k,
//!   total_sequence_length)`: causal attention with `num_heads` query heads reading
//!   `kv_num_heads` key/value heads (query head `h` reads `h / (num_heads / kv_num_heads)`).
//!   query `[B, S, N·H]` with key and value `[B, S, Nkv·H]`, or packed `[B, S, (N+2·Nkv)·H]`
//!   without them. Batch entry `b` has `seqlens_k[b] + 1` keys in all; its past length is 0
//!   on a first prompt (`S == total_sequence_length`) and `seqlens_k[b] + 1 - S` otherwise.
//!   `present_key` / `present_value` `[B, Nkv, max(P, total_sequence_length), H]` hold the
//!   past's first past-length rows, then the new keys/values, then zeros. Query `i` sees
//!   keys `j <= past + i`, with `local_window_size` w > 0 only the last w of them
//!   (`j > past + i - w`); scores are scaled (`scale`, default `1/√H`), soft-capped with
//!   `softcap` > 0 (`softcap · tanh(s / softcap)`) and softmaxed (`smooth_softmax` adds 1 to
//!   the denominator, as a sink at score 0). Rotary embedding (`do_rotary`), `cos_cache`,
//!   `sin_cache`, `position_ids`, `attention_bias`, `head_sink` and the qk output are refused.
//!   Queries of a first prompt past their entry's length (padding) see the keys up to
//!   themselves that exist, `j < seqlens_k[b] + 1`.
//!
//! Attention, QAttention and MultiHeadAttention run their heads on the default-domain
//! `Attention` implementation (attention.rs) with the mask and bias folded into one additive
//! bias; GroupQueryAttention's per-entry lengths and windows run per query row.

use ndarray::{Array4, ArrayD, Axis, IxDyn, s};

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::runtime::Value;

use super::attention::{Attrs, attention};
use super::quant::{Int8Array, matmul_integer, pack_const_b, zero_points};
use super::quant_ms::{f32s, scale_out, valid_pack};
use super::util::{dname, elem_count, err, ints, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("com.microsoft", "Attention", build_attention);
    r.register("com.microsoft", "QAttention", build_qattention);
    r.register("com.microsoft", "MultiHeadAttention", build_mha);
    r.register("com.microsoft", "GroupQueryAttention", build_gqa);
}

/// The attributes the com.microsoft attention ops share.
#[derive(Clone, Copy, Debug)]
struct MsAttrs {
    heads: usize,
    unidirectional: bool,
    /// None for the default `1/√head_size`.
    scale: Option<f32>,
    mask_filter: f32,
}

impl MsAttrs {
    fn parse(node: &Node) -> Result<MsAttrs> {
        let heads = node.attr_req::<i64>("num_heads")?;
        if heads <= 0 {
            return Err(err(format!("num_heads must be positive, got {heads}")));
        }
        for unsupported in ["do_rotary", "past_present_share_buffer"] {
            if node.attr_or::<i64>(unsupported, 0)? != 0 {
                return Err(Error::Unsupported(format!(
                    "{} with {unsupported}=1 (node {})",
                    node.op_type(),
                    node.display_name()
                )));
            }
        }
        let scale = node.attr_or::<f32>("scale", 0.0)?;
        Ok(MsAttrs {
            heads: heads as usize,
            unidirectional: node.attr_or::<i64>("unidirectional", 0)? != 0,
            scale: (scale != 0.0).then_some(scale),
            mask_filter: node.attr_or::<f32>("mask_filter_value", -10000.0)?,
        })
    }
}

fn f32_array(v: &Value, what: &str) -> Result<ArrayD<f32>> {
    match v {
        Value::F32(a) => Ok(standard(a.view())),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

/// The additive mask `[B or 1, 1, S, T]` of `mask_index` and `unidirectional`, or None when
/// neither applies.
fn additive_mask(
    a: &MsAttrs,
    mask_index: Option<&Value>,
    nb: usize,
    sq: usize,
    t: usize,
    past: usize,
) -> Result<Option<Array4<f32>>> {
    let f = a.mask_filter;
    let mut m = match mask_index {
        None if !a.unidirectional => return Ok(None),
        None => Array4::zeros((1, 1, sq, t)),
        Some(v) => {
            let dims = v.shape().to_vec();
            let vals = ints(v, "mask_index")?;
            elem_count(&[nb, sq, t])?;
            match dims.len() {
                // [3B+2] (key lengths, then cumulative query and key starts for packed
                // batches) runs as its key lengths, as onnxruntime's CPU kernel runs it.
                1 if dims[0] == nb || dims[0] == 2 * nb || dims[0] == 3 * nb + 2 => {
                    let with_start = dims[0] == 2 * nb && nb > 0;
                    Array4::from_shape_fn((nb, 1, sq, t), |(b, _, _, j)| {
                        let j = j as i64;
                        let start = if with_start {
                            vals[b + nb].min(t as i64)
                        } else {
                            0
                        };
                        if j >= vals[b] || j < start { f } else { 0.0 }
                    })
                }
                2 if dims == [nb, t] => {
                    Array4::from_shape_fn(
                        (nb, 1, sq, t),
                        |(b, _, _, j)| {
                            if vals[b * t + j] > 0 { 0.0 } else { f }
                        },
                    )
                }
                3 if dims == [nb, sq, t] => {
                    Array4::from_shape_fn((nb, 1, sq, t), |(b, _, i, j)| {
                        if vals[(b * sq + i) * t + j] > 0 {
                            0.0
                        } else {
                            f
                        }
                    })
                }
                _ => {
                    return Err(err(format!(
                        "mask_index {dims:?} is none of [B], [2B], [B, T], [B, S, T] with B={nb}, S={sq}, T={t} (the 4-D form is not supported)"
                    )));
                }
            }
        }
    };
    if a.unidirectional {
        for mut plane in m.outer_iter_mut() {
            let mut plane = plane.index_axis_mut(Axis(0), 0);
            for (i, mut row) in plane.outer_iter_mut().enumerate() {
                // The lowest float, not mask_filter_value, as in onnxruntime: it decides
                // where a query whose visible keys are all padding attends (to the
                // padding before it).
                row.slice_mut(s![(past + i + 1).min(t)..]).fill(f32::MIN);
            }
        }
    }
    Ok(Some(m))
}

/// `attention_bias` as a 4-D `[B or 1, N or 1, S, T]` array.
fn attention_bias(v: &Value, nb: usize, heads: usize, sq: usize, t: usize) -> Result<ArrayD<f32>> {
    let a = f32_array(v, "attention_bias")?;
    let d = a.shape();
    let ok = d.len() == 4
        && (d[0] == nb || d[0] == 1)
        && (d[1] == heads || d[1] == 1)
        && d[2] == sq
        && d[3] == t;
    if !ok {
        return Err(err(format!(
            "attention_bias {d:?} is not [B or 1, N or 1, S, T] = [{nb}|1, {heads}|1, {sq}, {t}]"
        )));
    }
    Ok(a)
}

/// Attention over projected `[B, S, Hq]` Q and `[B, L, Hk]` / `[B, L, Hv]` K and V, with
/// optional past keys and values `[B, N, P, H]`. Returns Y `[B, S, Hv]` and the present keys
/// and values `[B, N, P+L, H]`.
fn attend(
    a: &MsAttrs,
    q: ArrayD<f32>,
    k: ArrayD<f32>,
    v: ArrayD<f32>,
    mask_index: Option<&Value>,
    past: Option<(Value, Value)>,
    bias: Option<&Value>,
) -> Result<[Value; 3]> {
    let (nb, sq, hq) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let n = a.heads;
    if !hq.is_multiple_of(n) || k.shape()[2] != hq || !v.shape()[2].is_multiple_of(n) {
        return Err(err(format!(
            "Q {:?}, K {:?} and V {:?} widths must be multiples of {n} heads, Q's and K's equal",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    let p = past.as_ref().map_or(0, |(pk, _)| pk.shape()[2]);
    let t = p
        .checked_add(k.shape()[1])
        .ok_or_else(|| err("sequence length overflows"))?;
    let scale = a.scale.unwrap_or(1.0 / ((hq / n) as f32).sqrt());
    let mask = additive_mask(a, mask_index, nb, sq, t, p)?.map(|m| m.into_dyn());
    let bias = bias.map(|b| attention_bias(b, nb, n, sq, t)).transpose()?;
    let combined = match (mask, bias) {
        (Some(m), Some(b)) => Some(&m + &b),
        (m, b) => m.or(b),
    };
    let (q, k, v) = (Value::F32(q), Value::F32(k), Value::F32(v));
    let combined = combined.map(Value::F32);
    let (pk, pv) = match &past {
        Some((pk, pv)) => (Some(pk), Some(pv)),
        None => (None, None),
    };
    let ins = [Some(&q), Some(&k), Some(&v), combined.as_ref(), pk, pv];
    let mut outs = attention(Attrs::plain(n, scale), &ins, false)?.into_iter();
    let mut next = || {
        outs.next()
            .ok_or_else(|| err("attention returned too few outputs"))
    };
    Ok([next()?, next()?, next()?])
}

/// Columns `range` of the `[B·S, W]` product as `[B, S, range.len()]`.
fn columns(
    qkv: &ArrayD<f32>,
    nb: usize,
    sq: usize,
    range: std::ops::Range<usize>,
) -> Result<ArrayD<f32>> {
    let w = qkv.shape()[qkv.ndim() - 1];
    let cols = qkv
        .view()
        .into_shape_with_order(IxDyn(&[nb * sq, w]))
        .map_err(|e| err(e.to_string()))?
        .slice_move(s![.., range])
        .as_standard_layout()
        .into_owned();
    let width = cols.ncols();
    cols.into_shape_with_order(IxDyn(&[nb, sq, width]))
        .map_err(|e| err(e.to_string()))
}

/// `past` `[2, B, N, P, H]` as its key and value halves `[B, N, P, H]`.
fn split_past(past: Option<&Value>) -> Result<Option<(Value, Value)>> {
    let Some(p) = past else { return Ok(None) };
    let a = f32_array(p, "past")?;
    if a.ndim() != 5 || a.shape()[0] != 2 {
        return Err(err(format!(
            "past must be [2, B, N, P, H], got {:?}",
            a.shape()
        )));
    }
    let half = |i: usize| Value::F32(a.index_axis(Axis(0), i).to_owned());
    Ok(Some((half(0), half(1))))
}

/// `present` `[2, B, N, T, H]` from the present keys and values.
fn join_present(k: &Value, v: &Value) -> Result<Value> {
    match (k, v) {
        (Value::F32(k), Value::F32(v)) if k.shape() == v.shape() => {
            ndarray::stack(Axis(0), &[k.view(), v.view()])
                .map(Value::F32)
                .map_err(|e| err(e.to_string()))
        }
        _ => Err(err(format!(
            "present needs keys and values of one shape, got {:?} and {:?}",
            k.shape(),
            v.shape()
        ))),
    }
}

/// Runs attention on the packed `[B, S, Hq+Hk+Hv]` projection; returns `[output, present?]`.
#[allow(clippy::too_many_arguments)]
fn run_packed(
    a: &MsAttrs,
    qkv: &ArrayD<f32>,
    widths: [usize; 3],
    mask_index: Option<&Value>,
    past: Option<&Value>,
    bias: Option<&Value>,
    want_present: bool,
) -> Result<Vec<Value>> {
    let (nb, sq) = (qkv.shape()[0], qkv.shape()[1]);
    let [hq, hk, hv] = widths;
    let q = columns(qkv, nb, sq, 0..hq)?;
    let k = columns(qkv, nb, sq, hq..hq + hk)?;
    let v = columns(qkv, nb, sq, hq + hk..hq + hk + hv)?;
    let [y, pk, pv] = attend(a, q, k, v, mask_index, split_past(past)?, bias)?;
    let mut outs = vec![y];
    if want_present {
        outs.push(join_present(&pk, &pv)?);
    }
    Ok(outs)
}

/// The input `[B, S, D]` as a 3-D float array.
fn input_3d(v: &Value) -> Result<ArrayD<f32>> {
    let x = f32_array(v, "input")?;
    if x.ndim() != 3 {
        return Err(err(format!("input must be [B, S, D], got {:?}", x.shape())));
    }
    Ok(x)
}

fn wants_output(node: &Node, i: usize) -> bool {
    node.outputs().get(i).is_some_and(|n| !n.is_empty())
}

fn build_attention(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let a = MsAttrs::parse(node)?;
    let sizes = node.attr::<Vec<i64>>("qkv_hidden_sizes")?;
    let sizes: Option<[usize; 3]> = match sizes {
        None => None,
        Some(v) if v.len() == 3 && v.iter().all(|&x| x > 0) => {
            Some([v[0] as usize, v[1] as usize, v[2] as usize])
        }
        Some(v) => {
            return Err(err(format!(
                "qkv_hidden_sizes must be 3 positive sizes, got {v:?}"
            )));
        }
    };
    let want_present = wants_output(node, 1);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = input_3d(req(ins, 0)?)?;
        let w = f32_array(req(ins, 1)?, "weights")?;
        let (d, total) = match w.shape() {
            [d, t] => (*d, *t),
            s => return Err(err(format!("weights must be 2-D, got {s:?}"))),
        };
        if x.shape()[2] != d {
            return Err(err(format!(
                "input {:?} does not match weights {:?}",
                x.shape(),
                w.shape()
            )));
        }
        let widths = match sizes {
            Some(s) => s,
            None if total.is_multiple_of(3) => [total / 3; 3],
            None => {
                return Err(err(format!(
                    "weights width {total} is not 3 equal parts (give qkv_hidden_sizes)"
                )));
            }
        };
        if widths.iter().sum::<usize>() != total {
            return Err(err(format!(
                "qkv_hidden_sizes {widths:?} do not add up to the weights width {total}"
            )));
        }
        let mut qkv = match super::linalg::matmul(&Value::F32(x), &Value::F32(w))? {
            Value::F32(y) => y,
            _ => return Err(err("projection did not give float")),
        };
        if let Some(b) = opt(ins, 2) {
            let b = f32s(b, "bias")?;
            if b.len() != total {
                return Err(err(format!(
                    "bias has {} values, expected {total}",
                    b.len()
                )));
            }
            qkv += &ndarray::aview1(&b);
        }
        run_packed(
            &a,
            &qkv,
            widths,
            opt(ins, 3),
            opt(ins, 4),
            opt(ins, 5),
            want_present,
        )
    })))
}

fn build_qattention(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let a = MsAttrs::parse(node)?;
    let want_present = wants_output(node, 1);
    let packed = pack_const_b(ctx, 1, 7)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = Int8Array::from_value(req(ins, 0)?, "input")?;
        let w = Int8Array::from_value(req(ins, 1)?, "weight")?;
        let (xs, ws) = (x.shape(), w.shape());
        if xs.len() != 3 || ws.len() != 2 || xs[2] != ws[0] {
            return Err(err(format!(
                "input {xs:?} and weight {ws:?} must be [B, S, D] and [D, 3H]"
            )));
        }
        let total = ws[1];
        if !total.is_multiple_of(3) {
            return Err(err(format!("weight width {total} is not 3 equal parts")));
        }
        let bias = f32s(req(ins, 2)?, "bias")?;
        let in_scale = f32s(req(ins, 3)?, "input_scale")?;
        if in_scale.len() != 1 {
            return Err(err("input_scale must be a scalar"));
        }
        let w_scale = f32s(req(ins, 4)?, "weight_scale")?;
        let zi = zero_points(opt(ins, 6), x.is_u8(), "input_zero_point")?;
        let zw = zero_points(opt(ins, 7), w.is_u8(), "weight_zero_point")?;
        if zi.len() > 1 {
            return Err(err("input_zero_point must be a scalar"));
        }
        let pb = valid_pack(&packed, opt(ins, 7));
        let acc = matmul_integer(&x, &zi, &w, &zw, pb)?;
        let qkv = match scale_out(acc, total, in_scale[0], &w_scale, Some(&bias))? {
            Value::F32(y) => y,
            _ => return Err(err("projection did not give float")),
        };
        run_packed(
            &a,
            &qkv,
            [total / 3; 3],
            opt(ins, 5),
            opt(ins, 8),
            None,
            want_present,
        )
    })))
}

/// A `[B, N, L, H]` tensor as `[B, L, N·H]`.
fn bnsh_to_bsd(a: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let v = a.view().permuted_axes(IxDyn(&[0, 2, 1, 3]));
    let (b, l, n, h) = (v.shape()[0], v.shape()[1], v.shape()[2], v.shape()[3]);
    v.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[b, l, n * h]))
        .map_err(|e| err(e.to_string()))
}

fn build_mha(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let a = MsAttrs::parse(node)?;
    if wants_output(node, 3) || node.input(9).is_some() {
        return Err(Error::Unsupported(format!(
            "MultiHeadAttention's qk output and cache_indirection (node {})",
            node.display_name()
        )));
    }
    let want_present = wants_output(node, 1) || wants_output(node, 2);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let query = f32_array(req(ins, 0)?, "query")?;
        let key = opt(ins, 1).map(|k| f32_array(k, "key")).transpose()?;
        let value = opt(ins, 2).map(|v| f32_array(v, "value")).transpose()?;
        let bsnh_kv = key.as_ref().is_some_and(|k| k.ndim() == 4);
        let (mut q, mut k, mut v) = match (query.ndim(), key, value) {
            (3, Some(k), Some(v)) if k.ndim() == 3 && v.ndim() == 3 => (query, k, v),
            (3, Some(k), Some(v)) if k.ndim() == 4 && v.ndim() == 4 => {
                (query, bnsh_to_bsd(&k)?, bnsh_to_bsd(&v)?)
            }
            (r, k, v) => {
                return Err(err(format!(
                    "query (rank {r}), key {:?} and value {:?} are not a supported layout (packed QKV or KV are not)",
                    k.map(|k| k.shape().to_vec()),
                    v.map(|v| v.shape().to_vec())
                )));
            }
        };
        if q.shape()[0] != k.shape()[0] || k.shape()[..2] != v.shape()[..2] {
            return Err(err(format!(
                "query {:?}, key {:?} and value {:?} do not agree on batch and length",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        if let Some(b) = opt(ins, 3) {
            if bsnh_kv {
                return Err(err("bias with [B, N, L, H] key and value is not supported"));
            }
            let b = f32s(b, "bias")?;
            let (dq, dk, dv) = (q.shape()[2], k.shape()[2], v.shape()[2]);
            if b.len() != dq + dk + dv {
                return Err(err(format!(
                    "bias has {} values, expected {}",
                    b.len(),
                    dq + dk + dv
                )));
            }
            q += &ndarray::aview1(&b[..dq]);
            k += &ndarray::aview1(&b[dq..dq + dk]);
            v += &ndarray::aview1(&b[dq + dk..]);
        }
        let past = match (opt(ins, 6), opt(ins, 7)) {
            (None, None) => None,
            (Some(pk), Some(pv)) if !bsnh_kv => Some((
                Value::F32(f32_array(pk, "past_key")?),
                Value::F32(f32_array(pv, "past_value")?),
            )),
            _ => {
                return Err(err(
                    "past_key and past_value must be given together, and not with [B, N, L, H] key and value",
                ));
            }
        };
        let [y, pk, pv] = attend(&a, q, k, v, opt(ins, 4), past, opt(ins, 5))?;
        let mut outs = vec![y];
        if want_present {
            outs.push(pk);
            outs.push(pv);
        }
        Ok(outs)
    })))
}

/// GroupQueryAttention's attributes.
#[derive(Clone, Copy, Debug)]
struct Gqa {
    heads: usize,
    kv_heads: usize,
    scale: Option<f32>,
    softcap: f32,
    window: i64,
    smooth: bool,
}

/// `[B, S, heads·H]` (a column range of a packed `[B, S, W]`) as `[B, heads, S, H]` rows.
fn gqa_heads(
    x: &ArrayD<f32>,
    cols: std::ops::Range<usize>,
    heads: usize,
    h: usize,
) -> Result<Array4<f32>> {
    let (nb, sq) = (x.shape()[0], x.shape()[1]);
    let part = columns(x, nb, sq, cols)?;
    part.into_shape_with_order(IxDyn(&[nb, sq, heads, h]))
        .and_then(|a| a.into_dimensionality::<ndarray::Ix4>())
        .map(|a| {
            a.permuted_axes([0, 2, 1, 3])
                .as_standard_layout()
                .into_owned()
        })
        .map_err(|e| err(e.to_string()))
}

fn build_gqa(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let pos = |name: &str| -> Result<usize> {
        let v = node.attr_req::<i64>(name)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| err(format!("{name} must be positive, got {v}")))
    };
    let (heads, kv_heads) = (pos("num_heads")?, pos("kv_num_heads")?);
    if !heads.is_multiple_of(kv_heads) {
        return Err(err(format!(
            "num_heads {heads} is not a multiple of kv_num_heads {kv_heads}"
        )));
    }
    let refused = node.attr_or::<i64>("do_rotary", 0)? != 0
        || node.attr_or::<i64>("qk_output", 0)? != 0
        || wants_output(node, 3)
        || (7..=11).any(|i| node.input(i).is_some());
    if refused {
        return Err(Error::Unsupported(format!(
            "GroupQueryAttention with rotary embedding, position_ids, attention_bias, head_sink or the qk output (node {})",
            node.display_name()
        )));
    }
    let scale = node.attr_or::<f32>("scale", 0.0)?;
    let g = Gqa {
        heads,
        kv_heads,
        scale: (scale != 0.0).then_some(scale),
        softcap: node.attr_or::<f32>("softcap", 0.0)?,
        window: node.attr_or::<i64>("local_window_size", -1)?,
        smooth: node.attr_or::<i64>("smooth_softmax", 0)? != 0,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| gqa(&g, ins))))
}

fn gqa(g: &Gqa, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let query = input_3d(req(ins, 0)?)?;
    let (nb, sq, width) = (query.shape()[0], query.shape()[1], query.shape()[2]);
    let (q, k, v, h) = match (opt(ins, 1), opt(ins, 2)) {
        (None, None) => {
            let per_head = g.heads + 2 * g.kv_heads;
            if !width.is_multiple_of(per_head) {
                return Err(err(format!(
                    "packed query width {width} is not a multiple of {per_head} heads"
                )));
            }
            let h = width / per_head;
            let (qw, kw) = (g.heads * h, g.kv_heads * h);
            (
                gqa_heads(&query, 0..qw, g.heads, h)?,
                gqa_heads(&query, qw..qw + kw, g.kv_heads, h)?,
                gqa_heads(&query, qw + kw..qw + 2 * kw, g.kv_heads, h)?,
                h,
            )
        }
        (Some(k), Some(v)) => {
            let (k, v) = (input_3d(k)?, input_3d(v)?);
            if !width.is_multiple_of(g.heads) {
                return Err(err(format!(
                    "query width {width} is not a multiple of {} heads",
                    g.heads
                )));
            }
            let h = width / g.heads;
            let kw = g.kv_heads * h;
            if k.shape() != [nb, sq, kw] || v.shape() != [nb, sq, kw] {
                return Err(err(format!(
                    "key {:?} and value {:?} must be [B, S, kv_num_heads·H] = {:?}",
                    k.shape(),
                    v.shape(),
                    [nb, sq, kw]
                )));
            }
            (
                gqa_heads(&query, 0..width, g.heads, h)?,
                gqa_heads(&k, 0..kw, g.kv_heads, h)?,
                gqa_heads(&v, 0..kw, g.kv_heads, h)?,
                h,
            )
        }
        _ => return Err(err("key and value must be given together")),
    };
    let seqlens = ints(req(ins, 5)?, "seqlens_k")?;
    if seqlens.len() != nb {
        return Err(err(format!(
            "seqlens_k has {} values for batch size {nb}",
            seqlens.len()
        )));
    }
    let total = ints(req(ins, 6)?, "total_sequence_length")?;
    let &[total] = total.as_slice() else {
        return Err(err("total_sequence_length must be a scalar"));
    };
    let past = match (opt(ins, 3), opt(ins, 4)) {
        (None, None) => None,
        (Some(pk), Some(pv)) => {
            let (pk, pv) = (f32_array(pk, "past_key")?, f32_array(pv, "past_value")?);
            if pk.ndim() != 4
                || pk.shape() != pv.shape()
                || pk.shape()[..2] != [nb, g.kv_heads]
                || pk.shape()[3] != h
            {
                return Err(err(format!(
                    "past_key {:?} and past_value {:?} must be [B, kv_num_heads, P, H] = [{nb}, {}, P, {h}]",
                    pk.shape(),
                    pv.shape(),
                    g.kv_heads
                )));
            }
            Some((pk, pv))
        }
        _ => return Err(err("past_key and past_value must be given together")),
    };
    let past_buf = past.as_ref().map_or(0, |(pk, _)| pk.shape()[2]);
    let present_len = usize::try_from(total)
        .map_err(|_| err(format!("total_sequence_length {total} is negative")))?
        .max(past_buf);
    elem_count(&[nb, g.kv_heads, present_len, h])?;
    elem_count(&[nb, g.heads, sq, present_len])?;
    let first_prompt = total == sq as i64;
    // Per batch entry: the number of keys and the past length.
    let mut lens = Vec::with_capacity(nb);
    for &sk in &seqlens {
        let t = sk + 1;
        let p = if first_prompt { 0 } else { t - sq as i64 };
        if t < 1 || p < 0 || p as usize > past_buf || t as usize > present_len {
            return Err(err(format!(
                "seqlens_k value {sk} does not fit S={sq}, past {past_buf}, total_sequence_length {total}"
            )));
        }
        lens.push((t as usize, p as usize));
    }
    let mut present_k = Array4::<f32>::zeros((nb, g.kv_heads, present_len, h));
    let mut present_v = present_k.clone();
    for (b, &(_, p)) in lens.iter().enumerate() {
        let new_rows = sq.min(present_len - p);
        for (dst, (cur, old)) in [
            (&mut present_k, (&k, past.as_ref().map(|x| &x.0))),
            (&mut present_v, (&v, past.as_ref().map(|x| &x.1))),
        ] {
            if let Some(old) = old {
                let old = old
                    .view()
                    .into_dimensionality::<ndarray::Ix4>()
                    .map_err(|e| err(e.to_string()))?;
                dst.slice_mut(s![b, .., ..p, ..])
                    .assign(&old.slice(s![b, .., ..p, ..]));
            }
            dst.slice_mut(s![b, .., p..p + new_rows, ..])
                .assign(&cur.slice(s![b, .., ..new_rows, ..]));
        }
    }
    let scale = g.scale.unwrap_or(1.0 / (h as f32).sqrt());
    let group = g.heads / g.kv_heads;
    let mut y = Array4::<f32>::zeros((nb, sq, g.heads, h));
    let mut scores = Vec::with_capacity(present_len + 1);
    for (b, &(t, p)) in lens.iter().enumerate() {
        for hq in 0..g.heads {
            let keys = present_k.slice(s![b, hq / group, .., ..]);
            let vals = present_v.slice(s![b, hq / group, .., ..]);
            for i in 0..sq {
                let end = (p + i + 1).min(t);
                let start = if g.window > 0 {
                    (p + i + 1).saturating_sub(g.window as usize)
                } else {
                    0
                };
                let qrow = q.slice(s![b, hq, i, ..]);
                scores.clear();
                scores.extend((start..end).map(|j| {
                    let s = scale * qrow.dot(&keys.row(j));
                    if g.softcap > 0.0 {
                        g.softcap * (s / g.softcap).tanh()
                    } else {
                        s
                    }
                }));
                if g.smooth {
                    // A sink at score 0: one more term in the denominator.
                    scores.push(0.0);
                    super::attention::softmax_in_place(&mut scores);
                    scores.pop();
                } else {
                    super::attention::softmax_in_place(&mut scores);
                }
                let mut out = y.slice_mut(s![b, i, hq, ..]);
                for (j, &pj) in (start..end).zip(&scores) {
                    out.scaled_add(pj, &vals.row(j));
                }
            }
        }
    }
    let y = y
        .into_shape_with_order(IxDyn(&[nb, sq, g.heads * h]))
        .map_err(|e| err(e.to_string()))?;
    Ok(vec![
        Value::F32(y),
        Value::F32(present_k.into_dyn()),
        Value::F32(present_v.into_dyn()),
    ])
}
