//! Recognizes Linear units after fusion: `MatMul` (constant 2-D B) or `Gemm` (constant B),
//! optionally followed by an `Add` of a constant bias, optionally followed by an activation
//! the quantized form carries and the runtime can fuse: `Relu`, `LeakyRelu`, or `Clip` with
//! min 0 and max 6 (ReLU6). Each intermediate must be read by the next node alone.
//!
//! `inspect` and the rewrite report show the counts; the report labels each quantized
//! MatMul/Gemm with its unit ("Linear+bias+Relu").

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::ir::{Graph, Node};
use crate::passes::pattern::{MatchCtx, Pattern, Slot, Step};

use super::activation::clip_bounds;

/// How many Linear units of each form the graph (subgraphs included) holds.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UnitCounts {
    /// MatMul/Gemm with a constant weight.
    pub linear: usize,
    /// ... of which carry a bias (Gemm's C, or a following Add of a constant).
    pub with_bias: usize,
    /// ... of which end in a fusable activation.
    pub with_activation: usize,
}

const UNIT: Pattern = Pattern {
    steps: &[
        Step::op(&["MatMul", "Gemm"]).check(const_weight),
        Step::op(&["Add"])
            .from(Slot::Any)
            .optional()
            .check(const_bias),
        Step::op(&["Relu", "LeakyRelu", "Clip"])
            .optional()
            .check(fusable_activation),
    ],
};

fn const_weight(n: &Node, cx: &MatchCtx) -> bool {
    n.input(1).is_some_and(|w| cx.is_constant(w))
}

fn const_bias(n: &Node, cx: &MatchCtx) -> bool {
    n.inputs().iter().any(|i| cx.is_constant(i))
}

fn fusable_activation(n: &Node, cx: &MatchCtx) -> bool {
    n.op_type() != "Clip" || clip_bounds(n, cx) == Some((0.0, 6.0))
}

/// The unit label of the node `i` when it starts a Linear unit.
fn label(cx: &MatchCtx, i: usize) -> Option<String> {
    let m = cx.match_at(&UNIT, i)?;
    let head = &cx.graph.nodes[i];
    let mut s = String::from("Linear");
    if m.at(1).is_some() || (head.op_type() == "Gemm" && head.input(2).is_some()) {
        s.push_str("+bias");
    }
    if let Some(a) = m.at(2) {
        let act = &cx.graph.nodes[a];
        s.push('+');
        s.push_str(if act.op_type() == "Clip" {
            "Relu6"
        } else {
            act.op_type()
        });
    }
    Some(s)
}

/// Scope string as the quantization report writes it (`If_0/then_branch`, "" for the main
/// graph), mapped to node name -> unit label, for every Linear unit.
pub fn unit_labels(g: &Graph, opset: i64) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    walk(
        g,
        opset,
        &HashMap::new(),
        &HashSet::new(),
        "",
        &mut |scope, node, l| {
            out.insert((scope.to_string(), node.to_string()), l);
        },
    );
    out
}

/// Counts the Linear units of every form.
pub fn count_units(g: &Graph, opset: i64) -> UnitCounts {
    let mut c = UnitCounts::default();
    walk(
        g,
        opset,
        &HashMap::new(),
        &HashSet::new(),
        "",
        &mut |_, _, l: String| {
            c.linear += 1;
            c.with_bias += l.contains("+bias") as usize;
            c.with_activation += (l.matches('+').count() > l.contains("+bias") as usize) as usize;
        },
    );
    c
}

fn walk(
    g: &Graph,
    opset: i64,
    outer: &HashMap<String, crate::ir::shape::ValueType>,
    outer_constants: &HashSet<String>,
    scope: &str,
    f: &mut dyn FnMut(&str, &str, String),
) {
    let mut cx = MatchCtx::new(g, opset, outer);
    cx.outer_constants = outer_constants.clone();
    let inner_constants = cx.constants_for_subgraphs();
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(l) = label(&cx, i) {
            f(scope, n.display_name(), l);
        }
        for s in &n.subgraphs {
            let inner = if scope.is_empty() {
                format!("{}/{}", n.display_name(), s.attr)
            } else {
                format!("{scope}/{}/{}", n.display_name(), s.attr)
            };
            walk(&s.graph, opset, &cx.types, &inner_constants, &inner, f);
        }
    }
}
