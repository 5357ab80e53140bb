//! Resampling: `Resize` (opsets 10, 11, 13, 18, 19) and the deprecated `Upsample` (7: scales
//! attribute, 9: scales input), one separable implementation.
//!
//! Resize maps every output coordinate `o` of a resized axis to an input coordinate `x` by the
//! `coordinate_transformation_mode` (`scale` is the axis' scale, `in`/`out` its lengths,
//! `outf = scale·in` before rounding):
//! - `half_pixel` (default): `(o + 0.5) / scale - 0.5`;
//! - `half_pixel_symmetric` (19): the same shifted by `in/2 · (1 - out/outf)`;
//! - `pytorch_half_pixel`: like `half_pixel`, but `-0.5` when `outf == 1`;
//! - `align_corners`: `o · (in - 1) / (outf - 1)` (0 when `outf == 1`);
//! - `asymmetric`: `o / scale`; `tf_half_pixel_for_nn` (11-17): `(o + 0.5) / scale`;
//! - `tf_crop_and_resize`: `roi_start·(in - 1) + o·(roi_end - roi_start)·(in - 1) / (outf - 1)`
//!   (the roi's midpoint when `outf == 1`); a coordinate outside `[0, in - 1]` gives
//!   `extrapolation_value`.
//!
//! `nearest` picks one input by `nearest_mode` (`round_prefer_floor` default,
//! `round_prefer_ceil`, `floor`, `ceil`); `linear` weighs the two neighbours; `cubic` the four
//! neighbours with Keys' kernel of parameter `cubic_coeff_a` (default -0.75), with
//! `exclude_outside` dropping taps outside the input and renormalizing. Taps outside the input
//! read the nearest edge element. With `antialias = 1` (18) and a downscaling axis, the linear
//! and cubic kernels are stretched by `1/scale` and normalized (a wider filter), as the ONNX
//! reference computes them. The output size is `floor(in · scale)` from `scales`, or `sizes`,
//! which `keep_aspect_ratio_policy` (18) may replace by one common scale over `axes` (the
//! smallest for `not_larger`, the largest for `not_smaller`, sizes `round_half_up(scale·in)`).
//! `axes` (18) names the axes `scales`/`sizes`/`roi` list (default all, in order); the axes
//! are resized one after another in that order, which is how the reference defines the
//! result, in linear time per axis.
//!
//! Opset 10 Resize and Upsample have no coordinate mode: they use `asymmetric`, and `nearest`
//! truncates when enlarging and rounds up when shrinking (onnxruntime's rule for them; for
//! Upsample's scales >= 1 that is `floor`, the reference's repetition).
//!
//! Any numeric element type: computed in f64, integers rounded half to even and saturated.

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{cast, dname, elem_count, err, from_vec, ints, norm_axis, opt, req};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "Resize", build_resize);
    r.register("", "Upsample", build_upsample);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Opset 10 Resize and Upsample: truncate when enlarging, round up when shrinking.
    Simple,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest(NearestMode),
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where the node's scales (and sizes, roi) come from.
#[derive(Clone, Debug)]
enum Layout {
    /// Upsample-7: the `scales` attribute.
    ScalesAttr(Vec<f32>),
    /// Upsample-9 and Resize-10: `(X, scales)`.
    ScalesInput,
    /// Resize-11 and later: `(X, roi, scales, sizes)`.
    Full,
}

#[derive(Clone, Debug)]
struct Resize {
    layout: Layout,
    mode: Mode,
    coord: Coord,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    policy: AspectPolicy,
}

fn mode_of(node: &Node, nearest: NearestMode) -> Result<Mode> {
    Ok(
        match node.attr_or::<String>("mode", "nearest".into())?.as_str() {
            "nearest" => Mode::Nearest(nearest),
            "linear" | "bilinear" | "trilinear" => Mode::Linear,
            "cubic" | "bicubic" => Mode::Cubic,
            m => return Err(node.error(format!("unknown mode '{m}'"))),
        },
    )
}

