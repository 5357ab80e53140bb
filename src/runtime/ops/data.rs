//! Data movement and shape ops. All work on every element type the runtime stores unless noted.
//!
//! - `Constant` (1-21): `value` tensor, or `value_float(s)` / `value_int(s)`; strings and
//!   sparse values are unsupported. `ConstantOfShape` (9, 20): int64 shape input, one-element
//!   `value` tensor (default float 0).
//! - `Identity`; `Dropout` (7-22) in inference: output = input, optional mask all true.
//!   `training_mode = true` (opset 12+) with a nonzero ratio is rejected (it is random).
//! - `Cast` (`to`; `saturate` only matters for float8, which is not supported), `CastLike` (15).
//! - `Shape` (`start`/`end` since 15, clamped), `Size`.
//! - `Reshape` (5+: shape input; 0 copies the input dim unless `allowzero` (14); one -1 is
//!   inferred), `Flatten` (axis may be negative since 11), `Transpose` (default: reverse axes).
//! - `Squeeze`/`Unsqueeze`: `axes` attribute before opset 13, input from 13; Squeeze without axes
//!   drops every 1-dim.
//! - `Concat` (negative axis since 11). `Split`: `split` attribute before 13, input from 13,
//!   `num_outputs` from 18 (last chunk smaller); otherwise equal parts, one per output.
//! - `Slice`: attributes `starts`/`ends`/`axes` before 10, inputs (with `steps`) from 10;
//!   out-of-range bounds clamp as in the spec (negative steps included).
//! - `Gather` (negative indices wrap), `GatherElements`, `Expand` (bidirectional broadcast),
//!   `Tile`, `Where` (three-way broadcast), `Range` (f32, f64, f16, i64, i32).
//! - `Pad`: attributes `pads`/`value` before 11 (`paddings` in opset 1), inputs `pads`,
//!   `constant_value`, `axes` (18); modes constant, reflect, edge, wrap (19); negative pads
//!   crop.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice, Zip};

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;
use crate::runtime::budget;

use super::util::{
    Elem, broadcast_shape, bview, cast, dname, dtype_of, err, from_vec, ints, norm_axis, opt, req,
    standard, to_shape,
};
use super::{BuildCtx, FnOp, Op, Registry};

fn op(f: impl Fn(&[Option<&Value>]) -> Result<Vec<Value>> + Send + Sync + 'static) -> Box<dyn Op> {
    Box::new(FnOp(f))
}

fn constant(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let v = if let Some(t) = node.attr_tensor("value")? {
        Value::from_tensor(&t).map_err(|e| node.error(e.to_string()))?
    } else if let Some(f) = node.attr::<f32>("value_float")? {
        Value::scalar_f32(f)
    } else if let Some(fs) = node.attr::<Vec<f32>>("value_floats")? {
        Value::F32(ArrayD::from_shape_vec(IxDyn(&[fs.len()]), fs).map_err(|e| err(e.to_string()))?)
    } else if let Some(i) = node.attr::<i64>("value_int")? {
        Value::I64(ndarray::arr0(i).into_dyn())
    } else if let Some(is) = node.attr::<Vec<i64>>("value_ints")? {
        Value::I64(ArrayD::from_shape_vec(IxDyn(&[is.len()]), is).map_err(|e| err(e.to_string()))?)
    } else {
        return Err(Error::Unsupported(format!(
            "Constant node '{}' without a numeric value (string or sparse constants)",
            node.display_name()
        )));
    };
    Ok(op(move |_| Ok(vec![v.clone()])))
}

fn constant_of_shape(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let fill = match node.attr_tensor("value")? {
        Some(t) => Value::from_tensor(&t).map_err(|e| node.error(e.to_string()))?,
        None => Value::scalar_f32(0.0),
    };
    if fill.len() != 1 {
        return Err(node.error("'value' must hold exactly one element"));
    }
    Ok(op(move |ins| {
        let shape = to_shape(&ints(req(ins, 0)?, "shape")?)?;
        budget::check_like(&fill, &shape)?;
        Ok(vec![
            map_same!(&fill, a => ArrayD::from_elem(IxDyn(&shape), a.iter().next().copied().unwrap_or_default())),
        ])
    }))
}

fn identity(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| Ok(vec![req(ins, 0)?.clone()])))
}

fn dropout(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let want_mask = node.outputs().len() > 1 && !node.outputs()[1].is_empty();
    Ok(op(move |ins| {
        let training = opt(ins, 2)
            .map(super::util::scalar_f64)
            .transpose()?
            .unwrap_or(0.0)
            != 0.0;
        let ratio = opt(ins, 1)
            .map(super::util::scalar_f64)
            .transpose()?
            .unwrap_or(0.5);
        if training && ratio != 0.0 {
            // With ratio 0 training mode drops nothing; otherwise the mask is random.
            return Err(Error::Unsupported(
                "Dropout with training_mode = true and ratio > 0 (random masks)".into(),
            ));
        }
        let x = req(ins, 0)?;
        let mut out = vec![x.clone()];
        if want_mask {
            out.push(Value::Bool(ArrayD::from_elem(IxDyn(x.shape()), true)));
        }
        Ok(out)
    }))
}

