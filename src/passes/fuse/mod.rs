//! Graph cleanup and fusion before quantization, so that the rewrite sees whole Linear
//! (+ activation) units and the runtime can run them as one fused kernel.
//!
//! Each pass lives in its own file; most are a [`Pattern`](super::pattern::Pattern) plus a
//! rewrite. The manager runs them in the fixed order of [`PASSES`], on the main graph and then
//! on every If/Loop/Scan body (with the enclosing scopes' types known), and repeats the whole
//! sequence until nothing fires (at most [`MAX_ROUNDS`] times). It returns how often each pass
//! fired. The same input gives the same output: passes read nodes in stored order and take
//! fresh names from one [`NameGen`].
//!
//! Invariants every pass keeps: graph inputs and outputs keep their names; a value another
//! node or a subgraph still reads is never removed; value_info entries of values that no
//! longer exist are dropped; new nodes are standard ONNX valid at the model's opset.
//!
//! The Linear units the passes leave (what the quantizer rewrites and the runtime's fused
//! kernels look for): `Gemm(A, W, C)` in 2-D, or `MatMul(A, W)` then `Add(product, bias [N])`
//! in N-D, each read by its next node alone and optionally followed by `Relu`, `LeakyRelu` or
//! `Clip(0, 6)`. After quantization the bias Add (Gemm's C) and the activation follow the
//! rescale `Mul` directly. [`units`] finds them.
//!
//! Adding a pass: a file with a [`Pattern`](super::pattern::Pattern), a rewrite returning an
//! [`Edit`](super::pattern::Edit), and `pub const PASS: Pass` whose `run` calls
//! [`pattern::apply`](super::pattern::apply); then list it in [`PASSES`].

pub mod activation;
pub mod bypass;
pub mod conv_add;
pub mod conv_bn;
pub mod dead;
pub mod fold;
pub mod identity;
pub mod matmul_add;
pub mod shape_chain;
pub mod transpose_weight;
pub mod units;

use std::collections::HashMap;

use serde::Serialize;

use crate::error::Result;
use crate::ir::shape::{ValueType, infer_types};
use crate::ir::{Graph, NameGen};
use crate::model::Model;

/// Choices the caller makes about the passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// Turn 2-D MatMul + Add into Gemm. `rewrite` turns it off when `--ops` takes only one of
    /// MatMul and Gemm, so that fusion never moves a node into or out of the chosen families.
    pub matmul_to_gemm: bool,
    /// Run only the pass of this name (the others count 0), so that each pass can be checked
    /// on its own.
    pub only: Option<&'static str>,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            matmul_to_gemm: true,
            only: None,
        }
    }
}

/// What a pass sees besides the graph it edits.
pub struct PassEnv<'a> {
    /// Default-domain opset of the model.
    pub opset: i64,
    pub options: FuseOptions,
    /// Types of the values of enclosing scopes (empty for the main graph).
    pub outer_types: &'a HashMap<String, ValueType>,
}

/// One pass: `run` edits one graph (not its subgraphs) and returns how many times it fired.
pub struct Pass {
    pub name: &'static str,
    pub run: fn(&mut Graph, &PassEnv, &mut NameGen) -> Result<usize>,
}

/// The passes, in the order they run within a round.
pub const PASSES: &[Pass] = &[
    identity::PASS,
    transpose_weight::PASS,
    fold::PASS,
    shape_chain::PASS,
    conv_bn::PASS,
    conv_add::PASS,
    matmul_add::PASS,
    activation::PASS,
    dead::PASS,
];

/// Rounds of the whole sequence before the manager stops even if passes still fire.
pub const MAX_ROUNDS: usize = 8;

/// How often one pass fired.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PassCount {
    pub pass: String,
    pub fired: usize,
}

/// The fire counts of a [`fuse`] run, in pass order, and the Linear units found after it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FuseReport {
    pub passes: Vec<PassCount>,
    pub rounds: usize,
    pub units: units::UnitCounts,
}

impl FuseReport {
    pub fn total(&self) -> usize {
        self.passes.iter().map(|p| p.fired).sum()
    }

    /// One line: `identity 2, fold_constants 14, ...` (passes that fired only).
    pub fn summary(&self) -> String {
        let fired: Vec<String> = self
            .passes
            .iter()
            .filter(|p| p.fired > 0)
            .map(|p| format!("{} {}", p.pass, p.fired))
            .collect();
        if fired.is_empty() {
            "no fusion pass fired".into()
        } else {
            fired.join(", ")
        }
    }
}

/// Runs every pass to a fixpoint on the model's graph and subgraphs, with default options.
pub fn fuse(model: &mut Model) -> Result<FuseReport> {
    fuse_with(model, FuseOptions::default())
}

/// [`fuse`] with explicit options.
pub fn fuse_with(model: &mut Model, options: FuseOptions) -> Result<FuseReport> {
    let opset = model.opset("").unwrap_or(1);
    let mut names = NameGen::new(&model.graph);
    let mut counts = vec![0usize; PASSES.len()];
    let mut rounds = 0;
    while rounds < MAX_ROUNDS {
        rounds += 1;
        let mut fired = 0;
        for (k, p) in PASSES.iter().enumerate() {
            if options.only.is_some_and(|only| only != p.name) {
                continue;
            }
            let env = PassEnv {
                opset,
                options,
                outer_types: &HashMap::new(),
            };
            let n = run_everywhere(p, &mut model.graph, &env, &mut names)?;
            counts[k] += n;
            fired += n;
        }
        if fired == 0 {
            break;
        }
    }
    model.graph.validate(&std::collections::HashSet::new())?;
    Ok(FuseReport {
        passes: PASSES
            .iter()
            .zip(counts)
            .map(|(p, fired)| PassCount {
                pass: p.name.to_string(),
                fired,
            })
            .collect(),
        rounds,
        units: units::count_units(&model.graph, opset),
    })
}

/// Runs one pass on `g`, then on its subgraphs with `g`'s types as their outer scope.
fn run_everywhere(p: &Pass, g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    let mut n = (p.run)(g, env, names)?;
    if g.nodes.iter().any(|n| !n.subgraphs.is_empty()) {
        let types = infer_types(g, env.outer_types);
        let inner = PassEnv {
            outer_types: &types,
            ..*env
        };
        for node in &mut g.nodes {
            for s in &mut node.subgraphs {
                n += run_everywhere(p, &mut s.graph, &inner, names)?;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
