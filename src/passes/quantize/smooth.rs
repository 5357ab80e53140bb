//! SmoothQuant smoothing (`rewrite --smooth ALPHA`): moves part of each activation's
//! per-channel range into the weights of the MatMul/Gemm nodes that read it, so that
//! activations with outlier channels quantize with less error. Exact in float: the model's
//! float outputs are unchanged up to rounding.
//!
//! For every activation `X` read (as input A) by MatMul/Gemm nodes that the policy will
//! quantize, with constant float32 2-D weights (Gemm without transA):
//! - `max|X_j|` per input channel `j` (the last axis) is taken over the sample inputs, by
//!   running the float model in the built-in runtime with the activations as extra outputs;
//! - `max|W_j|` is the largest magnitude of row `j` of the weight (`[K, N]`; column `j` of a
//!   Gemm with transB), and over all readers of `X` when several share it (one LayerNorm
//!   feeding Q, K and V): all readers must see the same `X / s`;
//! - `s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`, 1 where either maximum is 0 or the result
//!   is not finite, clamped to [1e-5, 1e5];
//! - each reader's weight rows are multiplied by `s` (in place when only the group reads the
//!   weight, else into a new initializer), and `X` is divided by `s`: folded into the
//!   producing LayerNormalization's scale and bias (last-axis normalization) or into a Mul by
//!   a constant (per-tensor or per-last-axis-channel), when every reader of `X` is in the
//!   group and `X` is not a graph output; otherwise one Mul by `1 / s` is inserted before the
//!   group's readers (other readers keep `X`). On BERT-style encoders the LayerNorm outputs
//!   also feed the residual Add, so Q/K/V and the FFN input get a Mul, while the FFN
//!   down-projection's input folds into GELU's final Mul by 0.5.
//!
//! Only the main graph is smoothed (subgraph nodes are left as they are).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::{NameGen, Node, Tensor};
use crate::model::Model;
use crate::onnx::ValueInfoProto;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::{Options, Session, Value};
use crate::samples::Feed;

use super::policy::{PolicyOptions, decide};

const SCALE_MIN: f32 = 1e-5;
const SCALE_MAX: f32 = 1e5;

/// One smoothed activation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SmoothedActivation {
    pub activation: String,
    /// The MatMul/Gemm nodes reading it.
    pub readers: Vec<String>,
    /// Where `1 / s` went: "LayerNormalization 'n'", "Mul 'n'" or "inserted Mul 'n'".
    pub divided_in: String,
    pub channels: usize,
    pub scale_min: f32,
    pub scale_max: f32,
}

/// What smoothing did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SmoothReport {
    pub alpha: f64,
    pub activations: Vec<SmoothedActivation>,
    /// Activations left alone, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl SmoothReport {
    pub fn summary(&self) -> String {
        let folded = self
            .activations
            .iter()
            .filter(|a| !a.divided_in.starts_with("inserted"))
            .count();
        format!(
            "smoothed {} activation(s) (alpha {}) for {} MatMul/Gemm node(s): {} folded into a preceding node, {} with an inserted Mul; {} left alone",
            self.activations.len(),
            self.alpha,
            self.activations
                .iter()
                .map(|a| a.readers.len())
                .sum::<usize>(),
            folded,
            self.activations.len() - folded,
            self.skipped.len()
        )
    }
}

/// A reader of a smoothed activation.
struct Reader {
    node: usize,
    weight: String,
    trans_b: bool,
}

/// The float32 weight of `name` as rows `[K][N]` (transposed for transB), if it is one.
fn weight_rows(model: &Model, name: &str, trans_b: bool) -> Option<(usize, usize, Vec<f32>)> {
    let t = model.graph.initializer(name)?;
    if t.data_type().ok()? != DataType::Float || t.dims().len() != 2 {
        return None;
    }
    let (r, c) = (t.dims()[0] as usize, t.dims()[1] as usize);
    let v = t.as_slice::<f32>().ok()?.into_owned();
    Some(if trans_b { (c, r, v) } else { (r, c, v) })
}

/// Per-channel `max|W_j|` along input channel `j` of a weight.
fn weight_channel_max(model: &Model, r: &Reader) -> Option<Vec<f32>> {
    let t = model.graph.initializer(&r.weight)?;
    let (rows, cols) = (t.dims()[0] as usize, t.dims()[1] as usize);
    let (k, _, v) = weight_rows(model, &r.weight, r.trans_b)?;
    let mut m = vec![0.0f32; k];
    for i in 0..rows {
        for j in 0..cols {
            let a = v[i * cols + j].abs();
            let ch = if r.trans_b { j } else { i };
            m[ch] = m[ch].max(a);
        }
    }
    Some(m)
}

