//! Discrete Fourier transforms: `DFT` (opset 17: `axis` attribute, default 1; opset 20: `axis`
//! as the optional third input, default -2) and `STFT` (opset 17).
//!
//! DFT: the input's last axis holds one real value or an interleaved (real, imaginary) pair;
//! the signal runs along `axis` (any axis but that last one; negative counts from the end of the
//! full rank). `dft_length` (optional int scalar input) zero-pads or truncates the signal
//! (default: its length). Forward: `X[k] = Σ x[t]·e^(-2πi·kt/n)`, complex output, only the
//! `n/2 + 1` non-redundant bins with `onesided = 1`. `inverse = 1`: `x[t] = (1/n)·Σ X[k]·e^(2πi·kt/n)`
//! with complex output; with `onesided = 1` as well (the inverse of a one-sided transform,
//! numpy's `irfft`, as the ONNX reference computes it) the input is the first `n/2 + 1` bins
//! (default `n = 2·(len - 1)`), the rest follow by Hermitian symmetry, the imaginary parts of
//! bin 0 (and bin `n/2` for even `n`) are ignored, and the output is real (last axis 1).
//!
//! STFT: `signal [batch, length, 1 or 2]`, `frame_step` (int scalar), optional `window
//! [frame_length]`, optional `frame_length` (int scalar); frames start every `frame_step`
//! samples, `1 + (length - frame_length) / frame_step` of them, each multiplied by the window
//! (default all ones) and transformed; output `[batch, frames, bins, 2]` with `bins =
//! frame_length/2 + 1` when `onesided = 1` (default) and `frame_length` otherwise.
//!
//! Transforms of any length take O(n log n): radix-2 for powers of two, Bluestein's chirp-z
//! through a power-of-two transform otherwise. Computed in f64; f16/f32/f64 in and out.

use std::f64::consts::PI;

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{cast, elem_count, err, float_values, from_vec, ints, opt, req};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "DFT", build_dft);
    r.register("", "STFT", build_stft);
}

type Complex = (f64, f64);

fn mul(a: Complex, b: Complex) -> Complex {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

/// In-place radix-2 transform of a power-of-two length (`sign` -1 forward, +1 inverse, no
/// scaling).
fn fft_pow2(buf: &mut [Complex], sign: f64) {
    let n = buf.len();
    if n <= 1 {
        return;
    }
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if i < j {
            buf.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let angle = sign * 2.0 * PI / len as f64;
        let half = len / 2;
        // Twiddles computed directly (not by repeated multiplication) to keep f64 accuracy.
        let tw: Vec<Complex> = (0..half)
            .map(|k| {
                let a = angle * k as f64;
                (a.cos(), a.sin())
            })
            .collect();
        for block in buf.chunks_mut(len) {
            let (lo, hi) = block.split_at_mut(half);
            for ((u, v), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(&tw) {
                let t = mul(*v, w);
                *v = (u.0 - t.0, u.1 - t.1);
                *u = (u.0 + t.0, u.1 + t.1);
            }
        }
        len *= 2;
    }
}

/// A transform of one length and direction, prepared once for many signals.
struct Plan {
    n: usize,
    sign: f64,
    /// Bluestein's chirp `e^(sign·πi·k²/n)` and the transformed conjugate chirp, for lengths
    /// that are not powers of two.
    bluestein: Option<(Vec<Complex>, Vec<Complex>)>,
}

impl Plan {
    fn new(n: usize, inverse: bool) -> Result<Plan> {
        let sign = if inverse { 1.0 } else { -1.0 };
        if n.is_power_of_two() || n <= 1 {
            return Ok(Plan {
                n,
                sign,
                bluestein: None,
            });
        }
        let m = (2 * n - 1)
            .checked_next_power_of_two()
            .filter(|&m| m <= super::util::MAX_ELEMS)
            .ok_or_else(|| err(format!("transform length {n} is too large")))?;
        let chirp: Vec<Complex> = (0..n)
            .map(|k| {
                // k² mod 2n keeps the angle small and exact.
                let k2 = ((k as u128 * k as u128) % (2 * n as u128)) as f64;
                let a = sign * PI * k2 / n as f64;
                (a.cos(), a.sin())
            })
            .collect();
        let mut b = vec![(0.0, 0.0); m];
        for k in 0..n {
            let c = (chirp[k].0, -chirp[k].1);
            b[k] = c;
            if k > 0 {
                b[m - k] = c;
            }
        }
        fft_pow2(&mut b, -1.0);
        Ok(Plan {
            n,
            sign,
            bluestein: Some((chirp, b)),
        })
    }

    /// Transforms `x` (length `n`) in place, unscaled.
    fn run(&self, x: &mut [Complex]) {
        match &self.bluestein {
            None => fft_pow2(x, self.sign),
            Some((chirp, bf)) => {
                let m = bf.len();
                let mut a = vec![(0.0, 0.0); m];
                for k in 0..self.n {
                    a[k] = mul(x[k], chirp[k]);
                }
                fft_pow2(&mut a, -1.0);
                for (v, &b) in a.iter_mut().zip(bf) {
                    *v = mul(*v, b);
                }
                fft_pow2(&mut a, 1.0);
                let scale = 1.0 / m as f64;
                for k in 0..self.n {
                    let c = (a[k].0 * scale, a[k].1 * scale);
                    x[k] = mul(c, chirp[k]);
                }
            }
        }
    }
}

/// An optional int scalar input.
fn int_scalar(v: Option<&Value>, what: &str) -> Result<Option<i64>> {
    let Some(v) = v else { return Ok(None) };
    match ints(v, what)?.as_slice() {
        [x] => Ok(Some(*x)),
        other => Err(err(format!("{what} must be a scalar, got {other:?}"))),
    }
}

fn build_dft(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let inverse = node.attr_or::<i64>("inverse", 0)? != 0;
    let onesided = node.attr_or::<i64>("onesided", 0)? != 0;
    let opset = ctx.opset;
    let axis_attr = node.attr_or::<i64>("axis", 1)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let axis = if opset >= 20 {
            int_scalar(opt(ins, 2), "axis")?.unwrap_or(-2)
        } else {
            axis_attr
        };
        let length = int_scalar(opt(ins, 1), "dft_length")?;
        dft(req(ins, 0)?, length, axis, inverse, onesided)
    })))
}

