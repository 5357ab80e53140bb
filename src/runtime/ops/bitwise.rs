//! Bit operations on integer tensors, both operands of one type, numpy broadcasting.
//!
//! - `BitwiseAnd`, `BitwiseOr`, `BitwiseXor` (18), `BitwiseNot` (18, unary): on the two's
//!   complement bits of any integer type.
//! - `BitShift` (11; signed types since 28): `direction` "LEFT" or "RIGHT", shift amounts
//!   from the second input. Left shifts drop the bits shifted out (signed values shift their
//!   two's complement bits, so the sign may change); right shifts of signed values are
//!   arithmetic (fill with the sign bit), of unsigned values logical. An amount that is
//!   negative or not below the type's bit width gives 0, or -1 for a right shift of a
//!   negative signed value (what shifting one bit at a time would reach), as the ONNX
//!   reference does.
//!
//! Every op is generic over the integer element type ([`BitElem`], implemented for every
//! element type a [`Value`] may hold, so an integer variant the runtime adds is covered by
//! implementing it there); float and bool operands are refused.

use std::any::Any;

use half::{bf16, f16};
use ndarray::ArrayD;
use num_traits::PrimInt;

use crate::dispatch_value;
use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, req, zip_map};
use super::{BuildCtx, FnOp, Op, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bits {
    And,
    Or,
    Xor,
    ShiftLeft,
    ShiftRight,
}

fn shift<T: PrimInt>(x: T, amount: T, left: bool) -> T {
    let width = T::zero().count_zeros();
    match amount.to_u32() {
        Some(n) if n < width => {
            if left {
                x << n as usize
            } else {
                // `>>` on a signed PrimInt is arithmetic, on an unsigned one logical.
                x >> n as usize
            }
        }
        _ if !left && x < T::zero() => !T::zero(),
        _ => T::zero(),
    }
}

fn bits_t<T: PrimInt>(op: Bits, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    match op {
        Bits::And => zip_map(a, b, |x, y| x & y),
        Bits::Or => zip_map(a, b, |x, y| x | y),
        Bits::Xor => zip_map(a, b, |x, y| x ^ y),
        Bits::ShiftLeft => zip_map(a, b, |x, y| shift(x, y, true)),
        Bits::ShiftRight => zip_map(a, b, |x, y| shift(x, y, false)),
    }
}

/// The bit operations of an element type: `None` for the float and bool types.
trait BitElem: Copy + 'static {
    fn binary(op: Bits, a: &ArrayD<Self>, b: &ArrayD<Self>) -> Option<Result<ArrayD<Self>>>;
    fn not(a: &ArrayD<Self>) -> Option<ArrayD<Self>>;
}

macro_rules! int_bits {
    ($($t:ty),*) => {$(
        impl BitElem for $t {
            fn binary(op: Bits, a: &ArrayD<Self>, b: &ArrayD<Self>) -> Option<Result<ArrayD<Self>>> {
                Some(bits_t(op, a, b))
            }
            fn not(a: &ArrayD<Self>) -> Option<ArrayD<Self>> {
                Some(a.mapv(|x| !x))
            }
        }
    )*};
}
int_bits!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! no_bits {
    ($($t:ty),*) => {$(
        impl BitElem for $t {
            fn binary(_: Bits, _: &ArrayD<Self>, _: &ArrayD<Self>) -> Option<Result<ArrayD<Self>>> {
                None
            }
            fn not(_: &ArrayD<Self>) -> Option<ArrayD<Self>> {
                None
            }
        }
    )*};
}
no_bits!(f32, f64, f16, bf16, bool);

/// `op` of `x` (the array of value `a`) and value `b`, which must hold the same integer type.
fn binary_value<T: BitElem>(
    op: Bits,
    what: &str,
    x: &ArrayD<T>,
    a: &Value,
    b: &Value,
) -> Result<Value>
where
    Value: From<ArrayD<T>>,
{
    let y = dispatch_value!(b, y => (y as &dyn Any).downcast_ref::<ArrayD<T>>());
    let out = y.and_then(|y| T::binary(op, x, y)).ok_or_else(|| {
        err(format!(
            "{what} of {} and {} (inputs must have one integer type)",
            dname(a),
            dname(b)
        ))
    })??;
    Ok(Value::from(out))
}

fn not_value<T: BitElem>(x: &ArrayD<T>, a: &Value) -> Result<Value>
where
    Value: From<ArrayD<T>>,
{
    let out = T::not(x).ok_or_else(|| {
        err(format!(
            "BitwiseNot of {} (input must be an integer type)",
            dname(a)
        ))
    })?;
    Ok(Value::from(out))
}

fn build_binary(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let op = match node.op_type() {
        "BitwiseAnd" => Bits::And,
        "BitwiseOr" => Bits::Or,
        "BitwiseXor" => Bits::Xor,
        _ => match node.attr::<String>("direction")?.as_deref() {
            Some("LEFT") => Bits::ShiftLeft,
            Some("RIGHT") => Bits::ShiftRight,
            Some(d) => {
                return Err(node.error(format!("direction must be LEFT or RIGHT, got '{d}'")));
            }
            None => return Err(node.error("missing required attribute 'direction'")),
        },
    };
    let what = node.op_type().to_string();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b) = (req(ins, 0)?, req(ins, 1)?);
        Ok(vec![
            dispatch_value!(a, x => binary_value(op, &what, x, a, b))?,
        ])
    })))
}

fn build_not(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let a = req(ins, 0)?;
        Ok(vec![dispatch_value!(a, x => not_value(x, a))?])
    })))
}

pub fn register(r: &mut Registry) {
    for op in ["BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitShift"] {
        r.register("", op, build_binary);
    }
    r.register("", "BitwiseNot", build_not);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_at_and_past_the_width() {
        assert_eq!(shift(-3i8, 1, true), -6);
        assert_eq!(shift(0x41i8, 1, true), -126);
        assert_eq!(shift(-8i8, 2, false), -2);
        assert_eq!(shift(-8i8, 8, false), -1);
        assert_eq!(shift(8i8, 9, false), 0);
        assert_eq!(shift(1i32, -1, true), 0);
        assert_eq!(shift(0x80u8, 7, false), 1);
        assert_eq!(shift(0x80u8, 8, true), 0);
        assert_eq!(shift(u64::MAX, 63, false), 1);
    }

    #[test]
    fn operands_must_share_an_integer_type() {
        let a = Value::I32(ndarray::array![[6, -1]].into_dyn());
        let b = Value::I32(ndarray::array![3].into_dyn());
        let got = dispatch_value!(&a, x => binary_value(Bits::Xor, "BitwiseXor", x, &a, &b));
        assert_eq!(
            got.unwrap(),
            Value::I32(ndarray::array![[5, -4]].into_dyn())
        );
        let c = Value::I64(ndarray::array![3].into_dyn());
        assert!(
            dispatch_value!(&a, x => binary_value(Bits::And, "BitwiseAnd", x, &a, &c)).is_err()
        );
        let f = Value::F32(ndarray::array![1.0].into_dyn());
        assert!(dispatch_value!(&f, x => not_value(x, &f)).is_err());
    }
}
