//! `BitCast` (26): reinterprets each element's bits as the element type `to`, which must have
//! the same bit width; the shape is unchanged. Unlike `Cast` no value is converted (the spec's
//! little-endian byte order is the bit order of the in-memory values here). A bool is one
//! byte: 0 is false, any other byte reads as true.
//!
//! Pairs among the element types the runtime stores (float, float16, bfloat16, double, the
//! signed and unsigned integers, bool); other types are refused when the node is planned.

use half::{bf16, f16};
use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{dname, dtype_of, err, req};
use super::{BuildCtx, FnOp, Op, Registry};

/// An element's raw bits, zero-extended to 64.
trait RawBits: Copy {
    const WIDTH: u32;
    fn to_raw(self) -> u64;
    fn from_raw(bits: u64) -> Self;
}

macro_rules! raw_bits {
    ($t:ty, $w:expr, $x:ident => $to:expr, $b:ident => $from:expr) => {
        impl RawBits for $t {
            const WIDTH: u32 = $w;
            fn to_raw(self) -> u64 {
                let $x = self;
                $to
            }
            fn from_raw($b: u64) -> Self {
                $from
            }
        }
    };
}
raw_bits!(f32, 32, x => u64::from(x.to_bits()), b => f32::from_bits(b as u32));
raw_bits!(f64, 64, x => x.to_bits(), b => f64::from_bits(b));
raw_bits!(f16, 16, x => u64::from(x.to_bits()), b => f16::from_bits(b as u16));
raw_bits!(i64, 64, x => x as u64, b => b as i64);
raw_bits!(i32, 32, x => u64::from(x as u32), b => b as u32 as i32);
raw_bits!(i8, 8, x => u64::from(x as u8), b => b as u8 as i8);
raw_bits!(u8, 8, x => u64::from(x), b => b as u8);
raw_bits!(bool, 8, x => u64::from(x), b => b as u8 != 0);
raw_bits!(i16, 16, x => u64::from(x as u16), b => b as u16 as i16);
raw_bits!(u16, 16, x => u64::from(x), b => b as u16);
raw_bits!(u32, 32, x => u64::from(x), b => b as u32);
raw_bits!(u64, 64, x => x, b => b);
raw_bits!(bf16, 16, x => u64::from(x.to_bits()), b => bf16::from_bits(b as u16));

fn reinterpret<S: RawBits, D: RawBits>(a: &ArrayD<S>) -> ArrayD<D> {
    a.mapv(|x| D::from_raw(x.to_raw()))
}

fn to_type<D: RawBits>(v: &Value) -> ArrayD<D> {
    match v {
        Value::F32(a) => reinterpret(a),
        Value::F16(a) => reinterpret(a),
        Value::F64(a) => reinterpret(a),
        Value::I64(a) => reinterpret(a),
        Value::I32(a) => reinterpret(a),
        Value::I8(a) => reinterpret(a),
        Value::U8(a) => reinterpret(a),
        Value::Bool(a) => reinterpret(a),
        Value::I16(a) => reinterpret(a),
        Value::U16(a) => reinterpret(a),
        Value::U32(a) => reinterpret(a),
        Value::U64(a) => reinterpret(a),
        Value::BF16(a) => reinterpret(a),
    }
}

fn width(v: &Value) -> u32 {
    match v {
        Value::F32(_) => f32::WIDTH,
        Value::F16(_) => f16::WIDTH,
        Value::F64(_) => f64::WIDTH,
        Value::I64(_) => i64::WIDTH,
        Value::I32(_) => i32::WIDTH,
        Value::I8(_) => i8::WIDTH,
        Value::U8(_) => u8::WIDTH,
        Value::Bool(_) => bool::WIDTH,
        Value::I16(_) => i16::WIDTH,
        Value::U16(_) => u16::WIDTH,
        Value::U32(_) => u32::WIDTH,
        Value::U64(_) => u64::WIDTH,
        Value::BF16(_) => bf16::WIDTH,
    }
}

fn bitcast(v: &Value, to: DataType) -> Result<Value> {
    let dst_width = match to {
        DataType::Float => f32::WIDTH,
        DataType::Float16 => f16::WIDTH,
        DataType::Double => f64::WIDTH,
        DataType::Int64 => i64::WIDTH,
        DataType::Int32 => i32::WIDTH,
        DataType::Int8 => i8::WIDTH,
        DataType::Uint8 => u8::WIDTH,
        DataType::Bool => bool::WIDTH,
        DataType::Int16 => i16::WIDTH,
        DataType::Uint16 => u16::WIDTH,
        DataType::Uint32 => u32::WIDTH,
        DataType::Uint64 => u64::WIDTH,
        DataType::Bfloat16 => bf16::WIDTH,
        _ => return Err(err(format!("internal: BitCast to {to:?}"))),
    };
    if width(v) != dst_width {
        return Err(err(format!(
            "cannot reinterpret {} ({} bits) as {} ({dst_width} bits)",
            dname(v),
            width(v),
            crate::ir::tensor::dtype_name(to as i32)
        )));
    }
    Ok(match to {
        DataType::Float => Value::F32(to_type(v)),
        DataType::Float16 => Value::F16(to_type(v)),
        DataType::Double => Value::F64(to_type(v)),
        DataType::Int64 => Value::I64(to_type(v)),
        DataType::Int32 => Value::I32(to_type(v)),
        DataType::Int8 => Value::I8(to_type(v)),
        DataType::Uint8 => Value::U8(to_type(v)),
        DataType::Int16 => Value::I16(to_type(v)),
        DataType::Uint16 => Value::U16(to_type(v)),
        DataType::Uint32 => Value::U32(to_type(v)),
        DataType::Uint64 => Value::U64(to_type(v)),
        DataType::Bfloat16 => Value::BF16(to_type(v)),
        _ => Value::Bool(to_type(v)),
    })
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let code = node
        .attr::<i64>("to")?
        .ok_or_else(|| node.error("missing required attribute 'to'"))?;
    let to = dtype_of(code).map_err(|e| match e {
        Error::Unsupported(m) => node.error(format!("{m} is not supported")),
        e => node.error(e.to_string()),
    })?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        Ok(vec![bitcast(req(ins, 0)?, to)?])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "BitCast", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn keeps_the_bits() {
        let v = Value::F32(array![1.0f32, -0.0].into_dyn());
        assert_eq!(
            bitcast(&v, DataType::Int32).unwrap(),
            Value::I32(array![0x3f80_0000i32, i32::MIN].into_dyn())
        );
        let b = Value::I8(array![-1i8].into_dyn());
        assert_eq!(
            bitcast(&b, DataType::Uint8).unwrap(),
            Value::U8(array![255u8].into_dyn())
        );
        assert!(bitcast(&v, DataType::Double).is_err());
    }
}
