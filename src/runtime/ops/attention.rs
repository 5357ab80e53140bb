//! Scaled dot-product attention: the default-domain `Attention` op and
//! `ai.onnx.preview.FlexAttention`.
//!
//! `Attention` (23, 24, 25): `Y = softmax(softcap(scale · Q·Kᵀ) + bias) · V` per batch and
//! head.
//! - Q is `[B, Hq, Sq, D]`, K `[B, Hkv, Skv, D]`, V `[B, Hkv, Skv, Dv]`; or all three 3-D
//!   `[B, S, H·D]` with `q_num_heads` / `kv_num_heads` giving the head counts (Y is then
//!   `[B, Sq, Hq·Dv]`). With `Hq` a multiple of `Hkv` (grouped-query / multi-query
//!   attention) query head `h` reads key/value head `h / (Hq / Hkv)`.
//! - `scale` defaults to `1/sqrt(D)`; `softcap` > 0 maps the scores through
//!   `softcap · tanh(s / softcap)` before the bias is added.
//! - The bias: `attn_mask` (bool: false → -inf; any other type is added as a number)
//!   broadcasts to `[B, Hq, Sq, T]`, where `T` is the total key length, and a mask shorter
//!   than `T` on its last axis is padded with -inf. `is_causal` lets query `i` see key `j`
//!   only when `j <= i + offset`; opset 25's `left_window_size` / `right_window_size` (-1 =
//!   unbounded) keep `offset + i - left <= j <= offset + i + right`. `offset` is the past
//!   length with `past_key`, `nonpad_kv_seqlen[b] - Sq` with only `nonpad_kv_seqlen` (24), else
//!   0; `nonpad_kv_seqlen` also masks keys `j >= nonpad_kv_seqlen[b]`.
//! - A query row whose bias is -inf everywhere (no key visible) gives zero probabilities and a
//!   zero output row (decided on the bias, so NaN or infinite scores do not leak in).
//! - `past_key` / `past_value` `[B, Hkv, P, ..]` are prepended to K / V along the sequence
//!   axis; `present_key` / `present_value` outputs are the concatenations.
//! - The optional 4th output `qk_matmul_output` `[B, Hq, Sq, T]` holds, by
//!   `qk_matmul_output_mode`: 0 the scaled scores, 1 after softcap, 2 after the bias, 3 the
//!   softmax probabilities. As in the reference implementation, modes 0 and 1 both give the
//!   softcapped scores (they coincide without softcap).
//!
//! Types: Q, K, V, past and mask float16/float/double (bfloat16 is not stored by the runtime);
//! integer and bool masks. Computation is in f32 (`softmax_precision` is accepted; f32 is
//! at least the precision of every type the runtime stores but double) and results round to
//! Q's type (Y, present_key, qk_matmul_output) and V's type (present_value).
//!
//! Both products per head, `Q·Kᵀ` and `P·V`, run on the blocked GEMM kernel on strided views
//! (the 3-D layout and the key transpose are strides, never copies); heads run in parallel
//! when the work is large enough to pay for it.
//!
//! `FlexAttention` (ai.onnx.preview 1): rank-4 Q `[B, Hq, Sq, D]`, K `[B, Hkv, Skv, D]`,
//! V `[B, Hkv, Skv, Dv]` with the same grouped-query head mapping;
//! `Y = prob_mod(softmax(score_mod(scale · Q·Kᵀ))) · V` where the optional `score_mod` and
//! `prob_mod` graph attributes map the whole `[B, Hq, Sq, Skv]` tensor to one of the same
//! shape and type. `scale` defaults to `1/sqrt(D)`. The scores have the `softmax_precision`
//! type: double for double inputs, else float (float16 inputs are widened); Y has Q's type.

use std::borrow::Cow;

use half::f16;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayView4, ArrayViewMut2, Axis, Ix4, IxDyn, s};
use num_traits::Float;
use rayon::prelude::*;

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_f32::{GemmElem, gemm};

