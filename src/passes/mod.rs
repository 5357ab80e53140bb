//! Graph passes: cleanup and fusion, then quantization.

pub mod quantize;
