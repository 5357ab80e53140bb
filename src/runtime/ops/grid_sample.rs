//! Spatial sampling by a grid of normalized coordinates: `GridSample` (opset 16: 4-D input,
//! modes `bilinear`/`nearest`/`bicubic`; opset 20: any spatial rank, modes renamed
//! `linear`/`nearest`/`cubic`, both spellings accepted here) and `AffineGrid` (opset 20).
//!
//! GridSample: `X [N, C, D1..Dr]`, `grid [N, G1..Gr, r]` whose last axis lists the
//! coordinates innermost axis first (x, y, z). A coordinate `g` in `[-1, 1]` maps to the input
//! position `(g + 1)/2 · (d - 1)` with `align_corners = 1` (the extremes are the corner
//! pixels' centres) and `((g + 1)·d - 1)/2` otherwise (the extremes are the image edges).
//! Out-of-range positions are first clamped (`border`) or reflected at the image borders
//! (`reflection`: `[0, d-1]` or `[-0.5, d-0.5]` by `align_corners`); then `nearest` reads the
//! pixel at the position rounded half to even, `linear` weighs the `2^r` corners and `cubic`
//! the `4^r` neighbours with Keys' kernel (a = -0.75), each tap outside the image reading 0
//! (`zeros`, default), the clamped pixel (`border`) or the reflected one (`reflection`). As in
//! the ONNX reference (and PyTorch), positions are denormalized in float32. The output
//! `[N, C, G1..Gr]` has `X`'s type (f16/f32/f64, computed in f64).
//!
//! AffineGrid: `theta [N, 2, 3]` (2-D) or `[N, 3, 4]` (3-D) and `size = [N, C, (D,) H, W]` give
//! `grid [N, (D,) H, W, r]` = `theta[n] · (x, y, (z,) 1)` over the base grid of normalized
//! pixel positions (`-1 + 2k/(d-1)` with `align_corners`, `-1 + (2k+1)/d` without).

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{cast, elem_count, err, float_values, from_vec, ints, req, to_shape};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "GridSample", build_grid_sample);
    r.register("", "AffineGrid", build_affine_grid);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

fn build_grid_sample(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let interp = match node.attr_or::<String>("mode", "linear".into())?.as_str() {
        "nearest" => Interp::Nearest,
        "linear" | "bilinear" => Interp::Linear,
        "cubic" | "bicubic" => Interp::Cubic,
        m => return Err(node.error(format!("unknown mode '{m}'"))),
    };
    let padding = match node
        .attr_or::<String>("padding_mode", "zeros".into())?
        .as_str()
    {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        m => return Err(node.error(format!("unknown padding_mode '{m}'"))),
    };
    let align = node.attr_or::<i64>("align_corners", 0)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        grid_sample(req(ins, 0)?, req(ins, 1)?, interp, padding, align)
    })))
}

/// Reflects `x` into `[lo, hi]` by folding at the nearer border (the reference's rule).
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if range <= 0.0 || !x.is_finite() {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / range).trunc();
        let r = dx - n * range;
        if n % 2.0 == 0.0 { lo + r } else { hi - r }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / range).trunc();
        let r = dx - n * range;
        if n % 2.0 == 0.0 { hi - r } else { lo + r }
    } else {
        x
    }
}

/// Keys' cubic weights (a = -0.75) of the taps at -1, 0, 1, 2 from the fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    let a = -0.75;
    let w = |d: f64| {
        let d = d.abs();
        if d <= 1.0 {
            ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
        } else if d < 2.0 {
            ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
        } else {
            0.0
        }
    };
    [w(t + 1.0), w(t), w(1.0 - t), w(2.0 - t)]
}