fn cast_op(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let to = dtype_of(node.attr_req::<i64>("to")?)?;
    Ok(op(move |ins| Ok(vec![cast(req(ins, 0)?, to)?])))
}

fn cast_like(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        Ok(vec![cast(req(ins, 0)?, req(ins, 1)?.dtype())?])
    }))
}

fn shape_op(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let start = node.attr_or::<i64>("start", 0)?;
    let end = node.attr::<i64>("end")?;
    Ok(op(move |ins| {
        let s = req(ins, 0)?.shape();
        let r = s.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (b, e) = (clamp(start), clamp(end.unwrap_or(r)));
        let dims: Vec<i64> = if b < e {
            s[b..e].iter().map(|&d| d as i64).collect()
        } else {
            vec![]
        };
        Ok(vec![Value::I64(from_vec(&[dims.len()], dims)?)])
    }))
}

fn size_op(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        Ok(vec![Value::I64(
            ndarray::arr0(req(ins, 0)?.len() as i64).into_dyn(),
        )])
    }))
}

/// Output shape of Reshape.
pub fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            -1 => return Err(err(format!("shape {spec:?} has more than one -1"))),
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                err(format!(
                    "shape {spec:?}: 0 at position {i} but the input has rank {}",
                    input.len()
                ))
            })?),
            d if d >= 0 => out.push(d as usize),
            d => return Err(err(format!("invalid dimension {d} in shape {spec:?}"))),
        }
    }
    let total: usize = input.iter().product();
    if let Some(i) = infer {
        let known = out
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .try_fold(1usize, |n, (_, &d)| n.checked_mul(d))
            .ok_or_else(|| err(format!("shape {spec:?} overflows")))?;
        if known == 0 || !total.is_multiple_of(known) {
            return Err(err(format!("cannot reshape {input:?} to {spec:?}")));
        }
        out[i] = total / known;
    }
    if budget::check_alloc(&out, 0)? != total {
        return Err(err(format!(
            "cannot reshape {input:?} ({total} elements) to {spec:?}"
        )));
    }
    Ok(out)
}

/// `v` with a new shape of the same element count (row-major order).
pub fn reshape_value(v: &Value, shape: &[usize]) -> Result<Value> {
    Ok(map_same!(v, a => {
        let s = standard(a.view());
        s.into_shape_with_order(IxDyn(shape)).map_err(|e| err(e.to_string()))?
    }))
}

/// `v` reshaped like [`reshape_value`], reusing its buffer when it is row-major already.
pub fn reshape_owned(v: Value, shape: &[usize]) -> Result<Value> {
    Ok(map_same!(v, a => {
        let a = if a.is_standard_layout() { a } else { standard(a.view()) };
        a.into_shape_with_order(IxDyn(shape)).map_err(|e| err(e.to_string()))?
    }))
}

/// An op whose output is input 0 with another shape (Reshape, Flatten, Squeeze, Unsqueeze):
/// `F` computes the output shape from input 0's shape and all inputs. Given input 0 by value
/// it keeps the buffer (see [`Op::run_taking`]).
struct Relabel<F>(F);

impl<F> Op for Relabel<F>
where
    F: Fn(&[usize], &[Option<&Value>]) -> Result<Vec<usize>> + Send + Sync,
{
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = req(inputs, 0)?;
        let dims = (self.0)(x.shape(), inputs)?;
        Ok(vec![reshape_value(x, &dims)?])
    }

    fn takes_first_input(&self) -> bool {
        true
    }

    fn run_taking(&self, first: Value, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let dims = (self.0)(first.shape(), inputs)?;
        Ok(vec![reshape_owned(first, &dims)?])
    }
}

fn relabel(
    f: impl Fn(&[usize], &[Option<&Value>]) -> Result<Vec<usize>> + Send + Sync + 'static,
) -> Box<dyn Op> {
    Box::new(Relabel(f))
}

fn reshape(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let allowzero = node.attr_or::<i64>("allowzero", 0)? != 0;
    let attr_shape = if ctx.opset < 5 {
        Some(node.attr_req::<Vec<i64>>("shape")?)
    } else {
        None
    };
    Ok(relabel(move |x_shape, ins| {
        let spec = match &attr_shape {
            Some(s) => s.clone(),
            None => ints(req(ins, 1)?, "shape")?,
        };
        reshape_dims(x_shape, &spec, allowzero)
    }))
}

fn flatten(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", 1)?;
    Ok(relabel(move |x_shape, _| {
        let r = x_shape.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..=r).contains(&a) {
            return Err(err(format!("axis {axis} is out of range for rank {r}")));
        }
        let outer: usize = x_shape[..a as usize].iter().product();
        let inner: usize = x_shape[a as usize..].iter().product();
        Ok(vec![outer, inner])
    }))
}

/// Transposes with a permutation (row-major result).
pub fn transpose_value(v: &Value, perm: &[usize]) -> Result<Value> {
    let r = v.shape().len();
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(err(format!(
            "perm {perm:?} is not a permutation of {r} axes"
        )));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| v.shape()[p]).collect();
    Ok(map_same!(v, a => match a.as_slice() {
        Some(src) => ArrayD::from_shape_vec(IxDyn(&out_shape), permute_rows(src, a.shape(), perm))
            .map_err(|e| err(e.to_string()))?,
        None => standard(a.view().permuted_axes(IxDyn(perm))),
    }))
}

