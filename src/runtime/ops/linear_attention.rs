//! Recurrent linear attention, the default-domain `LinearAttention` op (27).
//!
//! Per batch entry and key/value head a state `S` `[d_k, d_v]` (from `past_state`
//! `[B, H_kv, d_k, d_v]`, else zeros) is updated token by token, by `update_rule`:
//! - "linear": `S = S + k ⊗ v`
//! - "gated": `S = exp(g) · S + k ⊗ v`
//! - "delta": `S = S + β · k ⊗ (v - Sᵀk)`
//! - "gated_delta" (the default): `S = exp(g) · S + β · k ⊗ (v - exp(g) · Sᵀk)`
//!
//! and each query head reads `o = scale · qᵀS` after its token's update. Query, key and value
//! are packed `[B, T, H·D]` and split with the required `q_num_heads` / `kv_num_heads`;
//! query head `h` shares the state of key/value head `h / (q_num_heads / kv_num_heads)`
//! (grouped-query attention). The decay `g` (log space; "gated" rules only) is `[B, T, H_kv]`
//! (one per head) or `[B, T, H_kv·d_k]` (one per key feature, scaling rows of `S`); the update
//! rate `β` (delta rules only) is `[B, T, H_kv]` or `[B, T, 1]`. `scale` 0 (the default)
//! means `1/sqrt(d_k)`. `chunk_size` is a tuning hint without effect on the result.
//!
//! Outputs: `output` `[B, T, H_q·d_v]` in the query's type and `present_state`, the final
//! states, in `past_state`'s type (the query's when there is no past state).
//!
//! Types: float16, float, double (bfloat16 is not stored by the runtime); the recurrence runs
//! in f32, as the reference implementation does.

use rayon::prelude::*;

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{cast, dname, err, from_vec, opt, req};
use super::{BuildCtx, FnOp, Op, Registry};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Linear,
    Gated,
    Delta,
    GatedDelta,
}

impl Rule {
    fn gated(self) -> bool {
        matches!(self, Rule::Gated | Rule::GatedDelta)
    }
    fn delta(self) -> bool {
        matches!(self, Rule::Delta | Rule::GatedDelta)
    }
}

#[derive(Clone, Copy, Debug)]
struct Attrs {
    /// 0 until the head size is known, then `1/sqrt(d_k)`.
    rule: Rule,
    q_heads: usize,
    kv_heads: usize,
    scale: f32,
}

/// A float value as row-major f32 with its shape.
fn f32_data(v: &Value, what: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let data = match v {
        Value::F32(a) => a.iter().copied().collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f32()).collect(),
        Value::F64(a) => a.iter().map(|&x| x as f32).collect(),
        _ => {
            return Err(err(format!(
                "{what} must be a float tensor, got {}",
                dname(v)
            )));
        }
    };
    Ok((v.shape().to_vec(), data))
}

/// A `[B, T, n·width]` operand, checked.
fn packed(v: &Value, what: &str, b: usize, t: usize, heads: usize) -> Result<(usize, Vec<f32>)> {
    let (shape, data) = f32_data(v, what)?;
    match shape[..] {
        [vb, vt, hidden] if vb == b && vt == t && heads > 0 && hidden % heads == 0 => {
            Ok((hidden / heads, data))
        }
        _ => Err(err(format!(
            "{what} {shape:?} must be [{b}, {t}, {heads} · head size]"
        ))),
    }
}

