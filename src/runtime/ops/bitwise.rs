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
//! Every op is generic over the integer element type; the dispatch macros below list the
//! integer [`Value`] variants the runtime stores.

use ndarray::ArrayD;
use num_traits::PrimInt;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, req, zip_map};
use super::{BuildCtx, FnOp, Op, Registry};

/// Evaluates `$body` with `$x`, `$y` bound to the arrays of two integer values of one type,
/// wrapping the result in that type's variant; other pairs make `$what` fail.
macro_rules! int_pair {
    ($a:expr, $b:expr, $what:expr, $x:ident, $y:ident => $body:expr) => {
        match ($a, $b) {
            (Value::I64($x), Value::I64($y)) => Value::I64($body),
            (Value::I32($x), Value::I32($y)) => Value::I32($body),
            (Value::I8($x), Value::I8($y)) => Value::I8($body),
            (Value::U8($x), Value::U8($y)) => Value::U8($body),
            (a, b) => {
                return Err(err(format!(
                    "{} of {} and {} (inputs must have one integer type)",
                    $what,
                    dname(a),
                    dname(b)
                )));
            }
        }
    };
}

/// Evaluates `$body` with `$x` bound to the array of an integer value, wrapping the result in
/// the same variant; other types make `$what` fail.
macro_rules! int_one {
    ($a:expr, $what:expr, $x:ident => $body:expr) => {
        match $a {
            Value::I64($x) => Value::I64($body),
            Value::I32($x) => Value::I32($body),
            Value::I8($x) => Value::I8($body),
            Value::U8($x) => Value::U8($body),
            a => {
                return Err(err(format!(
                    "{} of {} (input must be an integer type)",
                    $what,
                    dname(a)
                )));
            }
        }
    };
}

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
        let y = int_pair!(req(ins, 0)?, req(ins, 1)?, what, a, b => bits_t(op, a, b)?);
        Ok(vec![y])
    })))
}

fn build_not(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let y = int_one!(req(ins, 0)?, "BitwiseNot", a => a.mapv(|x| !x));
        Ok(vec![y])
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
    }
}
