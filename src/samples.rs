//! Sample inputs for running a model: read from `.npz` files (one sample per file) or generated
//! at random in a way that respects what the graph implies about each input.
//!
//! What the graph implies ([`input_roles`]), found by following each integer or boolean graph
//! input through the ops that pass values along unchanged in meaning (Cast, Reshape,
//! Unsqueeze, Squeeze, Flatten, Identity, Expand, Transpose, Slice):
//! - **ids**: the input reaches the indices of a `Gather` whose table has a known size along
//!   the gathered axis (an embedding: word ids, token types, positions). Random ids are
//!   uniform in `0..rows`, with `rows` the smallest such table (so every table it feeds can
//!   take them).
//! - **mask**: otherwise, the input reaches mask arithmetic (`Sub`, `Mul`, `Where`, `Not`,
//!   `And`, `Or`), or its name contains "mask". Random masks are a valid prefix of ones then
//!   zeros along the last axis, as a padded batch has: the first row is all ones (no
//!   padding), each other row keeps `1..=len` leading ones, uniformly. Inputs of another rank
//!   than 2 are all ones.
//! - otherwise integers are uniform in `0..int_range` (default 10).
//!
//! Float inputs are standard normal; booleans other than masks are fair coin flips. Symbolic
//! dims take their value from the given map, else 1; unnamed unknown dims are 1. The random
//! source is splitmix64 seeded by the caller: the same seed gives the same feed.
//!
//! Sample files: each `.npz` is one sample; an array named `NAME` or `input.NAME` (the layout
//! of the fixtures' npz files) feeds the graph input `NAME`; arrays named `output.*` are
//! ignored; any other name is an error, as is a missing input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::ir::shape::{Dim, infer_types};
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;
use crate::runtime::session::InputInfo;

/// One set of graph inputs.
pub type Feed = HashMap<String, Value>;

/// What the graph does with an input (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputRole {
    /// Indices into embedding tables with this many rows (the smallest).
    Ids {
        rows: i64,
    },
    /// An attention mask: 1 for real tokens, 0 for padding.
    Mask,
    Plain,
}

/// Ops through which an input keeps its meaning (ids stay ids, a mask stays a mask).
const PASS_THROUGH: &[&str] = &[
    "Cast",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Identity",
    "Expand",
    "Transpose",
    "Slice",
];

/// Ops a mask is combined with.
const MASK_ARITHMETIC: &[&str] = &["Sub", "Mul", "Where", "Not", "And", "Or"];

/// The role of every graph input of `graph` (main graph only).
pub fn input_roles(graph: &Graph) -> HashMap<String, InputRole> {
    let types = infer_types(graph, &HashMap::new());
    let consumers = graph.consumers();
    let mut roles = HashMap::new();
    for input in graph.real_inputs() {
        let name = input.name();
        let mut rows: Option<i64> = None;
        let mut arithmetic = false;
        let mut seen: Vec<String> = vec![name.to_string()];
        let mut stack = vec![name.to_string()];
        while let Some(v) = stack.pop() {
            for &i in consumers.get(&v).map(Vec::as_slice).unwrap_or_default() {
                let n = &graph.nodes[i];
                if !n.domain().is_empty() {
                    continue;
                }
                let op = n.op_type();
                if op == "Gather" && n.input(1) == Some(v.as_str()) {
                    let axis = n.attr::<i64>("axis").ok().flatten().unwrap_or(0);
                    let table = n.input(0).unwrap_or("");
                    let dims: Option<Vec<i64>> = match graph.initializer(table) {
                        Some(t) => Some(t.dims().to_vec()),
                        None => types
                            .get(table)
                            .and_then(|t| t.shape.as_ref())
                            .map(|s| s.iter().map(|d| d.known().unwrap_or(-1)).collect()),
                    };
                    let r = dims.as_deref().and_then(|d| {
                        let a = if axis < 0 {
                            axis + d.len() as i64
                        } else {
                            axis
                        };
                        d.get(usize::try_from(a).ok()?).copied()
                    });
                    if let Some(r) = r.filter(|&r| r > 0) {
                        rows = Some(rows.map_or(r, |x| x.min(r)));
                    }
                } else if PASS_THROUGH.contains(&op) && n.input(0) == Some(v.as_str()) {
                    for o in n.outputs() {
                        if !o.is_empty() && !seen.contains(o) {
                            seen.push(o.clone());
                            stack.push(o.clone());
                        }
                    }
                } else if MASK_ARITHMETIC.contains(&op) {
                    arithmetic = true;
                }
            }
        }
        let role = match rows {
            Some(rows) => InputRole::Ids { rows },
            None if arithmetic || name.to_ascii_lowercase().contains("mask") => InputRole::Mask,
            None => InputRole::Plain,
        };
        roles.insert(name.to_string(), role);
    }
    roles
}

