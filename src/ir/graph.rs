//! The graph IR shared by the passes and the runtime.
//!
//! A [`Graph`] keeps its `GraphProto` for everything the IR does not model (inputs, outputs,
//! value_info, doc strings, metadata, sparse initializers, quantization annotations, and fields
//! it does not interpret), and lifts out what passes edit: the nodes, in stored order, and the
//! initializers, by name in stored order. A [`Node`] likewise keeps its `NodeProto` and lifts
//! out the subgraphs of its graph attributes (If branches, Loop and Scan bodies), so that
//! `to_proto` puts everything back exactly where it was: an unmodified round trip is lossless.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::onnx::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

use super::tensor::Tensor;

/// A graph attribute lifted out of a node: `graphs[index]` when `index` is set, else `g`.
#[derive(Clone, Debug, PartialEq)]
pub struct Subgraph {
    pub attr: String,
    pub index: Option<usize>,
    pub graph: Graph,
}

/// One operator application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Everything but the subgraphs, which live in `subgraphs`.
    pub proto: NodeProto,
    pub subgraphs: Vec<Subgraph>,
}

impl Node {
    /// A new node in `domain` ("" for the default ONNX domain).
    pub fn new(
        name: impl Into<String>,
        op_type: &str,
        domain: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> Self {
        Node {
            proto: NodeProto {
                name: Some(name.into()),
                op_type: Some(op_type.into()),
                domain: (!domain.is_empty()).then(|| domain.into()),
                input: inputs,
                output: outputs,
                ..Default::default()
            },
            subgraphs: Vec::new(),
        }
    }

    pub fn with_attr(mut self, a: crate::onnx::AttributeProto) -> Self {
        self.proto.attribute.push(a);
        self
    }

    pub fn op_type(&self) -> &str {
        self.proto.op_type()
    }

    /// The operator's domain, with "ai.onnx" normalized to "".
    pub fn domain(&self) -> &str {
        match self.proto.domain() {
            "ai.onnx" => "",
            d => d,
        }
    }

    pub fn name(&self) -> &str {
        self.proto.name()
    }

    /// The node's name, or its first output when it has none (for messages).
    pub fn display_name(&self) -> &str {
        match self.proto.name() {
            "" => self.proto.output.first().map(String::as_str).unwrap_or("?"),
            n => n,
        }
    }

    /// Input names; "" marks an omitted optional input.
    pub fn inputs(&self) -> &[String] {
        &self.proto.input
    }

    pub fn outputs(&self) -> &[String] {
        &self.proto.output
    }

    /// The i-th input if present and not omitted.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn from_proto(mut proto: NodeProto) -> Result<Self> {
        let mut subgraphs = Vec::new();
        for a in &mut proto.attribute {
            if let Some(g) = a.g.take() {
                subgraphs.push(Subgraph {
                    attr: a.name().to_string(),
                    index: None,
                    graph: Graph::from_proto(g)?,
                });
            }
            for (i, g) in std::mem::take(&mut a.graphs).into_iter().enumerate() {
                subgraphs.push(Subgraph {
                    attr: a.name().to_string(),
                    index: Some(i),
                    graph: Graph::from_proto(g)?,
                });
            }
        }
        Ok(Node { proto, subgraphs })
    }

    fn to_proto(&self) -> NodeProto {
        let mut proto = self.proto.clone();
        for s in &self.subgraphs {
            put_back_subgraph(&mut proto, &s.attr, s.index, s.graph.to_proto());
        }
        proto
    }

    fn into_proto(self) -> NodeProto {
        let mut proto = self.proto;
        for s in self.subgraphs {
            put_back_subgraph(&mut proto, &s.attr, s.index, s.graph.into_proto());
        }
        proto
    }

    /// The subgraph stored in attribute `attr` (`g` form).
    pub fn subgraph(&self, attr: &str) -> Option<&Graph> {
        self.subgraphs
            .iter()
            .find(|s| s.attr == attr && s.index.is_none())
            .map(|s| &s.graph)
    }
}

/// A computation graph: nodes, initializers and the proto fields the IR leaves alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Inputs, outputs, value_info, name, doc string and other fields; `node` and
    /// `initializer` are emptied (they live in `nodes` and `initializers`).
    pub proto: GraphProto,
    pub nodes: Vec<Node>,
    pub initializers: IndexMap<String, Tensor>,
}

/// Where a value comes from inside one graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Input,
    Initializer,
    /// Output `1` of node `0`.
    Node(usize, usize),
}