/// Per input channel, the largest |value| of each activation smoothing would touch, over the
/// float model's run on the samples: measured once, it serves every alpha tried.
pub struct ActivationRanges(HashMap<String, Vec<f32>>);

/// The [`ActivationRanges`] of `model` on `samples`, for the MatMul/Gemm nodes `policy`
/// quantizes.
pub fn activation_ranges(
    model: &Model,
    policy: &PolicyOptions,
    samples: &[Feed],
    runtime: &Options,
) -> Result<ActivationRanges> {
    if samples.is_empty() {
        return Err(Error::Other("smoothing needs at least one sample".into()));
    }
    let groups = reader_groups(model, policy, &mut Vec::new());
    if groups.is_empty() {
        return Ok(ActivationRanges(HashMap::new()));
    }
    Ok(ActivationRanges(activation_maxima(
        model,
        groups.keys(),
        samples,
        runtime,
    )?))
}

/// Smooths `model` in place (see the module doc), with the activation ranges of the float
/// model on `samples`, for the MatMul/Gemm nodes that `policy` quantizes.
pub fn smooth(
    model: &mut Model,
    policy: &PolicyOptions,
    alpha: f64,
    samples: &[Feed],
    runtime: &Options,
) -> Result<SmoothReport> {
    check_alpha(alpha)?;
    let ranges = activation_ranges(model, policy, samples, runtime)?;
    smooth_with(model, policy, alpha, &ranges)
}

fn check_alpha(alpha: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Other(format!(
            "--smooth {alpha}: alpha must be in [0, 1]"
        )));
    }
    Ok(())
}

/// [`smooth`] with ranges already measured on this model ([`activation_ranges`]).
pub fn smooth_with(
    model: &mut Model,
    policy: &PolicyOptions,
    alpha: f64,
    ranges: &ActivationRanges,
) -> Result<SmoothReport> {
    check_alpha(alpha)?;
    let mut report = SmoothReport {
        alpha,
        ..Default::default()
    };
    let groups = reader_groups(model, policy, &mut report.skipped);
    if groups.is_empty() {
        return Ok(report);
    }
    let xmax = &ranges.0;
    let mut names = NameGen::new(&model.graph);
    // Inserted Muls wait until every group is done, so that node indices stay valid.
    let mut inserts: Vec<(usize, Node)> = Vec::new();
    // Weights already rewritten, by (weight, activation): shared readers scale once.
    let mut scaled: HashMap<(String, String), String> = HashMap::new();
    for (x, readers) in &groups {
        let Some(xm) = xmax.get(x) else {
            report
                .skipped
                .push((x.clone(), "not a float32 activation in the runtime".into()));
            continue;
        };
        let wmaxes: Option<Vec<Vec<f32>>> = readers
            .iter()
            .map(|r| weight_channel_max(model, r))
            .collect();
        let Some(wmaxes) = wmaxes else { continue };
        if wmaxes.iter().any(|w| w.len() != xm.len()) {
            report.skipped.push((
                x.clone(),
                format!(
                    "its last axis ({}) is not the weights' input channels",
                    xm.len()
                ),
            ));
            continue;
        }
        let s: Vec<f32> = (0..xm.len())
            .map(|j| {
                let w = wmaxes.iter().map(|m| m[j]).fold(0.0f32, f32::max);
                let v = (xm[j] as f64).powf(alpha) / (w as f64).powf(1.0 - alpha);
                if xm[j] == 0.0 || w == 0.0 || !v.is_finite() {
                    1.0
                } else {
                    (v as f32).clamp(SCALE_MIN, SCALE_MAX)
                }
            })
            .collect();
        let divided_in = divide_activation(model, x, readers, &s, &mut names, &mut inserts);
        for r in readers {
            let key = (r.weight.clone(), x.clone());
            let new_name = match scaled.get(&key) {
                Some(n) => n.clone(),
                None => {
                    let n = scale_weight(model, r, readers, &s, &mut names)?;
                    scaled.insert(key, n.clone());
                    n
                }
            };
            model.graph.nodes[r.node].proto.input[1] = new_name;
        }
        report.activations.push(SmoothedActivation {
            activation: x.clone(),
            readers: readers
                .iter()
                .map(|r| model.graph.nodes[r.node].display_name().to_string())
                .collect(),
            divided_in,
            channels: s.len(),
            scale_min: s.iter().copied().fold(f32::INFINITY, f32::min),
            scale_max: s.iter().copied().fold(0.0f32, f32::max),
        });
    }
    // From the last position back, so that earlier positions stay valid.
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, node) in inserts {
        model.graph.nodes.insert(at, node);
    }
    Ok(report)
}

