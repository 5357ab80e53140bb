//! Placeholder until the `quant-rnn` branch lands its GRU/RNN rewriter (it replaces this file).

use super::rewrite::{NodeCtx, RewriteResult, Skip};
use crate::ir::Node;

pub fn rewrite_gru_rnn(_node: &Node, _ctx: &mut NodeCtx) -> RewriteResult {
    Err(Skip("GRU/RNN rewriter not merged yet".into()))
}
