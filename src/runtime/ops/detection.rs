//! Object-detection ops: `NonMaxSuppression` (opsets 10, 11) and `RoiAlign` (opsets 10, 16,
//! 22).
//!
//! NonMaxSuppression: `boxes [B, N, 4]`, `scores [B, C, N]`, optional scalars
//! `max_output_boxes_per_class` (default 0: nothing selected), `iou_threshold` (default 0),
//! `score_threshold` (when given, only boxes scoring strictly above it are candidates). Per
//! batch and class, candidates are taken by descending score (ties: lower box index first);
//! a candidate is kept when its IoU with every box already kept is at most `iou_threshold`,
//! until `max_output_boxes_per_class` are kept. Boxes are `[y1, x1, y2, x2]` corners in either
//! order (`center_point_box = 0`) or `[x_center, y_center, width, height]` (1); boxes with no
//! area never suppress. Output `[K, 3]` int64 rows `(batch, class, box)`.
//!
//! RoiAlign: `X [N, C, H, W]`, `rois [R, 4]` as `(x1, y1, x2, y2)` in input coordinates scaled
//! by `spatial_scale`, `batch_indices [R]`; output `[R, C, output_height, output_width]`. Each
//! bin averages (`mode = avg`) or takes the maximum (`max`) of `sampling_ratio²` bilinear
//! samples on a regular grid (`ceil(roi_size / output_size)` per axis when `sampling_ratio =
//! 0`). `coordinate_transformation_mode = half_pixel` (default from opset 16) shifts the roi by
//! -0.5 pixel; `output_half_pixel` (opset 10's behaviour) does not, and forces rois to at least
//! 1x1. Samples beyond one pixel outside the image count 0; others are clamped into it. `max`
//! takes the maximum of the four weighted corner values, as onnxruntime and the reference do.
//! f16/f32/f64, computed in f64.

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{cast, elem_count, err, float_values, from_vec, ints, opt, req};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "NonMaxSuppression", build_nms);
    r.register("", "RoiAlign", build_roi_align);
}

// ---------------------------------------------------------------------------------------------
// NonMaxSuppression

fn build_nms(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let center = match node.attr_or::<i64>("center_point_box", 0)? {
        0 => false,
        1 => true,
        c => return Err(node.error(format!("center_point_box {c} must be 0 or 1"))),
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        nms(ins, center)
    })))
}

/// A box as `(x_min, y_min, x_max, y_max)`.
type Corners = (f64, f64, f64, f64);

fn corners(b: &[f64], center: bool) -> Corners {
    if center {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        (b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh)
    } else {
        (
            b[1].min(b[3]),
            b[0].min(b[2]),
            b[1].max(b[3]),
            b[0].max(b[2]),
        )
    }
}

/// Whether `a` and `b` overlap by more than `threshold` (intersection over union).
fn suppresses(a: Corners, b: Corners, threshold: f64) -> bool {
    let iw = a.2.min(b.2) - a.0.max(b.0);
    let ih = a.3.min(b.3) - a.1.max(b.1);
    if iw <= 0.0 || ih <= 0.0 {
        return false;
    }
    let inter = iw * ih;
    let area_a = (a.2 - a.0) * (a.3 - a.1);
    let area_b = (b.2 - b.0) * (b.3 - b.1);
    let union = area_a + area_b - inter;
    if area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > threshold
}

/// The first value of an optional scalar input, when given and not empty.
fn first_f64(v: Option<&Value>, what: &str) -> Result<Option<f64>> {
    match v {
        Some(v) if !v.is_empty() => Ok(float_values(v, what)?.1.first().copied()),
        _ => Ok(None),
    }
}

