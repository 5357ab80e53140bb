//! Quantization ops of the default domain.
//!
//! - `DynamicQuantizeLinear` (11): float in, uint8 out with scalar scale and zero point:
//!   `scale = (max(0, max x) - min(0, min x)) / 255`,
//!   `zp = saturate(round_half_even(0 - min(0, min x) / scale))`,
//!   `y = saturate(round_half_even(x / scale) + zp)`. For an all-zero (or empty) input the
//!   range is 0: we follow the ONNX reference implementation (checked with
//!   `onnx.reference.ReferenceEvaluator`), which reports scale 1/255 and zero point 0;
//!   onnxruntime's kernel reports scale 1.0. Both quantize every element to 0 and dequantize to
//!   the same zeros, so only the scale output itself differs.
//! - `MatMulInteger` (10): A and B each int8 or uint8, optional `a_zero_point` (scalar or one per
//!   row of A, `[M]`) and `b_zero_point` (scalar or one per column of B, `[N]`); int32 out;
//!   numpy `matmul` broadcasting over batch dims and 1-D promotion. Every type combination runs
//!   on the int8 GEMM kernels ([`gemm_i8`]); a constant 2-D B is packed once when the node is
//!   planned.
//! - `ConvInteger` (10): `Conv` on `(x - x_zero_point)` and `(w - w_zero_point)` (w's zero point
//!   scalar or one per output channel) with int32 output and no bias. Padding uses the value
//!   `x_zero_point` (so padded taps contribute 0), as onnxruntime does. Computed as im2col
//!   (one row per output position) times the packed transposed weights.
//! - `QuantizeLinear` (10, 13, 19, 21): `y = saturate(round_half_even(x / scale) + zp)`, int8,
//!   uint8, int16 or uint16 (from the zero point's type, else `output_dtype`, else uint8); x
//!   and scale f32, f16 or bf16 (x also int32); scale and zero point per tensor, per `axis`
//!   (1-D of the axis' length) or, from 21, per block of `block_size` elements along `axis`
//!   (parameters of x's rank with `ceil(dim / block_size)` entries on the axis). The division
//!   is in f32 as onnxruntime does it. The float8/int4 types are not supported.
//! - `DequantizeLinear` (10, 13, 19, 21): `y = (x - zp) * scale` for int8, uint8, int16, uint16
//!   and int32 x (int32 has no zero point), per tensor, per axis or per block; the output has
//!   the scale's type (f32, f16 or bf16).
//! - `QLinearMatMul` (10): `y = saturate(round_half_even((a - za)(b - zb) · sa·sb / sy) + zy)`,
//!   with per-tensor or per-row/per-column scales and zero points for A/B and per-tensor for Y.

use half::f16;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::{self, AInput, PackedB};

use super::util::{broadcast_shape, cast, dname, dtype_of, err, norm_axis, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "DynamicQuantizeLinear", build_dql);
    r.register("", "MatMulInteger", build_matmul_integer);
    r.register("", "ConvInteger", build_conv_integer);
    r.register("", "QuantizeLinear", build_quantize);
    r.register("", "DequantizeLinear", build_dequantize);
    r.register("", "QLinearMatMul", build_qlinear_matmul);
}

// ---------------------------------------------------------------------------------------------
// DynamicQuantizeLinear

/// Scale and zero point of `DynamicQuantizeLinear` for data in `[min, max]` (both already
/// widened to include 0). Public for the com.microsoft ops that quantize the same way.
pub fn dynamic_params(min: f32, max: f32) -> (f32, u8) {
    let scale = (max - min) / 255.0;
    if scale == 0.0 {
        // Zero range (all-zero input): the ONNX reference's scale; see the module doc.
        return (1.0 / 255.0, 0);
    }
    if !scale.is_finite() {
        return (scale, 0);
    }
    let zp = (0.0 - min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Quantizes `x` to uint8 the `DynamicQuantizeLinear` way: returns (y, scale, zero point).
pub fn dynamic_quantize(x: &[f32]) -> (Vec<u8>, f32, u8) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, zp) = dynamic_params(lo, hi);
    let y = if lo == hi || !scale.is_finite() {
        vec![zp; x.len()]
    } else {
        x.iter()
            .map(|&v| saturate_u8((v / scale).round_ties_even() + f32::from(zp)))
            .collect()
    };
    (y, scale, zp)
}

fn saturate_u8(v: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    v.clamp(0.0, 255.0) as u8
}

fn build_dql(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let x = match x {
            Value::F32(a) => a.clone(),
            Value::F16(a) => a.mapv(f16::to_f32),
            other => {
                return Err(err(format!(
                    "DynamicQuantizeLinear needs a float input, got {}",
                    dname(other)
                )));
            }
        };
        let x = standard(x.view());
        let data = x.as_slice().unwrap_or(&[]);
        let (y, scale, zp) = dynamic_quantize(data);
        Ok(vec![
            Value::U8(ArrayD::from_shape_vec(IxDyn(x.shape()), y).map_err(|e| err(e.to_string()))?),
            Value::scalar_f32(scale),
            Value::U8(ArrayD::from_elem(IxDyn(&[]), zp)),
        ])
    })))
}

