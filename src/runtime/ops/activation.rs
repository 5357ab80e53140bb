//! Activations, on floats (f16 computed in f32 and rounded back).
//!
//! - `Relu` (also signed integers, opset 14), `LeakyRelu` (`alpha` 0.01), `Sigmoid`,
//!   `HardSigmoid` (`max(0, min(1, alpha·x + beta))`, 0.2 / 0.5), `Tanh`, `Erf`,
//!   `Gelu` (20; `approximate` "none": `x·Φ(x)` via erf, "tanh": the tanh form).
//!   f32 `Sigmoid`, `Tanh` and `Erf` are onnxruntime's MLAS approximations, vectorized
//!   ([`crate::runtime::kernels::activation`]: within 2e-7 / 3e-7 / 6e-8 absolute of the
//!   exact functions, bit-identical to onnxruntime); f64 and f16 use the exact formulas.
//! - `Softmax`, `LogSoftmax`: before opset 13 the input is viewed as 2-D
//!   `[prod(shape[..axis]), prod(shape[axis..])]` (default axis 1) and normalized per row; from
//!   13 along one axis (default -1). Max-subtracted, so large inputs do not overflow.
//! - `Clip`: `min`/`max` attributes before opset 11, optional inputs from 11 (integers from 12);
//!   an absent bound does not clip; NaN stays NaN.

use half::f16;
use ndarray::{ArrayD, Axis};
use num_traits::Float;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::runtime::kernels::activation::{erf_into, sigmoid_into, softmax_rows, tanh_into};
use crate::runtime::kernels::gemm_f32::output_buffer;
use crate::ufn;

use super::data::reshape_value;
use super::elementwise::{UFn, unary_float};
use super::util::{Elem, cast, dname, err, norm_axis, opt, req, scalar_f64};
use super::{BuildCtx, FnOp, Op, Registry};

ufn!(Sigmoid, x => {
    // Split by sign so exp never overflows.
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
});
ufn!(Tanh, x => x.tanh());
ufn!(Erf, x => T::from(libm::erf(x.to_f64().unwrap_or(f64::NAN))).unwrap_or(T::nan()));

struct LeakyRelu(f32);
impl UFn for LeakyRelu {
    fn f<T: Float>(&self, x: T) -> T {
        if x < T::zero() {
            x * T::from(self.0).unwrap_or(T::nan())
        } else {
            x
        }
    }
}

struct HardSigmoid(f32, f32);
impl UFn for HardSigmoid {
    fn f<T: Float>(&self, x: T) -> T {
        let a = T::from(self.0).unwrap_or(T::nan());
        let b = T::from(self.1).unwrap_or(T::nan());
        (a * x + b).min(T::one()).max(T::zero())
    }
}

struct Gelu {
    tanh: bool,
}
impl UFn for Gelu {
    fn f<T: Float>(&self, x: T) -> T {
        let xf = x.to_f64().unwrap_or(f64::NAN);
        let y = if self.tanh {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * xf * (1.0 + (c * (xf + 0.044715 * xf * xf * xf)).tanh())
        } else {
            0.5 * xf * (1.0 + libm::erf(xf / std::f64::consts::SQRT_2))
        };
        T::from(y).unwrap_or(T::nan())
    }
}

/// An f32 array through a slice kernel (`f(src, dst)`), into a fresh row-major array.
fn map_f32(a: &ArrayD<f32>, f: fn(&[f32], &mut [f32])) -> Result<ArrayD<f32>> {
    let src = a.as_standard_layout();
    let s = src
        .as_slice()
        .ok_or_else(|| err("internal: a standard-layout array has no slice"))?;
    let mut out = output_buffer(s.len());
    f(s, &mut out);
    ArrayD::from_shape_vec(a.raw_dim(), out).map_err(|e| err(format!("internal: {e}")))
}

fn relu(v: &Value) -> Result<Value> {
    fn r<T: Elem>(a: &ArrayD<T>) -> ArrayD<T> {
        let z = T::default();
        a.mapv(|x| if x < z { z } else { x })
    }
    Ok(match v {
        Value::F32(a) => Value::F32(a.mapv(|x| x.max(0.0))),
        Value::F64(a) => Value::F64(a.mapv(|x| x.max(0.0))),
        Value::F16(a) => Value::F16(a.mapv(|x| if x < f16::ZERO { f16::ZERO } else { x })),
        Value::I64(a) => Value::I64(r(a)),
        Value::I32(a) => Value::I32(r(a)),
        Value::I8(a) => Value::I8(r(a)),
        Value::I16(a) => Value::I16(r(a)),
        Value::BF16(a) => Value::BF16(r(a)),
        _ => return Err(err(format!("Relu of {}", dname(v)))),
    })
}