fn build_resize(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    if ctx.opset < 11 {
        return legacy(node, Layout::ScalesInput);
    }
    let nearest = match node
        .attr_or::<String>("nearest_mode", "round_prefer_floor".into())?
        .as_str()
    {
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        m => return Err(node.error(format!("unknown nearest_mode '{m}'"))),
    };
    let coord = match node
        .attr_or::<String>("coordinate_transformation_mode", "half_pixel".into())?
        .as_str()
    {
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        "tf_crop_and_resize" => Coord::TfCropAndResize,
        m => {
            return Err(node.error(format!("unknown coordinate_transformation_mode '{m}'")));
        }
    };
    let policy = match node
        .attr_or::<String>("keep_aspect_ratio_policy", "stretch".into())?
        .as_str()
    {
        "stretch" => AspectPolicy::Stretch,
        "not_larger" => AspectPolicy::NotLarger,
        "not_smaller" => AspectPolicy::NotSmaller,
        p => return Err(node.error(format!("unknown keep_aspect_ratio_policy '{p}'"))),
    };
    let mode = mode_of(node, nearest)?;
    let antialias = node.attr_or::<i64>("antialias", 0)? != 0;
    if antialias && matches!(mode, Mode::Nearest(_)) {
        return Err(node.error("antialias applies to the linear and cubic modes only"));
    }
    let op = Resize {
        layout: Layout::Full,
        mode,
        coord,
        cubic_a: node.attr_or::<f32>("cubic_coeff_a", -0.75)? as f64,
        exclude_outside: node.attr_or::<i64>("exclude_outside", 0)? != 0,
        extrapolation: node.attr_or::<f32>("extrapolation_value", 0.0)? as f64,
        antialias,
        axes: node.attr::<Vec<i64>>("axes")?,
        policy,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| op.run(ins))))
}

fn build_upsample(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    if ctx.opset < 9 {
        let scales = node.attr_req::<Vec<f32>>("scales")?;
        return legacy(node, Layout::ScalesAttr(scales));
    }
    legacy(node, Layout::ScalesInput)
}

/// Upsample and opset-10 Resize: asymmetric coordinates, truncating nearest.
fn legacy(node: &Node, layout: Layout) -> Result<Box<dyn Op>> {
    let op = Resize {
        layout,
        mode: mode_of(node, NearestMode::Simple)?,
        coord: Coord::Asymmetric,
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
        antialias: false,
        axes: None,
        policy: AspectPolicy::Stretch,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| op.run(ins))))
}

/// A float operand's values as f64 (scales, roi).
fn floats(v: &Value, what: &str) -> Result<Vec<f64>> {
    match v {
        Value::F32(a) => Ok(a.iter().map(|&x| x as f64).collect()),
        Value::F64(a) => Ok(a.iter().copied().collect()),
        Value::F16(a) => Ok(a.iter().map(|x| x.to_f64()).collect()),
        other => Err(err(format!(
            "{what} must be a float tensor, got {}",
            dname(other)
        ))),
    }
}

/// An optional input that is absent or empty counts as not given.
fn given<'a>(ins: &[Option<&'a Value>], i: usize) -> Option<&'a Value> {
    opt(ins, i).filter(|v| !v.is_empty())
}

/// The interpolation of one axis: per output position, `taps` (input index, weight) pairs,
/// or the extrapolation value.
struct AxisPlan {
    out: usize,
    taps: usize,
    index: Vec<usize>,
    weight: Vec<f64>,
    extrapolate: Vec<bool>,
}

