//! Gathers and scatters addressed by index tuples or per-element indices. Data may have any
//! element type the runtime stores; indices are int64 (int32 also accepted). Every index read
//! from an input is bounds-checked: a value outside `-dim..dim` is an error naming the input
//! (negative values count from the end, as the spec allows since opset 11).
//!
//! - `GatherND` (11, 12, 13): `indices` of rank q is a (q-1)-d tensor of k-tuples indexing the
//!   leading k axes of `data` after `batch_dims` (12+) shared leading axes; the output is
//!   `data.shape[..b] ++ indices.shape[b..q-1] ++ data.shape[b+k..]`.
//! - `ScatterND` (11, 13, 16, 18): a copy of `data` with the slices addressed by the k-tuples
//!   of `indices` replaced by (or combined with) `updates`, whose shape must be
//!   `indices.shape[..q-1] ++ data.shape[k..]`. `reduction` (16+): `none` (duplicate tuples:
//!   the last one wins, as the reference's loop), `add`, `mul`; `max`, `min` from 18.
//! - `ScatterElements` (11, 13, 16, 18) and the deprecated `Scatter` (9, 11; no reduction):
//!   `indices` and `updates` of one shape and the rank of `data`, no larger than `data` off
//!   `axis`; element `p` of `updates` goes to `data[p with p[axis] = indices[p]]`, with the same
//!   `reduction` choices as `ScatterND`.
//! - `TensorScatter` (24): a KV-cache write. `update` has the shape of `past_cache` except on
//!   `axis` (default -2, not the batch axis 0), where it is no longer; batch row `n` is written
//!   from sequence position `write_indices[n]` (default 0) on. `mode` `linear` requires the
//!   write to fit; `circular` wraps positions modulo the cache length.
//!
//! Reductions other than `none` need a numeric type (integers wrap; float `max`/`min`
//! propagate NaN, as elementwise `Max`/`Min`); f16 is combined in f32 and rounded back.

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::elementwise::Arith;
use super::util::{dname, elem_count, err, from_vec, index_in, ints, req};
use super::{BuildCtx, FnOp, Op, Registry};

/// Row-major strides (in elements) of `dims`, scaled by `inner`.
fn strides(dims: &[usize], inner: usize) -> Vec<usize> {
    let mut s = vec![0; dims.len()];
    let mut acc = inner;
    for k in (0..dims.len()).rev() {
        s[k] = acc;
        acc *= dims[k];
    }
    s
}

/// Offset of the slice an index tuple addresses in a block of axes `dims` (with `strides`).
fn tuple_offset(tuple: &[i64], dims: &[usize], strides: &[usize]) -> Result<usize> {
    let mut off = 0;
    for (k, &i) in tuple.iter().enumerate() {
        off += index_in(i, dims[k], "indices")? * strides[k];
    }
    Ok(off)
}

fn gather_nd_t<T: Copy>(
    data: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    b: usize,
) -> Result<ArrayD<T>> {
    let shape = data.shape();
    let (r, q) = (shape.len(), idx_shape.len());
    if r == 0 || q == 0 {
        return Err(err("GatherND needs data and indices of rank at least 1"));
    }
    if b >= r.min(q) {
        return Err(err(format!(
            "batch_dims {b} must be less than the ranks of data ({r}) and indices ({q})"
        )));
    }
    if idx_shape[..b] != shape[..b] {
        return Err(err(format!(
            "the first {b} dims of indices {idx_shape:?} and data {shape:?} differ"
        )));
    }
    let k = idx_shape[q - 1];
    if k > r - b {
        return Err(err(format!(
            "index tuples of length {k} exceed the {} axes of data after batch_dims",
            r - b
        )));
    }
    let dims = &shape[b..b + k];
    let inner: usize = shape[b + k..].iter().product();
    let block: usize = shape[b..].iter().product();
    let tuples: usize = idx_shape[b..q - 1].iter().product();
    let batches: usize = shape[..b].iter().product();
    let st = strides(dims, inner);
    let mut oshape = shape[..b].to_vec();
    oshape.extend_from_slice(&idx_shape[b..q - 1]);
    oshape.extend_from_slice(&shape[b + k..]);
    let mut out = Vec::with_capacity(elem_count(&oshape)?);
    let src = data.as_standard_layout();
    let src = src
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous data"))?;
    for t in 0..batches * tuples {
        let off = (t / tuples) * block + tuple_offset(&idx[t * k..(t + 1) * k], dims, &st)?;
        out.extend_from_slice(&src[off..off + inner]);
    }
    from_vec(&oshape, out)
}

fn gather_nd(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let batch_dims = node.attr_or::<i64>("batch_dims", 0)?;
    let b = usize::try_from(batch_dims)
        .map_err(|_| node.error(format!("batch_dims {batch_dims} must not be negative")))?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (x, i) = (req(ins, 0)?, req(ins, 1)?);
        let idx = ints(i, "indices")?;
        Ok(vec![map_same!(x, a => gather_nd_t(a, &idx, i.shape(), b)?)])
    })))
}

/// How a scatter combines an update with the value it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl Reduction {
    fn parse(node: &Node) -> Result<Reduction> {
        Ok(
            match node.attr_or::<String>("reduction", "none".into())?.as_str() {
                "none" => Reduction::None,
                "add" => Reduction::Add,
                "mul" => Reduction::Mul,
                "max" => Reduction::Max,
                "min" => Reduction::Min,
                m => return Err(node.error(format!("unknown reduction '{m}'"))),
            },
        )
    }

    fn combine<T: Arith>(self) -> fn(T, T) -> T {
        match self {
            Reduction::None => |_, u| u,
            Reduction::Add => T::add,
            Reduction::Mul => T::mul,
            Reduction::Max => T::max,
            Reduction::Min => T::min,
        }
    }
}

