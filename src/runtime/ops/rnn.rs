//! Recurrent ops of the default domain: LSTM (opset 7/14/22), GRU (7/14/22), RNN (7/14/22).
//!
//! Semantics (ONNX spec, `X` is `[seq, batch, in]`, or `[batch, seq, in]` with `layout = 1`):
//! - LSTM, gate order i, o, f, c in `W [D, 4H, in]`, `R [D, 4H, H]`, `B [D, 8H]` (Wb then Rb),
//!   peepholes `P [D, 3H]` (i, o, f):
//!   `i = f(Xt·Wiᵀ + Ht-1·Riᵀ + Pi⊙Ct-1 + Wbi + Rbi)`, `f` likewise with `Pf`,
//!   `c = g(Xt·Wcᵀ + Ht-1·Rcᵀ + Wbc + Rbc)`, `Ct = f⊙Ct-1 + i⊙c`,
//!   `o = f(Xt·Woᵀ + Ht-1·Roᵀ + Po⊙Ct + Wbo + Rbo)`, `Ht = o⊙h(Ct)`.
//!   `input_forget = 1` couples the forget gate to the input gate: `f = 1 - i`.
//! - GRU, gate order z, r, h in `W [D, 3H, in]`, `R [D, 3H, H]`, `B [D, 6H]`:
//!   `z = f(..)`, `r = f(..)`; `linear_before_reset = 0`:
//!   `h = g(Xt·Whᵀ + (r⊙Ht-1)·Rhᵀ + Rbh + Wbh)`, otherwise `h = g(Xt·Whᵀ + r⊙(Ht-1·Rhᵀ + Rbh) + Wbh)`;
//!   `Ht = (1 - z)⊙h + z⊙Ht-1`.
//! - RNN: `Ht = f(Xt·Wiᵀ + Ht-1·Riᵀ + Wbi + Rbi)`.
//!
//! `clip` bounds every gate pre-activation (after peepholes) to `[-clip, clip]`. `activations`
//! lists f, g, h (LSTM), f, g (GRU) or f (RNN) per direction; `activation_alpha`/`_beta` are
//! consumed in order by the activations that take parameters (as onnxruntime does).
//! `sequence_lens` gives each batch row its own length: outputs past it are zero in `Y`, `Y_h`
//! (and `Y_c`) hold the state at the row's last valid step, and the reverse direction starts
//! at the row's own last valid step. A row of length 0 gets zero `Y_h`/`Y_c` (as onnxruntime
//! does; the spec is silent).
//!
//! Execution: per direction, the input projection for all steps is one GEMM with the bias in
//! its output loop (hoisted out of the time loop); each step is one `[batch, H] x [H, G·H]`
//! GEMM (two for GRU with `linear_before_reset = 0`, whose reset gate must be applied before
//! the second product). Constant weights are transposed and packed for the float kernels
//! ([`PackedB`]) once when the op is built, so no step re-packs R; sigmoid and tanh use
//! vectorizable approximations (error about 1e-6). Both directions of a bidirectional op run
//! in parallel on the rayon pool when large enough.
//! Types: f32; f16 and f64 inputs are computed in f32 and converted back.

use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView2, Axis, IxDyn, s};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::Node;
use crate::runtime::kernels::gemm_f32::{
    Act, Epilogue, PackedB, gemm_packed, output_buffer, recycle,
};
use crate::runtime::value::Value;

use super::{BuildCtx, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("", "LSTM", build_lstm);
    r.register("", "GRU", build_gru);
    r.register("", "RNN", build_rnn);
}

fn build_lstm(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    RecurrentOp::build(node, ctx, Kind::Lstm).map(|op| Box::new(op) as Box<dyn Op>)
}

fn build_gru(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    RecurrentOp::build(node, ctx, Kind::Gru).map(|op| Box::new(op) as Box<dyn Op>)
}

fn build_rnn(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    RecurrentOp::build(node, ctx, Kind::Rnn).map(|op| Box::new(op) as Box<dyn Op>)
}

// ---------------------------------------------------------------------------------------------
// Activations

/// An activation function the recurrent ops accept by name, with its parameters bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Affine { alpha: f32, beta: f32 },
    LeakyRelu { alpha: f32 },
    ThresholdedRelu { alpha: f32 },
    ScaledTanh { alpha: f32, beta: f32 },
    HardSigmoid { alpha: f32, beta: f32 },
    Elu { alpha: f32 },
    Softsign,
    Softplus,
}

