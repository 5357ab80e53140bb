//! Element-wise activations with parameters or piecewise forms, on floats (f16 computed in
//! f32 and rounded back), as the ONNX spec defines them:
//!
//! - `Elu` (6): `x < 0 ? alpha·(exp(x) - 1) : x`, alpha 1.0.
//! - `Selu` (6): `gamma·(x <= 0 ? alpha·exp(x) - alpha : x)`, alpha 1.67326319217681884765625,
//!   gamma 1.05070102214813232421875.
//! - `Celu` (12): `max(0, x) + min(0, alpha·(exp(x / alpha) - 1))`, alpha 1.0.
//! - `Softplus` (1): `ln(exp(x) + 1)`, computed as `max(x, 0) + ln(1 + exp(-|x|))` so large
//!   inputs do not overflow.
//! - `Softsign` (1): `x / (1 + |x|)`.
//! - `ThresholdedRelu` (10): `x > alpha ? x : 0`, alpha 1.0.
//! - `Shrink` (9): `x < -lambd ? x + bias : x > lambd ? x - bias : 0`, lambd 0.5, bias 0;
//!   also on integer types (computed in f64 and cast back, as the spec's numeric types allow).
//! - `HardSwish` (14): `x · max(0, min(1, x/6 + 1/2))`.
//! - `Mish` (18): `x · tanh(softplus(x))`.
//! - `Swish` (24): `x · sigmoid(alpha·x)`, alpha 1.0.
//!
//! NaN propagates through every form (comparisons with NaN are false, so it takes the
//! branch that returns an expression of `x`).

use num_traits::Float;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::elementwise::{UFn, unary_float};
use super::util::{cast, dname, err, req};
use super::{BuildCtx, FnOp, Op, Registry};

fn t<T: Float>(v: f64) -> T {
    T::from(v).unwrap_or(T::nan())
}

fn softplus<T: Float>(x: T) -> T {
    x.max(T::zero()) + (-x.abs()).exp().ln_1p()
}

/// One parametric activation with its attribute values.
#[derive(Clone, Copy)]
enum Act {
    Elu(f64),
    Selu { alpha: f64, gamma: f64 },
    Celu(f64),
    Softplus,
    Softsign,
    ThresholdedRelu(f64),
    Shrink { lambd: f64, bias: f64 },
    HardSwish,
    Mish,
    Swish(f64),
}

impl UFn for Act {
    fn f<T: Float>(&self, x: T) -> T {
        let zero = T::zero();
        match *self {
            Act::Elu(a) => {
                if x < zero {
                    t::<T>(a) * x.exp_m1()
                } else {
                    x
                }
            }
            Act::Selu { alpha, gamma } => {
                let y = if x <= zero {
                    t::<T>(alpha) * x.exp() - t(alpha)
                } else {
                    x
                };
                t::<T>(gamma) * y
            }
            Act::Celu(a) => {
                let a = t::<T>(a);
                x.max(zero) + (a * (x / a).exp_m1()).min(zero)
            }
            Act::Softplus => softplus(x),
            Act::Softsign => x / (T::one() + x.abs()),
            Act::ThresholdedRelu(a) => {
                if x > t(a) || x.is_nan() {
                    x
                } else {
                    zero
                }
            }
            Act::Shrink { lambd, bias } => {
                if x < -t::<T>(lambd) {
                    x + t(bias)
                } else if x > t(lambd) {
                    x - t(bias)
                } else if x.is_nan() {
                    x
                } else {
                    zero
                }
            }
            Act::HardSwish => {
                let g = (x / t(6.0) + t(0.5)).min(T::one()).max(zero);
                x * g
            }
            Act::Mish => x * softplus(x).tanh(),
            Act::Swish(a) => {
                let z = t::<T>(a) * x;
                // Split by sign so exp never overflows.
                let s = if z >= zero {
                    T::one() / (T::one() + (-z).exp())
                } else {
                    let e = z.exp();
                    e / (T::one() + e)
                };
                x * s
            }
        }
    }
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let f = |name: &str, default: f32| node.attr_or::<f32>(name, default).map(f64::from);
    let act = match node.op_type() {
        "Elu" => Act::Elu(f("alpha", 1.0)?),
        "Selu" => Act::Selu {
            alpha: f("alpha", 1.673_263_2)?,
            gamma: f("gamma", 1.050_701)?,
        },
        "Celu" => {
            let a = f("alpha", 1.0)?;
            if a == 0.0 {
                return Err(node.error("Celu alpha must not be 0"));
            }
            Act::Celu(a)
        }
        "Softplus" => Act::Softplus,
        "Softsign" => Act::Softsign,
        "ThresholdedRelu" => Act::ThresholdedRelu(f("alpha", 1.0)?),
        "Shrink" => Act::Shrink {
            lambd: f("lambd", 0.5)?,
            bias: f("bias", 0.0)?,
        },
        "HardSwish" => Act::HardSwish,
        "Mish" => Act::Mish,
        "Swish" => Act::Swish(f("alpha", 1.0)?),
        other => return Err(err(format!("not a parametric activation: {other}"))),
    };
    let integers = matches!(act, Act::Shrink { .. });
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        Ok(vec![match x {
            Value::F32(_) | Value::F64(_) | Value::F16(_) | Value::BF16(_) => unary_float(x, &act)?,
            _ if integers => {
                let Value::F64(a) = cast(x, crate::onnx::tensor_proto::DataType::Double)? else {
                    return Err(err("internal: cast to double"));
                };
                let y = Value::F64(a.mapv(|v| act.f(v)));
                cast(&y, x.dtype())?
            }
            other => {
                return Err(err(format!("expects a float input, got {}", dname(other))));
            }
        }])
    })))
}

pub fn register(r: &mut Registry) {
    for op in [
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "ThresholdedRelu",
        "Shrink",
        "HardSwish",
        "Mish",
        "Swish",
    ] {
        r.register("", op, build);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms_and_extremes() {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
        assert!(close(
            Act::Elu(2.0).f(-1.0f64),
            2.0 * ((-1.0f64).exp() - 1.0)
        ));
        assert!(close(Act::Softplus.f(1000.0f64), 1000.0));
        assert!(close(Act::Softplus.f(-1000.0f64), 0.0));
        assert!(close(Act::Softplus.f(0.0f64), 2f64.ln()));
        assert!(close(Act::Softsign.f(-3.0f64), -0.75));
        assert_eq!(Act::ThresholdedRelu(1.0).f(1.0f64), 0.0);
        assert_eq!(Act::ThresholdedRelu(1.0).f(1.5f64), 1.5);
        let s = Act::Shrink {
            lambd: 1.5,
            bias: 1.5,
        };
        assert_eq!((s.f(-2.0f64), s.f(0.0f64), s.f(2.0f64)), (-0.5, 0.0, 0.5));
        assert!(close(Act::HardSwish.f(1.0f64), 1.0 * (1.0 / 6.0 + 0.5)));
        assert!(close(Act::Swish(1.0).f(-800.0f64), 0.0));
        assert!(Act::Mish.f(f64::NAN).is_nan() && Act::ThresholdedRelu(1.0).f(f64::NAN).is_nan());
        let c = Act::Celu(2.0);
        assert!(close(c.f(-1.0f64), 2.0 * ((-0.5f64).exp() - 1.0)));
        assert_eq!(c.f(3.0f64), 3.0);
    }
}
