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
//! - `RMSNormalization` (23): `Y = X / sqrt(mean(X², axes axis..) + epsilon) · Scale`, `axis`
//!   default -1, `epsilon` 1e-5; `Scale` broadcasts unidirectionally to X. `stash_type` only
//!   names the stage-one precision, which f64 meets for every type.
//! - `InstanceNormalization` (6, 22): `Y = scale[c] · (X - mean) / sqrt(var + epsilon) + B[c]`
//!   with mean and (population) variance per `(n, c)` over the spatial axes of `[N, C, ...]`.
//! - `GroupNormalization` (18, 21): the channels of `[N, C, ...]` split into `num_groups`
//!   equal groups; mean and variance per `(n, group)` over the group's channels and the
//!   spatial axes. `scale` and `bias` hold one value per group in opset 18 and one per
//!   channel from opset 21 (whose `stash_type` again only names the stage-one precision).
//! - `LRN` (1, 13): `Y = X / (bias + alpha / size · Σ X²)^beta`, the sum over the channels
//!   `c - floor((size-1)/2) ..= c + ceil((size-1)/2)` clipped to `0..C`, of `[N, C, ...]`.
//! - `LpNormalization` (1, 22): `Y = X / ‖X‖_p` along `axis` (default -1) for `p` 1 or 2
//!   (default 2); a zero norm gives zeros.
//! - `MeanVarianceNormalization` (9, 13): `Y = (X - E[X]) / (sqrt(E[X²] - E[X]²) + 1e-9)`
//!   over `axes` (default `[0, 2, 3]`), as the op's function body computes it.

use ndarray::{ArrayD, IxDyn};

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
        let rows = LnRows {
            outer,
            inner,
            scale: &scale,
            bias: bias.as_deref(),
            eps,
        };
        // f32 (the common case) is read in place and written as f32, without the f64 copies;
        // the arithmetic is the same.
        let (y, means, invs) = match x {
            Value::F32(a) if a.is_standard_layout() => {
                let xs = a.as_slice().unwrap_or(&[]);
                let mut y = vec![0f32; xs.len()];
                let (means, invs) = rows.run(xs, &mut y, f64::from, |v| v as f32);
                let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?;
                (Value::F32(y), means, invs)
            }
            _ => {
                let xs = f64s(x)?;
                let mut y = vec![0f64; xs.len()];
                let (means, invs) = rows.run(&xs, &mut y, |v| v, |v| v);
                (to_value(&shape, y, x.dtype())?, means, invs)
            }
        };
        let stat_shape: Vec<usize> = (0..shape.len())
            .map(|i| if i < ax { shape[i] } else { 1 })
            .collect();
        let sdt = if stash_f32 {
            DataType::Float
        } else {
            x.dtype()
        };
        Ok(vec![
            y,
            to_value(&stat_shape, means, sdt)?,
            to_value(&stat_shape, invs, sdt)?,
        ])
    })))
}

/// `LayerNormalization` over rows of `inner` values, in f64.
struct LnRows<'a> {
    outer: usize,
    inner: usize,
    scale: &'a [f64],
    bias: Option<&'a [f64]>,
    eps: f64,
}

impl LnRows<'_> {
    /// Normalizes each row of `xs` into `y` (`get` widens an element, `put` narrows a
    /// result); returns each row's mean and inverse standard deviation.
    fn run<T: Copy, O>(
        &self,
        xs: &[T],
        y: &mut [O],
        get: impl Fn(T) -> f64,
        put: impl Fn(f64) -> O,
    ) -> (Vec<f64>, Vec<f64>) {
        let n = self.inner;
        if n == 0 {
            // Empty rows: 0 / 0, as the sums give.
            return (vec![f64::NAN; self.outer], vec![f64::NAN; self.outer]);
        }
        let (mut means, mut invs) = (
            Vec::with_capacity(self.outer),
            Vec::with_capacity(self.outer),
        );
        for (row, out) in xs.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let m = lane_sum(row, &get) / n as f64;
            let var = lane_sum(row, |v| (get(v) - m).powi(2)) / n as f64;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (i, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                let mut r = (get(v) - m) * inv * self.scale[i];
                if let Some(b) = self.bias {
                    r += b[i];
                }
                *o = put(r);
            }
            means.push(m);
            invs.push(inv);
        }
        (means, invs)
    }
}

