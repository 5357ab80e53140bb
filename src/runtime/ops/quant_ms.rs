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
//! - `MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)`: `Y = A · Wᵀ + bias` with
//!   `W [N, K]` stored in blocks of `block_size` values along K, `bits` (2, 4 or 8) per value:
//!   B is uint8 `[N, ⌈K/block_size⌉, block_size·bits/8]`, values packed from the low bits of
//!   each byte up, and `W[n, k] = (q[n, k] - zp[n, blk]) · scales[n, blk]` with
//!   `blk = k / block_size` (or `g_idx[k]` when given). `zero_points` are uint8 packed like B
//!   (`[N, ⌈blocks·bits/8⌉]`) or float `[N · blocks]`; absent, they are `2^(bits-1)`.
//!   `accuracy_level` (which lets onnxruntime compute with A in int8) is ignored: the product
//!   is computed in f32. (onnxruntime 1.32's CPU kernel ignores uint8 zero points when g_idx
//!   is given, using `2^(bits-1)`; this runtime applies them, as the op defines.)
//!
//! A constant 2-D B (the weights) is packed once when the node is planned; MatMulNBits'
//! constant weights are dequantized and packed once.

use ndarray::{Array2, ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::PackedB;

use super::linalg::{Linear, matmul};
use super::quant::{Int8Array, dynamic_quantize, matmul_integer, pack_const_b, zero_points};
use super::util::{dname, elem_count, err, ints, opt, req, standard};
use super::{BuildCtx, FnOp, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("com.microsoft", "MatMulIntegerToFloat", build_mmitf);
    r.register("com.microsoft", "DynamicQuantizeMatMul", build_dqmm);
    r.register("com.microsoft", "MatMulNBits", build_matmul_nbits);
}

pub(super) fn f32s(v: &Value, what: &str) -> Result<Vec<f32>> {
    match v {
        Value::F32(a) => Ok(a.iter().copied().collect()),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

/// `f32(acc) * (a_scale * b_scale[col]) + bias[col]` over an `[.., N]` int32 product.
pub(super) fn scale_out(
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
pub(super) fn valid_pack<'a>(
    p: &'a Option<(PackedB, bool)>,
    zp: Option<&Value>,
) -> Option<&'a PackedB> {
    p.as_ref()
        .filter(|(_, had)| *had == zp.is_some())
        .map(|(p, _)| p)
}

/// MatMulNBits' shape attributes.
#[derive(Clone, Copy, Debug)]
struct NBits {
    k: usize,
    n: usize,
    bits: usize,
    block: usize,
}

impl NBits {
    fn parse(node: &Node) -> Result<NBits> {
        // Bounded so that the byte counts derived from them cannot overflow.
        let pos = |name: &str| -> Result<usize> {
            let v = node.attr_req::<i64>(name)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= super::util::MAX_ELEMS)
                .ok_or_else(|| err(format!("{name} must be in 1..=2^31, got {v}")))
        };
        let p = NBits {
            k: pos("K")?,
            n: pos("N")?,
            bits: node.attr_or::<i64>("bits", 4)? as usize,
            block: pos("block_size")?,
        };
        if ![2, 4, 8].contains(&p.bits) {
            return Err(err(format!("bits must be 2, 4 or 8, got {}", p.bits)));
        }
        elem_count(&[p.k, p.n])?;
        if !(p.block * p.bits).is_multiple_of(8) {
            return Err(err(format!(
                "block_size {} does not fill whole bytes at {} bits",
                p.block, p.bits
            )));
        }
        Ok(p)
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// The `bits`-wide value at position `i` of a packed byte row.
    fn unpack(&self, row: &[u8], i: usize) -> u8 {
        let bit = i * self.bits;
        (row[bit / 8] >> (bit % 8)) & ((1u16 << self.bits) - 1) as u8
    }

    /// The dequantized weight, transposed to `[K, N]` for the product.
    fn dequantize(
        &self,
        b: &Value,
        scales: &Value,
        zp: Option<&Value>,
        g_idx: Option<&Value>,
    ) -> Result<Array2<f32>> {
        let (k, n, blocks) = (self.k, self.n, self.blocks());
        let row_bytes = blocks * self.block * self.bits / 8;
        let b = match b {
            Value::U8(a) if a.len() == n * row_bytes => standard(a.view()),
            other => {
                return Err(err(format!(
                    "B must be uint8 [N, blocks, block bytes] = [{n}, {blocks}, {}], got {} {:?}",
                    self.block * self.bits / 8,
                    dname(other),
                    other.shape()
                )));
            }
        };
        let b = b.as_slice().unwrap_or(&[]);
        let scales = f32s(scales, "scales")?;
        if scales.len() != n * blocks {
            return Err(err(format!(
                "scales has {} values, expected N x blocks = {}",
                scales.len(),
                n * blocks
            )));
        }
        let zp_row_bytes = (blocks * self.bits).div_ceil(8);
        enum Zp {
            Default(f32),
            Packed(Vec<u8>),
            Float(Vec<f32>),
        }
        let zp = match zp {
            None => Zp::Default((1u32 << (self.bits - 1)) as f32),
            Some(Value::U8(z)) if z.len() == n * zp_row_bytes => {
                Zp::Packed(z.iter().copied().collect())
            }
            Some(Value::F32(z)) if z.len() == n * blocks => Zp::Float(z.iter().copied().collect()),
            Some(other) => {
                return Err(err(format!(
                    "zero_points must be uint8 [{}] or float [{}], got {} {:?}",
                    n * zp_row_bytes,
                    n * blocks,
                    dname(other),
                    other.shape()
                )));
            }
        };
        let block_of: Vec<usize> = match g_idx {
            None => (0..k).map(|i| i / self.block).collect(),
            Some(g) => {
                let g = ints(g, "g_idx")?;
                if g.len() != k {
                    return Err(err(format!(
                        "g_idx has {} values, expected K = {k}",
                        g.len()
                    )));
                }
                g.iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .ok()
                            .filter(|&x| x < blocks)
                            .ok_or_else(|| err(format!("g_idx value {x} is not a block index")))
                    })
                    .collect::<Result<_>>()?
            }
        };
        elem_count(&[k, n])?;
        let mut w = Array2::<f32>::zeros((k, n));
        for col in 0..n {
            let row = &b[col * row_bytes..(col + 1) * row_bytes];
            for (i, &blk) in block_of.iter().enumerate() {
                let z = match &zp {
                    Zp::Default(z) => *z,
                    Zp::Packed(z) => f32::from(
                        self.unpack(&z[col * zp_row_bytes..(col + 1) * zp_row_bytes], blk),
                    ),
                    Zp::Float(z) => z[col * blocks + blk],
                };
                w[[i, col]] = (f32::from(self.unpack(row, i)) - z) * scales[col * blocks + blk];
            }
        }
        Ok(w)
    }
}

