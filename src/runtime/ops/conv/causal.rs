//! `CausalConvWithState` (opset 27): a causal depthwise 1-D convolution that carries its left
//! context between calls (the conv step of Mamba / Gated DeltaNet blocks).
//!
//! `input [B, C, L]`, `weight [C, 1, k]`, optional `bias [C]` and `past_state [B, C, k-1]`
//! (default zeros). With `padded = concat(past_state, input)` along the length,
//! `output[b, c, t] = bias[c] + Σ_j weight[c, 0, j]·padded[b, c, t + j]` (`[B, C, L]`),
//! followed by `x·sigmoid(x)` when `activation` is `silu` or `swish` (default `none`), and
//! `present_state` is the last `k - 1` positions of `padded`. f32 (f16, f64 computed in f32,
//! rounded to the input type before the activation, as the reference does).

use ndarray::{ArrayD, IxDyn};

use super::{BuildCtx, Ident, Op, Registry, float_input, input};
use crate::error::Result;
use crate::ir::Node;
use crate::runtime::value::Value;

pub fn register(r: &mut Registry) {
    r.register("", "CausalConvWithState", build);
}

struct CausalConvOp {
    id: Ident,
    silu: bool,
}

fn build(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let silu = match node
        .attr_or::<String>("activation", "none".into())?
        .as_str()
    {
        "none" => false,
        "silu" | "swish" => true,
        a => return Err(node.error(format!("unknown activation '{a}'"))),
    };
    Ok(Box::new(CausalConvOp {
        id: Ident::of(node),
        silu,
    }))
}

impl Op for CausalConvOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let id = &self.id;
        let xv = input(inputs, 0).ok_or_else(|| id.error("missing input"))?;
        let x = float_input(xv, "input", id)?;
        let w = float_input(
            input(inputs, 1).ok_or_else(|| id.error("missing weight"))?,
            "weight",
            id,
        )?;
        let bias = input(inputs, 2)
            .map(|b| float_input(b, "bias", id))
            .transpose()?;
        let past = input(inputs, 3)
            .map(|p| float_input(p, "past_state", id))
            .transpose()?;
        let (xs, ws) = (x.shape(), w.shape());
        if xs.len() != 3 || ws.len() != 3 || ws[0] != xs[1] || ws[1] != 1 || ws[2] == 0 {
            return Err(id.error(format!(
                "input {xs:?} and weight {ws:?} must be [B, C, L] and [C, 1, k] with k > 0"
            )));
        }
        let (b, c, l, k) = (xs[0], xs[1], xs[2], ws[2]);
        let ctx = k - 1;
        if let Some(p) = &past
            && p.shape() != [b, c, ctx]
        {
            return Err(id.error(format!(
                "past_state has shape {:?}, expected {:?}",
                p.shape(),
                [b, c, ctx]
            )));
        }
        if let Some(bb) = &bias
            && bb.len() != c
        {
            return Err(id.error(format!("bias has {} values for {c} channels", bb.len())));
        }
        let (xd, wd) = (x.as_slice().unwrap_or(&[]), w.as_slice().unwrap_or(&[]));
        let pd = past.as_ref().and_then(|p| p.as_slice());
        // The result rounds to the input type before the activation, as the reference does.
        let round: fn(f32) -> f32 = match xv {
            Value::F16(_) => |v| half::f16::from_f32(v).to_f32(),
            _ => |v| v,
        };
        let mut y = Vec::with_capacity(b * c * l);
        let mut state = Vec::with_capacity(b * c * ctx);
        let mut padded = vec![0f32; ctx + l];
        for bi in 0..b {
            for ci in 0..c {
                let row = bi * c + ci;
                match pd {
                    Some(pd) => padded[..ctx].copy_from_slice(&pd[row * ctx..][..ctx]),
                    None => padded[..ctx].fill(0.0),
                }
                padded[ctx..].copy_from_slice(&xd[row * l..][..l]);
                let wr = &wd[ci * k..][..k];
                let b0 = bias.as_ref().map_or(0.0, |bb| bb[ci]);
                for t in 0..l {
                    let s = padded[t..t + k]
                        .iter()
                        .zip(wr)
                        .fold(b0, |acc, (&v, &wv)| acc + v * wv);
                    let s = round(s);
                    y.push(if self.silu { s / (1.0 + (-s).exp()) } else { s });
                }
                state.extend_from_slice(&padded[l..]);
            }
        }
        let err = |e: ndarray::ShapeError| id.error(e.to_string());
        let y = ArrayD::from_shape_vec(IxDyn(&[b, c, l]), y).map_err(err)?;
        let state = ArrayD::from_shape_vec(IxDyn(&[b, c, ctx]), state).map_err(err)?;
        Ok(vec![super::like(y, xv), super::like(state, xv)])
    }
}