fn dft(
    x: &Value,
    length: Option<i64>,
    axis: i64,
    inverse: bool,
    onesided: bool,
) -> Result<Vec<Value>> {
    let (shape, data) = float_values(x, "input")?;
    let rank = shape.len();
    let comps = shape.last().copied().unwrap_or(0);
    if rank < 2 || !(comps == 1 || comps == 2) {
        return Err(err(format!(
            "input has shape {shape:?}, expected [..., 1] (real) or [..., 2] (complex)"
        )));
    }
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r - 1 {
        return Err(err(format!(
            "axis {axis} is out of range (the signal axis of shape {shape:?} cannot be the last)"
        )));
    }
    let a = a as usize;
    let len = shape[a];
    let irfft = inverse && onesided;
    let n = match length {
        Some(l) => usize::try_from(l)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| err(format!("dft_length {l} must be positive")))?,
        None if irfft => 2 * len.saturating_sub(1),
        None => len,
    };
    if n == 0 {
        return Err(err(format!("the transform length of shape {shape:?} is 0")));
    }
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..rank - 1].iter().product();
    let (out_len, out_comps) = if irfft {
        (n, 1)
    } else if onesided {
        (n / 2 + 1, 2)
    } else {
        (n, 2)
    };
    let mut oshape = shape.clone();
    oshape[a] = out_len;
    oshape[rank - 1] = out_comps;
    elem_count(&oshape)?;
    let plan = Plan::new(n, inverse)?;
    let mut out = vec![0f64; outer * out_len * inner * out_comps];
    let mut line = vec![(0.0, 0.0); n];
    let at = |o: usize, i: usize, j: usize| -> Complex {
        let p = ((o * len + i) * inner + j) * comps;
        (data[p], if comps == 2 { data[p + 1] } else { 0.0 })
    };
    for o in 0..outer {
        for j in 0..inner {
            line.iter_mut().for_each(|v| *v = (0.0, 0.0));
            if irfft {
                // Bins 0..=n/2 given, the rest by Hermitian symmetry.
                let half = n / 2;
                let given = (half + 1).min(len);
                for (k, v) in line.iter_mut().enumerate().take(given) {
                    *v = at(o, k, j);
                }
                line[0].1 = 0.0;
                if n % 2 == 0 {
                    line[half].1 = 0.0;
                }
                for k in half + 1..n {
                    let c = line[n - k];
                    line[k] = (c.0, -c.1);
                }
            } else {
                for (i, v) in line.iter_mut().enumerate().take(len.min(n)) {
                    *v = at(o, i, j);
                }
            }
            plan.run(&mut line);
            let scale = if inverse { 1.0 / n as f64 } else { 1.0 };
            for (k, v) in line.iter().take(out_len).enumerate() {
                let p = ((o * out_len + k) * inner + j) * out_comps;
                out[p] = v.0 * scale;
                if out_comps == 2 {
                    out[p + 1] = v.1 * scale;
                }
            }
        }
    }
    let y = from_vec(&oshape, out)?;
    Ok(vec![cast(&Value::F64(y), x.dtype())?])
}