use super::control_flow::Body;
use super::util::{Elem, cast, dname, err, from_vec, ints, is_float, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry, Scope};

/// Below this many multiply-adds in all (both products, every head) the heads run on the
/// calling thread: splitting small attention costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// The node's attributes, checked.
#[derive(Clone, Copy, Debug)]
pub(super) struct Attrs {
    is_causal: bool,
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    scale: Option<f32>,
    softcap: f32,
    qk_mode: i64,
    left_window: i64,
    right_window: i64,
}

impl Attrs {
    /// Plain scaled dot-product attention of 3-D Q, K and V with `heads` query and key/value
    /// heads and this scale: no causal mask, window or softcap. The com.microsoft attention
    /// ops (attention_ms.rs) reduce to it once their masks are an additive bias.
    pub(super) fn plain(heads: usize, scale: f32) -> Attrs {
        Attrs {
            is_causal: false,
            q_heads: Some(heads),
            kv_heads: Some(heads),
            scale: Some(scale),
            softcap: 0.0,
            qk_mode: 0,
            left_window: -1,
            right_window: -1,
        }
    }

    fn parse(node: &Node) -> Result<Attrs> {
        let heads = |name: &str| -> Result<Option<usize>> {
            match node.attr::<i64>(name)? {
                None => Ok(None),
                Some(h) if h > 0 => Ok(Some(h as usize)),
                Some(h) => Err(err(format!("{name} must be positive, got {h}"))),
            }
        };
        let qk_mode = node.attr_or::<i64>("qk_matmul_output_mode", 0)?;
        if !(0..=3).contains(&qk_mode) {
            return Err(err(format!(
                "qk_matmul_output_mode must be 0..3, got {qk_mode}"
            )));
        }
        if let Some(p) = node.attr::<i64>("softmax_precision")? {
            // FLOAT, FLOAT16, DOUBLE, BFLOAT16.
            if ![1, 10, 11, 16].contains(&p) {
                return Err(err(format!("unsupported softmax_precision {p}")));
            }
        }
        let window = |name: &str| -> Result<i64> {
            let w = node.attr_or::<i64>(name, -1)?;
            if w < -1 {
                return Err(err(format!("{name} must be -1 or nonnegative, got {w}")));
            }
            Ok(w)
        };
        Ok(Attrs {
            is_causal: node.attr_or::<i64>("is_causal", 0)? != 0,
            q_heads: heads("q_num_heads")?,
            kv_heads: heads("kv_num_heads")?,
            scale: node.attr::<f32>("scale")?,
            softcap: node.attr_or::<f32>("softcap", 0.0)?,
            qk_mode,
            left_window: window("left_window_size")?,
            right_window: window("right_window_size")?,
        })
    }
}

/// A float operand as f32 (borrowed when it already is).
fn as_f32<'a>(v: &'a Value, what: &str) -> Result<Cow<'a, ArrayD<f32>>> {
    match v {
        Value::F32(a) => Ok(Cow::Borrowed(a)),
        Value::F16(a) => Ok(Cow::Owned(a.mapv(f16::to_f32))),
        Value::BF16(a) => Ok(Cow::Owned(a.mapv(half::bf16::to_f32))),
        Value::F64(a) => Ok(Cow::Owned(a.mapv(|x| x as f32))),
        _ => Err(err(format!(
            "{what} must be a float tensor, got {}",
            dname(v)
        ))),
    }
}