/// The attention-mask input of an encoder: the first rank-2 input with the mask role.
pub fn mask_input(graph: &Graph) -> Option<String> {
    let roles = input_roles(graph);
    graph
        .real_inputs()
        .find(|i| {
            roles.get(i.name()) == Some(&InputRole::Mask)
                && crate::ir::shape::ValueType::from_value_info(i)
                    .and_then(|t| t.rank())
                    .is_none_or(|r| r == 2)
        })
        .map(|i| i.name().to_string())
}

/// splitmix64: small, seedable, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// How random inputs are made.
#[derive(Clone, Debug)]
pub struct RandomSpec {
    pub seed: u64,
    /// Values of symbolic dims (others are 1).
    pub dims: HashMap<String, usize>,
    /// Integers without an implied range are drawn from `0..int_range`.
    pub int_range: i64,
}

impl Default for RandomSpec {
    fn default() -> Self {
        RandomSpec {
            seed: 0,
            dims: HashMap::new(),
            int_range: 10,
        }
    }
}

/// Mask values: a prefix of ones per row along the last axis (see the module doc).
fn mask_values(shape: &[usize], rng: &mut Rng) -> Vec<bool> {
    let n: usize = shape.iter().product();
    if shape.len() != 2 {
        return vec![true; n];
    }
    let (rows, len) = (shape[0], shape[1]);
    let mut v = Vec::with_capacity(n);
    for r in 0..rows {
        let keep = if r == 0 {
            len
        } else {
            1 + rng.below(len as u64) as usize
        };
        v.extend((0..len).map(|j| j < keep));
    }
    v
}

/// One random value of type `dt` and `shape` for an input of `role`.
pub fn random_value(
    dt: DataType,
    shape: &[usize],
    role: &InputRole,
    rng: &mut Rng,
    int_range: i64,
) -> Result<Value> {
    // Under the memory budget of the run (or the default one): a symbolic dim set with --dim
    // must not make the process abort in the allocator.
    let n = crate::runtime::budget::check_alloc(shape, crate::runtime::budget::elem_bytes(dt))
        .map_err(|e| Error::Other(format!("random input of shape {shape:?}: {e}")))?;
    let sh = IxDyn(shape);
    let ints: Vec<i64> = match role {
        InputRole::Mask => mask_values(shape, rng).into_iter().map(i64::from).collect(),
        InputRole::Ids { rows } => (0..n).map(|_| rng.below(*rows as u64) as i64).collect(),
        InputRole::Plain => match dt {
            DataType::Float
            | DataType::Double
            | DataType::Float16
            | DataType::Bfloat16
            | DataType::Bool => Vec::new(),
            _ => (0..n)
                .map(|_| rng.below(int_range.max(1) as u64) as i64)
                .collect(),
        },
    };
    let shaped = |e: ndarray::ShapeError| Error::Other(format!("random input: {e}"));
    let masked = *role == InputRole::Mask;
    Ok(match dt {
        DataType::Float if masked => Value::F32(
            ArrayD::from_shape_vec(sh, ints.iter().map(|&v| v as f32).collect()).map_err(shaped)?,
        ),
        DataType::Float => Value::F32(
            ArrayD::from_shape_vec(sh, (0..n).map(|_| rng.normal() as f32).collect())
                .map_err(shaped)?,
        ),
        DataType::Double if masked => Value::F64(
            ArrayD::from_shape_vec(sh, ints.iter().map(|&v| v as f64).collect()).map_err(shaped)?,
        ),
        DataType::Double => Value::F64(
            ArrayD::from_shape_vec(sh, (0..n).map(|_| rng.normal()).collect()).map_err(shaped)?,
        ),
        DataType::Float16 if masked => Value::F16(
            ArrayD::from_shape_vec(sh, ints.iter().map(|&v| f16::from_f64(v as f64)).collect())
                .map_err(shaped)?,
        ),
        DataType::Float16 => Value::F16(
            ArrayD::from_shape_vec(sh, (0..n).map(|_| f16::from_f64(rng.normal())).collect())
                .map_err(shaped)?,
        ),
        DataType::Int64 => Value::I64(ArrayD::from_shape_vec(sh, ints).map_err(shaped)?),
        DataType::Int32 => Value::I32(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as i32).collect())
                .map_err(shaped)?,
        ),
        DataType::Int8 => Value::I8(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as i8).collect())
                .map_err(shaped)?,
        ),
        DataType::Uint8 => Value::U8(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as u8).collect())
                .map_err(shaped)?,
        ),
        DataType::Bool if masked => Value::Bool(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v != 0).collect())
                .map_err(shaped)?,
        ),
        DataType::Bool => Value::Bool(
            ArrayD::from_shape_vec(sh, (0..n).map(|_| rng.next_u64() & 1 == 1).collect())
                .map_err(shaped)?,
        ),
        DataType::Bfloat16 => Value::BF16(
            ArrayD::from_shape_vec(
                sh,
                (0..n).map(|_| half::bf16::from_f64(rng.normal())).collect(),
            )
            .map_err(shaped)?,
        ),
        DataType::Int16 => Value::I16(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as i16).collect())
                .map_err(shaped)?,
        ),
        DataType::Uint16 => Value::U16(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as u16).collect())
                .map_err(shaped)?,
        ),
        DataType::Uint32 => Value::U32(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as u32).collect())
                .map_err(shaped)?,
        ),
        DataType::Uint64 => Value::U64(
            ArrayD::from_shape_vec(sh, ints.into_iter().map(|v| v as u64).collect())
                .map_err(shaped)?,
        ),
        dt => {
            return Err(Error::Other(format!(
                "cannot generate random {} inputs",
                dt.as_str_name()
            )));
        }
    })
}

