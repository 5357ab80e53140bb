//! Operator implementations, one file per op family. Each family registers its ops with
//! `register(&mut Registry)`; the session looks up a builder per node when it plans, so an
//! unsupported op is reported before anything runs.
//!
//! An op is built once per node (attributes parsed, constant inputs prepared) and run many
//! times.

pub mod conv;
pub mod rnn;

use std::collections::HashMap;

use crate::error::Result;
use crate::ir::Node;

use super::value::Value;

/// A planned operator instance.
pub trait Op: Send + Sync {
    /// Runs the op. `inputs[i]` is `None` for an omitted optional input. Returns one value per
    /// node output (trailing optional outputs the node does not name may be omitted).
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>>;
}

/// What a builder may know when it plans a node.
pub struct BuildCtx<'a> {
    /// Opset version of the node's domain.
    pub opset: i64,
    /// Constant inputs (initializers and folded constants), by input position.
    pub const_inputs: Vec<Option<&'a Value>>,
}

pub type Builder = fn(&Node, &BuildCtx) -> Result<Box<dyn Op>>;

/// Op builders by (domain, op_type).
#[derive(Default)]
pub struct Registry {
    builders: HashMap<(String, String), Builder>,
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
