//! Model inputs for the CLI commands that run models (`run`, `verify`): from .npy files
//! (`--input NAME=file.npy`) or generated (`--random-inputs`).
//!
//! Random inputs (seeded by `--seed`): float inputs are standard normal; integer inputs are
//! uniform in `0..=N-1` with `N = --int-range` (default 10), so that ids fed to an embedding
//! (Gather) stay in range when N is at most the vocabulary size; bool inputs are fair coin
//! flips. Symbolic dims take their value from `--dim NAME=VALUE`, else 1; dims the model leaves
//! unnamed and unknown are 1.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Args;
use half::f16;
use ndarray::{ArrayD, IxDyn};

use onnx_dynq::ir::shape::Dim;
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::{Session, Value, budget};

#[derive(Args, Clone, Debug)]
pub struct InputArgs {
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
    /// Memory budget of a run, e.g. 512M or 8G: a tensor sized by data, or the values alive
    /// at once, beyond it stop the run with an error naming the node (default: 3/4 of
    /// physical memory).
    #[arg(long, value_name = "SIZE", value_parser = onnx_dynq::runtime::budget::parse_size)]
    pub max_memory: Option<u64>,
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
        DataType::Bfloat16 => Value::BF16(ArrayD::from_shape_vec(
            sh,
            (0..n).map(|_| half::bf16::from_f64(rng.normal())).collect(),
        )?),
        DataType::Int16 => Value::I16(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as i16).collect(),
        )?),
        DataType::Uint16 => Value::U16(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as u16).collect(),
        )?),
        DataType::Uint32 => Value::U32(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as u32).collect(),
        )?),
        DataType::Uint64 => Value::U64(ArrayD::from_shape_vec(
            sh,
            ints(rng).into_iter().map(|v| v as u64).collect(),
        )?),
        dt => bail!("cannot generate random {} inputs", dt.as_str_name()),
    })
}

/// The feed for `session`: the given .npy files, and random values for the rest when asked.
pub fn build_feed(args: &InputArgs, session: &Session) -> Result<HashMap<String, Value>> {
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
        let limit = args.max_memory.unwrap_or_else(budget::default_budget);
        let _budget = budget::enter(limit, 0);
        budget::check_alloc(&shape, budget::elem_bytes(ty.dtype()))
            .with_context(|| format!("random input '{}' of shape {shape:?}", info.name))?;
        feed.insert(
            info.name.clone(),
            random_value(ty.dtype(), &shape, &mut rng, args.int_range)?,
        );
    }
    if let Some(extra) = given.keys().next() {
        bail!("'{extra}' is not an input of the model");
    }
    Ok(feed)
}

impl InputArgs {
    /// These arguments with random generation on for every input not given with `--input`
    /// (what `rewrite --verify` feeds its comparison).
    pub fn random_by_default(&self) -> Self {
        InputArgs {
            random_inputs: true,
            ..self.clone()
        }
    }
}
