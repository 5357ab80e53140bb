//! onnx-dynq: post-training dynamic int8 quantization of ONNX models, verified by executing
//! both graphs.
//!
//! Data flow: [`model::load`] decodes a file into a [`model::Model`] (its graph in the shared
//! [`ir`]); passes rewrite the graph; [`model::save`] writes it back atomically.

pub mod error;
pub mod inspect;
pub mod ir;
pub mod model;
pub mod npy;
pub mod onnx;
pub mod passes;
pub mod runtime;
pub mod samples;
pub mod verify;

pub use error::{Error, Result};
pub use model::{Model, load, save};
