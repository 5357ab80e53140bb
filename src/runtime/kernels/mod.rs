//! Compute kernels of the runtime: dense GEMMs that the ops call.

pub mod gemm_i8;