// ---------------------------------------------------------------------------------------------
// Integer matrix products

/// An 8-bit operand as plain vectors (standard layout), either signedness.
#[derive(Clone)]
pub enum Int8Array {
    U8(ArrayD<u8>),
    I8(ArrayD<i8>),
}

impl Int8Array {
    pub fn from_value(v: &Value, what: &str) -> Result<Self> {
        match v {
            Value::U8(a) => Ok(Int8Array::U8(standard(a.view()))),
            Value::I8(a) => Ok(Int8Array::I8(standard(a.view()))),
            other => Err(err(format!(
                "{what} must be int8 or uint8, got {}",
                dname(other)
            ))),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Int8Array::U8(a) => a.shape(),
            Int8Array::I8(a) => a.shape(),
        }
    }

    pub fn is_u8(&self) -> bool {
        matches!(self, Int8Array::U8(_))
    }
}

/// Zero points as i32 (len 0, 1 or per row/column), checked to match the operand's type.
pub fn zero_points(v: Option<&Value>, operand_u8: bool, what: &str) -> Result<Vec<i32>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::U8(a)) if operand_u8 => Ok(a.iter().map(|&z| i32::from(z)).collect()),
        Some(Value::I8(a)) if !operand_u8 => Ok(a.iter().map(|&z| i32::from(z)).collect()),
        Some(other) => Err(err(format!(
            "{what} has type {} but its operand is {}",
            dname(other),
            if operand_u8 { "uint8" } else { "int8" }
        ))),
    }
}

/// Packs a 2-D B `[k, n]` with its zero points (i32 values already checked to fit the type).
fn pack_b(
    b: &Int8Array,
    slice: std::ops::Range<usize>,
    k: usize,
    n: usize,
    zb: &[i32],
) -> Result<PackedB> {
    match b {
        Int8Array::U8(a) => {
            let z: Vec<u8> = zb.iter().map(|&z| z as u8).collect();
            PackedB::from_u8(&a.as_slice().unwrap_or(&[])[slice], k, n, &z)
        }
        Int8Array::I8(a) => {
            let z: Vec<i8> = zb.iter().map(|&z| z as i8).collect();
            PackedB::from_i8(&a.as_slice().unwrap_or(&[])[slice], k, n, &z)
        }
    }
}

/// `[rows, k]` row-major A (slice of `a`) times a packed B into `out`.
fn gemm_rows(
    a: &Int8Array,
    slice: std::ops::Range<usize>,
    rows: usize,
    k: usize,
    za: &[i32],
    b: &PackedB,
    out: &mut [i32],
) -> Result<()> {
    let input = match a {
        Int8Array::U8(x) => {
            let z: Vec<u8> = za.iter().map(|&z| z as u8).collect();
            return gemm_i8::matmul_integer(
                AInput::U8 {
                    data: &x.as_slice().unwrap_or(&[])[slice],
                    zero_points: &z,
                },
                rows,
                k,
                b,
                out,
                1,
            );
        }
        Int8Array::I8(x) => (x, za.iter().map(|&z| z as i8).collect::<Vec<i8>>()),
    };
    gemm_i8::matmul_integer(
        AInput::I8 {
            data: &input.0.as_slice().unwrap_or(&[])[slice],
            zero_points: &input.1,
        },
        rows,
        k,
        b,
        out,
        1,
    )
}

