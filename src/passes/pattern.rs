//! A small declarative matcher over the shared IR, used by every fusion pass.
//!
//! A [`Pattern`] is a chain of [`Step`]s: the first step's node, then a node that reads the
//! previous step's first output, and so on. Each step states the op types it accepts, which of
//! its inputs must be constants (initializers of the same graph that are not also graph inputs,
//! since a caller may override those), and an optional predicate on attributes, types and
//! constants. A step may be optional (`MatMul [+ Add] + Relu`).
//!
//! Between two matched nodes the intermediate value must be read by exactly one node (the
//! next one, counting reads from inside subgraphs), must not be a graph output, and every other
//! output of the earlier node must be unused: the rewrite removes it, so nothing else may see
//! it. Matches never share nodes; they are found in stored node order, so the same graph gives
//! the same matches.
//!
//! A pass is a pattern plus a rewrite that turns a [`Match`] into an [`Edit`]; [`apply`]
//! collects the edits of one sweep and applies them together ([`apply_edits`]).

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::ir::graph::node_reads;
use crate::ir::shape::{Dim, ValueType, infer_types_and_values};
use crate::ir::{Graph, NameGen, Node, Tensor};

/// Which input of a step's node reads the previous step's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Any input position (Add, Mul: either side).
    Any,
    /// Exactly this input position.
    Input(usize),
}

/// Extra condition on a step's node.
pub type Check = fn(&Node, &MatchCtx) -> bool;

/// One node of a pattern.
#[derive(Clone, Copy)]
pub struct Step {
    /// Accepted op types (default ONNX domain); empty accepts any.
    pub ops: &'static [&'static str],
    /// Where it reads the previous step's output (ignored on the first step).
    pub from: Slot,
    /// Input positions that must be constants.
    pub consts: &'static [usize],
    pub check: Option<Check>,
    pub optional: bool,
}

impl Step {
    pub const fn op(ops: &'static [&'static str]) -> Self {
        Step {
            ops,
            from: Slot::Input(0),
            consts: &[],
            check: None,
            optional: false,
        }
    }
    pub const fn from(mut self, f: Slot) -> Self {
        self.from = f;
        self
    }
    pub const fn consts(mut self, c: &'static [usize]) -> Self {
        self.consts = c;
        self
    }
    pub const fn check(mut self, c: Check) -> Self {
        self.check = Some(c);
        self
    }
    pub const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// A chain of steps.
#[derive(Clone, Copy)]
pub struct Pattern {
    pub steps: &'static [Step],
}

/// The nodes a pattern matched: one entry per step (`None` for a skipped optional step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub nodes: Vec<Option<usize>>,
}

impl Match {
    /// The node matched by step `i`.
    pub fn at(&self, i: usize) -> Option<usize> {
        self.nodes.get(i).copied().flatten()
    }
    /// Matched node indices in chain order.
    pub fn matched(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes.iter().flatten().copied()
    }
    pub fn last(&self) -> usize {
        self.matched()
            .last()
            .expect("a match has at least one node")
    }
}

/// What a matcher and a rewrite may read about one graph.
pub struct MatchCtx<'g> {
    pub graph: &'g Graph,
    /// Default-domain opset of the model.
    pub opset: i64,
    pub producers: HashMap<&'g str, (usize, usize)>,
    pub consumers: HashMap<String, Vec<usize>>,
    pub types: HashMap<String, ValueType>,
    /// Known values of small integer tensors (shape vectors), possibly symbolic.
    pub values: HashMap<String, Vec<Dim>>,
    overridable: HashSet<&'g str>,
    /// Constants of enclosing graphs visible here (only analyses use them: a rewrite needs
    /// the tensor, which lives in another graph).
    pub outer_constants: HashSet<String>,
}

impl<'g> MatchCtx<'g> {
    pub fn new(graph: &'g Graph, opset: i64, outer_types: &HashMap<String, ValueType>) -> Self {
        let (types, values) = infer_types_and_values(graph, outer_types);
        let overridable = graph
            .proto
            .input
            .iter()
            .map(|v| v.name())
            .filter(|n| graph.initializers.contains_key(*n))
            .collect();
        MatchCtx {
            graph,
            opset,
            producers: graph.producers(),
            consumers: graph.consumers(),
            types,
            values,
            overridable,
            outer_constants: HashSet::new(),
        }
    }

    /// Whether `name` is a constant here or in an enclosing graph.
    pub fn is_constant(&self, name: &str) -> bool {
        self.constant(name).is_some() || self.outer_constants.contains(name)
    }