/// A constant float32 vector of `k` values broadcast along the last axis: its values, when
/// `t` has one element or every dim but the last is 1 and the last is `k`.
fn channel_constant(t: &Tensor, k: usize) -> Option<Vec<f32>> {
    if t.data_type().ok()? != DataType::Float {
        return None;
    }
    let v = t.as_slice::<f32>().ok()?.into_owned();
    let dims = t.dims();
    if v.len() == 1 {
        return Some(vec![v[0]; k]);
    }
    let last_only = dims
        .split_last()
        .is_some_and(|(&l, rest)| l as usize == k && rest.iter().all(|&d| d == 1));
    last_only.then_some(v)
}

/// Divides activation `x` by `s` where it is made, or queues a Mul into `inserts`; says
/// where.
fn divide_activation(
    model: &mut Model,
    x: &str,
    readers: &[Reader],
    s: &[f32],
    names: &mut NameGen,
    inserts: &mut Vec<(usize, Node)>,
) -> String {
    let g = &model.graph;
    let consumers = g.consumers();
    let reader_nodes: HashSet<usize> = readers.iter().map(|r| r.node).collect();
    let only_group = !g.is_output(x)
        && consumers
            .get(x)
            .is_some_and(|c| c.iter().all(|i| reader_nodes.contains(i)));
    let producer = g.producers().get(x).copied();
    if only_group && let Some((pi, 0)) = producer {
        let p = &g.nodes[pi];
        let k = s.len();
        // A constant input may be shared with other nodes: the divided copy gets a new name
        // unless this node is its only reader.
        let sole_reader = |name: &str| consumers.get(name).is_none_or(|c| c == &vec![pi]);
        if p.domain().is_empty() && p.op_type() == "LayerNormalization" {
            let axis = p.attr::<i64>("axis").ok().flatten().unwrap_or(-1);
            let gamma = p.input(1).and_then(|n| g.initializer(n));
            let beta = p.input(2).map(|n| g.initializer(n));
            let gv = gamma.and_then(|t| channel_constant(t, k).filter(|_| t.numel() == k));
            let bv = match beta {
                None => Some(None),
                Some(Some(t)) => channel_constant(t, k).filter(|_| t.numel() == k).map(Some),
                Some(None) => None,
            };
            if axis == -1
                && let (Some(gv), Some(bv)) = (gv, bv)
            {
                let name = p.display_name().to_string();
                let mut set = |model: &mut Model, idx: usize, vals: Vec<f32>| {
                    let old = model.graph.nodes[pi].inputs()[idx].clone();
                    let new = if sole_reader(&old) {
                        old.clone()
                    } else {
                        names.fresh(&format!("{old}_smoothed"))
                    };
                    model
                        .graph
                        .add_initializer(Tensor::from_vec(&new, &[k], vals));
                    model.graph.nodes[pi].proto.input[idx] = new;
                };
                set(model, 1, gv.iter().zip(s).map(|(a, b)| a / b).collect());
                if let Some(bv) = bv {
                    set(model, 2, bv.iter().zip(s).map(|(a, b)| a / b).collect());
                }
                return format!("LayerNormalization '{name}'");
            }
        }
        if p.domain().is_empty() && p.op_type() == "Mul" {
            for ci in 0..2 {
                let Some(t) = p.input(ci).and_then(|n| g.initializer(n)) else {
                    continue;
                };
                let Some(cv) = channel_constant(t, k) else {
                    continue;
                };
                let mut dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
                match dims.last_mut() {
                    Some(l) => *l = k,
                    None => dims.push(k),
                }
                let old = p.inputs()[ci].clone();
                let name = p.display_name().to_string();
                let new = if sole_reader(&old) {
                    old
                } else {
                    names.fresh(&format!("{old}_smoothed"))
                };
                let vals = cv.iter().zip(s).map(|(a, b)| a / b).collect();
                model
                    .graph
                    .add_initializer(Tensor::from_vec(&new, &dims, vals));
                model.graph.nodes[pi].proto.input[ci] = new;
                return format!("Mul '{name}'");
            }
        }
    }
    // One Mul by 1/s, right before the first reader, feeding only the group.
    let inv = names.fresh(&format!("{x}_smooth_inv_scale"));
    let out = names.fresh(&format!("{x}_smoothed"));
    let node_name = names.fresh(&format!("{x}_smooth"));
    model.graph.add_initializer(Tensor::from_vec(
        &inv,
        &[s.len()],
        s.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
    ));
    let at = readers.iter().map(|r| r.node).min().unwrap_or(0);
    for r in readers {
        model.graph.nodes[r.node].proto.input[0] = out.clone();
    }
    inserts.push((
        at,
        Node::new(
            node_name.clone(),
            "Mul",
            "",
            vec![x.to_string(), inv],
            vec![out],
        ),
    ));
    format!("inserted Mul '{node_name}'")
}