/// numpy-`matmul` of 8-bit A and B with zero points, int32 out. `packed` is B packed once at
/// planning (only for a constant 2-D B with the same zero points).
pub fn matmul_integer(
    a: &Int8Array,
    za: &[i32],
    b: &Int8Array,
    zb: &[i32],
    packed: Option<&PackedB>,
) -> Result<ArrayD<i32>> {
    let (ra, rb) = (a.shape().len(), b.shape().len());
    if ra == 0 || rb == 0 {
        return Err(err("MatMulInteger operands must have rank at least 1"));
    }
    let mut ash = a.shape().to_vec();
    if ra == 1 {
        ash.insert(0, 1);
    }
    let mut bsh = b.shape().to_vec();
    if rb == 1 {
        bsh.push(1);
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        return Err(err(format!(
            "inner dimensions differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    if za.len() > 1 && za.len() != m {
        return Err(err(format!(
            "a_zero_point has {} values for {m} rows (expected 1 or {m})",
            za.len()
        )));
    }
    if zb.len() > 1 && zb.len() != n {
        return Err(err(format!(
            "b_zero_point has {} values for {n} columns (expected 1 or {n})",
            zb.len()
        )));
    }
    let abatch = &ash[..ash.len() - 2];
    let bbatch = &bsh[..bsh.len() - 2];
    let batch = broadcast_shape(abatch, bbatch)?;
    let nb: usize = batch.iter().product();
    crate::runtime::budget::check_shape::<i32>(&[&batch[..], &[m, n]].concat())?;
    let mut out = vec![0i32; nb * m * n];
    if bbatch.iter().product::<usize>() == 1 {
        // One B for every batch entry: fold A's batch dims into rows.
        let local;
        let pb = match packed {
            Some(p) => p,
            None => {
                local = pack_b(b, 0..k * n, k, n, zb)?;
                &local
            }
        };
        let a_full = broadcast_to(a, &[&batch[..], &[m, k]].concat())?;
        let za_rows: Vec<i32> = if za.len() > 1 {
            za.iter().copied().cycle().take(nb * m).collect()
        } else {
            za.to_vec()
        };
        gemm_rows(&a_full, 0..nb * m * k, nb * m, k, &za_rows, pb, &mut out)?;
    } else {
        let a_full = broadcast_to(a, &[&batch[..], &[m, k]].concat())?;
        let b_full = broadcast_to(b, &[&batch[..], &[k, n]].concat())?;
        for j in 0..nb {
            let pb = pack_b(&b_full, j * k * n..(j + 1) * k * n, k, n, zb)?;
            gemm_rows(
                &a_full,
                j * m * k..(j + 1) * m * k,
                m,
                k,
                za,
                &pb,
                &mut out[j * m * n..(j + 1) * m * n],
            )?;
        }
    }
    let mut shape = batch;
    if ra > 1 {
        shape.push(m);
    }
    if rb > 1 {
        shape.push(n);
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| err(e.to_string()))
}

/// The operand broadcast to `shape` (after 1-D promotion), in standard layout.
fn broadcast_to(x: &Int8Array, shape: &[usize]) -> Result<Int8Array> {
    fn go<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>> {
        let n: usize = a.len();
        // 1-D promotion only reshapes; the element order is unchanged.
        let rank_fix: Vec<usize> = {
            let r = shape.len();
            let mut s = a.shape().to_vec();
            if s.len() == 1 {
                if shape[r - 2] == 1 && shape[r - 1] == s[0] && s[0] != 1 {
                    s.insert(0, 1);
                } else {
                    s.push(1);
                }
            }
            s
        };
        let v = a
            .view()
            .into_shape_with_order(IxDyn(&rank_fix))
            .map_err(|e| err(format!("reshape of {n} values: {e}")))?;
        let b = v
            .broadcast(IxDyn(shape))
            .ok_or_else(|| err(format!("cannot broadcast {:?} to {shape:?}", a.shape())))?;
        Ok(standard(b))
    }
    Ok(match x {
        Int8Array::U8(a) => Int8Array::U8(go(a, shape)?),
        Int8Array::I8(a) => Int8Array::I8(go(a, shape)?),
    })
}

/// B packed at planning when input `bi` is a constant 2-D tensor and its zero point (input
/// `zi`) is constant or not given; the flag records whether a zero point was given, so a run
/// can check the pack still applies.
pub fn pack_const_b(ctx: &BuildCtx, bi: usize, zi: usize) -> Result<Option<(PackedB, bool)>> {
    let c = |i: usize| ctx.const_inputs.get(i).copied().flatten();
    let Some(bv) = c(bi) else { return Ok(None) };
    if bv.shape().len() != 2 {
        return Ok(None);
    }
    // A zero-point input that exists but is not constant: nothing to pack ahead.
    let zp = c(zi);
    if zp.is_none() && ctx.const_inputs.len() > zi {
        return Ok(None);
    }
    let b = Int8Array::from_value(bv, "B")?;
    let zb = zero_points(zp, b.is_u8(), "b_zero_point")?;
    let (k, n) = (b.shape()[0], b.shape()[1]);
    if zb.len() > 1 && zb.len() != n {
        return Ok(None);
    }
    Ok(Some((pack_b(&b, 0..k * n, k, n, &zb)?, zp.is_some())))
}

fn build_matmul_integer(_: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let packed = pack_const_b(ctx, 1, 3)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let a = Int8Array::from_value(req(ins, 0)?, "A")?;
        let b = Int8Array::from_value(req(ins, 1)?, "B")?;
        let za = zero_points(opt(ins, 2), a.is_u8(), "a_zero_point")?;
        let zb = zero_points(opt(ins, 3), b.is_u8(), "b_zero_point")?;
        // The pre-packed B is valid only if the zero-point input is as it was at planning.
        let pb = packed
            .as_ref()
            .filter(|(_, had_zp)| *had_zp == opt(ins, 3).is_some())
            .map(|(p, _)| p);
        Ok(vec![Value::I32(matmul_integer(&a, &za, &b, &zb, pb)?)])
    })))
}

// ---------------------------------------------------------------------------------------------
// ConvInteger

struct ConvAttrs {
    auto_pad: String,
    dilations: Option<Vec<i64>>,
    group: usize,
    kernel_shape: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
}

fn build_conv_integer(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let attrs = ConvAttrs {
        auto_pad: node.attr_or::<String>("auto_pad", "NOTSET".to_string())?,
        dilations: node.attr::<Vec<i64>>("dilations")?,
        group: usize::try_from(node.attr_or::<i64>("group", 1)?)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| node.error("group must be positive"))?,
        kernel_shape: node.attr::<Vec<i64>>("kernel_shape")?,
        pads: node.attr::<Vec<i64>>("pads")?,
        strides: node.attr::<Vec<i64>>("strides")?,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = Int8Array::from_value(req(ins, 0)?, "x")?;
        let w = Int8Array::from_value(req(ins, 1)?, "w")?;
        let zx = zero_points(opt(ins, 2), x.is_u8(), "x_zero_point")?;
        let zw = zero_points(opt(ins, 3), w.is_u8(), "w_zero_point")?;
        if zx.len() > 1 {
            return Err(err("x_zero_point must be a scalar"));
        }
        Ok(vec![Value::I32(conv_integer(
            &x,
            zx.first().copied().unwrap_or(0),
            &w,
            &zw,
            &attrs,
        )?)])
    })))
}