impl Graph {
    /// Lifts a `GraphProto` into the IR, checking every initializer's declared size.
    pub fn from_proto(mut proto: GraphProto) -> Result<Self> {
        let nodes = std::mem::take(&mut proto.node)
            .into_iter()
            .map(Node::from_proto)
            .collect::<Result<Vec<_>>>()?;
        let mut initializers = IndexMap::new();
        for t in std::mem::take(&mut proto.initializer) {
            let name = t.name().to_string();
            if name.is_empty() {
                return Err(Error::invalid(format!(
                    "graph '{}' has an initializer without a name",
                    proto.name()
                )));
            }
            if initializers.insert(name.clone(), Tensor::new(t)?).is_some() {
                return Err(Error::tensor(name, "initializer defined twice"));
            }
        }
        Ok(Graph {
            proto,
            nodes,
            initializers,
        })
    }

    pub fn to_proto(&self) -> GraphProto {
        let mut proto = self.proto.clone();
        proto.node = self.nodes.iter().map(Node::to_proto).collect();
        proto.initializer = self
            .initializers
            .values()
            .map(|t| t.proto.clone())
            .collect();
        proto
    }

    /// Like [`Graph::to_proto`] without copying tensor metadata twice.
    pub fn into_proto(self) -> GraphProto {
        let Graph {
            mut proto,
            nodes,
            initializers,
        } = self;
        proto.node = nodes.into_iter().map(Node::into_proto).collect();
        proto.initializer = initializers.into_values().map(|t| t.proto).collect();
        proto
    }

    pub fn name(&self) -> &str {
        self.proto.name()
    }

    pub fn inputs(&self) -> &[ValueInfoProto] {
        &self.proto.input
    }

    pub fn outputs(&self) -> &[ValueInfoProto] {
        &self.proto.output
    }

