//! com.microsoft `DynamicQuantizeLSTM` (domain version 1), computed as onnxruntime's CPU kernel
//! computes it, so that our outputs on a quantized file match onnxruntime's on the same file.
//!
//! # Interface
//! Inputs: `X [seq, batch, in]` f32; `W [D, in, 4H]` and `R [D, H, 4H]` int8 or uint8 (the
//! transposes of ONNX LSTM's `[D, 4H, in]` / `[D, 4H, H]`); optional `B [D, 8H]` (Wb then Rb),
//! `sequence_lens [batch]` int32, `initial_h`, `initial_c [D, batch, H]`, `P [D, 3H]`
//! (peepholes i, o, f); then `W_scale`, `W_zero_point`, `R_scale`, `R_zero_point`, each `[D]`
//! (per direction) or `[D, 4H]` (per gate row), zero points of W's / R's type. Attributes: those
//! of ONNX LSTM minus `layout` (`hidden_size` required). Outputs `Y [seq, D, batch, H]`,
//! `Y_h`, `Y_c [D, batch, H]`. Gate order i, o, f, c as in ONNX.
//!
//! # How onnxruntime computes it (what this file reproduces)
//! Read from onnxruntime's sources: `contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc`,
//! `providers/cpu/rnn/lstm_base.{h,cc}`, `uni_directional_lstm.cc`, `rnn_helpers.{h,cc}`
//! (`ComputeGemm` for `GemmWeights<uint8_t>`, `deepcpu::*`), `util/qmath.h`
//! (`GetQuantizationParameter`), and MLAS `quantize.cpp`, `logistic.cpp`/`tanh.cpp` with
//! `x86_64/LogisticKernelFma3.S`/`TanhKernelFma3.S`.
//! - **Weights**: only the *first* zero point of a direction is used (`ComputeGemm` reads
//!   `*zero_point`); per-row zero points must be all 0 (int8) or all equal (uint8), else the
//!   kernel errors, and so do we. Scales are per direction or per gate row.
//! - **X is quantized once per direction, per tensor, uint8**, over the first
//!   `max(sequence_lens) · batch` rows (all of X without `sequence_lens`): the input
//!   projection of all steps is one GEMM. `min`/`max` are widened to include 0,
//!   `scale = (max - min) / 255` (1 when `max == min`),
//!   `zp = round_half_even(clamp(-min / scale, 0, 255))`,
//!   `q = round_half_even(clamp(x / scale, -zp, 255 - zp)) + zp` (a true division). The reverse
//!   direction reverses each row within its length first, which quantizes the same values.
//! - **h is quantized at every step, per tensor, uint8**, the same way, over the whole
//!   `[batch, H]` previous state: the initial state at step 0, then the previous step's
//!   outputs. Rows already past their length are zero there when `Y` is an output (onnxruntime
//!   zeroes their outputs) and keep their last state when it is not (the state then lives in
//!   `Y_h`'s buffer). (With several threads onnxruntime splits the batch into chunks that each
//!   quantize their own rows; we match its single-threaded result.)
//! - **Products**: `f32(acc) * (x_scale * w_scale[n])` for the projection, then
//!   `gates += f32(acc) * (h_scale * r_scale[n])` per step (multiply, then add; no FMA).
//! - **Gates**, per row still running: `i += Ct-1 ⊙ Pi` (peephole), then `i = clamp(i + (Wbi +
//!   Rbi), -clip, clip)` (the bias is added here, after the products; clip defaults to
//!   `f32::MAX`), `i = f(i)`; `f` likewise with `Pf` (or `f = 1 - i` with `input_forget`);
//!   `c = g(clamp(c + bias))`; `Ct = Ct-1·f + i·c`; `o += Ct ⊙ Po`, `o = f(clamp(o + bias))`;
//!   `Ht = h(Ct) · o` (no clip before h).
//! - **Activations**: sigmoid and tanh are MLAS's rational approximations as dispatched on an
//!   x86-64 FMA3 machine (fused multiply-adds; sigmoid clamps its input to ±18 and its output
//!   below at 0, tanh its input to ±9): [`mlas_logistic`], [`mlas_tanh`]. The others use the
//!   float LSTM's [`Activation`] formulas.
//! - `sequence_lens`: rows past their length output zeros in `Y`; `Y_h`/`Y_c` hold the state at
//!   the row's last step, zeros for a row of length 0.
//!
//! - A row of length 0 when `Y` is not an output: onnxruntime's next steps then read that row
//!   from an output buffer it never wrote; we use the initial state there (the row's own
//!   outputs are zeros either way, only the shared h scale of the other rows can differ).
//!
//! # Execution
//! W and R are packed once at plan time ([`PackedB`]) when constant. Per direction: one int8
//! GEMM ([`gemm_u8i8_f32`]) for the input projection of all steps (into a buffer the op keeps
//! between runs), and per step one `[batch, H] x [H, 4H]` int8 GEMM for the recurrence, with
//! the scales applied in the GEMM's epilogue; quantization and gate math are vectorized
//! (AVX2/FMA when the CPU has them, else the same arithmetic in scalar code, same results).
//! Results are written straight into `Y`, `Y_h`, `Y_c`.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::{Epilogue, PackedB, gemm_u8i8_f32};
// The MLAS activations live with the other elementwise kernels; re-exported for the tests
// that check them against onnxruntime.
pub use crate::runtime::kernels::activation::{mlas_logistic, mlas_tanh};

