//! Typed access to ONNX tensors (initializers, Constant values, attribute tensors).
//!
//! A [`Tensor`] wraps a `TensorProto` whose payload is either `raw_data` (little-endian bytes,
//! shared zero-copy with the model's memory map) or one of the typed repeated fields. External
//! data is resolved by the loader before a `Tensor` is built, so every tensor here carries its
//! bytes. Declared sizes are checked before any allocation.

use std::borrow::Cow;

use bytes::Bytes;
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use crate::error::{Error, Result};
use crate::onnx::{TensorProto, tensor_proto::DataType};

#[cfg(target_endian = "big")]
compile_error!(
    "onnx-dynq reads tensor payloads as little-endian memory; big-endian is unsupported"
);

/// Size in bytes of one element of `dt`, or `None` for types without a fixed width (string) or
/// that are sub-byte (int4).
pub fn elem_size(dt: DataType) -> Option<usize> {
    use DataType::*;
    Some(match dt {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool => 1,
        Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Double | Uint64 | Complex64 => 8,
        Complex128 => 16,
        _ => return None,
    })
}

/// Lower-case name of an element type as ONNX spells it in docs (`float`, `int64`, ...).
pub fn dtype_name(dt: i32) -> String {
    match DataType::try_from(dt) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(DataType::Float16) => "float16".into(),
        Ok(d) => d.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("dtype#{dt}"),
    }
}

/// Number of elements a shape holds, checked against overflow and negative dims.
pub fn checked_numel(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Rust element types that map onto an ONNX tensor element type.
pub trait Element: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DataType;
    /// Reinterpret little-endian bytes in place when size and alignment allow.
    fn cast_bytes(bytes: &[u8]) -> Option<&[Self]>;
    /// Decode little-endian bytes (any alignment); `bytes.len()` is a multiple of the size.
    fn decode_bytes(bytes: &[u8]) -> Vec<Self>;
    /// Values stored in the proto's typed repeated field for this type.
    fn from_typed_fields(p: &TensorProto) -> Vec<Self>;
    /// Little-endian bytes of a slice.
    fn encode(values: &[Self]) -> Vec<u8>;
}

macro_rules! pod_element {
    ($t:ty, $dt:ident, |$p:ident| $typed:expr) => {
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
            fn cast_bytes(bytes: &[u8]) -> Option<&[Self]> {
                bytemuck::try_cast_slice(bytes).ok()
            }
            fn decode_bytes(bytes: &[u8]) -> Vec<Self> {
                bytemuck::pod_collect_to_vec(bytes)
            }
            fn from_typed_fields($p: &TensorProto) -> Vec<Self> {
                $typed
            }
            fn encode(values: &[Self]) -> Vec<u8> {
                bytemuck::cast_slice(values).to_vec()
            }
        }
    };
}

pod_element!(f32, Float, |p| p.float_data.clone());
pod_element!(f64, Double, |p| p.double_data.clone());
pod_element!(i64, Int64, |p| p.int64_data.clone());
pod_element!(i32, Int32, |p| p.int32_data.clone());
pod_element!(i8, Int8, |p| p
    .int32_data
    .iter()
    .map(|&v| v as i8)
    .collect());
pod_element!(u8, Uint8, |p| p
    .int32_data
    .iter()
    .map(|&v| v as u8)
    .collect());
pod_element!(i16, Int16, |p| p
    .int32_data
    .iter()
    .map(|&v| v as i16)
    .collect());
pod_element!(u16, Uint16, |p| p
    .int32_data
    .iter()
    .map(|&v| v as u16)
    .collect());
pod_element!(u32, Uint32, |p| p
    .uint64_data
    .iter()
    .map(|&v| v as u32)
    .collect());
pod_element!(u64, Uint64, |p| p.uint64_data.clone());
pod_element!(f16, Float16, |p| p
    .int32_data
    .iter()
    .map(|&v| f16::from_bits(v as u16))
    .collect());
pod_element!(bf16, Bfloat16, |p| p
    .int32_data
    .iter()
    .map(|&v| bf16::from_bits(v as u16))
    .collect());

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    fn cast_bytes(_: &[u8]) -> Option<&[Self]> {
        // Not every byte is a valid `bool`, so never reinterpret.
        None
    }
    fn decode_bytes(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&b| b != 0).collect()
    }
    fn from_typed_fields(p: &TensorProto) -> Vec<Self> {
        p.int32_data.iter().map(|&v| v != 0).collect()
    }
    fn encode(values: &[Self]) -> Vec<u8> {
        values.iter().map(|&b| b as u8).collect()
    }
}