fn nms(ins: &[Option<&Value>], center: bool) -> Result<Vec<Value>> {
    let (bs, boxes) = float_values(req(ins, 0)?, "boxes")?;
    let (ss, scores) = float_values(req(ins, 1)?, "scores")?;
    if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return Err(err(format!(
            "boxes shape {bs:?} and scores shape {ss:?} do not match ([B, N, 4] and [B, C, N])"
        )));
    }
    let max_out = match opt(ins, 2).filter(|v| !v.is_empty()) {
        Some(v) => ints(v, "max_output_boxes_per_class")?
            .first()
            .copied()
            .unwrap_or(0)
            .max(0) as u64,
        None => 0,
    };
    let iou = first_f64(opt(ins, 3), "iou_threshold")?.unwrap_or(0.0);
    let score_min = first_f64(opt(ins, 4), "score_threshold")?;
    let (batches, classes, n) = (ss[0], ss[1], ss[2]);
    let mut selected: Vec<i64> = Vec::new();
    let mut candidates: Vec<usize> = Vec::with_capacity(n);
    let mut kept: Vec<Corners> = Vec::new();
    for b in 0..batches {
        let bx = |i: usize| corners(&boxes[(b * n + i) * 4..][..4], center);
        for c in 0..classes {
            let cs = &scores[(b * classes + c) * n..][..n];
            candidates.clear();
            candidates.extend((0..n).filter(|&i| score_min.is_none_or(|t| cs[i] > t)));
            // Descending score, ties by ascending index (a stable sort keeps index order).
            candidates.sort_by(|&i, &j| cs[j].total_cmp(&cs[i]));
            kept.clear();
            for &i in &candidates {
                if kept.len() as u64 >= max_out {
                    break;
                }
                let bi = bx(i);
                if kept.iter().all(|&k| !suppresses(k, bi, iou)) {
                    kept.push(bi);
                    selected.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let k = selected.len() / 3;
    Ok(vec![Value::I64(from_vec(&[k, 3], selected)?)])
}

// ---------------------------------------------------------------------------------------------
// RoiAlign

#[derive(Clone, Copy)]
struct RoiAlign {
    max: bool,
    half_pixel: bool,
    out_h: usize,
    out_w: usize,
    sampling_ratio: usize,
    spatial_scale: f64,
}

fn build_roi_align(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let max = match node.attr_or::<String>("mode", "avg".into())?.as_str() {
        "avg" => false,
        "max" => true,
        m => return Err(node.error(format!("unknown mode '{m}'"))),
    };
    // Opset 10 has no attribute and behaves as output_half_pixel.
    let default_mode = if ctx.opset >= 16 {
        "half_pixel"
    } else {
        "output_half_pixel"
    };
    let half_pixel = match node
        .attr_or::<String>("coordinate_transformation_mode", default_mode.into())?
        .as_str()
    {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => {
            return Err(node.error(format!("unknown coordinate_transformation_mode '{m}'")));
        }
    };
    let sr = node.attr_or::<i64>("sampling_ratio", 0)?;
    let op = RoiAlign {
        max,
        half_pixel,
        out_h: node.attr_positive("output_height", 1)?,
        out_w: node.attr_positive("output_width", 1)?,
        sampling_ratio: usize::try_from(sr)
            .map_err(|_| node.error(format!("sampling_ratio {sr} must not be negative")))?,
        spatial_scale: node.attr_or::<f32>("spatial_scale", 1.0)? as f64,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| op.run(ins))))
}

/// One bilinear sample: up to four (flat offset, weight) pairs; no pairs outside the image.
fn bilinear(y: f64, x: f64, h: usize, w: usize) -> Option<[(usize, f64); 4]> {
    let (hf, wf) = (h as f64, w as f64);
    if !(y >= -1.0 && y <= hf && x >= -1.0 && x <= wf) {
        return None;
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut yl, mut xl) = (y as usize, x as usize);
    let yh = if yl >= h - 1 {
        yl = h - 1;
        y = yl as f64;
        yl
    } else {
        yl + 1
    };
    let xh = if xl >= w - 1 {
        xl = w - 1;
        x = xl as f64;
        xl
    } else {
        xl + 1
    };
    let (ly, lx) = (y - yl as f64, x - xl as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    Some([
        (yl * w + xl, hy * hx),
        (yl * w + xh, hy * lx),
        (yh * w + xl, ly * hx),
        (yh * w + xh, ly * lx),
    ])
}

impl RoiAlign {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let xv = req(ins, 0)?;
        let (xs, x) = float_values(xv, "X")?;
        let (rs, rois) = float_values(req(ins, 1)?, "rois")?;
        let idx = ints(req(ins, 2)?, "batch_indices")?;
        if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || idx.len() != rs[0] {
            return Err(err(format!(
                "X {xs:?}, rois {rs:?} and {} batch indices do not match ([N, C, H, W], [R, 4], [R])",
                idx.len()
            )));
        }
        let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
        let r = rs[0];
        let yshape = [r, c, self.out_h, self.out_w];
        elem_count(&yshape)?;
        let bins = self.out_h * self.out_w;
        let mut y = vec![0f64; r * c * bins];
        if h == 0 || w == 0 {
            return Err(err(format!("X has an empty image {xs:?}")));
        }
        let offset = if self.half_pixel { 0.5 } else { 0.0 };
        let mut samples: Vec<Option<[(usize, f64); 4]>> = Vec::new();
        for ri in 0..r {
            let b = usize::try_from(idx[ri])
                .ok()
                .filter(|&b| b < n)
                .ok_or_else(|| err(format!("batch index {} is out of range", idx[ri])))?;
            let roi = &rois[ri * 4..][..4];
            let sw = roi[0] * self.spatial_scale - offset;
            let sh = roi[1] * self.spatial_scale - offset;
            let mut rw = roi[2] * self.spatial_scale - offset - sw;
            let mut rh = roi[3] * self.spatial_scale - offset - sh;
            if !self.half_pixel {
                rw = rw.max(1.0);
                rh = rh.max(1.0);
            }
            let (bh, bw) = (rh / self.out_h as f64, rw / self.out_w as f64);
            let grid = |size: f64| -> Result<usize> {
                if self.sampling_ratio > 0 {
                    return Ok(self.sampling_ratio);
                }
                let g = size.ceil();
                if !(0.0..=65536.0).contains(&g) {
                    return Err(err(format!("roi {roi:?} is too large to sample")));
                }
                Ok(g as usize)
            };
            let (gh, gw) = (grid(bh)?, grid(bw)?);
            elem_count(&[bins, gh, gw])?;
            let count = (gh * gw).max(1) as f64;
            // Sample positions and weights, shared by every channel.
            samples.clear();
            for ph in 0..self.out_h {
                for pw in 0..self.out_w {
                    for iy in 0..gh {
                        let yy = sh + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                        for ix in 0..gw {
                            let xx = sw + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                            samples.push(bilinear(yy, xx, h, w));
                        }
                    }
                }
            }
            let per_bin = gh * gw;
            for ch in 0..c {
                let plane = &x[(b * c + ch) * h * w..][..h * w];
                let out = &mut y[(ri * c + ch) * bins..][..bins];
                for (o, bin) in out.iter_mut().zip(samples.chunks(per_bin.max(1))) {
                    let value = |s: &Option<[(usize, f64); 4]>| -> [f64; 4] {
                        match s {
                            Some(t) => t.map(|(p, wt)| wt * plane[p]),
                            None => [0.0; 4],
                        }
                    };
                    *o = if self.max {
                        bin.iter()
                            .map(|s| value(s).into_iter().fold(f64::NEG_INFINITY, f64::max))
                            .fold(None, |acc: Option<f64>, v| {
                                Some(acc.map_or(v, |a| a.max(v)))
                            })
                            .unwrap_or(0.0)
                    } else {
                        bin.iter()
                            .map(|s| value(s).iter().sum::<f64>())
                            .sum::<f64>()
                            / count
                    };
                }
            }
        }
        let y: ArrayD<f64> = from_vec(&yshape, y)?;
        Ok(vec![cast(&Value::F64(y), xv.dtype())?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn f32s(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = f32s(
            &[1, 3, 4],
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0, 1.1, 0.0, 2.0, 1.0, 3.0],
        );
        let scores = f32s(&[1, 1, 3], vec![0.8, 0.9, 0.7]);
        let max = Value::I64(ArrayD::from_elem(IxDyn(&[1]), 10));
        let iou = f32s(&[1], vec![0.5]);
        let out = nms(
            &[Some(&boxes), Some(&scores), Some(&max), Some(&iou)],
            false,
        )
        .unwrap();
        let got: Vec<i64> = out[0].as_i64().unwrap().iter().copied().collect();
        assert_eq!(got, vec![0, 0, 1, 0, 0, 2]);
        // Without max_output_boxes_per_class nothing is selected.
        let out = nms(&[Some(&boxes), Some(&scores)], false).unwrap();
        assert_eq!(out[0].shape(), &[0, 3]);
        let bad = f32s(&[1, 2, 4], vec![0.0; 8]);
        assert!(nms(&[Some(&bad), Some(&scores)], false).is_err());
    }

    #[test]
    fn roi_align_rejects_bad_batch_indices() {
        let x = f32s(&[1, 1, 4, 4], vec![1.0; 16]);
        let rois = f32s(&[1, 4], vec![0.0, 0.0, 3.0, 3.0]);
        let op = RoiAlign {
            max: false,
            half_pixel: true,
            out_h: 2,
            out_w: 2,
            sampling_ratio: 0,
            spatial_scale: 1.0,
        };
        let bi = Value::I64(ArrayD::from_elem(IxDyn(&[1]), 0));
        let y = op.run(&[Some(&x), Some(&rois), Some(&bi)]).unwrap();
        // A constant image averages to the constant inside the image.
        assert!(
            y[0].as_f32()
                .unwrap()
                .iter()
                .all(|&v| (v - 1.0).abs() < 1e-6)
        );
        let bi = Value::I64(ArrayD::from_elem(IxDyn(&[1]), 3));
        assert!(op.run(&[Some(&x), Some(&rois), Some(&bi)]).is_err());
        let huge = f32s(&[1, 4], vec![0.0, 0.0, 1e30, 1e30]);
        let bi = Value::I64(ArrayD::from_elem(IxDyn(&[1]), 0));
        assert!(op.run(&[Some(&x), Some(&huge), Some(&bi)]).is_err());
    }
}