fn to_usizes(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("{what} has negative entry {d}"))))
        .collect()
}

fn conv_integer(
    x: &Int8Array,
    zx: i32,
    w: &Int8Array,
    zw: &[i32],
    at: &ConvAttrs,
) -> Result<ArrayD<i32>> {
    let xs = x.shape().to_vec();
    let ws = w.shape().to_vec();
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(err(format!(
            "ConvInteger needs x [N,C,...] and w [M,C/group,...] of equal rank, got {xs:?} and {ws:?}"
        )));
    }
    let sp = xs.len() - 2;
    let (batch, c, mch) = (xs[0], xs[1], ws[0]);
    let g = at.group;
    if c % g != 0 || mch % g != 0 || ws[1] * g != c {
        return Err(err(format!(
            "channels do not match group {g}: x {xs:?}, w {ws:?}"
        )));
    }
    let kernel = match &at.kernel_shape {
        Some(k) => to_usizes(k, "kernel_shape")?,
        None => ws[2..].to_vec(),
    };
    if kernel != ws[2..] {
        return Err(err("kernel_shape does not match w"));
    }
    let ones = vec![1usize; sp];
    let strides = at
        .strides
        .as_deref()
        .map(|s| to_usizes(s, "strides"))
        .transpose()?
        .unwrap_or(ones.clone());
    let dil = at
        .dilations
        .as_deref()
        .map(|s| to_usizes(s, "dilations"))
        .transpose()?
        .unwrap_or(ones);
    if strides.len() != sp || dil.len() != sp || strides.contains(&0) || dil.contains(&0) {
        return Err(err(
            "strides/dilations must have one positive entry per spatial axis",
        ));
    }
    let in_sp = &xs[2..];
    let mut pad_b = vec![0usize; sp];
    let mut pad_e = vec![0usize; sp];
    let mut out_sp = vec![0usize; sp];
    for i in 0..sp {
        let ek = dil[i] * (kernel[i] - 1) + 1;
        match at.auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = in_sp[i].div_ceil(strides[i]);
                let total = ((o - 1) * strides[i] + ek).saturating_sub(in_sp[i]);
                let small = total / 2;
                let (b, e) = if at.auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pad_b[i] = b;
                pad_e[i] = e;
            }
            "VALID" => {}
            "NOTSET" => {
                if let Some(p) = &at.pads {
                    let p = to_usizes(p, "pads")?;
                    if p.len() != 2 * sp {
                        return Err(err("pads must have two entries per spatial axis"));
                    }
                    pad_b[i] = p[i];
                    pad_e[i] = p[i + sp];
                }
            }
            other => return Err(err(format!("unknown auto_pad {other}"))),
        }
        let padded = in_sp[i] + pad_b[i] + pad_e[i];
        if padded < ek {
            return Err(err("kernel larger than the padded input"));
        }
        out_sp[i] = (padded - ek) / strides[i] + 1;
    }
    let cg = c / g;
    let mg = mch / g;
    let ksz: usize = kernel.iter().product();
    let kdim = cg * ksz;
    let osz: usize = out_sp.iter().product();
    let isz: usize = in_sp.iter().product();
    let mut out = vec![0i32; batch * mch * osz];
    if zw.len() > 1 && zw.len() != mch {
        return Err(err(format!(
            "w_zero_point has {} values for {mch} output channels",
            zw.len()
        )));
    }
    // Per group: B = W_g^T [kdim, mg], packed once for all images.
    let wt = |grp: usize| -> Result<PackedB> {
        let zg: Vec<i32> = if zw.len() > 1 {
            zw[grp * mg..(grp + 1) * mg].to_vec()
        } else {
            zw.to_vec()
        };
        match w {
            Int8Array::U8(a) => {
                let v = transpose_group(a.as_slice().unwrap_or(&[]), grp, mg, kdim);
                let z: Vec<u8> = zg.iter().map(|&z| z as u8).collect();
                PackedB::from_u8(&v, kdim, mg, &z)
            }
            Int8Array::I8(a) => {
                let v = transpose_group(a.as_slice().unwrap_or(&[]), grp, mg, kdim);
                let z: Vec<i8> = zg.iter().map(|&z| z as i8).collect();
                PackedB::from_i8(&v, kdim, mg, &z)
            }
        }
    };
    let packs: Vec<PackedB> = (0..g).map(wt).collect::<Result<_>>()?;
    let geo = Im2col {
        osz,
        kdim,
        ksz,
        cg,
        c,
        isz,
        out_sp: &out_sp,
        kernel: &kernel,
        strides: &strides,
        dil: &dil,
        pad_b: &pad_b,
        in_sp,
    };
    for nb in 0..batch {
        for (grp, pb) in packs.iter().enumerate() {
            let mut res = vec![0i32; osz * mg];
            match x {
                Int8Array::U8(a) => {
                    let col = geo.fill(a.as_slice().unwrap_or(&[]), zx as u8, nb, grp);
                    let a_in = AInput::U8 {
                        data: &col,
                        zero_points: &[zx as u8],
                    };
                    // onnxruntime's ConvInteger is exact on every CPU (it multiplies with the
                    // roles of the operands swapped), so its saturation emulation stays off.
                    gemm_i8::with_ort_u8s8_saturation(false, || {
                        gemm_i8::matmul_integer(a_in, osz, kdim, pb, &mut res, 1)
                    })?;
                }
                Int8Array::I8(a) => {
                    let col = geo.fill(a.as_slice().unwrap_or(&[]), zx as i8, nb, grp);
                    let a_in = AInput::I8 {
                        data: &col,
                        zero_points: &[zx as i8],
                    };
                    gemm_i8::matmul_integer(a_in, osz, kdim, pb, &mut res, 1)?;
                }
            }
            for mm in 0..mg {
                let dst = (nb * mch + grp * mg + mm) * osz;
                for o in 0..osz {
                    out[dst + o] = res[o * mg + mm];
                }
            }
        }
    }
    let mut shape = vec![batch, mch];
    shape.extend(&out_sp);
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| err(e.to_string()))
}

