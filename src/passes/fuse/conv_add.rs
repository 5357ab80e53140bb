//! `Conv` followed by `Add` of a per-channel constant: the constant becomes (or is added to)
//! the Conv's bias `B [M]`. Some exporters emit the bias this way (`Conv` then `Add` of a
//! `[1, M, 1, 1]` tensor).
//!
//! The constant must broadcast along the channel axis only: aligned to the Conv output's rank
//! `r` from the right, its dim at axis 1 is M or 1 and every other dim is 1, and its rank is at
//! most `r` (so the Add's output shape is the Conv's). Float32 only. The Conv keeps its name and
//! writes the Add's output.

use crate::error::Result;
use crate::ir::{Graph, NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "conv_add",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[
        Step::op(&["Conv"]).consts(&[1]).check(bias_const),
        Step::op(&["Add"]).from(Slot::Any),
    ],
};

fn bias_const(n: &Node, cx: &MatchCtx) -> bool {
    n.input(2).is_none_or(|b| cx.constant(b).is_some())
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    if t.data_type().ok()? != DataType::Float {
        return None;
    }
    Some(t.as_slice::<f32>().ok()?.into_owned())
}

fn rewrite(cx: &MatchCtx, m: &Match, names: &mut NameGen) -> Option<Edit> {
    let (ci, ai) = (m.at(0)?, m.at(1)?);
    let (conv, add) = (&cx.graph.nodes[ci], &cx.graph.nodes[ai]);
    let y = conv.outputs().first()?;
    let pos = add.inputs().iter().position(|i| i == y)?;
    let c_name = add.input(1 - pos)?;
    let c = cx.constant(c_name)?;
    let w = cx.constant(conv.input(1)?)?;
    let rank = w.dims().len();
    let m_out = usize::try_from(*w.dims().first()?).ok()?;
    let cd = c.dims();
    if w.data_type().ok()? != DataType::Float || cd.len() > rank || rank < 3 {
        return None;
    }
    // The constant's dim that lands on output axis 1, when it has one.
    let channel_dim = (cd.len() + 1 >= rank).then(|| cd[cd.len() + 1 - rank]);
    let off = rank - cd.len();
    let others_one = cd.iter().enumerate().all(|(k, &d)| off + k == 1 || d == 1);
    let per_channel = match channel_dim {
        Some(d) if d == m_out as i64 => true,
        Some(1) | None => false,
        _ => return None,
    };
    if !others_one {
        return None;
    }
    let cv = f32s(c)?;
    let mut bias = match conv.input(2) {
        Some(b) => f32s(cx.constant(b)?)?,
        None => vec![0.0; m_out],
    };
    if bias.len() != m_out {
        return None;
    }
    for (k, b) in bias.iter_mut().enumerate() {
        *b += if per_channel { cv[k] } else { cv[0] };
    }
    let b_name = names.fresh(&format!("{}_bias", conv.input(1)?));
    let mut fused = conv.clone();
    fused.proto.input.truncate(2);
    fused.proto.input.push(b_name.clone());
    fused.proto.output = vec![add.outputs().first()?.clone()];
    Some(
        Edit {
            initializers: vec![Tensor::from_vec(&b_name, &[m_out], bias)],
            ..Default::default()
        }
        .put(ci, vec![fused])
        .remove(ai),
    )
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
