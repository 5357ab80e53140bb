//! Float classification, element-wise to bool, as the ONNX spec defines it:
//!
//! - `IsNaN` (9, 13, 20): true where `x` is NaN.
//! - `IsInf` (10, 20): true where `x` is +inf (when `detect_positive`, default 1) or -inf
//!   (when `detect_negative`, default 1).
//!
//! Inputs f16, f32 or f64 (bfloat16 and the float8 types of opset 20 are not stored by the
//! runtime).

use half::f16;
use ndarray::ArrayD;
use num_traits::Float;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, req};
use super::{BuildCtx, FnOp, Op, Registry};

fn classify(v: &Value, test: impl Fn(f64) -> bool) -> Result<ArrayD<bool>> {
    fn go<T: Float>(a: &ArrayD<T>, test: &impl Fn(f64) -> bool) -> ArrayD<bool> {
        a.mapv(|x| test(x.to_f64().unwrap_or(f64::NAN)))
    }
    Ok(match v {
        Value::F32(a) => go(a, &test),
        Value::F64(a) => go(a, &test),
        Value::F16(a) => a.mapv(|x: f16| test(f64::from(x.to_f32()))),
        other => {
            return Err(err(format!("expects a float input, got {}", dname(other))));
        }
    })
}

fn is_nan(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        Ok(vec![Value::Bool(classify(req(ins, 0)?, f64::is_nan)?)])
    })))
}

fn is_inf(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let pos = node.attr_or::<i64>("detect_positive", 1)? != 0;
    let neg = node.attr_or::<i64>("detect_negative", 1)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let test = |x: f64| x.is_infinite() && ((pos && x > 0.0) || (neg && x < 0.0));
        Ok(vec![Value::Bool(classify(req(ins, 0)?, test)?)])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "IsNaN", is_nan);
    r.register("", "IsInf", is_inf);
}
