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
//!
//! Encoders (an output of shape `[batch, seq, hidden]` and an attention-mask input of shape
//! `[batch, seq]`, found by [`crate::samples::mask_input`]) also get the figures users read
//! ([`EncoderMetrics`]): the valid-token hidden-state cosine (padding masked out) and the
//! mean-pooled sentence-embedding cosine (minimum over the batch). An encoder output passes
//! when both are at least `min_cosine`: its raw cosine, still reported, also counts the
//! padded positions, whose values nobody reads (on all-MiniLM-L6-v2 with per-token
//! activations and SmoothQuant they drag the raw cosine to 0.989 while the valid tokens are at
//! 0.9995). `max_abs` stays over all positions. Over several samples, see
//! [`compare_output_samples`].

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
    /// For an encoder output: valid-token and pooled-embedding cosines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderMetrics>,
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
}

/// The verdict over all outputs.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tolerance: Tolerance,
    /// How many input samples the figures cover.
    pub samples: usize,
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
impl Num for half::bf16 {
    fn f(&self) -> f64 {
        self.to_f64()
    }
}
impl Num for half::f16 {
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

/// Valid-token and pooled cosines of an encoder output (`[batch, seq, hidden]`, with a
/// `[batch, seq]` attention mask among the inputs), as `scripts/bench_per_token.py` computes
/// them: the cosine of each valid (mask nonzero) token's hidden vector, and the cosine of each
/// sentence's mean over its valid tokens (its pooled embedding). Over several samples the
/// tokens and sentences of all of them count.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EncoderMetrics {
    /// The mask input.
    pub mask: String,
    pub valid_tokens: usize,
    /// Mean over the valid tokens of the per-token cosine.
    pub token_cosine_mean: f64,
    pub token_cosine_min: f64,
    /// Minimum over the sentences of the mean-pooled embedding cosine.
    pub pooled_cosine_min: f64,
}

/// Running sums of [`EncoderMetrics`] over samples.
#[derive(Default)]
struct EncoderAcc {
    tokens: usize,
    sum: f64,
    min: f64,
    pooled_min: f64,
}

impl EncoderAcc {
    /// Adds one sample; false when `shape`/`mask` are not an encoder output and its mask.
    fn add(&mut self, f: &[f64], q: &[f64], shape: &[usize], mask: &Value) -> bool {
        let [b, s, h] = shape else { return false };
        if mask.shape() != [*b, *s] || *h == 0 {
            return false;
        }
        let m = flat(mask);
        if self.tokens == 0 && self.sum == 0.0 {
            self.min = f64::INFINITY;
            self.pooled_min = f64::INFINITY;
        }
        for bi in 0..*b {
            let mut pf = vec![0.0f64; *h];
            let mut pq = vec![0.0f64; *h];
            let mut count = 0usize;
            for si in 0..*s {
                if m[bi * s + si] == 0.0 {
                    continue;
                }
                let at = (bi * s + si) * h;
                let (tf, tq) = (&f[at..at + h], &q[at..at + h]);
                let c = cosine(tf, tq);
                self.sum += c;
                self.min = self.min.min(c);
                self.tokens += 1;
                count += 1;
                for j in 0..*h {
                    pf[j] += tf[j];
                    pq[j] += tq[j];
                }
            }
            if count > 0 {
                self.pooled_min = self.pooled_min.min(cosine(&pf, &pq));
            }
        }
        true
    }

    fn finish(&self, mask: &str) -> EncoderMetrics {
        EncoderMetrics {
            mask: mask.to_string(),
            valid_tokens: self.tokens,
            token_cosine_mean: if self.tokens == 0 {
                1.0
            } else {
                self.sum / self.tokens as f64
            },
            token_cosine_min: if self.tokens == 0 { 1.0 } else { self.min },
            pooled_cosine_min: if self.pooled_min.is_finite() {
                self.pooled_min
            } else {
                1.0
            },
        }
    }
}

/// Compares one output pair against the tolerance.
pub fn compare_output(name: &str, f: &Value, q: &Value, tol: &Tolerance) -> Result<OutputReport> {
    compare_output_samples(name, &[(f, q, None)], tol)
}

/// One sample of an output: float value, quantized value, and the encoder's mask input (name
/// and value) when there is one.
pub type SamplePair<'a> = (&'a Value, &'a Value, Option<(&'a str, &'a Value)>);

