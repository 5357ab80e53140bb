//! Elementwise arithmetic, comparison and logic, with numpy (multidirectional) broadcasting.
//!
//! - `Add`, `Sub`, `Mul`, `Div` (opsets 7, 13, 14): both inputs of one type; floats (f16 is
//!   computed in f32 and rounded back) and integers. Integer arithmetic wraps on overflow;
//!   integer `Div` truncates toward zero (C semantics, as onnxruntime) and gives 0 for a zero
//!   divisor instead of trapping.
//! - `Pow` (7, 12, 13, 15): the exponent may have another numeric type than the base (opset
//!   12+); the result has the base's type. Mixed or integer cases are computed in f64.
//! - `Max`, `Min` (8, 12, 13): variadic with broadcasting; NaN propagates (as `np.maximum`).
//! - `Sum`, `Mean` (8, 13): variadic sums.
//! - `Sqrt`, `Exp`, `Log`, `Reciprocal`, `Floor`, `Ceil`, `Round` (half to even): floats.
//!   `Neg`, `Abs`, `Sign`: floats and signed integers (`Abs` of unsigned is the identity).
//! - `Equal` (any type incl. bool), `Less`, `Greater`, `LessOrEqual`, `GreaterOrEqual`
//!   (numbers): bool output; inputs of one type.
//! - `Not`, `And`, `Or`, `Xor`: bool.

use half::{bf16, f16};
use ndarray::ArrayD;
use num_traits::Float;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{Elem, dname, err, req, zip_map};
use super::{BuildCtx, FnOp, Op, Registry};

/// Binary arithmetic on one element type.
pub trait Arith: Elem {
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn div(a: Self, b: Self) -> Self;
    fn pow(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
}

macro_rules! float_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline]
            fn sub(a: Self, b: Self) -> Self {
                a - b
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a * b
            }
            #[inline]
            fn div(a: Self, b: Self) -> Self {
                a / b
            }
            #[inline]
            fn pow(a: Self, b: Self) -> Self {
                a.powf(b)
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                if a.is_nan() || b.is_nan() {
                    <$t>::NAN
                } else {
                    a.max(b)
                }
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                if a.is_nan() || b.is_nan() {
                    <$t>::NAN
                } else {
                    a.min(b)
                }
            }
        }
    };
}
float_arith!(f32);
float_arith!(f64);

/// The 16-bit floats compute in f32 and round back once per operation.
macro_rules! half_arith {
    ($t:ty) => {
        impl Arith for $t {
            fn add(a: Self, b: Self) -> Self {
                <$t>::from_f32(a.to_f32() + b.to_f32())
            }
            fn sub(a: Self, b: Self) -> Self {
                <$t>::from_f32(a.to_f32() - b.to_f32())
            }
            fn mul(a: Self, b: Self) -> Self {
                <$t>::from_f32(a.to_f32() * b.to_f32())
            }
            fn div(a: Self, b: Self) -> Self {
                <$t>::from_f32(a.to_f32() / b.to_f32())
            }
            fn pow(a: Self, b: Self) -> Self {
                <$t>::from_f32(a.to_f32().powf(b.to_f32()))
            }
            fn max(a: Self, b: Self) -> Self {
                <$t>::from_f32(<f32 as Arith>::max(a.to_f32(), b.to_f32()))
            }
            fn min(a: Self, b: Self) -> Self {
                <$t>::from_f32(<f32 as Arith>::min(a.to_f32(), b.to_f32()))
            }
        }
    };
}
half_arith!(f16);
half_arith!(bf16);

macro_rules! int_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a.wrapping_add(b)
            }
            #[inline]
            fn sub(a: Self, b: Self) -> Self {
                a.wrapping_sub(b)
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a.wrapping_mul(b)
            }
            #[inline]
            fn div(a: Self, b: Self) -> Self {
                if b == 0 { 0 } else { a.wrapping_div(b) }
            }
            fn pow(a: Self, b: Self) -> Self {
                <$t>::from_f64((a as f64).powf(b as f64))
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                Ord::max(a, b)
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                Ord::min(a, b)
            }
        }
    };
}
int_arith!(i64);
int_arith!(i32);
int_arith!(i8);
int_arith!(u8);
int_arith!(i16);
int_arith!(u16);
int_arith!(u32);
int_arith!(u64);

