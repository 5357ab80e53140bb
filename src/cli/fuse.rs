//! `onnx-dynq fuse IN OUT`: the cleanup and fusion passes alone (no quantization), saved the
//! way `rewrite` saves (atomically, the input protected, external data as the input had it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use onnx_dynq::passes::fuse::fuse;

#[derive(Args)]
pub struct FuseArgs {
    /// The model to read.
    input: PathBuf,
    /// Where to write the fused model.
    output: PathBuf,
    /// Store every tensor of 1 KiB or more in OUT.data (default: only when the input had
    /// external data or the model passes 2 GiB).
    #[arg(long)]
    external_data: bool,
    /// Allow OUT to be IN (or to overwrite IN's external data).
    #[arg(long)]
    overwrite_input: bool,
    /// Write the pass fire counts as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

pub fn run(args: &FuseArgs) -> Result<()> {
    super::check_outputs(
        &args.input,
        &args.output,
        args.report.as_deref(),
        args.overwrite_input,
    )?;
    let mut model = onnx_dynq::load(&args.input)?;
    let mut count = 0;
    model.graph.visit(&mut |g| count += g.nodes.len());
    let report = fuse(&mut model)?;
    let mut after = 0;
    model.graph.visit(&mut |g| after += g.nodes.len());
    let save_opts = super::save_options(
        &args.input,
        &model,
        args.overwrite_input,
        args.external_data,
        None,
    );
    onnx_dynq::save(&model, &args.output, &save_opts)?;
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        onnx_dynq::model::write_atomic(path, &json)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    let u = &report.units;
    println!(
        "{}; {count} -> {after} node(s); {} Linear unit(s), {} with bias, {} with activation",
        report.summary(),
        u.linear,
        u.with_bias,
        u.with_activation
    );
    Ok(())
}
