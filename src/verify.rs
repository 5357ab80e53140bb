//! Accuracy of a quantized model against its float original: both run in the built-in runtime
//! on the same inputs, and each output pair is compared.
//!
//! Metrics per output (float reference `f`, quantized `q`, both widened to f64):
//! - `max_abs = max |q - f|`, `mean_abs = mean |q - f|`;
//! - `cosine = f·q / (|f| |q|)` over the flattened tensors (1 when both are all zero, 0 when
//!   only one is);
//! - `sqnr_db = 10 log10(Σ f² / Σ (f - q)²)` (+inf when the outputs are identical);
//! - `top1`: the fraction of positions (all indices but the last axis) whose argmax along the
//!   last axis agrees (first maximum wins, as numpy's `argmax`); 1 for an empty output.
//!
//! [`Tolerance`] defaults: `min_cosine = 0.99`, no `max_abs` limit. An output passes when its
//! cosine is at least `min_cosine` and (if set) `max_abs` is at most the limit; NaN metrics fail.
//! Non-float outputs (e.g. int64 indices) are compared as numbers the same way.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::{Options, Session, Value};

/// Limits an output must meet.
#[derive(Clone, Debug, Serialize)]
pub struct Tolerance {
    pub min_cosine: f64,
    pub max_abs: Option<f64>,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            min_cosine: 0.99,
            max_abs: None,
        }
    }
}

/// Comparison metrics of one output pair.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub max_abs: f64,
    pub mean_abs: f64,
    pub cosine: f64,
    /// Signal-to-quantization-noise ratio in dB; `f64::INFINITY` for identical outputs
    /// (serialized as null in JSON).
    pub sqnr_db: f64,
    pub top1: f64,
}

/// One output's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub metrics: Metrics,
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
}

/// The verdict over all outputs.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tolerance: Tolerance,
    pub outputs: Vec<OutputReport>,
    pub pass: bool,
}

/// Maximum and mean absolute difference.
pub fn abs_error(f: &[f64], q: &[f64]) -> (f64, f64) {
    if f.is_empty() {
        return (0.0, 0.0);
    }
    let mut max = 0.0f64;
    let mut sum = 0.0f64;
    for (a, b) in f.iter().zip(q) {
        let d = (a - b).abs();
        // NaN propagates into max so a NaN output cannot pass.
        max = if d.is_nan() || max.is_nan() {
            f64::NAN
        } else {
            max.max(d)
        };
        sum += d;
    }
    (max, sum / f.len() as f64)
}

/// Cosine similarity of the flattened tensors.
pub fn cosine(f: &[f64], q: &[f64]) -> f64 {
    let (mut dot, mut nf, mut nq) = (0.0f64, 0.0f64, 0.0f64);
    for (a, b) in f.iter().zip(q) {
        dot += a * b;
        nf += a * a;
        nq += b * b;
    }
    if nf == 0.0 && nq == 0.0 {
        return 1.0;
    }
    if nf == 0.0 || nq == 0.0 {
        return 0.0;
    }
    // sqrt of the product (not the product of sqrts) gives exactly 1 for identical tensors.
    (dot / (nf * nq).sqrt()).clamp(-1.0, 1.0)
}

/// `10 log10(signal power / noise power)`, +inf for zero noise.
pub fn sqnr_db(f: &[f64], q: &[f64]) -> f64 {
    let (mut s, mut n) = (0.0f64, 0.0f64);
    for (a, b) in f.iter().zip(q) {
        s += a * a;
        n += (a - b) * (a - b);
    }
    if n == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (s / n).log10()
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        // NaN counts as the maximum, as numpy's argmax does.
        if x > v[best] || (x.is_nan() && !v[best].is_nan()) {
            best = i;
        }
    }
    best
}

/// Fraction of rows (length `last` along the last axis) whose argmax agrees.
pub fn top1_agreement(f: &[f64], q: &[f64], last: usize) -> f64 {
    if f.is_empty() || last == 0 {
        return 1.0;
    }
    let rows = f.len() / last;
    let hits = f
        .chunks_exact(last)
        .zip(q.chunks_exact(last))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    hits as f64 / rows as f64
}

/// All metrics for two flattened outputs whose last axis has length `last`.
pub fn metrics(f: &[f64], q: &[f64], last: usize) -> Metrics {
    let (max_abs, mean_abs) = abs_error(f, q);
    Metrics {
        max_abs,
        mean_abs,
        cosine: cosine(f, q),
        sqnr_db: sqnr_db(f, q),
        top1: top1_agreement(f, q, last),
    }
}

fn flat(v: &Value) -> Vec<f64> {
    crate::dispatch_value!(v, a => a.iter().map(num).collect())
}

trait Num {
    fn f(&self) -> f64;
}
macro_rules! num_impl {
    ($($t:ty),*) => { $(impl Num for $t { fn f(&self) -> f64 { *self as f64 } })* };
}
num_impl!(f32, f64, i64, i32, i8, u8, i16, u16, u32, u64);
impl Num for half::f16 {
    fn f(&self) -> f64 {
        self.to_f64()
    }
}
impl Num for half::bf16 {
    fn f(&self) -> f64 {
        self.to_f64()
    }
}
impl Num for bool {
    fn f(&self) -> f64 {
        f64::from(u8::from(*self))
    }
}
fn num<T: Num>(x: &T) -> f64 {
    x.f()
}