    /// Names of the constants a subgraph of this graph can see.
    pub fn constants_for_subgraphs(&self) -> HashSet<String> {
        let mut c = self.outer_constants.clone();
        c.extend(
            self.graph
                .initializers
                .keys()
                .filter(|k| !self.overridable.contains(k.as_str()))
                .cloned(),
        );
        c
    }

    /// The constant tensor `name` names in this graph, if it is one.
    pub fn constant(&self, name: &str) -> Option<&'g Tensor> {
        if self.overridable.contains(name) {
            return None;
        }
        self.graph.initializer(name)
    }

    pub fn type_of(&self, name: &str) -> Option<&ValueType> {
        self.types.get(name)
    }

    /// Nodes reading `name` (once each).
    pub fn readers(&self, name: &str) -> &[usize] {
        self.consumers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when nothing reads `name` and it is not a graph output.
    pub fn unused(&self, name: &str) -> bool {
        name.is_empty() || (self.readers(name).is_empty() && !self.graph.is_output(name))
    }

    /// The one node reading `name`, when it is the only reader and `name` is not a graph
    /// output.
    pub fn sole_reader(&self, name: &str) -> Option<usize> {
        match self.readers(name) {
            [one] if !self.graph.is_output(name) => Some(*one),
            _ => None,
        }
    }

    fn step_accepts(&self, step: &Step, i: usize) -> bool {
        let n = &self.graph.nodes[i];
        n.domain().is_empty()
            && (step.ops.is_empty() || step.ops.contains(&n.op_type()))
            && step
                .consts
                .iter()
                .all(|&k| n.input(k).is_some_and(|v| self.constant(v).is_some()))
            && step.check.is_none_or(|c| c(n, self))
    }

    /// The next node of a chain after node `prev`: the sole reader of its first output, when
    /// its other outputs are unused and the reader reads it where `step` says.
    fn next(&self, prev: usize, step: &Step) -> Option<usize> {
        let p = &self.graph.nodes[prev];
        let out = p.outputs().first()?;
        if out.is_empty() || !p.outputs()[1..].iter().all(|o| self.unused(o)) {
            return None;
        }
        let r = self.sole_reader(out)?;
        let reader = &self.graph.nodes[r];
        let reads_here = match step.from {
            Slot::Any => reader.inputs().iter().any(|i| i == out),
            Slot::Input(k) => reader.input(k) == Some(out.as_str()),
        };
        (reads_here && self.step_accepts(step, r)).then_some(r)
    }

    /// The match of `pattern` starting at node `start`, if any.
    pub fn match_at(&self, pattern: &Pattern, start: usize) -> Option<Match> {
        let (first, rest) = pattern.steps.split_first()?;
        if !self.step_accepts(first, start) {
            return None;
        }
        let mut nodes = vec![Some(start)];
        let mut prev = start;
        for step in rest {
            match self.next(prev, step) {
                Some(r) => {
                    nodes.push(Some(r));
                    prev = r;
                }
                None if step.optional => nodes.push(None),
                None => return None,
            }
        }
        // A trailing skipped optional step is fine; the chain must hold its non-optional ones.
        Some(Match { nodes })
    }

    /// Every non-overlapping match, in stored node order of the first node.
    pub fn find(&self, pattern: &Pattern) -> Vec<Match> {
        let mut taken: HashSet<usize> = HashSet::new();
        let mut out = Vec::new();
        for i in 0..self.graph.nodes.len() {
            if taken.contains(&i) {
                continue;
            }
            if let Some(m) = self.match_at(pattern, i)
                && m.matched().all(|k| !taken.contains(&k))
            {
                taken.extend(m.matched());
                out.push(m);
            }
        }
        out
    }
}

/// A change to one graph, in terms of the node indices of the graph it was computed on.
#[derive(Debug, Default)]
pub struct Edit {
    /// Node index -> the nodes that take its place (empty: removed).
    pub replace: Vec<(usize, Vec<Node>)>,
    pub initializers: Vec<Tensor>,
    /// Readers of `.0` read `.1` instead (nested subgraphs included).
    pub renames: Vec<(String, String)>,
}

impl Edit {
    pub fn remove(mut self, i: usize) -> Self {
        self.replace.push((i, Vec::new()));
        self
    }
    pub fn put(mut self, i: usize, nodes: Vec<Node>) -> Self {
        self.replace.push((i, nodes));
        self
    }
}

/// What a pass may use while rewriting: the match context and fresh names.
pub type Rewrite = fn(&MatchCtx, &Match, &mut NameGen) -> Option<Edit>;

