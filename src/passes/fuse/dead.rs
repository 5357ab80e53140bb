//! Removes default-domain nodes none of whose outputs is read or is a graph output: what other
//! passes leave behind (a `Shape` whose every use was folded, a chain cut short). ONNX ops
//! have no side effects, so an unread node computes nothing anyone sees.

use crate::error::Result;
use crate::ir::{Graph, NameGen, Node};
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Step};

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "remove_dead",
    run,
};

const ANY: &[&str] = &[];

const PATTERN: Pattern = Pattern {
    steps: &[Step::op(ANY).check(dead)],
};

fn dead(n: &Node, cx: &MatchCtx) -> bool {
    n.outputs().iter().all(|o| cx.unused(o))
}

fn rewrite(_: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    Some(Edit::default().remove(m.last()))
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
