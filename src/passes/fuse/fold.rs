//! Constant folding as a fusion pass: see [`crate::passes::fold_constants`] (nodes whose
//! inputs are all constant, and shape arithmetic whose values shape inference knows, e.g. the
//! `Shape -> Gather -> Unsqueeze -> Concat` chains exporters emit, wherever the dims they read
//! are known).

use crate::error::Result;
use crate::ir::{Graph, NameGen};
use crate::passes::fold_constants::fold_graph_shallow;

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "fold_constants",
    run,
};

fn run(g: &mut Graph, env: &PassEnv, _: &mut NameGen) -> Result<usize> {
    fold_graph_shallow(g, env.opset, env.outer_types)
}