/// An ONNX tensor with checked typed access.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub proto: TensorProto,
}

impl Tensor {
    /// Wraps a proto after checking that its declared shape and its payload agree.
    pub fn new(proto: TensorProto) -> Result<Self> {
        let t = Tensor { proto };
        t.check_size()?;
        Ok(t)
    }

    /// Builds a tensor from an ndarray, stored as `raw_data`.
    pub fn from_array<T: Element>(name: impl Into<String>, array: &ArrayViewD<T>) -> Self {
        let dims = array.shape().iter().map(|&d| d as i64).collect();
        let bytes = match array.as_slice() {
            Some(s) => T::encode(s),
            None => T::encode(&array.iter().copied().collect::<Vec<_>>()),
        };
        Tensor {
            proto: TensorProto {
                name: Some(name.into()),
                dims,
                data_type: Some(T::DTYPE as i32),
                raw_data: Some(Bytes::from(bytes)),
                ..Default::default()
            },
        }
    }

    /// Builds a tensor from a flat vector and a shape.
    pub fn from_vec<T: Element>(name: impl Into<String>, dims: &[usize], values: Vec<T>) -> Self {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        Tensor {
            proto: TensorProto {
                name: Some(name.into()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(T::DTYPE as i32),
                raw_data: Some(Bytes::from(T::encode(&values))),
                ..Default::default()
            },
        }
    }

    pub fn name(&self) -> &str {
        self.proto.name()
    }

    pub fn dims(&self) -> &[i64] {
        &self.proto.dims
    }

    /// The dims as `usize` (valid after [`Tensor::new`]).
    pub fn shape(&self) -> Vec<usize> {
        self.proto.dims.iter().map(|&d| d.max(0) as usize).collect()
    }

    pub fn data_type(&self) -> Result<DataType> {
        DataType::try_from(self.proto.data_type()).map_err(|_| {
            Error::tensor(
                self.name(),
                format!("unknown element type {}", self.proto.data_type()),
            )
        })
    }

    pub fn numel(&self) -> usize {
        checked_numel(&self.proto.dims).unwrap_or(0)
    }

    /// Bytes the payload takes (raw or typed fields).
    pub fn byte_len(&self) -> usize {
        let p = &self.proto;
        if let Some(raw) = &p.raw_data {
            return raw.len();
        }
        let size = self
            .data_type()
            .ok()
            .and_then(elem_size)
            .unwrap_or_default();
        if p.data_type() == DataType::String as i32 {
            return p.string_data.iter().map(Vec::len).sum();
        }
        self.numel() * size
    }

    fn typed_field_len(&self) -> usize {
        let p = &self.proto;
        p.float_data.len()
            + p.int32_data.len()
            + p.string_data.len()
            + p.int64_data.len()
            + p.double_data.len()
            + p.uint64_data.len()
    }

    /// Checks that the declared dims, element type and payload size agree.
    pub fn check_size(&self) -> Result<()> {
        let p = &self.proto;
        let numel = checked_numel(&p.dims)
            .ok_or_else(|| Error::tensor(self.name(), format!("invalid dims {:?}", p.dims)))?;
        if p.data_location() == crate::onnx::tensor_proto::DataLocation::External {
            // Resolved (and size-checked) by the loader.
            return Ok(());
        }
        let dt = self.data_type()?;
        if dt == DataType::Undefined {
            return Err(Error::tensor(self.name(), "element type is UNDEFINED"));
        }
        if let Some(raw) = &p.raw_data {
            if let Some(size) = elem_size(dt) {
                let expected = numel.saturating_mul(size);
                if raw.len() != expected {
                    return Err(Error::tensor(
                        self.name(),
                        format!(
                            "declares shape {:?} of {} ({} bytes) but carries {} bytes",
                            p.dims,
                            dtype_name(dt as i32),
                            expected,
                            raw.len()
                        ),
                    ));
                }
            }
        } else if elem_size(dt).is_some() || dt == DataType::String {
            let have = self.typed_field_len();
            // Complex types store two floats per element; others one value per element.
            let per = match dt {
                DataType::Complex64 | DataType::Complex128 => 2,
                _ => 1,
            };
            if have != numel * per {
                return Err(Error::tensor(
                    self.name(),
                    format!(
                        "declares shape {:?} ({} elements) but carries {} values",
                        p.dims, numel, have
                    ),
                ));
            }
        }
        Ok(())
    }

    fn expect_type<T: Element>(&self) -> Result<()> {
        let dt = self.data_type()?;
        if dt != T::DTYPE {
            return Err(Error::tensor(
                self.name(),
                format!(
                    "is {}, expected {}",
                    dtype_name(dt as i32),
                    dtype_name(T::DTYPE as i32)
                ),
            ));
        }
        Ok(())
    }

    /// The elements as a slice: borrowed from `raw_data` when aligned, else decoded.
    pub fn as_slice<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        self.expect_type::<T>()?;
        self.check_size()?;
        match &self.proto.raw_data {
            Some(raw) => Ok(match T::cast_bytes(raw) {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(T::decode_bytes(raw)),
            }),
            None => Ok(Cow::Owned(T::from_typed_fields(&self.proto))),
        }
    }

