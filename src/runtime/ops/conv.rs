//! Convolution and pooling ops of the default domain: Conv (opset 1/11/22), MaxPool
//! (1/8/10/11/12/22), AveragePool (1/7/10/11/19/22), GlobalAveragePool (1/22).
//!
//! Shared window geometry (ONNX spec), per spatial axis with kernel `k`, stride `s`, dilation
//! `d`, effective kernel `e = (k - 1)·d + 1`:
//! - explicit pads (`auto_pad = NOTSET`, `pads = [b1.., e1..]`):
//!   `out = floor((in + b + e - e_k) / s) + 1` (`ceil` with pooling's `ceil_mode`, dropping a
//!   last window that would start in the end padding);
//! - `VALID`: no padding, `out = floor((in - e_k) / s) + 1`;
//! - `SAME_UPPER`/`SAME_LOWER`: `out = ceil(in / s)`, total padding `(out - 1)·s + e_k - in`
//!   split evenly, the odd element at the end (UPPER) or the beginning (LOWER).
//!
//! Conv: `Y[n, m] = B[m] + Σ X[n, c, o·s - b + k·d] · W[m, c, k]` over the `C/group` channels of
//! `m`'s group; computed as im2col + one GEMM per (image, group), 1-D to 3-D (all normalized to
//! 3-D internally, missing leading axes of extent 1); (image, group) pairs run in parallel, a
//! single large product is split by output columns, 1x1 stride-1 kernels skip im2col, and
//! depthwise convolutions (one channel per group) are computed directly.
//!
//! MaxPool ignores padded positions and, when the node names it, returns the flat argmax
//! `Indices` (row-major over the input, or column-major over the spatial axes with
//! `storage_order = 1`); without it, a faster separable values-only path runs. AveragePool
//! divides by the number of in-image positions, or with `count_include_pad = 1` by the
//! positions inside the padded image (the `ceil_mode` overhang never counts). Types: f32; f16
//! and f64 computed in f32 (MaxPool also runs natively on f16, f64, int8 and uint8).

use half::f16;
use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewMut2, IxDyn, linalg::general_mat_mul};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::runtime::value::Value;

use super::{BuildCtx, Op, Registry};

pub mod causal;
pub mod deform;
pub mod qlinear;
pub mod transpose;

pub fn register(r: &mut Registry) {
    r.register("", "Conv", build_conv);
    r.register("", "MaxPool", build_max_pool);
    r.register("", "AveragePool", build_average_pool);
    r.register("", "GlobalAveragePool", build_global_average_pool);
}

/// Node identity for error messages from `run`.
#[derive(Clone, Debug)]
struct Ident {
    node: String,
    op: String,
}

impl Ident {
    fn of(node: &Node) -> Self {
        Ident {
            node: node.display_name().to_string(),
            op: node.op_type().to_string(),
        }
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Node {
            node: self.node.clone(),
            op: self.op.clone(),
            reason: reason.into(),
        }
    }
}

fn float_input(v: &Value, what: &str, id: &Ident) -> Result<ArrayD<f32>> {
    let a = match v {
        Value::F32(a) => a.clone(),
        Value::F16(a) => a.mapv(f16::to_f32),
        Value::F64(a) => a.mapv(|x| x as f32),
        other => {
            return Err(id.error(format!(
                "input {what} has type {:?}, expected a float tensor",
                other.dtype()
            )));
        }
    };
    // The kernels index flat row-major buffers.
    Ok(if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    })
}

fn like(a: ArrayD<f32>, proto: &Value) -> Value {
    match proto {
        Value::F16(_) => Value::F16(a.mapv(f16::from_f32)),
        Value::F64(_) => Value::F64(a.mapv(f64::from)),
        _ => Value::F32(a),
    }
}

fn input<'a>(inputs: &[Option<&'a Value>], i: usize) -> Option<&'a Value> {
    inputs.get(i).copied().flatten()
}

// ---------------------------------------------------------------------------------------------
// Window geometry

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// Window attributes as the node gives them (spatial rank known only at run time).
#[derive(Clone, Debug)]
struct WindowAttrs {
    auto_pad: AutoPad,
    kernel_shape: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    dilations: Option<Vec<usize>>,
    ceil_mode: bool,
}

fn positive(node: &Node, name: &str) -> Result<Option<Vec<usize>>> {
    node.attr::<Vec<i64>>(name)?
        .map(|v| {
            v.iter()
                .map(|&x| {
                    usize::try_from(x)
                        .ok()
                        .filter(|&x| x > 0 || name == "pads")
                        .ok_or_else(|| node.error(format!("{name} {v:?} has an invalid value")))
                })
                .collect()
        })
        .transpose()
}

impl WindowAttrs {
    fn parse(node: &Node) -> Result<Self> {
        let auto_pad = match node
            .attr_or::<String>("auto_pad", "NOTSET".into())?
            .as_str()
        {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            p => return Err(node.error(format!("unknown auto_pad '{p}'"))),
        };
        Ok(WindowAttrs {
            auto_pad,
            kernel_shape: positive(node, "kernel_shape")?,
            pads: positive(node, "pads")?,
            strides: positive(node, "strides")?,
            dilations: positive(node, "dilations")?,
            ceil_mode: node.attr_or::<i64>("ceil_mode", 0)? != 0,
        })
    }

