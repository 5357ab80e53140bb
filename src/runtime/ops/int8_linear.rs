//! The fused int8 Linear step the planner substitutes for the rewritten chain
//! `DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale) [-> Add(bias)] [-> activation]`
//! (see `session/fuse_int8.rs` for the matching). Not an ONNX op: it is never registered, only
//! built by the planner from constants it has already checked.
//!
//! Semantics, equal to the unfused nodes:
//! `Y[.., n] = act(f32(Σ_k (A_q[.., k] - za) (B[k, n] - zb[n])) * (a_scale * b_scale[n]) + bias[n])`
//! with A's leading dims kept (numpy matmul of an `[.., K]` A by a 2-D `[K, N]` B). A comes
//! either as float, quantized here exactly as `DynamicQuantizeLinear` does
//! ([`dynamic_quantize_into`]), or already quantized (`A_q` uint8 or int8, a scalar
//! `a_scale`, an optional scalar zero point), when the quantization is shared with other
//! consumers. One [`gemm_u8i8_f32_vec`] call computes the product with the fused epilogue.
//!
//! The per-row form is the chain `rewrite --activations per-token` emits (see
//! `passes/quantize/per_token.rs`): inputs `A [M, K]` float, `s [M]`, `z [M]` uint8 and
//! `z_f [M]` float (the zero point as the graph's correction term reads it), and
//! `Y[m, n] = act((f32(Σ_k A_q[m, k] (B[k, n] - zb[n])) - z_f[m] c[n]) (s[m] b_scale[n]) + bias[n])`
//! with `A_q[m, k] = saturate(round_half_even(A[m, k] / s[m]) + z[m])` (QuantizeLinear, axis 0)
//! and `c[n] = Σ_k (B[k, n] - zb[n])` the graph's constant column sums. The kernel applies
//! `z[m]` exactly in integers; when `z_f[m]` differs from `z[m]` (never in our graphs) the
//! difference is added back in float before bias and activation. A must be 2-D here, as the
//! rewrite makes it; any other rank is an error naming the shape.

use half::f16;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::{
    ActEpilogue, Activation, PackedB, gemm_u8i8_f32_rows_vec, gemm_u8i8_f32_vec,
    with_ort_u8s8_saturation,
};
use crate::runtime::kernels::quantize_u8::{dynamic_quantize_into, quantize_with_into};

use super::Op;
use super::util::{dname, err, opt, req};

/// How the step receives A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AForm {
    /// Input 0 is float A; the step quantizes it.
    Float,
    /// Inputs are `A_q` (uint8 or int8), `a_scale` (scalar float), optional `a_zero_point`
    /// (scalar of A_q's type; absent means 0).
    Quantized,
    /// Inputs are float `A [M, K]`, row scales `[M]` and row zero points `[M]` (float, whole
    /// numbers in 0..=255 as the rewrite computes them); `col_sums` holds the graph's `c[n]`.
    PerRow,
}

/// A planned fused Linear: B packed, scales, bias and activation fixed.
pub struct Int8Linear {
    pub form: AForm,
    pub b: PackedB,
    /// Len 1 or N.
    pub b_scales: Vec<f32>,
    /// Len N.
    pub bias: Option<Vec<f32>>,
    pub act: Activation,
    /// `c[n]` of the per-row form (len N), else empty.
    pub col_sums: Vec<f32>,
}

impl Int8Linear {
    /// Checks the constant parts against B's shape.
    pub fn new(
        form: AForm,
        b: PackedB,
        b_scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
    ) -> Result<Self> {
        let n = b.n();
        if b_scales.len() != 1 && b_scales.len() != n {
            return Err(err(format!("{} B scales for {n} columns", b_scales.len())));
        }
        if bias.as_ref().is_some_and(|v| v.len() != n) {
            return Err(err(format!("bias length differs from N = {n}")));
        }
        Ok(Int8Linear {
            form,
            b,
            b_scales,
            bias,
            act,
            col_sums: Vec::new(),
        })
    }

    /// The per-row form, with the graph's column sums `c[n]`.
    pub fn per_row(
        b: PackedB,
        b_scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
        col_sums: Vec<f32>,
    ) -> Result<Self> {
        if col_sums.len() != b.n() {
            return Err(err(format!(
                "{} column sums for N = {}",
                col_sums.len(),
                b.n()
            )));
        }
        let mut op = Self::new(AForm::PerRow, b, b_scales, bias, act)?;
        op.col_sums = col_sums;
        Ok(op)
    }
}