/// The row-major data of a row-major `src` of `shape` with its axes permuted by `perm`
/// (output axis i is input axis `perm[i]`). The innermost output axes that stay contiguous in
/// `src` are copied as slices; an odometer walks the others (ndarray's general iteration of a
/// permuted view costs several times more per element).
fn permute_rows<T: Copy>(src: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let r = shape.len();
    let mut strides = vec![1usize; r];
    for i in (1..r).rev() {
        strides[i - 1] = strides[i] * shape[i];
    }
    let dims: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    // Source stride of each output axis.
    let steps: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let mut out = Vec::with_capacity(src.len());
    if src.is_empty() {
        return out;
    }
    // Output axes k.. are one contiguous run of `run` source elements.
    let (mut run, mut k) = (1usize, r);
    while k > 0 && (steps[k - 1] == run || dims[k - 1] == 1) {
        run *= dims[k - 1];
        k -= 1;
    }
    if k == 0 {
        out.extend_from_slice(src);
        return out;
    }
    // Axis k - 1 is walked by the inner loop, axes 0..k - 1 by the odometer.
    let (count, step) = (dims[k - 1], steps[k - 1]);
    let mut idx = vec![0usize; k - 1];
    let mut base = 0usize;
    loop {
        if run == 1 {
            out.extend((0..count).map(|j| src[base + j * step]));
        } else {
            for j in 0..count {
                let at = base + j * step;
                out.extend_from_slice(&src[at..at + run]);
            }
        }
        let mut d = k - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            base += steps[d];
            if idx[d] < dims[d] {
                break;
            }
            base -= steps[d] * dims[d];
            idx[d] = 0;
        }
    }
}

fn transpose(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let perm = node.attr::<Vec<i64>>("perm")?;
    Ok(op(move |ins| {
        let x = req(ins, 0)?;
        let r = x.shape().len();
        let p: Vec<usize> = match &perm {
            Some(p) => p.iter().map(|&i| norm_axis(i, r)).collect::<Result<_>>()?,
            None => (0..r).rev().collect(),
        };
        Ok(vec![transpose_value(x, &p)?])
    }))
}

/// Axes from the attribute (older opsets) or from an input (newer ones).
fn axes_of(attr: &Option<Vec<i64>>, ins: &[Option<&Value>], i: usize) -> Result<Option<Vec<i64>>> {
    Ok(match attr {
        Some(a) => Some(a.clone()),
        None => opt(ins, i).map(|v| ints(v, "axes")).transpose()?,
    })
}

fn squeeze(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let attr = if ctx.opset < 13 {
        node.attr::<Vec<i64>>("axes")?
    } else {
        None
    };
    Ok(relabel(move |x_shape, ins| {
        let r = x_shape.len();
        let axes = axes_of(&attr, ins, 1)?;
        let drop: Vec<usize> = match axes {
            Some(a) if !a.is_empty() => {
                a.iter().map(|&i| norm_axis(i, r)).collect::<Result<_>>()?
            }
            _ => (0..r).filter(|&i| x_shape[i] == 1).collect(),
        };
        for &d in &drop {
            if x_shape[d] != 1 {
                return Err(err(format!(
                    "cannot squeeze axis {d} of size {}",
                    x_shape[d]
                )));
            }
        }
        Ok((0..r)
            .filter(|i| !drop.contains(i))
            .map(|i| x_shape[i])
            .collect())
    }))
}

fn unsqueeze(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let attr = if ctx.opset < 13 {
        Some(node.attr_req::<Vec<i64>>("axes")?)
    } else {
        None
    };
    Ok(relabel(move |x_shape, ins| {
        let axes = axes_of(&attr, ins, 1)?.ok_or_else(|| err("missing axes"))?;
        let out_rank = x_shape.len() + axes.len();
        let mut ax: Vec<usize> = axes
            .iter()
            .map(|&i| norm_axis(i, out_rank))
            .collect::<Result<_>>()?;
        ax.sort_unstable();
        if ax.windows(2).any(|w| w[0] == w[1]) {
            return Err(err(format!("repeated axis in {axes:?}")));
        }
        let mut it = x_shape.iter();
        Ok((0..out_rank)
            .map(|i| {
                if ax.contains(&i) {
                    1
                } else {
                    it.next().copied().unwrap_or(1)
                }
            })
            .collect())
    }))
}

fn concat_arrays<T: Clone>(arrays: &[&ArrayD<T>], axis: usize) -> Result<ArrayD<T>> {
    let views: Vec<ArrayViewD<T>> = arrays.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(axis), &views).map_err(|e| err(format!("cannot concatenate: {e}")))
}

