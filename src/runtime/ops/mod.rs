//! Operator implementations, one file per op family. Each family registers its ops with
//! `register(&mut Registry)`; the session looks up a builder per node when it plans, so an
//! unsupported op is reported before anything runs.
//!
//! An op is built once per node (attributes parsed, constant inputs prepared) and run many
//! times.

pub mod activation;
pub mod activation_param;
pub mod argminmax;
pub mod attention;
pub mod attention_ms;
pub mod bitcast;
pub mod bitwise;
pub mod control_flow;
pub mod conv;
pub mod cumulative;
pub mod data;
pub mod detection;
pub mod dft;
pub mod einsum;
pub mod elementwise;
pub mod float_class;
pub mod grid_sample;
pub mod index_select;
pub mod int8_linear;
pub mod layout;
pub mod linalg;
pub mod linear_attention;
pub mod loss;
pub mod ml;
pub mod modulo;
pub mod normalization;
pub mod optimizer;
pub mod optional;
pub mod prelu;
pub mod quant;
pub mod quant_ms;
pub mod reduce;
pub mod resize;
pub mod rnn;
pub mod rnn_quant;
pub mod scatter_gather;
pub mod tfidf;
pub mod transformer;
pub mod transformer_ms;
pub mod trig;
pub mod unpool;
pub mod util;
pub mod window;

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::Result;
use crate::ir::{Graph, Node};

use super::session::Options;
use super::value::Value;

/// A planned operator instance.
pub trait Op: Send + Sync {
    /// Runs the op. `inputs[i]` is `None` for an omitted optional input. Returns one value per
    /// node output (trailing optional outputs the node does not name may be omitted).
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>>;

    /// Whether [`Op::run_taking`] reuses input 0's buffer (ops that only relabel the shape),
    /// so the session should hand that value over when nothing reads it afterwards.
    fn takes_first_input(&self) -> bool {
        false
    }

    /// [`Op::run`] with input 0 given by value (`inputs[0]` is then `None`); the session calls
    /// it when [`Op::takes_first_input`] and this step is the value's last reader.
    fn run_taking(&self, first: Value, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut ins = inputs.to_vec();
        if let Some(slot) = ins.first_mut() {
            *slot = Some(&first);
        }
        self.run(&ins)
    }
}

/// What a builder may know when it plans a node.
pub struct BuildCtx<'a> {
    /// Opset version of the node's domain.
    pub opset: i64,
    /// Constant inputs (initializers and folded constants), by input position.
    pub const_inputs: Vec<Option<&'a Value>>,
}

pub type Builder = fn(&Node, &BuildCtx) -> Result<Box<dyn Op>>;

/// What a builder of a node with subgraphs (If, Loop, Scan) needs to plan them as child
/// sessions.
pub struct Scope<'a> {
    /// Opset version by domain ("" for the default domain) of the enclosing model.
    pub opsets: &'a HashMap<String, i64>,
    /// The outer-scope values the node's subgraphs read, sorted. The session appends their
    /// values, in this order, after the node's own inputs when it runs the op.
    pub outer: &'a [String],
    pub options: &'a Options,
}

pub type ScopedBuilder = fn(&Node, &BuildCtx, &Scope) -> Result<Box<dyn Op>>;

/// Op builders by (domain, op_type).
#[derive(Default)]
pub struct Registry {
    builders: HashMap<(String, String), Builder>,
    scoped: HashMap<(String, String), ScopedBuilder>,
}

impl Registry {
    pub fn register(&mut self, domain: &str, op_type: &str, b: Builder) {
        self.builders
            .insert((domain.to_string(), op_type.to_string()), b);
    }

    pub fn get(&self, domain: &str, op_type: &str) -> Option<Builder> {
        self.builders
            .get(&(domain.to_string(), op_type.to_string()))
            .copied()
    }

    /// Registers a builder for an op with subgraphs.
    pub fn register_scoped(&mut self, domain: &str, op_type: &str, b: ScopedBuilder) {
        self.scoped
            .insert((domain.to_string(), op_type.to_string()), b);
    }

    pub fn get_scoped(&self, domain: &str, op_type: &str) -> Option<ScopedBuilder> {
        self.scoped
            .get(&(domain.to_string(), op_type.to_string()))
            .copied()
    }

    /// Whether some builder handles this op.
    pub fn supports(&self, domain: &str, op_type: &str) -> bool {
        let key = (domain.to_string(), op_type.to_string());
        self.builders.contains_key(&key) || self.scoped.contains_key(&key)
    }

    /// Ops of `graph` and its subgraphs that no builder handles, as `(op_type, node)` pairs
    /// (`op_type` is prefixed with its domain outside the default one).
    pub fn unsupported(&self, graph: &Graph) -> Vec<(String, String)> {
        let mut out = Vec::new();
        graph.visit(&mut |g| {
            for n in &g.nodes {
                if !self.supports(n.domain(), n.op_type()) {
                    let op = match n.domain() {
                        "" => n.op_type().to_string(),
                        d => format!("{d}.{}", n.op_type()),
                    };
                    out.push((op, n.display_name().to_string()));
                }
            }
        });
        out
    }
}

/// Registers every op family this build implements.
pub fn register_all(r: &mut Registry) {
    data::register(r);
    elementwise::register(r);
    activation::register(r);
    reduce::register(r);
    linalg::register(r);
    normalization::register(r);
    control_flow::register(r);
    rnn::register(r);
    rnn_quant::register(r);
    conv::register(r);
    quant::register(r);
    quant_ms::register(r);
    scatter_gather::register(r);
    index_select::register(r);
    layout::register(r);
    window::register(r);
    einsum::register(r);
    attention::register(r);
    transformer::register(r);
    linear_attention::register(r);
    activation_param::register(r);
    float_class::register(r);
    trig::register(r);
    modulo::register(r);
    transformer_ms::register(r);
    resize::register(r);
    grid_sample::register(r);
    conv::transpose::register(r);
    conv::deform::register(r);
    conv::qlinear::register(r);
    conv::causal::register(r);
    dft::register(r);
    detection::register(r);
    optional::register(r);
    tfidf::register(r);
    ml::register(r);
    optimizer::register(r);
    argminmax::register(r);
    cumulative::register(r);
    bitwise::register(r);
    prelu::register(r);
    loss::register(r);
    bitcast::register(r);
    unpool::register(r);
    attention_ms::register(r);
}

/// The registry sessions use: every family, built once.
pub fn default_registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::default();
        register_all(&mut r);
        r
    })
}

/// A closure-backed op, for ops whose planning is just parsing attributes.
pub struct FnOp<F>(pub F);

impl<F> Op for FnOp<F>
where
    F: Fn(&[Option<&Value>]) -> Result<Vec<Value>> + Send + Sync,
{
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        (self.0)(inputs)
    }
}
