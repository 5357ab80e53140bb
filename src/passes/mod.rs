//! Graph passes: cleanup and fusion, then quantization.

pub mod fold_constants;
pub mod fuse;
pub mod pattern;
pub mod quantize;
