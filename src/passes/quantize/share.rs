//! Shared weights are quantized into one tensor, not one per reader.
//!
//! Each rewriter builds its replacement alone, so two nodes reading the same float weight
//! (tied embeddings, one MatMul weight applied twice) would each add their own quantized copy.
//! Before splicing, the driver passes the replacements here in walk order: when two of them
//! sit in the same graph, read a common weight (directly or through the `Identity` /
//! `Transpose` producers that the rewrite folds), and add initializers with identical type,
//! shape and bytes, the later one's copy is dropped and its nodes read the earlier one's.
//!
//! Replacements that read unrelated weights never share, even when some of their small
//! tensors happen to be equal (two zero-point scalars): their outputs stay as they were.
//! When the readers quantize the weight in different forms (a Gather's per-row table and a
//! MatMul's `[K, N]` matrix of the transposed weight), the bytes differ and each form is
//! kept once. The float weight itself goes only when no remaining node reads it (cleanup.rs),
//! so a node left float keeps its float weight.

use std::collections::{HashMap, HashSet};

use crate::ir::deferred::{self, Lookup};
use crate::ir::{Graph, Node, Tensor};

use super::rewrite::Replacement;

/// One replacement: the path of its graph (node index, subgraph index pairs from the main
/// graph), the index of the node it replaces there, and the replacement.
type GraphPath = Vec<(usize, usize)>;

pub type Entry<'a> = (&'a [(usize, usize)], usize, &'a mut Replacement);

/// Shares identical new initializers between replacements of nodes that read a common
/// weight; `main` is the graph before splicing. Earlier entries keep their tensors. Returns,
/// per entry, the bytes of the initializers it dropped.
pub fn share_identical<'a>(main: &Graph, entries: impl IntoIterator<Item = Entry<'a>>) -> Vec<u64> {
    let mut entries: Vec<Entry<'a>> = entries.into_iter().collect();
    // Earlier entries by (graph path, root weight).
    let mut seen: HashMap<(GraphPath, String), Vec<usize>> = HashMap::new();
    let mut producers: HashMap<GraphPath, Producers> = HashMap::new();
    let mut dropped = vec![0u64; entries.len()];
    for (j, dropped_here) in dropped.iter_mut().enumerate() {
        let (done, rest) = entries.split_at_mut(j);
        let (path, node, rep) = &mut rest[0];
        let chain = graphs_on(main, path);
        let roots = match (chain.last(), chain.len() == path.len() + 1) {
            (Some(g), true) => {
                let prod = producers
                    .entry(path.to_vec())
                    .or_insert_with(|| producers_of(g));
                g.nodes
                    .get(*node)
                    .map(|n| roots_of(&chain, prod, n))
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut related: Vec<usize> = roots
            .iter()
            .filter_map(|r| seen.get(&(path.to_vec(), r.clone())))
            .flatten()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        related.sort_unstable();
        let mut renames: HashMap<String, String> = HashMap::new();
        rep.initializers.retain(|t| {
            let twin = related
                .iter()
                .flat_map(|&e| done[e].2.initializers.iter())
                .find(|k| same_tensor(k, t));
            match twin {
                Some(k) => {
                    renames.insert(t.name().to_string(), k.name().to_string());
                    *dropped_here += t.byte_len() as u64;
                    false
                }
                None => true,
            }
        });
        if !renames.is_empty() {
            for n in &mut rep.nodes {
                rename_reads(n, &renames);
            }
        }
        for r in roots {
            seen.entry((path.to_vec(), r)).or_default().push(j);
        }
    }
    dropped
}

/// Equal element type, dims and bytes (tensors without `raw_data` never match). Deferred
/// payloads (not computed yet) match when they will be computed the same way from the same
/// weight.
fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    let (p, q) = (&a.proto, &b.proto);
    if p.data_type != q.data_type || p.dims != q.dims {
        return false;
    }
    let (Some(x), Some(y)) = (&p.raw_data, &q.raw_data) else {
        return false;
    };
    match (deferred::lookup(x), deferred::lookup(y)) {
        (Lookup::Plain, Lookup::Plain) => x == y,
        (Lookup::Whole(f), Lookup::Whole(g)) => f.identity() == g.identity(),
        // Computed bytes against deferred ones: sharing is only an economy, so don't compute
        // them to compare.
        _ => false,
    }
}

/// Output name -> (op type, first input) of a graph's `Identity`, `Transpose` and `Constant`
/// nodes.
type Producers = HashMap<String, (&'static str, Option<String>)>;

fn producers_of(g: &Graph) -> Producers {
    g.nodes
        .iter()
        .filter(|p| p.domain().is_empty())
        .filter_map(|p| {
            let op = match p.op_type() {
                "Identity" => "Identity",
                "Transpose" => "Transpose",
                "Constant" => "Constant",
                _ => return None,
            };
            let out = p.outputs().first()?.clone();
            Some((out, (op, p.input(0).map(str::to_string))))
        })
        .collect()
}

/// The graphs from `main` down to the one `path` leads to (shorter if the path is stale).
fn graphs_on<'g>(main: &'g Graph, path: &[(usize, usize)]) -> Vec<&'g Graph> {
    let mut chain = vec![main];
    let mut g = main;
    for &(n, s) in path {
        match g.nodes.get(n).and_then(|n| n.subgraphs.get(s)) {
            Some(sub) => g = &sub.graph,
            None => break,
        }
        chain.push(g);
    }
    chain
}

/// The constant weights `n` reads: each input followed back through `Identity` and
/// `Transpose` producers (the forms the rewrite folds) to an initializer of its graph or an
/// enclosing one, or to a `Constant`. Run-time inputs are not roots: two nodes reading the
/// same activation have nothing to share.
fn roots_of(chain: &[&Graph], producer: &Producers, n: &Node) -> Vec<String> {
    let is_const = |name: &str| {
        producer.get(name).is_some_and(|p| p.0 == "Constant")
            || chain.iter().any(|g| g.initializers.contains_key(name))
    };
    let mut roots: Vec<String> = Vec::new();
    for i in n.inputs().iter().filter(|i| !i.is_empty()) {
        let mut name = i.as_str();
        // Bounded: a malformed graph could hold a cycle of Identities.
        for _ in 0..=producer.len() {
            match producer.get(name) {
                Some((_, Some(src))) if !src.is_empty() => name = src,
                _ => break,
            }
        }
        if is_const(name) && !roots.iter().any(|r| r == name) {
            roots.push(name.to_string());
        }
    }
    roots
}

/// Renames what `n` (and the subgraphs inside it, which may read outer-scope names) reads.
fn rename_reads(n: &mut Node, renames: &HashMap<String, String>) {
    for i in &mut n.proto.input {
        if let Some(r) = renames.get(i.as_str()) {
            *i = r.clone();
        }
    }
    for s in &mut n.subgraphs {
        for m in &mut s.graph.nodes {
            rename_reads(m, renames);
        }
        for o in &mut s.graph.proto.output {
            if let Some(r) = o.name.as_ref().and_then(|x| renames.get(x)) {
                o.name = Some(r.clone());
            }
        }
    }
}
