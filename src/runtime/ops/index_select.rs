//! Ops that select elements by value or condition, or turn indices into data. Every element
//! type the runtime stores is accepted for the data input unless noted; index outputs are
//! int64.
//!
//! - `TopK` (1: `k` attribute; 10: `K` input, a one-element int64 tensor; 11: `largest`,
//!   `sorted`, negative `axis`): the `K` largest (or smallest) entries along `axis` with their
//!   indices. Ties keep the lower index first; NaN counts as larger than every number (numpy's
//!   sort order). The result is always sorted (with `sorted = 0` any order is allowed).
//! - `Unique` (11): unique elements of the flattened input, or unique slices along `axis`
//!   (compared lexicographically, as `numpy.unique(axis=...)`); `sorted = 1` (default) orders
//!   them ascending, `0` by first occurrence. Outputs `Y`, `indices` (first occurrence),
//!   `inverse_indices` and `counts`. NaNs compare equal to each other.
//! - `NonZero` (9, 13): `[rank, n]` indices of the nonzero elements in row-major order (a
//!   scalar gives `[0, n]`); NaN is nonzero.
//! - `Compress` (9, 11: negative `axis`): slices along `axis` (or elements of the flattened
//!   input without it) where the bool `condition` is true; a shorter condition counts as false
//!   past its end, a longer one must be false there.
//! - `OneHot` (9, 11: negative indices and `axis`): `values = [off, on]` of any type, numeric
//!   `indices` (floats truncate) and a numeric scalar `depth`; the new axis of size `depth` goes
//!   at `axis` (default -1). Indices outside `-depth..depth` give an all-`off` row, as the
//!   spec says.

use std::cmp::Ordering;

use ndarray::{ArrayD, Dimension};

use crate::dispatch_value;
use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::util::{
    Elem, dname, elem_count, err, from_vec, index_in, ints, norm_axis, req, scalar_f64,
};
use super::{BuildCtx, FnOp, Op, Registry};

/// Total order with NaN above every number (and equal to NaN), as numpy sorts.
#[allow(clippy::eq_op)] // `x != x` is the NaN test for any PartialOrd type.
fn cmp_nan_last<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    a.partial_cmp(b).unwrap_or_else(|| (a != a).cmp(&(b != b)))
}

/// `shape` split around `axis`: (product before, size, product after).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn top_k_t<T: Elem>(x: &ArrayD<T>, k: usize, axis: usize, largest: bool) -> Result<Vec<Value>> {
    let shape = x.shape();
    let (outer, dim, inner) = around(shape, axis);
    if k > dim {
        return Err(err(format!(
            "K = {k} is larger than axis {axis} of size {dim}"
        )));
    }
    let mut oshape = shape.to_vec();
    oshape[axis] = k;
    let n = elem_count(&oshape)?;
    let src = x.as_standard_layout();
    let src = src
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous data"))?;
    let (mut vals, mut idxs) = (vec![T::default(); n], vec![0i64; n]);
    let mut order: Vec<usize> = Vec::with_capacity(dim);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| &src[(o * dim + j) * inner + i];
            order.clear();
            order.extend(0..dim);
            // A stable sort keeps equal values in index order.
            if largest {
                order.sort_by(|&p, &q| cmp_nan_last(at(q), at(p)));
            } else {
                order.sort_by(|&p, &q| cmp_nan_last(at(p), at(q)));
            }
            for (r, &j) in order[..k].iter().enumerate() {
                let dst = (o * k + r) * inner + i;
                vals[dst] = *at(j);
                idxs[dst] = j as i64;
            }
        }
    }
    Ok(vec![
        T::wrap(from_vec(&oshape, vals)?),
        Value::I64(from_vec(&oshape, idxs)?),
    ])
}

fn top_k(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -1)?;
    let largest = node.attr_or::<i64>("largest", 1)? != 0;
    let attr_k = if ctx.opset < 10 {
        Some(node.attr_req::<i64>("k")?)
    } else {
        None
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let k = match attr_k {
            Some(k) => k,
            None => match ints(req(ins, 1)?, "K")?.as_slice() {
                [k] => *k,
                other => return Err(err(format!("K must hold one value, got {other:?}"))),
            },
        };
        let k = usize::try_from(k).map_err(|_| err(format!("K = {k} is negative")))?;
        let ax = norm_axis(axis, x.shape().len())?;
        dispatch_value!(x, a => top_k_t(a, k, ax, largest))
    })))
}