/// The checked operands, row-major f32, shared by every `(batch, kv head)`.
struct Inputs<'a> {
    a: Attrs,
    t: usize,
    dk: usize,
    dv: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    past: Option<&'a [f32]>,
    decay: Option<(usize, &'a [f32])>,
    beta: Option<(usize, &'a [f32])>,
}

impl Inputs<'_> {
    /// The recurrence of one `(batch, kv head)`: returns its final state and writes the
    /// outputs of its query heads into `out` (`[T, group, d_v]`).
    fn run(&self, b: usize, hk: usize, out: &mut [f32]) -> Vec<f32> {
        let Inputs { a, t, dk, dv, .. } = *self;
        let group = a.q_heads / a.kv_heads;
        let state_at = (b * a.kv_heads + hk) * dk * dv;
        let mut s = match self.past {
            Some(p) => p[state_at..state_at + dk * dv].to_vec(),
            None => vec![0f32; dk * dv],
        };
        let mut vt = vec![0f32; dv];
        for ti in 0..t {
            let tok = b * t + ti;
            let k = &self.k[(tok * a.kv_heads + hk) * dk..][..dk];
            let v = &self.v[(tok * a.kv_heads + hk) * dv..][..dv];
            if let Some((width, g)) = self.decay {
                // width is 1 (one decay per head) or d_k (one per state row).
                let g = &g[(tok * a.kv_heads + hk) * width..][..width];
                for (d, row) in s.chunks_exact_mut(dv).enumerate() {
                    let f = g[if width == 1 { 0 } else { d }].exp();
                    row.iter_mut().for_each(|x| *x *= f);
                }
            }
            vt.copy_from_slice(v);
            if let Some((width, beta)) = self.beta {
                let beta = beta[tok * width + if width == 1 { 0 } else { hk }];
                // v ← β (v - Sᵀk), with S already decayed.
                for (d, row) in s.chunks_exact(dv).enumerate() {
                    let kd = k[d];
                    vt.iter_mut().zip(row).for_each(|(x, &sv)| *x -= kd * sv);
                }
                vt.iter_mut().for_each(|x| *x *= beta);
            }
            for (d, row) in s.chunks_exact_mut(dv).enumerate() {
                let kd = k[d];
                row.iter_mut().zip(&vt).for_each(|(sv, &x)| *sv += kd * x);
            }
            for gi in 0..group {
                let h = hk * group + gi;
                let q = &self.q[(tok * a.q_heads + h) * dk..][..dk];
                let o = &mut out[(ti * group + gi) * dv..][..dv];
                o.fill(0.0);
                for (d, row) in s.chunks_exact(dv).enumerate() {
                    let qd = q[d] * a.scale;
                    o.iter_mut().zip(row).for_each(|(x, &sv)| *x += qd * sv);
                }
            }
        }
        s
    }
}