thread_local! {
    /// Reused buffer for the quantized A, so steady-state runs do not allocate it.
    static A_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

fn scalar_f32(v: &Value, what: &str) -> Result<f32> {
    match v {
        Value::F32(a) if a.len() == 1 => Ok(*a.iter().next().unwrap_or(&0.0)),
        other => Err(err(format!(
            "{what} must be a float scalar, got {} {:?}",
            dname(other),
            other.shape()
        ))),
    }
}

impl Int8Linear {
    fn gemm(&self, shape: &[usize], a: &[u8], za: u8, a_scale: f32) -> Result<Value> {
        let (k, n) = (self.b.k(), self.b.n());
        let Some((&last, lead)) = shape.split_last() else {
            return Err(err("A must have rank at least 1"));
        };
        if last != k {
            return Err(err(format!(
                "A has shape {shape:?}, B has {k} rows (inner dimensions differ)"
            )));
        }
        let m: usize = lead.iter().product();
        let epi = ActEpilogue {
            b_scales: &self.b_scales,
            bias: self.bias.as_deref(),
            act: self.act,
        };
        let out = gemm_u8i8_f32_vec(
            a,
            m,
            k,
            za,
            a_scale,
            &self.b,
            &epi,
            rayon::current_num_threads(),
        )?;
        let mut out_shape = lead.to_vec();
        out_shape.push(n);
        Ok(Value::F32(
            ArrayD::from_shape_vec(IxDyn(&out_shape), out).map_err(|e| err(e.to_string()))?,
        ))
    }

    fn run_float(&self, x: &Value) -> Result<Value> {
        let mut q = A_SCRATCH.with(|c| c.take());
        let (shape, scale, zp) = match x {
            Value::F32(a) => {
                let (s, z) = match a.as_slice() {
                    Some(d) => dynamic_quantize_into(d, &mut q),
                    None => dynamic_quantize_into(&a.iter().copied().collect::<Vec<_>>(), &mut q),
                };
                (a.shape().to_vec(), s, z)
            }
            Value::F16(a) => {
                let d: Vec<f32> = a.iter().map(|v| f16::to_f32(*v)).collect();
                let (s, z) = dynamic_quantize_into(&d, &mut q);
                (a.shape().to_vec(), s, z)
            }
            other => {
                return Err(err(format!(
                    "DynamicQuantizeLinear needs a float input, got {}",
                    dname(other)
                )));
            }
        };
        let r = self.gemm(&shape, &q, zp, scale);
        A_SCRATCH.with(|c| c.set(q));
        r
    }

    fn run_quantized(&self, ins: &[Option<&Value>]) -> Result<Value> {
        let a_scale = scalar_f32(req(ins, 1)?, "a_scale")?;
        let zp = opt(ins, 2);
        match req(ins, 0)? {
            Value::U8(a) => {
                let za = match zp {
                    None => 0,
                    Some(Value::U8(z)) if z.len() == 1 => *z.iter().next().unwrap_or(&0),
                    Some(other) => {
                        return Err(err(format!(
                            "a_zero_point must be a uint8 scalar, got {} {:?}",
                            dname(other),
                            other.shape()
                        )));
                    }
                };
                match a.as_slice() {
                    Some(d) => self.gemm(a.shape(), d, za, a_scale),
                    None => {
                        let d: Vec<u8> = a.iter().copied().collect();
                        self.gemm(a.shape(), &d, za, a_scale)
                    }
                }
            }
            Value::I8(a) => {
                // A + 128 as u8 is the bit flip; the zero point moves with it (fits u8).
                let za = match zp {
                    None => 0i8,
                    Some(Value::I8(z)) if z.len() == 1 => *z.iter().next().unwrap_or(&0),
                    Some(other) => {
                        return Err(err(format!(
                            "a_zero_point must be an int8 scalar, got {} {:?}",
                            dname(other),
                            other.shape()
                        )));
                    }
                };
                let d: Vec<u8> = a.iter().map(|&v| (v as u8) ^ 0x80).collect();
                // A shifted from int8 is not a uint8 A: onnxruntime's s8 x s8 products are
                // exact, so no u8 x s8 saturation emulation applies.
                with_ort_u8s8_saturation(false, || {
                    self.gemm(a.shape(), &d, (i32::from(za) + 128) as u8, a_scale)
                })
            }
            other => Err(err(format!(
                "A must be uint8 or int8, got {}",
                dname(other)
            ))),
        }
    }
}

/// A per-row input as a contiguous `[M]` slice of the expected type.
fn row_vector<'v, T: Copy>(
    v: &'v ndarray::ArrayD<T>,
    m: usize,
    what: &str,
) -> Result<std::borrow::Cow<'v, [T]>> {
    if v.len() != m || v.ndim() > 1 {
        return Err(err(format!(
            "{what} has shape {:?}, expected [{m}] (one per row of A)",
            v.shape()
        )));
    }
    Ok(match v.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.iter().copied().collect()),
    })
}