/// One sweep of a pattern pass over one graph: finds the matches, rewrites them and applies
/// the edits. Returns how many matches were rewritten.
pub fn apply(
    g: &mut Graph,
    opset: i64,
    outer_types: &HashMap<String, ValueType>,
    names: &mut NameGen,
    pattern: &Pattern,
    rewrite: Rewrite,
) -> Result<usize> {
    let edits: Vec<Edit> = {
        let cx = MatchCtx::new(g, opset, outer_types);
        // An edit may also change a node outside its match (a bypass renames the producer's
        // output); one touching a node an earlier edit of this sweep touched waits for the
        // next sweep.
        let mut touched: HashSet<usize> = HashSet::new();
        let mut edits = Vec::new();
        for m in cx.find(pattern) {
            if let Some(e) = rewrite(&cx, &m, names) {
                let mut idx: Vec<usize> = e.replace.iter().map(|(i, _)| *i).collect();
                idx.extend(m.matched());
                if idx.iter().any(|i| touched.contains(i)) {
                    continue;
                }
                touched.extend(idx);
                edits.push(e);
            }
        }
        edits
    };
    let n = edits.len();
    if n > 0 {
        apply_edits(g, edits)?;
    }
    Ok(n)
}

/// Applies edits computed on the current graph: replaced nodes take their node's place, renames
/// are followed transitively, new initializers are added, nodes are re-sorted topologically,
/// initializers only the removed nodes read are dropped, and value_info entries of values that
/// no longer exist are removed.
pub fn apply_edits(g: &mut Graph, edits: Vec<Edit>) -> Result<()> {
    let defined_before: HashSet<String> = g.defined_names().into_iter().map(String::from).collect();
    let mut replace: HashMap<usize, Vec<Node>> = HashMap::new();
    let mut renames: HashMap<String, String> = HashMap::new();
    let mut read_by_removed: HashSet<String> = HashSet::new();
    let mut inits = Vec::new();
    for e in edits {
        for (i, nodes) in e.replace {
            read_by_removed.extend(node_reads(&g.nodes[i]));
            replace.entry(i).or_default().extend(nodes);
        }
        inits.extend(e.initializers);
        renames.extend(e.renames);
    }
    let old = std::mem::take(&mut g.nodes);
    for (i, n) in old.into_iter().enumerate() {
        match replace.remove(&i) {
            Some(new) => g.nodes.extend(new),
            None => g.nodes.push(n),
        }
    }
    if !renames.is_empty() {
        let resolve = |v: &str| -> String {
            let mut cur = v.to_string();
            let mut hops = 0;
            while let Some(next) = renames.get(&cur) {
                cur = next.clone();
                hops += 1;
                if hops > renames.len() {
                    break;
                }
            }
            cur
        };
        for n in &mut g.nodes {
            rename_reads(n, &resolve);
        }
    }
    for t in inits {
        g.add_initializer(t);
    }
    g.sort_topologically()?;
    let mut still_read: HashSet<String> = g.nodes.iter().flat_map(node_reads).collect();
    still_read.extend(g.proto.output.iter().map(|o| o.name().to_string()));
    still_read.extend(g.proto.input.iter().map(|o| o.name().to_string()));
    g.initializers
        .retain(|name, _| !read_by_removed.contains(name) || still_read.contains(name));
    let defined_after: HashSet<String> = g.defined_names().into_iter().map(String::from).collect();
    g.proto
        .value_info
        .retain(|v| !defined_before.contains(v.name()) || defined_after.contains(v.name()));
    Ok(())
}

/// Renames the values a node reads, including outer-scope reads inside its subgraphs (a
/// subgraph that defines the name itself shadows it and is left alone).
fn rename_reads(n: &mut Node, resolve: &dyn Fn(&str) -> String) {
    for i in n.proto.input.iter_mut().filter(|i| !i.is_empty()) {
        *i = resolve(i);
    }
    for s in &mut n.subgraphs {
        let defined: HashSet<String> = s
            .graph
            .defined_names()
            .into_iter()
            .map(String::from)
            .collect();
        let inner = |v: &str| -> String {
            if defined.contains(v) {
                v.to_string()
            } else {
                resolve(v)
            }
        };
        for m in &mut s.graph.nodes {
            rename_reads(m, &inner);
        }
    }
}

/// True when a nested subgraph of `g` defines `value` itself (shadowing the outer name), so
/// that renaming outer readers to `value` would capture them.
pub fn is_defined_in_subgraphs(g: &Graph, value: &str) -> bool {
    let mut found = false;
    for n in &g.nodes {
        for s in &n.subgraphs {
            s.graph.visit(&mut |sg: &Graph| {
                found |= sg.defined_names().contains(value);
            });
        }
    }
    found
}

