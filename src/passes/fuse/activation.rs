//! The activation after a Linear unit (`MatMul`/`Gemm` [+ `Add`] + activation), put in the
//! form the quantizer carries into its output and the runtime fuses into the GEMM epilogue.
//!
//! The units themselves are recognized by [`super::units`] (Relu, LeakyRelu, and Clip with
//! min 0 and max 6 as ReLU6); this pass rewrites the spellings of ReLU that exporters emit
//! instead of `Relu`: `Clip` with min 0 and no max (or +inf), and `Max(x, 0)` with a scalar
//! constant 0. `Clip` takes min/max as attributes before opset 11 and as inputs from 11 on.

use crate::error::Result;
use crate::ir::{Graph, NameGen, Node};
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "linear_activation",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[
        Step::op(&["MatMul", "Gemm"]),
        Step::op(&["Add"]).from(Slot::Any).optional(),
        Step::op(&["Clip", "Max"]).from(Slot::Any).check(is_relu),
    ],
};

/// The scalar value of a constant, when it has exactly one element.
fn scalar(cx: &MatchCtx, name: &str) -> Option<f32> {
    let t = cx.constant(name)?;
    if t.numel() != 1 {
        return None;
    }
    match t.data_type().ok()? {
        crate::onnx::tensor_proto::DataType::Float => Some(t.as_slice::<f32>().ok()?[0]),
        _ => None,
    }
}

/// The Clip bounds (min, max), either form.
pub fn clip_bounds(n: &Node, cx: &MatchCtx) -> Option<(f32, f32)> {
    if cx.opset < 11 {
        let lo = n.attr::<f32>("min").ok()?.unwrap_or(f32::MIN);
        let hi = n.attr::<f32>("max").ok()?.unwrap_or(f32::MAX);
        return Some((lo, hi));
    }
    let lo = match n.input(1) {
        Some(v) => scalar(cx, v)?,
        None => f32::NEG_INFINITY,
    };
    let hi = match n.input(2) {
        Some(v) => scalar(cx, v)?,
        None => f32::INFINITY,
    };
    Some((lo, hi))
}

fn is_relu(n: &Node, cx: &MatchCtx) -> bool {
    match n.op_type() {
        "Clip" => clip_bounds(n, cx).is_some_and(|(lo, hi)| {
            lo == 0.0 && (hi == f32::INFINITY || (cx.opset < 11 && hi == f32::MAX))
        }),
        "Max" => {
            n.inputs().len() == 2
                && n.inputs().iter().any(|i| {
                    scalar(cx, i) == Some(0.0)
                        && cx.constant(i).is_some_and(|t| t.dims().is_empty())
                })
        }
        _ => false,
    }
}

fn rewrite(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let last = m.last();
    let act = &cx.graph.nodes[last];
    let prev = &cx.graph.nodes[m.at(1).or(m.at(0))?];
    let x = prev.outputs().first()?.clone();
    let relu = Node::new(
        act.name(),
        "Relu",
        "",
        vec![x],
        vec![act.outputs().first()?.clone()],
    );
    Some(Edit::default().put(last, vec![relu]))
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