/// Softmax (or log-softmax) along `axis` of a float array.
fn softmax_t<T: Float>(a: &ArrayD<T>, axis: usize, log: bool) -> ArrayD<T> {
    let mut out = a.clone();
    // The usual case, the last axis of a row-major array, runs on the rows in place; other
    // axes go through a row buffer (ndarray's per-lane iteration costs several times more).
    if axis + 1 == out.ndim()
        && let Some(data) = out.as_slice_mut()
    {
        let n = a.shape()[axis];
        if n > 0 {
            for row in data.chunks_exact_mut(n) {
                softmax_row(row, log);
            }
        }
        return out;
    }
    let mut buf = Vec::new();
    for mut lane in out.lanes_mut(Axis(axis)) {
        buf.clear();
        buf.extend(lane.iter().copied());
        softmax_row(&mut buf, log);
        lane.iter_mut().zip(&buf).for_each(|(d, &v)| *d = v);
    }
    out
}

/// Softmax (or log-softmax) of one row, in place, max-subtracted.
fn softmax_row<T: Float>(row: &mut [T], log: bool) {
    let m = row
        .iter()
        .fold(T::neg_infinity(), |m, &x| if x > m { x } else { m });
    if log {
        let s = row.iter().fold(T::zero(), |s, &x| s + (x - m).exp()).ln();
        row.iter_mut().for_each(|x| *x = *x - m - s);
    } else {
        row.iter_mut().for_each(|x| *x = (*x - m).exp());
        let s = row.iter().fold(T::zero(), |s, &x| s + x);
        row.iter_mut().for_each(|x| *x = *x / s);
    }
}

fn softmax_value(v: &Value, axis: usize, log: bool) -> Result<Value> {
    Ok(match v {
        // The usual case: f32 softmax along the last axis, with the vectorized exp.
        Value::F32(a) if !log && axis + 1 == a.ndim() && a.is_standard_layout() => {
            let mut out = a.clone();
            if let Some(data) = out.as_slice_mut() {
                softmax_rows(data, a.shape()[axis]);
            }
            Value::F32(out)
        }
        Value::F32(a) => Value::F32(softmax_t(a, axis, log)),
        Value::F64(a) => Value::F64(softmax_t(a, axis, log)),
        Value::F16(a) => Value::F16(softmax_t(&a.mapv(f16::to_f32), axis, log).mapv(f16::from_f32)),
        Value::BF16(a) => Value::BF16(
            softmax_t(&a.mapv(half::bf16::to_f32), axis, log).mapv(half::bf16::from_f32),
        ),
        _ => return Err(err(format!("expects a float input, got {}", dname(v)))),
    })
}

fn softmax(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let log = node.op_type() == "LogSoftmax";
    let legacy = ctx.opset < 13;
    let axis = node.attr_or::<i64>("axis", if legacy { 1 } else { -1 })?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let y = per_axis_or_coerced(req(ins, 0)?, axis, legacy, |v, ax| {
            softmax_value(v, ax, log)
        })?;
        Ok(vec![y])
    })))
}

/// Applies `f(value, axis)` with the Softmax family's axis rule (shared with `Hardmax`):
/// `legacy` (before opset 13) runs it on the 2-D view `[prod(shape[..axis]),
/// prod(shape[axis..])]` along axis 1 and reshapes back; otherwise along `axis` itself.
pub(super) fn per_axis_or_coerced(
    x: &Value,
    axis: i64,
    legacy: bool,
    f: impl Fn(&Value, usize) -> Result<Value>,
) -> Result<Value> {
    let shape = x.shape().to_vec();
    if legacy {
        let r = shape.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..=r).contains(&a) {
            return Err(err(format!("axis {axis} is out of range for rank {r}")));
        }
        let outer: usize = shape[..a as usize].iter().product();
        let inner: usize = shape[a as usize..].iter().product();
        let flat = reshape_value(x, &[outer, inner])?;
        let y = f(&flat, 1)?;
        return reshape_value(&y, &shape);
    }
    let ax = norm_axis(axis, shape.len())?;
    f(x, ax)
}

fn clip_t<T: Elem>(a: &ArrayD<T>, lo: Option<T>, hi: Option<T>) -> ArrayD<T> {
    a.mapv(|x| {
        let x = match lo {
            Some(l) if x < l => l,
            _ => x,
        };
        match hi {
            Some(h) if x > h => h,
            _ => x,
        }
    })
}