/// Random values for every input of `inputs` not in `given` (which are kept as they are).
pub fn random_feed<'a>(
    inputs: impl IntoIterator<Item = &'a InputInfo>,
    roles: &HashMap<String, InputRole>,
    spec: &RandomSpec,
    given: &Feed,
) -> Result<Feed> {
    let mut rng = Rng(spec.seed);
    let mut feed = Feed::new();
    for info in inputs {
        if let Some(v) = given.get(&info.name) {
            feed.insert(info.name.clone(), v.clone());
            continue;
        }
        let ty = info.ty.as_ref().ok_or_else(|| {
            Error::Other(format!(
                "input '{}' has no declared type; give it with --input",
                info.name
            ))
        })?;
        let shape: Vec<usize> = ty
            .shape
            .as_ref()
            .ok_or_else(|| {
                Error::Other(format!(
                    "input '{}' has no declared shape; give it with --input",
                    info.name
                ))
            })?
            .iter()
            .map(|d| match d {
                Dim::Known(k) => (*k).max(0) as usize,
                Dim::Sym(s) => spec.dims.get(s).copied().unwrap_or(1),
                Dim::Unknown => 1,
            })
            .collect();
        let role = roles.get(&info.name).unwrap_or(&InputRole::Plain);
        feed.insert(
            info.name.clone(),
            random_value(ty.dtype(), &shape, role, &mut rng, spec.int_range)?,
        );
    }
    Ok(feed)
}

/// Reads one sample `.npz`: its arrays by graph input name (see the module doc), keeping only
/// names in `inputs`.
pub fn read_sample(path: &Path, inputs: &[String]) -> Result<Feed> {
    let mut feed = Feed::new();
    for (key, v) in crate::npy::read_npz(path)? {
        if key.starts_with("output.") {
            continue;
        }
        let name = key.strip_prefix("input.").unwrap_or(&key);
        if !inputs.iter().any(|i| i == name) {
            return Err(Error::Other(format!(
                "{}: array '{key}' is not an input of the model (inputs: {})",
                path.display(),
                inputs.join(", ")
            )));
        }
        feed.insert(name.to_string(), v);
    }
    Ok(feed)
}

/// The `.npz` files of `dir`, sorted by name; an error when there are none.
pub fn sample_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "npz") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Other(format!(
            "{}: no .npz sample files in this folder",
            dir.display()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_valid_prefixes() {
        let mut rng = Rng(3);
        let v = mask_values(&[5, 7], &mut rng);
        for (r, row) in v.chunks(7).enumerate() {
            let ones = row.iter().take_while(|&&b| b).count();
            assert!(ones >= 1, "row {r} has no valid token");
            assert!(row[ones..].iter().all(|&b| !b), "row {r} is not a prefix");
            if r == 0 {
                assert_eq!(ones, 7);
            }
        }
    }

    #[test]
    fn ids_stay_below_rows() {
        let mut rng = Rng(1);
        let v = random_value(
            DataType::Int64,
            &[4, 50],
            &InputRole::Ids { rows: 3 },
            &mut rng,
            10,
        )
        .unwrap();
        let a = v.as_i64().unwrap();
        assert!(a.iter().all(|&x| (0..3).contains(&x)));
        assert!((0..3).all(|k| a.iter().any(|&x| x == k)));
    }
}