/// Group `grp`'s weights `[mg, kdim]` (rows of `w`) transposed to `[kdim, mg]`.
fn transpose_group<T: Copy + Default>(w: &[T], grp: usize, mg: usize, kdim: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(kdim * mg);
    for kk in 0..kdim {
        for mm in 0..mg {
            v.push(
                w.get((grp * mg + mm) * kdim + kk)
                    .copied()
                    .unwrap_or_default(),
            );
        }
    }
    v
}

/// Geometry of one ConvInteger's im2col: one row of `kdim = cg * ksz` taps per output
/// position.
struct Im2col<'a> {
    osz: usize,
    kdim: usize,
    ksz: usize,
    cg: usize,
    c: usize,
    isz: usize,
    out_sp: &'a [usize],
    kernel: &'a [usize],
    strides: &'a [usize],
    dil: &'a [usize],
    pad_b: &'a [usize],
    in_sp: &'a [usize],
}

impl Im2col<'_> {
    /// `[osz, kdim]` taps of image `nb`, group `grp`; padded taps hold `pad` (x's zero point,
    /// so they contribute nothing after its subtraction).
    fn fill<T: Copy>(&self, src: &[T], pad: T, nb: usize, grp: usize) -> Vec<T> {
        let sp = self.in_sp.len();
        let mut col = vec![pad; self.osz * self.kdim];
        let mut oc = vec![0usize; sp];
        let mut kc = vec![0usize; sp];
        for o in 0..self.osz {
            let mut r = o;
            for d in (0..sp).rev() {
                oc[d] = r % self.out_sp[d];
                r /= self.out_sp[d];
            }
            for kk in 0..self.ksz {
                let mut r = kk;
                for d in (0..sp).rev() {
                    kc[d] = r % self.kernel[d];
                    r /= self.kernel[d];
                }
                let mut off = 0usize;
                let mut inside = true;
                for d in 0..sp {
                    let p = (oc[d] * self.strides[d] + kc[d] * self.dil[d]) as isize
                        - self.pad_b[d] as isize;
                    if p < 0 || p as usize >= self.in_sp[d] {
                        inside = false;
                        break;
                    }
                    off = off * self.in_sp[d] + p as usize;
                }
                if inside {
                    for ch in 0..self.cg {
                        let base = (nb * self.c + grp * self.cg + ch) * self.isz;
                        if let Some(&v) = src.get(base + off) {
                            col[o * self.kdim + ch * self.ksz + kk] = v;
                        }
                    }
                }
            }
        }
        col
    }
}

// ---------------------------------------------------------------------------------------------
// QuantizeLinear / DequantizeLinear

