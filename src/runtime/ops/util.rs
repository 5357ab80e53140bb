//! Helpers shared by the op families: element traits over the runtime's types, casts between
//! them, numpy broadcasting, axis normalization and reading shape operands.
//!
//! Cast semantics follow ONNX `Cast` (as numpy's `astype` and onnxruntime do it): float to
//! integer truncates toward zero (out-of-range values saturate, NaN becomes 0), integer to
//! narrower integer wraps, anything to bool is `x != 0`, bool to number is 0 or 1, and float16
//! rounds to nearest even.

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};

use crate::error::{Error, Result};
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

/// An error from inside an op; the session adds the node's name.
pub fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// An element type the runtime stores in a [`Value`].
pub trait Elem: Copy + Default + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    const DT: DataType;
    fn to_f64(self) -> f64;
    fn to_i64(self) -> i64;
    fn from_f64(v: f64) -> Self;
    fn from_i64(v: i64) -> Self;
    fn wrap(a: ArrayD<Self>) -> Value;
    fn unwrap(v: &Value) -> Option<&ArrayD<Self>>;
}

macro_rules! int_elem {
    ($t:ty, $var:ident, $dt:ident) => {
        impl Elem for $t {
            const DT: DataType = DataType::$dt;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_f64(v: f64) -> Self {
                // Truncates toward zero; `as` saturates and maps NaN to 0.
                v as $t
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn wrap(a: ArrayD<Self>) -> Value {
                Value::$var(a)
            }
            fn unwrap(v: &Value) -> Option<&ArrayD<Self>> {
                match v {
                    Value::$var(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}
int_elem!(i64, I64, Int64);
int_elem!(i32, I32, Int32);
int_elem!(i8, I8, Int8);
int_elem!(u8, U8, Uint8);
int_elem!(i16, I16, Int16);
int_elem!(u16, U16, Uint16);
int_elem!(u32, U32, Uint32);
// `to_i64` wraps above i64::MAX; integer casts only keep the low bits, which that preserves.
int_elem!(u64, U64, Uint64);

impl Elem for f32 {
    const DT: DataType = DataType::Float;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
    fn wrap(a: ArrayD<Self>) -> Value {
        Value::F32(a)
    }
    fn unwrap(v: &Value) -> Option<&ArrayD<Self>> {
        v.as_f32()
    }
}
impl Elem for f64 {
    const DT: DataType = DataType::Double;
    fn to_f64(self) -> f64 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_i64(v: i64) -> Self {
        v as f64
    }
    fn wrap(a: ArrayD<Self>) -> Value {
        Value::F64(a)
    }
    fn unwrap(v: &Value) -> Option<&ArrayD<Self>> {
        v.as_f64()
    }
}
/// The 16-bit float types: computed through f32 (exact), rounded once to nearest even.
macro_rules! half_elem {
    ($t:ty, $var:ident, $dt:ident, $as:ident) => {
        impl Elem for $t {
            const DT: DataType = DataType::$dt;
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn to_i64(self) -> i64 {
                self.to_f32() as i64
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn from_i64(v: i64) -> Self {
                <$t>::from_f64(v as f64)
            }
            fn wrap(a: ArrayD<Self>) -> Value {
                Value::$var(a)
            }
            fn unwrap(v: &Value) -> Option<&ArrayD<Self>> {
                v.$as()
            }
        }
    };
}
half_elem!(f16, F16, Float16, as_f16);
half_elem!(bf16, BF16, Bfloat16, as_bf16);
impl Elem for bool {
    const DT: DataType = DataType::Bool;
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn wrap(a: ArrayD<Self>) -> Value {
        Value::Bool(a)
    }
    fn unwrap(v: &Value) -> Option<&ArrayD<Self>> {
        v.as_bool()
    }
}

/// Whether `dt` is a floating-point type the runtime stores.
pub fn is_float(dt: DataType) -> bool {
    matches!(
        dt,
        DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16
    )
}

fn cast_elem<S: Elem, D: Elem>(v: S) -> D {
    if is_float(S::DT) || is_float(D::DT) {
        D::from_f64(v.to_f64())
    } else {
        D::from_i64(v.to_i64())
    }
}

fn cast_array<S: Elem, D: Elem>(a: &ArrayD<S>) -> ArrayD<D> {
    a.mapv(cast_elem::<S, D>)
}

/// The runtime type for an ONNX `to` attribute or a dtype number.
pub fn dtype_of(code: i64) -> Result<DataType> {
    let dt = i32::try_from(code)
        .ok()
        .and_then(|c| DataType::try_from(c).ok())
        .ok_or_else(|| err(format!("unknown element type {code}")))?;
    match dt {
        DataType::Float
        | DataType::Float16
        | DataType::Double
        | DataType::Int64
        | DataType::Int32
        | DataType::Int8
        | DataType::Uint8
        | DataType::Bool
        | DataType::Int16
        | DataType::Uint16
        | DataType::Uint32
        | DataType::Uint64
        | DataType::Bfloat16 => Ok(dt),
        _ => Err(Error::Unsupported(format!(
            "element type {} in the runtime",
            crate::ir::tensor::dtype_name(code as i32)
        ))),
    }
}

/// Converts a value to another element type (ONNX `Cast`).
pub fn cast(v: &Value, to: DataType) -> Result<Value> {
    if v.dtype() == to {
        return Ok(v.clone());
    }
    fn to_t<D: Elem>(v: &Value) -> ArrayD<D> {
        match v {
            Value::F32(a) => cast_array(a),
            // f16 -> f32 is exact, then f32 -> target rounds once.
            Value::F16(a) => cast_array(&a.mapv(f16::to_f32)),
            Value::F64(a) => cast_array(a),
            Value::I64(a) => cast_array(a),
            Value::I32(a) => cast_array(a),
            Value::I8(a) => cast_array(a),
            Value::U8(a) => cast_array(a),
            Value::Bool(a) => cast_array(a),
            Value::I16(a) => cast_array(a),
            Value::U16(a) => cast_array(a),
            Value::U32(a) => cast_array(a),
            Value::U64(a) => cast_array(a),
            Value::BF16(a) => cast_array(&a.mapv(bf16::to_f32)),
        }
    }
    Ok(match to {
        DataType::Float => Value::F32(to_t(v)),
        DataType::Float16 => match v {
            // Round directly from the source precision: f64 -> f16 must not round twice.
            Value::F64(a) => Value::F16(a.mapv(f16::from_f64)),
            _ => Value::F16(to_t::<f32>(v).mapv(f16::from_f32)),
        },
        DataType::Double => Value::F64(to_t(v)),
        DataType::Int64 => Value::I64(to_t(v)),
        DataType::Int32 => Value::I32(to_t(v)),
        DataType::Int8 => Value::I8(to_t(v)),
        DataType::Uint8 => Value::U8(to_t(v)),
        DataType::Bool => Value::Bool(to_t(v)),
        DataType::Int16 => Value::I16(to_t(v)),
        DataType::Uint16 => Value::U16(to_t(v)),
        DataType::Uint32 => Value::U32(to_t(v)),
        DataType::Uint64 => Value::U64(to_t(v)),
        DataType::Bfloat16 => match v {
            Value::F64(a) => Value::BF16(a.mapv(bf16::from_f64)),
            _ => Value::BF16(to_t::<f32>(v).mapv(bf16::from_f32)),
        },
        dt => {
            return Err(Error::Unsupported(format!(
                "cast to {}",
                crate::ir::tensor::dtype_name(dt as i32)
            )));
        }
    })
}

/// numpy broadcasting of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(err(format!(
                    "shapes {a:?} and {b:?} cannot be broadcast together"
                )));
            }
        };
    }
    Ok(out)
}