/// Concatenates values of one type along `axis`.
pub fn concat_values(vals: &[&Value], axis: i64) -> Result<Value> {
    let first = vals
        .first()
        .ok_or_else(|| err("Concat needs at least one input"))?;
    let ax = norm_axis(axis, first.shape().len())?;
    // One input may be listed many times, so the output can dwarf the inputs.
    let total = vals
        .iter()
        .try_fold(0usize, |n, v| n.checked_add(v.len()))
        .ok_or_else(|| err("Concat output has more elements than memory can address"))?;
    budget::check_like(first, &[total])?;
    macro_rules! cat {
        ($var:ident) => {{
            let arrs = vals
                .iter()
                .map(|v| match v {
                    Value::$var(a) => Ok(a),
                    o => Err(err(format!("Concat of {} and {}", dname(first), dname(o)))),
                })
                .collect::<Result<Vec<_>>>()?;
            Value::$var(concat_arrays(&arrs, ax)?)
        }};
    }
    Ok(match first {
        Value::F32(_) => cat!(F32),
        Value::F16(_) => cat!(F16),
        Value::F64(_) => cat!(F64),
        Value::I64(_) => cat!(I64),
        Value::I32(_) => cat!(I32),
        Value::I8(_) => cat!(I8),
        Value::U8(_) => cat!(U8),
        Value::Bool(_) => cat!(Bool),
        Value::I16(_) => cat!(I16),
        Value::U16(_) => cat!(U16),
        Value::U32(_) => cat!(U32),
        Value::U64(_) => cat!(U64),
        Value::BF16(_) => cat!(BF16),
    })
}

fn concat(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_req::<i64>("axis")?;
    Ok(op(move |ins| {
        let vals: Vec<&Value> = ins.iter().flatten().copied().collect();
        Ok(vec![concat_values(&vals, axis)?])
    }))
}

/// Slices `len` elements from `start` along `axis` (row-major copy).
fn take_range(v: &Value, axis: usize, start: usize, len: usize) -> Value {
    map_same!(v, a => standard(a.slice_axis(Axis(axis), Slice::from(start..start + len))))
}

fn split(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", 0)?;
    let attr_split = if ctx.opset < 13 {
        node.attr::<Vec<i64>>("split")?
    } else {
        None
    };
    let num_outputs = node.attr::<i64>("num_outputs")?;
    let n_out = node.outputs().len();
    Ok(op(move |ins| {
        let x = req(ins, 0)?;
        let ax = norm_axis(axis, x.shape().len())?;
        let dim = x.shape()[ax];
        let sizes: Vec<usize> = match (&attr_split, opt(ins, 1)) {
            (Some(s), _) if !s.is_empty() => to_shape(s)?,
            (_, Some(v)) => to_shape(&ints(v, "split")?)?,
            _ => {
                let n = num_outputs.map(|n| n as usize).unwrap_or(n_out).max(1);
                let chunk = if num_outputs.is_some() {
                    dim.div_ceil(n)
                } else {
                    dim / n
                };
                if num_outputs.is_none() && dim % n != 0 {
                    return Err(err(format!("cannot split dim {dim} into {n} equal parts")));
                }
                (0..n)
                    .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                    .collect()
            }
        };
        if sizes.iter().sum::<usize>() != dim {
            return Err(err(format!(
                "split sizes {sizes:?} do not add up to dim {dim}"
            )));
        }
        let mut start = 0;
        Ok(sizes
            .iter()
            .map(|&len| {
                let v = take_range(x, ax, start, len);
                start += len;
                v
            })
            .collect())
    }))
}

/// Python-style slice bounds for one axis, clamped as in the ONNX spec; returns the ndarray
/// slice that selects the same elements in the same order.
pub fn slice_bounds(dim: usize, start: i64, end: i64, step: i64) -> Result<Slice> {
    if step == 0 {
        return Err(err("slice step cannot be 0"));
    }
    let d = dim as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (fix(start), fix(end));
    if step > 0 {
        let s = s.clamp(0, d);
        let e = e.clamp(0, d).max(s);
        Ok(Slice::new(s as isize, Some(e as isize), step as isize))
    } else {
        let s = s.clamp(-1, d - 1);
        let e = e.clamp(-1, d - 1);
        if s <= e {
            return Ok(Slice::new(0, Some(0), 1));
        }
        // Python walks s, s+step, ... > e; ndarray walks [e+1, s+1) from its end backwards.
        Ok(Slice::new(
            (e + 1) as isize,
            Some((s + 1) as isize),
            step as isize,
        ))
    }
}

fn slice(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let attrs = if ctx.opset < 10 {
        Some((
            node.attr_req::<Vec<i64>>("starts")?,
            node.attr_req::<Vec<i64>>("ends")?,
            node.attr::<Vec<i64>>("axes")?,
        ))
    } else {
        None
    };
    Ok(op(move |ins| {
        let x = req(ins, 0)?;
        let r = x.shape().len();
        let (starts, ends, axes, steps) = match &attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                ints(req(ins, 1)?, "starts")?,
                ints(req(ins, 2)?, "ends")?,
                opt(ins, 3).map(|v| ints(v, "axes")).transpose()?,
                opt(ins, 4).map(|v| ints(v, "steps")).transpose()?,
            ),
        };
        if starts.len() != ends.len() {
            return Err(err("starts and ends differ in length"));
        }
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&i| norm_axis(i, r)).collect::<Result<_>>()?,
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(err("starts, ends, axes and steps differ in length"));
        }
        let mut slices: Vec<Slice> = vec![Slice::from(..); r];
        for i in 0..axes.len() {
            slices[axes[i]] = slice_bounds(x.shape()[axes[i]], starts[i], ends[i], steps[i])?;
        }
        Ok(vec![
            map_same!(x, a => standard(a.slice_each_axis(|d| slices[d.axis.index()]))),
        ])
    }))
}