/// Q, K or V as a `[B, H, S, D]` view: 4-D as given, 3-D `[B, S, H·D]` split into heads
/// and transposed by strides.
fn heads_view<'a>(
    a: &'a ArrayD<f32>,
    heads: Option<usize>,
    what: &str,
) -> Result<ArrayView4<'a, f32>> {
    match a.ndim() {
        4 => a
            .view()
            .into_dimensionality::<Ix4>()
            .map_err(|e| err(e.to_string())),
        3 => {
            let h = heads.ok_or_else(|| {
                err(format!(
                    "3-D {what} needs the q_num_heads and kv_num_heads attributes"
                ))
            })?;
            let (b, s, hidden) = (a.shape()[0], a.shape()[1], a.shape()[2]);
            if hidden % h != 0 {
                return Err(err(format!(
                    "{what} hidden size {hidden} is not a multiple of {h} heads"
                )));
            }
            let v = a
                .view()
                .into_shape_with_order(IxDyn(&[b, s, h, hidden / h]))
                .map_err(|e| err(e.to_string()))?
                .into_dimensionality::<Ix4>()
                .map_err(|e| err(e.to_string()))?;
            Ok(v.permuted_axes([0, 2, 1, 3]))
        }
        r => Err(err(format!("{what} must be 3-D or 4-D, got rank {r}"))),
    }
}

/// `past ++ cur` along the sequence axis (2), checking the other dims agree.
fn concat_past(
    past: Option<&ArrayD<f32>>,
    cur: ArrayView4<f32>,
    what: &str,
) -> Result<Option<ndarray::Array4<f32>>> {
    let Some(past) = past else {
        return Ok(None);
    };
    let p = past
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| err(format!("past_{what} must be 4-D, got {:?}", past.shape())))?;
    let (pd, cd) = (p.dim(), cur.dim());
    if (pd.0, pd.1, pd.3) != (cd.0, cd.1, cd.3) {
        return Err(err(format!(
            "past_{what} {:?} does not match {what} {:?} outside the sequence axis",
            p.shape(),
            cur.shape()
        )));
    }
    ndarray::concatenate(Axis(2), &[p, cur])
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// The additive mask as an f32 `[B?, H?, Sq?, L]` array padded to rank 4 with leading 1s.
fn mask_f32(m: &Value) -> Result<ndarray::Array4<f32>> {
    let a: ArrayD<f32> = match m {
        Value::Bool(b) => b.mapv(|x| if x { 0.0 } else { f32::NEG_INFINITY }),
        other => match cast(other, DataType::Float)? {
            Value::F32(a) => a,
            _ => return Err(err("attn_mask cast to f32 failed")),
        },
    };
    if a.ndim() == 0 || a.ndim() > 4 {
        return Err(err(format!(
            "attn_mask must have rank 1 to 4, got {:?}",
            a.shape()
        )));
    }
    let mut shape = vec![1; 4 - a.ndim()];
    shape.extend_from_slice(a.shape());
    a.into_shape_with_order(IxDyn(&shape))
        .and_then(|a| a.into_dimensionality::<Ix4>())
        .map_err(|e| err(e.to_string()))
}

/// What one head of one batch entry produces.
struct HeadOut {
    y: Array2<f32>,
    qk: Option<Vec<f32>>,
}

/// Everything the per-head computation reads, shared by all heads.
struct Problem<'a> {
    attrs: Attrs,
    q: ArrayView4<'a, f32>,
    k: ArrayView4<'a, f32>,
    v: ArrayView4<'a, f32>,
    /// Mask broadcast to `[B, Hq, Sq, L]`, `L <= T`.
    mask: Option<ArrayView4<'a, f32>>,
    /// Per batch entry: the causal / window offset and the number of valid keys.
    offsets: Vec<i64>,
    valid: Vec<usize>,
    scale: f32,
    want_qk: bool,
}

