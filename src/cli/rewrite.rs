//! `onnx-dynq rewrite IN OUT`: load, quantize, save atomically, report.
//!
//! `--verify` then runs the float input and the freshly written output in the built-in runtime
//! on the same inputs and compares every output as `onnx-dynq verify` does (same metrics, same
//! tolerance options and defaults: `--min-cosine 0.99`, no max-abs limit). Inputs are random
//! with a fixed seed (`--seed`, default 0) unless given with `--input NAME=file.npy`; symbolic
//! dims are 1 unless pinned with `--dim NAME=VALUE` (see `cli_inputs`). The verdict is printed
//! after the summary and added to the `--report` JSON as `verify`; outside tolerance the
//! command exits with status 1 (the output stays written), like `verify`. With `--inputs DIR`
//! (a folder of .npz samples) every sample is compared.
//!
//! `--smooth ALPHA` (SmoothQuant, [`onnx_dynq::passes::quantize::smooth`]) needs sample
//! inputs (`--inputs DIR` or `--input NAME=file.npy`); it runs after the cleanup passes and
//! before quantization. `--smooth auto` first measures each alpha of
//! [`onnx_dynq::passes::quantize::smooth_alpha::AUTO_ALPHAS`] and no smoothing on the samples
//! and keeps the best (the report's `"smooth_search"`).
//!
//! `--target-cosine X` (with `--max-abs Y` as a further limit) keeps the fewest, most
//! sensitive nodes float so that every output meets the target on the samples
//! ([`onnx_dynq::passes::quantize::target`]); without samples it uses random inputs that
//! respect the graph (see `cli_inputs`) and says so. The report gives every candidate's
//! sensitivity (`"sensitivity"`) and the search (`"target"`). When the target cannot be met
//! with any node quantized, the command prints one line, writes nothing and exits with
//! status 1.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use onnx_dynq::model::SaveProgress;
use onnx_dynq::passes::fold_constants::fold_constants;
use onnx_dynq::passes::fuse::units::unit_labels;
use onnx_dynq::passes::fuse::{FuseOptions, fuse_with};
use onnx_dynq::passes::quantize::policy::OpKind;
use onnx_dynq::passes::quantize::report::QuantizeReport;
use onnx_dynq::passes::quantize::rewrite::ActivationQuant;
use onnx_dynq::passes::quantize::smooth::{activation_ranges, smooth, smooth_with};
use onnx_dynq::passes::quantize::smooth_alpha::choose_alpha;
use onnx_dynq::passes::quantize::target::{TargetOutcome, search};
use onnx_dynq::passes::quantize::weights::{WeightQuantOptions, WeightType};
use onnx_dynq::passes::quantize::{LinearWeights, QuantizeOptions, quantize};
use onnx_dynq::runtime::Session;
use onnx_dynq::samples::Feed;
use onnx_dynq::verify::{Report, Tolerance, compare_models_on_samples};

use super::inputs::{InputArgs, Origin, build_samples};
use crate::PolicyArgs;

/// Models at least this big get a progress bar (when stderr is a terminal).
const PROGRESS_BYTES: u64 = 32 << 20;

