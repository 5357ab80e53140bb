//! Placeholder until the `quant-rnn` branch lands its LSTM rewriter (it replaces this file).

use super::rewrite::{NodeCtx, RewriteResult, Skip};
use crate::ir::Node;

pub fn rewrite_lstm(_node: &Node, _ctx: &mut NodeCtx) -> RewriteResult {
    Err(Skip("LSTM rewriter not merged yet".into()))
}