fn gather_t<T: Copy + Default>(
    data: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    axis: usize,
) -> Result<ArrayD<T>> {
    let shape = data.shape();
    let dim = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    // Borrowed when already row-major (an embedding table must not be copied per run).
    let src = data.as_standard_layout();
    let src = src
        .as_slice()
        .ok_or_else(|| err("internal: non-contiguous data"))?;
    let mut fixed = Vec::with_capacity(idx.len());
    for &i in idx {
        let j = if i < 0 { i + dim as i64 } else { i };
        if j < 0 || j >= dim as i64 {
            return Err(err(format!(
                "index {i} is out of range for axis {axis} of size {dim}"
            )));
        }
        fixed.push(j as usize);
    }
    let mut oshape = shape[..axis].to_vec();
    oshape.extend_from_slice(idx_shape);
    oshape.extend_from_slice(&shape[axis + 1..]);
    let mut out = Vec::with_capacity(budget::check_shape::<T>(&oshape)?);
    for o in 0..outer {
        for &j in &fixed {
            let base = (o * dim + j) * inner;
            out.extend_from_slice(&src[base..base + inner]);
        }
    }
    from_vec(&oshape, out)
}

fn gather(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", 0)?;
    Ok(op(move |ins| {
        let (x, i) = (req(ins, 0)?, req(ins, 1)?);
        let ax = norm_axis(axis, x.shape().len())?;
        let idx = ints(i, "indices")?;
        Ok(vec![map_same!(x, a => gather_t(a, &idx, i.shape(), ax)?)])
    }))
}

fn gather_elements_t<T: Copy>(
    data: &ArrayD<T>,
    idx: &[i64],
    idx_shape: &[usize],
    axis: usize,
) -> Result<ArrayD<T>> {
    let dim = data.shape()[axis] as i64;
    if idx_shape.len() != data.ndim() {
        return Err(err("indices must have the rank of data"));
    }
    let mut out = Vec::with_capacity(idx.len());
    let mut pos = vec![0usize; idx_shape.len()];
    for &i in idx {
        let j = if i < 0 { i + dim } else { i };
        if j < 0 || j >= dim {
            return Err(err(format!(
                "index {i} is out of range for axis {axis} of size {dim}"
            )));
        }
        let mut p = pos.clone();
        p[axis] = j as usize;
        out.push(
            *data
                .get(IxDyn(&p))
                .ok_or_else(|| err("indices shape exceeds data shape"))?,
        );
        // Advance the row-major position over idx_shape.
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < idx_shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    from_vec(idx_shape, out)
}

fn gather_elements(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axis = node.attr_or::<i64>("axis", 0)?;
    Ok(op(move |ins| {
        let (x, i) = (req(ins, 0)?, req(ins, 1)?);
        let ax = norm_axis(axis, x.shape().len())?;
        let idx = ints(i, "indices")?;
        Ok(vec![
            map_same!(x, a => gather_elements_t(a, &idx, i.shape(), ax)?),
        ])
    }))
}

fn expand(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        let x = req(ins, 0)?;
        let target = to_shape(&ints(req(ins, 1)?, "shape")?)?;
        let shape = broadcast_shape(x.shape(), &target)?;
        budget::check_like(x, &shape)?;
        Ok(vec![map_same!(x, a => standard(bview(a, &shape)?))])
    }))
}

fn tile(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        let x = req(ins, 0)?;
        let reps = to_shape(&ints(req(ins, 1)?, "repeats")?)?;
        if reps.len() != x.shape().len() {
            return Err(err(format!(
                "repeats {reps:?} must have one entry per axis of {:?}",
                x.shape()
            )));
        }
        let tiled = x
            .shape()
            .iter()
            .zip(&reps)
            .map(|(&d, &r)| d.checked_mul(r))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| err(format!("tiling {:?} by {reps:?} overflows", x.shape())))?;
        budget::check_like(x, &tiled)?;
        let mut v = x.clone();
        for (ax, &r) in reps.iter().enumerate() {
            if r != 1 {
                let copies: Vec<&Value> = std::iter::repeat_n(&v, r).collect();
                v = if r == 0 {
                    take_range(&v, ax, 0, 0)
                } else {
                    concat_values(&copies, ax as i64)?
                };
            }
        }
        Ok(vec![v])
    }))
}

fn where_t<T: Copy>(c: &ArrayD<bool>, x: &ArrayD<T>, y: &ArrayD<T>) -> Result<ArrayD<T>> {
    let shape = broadcast_shape(&broadcast_shape(c.shape(), x.shape())?, y.shape())?;
    budget::check_shape::<T>(&shape)?;
    // The common forms (a Softmax NaN guard `Where(IsNaN(p), 0, p)`, a mask against a
    // scalar): each operand row-major of the full shape or a single value, selected in one
    // flat loop instead of a broadcast iteration over IxDyn indices.
    let full = |dims: &[usize], len: usize| dims == shape.as_slice() || len == 1;
    if let (Some(cs), Some(xs), Some(ys)) = (c.as_slice(), x.as_slice(), y.as_slice())
        && full(c.shape(), cs.len())
        && full(x.shape(), xs.len())
        && full(y.shape(), ys.len())
    {
        let at = |s: &[T], i: usize| if s.len() == 1 { s[0] } else { s[i] };
        let n: usize = shape.iter().product();
        let v: Vec<T> = (0..n)
            .map(|i| {
                let ci = if cs.len() == 1 { cs[0] } else { cs[i] };
                if ci { at(xs, i) } else { at(ys, i) }
            })
            .collect();
        return from_vec(&shape, v);
    }
    let (cv, xv, yv) = (bview(c, &shape)?, bview(x, &shape)?, bview(y, &shape)?);
    Ok(Zip::from(&cv)
        .and(&xv)
        .and(&yv)
        .map_collect(|&c, &a, &b| if c { a } else { b }))
}

