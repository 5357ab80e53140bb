//! Ops that rearrange or mask a tensor's elements by position. All work on every element type
//! the runtime stores.
//!
//! - `DepthToSpace` (1, 11: `mode`, 13) and `SpaceToDepth` (1, 13; `mode` from 28): 4-D NCHW
//!   with `blocksize` b. DepthToSpace `DCR` (default) reads channels as `[b, b, C/b²]`, `CRD`
//!   as `[C/b², b, b]`; SpaceToDepth is the inverse of the same mode (the reference's
//!   reshape-transpose-reshape).
//! - `CenterCropPad` (18): each listed axis (`axes`, default all) is center-cropped or
//!   zero-padded to the size in `shape`; an odd excess goes to the end (the start offset
//!   rounds down).
//! - `Trilu` (14): keeps the upper (`upper = 1`, `j - i >= k`) or lower (`j - i <= k`)
//!   triangle of the last two axes, zeros elsewhere; `k` is an optional int64 scalar input.
//! - `EyeLike` (9, 22): a 2-D tensor of the input's shape with ones on diagonal `k`; `dtype`
//!   (default: the input's type).
//! - `ReverseSequence` (10): reverses the first `sequence_lens[n]` entries along `time_axis`
//!   for each batch entry `n` along `batch_axis` (the axes must be 0 and 1, either way).

use ndarray::{ArrayD, Dimension, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::data::{reshape_value, transpose_value};
use super::util::{cast, dtype_of, err, ints, norm_axis, opt, req, to_shape};
use super::{BuildCtx, FnOp, Op, Registry};

/// Block-rearrangement mode of DepthToSpace / SpaceToDepth.
fn crd_mode(node: &Node) -> Result<bool> {
    match node.attr_or::<String>("mode", "DCR".into())?.as_str() {
        "DCR" => Ok(false),
        "CRD" => Ok(true),
        m => Err(node.error(format!("unknown mode '{m}' (DCR or CRD)"))),
    }
}

fn blocksize(node: &Node) -> Result<usize> {
    let b = node.attr_req::<i64>("blocksize")?;
    match usize::try_from(b) {
        Ok(b) if b > 0 => Ok(b),
        _ => Err(node.error(format!("blocksize {b} must be positive"))),
    }
}

/// The NCHW dims of a 4-D value.
fn nchw(x: &Value) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(err(format!(
            "expects a 4-D NCHW input, got {:?}",
            x.shape()
        ))),
    }
}

fn depth_to_space(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let (b, crd) = (blocksize(node)?, crd_mode(node)?);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let [n, c, h, w] = nchw(x)?;
        if c % (b * b) != 0 {
            return Err(err(format!(
                "channels {c} are not a multiple of blocksize² {}",
                b * b
            )));
        }
        let cb = c / (b * b);
        let (tmp, perm) = if crd {
            ([n, cb, b, b, h, w], [0, 1, 4, 2, 5, 3])
        } else {
            ([n, b, b, cb, h, w], [0, 3, 4, 1, 5, 2])
        };
        let t = transpose_value(&reshape_value(x, &tmp)?, &perm)?;
        Ok(vec![reshape_value(&t, &[n, cb, h * b, w * b])?])
    })))
}

fn space_to_depth(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let (b, crd) = (blocksize(node)?, crd_mode(node)?);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let [n, c, h, w] = nchw(x)?;
        if h % b != 0 || w % b != 0 {
            return Err(err(format!(
                "height {h} and width {w} must be multiples of blocksize {b}"
            )));
        }
        let perm = if crd {
            [0, 1, 3, 5, 2, 4]
        } else {
            [0, 3, 5, 1, 2, 4]
        };
        let t = reshape_value(x, &[n, c, h / b, b, w / b, b])?;
        let t = transpose_value(&t, &perm)?;
        Ok(vec![reshape_value(&t, &[n, c * b * b, h / b, w / b])?])
    })))
}

fn center_crop_pad_t<T: Copy + Default>(x: &ArrayD<T>, target: &[usize]) -> Result<ArrayD<T>> {
    let r = x.ndim();
    crate::runtime::budget::check_shape::<T>(target)?;
    // Per axis: (source start, destination start, length copied).
    let spans: Vec<(usize, usize, usize)> = (0..r)
        .map(|d| {
            let (have, want) = (x.shape()[d], target[d]);
            if have >= want {
                ((have - want) / 2, 0, want)
            } else {
                (0, (want - have) / 2, have)
            }
        })
        .collect();
    let mut src = vec![0usize; r];
    Ok(ArrayD::from_shape_fn(IxDyn(target), |p| {
        for d in 0..r {
            let (s, o, len) = spans[d];
            if p[d] < o || p[d] >= o + len {
                return T::default();
            }
            src[d] = p[d] - o + s;
        }
        x[IxDyn(&src)]
    }))
}

