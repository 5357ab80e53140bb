//! `CumSum` (11, 14) and `CumProd` (26): running sum (product) of `x` along the axis given by
//! the second input (a scalar or one-element int32/int64 tensor, negative counts from the
//! end). The output has the input's shape and type.
//!
//! - `exclusive = 1`: element `j` covers the elements before `j` only (the first is 0 for a
//!   sum, 1 for a product).
//! - `reverse = 1`: the scan runs from the end of the axis to the start.
//!
//! Floats accumulate in f64 and round each output once (f16 too); integers wrap in i64 and
//! truncate to their type (wrap-around, as numpy's fixed-width arithmetic gives). Bool is
//! rejected (not a numeric type of either op).

use ndarray::{ArrayD, Axis};

use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::util::{Elem, err, ints, is_float, norm_axis, req};
use super::{BuildCtx, FnOp, Op, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scan {
    product: bool,
    exclusive: bool,
    reverse: bool,
}

/// The running accumulator: f64 for floats, wrapping i64 for integers.
#[derive(Clone, Copy)]
enum Acc {
    F(f64),
    I(i64),
}

impl Acc {
    fn start<T: Elem>(product: bool) -> Acc {
        match (is_float(T::DT), product) {
            (true, p) => Acc::F(if p { 1.0 } else { 0.0 }),
            (false, p) => Acc::I(p as i64),
        }
    }

    fn step<T: Elem>(self, x: T, product: bool) -> Acc {
        match self {
            Acc::F(a) if product => Acc::F(a * x.to_f64()),
            Acc::F(a) => Acc::F(a + x.to_f64()),
            Acc::I(a) if product => Acc::I(a.wrapping_mul(x.to_i64())),
            Acc::I(a) => Acc::I(a.wrapping_add(x.to_i64())),
        }
    }

    fn get<T: Elem>(self) -> T {
        match self {
            Acc::F(a) => T::from_f64(a),
            Acc::I(a) => T::from_i64(a),
        }
    }
}

fn scan_t<T: Elem>(a: &ArrayD<T>, axis: usize, scan: Scan) -> ArrayD<T> {
    let mut out = a.clone();
    for mut lane in out.lanes_mut(Axis(axis)) {
        let n = lane.len();
        let mut acc = Acc::start::<T>(scan.product);
        for k in 0..n {
            let j = if scan.reverse { n - 1 - k } else { k };
            let x = lane[j];
            if scan.exclusive {
                lane[j] = acc.get();
                acc = acc.step(x, scan.product);
            } else {
                acc = acc.step(x, scan.product);
                lane[j] = acc.get();
            }
        }
    }
    out
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let flag = |name: &str| -> Result<bool> {
        match node.attr_or::<i64>(name, 0)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(node.error(format!("{name} must be 0 or 1, got {v}"))),
        }
    };
    let scan = Scan {
        product: node.op_type() == "CumProd",
        exclusive: flag("exclusive")?,
        reverse: flag("reverse")?,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let axis = match ints(req(ins, 1)?, "axis")?.as_slice() {
            [a] => *a,
            other => {
                return Err(err(format!(
                    "axis must hold one value, got {} values",
                    other.len()
                )));
            }
        };
        if matches!(x, Value::Bool(_)) {
            return Err(err("input x cannot be bool"));
        }
        // A scalar has no axis to scan; the spec requires rank >= 1.
        let ax = norm_axis(axis, x.shape().len())?;
        Ok(vec![map_same!(x, a => scan_t(a, ax, scan))])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "CumSum", build);
    r.register("", "CumProd", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn exclusive_and_reverse() {
        let a = array![1i32, 2, 3, 4].into_dyn();
        let s = |product, exclusive, reverse| {
            scan_t(
                &a,
                0,
                Scan {
                    product,
                    exclusive,
                    reverse,
                },
            )
        };
        assert_eq!(s(false, false, false), array![1, 3, 6, 10].into_dyn());
        assert_eq!(s(false, true, false), array![0, 1, 3, 6].into_dyn());
        assert_eq!(s(false, true, true), array![9, 7, 4, 0].into_dyn());
        assert_eq!(s(true, false, true), array![24, 24, 12, 4].into_dyn());
        assert_eq!(s(true, true, false), array![1, 1, 2, 6].into_dyn());
    }
}
