//! `DeformConv` (opsets 19, 22): a 2-D convolution whose kernel taps are displaced per output
//! position by learned offsets.
//!
//! `X [N, C, H, W]`, `W [M, C/group, kh, kw]`, `offset [N, offset_group·kh·kw·2, oh, ow]`
//! (per offset group and tap, the (h, w) displacement), optional `B [M]` and `mask [N,
//! offset_group·kh·kw, oh, ow]` (a factor per tap, default 1). Tap `(a, b)` of output `(i, j)`
//! reads input channel `c` at `(i·s_h - pad_top + a·d_h + Δh, j·s_w - pad_left + b·d_w + Δw)`
//! by bilinear interpolation, positions outside the image reading 0 (GridSample with
//! `align_corners = 1` and zero padding, as the reference defines it), with the offsets of
//! `c`'s offset group (`C / offset_group` consecutive channels each). The output size follows
//! Conv's geometry (`pads`, `strides`, `dilations`) and must equal the offset's spatial shape.
//! Computed as a deformable im2col plus one GEMM per (image, group). f32 (f16, f64 computed
//! in f32).

use ndarray::{ArrayD, ArrayView2, ArrayViewMut2, IxDyn, linalg::general_mat_mul};

use super::{BuildCtx, Ident, Op, Registry, WindowAttrs, float_input, input};
use crate::error::Result;
use crate::ir::Node;
use crate::runtime::ops::util::elem_count;
use crate::runtime::value::Value;

pub fn register(r: &mut Registry) {
    r.register("", "DeformConv", build);
}

struct DeformConvOp {
    id: Ident,
    window: WindowAttrs,
    group: usize,
    offset_group: usize,
}

fn build(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(DeformConvOp {
        id: Ident::of(node),
        window: WindowAttrs::parse(node)?,
        group: node.attr_positive("group", 1)?,
        offset_group: node.attr_positive("offset_group", 1)?,
    }))
}