/// Broadcasts a view to `shape` (which must be a broadcast of its shape).
pub fn bview<'a, T>(a: &'a ArrayD<T>, shape: &[usize]) -> Result<ArrayViewD<'a, T>> {
    a.broadcast(IxDyn(shape)).ok_or_else(|| {
        err(format!(
            "cannot broadcast shape {:?} to {shape:?}",
            a.shape()
        ))
    })
}

/// Elementwise `f(a, b)` with numpy broadcasting.
pub fn zip_map<A: Copy, B: Copy, O>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> O,
) -> Result<ArrayD<O>> {
    // Fast paths on row-major data, the common cases of exported graphs: equal shapes, a
    // scalar operand, and a bias-like operand that repeats over the leading axes.
    if let (Some(sa), Some(sb)) = (a.as_slice(), b.as_slice()) {
        if a.shape() == b.shape() {
            let v = sa.iter().zip(sb).map(|(&x, &y)| f(x, y)).collect();
            return from_vec(a.shape(), v);
        }
        let shape = broadcast_shape(a.shape(), b.shape())?;
        crate::runtime::budget::check_shape::<O>(&shape)?;
        if sb.len() == 1 && shape == a.shape() {
            let y = sb[0];
            return from_vec(&shape, sa.iter().map(|&x| f(x, y)).collect());
        }
        if sa.len() == 1 && shape == b.shape() {
            let x = sa[0];
            return from_vec(&shape, sb.iter().map(|&y| f(x, y)).collect());
        }
        if shape == a.shape() && is_suffix(b.shape(), a.shape()) && !sb.is_empty() {
            let mut v = Vec::with_capacity(sa.len());
            for chunk in sa.chunks_exact(sb.len()) {
                v.extend(chunk.iter().zip(sb).map(|(&x, &y)| f(x, y)));
            }
            return from_vec(&shape, v);
        }
        if shape == b.shape() && is_suffix(a.shape(), b.shape()) && !sa.is_empty() {
            let mut v = Vec::with_capacity(sb.len());
            for chunk in sb.chunks_exact(sa.len()) {
                v.extend(sa.iter().zip(chunk).map(|(&x, &y)| f(x, y)));
            }
            return from_vec(&shape, v);
        }
    }
    if a.shape() == b.shape() {
        return Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)));
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    // Two operands that broadcast each other ([n, 1] and [1, n]) make an output larger than
    // either.
    crate::runtime::budget::check_shape::<O>(&shape)?;
    let av = bview(a, &shape)?;
    let bv = bview(b, &shape)?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// Whether `small`, without its leading 1s, is a trailing part of `full` (so it repeats