    /// Resolves the geometry for an input's spatial shape and a kernel shape.
    fn geometry(&self, input: &[usize], kernel: &[usize], id: &Ident) -> Result<Geometry> {
        let r = input.len();
        if r == 0 || r > 3 {
            return Err(id.error(format!("{r} spatial axes (1 to 3 are supported)")));
        }
        let per_axis = |v: &Option<Vec<usize>>, what: &str, n: usize| -> Result<Vec<usize>> {
            match v {
                None => Ok(vec![if what == "pads" { 0 } else { 1 }; n]),
                Some(v) if v.len() == n => Ok(v.clone()),
                Some(v) => Err(id.error(format!(
                    "{what} {v:?} has {} values for {r} spatial axes",
                    v.len()
                ))),
            }
        };
        if kernel.len() != r {
            return Err(id.error(format!(
                "kernel shape {kernel:?} does not match {r} spatial axes"
            )));
        }
        let strides = per_axis(&self.strides, "strides", r)?;
        let dilations = per_axis(&self.dilations, "dilations", r)?;
        let pads = per_axis(&self.pads, "pads", 2 * r)?;
        let mut g = Geometry::default();
        let off = 3 - r;
        for a in 0..r {
            let (inp, k, s, d) = (input[a], kernel[a], strides[a], dilations[a]);
            if inp == 0 || k == 0 {
                return Err(id.error(format!(
                    "empty spatial axis {a} (input {input:?}, kernel {kernel:?})"
                )));
            }
            let eff = (k - 1) * d + 1;
            let (pb, pe, out) = match self.auto_pad {
                AutoPad::NotSet => {
                    let (pb, pe) = (pads[a], pads[r + a]);
                    let span = (inp + pb + pe).checked_sub(eff).ok_or_else(|| {
                        id.error(format!(
                            "kernel extent {eff} exceeds padded input {} on spatial axis {a}",
                            inp + pb + pe
                        ))
                    })?;
                    let mut out = if self.ceil_mode {
                        span.div_ceil(s) + 1
                    } else {
                        span / s + 1
                    };
                    // A last window starting in the end padding is dropped (ceil_mode only).
                    if self.ceil_mode && (out - 1) * s >= inp + pb {
                        out -= 1;
                    }
                    (pb, pe, out)
                }
                AutoPad::Valid => {
                    let span = inp.checked_sub(eff).ok_or_else(|| {
                        id.error(format!(
                            "kernel extent {eff} exceeds input {inp} on spatial axis {a}"
                        ))
                    })?;
                    (0, 0, span / s + 1)
                }
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let out = inp.div_ceil(s);
                    let total = ((out - 1) * s + eff).saturating_sub(inp);
                    let small = total / 2;
                    if self.auto_pad == AutoPad::SameUpper {
                        (small, total - small, out)
                    } else {
                        (total - small, small, out)
                    }
                }
            };
            g.input[off + a] = inp;
            g.kernel[off + a] = k;
            g.stride[off + a] = s;
            g.dilation[off + a] = d;
            g.pad_begin[off + a] = pb;
            g.pad_end[off + a] = pe;
            g.output[off + a] = out;
        }
        g.rank = r;
        Ok(g)
    }
}

/// Resolved geometry, normalized to three spatial axes (leading axes of extent 1).
#[derive(Clone, Debug)]
struct Geometry {
    rank: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    dilation: [usize; 3],
    pad_begin: [usize; 3],
    pad_end: [usize; 3],
    output: [usize; 3],
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            rank: 0,
            input: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
            pad_end: [0; 3],
            output: [1; 3],
        }
    }
}

impl Geometry {
    fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    fn out_size(&self) -> usize {
        self.output.iter().product()
    }
    fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }
    /// The real output spatial shape (without the normalizing axes).
    fn out_shape(&self) -> &[usize] {
        &self.output[3 - self.rank..]
    }
    /// Input coordinate of output `o`, kernel tap `k` on axis `a` (may be outside the image).
    #[inline]
    fn coord(&self, a: usize, o: usize, k: usize) -> isize {
        (o * self.stride[a] + k * self.dilation[a]) as isize - self.pad_begin[a] as isize
    }
    /// Whether a tap lies inside the image on axis `a`.
    #[inline]
    fn inside(&self, a: usize, i: isize) -> bool {
        i >= 0 && (i as usize) < self.input[a]
    }
    /// Whether a tap lies inside the explicitly padded image on axis `a`.
    #[inline]
    fn inside_padded(&self, a: usize, i: isize) -> bool {
        i >= -(self.pad_begin[a] as isize) && i < (self.input[a] + self.pad_end[a]) as isize
    }
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.stride == [1; 3] && self.pad_begin == [0; 3]
    }
}

// ---------------------------------------------------------------------------------------------
// Conv

struct ConvOp {
    id: Ident,
    window: WindowAttrs,
    group: usize,
    /// `W` as `[M, C/group · K]` and its original shape, when constant.
    weights: Option<(Array2<f32>, Vec<usize>)>,
    bias: Option<Array1<f32>>,
}

fn build_conv(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let id = Ident::of(node);
    let group = node.attr_or::<i64>("group", 1)?;
    let group = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| node.error(format!("group {group} must be positive")))?;
    let c = |i: usize| ctx.const_inputs.get(i).copied().flatten();
    let weights = c(1).map(|w| conv_weights(w, &id)).transpose()?;
    let bias = c(2)
        .map(|b| float_input(b, "B", &id).map(|b| Array1::from_iter(b.iter().copied())))
        .transpose()?;
    Ok(Box::new(ConvOp {
        window: WindowAttrs::parse(node)?,
        id,
        group,
        weights,
        bias,
    }))
}

fn conv_weights(w: &Value, id: &Ident) -> Result<(Array2<f32>, Vec<usize>)> {
    let w = float_input(w, "W", id)?;
    let shape = w.shape().to_vec();
    if shape.len() < 3 {
        return Err(id.error(format!(
            "W has shape {shape:?}, expected [M, C/group, k...]"
        )));
    }
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    let w2 = w
        .into_shape_with_order((rows, cols))
        .map_err(|e| id.error(e.to_string()))?;
    Ok((w2, shape))
}