    /// The tensor as an n-d array view (zero-copy when `raw_data` is aligned).
    pub fn view<T: Element>(&self) -> Result<CowArray<'_, T, IxDyn>> {
        let shape = IxDyn(&self.shape());
        let arr = match self.as_slice::<T>()? {
            Cow::Borrowed(s) => CowArray::from(
                ArrayViewD::from_shape(shape, s)
                    .map_err(|e| Error::tensor(self.name(), e.to_string()))?,
            ),
            Cow::Owned(v) => CowArray::from(
                ArrayD::from_shape_vec(shape, v)
                    .map_err(|e| Error::tensor(self.name(), e.to_string()))?,
            ),
        };
        Ok(arr)
    }

    /// An owned copy as an n-d array.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>> {
        Ok(self.view::<T>()?.into_owned())
    }

    /// Integer values of an int64 or int32 tensor (shape operands, axes, pads).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        match self.data_type()? {
            DataType::Int64 => Ok(self.as_slice::<i64>()?.into_owned()),
            DataType::Int32 => Ok(self.as_slice::<i32>()?.iter().map(|&v| v as i64).collect()),
            dt => Err(Error::tensor(
                self.name(),
                format!("is {}, expected an integer tensor", dtype_name(dt as i32)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_raw_data() {
        let a = ndarray::arr2(&[[1.0f32, -2.0], [3.5, 0.25]]).into_dyn();
        let t = Tensor::from_array("w", &a.view());
        assert_eq!(t.dims(), &[2, 2]);
        assert_eq!(t.to_array::<f32>().unwrap(), a);
        assert!(t.to_array::<i64>().is_err());
    }

    #[test]
    fn reads_typed_fields() {
        let t = Tensor::new(TensorProto {
            name: Some("h".into()),
            dims: vec![3],
            data_type: Some(DataType::Float16 as i32),
            int32_data: vec![0x3c00, 0x4000, 0xc000],
            ..Default::default()
        })
        .unwrap();
        let v = t.as_slice::<f16>().unwrap();
        assert_eq!(
            v.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            vec![1.0, 2.0, -2.0]
        );
    }

    #[test]
    fn rejects_size_mismatch() {
        let err = Tensor::new(TensorProto {
            name: Some("bad".into()),
            dims: vec![4, 4],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(Bytes::from(vec![0u8; 60])),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'bad'") && err.contains("64 bytes") && err.contains("60 bytes"),
            "{err}"
        );
    }

    #[test]
    fn rejects_negative_and_overflowing_dims() {
        for dims in [vec![-1, 2], vec![i64::MAX, i64::MAX]] {
            let r = Tensor::new(TensorProto {
                name: Some("d".into()),
                dims,
                data_type: Some(DataType::Float as i32),
                raw_data: Some(Bytes::new()),
                ..Default::default()
            });
            assert!(r.is_err());
        }
    }

    #[test]
    fn unaligned_raw_data_is_decoded() {
        let mut buf = vec![0u8; 9];
        buf[1..5].copy_from_slice(&1.5f32.to_le_bytes());
        buf[5..9].copy_from_slice(&(-4.0f32).to_le_bytes());
        let raw = Bytes::from(buf).slice(1..9);
        let t = Tensor::new(TensorProto {
            name: Some("u".into()),
            dims: vec![2],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(&*t.as_slice::<f32>().unwrap(), &[1.5, -4.0]);
    }
}
