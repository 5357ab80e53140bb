//! Graph passes: cleanup and fusion, then quantization.

pub mod fold_constants;
pub mod quantize;
