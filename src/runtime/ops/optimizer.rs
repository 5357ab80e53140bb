//! The `ai.onnx.preview.training` optimizer steps (1): `Adagrad`, `Adam` and `Momentum`.
//! Each takes the learning rate `R` and step count `T` (scalars), then n tensors to update
//! and their state, grouped by kind: Adagrad `X.., G.., H..` -> `X_new.., H_new..`; Adam
//! `X.., G.., V.., H..` -> `X_new.., V_new.., H_new..`; Momentum `X.., G.., V..` ->
//! `X_new.., V_new..`. With `g = norm_coefficient * x + g`:
//!
//! - Adagrad: `r' = R / (1 + T * decay_factor)`, `h' = h + g²`,
//!   `x' = x - r' * g / (sqrt(h') + epsilon)`.
//! - Adam: `v' = alpha v + (1 - alpha) g`, `h' = beta h + (1 - beta) g²`,
//!   `r' = R sqrt(1 - beta^T) / (1 - alpha^T)` when `T > 0` (else `R`),
//!   `x' = (1 - norm_coefficient_post) (x - r' v' / (sqrt(h') + epsilon))`.
//! - Momentum: `v' = alpha v + b g` with `b = beta` when `T > 0`, else 1; `mode`
//!   "standard": `x' = x - R v'`; "nesterov": `x' = x - R (g + alpha v')`.
//!
//! The arithmetic is done in f64 and rounded to each tensor's type (f32 or f64).

use ndarray::{ArrayD, Zip};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, req, scalar_f64};
use super::{BuildCtx, FnOp, Op, Registry};

const TRAINING: &str = "ai.onnx.preview.training";

fn as_f64(v: &Value, what: &str) -> Result<ArrayD<f64>> {
    match v {
        Value::F32(a) => Ok(a.mapv(|x| x as f64)),
        Value::F64(a) => Ok(a.clone()),
        other => Err(err(format!(
            "{what} must be float or double, got {}",
            dname(other)
        ))),
    }
}

/// Rounds back to the element type of `like`.
fn like(a: ArrayD<f64>, like: &Value) -> Value {
    match like {
        Value::F64(_) => Value::F64(a),
        _ => Value::F32(a.mapv(|x| x as f32)),
    }
}

/// One optimizer step over a group `[x, g, states..]` with `R` and `T`: `[x', states'..]`.
type Step<'a> = dyn Fn(f64, f64, &[ArrayD<f64>]) -> Vec<ArrayD<f64>> + 'a;

/// Splits the inputs after `R` and `T` into `kinds` groups of n tensors, checks that the
/// tensors of one index share a shape, and calls `step(r, t, [x, g, ...])` on each index.
/// Returns the outputs grouped by kind, in the order `step` returns them.
fn run_groups(ins: &[Option<&Value>], kinds: usize, step: &Step) -> Result<Vec<Value>> {
    let r = scalar_f64(req(ins, 0)?)?;
    let t = scalar_f64(req(ins, 1)?)?;
    let rest = ins.len().saturating_sub(2);
    if rest == 0 || !rest.is_multiple_of(kinds) {
        return Err(err(format!(
            "{rest} tensor inputs do not split into {kinds} groups"
        )));
    }
    let n = rest / kinds;
    let mut outs: Vec<Vec<Value>> = Vec::new();
    for i in 0..n {
        let group = (0..kinds)
            .map(|k| req(ins, 2 + k * n + i))
            .collect::<Result<Vec<&Value>>>()?;
        if group.iter().any(|v| v.shape() != group[0].shape()) {
            return Err(err(format!("the tensors of group {i} differ in shape")));
        }
        let arrays = group
            .iter()
            .map(|v| as_f64(v, "an optimizer input"))
            .collect::<Result<Vec<_>>>()?;
        let new = step(r, t, &arrays);
        if outs.is_empty() {
            outs = vec![Vec::new(); new.len()];
        }
        // The outputs are X then the states, which are the inputs after G: each keeps the
        // type of the tensor it updates.
        for (j, a) in new.into_iter().enumerate() {
            let src = if j == 0 { group[0] } else { group[1 + j] };
            outs[j].push(like(a, src));
        }
    }
    Ok(outs.into_iter().flatten().collect())
}

fn adagrad(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let decay = node.attr_or::<f32>("decay_factor", 0.0)? as f64;
    let eps = node.attr_or::<f32>("epsilon", 0.0)? as f64;
    let norm = node.attr_or::<f32>("norm_coefficient", 0.0)? as f64;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        run_groups(ins, 3, &|r, t, a| {
            let r = r / (1.0 + t * decay);
            let (mut x, mut h) = (a[0].clone(), a[2].clone());
            Zip::from(&mut x)
                .and(&a[1])
                .and(&mut h)
                .for_each(|x, &g, h| {
                    let g = norm * *x + g;
                    *h += g * g;
                    *x -= r * g / (h.sqrt() + eps);
                });
            vec![x, h]
        })
    })))
}

fn adam(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let alpha = node.attr_or::<f32>("alpha", 0.9)? as f64;
    let beta = node.attr_or::<f32>("beta", 0.999)? as f64;
    let eps = node.attr_or::<f32>("epsilon", 0.0)? as f64;
    let norm = node.attr_or::<f32>("norm_coefficient", 0.0)? as f64;
    let post = node.attr_or::<f32>("norm_coefficient_post", 0.0)? as f64;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        run_groups(ins, 4, &|r, t, a| {
            let r = if t > 0.0 {
                r * (1.0 - beta.powf(t)).sqrt() / (1.0 - alpha.powf(t))
            } else {
                r
            };
            let (mut x, mut v, mut h) = (a[0].clone(), a[2].clone(), a[3].clone());
            Zip::from(&mut x)
                .and(&a[1])
                .and(&mut v)
                .and(&mut h)
                .for_each(|x, &g, v, h| {
                    let g = norm * *x + g;
                    *v = alpha * *v + (1.0 - alpha) * g;
                    *h = beta * *h + (1.0 - beta) * g * g;
                    *x = (1.0 - post) * (*x - r * *v / (h.sqrt() + eps));
                });
            vec![x, v, h]
        })
    })))
}

fn momentum(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let alpha = node.attr_req::<f32>("alpha")? as f64;
    let beta = node.attr_req::<f32>("beta")? as f64;
    let norm = node.attr_req::<f32>("norm_coefficient")? as f64;
    let nesterov = match node.attr_req::<String>("mode")?.as_str() {
        "standard" => false,
        "nesterov" => true,
        m => return Err(node.error(format!("mode '{m}' is not standard or nesterov"))),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        run_groups(ins, 3, &|r, t, a| {
            let b = if t > 0.0 { beta } else { 1.0 };
            let (mut x, mut v) = (a[0].clone(), a[2].clone());
            Zip::from(&mut x)
                .and(&a[1])
                .and(&mut v)
                .for_each(|x, &g, v| {
                    let g = norm * *x + g;
                    *v = alpha * *v + b * g;
                    *x -= if nesterov {
                        r * (g + alpha * *v)
                    } else {
                        r * *v
                    };
                });
            vec![x, v]
        })
    })))
}

pub fn register(r: &mut Registry) {
    r.register(TRAINING, "Adagrad", adagrad);
    r.register(TRAINING, "Adam", adam);
    r.register(TRAINING, "Momentum", momentum);
}