use super::rnn::Activation;
use super::util::{dname, err, opt, req};
use super::{BuildCtx, Op, Registry};

pub fn register(r: &mut Registry) {
    r.register("com.microsoft", "DynamicQuantizeLSTM", build);
}

// ---------------------------------------------------------------------------------------------
// MLAS quantization (the activations are in `kernels::activation`)

/// Round half to even for `|v| < 2^22` in the default rounding mode (adding and removing
/// 1.5·2^23 leaves no fraction bits), branch-free so loops vectorize.
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// onnxruntime's `GetQuantizationParameter<uint8_t>` (util/qmath.h) for data in `[min, max]`:
/// `(scale, zero point)`.
fn quant_params(min: f32, max: f32) -> (f32, u8) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = if max == min { 1.0 } else { (max - min) / 255.0 };
    let zp = (0.0 - min / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    // Eight lanes so the loop vectorizes; min/max are exact, so the order does not matter.
    let mut lo = [f32::MAX; 8];
    let mut hi = [f32::MIN; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
    }
    for (k, &v) in rest.iter().enumerate() {
        lo[k] = lo[k].min(v);
        hi[k] = hi[k].max(v);
    }
    (
        lo.iter().copied().fold(f32::MAX, f32::min),
        hi.iter().copied().fold(f32::MIN, f32::max),
    )
}

/// MLAS `MlasQuantizeLinear` to uint8: `round_even(clamp(x / scale, -zp, 255 - zp)) + zp`.
#[inline(always)]
fn quantize_into(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    let z = f32::from(zp);
    let (lo, hi) = (-z, 255.0 - z);
    for (o, &v) in out.iter_mut().zip(x) {
        // max/min in this order map NaN to `lo` as MLAS's maxps/minps do.
        let q = (v / scale).max(lo).min(hi);
        *o = (round_even_small(q) + z) as u8;
    }
}

/// Quantizes `x` (per tensor, uint8) into `out`: returns (scale, zero point).
fn quantize(x: &[f32], out: &mut [u8]) -> (f32, u8) {
    let (lo, hi) = min_max(x);
    let (scale, zp) = quant_params(lo, hi);
    quantize_dispatch(x, scale, zp, out);
    (scale, zp)
}

fn quantize_dispatch(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        unsafe { quantize_avx2(x, scale, zp, out) };
        return;
    }
    quantize_into(x, scale, zp, out);
}

/// [`quantize_into`] eight values at a time, as MLAS's kernel does it: `vdivps`, clamp with
/// `vmaxps`/`vminps` (NaN becomes the lower bound), `vcvtps2dq` (round half to even in the
/// default rounding mode), add the zero point.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len());
    let body = n / 8 * 8;
    let z = f32::from(zp);
    let vs = _mm256_set1_ps(scale);
    let vlo = _mm256_set1_ps(-z);
    let vhi = _mm256_set1_ps(255.0 - z);
    let vz = _mm256_set1_epi32(i32::from(zp));
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= n <= x.len(); unaligned load.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        let q = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, vs), vlo), vhi);
        let q = _mm256_add_epi32(_mm256_cvtps_epi32(q), vz);
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds 8 i32; unaligned store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), q) };
        for (o, &l) in out[i..i + 8].iter_mut().zip(&lanes) {
            // In 0..=255 by the clamp.
            *o = l as u8;
        }
        i += 8;
    }
    quantize_into(&x[body..n], scale, zp, &mut out[body..n]);
}

// ---------------------------------------------------------------------------------------------
// Activations

/// A gate activation: MLAS's sigmoid/tanh, or the float LSTM's formula for the others.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Sigmoid,
    Tanh,
    Other(Activation),
}

impl Act {
    fn from(a: Activation) -> Self {
        match a {
            Activation::Sigmoid => Act::Sigmoid,
            Activation::Tanh => Act::Tanh,
            a => Act::Other(a),
        }
    }

