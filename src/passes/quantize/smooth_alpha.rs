//! `rewrite --smooth auto`: chooses SmoothQuant's alpha by measurement. Each alpha of
//! [`AUTO_ALPHAS`] is tried (the model smoothed with it on the samples, quantized with the
//! rewrite's options, run in the built-in runtime on the same samples), and so is the model
//! without smoothing; the choice is the trial with the highest worst cosine over the outputs
//! (for an encoder output: of its valid-token and pooled cosines), ties going to the
//! earlier trial (no smoothing first, then the smaller alpha).
//!
//! Why a search: the best alpha depends on how the activations are quantized and on the
//! model. On all-MiniLM-L6-v2, per-token activations do best at 0.5 and per-tensor ones at
//! 0.7, where 0.5 leaves per-tensor at 0.9926 instead of 0.9985 valid-token cosine
//! (BENCHMARKS.md, "Encoder speed on a CPU without VNNI"). Seven quantize-and-run trials.

use serde::Serialize;

use crate::error::Result;
use crate::model::Model;
use crate::runtime::Options;
use crate::samples::Feed;
use crate::verify::Tolerance;

use super::QuantizeOptions;
use super::smooth::{ActivationRanges, smooth_with};
use super::trial::{Trials, worst};

/// The alphas `--smooth auto` tries.
pub const AUTO_ALPHAS: [f64; 6] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// One trial of the search.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlphaTrial {
    /// `None`: the model without smoothing.
    pub alpha: Option<f64>,
    /// Worst cosine over the outputs on the samples, the quantity maximized.
    pub worst_cosine: f64,
    /// Largest max-abs error over the outputs.
    pub max_abs: f64,
}

/// The search's outcome.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlphaChoice {
    /// The alpha to smooth with; `None` when no alpha beat leaving the model unsmoothed.
    pub alpha: Option<f64>,
    /// Every trial, no smoothing first.
    pub trials: Vec<AlphaTrial>,
}

impl AlphaChoice {
    /// The summary line.
    pub fn summary(&self) -> String {
        let tried: Vec<String> = self
            .trials
            .iter()
            .map(|t| {
                let a = t.alpha.map_or("none".to_string(), |a| a.to_string());
                format!("{a} {:.6}", t.worst_cosine)
            })
            .collect();
        let chosen = match self.alpha {
            Some(a) => format!("alpha {a}"),
            None => "no smoothing (no alpha improved on it)".to_string(),
        };
        format!(
            "smooth auto: {chosen}; worst cosine on the samples by alpha: {}",
            tried.join(", ")
        )
    }
}

/// Measures every alpha of [`AUTO_ALPHAS`] and no smoothing on `model` (a float model,
/// cleaned and folded as it will be quantized) with `opts`, and returns the best. `ranges`:
/// the model's [`super::smooth::activation_ranges`] on `samples`.
pub fn choose_alpha(
    model: &Model,
    opts: &QuantizeOptions,
    samples: &[Feed],
    ranges: &ActivationRanges,
    runtime: &Options,
) -> Result<AlphaChoice> {
    let mut trials = Trials::new(model, samples, &Tolerance::default(), runtime)?;
    let mut measured = Vec::with_capacity(AUTO_ALPHAS.len() + 1);
    for alpha in std::iter::once(None).chain(AUTO_ALPHAS.iter().copied().map(Some)) {
        let mut candidate = model.clone();
        if let Some(a) = alpha {
            smooth_with(&mut candidate, &opts.policy, a, ranges)?;
        }
        let (worst_cosine, max_abs) = worst(&trials.quantize_and_measure(candidate, opts)?);
        measured.push(AlphaTrial {
            alpha,
            worst_cosine,
            max_abs,
        });
    }
    // The first of the highest (a NaN figure never wins).
    let mut best: Option<&AlphaTrial> = None;
    for t in measured.iter().filter(|t| !t.worst_cosine.is_nan()) {
        if best.is_none_or(|b| t.worst_cosine > b.worst_cosine) {
            best = Some(t);
        }
    }
    let best = best.and_then(|t| t.alpha);
    Ok(AlphaChoice {
        alpha: best,
        trials: measured,
    })
}