impl Resize {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = req(ins, 0)?;
        let shape = x.shape().to_vec();
        let rank = shape.len();
        let axes: Vec<usize> = match &self.axes {
            Some(a) => {
                let axes = a
                    .iter()
                    .map(|&ax| norm_axis(ax, rank))
                    .collect::<Result<Vec<_>>>()?;
                let mut seen = vec![false; rank];
                for &ax in &axes {
                    if std::mem::replace(&mut seen[ax], true) {
                        return Err(err(format!("axes {a:?} repeat an axis")));
                    }
                }
                axes
            }
            None => (0..rank).collect(),
        };
        let (scales, sizes, roi) = match &self.layout {
            Layout::ScalesAttr(s) => (Some(s.iter().map(|&v| v as f64).collect()), None, None),
            Layout::ScalesInput => (Some(floats(req(ins, 1)?, "scales")?), None, None),
            Layout::Full => {
                let scales = given(ins, 2).map(|v| floats(v, "scales")).transpose()?;
                let sizes = given(ins, 3).map(|v| ints(v, "sizes")).transpose()?;
                let roi = given(ins, 1).map(|v| floats(v, "roi")).transpose()?;
                (scales, sizes, roi)
            }
        };
        let n = axes.len();
        // Per resized axis (in `axes` order): scale and output length.
        let (scale, out): (Vec<f64>, Vec<usize>) = match (scales, sizes) {
            (Some(_), Some(_)) => {
                return Err(err("scales and sizes are both given (only one may be)"));
            }
            (None, None) => return Err(err("neither scales nor sizes is given")),
            (Some(s), None) => {
                if s.len() != n {
                    return Err(err(format!(
                        "scales has {} values for {n} resized axes",
                        s.len()
                    )));
                }
                let mut out = Vec::with_capacity(n);
                for (&sc, &ax) in s.iter().zip(&axes) {
                    if !(sc > 0.0 && sc.is_finite()) {
                        return Err(err(format!("scales {s:?} must be positive")));
                    }
                    let len = (sc * shape[ax] as f64).floor();
                    if len > super::util::MAX_ELEMS as f64 {
                        return Err(err(format!("scales {s:?} give a too large output")));
                    }
                    out.push(len as usize);
                }
                (s, out)
            }
            (None, Some(sz)) => {
                if sz.len() != n {
                    return Err(err(format!(
                        "sizes has {} values for {n} resized axes",
                        sz.len()
                    )));
                }
                let sz = super::util::to_shape(&sz)?;
                let mut scale: Vec<f64> = sz
                    .iter()
                    .zip(&axes)
                    .map(|(&o, &ax)| o as f64 / shape[ax] as f64)
                    .collect();
                let mut out = sz;
                if self.policy != AspectPolicy::Stretch && n > 0 {
                    let common = scale.iter().copied().fold(
                        if self.policy == AspectPolicy::NotLarger {
                            f64::INFINITY
                        } else {
                            f64::NEG_INFINITY
                        },
                        |acc, s| {
                            if self.policy == AspectPolicy::NotLarger {
                                acc.min(s)
                            } else {
                                acc.max(s)
                            }
                        },
                    );
                    for (k, &ax) in axes.iter().enumerate() {
                        scale[k] = common;
                        let len = (common * shape[ax] as f64 + 0.5).floor();
                        if !(0.0..=super::util::MAX_ELEMS as f64).contains(&len) {
                            return Err(err(format!("sizes give an invalid output length {len}")));
                        }
                        out[k] = len as usize;
                    }
                }
                (scale, out)
            }
        };
        let roi = match roi {
            Some(r) if self.coord == Coord::TfCropAndResize => {
                if r.len() != 2 * n {
                    return Err(err(format!(
                        "roi has {} values, expected {} (starts and ends of {n} axes)",
                        r.len(),
                        2 * n
                    )));
                }
                Some(r)
            }
            // The roi only matters for tf_crop_and_resize.
            _ => None,
        };
        if self.coord == Coord::TfCropAndResize && roi.is_none() {
            return Err(err("tf_crop_and_resize needs the roi input"));
        }
        let mut out_shape = shape.clone();
        for (&ax, &o) in axes.iter().zip(&out) {
            if shape[ax] == 0 && o > 0 {
                return Err(err(format!("cannot resize the empty axis {ax} to {o}")));
            }
            out_shape[ax] = o;
        }
        elem_count(&out_shape)?;
        if matches!(x, Value::Bool(_)) {
            return Err(err("X must be numeric, got bool"));
        }
        let mut data: Vec<f64> = match cast(x, DataType::Double)? {
            Value::F64(a) => a.as_standard_layout().iter().copied().collect(),
            _ => return Err(err("internal: cast to double")),
        };
        let mut dims = shape.clone();
        for (k, &ax) in axes.iter().enumerate() {
            let axis_roi = roi.as_ref().map(|r| (r[k], r[n + k]));
            let identity = (scale[k] - 1.0).abs() <= 1e-9
                && out[k] == dims[ax]
                && axis_roi.is_none_or(|(a, b)| a.abs() <= 1e-9 && (b - 1.0).abs() <= 1e-9);
            if identity {
                continue;
            }
            let plan = self.plan_axis(dims[ax], out[k], scale[k], axis_roi)?;
            data = apply_axis(&data, &dims, ax, &plan, self.extrapolation);
            dims[ax] = out[k];
        }
        let y = from_vec(&out_shape, data)?;
        Ok(vec![to_like(y, x)?])
    }

    /// The taps of one axis from `len` to `out` elements.
    fn plan_axis(
        &self,
        len: usize,
        out: usize,
        scale: f64,
        roi: Option<(f64, f64)>,
    ) -> Result<AxisPlan> {
        let inf = len as f64;
        let outf = scale * inf;
        let last = len.saturating_sub(1) as i64;
        let clamp = |i: i64| i.clamp(0, last) as usize;
        // Kernel half-width in taps: `start` is the first tap's offset from `ceil(x) - 1`.
        let stretch = if self.antialias { scale.min(1.0) } else { 1.0 };
        let start: i64 = match self.mode {
            Mode::Nearest(_) => 0,
            Mode::Linear => (-1.0 / stretch).floor() as i64 + 1,
            Mode::Cubic => (-2.0 / stretch).floor() as i64 + 1,
        };
        let taps = match self.mode {
            Mode::Nearest(_) => 1,
            _ => usize::try_from(2 - 2 * start).map_err(|_| err("invalid kernel size"))?,
        };
        let total = out
            .checked_mul(taps)
            .filter(|&t| t <= super::util::MAX_ELEMS)
            .ok_or_else(|| err(format!("scale {scale} needs a too large filter")))?;
        let mut plan = AxisPlan {
            out,
            taps,
            index: Vec::with_capacity(total),
            weight: Vec::with_capacity(total),
            extrapolate: vec![false; out],
        };
        let mut coeffs = vec![0f64; taps];
        for o in 0..out {
            let of = o as f64;
            let x = match self.coord {
                Coord::HalfPixel => (of + 0.5) / scale - 0.5,
                Coord::HalfPixelSymmetric => {
                    let offset = inf / 2.0 * (1.0 - out as f64 / outf);
                    offset + (of + 0.5) / scale - 0.5
                }
                Coord::PytorchHalfPixel => {
                    if outf == 1.0 {
                        -0.5
                    } else {
                        (of + 0.5) / scale - 0.5
                    }
                }
                Coord::AlignCorners => {
                    if outf == 1.0 {
                        0.0
                    } else {
                        of * (inf - 1.0) / (outf - 1.0)
                    }
                }
                Coord::Asymmetric => of / scale,
                Coord::TfHalfPixelForNn => (of + 0.5) / scale,
                Coord::TfCropAndResize => {
                    let (a, b) = roi.unwrap_or((0.0, 1.0));
                    let x = if outf == 1.0 {
                        (b - a) * (inf - 1.0) / 2.0
                    } else {
                        of * (b - a) * (inf - 1.0) / (outf - 1.0)
                    } + a * (inf - 1.0);
                    if !(0.0..=inf - 1.0).contains(&x) {
                        plan.extrapolate[o] = true;
                    }
                    x
                }
            };
            if let Mode::Nearest(m) = self.mode {
                let fl = x.floor();
                let r = x - fl;
                let pick = if r == 0.0 {
                    x
                } else {
                    match m {
                        NearestMode::RoundPreferFloor if r <= 0.5 => fl,
                        NearestMode::RoundPreferCeil if r < 0.5 => fl,
                        NearestMode::RoundPreferFloor | NearestMode::RoundPreferCeil => fl + 1.0,
                        NearestMode::Floor => fl,
                        NearestMode::Ceil => fl + 1.0,
                        NearestMode::Simple if scale < 1.0 => x.ceil(),
                        NearestMode::Simple => x.trunc(),
                    }
                };
                plan.index.push(clamp(pick as i64));
                plan.weight.push(1.0);
                continue;
            }
            // `base = ceil(x) - 1` puts the fraction `ratio` in (0, 1]: at an integer the
            // reference takes the pixel on the left as the base.
            let base = x.ceil() - 1.0;
            let ratio = x - base;
            let base = base as i64;
            self.kernel(ratio, stretch, start, &mut coeffs);
            if self.exclude_outside {
                for (k, c) in coeffs.iter_mut().enumerate() {
                    let i = base.saturating_add(start + k as i64);
                    if i < 0 || i > last {
                        *c = 0.0;
                    }
                }
                let sum: f64 = coeffs.iter().sum();
                if sum != 0.0 {
                    coeffs.iter_mut().for_each(|c| *c /= sum);
                }
            }
            for (k, &c) in coeffs.iter().enumerate() {
                plan.index
                    .push(clamp(base.saturating_add(start + k as i64)));
                plan.weight.push(c);
            }
        }
        Ok(plan)
    }

    /// Weights of the taps `start..start + coeffs.len()` around the fraction `ratio`.
    fn kernel(&self, ratio: f64, stretch: f64, start: i64, coeffs: &mut [f64]) {
        let a = self.cubic_a;
        match (self.mode, self.antialias) {
            (Mode::Linear, false) => {
                coeffs[0] = 1.0 - ratio;
                coeffs[1] = ratio;
            }
            (Mode::Cubic, false) => {
                // Keys' cubic at distances 1 + r, r, 1 - r, 2 - r (the reference's forms).
                let r = ratio;
                let q = 1.0 - ratio;
                coeffs[0] = ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a;
                coeffs[1] = ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0;
                coeffs[2] = ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0;
                coeffs[3] = ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a;
            }
            (mode, _) => {
                for (k, c) in coeffs.iter_mut().enumerate() {
                    let d = (((start + k as i64) as f64 - ratio) * stretch).abs();
                    *c = if mode == Mode::Linear {
                        (1.0 - d).clamp(0.0, 1.0)
                    } else if d <= 1.0 {
                        (a + 2.0) * d * d * d - (a + 3.0) * d * d + 1.0
                    } else if d < 2.0 {
                        a * d * d * d - 5.0 * a * d * d + 8.0 * a * d - 4.0 * a
                    } else {
                        0.0
                    };
                }
                let sum: f64 = coeffs.iter().sum();
                if sum != 0.0 {
                    coeffs.iter_mut().for_each(|c| *c /= sum);
                }
            }
        }
    }
}

