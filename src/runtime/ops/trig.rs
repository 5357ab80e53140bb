//! Trigonometric and hyperbolic functions, element-wise on floats (f16 computed in f32 and
//! rounded back), as the ONNX spec defines them: `Sin`, `Cos`, `Tan`, `Asin`, `Acos`, `Atan`
//! (7), `Sinh`, `Cosh`, `Asinh`, `Acosh`, `Atanh` (9). Out-of-domain inputs (e.g. `Asin(2)`)
//! give NaN, as in IEEE arithmetic.

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::ufn;

use super::elementwise::unary_float;
use super::util::{err, req};
use super::{BuildCtx, FnOp, Op, Registry};

ufn!(Sin, x => x.sin());
ufn!(Cos, x => x.cos());
ufn!(Tan, x => x.tan());
ufn!(Asin, x => x.asin());
ufn!(Acos, x => x.acos());
ufn!(Atan, x => x.atan());
ufn!(Sinh, x => x.sinh());
ufn!(Cosh, x => x.cosh());
ufn!(Asinh, x => x.asinh());
ufn!(Acosh, x => x.acosh());
ufn!(Atanh, x => x.atanh());

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = node.op_type().to_string();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        Ok(vec![match kind.as_str() {
            "Sin" => unary_float(x, &Sin)?,
            "Cos" => unary_float(x, &Cos)?,
            "Tan" => unary_float(x, &Tan)?,
            "Asin" => unary_float(x, &Asin)?,
            "Acos" => unary_float(x, &Acos)?,
            "Atan" => unary_float(x, &Atan)?,
            "Sinh" => unary_float(x, &Sinh)?,
            "Cosh" => unary_float(x, &Cosh)?,
            "Asinh" => unary_float(x, &Asinh)?,
            "Acosh" => unary_float(x, &Acosh)?,
            "Atanh" => unary_float(x, &Atanh)?,
            other => return Err(err(format!("not a trigonometric op: {other}"))),
        }])
    })))
}

pub fn register(r: &mut Registry) {
    for op in [
        "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    ] {
        r.register("", op, build);
    }
}