/// `Σ f(x)` in f64 over four interleaved partial sums (so the adds pipeline and vectorize),
/// combined in a fixed order: deterministic, and as accurate as one running sum.
fn lane_sum<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = xs.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..4 {
            acc[j] += f(c[j]);
        }
    }
    let tail: f64 = tail.iter().map(|&v| f(v)).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// A float value as an f64 array.
fn f64_array(v: &Value, what: &str) -> Result<ArrayD<f64>> {
    if !super::util::is_float(v.dtype()) {
        return Err(err(format!(
            "{what} must be a float tensor, got {}",
            super::util::dname(v)
        )));
    }
    match cast(v, DataType::Double)? {
        Value::F64(a) => Ok(a),
        _ => Err(err(format!("{what} did not convert to double"))),
    }
}

/// Mean and population variance of a block.
fn mean_var(block: &[f64]) -> (f64, f64) {
    let n = block.len().max(1) as f64;
    let m = block.iter().sum::<f64>() / n;
    let var = block.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
    (m, var)
}

/// Applies `f` in place to every block of elements that share their coordinates outside
/// `axes` (distinct, in range), returning the result in `x`'s shape.
fn per_block(
    x: &ArrayD<f64>,
    axes: &[usize],
    mut f: impl FnMut(&mut [f64]),
) -> Result<ArrayD<f64>> {
    let rank = x.ndim();
    let mut perm: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    perm.extend_from_slice(axes);
    let moved = x.view().permuted_axes(IxDyn(&perm));
    let moved_shape = moved.shape().to_vec();
    let mut data = moved
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    let block: usize = axes.iter().map(|&a| x.shape()[a]).product();
    if block > 0 {
        data.chunks_exact_mut(block).for_each(&mut f);
    }
    let mut inverse = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(standard(
        from_vec(&moved_shape, data)?
            .view()
            .permuted_axes(IxDyn(&inverse)),
    ))
}

/// `axes` normalized against `rank`, refusing repeats.
fn distinct_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, rank)?;
        if out.contains(&a) {
            return Err(err(format!("axis {a} is repeated in axes {axes:?}")));
        }
        out.push(a);
    }
    Ok(out)
}

fn rms_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -1)?;
    let eps = node.attr_or::<f32>("epsilon", 1e-5)? as f64;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let xv = req(ins, 0)?;
        let x = f64_array(xv, "X")?;
        let sv = req(ins, 1)?;
        let scale = f64_array(sv, "scale")?;
        let shape = x.shape().to_vec();
        let ax = norm_axis(axis, shape.len())?;
        let inner: usize = shape[ax..].iter().product();
        let mut y = standard(x.view()).into_raw_vec_and_offset().0;
        if inner > 0 {
            for row in y.chunks_exact_mut(inner) {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / inner as f64;
                let inv = 1.0 / (ms + eps).sqrt();
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
        let scale = bview(&scale, &shape)?;
        let y = from_vec(&shape, y)? * scale;
        cast(&Value::F64(y), sv.dtype()).map(|v| vec![v])
    })))
}

/// `[N, C, ...]` as `(N, C, spatial size)`, or an error naming the op's input.
fn nc_spatial(shape: &[usize]) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(err(format!("X must be [N, C, ...], got {shape:?}")));
    }
    Ok((shape[0], shape[1], shape[2..].iter().product()))
}

/// Normalizes `x` (row-major `[N, C, spatial]`) per `(n, group of `per_group` channels)` and
/// applies `scale[c] · x̂ + bias[c]` with per-channel parameters.
fn group_normalize(
    x: &mut [f64],
    c: usize,
    per_group: usize,
    spatial: usize,
    eps: f64,
    scale: &[f64],
    bias: &[f64],
) {
    let block = per_group * spatial;
    if block == 0 {
        return;
    }
    for (g, chunk) in x.chunks_exact_mut(block).enumerate() {
        let (m, var) = mean_var(chunk);
        let inv = 1.0 / (var + eps).sqrt();
        let first = (g * per_group) % c;
        for (i, v) in chunk.iter_mut().enumerate() {
            let ch = first + i / spatial.max(1);
            *v = (*v - m) * inv * scale[ch] + bias[ch];
        }
    }
}

fn instance_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = node.attr_or::<f32>("epsilon", 1e-5)? as f64;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        let (_, c, spatial) = nc_spatial(&shape)?;
        let scale = param(ins, 1, c, "scale")?;
        let bias = param(ins, 2, c, "B")?;
        let mut y = f64s(x)?;
        group_normalize(&mut y, c, 1, spatial, eps, &scale, &bias);
        Ok(vec![to_value(&shape, y, x.dtype())?])
    })))
}