/// Resamples axis `axis` of the row-major `data` of shape `dims` by `plan`.
fn apply_axis(
    data: &[f64],
    dims: &[usize],
    axis: usize,
    plan: &AxisPlan,
    extrapolation: f64,
) -> Vec<f64> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let len = dims[axis];
    let mut y = vec![0f64; outer * plan.out * inner];
    if inner == 0 || plan.out == 0 {
        return y;
    }
    for (b, block) in y.chunks_mut(plan.out * inner).enumerate() {
        let src = &data[b * len * inner..][..len * inner];
        for (o, row) in block.chunks_mut(inner).enumerate() {
            if plan.extrapolate[o] {
                row.fill(extrapolation);
                continue;
            }
            let t = o * plan.taps;
            for (&i, &w) in plan.index[t..t + plan.taps]
                .iter()
                .zip(&plan.weight[t..t + plan.taps])
            {
                let s = &src[i * inner..][..inner];
                for (d, &v) in row.iter_mut().zip(s) {
                    *d += w * v;
                }
            }
        }
    }
    y
}

/// Casts the f64 result back to `x`'s element type (integers rounded half to even, then
/// saturated).
fn to_like(y: ArrayD<f64>, x: &Value) -> Result<Value> {
    let y = if super::util::is_float(x.dtype()) {
        y
    } else {
        y.mapv(f64::round_ties_even)
    };
    cast(&Value::F64(y), x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_floats, attr_ints, attr_string};
    use ndarray::IxDyn;

    fn run(node: &Node, opset: i64, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut r = Registry::default();
        register(&mut r);
        let b = r.get("", node.op_type()).expect("registered");
        let ctx = BuildCtx {
            opset,
            const_inputs: vec![None; ins.len()],
        };
        b(node, &ctx)?.run(ins)
    }

    fn f32s(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    #[test]
    fn upsample_7_repeats_and_9_reads_the_input() {
        let x = f32s(&[1, 2], vec![1.0, 2.0]);
        let n = Node::new("u", "Upsample", "", vec!["X".into()], vec!["Y".into()])
            .with_attr(attr_floats("scales", vec![2.0, 3.0]));
        let y = run(&n, 7, &[Some(&x)]).unwrap();
        assert_eq!(y[0].shape(), &[2, 6]);
        assert_eq!(
            y[0].as_f32().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
        );
        let n9 = Node::new(
            "u",
            "Upsample",
            "",
            vec!["X".into(), "S".into()],
            vec!["Y".into()],
        )
        .with_attr(attr_string("mode", "linear"));
        let s = f32s(&[2], vec![1.0, 2.0]);
        let y = run(&n9, 9, &[Some(&x), Some(&s)]).unwrap();
        // Asymmetric linear: x = o / 2, the last sample reads the edge.
        assert_eq!(
            y[0].as_f32().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![1.0, 1.5, 2.0, 2.0]
        );
    }

    #[test]
    fn integers_round_and_saturate() {
        let x = Value::U8(ArrayD::from_shape_vec(IxDyn(&[3]), vec![0u8, 255, 0]).unwrap());
        let n = Node::new(
            "r",
            "Resize",
            "",
            vec!["X".into(), "".into(), "".into(), "sizes".into()],
            vec!["Y".into()],
        )
        .with_attr(attr_string("mode", "cubic"));
        let sizes = Value::I64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![5]).unwrap());
        let y = run(&n, 19, &[Some(&x), None, None, Some(&sizes)]).unwrap();
        let y = y[0].as_u8().unwrap();
        assert_eq!(y.len(), 5);
        // Cubic overshoot above 255 saturates instead of wrapping.
        assert!(y.iter().any(|&v| v == 255), "{y:?}");
    }

    #[test]
    fn bad_operands_are_errors() {
        let x = f32s(&[1, 4], vec![1.0; 4]);
        let n = Node::new(
            "r",
            "Resize",
            "",
            vec!["X".into(), "".into(), "scales".into()],
            vec!["Y".into()],
        );
        let neg = f32s(&[2], vec![1.0, -2.0]);
        assert!(run(&n, 13, &[Some(&x), None, Some(&neg)]).is_err());
        let short = f32s(&[1], vec![2.0]);
        assert!(run(&n, 13, &[Some(&x), None, Some(&short)]).is_err());
        assert!(run(&n, 13, &[Some(&x), None, None]).is_err());
        let huge = f32s(&[2], vec![1.0, 1e30]);
        assert!(run(&n, 13, &[Some(&x), None, Some(&huge)]).is_err());
        let bad_axes = n.clone().with_attr(attr_ints("axes", vec![1, -1]));
        let one = f32s(&[2], vec![2.0, 2.0]);
        assert!(run(&bad_axes, 18, &[Some(&x), None, Some(&one)]).is_err());
        let bad_mode = n.clone().with_attr(attr_string("mode", "area"));
        assert!(run(&bad_mode, 13, &[Some(&x), None, Some(&one)]).is_err());
        let crop = n.with_attr(attr_string(
            "coordinate_transformation_mode",
            "tf_crop_and_resize",
        ));
        assert!(run(&crop, 13, &[Some(&x), None, Some(&one)]).is_err());
    }
}
