//! Quantized ops of the `com.microsoft` domain (onnxruntime contrib ops), as onnxruntime's CPU
//! kernels compute them.
//!
//! - `MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point?, b_zero_point?, bias?)`:
//!   `Y = f32(MatMulInteger(A, B, za, zb)) * (a_scale * b_scale[n]) + bias[n]`; A and B int8
//!   or uint8, `a_scale` per tensor, `b_scale`/`b_zero_point` per tensor or per column `[N]`.
//!   The product `a_scale * b_scale` is formed first and the bias added after, as onnxruntime's
//!   MLAS output processor does (and as [`gemm_i8`](crate::runtime::kernels::gemm_i8)'s fused
//!   epilogue does).
//! - `DynamicQuantizeMatMul(A, B, b_scale, b_zero_point?, bias?)`: A (f32) is quantized to uint8
//!   per tensor exactly as `DynamicQuantizeLinear` does, then as `MatMulIntegerToFloat`.
//!   (onnxruntime uses scale 1 for an all-zero A where the ONNX op reports 0; the product is 0
//!   either way.)
//!
//! A constant 2-D B (the weights) is packed once when the node is planned.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::PackedB;

use super::quant::{Int8Array, dynamic_quantize, matmul_integer, pack_const_b, zero_points};
use super::util::{dname, err, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("com.microsoft", "MatMulIntegerToFloat", build_mmitf);
    r.register("com.microsoft", "DynamicQuantizeMatMul", build_dqmm);
}

fn f32s(v: &Value, what: &str) -> Result<Vec<f32>> {
    match v {
        Value::F32(a) => Ok(a.iter().copied().collect()),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

/// `f32(acc) * (a_scale * b_scale[col]) + bias[col]` over an `[.., N]` int32 product.
fn scale_out(
    acc: ArrayD<i32>,
    n: usize,
    a_scale: f32,
    b_scale: &[f32],
    bias: Option<&[f32]>,
) -> Result<Value> {
    if b_scale.len() != 1 && b_scale.len() != n {
        return Err(err(format!(
            "b_scale has {} values for {n} columns (expected 1 or {n})",
            b_scale.len()
        )));
    }
    if let Some(b) = bias
        && b.len() != n
    {
        return Err(err(format!("bias has {} values for {n} columns", b.len())));
    }
    let n = n.max(1);
    let shape = acc.shape().to_vec();
    let y: Vec<f32> = acc
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let col = i % n;
            let bs = if b_scale.len() == 1 {
                b_scale[0]
            } else {
                b_scale[col]
            };
            let v = c as f32 * (a_scale * bs);
            match bias {
                Some(b) => v + b[col],
                None => v,
            }
        })
        .collect();
    Ok(Value::F32(
        ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|e| err(e.to_string()))?,
    ))
}

fn cols(b: &Int8Array) -> usize {
    let s = b.shape();
    if s.len() > 1 { s[s.len() - 1] } else { 1 }
}

fn build_mmitf(_: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let packed = pack_const_b(ctx, 1, 5)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let a = Int8Array::from_value(req(ins, 0)?, "A")?;
        let b = Int8Array::from_value(req(ins, 1)?, "B")?;
        let a_scale = f32s(req(ins, 2)?, "a_scale")?;
        if a_scale.len() != 1 {
            return Err(err("a_scale must be a scalar"));
        }
        let b_scale = f32s(req(ins, 3)?, "b_scale")?;
        let za = zero_points(opt(ins, 4), a.is_u8(), "a_zero_point")?;
        let zb = zero_points(opt(ins, 5), b.is_u8(), "b_zero_point")?;
        let bias = opt(ins, 6).map(|v| f32s(v, "bias")).transpose()?;
        let pb = valid_pack(&packed, opt(ins, 5));
        let acc = matmul_integer(&a, &za, &b, &zb, pb)?;
        Ok(vec![scale_out(
            acc,
            cols(&b),
            a_scale[0],
            &b_scale,
            bias.as_deref(),
        )?])
    })))
}

fn build_dqmm(_: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let packed = pack_const_b(ctx, 1, 3)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let x = match req(ins, 0)? {
            Value::F32(x) => standard(x.view()),
            other => {
                return Err(err(format!("A must be float, got {}", dname(other))));
            }
        };
        let (q, a_scale, za) = dynamic_quantize(x.as_slice().unwrap_or(&[]));
        let a = Int8Array::U8(
            ArrayD::from_shape_vec(IxDyn(x.shape()), q).map_err(|e| err(e.to_string()))?,
        );
        let b = Int8Array::from_value(req(ins, 1)?, "B")?;
        let b_scale = f32s(req(ins, 2)?, "b_scale")?;
        let zb = zero_points(opt(ins, 3), b.is_u8(), "b_zero_point")?;
        let bias = opt(ins, 4).map(|v| f32s(v, "bias")).transpose()?;
        let pb = valid_pack(&packed, opt(ins, 3));
        let acc = matmul_integer(&a, &[i32::from(za)], &b, &zb, pb)?;
        Ok(vec![scale_out(
            acc,
            cols(&b),
            a_scale,
            &b_scale,
            bias.as_deref(),
        )?])
    })))
}

/// The planning-time pack, if it was made with the same (present or absent) zero point.
fn valid_pack<'a>(p: &'a Option<(PackedB, bool)>, zp: Option<&Value>) -> Option<&'a PackedB> {
    p.as_ref()
        .filter(|(_, had)| *had == zp.is_some())
        .map(|(p, _)| p)
}