/// Lexicographic order of two equal-length runs.
fn cmp_runs<T: PartialOrd>(a: &[T], b: &[T]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cmp_nan_last(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn unique_t<T: Elem>(x: &ArrayD<T>, axis: Option<usize>, sorted: bool) -> Result<Vec<Value>> {
    let src = x.as_standard_layout();
    let src = src
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous data"))?;
    // Slice j is the elements at position j of the axis, in row-major order.
    let (outer, n, inner) = match axis {
        Some(ax) => around(x.shape(), ax),
        None => (1, src.len(), 1),
    };
    let slice_of = |j: usize| -> Vec<T> {
        (0..outer)
            .flat_map(|o| {
                src[(o * n + j) * inner..(o * n + j + 1) * inner]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let slices: Vec<Vec<T>> = (0..n).map(slice_of).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&p, &q| cmp_runs(&slices[p], &slices[q]));
    // Groups of equal slices in sorted order; the stable sort puts each group's first
    // occurrence at its front.
    let mut firsts: Vec<usize> = Vec::new();
    let mut group_of = vec![0usize; n];
    for (r, &j) in order.iter().enumerate() {
        if r == 0 || cmp_runs(&slices[order[r - 1]], &slices[j]).is_ne() {
            firsts.push(j);
        }
        group_of[j] = firsts.len() - 1;
    }
    // Output position of each group.
    let mut rank: Vec<usize> = (0..firsts.len()).collect();
    if !sorted {
        rank.sort_by_key(|&g| firsts[g]);
    }
    let mut pos_of = vec![0usize; firsts.len()];
    for (p, &g) in rank.iter().enumerate() {
        pos_of[g] = p;
    }
    let u = firsts.len();
    let mut counts = vec![0i64; u];
    let inverse: Vec<i64> = group_of
        .iter()
        .map(|&g| {
            counts[pos_of[g]] += 1;
            pos_of[g] as i64
        })
        .collect();
    let indices: Vec<i64> = rank.iter().map(|&g| firsts[g] as i64).collect();
    let y = match axis {
        None => from_vec(&[u], rank.iter().map(|&g| src[firsts[g]]).collect())?,
        Some(ax) => {
            let mut shape = x.shape().to_vec();
            shape[ax] = u;
            let mut out = Vec::with_capacity(elem_count(&shape)?);
            for o in 0..outer {
                for &g in &rank {
                    let base = (o * n + firsts[g]) * inner;
                    out.extend_from_slice(&src[base..base + inner]);
                }
            }
            from_vec(&shape, out)?
        }
    };
    Ok(vec![
        T::wrap(y),
        Value::I64(from_vec(&[u], indices)?),
        Value::I64(from_vec(&[n], inverse)?),
        Value::I64(from_vec(&[u], counts)?),
    ])
}

fn unique(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr::<i64>("axis")?;
    let sorted = node.attr_or::<i64>("sorted", 1)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let ax = axis.map(|a| norm_axis(a, x.shape().len())).transpose()?;
        dispatch_value!(x, a => unique_t(a, ax, sorted))
    })))
}

fn non_zero_t<T: Elem>(x: &ArrayD<T>) -> Result<Value> {
    let r = x.ndim();
    let hits: Vec<Vec<usize>> = x
        .indexed_iter()
        .filter(|(_, v)| **v != T::default())
        .map(|(p, _)| p.as_array_view().to_vec())
        .collect();
    let n = hits.len();
    let mut out = vec![0i64; r * n];
    for (j, p) in hits.iter().enumerate() {
        for (d, &i) in p.iter().enumerate() {
            out[d * n + j] = i as i64;
        }
    }
    Ok(Value::I64(from_vec(&[r, n], out)?))
}

fn non_zero(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        Ok(vec![dispatch_value!(x, a => non_zero_t(a)?)])
    })))
}

fn compress_t<T: Copy>(x: &ArrayD<T>, keep: &[usize], axis: Option<usize>) -> Result<ArrayD<T>> {
    let src = x.as_standard_layout();
    let src = src
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous data"))?;
    let Some(ax) = axis else {
        return from_vec(&[keep.len()], keep.iter().map(|&j| src[j]).collect());
    };
    let (outer, n, inner) = around(x.shape(), ax);
    let mut shape = x.shape().to_vec();
    shape[ax] = keep.len();
    let mut out = Vec::with_capacity(elem_count(&shape)?);
    for o in 0..outer {
        for &j in keep {
            let base = (o * n + j) * inner;
            out.extend_from_slice(&src[base..base + inner]);
        }
    }
    from_vec(&shape, out)
}

fn compress(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr::<i64>("axis")?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let c = req(ins, 1)?;
        let cond = c
            .as_bool()
            .ok_or_else(|| err(format!("condition must be a bool tensor, got {}", dname(c))))?;
        if cond.ndim() != 1 {
            return Err(err(format!(
                "condition must be 1-D, got shape {:?}",
                cond.shape()
            )));
        }
        let ax = axis.map(|a| norm_axis(a, x.shape().len())).transpose()?;
        let dim = ax.map_or(x.len(), |a| x.shape()[a]);
        let keep: Vec<usize> = cond
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(j, _)| j)
            .collect();
        if let Some(&j) = keep.iter().find(|&&j| j >= dim) {
            return Err(err(format!(
                "condition is true at {j}, past the {dim} entries it selects from"
            )));
        }
        Ok(vec![map_same!(x, a => compress_t(a, &keep, ax)?)])
    })))
}