fn build_matmul_nbits(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let p = NBits::parse(node)?;
    let konst = |i: usize| ctx.const_inputs.get(i).copied().flatten();
    let given = |i: usize| node.input(i).is_some();
    // Constant weights (the quantizer's output always has them): dequantize and pack once.
    let weights_const = konst(1).is_some()
        && konst(2).is_some()
        && (3..=4).all(|i| !given(i) || konst(i).is_some());
    let mut linear = None;
    if weights_const && let (Some(b), Some(sc)) = (konst(1), konst(2)) {
        let w = p.dequantize(b, sc, konst(3), konst(4))?;
        let l = Linear::matmul(&Value::F32(w.into_dyn()))
            .ok_or_else(|| err("cannot pack the dequantized weight"))?;
        linear = match konst(5) {
            Some(bias) => l.with_bias(bias),
            None if !given(5) => Some(l),
            None => None,
        };
    }
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let a = req(ins, 0)?;
        if a.shape().last() != Some(&p.k) {
            return Err(err(format!(
                "A {:?} must have K = {} on its last axis",
                a.shape(),
                p.k
            )));
        }
        if let Some(y) = linear.as_ref().and_then(|l| l.run(a)) {
            return Ok(vec![y]);
        }
        let w = p.dequantize(req(ins, 1)?, req(ins, 2)?, opt(ins, 3), opt(ins, 4))?;
        let y = matmul(a, &Value::F32(w.into_dyn()))?;
        Ok(vec![match (y, opt(ins, 5)) {
            (Value::F32(mut y), Some(bias)) => {
                let b = f32s(bias, "bias")?;
                if b.len() != p.n {
                    return Err(err(format!(
                        "bias has {} values, expected N = {}",
                        b.len(),
                        p.n
                    )));
                }
                y += &ndarray::aview1(&b);
                Value::F32(y)
            }
            (y, _) => y,
        }])
    })))
}