fn group_norm(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let eps = node.attr_or::<f32>("epsilon", 1e-5)? as f64;
    let groups = node
        .attr::<i64>("num_groups")?
        .ok_or_else(|| node.error("num_groups is required"))?;
    if groups <= 0 {
        return Err(node.error(format!("num_groups must be positive, got {groups}")));
    }
    let groups = groups as usize;
    // Opset 18 gives scale and bias per group, 21 per channel.
    let per_channel_params = ctx.opset >= 21;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        let (_, c, spatial) = nc_spatial(&shape)?;
        if c % groups != 0 {
            return Err(err(format!(
                "{c} channels do not split into {groups} equal groups"
            )));
        }
        let per_group = c / groups;
        let (scale, bias) = if per_channel_params {
            (param(ins, 1, c, "scale")?, param(ins, 2, c, "bias")?)
        } else {
            let by_group = |i: usize, what: &str| -> Result<Vec<f64>> {
                let v = f64s(req(ins, i)?)?;
                if v.len() != groups {
                    return Err(err(format!(
                        "{what} has {} elements, expected {groups} (groups)",
                        v.len()
                    )));
                }
                Ok((0..c).map(|ch| v[ch / per_group]).collect())
            };
            (by_group(1, "scale")?, by_group(2, "bias")?)
        };
        let mut y = f64s(x)?;
        group_normalize(&mut y, c, per_group, spatial, eps, &scale, &bias);
        Ok(vec![to_value(&shape, y, x.dtype())?])
    })))
}

fn lrn(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let alpha = node.attr_or::<f32>("alpha", 1e-4)? as f64;
    let beta = node.attr_or::<f32>("beta", 0.75)? as f64;
    let bias = node.attr_or::<f32>("bias", 1.0)? as f64;
    let size = node
        .attr::<i64>("size")?
        .ok_or_else(|| node.error("size is required"))?;
    if size <= 0 {
        return Err(node.error(format!("size must be positive, got {size}")));
    }
    let (below, above) = ((size - 1) / 2, size / 2);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        let (n, c, spatial) = nc_spatial(&shape)?;
        let xs = f64s(x)?;
        let mut y = vec![0.0; xs.len()];
        for b in 0..n {
            for ch in 0..c {
                let lo = (ch as i64 - below).max(0) as usize;
                let hi = (ch as i64 + above).min(c as i64 - 1) as usize;
                for p in 0..spatial {
                    let at = |k: usize| xs[(b * c + k) * spatial + p];
                    let sq: f64 = (lo..=hi).map(|k| at(k) * at(k)).sum();
                    let i = (b * c + ch) * spatial + p;
                    y[i] = xs[i] / (bias + alpha / size as f64 * sq).powf(beta);
                }
            }
        }
        Ok(vec![to_value(&shape, y, x.dtype())?])
    })))
}

fn lp_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", -1)?;
    let p = node.attr_or::<i64>("p", 2)?;
    if p != 1 && p != 2 {
        return Err(node.error(format!("p must be 1 or 2, got {p}")));
    }
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let xv = req(ins, 0)?;
        let x = f64_array(xv, "input")?;
        let ax = norm_axis(axis, x.ndim())?;
        let y = per_block(&x, &[ax], |row| {
            let norm = if p == 1 {
                row.iter().map(|v| v.abs()).sum::<f64>()
            } else {
                row.iter().map(|v| v * v).sum::<f64>().sqrt()
            };
            let inv = if norm == 0.0 { 0.0 } else { 1.0 / norm };
            row.iter_mut().for_each(|v| *v *= inv);
        })?;
        cast(&Value::F64(y), xv.dtype()).map(|v| vec![v])
    })))
}

