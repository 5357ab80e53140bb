//! `Conv` followed by inference `BatchNormalization`, folded into the Conv's weight and bias.
//!
//! BatchNormalization (opset 7+, inference): `y = scale * (x - mean) / sqrt(var + epsilon) + B`
//! per channel (axis 1). With `s[m] = scale[m] / sqrt(var[m] + epsilon)`, a Conv with weight
//! `W [M, C/group, k...]` and bias `b` (0 when absent) followed by it equals a Conv with
//! `W'[m] = W[m] * s[m]` and `b'[m] = (b[m] - mean[m]) * s[m] + B[m]`; groups change nothing,
//! since output channel m still owns `W[m]`. Computed in f64, stored f32.
//!
//! Fires only when W, the bias and BN's four parameters are float32 constants of the right
//! shapes, BN is in inference mode (`training_mode` 0; `spatial` 1 before opset 9), BN's
//! optional running-statistics outputs are unused, and the Conv output is read by BN alone.
//! The fused Conv keeps the Conv's name and writes BN's output.

use crate::error::Result;
use crate::ir::{Graph, NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "conv_batchnorm",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[
        Step::op(&["Conv"]).consts(&[1]).check(conv_ok),
        Step::op(&["BatchNormalization"])
            .from(Slot::Input(0))
            .consts(&[1, 2, 3, 4])
            .check(bn_ok),
    ],
};

fn conv_ok(n: &Node, cx: &MatchCtx) -> bool {
    n.input(2).is_none_or(|b| cx.constant(b).is_some())
}

fn bn_ok(n: &Node, cx: &MatchCtx) -> bool {
    cx.opset >= 7
        && n.attr::<i64>("training_mode").ok().flatten().unwrap_or(0) == 0
        && (cx.opset >= 9 || n.attr::<i64>("spatial").ok().flatten().unwrap_or(1) == 1)
        && n.outputs().iter().skip(1).all(|o| cx.unused(o))
}

fn floats(t: &Tensor, len: usize) -> Option<Vec<f64>> {
    if t.data_type().ok()? != DataType::Float || t.numel() != len || t.dims().len() != 1 {
        return None;
    }
    Some(
        t.as_slice::<f32>()
            .ok()?
            .iter()
            .map(|&v| v as f64)
            .collect(),
    )
}

fn rewrite(cx: &MatchCtx, m: &Match, names: &mut NameGen) -> Option<Edit> {
    let (ci, bi) = (m.at(0)?, m.at(1)?);
    let (conv, bn) = (&cx.graph.nodes[ci], &cx.graph.nodes[bi]);
    let w = cx.constant(conv.input(1)?)?;
    if w.data_type().ok()? != DataType::Float || w.dims().len() < 3 {
        return None;
    }
    let m_out = usize::try_from(w.dims()[0]).ok()?;
    let param = |k: usize| floats(cx.constant(bn.input(k)?)?, m_out);
    let (scale, shift, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let bias = match conv.input(2) {
        Some(b) => floats(cx.constant(b)?, m_out)?,
        None => vec![0.0; m_out],
    };
    let eps = bn.attr::<f32>("epsilon").ok()?.unwrap_or(1e-5) as f64;
    let s: Vec<f64> = (0..m_out)
        .map(|c| scale[c] / (var[c] + eps).sqrt())
        .collect();
    if s.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let wv = w.as_slice::<f32>().ok()?;
    let per = wv.len() / m_out.max(1);
    let new_w: Vec<f32> = wv
        .iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 * s[i / per]) as f32)
        .collect();
    let new_b: Vec<f32> = (0..m_out)
        .map(|c| ((bias[c] - mean[c]) * s[c] + shift[c]) as f32)
        .collect();
    let w_name = names.fresh(&format!("{}_bn_folded", w.name()));
    let b_name = names.fresh(&format!("{}_bn_folded_bias", w.name()));
    let mut fused = conv.clone();
    let x = conv.input(0)?.to_string();
    fused.proto.input = vec![x, w_name.clone(), b_name.clone()];
    fused.proto.output = vec![bn.outputs().first()?.clone()];
    Some(
        Edit {
            initializers: vec![
                Tensor::from_vec(&w_name, &w.shape(), new_w),
                Tensor::from_vec(&b_name, &[m_out], new_b),
            ],
            ..Default::default()
        }
        .put(ci, vec![fused])
        .remove(bi),
    )
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
