//! Compute kernels the ops call: dense matrix products, float and int8.

pub mod activation;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod quantize_u8;
#[cfg(target_arch = "x86_64")]
mod simd_act;
