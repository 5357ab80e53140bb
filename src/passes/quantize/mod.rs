//! Dynamic int8 quantization: which nodes to rewrite (policy), the weight math, and the
//! per-op rewriters behind one contract (rewrite.rs).

pub mod gru_rnn;
pub mod lstm;
pub mod policy;
pub mod recurrent_build;
pub mod recurrent_common;
pub mod recurrent_scan;
pub mod recurrent_weight_only;
pub mod rewrite;
pub mod weights;
