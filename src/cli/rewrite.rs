//! `onnx-dynq rewrite IN OUT`: load, quantize, save atomically, report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use onnx_dynq::model::{ExternalDataMode, SaveOptions};
use onnx_dynq::passes::quantize::report::QuantizeReport;
use onnx_dynq::passes::quantize::weights::{WeightQuantOptions, WeightType};
use onnx_dynq::passes::quantize::{QuantizeOptions, quantize};

use crate::PolicyArgs;

/// Models at least this big get a progress bar (when stderr is a terminal).
const PROGRESS_BYTES: u64 = 32 << 20;

#[derive(Args)]
pub struct RewriteArgs {
    /// The float model to read.
    input: PathBuf,
    /// Where to write the quantized model.
    output: PathBuf,
    /// One weight scale per output channel instead of one per tensor.
    #[arg(long)]
    per_channel: bool,
    /// Element type of the stored weights.
    #[arg(long, value_enum, default_value = "int8")]
    weight_type: WeightTypeArg,
    /// Symmetric weight ranges (zero point 0 / 128); the default for int8.
    #[arg(long, conflicts_with = "asymmetric")]
    symmetric: bool,
    /// Asymmetric weight ranges with a zero point; the default for uint8.
    #[arg(long)]
    asymmetric: bool,
    /// 7-bit weights, for CPUs whose int8 dot product saturates (AVX2 without VNNI).
    #[arg(long)]
    reduce_range: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Store every tensor of 1 KiB or more in OUT.data (default: only when the input had
    /// external data or the model passes 2 GiB).
    #[arg(long)]
    external_data: bool,
    /// Allow OUT to be IN (or to overwrite IN's external data).
    #[arg(long)]
    overwrite_input: bool,
    /// Write a JSON report: every candidate node, quantized or skipped with the reason.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WeightTypeArg {
    Int8,
    Uint8,
}

impl RewriteArgs {
    fn options(&self) -> Result<QuantizeOptions> {
        let weight_type = match self.weight_type {
            WeightTypeArg::Int8 => WeightType::Int8,
            WeightTypeArg::Uint8 => WeightType::Uint8,
        };
        let symmetric = if self.symmetric {
            true
        } else if self.asymmetric {
            false
        } else {
            weight_type == WeightType::Int8
        };
        Ok(QuantizeOptions {
            policy: self.policy.to_options()?,
            weights: WeightQuantOptions {
                weight_type,
                symmetric,
                reduce_range: self.reduce_range,
            },
            per_channel: self.per_channel,
        })
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn run(args: &RewriteArgs) -> Result<()> {
    let start = Instant::now();
    let opts = args.options()?;
    if !args.overwrite_input && same_file(&args.input, &args.output) {
        bail!(
            "{}: refusing to overwrite the input (pass --overwrite-input to allow it)",
            args.output.display()
        );
    }
    let mut model = onnx_dynq::load(&args.input)?;
    let before = model.file_bytes
        + model
            .external_files
            .iter()
            .map(|p| file_len(p))
            .sum::<u64>();

    let bar = (before >= PROGRESS_BYTES && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = |done: usize, total: usize, node: &str| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(node.to_string());
        }
    };
    let nodes = quantize(&mut model, &opts, &mut progress)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let mut protect = Vec::new();
    if !args.overwrite_input {
        protect.push(args.input.clone());
        protect.extend(model.external_files.iter().cloned());
    }
    let save_opts = SaveOptions {
        external_data: if args.external_data {
            ExternalDataMode::Always
        } else {
            ExternalDataMode::Auto
        },
        protect,
    };
    let saved = onnx_dynq::save(&model, &args.output, &save_opts)?;

    let mut report = QuantizeReport {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        nodes,
        ..Default::default()
    };
    report.sum_nodes();
    report.totals.file_bytes_before = before;
    report.totals.file_bytes_after = saved.model_bytes + saved.external_bytes;
    report.totals.seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        onnx_dynq::model::write_atomic(path, &json)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    println!("{}", report.summary());
    // The process ends right after: freeing the model (tens of MB of quantized tensors, the
    // input's memory map) would only add to the run time.
    std::mem::forget(model);
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