impl Int8Linear {
    fn run_per_row(&self, ins: &[Option<&Value>]) -> Result<Value> {
        let (k, n) = (self.b.k(), self.b.n());
        let x = req(ins, 0)?;
        // QuantizeLinear also takes float16 (opset 19+) and int32 (opset 10-18) input; its
        // x / scale is the float32 division either way.
        let converted;
        let a = match x {
            Value::F32(a) => a,
            Value::F16(a) => {
                converted = a.mapv(f16::to_f32);
                &converted
            }
            Value::I32(a) => {
                converted = a.mapv(|v| v as f32);
                &converted
            }
            other => {
                return Err(err(format!(
                    "QuantizeLinear input type {} is not supported",
                    dname(other)
                )));
            }
        };
        let &[m, ka] = a.shape() else {
            return Err(err(format!(
                "per-row quantized A must be 2-D [M, K], got shape {:?}",
                a.shape()
            )));
        };
        if ka != k {
            return Err(err(format!(
                "A has shape {:?}, B has {k} rows (inner dimensions differ)",
                a.shape()
            )));
        }
        let (Value::F32(s), Value::F32(zf)) = (req(ins, 1)?, req(ins, 2)?) else {
            return Err(err("per-row scales and zero points must be float"));
        };
        let scales = row_vector(s, m, "row scales")?;
        let zps_f = row_vector(zf, m, "row zero points")?;
        // The uint8 zero point the kernel subtracts; a float one that is not a whole number
        // in 0..=255 is made up for by the correction below.
        let zps: Vec<u8> = zps_f
            .iter()
            .map(|&f| f.clamp(0.0, 255.0).round_ties_even() as u8)
            .collect();
        let a_data = match a.as_slice() {
            Some(d) => std::borrow::Cow::Borrowed(d),
            None => std::borrow::Cow::Owned(a.iter().copied().collect::<Vec<f32>>()),
        };
        let mut q = A_SCRATCH.with(|c| c.take());
        q.clear();
        q.resize(m * k, 0);
        if k > 0 {
            for (r, (xr, qr)) in a_data
                .chunks_exact(k)
                .zip(q.chunks_exact_mut(k))
                .enumerate()
            {
                if f32::from(zps[r]) == zps_f[r] {
                    quantize_with_into(xr, scales[r], zps[r], qr);
                } else {
                    // Cast<uint8>(Clip(Round(x / s) + z, 0, 255)) with a fractional z.
                    for (o, &v) in qr.iter_mut().zip(xr) {
                        *o = ((v / scales[r]).round_ties_even() + zps_f[r]).clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
        // Rows whose float zero point is not their uint8 one need a float correction, which
        // must come before bias and activation: those then run here instead of in the kernel.
        let exact = zps
            .iter()
            .zip(zps_f.iter())
            .all(|(&z, &f)| f32::from(z) == f);
        let epi = ActEpilogue {
            b_scales: &self.b_scales,
            bias: if exact { self.bias.as_deref() } else { None },
            act: if exact { self.act } else { Activation::None },
        };
        let out = gemm_u8i8_f32_rows_vec(
            &q,
            m,
            k,
            &zps,
            &scales,
            &self.b,
            &epi,
            rayon::current_num_threads(),
        );
        A_SCRATCH.with(|c| c.set(q));
        let mut out = out?;
        if !exact && n > 0 {
            for (r, row) in out.chunks_exact_mut(n).enumerate() {
                let dz = f32::from(zps[r]) - zps_f[r];
                for (c, y) in row.iter_mut().enumerate() {
                    let bs = self.b_scales[if self.b_scales.len() == 1 { 0 } else { c }];
                    let mut v = *y + dz * self.col_sums[c] * (scales[r] * bs);
                    if let Some(b) = &self.bias {
                        v += b[c];
                    }
                    *y = self.act.eval(v);
                }
            }
        }
        Ok(Value::F32(
            ArrayD::from_shape_vec(IxDyn(&[m, n]), out).map_err(|e| err(e.to_string()))?,
        ))
    }
}

impl Op for Int8Linear {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let y = match self.form {
            AForm::Float => self.run_float(req(ins, 0)?)?,
            AForm::Quantized => self.run_quantized(ins)?,
            AForm::PerRow => self.run_per_row(ins)?,
        };
        Ok(vec![y])
    }
}
