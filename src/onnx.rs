//! The ONNX protobuf schema (`proto/onnx.proto`, onnx 1.23.2), compiled by prost-build in
//! `build.rs`, plus small helpers on the generated types.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
