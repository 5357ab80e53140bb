//! Dynamic int8 quantization: which nodes to rewrite (policy), the weight math, and the
//! per-op rewriters behind one contract (rewrite.rs).

pub mod policy;
pub mod rewrite;
pub mod weights;
