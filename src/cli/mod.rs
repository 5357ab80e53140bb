//! The subcommands' argument types and drivers (binary-only: the work is in the library).

pub mod fuse;
pub mod inputs;
pub mod rewrite;
pub mod run;
pub mod verify;

/// How `rewrite` and `fuse` save OUT: external data when asked (else as the input had it),
/// and never over the input or its data files unless `overwrite_input`.
pub fn save_options(
    input: &std::path::Path,
    model: &onnx_dynq::Model,
    overwrite_input: bool,
    external_data: bool,
    progress: Option<onnx_dynq::model::SaveProgress>,
) -> onnx_dynq::model::SaveOptions {
    use onnx_dynq::model::ExternalDataMode;
    let mut protect = Vec::new();
    if !overwrite_input {
        protect.push(input.to_path_buf());
        protect.extend(model.external_files.iter().cloned());
    }
    onnx_dynq::model::SaveOptions {
        external_data: if external_data {
            ExternalDataMode::Always
        } else {
            ExternalDataMode::Auto
        },
        protect,
        progress,
    }
}