fn build_stft(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let onesided = node.attr_or::<i64>("onesided", 1)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        stft(
            req(ins, 0)?,
            int_scalar(Some(req(ins, 1)?), "frame_step")?.unwrap_or(0),
            opt(ins, 2),
            int_scalar(opt(ins, 3), "frame_length")?,
            onesided,
        )
    })))
}

fn stft(
    x: &Value,
    step: i64,
    window: Option<&Value>,
    frame_length: Option<i64>,
    onesided: bool,
) -> Result<Vec<Value>> {
    let (shape, data) = float_values(x, "signal")?;
    if shape.len() != 3 || !(shape[2] == 1 || shape[2] == 2) {
        return Err(err(format!(
            "signal has shape {shape:?}, expected [batch, length, 1 or 2]"
        )));
    }
    let (batch, len, comps) = (shape[0], shape[1], shape[2]);
    let step = usize::try_from(step)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| err(format!("frame_step {step} must be positive")))?;
    let window = window.map(|w| float_values(w, "window")).transpose()?;
    if let Some((ws, _)) = &window
        && ws.len() != 1
    {
        return Err(err(format!("window has shape {ws:?}, expected 1-D")));
    }
    let flen = match (frame_length, &window) {
        (Some(l), Some((ws, _))) if l != ws[0] as i64 => {
            return Err(err(format!(
                "frame_length {l} differs from the window length {}",
                ws[0]
            )));
        }
        (Some(l), _) => usize::try_from(l)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| err(format!("frame_length {l} must be positive")))?,
        (None, Some((ws, _))) => ws[0],
        (None, None) => len,
    };
    if flen == 0 || flen > len {
        return Err(err(format!(
            "frame length {flen} does not fit the signal length {len}"
        )));
    }
    let frames = 1 + (len - flen) / step;
    let bins = if onesided { flen / 2 + 1 } else { flen };
    let oshape = [batch, frames, bins, 2];
    elem_count(&oshape)?;
    let plan = Plan::new(flen, false)?;
    let mut out = Vec::with_capacity(batch * frames * bins * 2);
    let mut line = vec![(0.0, 0.0); flen];
    for b in 0..batch {
        for f in 0..frames {
            for (t, v) in line.iter_mut().enumerate() {
                let p = (b * len + f * step + t) * comps;
                let w = window.as_ref().map_or(1.0, |(_, w)| w[t]);
                let im = if comps == 2 { data[p + 1] } else { 0.0 };
                *v = (data[p] * w, im * w);
            }
            plan.run(&mut line);
            for v in &line[..bins] {
                out.push(v.0);
                out.push(v.1);
            }
        }
    }
    let y = from_vec(&oshape, out)?;
    Ok(vec![cast(&Value::F64(y), x.dtype())?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform by its definition, O(n²).
    fn naive(x: &[Complex], sign: f64) -> Vec<Complex> {
        let n = x.len();
        (0..n)
            .map(|k| {
                x.iter().enumerate().fold((0.0, 0.0), |acc, (t, &v)| {
                    let a = sign * 2.0 * PI * ((k * t) % n) as f64 / n as f64;
                    let p = mul(v, (a.cos(), a.sin()));
                    (acc.0 + p.0, acc.1 + p.1)
                })
            })
            .collect()
    }

    #[test]
    fn fast_transforms_match_the_definition() {
        for n in [1usize, 2, 3, 5, 8, 12, 17, 64, 100] {
            let x: Vec<Complex> = (0..n)
                .map(|i| ((i as f64 * 0.7).sin(), (i as f64 * 1.3).cos()))
                .collect();
            for inverse in [false, true] {
                let sign = if inverse { 1.0 } else { -1.0 };
                let mut got = x.clone();
                Plan::new(n, inverse).unwrap().run(&mut got);
                for (g, w) in got.iter().zip(naive(&x, sign)) {
                    assert!(
                        (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9,
                        "n {n}: {g:?} vs {w:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn irfft_inverts_rfft() {
        use ndarray::{ArrayD, IxDyn};
        let sig: Vec<f32> = (0..7).map(|i| (i as f32 * 0.9).cos()).collect();
        let x = Value::F32(ArrayD::from_shape_vec(IxDyn(&[1, 7, 1]), sig.clone()).unwrap());
        let spec = dft(&x, None, 1, false, true).unwrap().remove(0);
        assert_eq!(spec.shape(), &[1, 4, 2]);
        let back = dft(&spec, Some(7), 1, true, true).unwrap().remove(0);
        assert_eq!(back.shape(), &[1, 7, 1]);
        for (a, b) in back.as_f32().unwrap().iter().zip(&sig) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(dft(&x, None, 2, false, false).is_err());
        assert!(dft(&x, Some(0), 1, false, false).is_err());
        assert!(stft(&x, 0, None, None, true).is_err());
        assert!(stft(&x, 1, None, Some(9), true).is_err());
    }
}