/// Compares one output over several samples: `(float, quantized, mask)` per sample, with the
/// mask input's name and value when the model is an encoder. The figures are the worst over
/// the samples (cosine, SQNR: the lowest; max-abs: the highest), except mean-abs and top-1,
/// which are averaged over all elements and rows, and the encoder metrics (see
/// [`EncoderMetrics`]). The shape is the first sample's.
pub fn compare_output_samples(
    name: &str,
    samples: &[SamplePair<'_>],
    tol: &Tolerance,
) -> Result<OutputReport> {
    let mut m = Metrics {
        max_abs: 0.0,
        mean_abs: 0.0,
        cosine: 1.0,
        sqnr_db: f64::INFINITY,
        top1: 1.0,
    };
    let (mut elems, mut rows, mut abs_sum, mut top1_sum) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut enc = EncoderAcc::default();
    let mut enc_mask: Option<&str> = None;
    for (f, q, mask) in samples {
        if f.shape() != q.shape() {
            return Err(Error::Other(format!(
                "output '{name}': float shape {:?} but quantized shape {:?}",
                f.shape(),
                q.shape()
            )));
        }
        let last = f.shape().last().copied().unwrap_or(1);
        let (ff, qf) = (flat(f), flat(q));
        let s = metrics(&ff, &qf, last);
        m.max_abs = if s.max_abs.is_nan() || m.max_abs.is_nan() {
            f64::NAN
        } else {
            m.max_abs.max(s.max_abs)
        };
        m.cosine = if s.cosine.is_nan() || m.cosine.is_nan() {
            f64::NAN
        } else {
            m.cosine.min(s.cosine)
        };
        m.sqnr_db = m.sqnr_db.min(s.sqnr_db);
        abs_sum += s.mean_abs * ff.len() as f64;
        elems += ff.len();
        let r = ff.len().checked_div(last).unwrap_or(0);
        top1_sum += s.top1 * r as f64;
        rows += r;
        if let Some((mname, mv)) = mask
            && enc.add(&ff, &qf, f.shape(), mv)
        {
            enc_mask = Some(mname);
        }
    }
    m.mean_abs = if elems == 0 {
        0.0
    } else {
        abs_sum / elems as f64
    };
    m.top1 = if rows == 0 {
        1.0
    } else {
        top1_sum / rows as f64
    };
    let encoder = enc_mask.map(|n| enc.finish(n));
    let mut failures = Vec::new();
    // An encoder's padded positions carry values nobody reads: its verdict is the valid
    // tokens' and the pooled embeddings' cosines, the raw one is only reported.
    if encoder.is_none() && (m.cosine.is_nan() || m.cosine < tol.min_cosine) {
        failures.push(format!("cosine {:.6} below {}", m.cosine, tol.min_cosine));
    }
    if let Some(e) = &encoder {
        if e.token_cosine_mean.is_nan() || e.token_cosine_mean < tol.min_cosine {
            failures.push(format!(
                "valid-token cosine {:.6} below {}",
                e.token_cosine_mean, tol.min_cosine
            ));
        }
        if e.pooled_cosine_min.is_nan() || e.pooled_cosine_min < tol.min_cosine {
            failures.push(format!(
                "pooled cosine {:.6} below {}",
                e.pooled_cosine_min, tol.min_cosine
            ));
        }
    }
    if let Some(lim) = tol.max_abs
        && (m.max_abs.is_nan() || m.max_abs > lim)
    {
        failures.push(format!("max-abs {:.6e} above {lim}", m.max_abs));
    }
    Ok(OutputReport {
        name: name.to_string(),
        shape: samples
            .first()
            .map(|(f, _, _)| f.shape().to_vec())
            .unwrap_or_default(),
        pass: failures.is_empty(),
        metrics: m,
        encoder,
        failures,
    })
}

impl OutputReport {
    /// The lowest of the cosines the tolerance checks: the raw one, or for an encoder the
    /// valid-token mean and the pooled minimum.
    pub fn worst_cosine(&self) -> f64 {
        match &self.encoder {
            Some(e) => e.token_cosine_mean.min(e.pooled_cosine_min),
            None => self.metrics.cosine,
        }
    }
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
/// onnxruntime's saturating u8 x s8 kernel).
pub fn compare_models_with(
    float: &Model,
    quant: &Model,
    inputs: HashMap<String, Value>,
    tol: &Tolerance,
    quant_options: &Options,
) -> Result<Report> {
    compare_models_on_samples(float, quant, &[inputs], tol, quant_options)
}

/// Runs both models on every sample and compares each output over all of them (see
/// [`compare_output_samples`]); encoder metrics use the float model's mask input
/// ([`crate::samples::mask_input`]).
pub fn compare_models_on_samples(
    float: &Model,
    quant: &Model,
    samples: &[HashMap<String, Value>],
    tol: &Tolerance,
    quant_options: &Options,
) -> Result<Report> {
    // The float model runs under the same memory budget, without the emulations.
    let float_options = Options {
        max_memory: quant_options.max_memory,
        ..Default::default()
    };
    let fs = Session::new(float, &float_options)?;
    let float_outputs = samples
        .iter()
        .map(|s| fs.run(s.clone()))
        .collect::<Result<Vec<_>>>()?;
    drop(fs);
    let qs = Session::new(quant, quant_options)?;
    let quant_outputs = samples
        .iter()
        .map(|s| Ok(qs.run(s.clone())?.into_iter().collect()))
        .collect::<Result<Vec<_>>>()?;
    let mask = crate::samples::mask_input(&float.graph);
    compare_runs(
        &float_outputs,
        &quant_outputs,
        samples,
        mask.as_deref(),
        tol,
    )
}

/// Compares the outputs of runs already made: `float[i]` and `quant[i]` on `samples[i]`;
/// `mask` names the encoder's attention-mask input, if any.
pub fn compare_runs(
    float: &[crate::runtime::session::NamedValues],
    quant: &[HashMap<String, Value>],
    samples: &[HashMap<String, Value>],
    mask: Option<&str>,
    tol: &Tolerance,
) -> Result<Report> {
    let mut outputs = Vec::new();
    let Some(first) = float.first() else {
        return Err(Error::Other("no samples to compare on".into()));
    };
    for (name, _) in first {
        let mut pairs = Vec::with_capacity(float.len());
        for ((fo, qo), feed) in float.iter().zip(quant).zip(samples) {
            let fv = fo
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| Error::Other(format!("output '{name}' missing from a run")))?;
            let qv = qo.get(name).ok_or_else(|| {
                Error::Other(format!(
                    "output '{name}' of the float model is not an output of the quantized model"
                ))
            })?;
            let m = mask.and_then(|m| Some((m, feed.get(m)?)));
            pairs.push((fv, qv, m));
        }
        outputs.push(compare_output_samples(name, &pairs, tol)?);
    }
    Ok(Report {
        tolerance: tol.clone(),
        samples: float.len(),
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
    fn encoder_figures_mask_padding() {
        // Batch 2, seq 2, hidden 2. Sentence 0: token 1 is padding and wildly off; sentence 1:
        // both tokens valid, token 1 off by a rotation.
        let f = Value::F32(
            ndarray::Array3::from_shape_vec((2, 2, 2), vec![1., 0., 5., 5., 1., 0., 0., 1.])
                .unwrap()
                .into_dyn(),
        );
        let q = Value::F32(
            ndarray::Array3::from_shape_vec((2, 2, 2), vec![1., 0., -5., 5., 1., 0., 1., 1.])
                .unwrap()
                .into_dyn(),
        );
        let mask = Value::I64(ndarray::arr2(&[[1i64, 0], [1, 1]]).into_dyn());
        let r = compare_output_samples(
            "h",
            &[(&f, &q, Some(("attention_mask", &mask)))],
            &Tolerance::default(),
        )
        .unwrap();
        let e = r.encoder.as_ref().unwrap();
        assert_eq!(e.valid_tokens, 3);
        let c = 1.0 / 2f64.sqrt();
        assert!((e.token_cosine_min - c).abs() < 1e-12, "{e:?}");
        assert!(
            (e.token_cosine_mean - (2.0 + c) / 3.0).abs() < 1e-12,
            "{e:?}"
        );
        // Pooled: sentence 0 is token 0 alone (cosine 1); sentence 1 is [1,1]/2 vs [2,1]/2.
        let pooled = 3.0 / (2f64.sqrt() * 5f64.sqrt());
        assert!((e.pooled_cosine_min - pooled).abs() < 1e-12, "{e:?}");
        // The padded token drags the raw cosine below the tolerance, the verdict ignores it.
        assert!(r.metrics.cosine < 0.99);
        assert!(!r.pass, "the valid tokens are below 0.99 too");
        assert!(r.failures.iter().all(|f| !f.starts_with("cosine")), "{r:?}");
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