fn grid_sample(
    x: &Value,
    grid: &Value,
    interp: Interp,
    padding: Padding,
    align: bool,
) -> Result<Vec<Value>> {
    let (xs, xd) = float_values(x, "X")?;
    let (gs, gd) = float_values(grid, "grid")?;
    let r = xs.len().saturating_sub(2);
    if xs.len() < 3 || gs.len() != xs.len() || gs[0] != xs[0] || gs[r + 1] != r {
        return Err(err(format!(
            "X shape {xs:?} and grid shape {gs:?} do not match ([N, C, D1..Dr] and [N, G1..Gr, r])"
        )));
    }
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let mut yshape = vec![n, c];
    yshape.extend_from_slice(&gs[1..=r]);
    elem_count(&yshape)?;
    let points: usize = gs[1..=r].iter().product();
    let plane: usize = dims.iter().product();
    let mut y = vec![0f64; n * c * points];
    if y.is_empty() {
        return Ok(vec![cast(&Value::F64(from_vec(&yshape, y)?), x.dtype())?]);
    }
    // Per axis: the border positions for reflection, and the row-major stride.
    let border: Vec<(f64, f64)> = dims
        .iter()
        .map(|&d| {
            if align {
                (0.0, d as f64 - 1.0)
            } else {
                (-0.5, d as f64 - 0.5)
            }
        })
        .collect();
    let mut stride = vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        stride[a] = stride[a + 1] * dims[a + 1];
    }
    // Reads tap `i` of axis `a` as an in-image index, or `None` for a zero.
    let tap = |a: usize, i: i64| -> Option<usize> {
        let d = dims[a] as i64;
        match padding {
            Padding::Zeros => (0..d).contains(&i).then_some(i as usize),
            Padding::Border => (d > 0).then(|| i.clamp(0, d - 1) as usize),
            Padding::Reflection => {
                let f = reflect(i as f64, border[a].0, border[a].1) as i64;
                (d > 0).then(|| f.clamp(0, d - 1) as usize)
            }
        }
    };
    let per_axis: usize = match interp {
        Interp::Nearest => 1,
        Interp::Linear => 2,
        Interp::Cubic => 4,
    };
    // Per axis, the taps (in-image offset or zero) and their weights of the current point.
    let mut axis_taps: Vec<Vec<(Option<usize>, f64)>> = vec![Vec::with_capacity(4); r];
    let cap = per_axis.saturating_pow(r as u32).min(1 << 16);
    let mut offsets: Vec<(usize, f64)> = Vec::with_capacity(cap);
    // The previous axis' partial products (kept to reuse its allocation).
    let mut prev: Vec<(usize, f64)> = Vec::with_capacity(cap);
    for img in 0..n {
        for p in 0..points {
            let g = &gd[(img * points + p) * r..][..r];
            for a in 0..r {
                let d = dims[a] as f32;
                // grid's last axis lists the innermost axis first.
                let gv = g[r - 1 - a] as f32;
                // Denormalized in float32, as the reference does.
                let mut pos = if align {
                    (gv + 1.0) / 2.0 * (d - 1.0)
                } else {
                    ((gv + 1.0) * d - 1.0) / 2.0
                } as f64;
                if interp == Interp::Nearest {
                    pos = pos.round_ties_even();
                }
                let (lo, hi) = border[a];
                if pos < lo || pos > hi {
                    match padding {
                        Padding::Border => pos = pos.clamp(0.0, dims[a] as f64 - 1.0),
                        Padding::Reflection => pos = reflect(pos, lo, hi),
                        Padding::Zeros => {}
                    }
                }
                let taps = &mut axis_taps[a];
                taps.clear();
                match interp {
                    Interp::Nearest => {
                        let i = if pos.is_finite() { pos as i64 } else { -1 };
                        taps.push((tap(a, i), 1.0));
                    }
                    Interp::Linear => {
                        let f = pos.floor();
                        let t = pos - f;
                        let i = if pos.is_finite() { f as i64 } else { -2 };
                        taps.push((tap(a, i), 1.0 - t));
                        taps.push((tap(a, i.saturating_add(1)), t));
                    }
                    Interp::Cubic => {
                        let f = pos.floor();
                        let i = if pos.is_finite() { f as i64 } else { -3 };
                        for (k, w) in cubic_weights(pos - f).into_iter().enumerate() {
                            taps.push((tap(a, i.saturating_add(k as i64 - 1)), w));
                        }
                    }
                }
            }
            // The product of the axes' taps; a zero tap on any axis drops the corner.
            offsets.clear();
            offsets.push((0, 1.0));
            for (a, taps) in axis_taps.iter().enumerate() {
                std::mem::swap(&mut prev, &mut offsets);
                offsets.clear();
                for &(off, w) in &prev {
                    for &(t, tw) in taps {
                        if let Some(t) = t {
                            offsets.push((off + t * stride[a], w * tw));
                        }
                    }
                }
            }
            for ch in 0..c {
                let src = &xd[(img * c + ch) * plane..][..plane];
                y[(img * c + ch) * points + p] = offsets.iter().map(|&(o, w)| w * src[o]).sum();
            }
        }
    }
    let y = from_vec(&yshape, y)?;
    Ok(vec![cast(&Value::F64(y), x.dtype())?])
}

