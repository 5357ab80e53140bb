//! Model inputs for the CLI commands that run models (`run`, `verify`, `rewrite`): from .npy
//! files (`--input NAME=file.npy`), from a folder of .npz samples (`--inputs DIR`, `verify`
//! and `rewrite` only), or generated (`--random-inputs`).
//!
//! Random inputs (seeded by `--seed`) follow what the graph implies about each input (see
//! [`onnx_dynq::samples`]): ids that index an embedding table are drawn from its rows,
//! attention masks are a valid prefix of ones then zeros per row, other integers are uniform
//! in `0..=N-1` with `N = --int-range` (default 10), floats standard normal, booleans fair
//! coin flips. Symbolic dims take their value from `--dim NAME=VALUE`, else 1; dims the model
//! leaves unnamed and unknown are 1.
//!
//! With `--inputs DIR`, each .npz file of DIR (sorted by name) is one sample; inputs a file
//! lacks come from `--input`, else (when random inputs are on) are random.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use onnx_dynq::Model;
use onnx_dynq::runtime::{Session, Value};
use onnx_dynq::samples::{Feed, RandomSpec, input_roles, random_feed, read_sample, sample_files};

#[derive(Args, Clone, Debug)]
pub struct InputArgs {
    /// An input as NAME=file.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// A folder of .npz samples, one sample per file, arrays named after the graph inputs
    /// (or `input.NAME`); not for `run`.
    #[arg(long = "inputs", value_name = "DIR")]
    sample_dir: Option<PathBuf>,
    /// Generate every input not given with --input (see --seed, --dim, --int-range).
    #[arg(long)]
    random_inputs: bool,
    /// Seed for --random-inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Value of a symbolic dim for random inputs, as NAME=VALUE (repeatable; default 1).
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// Random integer inputs that index no embedding table are drawn from 0..=N-1.
    #[arg(long, default_value_t = 10)]
    int_range: i64,
    /// Memory budget of a run, e.g. 512M or 8G: a tensor sized by data, or the values alive
    /// at once, beyond it stop the run with an error naming the node (default: 3/4 of
    /// physical memory).
    #[arg(long, value_name = "SIZE", value_parser = onnx_dynq::runtime::budget::parse_size)]
    pub max_memory: Option<u64>,
}

fn parse_pair(s: &str, what: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .with_context(|| format!("{what} '{s}' must be NAME=VALUE"))
}

/// Where a feed came from, for messages.
#[derive(Clone, Debug)]
pub enum Origin {
    /// Files: `--input` arrays and/or .npz samples; `random` inputs were filled in.
    Given { samples: usize, random: Vec<String> },
    /// Every input random.
    Random,
}

impl Origin {
    pub fn describe(&self, args: &InputArgs) -> String {
        match self {
            Origin::Given { samples, random } if random.is_empty() => {
                format!("{samples} given sample(s)")
            }
            Origin::Given { samples, random } => format!(
                "{samples} given sample(s), random {} (seed {})",
                random.join(", "),
                args.seed
            ),
            Origin::Random => format!(
                "random inputs (seed {}, symbolic dims {}; give real samples with --inputs DIR or --input)",
                args.seed,
                if args.dims.is_empty() {
                    "1".to_string()
                } else {
                    format!("{} else 1", args.dims.join(", "))
                }
            ),
        }
    }
}

impl InputArgs {
    /// Runtime options with this run's memory budget.
    pub fn options(&self) -> onnx_dynq::runtime::Options {
        onnx_dynq::runtime::Options {
            max_memory: self.max_memory,
            ..Default::default()
        }
    }

    /// These arguments with random generation on for every input not given with `--input`
    /// (what `rewrite --verify` feeds its comparison).
    pub fn random_by_default(&self) -> Self {
        InputArgs {
            random_inputs: true,
            ..self.clone()
        }
    }

    fn spec(&self) -> Result<RandomSpec> {
        let dims = self
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
        Ok(RandomSpec {
            seed: self.seed,
            dims,
            int_range: self.int_range,
        })
    }

    fn given(&self) -> Result<Feed> {
        let mut given = HashMap::new();
        for i in &self.inputs {
            let (name, file) = parse_pair(i, "--input")?;
            given.insert(name, onnx_dynq::npy::read_npy(Path::new(&file))?);
        }
        Ok(given)
    }
}

/// Completes `given` into a full feed for `session`: random values for the rest when asked,
/// else an error naming the first missing input.
fn complete(
    args: &InputArgs,
    model: &Model,
    session: &Session,
    given: &Feed,
    seed_offset: u64,
) -> Result<(Feed, Vec<String>)> {
    let names: Vec<&str> = session.inputs().map(|i| i.name.as_str()).collect();
    if let Some(extra) = given.keys().find(|k| !names.contains(&k.as_str())) {
        bail!("'{extra}' is not an input of the model");
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !given.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    if let Some(m) = missing.first()
        && !args.random_inputs
    {
        bail!("input '{m}' not given (use --input {m}=file.npy, --inputs DIR or --random-inputs)");
    }
    let mut spec = args.spec()?;
    spec.seed = spec.seed.wrapping_add(seed_offset);
    let limit = args
        .max_memory
        .unwrap_or_else(onnx_dynq::runtime::budget::default_budget);
    let _budget = onnx_dynq::runtime::budget::enter(limit, 0);
    let feed = random_feed(session.inputs(), &input_roles(&model.graph), &spec, given)?;
    Ok((feed, missing))
}

/// The single feed for `session` (`run`): the given .npy files, or the one .npz of
/// `--inputs DIR`, and random values for the rest when asked.
pub fn build_feed(
    args: &InputArgs,
    model: &Model,
    session: &Session,
) -> Result<HashMap<String, Value>> {
    if let Some(dir) = &args.sample_dir {
        let (mut feeds, _) = build_samples(args, model, session)?;
        if feeds.len() != 1 {
            bail!(
                "--inputs {} holds {} samples; this command runs one (give a folder with one .npz, or --input NAME=file.npy)",
                dir.display(),
                feeds.len()
            );
        }
        return Ok(feeds.remove(0));
    }
    Ok(complete(args, model, session, &args.given()?, 0)?.0)
}

/// Every sample for `session` (`verify`, `rewrite`): one per .npz of `--inputs DIR`, else the
/// one feed of [`build_feed`]; and where it came from.
pub fn build_samples(
    args: &InputArgs,
    model: &Model,
    session: &Session,
) -> Result<(Vec<Feed>, Origin)> {
    let given = args.given()?;
    let Some(dir) = &args.sample_dir else {
        let (feed, random) = complete(args, model, session, &given, 0)?;
        let origin = if given.is_empty() {
            Origin::Random
        } else {
            Origin::Given { samples: 1, random }
        };
        return Ok((vec![feed], origin));
    };
    let names: Vec<String> = session.inputs().map(|i| i.name.clone()).collect();
    let mut feeds = Vec::new();
    let mut random = Vec::new();
    for (i, file) in sample_files(dir)?.iter().enumerate() {
        let mut sample = read_sample(file, &names)?;
        for (k, v) in &given {
            sample.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let (feed, missing) = complete(args, model, session, &sample, i as u64)
            .with_context(|| format!("sample {}", file.display()))?;
        for m in missing {
            if !random.contains(&m) {
                random.push(m);
            }
        }
        feeds.push(feed);
    }
    let samples = feeds.len();
    Ok((feeds, Origin::Given { samples, random }))
}
