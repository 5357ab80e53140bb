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
//!   onnxruntime's CPU kernel refuses them. `bias` `[D+D+Dv]` is added to the 3-D Q, K and V. `key_padding_mask` takes `mask_index`'s forms; past and present keys and
//!   values are `[B, N, P, H]` and `[B, N, P+L, H]`; the optional fourth output (the scores)
//!   and `cache_indirection` (beam search) are refused.
//!
//! The heads run on the default-domain `Attention` implementation (attention.rs) with the mask
//! and bias folded into one additive bias.

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
    if hq % n != 0 || k.shape()[2] != hq || v.shape()[2] % n != 0 {
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
            None if total % 3 == 0 => [total / 3; 3],
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
        if total % 3 != 0 {
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
