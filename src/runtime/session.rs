//! Planning and executing a graph.
//!
//! [`Session::new`] plans once: every value name gets a slot; nodes are scheduled in
//! topological order; initializers and Constant nodes become values once, and nodes whose
//! inputs are all constant are evaluated at planning time (constant folding); each node's op is
//! built (attributes parsed, constant inputs prepared), so an unsupported op or a bad attribute
//! is reported before anything runs; and for every step the session records which slots die
//! after it (their last reader), so [`Session::run`] frees intermediate buffers as soon as
//! possible.
//!
//! Subgraphs (If branches, Loop and Scan bodies) are planned as child sessions with
//! [`Session::from_graph`]. The values a subgraph reads from enclosing scopes are passed to the
//! control-flow node as extra inputs after its own (see [`Scope`]), so lifetimes and
//! scheduling see them like any other read.
//!
//! Threads: with [`Options::threads`] > 0 the session runs inside its own rayon pool of that
//! size (kernels such as the GEMM split work over the current pool); 0 uses rayon's global
//! pool (all cores, or `RAYON_NUM_THREADS`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ir::shape::{Dim, ValueType};
use crate::ir::{Graph, Node};
use crate::model::Model;

use super::budget;
use super::kernels::gemm_i8::with_ort_u8s8_saturation;
use super::ops::{BuildCtx, Op, Registry, Scope, default_registry};
use super::value::Value;

mod fuse_gelu;
mod fuse_int8;
mod fuse_linear;
mod fuse_lstm_cell;
mod step_links;
use fuse_linear::fuse_float_linear;

/// How a session runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Worker threads for kernels; 0 uses rayon's global pool.
    pub threads: usize,
    /// Skip plan-time kernel fusion (Linear + bias + activation into one kernel), so that
    /// benchmarks can time the unfused graph.
    pub no_kernel_fusion: bool,
    /// Compute uint8 x int8 integer products as onnxruntime does on x86 CPUs with AVX2 but
    /// no VNNI, saturating byte pairs to i16 (see
    /// [`with_ort_u8s8_saturation`](crate::runtime::kernels::gemm_i8::with_ort_u8s8_saturation)),
    /// instead of exactly as the ONNX spec defines them. Slow; for predicting and matching
    /// onnxruntime on such machines.
    pub ort_u8s8_saturation: bool,
    /// The memory budget of a run in bytes (see [`budget`](super::budget)): tensors whose
    /// size comes from input data, and the values alive at once, must fit in it. `None` is
    /// [`budget::default_budget`](super::budget::default_budget).
    pub max_memory: Option<u64>,
}

impl Options {
    /// Default options with the given thread count.
    pub fn with_threads(threads: usize) -> Self {
        Options {
            threads,
            ..Default::default()
        }
    }
}

/// A graph input the caller feeds, with its declared type when the model gives one.
#[derive(Clone, Debug)]
pub struct InputInfo {
    pub name: String,
    pub ty: Option<ValueType>,
}

/// Values with their names, in graph order.
pub type NamedValues = Vec<(String, Value)>;

/// Wall time of one step in a profiled run.
#[derive(Clone, Debug)]
pub struct NodeTime {
    pub node: String,
    pub op_type: String,
    pub ms: f64,
}

struct Step {
    op: Box<dyn Op>,
    node: String,
    op_type: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Slots whose last reader is this step (or outputs nobody reads).
    frees: Vec<usize>,
    /// The node is in the default ONNX domain (fusion only touches those).
    onnx_domain: bool,
    /// The node's index in the planned graph's `nodes`.
    node_index: usize,
}

/// A planned graph.
pub struct Session {
    num_slots: usize,
    /// Constant values (initializers, Constant nodes, folded nodes) by slot.
    consts: Vec<Option<Value>>,
    inputs: Vec<(InputInfo, usize)>,
    outer: Vec<usize>,
    steps: Vec<Step>,
    outputs: Vec<(String, usize)>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// [`Options::ort_u8s8_saturation`]; subgraph sessions inherit it from the running one.
    ort_u8s8_saturation: bool,
    /// [`Options::max_memory`] resolved; a subgraph session runs under the enclosing one's.
    max_memory: u64,
}

enum Slot<'a> {
    Empty,
    Own(Value),
    Ref(&'a Value),
}

impl Slot<'_> {
    fn get(&self) -> Option<&Value> {
        match self {
            Slot::Empty => None,
            Slot::Own(v) => Some(v),
            Slot::Ref(v) => Some(v),
        }
    }
}

