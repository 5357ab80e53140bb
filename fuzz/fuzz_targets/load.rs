//! Any bytes given to the loader give a model or an error, never a panic, an abort or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = onnx_dynq::model::load_bytes(bytes::Bytes::copy_from_slice(data)) {
        // What `inspect` reads of a model that loaded.
        let policy = onnx_dynq::passes::quantize::policy::PolicyOptions::default();
        let _ = onnx_dynq::inspect::inspect(&model, &policy).to_text(10);
    }
});
