//! Compute kernels the ops call: dense matrix products.

pub mod gemm_f32;
