//! Classification losses: `NegativeLogLikelihoodLoss` (12, 13, 22) and
//! `SoftmaxCrossEntropyLoss` (12, 13).
//!
//! Input `x` is `[N, C]` or `[N, C, d1, ..., dk]` (class scores along axis 1), `target` the
//! int32/int64 class of each `[N, d1, ..., dk]` position, optional `weight` `[C]` per class.
//! Per position, `loss = -weight[t] · x[n, t, d...]` with `t = target[n, d...]`
//! (`NegativeLogLikelihoodLoss` reads `x` as log-probabilities; `SoftmaxCrossEntropyLoss`
//! first takes the log-softmax of `x` along axis 1, and returns it as the optional second
//! output `log_prob`). A position whose target equals `ignore_index` contributes 0 with weight
//! 0; any other target outside `0..C` is an error.
//!
//! `reduction`: "none" returns the per-position losses (target's shape); "sum" their sum;
//! "mean" (default) the sum divided by the sum of the positions' weights (their count when
//! there is no `weight`; ignored positions do not count, so all-ignored gives NaN, as the
//! reference does). Computed in f64, returned in the input's float type.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{cast, dname, err, from_vec, ints, is_float, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduction {
    None,
    Sum,
    Mean,
}

/// A float input as a row-major f64 array.
fn f64_input(v: &Value, what: &str) -> Result<ArrayD<f64>> {
    if !is_float(v.dtype()) {
        return Err(err(format!(
            "{what} must be a float tensor, got {}",
            dname(v)
        )));
    }
    match cast(v, DataType::Double)? {
        Value::F64(a) => Ok(standard(a.view())),
        _ => Err(err("internal: cast to double")),
    }
}

/// Log-softmax along axis 1 of a row-major `[n, c, d]` buffer, in place.
fn log_softmax_axis1(x: &mut [f64], n: usize, c: usize, d: usize) {
    for i in 0..n {
        for k in 0..d {
            let at = |j: usize| (i * c + j) * d + k;
            let m = (0..c).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let s = (0..c).map(|j| (x[at(j)] - m).exp()).sum::<f64>().ln();
            for j in 0..c {
                x[at(j)] -= m + s;
            }
        }
    }
}

struct LossOp {
    softmax: bool,
    reduction: Reduction,
    ignore_index: Option<i64>,
    log_prob: bool,
}

impl LossOp {
    fn compute(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let xv = req(ins, 0)?;
        let shape = xv.shape().to_vec();
        if shape.len() < 2 {
            return Err(err(format!(
                "input has shape {shape:?}, expected [N, C] or [N, C, d1, ...]"
            )));
        }
        let (n, c) = (shape[0], shape[1]);
        let d: usize = shape[2..].iter().product();
        let mut tshape = vec![n];
        tshape.extend_from_slice(&shape[2..]);
        let tv = req(ins, 1)?;
        if tv.shape() != tshape.as_slice() {
            return Err(err(format!(
                "target has shape {:?}, expected {tshape:?} for input {shape:?}",
                tv.shape()
            )));
        }
        let target = ints(tv, "target")?;
        let weight: Option<Vec<f64>> = match opt(ins, 2) {
            None => None,
            Some(w) if w.shape() == [c] => Some(f64_input(w, "weight")?.iter().copied().collect()),
            Some(w) => {
                return Err(err(format!(
                    "weight has shape {:?}, expected [{c}]",
                    w.shape()
                )));
            }
        };
        let mut x = f64_input(xv, "input")?;
        let xs = x
            .as_slice_mut()
            .ok_or_else(|| err("internal: non-contiguous input"))?;
        if self.softmax {
            log_softmax_axis1(xs, n, c, d);
        }
        let mut losses = Vec::with_capacity(n * d);
        let mut weight_sum = 0.0;
        for i in 0..n {
            for k in 0..d {
                let t = target[i * d + k];
                if Some(t) == self.ignore_index {
                    losses.push(0.0);
                    continue;
                }
                let j = usize::try_from(t)
                    .ok()
                    .filter(|&j| j < c)
                    .ok_or_else(|| err(format!("target value {t} is outside the {c} classes")))?;
                let w = weight.as_ref().map_or(1.0, |w| w[j]);
                weight_sum += w;
                losses.push(-xs[(i * c + j) * d + k] * w);
            }
        }
        let loss = match self.reduction {
            Reduction::None => from_vec(&tshape, losses)?,
            Reduction::Sum => ArrayD::from_elem(IxDyn(&[]), losses.iter().sum::<f64>()),
            Reduction::Mean => {
                ArrayD::from_elem(IxDyn(&[]), losses.iter().sum::<f64>() / weight_sum)
            }
        };
        let dt = xv.dtype();
        let mut outs = vec![cast(&Value::F64(loss), dt)?];
        if self.log_prob {
            outs.push(cast(&Value::F64(x), dt)?);
        }
        Ok(outs)
    }
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let reduction = match node.attr_or::<String>("reduction", "mean".into())?.as_str() {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        r => {
            return Err(node.error(format!("reduction must be none, sum or mean, got '{r}'")));
        }
    };
    let softmax = node.op_type() == "SoftmaxCrossEntropyLoss";
    let op = LossOp {
        softmax,
        reduction,
        ignore_index: node.attr::<i64>("ignore_index")?,
        log_prob: softmax && node.outputs().get(1).is_some_and(|o| !o.is_empty()),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        op.compute(ins)
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "NegativeLogLikelihoodLoss", build);
    r.register("", "SoftmaxCrossEntropyLoss", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn op(softmax: bool, reduction: Reduction, ignore_index: Option<i64>) -> LossOp {
        LossOp {
            softmax,
            reduction,
            ignore_index,
            log_prob: softmax,
        }
    }

    #[test]
    fn weighted_mean_skips_ignored_positions() {
        let x = Value::F32(array![[-1.0f32, -2.0, -3.0], [-0.5, -1.5, -2.5]].into_dyn());
        let t = Value::I64(array![2i64, 1].into_dyn());
        let w = Value::F32(array![1.0f32, 2.0, 4.0].into_dyn());
        let out = op(false, Reduction::Mean, None)
            .compute(&[Some(&x), Some(&t), Some(&w)])
            .unwrap();
        // (3·4 + 1.5·2) / (4 + 2)
        assert_eq!(out[0], Value::F32(ndarray::arr0(2.5f32).into_dyn()));
        let out = op(false, Reduction::None, Some(1))
            .compute(&[Some(&x), Some(&t)])
            .unwrap();
        assert_eq!(out[0], Value::F32(array![3.0f32, 0.0].into_dyn()));
        let bad = Value::I64(array![3i64, 0].into_dyn());
        assert!(
            op(false, Reduction::Sum, None)
                .compute(&[Some(&x), Some(&bad)])
                .is_err()
        );
    }

    #[test]
    fn softmax_cross_entropy_of_equal_scores_is_ln_c() {
        let x = Value::F64(array![[7.0f64, 7.0, 7.0, 7.0]].into_dyn());
        let t = Value::I32(array![3i32].into_dyn());
        let out = op(true, Reduction::Sum, None)
            .compute(&[Some(&x), Some(&t)])
            .unwrap();
        let got = out[0].as_f64().unwrap()[[]];
        assert!((got - 4f64.ln()).abs() < 1e-12);
        assert_eq!(out[1].shape(), &[1, 4]);
    }
}