impl Op for ConvOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let xv = input(inputs, 0).ok_or_else(|| id.error("missing input X"))?;
        let x = float_input(xv, "X", id)?;
        let dynamic_w;
        let (w, wshape) = match &self.weights {
            Some((w, s)) => (w, s),
            None => {
                let w = input(inputs, 1).ok_or_else(|| id.error("missing input W"))?;
                dynamic_w = conv_weights(w, id)?;
                (&dynamic_w.0, &dynamic_w.1)
            }
        };
        let dynamic_b;
        let bias = match (&self.bias, input(inputs, 2)) {
            (Some(b), _) => Some(b),
            (None, Some(b)) => {
                dynamic_b = Array1::from_iter(float_input(b, "B", id)?.iter().copied());
                Some(&dynamic_b)
            }
            (None, None) => None,
        };
        let xs = x.shape().to_vec();
        if xs.len() != wshape.len() {
            return Err(id.error(format!(
                "X has shape {xs:?} but W has shape {wshape:?} (ranks differ)"
            )));
        }
        let (n, c, m, g) = (xs[0], xs[1], wshape[0], self.group);
        let cg = wshape[1];
        if c != cg * g || m % g != 0 {
            return Err(id.error(format!(
                "X has {c} channels and W shape {wshape:?}: not compatible with group {g}"
            )));
        }
        if let Some(b) = bias
            && b.len() != m
        {
            return Err(id.error(format!("B has {} values for {m} output channels", b.len())));
        }
        let kernel = &wshape[2..];
        if let Some(ks) = &self.window.kernel_shape
            && ks.as_slice() != kernel
        {
            return Err(id.error(format!(
                "kernel_shape {ks:?} disagrees with W shape {wshape:?}"
            )));
        }
        let geo = self.window.geometry(&xs[2..], kernel, id)?;
        let mut yshape = vec![n, m];
        yshape.extend_from_slice(geo.out_shape());
        let mut y = ArrayD::<f32>::zeros(IxDyn(&yshape));
        if y.is_empty() {
            // No images or no output channels: nothing to compute (and no chunking by zero).
            return Ok(vec![like(y, xv)]);
        }
        conv_f32(
            &geo,
            &ConvShape { n, cg, m, g },
            x.as_slice().unwrap_or(&[]),
            w,
            bias,
            y.as_slice_mut().unwrap_or(&mut []),
        )
        .map_err(|e| id.error(e))?;
        Ok(vec![like(y, xv)])
    }
}

struct ConvShape {
    n: usize,
    cg: usize,
    m: usize,
    g: usize,
}

/// The convolution proper on contiguous buffers: `x [N, C, in]`, `w [M, C/g·K]`,
/// `y [N, M, out]`. One GEMM per (image, group); images × groups run in parallel.
fn conv_f32(
    geo: &Geometry,
    s: &ConvShape,
    x: &[f32],
    w: &Array2<f32>,
    bias: Option<&Array1<f32>>,
    y: &mut [f32],
) -> std::result::Result<(), String> {
    let (p, k, isz) = (geo.out_size(), geo.kernel_size(), geo.in_size());
    let mg = s.m / s.g;
    let rows = s.cg * k;
    if x.len() != s.n * s.cg * s.g * isz || y.len() != s.n * s.m * p || w.ncols() != rows {
        return Err("internal shape mismatch".into());
    }
    // Split one big product over the pool's threads by output columns.
    let split = s.n * s.g == 1 && mg * p * rows >= 1 << 20 && rayon::current_num_threads() > 1;
    let task = |(idx, out): (usize, &mut [f32])| {
        let (img, grp) = (idx / s.g, idx % s.g);
        let xin = &x[(img * s.g + grp) * s.cg * isz..][..s.cg * isz];
        if mg == 1 && s.cg == 1 {
            let wrow = w.row(grp);
            if let Some(wrow) = wrow.as_slice() {
                depthwise(geo, xin, wrow, bias.map(|b| b[grp]), out);
                return;
            }
        }
        let wg = w.slice(ndarray::s![grp * mg..(grp + 1) * mg, ..]);
        let mut yg = ArrayViewMut2::from_shape((mg, p), out).expect("chunk is mg*p");
        if let Some(b) = bias {
            for (r, mut row) in yg.rows_mut().into_iter().enumerate() {
                row.fill(b[grp * mg + r]);
            }
        }
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        let owned_col;
        let col = if geo.is_pointwise() {
            ArrayView2::from_shape((s.cg, p), xin).expect("pointwise input is cg*p")
        } else {
            let mut col = vec![0f32; rows * p];
            im2col(geo, xin, s.cg, &mut col);
            owned_col = col;
            ArrayView2::from_shape((rows, p), &owned_col).expect("col is rows*p")
        };
        if split {
            let chunk = p.div_ceil(rayon::current_num_threads() * 2).max(64);
            let parts: Vec<_> = yg
                .axis_chunks_iter_mut(ndarray::Axis(1), chunk)
                .zip(col.axis_chunks_iter(ndarray::Axis(1), chunk))
                .collect();
            parts.into_par_iter().for_each(|(mut yc, cc)| {
                general_mat_mul(1.0, &wg, &cc, beta, &mut yc);
            });
        } else {
            general_mat_mul(1.0, &wg, &col, beta, &mut yg);
        }
    };
    if s.n * s.g > 1 && s.m * p * rows >= 1 << 16 {
        y.par_chunks_mut(mg * p).enumerate().for_each(task);
    } else {
        y.chunks_mut(mg * p).enumerate().for_each(task);
    }
    Ok(())
}