fn where_op(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        let c = req(ins, 0)?
            .as_bool()
            .ok_or_else(|| err("condition must be bool"))?;
        let (x, y) = (req(ins, 1)?, req(ins, 2)?);
        macro_rules! w {
            ($($var:ident),*) => {
                match (x, y) {
                    $((Value::$var(a), Value::$var(b)) => Value::$var(where_t(c, a, b)?),)*
                    _ => return Err(err(format!("Where of {} and {}", dname(x), dname(y)))),
                }
            };
        }
        Ok(vec![w!(
            F32, F16, F64, I64, I32, I8, U8, Bool, I16, U16, U32, U64, BF16
        )])
    }))
}

fn range_t<T: Elem>(s: T, l: T, d: T) -> Result<ArrayD<T>> {
    let (sf, lf, df) = (s.to_f64(), l.to_f64(), d.to_f64());
    if df == 0.0 {
        return Err(err("Range delta cannot be 0"));
    }
    let n = ((lf - sf) / df).ceil().max(0.0);
    if !n.is_finite() || n >= usize::MAX as f64 {
        return Err(err(format!(
            "Range from {sf} to {lf} by {df} has more elements than memory can address"
        )));
    }
    let n = n as usize;
    budget::check_shape::<T>(&[n])?;
    let v: Vec<T> = if super::util::is_float(T::DT) {
        (0..n).map(|i| T::from_f64(sf + i as f64 * df)).collect()
    } else {
        let (si, di) = (s.to_i64(), d.to_i64());
        (0..n).map(|i| T::from_i64(si + i as i64 * di)).collect()
    };
    from_vec(&[n], v)
}

