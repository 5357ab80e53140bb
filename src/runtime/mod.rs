//! The built-in runtime: plans a graph once ([`Session::new`]) and executes it on ndarray
//! values ([`Session::run`]). Ops live in [`ops`], one file per family; dense products in
//! [`kernels`].

pub mod alloc;
pub mod budget;
pub mod kernels;
pub mod ops;
pub mod session;
pub mod value;

pub use session::{InputInfo, NodeTime, Options, Session};
pub use value::Value;
