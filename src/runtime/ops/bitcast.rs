//! `BitCast` (26): reinterprets each element's bits as the element type `to`, which must have
//! the same width; the shape is unchanged. Unlike `Cast` no value is converted. Done on the
//! tensor's little-endian bytes (the spec's byte order), the same encoding the runtime reads
//! initializers from, so every element type the runtime stores is covered without a table of
//! pairs. A bool is one byte: 0 is false, any other byte reads as true.
//!
//! A `to` the runtime does not store is refused when the node is planned.

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::ir::tensor::{dtype_name, elem_size};
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{dname, dtype_of, err, req};
use super::{BuildCtx, FnOp, Op, Registry};

fn bitcast(v: &Value, to: DataType) -> Result<Value> {
    let (from_size, to_size) = (elem_size(v.dtype()), elem_size(to));
    if from_size.is_none() || from_size != to_size {
        return Err(err(format!(
            "cannot reinterpret {} as {} (the widths differ)",
            dname(v),
            dtype_name(to as i32)
        )));
    }
    let mut t = v.to_tensor("BitCast");
    t.proto.data_type = Some(to as i32);
    Value::from_tensor(&t)
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
        let t = Value::Bool(array![true, false].into_dyn());
        assert_eq!(
            bitcast(&t, DataType::Uint8).unwrap(),
            Value::U8(array![1u8, 0].into_dyn())
        );
    }
}
