//! `onnx-dynq run`: feeds a model (from .npy files or random data), runs it with the built-in
//! runtime and summarizes each output; optionally times repeated runs and saves outputs.
//!
//! Random inputs (`--random-inputs`, seeded by `--seed`): float inputs are standard normal;
//! integer inputs are uniform in `0..=N-1` with `N = --int-range` (default 10), so that ids fed
//! to an embedding (Gather) stay in range when N is at most the vocabulary size; bool inputs
//! are fair coin flips. Symbolic dims take their value from `--dim NAME=VALUE`, else 1; dims
//! the model leaves unnamed and unknown are 1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use half::f16;
use ndarray::{ArrayD, IxDyn};

use onnx_dynq::ir::shape::Dim;
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::{Options, Session, Value};

#[derive(Args)]
pub struct RunArgs {
    model: PathBuf,
    /// An input as NAME=file.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Generate every input not given with --input (see --seed, --dim, --int-range).
    #[arg(long)]
    random_inputs: bool,
    /// Seed for --random-inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Value of a symbolic dim for random inputs, as NAME=VALUE (repeatable; default 1).
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// Random integer inputs are drawn from 0..=N-1 (keep N <= the vocabulary for ids).
    #[arg(long, default_value_t = 10)]
    int_range: i64,
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
}

/// splitmix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn parse_pair(s: &str, what: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .with_context(|| format!("{what} '{s}' must be NAME=VALUE"))
}

fn random_value(dt: DataType, shape: &[usize], rng: &mut Rng, int_range: i64) -> Result<Value> {
    let n: usize = shape.iter().product();
    let sh = IxDyn(shape);
    let ints = |rng: &mut Rng| -> Vec<i64> {
        (0..n)
            .map(|_| (rng.next_u64() % int_range.max(1) as u64) as i64)
            .collect()
    };
    Ok(match dt {
        DataType::Float => Value::F32(ArrayD::from_shape_vec(
            sh,
            (0..n).map(|_| rng.normal() as f32).collect(),
        )?),
        DataType::Double => Value::F64(ArrayD::from_shape_vec(
            sh,
            (0..n).map(|_| rng.normal()).collect(),
        )?),
        DataType::Float16 => Value::F16(ArrayD::from_shape_vec(
            sh,
            (0..n).map(|_| f16::from_f64(rng.normal())).collect(),
        )?),
        DataType::Int64 => Value::I64(ArrayD::from_shape_vec(sh, ints(rng))?),
        DataType::Int32 => Value::I32(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as i32).collect(),
        )?),
        DataType::Int8 => Value::I8(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as i8).collect(),
        )?),
        DataType::Uint8 => Value::U8(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as u8).collect(),
        )?),
        DataType::Bool => Value::Bool(ArrayD::from_shape_vec(
            sh,
            (0..n).map(|_| rng.next_u64() & 1 == 1).collect(),
        )?),
        dt => bail!("cannot generate random {} inputs", dt.as_str_name()),
    })
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
tof!(f32, f64, i64, i32, i8, u8);
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
    let model = onnx_dynq::load(&args.model)?;
    let session = Session::new(
        &model,
        &Options {
            threads: args.threads,
        },
    )?;
    let dims: HashMap<String, usize> = args
        .dims
        .iter()
        .map(|d| {
            let (k, v) = parse_pair(d, "--dim")?;
            Ok((
                k,
                v.parse::<usize>()
                    .with_context(|| format!("--dim {d}: not a size"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut given: HashMap<String, Value> = HashMap::new();
    for i in &args.inputs {
        let (name, file) = parse_pair(i, "--input")?;
        given.insert(name, onnx_dynq::npy::read_npy(Path::new(&file))?);
    }
    let mut rng = Rng(args.seed);
    let mut feed = HashMap::new();
    for info in session.inputs() {
        if let Some(v) = given.remove(&info.name) {
            feed.insert(info.name.clone(), v);
            continue;
        }
        if !args.random_inputs {
            bail!(
                "input '{}' not given (use --input {}=file.npy or --random-inputs)",
                info.name,
                info.name
            );
        }
        let ty = info.ty.as_ref().with_context(|| {
            format!(
                "input '{}' has no declared type; give it with --input",
                info.name
            )
        })?;
        let shape: Vec<usize> = ty
            .shape
            .as_ref()
            .with_context(|| {
                format!(
                    "input '{}' has no declared shape; give it with --input",
                    info.name
                )
            })?
            .iter()
            .map(|d| match d {
                Dim::Known(k) => (*k).max(0) as usize,
                Dim::Sym(s) => dims.get(s).copied().unwrap_or(1),
                Dim::Unknown => 1,
            })
            .collect();
        feed.insert(
            info.name.clone(),
            random_value(ty.dtype(), &shape, &mut rng, args.int_range)?,
        );
    }
    if let Some(extra) = given.keys().next() {
        bail!("'{extra}' is not an input of the model");
    }
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
