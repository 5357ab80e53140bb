//! The built-in runtime: plans a graph once and executes it on ndarray values.

pub mod kernels;
pub mod ops;
pub mod value;

pub use value::Value;