    /// Graph inputs that are not initializers (IR < 4 lists initializers as inputs too).
    pub fn real_inputs(&self) -> impl Iterator<Item = &ValueInfoProto> {
        self.proto
            .input
            .iter()
            .filter(|v| !self.initializers.contains_key(v.name()))
    }

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.get(name)
    }

    pub fn add_initializer(&mut self, t: Tensor) {
        self.initializers.insert(t.name().to_string(), t);
    }

    pub fn add_initializer_proto(&mut self, t: TensorProto) -> Result<()> {
        self.add_initializer(Tensor::new(t)?);
        Ok(())
    }

    pub fn is_output(&self, name: &str) -> bool {
        self.proto.output.iter().any(|o| o.name() == name)
    }

    /// Value name -> (node index, output index) for node outputs.
    pub fn producers(&self) -> HashMap<&str, (usize, usize)> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (j, o) in n.outputs().iter().enumerate() {
                if !o.is_empty() {
                    m.insert(o.as_str(), (i, j));
                }
            }
        }
        m
    }

    /// Value name -> indices of the nodes that read it, including reads from inside their
    /// subgraphs (outer-scope references).
    pub fn consumers(&self) -> HashMap<String, Vec<usize>> {
        let mut m: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for v in node_reads(n) {
                let e = m.entry(v).or_default();
                if e.last() != Some(&i) {
                    e.push(i);
                }
            }
        }
        m
    }

    /// Where `name` is defined in this graph, if it is.
    pub fn source(&self, name: &str) -> Option<Source> {
        if self.initializers.contains_key(name) {
            return Some(Source::Initializer);
        }
        if self.proto.input.iter().any(|v| v.name() == name) {
            return Some(Source::Input);
        }
        self.producers().get(name).map(|&(n, o)| Source::Node(n, o))
    }

    /// Names defined in this graph: inputs, initializers and node outputs.
    pub fn defined_names(&self) -> HashSet<&str> {
        let mut s: HashSet<&str> = self.proto.input.iter().map(|v| v.name()).collect();
        s.extend(self.initializers.keys().map(String::as_str));
        for n in &self.nodes {
            s.extend(
                n.outputs()
                    .iter()
                    .map(String::as_str)
                    .filter(|o| !o.is_empty()),
            );
        }
        s
    }

    /// Values this graph reads from enclosing scopes (used by its nodes or nested subgraphs but
    /// not defined inside it), sorted.
    pub fn outer_refs(&self) -> Vec<String> {
        let defined = self.defined_names();
        let mut refs: Vec<String> = self
            .nodes
            .iter()
            .flat_map(node_reads)
            .filter(|v| !defined.contains(v.as_str()))
            .chain(
                self.proto
                    .output
                    .iter()
                    .map(|o| o.name().to_string())
                    .filter(|o| !defined.contains(o.as_str())),
            )
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// Node indices in an order where each node follows the producers of its inputs (Kahn's
    /// algorithm, stable with respect to stored order). Errors on a cycle, naming a node in it.
    pub fn topo_order(&self) -> Result<Vec<usize>> {
        let producers = self.producers();
        let mut indegree = vec![0usize; self.nodes.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let mut deps: Vec<usize> = node_reads(n)
                .iter()
                .filter_map(|v| producers.get(v.as_str()).map(|&(p, _)| p))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            for p in deps {
                if p == i {
                    return Err(n.error("reads its own output (graph cycle)"));
                }
                indegree[i] += 1;
                dependents[p].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&i| indegree[i] == 0)
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        if order.len() != self.nodes.len() {
            let stuck = (0..self.nodes.len())
                .find(|&i| indegree[i] > 0)
                .unwrap_or(0);
            return Err(self.nodes[stuck].error("is part of a graph cycle"));
        }
        Ok(order)
    }

    /// Reorders `nodes` topologically (passes call this after inserting nodes).
    pub fn sort_topologically(&mut self) -> Result<()> {
        let order = self.topo_order()?;
        if order.iter().enumerate().all(|(i, &j)| i == j) {
            return Ok(());
        }
        let mut slots: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(())
    }

    /// Checks structure: every input is defined (here or in `outer`), no value is produced
    /// twice, the graph is acyclic, and subgraphs are valid in their scope.
    pub fn validate(&self, outer: &HashSet<String>) -> Result<()> {
        let mut defined: HashSet<&str> = self.proto.input.iter().map(|v| v.name()).collect();
        defined.extend(self.initializers.keys().map(String::as_str));
        for n in &self.nodes {
            for o in n.outputs().iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o.as_str()) {
                    return Err(n.error(format!("output '{o}' is already defined in the graph")));
                }
            }
        }
        for n in &self.nodes {
            for i in n.inputs().iter().filter(|i| !i.is_empty()) {
                if !defined.contains(i.as_str()) && !outer.contains(i) {
                    return Err(n.error(format!(
                        "input '{i}' is not produced by any node, graph input or initializer"
                    )));
                }
            }
        }
        for o in &self.proto.output {
            if !defined.contains(o.name()) && !outer.contains(o.name()) {
                return Err(Error::invalid(format!(
                    "graph output '{}' is not produced by any node, graph input or initializer",
                    o.name()
                )));
            }
        }
        self.topo_order()?;
        if self.nodes.iter().any(|n| !n.subgraphs.is_empty()) {
            let mut scope: HashSet<String> = outer.clone();
            scope.extend(defined.iter().map(|s| s.to_string()));
            for n in &self.nodes {
                for s in &n.subgraphs {
                    s.graph
                        .validate(&scope)
                        .map_err(|e| n.error(format!("in subgraph '{}': {e}", s.attr)))?;
                }
            }
        }
        Ok(())
    }

    /// Visits this graph and every nested subgraph, depth first.
    pub fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Graph)) {
        f(self);
        for n in &self.nodes {
            for s in &n.subgraphs {
                s.graph.visit(f);
            }
        }
    }

    /// Mutable depth-first visit of this graph and every nested subgraph. `f` runs on a
    /// subgraph before its parent.
    pub fn visit_mut(&mut self, f: &mut impl FnMut(&mut Graph) -> Result<()>) -> Result<()> {
        for n in &mut self.nodes {
            for s in &mut n.subgraphs {
                s.graph.visit_mut(f)?;
            }
        }
        f(self)
    }
}

/// Puts a lifted subgraph back into its attribute. Subgraphs are stored in attribute order and,
/// within a `graphs` list, in index order, so pushing restores the original list.
fn put_back_subgraph(proto: &mut NodeProto, attr: &str, index: Option<usize>, g: GraphProto) {
    if let Some(a) = proto.attribute.iter_mut().find(|a| a.name() == attr) {
        match index {
            None => a.g = Some(g),
            Some(_) => a.graphs.push(g),
        }
    }
}

/// Every value a node reads: its inputs and, for control-flow nodes, the outer-scope values
/// its subgraphs read.
pub fn node_reads(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = n
        .inputs()
        .iter()
        .filter(|i| !i.is_empty())
        .cloned()
        .collect();
    for s in &n.subgraphs {
        v.extend(s.graph.outer_refs());
    }
    v
}
