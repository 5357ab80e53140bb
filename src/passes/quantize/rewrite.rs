//! The contract between the quantization driver and the per-op rewriters.
//!
//! The driver walks the graph (and subgraphs), asks the policy which nodes to take, and for
//! each calls the rewriter of its family with a [`NodeCtx`]. A rewriter returns either a
//! [`Replacement`] (nodes that take the original node's place and compute the same outputs,
//! with the new initializers they read) or a [`Skip`] reason; it never edits the graph itself.
//! The driver splices replacements in, drops initializers nothing reads any more, adds opset
//! imports, and records each outcome in the report.

use std::collections::HashMap;

use crate::ir::shape::ValueType;
use crate::ir::{NameGen, Node, Tensor};

use super::policy::LstmMode;
use super::weights::WeightQuantOptions;

/// Everything a rewriter may read or allocate.
pub struct NodeCtx<'a> {
    /// Constant tensors visible to the node (initializers of its graph and of enclosing
    /// graphs, and folded constants), by name.
    pub constants: &'a dyn Fn(&str) -> Option<&'a Tensor>,
    /// Inferred types of the values in the node's graph (and outer scopes).
    pub types: &'a HashMap<String, ValueType>,
    /// Fresh names for new values, nodes and initializers (unique across the whole model).
    pub names: &'a mut NameGen,
    pub weights: WeightQuantOptions,
    pub per_channel: bool,
    pub lstm_mode: LstmMode,
    /// How MatMul/Gemm activations are quantized (never `Auto` here: the driver resolves it).
    pub activations: ActivationQuant,
    /// Default-domain opset of the model.
    pub opset: i64,
    /// Leave the values of large weights to be computed when the model is written
    /// ([`crate::ir::deferred`]); the scales and zero points are computed now.
    pub defer_values: bool,
}

/// The granularity of the dynamic activation scales of MatMul and Gemm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationQuant {
    /// Per node: per-token in graphs with self-attention (when the weights make it safe),
    /// per-tensor elsewhere ([`super::activation_choice`]). The driver resolves it before a
    /// rewriter sees it.
    #[default]
    Auto,
    /// One scale and zero point for the whole activation (`DynamicQuantizeLinear`, the
    /// incumbent's form, which onnxruntime fuses into one kernel).
    PerTensor,
    /// One per row (token) of the activation ([`super::per_token`]); needs opset 13, below
    /// which nodes fall back to per-tensor.
    PerToken,
}

/// What replaces a node.
#[derive(Debug, Default)]
pub struct Replacement {
    /// In execution order; together they write every output of the original node under its
    /// original name.
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    /// Opset imports the new nodes need, e.g. ("com.microsoft", 1).
    pub opsets: Vec<(String, i64)>,
    /// Short description for the report, e.g. "DynamicQuantizeLSTM, per-channel int8".
    pub note: String,
}

/// Why a node stays float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl<T: Into<String>> From<T> for Skip {
    fn from(s: T) -> Self {
        Skip(s.into())
    }
}

pub type RewriteResult = Result<Replacement, Skip>;

/// The first attribute of `node` not in `allowed`: what a quantized op without that attribute
/// cannot express.
pub fn attribute_outside<'n>(node: &'n Node, allowed: &[&str]) -> Option<&'n str> {
    node.proto
        .attribute
        .iter()
        .map(|a| a.name())
        .find(|a| !allowed.contains(a))
}