/// whole over `full`'s leading axes in row-major order).
fn is_suffix(small: &[usize], full: &[usize]) -> bool {
    let s: &[usize] = match small.iter().position(|&d| d != 1) {
        Some(i) => &small[i..],
        None => &[],
    };
    s.len() <= full.len() && full[full.len() - s.len()..] == *s
}

/// An axis in `-rank..rank` as an index.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(err(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

/// Integer values of an int64/int32 operand (shapes, axes, pads, repeats).
pub fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::I64(a) => Ok(a.iter().copied().collect()),
        Value::I32(a) => Ok(a.iter().map(|&x| x as i64).collect()),
        other => Err(err(format!(
            "{what} must be an int64 tensor, got {}",
            crate::ir::tensor::dtype_name(other.dtype() as i32)
        ))),
    }
}

/// The input at `i`, or an error naming it.
pub fn req<'a>(inputs: &[Option<&'a Value>], i: usize) -> Result<&'a Value> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| err(format!("missing required input {i}")))
}

/// The input at `i` if given.
pub fn opt<'a>(inputs: &[Option<&'a Value>], i: usize) -> Option<&'a Value> {
    inputs.get(i).copied().flatten()
}

/// Reads a scalar (or one-element tensor) as f64.
pub fn scalar_f64(v: &Value) -> Result<f64> {
    if v.len() != 1 {
        return Err(err(format!("expected a scalar, got shape {:?}", v.shape())));
    }
    Ok(crate::dispatch_value!(v, a => a.iter().next().map(|x| x.to_f64()).unwrap_or(0.0)))
}

