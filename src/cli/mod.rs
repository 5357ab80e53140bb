//! The subcommands' argument types and drivers (binary-only: the work is in the library).

pub mod fuse;
pub mod inputs;
pub mod rewrite;
pub mod run;
pub mod verify;

/// What `rewrite` and `fuse` check before reading IN: OUT (and the report, when asked) can be
/// written, and OUT is not IN unless `overwrite_input`, so that a typo fails at once instead
/// of after processing a large model.
pub fn check_outputs(
    input: &std::path::Path,
    output: &std::path::Path,
    report: Option<&std::path::Path>,
    overwrite_input: bool,
) -> onnx_dynq::Result<()> {
    let inputs = [input.to_path_buf()];
    onnx_dynq::model::check_output_path(output, &inputs, overwrite_input)?;
    if let Some(r) = report {
        onnx_dynq::model::check_output_path(r, &inputs, false)?;
    }
    Ok(())
}

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
