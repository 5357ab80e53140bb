//! Normalization layers, computed in f64 and rounded to the input's float type.
//!
//! - `BatchNormalization` (7, 9, 14, 15): `Y = scale[c] · (X - mean[c]) / sqrt(var[c] + eps)
//!   + B[c]` over channel axis 1 of `X [N, C, ...]`; `epsilon` default 1e-5. The parameters
//!   may have another float type than X (opset 15). With `training_mode = 1` (14+) the batch
//!   statistics are used (population variance) and the optional outputs are the updated
//!   running statistics `running · momentum + batch · (1 - momentum)` (`momentum` 0.9).
//!   Opset 7's `spatial` = 0 form is not supported.
//! - `LayerNormalization` (17): normalizes over axes `axis..` (default -1) with `epsilon`
//!   (1e-5); `Scale` and optional `B` broadcast to the normalized shape. Optional outputs
//!   `Mean` and `InvStdDev` have shape `X.shape[..axis] + [1, ...]`, in float32 when
//!   `stash_type` = 1 (the default), else in X's type.

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{bview, cast, err, from_vec, norm_axis, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

/// Elements of a float value as f64, row-major.
fn f64s(v: &Value) -> Result<Vec<f64>> {
    Ok(match v {
        Value::F32(a) => a.iter().map(|&x| x as f64).collect(),
        Value::F64(a) => a.iter().copied().collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
        _ => {
            return Err(err(format!(
                "expects a float tensor, got {}",
                super::util::dname(v)
            )));
        }
    })
}

/// An f64 result as a value of float type `dt`.
fn to_value(shape: &[usize], v: Vec<f64>, dt: DataType) -> Result<Value> {
    cast(&Value::F64(from_vec(shape, v)?), dt)
}

fn param(ins: &[Option<&Value>], i: usize, c: usize, what: &str) -> Result<Vec<f64>> {
    let v = f64s(req(ins, i)?)?;
    if v.len() != c {
        return Err(err(format!(
            "{what} has {} elements, expected {c} (channels)",
            v.len()
        )));
    }
    Ok(v)
}

fn batch_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = node.attr_or::<f32>("epsilon", 1e-5)? as f64;
    let momentum = node.attr_or::<f32>("momentum", 0.9)? as f64;
    let training = node.attr_or::<i64>("training_mode", 0)? != 0;
    if node.attr_or::<i64>("spatial", 1)? == 0 {
        return Err(node.error("spatial = 0 is not supported"));
    }
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        if shape.len() < 2 {
            return Err(err(format!("X must be [N, C, ...], got {shape:?}")));
        }
        let (n, c) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        let xs = f64s(x)?;
        let scale = param(ins, 1, c, "scale")?;
        let bias = param(ins, 2, c, "B")?;
        let mut mean = param(ins, 3, c, "input_mean")?;
        let mut var = param(ins, 4, c, "input_var")?;
        let mut outs_extra = Vec::new();
        if training {
            let cnt = (n * inner) as f64;
            let mut bm = vec![0.0; c];
            let mut bv = vec![0.0; c];
            for ch in 0..c {
                let vals = (0..n).flat_map(|b| {
                    let base = (b * c + ch) * inner;
                    xs[base..base + inner].iter().copied()
                });
                bm[ch] = vals.clone().sum::<f64>() / cnt;
                bv[ch] = vals.map(|v| (v - bm[ch]).powi(2)).sum::<f64>() / cnt;
            }
            let rm: Vec<f64> = (0..c)
                .map(|i| mean[i] * momentum + bm[i] * (1.0 - momentum))
                .collect();
            let rv: Vec<f64> = (0..c)
                .map(|i| var[i] * momentum + bv[i] * (1.0 - momentum))
                .collect();
            let pdt = req(ins, 3)?.dtype();
            outs_extra.push(to_value(&[c], rm, pdt)?);
            outs_extra.push(to_value(&[c], rv, pdt)?);
            mean = bm;
            var = bv;
        }
        let a: Vec<f64> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
        let b: Vec<f64> = (0..c).map(|i| bias[i] - mean[i] * a[i]).collect();
        let mut y = xs;
        for (blk, chunk) in y.chunks_mut(inner.max(1)).enumerate() {
            let ch = blk % c;
            for v in chunk {
                *v = *v * a[ch] + b[ch];
            }
        }
        let mut outs = vec![to_value(&shape, y, x.dtype())?];
        outs.extend(outs_extra);
        Ok(outs)
    })))
}