/// A per-tensor (len 1) or per-axis parameter, f32, and its element type.
fn float_param(v: &Value, what: &str) -> Result<(Vec<f32>, DataType)> {
    match v {
        Value::F32(a) => Ok((a.iter().copied().collect(), DataType::Float)),
        Value::F16(a) => Ok((a.iter().map(|x| x.to_f32()).collect(), DataType::Float16)),
        Value::BF16(a) => Ok((a.iter().map(|x| x.to_f32()).collect(), DataType::Bfloat16)),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

/// The integer types QuantizeLinear produces, with their saturation ranges.
fn quantized_range(dt: DataType) -> Option<(f32, f32)> {
    Some(match dt {
        DataType::Uint8 => (0.0, 255.0),
        DataType::Int8 => (-128.0, 127.0),
        DataType::Uint16 => (0.0, 65535.0),
        DataType::Int16 => (-32768.0, 32767.0),
        _ => return None,
    })
}

/// For element `i` of a tensor of `shape`, the index of its parameter: 0 for a per-tensor
/// parameter, the index along `axis` for a per-axis (1-D) one, and for block quantization
/// (`block > 0`: the parameter has `x`'s rank, with `ceil(dim / block)` entries along `axis`)
/// the same multi-index with the axis coordinate divided by `block`. Errors when the
/// parameter's shape does not fit.
struct AxisIndex {
    inner: usize,
    dim: usize,
    per_axis: bool,
    /// Elements per block along the axis (0: not blocked) and the parameter's axis length.
    block: usize,
    blocks: usize,
}

impl AxisIndex {
    fn per_tensor() -> Self {
        AxisIndex {
            inner: 1,
            dim: 1,
            per_axis: false,
            block: 0,
            blocks: 1,
        }
    }

    fn new(
        shape: &[usize],
        axis: i64,
        block: usize,
        param: &Value,
        len: usize,
        what: &str,
    ) -> Result<Self> {
        if block > 0 {
            let ax = norm_axis(axis, shape.len())?;
            let ps = param.shape();
            let fits = ps.len() == shape.len()
                && (0..ps.len()).all(|k| {
                    if k == ax {
                        ps[k] == shape[k].div_ceil(block)
                    } else {
                        ps[k] == shape[k]
                    }
                });
            if !fits {
                return Err(err(format!(
                    "{what} has shape {ps:?}, which does not block x of shape {shape:?} by                      {block} along axis {ax}"
                )));
            }
            return Ok(AxisIndex {
                inner: shape[ax + 1..].iter().product(),
                dim: shape[ax],
                per_axis: true,
                block,
                blocks: ps[ax],
            });
        }
        if len == 1 && param.shape().len() <= 1 {
            return Ok(AxisIndex::per_tensor());
        }
        if param.shape().len() != 1 {
            return Err(err(format!(
                "{what} has shape {:?}; per-tensor, per-axis (1-D) and blocked forms are \
                 supported",
                param.shape()
            )));
        }
        let ax = norm_axis(axis, shape.len())?;
        if shape[ax] != len {
            return Err(err(format!(
                "{what} has {len} values but axis {ax} has {}",
                shape[ax]
            )));
        }
        Ok(AxisIndex {
            inner: shape[ax + 1..].iter().product(),
            dim: shape[ax],
            per_axis: true,
            block: 0,
            blocks: shape[ax],
        })
    }

    #[inline]
    fn at(&self, i: usize) -> usize {
        if !self.per_axis {
            return 0;
        }
        let along = (i / self.inner) % self.dim;
        if self.block == 0 {
            return along;
        }
        let outer = i / (self.inner * self.dim);
        (outer * self.blocks + along / self.block) * self.inner + i % self.inner
    }
}

/// `block_size`: 0 (per tensor or per axis) or the block length of block quantization.
fn block_size(node: &Node) -> Result<usize> {
    let b = node.attr_or::<i64>("block_size", 0)?;
    usize::try_from(b).map_err(|_| node.error(format!("block_size {b} is negative")))
}

fn build_quantize(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let block = block_size(node)?;
    let axis = node.attr_or::<i64>("axis", 1)?;
    // 0 = from the zero point, else uint8.
    let want = match node.attr_or::<i64>("output_dtype", 0)? {
        0 => DataType::Uint8,
        code => dtype_of(code)
            .ok()
            .filter(|&dt| quantized_range(dt).is_some())
            .ok_or_else(|| {
                node.error(format!(
                    "QuantizeLinear output_dtype {} is not supported (uint8, int8, uint16, int16)",
                    crate::ir::tensor::dtype_name(code as i32)
                ))
            })?,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let xf: ArrayD<f32> = match x {
            Value::F32(a) => standard(a.view()),
            Value::F16(a) => a.mapv(f16::to_f32),
            Value::BF16(a) => a.mapv(half::bf16::to_f32),
            Value::I32(a) => a.mapv(|v| v as f32),
            other => {
                return Err(err(format!(
                    "QuantizeLinear input must be float or int32, got {}",
                    dname(other)
                )));
            }
        };
        let sv = req(ins, 1)?;
        let (scale, _) = float_param(sv, "y_scale")?;
        let zv = opt(ins, 2);
        let (zp, out): (Vec<f32>, DataType) = match zv {
            None => (vec![0.0], want),
            Some(z) if quantized_range(z.dtype()).is_some() => {
                let Value::F32(a) = cast(z, DataType::Float)? else {
                    return Err(err("internal: cast to float"));
                };
                (a.iter().copied().collect(), z.dtype())
            }
            Some(other) => {
                return Err(err(format!(
                    "y_zero_point type {} is not supported (uint8, int8, uint16, int16)",
                    dname(other)
                )));
            }
        };
        let shape = xf.shape().to_vec();
        let si = AxisIndex::new(&shape, axis, block, sv, scale.len(), "y_scale")?;
        let zi = match zv {
            Some(z) => AxisIndex::new(&shape, axis, block, z, zp.len(), "y_zero_point")?,
            // No zero point: one implicit 0 for every element, whatever the scale's form.
            None => AxisIndex::per_tensor(),
        };
        let q = |i: usize, v: f32| (v / scale[si.at(i)]).round_ties_even() + zp[zi.at(i)];
        let data = xf.as_slice().unwrap_or(&[]);
        // Saturate in f32 (exact for these integer ranges; NaN stays NaN and casts to 0), then
        // convert, which is exact for the integral values.
        let (lo, hi) = quantized_range(out).unwrap_or((0.0, 0.0));
        let y: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, &v)| q(i, v).clamp(lo, hi))
            .collect();
        let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?;
        Ok(vec![cast(&Value::F32(y), out)?])
    })))
}