/// A float (f16/f32/f64) operand as its shape and row-major f64 values, for ops that compute
/// in f64; the error names `what`.
pub fn float_values(v: &Value, what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    if !is_float(v.dtype()) {
        return Err(err(format!(
            "{what} must be a float tensor, got {}",
            dname(v)
        )));
    }
    match cast(v, DataType::Double)? {
        Value::F64(a) => Ok((a.shape().to_vec(), a.iter().copied().collect())),
        _ => Err(err("internal: cast to double")),
    }
}

/// A value's element type as a readable name.
pub fn dname(v: &Value) -> String {
    crate::ir::tensor::dtype_name(v.dtype() as i32)
}

/// Shape from i64 dims, refusing negative entries.
pub fn to_shape(dims: &[i64]) -> Result<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("invalid dimension {d}"))))
        .collect()
}

/// An array of `shape` from a vector whose length the caller computed from `shape`.
pub fn from_vec<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| err(e.to_string()))
}

/// Maps an f16 array through f32 math and rounds back (the runtime's f16 policy).
pub fn via_f32(
    a: &ArrayD<f16>,
    f: impl FnOnce(&ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<ArrayD<f16>> {
    Ok(f(&a.mapv(f16::to_f32))?.mapv(f16::from_f32))
}

/// Applies `$body` (generic over the element type) to the array inside a value and wraps the
/// result in the same variant. `$body` yields an `ArrayD` of the same element type.
#[macro_export]
macro_rules! map_same {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            $crate::runtime::Value::F32($a) => $crate::runtime::Value::F32($body),
            $crate::runtime::Value::F16($a) => $crate::runtime::Value::F16($body),
            $crate::runtime::Value::F64($a) => $crate::runtime::Value::F64($body),
            $crate::runtime::Value::I64($a) => $crate::runtime::Value::I64($body),
            $crate::runtime::Value::I32($a) => $crate::runtime::Value::I32($body),
            $crate::runtime::Value::I8($a) => $crate::runtime::Value::I8($body),
            $crate::runtime::Value::U8($a) => $crate::runtime::Value::U8($body),
            $crate::runtime::Value::Bool($a) => $crate::runtime::Value::Bool($body),
            $crate::runtime::Value::I16($a) => $crate::runtime::Value::I16($body),
            $crate::runtime::Value::U16($a) => $crate::runtime::Value::U16($body),
            $crate::runtime::Value::U32($a) => $crate::runtime::Value::U32($body),
            $crate::runtime::Value::U64($a) => $crate::runtime::Value::U64($body),
            $crate::runtime::Value::BF16($a) => $crate::runtime::Value::BF16($body),
        }
    };
}

/// An owned copy in standard (row-major) layout, which kernels that read slices rely on.
pub fn standard<T: Clone>(v: ArrayViewD<T>) -> ArrayD<T> {
    v.as_standard_layout().into_owned()
}

/// An index from input data, `-dim..dim` (negative counts from the end), as a position; the
/// error names `what` (the input or attribute the index came from).
pub fn index_in(i: i64, dim: usize, what: &str) -> Result<usize> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if j < 0 || j >= d {
        return Err(err(format!(
            "{what} value {i} is out of range for a dimension of size {dim}"
        )));
    }
    Ok(j as usize)
}

/// The most elements an op allocates for one output; a larger shape is an error rather than
/// an allocation failure.
pub const MAX_ELEMS: usize = 1 << 31;