fn range(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(op(|ins| {
        let (s, l, d) = (req(ins, 0)?, req(ins, 1)?, req(ins, 2)?);
        fn first<T: Copy + Default>(a: &ArrayD<T>) -> T {
            a.iter().next().copied().unwrap_or_default()
        }
        Ok(vec![match (s, l, d) {
            (Value::F32(a), Value::F32(b), Value::F32(c)) => {
                Value::F32(range_t(first(a), first(b), first(c))?)
            }
            (Value::F64(a), Value::F64(b), Value::F64(c)) => {
                Value::F64(range_t(first(a), first(b), first(c))?)
            }
            (Value::I64(a), Value::I64(b), Value::I64(c)) => {
                Value::I64(range_t(first(a), first(b), first(c))?)
            }
            (Value::I32(a), Value::I32(b), Value::I32(c)) => {
                Value::I32(range_t(first(a), first(b), first(c))?)
            }
            (Value::F16(a), Value::F16(b), Value::F16(c)) => {
                Value::F16(range_t(first(a), first(b), first(c))?)
            }
            (Value::BF16(a), Value::BF16(b), Value::BF16(c)) => {
                Value::BF16(range_t(first(a), first(b), first(c))?)
            }
            (Value::I16(a), Value::I16(b), Value::I16(c)) => {
                Value::I16(range_t(first(a), first(b), first(c))?)
            }
            _ => {
                return Err(err(format!(
                    "Range of {} (start, limit and delta must share f32, f64, f16, bf16, i64, i32 or i16)",
                    dname(s)
                )));
            }
        }])
    }))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Source index along one axis for output position `i` (None: the constant).
fn pad_src(i: i64, before: i64, dim: i64, mode: PadMode) -> Option<usize> {
    let j = i - before;
    if (0..dim).contains(&j) {
        return Some(j as usize);
    }
    if dim == 0 {
        return None;
    }
    match mode {
        PadMode::Constant => None,
        PadMode::Edge => Some(j.clamp(0, dim - 1) as usize),
        PadMode::Wrap => Some(j.rem_euclid(dim) as usize),
        PadMode::Reflect => {
            if dim == 1 {
                return Some(0);
            }
            let period = 2 * (dim - 1);
            let m = j.rem_euclid(period);
            Some(if m >= dim { period - m } else { m } as usize)
        }
    }
}

fn pad_t<T: Copy>(a: &ArrayD<T>, pads: &[i64], value: T, mode: PadMode) -> Result<ArrayD<T>> {
    let r = a.ndim();
    let mut maps: Vec<Vec<Option<usize>>> = Vec::with_capacity(r);
    let mut oshape = Vec::with_capacity(r);
    for ax in 0..r {
        let d = a.shape()[ax] as i64;
        let (b, e) = (pads[ax], pads[ax + r]);
        let o = d
            .checked_add(b)
            .and_then(|o| o.checked_add(e))
            .ok_or_else(|| err(format!("pads {pads:?} overflow axis {ax}")))?;
        if o < 0 {
            return Err(err(format!("pads {pads:?} crop axis {ax} below zero")));
        }
        // The output and the per-axis source maps are allocated from the pads: check both.
        budget::check_shape::<Option<usize>>(&[o as usize])?;
        if d == 0 && o > 0 && mode != PadMode::Constant {
            return Err(err(format!("cannot pad an empty axis in {mode:?} mode")));
        }
        maps.push((0..o).map(|i| pad_src(i, b, d, mode)).collect());
        oshape.push(o as usize);
    }
    budget::check_shape::<T>(&oshape)?;
    let mut src = vec![0usize; r];
    Ok(ArrayD::from_shape_fn(IxDyn(&oshape), |idx| {
        for ax in 0..r {
            match maps[ax][idx[ax]] {
                Some(s) => src[ax] = s,
                None => return value,
            }
        }
        a[IxDyn(&src)]
    }))
}

fn pad(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let mode = match node.attr_or::<String>("mode", "constant".into())?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => return Err(node.error(format!("unknown pad mode '{m}'"))),
    };
    let attrs = if ctx.opset < 11 {
        let pads = match node.attr::<Vec<i64>>("pads")? {
            Some(p) => p,
            None => node.attr_req::<Vec<i64>>("paddings")?,
        };
        Some((pads, node.attr_or::<f32>("value", 0.0)?))
    } else {
        None
    };
    Ok(op(move |ins| {
        let x = req(ins, 0)?;
        let r = x.shape().len();
        let (mut pads, cval) = match &attrs {
            Some((p, v)) => (p.clone(), Some(Value::scalar_f32(*v))),
            None => (ints(req(ins, 1)?, "pads")?, opt(ins, 2).cloned()),
        };
        if let Some(axes) = opt(ins, 3) {
            let axes = ints(axes, "axes")?;
            if pads.len() != 2 * axes.len() {
                return Err(err(format!(
                    "pads {pads:?} must have two entries per axis in {axes:?}"
                )));
            }
            let mut full = vec![0; 2 * r];
            for (k, &a) in axes.iter().enumerate() {
                let a = norm_axis(a, r)?;
                full[a] = pads[k];
                full[a + r] = pads[k + axes.len()];
            }
            pads = full;
        }
        if pads.len() != 2 * r {
            return Err(err(format!(
                "pads {pads:?} must have 2 x rank ({r}) entries"
            )));
        }
        let cval = match cval {
            Some(v) if !v.is_empty() => cast(&v, x.dtype())?,
            _ => cast(&Value::scalar_f32(0.0), x.dtype())?,
        };
        let fill = super::util::scalar_f64(&cval)?;
        Ok(vec![
            map_same!(x, a => pad_t(a, &pads, Elem::from_f64(fill), mode)?),
        ])
    }))
}

pub fn register(r: &mut Registry) {
    r.register("", "Constant", constant);
    r.register("", "ConstantOfShape", constant_of_shape);
    r.register("", "Identity", identity);
    r.register("", "Dropout", dropout);
    r.register("", "Cast", cast_op);
    r.register("", "CastLike", cast_like);
    r.register("", "Shape", shape_op);
    r.register("", "Size", size_op);
    r.register("", "Reshape", reshape);
    r.register("", "Flatten", flatten);
    r.register("", "Transpose", transpose);
    r.register("", "Squeeze", squeeze);
    r.register("", "Unsqueeze", unsqueeze);
    r.register("", "Concat", concat);
    r.register("", "Split", split);
    r.register("", "Slice", slice);
    r.register("", "Gather", gather);
    r.register("", "GatherElements", gather_elements);
    r.register("", "Expand", expand);
    r.register("", "Tile", tile);
    r.register("", "Pad", pad);
    r.register("", "Range", range);
    r.register("", "Where", where_op);
}

