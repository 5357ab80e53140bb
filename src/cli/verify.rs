//! `onnx-dynq verify FLOAT QUANT`: runs a float model and its quantized version in the
//! built-in runtime on the same inputs and compares every output (metrics in
//! [`onnx_dynq::verify`]: max-abs and mean-abs error, cosine, SQNR in dB, top-1 agreement along
//! the last axis).
//!
//! Exit status: 0 when every output is within tolerance, 1 when some output is outside it, 2 on
//! errors. Defaults: `--min-cosine 0.99`, no max-abs limit. Inputs as for `run` (see
//! `cli_inputs`), or several samples with `--inputs DIR` (the figures then cover all of them:
//! see [`onnx_dynq::verify::compare_output_samples`]); the input set is built from the float
//! model's declared inputs. For an encoder (a `[batch, seq, hidden]` output and an attention
//! mask input) the valid-token and pooled-embedding cosines are printed and checked too.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use onnx_dynq::runtime::{Options, Session};
use onnx_dynq::verify::{OutputReport, Tolerance, compare_models_on_samples};

use super::inputs::{InputArgs, build_samples};

#[derive(Args)]
pub struct VerifyArgs {
    /// The float model.
    float: PathBuf,
    /// Its quantized version.
    quant: PathBuf,
    #[command(flatten)]
    feed: InputArgs,
    /// Fail an output whose cosine similarity with the float output is below X.
    #[arg(long, value_name = "X", default_value_t = 0.99)]
    min_cosine: f64,
    /// Fail an output whose max |quant - float| is above Y (default: no limit).
    #[arg(long, value_name = "Y")]
    max_abs: Option<f64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Run the quantized model with uint8 x int8 products computed as onnxruntime computes
    /// them on x86 CPUs with AVX2 but no VNNI (byte pairs saturate to int16), to see what such
    /// a machine will output; slow.
    #[arg(long)]
    ort_u8s8_saturation: bool,
}

/// Runs the comparison; exits the process with status 1 when outside tolerance.
pub fn run(args: &VerifyArgs) -> Result<()> {
    let float = onnx_dynq::load(&args.float)?;
    let quant = onnx_dynq::load(&args.quant)?;
    let options = args.feed.options();
    let (samples, _) = build_samples(&args.feed, &float, &Session::new(&float, &options)?)?;
    let tol = Tolerance {
        min_cosine: args.min_cosine,
        max_abs: args.max_abs,
    };
    let quant_options = Options {
        ort_u8s8_saturation: args.ort_u8s8_saturation,
        ..options
    };
    let report = compare_models_on_samples(&float, &quant, &samples, &tol, &quant_options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for o in &report.outputs {
            let m = &o.metrics;
            println!(
                "{}: shape {:?}  max-abs {:.6e}  mean-abs {:.6e}  cosine {:.6}  sqnr {:.2} dB  top1 {:.4}  {}",
                o.name,
                o.shape,
                m.max_abs,
                m.mean_abs,
                m.cosine,
                m.sqnr_db,
                m.top1,
                if o.pass {
                    "ok".to_string()
                } else {
                    format!("FAIL ({})", o.failures.join("; "))
                }
            );
            if let Some(line) = encoder_line(o) {
                println!("{}: {line}", o.name);
            }
        }
        println!(
            "{}",
            if report.pass {
                "within tolerance"
            } else {
                "OUTSIDE tolerance"
            }
        );
    }
    if !report.pass {
        // Status 1 is the verdict, distinct from errors (2, from main).
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}

/// The encoder figures of an output, on one line (None when it is not an encoder output).
pub fn encoder_line(o: &OutputReport) -> Option<String> {
    let e = o.encoder.as_ref()?;
    Some(format!(
        "valid-token cosine mean {:.6} min {:.6} ({} tokens, mask '{}')  pooled cosine min {:.6}",
        e.token_cosine_mean, e.token_cosine_min, e.valid_tokens, e.mask, e.pooled_cosine_min
    ))
}
