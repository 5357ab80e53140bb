//! `MaxUnpool` (9, 11, 22): the partial inverse of `MaxPool`. `X` `[N, C, d1, ...]` holds the
//! pooled values and `I` (int64, `X`'s shape) the flat positions `MaxPool` returned for them;
//! every other element of the output is 0.
//!
//! The unpooled shape is `[N, C, o1, ...]` with `o = (d - 1)·stride - pad_begin - pad_end +
//! kernel` per spatial axis (`kernel_shape` required, `strides` default 1, `pads` default 0).
//! Indices address that tensor, row-major over all its axes (as `MaxPool`'s `Indices` are over
//! its whole input). With the optional third input `output_shape`, the result takes that
//! shape and the unpooled tensor fills its leading corner (the rest is 0), as the ONNX
//! reference and backend cases define it; an `output_shape` smaller than the unpooled shape,
//! or an index outside it, is an error. Any element type the runtime stores.

use ndarray::{ArrayD, IxDyn, SliceInfoElem};

use crate::error::Result;
use crate::ir::Node;
use crate::map_same;
use crate::runtime::Value;

use super::util::{elem_count, err, ints, opt, req, standard, to_shape};
use super::{BuildCtx, FnOp, Op, Registry};

struct Unpool {
    kernel: Vec<usize>,
    strides: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
}

impl Unpool {
    /// The unpooled shape for input shape `x`.
    fn shape(&self, x: &[usize]) -> Result<Vec<usize>> {
        let r = self.kernel.len();
        if x.len() != r + 2 {
            return Err(err(format!(
                "X has shape {x:?}, expected [N, C] and {r} spatial axes (kernel_shape {:?})",
                self.kernel
            )));
        }
        let mut out = x[..2].to_vec();
        for a in 0..r {
            let s = self.strides.as_ref().map_or(1, |s| s[a]);
            let (pb, pe) = self.pads.as_ref().map_or((0, 0), |p| (p[a], p[r + a]));
            let o = x[a + 2]
                .checked_sub(1)
                .and_then(|d| d.checked_mul(s))
                .and_then(|v| v.checked_add(self.kernel[a]))
                .and_then(|v| v.checked_sub(pb + pe))
                .ok_or_else(|| {
                    err(format!(
                        "no unpooled extent for spatial axis {a} of size {} (kernel {}, stride {s}, pads {pb}+{pe})",
                        x[a + 2], self.kernel[a]
                    ))
                })?;
            out.push(o);
        }
        Ok(out)
    }
}

fn unpool_t<T: Copy + Default>(
    x: &ArrayD<T>,
    idx: &[i64],
    shape: &[usize],
    output: &[usize],
) -> Result<ArrayD<T>> {
    let n = elem_count(shape)?;
    let mut y = vec![T::default(); n];
    for (&v, &i) in standard(x.view()).iter().zip(idx) {
        let at = usize::try_from(i)
            .ok()
            .filter(|&k| k < n)
            .ok_or_else(|| err(format!("index {i} is outside the unpooled shape {shape:?}")))?;
        y[at] = v;
    }
    let y = ArrayD::from_shape_vec(IxDyn(shape), y).map_err(|e| err(e.to_string()))?;
    if output == shape {
        return Ok(y);
    }
    elem_count(output)?;
    let mut out = ArrayD::from_elem(IxDyn(output), T::default());
    let corner: Vec<SliceInfoElem> = shape
        .iter()
        .map(|&d| SliceInfoElem::Slice {
            start: 0,
            end: Some(d as isize),
            step: 1,
        })
        .collect();
    out.slice_mut(corner.as_slice()).assign(&y);
    Ok(out)
}

fn build(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let list = |name: &str| -> Result<Option<Vec<usize>>> {
        node.attr::<Vec<i64>>(name)?
            .map(|v| to_shape(&v).map_err(|e| node.error(format!("{name}: {e}"))))
            .transpose()
    };
    let kernel = list("kernel_shape")?
        .ok_or_else(|| node.error("missing required attribute 'kernel_shape'"))?;
    let r = kernel.len();
    let strides = list("strides")?;
    let pads = list("pads")?;
    if kernel.contains(&0)
        || strides
            .as_ref()
            .is_some_and(|s| s.len() != r || s.contains(&0))
    {
        return Err(node.error(format!(
            "kernel_shape {kernel:?} and strides {strides:?} need {r} positive values"
        )));
    }
    if pads.as_ref().is_some_and(|p| p.len() != 2 * r) {
        return Err(node.error(format!("pads {pads:?} need {} values", 2 * r)));
    }
    let op = Unpool {
        kernel,
        strides,
        pads,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let iv = req(ins, 1)?;
        if iv.shape() != x.shape() {
            return Err(err(format!(
                "I has shape {:?}, expected X's shape {:?}",
                iv.shape(),
                x.shape()
            )));
        }
        let idx = match iv {
            Value::I64(a) => standard(a.view()).into_raw_vec_and_offset().0,
            _ => return Err(err("I must be an int64 tensor")),
        };
        let shape = op.shape(x.shape())?;
        let output = match opt(ins, 2) {
            None => shape.clone(),
            Some(v) => {
                let o = to_shape(&ints(v, "output_shape")?)?;
                if o.len() != shape.len() || o.iter().zip(&shape).any(|(a, b)| a < b) {
                    return Err(err(format!(
                        "output_shape {o:?} is smaller than the unpooled shape {shape:?}"
                    )));
                }
                o
            }
        };
        Ok(vec![map_same!(x, a => unpool_t(a, &idx, &shape, &output)?)])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "MaxUnpool", build);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn places_values_and_pads_to_output_shape() {
        let x = array![[[[5.0f32, 6.0], [7.0, 8.0]]]].into_dyn();
        let idx = [5i64, 7, 13, 15];
        let y = unpool_t(&x, &idx, &[1, 1, 4, 4], &[1, 1, 5, 5]).unwrap();
        assert_eq!(y[[0, 0, 1, 1]], 5.0);
        assert_eq!(y[[0, 0, 3, 3]], 8.0);
        assert_eq!(y.iter().filter(|&&v| v != 0.0).count(), 4);
        assert!(unpool_t(&x, &[16, 0, 0, 0], &[1, 1, 4, 4], &[1, 1, 4, 4]).is_err());
    }
}
