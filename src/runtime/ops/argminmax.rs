//! Ops that locate the extreme element of each lane.
//!
//! `ArgMax` and `ArgMin` (1, 11, 12, 13): the int64 index of the largest (smallest) element
//! along `axis` (default 0, negative counts from the end).
//!
//! `keepdims` (default 1) keeps the reduced axis as size 1. Ties resolve to the first index,
//! or the last with `select_last_index = 1` (opset 12). A NaN counts as the extreme, so the
//! first NaN of a lane wins (the last one with `select_last_index`), as numpy's `argmax` and
//! `argmin` do. Every element type the runtime stores is accepted (bool orders false < true);
//! an empty reduced axis is an error (there is no index to return).
//!
//! `Hardmax` (1, 11, 13): 1 at the first largest element of each lane, 0 elsewhere, in the
//! input's (numeric) type. Before opset 13 the input is viewed as 2-D `[prod(shape[..axis]),
//! prod(shape[axis..])]` (default axis 1) as `Softmax` does; from 13 along `axis` (default
//! -1). An empty input gives an empty output.

use ndarray::{ArrayD, ArrayView1, Axis};

use crate::dispatch_value;
use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::activation::per_axis_or_coerced;
use super::util::{Elem, err, norm_axis, req};
use super::{BuildCtx, FnOp, Op, Registry};

/// Index of the extreme element of one lane: `max` picks the largest, otherwise the smallest;
/// `last` resolves ties (and repeated NaN) to the last position.
fn lane_arg<T: PartialOrd + Copy>(lane: ArrayView1<T>, max: bool, last: bool) -> i64 {
    #[allow(clippy::eq_op)]
    let is_nan = |x: T| x != x;
    let mut best: Option<(usize, T)> = None;
    for (i, &x) in lane.iter().enumerate() {
        let better = match best {
            None => true,
            Some((_, b)) if is_nan(b) => last && is_nan(x),
            Some((_, b)) => {
                is_nan(x)
                    || if max {
                        x > b || (last && x == b)
                    } else {
                        x < b || (last && x == b)
                    }
            }
        };
        if better {
            best = Some((i, x));
        }
    }
    best.map_or(0, |(i, _)| i as i64)
}

fn arg_t<T: PartialOrd + Copy>(
    a: &ArrayD<T>,
    axis: usize,
    keepdims: bool,
    max: bool,
    last: bool,
) -> ArrayD<i64> {
    let out = a.map_axis(Axis(axis), |lane| lane_arg(lane, max, last));
    if keepdims {
        out.insert_axis(Axis(axis))
    } else {
        out
    }
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let max = node.op_type() == "ArgMax";
    let axis = node.attr_or::<i64>("axis", 0)?;
    let keepdims = node.attr_or::<i64>("keepdims", 1)? != 0;
    let last = node.attr_or::<i64>("select_last_index", 0)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let ax = norm_axis(axis, x.shape().len())?;
        if x.shape()[ax] == 0 {
            return Err(err(format!(
                "cannot take the arg{} of an empty axis {ax} (shape {:?})",
                if max { "max" } else { "min" },
                x.shape()
            )));
        }
        let out = dispatch_value!(x, a => arg_t(a, ax, keepdims, max, last));
        Ok(vec![Value::I64(out)])
    })))
}

/// One-hot of each lane's first maximum along `axis`.
fn hardmax_t<T: Elem>(a: &ArrayD<T>, axis: usize) -> ArrayD<T> {
    let mut out = ArrayD::from_elem(a.raw_dim(), T::from_i64(0));
    for (lane, mut o) in a
        .lanes(Axis(axis))
        .into_iter()
        .zip(out.lanes_mut(Axis(axis)))
    {
        if !lane.is_empty() {
            o[lane_arg(lane, true, false) as usize] = T::from_i64(1);
        }
    }
    out
}

fn build_hardmax(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let legacy = ctx.opset < 13;
    let axis = node.attr_or::<i64>("axis", if legacy { 1 } else { -1 })?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        if matches!(x, Value::Bool(_)) {
            return Err(err("input cannot be bool"));
        }
        let y = per_axis_or_coerced(x, axis, legacy, |v, ax| {
            Ok(map_same!(v, a => hardmax_t(a, ax)))
        })?;
        Ok(vec![y])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "ArgMax", build);
    r.register("", "ArgMin", build);
    r.register("", "Hardmax", build_hardmax);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn ties_and_nan() {
        let a = array![[2.0f32, 5.0, 5.0], [f32::NAN, 1.0, f32::NAN]].into_dyn();
        assert_eq!(arg_t(&a, 1, false, true, false), array![1i64, 0].into_dyn());
        assert_eq!(
            arg_t(&a, 1, true, true, true),
            array![[2i64], [2]].into_dyn()
        );
        assert_eq!(
            arg_t(&a, 1, false, false, false),
            array![0i64, 0].into_dyn()
        );
        assert_eq!(
            arg_t(&a, 0, false, false, false),
            array![1i64, 1, 1].into_dyn()
        );
    }

    #[test]
    fn hardmax_marks_the_first_maximum() {
        let a = array![[1.0f32, 3.0, 3.0], [4.0, 0.0, 2.0]].into_dyn();
        assert_eq!(
            hardmax_t(&a, 1),
            array![[0.0f32, 1.0, 0.0], [1.0, 0.0, 0.0]].into_dyn()
        );
    }
}
