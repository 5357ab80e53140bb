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
use super::util::{dname, elem_count, err, from_vec, index_in, ints, norm_axis, opt, req};
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
                let $f = red.combine::<f32>();
                Value::F32($body?)
            }
            (Value::F16($a), Value::F16($b)) => {
                let $f = red.combine::<half::f16>();
                Value::F16($body?)
            }
            (Value::F64($a), Value::F64($b)) => {
                let $f = red.combine::<f64>();
                Value::F64($body?)
            }
            (Value::I64($a), Value::I64($b)) => {
                let $f = red.combine::<i64>();
                Value::I64($body?)
            }
            (Value::I32($a), Value::I32($b)) => {
                let $f = red.combine::<i32>();
                Value::I32($body?)
            }
            (Value::I8($a), Value::I8($b)) => {
                let $f = red.combine::<i8>();
                Value::I8($body?)
            }
            (Value::U8($a), Value::U8($b)) => {
                let $f = red.combine::<u8>();
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

fn scatter_elements_t<T: Copy>(
    data: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    upd: &ArrayD<T>,
    axis: usize,
    f: fn(T, T) -> T,
) -> Result<ArrayD<T>> {
    let shape = data.shape();
    if idx_shape.len() != shape.len() || upd.shape() != idx_shape {
        return Err(err(format!(
            "indices {idx_shape:?} and updates {:?} must have one shape of the rank of data {shape:?}",
            upd.shape()
        )));
    }
    if (0..shape.len()).any(|d| d != axis && idx_shape[d] > shape[d]) {
        return Err(err(format!(
            "indices {idx_shape:?} are larger than data {shape:?} off axis {axis}"
        )));
    }
    let st = strides(shape, 1);
    let mut out = to_vec(data);
    let mut pos = vec![0usize; shape.len()];
    for (&i, u) in idx.iter().zip(upd.iter()) {
        let mut off = index_in(i, shape[axis], "indices")? * st[axis];
        for d in (0..shape.len()).filter(|&d| d != axis) {
            off += pos[d] * st[d];
        }
        out[off] = f(out[off], *u);
        // Next row-major position over the indices' shape.
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < idx_shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    from_vec(shape, out)
}

fn scatter_elements(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let red = Reduction::parse(node)?;
    let axis = node.attr_or::<i64>("axis", 0)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (x, i, u) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        let ax = norm_axis(axis, x.shape().len())?;
        let idx = ints(i, "indices")?;
        Ok(vec![scatter_typed!(red, x, u, |a, b, f| {
            scatter_elements_t(a, &idx, i.shape(), b, ax, f)
        })])
    })))
}

fn tensor_scatter_t<T: Copy>(
    cache: &ArrayD<T>,
    upd: &ArrayD<T>,
    write: Option<&[i64]>,
    axis: usize,
    circular: bool,
) -> Result<ArrayD<T>> {
    let shape = cache.shape();
    let (max_seq, seq) = (shape[axis], upd.shape().get(axis).copied().unwrap_or(0));
    let same_off_axis = upd.ndim() == shape.len()
        && (0..shape.len()).all(|d| d == axis || upd.shape()[d] == shape[d]);
    if !same_off_axis || seq > max_seq {
        return Err(err(format!(
            "update {:?} must have the shape of past_cache {shape:?}, no longer on axis {axis}",
            upd.shape()
        )));
    }
    let batch = shape[0];
    if let Some(w) = write
        && w.len() != batch
    {
        return Err(err(format!(
            "write_indices has {} entries for a batch of {batch}",
            w.len()
        )));
    }
    let inner: usize = shape[axis + 1..].iter().product();
    // Rows of the prefix axes (batch first), each holding `max_seq` (cache) or `seq`
    // (update) runs of `inner` elements.
    let rows: usize = shape[..axis].iter().product();
    let rows_per_batch = rows.checked_div(batch).unwrap_or(0);
    let mut out = to_vec(cache);
    let upd = to_vec(upd);
    for row in 0..rows {
        let n = row / rows_per_batch.max(1);
        let start = write.map_or(0, |w| w[n]);
        if start < 0 || (!circular && start as usize + seq > max_seq) {
            return Err(err(format!(
                "write_indices value {start} for batch {n}: {seq} positions do not fit in {max_seq}"
            )));
        }
        for s in 0..seq {
            let mut c = start as usize + s;
            if circular {
                c %= max_seq;
            }
            let dst = (row * max_seq + c) * inner;
            let src = (row * seq + s) * inner;
            out[dst..dst + inner].copy_from_slice(&upd[src..src + inner]);
        }
    }
    from_vec(shape, out)
}

fn tensor_scatter(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -2)?;
    let circular = match node.attr_or::<String>("mode", "linear".into())?.as_str() {
        "linear" => false,
        "circular" => true,
        m => return Err(node.error(format!("unknown mode '{m}'"))),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (x, u) = (req(ins, 0)?, req(ins, 1)?);
        let ax = norm_axis(axis, x.shape().len())?;
        if ax == 0 {
            return Err(err("axis must not be the batch axis 0"));
        }
        let write = opt(ins, 2).map(|w| ints(w, "write_indices")).transpose()?;
        let w = write.as_deref();
        Ok(vec![scatter_typed!(Reduction::None, x, u, |a, b, _f| {
            tensor_scatter_t(a, b, w, ax, circular)
        })])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "GatherND", gather_nd);
    r.register("", "ScatterND", scatter_nd);
    r.register("", "ScatterElements", scatter_elements);
    r.register("", "Scatter", scatter_elements);
    r.register("", "TensorScatter", tensor_scatter);
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

    #[test]
    fn scatters_combine_duplicates_and_check_indices() {
        let d = array![1, 2, 3, 4].into_dyn();
        let u = array![10, 20].into_dyn();
        let add = Reduction::Add.combine::<i32>();
        let s = scatter_nd_t(&d, &[1, 1], &[2, 1], &u, add).unwrap();
        assert_eq!(s, array![1, 32, 3, 4].into_dyn());
        let e = scatter_nd_t(&d, &[4, 0], &[2, 1], &u, add).unwrap_err();
        assert!(e.to_string().contains("indices value 4"), "{e}");
        let s = scatter_elements_t(&d, &[-1, 0], &[2], &u, 0, Reduction::Max.combine()).unwrap();
        assert_eq!(s, array![20, 2, 3, 10].into_dyn());
        assert!(scatter_elements_t(&d, &[0, 9], &[2], &u, 0, add).is_err());
    }

    #[test]
    fn tensor_scatter_writes_per_batch_and_wraps() {
        let cache = ndarray::Array::from_shape_vec((2, 3, 1), vec![0; 6])
            .unwrap()
            .into_dyn();
        let upd = array![[[1], [2]], [[3], [4]]].into_dyn();
        let s = tensor_scatter_t(&cache, &upd, Some(&[0, 2]), 1, true).unwrap();
        assert_eq!(
            s.iter().copied().collect::<Vec<i32>>(),
            vec![1, 2, 0, 4, 0, 3]
        );
        assert!(tensor_scatter_t(&cache, &upd, Some(&[0, 2]), 1, false).is_err());
        assert!(tensor_scatter_t(&cache, &upd, Some(&[-1, 0]), 1, true).is_err());
    }
}
