//! Removing a chain of nodes that computes its input unchanged (`y = x`): Identity, inference
//! Dropout, Transpose pairs that cancel, Unsqueeze + Squeeze of the same axes.
//!
//! Readers of `y` read `x` instead. When `y` is an output of the graph (whose name must not
//! change), the node producing `x` writes `y` directly instead, which needs `x` to be produced
//! by a node of this graph, read only by the chain, and not a graph output itself; otherwise
//! the chain stays.

use crate::passes::pattern::{Edit, MatchCtx, is_defined_in_subgraphs, is_subgraph_output};

/// The edit removing nodes `chain` (in order; the first reads `x`, the last writes `y`).
pub fn bypass(cx: &MatchCtx, chain: &[usize], x: &str, y: &str) -> Option<Edit> {
    let g = cx.graph;
    // A subgraph output naming `y` would be left dangling by a rename of readers.
    if x.is_empty() || y.is_empty() || is_subgraph_output(g, y) {
        return None;
    }
    let has_subgraphs = g.nodes.iter().any(|n| !n.subgraphs.is_empty());
    if has_subgraphs && is_defined_in_subgraphs(g, x) {
        return None;
    }
    let mut edit = Edit::default();
    for &i in chain {
        edit = edit.remove(i);
    }
    if !g.is_output(y) {
        edit.renames.push((y.to_string(), x.to_string()));
        return Some(edit);
    }
    // Produced by a node of this graph (not an input, initializer or outer value).
    let &(p, o) = cx.producers.get(x)?;
    if g.is_output(x) || cx.readers(x) != [chain[0]] {
        return None;
    }
    let mut producer = g.nodes[p].clone();
    producer.proto.output[o] = y.to_string();
    Some(edit.put(p, vec![producer]))
}
