//! Dynamic int8 quantization: which nodes to rewrite (policy), the weight math, and the
//! per-op rewriters behind one contract (rewrite.rs), driven from here.
//!
//! The driver works in two phases so that rewriters only ever read the graph:
//! 1. walk the main graph and (unless disabled) every If/Loop/Scan body, depth first in stored
//!    order; for each node the policy takes, call its family's rewriter with the constants
//!    visible in that scope (outer-scope initializers included) and the inferred types;
//!    float16 nodes go through a float32 view (fp16.rs);
//! 2. splice each replacement in place of its node (new initializers live in the graph that
//!    holds the node, which may be a subgraph), then drop what the replaced nodes read and
//!    nothing reads any more, in any scope (cleanup.rs).
//!
//! Every outcome lands in the report with the weight bytes before and after. Output is
//! deterministic: stored order everywhere, names from one [`NameGen`].

pub mod activation_choice;
pub mod attention;
mod cleanup;
pub mod consts;
pub mod conv;
pub mod deferred_weights;
pub mod embed_layer_norm;
pub mod fp16;
pub mod gather;
pub mod gemm;
pub mod gru_rnn;
pub mod int_product;
pub mod lstm;
pub mod matmul;
pub mod per_token;
pub mod policy;
pub mod recurrent_build;
pub mod recurrent_common;
pub mod recurrent_scan;
pub mod recurrent_weight_only;
pub mod report;
pub mod rewrite;
mod share;
pub mod smooth;
pub mod smooth_alpha;
pub mod target;
pub mod transposed;
pub mod trial;
pub mod weights;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::error::Result;
use crate::ir::shape::{ValueType, infer_types};
use crate::ir::{Graph, NameGen, Node, Tensor};
use crate::model::Model;

use consts::ConstScope;
use policy::{OpKind, PolicyOptions, decide};
use report::NodeReport;
use rewrite::{NodeCtx, Replacement, RewriteResult};
use weights::WeightQuantOptions;

/// Everything `rewrite` is told.
#[derive(Clone, Debug, Default)]
pub struct QuantizeOptions {
    pub policy: PolicyOptions,
    pub weights: WeightQuantOptions,
    pub per_channel: bool,
    /// MatMul/Gemm weights, when they differ from `weights` and `per_channel` (the CLI's
    /// default: uint8, asymmetric, per channel).
    pub linear_weights: Option<LinearWeights>,
    /// MatMul/Gemm activations; `Auto` (the default) decides per node
    /// ([`activation_choice`]).
    pub activations: rewrite::ActivationQuant,
    /// Leave the int8 values of large MatMul, Gemm and Gather weights to be computed while
    /// the model is saved ([`crate::ir::deferred`]): the save then overlaps quantizing and
    /// writing. Until then those initializers read as zeros, so only set this when the
    /// model goes straight to [`crate::model::save`].
    pub defer_values: bool,
}

/// How MatMul/Gemm weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearWeights {
    pub weights: WeightQuantOptions,
    pub per_channel: bool,
}

impl LinearWeights {
    /// The CLI's default: uint8, asymmetric, one scale and zero point per output column.
    /// Exact in onnxruntime on every x86 CPU (its uint8 x int8 products saturate without
    /// VNNI, its uint8 x uint8 ones do not), and as accurate as per-channel int8 where int8
    /// is exact (BENCHMARKS.md, "Choosing the activation mode").
    pub fn uint8_per_channel(reduce_range: bool) -> Self {
        LinearWeights {
            weights: WeightQuantOptions {
                weight_type: weights::WeightType::Uint8,
                symmetric: false,
                reduce_range,
            },
            per_channel: true,
        }
    }
}

/// The rewriter of each family.
pub fn rewriter_for(kind: OpKind) -> fp16::Rewriter {
    match kind {
        OpKind::MatMul => matmul::rewrite_matmul,
        OpKind::Gemm => gemm::rewrite_gemm,
        OpKind::Gather => gather::rewrite_gather,
        OpKind::Conv => conv::rewrite_conv,
        OpKind::Attention => attention::rewrite_attention,
        OpKind::EmbedLayerNorm => embed_layer_norm::rewrite_embed_layer_norm,
        OpKind::Lstm => lstm::rewrite_lstm,
        OpKind::Gru | OpKind::Rnn => gru_rnn::rewrite_gru_rnn,
    }
}