fn build_affine_grid(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let align = node.attr_or::<i64>("align_corners", 0)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        affine_grid(req(ins, 0)?, req(ins, 1)?, align)
    })))
}

/// Normalized positions of the `d` pixels of an axis.
fn base_positions(d: usize, align: bool) -> Vec<f64> {
    (0..d)
        .map(|k| {
            let k = k as f64;
            if align {
                if d == 1 {
                    -1.0
                } else {
                    -1.0 + k * 2.0 / (d as f64 - 1.0)
                }
            } else {
                -1.0 + (2.0 * k + 1.0) / d as f64
            }
        })
        .collect()
}

fn affine_grid(theta: &Value, size: &Value, align: bool) -> Result<Vec<Value>> {
    let (ts, td) = float_values(theta, "theta")?;
    let size = to_shape(&ints(size, "size")?)?;
    let r = size.len().saturating_sub(2);
    if !(r == 2 || r == 3) || ts != [size[0], r, r + 1] {
        return Err(err(format!(
            "theta shape {ts:?} and size {size:?} do not match ([N, 2, 3] with [N, C, H, W] or [N, 3, 4] with [N, C, D, H, W])"
        )));
    }
    let n = size[0];
    let spatial = &size[2..];
    let mut gshape = vec![n];
    gshape.extend_from_slice(spatial);
    gshape.push(r);
    elem_count(&gshape)?;
    // Per spatial axis, the base positions; the homogeneous vector is (x, y, (z,) 1).
    let bases: Vec<Vec<f64>> = spatial.iter().map(|&d| base_positions(d, align)).collect();
    let points: usize = spatial.iter().product();
    let mut out = Vec::with_capacity(n * points * r);
    let mut idx = vec![0usize; r];
    let mut homo = vec![1.0f64; r + 1];
    for img in 0..n {
        let th = &td[img * r * (r + 1)..][..r * (r + 1)];
        idx.iter_mut().for_each(|i| *i = 0);
        for _ in 0..points {
            for a in 0..r {
                homo[r - 1 - a] = bases[a][idx[a]];
            }
            for row in th.chunks_exact(r + 1) {
                out.push(row.iter().zip(&homo).map(|(t, h)| t * h).sum::<f64>());
            }
            for a in (0..r).rev() {
                idx[a] += 1;
                if idx[a] < spatial[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
    let g: ArrayD<f64> = from_vec(&gshape, out)?;
    Ok(vec![cast(&Value::F64(g), theta.dtype())?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn f32s(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    #[test]
    fn identity_grid_reproduces_the_input() {
        // AffineGrid of the identity with align_corners = 0 samples every pixel centre.
        let theta = f32s(&[1, 2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let size = Value::I64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![1, 1, 2, 3]).unwrap());
        let grid = affine_grid(&theta, &size, false).unwrap().remove(0);
        assert_eq!(grid.shape(), &[1, 2, 3, 2]);
        let x = f32s(&[1, 1, 2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        for interp in [Interp::Nearest, Interp::Linear, Interp::Cubic] {
            let y = grid_sample(&x, &grid, interp, Padding::Zeros, false).unwrap();
            for (a, b) in y[0].as_f32().unwrap().iter().zip(x.as_f32().unwrap()) {
                assert!((a - b).abs() < 1e-5, "{interp:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn reflection_folds_at_the_nearer_border() {
        assert_eq!(reflect(-1.0, 0.0, 3.0), 1.0);
        assert_eq!(reflect(4.0, 0.0, 3.0), 2.0);
        assert_eq!(reflect(7.5, 0.0, 3.0), 1.5);
        assert_eq!(reflect(2.0, 0.0, 0.0), 0.0);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let x = f32s(&[1, 1, 2, 3], vec![0.0; 6]);
        let g = f32s(&[1, 2, 2, 3], vec![0.0; 12]);
        assert!(grid_sample(&x, &g, Interp::Linear, Padding::Zeros, false).is_err());
        let theta = f32s(&[1, 2, 3], vec![0.0; 6]);
        let size = Value::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1, 1, 2]).unwrap());
        assert!(affine_grid(&theta, &size, false).is_err());
        let nan_grid = f32s(&[1, 1, 1, 2], vec![f32::NAN, 0.0]);
        for p in [Padding::Zeros, Padding::Border, Padding::Reflection] {
            assert!(grid_sample(&x, &nan_grid, Interp::Cubic, p, true).is_ok());
        }
    }
}