/// The element count of `shape`, or an error when it overflows, passes [`MAX_ELEMS`], or
/// (at one byte per element, a lower bound) the memory budget. Callers that know the element
/// type check the exact size with [`budget::check_shape`](crate::runtime::budget::check_shape).
pub fn elem_count(shape: &[usize]) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMS)
        .ok_or_else(|| err(format!("shape {shape:?} has too many elements")))?;
    crate::runtime::budget::check_bytes(n as u64)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn casts_like_numpy() {
        let v = Value::F32(array![-1.7f32, 2.9, 300.0, f32::NAN].into_dyn());
        assert_eq!(
            cast(&v, DataType::Int64).unwrap(),
            Value::I64(array![-1i64, 2, 300, 0].into_dyn())
        );
        assert_eq!(
            cast(&v, DataType::Bool).unwrap(),
            Value::Bool(array![true, true, true, true].into_dyn())
        );
        let i = Value::I64(array![257i64, -1].into_dyn());
        assert_eq!(
            cast(&i, DataType::Uint8).unwrap(),
            Value::U8(array![1u8, 255].into_dyn())
        );
    }

    #[test]
    fn casts_the_16_bit_and_unsigned_types() {
        // bfloat16 rounds to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7.
        let v = Value::F32(array![1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::NAN].into_dyn());
        let Value::BF16(b) = cast(&v, DataType::Bfloat16).unwrap() else {
            panic!("not bf16")
        };
        assert_eq!(b[0].to_f32(), 1.0);
        assert_eq!(b[1].to_f32(), 1.0 + 4.0 / 256.0);
        assert!(b[2].is_nan());
        // u64 above i64::MAX survives integer casts bit-exactly and widens to float.
        let u = Value::U64(array![u64::MAX, 1 << 63].into_dyn());
        assert_eq!(
            cast(&u, DataType::Uint32).unwrap(),
            Value::U32(array![u32::MAX, 0].into_dyn())
        );
        assert_eq!(
            cast(&u, DataType::Double).unwrap(),
            Value::F64(array![18446744073709551615.0, 9223372036854775808.0].into_dyn())
        );
        // Narrowing wraps; float to integer truncates toward zero.
        let i = Value::I32(array![70000i32, -1].into_dyn());
        assert_eq!(
            cast(&i, DataType::Int16).unwrap(),
            Value::I16(array![4464i16, -1].into_dyn())
        );
        assert_eq!(
            cast(&i, DataType::Uint16).unwrap(),
            Value::U16(array![4464u16, 65535].into_dyn())
        );
        let f = Value::F64(array![-2.7f64, 65535.9].into_dyn());
        assert_eq!(
            cast(&f, DataType::Int16).unwrap(),
            Value::I16(array![-2i16, i16::MAX].into_dyn())
        );
    }

    #[test]
    fn broadcasts() {
        assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert!(broadcast_shape(&[2], &[3]).is_err());
        let a = array![[1.0f32], [2.0]].into_dyn();
        let b = array![10.0f32, 20.0, 30.0].into_dyn();
        let c = zip_map(&a, &b, |x, y| x + y).unwrap();
        assert_eq!(
            c,
            array![[11.0f32, 21.0, 31.0], [12.0, 22.0, 32.0]].into_dyn()
        );
    }

    #[test]
    fn broadcast_fast_paths_match_the_general_path() {
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| (i[0] * 12 + i[1] * 4 + i[2]) as i64);
        for bshape in [
            vec![4],
            vec![1, 3, 4],
            vec![3, 1],
            vec![1],
            vec![2, 3, 4],
            vec![1, 1, 1],
        ] {
            let b = ArrayD::from_shape_fn(IxDyn(&bshape), |i| {
                (0..bshape.len()).fold(7i64, |acc, k| acc * 10 + i[k] as i64)
            });
            let shape = broadcast_shape(a.shape(), b.shape()).unwrap();
            let want = Zip::from(&bview(&a, &shape).unwrap())
                .and(&bview(&b, &shape).unwrap())
                .map_collect(|&x, &y| x * 1000 - y);
            assert_eq!(
                zip_map(&a, &b, |x, y| x * 1000 - y).unwrap(),
                want,
                "{bshape:?}"
            );
            let want_rev = Zip::from(&bview(&b, &shape).unwrap())
                .and(&bview(&a, &shape).unwrap())
                .map_collect(|&x, &y| x * 1000 - y);
            assert_eq!(
                zip_map(&b, &a, |x, y| x * 1000 - y).unwrap(),
                want_rev,
                "{bshape:?} reversed"
            );
        }
    }

    #[test]
    fn normalizes_axes() {
        assert_eq!(norm_axis(-1, 3).unwrap(), 2);
        assert!(norm_axis(3, 3).is_err());
        assert!(norm_axis(-4, 3).is_err());
    }
}