/// Pairs of (node index, subgraph index) from the main graph down to a subgraph.
type GraphPath = Vec<(usize, usize)>;

/// A replacement waiting to be spliced in: the node `node` of the graph reached by `path`
/// (pairs of node index and subgraph index from the main graph down).
struct Plan {
    path: GraphPath,
    node: usize,
    rep: Replacement,
    /// Its entry in the report.
    record: usize,
}

struct Walk<'o, 'p> {
    opts: &'o QuantizeOptions,
    opset: i64,
    names: NameGen,
    /// (scope, node name) -> indices into `records` of the nodes the policy takes, in order.
    pending: HashMap<(String, String), VecDeque<usize>>,
    records: Vec<NodeReport>,
    plans: Vec<Plan>,
    /// Names the replaced nodes read: candidates for removal once nothing reads them.
    read_by_replaced: HashSet<String>,
    bytes: ByteCounter,
    /// Records whose bytes the walk has filled in.
    filled: Vec<bool>,
    done: usize,
    total: usize,
    progress: &'p mut dyn FnMut(usize, usize, &str),
}

fn as_lookup<'x, F: Fn(&str) -> Option<&'x Tensor>>(
    f: &'x F,
) -> &'x dyn Fn(&str) -> Option<&'x Tensor> {
    f
}

/// Quantizes `model` in place and returns one report entry per candidate node.
/// `progress(done, total, node)` is called after each rewritten node.
pub fn quantize(
    model: &mut Model,
    opts: &QuantizeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<NodeReport>> {
    // Weights that exporters compute (Slice/Concat chains over parameters, Transposes) become
    // plain initializers first, so the policy sees them as constants.
    crate::passes::fold_constants::fold_constants(model)?;
    let decisions = decide(&model.graph, &opts.policy);
    let mut pending: HashMap<(String, String), VecDeque<usize>> = HashMap::new();
    let records: Vec<NodeReport> = decisions
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.quantize {
                pending
                    .entry((d.scope.clone(), d.node.clone()))
                    .or_default()
                    .push_back(i);
            }
            NodeReport {
                scope: d.scope.clone(),
                node: d.node.clone(),
                op_type: d.op_type.clone(),
                quantized: false,
                reason: d.reason.clone(),
                weight_bytes_before: 0,
                weight_bytes_after: 0,
                unit: None,
                sensitivity: None,
                activations: None,
            }
        })
        .collect();
    let total = decisions.iter().filter(|d| d.quantize).count();
    let mut walk = Walk {
        opts,
        opset: model.opset("").unwrap_or(0),
        names: NameGen::new(&model.graph),
        pending,
        records,
        plans: Vec::new(),
        read_by_replaced: HashSet::new(),
        bytes: ByteCounter::default(),
        filled: vec![false; decisions.len()],
        done: 0,
        total,
        progress,
    };
    let mut path = Vec::new();
    walk.graph(&model.graph, None, &HashMap::new(), "", &mut path);
    let mut skipped = Skipped {
        records: &mut walk.records,
        filled: &mut walk.filled,
        bytes: &mut walk.bytes,
    };
    skipped.fill(&model.graph, None, "");

    let Walk {
        mut plans,
        mut records,
        mut read_by_replaced,
        ..
    } = walk;
    let dropped = share::share_identical(
        &model.graph,
        plans.iter_mut().map(|p| (&p.path[..], p.node, &mut p.rep)),
    );
    // A quantized weight shared with an earlier replacement counts for that one.
    for (p, d) in plans.iter().zip(dropped) {
        records[p.record].weight_bytes_after -= d;
    }
    // Initializers are added in walk order (deterministic), before any splice: the paths
    // index nodes of the graphs as they were walked, and splicing a replacement into a graph
    // moves the nodes after it (an If after a quantized MatMul).
    let mut additions: Vec<(GraphPath, usize, Vec<Tensor>)> = plans
        .iter_mut()
        .map(|p| {
            (
                p.path.clone(),
                p.node,
                std::mem::take(&mut p.rep.initializers),
            )
        })
        .collect();
    additions.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (path, _, inits) in additions {
        let g = graph_at(&mut model.graph, &path);
        for t in inits {
            g.add_initializer(t);
        }
    }
    // Splice from the last position backwards so earlier indices stay valid: subgraph
    // replacements (longer keys) go before the splices that move their parent node.
    plans.sort_by_key(|p| std::cmp::Reverse(plan_key(p)));
    let mut opsets: BTreeSet<(String, i64)> = BTreeSet::new();
    for p in plans {
        let g = graph_at(&mut model.graph, &p.path);
        opsets.extend(p.rep.opsets.iter().cloned());
        g.nodes.splice(p.node..=p.node, p.rep.nodes);
    }
    for (d, v) in opsets {
        model.require_opset(&d, v);
    }
    cleanup::remove_unread(&mut model.graph, &mut read_by_replaced);
    if !opts.defer_values {
        model.graph.materialize_deferred();
    }
    model.graph.validate(&HashSet::new())?;
    Ok(records)
}