#[derive(Args)]
pub struct RewriteArgs {
    /// The float model to read.
    input: PathBuf,
    /// Where to write the quantized model.
    output: PathBuf,
    /// One weight scale per output channel instead of one per tensor (MatMul/Gemm weights
    /// are per channel already unless --weight-type is given).
    #[arg(long)]
    per_channel: bool,
    /// Activation scales of MatMul/Gemm: one per tensor (DynamicQuantizeLinear, fused by
    /// onnxruntime), one per token (row; opset 13+), or auto: per-token in graphs with
    /// self-attention (transformers, whose outlier tokens a single scale spreads over all
    /// tokens), per-tensor elsewhere (LSTMs, MLPs, convolutions) and with full-range int8
    /// weights (which onnxruntime's uint8 x int8 products saturate on CPUs without VNNI). The
    /// report says which mode each node got and why.
    #[arg(long, value_enum, default_value = "auto")]
    activations: ActivationsArg,
    /// Element type of the stored weights. Default: MatMul/Gemm weights uint8, asymmetric,
    /// per channel (exact in onnxruntime on every CPU), the other families int8; giving it
    /// applies it (and --per-channel as given) to every family.
    #[arg(long, value_enum)]
    weight_type: Option<WeightTypeArg>,
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
    /// Skip the cleanup and fusion passes (constant folding still runs).
    #[arg(long)]
    no_fuse: bool,
    /// Write a JSON report: every candidate node, quantized or skipped with the reason.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// After writing OUT, compare it with IN in the built-in runtime (as `verify` does) and
    /// exit with status 1 when an output is outside tolerance.
    #[arg(long)]
    verify: bool,
    /// With --verify: fail an output whose cosine similarity with the float output is below X.
    #[arg(long, value_name = "X", default_value_t = Tolerance::default().min_cosine)]
    min_cosine: f64,
    /// With --verify: fail an output whose max |quant - float| is above Y (default: no
    /// limit); with --target-cosine, a further target.
    #[arg(long, value_name = "Y")]
    max_abs: Option<f64>,
    /// Keep the fewest, most sensitive nodes float so that every output's cosine with the
    /// float output (for an encoder also the valid-token and pooled cosines) is at least X on
    /// the samples.
    #[arg(long, value_name = "X")]
    target_cosine: Option<f64>,
    /// SmoothQuant: migrate activation outlier ranges into the weights with exponent ALPHA
    /// in [0, 1] (0.5 is usual), or `auto`: measure alphas 0.3 to 0.8 and no smoothing on the
    /// samples and keep the most accurate; needs sample inputs.
    #[arg(long, value_name = "ALPHA|auto", value_parser = parse_smooth)]
    smooth: Option<SmoothArg>,
    /// Sample inputs for --verify, --target-cosine and --smooth (random by default, except
    /// for --smooth).
    #[command(
        flatten,
        next_help_heading = "Sample inputs for --verify, --target-cosine and --smooth"
    )]
    feed: InputArgs,
}

#[derive(Clone, Copy, Debug)]
enum SmoothArg {
    Alpha(f64),
    Auto,
}