/// Bilinear sample of `plane [h, w]` at `(y, x)`, 0 outside.
fn sample(plane: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    if !(y.is_finite() && x.is_finite()) {
        return 0.0;
    }
    let (y0, x0) = (y.floor(), x.floor());
    let (ty, tx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| -> f32 {
        if yy >= 0.0 && xx >= 0.0 && (yy as usize) < h && (xx as usize) < w {
            plane[yy as usize * w + xx as usize]
        } else {
            0.0
        }
    };
    (1.0 - ty) * ((1.0 - tx) * at(y0, x0) + tx * at(y0, x0 + 1.0))
        + ty * ((1.0 - tx) * at(y0 + 1.0, x0) + tx * at(y0 + 1.0, x0 + 1.0))
}

impl Op for DeformConvOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let get = |i: usize, what: &str| -> Result<ArrayD<f32>> {
            float_input(
                input(inputs, i).ok_or_else(|| id.error(format!("missing input {what}")))?,
                what,
                id,
            )
        };
        let xv = input(inputs, 0).ok_or_else(|| id.error("missing input X"))?;
        let (x, w, off) = (get(0, "X")?, get(1, "W")?, get(2, "offset")?);
        let bias = input(inputs, 3)
            .map(|b| float_input(b, "B", id))
            .transpose()?;
        let mask = input(inputs, 4)
            .map(|m| float_input(m, "mask", id))
            .transpose()?;
        let (xs, ws, os) = (x.shape(), w.shape(), off.shape());
        if xs.len() != 4 || ws.len() != 4 || os.len() != 4 {
            return Err(id.error(format!(
                "X {xs:?}, W {ws:?} and offset {os:?} must all be 4-D (2-D DeformConv)"
            )));
        }
        let (n, c, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let (g, og) = (self.group, self.offset_group);
        if c != cg * g || m % g != 0 || c % og != 0 {
            return Err(id.error(format!(
                "X has {c} channels, W shape {ws:?}: not compatible with group {g} and offset_group {og}"
            )));
        }
        if let Some(ks) = &self.window.kernel_shape
            && ks.as_slice() != &ws[2..]
        {
            return Err(id.error(format!("kernel_shape {ks:?} disagrees with W shape {ws:?}")));
        }
        let geo = self.window.geometry(&xs[2..], &ws[2..], id)?;
        let (oh, ow) = (geo.output[1], geo.output[2]);
        let k = kh * kw;
        if os != [n, og * k * 2, oh, ow] {
            return Err(id.error(format!(
                "offset has shape {os:?}, expected {:?}",
                [n, og * k * 2, oh, ow]
            )));
        }
        if let Some(mk) = &mask
            && mk.shape() != [n, og * k, oh, ow]
        {
            return Err(id.error(format!(
                "mask has shape {:?}, expected {:?}",
                mk.shape(),
                [n, og * k, oh, ow]
            )));
        }
        if let Some(b) = &bias
            && b.len() != m
        {
            return Err(id.error(format!("B has {} values for {m} output channels", b.len())));
        }
        let mut y = ArrayD::<f32>::zeros(IxDyn(&[n, m, oh, ow]));
        let p = oh * ow;
        let (rows, mg, per_og) = (cg * k, m / g, c / og);
        elem_count(&[rows, p]).map_err(|e| id.error(e.to_string()))?;
        if y.is_empty() || rows == 0 {
            return Ok(vec![super::like(y, xv)]);
        }
        let (xd, wd, od) = (
            x.as_slice().unwrap_or(&[]),
            w.as_slice().unwrap_or(&[]),
            off.as_slice().unwrap_or(&[]),
        );
        let md = mask.as_ref().and_then(|mk| mk.as_slice());
        let yd = y.as_slice_mut().unwrap_or(&mut []);
        let mut col = vec![0f32; rows * p];
        for img in 0..n {
            for grp in 0..g {
                for ci in 0..cg {
                    let ch = grp * cg + ci;
                    let ogi = ch / per_og;
                    let plane = &xd[(img * c + ch) * ih * iw..][..ih * iw];
                    for a in 0..kh {
                        for b in 0..kw {
                            let tap = a * kw + b;
                            let dst = &mut col[(ci * k + tap) * p..][..p];
                            let offs = &od[((img * og + ogi) * k + tap) * 2 * p..][..2 * p];
                            let mrow = md.map(|md| &md[((img * og + ogi) * k + tap) * p..][..p]);
                            for i in 0..oh {
                                for j in 0..ow {
                                    let q = i * ow + j;
                                    let y0 = geo.coord(1, i, a) as f32 + offs[q];
                                    let x0 = geo.coord(2, j, b) as f32 + offs[p + q];
                                    let v = sample(plane, ih, iw, y0, x0);
                                    dst[q] = mrow.map_or(v, |mr| v * mr[q]);
                                }
                            }
                        }
                    }
                }
                let wg = ArrayView2::from_shape((mg, rows), &wd[grp * mg * rows..][..mg * rows])
                    .expect("W block is mg*rows");
                let cv = ArrayView2::from_shape((rows, p), &col).expect("col is rows*p");
                let out = &mut yd[(img * m + grp * mg) * p..][..mg * p];
                if let Some(b) = &bias {
                    for (r, plane) in out.chunks_mut(p).enumerate() {
                        plane.fill(b[grp * mg + r]);
                    }
                }
                let beta = if bias.is_some() { 1.0 } else { 0.0 };
                let mut yv = ArrayViewMut2::from_shape((mg, p), out).expect("Y block is mg*p");
                general_mat_mul(1.0, &wg, &cv, beta, &mut yv);
            }
        }
        Ok(vec![super::like(y, xv)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::attr_ints;

    #[test]
    fn zero_offsets_give_a_plain_convolution() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 1, 3, 3]), |i| (i[2] * 3 + i[3]) as f32);
        let w = ArrayD::from_elem(IxDyn(&[1, 1, 2, 2]), 1.0f32);
        let off = ArrayD::<f32>::zeros(IxDyn(&[1, 8, 2, 2]));
        let node = Node::new(
            "d",
            "DeformConv",
            "",
            vec!["X".into(), "W".into(), "O".into()],
            vec!["Y".into()],
        )
        .with_attr(attr_ints("kernel_shape", vec![2, 2]));
        let op = build(
            &node,
            &BuildCtx {
                opset: 22,
                const_inputs: vec![],
            },
        )
        .unwrap();
        let (xv, wv, ov) = (Value::F32(x), Value::F32(w), Value::F32(off));
        let y = op.run(&[Some(&xv), Some(&wv), Some(&ov)]).unwrap();
        let got: Vec<f32> = y[0].as_f32().unwrap().iter().copied().collect();
        assert_eq!(got, vec![8.0, 12.0, 20.0, 24.0]);
        // Offsets of the wrong shape are an error.
        let bad = Value::F32(ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 2])));
        assert!(op.run(&[Some(&xv), Some(&wv), Some(&bad)]).is_err());
    }
}