/// Opset versions by domain ("" for the default domain) of a model.
pub fn model_opsets(model: &Model) -> HashMap<String, i64> {
    model
        .proto
        .opset_import
        .iter()
        .map(|o| {
            let d = match o.domain() {
                "ai.onnx" => "",
                d => d,
            };
            (d.to_string(), o.version())
        })
        .collect()
}

/// Adds the node's name to an error raised inside its op.
fn in_node(node: &str, op: &str, e: Error) -> Error {
    match e {
        Error::Unsupported(m) => Error::Unsupported(format!("{m} (node '{node}', {op})")),
        e => Error::Node {
            node: node.to_string(),
            op: op.to_string(),
            reason: e.to_string(),
        },
    }
}

impl Session {
    /// Plans a model's main graph.
    pub fn new(model: &Model, options: &Options) -> Result<Session> {
        let mut s = Session::from_graph(&model.graph, &model_opsets(model), &[], options)?;
        if options.threads > 0 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(options.threads)
                .build()
                .map_err(|e| {
                    Error::Other(format!("cannot start {} threads: {e}", options.threads))
                })?;
            s.pool = Some(Arc::new(pool));
        }
        s.ort_u8s8_saturation = options.ort_u8s8_saturation;
        Ok(s)
    }

    /// Plans a bare graph (a subgraph, or a graph for constant folding). `outer` names the
    /// enclosing-scope values it may read; [`Session::run_with`] takes their values in that
    /// order.
    pub fn from_graph(
        graph: &Graph,
        opsets: &HashMap<String, i64>,
        outer: &[String],
        options: &Options,
    ) -> Result<Session> {
        Planner::new(default_registry(), opsets, options).plan(graph, outer)
    }

    /// The inputs a caller feeds, in graph order.
    pub fn inputs(&self) -> impl Iterator<Item = &InputInfo> {
        self.inputs.iter().map(|(i, _)| i)
    }

    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|(n, _)| n.as_str())
    }

    /// Runs the graph on named inputs; returns the outputs in graph order with their names.
    /// Every graph input must be given, with its declared element type, rank and fixed dims.
    pub fn run(&self, inputs: HashMap<String, Value>) -> Result<Vec<(String, Value)>> {
        self.run_inner(inputs, None)
    }

    /// Like [`Session::run`], also timing every step (top-level nodes; a control-flow node's
    /// time includes its subgraph runs).
    pub fn run_profiled(
        &self,
        inputs: HashMap<String, Value>,
    ) -> Result<(NamedValues, Vec<NodeTime>)> {
        let mut times = Vec::with_capacity(self.steps.len());
        let outs = self.run_inner(inputs, Some(&mut times))?;
        Ok((outs, times))
    }

    fn run_inner(
        &self,
        inputs: HashMap<String, Value>,
        prof: Option<&mut Vec<NodeTime>>,
    ) -> Result<Vec<(String, Value)>> {
        let mut inputs = inputs;
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for (info, _) in &self.inputs {
            let v = inputs
                .remove(&info.name)
                .ok_or_else(|| Error::Invalid(format!("missing input '{}'", info.name)))?;
            check_input(info, &v)?;
            ordered.push(v);
        }
        if let Some(extra) = inputs.keys().next() {
            return Err(Error::Invalid(format!(
                "'{extra}' is not an input of the graph (inputs: {})",
                self.inputs
                    .iter()
                    .map(|(i, _)| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let saturate = self.ort_u8s8_saturation;
        let exec = || with_ort_u8s8_saturation(saturate, || self.exec(ordered, &[], prof));
        let outs = match &self.pool {
            Some(p) => p.install(exec)?,
            None => exec()?,
        };
        Ok(self
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(outs)
            .collect())
    }

    /// Runs with positional inputs (graph input order) and outer-scope values (in the order
    /// given to [`Session::from_graph`]). Used by control-flow ops; no type checks beyond the
    /// count, since subgraph inputs often carry no types.
    pub fn run_with(&self, inputs: Vec<Value>, outer: &[&Value]) -> Result<Vec<Value>> {
        if inputs.len() != self.inputs.len() || outer.len() != self.outer.len() {
            return Err(Error::Other(format!(
                "graph takes {} inputs and {} outer values, got {} and {}",
                self.inputs.len(),
                self.outer.len(),
                inputs.len(),
                outer.len()
            )));
        }
        self.exec(inputs, outer, None)
    }

    fn exec<'a>(
        &'a self,
        inputs: Vec<Value>,
        outer: &[&'a Value],
        mut prof: Option<&mut Vec<NodeTime>>,
    ) -> Result<Vec<Value>> {
        let mut slots: Vec<Slot<'a>> = (0..self.num_slots).map(|_| Slot::Empty).collect();
        for (i, c) in self.consts.iter().enumerate() {
            if let Some(c) = c {
                slots[i] = Slot::Ref(c);
            }
        }
        for (&s, v) in self.outer.iter().zip(outer) {
            slots[s] = Slot::Ref(v);
        }
        // A subgraph runs under its enclosing session's budget, with the enclosing values
        // counted as in use.
        let (limit, base) = budget::active().unwrap_or((self.max_memory, 0));
        let _budget = budget::enter(limit, base);
        let mut live: u64 = inputs.iter().map(budget::value_bytes).sum();
        for ((_, s), v) in self.inputs.iter().zip(inputs) {
            slots[*s] = Slot::Own(v);
        }
        for step in &self.steps {
            budget::set_used(base.saturating_add(live));
            let start = prof.is_some().then(std::time::Instant::now);
            // A value whose last reader is this step moves into an op that can reuse its
            // buffer (Reshape and friends), instead of being copied and then freed.
            let taken = match step.inputs.first() {
                Some(&Some(s))
                    if step.op.takes_first_input()
                        && step.frees.contains(&s)
                        && step.inputs[1..].iter().all(|&i| i != Some(s))
                        && matches!(slots[s], Slot::Own(_)) =>
                {
                    match std::mem::replace(&mut slots[s], Slot::Empty) {
                        Slot::Own(v) => {
                            live = live.saturating_sub(budget::value_bytes(&v));
                            Some(v)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let results = {
                let mut ins: Vec<Option<&Value>> = step
                    .inputs
                    .iter()
                    .map(|s| s.and_then(|i| slots[i].get()))
                    .collect();
                match taken {
                    Some(first) => {
                        ins[0] = None;
                        step.op.run_taking(first, &ins)
                    }
                    None => step.op.run(&ins),
                }
                .map_err(|e| in_node(&step.node, &step.op_type, e))?
            };
            let produced: u64 = step
                .outputs
                .iter()
                .zip(&results)
                .filter(|(slot, _)| slot.is_some())
                .map(|(_, v)| budget::value_bytes(v))
                .sum();
            live = live.saturating_add(produced);
            if base.saturating_add(live) > limit {
                return Err(in_node(
                    &step.node,
                    &step.op_type,
                    budget::outputs_over_budget(produced, base.saturating_add(live), limit),
                ));
            }
            for (slot, v) in step.outputs.iter().zip(results) {
                if let Some(s) = slot {
                    slots[*s] = Slot::Own(v);
                }
            }
            if step
                .outputs
                .iter()
                .flatten()
                .any(|&s| matches!(slots[s], Slot::Empty))
            {
                return Err(in_node(
                    &step.node,
                    &step.op_type,
                    Error::Other("produced fewer outputs than the node names".into()),
                ));
            }
            if let (Some(p), Some(t)) = (prof.as_deref_mut(), start) {
                p.push(NodeTime {
                    node: step.node.clone(),
                    op_type: step.op_type.clone(),
                    ms: t.elapsed().as_secs_f64() * 1e3,
                });
            }
            for &s in &step.frees {
                let freed = std::mem::replace(&mut slots[s], Slot::Empty);
                if let Slot::Own(v) = &freed {
                    live = live.saturating_sub(budget::value_bytes(v));
                }
                // A dead f32 intermediate's buffer can serve a later output (see
                // `kernels::gemm_f32::recycle`): fewer fresh pages, so fewer page faults.
                if let Slot::Own(Value::F32(a)) = freed {
                    super::kernels::gemm_f32::recycle(a.into_raw_vec_and_offset().0);
                }
            }
        }
        let mut outs = Vec::with_capacity(self.outputs.len());
        for (i, (name, s)) in self.outputs.iter().enumerate() {
            let again = self.outputs[i + 1..].iter().any(|(_, t)| t == s);
            let v = match std::mem::replace(&mut slots[*s], Slot::Empty) {
                Slot::Own(v) if again => {
                    let c = v.clone();
                    slots[*s] = Slot::Own(v);
                    c
                }
                Slot::Own(v) => v,
                Slot::Ref(v) => {
                    slots[*s] = Slot::Ref(v);
                    v.clone()
                }
                Slot::Empty => {
                    return Err(Error::Other(format!(
                        "graph output '{name}' was not computed"
                    )));
                }
            };
            outs.push(v);
        }
        Ok(outs)
    }
}

/// Checks a fed value against the declared type of its graph input.
fn check_input(info: &InputInfo, v: &Value) -> Result<()> {
    let Some(ty) = &info.ty else { return Ok(()) };
    let name = &info.name;
    if ty.elem != 0 && ty.elem != v.dtype() as i32 {
        return Err(Error::tensor(
            name,
            format!(
                "input is {}, the model declares {}",
                crate::ir::tensor::dtype_name(v.dtype() as i32),
                crate::ir::tensor::dtype_name(ty.elem)
            ),
        ));
    }
    if let Some(shape) = &ty.shape {
        if shape.len() != v.shape().len() {
            return Err(Error::tensor(
                name,
                format!(
                    "input has shape {:?} (rank {}), the model declares rank {} {}",
                    v.shape(),
                    v.shape().len(),
                    shape.len(),
                    ty.shape_string()
                ),
            ));
        }
        for (i, (d, &n)) in shape.iter().zip(v.shape()).enumerate() {
            if let Dim::Known(k) = d
                && *k >= 0
                && *k as usize != n
            {
                return Err(Error::tensor(
                    name,
                    format!(
                        "input has shape {:?}, the model declares {} (dim {i} must be {k})",
                        v.shape(),
                        ty.shape_string()
                    ),
                ));
            }
        }
    }
    Ok(())
}

struct Planner<'r> {
    registry: &'r Registry,
    opsets: &'r HashMap<String, i64>,
    options: &'r Options,
    slots: HashMap<String, usize>,
    consts: Vec<Option<Value>>,
}

impl<'r> Planner<'r> {
    fn new(registry: &'r Registry, opsets: &'r HashMap<String, i64>, options: &'r Options) -> Self {
        Planner {
            registry,
            opsets,
            options,
            slots: HashMap::new(),
            consts: Vec::new(),
        }
    }

    fn slot(&mut self, name: &str) -> usize {
        // A local definition shadows an outer one of the same name.
        let n = self.consts.len();
        self.consts.push(None);
        self.slots.insert(name.to_string(), n);
        n
    }

    fn lookup(&self, node: &Node, name: &str) -> Result<usize> {
        self.slots
            .get(name)
            .copied()
            .ok_or_else(|| node.error(format!("input '{name}' is not defined in this scope")))
    }

    fn plan(mut self, graph: &Graph, outer: &[String]) -> Result<Session> {
        let outer_slots: Vec<usize> = outer.iter().map(|n| self.slot(n)).collect();
        for (name, t) in &graph.initializers {
            let s = self.slot(name);
            self.consts[s] = Some(Value::from_tensor(t)?);
        }
        let mut inputs = Vec::new();
        for vi in graph.real_inputs() {
            let s = self.slot(vi.name());
            inputs.push((
                InputInfo {
                    name: vi.name().to_string(),
                    ty: ValueType::from_value_info(vi),
                },
                s,
            ));
        }
        let order = graph.topo_order()?;
        let mut steps: Vec<Step> = Vec::new();
        for &ni in &order {
            let node = &graph.nodes[ni];
            if let Some(mut step) = self.plan_node(node)? {
                step.node_index = ni;
                steps.push(step);
            }
        }
        let mut outputs = Vec::new();
        for o in graph.outputs() {
            let s = self.slots.get(o.name()).copied().ok_or_else(|| {
                Error::invalid(format!("graph output '{}' is not produced", o.name()))
            })?;
            outputs.push((o.name().to_string(), s));
        }
        let num_slots = self.consts.len();
        let graph_outs: HashSet<usize> = outputs.iter().map(|&(_, s)| s).collect();
        if !self.options.no_kernel_fusion {
            let opset = self.opsets.get("").copied().unwrap_or(1);
            fuse_float_linear(graph, &mut steps, &self.consts, &graph_outs, opset);
        }
        fuse_int8::fuse_int8_linear(
            &mut steps,
            &self.consts,
            &graph_outs,
            graph,
            &self.slots,
            self.opsets,
            self.options,
        );
        fuse_lstm_cell::fuse_lstm_cells(&mut steps, graph, &self.consts, &graph_outs, self.options);
        if !self.options.no_kernel_fusion {
            fuse_gelu::fuse_gelu(&mut steps, &self.consts, &graph_outs);
        }
        // Lifetimes: a slot dies after its last reader; a step output nobody reads dies at once.
        let keep: HashSet<usize> = outputs
            .iter()
            .map(|&(_, s)| s)
            .chain(outer_slots.iter().copied())
            .chain((0..num_slots).filter(|&s| self.consts[s].is_some()))
            .collect();
        let mut last_use: Vec<Option<usize>> = vec![None; num_slots];
        for (i, st) in steps.iter().enumerate() {
            for s in st
                .inputs
                .iter()
                .flatten()
                .chain(st.outputs.iter().flatten())
            {
                last_use[*s] = Some(i);
            }
        }
        for (s, lu) in last_use.iter().enumerate() {
            if let Some(i) = lu
                && !keep.contains(&s)
            {
                steps[*i].frees.push(s);
            }
        }
        Ok(Session {
            num_slots,
            consts: self.consts,
            inputs,
            outer: outer_slots,
            steps,
            outputs,
            pool: None,
            ort_u8s8_saturation: self.options.ort_u8s8_saturation,
            max_memory: self
                .options
                .max_memory
                .unwrap_or_else(budget::default_budget),
        })
    }

    /// Builds one node; returns `None` when it was evaluated at planning time.
    fn plan_node(&mut self, node: &Node) -> Result<Option<Step>> {
        let domain = node.domain();
        let op_type = node.op_type();
        let opset = match self.opsets.get(domain) {
            Some(&v) => v,
            None if domain.is_empty() => 1,
            None => {
                return Err(node.error(format!(
                    "its domain '{domain}' is not imported by the model"
                )));
            }
        };
        let mut input_slots: Vec<Option<usize>> = Vec::with_capacity(node.inputs().len());
        for name in node.inputs() {
            input_slots.push(if name.is_empty() {
                None
            } else {
                Some(self.lookup(node, name)?)
            });
        }
        let outer_refs: Vec<String> = {
            let mut v: Vec<String> = node
                .subgraphs
                .iter()
                .flat_map(|s| s.graph.outer_refs())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        for name in &outer_refs {
            input_slots.push(Some(self.lookup(node, name)?));
        }
        let op = {
            let const_inputs: Vec<Option<&Value>> = input_slots
                .iter()
                .map(|s| s.and_then(|s| self.consts[s].as_ref()))
                .collect();
            let ctx = BuildCtx {
                opset,
                const_inputs,
            };
            let built = if let Some(b) = self.registry.get_scoped(domain, op_type) {
                let scope = Scope {
                    opsets: self.opsets,
                    outer: &outer_refs,
                    options: self.options,
                };
                b(node, &ctx, &scope)
            } else if let Some(b) = self.registry.get(domain, op_type) {
                b(node, &ctx)
            } else {
                let op = if domain.is_empty() {
                    op_type.to_string()
                } else {
                    format!("{domain}.{op_type}")
                };
                return Err(Error::Unsupported(format!(
                    "op {op} (node {})",
                    node.display_name()
                )));
            };
            let op = built.map_err(|e| match e {
                e @ Error::Node { .. } | e @ Error::Unsupported(_) => e,
                e => node.error(e.to_string()),
            })?;
            // Fold nodes whose inputs are all constant (Constant itself has none).
            let foldable = node.subgraphs.is_empty()
                && ctx
                    .const_inputs
                    .iter()
                    .zip(&input_slots)
                    .all(|(c, s)| s.is_none() || c.is_some());
            if foldable {
                let _budget = budget::enter(
                    self.options
                        .max_memory
                        .unwrap_or_else(budget::default_budget),
                    0,
                );
                let outs = op
                    .run(&ctx.const_inputs)
                    .map_err(|e| in_node(node.display_name(), op_type, e))?;
                let names = node.outputs();
                if outs.len() < names.iter().filter(|n| !n.is_empty()).count() {
                    return Err(node.error("produced fewer outputs than the node names"));
                }
                let outs_named: Vec<(String, Value)> = names
                    .iter()
                    .zip(outs)
                    .filter(|(n, _)| !n.is_empty())
                    .map(|(n, v)| (n.clone(), v))
                    .collect();
                drop(ctx);
                for (n, v) in outs_named {
                    let s = self.slot(&n);
                    self.consts[s] = Some(v);
                }
                return Ok(None);
            }
            op
        };
        let outputs = node
            .outputs()
            .iter()
            .map(|o| (!o.is_empty()).then(|| self.slot(o)))
            .collect();
        Ok(Some(Step {
            op,
            node: node.display_name().to_string(),
            op_type: op_type.to_string(),
            inputs: input_slots,
            outputs,
            frees: Vec::new(),
            onnx_domain: domain.is_empty(),
            node_index: 0,
        }))
    }
}