impl Activation {
    /// Parses a name (case-insensitive), taking alpha/beta from the iterators when the function
    /// uses them, else the ONNX operator defaults.
    pub(super) fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f32>,
        betas: &mut impl Iterator<Item = f32>,
    ) -> Option<Self> {
        let mut alpha = |d: f32| alphas.next().unwrap_or(d);
        Some(match name.to_ascii_lowercase().as_str() {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "affine" => Activation::Affine {
                alpha: alpha(1.0),
                beta: betas.next().unwrap_or(0.0),
            },
            "leakyrelu" => Activation::LeakyRelu { alpha: alpha(0.01) },
            "thresholdedrelu" => Activation::ThresholdedRelu { alpha: alpha(1.0) },
            "scaledtanh" => Activation::ScaledTanh {
                alpha: alpha(1.0),
                beta: betas.next().unwrap_or(1.0),
            },
            "hardsigmoid" => Activation::HardSigmoid {
                alpha: alpha(0.2),
                beta: betas.next().unwrap_or(0.5),
            },
            "elu" => Activation::Elu { alpha: alpha(1.0) },
            "softsign" => Activation::Softsign,
            "softplus" => Activation::Softplus,
            _ => return None,
        })
    }

    #[inline]
    pub fn eval(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Affine { alpha, beta } => alpha * x + beta,
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::ThresholdedRelu { alpha } => {
                if x > alpha {
                    x
                } else {
                    0.0
                }
            }
            Activation::ScaledTanh { alpha, beta } => alpha * (beta * x).tanh(),
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * (x.exp() - 1.0)
                }
            }
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Softplus => {
                // ln(1 + e^x) without overflow for large x.
                if x > 20.0 { x } else { x.exp().ln_1p() }
            }
        }
    }

    /// Applies the function in place to a slice (one match per slice, not per element).
    /// Sigmoid and tanh, which dominate the recurrent ops, use vectorizable approximations
    /// (tanh: absolute error below 1e-6; sigmoid: relative error about 1e-6).
    pub fn apply(self, xs: &mut [f32]) {
        match self {
            Activation::Sigmoid => vector_dispatch(xs, false),
            Activation::Tanh => vector_dispatch(xs, true),
            Activation::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            a => xs.iter_mut().for_each(|v| *v = a.eval(*v)),
        }
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    // Both branches avoid exp overflow.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// tanh as the odd/even rational minimax approximation used by Eigen and MLAS: no branches
/// and no library calls, so loops over slices vectorize. Saturates to ±1 beyond |x| ≈ 7.9.
#[inline(always)]
fn fast_tanh(x: f32) -> f32 {
    const A: [f32; 7] = [
        4.893_524_6e-3,
        6.372_619_3e-4,
        1.485_722_4e-5,
        5.122_297e-8,
        -8.604_672e-11,
        2.000_188e-13,
        -2.760_768_5e-16,
    ];
    const B: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347_1e-4, 1.198_258_4e-6];
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = A[6];
    for &a in A[..6].iter().rev() {
        p = p * x2 + a;
    }
    let q = ((B[3] * x2 + B[2]) * x2 + B[1]) * x2 + B[0];
    x * p / q
}

/// e^x by Cody-Waite range reduction and the Cephes `expf` polynomial (relative error about
/// 1e-7), branch-free so that loops vectorize. Inputs are clamped to the normal range.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn tanh_or_sigmoid(xs: &mut [f32], tanh: bool) {
    if tanh {
        xs.iter_mut().for_each(|v| *v = fast_tanh(*v));
    } else {
        // Via exp rather than tanh(x/2): keeps the relative accuracy of tiny outputs.
        xs.iter_mut().for_each(|v| *v = 1.0 / (1.0 + fast_exp(-*v)));
    }
}

fn vector_dispatch(xs: &mut [f32], tanh: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { tanh_or_sigmoid_avx2(xs, tanh) };
        return;
    }
    tanh_or_sigmoid(xs, tanh);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tanh_or_sigmoid_avx2(xs: &mut [f32], tanh: bool) {
    tanh_or_sigmoid(xs, tanh);
}

// ---------------------------------------------------------------------------------------------
// Op

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
    Rnn,
}

impl Kind {
    /// Gates per direction (rows of W are `gates * H`).
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
            Kind::Rnn => 1,
        }
    }

    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Rnn => &["Tanh"],
        }
    }
}

/// One direction's weights, laid out for the kernels.
#[derive(Clone, Debug)]
struct DirWeights {
    /// `W` transposed: `[in, G·H]`.
    wt: Array2<f32>,
    /// `R` transposed: `[H, G·H]`.
    rt: Array2<f32>,
    /// Bias added to the input projection: `Wb + Rb`, except GRU's `Rbh` with
    /// `linear_before_reset = 1`, which is `rbh` and added inside the reset product.
    xbias: Array1<f32>,
    /// GRU `Rbh` when `linear_before_reset = 1`, else zeros. `[H]`.
    rbh: Array1<f32>,
    /// LSTM peepholes (i, o, f), each `[H]`, when `P` is given.
    peep: Option<[Array1<f32>; 3]>,
    /// `wt` packed for the float kernels.
    wp: PackedB,
    /// The step product's weight, packed: all of `rt`, except for GRU with
    /// `linear_before_reset = 0`, where it is the z and r columns (`[H, 2H]`).
    rp: PackedB,
    /// GRU with `linear_before_reset = 0`: `rt`'s h columns (`[H, H]`), packed.
    rp_h: Option<PackedB>,
}

struct RecurrentOp {
    kind: Kind,
    node_name: String,
    op_type: String,
    hidden: Option<usize>,
    /// `true` per direction that runs backwards.
    reverse: Vec<bool>,
    /// Activations per direction (f, g, h; unused slots are ignored).
    acts: Vec<Vec<Activation>>,
    clip: Option<f32>,
    input_forget: bool,
    linear_before_reset: bool,
    layout: i64,
    /// Weights prepared at build time when W, R, B and P are all constant.
    weights: Option<Vec<DirWeights>>,
}

/// Converts a float input to f32, remembering nothing about the original type.
fn float_input(v: &Value, what: &str, err: &dyn Fn(String) -> Error) -> Result<ArrayD<f32>> {
    let a = match v {
        Value::F32(a) => a.clone(),
        Value::F16(a) => a.mapv(|x| x.to_f32()),
        Value::F64(a) => a.mapv(|x| x as f32),
        other => {
            return Err(err(format!(
                "input {what} has type {:?}, expected a float tensor",
                other.dtype()
            )));
        }
    };
    // The kernels view rows of these arrays as slices.
    Ok(if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    })
}

/// Converts an f32 result back to the element type of the op's `X`.
fn like(a: ArrayD<f32>, proto: &Value) -> Value {
    match proto {
        Value::F16(_) => Value::F16(a.mapv(half::f16::from_f32)),
        Value::F64(_) => Value::F64(a.mapv(f64::from)),
        _ => Value::F32(a),
    }
}