fn one_hot_t<T: Copy>(
    values: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    depth: usize,
    axis: usize,
) -> Result<ArrayD<T>> {
    let (off, on) = match values.iter().copied().collect::<Vec<T>>()[..] {
        [off, on] => (off, on),
        _ => {
            return Err(err(format!(
                "values must hold [off, on], got {} elements",
                values.len()
            )));
        }
    };
    let mut shape = idx_shape.to_vec();
    shape.insert(axis, depth);
    let mut out = vec![off; crate::runtime::budget::check_shape::<T>(&shape)?];
    let inner: usize = idx_shape[axis..].iter().product();
    for (p, &i) in idx.iter().enumerate() {
        // Out-of-range indices leave their row all `off`, as the spec says.
        if let Ok(d) = index_in(i, depth, "indices") {
            let (o, r) = (p / inner, p % inner);
            out[(o * depth + d) * inner + r] = on;
        }
    }
    from_vec(&shape, out)
}

fn one_hot(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -1)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let (i, d, v) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        if i.dtype() == crate::onnx::tensor_proto::DataType::Bool {
            return Err(err("indices must be numeric, got bool"));
        }
        let idx: Vec<i64> = dispatch_value!(i, a => a.iter().map(|x| x.to_i64()).collect());
        let depth = scalar_f64(d)?;
        if !(depth.is_finite() && depth >= 0.0) {
            return Err(err(format!("depth {depth} must be a non-negative number")));
        }
        let ax = norm_axis(axis, i.shape().len() + 1)?;
        Ok(vec![
            map_same!(v, a => one_hot_t(a, &idx, i.shape(), depth as usize, ax)?),
        ])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "TopK", top_k);
    r.register("", "Unique", unique);
    r.register("", "NonZero", non_zero);
    r.register("", "Compress", compress);
    r.register("", "OneHot", one_hot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn i64s(v: &Value) -> Vec<i64> {
        v.as_i64().unwrap().iter().copied().collect()
    }

    #[test]
    fn top_k_breaks_ties_by_lower_index_and_ranks_nan_highest() {
        let x = array![1.0f32, 3.0, f32::NAN, 3.0, 0.0].into_dyn();
        let out = top_k_t(&x, 3, 0, true).unwrap();
        assert_eq!(i64s(&out[1]), vec![2, 1, 3]);
        let out = top_k_t(&x, 2, 0, false).unwrap();
        assert_eq!(i64s(&out[1]), vec![4, 0]);
        assert!(top_k_t(&x, 6, 0, true).is_err());
        // Along axis 0 of a matrix.
        let m = array![[1, 5], [4, 2]].into_dyn();
        let out = top_k_t(&m, 1, 0, true).unwrap();
        assert_eq!(out[0], Value::I32(array![[4, 5]].into_dyn()));
    }

    #[test]
    fn unique_unsorted_keeps_first_occurrence_order() {
        let x = array![2, 1, 1, 3, 4, 3].into_dyn();
        let out = unique_t(&x, None, false).unwrap();
        assert_eq!(out[0], Value::I32(array![2, 1, 3, 4].into_dyn()));
        assert_eq!(i64s(&out[1]), vec![0, 1, 3, 4]);
        assert_eq!(i64s(&out[2]), vec![0, 1, 1, 2, 3, 2]);
        assert_eq!(i64s(&out[3]), vec![1, 2, 2, 1]);
        let out = unique_t(&x, None, true).unwrap();
        assert_eq!(out[0], Value::I32(array![1, 2, 3, 4].into_dyn()));
        assert_eq!(i64s(&out[1]), vec![1, 0, 3, 4]);
    }

    #[test]
    fn one_hot_and_compress_check_their_indices() {
        let v = array![0.0f32, 1.0].into_dyn();
        let o = one_hot_t(&v, &[1, -1, 5], &[3], 3, 1).unwrap();
        assert_eq!(
            o,
            array![[0.0f32, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]].into_dyn()
        );
        let x = array![[1, 2], [3, 4]].into_dyn();
        assert_eq!(
            compress_t(&x, &[1], Some(0)).unwrap(),
            array![[3, 4]].into_dyn()
        );
        assert_eq!(
            compress_t(&x, &[0, 3], None).unwrap(),
            array![1, 4].into_dyn()
        );
        let nz = non_zero_t(&x.mapv(|e| e % 2)).unwrap();
        assert_eq!(i64s(&nz), vec![0, 1, 0, 0]);
    }
}