#[cfg(test)]
mod tests {
    #[test]
    fn where_flat_and_broadcast_forms_agree_with_the_definition() {
        use ndarray::{ArrayD, IxDyn};
        let shape = [2usize, 3, 4];
        let c = ArrayD::from_shape_fn(IxDyn(&shape), |i| (i[0] + 2 * i[1] + i[2]) % 3 == 0);
        let x = ArrayD::from_shape_fn(IxDyn(&shape), |i| (i[0] * 12 + i[1] * 4 + i[2]) as i32);
        let y = ArrayD::from_shape_fn(IxDyn(&shape), |i| -((i[0] * 12 + i[1] * 4 + i[2]) as i32));
        let scalar = |v| ArrayD::from_shape_vec(IxDyn(&[]), vec![v]).unwrap();
        let one = |v| ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![v]).unwrap();
        // Row-broadcast y (not the flat form) and the flat forms: full, scalar, [1, 1].
        let y_row = ArrayD::from_shape_fn(IxDyn(&[4]), |i| 100 + i[0] as i32);
        let cases: Vec<(ArrayD<bool>, ArrayD<i32>, ArrayD<i32>)> = vec![
            (c.clone(), x.clone(), y.clone()),
            (c.clone(), scalar(7), x.clone()),
            (c.clone(), x.clone(), one(-1)),
            (
                ArrayD::from_shape_vec(IxDyn(&[]), vec![true]).unwrap(),
                x.clone(),
                y.clone(),
            ),
            (c.clone(), x.clone(), y_row.clone()),
        ];
        for (k, (cc, xx, yy)) in cases.iter().enumerate() {
            let got = super::where_t(cc, xx, yy).unwrap();
            let out_shape = got.shape().to_vec();
            let want = ArrayD::from_shape_fn(IxDyn(&out_shape), |i| {
                let pick = |a: &ArrayD<i32>| {
                    *a.broadcast(IxDyn(&out_shape))
                        .unwrap()
                        .get(i.clone())
                        .unwrap()
                };
                let cv = *cc
                    .broadcast(IxDyn(&out_shape))
                    .unwrap()
                    .get(i.clone())
                    .unwrap();
                if cv { pick(xx) } else { pick(yy) }
            });
            assert_eq!(got, want, "case {k}");
        }
    }

    #[test]
    fn permute_rows_matches_ndarray_on_every_permutation() {
        use ndarray::{ArrayD, IxDyn};
        for shape in [
            vec![2usize, 3, 5, 7],
            vec![1, 4, 1, 3],
            vec![3, 1, 2, 1],
            vec![0, 3, 2, 2],
            vec![5, 2, 3, 1],
        ] {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(&shape), (0..n as i32).collect()).unwrap();
            // All 24 permutations of 4 axes.
            for code in 0..24 {
                let mut rest = vec![0usize, 1, 2, 3];
                let mut perm = Vec::new();
                let mut c = code;
                for radix in (1..=4).rev() {
                    perm.push(rest.remove(c % radix));
                    c /= radix;
                }
                let want: Vec<i32> = a
                    .view()
                    .permuted_axes(IxDyn(&perm))
                    .iter()
                    .copied()
                    .collect();
                let got = super::permute_rows(a.as_slice().unwrap(), &shape, &perm);
                assert_eq!(got, want, "shape {shape:?} perm {perm:?}");
            }
        }
        // Lower ranks, including 0-D and 1-D.
        assert_eq!(super::permute_rows(&[7], &[], &[]), vec![7]);
        assert_eq!(super::permute_rows(&[1, 2, 3], &[3], &[0]), vec![1, 2, 3]);
        assert_eq!(
            super::permute_rows(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0]),
            vec![1, 4, 2, 5, 3, 6]
        );
    }

    use super::*;
    use ndarray::array;

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(reshape_dims(&[0, 3], &[0, 3], true).unwrap(), vec![0, 3]);
        assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
        assert!(reshape_dims(&[2, 3], &[4, -1], false).is_err());
    }

    #[test]
    fn slice_bounds_follow_python() {
        let a = array![0, 1, 2, 3, 4, 5].into_dyn();
        let pick = |s, e, st| {
            let sl = slice_bounds(6, s, e, st).unwrap();
            a.slice_axis(Axis(0), sl)
                .iter()
                .copied()
                .collect::<Vec<i32>>()
        };
        assert_eq!(pick(1, 4, 1), vec![1, 2, 3]);
        assert_eq!(pick(-2, i64::MAX, 1), vec![4, 5]);
        assert_eq!(pick(5, 1, -1), vec![5, 4, 3, 2]);
        assert_eq!(pick(-1, i64::MIN, -2), vec![5, 3, 1]);
        assert_eq!(pick(4, 2, 1), Vec::<i32>::new());
        assert_eq!(pick(0, 6, 4), vec![0, 4]);
    }

    #[test]
    fn gather_rows_with_negative_index() {
        let d = array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]].into_dyn();
        let g = gather_t(&d, &[2, -3], &[2], 0).unwrap();
        assert_eq!(g, array![[5.0f32, 6.0], [1.0, 2.0]].into_dyn());
        let g = gather_t(&d, &[1], &[], 1).unwrap();
        assert_eq!(g, array![2.0f32, 4.0, 6.0].into_dyn());
        assert!(gather_t(&d, &[3], &[1], 0).is_err());
    }

    #[test]
    fn pad_modes() {
        let a = array![1, 2, 3].into_dyn();
        let p = |m| {
            pad_t(&a, &[2, 2], 0, m)
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<i32>>()
        };
        assert_eq!(p(PadMode::Constant), vec![0, 0, 1, 2, 3, 0, 0]);
        assert_eq!(p(PadMode::Reflect), vec![3, 2, 1, 2, 3, 2, 1]);
        assert_eq!(p(PadMode::Edge), vec![1, 1, 1, 2, 3, 3, 3]);
        assert_eq!(p(PadMode::Wrap), vec![2, 3, 1, 2, 3, 1, 2]);
        let crop = pad_t(&a, &[-1, 0], 0, PadMode::Constant).unwrap();
        assert_eq!(crop, array![2, 3].into_dyn());
    }

    #[test]
    fn where_broadcasts() {
        let c = array![true, false].into_dyn();
        let x = array![[1, 2], [3, 4]].into_dyn();
        let y = array![9].into_dyn();
        assert_eq!(
            where_t(&c, &x, &y).unwrap(),
            array![[1, 9], [3, 9]].into_dyn()
        );
    }
}