fn layer_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -1)?;
    let eps = node.attr_or::<f32>("epsilon", 1e-5)? as f64;
    let stash_f32 = node.attr_or::<i64>("stash_type", 1)? == 1;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        let ax = norm_axis(axis, shape.len())?;
        let outer: usize = shape[..ax].iter().product();
        let norm_shape = &shape[ax..];
        let inner: usize = norm_shape.iter().product();
        let bcast = |v: &Value| -> Result<Vec<f64>> {
            Ok(match v {
                Value::F32(a) => standard(bview(a, norm_shape)?)
                    .iter()
                    .map(|&x| x as f64)
                    .collect(),
                Value::F64(a) => standard(bview(a, norm_shape)?).iter().copied().collect(),
                Value::F16(a) => standard(bview(a, norm_shape)?)
                    .iter()
                    .map(|x| x.to_f64())
                    .collect(),
                _ => return Err(err("Scale and B must be float tensors")),
            })
        };
        let scale = bcast(req(ins, 1)?)?;
        let bias = opt(ins, 2).map(bcast).transpose()?;
        let xs = f64s(x)?;
        let mut y = vec![0.0; xs.len()];
        let mut means = Vec::with_capacity(outer);
        let mut invs = Vec::with_capacity(outer);
        for o in 0..outer {
            let row = &xs[o * inner..(o + 1) * inner];
            let m = row.iter().sum::<f64>() / inner as f64;
            let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / inner as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..inner {
                let mut v = (row[i] - m) * inv * scale[i];
                if let Some(b) = &bias {
                    v += b[i];
                }
                y[o * inner + i] = v;
            }
            means.push(m);
            invs.push(inv);
        }
        let stat_shape: Vec<usize> = (0..shape.len())
            .map(|i| if i < ax { shape[i] } else { 1 })
            .collect();
        let sdt = if stash_f32 {
            DataType::Float
        } else {
            x.dtype()
        };
        Ok(vec![
            to_value(&shape, y, x.dtype())?,
            to_value(&stat_shape, means, sdt)?,
            to_value(&stat_shape, invs, sdt)?,
        ])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "BatchNormalization", batch_norm);
    r.register("", "LayerNormalization", layer_norm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn run(op: Box<dyn Op>, ins: &[&Value]) -> Vec<Value> {
        let ins: Vec<Option<&Value>> = ins.iter().map(|v| Some(*v)).collect();
        op.run(&ins).unwrap()
    }

    #[test]
    fn batch_norm_by_hand() {
        let node = Node::new("bn", "BatchNormalization", "", vec![], vec!["y".into()]);
        let ctx = BuildCtx {
            opset: 15,
            const_inputs: vec![],
        };
        let x = Value::F32(array![[[1.0f32, 3.0]], [[5.0, 7.0]]].into_dyn()); // N=2, C=1, 2
        let p = |v: f32| Value::F32(array![v].into_dyn());
        let y = run(
            batch_norm(&node, &ctx).unwrap(),
            &[&x, &p(2.0), &p(1.0), &p(4.0), &p(4.0)],
        );
        // (x - 4) / sqrt(4 + 1e-5) * 2 + 1
        let want: Vec<f32> = [1.0f32, 3.0, 5.0, 7.0]
            .iter()
            .map(|v| (v - 4.0) / (4.0f32 + 1e-5).sqrt() * 2.0 + 1.0)
            .collect();
        let got: Vec<f32> = y[0].as_f32().unwrap().iter().copied().collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6);
        }
    }

    #[test]
    fn layer_norm_by_hand() {
        let node = Node::new("ln", "LayerNormalization", "", vec![], vec!["y".into()]);
        let ctx = BuildCtx {
            opset: 17,
            const_inputs: vec![],
        };
        let x = Value::F32(array![[1.0f32, 3.0], [2.0, 2.0]].into_dyn());
        let s = Value::F32(array![1.0f32, 2.0].into_dyn());
        let out = run(layer_norm(&node, &ctx).unwrap(), &[&x, &s]);
        let inv = 1.0 / (1.0f32 + 1e-5).sqrt();
        let y = out[0].as_f32().unwrap();
        assert!((y[[0, 0]] + inv).abs() < 1e-6 && (y[[0, 1]] - 2.0 * inv).abs() < 1e-6);
        assert_eq!(y[[1, 0]], 0.0);
        assert_eq!(
            out[1].as_f32().unwrap(),
            &array![[2.0f32], [2.0]].into_dyn()
        );
    }
}
