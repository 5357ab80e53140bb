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

use half::f16;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::{ActEpilogue, Activation, PackedB, gemm_u8i8_f32_vec};
use crate::runtime::kernels::quantize_u8::dynamic_quantize_into;

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
        })
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
                self.gemm(a.shape(), &d, (i32::from(za) + 128) as u8, a_scale)
            }
            other => Err(err(format!(
                "A must be uint8 or int8, got {}",
                dname(other)
            ))),
        }
    }
}

impl Op for Int8Linear {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let y = match self.form {
            AForm::Float => self.run_float(req(ins, 0)?)?,
            AForm::Quantized => self.run_quantized(ins)?,
        };
        Ok(vec![y])
    }
}
