//! `onnx-dynq run`: feeds a model (from .npy files or random data), runs it with the built-in
//! runtime and summarizes each output; optionally times repeated runs and saves outputs.
//!
//! Random inputs (`--random-inputs`, seeded by `--seed`): float inputs are standard normal;
//! integer inputs are uniform in `0..=N-1` with `N = --int-range` (default 10), so that ids fed
//! to an embedding (Gather) stay in range when N is at most the vocabulary size; bool inputs
//! are fair coin flips. Symbolic dims take their value from `--dim NAME=VALUE`, else 1; dims
//! the model leaves unnamed and unknown are 1.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use half::f16;

use onnx_dynq::runtime::{Options, Session, Value};

use super::inputs::{InputArgs, build_feed};

#[derive(Args)]
pub struct RunArgs {
    model: PathBuf,
    #[command(flatten)]
    feed: InputArgs,
    /// Save the outputs to this .npz file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// After one warm-up run, time N runs and report latency p50/p90.
    #[arg(long)]
    repeat: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also time each op type (one extra run) and report the totals, slowest first.
    #[arg(long)]
    profile: bool,
    /// Run every node on its own (no plan-time kernel fusion), to measure what fusion buys.
    #[arg(long)]
    no_kernel_fusion: bool,
    /// Compute uint8 x int8 products as onnxruntime does on x86 CPUs with AVX2 but no VNNI
    /// (byte pairs saturate to int16), to see what such a machine outputs; slow.
    #[arg(long)]
    ort_u8s8_saturation: bool,
}

/// Per-output summary: shape, dtype, min, max, mean (NaNs skipped by min/max, counted).
fn summary(name: &str, v: &Value) -> serde_json::Value {
    let vals: Vec<f64> = onnx_dynq::dispatch_value!(v, a => a.iter().map(to_f64).collect());
    let finite = vals.iter().copied().filter(|x| !x.is_nan());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    let nan = vals.iter().filter(|x| x.is_nan()).count();
    let mean = if vals.is_empty() {
        f64::NAN
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    };
    let num = |x: f64| {
        if vals.is_empty() || x.is_nan() {
            serde_json::Value::Null
        } else {
            serde_json::json!(x)
        }
    };
    serde_json::json!({
        "name": name,
        "shape": v.shape(),
        "dtype": onnx_dynq::ir::tensor::dtype_name(v.dtype() as i32),
        "min": num(min),
        "max": num(max),
        "mean": num(mean),
        "nan_count": nan,
    })
}

trait ToF64 {
    fn f(&self) -> f64;
}
macro_rules! tof {
    ($($t:ty),*) => { $(impl ToF64 for $t { fn f(&self) -> f64 { *self as f64 } })* };
}
tof!(f32, f64, i64, i32, i8, u8, i16, u16, u32, u64);
impl ToF64 for bool {
    fn f(&self) -> f64 {
        *self as u8 as f64
    }
}
impl ToF64 for f16 {
    fn f(&self) -> f64 {
        self.to_f64()
    }
}
impl ToF64 for half::bf16 {
    fn f(&self) -> f64 {
        self.to_f64()
    }
}
fn to_f64<T: ToF64>(x: &T) -> f64 {
    x.f()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn run(args: &RunArgs) -> Result<()> {
    if let Some(out) = &args.output {
        onnx_dynq::model::check_output_path(out, std::slice::from_ref(&args.model), false)?;
    }
    let model = onnx_dynq::load(&args.model)?;
    let session = Session::new(
        &model,
        &Options {
            threads: args.threads,
            no_kernel_fusion: args.no_kernel_fusion,
            ort_u8s8_saturation: args.ort_u8s8_saturation,
            max_memory: args.feed.max_memory,
        },
    )?;
    let feed = build_feed(&args.feed, &model, &session)?;
    let mut latency = None;
    let feed_copy = args.profile.then(|| feed.clone());
    let outs = if let Some(n) = args.repeat {
        let outs = session.run(feed.clone())?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let f = feed.clone();
            let t = Instant::now();
            session.run(f)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        latency = Some((percentile(&times, 50.0), percentile(&times, 90.0), n));
        outs
    } else {
        session.run(feed)?
    };
    let profile = if args.profile {
        let (_, times) = session.run_profiled(feed_copy.unwrap_or_default())?;
        let mut by_op: Vec<(String, f64, usize)> = Vec::new();
        for t in times {
            match by_op.iter_mut().find(|(o, _, _)| *o == t.op_type) {
                Some(e) => {
                    e.1 += t.ms;
                    e.2 += 1;
                }
                None => by_op.push((t.op_type, t.ms, 1)),
            }
        }
        by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
        Some(by_op)
    } else {
        None
    };
    if let Some(p) = &args.output {
        onnx_dynq::npy::write_npz(p, &outs)?;
    }
    let sums: Vec<serde_json::Value> = outs.iter().map(|(n, v)| summary(n, v)).collect();
    if args.json {
        let mut obj = serde_json::json!({ "outputs": sums });
        if let Some((p50, p90, _)) = latency {
            obj["latency_ms"] = serde_json::json!({ "p50": p50, "p90": p90 });
        }
        if let Some(p) = &profile {
            obj["profile_ms"] = p
                .iter()
                .map(|(op, ms, n)| serde_json::json!({ "op": op, "ms": ms, "nodes": n }))
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        for s in &sums {
            let f = |k: &str| {
                s[k].as_f64()
                    .map(|v| format!("{v:.6}"))
                    .unwrap_or_else(|| "nan".into())
            };
            println!(
                "{}: shape {} {}  min {}  max {}  mean {}{}",
                s["name"].as_str().unwrap_or("?"),
                s["shape"],
                s["dtype"].as_str().unwrap_or("?"),
                f("min"),
                f("max"),
                f("mean"),
                match s["nan_count"].as_u64() {
                    Some(0) | None => String::new(),
                    Some(k) => format!("  ({k} NaN)"),
                }
            );
        }
        if let Some((p50, p90, n)) = latency {
            println!("latency over {n} runs: p50 {p50:.3} ms, p90 {p90:.3} ms");
        }
        if let Some(p) = &profile {
            println!("time by op type (one run):");
            for (op, ms, n) in p {
                println!("  {op:<24} {ms:9.3} ms  ({n} nodes)");
            }
        }
        if let Some(p) = &args.output {
            println!("outputs saved to {}", p.display());
        }
    }
    Ok(())
}