/// True when a nested subgraph of `g` names `value` among its outputs (a pass-through of an
/// outer value): renaming `value` there would rename a subgraph output, so passes avoid it.
pub fn is_subgraph_output(g: &Graph, value: &str) -> bool {
    let mut found = false;
    for n in &g.nodes {
        for s in &n.subgraphs {
            s.graph.visit(&mut |sg: &Graph| {
                if sg.proto.output.iter().any(|o| o.name() == value) {
                    found = true;
                }
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node::new(
            name,
            op,
            "",
            inputs.iter().map(|s| s.to_string()).collect(),
            outputs.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn graph(nodes: Vec<Node>, outputs: &[&str]) -> Graph {
        let mut g = Graph {
            nodes,
            ..Default::default()
        };
        g.proto.input.push(crate::onnx::ValueInfoProto {
            name: Some("x".into()),
            ..Default::default()
        });
        for o in outputs {
            g.proto.output.push(crate::onnx::ValueInfoProto {
                name: Some(o.to_string()),
                ..Default::default()
            });
        }
        g.add_initializer(Tensor::from_vec("w", &[2, 2], vec![1f32, 2., 3., 4.]));
        g.add_initializer(Tensor::from_vec("b", &[2], vec![1f32, 2.]));
        g
    }

    const LINEAR: Pattern = Pattern {
        steps: &[
            Step::op(&["MatMul"]).consts(&[1]),
            Step::op(&["Add"]).from(Slot::Any).consts(&[]).optional(),
            Step::op(&["Relu"]),
        ],
    };

    #[test]
    fn matches_chains_with_and_without_optional_steps() {
        let g = graph(
            vec![
                node("mm", "MatMul", &["x", "w"], &["a"]),
                node("add", "Add", &["b", "a"], &["c"]),
                node("relu", "Relu", &["c"], &["y"]),
                node("mm2", "MatMul", &["y", "w"], &["d"]),
                node("relu2", "Relu", &["d"], &["z"]),
            ],
            &["z"],
        );
        let cx = MatchCtx::new(&g, 17, &HashMap::new());
        let m = cx.find(&LINEAR);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].nodes, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(m[1].nodes, vec![Some(3), None, Some(4)]);
    }

    #[test]
    fn intermediate_with_two_readers_or_graph_output_breaks_the_chain() {
        let two_readers = graph(
            vec![
                node("mm", "MatMul", &["x", "w"], &["a"]),
                node("relu", "Relu", &["a"], &["y"]),
                node("neg", "Neg", &["a"], &["z"]),
            ],
            &["y", "z"],
        );
        let cx = MatchCtx::new(&two_readers, 17, &HashMap::new());
        assert!(cx.find(&LINEAR).is_empty());
        let output = graph(
            vec![
                node("mm", "MatMul", &["x", "w"], &["a"]),
                node("relu", "Relu", &["a"], &["y"]),
            ],
            &["y", "a"],
        );
        let cx = MatchCtx::new(&output, 17, &HashMap::new());
        assert!(cx.find(&LINEAR).is_empty());
    }

    #[test]
    fn constant_inputs_must_be_initializers_not_overridable_inputs() {
        let mut g = graph(
            vec![
                node("mm", "MatMul", &["x", "w"], &["a"]),
                node("relu", "Relu", &["a"], &["y"]),
            ],
            &["y"],
        );
        assert_eq!(
            MatchCtx::new(&g, 17, &HashMap::new()).find(&LINEAR).len(),
            1
        );
        g.proto.input.push(crate::onnx::ValueInfoProto {
            name: Some("w".into()),
            ..Default::default()
        });
        assert!(
            MatchCtx::new(&g, 17, &HashMap::new())
                .find(&LINEAR)
                .is_empty()
        );
    }

    #[test]
    fn edits_rename_readers_transitively_and_drop_stale_value_info() {
        let mut g = graph(
            vec![
                node("i1", "Identity", &["x"], &["a"]),
                node("i2", "Identity", &["a"], &["b"]),
                node("relu", "Relu", &["b"], &["y"]),
            ],
            &["y"],
        );
        g.proto.value_info.push(crate::onnx::ValueInfoProto {
            name: Some("a".into()),
            ..Default::default()
        });
        let edits = vec![
            Edit {
                renames: vec![("a".into(), "x".into())],
                ..Default::default()
            }
            .remove(0),
            Edit {
                renames: vec![("b".into(), "a".into())],
                ..Default::default()
            }
            .remove(1),
        ];
        apply_edits(&mut g, edits).unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].inputs(), ["x"]);
        assert!(g.proto.value_info.is_empty());
    }
}