fn linear_attention(a: Attrs, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (qv, kv, vv) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
    let (b, t) = match qv.shape() {
        [b, t, _] => (*b, *t),
        s => return Err(err(format!("query must be [B, T, H·D], got {s:?}"))),
    };
    let (dk, q) = packed(qv, "query", b, t, a.q_heads)?;
    let (kdk, k) = packed(kv, "key", b, t, a.kv_heads)?;
    let (dv, v) = packed(vv, "value", b, t, a.kv_heads)?;
    if kdk != dk {
        return Err(err(format!(
            "key head size {kdk} differs from the query's {dk}"
        )));
    }
    let past = opt(ins, 3).map(|p| f32_data(p, "past_state")).transpose()?;
    if let Some((shape, _)) = &past
        && shape[..] != [b, a.kv_heads, dk, dv]
    {
        return Err(err(format!(
            "past_state {shape:?} must be [{b}, {}, {dk}, {dv}]",
            a.kv_heads
        )));
    }
    let (decay_in, beta_in) = (opt(ins, 4), opt(ins, 5));
    if a.rule.gated() != decay_in.is_some() {
        return Err(err(format!(
            "update_rule {:?} {} the decay input",
            a.rule,
            if a.rule.gated() { "needs" } else { "forbids" }
        )));
    }
    if a.rule.delta() != beta_in.is_some() {
        return Err(err(format!(
            "update_rule {:?} {} the beta input",
            a.rule,
            if a.rule.delta() { "needs" } else { "forbids" }
        )));
    }
    let side = |v: &Value, what: &str, widths: [usize; 2]| -> Result<(usize, Vec<f32>)> {
        let (shape, data) = f32_data(v, what)?;
        match shape[..] {
            [vb, vt, last] if vb == b && vt == t && widths.contains(&last) => Ok((last, data)),
            _ => Err(err(format!(
                "{what} {shape:?} must be [{b}, {t}, n] with n one of {widths:?}"
            ))),
        }
    };
    // Decay per head or per key feature; the row width the recurrence reads is 1 or d_k.
    let decay = decay_in
        .map(|d| side(d, "decay", [a.kv_heads, a.kv_heads * dk]))
        .transpose()?
        .map(|(last, data)| (if last == a.kv_heads { 1 } else { dk }, data));
    let beta = beta_in
        .map(|d| side(d, "beta", [a.kv_heads, 1]))
        .transpose()?
        .map(|(last, data)| {
            (
                if last == a.kv_heads && last != 1 {
                    a.kv_heads
                } else {
                    1
                },
                data,
            )
        });
    let scale = if a.scale == 0.0 {
        1.0 / (dk as f32).sqrt()
    } else {
        a.scale
    };
    let inputs = Inputs {
        a: Attrs { scale, ..a },
        t,
        dk,
        dv,
        q: &q,
        k: &k,
        v: &v,
        past: past.as_ref().map(|(_, d)| d.as_slice()),
        decay: decay.as_ref().map(|(w, d)| (*w, d.as_slice())),
        beta: beta.as_ref().map(|(w, d)| (*w, d.as_slice())),
    };
    let group = a.q_heads / a.kv_heads;
    let per_head_out = t * group * dv;
    let mut head_out = vec![0f32; b * a.kv_heads * per_head_out];
    let states: Vec<Vec<f32>> = if per_head_out > 0 {
        head_out
            .par_chunks_mut(per_head_out)
            .enumerate()
            .map(|(i, out)| inputs.run(i / a.kv_heads, i % a.kv_heads, out))
            .collect()
    } else {
        (0..b * a.kv_heads)
            .map(|i| inputs.run(i / a.kv_heads, i % a.kv_heads, &mut []))
            .collect()
    };
    // [B, H_kv, T, group, d_v] → [B, T, H_kv, group, d_v] = [B, T, H_q·d_v].
    let mut y = Vec::with_capacity(head_out.len());
    for bi in 0..b {
        for ti in 0..t {
            for hk in 0..a.kv_heads {
                let at = (bi * a.kv_heads + hk) * per_head_out + ti * group * dv;
                y.extend_from_slice(&head_out[at..at + group * dv]);
            }
        }
    }
    let state_dt = opt(ins, 3).map_or(qv.dtype(), |p| p.dtype());
    let to = |shape: &[usize], data: Vec<f32>, dt: DataType| -> Result<Value> {
        cast(&Value::F32(from_vec(shape, data)?), dt)
    };
    Ok(vec![
        to(&[b, t, a.q_heads * dv], y, qv.dtype())?,
        to(&[b, a.kv_heads, dk, dv], states.concat(), state_dt)?,
    ])
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let rule = match node
        .attr::<String>("update_rule")?
        .as_deref()
        .unwrap_or("gated_delta")
    {
        "linear" => Rule::Linear,
        "gated" => Rule::Gated,
        "delta" => Rule::Delta,
        "gated_delta" => Rule::GatedDelta,
        other => {
            return Err(node.error(format!(
                "update_rule must be linear, gated, delta or gated_delta, got {other:?}"
            )));
        }
    };
    let heads = |name: &str| -> Result<usize> {
        match node.attr::<i64>(name)? {
            Some(h) if h > 0 => Ok(h as usize),
            Some(h) => Err(node.error(format!("{name} must be positive, got {h}"))),
            None => Err(node.error(format!("{name} is required"))),
        }
    };
    let (q_heads, kv_heads) = (heads("q_num_heads")?, heads("kv_num_heads")?);
    if q_heads % kv_heads != 0 {
        return Err(node.error(format!(
            "q_num_heads {q_heads} is not a multiple of kv_num_heads {kv_heads}"
        )));
    }
    let scale = node.attr_or::<f32>("scale", 0.0)?;
    let attrs = Attrs {
        rule,
        q_heads,
        kv_heads,
        scale,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        linear_attention(attrs, ins)
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "LinearAttention", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use ndarray::ArrayD;

    fn f32v(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(shape.to_vec(), v).unwrap())
    }

    #[test]
    fn linear_rule_accumulates_outer_products() {
        // B=1, T=2, one head, d_k = d_v = 1, scale 1: o_t = q_t · Σ_{s<=t} k_s v_s.
        let a = Attrs {
            rule: Rule::Linear,
            q_heads: 1,
            kv_heads: 1,
            scale: 1.0,
        };
        let q = f32v(&[1, 2, 1], vec![1.0, 2.0]);
        let k = f32v(&[1, 2, 1], vec![3.0, 4.0]);
        let v = f32v(&[1, 2, 1], vec![5.0, 6.0]);
        let out = linear_attention(a, &[Some(&q), Some(&k), Some(&v)]).unwrap();
        let y: Vec<f32> = out[0].as_f32().unwrap().iter().copied().collect();
        assert_eq!(y, vec![15.0, 2.0 * (15.0 + 24.0)]);
        let s: Vec<f32> = out[1].as_f32().unwrap().iter().copied().collect();
        assert_eq!(s, vec![39.0]);
        // A decay input under the linear rule is refused.
        let g = f32v(&[1, 2, 1], vec![0.0, 0.0]);
        let ins = [Some(&q), Some(&k), Some(&v), None, Some(&g)];
        assert!(linear_attention(a, &ins).is_err());
    }

    #[test]
    fn f16_state_keeps_its_type() {
        let a = Attrs {
            rule: Rule::Linear,
            q_heads: 1,
            kv_heads: 1,
            scale: 1.0,
        };
        let one = f32v(&[1, 1, 1], vec![1.0]);
        let past = Value::F16(ArrayD::from_elem(vec![1, 1, 1, 1], f16::from_f32(2.0)));
        let out = linear_attention(a, &[Some(&one), Some(&one), Some(&one), Some(&past)]).unwrap();
        assert_eq!(out[1].dtype(), DataType::Float16);
        assert_eq!(out[0].as_f32().unwrap().iter().next(), Some(&3.0));
    }
}
