//! Removes `Identity` and inference-mode `Dropout`.
//!
//! Dropout is the identity at inference when:
//! - opset 1-6: attribute `is_test` is nonzero (0, the default, means training mode);
//! - opset 7-11: always (the mode is the runtime's, and inference runtimes run it as Y = X);
//! - opset 12+: input `training_mode` is absent or a constant false.
//!
//! Its optional `mask` output must be unused. See [`super::bypass`] for how readers and graph
//! outputs are kept.

use crate::ir::NameGen;
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Step};

use super::{Pass, PassEnv};
use crate::ir::Graph;

pub const PASS: Pass = Pass {
    name: "remove_identity",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[Step::op(&["Identity", "Dropout"]).check(removable)],
};

fn removable(n: &crate::ir::Node, cx: &MatchCtx) -> bool {
    if n.op_type() == "Identity" {
        return true;
    }
    if !n.outputs().iter().skip(1).all(|o| cx.unused(o)) {
        return false;
    }
    if cx.opset < 7 {
        return n.attr::<i64>("is_test").ok().flatten().unwrap_or(0) != 0;
    }
    match n.input(2) {
        None => true,
        Some(t) => cx
            .constant(t)
            .and_then(|t| t.to_i64_vec().ok().or_else(|| bool_values(t)))
            .is_some_and(|v| v.len() == 1 && v[0] == 0),
    }
}

fn bool_values(t: &crate::ir::Tensor) -> Option<Vec<i64>> {
    let v = t.as_slice::<bool>().ok()?;
    Some(v.iter().map(|&b| b as i64).collect())
}

fn rewrite(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let i = m.last();
    let n = &cx.graph.nodes[i];
    super::bypass::bypass(cx, &[i], n.input(0)?, n.outputs().first()?)
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> crate::error::Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