impl Problem<'_> {
    /// The bias row of query `i` for head `(b, h)`, into `row` (length T).
    fn bias_row(&self, b: usize, h: usize, i: usize, row: &mut [f32]) {
        let a = &self.attrs;
        let pos = self.offsets[b] + i as i64;
        let mask_row = self.mask.as_ref().map(|m| m.slice(s![b, h, i, ..]));
        for (j, out) in row.iter_mut().enumerate() {
            let mut v = match &mask_row {
                Some(m) => m.get(j).copied().unwrap_or(f32::NEG_INFINITY),
                None => 0.0,
            };
            let jj = j as i64;
            let hidden = (a.is_causal && jj > pos)
                || (a.left_window >= 0 && pos - jj > a.left_window)
                || (a.right_window >= 0 && jj - pos > a.right_window)
                || j >= self.valid[b];
            if hidden {
                v = f32::NEG_INFINITY;
            }
            *out = v;
        }
    }

    fn head(&self, b: usize, h: usize) -> Result<HeadOut> {
        let a = &self.attrs;
        let group = self.q.dim().1 / self.k.dim().1;
        let hk = h / group;
        let q2: ArrayView2<f32> = self.q.slice(s![b, h, .., ..]);
        let k2 = self.k.slice(s![b, hk, .., ..]);
        let v2 = self.v.slice(s![b, hk, .., ..]);
        let (sq, t) = (q2.nrows(), k2.nrows());
        let mut scores = vec![0f32; sq * t];
        let mut sv =
            ArrayViewMut2::from_shape((sq, t), &mut scores).map_err(|e| err(e.to_string()))?;
        gemm(self.scale, &q2, &k2.t(), 0.0, &mut sv);
        if a.softcap > 0.0 {
            let c = a.softcap;
            scores.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
        }
        let mut qk = match (self.want_qk, a.qk_mode) {
            (false, _) => None,
            (true, 0 | 1) => Some(scores.clone()),
            (true, _) => Some(vec![0f32; sq * t]),
        };
        let mut bias = vec![0f32; t];
        if t > 0 {
            for (i, row) in scores.chunks_exact_mut(t).enumerate() {
                self.bias_row(b, h, i, &mut bias);
                for (s, &bv) in row.iter_mut().zip(&bias) {
                    *s += bv;
                }
                if let (Some(q), 2) = (&mut qk, a.qk_mode) {
                    q[i * t..(i + 1) * t].copy_from_slice(row);
                }
                if bias.iter().all(|&x| x == f32::NEG_INFINITY) {
                    // No visible key: zero probabilities, whatever the scores were.
                    row.fill(0.0);
                } else {
                    softmax_in_place(row);
                }
            }
        }
        if let (Some(q), 3) = (&mut qk, a.qk_mode) {
            q.copy_from_slice(&scores);
        }
        let p = ArrayView2::from_shape((sq, t), &scores).map_err(|e| err(e.to_string()))?;
        let mut y = Array2::<f32>::zeros((sq, v2.ncols()));
        gemm(1.0, &p, &v2, 0.0, &mut y.view_mut());
        Ok(HeadOut { y, qk })
    }
}

/// Softmax of one row; a row whose largest entry is -inf (or NaN) softmaxes to zeros, not NaN.
pub(super) fn softmax_in_place<T: Float>(row: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let max = if max == T::neg_infinity() {
        T::zero()
    } else {
        max
    };
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum = sum + *x;
    }
    let inv = if sum == T::zero() {
        T::one()
    } else {
        T::one() / sum
    };
    for x in row.iter_mut() {
        *x = *x * inv;
    }
}

fn to_dtype(a: ArrayD<f32>, dt: DataType) -> Result<Value> {
    cast(&Value::F32(a), dt)
}