fn plan_key(p: &Plan) -> Vec<usize> {
    let mut k: Vec<usize> = p.path.iter().flat_map(|&(n, s)| [n, s]).collect();
    k.push(p.node);
    k
}

fn graph_at<'g>(mut g: &'g mut Graph, path: &[(usize, usize)]) -> &'g mut Graph {
    for &(n, s) in path {
        g = &mut g.nodes[n].subgraphs[s].graph;
    }
    g
}

fn sub_scope(scope: &str, node: &Node, attr: &str) -> String {
    if scope.is_empty() {
        format!("{}/{}", node.display_name(), attr)
    } else {
        format!("{scope}/{}/{}", node.display_name(), attr)
    }
}

/// Identifies a constant tensor across the walk: name, payload address and length.
type TensorKey = (String, usize, usize);

fn tensor_key(t: &Tensor) -> TensorKey {
    let raw = t.proto.raw_data.as_deref().unwrap_or_default();
    (t.name().to_string(), raw.as_ptr() as usize, t.byte_len())
}

/// Counts each constant tensor once in the report: a weight read by several nodes counts
/// for the first of them (in walk order, quantized nodes first), so that the totals are the
/// bytes of distinct tensors, before and after.
#[derive(Default)]
struct ByteCounter {
    before: HashSet<TensorKey>,
    after: HashSet<TensorKey>,
}

/// Bytes of the constant inputs of `node` that `seen` has not counted yet (now counted).
fn const_bytes<'t>(
    node: &Node,
    lookup: &dyn Fn(&str) -> Option<&'t Tensor>,
    seen: &mut HashSet<TensorKey>,
) -> u64 {
    let mut sum = 0;
    for i in node.inputs() {
        if let Some(t) = lookup(i)
            && seen.insert(tensor_key(t))
        {
            sum += t.byte_len() as u64;
        }
    }
    sum
}

impl Walk<'_, '_> {
    fn graph(
        &mut self,
        g: &Graph,
        parent: Option<&ConstScope>,
        outer_types: &HashMap<String, ValueType>,
        scope: &str,
        path: &mut Vec<(usize, usize)>,
    ) {
        let consts = ConstScope::new(g, parent);
        let types = infer_types(g, outer_types);
        let attention = activation_choice::has_attention(g, &|v| consts.get(v).is_some());
        for (i, n) in g.nodes.iter().enumerate() {
            if let Some(kind) = OpKind::of(n) {
                let key = (scope.to_string(), n.display_name().to_string());
                if let Some(rec) = self.pending.get_mut(&key).and_then(VecDeque::pop_front) {
                    let at = NodeAt {
                        rec,
                        path,
                        index: i,
                        attention,
                    };
                    self.node(n, kind, &consts, &types, at);
                }
            }
            if !self.opts.policy.subgraphs {
                continue;
            }
            for (si, s) in n.subgraphs.iter().enumerate() {
                path.push((i, si));
                let inner = sub_scope(scope, n, &s.attr);
                self.graph(&s.graph, Some(&consts), &types, &inner, path);
                path.pop();
            }
        }
    }

