//! `PRelu` (1, 6, 7, 9, 16): `y = x < 0 ? slope·x : x`, with `slope` broadcast to the shape of
//! `x` (unidirectional numpy broadcasting since opset 7: the output always has `x`'s shape; a
//! slope that would grow it is an error).
//!
//! Floats (f16 computed in f32 and rounded back) and, from opset 16, integers (the product
//! wraps). NaN in `x` passes through.

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{Elem, broadcast_shape, dname, err, is_float, req, zip_map};
use super::{BuildCtx, FnOp, Op, Registry};

fn prelu_t<T: Elem>(x: &ArrayD<T>, slope: &ArrayD<T>) -> Result<ArrayD<T>> {
    // Unidirectional: the slope must broadcast to x's shape without changing it.
    if broadcast_shape(x.shape(), slope.shape())? != x.shape() {
        return Err(err(format!(
            "slope of shape {:?} does not broadcast to X's shape {:?}",
            slope.shape(),
            x.shape()
        )));
    }
    let zero = T::from_i64(0);
    let float = is_float(T::DT);
    zip_map(x, slope, |v, s| {
        if v >= zero {
            v
        } else if float {
            T::from_f64(v.to_f64() * s.to_f64())
        } else {
            T::from_i64(v.to_i64().wrapping_mul(s.to_i64()))
        }
    })
}

fn build(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let (x, slope) = (req(ins, 0)?, req(ins, 1)?);
        let y = match (x, slope) {
            (Value::F32(a), Value::F32(s)) => Value::F32(prelu_t(a, s)?),
            (Value::F64(a), Value::F64(s)) => Value::F64(prelu_t(a, s)?),
            (Value::F16(a), Value::F16(s)) => Value::F16(prelu_t(a, s)?),
            (Value::I64(a), Value::I64(s)) => Value::I64(prelu_t(a, s)?),
            (Value::I32(a), Value::I32(s)) => Value::I32(prelu_t(a, s)?),
            (Value::I8(a), Value::I8(s)) => Value::I8(prelu_t(a, s)?),
            _ => {
                return Err(err(format!(
                    "PRelu of {} with slope {} (one signed numeric type expected)",
                    dname(x),
                    dname(slope)
                )));
            }
        };
        Ok(vec![y])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "PRelu", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn slope_broadcasts_to_x_only() {
        let x = array![[-2.0f32, 3.0], [-4.0, f32::NAN]].into_dyn();
        let s = array![0.5f32, 0.25].into_dyn();
        let y = prelu_t(&x, &s).unwrap();
        assert_eq!(y[[0, 0]], -1.0);
        assert_eq!(y[[1, 0]], -2.0);
        assert_eq!(y[[0, 1]], 3.0);
        assert!(y[[1, 1]].is_nan());
        let wide = array![[0.5f32, 0.5], [0.5, 0.5], [0.5, 0.5]].into_dyn();
        assert!(prelu_t(&array![-1.0f32, 2.0].into_dyn(), &wide).is_err());
    }
}
