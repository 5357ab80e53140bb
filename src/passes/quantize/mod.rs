//! Dynamic int8 quantization: which nodes to rewrite (policy) and how.

pub mod policy;
