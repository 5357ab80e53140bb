//! A model that loads goes through the cleanup passes and the quantization in memory without
//! a panic, and what comes out encodes to a model that loads again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use onnx_dynq::passes::quantize::{QuantizeOptions, quantize};

fuzz_target!(|data: &[u8]| {
    let Ok(mut model) = onnx_dynq::model::load_bytes(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    if onnx_dynq::passes::fuse::fuse(&mut model).is_err() {
        return;
    }
    if quantize(&mut model, &QuantizeOptions::default(), &mut |_, _, _| {}).is_err() {
        return;
    }
    let bytes = prost::Message::encode_to_vec(&model.to_proto());
    if let Err(e) = onnx_dynq::model::load_bytes(bytes.into()) {
        panic!("the rewritten model does not load: {e}");
    }
});
