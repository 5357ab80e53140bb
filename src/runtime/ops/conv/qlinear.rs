//! `QLinearConv` (opset 10): convolution of quantized tensors with a requantized output.
//!
//! `x` and `w` are uint8 or int8 with zero points `x_zero_point` (scalar) and `w_zero_point`
//! (scalar or one per output channel) and scales `x_scale` (scalar), `w_scale` (scalar or per
//! output channel), `y_scale`; optional int32 bias `B`. The accumulator
//! `acc = Σ (x - x_zp)(w - w_zp) + B` is rescaled to
//! `y = saturate(round_half_even(acc · (x_scale·w_scale/y_scale) + y_zp))` in `y_zero_point`'s
//! type. Window attributes as Conv. The products run through Conv's f32 GEMM on the
//! zero-point-shifted integers, which is exact while a channel's sum stays below 2^24.

use ndarray::{Array1, Array2, ArrayD, IxDyn};

use super::{BuildCtx, ConvShape, Ident, Op, Registry, WindowAttrs, conv_f32, input};
use crate::error::Result;
use crate::ir::Node;
use crate::runtime::value::Value;

pub fn register(r: &mut Registry) {
    r.register("", "QLinearConv", build);
}

struct QLinearConvOp {
    id: Ident,
    window: WindowAttrs,
    group: usize,
}

fn build(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(QLinearConvOp {
        id: Ident::of(node),
        window: WindowAttrs::parse(node)?,
        group: node.attr_positive("group", 1)?,
    }))
}

/// Values of an 8-bit quantized tensor as f32, with its shape and whether it is signed.
fn q8(v: &Value, what: &str, id: &Ident) -> Result<(Vec<usize>, Vec<f32>, bool)> {
    match v {
        Value::U8(a) => Ok((
            a.shape().to_vec(),
            a.iter().map(|&x| x as f32).collect(),
            false,
        )),
        Value::I8(a) => Ok((
            a.shape().to_vec(),
            a.iter().map(|&x| x as f32).collect(),
            true,
        )),
        other => Err(id.error(format!(
            "{what} has type {:?}, expected uint8 or int8",
            other.dtype()
        ))),
    }
}

fn scales(v: &Value, what: &str, id: &Ident) -> Result<Vec<f32>> {
    match v {
        Value::F32(a) => Ok(a.iter().copied().collect()),
        other => Err(id.error(format!(
            "{what} has type {:?}, expected float",
            other.dtype()
        ))),
    }
}

impl Op for QLinearConvOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let get = |i: usize, what: &str| {
            input(inputs, i).ok_or_else(|| id.error(format!("missing input {what}")))
        };
        let (xs, mut x, _) = q8(get(0, "x")?, "x", id)?;
        let x_scale = scales(get(1, "x_scale")?, "x_scale", id)?;
        let (_, xz, _) = q8(get(2, "x_zero_point")?, "x_zero_point", id)?;
        let (ws, mut w, _) = q8(get(3, "w")?, "w", id)?;
        let w_scale = scales(get(4, "w_scale")?, "w_scale", id)?;
        let (_, wz, _) = q8(get(5, "w_zero_point")?, "w_zero_point", id)?;
        let y_scale = scales(get(6, "y_scale")?, "y_scale", id)?;
        let yzv = get(7, "y_zero_point")?;
        let (_, yz, y_signed) = q8(yzv, "y_zero_point", id)?;
        if xs.len() < 3 || xs.len() != ws.len() {
            return Err(id.error(format!("x has shape {xs:?} and w {ws:?} (ranks differ)")));
        }
        let (n, c, m, g) = (xs[0], xs[1], ws[0], self.group);
        let cg = ws[1];
        if c != cg * g || m % g != 0 {
            return Err(id.error(format!(
                "x has {c} channels and w shape {ws:?}: not compatible with group {g}"
            )));
        }
        let per_channel = |v: &[f32], what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; m]),
                l if l == m => Ok(v.to_vec()),
                l => Err(id.error(format!("{what} has {l} values for {m} output channels"))),
            }
        };
        if x_scale.len() != 1 || xz.len() != 1 || y_scale.len() != 1 || yz.len() != 1 {
            return Err(id.error("x_scale, x_zero_point, y_scale and y_zero_point must be scalars"));
        }
        let w_scale = per_channel(&w_scale, "w_scale")?;
        let wz = per_channel(&wz, "w_zero_point")?;
        x.iter_mut().for_each(|v| *v -= xz[0]);
        let row = w.len() / m.max(1);
        for (oc, r) in w.chunks_mut(row.max(1)).enumerate() {
            r.iter_mut().for_each(|v| *v -= wz[oc]);
        }
        let bias = match input(inputs, 8) {
            Some(Value::I32(b)) if b.len() == m => {
                Some(Array1::from_iter(b.iter().map(|&v| v as f32)))
            }
            Some(b) => {
                return Err(id.error(format!(
                    "B has type {:?} and {} values, expected int32 with {m}",
                    b.dtype(),
                    b.len()
                )));
            }
            None => None,
        };
        let geo = self.window.geometry(&xs[2..], &ws[2..], id)?;
        let mut yshape = vec![n, m];
        yshape.extend_from_slice(geo.out_shape());
        let mut acc = vec![0f32; n * m * geo.out_size()];
        if !acc.is_empty() {
            let w2 = Array2::from_shape_vec((m, row), w).map_err(|e| id.error(e.to_string()))?;
            conv_f32(
                &geo,
                &ConvShape { n, cg, m, g },
                &x,
                &w2,
                bias.as_ref(),
                &mut acc,
            )
            .map_err(|e| id.error(e))?;
        }
        let p = geo.out_size().max(1);
        let (lo, hi) = if y_signed {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        let q: Vec<f64> = acc
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let oc = (i / p) % m.max(1);
                let mult = x_scale[0] * w_scale[oc] / y_scale[0];
                (a as f64 * mult as f64 + yz[0] as f64)
                    .clamp(lo, hi)
                    .round_ties_even()
            })
            .collect();
        let err = |e: ndarray::ShapeError| id.error(e.to_string());
        Ok(vec![if y_signed {
            Value::I8(
                ArrayD::from_shape_vec(IxDyn(&yshape), q.iter().map(|&v| v as i8).collect())
                    .map_err(err)?,
            )
        } else {
            Value::U8(
                ArrayD::from_shape_vec(IxDyn(&yshape), q.iter().map(|&v| v as u8).collect())
                    .map_err(err)?,
            )
        }])
    }
}