impl RecurrentOp {
    fn build(node: &Node, ctx: &BuildCtx, kind: Kind) -> Result<Self> {
        let direction = node.attr_or::<String>("direction", "forward".into())?;
        let reverse = match direction.as_str() {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            d => return Err(node.error(format!("unknown direction '{d}'"))),
        };
        let d = reverse.len();
        let hidden = match node.attr::<i64>("hidden_size")? {
            Some(h) if h > 0 => Some(h as usize),
            Some(h) => return Err(node.error(format!("hidden_size {h} must be positive"))),
            None => None,
        };
        let names: Vec<String> = match node.attr::<Vec<String>>("activations")? {
            Some(a) if !a.is_empty() => a,
            _ => kind
                .default_activations()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let per_dir = kind.default_activations().len();
        let names: Vec<String> = if names.len() == per_dir && d == 2 {
            // One set given for both directions.
            names.iter().chain(names.iter()).cloned().collect()
        } else if names.len() == per_dir * d {
            names
        } else {
            return Err(node.error(format!(
                "activations lists {} functions, expected {} per direction",
                names.len(),
                per_dir
            )));
        };
        let alphas = node.attr_or::<Vec<f32>>("activation_alpha", vec![])?;
        let betas = node.attr_or::<Vec<f32>>("activation_beta", vec![])?;
        let (mut ai, mut bi) = (alphas.into_iter(), betas.into_iter());
        let mut parsed = Vec::with_capacity(names.len());
        for n in &names {
            parsed.push(
                Activation::parse(n, &mut ai, &mut bi)
                    .ok_or_else(|| node.error(format!("unsupported activation '{n}'")))?,
            );
        }
        let acts = parsed.chunks(per_dir).map(<[_]>::to_vec).collect();
        let clip = match node.attr::<f32>("clip")? {
            Some(c) if c > 0.0 => Some(c),
            Some(c) => return Err(node.error(format!("clip {c} must be positive"))),
            None => None,
        };
        let input_forget = node.attr_or::<i64>("input_forget", 0)? != 0;
        let linear_before_reset = node.attr_or::<i64>("linear_before_reset", 0)? != 0;
        let layout = node.attr_or::<i64>("layout", 0)?;
        if layout != 0 && layout != 1 {
            return Err(node.error(format!("layout {layout} must be 0 or 1")));
        }
        let mut op = RecurrentOp {
            kind,
            node_name: node.display_name().to_string(),
            op_type: node.op_type().to_string(),
            hidden,
            reverse,
            acts,
            clip,
            input_forget,
            linear_before_reset,
            layout,
            weights: None,
        };
        // Prepare the weights once when everything they depend on is constant.
        let c = |i: usize| ctx.const_inputs.get(i).copied().flatten();
        let present = |i: usize| node.input(i).is_some();
        let peep_ok = kind != Kind::Lstm || !present(7) || c(7).is_some();
        if let (Some(w), Some(r)) = (c(1), c(2))
            && (!present(3) || c(3).is_some())
            && peep_ok
        {
            let p = if kind == Kind::Lstm { c(7) } else { None };
            op.weights = Some(op.prepare(w, r, c(3), p)?);
        }
        Ok(op)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Node {
            node: self.node_name.clone(),
            op: self.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn num_dirs(&self) -> usize {
        self.reverse.len()
    }

    /// Checks shapes and lays out W, R, B, P per direction.
    fn prepare(
        &self,
        w: &Value,
        r: &Value,
        b: Option<&Value>,
        p: Option<&Value>,
    ) -> Result<Vec<DirWeights>> {
        let err = |m: String| self.error(m);
        let w = float_input(w, "W", &err)?;
        let r = float_input(r, "R", &err)?;
        let d = self.num_dirs();
        let g = self.kind.gates();
        if r.ndim() != 3 || r.shape()[0] != d {
            return Err(self.error(format!(
                "R has shape {:?}, expected [{d}, {g}*hidden, hidden]",
                r.shape()
            )));
        }
        let h = self.hidden.unwrap_or(r.shape()[2]);
        if r.shape() != [d, g * h, h] {
            return Err(self.error(format!(
                "R has shape {:?}, expected [{d}, {}, {h}]",
                r.shape(),
                g * h
            )));
        }
        if w.ndim() != 3 || w.shape()[0] != d || w.shape()[1] != g * h {
            return Err(self.error(format!(
                "W has shape {:?}, expected [{d}, {}, input_size]",
                w.shape(),
                g * h
            )));
        }
        let b = b.map(|b| float_input(b, "B", &err)).transpose()?;
        if let Some(b) = &b
            && b.shape() != [d, 2 * g * h]
        {
            return Err(self.error(format!(
                "B has shape {:?}, expected [{d}, {}]",
                b.shape(),
                2 * g * h
            )));
        }
        let p = p.map(|p| float_input(p, "P", &err)).transpose()?;
        if let Some(p) = &p
            && p.shape() != [d, 3 * h]
        {
            return Err(self.error(format!(
                "P has shape {:?}, expected [{d}, {}]",
                p.shape(),
                3 * h
            )));
        }
        let gh = g * h;
        let mut out = Vec::with_capacity(d);
        for di in 0..d {
            let wt = w
                .index_axis(Axis(0), di)
                .t()
                .as_standard_layout()
                .into_owned();
            let rt = r
                .index_axis(Axis(0), di)
                .t()
                .as_standard_layout()
                .into_owned();
            let wt = wt
                .into_dimensionality()
                .map_err(|e| self.error(e.to_string()))?;
            let rt = rt
                .into_dimensionality()
                .map_err(|e| self.error(e.to_string()))?;
            let mut xbias = Array1::<f32>::zeros(gh);
            let mut rbh = Array1::<f32>::zeros(h);
            if let Some(b) = &b {
                let row = b.index_axis(Axis(0), di);
                let (wb, rb) = (row.slice(s![..gh]), row.slice(s![gh..]));
                xbias.assign(&wb);
                if self.kind == Kind::Gru && self.linear_before_reset {
                    xbias
                        .slice_mut(s![..2 * h])
                        .scaled_add(1.0, &rb.slice(s![..2 * h]));
                    rbh.assign(&rb.slice(s![2 * h..]));
                } else {
                    xbias.scaled_add(1.0, &rb);
                }
            }
            let peep = p.as_ref().map(|p| {
                let row = p.index_axis(Axis(0), di);
                [0, 1, 2].map(|k| row.slice(s![k * h..(k + 1) * h]).to_owned())
            });
            let wp = PackedB::new(&wt.view());
            let split_gru = self.kind == Kind::Gru && !self.linear_before_reset;
            let (rp, rp_h) = if split_gru {
                (
                    PackedB::new(&rt.slice(s![.., ..2 * h])),
                    Some(PackedB::new(&rt.slice(s![.., 2 * h..]))),
                )
            } else {
                (PackedB::new(&rt.view()), None)
            };
            out.push(DirWeights {
                wt,
                rt,
                xbias,
                rbh,
                peep,
                wp,
                rp,
                rp_h,
            });
        }
        Ok(out)
    }

    fn run_f32(&self, inputs: &[Option<&Value>]) -> Result<Vec<ArrayD<f32>>> {
        let err = |m: String| self.error(m);
        let get = |i: usize| inputs.get(i).copied().flatten();
        let x = get(0).ok_or_else(|| self.error("missing input X"))?;
        let mut x = float_input(x, "X", &err)?;
        if x.ndim() != 3 {
            return Err(self.error(format!("X has shape {:?}, expected rank 3", x.shape())));
        }
        if self.layout == 1 {
            x = x
                .permuted_axes(IxDyn(&[1, 0, 2]))
                .as_standard_layout()
                .into_owned();
        }
        let x: Array3<f32> = x
            .into_dimensionality()
            .map_err(|e| self.error(e.to_string()))?;
        let (seq, batch, input) = x.dim();

        let prepared;
        let weights = match &self.weights {
            Some(w) => w,
            None => {
                let w = get(1).ok_or_else(|| self.error("missing input W"))?;
                let r = get(2).ok_or_else(|| self.error("missing input R"))?;
                let p = if self.kind == Kind::Lstm {
                    get(7)
                } else {
                    None
                };
                prepared = self.prepare(w, r, get(3), p)?;
                &prepared
            }
        };
        let d = self.num_dirs();
        let h = weights[0].rt.nrows();
        if weights[0].wt.nrows() != input {
            return Err(self.error(format!(
                "X has input size {input} but W expects {}",
                weights[0].wt.nrows()
            )));
        }

        let lens: Vec<usize> = match get(4) {
            None => vec![seq; batch],
            Some(v) => {
                let l: Vec<i64> = match v {
                    Value::I32(a) => a.iter().map(|&x| x as i64).collect(),
                    Value::I64(a) => a.iter().copied().collect(),
                    _ => return Err(self.error("sequence_lens must be int32")),
                };
                if l.len() != batch {
                    return Err(self.error(format!(
                        "sequence_lens has {} entries for batch size {batch}",
                        l.len()
                    )));
                }
                l.iter()
                    .map(|&n| {
                        usize::try_from(n)
                            .ok()
                            .filter(|&n| n <= seq)
                            .ok_or_else(|| {
                                self.error(format!("sequence length {n} is outside [0, {seq}]"))
                            })
                    })
                    .collect::<Result<_>>()?
            }
        };

        let initial = |i: usize, what: &str| -> Result<Option<Array3<f32>>> {
            let Some(v) = get(i) else { return Ok(None) };
            let mut a = float_input(v, what, &err)?;
            let want = if self.layout == 1 {
                [batch, d, h]
            } else {
                [d, batch, h]
            };
            if a.shape() != want {
                return Err(self.error(format!(
                    "{what} has shape {:?}, expected {want:?}",
                    a.shape()
                )));
            }
            if self.layout == 1 {
                a = a
                    .permuted_axes(IxDyn(&[1, 0, 2]))
                    .as_standard_layout()
                    .into_owned();
            }
            a.into_dimensionality()
                .map(Some)
                .map_err(|e| self.error(e.to_string()))
        };
        let h0 = initial(5, "initial_h")?;
        let c0 = if self.kind == Kind::Lstm {
            initial(6, "initial_c")?
        } else {
            None
        };

        let x2 = x
            .view()
            .into_shape_with_order((seq * batch, input))
            .map_err(|e| self.error(e.to_string()))?;
        let run_dir = |di: usize| {
            let zeros = || Array2::<f32>::zeros((batch, h));
            let state = Steps {
                x: x2,
                seq,
                batch,
                h,
                lens: &lens,
                reverse: self.reverse[di],
                w: &weights[di],
                acts: &self.acts[di],
                clip: self.clip,
            };
            let h0 = h0
                .as_ref()
                .map_or_else(zeros, |a| a.index_axis(Axis(0), di).to_owned());
            let c0 = c0
                .as_ref()
                .map_or_else(zeros, |a| a.index_axis(Axis(0), di).to_owned());
            match self.kind {
                Kind::Lstm => state.lstm(h0, c0, self.input_forget),
                Kind::Gru => state.gru(h0, self.linear_before_reset),
                Kind::Rnn => state.rnn(h0),
            }
        };
        let per_dir: Vec<DirOut> = if d == 2 && seq * batch * h >= 4096 {
            (0..d).into_par_iter().map(run_dir).collect()
        } else {
            (0..d).map(run_dir).collect()
        };

        // Assemble [seq, D, batch, H], [D, batch, H] and permute for layout 1.
        let mut y = ArrayD::<f32>::zeros(IxDyn(&[seq, d, batch, h]));
        let mut yh = ArrayD::<f32>::zeros(IxDyn(&[d, batch, h]));
        let mut yc = ArrayD::<f32>::zeros(IxDyn(&[d, batch, h]));
        for (di, mut o) in per_dir.into_iter().enumerate() {
            // A row of length 0 never ran: its final state is zero, not the initial state
            // (as onnxruntime does).
            for (b, _) in lens.iter().enumerate().filter(|(_, l)| **l == 0) {
                o.h.row_mut(b).fill(0.0);
                o.c.row_mut(b).fill(0.0);
            }
            y.index_axis_mut(Axis(1), di).assign(&o.y);
            yh.index_axis_mut(Axis(0), di).assign(&o.h);
            yc.index_axis_mut(Axis(0), di).assign(&o.c);
        }
        if self.layout == 1 {
            y = y
                .permuted_axes(IxDyn(&[2, 0, 1, 3]))
                .as_standard_layout()
                .into_owned();
            yh = yh
                .permuted_axes(IxDyn(&[1, 0, 2]))
                .as_standard_layout()
                .into_owned();
            yc = yc
                .permuted_axes(IxDyn(&[1, 0, 2]))
                .as_standard_layout()
                .into_owned();
        }
        let mut outs = vec![y, yh];
        if self.kind == Kind::Lstm {
            outs.push(yc);
        }
        Ok(outs)
    }
}

impl Op for RecurrentOp {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = inputs
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| self.error("missing input X"))?;
        Ok(self
            .run_f32(inputs)?
            .into_iter()
            .map(|a| like(a, x))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Time loop

/// `out = a · b` for the per-step recurrence, `a [batch, H]`, `b` packed `[H, cols]`, `out`
/// `[batch, cols]` (owned, standard layout).
fn recurrent_product(a: &Array2<f32>, b: &PackedB, out: &mut Array2<f32>) {
    let n = b.n();
    let o = out
        .as_slice_mut()
        .expect("the step buffers are owned standard-layout arrays");
    gemm_packed(&a.view(), b, &Epilogue::NONE, o, n);
}

/// Everything one direction's time loop reads.
struct Steps<'a> {
    /// X as `[seq·batch, in]` (step-major).
    x: ArrayView2<'a, f32>,
    seq: usize,
    batch: usize,
    h: usize,
    lens: &'a [usize],
    reverse: bool,
    w: &'a DirWeights,
    acts: &'a [Activation],
    clip: Option<f32>,
}

/// One direction's results: `y [seq, batch, H]`, final hidden and cell state `[batch, H]`.
struct DirOut {
    y: Array3<f32>,
    h: Array2<f32>,
    c: Array2<f32>,
}

impl Steps<'_> {
    /// `X·Wᵀ + bias` for all steps at once: `[seq·batch, G·H]`.
    fn project_input(&self) -> Array2<f32> {
        let (rows, n) = (self.seq * self.batch, self.w.wp.n());
        // The kernel writes every element (the buffer may be a recycled one).
        let mut xw = Array2::from_shape_vec((rows, n), output_buffer(rows * n))
            .expect("the buffer has rows * n floats");
        let epi = Epilogue {
            bias: self.w.xbias.as_slice(),
            act: Act::None,
        };
        let out = xw
            .as_slice_mut()
            .expect("a new array is in standard layout");
        gemm_packed(&self.x, &self.w.wp, &epi, out, n);
        xw
    }

    /// The time index a batch row works on at `step`, or `None` when the row is done.
    #[inline]
    fn time(&self, step: usize, b: usize) -> Option<usize> {
        let len = self.lens[b];
        (step < len).then(|| if self.reverse { len - 1 - step } else { step })
    }

    #[inline]
    fn clip(&self, xs: &mut [f32]) {
        if let Some(c) = self.clip {
            xs.iter_mut().for_each(|v| *v = v.clamp(-c, c));
        }
    }

    fn lstm(&self, mut hs: Array2<f32>, mut cs: Array2<f32>, input_forget: bool) -> DirOut {
        let h = self.h;
        let xw = self.project_input();
        let mut y = Array3::<f32>::zeros((self.seq, self.batch, h));
        let mut hr = Array2::<f32>::zeros((self.batch, 4 * h));
        let mut gates = vec![0f32; 4 * h];
        let (f, g, hf) = (self.acts[0], self.acts[1], self.acts[2]);
        for step in 0..self.seq {
            recurrent_product(&hs, &self.w.rp, &mut hr);
            for b in 0..self.batch {
                let Some(t) = self.time(step, b) else {
                    continue;
                };
                let xrow = xw.row(t * self.batch + b);
                let (xrow, hrow) = (xrow.as_slice().unwrap(), hr.row(b));
                let hrow = hrow.as_slice().unwrap();
                for (k, v) in gates.iter_mut().enumerate() {
                    *v = xrow[k] + hrow[k];
                }
                let mut c_row = cs.row_mut(b);
                let c_prev = c_row.as_slice_mut().unwrap();
                let (gi, rest) = gates.split_at_mut(h);
                let (go, rest) = rest.split_at_mut(h);
                let (gf, gc) = rest.split_at_mut(h);
                if let Some([pi, _, pf]) = &self.w.peep {
                    for j in 0..h {
                        gi[j] += pi[j] * c_prev[j];
                        gf[j] += pf[j] * c_prev[j];
                    }
                }
                self.clip(gi);
                f.apply(gi);
                if input_forget {
                    for j in 0..h {
                        gf[j] = 1.0 - gi[j];
                    }
                } else {
                    self.clip(gf);
                    f.apply(gf);
                }
                self.clip(gc);
                g.apply(gc);
                for j in 0..h {
                    c_prev[j] = gf[j] * c_prev[j] + gi[j] * gc[j];
                }
                if let Some([_, po, _]) = &self.w.peep {
                    for j in 0..h {
                        go[j] += po[j] * c_prev[j];
                    }
                }
                self.clip(go);
                f.apply(go);
                // gc is free now: reuse it for h(Ct).
                gc.copy_from_slice(c_prev);
                hf.apply(gc);
                let mut h_row = hs.row_mut(b);
                let h_row = h_row.as_slice_mut().unwrap();
                for j in 0..h {
                    h_row[j] = go[j] * gc[j];
                }
                y.slice_mut(s![t, b, ..])
                    .as_slice_mut()
                    .unwrap()
                    .copy_from_slice(h_row);
            }
        }
        recycle(xw.into_raw_vec_and_offset().0);
        DirOut { y, h: hs, c: cs }
    }

    fn gru(&self, mut hs: Array2<f32>, linear_before_reset: bool) -> DirOut {
        let h = self.h;
        let xw = self.project_input();
        let mut y = Array3::<f32>::zeros((self.seq, self.batch, h));
        let (f, g) = (self.acts[0], self.acts[1]);
        // With linear_before_reset the whole `Ht-1·Rᵀ` is one product; otherwise the candidate
        // needs `(r ⊙ Ht-1)·Rhᵀ`, a second product after the gates.
        let cols = self.w.rp.n();
        let mut hr = Array2::<f32>::zeros((self.batch, cols));
        let mut zr = Array2::<f32>::zeros((self.batch, 2 * h));
        let mut rh = Array2::<f32>::zeros((self.batch, h));
        let mut rh_r = Array2::<f32>::zeros((self.batch, h));
        let mut cand = vec![0f32; h];
        for step in 0..self.seq {
            recurrent_product(&hs, &self.w.rp, &mut hr);
            for b in 0..self.batch {
                let Some(t) = self.time(step, b) else {
                    continue;
                };
                let xrow = xw.row(t * self.batch + b);
                let xrow = xrow.as_slice().unwrap();
                let mut zr_row = zr.row_mut(b);
                let zr_row = zr_row.as_slice_mut().unwrap();
                let hrow = hr.row(b);
                let hrow = hrow.as_slice().unwrap();
                for k in 0..2 * h {
                    zr_row[k] = xrow[k] + hrow[k];
                }
                self.clip(zr_row);
                f.apply(zr_row);
                if !linear_before_reset {
                    let hprev = hs.row(b);
                    let mut rh_row = rh.row_mut(b);
                    for j in 0..h {
                        rh_row[j] = zr_row[h + j] * hprev[j];
                    }
                }
            }
            if let Some(rp_h) = &self.w.rp_h {
                recurrent_product(&rh, rp_h, &mut rh_r);
            }
            for b in 0..self.batch {
                let Some(t) = self.time(step, b) else {
                    continue;
                };
                let xrow = xw.row(t * self.batch + b);
                let xrow = xrow.as_slice().unwrap();
                let zr_row = zr.row(b);
                let zr_row = zr_row.as_slice().unwrap();
                if linear_before_reset {
                    let hrow = hr.row(b);
                    let hrow = hrow.as_slice().unwrap();
                    for j in 0..h {
                        cand[j] =
                            xrow[2 * h + j] + zr_row[h + j] * (hrow[2 * h + j] + self.w.rbh[j]);
                    }
                } else {
                    let r = rh_r.row(b);
                    for j in 0..h {
                        cand[j] = xrow[2 * h + j] + r[j];
                    }
                }
                self.clip(&mut cand);
                g.apply(&mut cand);
                let mut h_row = hs.row_mut(b);
                let h_row = h_row.as_slice_mut().unwrap();
                for j in 0..h {
                    let z = zr_row[j];
                    h_row[j] = (1.0 - z) * cand[j] + z * h_row[j];
                }
                y.slice_mut(s![t, b, ..])
                    .as_slice_mut()
                    .unwrap()
                    .copy_from_slice(h_row);
            }
        }
        recycle(xw.into_raw_vec_and_offset().0);
        let c = Array2::zeros((self.batch, h));
        DirOut { y, h: hs, c }
    }

    fn rnn(&self, mut hs: Array2<f32>) -> DirOut {
        let h = self.h;
        let xw = self.project_input();
        let mut y = Array3::<f32>::zeros((self.seq, self.batch, h));
        let mut hr = Array2::<f32>::zeros((self.batch, h));
        let f = self.acts[0];
        for step in 0..self.seq {
            recurrent_product(&hs, &self.w.rp, &mut hr);
            for b in 0..self.batch {
                let Some(t) = self.time(step, b) else {
                    continue;
                };
                let xrow = xw.row(t * self.batch + b);
                let mut h_row = hs.row_mut(b);
                let h_row = h_row.as_slice_mut().unwrap();
                let hrow = hr.row(b);
                for j in 0..h {
                    h_row[j] = xrow[j] + hrow[j];
                }
                self.clip(h_row);
                f.apply(h_row);
                y.slice_mut(s![t, b, ..])
                    .as_slice_mut()
                    .unwrap()
                    .copy_from_slice(h_row);
            }
        }
        recycle(xw.into_raw_vec_and_offset().0);
        let c = Array2::zeros((self.batch, h));
        DirOut { y, h: hs, c }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_float, attr_floats, attr_int, attr_string, attr_strings};
    use ndarray::ArrayD;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn arr(shape: &[usize], seed: u64) -> Value {
        let n = shape.iter().product();
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), values(n, seed)).unwrap())
    }

    fn node(op: &str, n_inputs: usize) -> Node {
        let inputs = [
            "X",
            "W",
            "R",
            "B",
            "sequence_lens",
            "initial_h",
            "initial_c",
            "P",
        ];
        Node::new(
            "cell",
            op,
            "",
            inputs[..n_inputs].iter().map(|s| s.to_string()).collect(),
            vec!["Y".into(), "Y_h".into(), "Y_c".into()],
        )
    }

    fn build(n: &Node, consts: Vec<Option<&Value>>) -> Result<Box<dyn Op>> {
        let mut r = Registry::default();
        register(&mut r);
        let b = r.get("", n.op_type()).expect("registered");
        b(
            n,
            &BuildCtx {
                opset: 22,
                const_inputs: consts,
            },
        )
    }

    #[test]
    fn recurrent_product_matches_gemm() {
        for m in [1, 2, 3, 4, 5, 7, 10, 16, 17] {
            for (k, n, full) in [(5, 20, 30), (37, 70, 70), (64, 96, 160)] {
                let a = Array2::from_shape_vec((m, k), values(m * k, m as u64)).unwrap();
                let b = Array2::from_shape_vec((k, full), values(k * full, 99)).unwrap();
                // A column slice, like GRU's z/r block of R.
                let bv = b.slice(s![.., ..n]);
                let mut got = Array2::<f32>::from_elem((m, n), f32::NAN);
                recurrent_product(&a, &PackedB::new(&bv), &mut got);
                let mut want = Array2::<f32>::zeros((m, n));
                ndarray::linalg::general_mat_mul(1.0, &a, &bv, 0.0, &mut want);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "m {m} k {k} n {n}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn activation_parameters_are_consumed_in_order() {
        let mut a = [0.1f32, 0.3].into_iter();
        let mut b = [0.6f32].into_iter();
        let got: Vec<_> = ["LeakyRelu", "Tanh", "hardsigmoid", "Elu"]
            .iter()
            .map(|n| Activation::parse(n, &mut a, &mut b).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                Activation::LeakyRelu { alpha: 0.1 },
                Activation::Tanh,
                Activation::HardSigmoid {
                    alpha: 0.3,
                    beta: 0.6
                },
                // Ran out of alphas: the operator default.
                Activation::Elu { alpha: 1.0 },
            ]
        );
        assert!(Activation::parse("Swish", &mut a, &mut b).is_none());
    }

    #[test]
    fn activations_match_closed_forms_and_do_not_overflow() {
        for x in [-100.0f32, -3.0, -0.5, 0.0, 0.7, 4.0, 100.0] {
            let sig = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((Activation::Sigmoid.eval(x) as f64 - sig).abs() < 1e-6);
            let sp = (1.0 + (x as f64).exp()).ln();
            assert!((Activation::Softplus.eval(x) as f64 - sp).abs() < 1e-5 * sp.max(1.0));
            let hs = Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            };
            assert_eq!(hs.eval(x), (0.2 * x + 0.5).clamp(0.0, 1.0));
            let st = Activation::ScaledTanh {
                alpha: 2.0,
                beta: 0.5,
            };
            assert!((st.eval(x) - 2.0 * (0.5 * x).tanh()).abs() < 1e-6);
            assert!(Activation::Sigmoid.eval(x).is_finite());
        }
        // The slice forms (rational approximations) against f64 references.
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.005).collect();
        let (mut t, mut g) = (xs.clone(), xs.clone());
        Activation::Tanh.apply(&mut t);
        Activation::Sigmoid.apply(&mut g);
        for ((x, t), g) in xs.iter().zip(&t).zip(&g) {
            let x = *x as f64;
            assert!((*t as f64 - x.tanh()).abs() < 1e-6, "tanh({x}) = {t}");
            let sg = 1.0 / (1.0 + (-x).exp());
            assert!(
                (*g as f64 - sg).abs() < 1e-6 * sg.max(1e-3),
                "sigmoid({x}) = {g}"
            );
        }
        let mut big = [-1e30f32, -50.0, 50.0, 1e30];
        Activation::Tanh.apply(&mut big);
        assert_eq!(big, [-1.0, -1.0, 1.0, 1.0]);
        let mut big = [-1e30f32, -100.0, 100.0, 1e30];
        Activation::Sigmoid.apply(&mut big);
        assert!(big[0] >= 0.0 && big[0] < 1e-37 && big[1] < 1e-37);
        assert!(big[2] == 1.0 && big[3] == 1.0);
        assert_eq!(Activation::ThresholdedRelu { alpha: 1.0 }.eval(1.0), 0.0);
        assert_eq!(Activation::ThresholdedRelu { alpha: 1.0 }.eval(1.5), 1.5);
    }

    /// Constant (prepared at build) and runtime weights give identical results, and f64/f16
    /// inputs are computed like f32.
    #[test]
    fn const_and_dynamic_weights_agree_across_types() {
        let (seq, batch, inp, h) = (4, 2, 3, 5);
        let x = arr(&[seq, batch, inp], 1);
        let w = arr(&[2, 4 * h, inp], 2);
        let r = arr(&[2, 4 * h, h], 3);
        let b = arr(&[2, 8 * h], 4);
        let n = node("LSTM", 4)
            .with_attr(attr_int("hidden_size", h as i64))
            .with_attr(attr_string("direction", "bidirectional"));
        let inputs = [Some(&x), Some(&w), Some(&r), Some(&b)];
        let dynamic = build(&n, vec![None; 4]).unwrap().run(&inputs).unwrap();
        let prepared = build(&n, vec![None, Some(&w), Some(&r), Some(&b)])
            .unwrap()
            .run(&inputs)
            .unwrap();
        assert_eq!(dynamic, prepared);
        assert_eq!(dynamic[0].shape(), &[seq, 2, batch, h]);
        assert_eq!(dynamic.len(), 3);

        let x64 = Value::F64(x.as_f32().unwrap().mapv(f64::from));
        let out64 = build(&n, vec![None; 4])
            .unwrap()
            .run(&[Some(&x64), Some(&w), Some(&r), Some(&b)])
            .unwrap();
        let y64 = out64[0].as_f64().expect("f64 output for f64 X");
        let y32 = dynamic[0].as_f32().unwrap();
        for (a, b) in y64.iter().zip(y32) {
            assert!((*a as f32 - b).abs() < 1e-6);
        }
    }

    /// A reversed row processes its own last valid step first; steps past it stay zero.
    #[test]
    fn reverse_with_sequence_lens_matches_a_truncated_sequence() {
        let (seq, inp, h) = (5, 2, 3);
        let x = arr(&[seq, 1, inp], 11);
        let w = arr(&[1, h, inp], 12);
        let r = arr(&[1, h, h], 13);
        let n = node("RNN", 5)
            .with_attr(attr_int("hidden_size", h as i64))
            .with_attr(attr_string("direction", "reverse"));
        let op = build(&n, vec![None; 5]).unwrap();
        let lens = Value::I32(ArrayD::from_elem(IxDyn(&[1]), 3));
        let full = op
            .run(&[Some(&x), Some(&w), Some(&r), None, Some(&lens)])
            .unwrap();
        let x3 = Value::F32(
            x.as_f32()
                .unwrap()
                .slice(s![..3, .., ..])
                .to_owned()
                .into_dyn(),
        );
        let short = op.run(&[Some(&x3), Some(&w), Some(&r)]).unwrap();
        let (yf, ys) = (full[0].as_f32().unwrap(), short[0].as_f32().unwrap());
        // The masked run multiplies one row at a time, the short run the whole batch: the
        // kernels may sum in another order, so agreement is to rounding, not to the bit.
        let close = |a: &f32, b: &f32| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
        let head = yf.slice(s![..3, .., .., ..]);
        assert_eq!(head.shape(), ys.shape());
        assert!(head.iter().zip(ys.iter()).all(|(a, b)| close(a, b)));
        assert!(yf.slice(s![3.., .., .., ..]).iter().all(|&v| v == 0.0));
        let (hf, hs) = (full[1].as_f32().unwrap(), short[1].as_f32().unwrap());
        assert_eq!(hf.shape(), hs.shape());
        assert!(hf.iter().zip(hs.iter()).all(|(a, b)| close(a, b)));
    }

    #[test]
    fn gru_with_identity_gates_keeps_the_state() {
        // z = 1 everywhere (huge update-gate bias) means Ht = Ht-1.
        let (seq, batch, inp, h) = (3, 2, 2, 2);
        let x = arr(&[seq, batch, inp], 21);
        let w = arr(&[1, 3 * h, inp], 22);
        let r = arr(&[1, 3 * h, h], 23);
        let mut bv = vec![0f32; 6 * h];
        bv[..h].fill(100.0);
        let b = Value::F32(ArrayD::from_shape_vec(IxDyn(&[1, 6 * h]), bv).unwrap());
        let h0 = arr(&[1, batch, h], 24);
        let n = node("GRU", 6).with_attr(attr_int("linear_before_reset", 1));
        let out = build(&n, vec![None; 6])
            .unwrap()
            .run(&[Some(&x), Some(&w), Some(&r), Some(&b), None, Some(&h0)])
            .unwrap();
        assert_eq!(out.len(), 2);
        for (a, b) in out[1].as_f32().unwrap().iter().zip(h0.as_f32().unwrap()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_node() {
        let h = 2;
        let x = arr(&[3, 1, 2], 31);
        let w = arr(&[1, 4 * h, 2], 32);
        let r = arr(&[1, 4 * h, h], 33);
        let n = node("LSTM", 5).with_attr(attr_int("hidden_size", h as i64));
        let op = build(&n, vec![None; 5]).unwrap();
        let bad_w = arr(&[1, 3 * h, 2], 34);
        let e = op.run(&[Some(&x), Some(&bad_w), Some(&r)]).unwrap_err();
        assert!(
            e.to_string().contains("'cell'") && e.to_string().contains("W"),
            "{e}"
        );
        let lens = Value::I32(ArrayD::from_elem(IxDyn(&[1]), 4));
        let e = op
            .run(&[Some(&x), Some(&w), Some(&r), None, Some(&lens)])
            .unwrap_err();
        assert!(e.to_string().contains("sequence length 4"), "{e}");
        let bad_x = arr(&[3, 1, 5], 35);
        assert!(op.run(&[Some(&bad_x), Some(&w), Some(&r)]).is_err());
        assert!(op.run(&[Some(&x)]).is_err());

        // Empty sequences and batches run and give empty or zero outputs.
        for (seq, batch) in [(0, 1), (3, 0)] {
            let xe = arr(&[seq, batch, 2], 36);
            let out = op.run(&[Some(&xe), Some(&w), Some(&r)]).unwrap();
            assert_eq!(out[0].shape(), &[seq, 1, batch, h]);
            assert!(out[1].as_f32().unwrap().iter().all(|&v| v == 0.0));
        }

        let n =
            node("LSTM", 3).with_attr(attr_strings("activations", &["Sigmoid", "Nope", "Tanh"]));
        assert!(build(&n, vec![None; 3]).is_err());
        let n = node("RNN", 3).with_attr(attr_float("clip", -1.0));
        assert!(build(&n, vec![None; 3]).is_err());
        let n = node("RNN", 3)
            .with_attr(attr_strings("activations", &["Affine"]))
            .with_attr(attr_floats("activation_alpha", vec![2.0]));
        assert!(build(&n, vec![None; 3]).is_ok());
    }
}