/// Runs the op on its inputs; returns `[Y, present_key, present_value, qk_matmul_output]`
/// (the last only when `want_qk`).
pub(super) fn attention(attrs: Attrs, ins: &[Option<&Value>], want_qk: bool) -> Result<Vec<Value>> {
    let (qv, kv, vv) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
    let (q32, k32, v32) = (as_f32(qv, "Q")?, as_f32(kv, "K")?, as_f32(vv, "V")?);
    let rank = q32.ndim();
    if k32.ndim() != rank || v32.ndim() != rank {
        return Err(err(format!(
            "Q, K and V must have the same rank, got {:?}, {:?}, {:?}",
            q32.shape(),
            k32.shape(),
            v32.shape()
        )));
    }
    let q = heads_view(&q32, attrs.q_heads, "Q")?;
    let k_cur = heads_view(&k32, attrs.kv_heads, "K")?;
    let v_cur = heads_view(&v32, attrs.kv_heads, "V")?;
    let (past_k, past_v) = (opt(ins, 4), opt(ins, 5));
    if past_k.is_some() != past_v.is_some() {
        return Err(err("past_key and past_value must be given together"));
    }
    let past_k32 = past_k.map(|p| as_f32(p, "past_key")).transpose()?;
    let past_v32 = past_v.map(|p| as_f32(p, "past_value")).transpose()?;
    let k_cat = concat_past(past_k32.as_deref(), k_cur, "key")?;
    let v_cat = concat_past(past_v32.as_deref(), v_cur, "value")?;
    let k = k_cat.as_ref().map_or(k_cur, |a| a.view());
    let v = v_cat.as_ref().map_or(v_cur, |a| a.view());

    let (nb, hq, sq, d) = q.dim();
    let (kb, hkv, t, kd) = k.dim();
    let (vb, vh, vt, dv) = v.dim();
    if kb != nb || vb != nb || vh != hkv || vt != t || kd != d {
        return Err(err(format!(
            "Q {:?}, K {:?} and V {:?} (as [batch, heads, seq, head size]) do not agree",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(err(format!(
            "{hq} query heads are not a multiple of {hkv} key/value heads"
        )));
    }

    let nonpad = opt(ins, 6)
        .map(|n| ints(n, "nonpad_kv_seqlen"))
        .transpose()?;
    if let Some(n) = &nonpad {
        if n.len() != nb {
            return Err(err(format!(
                "nonpad_kv_seqlen has {} entries, expected batch size {nb}",
                n.len()
            )));
        }
        if past_k.is_some() {
            return Err(err("nonpad_kv_seqlen cannot be combined with past_key"));
        }
    }
    let past_len = past_k32.as_ref().map_or(0, |p| p.shape()[2]) as i64;
    let offsets: Vec<i64> = match &nonpad {
        Some(n) => n.iter().map(|&x| x - sq as i64).collect(),
        None => vec![past_len; nb],
    };
    let valid: Vec<usize> = match &nonpad {
        Some(n) => n.iter().map(|&x| x.clamp(0, t as i64) as usize).collect(),
        None => vec![t; nb],
    };

    let mask4 = opt(ins, 3).map(mask_f32).transpose()?;
    let mask = match &mask4 {
        Some(m) => {
            let l = m.dim().3;
            if l > t {
                return Err(err(format!(
                    "attn_mask's last dim {l} exceeds the total key length {t}"
                )));
            }
            Some(m.broadcast((nb, hq, sq, l)).ok_or_else(|| {
                err(format!(
                    "attn_mask {:?} does not broadcast to {:?}",
                    m.shape(),
                    [nb, hq, sq, l]
                ))
            })?)
        }
        None => None,
    };

    let scale = attrs.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let problem = Problem {
        attrs,
        q,
        k,
        v,
        mask,
        offsets,
        valid,
        scale,
        want_qk,
    };
    let run = |idx: usize| problem.head(idx / hq, idx % hq);
    let work = nb * hq * sq * t * (d + dv);
    let heads: Vec<HeadOut> = if work >= PARALLEL_MIN_WORK && rayon::current_num_threads() > 1 {
        (0..nb * hq)
            .into_par_iter()
            .map(run)
            .collect::<Result<_>>()?
    } else {
        (0..nb * hq).map(run).collect::<Result<_>>()?
    };

    let mut y = Vec::with_capacity(nb * hq * sq * dv);
    let y_shape = if rank == 3 {
        for b in 0..nb {
            for i in 0..sq {
                for h in 0..hq {
                    y.extend(heads[b * hq + h].y.row(i).iter());
                }
            }
        }
        vec![nb, sq, hq * dv]
    } else {
        for head in &heads {
            y.extend(head.y.iter());
        }
        vec![nb, hq, sq, dv]
    };
    let mut outs = vec![to_dtype(from_vec(&y_shape, y)?, qv.dtype())?];
    outs.push(to_dtype(
        k_cat.unwrap_or_else(|| k_cur.to_owned()).into_dyn(),
        kv.dtype(),
    )?);
    outs.push(to_dtype(
        v_cat.unwrap_or_else(|| v_cur.to_owned()).into_dyn(),
        vv.dtype(),
    )?);
    if want_qk {
        let mut qk = Vec::with_capacity(nb * hq * sq * t);
        for head in &heads {
            match &head.qk {
                Some(a) => qk.extend(a.iter()),
                None => return Err(err("qk_matmul_output was not computed")),
            }
        }
        outs.push(to_dtype(from_vec(&[nb, hq, sq, t], qk)?, qv.dtype())?);
    }
    Ok(outs)
}

fn attention_op(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let attrs = Attrs::parse(node)?;
    let want_qk = node.outputs().get(3).is_some_and(|n| !n.is_empty());
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        attention(attrs, ins, want_qk)
    })))
}