/// A binary arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

fn bin_t<T: Arith>(op: Bin, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    match op {
        Bin::Add => zip_map(a, b, T::add),
        Bin::Sub => zip_map(a, b, T::sub),
        Bin::Mul => zip_map(a, b, T::mul),
        Bin::Div => zip_map(a, b, T::div),
        Bin::Pow => zip_map(a, b, T::pow),
        Bin::Max => zip_map(a, b, T::max),
        Bin::Min => zip_map(a, b, T::min),
    }
}

/// `a op b` with broadcasting; both of one numeric type.
pub fn binary(op: Bin, a: &Value, b: &Value) -> Result<Value> {
    Ok(match (a, b) {
        (Value::F32(x), Value::F32(y)) => Value::F32(bin_t(op, x, y)?),
        (Value::F16(x), Value::F16(y)) => Value::F16(bin_t(op, x, y)?),
        (Value::F64(x), Value::F64(y)) => Value::F64(bin_t(op, x, y)?),
        (Value::I64(x), Value::I64(y)) => Value::I64(bin_t(op, x, y)?),
        (Value::I32(x), Value::I32(y)) => Value::I32(bin_t(op, x, y)?),
        (Value::I8(x), Value::I8(y)) => Value::I8(bin_t(op, x, y)?),
        (Value::U8(x), Value::U8(y)) => Value::U8(bin_t(op, x, y)?),
        (Value::I16(x), Value::I16(y)) => Value::I16(bin_t(op, x, y)?),
        (Value::U16(x), Value::U16(y)) => Value::U16(bin_t(op, x, y)?),
        (Value::U32(x), Value::U32(y)) => Value::U32(bin_t(op, x, y)?),
        (Value::U64(x), Value::U64(y)) => Value::U64(bin_t(op, x, y)?),
        (Value::BF16(x), Value::BF16(y)) => Value::BF16(bin_t(op, x, y)?),
        _ => {
            return Err(err(format!(
                "{op:?} of {} and {} (inputs must have one numeric type)",
                dname(a),
                dname(b)
            )));
        }
    })
}

/// `Pow` with an exponent of another type: computed in f64, result in the base's type.
fn pow_mixed(a: &Value, b: &Value) -> Result<Value> {
    fn go<A: Elem, B: Elem>(x: &ArrayD<A>, y: &ArrayD<B>) -> Result<ArrayD<A>> {
        zip_map(x, y, |p, q| A::from_f64(p.to_f64().powf(q.to_f64())))
    }
    macro_rules! with_b {
        ($x:expr) => {
            match b {
                Value::F32(y) => go($x, y),
                Value::F16(y) => go($x, y),
                Value::F64(y) => go($x, y),
                Value::I64(y) => go($x, y),
                Value::I32(y) => go($x, y),
                Value::I8(y) => go($x, y),
                Value::U8(y) => go($x, y),
                Value::I16(y) => go($x, y),
                Value::U16(y) => go($x, y),
                Value::U32(y) => go($x, y),
                Value::U64(y) => go($x, y),
                Value::BF16(y) => go($x, y),
                Value::Bool(_) => Err(err("Pow exponent cannot be bool")),
            }
        };
    }
    Ok(match a {
        Value::F32(x) => Value::F32(with_b!(x)?),
        Value::F16(x) => Value::F16(with_b!(x)?),
        Value::F64(x) => Value::F64(with_b!(x)?),
        Value::I64(x) => Value::I64(with_b!(x)?),
        Value::I32(x) => Value::I32(with_b!(x)?),
        Value::I8(x) => Value::I8(with_b!(x)?),
        Value::U8(x) => Value::U8(with_b!(x)?),
        Value::I16(x) => Value::I16(with_b!(x)?),
        Value::U16(x) => Value::U16(with_b!(x)?),
        Value::U32(x) => Value::U32(with_b!(x)?),
        Value::U64(x) => Value::U64(with_b!(x)?),
        Value::BF16(x) => Value::BF16(with_b!(x)?),
        Value::Bool(_) => return Err(err("Pow base cannot be bool")),
    })
}