/// Compares one output pair against the tolerance.
pub fn compare_output(name: &str, f: &Value, q: &Value, tol: &Tolerance) -> Result<OutputReport> {
    if f.shape() != q.shape() {
        return Err(Error::Other(format!(
            "output '{name}': float shape {:?} but quantized shape {:?}",
            f.shape(),
            q.shape()
        )));
    }
    let last = f.shape().last().copied().unwrap_or(1);
    let m = metrics(&flat(f), &flat(q), last);
    let mut failures = Vec::new();
    if m.cosine.is_nan() || m.cosine < tol.min_cosine {
        failures.push(format!("cosine {:.6} below {}", m.cosine, tol.min_cosine));
    }
    if let Some(lim) = tol.max_abs
        && (m.max_abs.is_nan() || m.max_abs > lim)
    {
        failures.push(format!("max-abs {:.6e} above {lim}", m.max_abs));
    }
    Ok(OutputReport {
        name: name.to_string(),
        shape: f.shape().to_vec(),
        pass: failures.is_empty(),
        metrics: m,
        failures,
    })
}

/// Runs both models on `inputs` and compares every output of the float model with the
/// quantized model's output of the same name.
pub fn compare_models(
    float: &Model,
    quant: &Model,
    inputs: HashMap<String, Value>,
    tol: &Tolerance,
) -> Result<Report> {
    compare_models_with(float, quant, inputs, tol, &Options::default())
}

/// [`compare_models`] with the quantized model run under `quant_options` (e.g. emulating
/// onnxruntime's saturating u8 x s8 kernel), and both under its memory budget.
pub fn compare_models_with(
    float: &Model,
    quant: &Model,
    inputs: HashMap<String, Value>,
    tol: &Tolerance,
    quant_options: &Options,
) -> Result<Report> {
    // The float model runs under the same memory budget, without the emulations.
    let float_options = Options {
        max_memory: quant_options.max_memory,
        ..Default::default()
    };
    let fs = Session::new(float, &float_options)?;
    let qs = Session::new(quant, quant_options)?;
    let fo = fs.run(inputs.clone())?;
    let qo: HashMap<String, Value> = qs.run(inputs)?.into_iter().collect();
    let mut outputs = Vec::new();
    for (name, fv) in &fo {
        let qv = qo.get(name).ok_or_else(|| {
            Error::Other(format!(
                "output '{name}' of the float model is not an output of the quantized model"
            ))
        })?;
        outputs.push(compare_output(name, fv, qv, tol)?);
    }
    Ok(Report {
        tolerance: tol.clone(),
        pass: outputs.iter().all(|o| o.pass),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs() {
        let f = [1.0, -2.0, 3.0, 0.5, 4.0, -1.0];
        let m = metrics(&f, &f, 3);
        assert_eq!(m.max_abs, 0.0);
        assert_eq!(m.mean_abs, 0.0);
        assert_eq!(m.cosine, 1.0);
        assert_eq!(m.sqnr_db, f64::INFINITY);
        assert_eq!(m.top1, 1.0);
    }

    #[test]
    fn known_perturbation() {
        // Signal power 1+4+9+16 = 30; noise 0.1 on each of 4 entries: power 0.04.
        let f = [1.0, 2.0, 3.0, 4.0];
        let q = [1.1, 2.1, 3.1, 4.1];
        let m = metrics(&f, &q, 2);
        assert!((m.sqnr_db - 10.0 * (30.0f64 / 0.04).log10()).abs() < 1e-9);
        assert!((m.max_abs - 0.1).abs() < 1e-12);
        assert!((m.mean_abs - 0.1).abs() < 1e-12);
        // f·q = 1.1+4.2+9.3+16.4 = 31; |q|² = 1.21+4.41+9.61+16.81 = 32.04.
        assert!((m.cosine - 31.0 / (30.0f64 * 32.04).sqrt()).abs() < 1e-12);
        assert_eq!(m.top1, 1.0);
    }

    #[test]
    fn top1_counts_rows() {
        // Rows: [1,2] vs [2,1] disagree; [5,3] vs [4,3] agree; [0,1] vs [0,2] agree.
        let f = [1.0, 2.0, 5.0, 3.0, 0.0, 1.0];
        let q = [2.0, 1.0, 4.0, 3.0, 0.0, 2.0];
        assert!((top1_agreement(&f, &q, 2) - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn zero_and_opposite_vectors() {
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-15);
        // q = 0: noise equals signal, 0 dB.
        assert!(sqnr_db(&[1.0, 2.0], &[0.0, 0.0]).abs() < 1e-12);
    }

    #[test]
    fn tolerance_verdicts() {
        let f = Value::F32(ndarray::arr1(&[1.0f32, 2.0, 3.0]).into_dyn());
        let q = Value::F32(ndarray::arr1(&[1.0f32, 2.0, 3.5]).into_dyn());
        let r = compare_output("y", &f, &q, &Tolerance::default()).unwrap();
        assert!(r.pass, "{r:?}");
        let tight = Tolerance {
            min_cosine: 0.99,
            max_abs: Some(0.1),
        };
        let r = compare_output("y", &f, &q, &tight).unwrap();
        assert!(!r.pass);
        assert_eq!(r.failures.len(), 1);
        let nan = Value::F32(ndarray::arr1(&[1.0f32, f32::NAN, 3.0]).into_dyn());
        assert!(
            !compare_output("y", &f, &nan, &Tolerance::default())
                .unwrap()
                .pass
        );
    }
}