/// Multiplies the input-channel rows of a reader's weight by `s`; returns the name of the
/// scaled weight: the same when only the group's readers read it, else a new one (a weight
/// tied to other nodes keeps its values for them).
fn scale_weight(
    model: &mut Model,
    r: &Reader,
    group: &[Reader],
    s: &[f32],
    names: &mut NameGen,
) -> Result<String> {
    let t = model
        .graph
        .initializer(&r.weight)
        .ok_or_else(|| Error::Other(format!("weight '{}' disappeared", r.weight)))?;
    let dims = t.shape();
    let mut v = t.as_slice::<f32>()?.into_owned();
    let cols = dims[1];
    for (i, row) in v.chunks_mut(cols).enumerate() {
        for (j, w) in row.iter_mut().enumerate() {
            *w *= if r.trans_b { s[j] } else { s[i] };
        }
    }
    let in_place = !model.graph.is_output(&r.weight)
        && model.graph.consumers().get(&r.weight).is_none_or(|c| {
            c.iter().all(|&i| {
                group.iter().any(|o| o.node == i && o.weight == r.weight)
                    && model.graph.nodes[i].input(0) != Some(r.weight.as_str())
            })
        });
    let name = if in_place {
        r.weight.clone()
    } else {
        names.fresh(&format!("{}_smoothed", r.weight))
    };
    model
        .graph
        .add_initializer(Tensor::from_vec(&name, &dims, v));
    Ok(name)
}

/// The smoothable activations of `model` (those `policy` quantizes a MatMul/Gemm reader of,
/// with a float32 2-D constant weight), each with its readers in graph order; what is left
/// alone goes to `skipped` with the reason.
fn reader_groups(
    model: &Model,
    policy: &PolicyOptions,
    skipped: &mut Vec<(String, String)>,
) -> BTreeMap<String, Vec<Reader>> {
    let quantized: HashSet<String> = decide(&model.graph, policy)
        .into_iter()
        .filter(|d| d.quantize && d.scope.is_empty())
        .map(|d| d.node)
        .collect();
    // Activation -> readers, in graph order (BTreeMap: deterministic output).
    let mut groups: BTreeMap<String, Vec<Reader>> = BTreeMap::new();
    for (i, n) in model.graph.nodes.iter().enumerate() {
        let op = n.op_type();
        if !n.domain().is_empty()
            || !(op == "MatMul" || op == "Gemm")
            || !quantized.contains(n.display_name())
        {
            continue;
        }
        let attr = |a: &str| n.attr::<i64>(a).ok().flatten().unwrap_or(0) != 0;
        let (Some(x), Some(w)) = (n.input(0), n.input(1)) else {
            continue;
        };
        if op == "Gemm" && attr("transA") {
            skipped.push((
                x.to_string(),
                format!("Gemm '{}' has transA", n.display_name()),
            ));
            continue;
        }
        let trans_b = op == "Gemm" && attr("transB");
        if weight_rows(model, w, trans_b).is_none() {
            skipped.push((
                x.to_string(),
                format!(
                    "'{}' has no float32 2-D initializer weight",
                    n.display_name()
                ),
            ));
            continue;
        }
        groups.entry(x.to_string()).or_default().push(Reader {
            node: i,
            weight: w.to_string(),
            trans_b,
        });
    }
    groups
}

/// `max|X_j|` over the last axis of each activation, over every sample, from one float run
/// per sample with the activations as extra graph outputs.
fn activation_maxima<'a>(
    model: &Model,
    activations: impl Iterator<Item = &'a String>,
    samples: &[Feed],
    runtime: &Options,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut probe = model.clone();
    let wanted: Vec<String> = activations.cloned().collect();
    for x in &wanted {
        if !probe.graph.is_output(x) {
            probe.graph.proto.output.push(ValueInfoProto {
                name: Some(x.clone()),
                ..Default::default()
            });
        }
    }
    let session = Session::new(&probe, runtime)?;
    let mut maxima: HashMap<String, Vec<f32>> = HashMap::new();
    for sample in samples {
        let outs: HashMap<String, Value> = session.run(sample.clone())?.into_iter().collect();
        for x in &wanted {
            let Some(Value::F32(a)) = outs.get(x) else {
                continue;
            };
            let k = a.shape().last().copied().unwrap_or(1).max(1);
            let m = maxima.entry(x.clone()).or_insert_with(|| vec![0.0; k]);
            if m.len() != k {
                continue;
            }
            for row in a.as_standard_layout().as_slice().unwrap_or(&[]).chunks(k) {
                for (mj, v) in m.iter_mut().zip(row) {
                    *mj = mj.max(v.abs());
                }
            }
        }
    }
    Ok(maxima)
}