fn parse_smooth(s: &str) -> std::result::Result<SmoothArg, String> {
    if s == "auto" {
        return Ok(SmoothArg::Auto);
    }
    match s.parse::<f64>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(SmoothArg::Alpha(a)),
        _ => Err(format!("'{s}' is neither a number in [0, 1] nor 'auto'")),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActivationsArg {
    Auto,
    PerTensor,
    PerToken,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WeightTypeArg {
    Int8,
    Uint8,
}

impl RewriteArgs {
    fn options(&self) -> Result<QuantizeOptions> {
        let weight_type = match self.weight_type {
            None | Some(WeightTypeArg::Int8) => WeightType::Int8,
            Some(WeightTypeArg::Uint8) => WeightType::Uint8,
        };
        // Without --weight-type, MatMul/Gemm weights are uint8 per channel (asymmetric unless
        // --symmetric): see LinearWeights::uint8_per_channel.
        let linear_weights = self.weight_type.is_none().then(|| {
            let mut l = LinearWeights::uint8_per_channel(self.reduce_range);
            l.weights.symmetric = self.symmetric;
            l
        });
        let symmetric = if self.symmetric {
            true
        } else if self.asymmetric {
            false
        } else {
            weight_type == WeightType::Int8
        };
        Ok(QuantizeOptions {
            defer_values: true,
            policy: self.policy.to_options()?,
            weights: WeightQuantOptions {
                weight_type,
                symmetric,
                reduce_range: self.reduce_range,
            },
            per_channel: self.per_channel,
            linear_weights,
            activations: match self.activations {
                ActivationsArg::Auto => ActivationQuant::Auto,
                ActivationsArg::PerTensor => ActivationQuant::PerTensor,
                ActivationsArg::PerToken => ActivationQuant::PerToken,
            },
        })
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn run(args: &RewriteArgs) -> Result<()> {
    let start = Instant::now();
    let opts = args.options()?;
    super::check_outputs(
        &args.input,
        &args.output,
        args.report.as_deref(),
        args.overwrite_input,
    )?;
    let mut model = onnx_dynq::load(&args.input)?;
    // A second (memory-mapped) view of the float model for --verify, taken before OUT could
    // replace IN.
    let float = if args.verify {
        Some(onnx_dynq::load(&args.input)?)
    } else {
        None
    };
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
    let fusion = if args.no_fuse {
        fold_constants(&mut model)?;
        None
    } else {
        // Gemm from MatMul + Add only when both families get the same treatment.
        let ops = &opts.policy.ops;
        let options = FuseOptions {
            matmul_to_gemm: ops.contains(&OpKind::MatMul) == ops.contains(&OpKind::Gemm),
            ..FuseOptions::default()
        };
        Some(fuse_with(&mut model, options)?)
    };
    let mut opts = opts;
    let needs_samples = args.smooth.is_some() || args.target_cosine.is_some();
    let samples = if needs_samples {
        let session = Session::new(&model, &args.feed.options())?;
        let (samples, origin) = build_samples(&args.feed.random_by_default(), &model, &session)?;
        if args.smooth.is_some() && matches!(origin, Origin::Random) {
            bail!("--smooth needs sample inputs (--inputs DIR or --input NAME=file.npy)");
        }
        println!("samples: {}", origin.describe(&args.feed));
        samples
    } else {
        Vec::new()
    };
    let (smoothed, smooth_search) = match args.smooth {
        Some(SmoothArg::Alpha(alpha)) => (
            Some(smooth(
                &mut model,
                &opts.policy,
                alpha,
                &samples,
                &args.feed.options(),
            )?),
            None,
        ),
        Some(SmoothArg::Auto) => {
            // One float run measures the ranges every trial and the final smoothing use.
            let ranges = activation_ranges(&model, &opts.policy, &samples, &args.feed.options())?;
            let choice = choose_alpha(&model, &opts, &samples, &ranges, &args.feed.options())?;
            let smoothed = match choice.alpha {
                Some(alpha) => Some(smooth_with(&mut model, &opts.policy, alpha, &ranges)?),
                None => None,
            };
            (smoothed, Some(choice))
        }
        None => (None, None),
    };
    let target = match args.target_cosine {
        Some(x) => {
            let tol = Tolerance {
                min_cosine: x,
                max_abs: args.max_abs,
            };
            let outcome = search(&model, &opts, &samples, &tol, &args.feed.options())?;
            if !outcome.met {
                eprintln!("error: {}", outcome.unreachable_message(&tol));
                std::io::stdout().flush()?;
                // Status 1, as an accuracy verdict; nothing was written.
                std::process::exit(1);
            }
            opts.policy
                .exclude
                .extend(outcome.kept_float.iter().cloned());
            Some((tol, outcome))
        }
        None => None,
    };
    let units = unit_labels(&model.graph, model.opset("").unwrap_or(0));
    let mut nodes = quantize(&mut model, &opts, &mut progress)?;
    for n in &mut nodes {
        n.unit = units.get(&(n.scope.clone(), n.node.clone())).cloned();
    }
    if let Some((_, outcome)) = &target {
        attach_sensitivities(&mut nodes, outcome);
    }
    // The rest of the bar follows the writing, which computes most of the int8 values.
    let save_progress = bar.clone().map(|b| {
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("writing {}", args.output.display()));
        b.set_position(0);
        SaveProgress(std::sync::Arc::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        }))
    });

    let save_opts = super::save_options(
        &args.input,
        &model,
        args.overwrite_input,
        args.external_data,
        save_progress,
    );
    let saved = onnx_dynq::save(&model, &args.output, &save_opts)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let mut report = QuantizeReport {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        nodes,
        fusion,
        ..Default::default()
    };
    report.sum_nodes();
    report.totals.file_bytes_before = before;
    report.totals.file_bytes_after = saved.model_bytes + saved.external_bytes;
    report.totals.seconds = start.elapsed().as_secs_f64();
    let verdict = match &float {
        Some(float) => Some(verify_output(args, float, &samples).with_context(|| {
            format!(
                "verifying {} (the quantized model was written)",
                args.output.display()
            )
        })?),
        None => None,
    };
    if let Some(path) = &args.report {
        let mut json = serde_json::to_value(&report)?;
        if let Some(obj) = json.as_object_mut() {
            if let Some(v) = &verdict {
                obj.insert("verify".into(), serde_json::to_value(v)?);
            }
            if let Some(sm) = &smoothed {
                obj.insert("smooth".into(), serde_json::to_value(sm)?);
            }
            if let Some(c) = &smooth_search {
                obj.insert("smooth_search".into(), serde_json::to_value(c)?);
            }
            if let Some((tol, t)) = &target {
                obj.insert("target".into(), target_json(tol, t)?);
            }
        }
        onnx_dynq::model::write_atomic(path, &serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    println!("{}", report.summary());
    if let Some(c) = &smooth_search {
        println!("{}", c.summary());
    }
    if let Some(sm) = &smoothed {
        println!("{}", sm.summary());
    }
    if let Some((tol, t)) = &target {
        println!("{}", t.summary(tol));
    }
    if let Some(v) = &verdict {
        print_verdict(args, v);
        if !v.pass {
            // Status 1 is the verdict (as `verify`), distinct from errors (2, from main).
            std::io::stdout().flush()?;
            std::process::exit(1);
        }
    }
    // The process ends right after: freeing the model (tens of MB of quantized tensors, the
    // input's memory map) would only add to the run time.
    std::mem::forget(model);
    Ok(())
}

/// Runs IN and the freshly written OUT on the same inputs (`samples` when the search or
/// smoothing built them, else as the arguments say) and compares their outputs.
fn verify_output(
    args: &RewriteArgs,
    float: &onnx_dynq::model::Model,
    samples: &[Feed],
) -> Result<Report> {
    let quant = onnx_dynq::load(&args.output)?;
    let built;
    let samples = if samples.is_empty() {
        built = build_samples(
            &args.feed.random_by_default(),
            float,
            &Session::new(float, &args.feed.options())?,
        )?
        .0;
        &built
    } else {
        samples
    };
    let tol = Tolerance {
        min_cosine: args.min_cosine,
        max_abs: args.max_abs,
    };
    Ok(compare_models_on_samples(
        float,
        &quant,
        samples,
        &tol,
        &args.feed.options(),
    )?)
}

/// Puts each candidate's sensitivity into its report entry, and the reason for those kept
/// float.
fn attach_sensitivities(
    nodes: &mut [onnx_dynq::passes::quantize::report::NodeReport],
    outcome: &TargetOutcome,
) {
    let of = outcome.candidates.len();
    for n in nodes {
        if let Some(c) = outcome.candidates.iter().find(|c| c.node == n.node) {
            n.sensitivity = Some(c.sensitivity.clone());
            if c.sensitivity.kept_float {
                n.reason = TargetOutcome::kept_reason(c, of);
            }
        }
    }
}

/// The report's `target` object: the target, the figures reached and with everything
/// quantized, and the nodes kept float.
fn target_json(tol: &Tolerance, t: &TargetOutcome) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "min_cosine": tol.min_cosine,
        "max_abs": tol.max_abs,
        "candidates": t.candidates.len(),
        "kept_float": t.kept_float,
        "trials": t.trials,
        "achieved": serde_json::to_value(&t.achieved)?,
        "all_quantized": serde_json::to_value(&t.all_quantized)?,
    }))
}

fn print_verdict(args: &RewriteArgs, v: &Report) {
    for o in &v.outputs {
        let m = &o.metrics;
        if let Some(line) = super::verify::encoder_line(o) {
            println!("verify {}: {line}", o.name);
        }
        println!(
            "verify {}: max-abs {:.3e}  cosine {:.6}  sqnr {:.1} dB  top1 {:.4}  {}",
            o.name,
            m.max_abs,
            m.cosine,
            m.sqnr_db,
            m.top1,
            if o.pass {
                "ok".to_string()
            } else {
                format!("FAIL ({})", o.failures.join("; "))
            }
        );
    }
    if v.pass {
        println!("verify: within tolerance");
    } else {
        println!(
            "verify: OUTSIDE tolerance; {} was written all the same",
            args.output.display()
        );
    }
}
