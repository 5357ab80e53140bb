//! `Mod` (10, 13): element-wise remainder with numpy broadcasting, both inputs of one type.
//!
//! - `fmod = 0` (default): numpy `mod`, the remainder takes the divisor's sign
//!   (`r = fmod(a, b)`, plus `b` when `r != 0` and the signs of `r` and `b` differ). For floats
//!   a zero remainder takes the divisor's sign, `x mod 0` is NaN and `-3 mod inf` is inf, as in
//!   numpy; for integers `x mod 0` is 0 (the spec leaves it undefined; no trap).
//! - `fmod = 1`: C `fmod`, the remainder takes the dividend's sign (integers: truncated
//!   remainder, `x fmod 0` = 0).
//!
//! Float16 and bfloat16 are computed in f32 and rounded back. Every signed and unsigned integer
//! width of the spec (8 to 64 bits) is computed in its own type.

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{Elem, dname, err, req, zip_map};
use super::{BuildCtx, FnOp, Op, Registry};

fn float_mod(a: f64, b: f64, fmod: bool) -> f64 {
    let r = a % b;
    if fmod {
        return r;
    }
    if r != 0.0 && (r < 0.0) != (b < 0.0) {
        r + b
    } else if r == 0.0 {
        0f64.copysign(b)
    } else {
        r
    }
}

macro_rules! int_mod {
    ($name:ident, $t:ty) => {
        fn $name(a: $t, b: $t, fmod: bool) -> $t {
            if b == 0 {
                return 0;
            }
            let r = a.wrapping_rem(b);
            #[allow(unused_comparisons)]
            let differ = (r < 0) != (b < 0);
            if !fmod && r != 0 && differ {
                r.wrapping_add(b)
            } else {
                r
            }
        }
    };
}
int_mod!(mod_i64, i64);
int_mod!(mod_i32, i32);
int_mod!(mod_i8, i8);
int_mod!(mod_u8, u8);
int_mod!(mod_i16, i16);
int_mod!(mod_u16, u16);
int_mod!(mod_u32, u32);
int_mod!(mod_u64, u64);

/// Float16 or bfloat16: widened exactly, computed in f64, rounded once.
fn half_mod<T: Elem>(x: &ArrayD<T>, y: &ArrayD<T>, fmod: bool) -> Result<ArrayD<T>> {
    zip_map(x, y, |p, q| {
        T::from_f64(float_mod(p.to_f64(), q.to_f64(), fmod))
    })
}

fn modulo(a: &Value, b: &Value, fmod: bool) -> Result<Value> {
    Ok(match (a, b) {
        (Value::F32(x), Value::F32(y)) => Value::F32(zip_map(x, y, |p, q| {
            float_mod(f64::from(p), f64::from(q), fmod) as f32
        })?),
        (Value::F64(x), Value::F64(y)) => Value::F64(zip_map(x, y, |p, q| float_mod(p, q, fmod))?),
        (Value::F16(x), Value::F16(y)) => Value::F16(half_mod(x, y, fmod)?),
        (Value::I64(x), Value::I64(y)) => Value::I64(zip_map(x, y, |p, q| mod_i64(p, q, fmod))?),
        (Value::I32(x), Value::I32(y)) => Value::I32(zip_map(x, y, |p, q| mod_i32(p, q, fmod))?),
        (Value::I8(x), Value::I8(y)) => Value::I8(zip_map(x, y, |p, q| mod_i8(p, q, fmod))?),
        (Value::U8(x), Value::U8(y)) => Value::U8(zip_map(x, y, |p, q| mod_u8(p, q, fmod))?),
        (Value::I16(x), Value::I16(y)) => Value::I16(zip_map(x, y, |p, q| mod_i16(p, q, fmod))?),
        (Value::U16(x), Value::U16(y)) => Value::U16(zip_map(x, y, |p, q| mod_u16(p, q, fmod))?),
        (Value::U32(x), Value::U32(y)) => Value::U32(zip_map(x, y, |p, q| mod_u32(p, q, fmod))?),
        (Value::U64(x), Value::U64(y)) => Value::U64(zip_map(x, y, |p, q| mod_u64(p, q, fmod))?),
        (Value::BF16(x), Value::BF16(y)) => Value::BF16(half_mod(x, y, fmod)?),
        _ => {
            return Err(err(format!(
                "Mod of {} and {} (inputs must have one numeric type)",
                dname(a),
                dname(b)
            )));
        }
    })
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let fmod = match node.attr_or::<i64>("fmod", 0)? {
        0 => false,
        1 => true,
        v => return Err(node.error(format!("fmod must be 0 or 1, got {v}"))),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        Ok(vec![modulo(req(ins, 0)?, req(ins, 1)?, fmod)?])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "Mod", build);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_rules() {
        assert_eq!(mod_i64(-7, 3, false), 2);
        assert_eq!(mod_i64(7, -3, false), -2);
        assert_eq!(mod_i64(-7, 3, true), -1);
        assert_eq!(mod_i64(5, 0, false), 0);
        assert_eq!(mod_i8(i8::MIN, -1, false), 0);
        assert_eq!(float_mod(-7.5, 2.0, false), 0.5);
        assert_eq!(float_mod(-7.5, 2.0, true), -1.5);
        assert_eq!(float_mod(-3.0, f64::INFINITY, false), f64::INFINITY);
        assert!(float_mod(1.0, 0.0, false).is_nan());
        assert!(float_mod(4.0, -2.0, false).is_sign_negative());
    }
}