/// A unary function generic over float types (f16 goes through f32).
pub trait UFn: Send + Sync {
    fn f<T: Float>(&self, x: T) -> T;
}

/// Applies `op` to a float value.
pub fn unary_float(v: &Value, op: &impl UFn) -> Result<Value> {
    Ok(match v {
        Value::F32(a) => Value::F32(a.mapv(|x| op.f(x))),
        Value::F64(a) => Value::F64(a.mapv(|x| op.f(x))),
        Value::F16(a) => Value::F16(a.mapv(|x| f16::from_f32(op.f(x.to_f32())))),
        Value::BF16(a) => Value::BF16(a.mapv(|x| bf16::from_f32(op.f(x.to_f32())))),
        _ => return Err(err(format!("expects a float input, got {}", dname(v)))),
    })
}

/// Defines a stateless [`UFn`].
#[macro_export]
macro_rules! ufn {
    ($name:ident, $x:ident => $body:expr) => {
        pub struct $name;
        impl $crate::runtime::ops::elementwise::UFn for $name {
            #[inline]
            fn f<T: num_traits::Float>(&self, $x: T) -> T {
                $body
            }
        }
    };
}

ufn!(Sqrt, x => x.sqrt());
ufn!(Exp, x => x.exp());
ufn!(Log, x => x.ln());
ufn!(Reciprocal, x => x.recip());
ufn!(Floor, x => x.floor());
ufn!(Ceil, x => x.ceil());
ufn!(Round, x => {
    // Half to even: round, then step back toward even on exact halves.
    let r = x.round();
    if (x - x.trunc()).abs() == T::from(0.5).unwrap_or(T::nan()) && (r / (T::one() + T::one())).fract() != T::zero() {
        r - x.signum()
    } else {
        r
    }
});

fn signed_unary(v: &Value, name: &str, fi: fn(i64) -> i64, ff: &impl UFn) -> Result<Value> {
    Ok(match v {
        Value::I64(a) => Value::I64(a.mapv(fi)),
        Value::I32(a) => Value::I32(a.mapv(|x| fi(x as i64) as i32)),
        Value::I8(a) => Value::I8(a.mapv(|x| fi(x as i64) as i8)),
        Value::I16(a) => Value::I16(a.mapv(|x| fi(x as i64) as i16)),
        // Unsigned: Abs is the identity and Sign is 0 or 1; Neg is not defined.
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) if name != "Neg" => {
            crate::map_same!(v, a => a.mapv(|x| if name == "Abs" { x } else { Elem::from_i64((x != Default::default()) as i64) }))
        }
        Value::Bool(_) | Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => {
            return Err(err(format!("{name} of {} is not defined", dname(v))));
        }
        _ => unary_float(v, ff)?,
    })
}

ufn!(NegF, x => -x);
ufn!(AbsF, x => x.abs());
ufn!(SignF, x => if x.is_nan() { x } else if x > T::zero() { T::one() } else if x < T::zero() { -T::one() } else { T::zero() });

/// Comparison operators.
#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