/// Evaluates `$body` (generic over the element type, with `$f` the combine function) on
/// `data` and `updates` of one element type and wraps the result in that type; bool only
/// without a reduction.
macro_rules! scatter_typed {
    ($red:expr, $data:expr, $upd:expr, |$a:ident, $b:ident, $f:ident| $body:expr) => {{
        let (red, data, upd): (Reduction, &Value, &Value) = ($red, $data, $upd);
        match (data, upd) {
            (Value::F32($a), Value::F32($b)) => {
                let $f = red.combine();
                Value::F32($body?)
            }
            (Value::F16($a), Value::F16($b)) => {
                let $f = red.combine();
                Value::F16($body?)
            }
            (Value::F64($a), Value::F64($b)) => {
                let $f = red.combine();
                Value::F64($body?)
            }
            (Value::I64($a), Value::I64($b)) => {
                let $f = red.combine();
                Value::I64($body?)
            }
            (Value::I32($a), Value::I32($b)) => {
                let $f = red.combine();
                Value::I32($body?)
            }
            (Value::I8($a), Value::I8($b)) => {
                let $f = red.combine();
                Value::I8($body?)
            }
            (Value::U8($a), Value::U8($b)) => {
                let $f = red.combine();
                Value::U8($body?)
            }
            (Value::Bool($a), Value::Bool($b)) if red == Reduction::None => {
                let $f: fn(bool, bool) -> bool = |_, u| u;
                Value::Bool($body?)
            }
            _ => {
                return Err(err(format!(
                    "scatter of {} updates into {} data with reduction {red:?}",
                    dname(upd),
                    dname(data)
                )));
            }
        }
    }};
}

/// Row-major copy of `a` as a vector.
fn to_vec<T: Copy>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().copied().collect()
}

fn scatter_nd_t<T: Copy>(
    data: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    upd: &ArrayD<T>,
    f: fn(T, T) -> T,
) -> Result<ArrayD<T>> {
    let shape = data.shape();
    let q = idx_shape.len();
    if shape.is_empty() || q == 0 {
        return Err(err("ScatterND needs data and indices of rank at least 1"));
    }
    let k = idx_shape[q - 1];
    if k > shape.len() {
        return Err(err(format!(
            "index tuples of length {k} exceed the rank {} of data",
            shape.len()
        )));
    }
    let mut want = idx_shape[..q - 1].to_vec();
    want.extend_from_slice(&shape[k..]);
    if upd.shape() != want.as_slice() {
        return Err(err(format!(
            "updates have shape {:?}, expected {want:?} (indices {idx_shape:?}, data {shape:?})",
            upd.shape()
        )));
    }
    let dims = &shape[..k];
    let inner: usize = shape[k..].iter().product();
    let st = strides(dims, inner);
    let mut out = to_vec(data);
    let upd = to_vec(upd);
    let tuples: usize = idx_shape[..q - 1].iter().product();
    for t in 0..tuples {
        let off = tuple_offset(&idx[t * k..(t + 1) * k], dims, &st)?;
        for j in 0..inner {
            out[off + j] = f(out[off + j], upd[t * inner + j]);
        }
    }
    from_vec(shape, out)
}

fn scatter_nd(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let red = Reduction::parse(node)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (x, i, u) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        let idx = ints(i, "indices")?;
        Ok(vec![scatter_typed!(red, x, u, |a, b, f| scatter_nd_t(
            a,
            &idx,
            i.shape(),
            b,
            f
        ))])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "GatherND", gather_nd);
    r.register("", "ScatterND", scatter_nd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gather_nd_slices_elements_and_batches() {
        let d = array![[0, 1], [2, 3]].into_dyn();
        // Full tuples pick elements; a negative index counts from the end.
        let g = gather_nd_t(&d, &[0, 0, -1, 1], &[2, 2], 0).unwrap();
        assert_eq!(g, array![0, 3].into_dyn());
        // Short tuples pick rows.
        let g = gather_nd_t(&d, &[1, 0], &[2, 1], 0).unwrap();
        assert_eq!(g, array![[2, 3], [0, 1]].into_dyn());
        // batch_dims 1: row b of data is indexed by indices[b].
        let d3 = array![[[0, 1], [2, 3]], [[4, 5], [6, 7]]].into_dyn();
        let g = gather_nd_t(&d3, &[1, 0], &[2, 1], 1).unwrap();
        assert_eq!(g, array![[2, 3], [4, 5]].into_dyn());
    }

    #[test]
    fn gather_nd_rejects_bad_indices() {
        let d = array![[0, 1], [2, 3]].into_dyn();
        let e = gather_nd_t(&d, &[2, 0], &[1, 2], 0).unwrap_err();
        assert!(e.to_string().contains("indices value 2"), "{e}");
        assert!(gather_nd_t(&d, &[-3], &[1, 1], 0).is_err());
        assert!(gather_nd_t(&d, &[0, 0, 0], &[1, 3], 0).is_err());
        assert!(gather_nd_t(&d, &[0], &[1, 1], 1).is_err());
    }
}