    #[inline(always)]
    fn apply(self, xs: &mut [f32]) {
        match self {
            Act::Sigmoid => xs.iter_mut().for_each(|v| *v = mlas_logistic(*v)),
            Act::Tanh => xs.iter_mut().for_each(|v| *v = mlas_tanh(*v)),
            Act::Other(a) => xs.iter_mut().for_each(|v| *v = a.eval(*v)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Op

/// One direction's packed weights.
struct DirWeights {
    w: PackedB,
    w_scales: Vec<f32>,
    r: PackedB,
    r_scales: Vec<f32>,
}

struct QuantLstm {
    hidden: usize,
    /// `true` per direction that runs backwards.
    reverse: Vec<bool>,
    /// f, g, h per direction.
    acts: Vec<[Act; 3]>,
    clip: f32,
    input_forget: bool,
    /// Whether the node outputs `Y` (changes which rows the h quantization sees).
    want_y: bool,
    n_outputs: usize,
    /// Packed at plan time when W, R and their scales and zero points are constant.
    weights: Option<Vec<DirWeights>>,
    /// The input projections' buffer, kept between runs.
    scratch: std::sync::Mutex<Vec<f32>>,
}

fn build(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn Op>> {
    let direction = node.attr_or::<String>("direction", "forward".into())?;
    let reverse = match direction.as_str() {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        d => return Err(node.error(format!("unknown direction '{d}'"))),
    };
    let d = reverse.len();
    let hidden = match node.attr::<i64>("hidden_size")? {
        Some(h) if h > 0 => h as usize,
        Some(h) => return Err(node.error(format!("hidden_size {h} must be positive"))),
        None => return Err(node.error("hidden_size is required")),
    };
    let names: Vec<String> = match node.attr::<Vec<String>>("activations")? {
        Some(a) if !a.is_empty() => a,
        _ => vec!["Sigmoid".into(), "Tanh".into(), "Tanh".into()],
    };
    let names: Vec<String> = if names.len() == 3 && d == 2 {
        // One set given for both directions.
        names.iter().chain(names.iter()).cloned().collect()
    } else if names.len() == 3 * d {
        names
    } else {
        return Err(node.error(format!(
            "activations lists {} functions, expected 3 per direction",
            names.len()
        )));
    };
    let alphas = node.attr_or::<Vec<f32>>("activation_alpha", vec![])?;
    let betas = node.attr_or::<Vec<f32>>("activation_beta", vec![])?;
    let (mut ai, mut bi) = (alphas.into_iter(), betas.into_iter());
    let mut parsed = Vec::with_capacity(names.len());
    for n in &names {
        let a = Activation::parse(n, &mut ai, &mut bi)
            .ok_or_else(|| node.error(format!("unsupported activation '{n}'")))?;
        parsed.push(Act::from(a));
    }
    let acts = parsed.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    let clip = match node.attr::<f32>("clip")? {
        Some(c) if c > 0.0 => c,
        Some(c) => return Err(node.error(format!("clip {c} must be positive"))),
        None => f32::MAX,
    };
    let input_forget = node.attr_or::<i64>("input_forget", 0)? != 0;
    let outs = node.outputs();
    let mut op = QuantLstm {
        hidden,
        reverse,
        acts,
        clip,
        input_forget,
        want_y: outs.first().is_some_and(|o| !o.is_empty()),
        n_outputs: outs.len().min(3),
        weights: None,
        scratch: Default::default(),
    };
    let c = |i: usize| ctx.const_inputs.get(i).copied().flatten();
    if let (Some(w), Some(r), Some(ws), Some(wz), Some(rs), Some(rz)) =
        (c(1), c(2), c(8), c(9), c(10), c(11))
    {
        op.weights = Some(
            op.prepare(w, r, ws, wz, rs, rz)
                .map_err(|e| node.error(e.to_string()))?,
        );
    }
    Ok(Box::new(op))
}

/// Bytes of a weight tensor as the packer wants them, with its signedness.
enum QData<'a> {
    I8(&'a [i8]),
    U8(&'a [u8]),
}

fn qdata<'a>(v: &'a Value, what: &str) -> Result<QData<'a>> {
    match v {
        Value::I8(a) => a
            .as_slice()
            .map(QData::I8)
            .ok_or_else(|| err(format!("{what} is not contiguous"))),
        Value::U8(a) => a
            .as_slice()
            .map(QData::U8)
            .ok_or_else(|| err(format!("{what} is not contiguous"))),
        other => Err(err(format!(
            "{what} must be int8 or uint8, got {}",
            dname(other)
        ))),
    }
}

fn f32_slice<'a>(v: &'a Value, what: &str) -> Result<&'a [f32]> {
    match v {
        Value::F32(a) => a
            .as_slice()
            .ok_or_else(|| err(format!("{what} is not contiguous"))),
        other => Err(err(format!("{what} must be float, got {}", dname(other)))),
    }
}

impl QuantLstm {
    fn dirs(&self) -> usize {
        self.reverse.len()
    }

    /// Checks the weights, scales and zero points and packs W and R per direction.
    fn prepare(
        &self,
        w: &Value,
        r: &Value,
        ws: &Value,
        wz: &Value,
        rs: &Value,
        rz: &Value,
    ) -> Result<Vec<DirWeights>> {
        let (d, h) = (self.dirs(), self.hidden);
        let g = 4 * h;
        if w.shape().len() != 3 || w.shape()[0] != d || w.shape()[2] != g {
            return Err(err(format!(
                "W has shape {:?}, expected [{d}, input_size, {g}]",
                w.shape()
            )));
        }
        if r.shape() != [d, h, g] {
            return Err(err(format!(
                "R has shape {:?}, expected [{d}, {h}, {g}]",
                r.shape()
            )));
        }
        let input = w.shape()[1];
        let per_dir = |v: &Value, what: &str| -> Result<usize> {
            match v.shape() {
                [n] if *n == d => Ok(1),
                [n, m] if *n == d && *m == g => Ok(g),
                s => Err(err(format!(
                    "{what} has shape {s:?}, expected [{d}] (per direction) or [{d}, {g}] (per gate row)"
                ))),
            }
        };
        let (wsn, rsn) = (per_dir(ws, "W_scale")?, per_dir(rs, "R_scale")?);
        let (wzn, rzn) = (per_dir(wz, "W_zero_point")?, per_dir(rz, "R_zero_point")?);
        let ws = f32_slice(ws, "W_scale")?;
        let rs = f32_slice(rs, "R_scale")?;
        let wdata = qdata(w, "W")?;
        let rdata = qdata(r, "R")?;
        let wzd = qdata(wz, "W_zero_point")?;
        let rzd = qdata(rz, "R_zero_point")?;
        let mut out = Vec::with_capacity(d);
        for di in 0..d {
            let pack =
                |data: &QData, zps: &QData, zn: usize, k: usize, what: &str| -> Result<PackedB> {
                    let zr = di * zn..(di + 1) * zn;
                    let wr = di * k * g..(di + 1) * k * g;
                    match (data, zps) {
                        (QData::I8(b), QData::I8(z)) => {
                            let z = &z[zr];
                            // onnxruntime: per-row int8 zero points must all be 0.
                            if zn > 1 && z.iter().any(|&v| v != 0) {
                                return Err(err(format!(
                                    "{what} zero points per row must be zero for int8 weights"
                                )));
                            }
                            PackedB::from_i8(&b[wr], k, g, &z[..1])
                        }
                        (QData::U8(b), QData::U8(z)) => {
                            let z = &z[zr];
                            if z.iter().any(|&v| v != z[0]) {
                                return Err(err(format!(
                                    "{what} zero points per row must all be equal for uint8 weights"
                                )));
                            }
                            PackedB::from_u8(&b[wr], k, g, &z[..1])
                        }
                        _ => Err(err(format!(
                            "{what} and its zero point have different types"
                        ))),
                    }
                };
            out.push(DirWeights {
                w: pack(&wdata, &wzd, wzn, input, "W")?,
                w_scales: ws[di * wsn..(di + 1) * wsn].to_vec(),
                r: pack(&rdata, &rzd, rzn, h, "R")?,
                r_scales: rs[di * rsn..(di + 1) * rsn].to_vec(),
            });
        }
        Ok(out)
    }

    fn compute(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let (d, h) = (self.dirs(), self.hidden);
        let g = 4 * h;
        let x = match req(ins, 0)? {
            Value::F32(a) => a.as_standard_layout(),
            other => return Err(err(format!("X must be float, got {}", dname(other)))),
        };
        let &[seq, batch, input] = x.shape() else {
            return Err(err(format!(
                "X has shape {:?}, expected [seq, batch, input]",
                x.shape()
            )));
        };
        let x = x.as_slice().unwrap_or(&[]);

        let prepared;
        let weights = match &self.weights {
            Some(w) => w,
            None => {
                prepared = self.prepare(
                    req(ins, 1)?,
                    req(ins, 2)?,
                    req(ins, 8)?,
                    req(ins, 9)?,
                    req(ins, 10)?,
                    req(ins, 11)?,
                )?;
                &prepared
            }
        };
        if weights[0].w.k() != input {
            return Err(err(format!(
                "X has input size {input} but W expects {}",
                weights[0].w.k()
            )));
        }
        // An optional float input of the given shape.
        let optional = |i: usize, what: &str, shape: &[usize]| -> Result<Option<&[f32]>> {
            let Some(v) = opt(ins, i) else {
                return Ok(None);
            };
            if v.shape() != shape {
                return Err(err(format!(
                    "{what} has shape {:?}, expected {shape:?}",
                    v.shape()
                )));
            }
            f32_slice(v, what).map(Some)
        };
        let bias = optional(3, "B", &[d, 2 * g])?;
        let peep = optional(7, "P", &[d, 3 * h])?;
        let lens: Vec<usize> = match opt(ins, 4) {
            None => vec![seq; batch],
            Some(v) => {
                let l: Vec<i64> = match v {
                    Value::I32(a) => a.iter().map(|&x| i64::from(x)).collect(),
                    other => {
                        return Err(err(format!(
                            "sequence_lens must be int32, got {}",
                            dname(other)
                        )));
                    }
                };
                if l.len() != batch {
                    return Err(err(format!(
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
                                err(format!("sequence length {n} is outside [0, {seq}]"))
                            })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let h0 = optional(5, "initial_h", &[d, batch, h])?;
        let c0 = optional(6, "initial_c", &[d, batch, h])?;

        // X is quantized once over the rows some direction computes.
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let rows = max_len * batch;
        let mut xq = vec![0u8; rows * input];
        let (x_scale, x_zp) = quantize(&x[..rows * input], &mut xq);

        let mut y = vec![0f32; seq * d * batch * h];
        let mut yh = vec![0f32; d * batch * h];
        let mut yc = vec![0f32; d * batch * h];
        let bh = batch * h;
        for (di, dw) in weights.iter().enumerate() {
            let dir = Dir {
                op: self,
                w: dw,
                acts: self.acts[di],
                reverse: self.reverse[di],
                batch,
                lens: &lens,
                bias: bias.map(|b| &b[di * 2 * g..(di + 1) * 2 * g]),
                peep: peep.map(|p| &p[di * 3 * h..(di + 1) * 3 * h]),
            };
            // The gates buffer is reused across runs (a fresh multi-MB buffer per run costs
            // page faults); a concurrent run of the same op allocates its own.
            let mut local = Vec::new();
            let mut guard = self.scratch.try_lock();
            let gates = match guard.as_deref_mut() {
                Ok(v) => v,
                Err(_) => &mut local,
            };
            dir.run(
                (&xq, x_scale, x_zp),
                h0.map(|v| &v[di * bh..(di + 1) * bh]),
                c0.map(|v| &v[di * bh..(di + 1) * bh]),
                gates,
                Out {
                    y: &mut y,
                    dirs: d,
                    di,
                    h: &mut yh[di * bh..(di + 1) * bh],
                    c: &mut yc[di * bh..(di + 1) * bh],
                },
            )?;
        }
        let arr = |shape: &[usize], v: Vec<f32>| -> Result<Value> {
            Ok(Value::F32(
                ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| err(e.to_string()))?,
            ))
        };
        let mut outs = vec![
            arr(&[seq, d, batch, h], y)?,
            arr(&[d, batch, h], yh)?,
            arr(&[d, batch, h], yc)?,
        ];
        outs.truncate(self.n_outputs.max(1));
        Ok(outs)
    }
}

impl Op for QuantLstm {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        self.compute(inputs)
    }
}

// ---------------------------------------------------------------------------------------------
// Time loop

/// One direction's inputs.
struct Dir<'a> {
    op: &'a QuantLstm,
    w: &'a DirWeights,
    acts: [Act; 3],
    reverse: bool,
    batch: usize,
    lens: &'a [usize],
    /// `[Wb (4H), Rb (4H)]`.
    bias: Option<&'a [f32]>,
    /// `[Pi, Po, Pf]`.
    peep: Option<&'a [f32]>,
}

/// Where one direction writes: its slot of `Y [seq, dirs, batch, H]` and its final states
/// `[batch, H]` (all zero on entry).
struct Out<'a> {
    y: &'a mut [f32],
    dirs: usize,
    di: usize,
    h: &'a mut [f32],
    c: &'a mut [f32],
}

impl Dir<'_> {
    /// Runs the direction on X quantized as `(data, scale, zero point)`; `gates` is scratch.
    fn run(
        &self,
        (xq, x_scale, x_zp): (&[u8], f32, u8),
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        gates: &mut Vec<f32>,
        out: Out,
    ) -> Result<()> {
        let h = self.op.hidden;
        let g = 4 * h;
        let batch = self.batch;
        let bh = batch * h;
        let input = self.w.w.k();
        let rows = xq.len() / input.max(1);
        let max_len = rows.checked_div(batch).unwrap_or(0);

        // Input projection of every computed step: [rows, 4H], scaled, no bias (onnxruntime
        // adds the bias with the clip, after the recurrent product).
        // Every element is written by the GEMM: stale contents do not matter.
        gates.resize(rows * g, 0.0);
        let epi = Epilogue {
            b_scales: &self.w.w_scales,
            bias: None,
            relu: false,
        };
        gemm_u8i8_f32(xq, rows, input, x_zp, x_scale, &self.w.w, &epi, gates, 1)?;

        // The combined bias Wb + Rb per gate.
        let bias: Option<Vec<f32>> = self.bias.map(|b| (0..g).map(|j| b[j] + b[j + g]).collect());
        let mut hs = h0.map_or_else(|| vec![0f32; bh], <[f32]>::to_vec);
        let mut cs = c0.map_or_else(|| vec![0f32; bh], <[f32]>::to_vec);
        let (y_stride, y_off) = (out.dirs * bh, out.di * bh);
        let mut hq = vec![0u8; bh];
        let mut hr = vec![0f32; batch * g];
        let epi_r = Epilogue {
            b_scales: &self.w.r_scales,
            bias: None,
            relu: false,
        };
        for step in 0..max_len {
            // Ht-1 · R, with Ht-1 quantized per tensor over all rows.
            let (h_scale, h_zp) = quantize(&hs, &mut hq);
            gemm_u8i8_f32(&hq, batch, h, h_zp, h_scale, &self.w.r, &epi_r, &mut hr, 1)?;
            for b in 0..batch {
                let len = self.lens[b];
                let hrow = &mut hs[b * h..(b + 1) * h];
                if step >= len {
                    // Done: onnxruntime zeroes this row's output, which is the next step's
                    // previous state when Y is an output.
                    if self.op.want_y {
                        hrow.fill(0.0);
                    }
                    continue;
                }
                let t = if self.reverse { len - 1 - step } else { step };
                // X was projected unreversed: the reverse direction reads time t's row.
                let grow = &mut gates[(t * batch + b) * g..(t * batch + b + 1) * g];
                let crow = &mut cs[b * h..(b + 1) * h];
                gate_dispatch(
                    self,
                    grow,
                    &hr[b * g..(b + 1) * g],
                    crow,
                    hrow,
                    bias.as_deref(),
                );
                let yo = t * y_stride + y_off + b * h;
                out.y[yo..yo + h].copy_from_slice(hrow);
                if step + 1 == len {
                    out.h[b * h..(b + 1) * h].copy_from_slice(hrow);
                    out.c[b * h..(b + 1) * h].copy_from_slice(crow);
                }
            }
        }
        Ok(())
    }
}

fn gate_dispatch(
    dir: &Dir,
    gates: &mut [f32],
    hr: &[f32],
    c: &mut [f32],
    h_out: &mut [f32],
    bias: Option<&[f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { gates_fma(dir, gates, hr, c, h_out, bias) };
        return;
    }
    gates_row(dir, gates, hr, c, h_out, bias);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gates_fma(
    dir: &Dir,
    gates: &mut [f32],
    hr: &[f32],
    c: &mut [f32],
    h_out: &mut [f32],
    bias: Option<&[f32]>,
) {
    gates_row(dir, gates, hr, c, h_out, bias);
}

/// `x = clamp(x + bias, -clip, clip)` (onnxruntime's `clip_add_bias` / `clip_ignore_bias`).
#[inline(always)]
fn clip_bias(xs: &mut [f32], bias: Option<&[f32]>, clip: f32) {
    match bias {
        Some(b) => {
            for (x, &b) in xs.iter_mut().zip(b) {
                *x = (*x + b).min(clip).max(-clip);
            }
        }
        None => xs.iter_mut().for_each(|x| *x = x.min(clip).max(-clip)),
    }
}

/// One row's gates, in onnxruntime's order of operations (`GateComputations`): updates the
/// cell state `c` in place and writes `Ht` to `h_out`. `gates` holds the input projection
/// `[i, o, f, c]`; `hr` the recurrent product.
#[inline(always)]
fn gates_row(
    dir: &Dir,
    gates: &mut [f32],
    hr: &[f32],
    c: &mut [f32],
    h_out: &mut [f32],
    bias: Option<&[f32]>,
) {
    let h = c.len();
    let clip = dir.op.clip;
    let [fa, ga, ha] = dir.acts;
    for (x, &r) in gates.iter_mut().zip(hr) {
        *x += r;
    }
    let (gi, rest) = gates.split_at_mut(h);
    let (go, rest) = rest.split_at_mut(h);
    let (gf, gc) = rest.split_at_mut(h);
    let bias_of = |k: usize| bias.map(|b| &b[k * h..(k + 1) * h]);
    let peep_of = |k: usize| dir.peep.map(|p| &p[k * h..(k + 1) * h]);
    if let Some(pi) = peep_of(0) {
        for j in 0..h {
            gi[j] += c[j] * pi[j];
        }
    }
    clip_bias(gi, bias_of(0), clip);
    fa.apply(gi);
    if dir.op.input_forget {
        for j in 0..h {
            gf[j] = 1.0 - gi[j];
        }
    } else {
        if let Some(pf) = peep_of(2) {
            for j in 0..h {
                gf[j] += c[j] * pf[j];
            }
        }
        clip_bias(gf, bias_of(2), clip);
        fa.apply(gf);
    }
    clip_bias(gc, bias_of(3), clip);
    ga.apply(gc);
    for j in 0..h {
        c[j] = c[j] * gf[j] + gi[j] * gc[j];
    }
    if let Some(po) = peep_of(1) {
        for j in 0..h {
            go[j] += c[j] * po[j];
        }
    }
    clip_bias(go, bias_of(1), clip);
    fa.apply(go);
    // h(Ct) · o, with gc as scratch for h(Ct).
    gc.copy_from_slice(c);
    ha.apply(gc);
    for j in 0..h {
        h_out[j] = gc[j] * go[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::{attr_int, attr_string};
    use ndarray::Array3;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn f32v(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    fn node(
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<crate::onnx::AttributeProto>,
    ) -> Node {
        let mut n = Node::new(
            name,
            op,
            if op == "LSTM" { "" } else { "com.microsoft" },
            inputs.iter().map(|s| s.to_string()).collect(),
            vec!["Y".into(), "Y_h".into(), "Y_c".into()],
        );
        for a in attrs {
            n = n.with_attr(a);
        }
        n
    }

    fn build_op(n: &Node, consts: Vec<Option<&Value>>) -> Result<Box<dyn Op>> {
        let mut r = Registry::default();
        register(&mut r);
        super::super::rnn::register(&mut r);
        let b = r.get(n.domain(), n.op_type()).expect("registered");
        b(
            n,
            &BuildCtx {
                opset: 1,
                const_inputs: consts,
            },
        )
    }

    /// The quantized op stays close to the float LSTM run on its dequantized weights, in every
    /// direction, with peepholes, initial states and sequence lengths; planned (constant
    /// weights) and unplanned runs agree exactly.
    #[test]
    fn close_to_the_float_lstm_on_dequantized_weights() {
        let (seq, batch, inp, h) = (6, 3, 12, 8);
        let g = 4 * h;
        for dirn in ["forward", "reverse", "bidirectional"] {
            let d = if dirn == "bidirectional" { 2 } else { 1 };
            // int8 weights [D, in, 4H] / [D, H, 4H] with per-row scales.
            let wq: Vec<i8> = values(d * inp * g, 1)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect();
            let rq: Vec<i8> = values(d * h * g, 2)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect();
            let ws: Vec<f32> = values(d * g, 3).iter().map(|v| 0.002 + 0.001 * v).collect();
            let rs: Vec<f32> = values(d * g, 4).iter().map(|v| 0.003 + 0.001 * v).collect();
            // Float W [D, 4H, in] and R [D, 4H, H]: dequantized and transposed.
            let deq = |q: &[i8], s: &[f32], k: usize| -> Vec<f32> {
                let mut out = vec![0f32; d * g * k];
                for di in 0..d {
                    for kk in 0..k {
                        for n in 0..g {
                            out[(di * g + n) * k + kk] =
                                f32::from(q[(di * k + kk) * g + n]) * s[di * g + n];
                        }
                    }
                }
                out
            };
            let wf = f32v(&[d, g, inp], deq(&wq, &ws, inp));
            let rf = f32v(&[d, g, h], deq(&rq, &rs, h));
            let x = f32v(&[seq, batch, inp], values(seq * batch * inp, 5));
            let bias = f32v(
                &[d, 2 * g],
                values(d * 2 * g, 6).iter().map(|v| v * 0.3).collect(),
            );
            let lens = Value::I32(ArrayD::from_shape_vec(IxDyn(&[batch]), vec![6, 2, 4]).unwrap());
            let h0 = f32v(&[d, batch, h], values(d * batch * h, 7));
            let c0 = f32v(&[d, batch, h], values(d * batch * h, 8));
            let p = f32v(
                &[d, 3 * h],
                values(d * 3 * h, 9).iter().map(|v| v * 0.5).collect(),
            );
            let w = Value::I8(ArrayD::from_shape_vec(IxDyn(&[d, inp, g]), wq).unwrap());
            let r = Value::I8(ArrayD::from_shape_vec(IxDyn(&[d, h, g]), rq).unwrap());
            let ws = f32v(&[d, g], ws);
            let rs = f32v(&[d, g], rs);
            let zp = Value::I8(ArrayD::zeros(IxDyn(&[d, g])));
            let attrs = || {
                vec![
                    attr_int("hidden_size", h as i64),
                    attr_string("direction", dirn),
                ]
            };
            let names = [
                "X", "W", "R", "B", "L", "H0", "C0", "P", "WS", "WZ", "RS", "RZ",
            ];
            let qn = node("q", "DynamicQuantizeLSTM", &names, attrs());
            let ins = [&x, &w, &r, &bias, &lens, &h0, &c0, &p, &ws, &zp, &rs, &zp].map(Some);
            let mut consts = vec![None; 12];
            for i in [1, 2, 8, 9, 10, 11] {
                consts[i] = ins[i];
            }
            let planned = build_op(&qn, consts).unwrap().run(&ins).unwrap();
            let unplanned = build_op(&qn, vec![None; 12]).unwrap().run(&ins).unwrap();
            assert_eq!(planned, unplanned);
            let fnode = node("f", "LSTM", &names[..8], attrs());
            let fins = [&x, &wf, &rf, &bias, &lens, &h0, &c0, &p].map(Some);
            let float = build_op(&fnode, vec![None; 8]).unwrap().run(&fins).unwrap();
            for (q, f) in planned.iter().zip(&float) {
                assert_eq!(q.shape(), f.shape());
                let (q, f) = (q.as_f32().unwrap(), f.as_f32().unwrap());
                let worst = q
                    .iter()
                    .zip(f)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 0.03, "{dirn}: max |quant - float| {worst}");
            }
            // Steps past a row's length are zero.
            let y: Array3<f32> = planned[0]
                .as_f32()
                .unwrap()
                .index_axis(ndarray::Axis(1), 0)
                .to_owned()
                .into_dimensionality()
                .unwrap();
            assert!(y.slice(ndarray::s![2.., 1, ..]).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h = 4;
        let x = f32v(&[2, 1, 3], values(6, 1));
        let w = Value::I8(ArrayD::zeros(IxDyn(&[1, 3, 4 * h])));
        let r = Value::I8(ArrayD::zeros(IxDyn(&[1, h, 4 * h])));
        let s = f32v(&[1], vec![0.1]);
        let z = Value::I8(ArrayD::zeros(IxDyn(&[1])));
        let names = ["X", "W", "R", "", "", "", "", "", "WS", "WZ", "RS", "RZ"];
        let n = node(
            "q",
            "DynamicQuantizeLSTM",
            &names,
            vec![attr_int("hidden_size", h as i64)],
        );
        let op = build_op(&n, vec![None; 12]).unwrap();
        let ok = [
            Some(&x),
            Some(&w),
            Some(&r),
            None,
            None,
            None,
            None,
            None,
            Some(&s),
            Some(&z),
            Some(&s),
            Some(&z),
        ];
        assert_eq!(op.run(&ok).unwrap().len(), 3);
        let mut bad = ok;
        let r_bad = Value::I8(ArrayD::zeros(IxDyn(&[1, h + 1, 4 * h])));
        bad[2] = Some(&r_bad);
        assert!(
            op.run(&bad)
                .unwrap_err()
                .to_string()
                .contains("R has shape")
        );
        let mut bad = ok;
        let zu = Value::U8(ArrayD::zeros(IxDyn(&[1])));
        bad[9] = Some(&zu);
        assert!(
            op.run(&bad)
                .unwrap_err()
                .to_string()
                .contains("different types")
        );
        let mut bad = ok;
        let x_bad = f32v(&[2, 1, 5], values(10, 2));
        bad[0] = Some(&x_bad);
        assert!(op.run(&bad).unwrap_err().to_string().contains("input size"));
        let mut bad = ok;
        let lens = Value::I32(ArrayD::from_elem(IxDyn(&[1]), 3));
        bad[4] = Some(&lens);
        assert!(
            op.run(&bad)
                .unwrap_err()
                .to_string()
                .contains("sequence length 3")
        );
        // Per-row int8 zero points must be zero (as onnxruntime requires).
        let s_pc = f32v(&[1, 4 * h], vec![0.1; 4 * h]);
        let mut zv = vec![0i8; 4 * h];
        zv[3] = 1;
        let z_pc = Value::I8(ArrayD::from_shape_vec(IxDyn(&[1, 4 * h]), zv).unwrap());
        let mut bad = ok;
        bad[8] = Some(&s_pc);
        bad[9] = Some(&z_pc);
        assert!(
            op.run(&bad)
                .unwrap_err()
                .to_string()
                .contains("must be zero")
        );
        let n = node("q", "DynamicQuantizeLSTM", &names, vec![]);
        assert!(build_op(&n, vec![None; 12]).is_err());
    }

    #[test]
    fn quant_params_follow_onnxruntime() {
        // Range widened to include 0; all-zero data gets scale 1.
        assert_eq!(quant_params(0.5, 2.0), (2.0 / 255.0, 0));
        assert_eq!(quant_params(0.0, 0.0), (1.0, 0));
        let (s, z) = quant_params(-1.0, 3.0);
        assert_eq!(s, 4.0 / 255.0);
        assert_eq!(z, (1.0f32 / s).round_ties_even() as u8);
        let mut q = [0u8; 5];
        quantize_into(&[0.5, 1.5, 2.5, -3.0, 300.0], 1.0, 0, &mut q);
        assert_eq!(q, [0, 2, 2, 0, 255]);
        quantize_into(&[f32::NAN, -0.5, 0.5], 1.0, 10, &mut q[..3]);
        assert_eq!(&q[..3], &[0, 10, 10]);
    }

    #[test]
    fn mlas_activations_are_close_to_exact() {
        for i in -4000..=4000 {
            let x = i as f32 * 0.005;
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((mlas_logistic(x) as f64 - s).abs() < 2e-6, "sigmoid({x})");
            assert!(
                (mlas_tanh(x) as f64 - (x as f64).tanh()).abs() < 2e-6,
                "tanh({x})"
            );
        }
        assert_eq!(mlas_logistic(-100.0), mlas_logistic(-18.0));
        assert!(mlas_logistic(-100.0) >= 0.0);
        assert!((mlas_tanh(100.0) - 1.0).abs() < 1e-6);
    }

    /// The dispatched (SIMD) quantizer equals the scalar one on every length and odd values.
    #[test]
    fn quantize_paths_agree() {
        let mut x = values(1003, 11);
        x.iter_mut().for_each(|v| *v *= 3.0);
        x[5] = f32::NAN;
        x[17] = 1e30;
        x[18] = -1e30;
        x[19] = 0.5;
        for n in [0, 1, 7, 8, 9, 64, 1003] {
            for (scale, zp) in [(3.0f32 / 255.0, 128u8), (0.01, 0), (1.0, 255), (0.5, 3)] {
                let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                quantize_into(&x[..n], scale, zp, &mut a);
                quantize_dispatch(&x[..n], scale, zp, &mut b);
                assert_eq!(a, b, "n {n} scale {scale} zp {zp}");
            }
        }
    }

    #[test]
    fn round_even_small_matches_round_ties_even() {
        for i in -2000..=2000 {
            let v = i as f32 * 0.25;
            assert_eq!(round_even_small(v), v.round_ties_even(), "{v}");
        }
    }
}