fn cmp_t<T: Elem>(op: Cmp, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<bool>> {
    match op {
        Cmp::Eq => zip_map(a, b, |x, y| x == y),
        Cmp::Lt => zip_map(a, b, |x, y| x < y),
        Cmp::Gt => zip_map(a, b, |x, y| x > y),
        Cmp::Le => zip_map(a, b, |x, y| x <= y),
        Cmp::Ge => zip_map(a, b, |x, y| x >= y),
    }
}

pub fn compare(op: Cmp, a: &Value, b: &Value) -> Result<Value> {
    let r = match (a, b) {
        (Value::F32(x), Value::F32(y)) => cmp_t(op, x, y),
        (Value::F16(x), Value::F16(y)) => cmp_t(op, x, y),
        (Value::F64(x), Value::F64(y)) => cmp_t(op, x, y),
        (Value::I64(x), Value::I64(y)) => cmp_t(op, x, y),
        (Value::I32(x), Value::I32(y)) => cmp_t(op, x, y),
        (Value::I8(x), Value::I8(y)) => cmp_t(op, x, y),
        (Value::U8(x), Value::U8(y)) => cmp_t(op, x, y),
        (Value::I16(x), Value::I16(y)) => cmp_t(op, x, y),
        (Value::U16(x), Value::U16(y)) => cmp_t(op, x, y),
        (Value::U32(x), Value::U32(y)) => cmp_t(op, x, y),
        (Value::U64(x), Value::U64(y)) => cmp_t(op, x, y),
        (Value::BF16(x), Value::BF16(y)) => cmp_t(op, x, y),
        (Value::Bool(x), Value::Bool(y)) if matches!(op, Cmp::Eq) => cmp_t(op, x, y),
        _ => {
            return Err(err(format!(
                "cannot compare {} with {}",
                dname(a),
                dname(b)
            )));
        }
    }?;
    Ok(Value::Bool(r))
}

fn logic(a: &Value, b: &Value, f: fn(bool, bool) -> bool) -> Result<Value> {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => Ok(Value::Bool(zip_map(x, y, f)?)),
        _ => Err(err(format!(
            "expects bool inputs, got {} and {}",
            dname(a),
            dname(b)
        ))),
    }
}

fn variadic(inputs: &[Option<&Value>], op: Bin) -> Result<Value> {
    let mut it = inputs.iter().flatten();
    let first = it.next().ok_or_else(|| err("needs at least one input"))?;
    let mut acc = (*first).clone();
    for v in it {
        acc = binary(op, &acc, v)?;
    }
    Ok(acc)
}

fn build_binary(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let op = match node.op_type() {
        "Add" => Bin::Add,
        "Sub" => Bin::Sub,
        "Mul" => Bin::Mul,
        "Div" => Bin::Div,
        _ => Bin::Pow,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b) = (req(ins, 0)?, req(ins, 1)?);
        if op == Bin::Pow && a.dtype() != b.dtype() {
            return Ok(vec![pow_mixed(a, b)?]);
        }
        Ok(vec![binary(op, a, b)?])
    })))
}

fn build_variadic(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = node.op_type().to_string();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        Ok(vec![match kind.as_str() {
            "Max" => variadic(ins, Bin::Max)?,
            "Min" => variadic(ins, Bin::Min)?,
            "Sum" => variadic(ins, Bin::Add)?,
            _ => {
                let n = ins.iter().flatten().count();
                let s = variadic(ins, Bin::Add)?;
                let d =
                    super::util::cast(&Value::F64(ndarray::arr0(n as f64).into_dyn()), s.dtype())?;
                binary(Bin::Div, &s, &d)?
            }
        }])
    })))
}

fn build_unary(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = node.op_type().to_string();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        Ok(vec![match kind.as_str() {
            "Sqrt" => unary_float(x, &Sqrt)?,
            "Exp" => unary_float(x, &Exp)?,
            "Log" => unary_float(x, &Log)?,
            "Reciprocal" => unary_float(x, &Reciprocal)?,
            "Floor" => unary_float(x, &Floor)?,
            "Ceil" => unary_float(x, &Ceil)?,
            "Round" => unary_float(x, &Round)?,
            "Neg" => signed_unary(x, "Neg", i64::wrapping_neg, &NegF)?,
            "Abs" => signed_unary(x, "Abs", i64::wrapping_abs, &AbsF)?,
            "Sign" => signed_unary(x, "Sign", i64::signum, &SignF)?,
            "Not" => match x {
                Value::Bool(a) => Value::Bool(a.mapv(|b| !b)),
                _ => return Err(err(format!("Not expects bool, got {}", dname(x)))),
            },
            other => return Err(err(format!("unknown unary op {other}"))),
        }])
    })))
}