/// A float operand in the computation type `T` (borrowed when it already is).
fn as_float<'a, T: Elem>(v: &'a Value, what: &str) -> Result<Cow<'a, ArrayD<T>>> {
    if let Some(a) = T::unwrap(v) {
        return Ok(Cow::Borrowed(a));
    }
    if !is_float(v.dtype()) {
        return Err(err(format!(
            "{what} must be a float tensor, got {}",
            dname(v)
        )));
    }
    let c = cast(v, T::DT)?;
    T::unwrap(&c)
        .cloned()
        .map(Cow::Owned)
        .ok_or_else(|| err(format!("{what} did not convert to {:?}", T::DT)))
}

/// Runs a modifier graph on the `[B, Hq, Sq, Skv]` tensor `data`, checking that it keeps
/// the shape and type.
fn modify<T: Elem>(
    body: &Body,
    what: &str,
    ins: &[Option<&Value>],
    shape: &[usize],
    data: Vec<T>,
) -> Result<Vec<T>> {
    let out = body.run(ins, vec![T::wrap(from_vec(shape, data)?)])?;
    let v = out
        .first()
        .ok_or_else(|| err(format!("{what} returned no output")))?;
    match T::unwrap(v) {
        Some(a) if a.shape() == shape => Ok(standard(a.view()).into_raw_vec_and_offset().0),
        _ => Err(err(format!(
            "{what} must return {} {shape:?}, got {} {:?}",
            crate::ir::tensor::dtype_name(T::DT as i32),
            dname(v),
            v.shape()
        ))),
    }
}

/// FlexAttention's modifier graphs and scale.
struct FlexOp {
    scale: Option<f64>,
    precision: Option<DataType>,
    score_mod: Option<Body>,
    prob_mod: Option<Body>,
}