fn mean_variance_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axes = node
        .attr::<Vec<i64>>("axes")?
        .unwrap_or_else(|| vec![0, 2, 3]);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let xv = req(ins, 0)?;
        let x = f64_array(xv, "X")?;
        let axes = distinct_axes(&axes, x.ndim())?;
        let y = per_block(&x, &axes, |block| {
            let n = block.len() as f64;
            let m = block.iter().sum::<f64>() / n;
            // E[X²] - E[X]² as the function body has it (not the two-pass variance).
            let var = block.iter().map(|v| v * v).sum::<f64>() / n - m * m;
            let denom = var.max(0.0).sqrt() + 1e-9;
            block.iter_mut().for_each(|v| *v = (*v - m) / denom);
        })?;
        cast(&Value::F64(y), xv.dtype()).map(|v| vec![v])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "BatchNormalization", batch_norm);
    r.register("", "LayerNormalization", layer_norm);
    r.register("", "RMSNormalization", rms_norm);
    r.register("", "InstanceNormalization", instance_norm);
    r.register("", "GroupNormalization", group_norm);
    r.register("", "LRN", lrn);
    r.register("", "LpNormalization", lp_norm);
    r.register("", "MeanVarianceNormalization", mean_variance_norm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_int, attr_ints};
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

    #[test]
    fn group_norm_params_are_per_group_in_18_and_per_channel_in_21() {
        let node = Node::new("gn", "GroupNormalization", "", vec![], vec!["y".into()])
            .with_attr(attr_int("num_groups", 1));
        // N=1, C=2, one spatial element: one group over both channels, x̂ = [-1, 1].
        let x = Value::F32(array![[[1.0f32], [3.0]]].into_dyn());
        let eps = (1.0f64 + 1e-5).sqrt();
        let at = |opset: i64, s: Value, b: Value| -> Vec<f32> {
            let ctx = BuildCtx {
                opset,
                const_inputs: vec![],
            };
            let out = run(group_norm(&node, &ctx).unwrap(), &[&x, &s, &b]);
            out[0].as_f32().unwrap().iter().copied().collect()
        };
        let y18 = at(
            18,
            Value::F32(array![2.0f32].into_dyn()),
            Value::F32(array![1.0f32].into_dyn()),
        );
        let want18 = [(-2.0 / eps + 1.0) as f32, (2.0 / eps + 1.0) as f32];
        assert!(y18.iter().zip(&want18).all(|(g, w)| (g - w).abs() < 1e-6));
        let y21 = at(
            21,
            Value::F32(array![2.0f32, 3.0].into_dyn()),
            Value::F32(array![0.0f32, 1.0].into_dyn()),
        );
        let want21 = [(-2.0 / eps) as f32, (3.0 / eps + 1.0) as f32];
        assert!(y21.iter().zip(&want21).all(|(g, w)| (g - w).abs() < 1e-6));
        // A per-channel scale given to opset 18 (C != G) is refused, not misread.
        let ctx = BuildCtx {
            opset: 18,
            const_inputs: vec![],
        };
        let s = Value::F32(array![2.0f32, 3.0].into_dyn());
        let op = group_norm(&node, &ctx).unwrap();
        assert!(op.run(&[Some(&x), Some(&s), Some(&s)]).is_err());
    }

    #[test]
    fn lp_norm_p1_uses_absolute_values_and_zero_rows_stay_zero() {
        let node = Node::new("lp", "LpNormalization", "", vec![], vec!["y".into()])
            .with_attr(attr_int("p", 1));
        let ctx = BuildCtx {
            opset: 22,
            const_inputs: vec![],
        };
        let x = Value::F32(array![[-1.0f32, 3.0], [0.0, 0.0]].into_dyn());
        let out = run(lp_norm(&node, &ctx).unwrap(), &[&x]);
        assert_eq!(
            out[0].as_f32().unwrap(),
            &array![[-0.25f32, 0.75], [0.0, 0.0]].into_dyn()
        );
    }

    #[test]
    fn mvn_over_a_middle_axis() {
        let node = Node::new(
            "mvn",
            "MeanVarianceNormalization",
            "",
            vec![],
            vec!["y".into()],
        )
        .with_attr(attr_ints("axes", vec![1]));
        let ctx = BuildCtx {
            opset: 13,
            const_inputs: vec![],
        };
        // Rows [1, 3] and [2, 6] (built transposed, so not row-major): means 2 and 4, std 1
        // and 2.
        let x = Value::F64(array![[1.0f64, 2.0], [3.0, 6.0]].into_dyn());
        let x = Value::F64(x.as_f64().unwrap().t().to_owned().into_dyn());
        let out = run(mean_variance_norm(&node, &ctx).unwrap(), &[&x]);
        let y = out[0].as_f64().unwrap();
        let d1 = 1.0 + 1e-9;
        let d2 = 2.0 + 1e-9;
        let want = array![[-1.0 / d1, 1.0 / d1], [-2.0 / d2, 2.0 / d2]].into_dyn();
        assert!(
            y.iter()
                .zip(want.iter())
                .all(|(g, w)| (g - w).abs() < 1e-12)
        );
    }
}