/// Integer tensor as i32 values (standard order) with its shape.
fn ints_of(v: &Value, what: &str) -> Result<(Vec<i32>, Vec<usize>)> {
    let shape = v.shape().to_vec();
    let data = match v {
        Value::U8(a) => a.iter().map(|&x| i32::from(x)).collect(),
        Value::I8(a) => a.iter().map(|&x| i32::from(x)).collect(),
        Value::U16(a) => a.iter().map(|&x| i32::from(x)).collect(),
        Value::I16(a) => a.iter().map(|&x| i32::from(x)).collect(),
        Value::I32(a) => a.iter().copied().collect(),
        other => {
            return Err(err(format!(
                "{what} must be int8, uint8, int16, uint16 or int32, got {}",
                dname(other)
            )));
        }
    };
    Ok((data, shape))
}

/// `(x - zp) * scale` per tensor or along `axis`.
pub fn dequantize(
    x: &Value,
    scale: &Value,
    zp: Option<&Value>,
    axis: i64,
    block: usize,
) -> Result<Value> {
    let (xs, shape) = ints_of(x, "x")?;
    let (sc, out) = float_param(scale, "x_scale")?;
    let si = AxisIndex::new(&shape, axis, block, scale, sc.len(), "x_scale")?;
    let (zs, zi) = match zp {
        Some(z) => {
            if z.dtype() != x.dtype() {
                return Err(err(format!(
                    "x_zero_point is {} but x is {}",
                    dname(z),
                    dname(x)
                )));
            }
            let (zs, _) = ints_of(z, "x_zero_point")?;
            let zi = AxisIndex::new(&shape, axis, block, z, zs.len(), "x_zero_point")?;
            (zs, zi)
        }
        None => (vec![0], AxisIndex::per_tensor()),
    };
    // The subtraction is exact in f32 for 8- and 16-bit data; the product rounds once, as in the
    // reference (`(x - zp).astype(float32) * scale`).
    let y: Vec<f32> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| (v - zs[zi.at(i)]) as f32 * sc[si.at(i)])
        .collect();
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?;
    cast(&Value::F32(y), out)
}

fn build_dequantize(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let block = block_size(node)?;
    let axis = node.attr_or::<i64>("axis", 1)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        Ok(vec![dequantize(
            req(ins, 0)?,
            req(ins, 1)?,
            opt(ins, 2),
            axis,
            block,
        )?])
    })))
}

// ---------------------------------------------------------------------------------------------
// QLinearMatMul