impl FlexOp {
    fn run_t<T: Elem + GemmElem + Float>(&self, ins: &[Option<&Value>]) -> Result<Value> {
        let (qv, kv, vv) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        let (qc, kc, vc) = (
            as_float::<T>(qv, "Q")?,
            as_float::<T>(kv, "K")?,
            as_float::<T>(vv, "V")?,
        );
        fn rank4<'a, T>(a: &'a ArrayD<T>, what: &str) -> Result<ArrayView4<'a, T>> {
            a.view()
                .into_dimensionality::<Ix4>()
                .map_err(|_| err(format!("{what} must be 4-D, got {:?}", a.shape())))
        }
        let (q, k, v) = (rank4(&qc, "Q")?, rank4(&kc, "K")?, rank4(&vc, "V")?);
        let (nb, hq, sq, d) = q.dim();
        let (kb, hkv, skv, kd) = k.dim();
        let (vb, vh, vs, dv) = v.dim();
        if kb != nb || vb != nb || vh != hkv || vs != skv || kd != d {
            return Err(err(format!(
                "Q {:?}, K {:?} and V {:?} do not agree as [batch, heads, seq, head size]",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(err(format!(
                "{hq} query heads are not a multiple of {hkv} key/value heads"
            )));
        }
        let group = hq / hkv;
        let scale = T::from_f64(self.scale.unwrap_or(1.0 / (d as f64).sqrt()));
        let shape = [nb, hq, sq, skv];
        let per_head = sq * skv;
        let mut scores = vec![T::zero(); nb * hq * per_head];
        if per_head > 0 {
            for (i, chunk) in scores.chunks_exact_mut(per_head).enumerate() {
                let (b, h) = (i / hq, i % hq);
                let mut out =
                    ArrayViewMut2::from_shape((sq, skv), chunk).map_err(|e| err(e.to_string()))?;
                let k2 = k.slice(s![b, h / group, .., ..]);
                gemm(
                    scale,
                    &q.slice(s![b, h, .., ..]),
                    &k2.t(),
                    T::zero(),
                    &mut out,
                );
            }
        }
        if let Some(m) = &self.score_mod {
            scores = modify(m, "score_mod", ins, &shape, scores)?;
        }
        if skv > 0 {
            scores.chunks_exact_mut(skv).for_each(softmax_in_place);
        }
        if let Some(m) = &self.prob_mod {
            scores = modify(m, "prob_mod", ins, &shape, scores)?;
        }
        let mut y = ndarray::Array4::<T>::zeros((nb, hq, sq, dv));
        if per_head > 0 {
            for (i, chunk) in scores.chunks_exact(per_head).enumerate() {
                let (b, h) = (i / hq, i % hq);
                let p = ArrayView2::from_shape((sq, skv), chunk).map_err(|e| err(e.to_string()))?;
                let v2 = v.slice(s![b, h / group, .., ..]);
                gemm(
                    T::one(),
                    &p,
                    &v2,
                    T::zero(),
                    &mut y.slice_mut(s![b, h, .., ..]),
                );
            }
        }
        cast(&T::wrap(y.into_dyn()), qv.dtype())
    }
}

impl Op for FlexOp {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let q = req(ins, 0)?;
        let precision = self.precision.unwrap_or(if q.dtype() == DataType::Double {
            DataType::Double
        } else {
            DataType::Float
        });
        let y = match precision {
            DataType::Double => self.run_t::<f64>(ins)?,
            _ => self.run_t::<f32>(ins)?,
        };
        Ok(vec![y])
    }
}

fn flex_attention_op(node: &Node, _: &BuildCtx, scope: &Scope) -> Result<Box<dyn Op>> {
    let precision = match node.attr::<i64>("softmax_precision")? {
        None => None,
        Some(1) => Some(DataType::Float),
        Some(11) => Some(DataType::Double),
        // float16 / bfloat16 scores are computed in float, which is at least as precise.
        Some(10 | 16) => Some(DataType::Float),
        Some(p) => return Err(node.error(format!("unsupported softmax_precision {p}"))),
    };
    let first_outer = node.inputs().len();
    let body = |attr: &str| -> Result<Option<Body>> {
        match node.subgraph(attr) {
            Some(_) => Body::new(node, attr, scope, first_outer).map(Some),
            None => Ok(None),
        }
    };
    Ok(Box::new(FlexOp {
        scale: node.attr::<f32>("scale")?.map(f64::from),
        precision,
        score_mod: body("score_mod")?,
        prob_mod: body("prob_mod")?,
    }))
}

pub fn register(r: &mut Registry) {
    r.register("", "Attention", attention_op);
    r.register_scoped("ai.onnx.preview", "FlexAttention", flex_attention_op);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_a_fully_masked_row_is_zero() {
        let mut row = [f32::NEG_INFINITY; 3];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.0; 3]);
        let mut row = [0.0f32, f32::NEG_INFINITY, 0.0];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.5, 0.0, 0.5]);
    }
}