/// Lays out the receptive fields of `channels` planes of `x` as the columns of
/// `col [channels·K, P]` (zero where a tap falls in the padding).
fn im2col(geo: &Geometry, x: &[f32], channels: usize, col: &mut [f32]) {
    let [id_, ih_, iw_] = geo.input;
    let [od, oh, ow] = geo.output;
    let [kd, kh, kw] = geo.kernel;
    let p = od * oh * ow;
    let sx = geo.stride[2];
    // Per kernel column: the output x range whose tap lands inside the image, and the input
    // x of its first element; outside it the column is padding (zero).
    let xr: Vec<(usize, usize, usize)> = (0..kw)
        .map(|e| {
            let inside = |o: usize| geo.inside(2, geo.coord(2, o, e));
            match (
                (0..ow).find(|&o| inside(o)),
                (0..ow).rev().find(|&o| inside(o)),
            ) {
                (Some(lo), Some(last)) => (lo, last + 1, geo.coord(2, lo, e) as usize),
                _ => (0, 0, 0),
            }
        })
        .collect();
    let mut row = 0;
    for c in 0..channels {
        let plane = &x[c * id_ * ih_ * iw_..][..id_ * ih_ * iw_];
        for a in 0..kd {
            for b in 0..kh {
                for &(lo, hi, first) in &xr {
                    let dst = &mut col[row * p..][..p];
                    row += 1;
                    for z in 0..od {
                        let iz = geo.coord(0, z, a);
                        let dz = &mut dst[z * oh * ow..][..oh * ow];
                        if !geo.inside(0, iz) {
                            dz.fill(0.0);
                            continue;
                        }
                        for yy in 0..oh {
                            let iy = geo.coord(1, yy, b);
                            let dy = &mut dz[yy * ow..][..ow];
                            if !geo.inside(1, iy) {
                                dy.fill(0.0);
                                continue;
                            }
                            let src = &plane[(iz as usize * ih_ + iy as usize) * iw_..][..iw_];
                            dy[..lo].fill(0.0);
                            dy[hi..].fill(0.0);
                            if sx == 1 {
                                dy[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                            } else {
                                for (j, v) in dy[lo..hi].iter_mut().enumerate() {
                                    *v = src[first + j * sx];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling

struct PoolOp {
    id: Ident,
    window: WindowAttrs,
    kind: PoolKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoolKind {
    /// `indices`: the node names the optional `Indices` output.
    Max {
        column_major: bool,
        indices: bool,
    },
    Average {
        count_include_pad: bool,
    },
    GlobalAverage,
}

fn build_max_pool(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let window = WindowAttrs::parse(node)?;
    if window.kernel_shape.is_none() {
        return Err(node.error("missing required attribute 'kernel_shape'"));
    }
    Ok(Box::new(PoolOp {
        id: Ident::of(node),
        window,
        kind: PoolKind::Max {
            column_major: node.attr_or::<i64>("storage_order", 0)? == 1,
            indices: node.outputs().get(1).is_some_and(|n| !n.is_empty()),
        },
    }))
}

fn build_average_pool(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let window = WindowAttrs::parse(node)?;
    if window.kernel_shape.is_none() {
        return Err(node.error("missing required attribute 'kernel_shape'"));
    }
    Ok(Box::new(PoolOp {
        id: Ident::of(node),
        window,
        kind: PoolKind::Average {
            count_include_pad: node.attr_or::<i64>("count_include_pad", 0)? != 0,
        },
    }))
}

fn build_global_average_pool(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(PoolOp {
        id: Ident::of(node),
        window: WindowAttrs {
            auto_pad: AutoPad::Valid,
            kernel_shape: None,
            pads: None,
            strides: None,
            dilations: None,
            ceil_mode: false,
        },
        kind: PoolKind::GlobalAverage,
    }))
}

impl PoolOp {
    fn geometry(&self, shape: &[usize]) -> Result<Geometry> {
        if shape.len() < 3 {
            return Err(self.id.error(format!(
                "X has shape {shape:?}, expected [N, C, spatial...]"
            )));
        }
        let spatial = &shape[2..];
        let kernel = match (&self.kind, &self.window.kernel_shape) {
            (PoolKind::GlobalAverage, _) => spatial.to_vec(),
            (_, Some(k)) => k.clone(),
            (_, None) => return Err(self.id.error("missing kernel_shape")),
        };
        self.window.geometry(spatial, &kernel, &self.id)
    }

    fn out_shape(shape: &[usize], geo: &Geometry) -> Vec<usize> {
        let mut s = shape[..2].to_vec();
        s.extend_from_slice(geo.out_shape());
        s
    }
}

impl Op for PoolOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let xv = input(inputs, 0).ok_or_else(|| self.id.error("missing input X"))?;
        let shape = xv.shape().to_vec();
        let geo = self.geometry(&shape)?;
        let planes = shape[0] * shape[1];
        let oshape = Self::out_shape(&shape, &geo);
        match self.kind {
            PoolKind::Max {
                column_major,
                indices,
            } => {
                let column_major = indices.then_some(column_major);
                let (y, idx) = match xv {
                    Value::F32(a) => max_pool_typed(a, &geo, planes, column_major, Value::F32),
                    Value::F64(a) => max_pool_typed(a, &geo, planes, column_major, Value::F64),
                    Value::F16(a) => max_pool_typed(a, &geo, planes, column_major, Value::F16),
                    Value::I8(a) => max_pool_typed(a, &geo, planes, column_major, Value::I8),
                    Value::U8(a) => max_pool_typed(a, &geo, planes, column_major, Value::U8),
                    other => {
                        return Err(self
                            .id
                            .error(format!("X has unsupported type {:?}", other.dtype())));
                    }
                };
                let reshape = |v: Value| -> Result<Value> {
                    Ok(match v {
                        Value::F32(a) => Value::F32(reshaped(a, &oshape, &self.id)?),
                        Value::F64(a) => Value::F64(reshaped(a, &oshape, &self.id)?),
                        Value::F16(a) => Value::F16(reshaped(a, &oshape, &self.id)?),
                        Value::I8(a) => Value::I8(reshaped(a, &oshape, &self.id)?),
                        Value::U8(a) => Value::U8(reshaped(a, &oshape, &self.id)?),
                        Value::I64(a) => Value::I64(reshaped(a, &oshape, &self.id)?),
                        v => v,
                    })
                };
                let mut outs = vec![reshape(y)?];
                if let Some(idx) = idx {
                    outs.push(reshape(Value::I64(idx))?);
                }
                Ok(outs)
            }
            PoolKind::Average { count_include_pad } => {
                let x = float_input(xv, "X", &self.id)?;
                let y = avg_pool(x.as_slice().unwrap_or(&[]), &geo, planes, count_include_pad);
                Ok(vec![like(reshaped(y, &oshape, &self.id)?, xv)])
            }
            PoolKind::GlobalAverage => {
                let x = float_input(xv, "X", &self.id)?;
                let n = geo.in_size();
                let y: Vec<f32> = x
                    .as_slice()
                    .unwrap_or(&[])
                    .chunks(n.max(1))
                    .map(|c| c.iter().sum::<f32>() / n as f32)
                    .collect();
                let mut oshape = shape[..2].to_vec();
                oshape.extend(std::iter::repeat_n(1, geo.rank));
                let y = ArrayD::from_shape_vec(IxDyn(&oshape), y)
                    .map_err(|e| self.id.error(e.to_string()))?;
                Ok(vec![like(y, xv)])
            }
        }
    }
}

fn reshaped<T>(a: ArrayD<T>, shape: &[usize], id: &Ident) -> Result<ArrayD<T>> {
    a.into_shape_with_order(IxDyn(shape))
        .map_err(|e| id.error(e.to_string()))
}

/// Per output index on one axis: the input coordinate of tap 0 (negative inside the begin
/// padding) and the range of taps that land inside the image, so that window loops need no
/// per-tap bounds checks.
struct AxisTaps {
    start: Vec<isize>,
    lo: Vec<usize>,
    hi: Vec<usize>,
    /// Taps inside the explicitly padded image (AveragePool's `count_include_pad` divisor).
    padded: Vec<usize>,
}

impl AxisTaps {
    fn new(geo: &Geometry, a: usize) -> Self {
        let (k, d) = (geo.kernel[a], geo.dilation[a] as isize);
        let n = geo.output[a];
        let mut t = AxisTaps {
            start: Vec::with_capacity(n),
            lo: Vec::with_capacity(n),
            hi: Vec::with_capacity(n),
            padded: Vec::with_capacity(n),
        };
        for o in 0..n {
            let st = geo.coord(a, o, 0);
            let taps = (0..k).map(|j| st + j as isize * d);
            let lo = taps.clone().take_while(|&i| !geo.inside(a, i)).count();
            let inside = taps.clone().filter(|&i| geo.inside(a, i)).count();
            t.start.push(st);
            t.lo.push(lo);
            t.hi.push(lo + inside);
            t.padded
                .push(taps.filter(|&i| geo.inside_padded(a, i)).count());
        }
        t
    }
}

/// Calls `f(output index, input offset)` for each in-image tap of each output window.
#[inline]
fn for_windows(geo: &Geometry, mut f: impl FnMut(usize, usize)) {
    let taps = [0, 1, 2].map(|a| AxisTaps::new(geo, a));
    let [_, ih, iw] = geo.input;
    let d = geo.dilation;
    let [tz, ty, tx] = &taps;
    let mut out = 0;
    for z in 0..geo.output[0] {
        for y in 0..geo.output[1] {
            for x in 0..geo.output[2] {
                for kz in tz.lo[z]..tz.hi[z] {
                    let iz = (tz.start[z] + (kz * d[0]) as isize) as usize;
                    for ky in ty.lo[y]..ty.hi[y] {
                        let iy = (ty.start[y] + (ky * d[1]) as isize) as usize;
                        let row = (iz * ih + iy) * iw;
                        for kx in tx.lo[x]..tx.hi[x] {
                            f(out, row + (tx.start[x] + (kx * d[2]) as isize) as usize);
                        }
                    }
                }
                out += 1;
            }
        }
    }
}

/// Max pooling over `planes` contiguous planes; returns values and, when `column_major` is
/// given, the flat argmax indices (row-major, or column-major over the spatial axes).
fn max_pool_typed<T: Copy + PartialOrd + Send + Sync>(
    a: &ArrayD<T>,
    geo: &Geometry,
    planes: usize,
    column_major: Option<bool>,
    wrap: fn(ArrayD<T>) -> Value,
) -> (Value, Option<ArrayD<i64>>) {
    let x = a.as_standard_layout();
    let x = x.as_slice().unwrap_or(&[]);
    let Some(column_major) = column_major else {
        let vals = max_pool_values(x, geo, planes);
        let n = vals.len();
        return (
            wrap(ArrayD::from_shape_vec(IxDyn(&[n]), vals).expect("1-D")),
            None,
        );
    };
    let (isz, osz) = (geo.in_size(), geo.out_size());
    let [id_, ih, iw] = geo.input;
    let mut vals = Vec::with_capacity(planes * osz);
    let mut idx = Vec::with_capacity(planes * osz);
    let taps = [0, 1, 2].map(|a| AxisTaps::new(geo, a));
    let [tz, ty, tx] = &taps;
    let [_, _, ow] = geo.output;
    let dil = geo.dilation;
    // Per output row: best value, its offset, and whether any tap was seen yet.
    let mut best: Vec<(T, usize)> = Vec::with_capacity(ow);
    let mut seen = vec![false; ow];
    for p in 0..planes {
        let plane = &x[p * isz..][..isz];
        for z in 0..geo.output[0] {
            for y in 0..geo.output[1] {
                best.clear();
                best.resize(ow, (plane[0], 0));
                seen.fill(false);
                for kz in tz.lo[z]..tz.hi[z] {
                    let iz = (tz.start[z] + (kz * dil[0]) as isize) as usize;
                    for ky in ty.lo[y]..ty.hi[y] {
                        let iy = (ty.start[y] + (ky * dil[1]) as isize) as usize;
                        let row = &plane[(iz * ih + iy) * iw..][..iw];
                        for (xo, (b, s)) in best.iter_mut().zip(seen.iter_mut()).enumerate() {
                            for kx in tx.lo[xo]..tx.hi[xo] {
                                let ix = (tx.start[xo] + (kx * dil[2]) as isize) as usize;
                                let v = row[ix];
                                if !*s || v > b.0 {
                                    *b = (v, (iz * ih + iy) * iw + ix);
                                    *s = true;
                                }
                            }
                        }
                    }
                }
                // A window without in-image taps (only possible in degenerate dilated
                // cases) keeps the plane's first element.
                for &(v, off) in &best {
                    let flat = if column_major {
                        let (z, rest) = (off / (ih * iw), off % (ih * iw));
                        let (y, xx) = (rest / iw, rest % iw);
                        z + y * id_ + xx * id_ * ih
                    } else {
                        off
                    };
                    vals.push(v);
                    idx.push((p * isz + flat) as i64);
                }
            }
        }
    }
    let n = vals.len();
    (
        wrap(ArrayD::from_shape_vec(IxDyn(&[n]), vals).expect("1-D")),
        Some(ArrayD::from_shape_vec(IxDyn(&[n]), idx).expect("1-D")),
    )
}

/// Max pooling values only, separably: per output row, the element-wise max over the
/// window's input rows (vectorizes), then the max over each window's columns of that.
fn max_pool_values<T: Copy + PartialOrd>(x: &[T], geo: &Geometry, planes: usize) -> Vec<T> {
    let (isz, osz) = (geo.in_size(), geo.out_size());
    let [_, ih, iw] = geo.input;
    let taps = [0, 1, 2].map(|a| AxisTaps::new(geo, a));
    let [tz, ty, tx] = &taps;
    let dil = geo.dilation;
    let mut vals = Vec::with_capacity(planes * osz);
    let mut colmax: Vec<T> = Vec::with_capacity(iw);
    for p in 0..planes {
        let plane = &x[p * isz..][..isz];
        for z in 0..geo.output[0] {
            for y in 0..geo.output[1] {
                colmax.clear();
                for kz in tz.lo[z]..tz.hi[z] {
                    let iz = (tz.start[z] + (kz * dil[0]) as isize) as usize;
                    for ky in ty.lo[y]..ty.hi[y] {
                        let iy = (ty.start[y] + (ky * dil[1]) as isize) as usize;
                        let row = &plane[(iz * ih + iy) * iw..][..iw];
                        if colmax.is_empty() {
                            colmax.extend_from_slice(row);
                        } else {
                            for (m, &v) in colmax.iter_mut().zip(row) {
                                *m = if v > *m { v } else { *m };
                            }
                        }
                    }
                }
                for xo in 0..geo.output[2] {
                    let mut best: Option<T> = None;
                    if !colmax.is_empty() {
                        for kx in tx.lo[xo]..tx.hi[xo] {
                            let v = colmax[(tx.start[xo] + (kx * dil[2]) as isize) as usize];
                            if best.is_none_or(|b| v > b) {
                                best = Some(v);
                            }
                        }
                    }
                    // A window without in-image taps (degenerate dilated cases) yields the
                    // plane's first element, as in the indexed path.
                    vals.push(best.unwrap_or(plane[0]));
                }
            }
        }
    }
    vals
}

fn avg_pool(x: &[f32], geo: &Geometry, planes: usize, count_include_pad: bool) -> ArrayD<f32> {
    let (isz, osz) = (geo.in_size(), geo.out_size());
    // The divisor is separable: a product over axes of the counted taps.
    let taps = [0, 1, 2].map(|a| AxisTaps::new(geo, a));
    let count = |t: &AxisTaps, o: usize| {
        if count_include_pad {
            t.padded[o]
        } else {
            t.hi[o] - t.lo[o]
        }
    };
    let mut divisors = Vec::with_capacity(osz);
    for z in 0..geo.output[0] {
        for y in 0..geo.output[1] {
            for xx in 0..geo.output[2] {
                let n = count(&taps[0], z) * count(&taps[1], y) * count(&taps[2], xx);
                divisors.push(n.max(1) as f32);
            }
        }
    }
    let mut y = vec![0f32; planes * osz];
    for (p, out) in y.chunks_mut(osz.max(1)).enumerate() {
        let plane = &x[p * isz..][..isz];
        for_windows(geo, |o, off| out[o] += plane[off]);
        for (v, d) in out.iter_mut().zip(&divisors) {
            *v /= d;
        }
    }
    let n = y.len();
    ArrayD::from_shape_vec(IxDyn(&[n]), y).expect("1-D")
}

/// Depthwise convolution (one input and one output channel per group) computed directly:
/// per kernel tap, an axpy over the output row range where the tap lands in the image.
fn depthwise(geo: &Geometry, x: &[f32], w: &[f32], bias: Option<f32>, out: &mut [f32]) {
    let [_, ih, iw] = geo.input;
    let [od, oh, ow] = geo.output;
    let [kd, kh, kw] = geo.kernel;
    let sx = geo.stride[2];
    out.fill(bias.unwrap_or(0.0));
    // Output x range per kernel column where the tap is inside the image.
    let xr: Vec<(usize, usize)> = (0..kw)
        .map(|e| {
            let first = (0..ow).find(|&o| geo.inside(2, geo.coord(2, o, e)));
            let last = (0..ow).rev().find(|&o| geo.inside(2, geo.coord(2, o, e)));
            match (first, last) {
                (Some(f), Some(l)) => (f, l + 1),
                _ => (0, 0),
            }
        })
        .collect();
    for z in 0..od {
        for y in 0..oh {
            let orow = &mut out[(z * oh + y) * ow..][..ow];
            for a in 0..kd {
                let iz = geo.coord(0, z, a);
                if !geo.inside(0, iz) {
                    continue;
                }
                for b in 0..kh {
                    let iy = geo.coord(1, y, b);
                    if !geo.inside(1, iy) {
                        continue;
                    }
                    let irow = &x[(iz as usize * ih + iy as usize) * iw..][..iw];
                    for (e, &(lo, hi)) in xr.iter().enumerate() {
                        let wv = w[(a * kh + b) * kw + e];
                        let base = geo.coord(2, lo, e) as usize;
                        if sx == 1 {
                            let src = &irow[base..base + (hi - lo)];
                            for (o, &v) in orow[lo..hi].iter_mut().zip(src) {
                                *o += wv * v;
                            }
                        } else {
                            for (j, o) in orow[lo..hi].iter_mut().enumerate() {
                                *o += wv * irow[base + j * sx];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_int, attr_ints, attr_string};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn arr(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), values(n, seed)).unwrap()
    }

    fn run(n: &Node, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut r = Registry::default();
        register(&mut r);
        let b = r.get("", n.op_type()).expect("registered");
        let ctx = BuildCtx {
            opset: 22,
            const_inputs: vec![None; inputs.len()],
        };
        b(n, &ctx)?.run(inputs)
    }

    fn conv_node(attrs: Vec<crate::onnx::AttributeProto>) -> Node {
        let mut n = Node::new(
            "c",
            "Conv",
            "",
            vec!["X".into(), "W".into(), "B".into()],
            vec!["Y".into()],
        );
        for a in attrs {
            n = n.with_attr(a);
        }
        n
    }

    /// Direct convolution by definition, any rank, explicit pads.
    fn naive_conv(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        b: &[f32],
        group: usize,
        pads: &[usize],
        strides: &[usize],
        dil: &[usize],
    ) -> ArrayD<f32> {
        let r = x.ndim() - 2;
        let (n, c, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
        let (cg, mg) = (c / group, m / group);
        let out: Vec<usize> = (0..r)
            .map(|a| {
                let eff = (w.shape()[2 + a] - 1) * dil[a] + 1;
                (x.shape()[2 + a] + pads[a] + pads[r + a] - eff) / strides[a] + 1
            })
            .collect();
        let mut yshape = vec![n, m];
        yshape.extend(&out);
        let mut y = ArrayD::<f32>::zeros(IxDyn(&yshape));
        let idx_space = |dims: &[usize]| -> Vec<Vec<usize>> {
            dims.iter().fold(vec![vec![]], |acc, &d| {
                acc.into_iter()
                    .flat_map(|p| {
                        (0..d).map(move |i| {
                            let mut q = p.clone();
                            q.push(i);
                            q
                        })
                    })
                    .collect()
            })
        };
        for yi in idx_space(&yshape) {
            let (img, oc) = (yi[0], yi[1]);
            let grp = oc / mg;
            let mut s = b.get(oc).copied().unwrap_or(0.0);
            for ci in 0..cg {
                for k in idx_space(&w.shape()[2..]) {
                    let pos: Vec<isize> = (0..r)
                        .map(|a| {
                            (yi[2 + a] * strides[a] + k[a] * dil[a]) as isize - pads[a] as isize
                        })
                        .collect();
                    if pos
                        .iter()
                        .enumerate()
                        .all(|(a, &p)| p >= 0 && (p as usize) < x.shape()[2 + a])
                    {
                        let mut xi = vec![img, grp * cg + ci];
                        xi.extend(pos.iter().map(|&p| p as usize));
                        let mut wi = vec![oc, ci];
                        wi.extend(&k);
                        s += x[IxDyn(&xi)] * w[IxDyn(&wi)];
                    }
                }
            }
            y[IxDyn(&yi)] = s;
        }
        y
    }

    #[test]
    fn conv_matches_direct_definition() {
        // (x shape, w shape, group, pads, strides, dilations)
        type Case = (
            Vec<usize>,
            Vec<usize>,
            usize,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![2, 4, 9],
                vec![6, 2, 3],
                2,
                vec![1, 2],
                vec![2],
                vec![2],
            ),
            (
                vec![1, 3, 7, 6],
                vec![4, 3, 3, 2],
                1,
                vec![1, 0, 2, 1],
                vec![2, 1],
                vec![1, 2],
            ),
            (
                vec![2, 6, 5, 5],
                vec![6, 1, 3, 3],
                6,
                vec![1, 1, 1, 1],
                vec![1, 1],
                vec![1, 1],
            ),
            (
                vec![1, 4, 4, 5],
                vec![2, 4, 1, 1],
                1,
                vec![0; 4],
                vec![1, 1],
                vec![1, 1],
            ),
            (
                vec![1, 2, 4, 5, 3],
                vec![3, 2, 2, 3, 2],
                1,
                vec![1, 0, 1, 0, 1, 1],
                vec![1, 2, 1],
                vec![1, 1, 2],
            ),
            // Large enough for the column-split path (one image, one group).
            (
                vec![1, 8, 16, 16],
                vec![64, 8, 3, 3],
                1,
                vec![1; 4],
                vec![1, 1],
                vec![1, 1],
            ),
            // Depthwise, strided and dilated.
            (
                vec![1, 3, 9, 8],
                vec![3, 1, 3, 2],
                3,
                vec![2, 1, 0, 1],
                vec![2, 3],
                vec![2, 2],
            ),
            // Large enough for the parallel path.
            (
                vec![2, 8, 16, 16],
                vec![16, 4, 3, 3],
                2,
                vec![1; 4],
                vec![1, 1],
                vec![1, 1],
            ),
        ];
        for (i, (xs, ws, group, pads, strides, dil)) in cases.into_iter().enumerate() {
            let x = arr(&xs, 10 + i as u64);
            let w = arr(&ws, 20 + i as u64);
            let b = values(ws[0], 30 + i as u64);
            let bv = Value::F32(ArrayD::from_shape_vec(IxDyn(&[ws[0]]), b.clone()).unwrap());
            let n = conv_node(vec![
                attr_int("group", group as i64),
                attr_ints("pads", pads.iter().map(|&p| p as i64).collect()),
                attr_ints("strides", strides.iter().map(|&p| p as i64).collect()),
                attr_ints("dilations", dil.iter().map(|&p| p as i64).collect()),
            ]);
            let (xv, wv) = (Value::F32(x.clone()), Value::F32(w.clone()));
            let got = run(&n, &[Some(&xv), Some(&wv), Some(&bv)]).unwrap();
            let want = naive_conv(&x, &w, &b, group, &pads, &strides, &dil);
            let got = got[0].as_f32().unwrap();
            assert_eq!(got.shape(), want.shape(), "case {i}");
            for (a, b) in got.iter().zip(want.iter()) {
                assert!((a - b).abs() < 1e-4, "case {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn same_padding_puts_the_odd_pad_where_asked() {
        let id = Ident {
            node: "n".into(),
            op: "Conv".into(),
        };
        let mut w = WindowAttrs {
            auto_pad: AutoPad::SameUpper,
            kernel_shape: None,
            pads: None,
            strides: Some(vec![2]),
            dilations: None,
            ceil_mode: false,
        };
        // in 6, k 4, s 2: out 3, total pad (3-1)*2+4-6 = 2 -> 1/1; in 7: out 4, pad 3.
        let g = w.geometry(&[7], &[4], &id).unwrap();
        assert_eq!((g.pad_begin[2], g.pad_end[2], g.output[2]), (1, 2, 4));
        w.auto_pad = AutoPad::SameLower;
        let g = w.geometry(&[7], &[4], &id).unwrap();
        assert_eq!((g.pad_begin[2], g.pad_end[2], g.output[2]), (2, 1, 4));
        w.auto_pad = AutoPad::Valid;
        let g = w.geometry(&[7], &[4], &id).unwrap();
        assert_eq!((g.pad_begin[2], g.output[2]), (0, 2));
        assert!(w.geometry(&[3], &[4], &id).is_err());
    }

    #[test]
    fn max_pool_indices_follow_storage_order() {
        let x = Value::F32(
            ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 3]), vec![1.0, 5.0, 2.0, 4.0, 3.0, 6.0])
                .unwrap(),
        );
        let mk = |order: i64| {
            Node::new(
                "p",
                "MaxPool",
                "",
                vec!["X".into()],
                vec!["Y".into(), "I".into()],
            )
            .with_attr(attr_ints("kernel_shape", vec![2, 2]))
            .with_attr(attr_int("storage_order", order))
        };
        let out = run(&mk(0), &[Some(&x)]).unwrap();
        assert_eq!(
            out[0].as_f32().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![5.0, 6.0]
        );
        assert_eq!(
            out[1].as_i64().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![1, 5]
        );
        let out = run(&mk(1), &[Some(&x)]).unwrap();
        // Column-major over (h, w): index = h + w * H.
        assert_eq!(
            out[1].as_i64().unwrap().iter().copied().collect::<Vec<_>>(),
            vec![2, 5]
        );
    }

    #[test]
    fn average_pool_divisor_counts_pads_only_when_asked() {
        let x = Value::F32(ArrayD::from_elem(IxDyn(&[1, 1, 3]), 3.0));
        let mk = |include: i64| {
            Node::new("p", "AveragePool", "", vec!["X".into()], vec!["Y".into()])
                .with_attr(attr_ints("kernel_shape", vec![2]))
                .with_attr(attr_ints("pads", vec![1, 1]))
                .with_attr(attr_int("count_include_pad", include))
        };
        let y = run(&mk(0), &[Some(&x)]).unwrap();
        assert_eq!(
            y[0].as_f32().unwrap().as_slice().unwrap(),
            &[3.0, 3.0, 3.0, 3.0]
        );
        let y = run(&mk(1), &[Some(&x)]).unwrap();
        assert_eq!(
            y[0].as_f32().unwrap().as_slice().unwrap(),
            &[1.5, 3.0, 3.0, 1.5]
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = Value::F32(arr(&[1, 4, 5, 5], 1));
        let w = Value::F32(arr(&[4, 3, 3, 3], 2));
        let e = run(&conv_node(vec![]), &[Some(&x), Some(&w)]).unwrap_err();
        assert!(e.to_string().contains("'c'"), "{e}");
        let w = Value::F32(arr(&[4, 4, 7, 7], 3));
        assert!(run(&conv_node(vec![]), &[Some(&x), Some(&w)]).is_err());
        let w = Value::F32(arr(&[4, 4, 3], 4));
        assert!(run(&conv_node(vec![]), &[Some(&x), Some(&w)]).is_err());
        let n = conv_node(vec![attr_string("auto_pad", "SAME")]);
        assert!(run(&n, &[Some(&x), Some(&w)]).is_err());
        let pool = Node::new("p", "MaxPool", "", vec!["X".into()], vec!["Y".into()]);
        assert!(run(&pool, &[Some(&x)]).is_err());
        let s = Value::I64(ArrayD::from_elem(IxDyn(&[1, 2, 3]), 1));
        let gap = Node::new(
            "g",
            "GlobalAveragePool",
            "",
            vec!["X".into()],
            vec!["Y".into()],
        );
        assert!(run(&gap, &[Some(&s)]).is_err());
        let y = run(&gap, &[Some(&x)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 4, 1, 1]);
        // Empty batches and zero output channels are fine, empty spatial axes are errors.
        let x0 = Value::F32(arr(&[0, 4, 5, 5], 5));
        let w = Value::F32(arr(&[2, 4, 3, 3], 6));
        let y = run(&conv_node(vec![]), &[Some(&x0), Some(&w)]).unwrap();
        assert_eq!(y[0].shape(), &[0, 2, 3, 3]);
        let w0 = Value::F32(arr(&[0, 4, 3, 3], 7));
        let y = run(&conv_node(vec![]), &[Some(&x), Some(&w0)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 0, 3, 3]);
        let xe = Value::F32(arr(&[1, 4, 0, 5], 8));
        assert!(run(&conv_node(vec![]), &[Some(&xe), Some(&w)]).is_err());
        let mp = Node::new("p", "MaxPool", "", vec!["X".into()], vec!["Y".into()])
            .with_attr(attr_ints("kernel_shape", vec![2, 2]));
        assert!(run(&mp, &[Some(&xe)]).is_err());
        assert_eq!(run(&mp, &[Some(&x0)]).unwrap()[0].shape(), &[0, 4, 4, 4]);
    }
}
