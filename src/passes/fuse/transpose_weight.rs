//! `Transpose` of a constant feeding `MatMul`'s B: the transposed weight is stored instead, so
//! the quantizer (and the runtime) see a plain `[K, N]` initializer. Exporters emit this for
//! `Linear` layers (`x @ W.T`). Transpose's `perm` defaults to reversing the axes.
//!
//! The Transpose output must be read by the MatMul alone; the original weight is dropped when
//! nothing else reads it. This is the one pass here that writes new weight data (one copy of
//! the transposed tensor).

use crate::error::Result;
use crate::ir::{Graph, NameGen};
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};
use crate::runtime::Value;
use crate::runtime::ops::data::transpose_value;

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "transpose_weight",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[
        Step::op(&["Transpose"]).consts(&[0]),
        Step::op(&["MatMul"]).from(Slot::Input(1)),
    ],
};

fn rewrite(cx: &MatchCtx, m: &Match, names: &mut NameGen) -> Option<Edit> {
    let (t, mm) = (m.at(0)?, m.at(1)?);
    let tn = &cx.graph.nodes[t];
    let w = cx.constant(tn.input(0)?)?;
    let perm = tn.transpose_perm(w.dims().len())?;
    let v = Value::from_tensor(w).ok()?;
    let out = transpose_value(&v, &perm).ok()?;
    let name = names.fresh(&format!("{}_transposed", w.name()));
    let mut new_mm = cx.graph.nodes[mm].clone();
    new_mm.proto.input[1] = name.clone();
    Some(
        Edit {
            initializers: vec![out.to_tensor(&name)],
            ..Default::default()
        }
        .remove(t)
        .put(mm, vec![new_mm]),
    )
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)
}
