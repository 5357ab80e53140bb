//! Consecutive layout ops simplified:
//! - `Reshape`/`Flatten`/`Squeeze`/`Unsqueeze` followed by `Reshape` to a constant shape:
//!   the first is dropped (a Reshape's result depends only on its input's element count and
//!   the target, as long as the target has no 0 that copies a dim of the intermediate; with
//!   `allowzero` 1 a 0 is a literal 0 and is fine);
//! - `Transpose` then `Transpose`: one Transpose with the composed permutation
//!   (`perm[i] = p1[p2[i]]`), or nothing when that is the identity;
//! - `Unsqueeze` then `Squeeze` of the same axes, or `Squeeze` then `Unsqueeze` of the same
//!   axes: nothing. Axes are the `axes` attribute before opset 13 and a constant input from
//!   13 on; negative axes are normalized against the larger rank, which must be known.
//!
//! The first node's output must be read by the second alone (the matcher checks this).

use crate::error::Result;
use crate::ir::{Graph, NameGen, Node};
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};

use super::bypass::bypass;
use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "shape_chain",
    run,
};

const RESHAPES: Pattern = Pattern {
    steps: &[
        Step::op(&["Reshape", "Flatten", "Squeeze", "Unsqueeze"]),
        Step::op(&["Reshape"]).consts(&[1]).check(no_copied_dims),
    ],
};

const TRANSPOSES: Pattern = Pattern {
    steps: &[
        Step::op(&["Transpose"]),
        Step::op(&["Transpose"]).from(Slot::Input(0)),
    ],
};

const SQUEEZES: Pattern = Pattern {
    steps: &[
        Step::op(&["Squeeze", "Unsqueeze"]),
        Step::op(&["Squeeze", "Unsqueeze"]).from(Slot::Input(0)),
    ],
};

fn no_copied_dims(n: &Node, cx: &MatchCtx) -> bool {
    let allowzero = n.attr::<i64>("allowzero").ok().flatten().unwrap_or(0) != 0;
    n.input(1)
        .and_then(|s| cx.constant(s))
        .and_then(|t| t.to_i64_vec().ok())
        .is_some_and(|v| allowzero || !v.contains(&0))
}

fn merge_reshapes(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let (a, b) = (m.at(0)?, m.at(1)?);
    let first = &cx.graph.nodes[a];
    let mut second = cx.graph.nodes[b].clone();
    second.proto.input[0] = first.input(0)?.to_string();
    Some(Edit::default().remove(a).put(b, vec![second]))
}

fn perm_of(n: &Node, cx: &MatchCtx) -> Option<Vec<usize>> {
    match n.attr::<Vec<i64>>("perm").ok()? {
        Some(p) => p.iter().map(|&v| usize::try_from(v).ok()).collect(),
        None => {
            let r = cx.type_of(n.input(0)?)?.rank()?;
            Some((0..r).rev().collect())
        }
    }
}

fn compose_transposes(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let (a, b) = (m.at(0)?, m.at(1)?);
    let (t1, t2) = (&cx.graph.nodes[a], &cx.graph.nodes[b]);
    let (p1, p2) = (perm_of(t1, cx)?, perm_of(t2, cx)?);
    if p1.len() != p2.len() {
        return None;
    }
    let perm: Vec<usize> = p2
        .iter()
        .map(|&i| p1.get(i).copied())
        .collect::<Option<_>>()?;
    let x = t1.input(0)?;
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return bypass(cx, &[a, b], x, t2.outputs().first()?);
    }
    let mut t = t2.clone();
    t.proto.input[0] = x.to_string();
    t.proto.attribute.retain(|at| at.name() != "perm");
    t.proto.attribute.push(crate::ir::attrs::attr_ints(
        "perm",
        perm.iter().map(|&p| p as i64).collect(),
    ));
    Some(Edit::default().remove(a).put(b, vec![t]))
}

/// The axes of a Squeeze/Unsqueeze normalized against `rank`, sorted.
fn axes_of(n: &Node, cx: &MatchCtx, rank: usize) -> Option<Vec<usize>> {
    let raw = if cx.opset < 13 {
        n.attr::<Vec<i64>>("axes").ok()??
    } else {
        cx.constant(n.input(1)?)?.to_i64_vec().ok()?
    };
    let mut v: Vec<usize> = raw
        .iter()
        .map(|&a| {
            let a = if a < 0 { a + rank as i64 } else { a };
            usize::try_from(a).ok().filter(|&a| a < rank)
        })
        .collect::<Option<_>>()?;
    v.sort_unstable();
    Some(v)
}

fn cancel_squeezes(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let (a, b) = (m.at(0)?, m.at(1)?);
    let (n1, n2) = (&cx.graph.nodes[a], &cx.graph.nodes[b]);
    if n1.op_type() == n2.op_type() {
        return None;
    }
    let x = n1.input(0)?;
    let mid = n1.outputs().first()?;
    // The larger of the two ranks: Unsqueeze's output, Squeeze's input.
    let rank = if n1.op_type() == "Unsqueeze" {
        cx.type_of(mid)?.rank()?
    } else {
        cx.type_of(x)?.rank()?
    };
    let (ax1, ax2) = (axes_of(n1, cx, rank)?, axes_of(n2, cx, rank)?);
    if ax1.is_empty() || ax1 != ax2 {
        return None;
    }
    bypass(cx, &[a, b], x, n2.outputs().first()?)
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    let (o, t) = (env.opset, env.outer_types);
    let mut n = pattern::apply(g, o, t, names, &RESHAPES, merge_reshapes)?;
    n += pattern::apply(g, o, t, names, &TRANSPOSES, compose_transposes)?;
    n += pattern::apply(g, o, t, names, &SQUEEZES, cancel_squeezes)?;
    Ok(n)
}
