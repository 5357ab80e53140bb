//! The graph IR shared by passes and the runtime: nodes, values, initializers, subgraphs,
//! typed tensor and attribute access, fresh names and shape inference.

pub mod attrs;
pub mod deferred;
pub mod graph;
pub mod names;
pub mod shape;
pub mod tensor;

pub use graph::{Graph, Node, Source, Subgraph};
pub use names::NameGen;
pub use shape::{Dim, ValueType};
pub use tensor::{Element, Tensor};
