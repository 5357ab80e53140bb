//! Reductions: `ReduceSum`, `ReduceMean`, `ReduceMax`, `ReduceMin`, `ReduceProd`, and the
//! norms and log forms `ReduceL1` (sum of |x|), `ReduceL2` (sqrt of the sum of squares),
//! `ReduceSumSquare`, `ReduceLogSum` (ln of the sum) and `ReduceLogSumExp` (ln of the sum of
//! exp(x), computed around the lane's largest finite value so that it does not overflow).
//!
//! Axes come from the `axes` attribute before opset 13 (`ReduceSum`) or 18 (the others), and
//! from the optional second input after. No axes (or an empty list) reduces over all axes,
//! unless `noop_with_empty_axes` = 1, which returns the input unchanged. `keepdims` (default 1)
//! keeps reduced axes as size 1.
//!
//! Float sums and products accumulate in f64 and round once (f16 too); integer ones wrap in
//! i64 (`ReduceL2`, `ReduceLogSum` and `ReduceLogSumExp` of integers are computed in f64 and
//! truncated back, as the reference's `astype` does). Over an empty set: sum, L1, L2 and sum
//! of squares 0, product 1, mean NaN, log-sum and log-sum-exp -inf, max -inf (integers: the
//! type's minimum), min +inf (maximum), as numpy and the ONNX reference give. Max/Min
//! propagate NaN; on bool they are any/all.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::util::{Elem, err, from_vec, ints, is_float, norm_axis, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

fn fold<T: Elem>(row: &[T], kind: Kind) -> T {
    let float = is_float(T::DT);
    match kind {
        Kind::L1 | Kind::SumSquare if !float => {
            let mut acc: i64 = 0;
            for &x in row {
                let v = x.to_i64();
                acc = acc.wrapping_add(if kind == Kind::L1 {
                    v.wrapping_abs()
                } else {
                    v.wrapping_mul(v)
                });
            }
            T::from_i64(acc)
        }
        Kind::L1 | Kind::L2 | Kind::SumSquare | Kind::LogSum => {
            let mut acc = 0.0;
            for &x in row {
                let v = x.to_f64();
                acc += match kind {
                    Kind::L1 => v.abs(),
                    Kind::LogSum => v,
                    _ => v * v,
                };
            }
            T::from_f64(match kind {
                Kind::L2 => acc.sqrt(),
                Kind::LogSum => acc.ln(),
                _ => acc,
            })
        }
        Kind::LogSumExp => {
            // Shift by the largest finite value so exp cannot overflow; infinities then give
            // ln(inf) = inf or exp(-inf) = 0 as they should.
            let shift = row
                .iter()
                .map(|x| x.to_f64())
                .filter(|v| v.is_finite())
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                .unwrap_or(0.0);
            let sum: f64 = row.iter().map(|x| (x.to_f64() - shift).exp()).sum();
            T::from_f64(sum.ln() + shift)
        }
        Kind::Sum | Kind::Mean | Kind::Prod => {
            if float {
                let mut acc = if kind == Kind::Prod { 1.0 } else { 0.0 };
                for &x in row {
                    if kind == Kind::Prod {
                        acc *= x.to_f64();
                    } else {
                        acc += x.to_f64();
                    }
                }
                if kind == Kind::Mean {
                    acc /= row.len() as f64;
                }
                T::from_f64(acc)
            } else {
                let mut acc: i64 = if kind == Kind::Prod { 1 } else { 0 };
                for &x in row {
                    acc = if kind == Kind::Prod {
                        acc.wrapping_mul(x.to_i64())
                    } else {
                        acc.wrapping_add(x.to_i64())
                    };
                }
                if kind == Kind::Mean {
                    acc = if row.is_empty() {
                        0
                    } else {
                        acc / row.len() as i64
                    };
                }
                T::from_i64(acc)
            }
        }
        Kind::Max | Kind::Min => {
            let max = kind == Kind::Max;
            let mut acc: Option<T> = None;
            for &x in row {
                #[allow(clippy::eq_op)]
                let is_nan = x != x;
                if is_nan {
                    return x;
                }
                acc = Some(match acc {
                    None => x,
                    Some(a) if (max && x > a) || (!max && x < a) => x,
                    Some(a) => a,
                });
            }
            acc.unwrap_or_else(|| empty_extreme::<T>(max))
        }
    }
}