    fn node(
        &mut self,
        n: &Node,
        kind: OpKind,
        consts: &ConstScope,
        types: &HashMap<String, ValueType>,
        at: NodeAt<'_>,
    ) {
        let NodeAt {
            rec,
            path,
            index,
            attention,
        } = at;
        let get = |name: &str| consts.get(name);
        let before = const_bytes(n, &get, &mut self.bytes.before);
        let linear = matches!(kind, OpKind::MatMul | OpKind::Gemm);
        // Attention's weight is a Linear weight too (the Q, K, V projections).
        let (weights, per_channel) = match &self.opts.linear_weights {
            Some(l) if linear || kind == OpKind::Attention => (l.weights, l.per_channel),
            _ => (self.opts.weights, self.opts.per_channel),
        };
        let choice = linear.then(|| {
            let weight_dims = n
                .input(1)
                .and_then(&get)
                .map(|t| t.dims())
                .filter(|d| d.len() == 2)
                .map(|d| (d[0] as usize, d[1] as usize));
            activation_choice::resolve(
                self.opts.activations,
                attention,
                &weights,
                weight_dims,
                self.opset,
            )
        });
        let result: RewriteResult = {
            let mut ctx = NodeCtx {
                constants: as_lookup(&get),
                types,
                names: &mut self.names,
                weights,
                per_channel,
                lstm_mode: self.opts.policy.lstm_mode,
                activations: choice
                    .as_ref()
                    .map_or(rewrite::ActivationQuant::PerTensor, |c| c.mode),
                opset: self.opset,
                defer_values: self.opts.defer_values,
            };
            let inner = rewriter_for(kind);
            if fp16::is_fp16(n, &ctx) {
                fp16::rewrite_via_f32(n, &mut ctx, inner)
            } else {
                inner(n, &mut ctx)
            }
        };
        self.filled[rec] = true;
        let r = &mut self.records[rec];
        r.weight_bytes_before = before;
        match result {
            Ok(rep) => {
                let new: HashMap<&str, u64> = rep
                    .initializers
                    .iter()
                    .map(|t| (t.name(), t.byte_len() as u64))
                    .collect();
                let mut after: u64 = new.values().sum();
                // Existing constants the replacement still reads (a reused bias) count too.
                let existing = |i: &str| get(i).filter(|_| !new.contains_key(i));
                for m in &rep.nodes {
                    after += const_bytes(m, &existing, &mut self.bytes.after);
                }
                r.weight_bytes_after = after;
                r.quantized = true;
                r.reason = rep.note.clone();
                r.activations = choice;
                self.read_by_replaced
                    .extend(n.inputs().iter().filter(|i| !i.is_empty()).cloned());
                self.plans.push(Plan {
                    path: path.to_vec(),
                    node: index,
                    rep,
                    record: rec,
                });
            }
            Err(skip) => {
                // The node keeps its float constants.
                r.weight_bytes_after = const_bytes(n, &get, &mut self.bytes.after);
                r.reason = skip.0;
            }
        }
        self.done += 1;
        (self.progress)(self.done, self.total, n.display_name());
    }
}

/// Where a node to rewrite is: its report entry, the path to its graph and its index there,
/// and whether that graph has self-attention.
struct NodeAt<'p> {
    rec: usize,
    path: &'p [(usize, usize)],
    index: usize,
    attention: bool,
}

/// Fills in the weight bytes of the nodes the policy left float (they keep their
/// constants).
struct Skipped<'a> {
    records: &'a mut [NodeReport],
    filled: &'a mut [bool],
    bytes: &'a mut ByteCounter,
}

impl Skipped<'_> {
    fn fill(&mut self, g: &Graph, parent: Option<&ConstScope>, scope: &str) {
        let consts = ConstScope::new(g, parent);
        let get = |name: &str| consts.get(name);
        for n in &g.nodes {
            if OpKind::of(n).is_some() {
                let name = n.display_name();
                let slot = self.records.iter().enumerate().position(|(i, r)| {
                    !self.filled[i] && !r.quantized && r.scope == scope && r.node == name
                });
                if let Some(i) = slot {
                    self.filled[i] = true;
                    let r = &mut self.records[i];
                    r.weight_bytes_before = const_bytes(n, &get, &mut self.bytes.before);
                    r.weight_bytes_after = const_bytes(n, &get, &mut self.bytes.after);
                }
            }
            for s in &n.subgraphs {
                let inner = sub_scope(scope, n, &s.attr);
                self.fill(&s.graph, Some(&consts), &inner);
            }
        }
    }
}