fn center_crop_pad(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let axes = node.attr::<Vec<i64>>("axes")?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let r = x.shape().len();
        let sizes = to_shape(&ints(req(ins, 1)?, "shape")?)?;
        let axes: Vec<usize> = match &axes {
            Some(a) => a.iter().map(|&i| norm_axis(i, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        if sizes.len() != axes.len() {
            return Err(err(format!(
                "shape has {} entries for {} axes",
                sizes.len(),
                axes.len()
            )));
        }
        let mut target = x.shape().to_vec();
        for (&a, &s) in axes.iter().zip(&sizes) {
            target[a] = s;
        }
        Ok(vec![map_same!(x, a => center_crop_pad_t(a, &target)?)])
    })))
}

/// Checks that `x` has the two trailing (matrix) axes an op works on.
fn matrix_like(x: &Value) -> Result<()> {
    if x.shape().len() < 2 {
        return Err(err(format!(
            "input must have rank at least 2, got {:?}",
            x.shape()
        )));
    }
    Ok(())
}

fn trilu_t<T: Copy + Default>(x: &ArrayD<T>, k: i64, upper: bool) -> ArrayD<T> {
    let r = x.ndim();
    let mut out = x.clone();
    for (p, v) in out.indexed_iter_mut() {
        let off = p[r - 1] as i64 - p[r - 2] as i64;
        if (upper && off < k) || (!upper && off > k) {
            *v = T::default();
        }
    }
    out
}

fn trilu(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let upper = node.attr_or::<i64>("upper", 1)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        matrix_like(x)?;
        let k = match opt(ins, 1) {
            Some(k) => match ints(k, "k")?.as_slice() {
                [k] => *k,
                other => return Err(err(format!("k must be a scalar, got {other:?}"))),
            },
            None => 0,
        };
        Ok(vec![map_same!(x, a => trilu_t(a, k, upper))])
    })))
}

fn eye_like(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let dtype = node.attr::<i64>("dtype")?.map(dtype_of).transpose()?;
    let k = node.attr_or::<i64>("k", 0)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let [rows, cols] = *x.shape() else {
            return Err(err(format!("input must be 2-D, got {:?}", x.shape())));
        };
        let eye = ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |p| {
            i64::from(p[1] as i64 - p[0] as i64 == k)
        });
        Ok(vec![cast(&Value::I64(eye), dtype.unwrap_or(x.dtype()))?])
    })))
}

fn reverse_sequence_t<T: Copy>(
    x: &ArrayD<T>,
    lens: &[usize],
    batch_axis: usize,
    time_axis: usize,
) -> ArrayD<T> {
    let mut src = vec![0usize; x.ndim()];
    ArrayD::from_shape_fn(x.raw_dim(), |p| {
        src.copy_from_slice(p.slice());
        let len = lens[p[batch_axis]];
        if p[time_axis] < len {
            src[time_axis] = len - 1 - p[time_axis];
        }
        x[IxDyn(&src)]
    })
}

fn reverse_sequence(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let batch_axis = node.attr_or::<i64>("batch_axis", 1)?;
    let time_axis = node.attr_or::<i64>("time_axis", 0)?;
    if !matches!((batch_axis, time_axis), (0, 1) | (1, 0)) {
        return Err(node.error(format!(
            "batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1"
        )));
    }
    let (ba, ta) = (batch_axis as usize, time_axis as usize);
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        matrix_like(x)?;
        let (batch, time) = (x.shape()[ba], x.shape()[ta]);
        let lens = ints(req(ins, 1)?, "sequence_lens")?;
        if lens.len() != batch {
            return Err(err(format!(
                "sequence_lens has {} entries for a batch of {batch}",
                lens.len()
            )));
        }
        let lens: Vec<usize> = lens
            .iter()
            .map(|&l| match usize::try_from(l) {
                Ok(u) if u <= time => Ok(u),
                _ => Err(err(format!(
                    "sequence_lens value {l} is out of range for a time axis of {time}"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(vec![
            map_same!(x, a => reverse_sequence_t(a, &lens, ba, ta)),
        ])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "DepthToSpace", depth_to_space);
    r.register("", "SpaceToDepth", space_to_depth);
    r.register("", "CenterCropPad", center_crop_pad);
    r.register("", "Trilu", trilu);
    r.register("", "EyeLike", eye_like);
    r.register("", "ReverseSequence", reverse_sequence);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn crops_and_pads_about_the_center() {
        let x = array![1, 2, 3, 4, 5].into_dyn();
        assert_eq!(
            center_crop_pad_t(&x, &[2]).unwrap(),
            array![2, 3].into_dyn()
        );
        assert_eq!(
            center_crop_pad_t(&x, &[8]).unwrap(),
            array![0, 1, 2, 3, 4, 5, 0, 0].into_dyn()
        );
    }

    #[test]
    fn triangles_and_reversed_sequences() {
        let x = array![[1, 2, 3], [4, 5, 6]].into_dyn();
        assert_eq!(
            trilu_t(&x, 1, true),
            array![[0, 2, 3], [0, 0, 6]].into_dyn()
        );
        assert_eq!(
            trilu_t(&x, -1, false),
            array![[0, 0, 0], [4, 0, 0]].into_dyn()
        );
        // time_axis 1, batch_axis 0: row n reverses its first lens[n] entries.
        let r = reverse_sequence_t(&x, &[2, 3], 0, 1);
        assert_eq!(r, array![[2, 1, 3], [6, 5, 4]].into_dyn());
    }
}