fn build_compare(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = node.op_type().to_string();
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (a, b) = (req(ins, 0)?, req(ins, 1)?);
        Ok(vec![match kind.as_str() {
            "Equal" => compare(Cmp::Eq, a, b)?,
            "Less" => compare(Cmp::Lt, a, b)?,
            "Greater" => compare(Cmp::Gt, a, b)?,
            "LessOrEqual" => compare(Cmp::Le, a, b)?,
            "GreaterOrEqual" => compare(Cmp::Ge, a, b)?,
            "And" => logic(a, b, |x, y| x && y)?,
            "Or" => logic(a, b, |x, y| x || y)?,
            _ => logic(a, b, |x, y| x ^ y)?,
        }])
    })))
}

pub fn register(r: &mut Registry) {
    for op in ["Add", "Sub", "Mul", "Div", "Pow"] {
        r.register("", op, build_binary);
    }
    for op in ["Max", "Min", "Sum", "Mean"] {
        r.register("", op, build_variadic);
    }
    for op in [
        "Sqrt",
        "Exp",
        "Log",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Neg",
        "Abs",
        "Sign",
        "Not",
    ] {
        r.register("", op, build_unary);
    }
    for op in [
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
    ] {
        r.register("", op, build_compare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn broadcast_arithmetic() {
        let a = Value::F32(array![[1.0f32, 2.0], [3.0, 4.0]].into_dyn());
        let b = Value::F32(array![10.0f32, 20.0].into_dyn());
        assert_eq!(
            binary(Bin::Add, &a, &b).unwrap(),
            Value::F32(array![[11.0f32, 22.0], [13.0, 24.0]].into_dyn())
        );
        assert_eq!(
            binary(Bin::Div, &b, &a).unwrap(),
            Value::F32(array![[10.0f32, 10.0], [10.0 / 3.0, 5.0]].into_dyn())
        );
    }

    #[test]
    fn integer_division_truncates_and_does_not_trap() {
        let a = Value::I64(array![7i64, -7, 5].into_dyn());
        let b = Value::I64(array![2i64, 2, 0].into_dyn());
        assert_eq!(
            binary(Bin::Div, &a, &b).unwrap(),
            Value::I64(array![3i64, -3, 0].into_dyn())
        );
    }

    #[test]
    fn mixed_types_are_rejected_except_pow() {
        let a = Value::F32(array![2.0f32, 3.0].into_dyn());
        let b = Value::I64(array![3i64, 2].into_dyn());
        assert!(binary(Bin::Add, &a, &b).is_err());
        assert_eq!(
            pow_mixed(&a, &b).unwrap(),
            Value::F32(array![8.0f32, 9.0].into_dyn())
        );
    }

    #[test]
    fn f16_math_goes_through_f32() {
        let a = Value::F16(array![f16::from_f32(1.5), f16::from_f32(-2.0)].into_dyn());
        let r = unary_float(&a, &AbsF).unwrap();
        assert_eq!(
            r,
            Value::F16(array![f16::from_f32(1.5), f16::from_f32(2.0)].into_dyn())
        );
    }

    #[test]
    fn round_is_half_to_even() {
        let a = Value::F32(array![0.5f32, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6].into_dyn());
        assert_eq!(
            unary_float(&a, &Round).unwrap(),
            Value::F32(array![0.0f32, 2.0, 2.0, -0.0, -2.0, 2.0, 3.0].into_dyn())
        );
    }

    #[test]
    fn comparisons_and_nan_max() {
        let a = Value::F32(array![1.0f32, f32::NAN, 3.0].into_dyn());
        let b = Value::F32(array![2.0f32, 1.0, 3.0].into_dyn());
        assert_eq!(
            compare(Cmp::Lt, &a, &b).unwrap(),
            Value::Bool(array![true, false, false].into_dyn())
        );
        assert_eq!(
            compare(Cmp::Eq, &a, &b).unwrap(),
            Value::Bool(array![false, false, true].into_dyn())
        );
        let m = binary(Bin::Max, &a, &b).unwrap();
        let m = m.as_f32().unwrap();
        assert_eq!(m[0], 2.0);
        assert!(m[1].is_nan());
    }
}
