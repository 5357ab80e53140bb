//! After splicing: remove what the replaced nodes read and nothing reads any more. A value
//! counts as read when any node of its graph reads it, including from inside a nested
//! subgraph (outer-scope reads), so an outer float weight goes only when no scope uses it.
//! Constant producers the rewrite folded (`Constant`, `Identity`, `Transpose` over
//! constants) go too once their outputs are unread, which frees what they read in turn.
//! Initializers or values the replaced nodes never read are left alone.

use std::collections::HashSet;

use crate::ir::Graph;
use crate::ir::graph::node_reads;

const FOLDED_OPS: [&str; 3] = ["Constant", "Identity", "Transpose"];

/// Removes from `g` (subgraphs first) the nodes and initializers named in `candidates` that
/// became dead; names the removed nodes read join `candidates`.
pub fn remove_unread(g: &mut Graph, candidates: &mut HashSet<String>) {
    for n in &mut g.nodes {
        for s in &mut n.subgraphs {
            remove_unread(&mut s.graph, candidates);
        }
    }
    let mut removed_values: HashSet<String> = HashSet::new();
    loop {
        let reads = reads_of(g);
        let dead: Vec<usize> = g
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.domain().is_empty()
                    && n.subgraphs.is_empty()
                    && FOLDED_OPS.contains(&n.op_type())
                    && n.outputs().iter().any(|o| candidates.contains(o))
                    && n.outputs()
                        .iter()
                        .all(|o| o.is_empty() || !reads.contains(o))
            })
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        for &i in dead.iter().rev() {
            let n = g.nodes.remove(i);
            candidates.extend(n.inputs().iter().filter(|i| !i.is_empty()).cloned());
            removed_values.extend(n.outputs().iter().cloned());
        }
    }
    if !removed_values.is_empty() {
        g.proto
            .value_info
            .retain(|v| !removed_values.contains(v.name()));
    }
    let reads = reads_of(g);
    let unread: Vec<String> = g
        .initializers
        .keys()
        .filter(|k| candidates.contains(*k) && !reads.contains(*k))
        .cloned()
        .collect();
    if unread.is_empty() {
        return;
    }
    for k in &unread {
        g.initializers.shift_remove(k);
    }
    let gone: HashSet<&str> = unread.iter().map(String::as_str).collect();
    // IR < 4 lists initializers among the graph inputs too; value_info may describe them.
    g.proto.input.retain(|v| !gone.contains(v.name()));
    g.proto.value_info.retain(|v| !gone.contains(v.name()));
}

fn reads_of(g: &Graph) -> HashSet<String> {
    let mut r: HashSet<String> = g.nodes.iter().flat_map(node_reads).collect();
    r.extend(g.proto.output.iter().map(|o| o.name().to_string()));
    r
}