fn clip(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let attrs = if ctx.opset < 11 {
        Some((node.attr::<f32>("min")?, node.attr::<f32>("max")?))
    } else {
        None
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let bound = |i: usize, attr: Option<f32>| -> Result<Option<Value>> {
            let v = match &attrs {
                Some(_) => attr.map(Value::scalar_f32),
                None => opt(ins, i).cloned(),
            };
            v.map(|v| cast(&v, x.dtype())).transpose()
        };
        let (lo, hi) = (
            bound(1, attrs.and_then(|a| a.0))?,
            bound(2, attrs.and_then(|a| a.1))?,
        );
        macro_rules! c {
            ($a:expr, $get:ident) => {{
                let l = lo
                    .as_ref()
                    .and_then(|v| v.$get())
                    .and_then(|b| b.iter().next().copied());
                let h = hi
                    .as_ref()
                    .and_then(|v| v.$get())
                    .and_then(|b| b.iter().next().copied());
                clip_t($a, l, h)
            }};
        }
        for b in [&lo, &hi].into_iter().flatten() {
            scalar_f64(b)?;
        }
        Ok(vec![match x {
            Value::F32(a) => Value::F32(c!(a, as_f32)),
            Value::F16(a) => Value::F16(c!(a, as_f16)),
            Value::F64(a) => Value::F64(c!(a, as_f64)),
            Value::I64(a) => Value::I64(c!(a, as_i64)),
            Value::I32(a) => Value::I32(c!(a, as_i32)),
            Value::I8(a) => Value::I8(c!(a, as_i8)),
            Value::U8(a) => Value::U8(c!(a, as_u8)),
            Value::I16(a) => Value::I16(c!(a, as_i16)),
            Value::U16(a) => Value::U16(c!(a, as_u16)),
            Value::U32(a) => Value::U32(c!(a, as_u32)),
            Value::U64(a) => Value::U64(c!(a, as_u64)),
            Value::BF16(a) => Value::BF16(c!(a, as_bf16)),
            Value::Bool(_) => return Err(err("Clip of bool")),
        }])
    })))
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = node.op_type().to_string();
    let alpha = node.attr::<f32>("alpha")?;
    let beta = node.attr::<f32>("beta")?;
    let tanh = match node
        .attr_or::<String>("approximate", "none".into())?
        .as_str()
    {
        "none" => false,
        "tanh" => true,
        a => return Err(node.error(format!("unknown approximate '{a}'"))),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        Ok(vec![match kind.as_str() {
            "Relu" => relu(x)?,
            "LeakyRelu" => unary_float(x, &LeakyRelu(alpha.unwrap_or(0.01)))?,
            "Sigmoid" => match x {
                Value::F32(a) => Value::F32(map_f32(a, sigmoid_into)?),
                _ => unary_float(x, &Sigmoid)?,
            },
            "HardSigmoid" => {
                unary_float(x, &HardSigmoid(alpha.unwrap_or(0.2), beta.unwrap_or(0.5)))?
            }
            "Tanh" => match x {
                Value::F32(a) => Value::F32(map_f32(a, tanh_into)?),
                _ => unary_float(x, &Tanh)?,
            },
            "Erf" => match x {
                Value::F32(a) => Value::F32(map_f32(a, erf_into)?),
                _ => unary_float(x, &Erf)?,
            },
            "Gelu" => unary_float(x, &Gelu { tanh })?,
            other => return Err(err(format!("unknown activation {other}"))),
        }])
    })))
}

pub fn register(r: &mut Registry) {
    for op in [
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Erf",
        "Gelu",
    ] {
        r.register("", op, build);
    }
    r.register("", "Softmax", softmax);
    r.register("", "LogSoftmax", softmax);
    r.register("", "Clip", clip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: &Value, b: &[f32]) {
        let a = a.as_f32().unwrap();
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_resist_overflow() {
        let a = array![[1.0f32, 2.0, 3.0], [1000.0, 1000.0, 1000.0]].into_dyn();
        let s = softmax_t(&a, 1, false);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let t: f32 = e.iter().sum();
        close(
            &Value::F32(s.clone()),
            &[e[0] / t, e[1] / t, e[2] / t, 1. / 3., 1. / 3., 1. / 3.],
        );
        let l = softmax_t(&a, 1, true);
        close(
            &Value::F32(l),
            &[(e[0] / t).ln(), (e[1] / t).ln(), (e[2] / t).ln()],
        );
    }

    #[test]
    fn activations_by_hand() {
        let x = Value::F32(array![-2.0f32, 0.0, 3.0].into_dyn());
        close(&relu(&x).unwrap(), &[0.0, 0.0, 3.0]);
        close(
            &unary_float(&x, &LeakyRelu(0.1)).unwrap(),
            &[-0.2, 0.0, 3.0],
        );
        close(
            &unary_float(&x, &HardSigmoid(0.2, 0.5)).unwrap(),
            &[0.1, 0.5, 1.0],
        );
        close(
            &unary_float(&x, &Sigmoid).unwrap(),
            &[1.0 / (1.0 + 2f32.exp()), 0.5, 1.0 / (1.0 + (-3f32).exp())],
        );
        // erf(1) = 0.8427007929497149
        close(
            &unary_float(&Value::F32(array![1.0f32].into_dyn()), &Erf).unwrap(),
            &[0.842_700_8],
        );
        close(
            &unary_float(
                &Value::F32(array![1.0f32].into_dyn()),
                &Gelu { tanh: false },
            )
            .unwrap(),
            &[0.841_344_7],
        );
    }

    #[test]
    fn clip_with_missing_bounds() {
        let a = array![-5i64, 0, 5].into_dyn();
        assert_eq!(clip_t(&a, Some(-1), None), array![-1i64, 0, 5].into_dyn());
        assert_eq!(clip_t(&a, None, Some(2)), array![-5i64, 0, 2].into_dyn());
    }
}
