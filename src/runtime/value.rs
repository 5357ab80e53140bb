//! The runtime tensor: an n-d array of one of the element types the runtime executes.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::onnx::tensor_proto::DataType;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
    I16(ArrayD<i16>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    BF16(ArrayD<bf16>),
}

/// Applies `$body` to the inner array whatever its element type.
#[macro_export]
macro_rules! dispatch_value {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            $crate::runtime::Value::F32($a) => $body,
            $crate::runtime::Value::F16($a) => $body,
            $crate::runtime::Value::F64($a) => $body,
            $crate::runtime::Value::I64($a) => $body,
            $crate::runtime::Value::I32($a) => $body,
            $crate::runtime::Value::I8($a) => $body,
            $crate::runtime::Value::U8($a) => $body,
            $crate::runtime::Value::Bool($a) => $body,
            $crate::runtime::Value::I16($a) => $body,
            $crate::runtime::Value::U16($a) => $body,
            $crate::runtime::Value::U32($a) => $body,
            $crate::runtime::Value::U64($a) => $body,
            $crate::runtime::Value::BF16($a) => $body,
        }
    };
}

impl Value {
    pub fn dtype(&self) -> DataType {
        match self {
            Value::F32(_) => DataType::Float,
            Value::F16(_) => DataType::Float16,
            Value::F64(_) => DataType::Double,
            Value::I64(_) => DataType::Int64,
            Value::I32(_) => DataType::Int32,
            Value::I8(_) => DataType::Int8,
            Value::U8(_) => DataType::Uint8,
            Value::Bool(_) => DataType::Bool,
            Value::I16(_) => DataType::Int16,
            Value::U16(_) => DataType::Uint16,
            Value::U32(_) => DataType::Uint32,
            Value::U64(_) => DataType::Uint64,
            Value::BF16(_) => DataType::Bfloat16,
        }
    }

    pub fn shape(&self) -> &[usize] {
        dispatch_value!(self, a => a.shape())
    }

    pub fn len(&self) -> usize {
        dispatch_value!(self, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts an initializer or Constant tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Value> {
        Ok(match t.data_type()? {
            DataType::Float => Value::F32(t.to_array()?),
            DataType::Float16 => Value::F16(t.to_array()?),
            DataType::Double => Value::F64(t.to_array()?),
            DataType::Int64 => Value::I64(t.to_array()?),
            DataType::Int32 => Value::I32(t.to_array()?),
            DataType::Int8 => Value::I8(t.to_array()?),
            DataType::Uint8 => Value::U8(t.to_array()?),
            DataType::Bool => Value::Bool(t.to_array()?),
            DataType::Int16 => Value::I16(t.to_array()?),
            DataType::Uint16 => Value::U16(t.to_array()?),
            DataType::Uint32 => Value::U32(t.to_array()?),
            DataType::Uint64 => Value::U64(t.to_array()?),
            DataType::Bfloat16 => Value::BF16(t.to_array()?),
            dt => {
                return Err(Error::tensor(
                    t.name(),
                    format!(
                        "element type {} is not supported by the runtime",
                        crate::ir::tensor::dtype_name(dt as i32)
                    ),
                ));
            }
        })
    }

    /// Converts back to a named tensor (for saving outputs and folded constants).
    pub fn to_tensor(&self, name: &str) -> Tensor {
        dispatch_value!(self, a => Tensor::from_array(name, &a.view()))
    }

    pub fn scalar_f32(v: f32) -> Value {
        Value::F32(ArrayD::from_elem(IxDyn(&[]), v))
    }
}

macro_rules! value_from {
    ($t:ty, $var:ident, $as:ident) => {
        impl From<ArrayD<$t>> for Value {
            fn from(a: ArrayD<$t>) -> Self {
                Value::$var(a)
            }
        }
        impl Value {
            /// The array when the value has this element type.
            pub fn $as(&self) -> Option<&ArrayD<$t>> {
                match self {
                    Value::$var(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}

value_from!(f32, F32, as_f32);
value_from!(f16, F16, as_f16);
value_from!(f64, F64, as_f64);
value_from!(i64, I64, as_i64);
value_from!(i32, I32, as_i32);
value_from!(i8, I8, as_i8);
value_from!(u8, U8, as_u8);
value_from!(bool, Bool, as_bool);
value_from!(i16, I16, as_i16);
value_from!(u16, U16, as_u16);
value_from!(u32, U32, as_u32);
value_from!(u64, U64, as_u64);
value_from!(bf16, BF16, as_bf16);