fn build_qlinear_matmul(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let a = Int8Array::from_value(req(ins, 0)?, "a")?;
        let (sa, _) = float_param(req(ins, 1)?, "a_scale")?;
        let za = zero_points(opt(ins, 2), a.is_u8(), "a_zero_point")?;
        let b = Int8Array::from_value(req(ins, 3)?, "b")?;
        let (sb, _) = float_param(req(ins, 4)?, "b_scale")?;
        let zb = zero_points(opt(ins, 5), b.is_u8(), "b_zero_point")?;
        let (sy, _) = float_param(req(ins, 6)?, "y_scale")?;
        let zy = opt(ins, 7);
        if sy.len() != 1 {
            return Err(err("y_scale must be a scalar"));
        }
        let acc = matmul_integer(&a, &za, &b, &zb, None)?;
        let shape = acc.shape().to_vec();
        let n = if b.shape().len() > 1 {
            *b.shape().last().unwrap_or(&1)
        } else {
            1
        };
        let m = if a.shape().len() > 1 {
            a.shape()[a.shape().len() - 2]
        } else {
            1
        };
        let check = |len: usize, want: usize, what: &str| {
            if len != 1 && len != want {
                Err(err(format!(
                    "{what} has {len} values (expected 1 or {want})"
                )))
            } else {
                Ok(())
            }
        };
        check(sa.len(), m, "a_scale")?;
        check(sb.len(), n, "b_scale")?;
        let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        // The reference multiplies the int32 product by the f32 multiplier in f64 (numpy's
        // int32 x float32 promotion), then rounds half to even.
        let (zyv, to_i8) = match zy {
            None => (0.0, false),
            Some(Value::U8(z)) => (f64::from(*z.iter().next().unwrap_or(&0)), false),
            Some(Value::I8(z)) => (f64::from(*z.iter().next().unwrap_or(&0)), true),
            Some(other) => {
                return Err(err(format!(
                    "y_zero_point type {} is not supported",
                    dname(other)
                )));
            }
        };
        let vals = acc.iter().enumerate().map(|(i, &c)| {
            let (row, col) = ((i / n) % m, i % n);
            let mult = pick(&sa, row) * pick(&sb, col) / sy[0];
            (f64::from(c) * f64::from(mult)).round_ties_even() + zyv
        });
        Ok(vec![if to_i8 {
            let y: Vec<i8> = vals.map(|v| v.clamp(-128.0, 127.0) as i8).collect();
            Value::I8(ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?)
        } else {
            let y: Vec<u8> = vals.map(|v| v.clamp(0.0, 255.0) as u8).collect();
            Value::U8(ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?)
        }])
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_dequantize_without_zero_point() {
        // Previously the implicit zero point was indexed like a blocked one and panicked.
        let x = Value::I16(ndarray::arr2(&[[1i16, 2, 3, 4, -5]]).into_dyn());
        let scale = Value::F32(ndarray::arr2(&[[0.5f32, 2.0, 4.0]]).into_dyn());
        let y = dequantize(&x, &scale, None, 1, 2).unwrap();
        assert_eq!(
            y,
            Value::F32(ndarray::arr2(&[[0.5f32, 1.0, 6.0, 8.0, -20.0]]).into_dyn())
        );
    }

    #[test]
    fn dynamic_quantize_rounds_half_to_even_and_saturates() {
        // Range [-1, 1.55]: scale 0.01, zp round(100) = 100.
        let x = [-1.0f32, 0.0, 1.55, 0.025, 0.035];
        let (y, scale, zp) = dynamic_quantize(&x);
        assert_eq!(scale, (1.55f32 + 1.0) / 255.0);
        assert_eq!(zp, (1.0f32 / scale).round_ties_even() as u8);
        let want: Vec<u8> = x
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + f32::from(zp)).clamp(0.0, 255.0) as u8)
            .collect();
        assert_eq!(y, want);
        assert_eq!(y[0], 0);
        assert_eq!(y[2], 255);
        let (y, scale, zp) = dynamic_quantize(&[0.0; 4]);
        assert_eq!((y, scale, zp), (vec![0; 4], 1.0 / 255.0, 0));
    }

    fn naive(
        a: &[i32],
        b: &[i32],
        m: usize,
        k: usize,
        n: usize,
        za: &[i32],
        zb: &[i32],
    ) -> Vec<i32> {
        let pick = |z: &[i32], i: usize| match z.len() {
            0 => 0,
            1 => z[0],
            _ => z[i],
        };
        let mut out = vec![0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| (a[i * k + p] - pick(za, i)) * (b[p * n + j] - pick(zb, j)))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matmul_integer_every_type_and_zero_point_form() {
        let (m, k, n) = (3, 5, 4);
        let av: Vec<i32> = (0..m * k).map(|i| (i as i32 * 37) % 256).collect();
        let bv: Vec<i32> = (0..k * n).map(|i| (i as i32 * 53 + 7) % 256).collect();
        for a_u8 in [true, false] {
            for b_u8 in [true, false] {
                let mk = |v: &[i32], u8_: bool, shape: &[usize]| {
                    if u8_ {
                        Int8Array::U8(
                            ArrayD::from_shape_vec(
                                IxDyn(shape),
                                v.iter().map(|&x| x as u8).collect(),
                            )
                            .unwrap(),
                        )
                    } else {
                        Int8Array::I8(
                            ArrayD::from_shape_vec(
                                IxDyn(shape),
                                v.iter().map(|&x| x as u8 as i8).collect(),
                            )
                            .unwrap(),
                        )
                    }
                };
                let a = mk(&av, a_u8, &[m, k]);
                let b = mk(&bv, b_u8, &[k, n]);
                let as_i = |v: &[i32], u8_: bool| -> Vec<i32> {
                    v.iter()
                        .map(|&x| if u8_ { x } else { i32::from(x as u8 as i8) })
                        .collect()
                };
                let (ai, bi) = (as_i(&av, a_u8), as_i(&bv, b_u8));
                let zas: [Vec<i32>; 3] =
                    [vec![], vec![as_i(&[3], a_u8)[0]], as_i(&[1, 200, 5], a_u8)];
                let zbs: [Vec<i32>; 3] = [
                    vec![],
                    vec![as_i(&[250], b_u8)[0]],
                    as_i(&[0, 9, 130, 255], b_u8),
                ];
                for za in &zas {
                    for zb in &zbs {
                        let got = matmul_integer(&a, za, &b, zb, None).unwrap();
                        assert_eq!(got.shape(), &[m, n]);
                        assert_eq!(
                            got.iter().copied().collect::<Vec<_>>(),
                            naive(&ai, &bi, m, k, n, za, zb),
                            "a_u8={a_u8} b_u8={b_u8} za={za:?} zb={zb:?}"
                        );
                    }
                }
                // Batch broadcasting: [2, 1, m, k] x [3, k, n] -> [2, 3, m, n].
                let a4 = mk(
                    &[av.clone(), av.iter().map(|x| (x + 1) % 256).collect()].concat(),
                    a_u8,
                    &[2, 1, m, k],
                );
                let b3 = mk(
                    &[bv.clone(), bv.clone(), bv.clone()].concat(),
                    b_u8,
                    &[3, k, n],
                );
                let got = matmul_integer(&a4, &[], &b3, &[], None).unwrap();
                assert_eq!(got.shape(), &[2, 3, m, n]);
                let a1 = as_i(&av.iter().map(|x| (x + 1) % 256).collect::<Vec<_>>(), a_u8);
                let want = naive(&a1, &bi, m, k, n, &[], &[]);
                let last: Vec<i32> = got.iter().copied().skip(5 * m * n).collect();
                assert_eq!(last, want);
            }
        }
    }
}