/// The identity of max (min) over an empty set.
fn empty_extreme<T: Elem>(max: bool) -> T {
    let inf = if max {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    match T::DT {
        crate::onnx::tensor_proto::DataType::Bool => T::from_i64(!max as i64),
        crate::onnx::tensor_proto::DataType::Int64 => {
            T::from_i64(if max { i64::MIN } else { i64::MAX })
        }
        _ if is_float(T::DT) => T::from_f64(inf),
        // Narrow integers: `from_f64` saturates ±inf to the type's bounds.
        _ => T::from_f64(inf),
    }
}

fn reduce_t<T: Elem>(
    a: &ArrayD<T>,
    axes: &[usize],
    keepdims: bool,
    kind: Kind,
) -> Result<ArrayD<T>> {
    let r = a.ndim();
    let kept: Vec<usize> = (0..r).filter(|i| !axes.contains(i)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let p = standard(a.view().permuted_axes(IxDyn(&perm)));
    let data = p
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous reduce input"))?;
    let inner: usize = axes.iter().map(|&i| a.shape()[i]).product();
    let outer: usize = kept.iter().map(|&i| a.shape()[i]).product();
    let out: Vec<T> = (0..outer)
        .map(|o| fold(&data[o * inner..(o + 1) * inner], kind))
        .collect();
    let shape: Vec<usize> = if keepdims {
        (0..r)
            .map(|i| if axes.contains(&i) { 1 } else { a.shape()[i] })
            .collect()
    } else {
        kept.iter().map(|&i| a.shape()[i]).collect()
    };
    from_vec(&shape, out)
}

fn build(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let kind = match node.op_type() {
        "ReduceSum" => Kind::Sum,
        "ReduceMean" => Kind::Mean,
        "ReduceMax" => Kind::Max,
        "ReduceMin" => Kind::Min,
        "ReduceL1" => Kind::L1,
        "ReduceL2" => Kind::L2,
        "ReduceLogSum" => Kind::LogSum,
        "ReduceLogSumExp" => Kind::LogSumExp,
        "ReduceSumSquare" => Kind::SumSquare,
        _ => Kind::Prod,
    };
    let input_since = if kind == Kind::Sum { 13 } else { 18 };
    let attr_axes = if ctx.opset < input_since {
        node.attr::<Vec<i64>>("axes")?
    } else {
        None
    };
    let keepdims = node.attr_or::<i64>("keepdims", 1)? != 0;
    let noop = node.attr_or::<i64>("noop_with_empty_axes", 0)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let r = x.shape().len();
        let axes = match &attr_axes {
            Some(a) => a.clone(),
            None => opt(ins, 1)
                .map(|v| ints(v, "axes"))
                .transpose()?
                .unwrap_or_default(),
        };
        if axes.is_empty() && noop {
            return Ok(vec![x.clone()]);
        }
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            axes.iter()
                .map(|&a| norm_axis(a, r))
                .collect::<Result<_>>()?
        };
        ax.sort_unstable();
        ax.dedup();
        if !matches!(kind, Kind::Max | Kind::Min) && matches!(x, Value::Bool(_)) {
            return Err(err("cannot sum bool values"));
        }
        Ok(vec![map_same!(x, a => reduce_t(a, &ax, keepdims, kind)?)])
    })))
}

pub fn register(r: &mut Registry) {
    for op in [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ] {
        r.register("", op, build);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn reduces_axes_with_and_without_keepdims() {
        let a = array![[[1.0f32, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]].into_dyn();
        assert_eq!(
            reduce_t(&a, &[1], true, Kind::Sum).unwrap(),
            array![[[4.0f32, 6.0]], [[12.0, 14.0]]].into_dyn()
        );
        assert_eq!(
            reduce_t(&a, &[0, 2], false, Kind::Mean).unwrap(),
            array![3.5f32, 5.5].into_dyn()
        );
        assert_eq!(
            reduce_t(&a, &[0, 1, 2], false, Kind::Max).unwrap(),
            ndarray::arr0(8.0f32).into_dyn()
        );
        assert_eq!(
            reduce_t(&a, &[2], false, Kind::SumSquare).unwrap(),
            array![[5.0f32, 25.0], [61.0, 113.0]].into_dyn()
        );
        let big = array![1000.0f64, 1000.0].into_dyn();
        let lse = reduce_t(&big, &[0], false, Kind::LogSumExp).unwrap()[[]];
        assert!((lse - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn empty_sets() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[2, 0]));
        assert_eq!(
            reduce_t(&a, &[1], false, Kind::Sum).unwrap(),
            array![0.0f32, 0.0].into_dyn()
        );
        let m = reduce_t(&a, &[1], false, Kind::Max).unwrap();
        assert!(m.iter().all(|&v| v == f32::NEG_INFINITY));
        let l = reduce_t(&a, &[1], false, Kind::LogSumExp).unwrap();
        assert!(l.iter().all(|&v| v == f32::NEG_INFINITY));
        let i = ArrayD::<i32>::zeros(IxDyn(&[0]));
        assert_eq!(reduce_t(&i, &[0], false, Kind::Max).unwrap()[[]], i32::MIN);
    }
}
