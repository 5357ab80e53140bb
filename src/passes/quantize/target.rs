//! Accuracy targets (`rewrite --target-cosine X [--max-abs Y]`): quantize every candidate,
//! then keep the fewest, most sensitive nodes float until every output meets the target on
//! the sample inputs, measured in the built-in runtime against the float model.
//!
//! An output meets the target as `verify` judges it: cosine at least X (for an encoder output
//! its valid-token and pooled-embedding cosines, see [`crate::verify::EncoderMetrics`]) and
//! max-abs at most Y, on every sample.
//!
//! **Sensitivity** of a candidate node is measured with that node alone quantized (every
//! other node float): the worst of those cosines over the outputs, and the max-abs error. Its score is the share of the target's budget that node alone uses:
//! `max((1 - cosine) / (1 - X), max_abs / Y)`. Why this measure rather than the gain from
//! leaving the node float with all else quantized: both cost one run per candidate, but the
//! alone-quantized deficit is not masked by the other nodes' noise, and for small independent
//! rounding errors the deficits add up (`1 - cos ≈ |e|² / 2|f|²`, and the squared norms of
//! independent errors add), so the sum of the scores of the nodes left quantized predicts
//! the whole model's deficit and the order is the one that removes the most error per node
//! kept float. On a transformer it singles out what dominates: the FFN down-projections
//! whose inputs (after GELU) carry outlier channels.
//!
//! **Search**: with everything quantized, if the target is met nothing stays float.
//! Otherwise the candidates are sorted by score (most sensitive first) and the smallest `k`
//! such that keeping the first `k` float meets the target is found by binary search, each
//! probe re-quantizing and re-running the real model (so interactions are measured, not
//! estimated): `k = 0` is known to fail; `k = n - 1` (one node quantized, the least
//! sensitive) is measured first, and when even that fails the target cannot be met with any
//! node quantized and the outcome says so ([`TargetOutcome::met`] false; the CLI then fails
//! without writing the output). The probes assume that keeping more nodes float never
//! lowers accuracy; the achieved figures are the measured ones at the `k` chosen. About
//! `n + log2(n) + 1` quantize-and-run trials in all.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::Options;
use crate::samples::Feed;
use crate::verify::{Report, Tolerance};

use super::QuantizeOptions;
use super::policy::decide;
use super::trial::{Trials, worst};

/// What quantizing one node alone does to the outputs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sensitivity {
    /// Worst cosine over the outputs (for an encoder: valid-token and pooled) with only this
    /// node quantized.
    pub cosine: f64,
    /// Largest max-abs error over the outputs with only this node quantized.
    pub max_abs: f64,
    /// Share of the target's budget this node alone uses (the sort key).
    pub score: f64,
    /// 1 for the most sensitive node.
    pub rank: usize,
    pub kept_float: bool,
}

/// One candidate's measurement.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub node: String,
    pub op_type: String,
    pub sensitivity: Sensitivity,
}

/// The result of the search.
#[derive(Clone, Debug)]
pub struct TargetOutcome {
    /// Whether the target is met with at least one node quantized.
    pub met: bool,
    /// Every candidate, most sensitive first.
    pub candidates: Vec<Candidate>,
    /// Names of the nodes kept float (pass them to the policy's `exclude`).
    pub kept_float: Vec<String>,
    /// The figures with every candidate quantized.
    pub all_quantized: Report,
    /// The figures of the chosen model (with `kept_float` float), or, when the target
    /// cannot be met, those with only the least sensitive node quantized.
    pub achieved: Report,
    /// Quantize-and-run trials made.
    pub trials: usize,
}

/// Share of the target's budget used by a report's figures.
fn score(r: &Report, tol: &Tolerance) -> f64 {
    let (c, m) = worst(r);
    let mut s = (1.0 - c) / (1.0 - tol.min_cosine).max(1e-12);
    if let Some(lim) = tol.max_abs {
        s = s.max(m / lim.max(1e-30));
    }
    if s.is_nan() { f64::INFINITY } else { s }
}

/// The model and options every probe starts from.
struct Probe<'a> {
    base: &'a Model,
    opts: &'a QuantizeOptions,
    trials: Trials<'a>,
}

impl Probe<'_> {
    /// Quantizes a copy of the model with `include` (when set) as the only candidates and
    /// `exclude` left float, runs it on every sample and compares with the float outputs.
    fn measure(&mut self, include: Option<HashSet<String>>, exclude: &[String]) -> Result<Report> {
        let mut opts = self.opts.clone();
        if include.is_some() {
            opts.policy.include = include;
        }
        opts.policy.exclude.extend(exclude.iter().cloned());
        self.trials.quantize_and_measure(self.base.clone(), &opts)
    }
}

/// Finds the fewest, most sensitive candidates of `model` (a float model, already cleaned
/// and folded as it will be quantized) to keep float so that quantizing the rest with `opts`
/// meets `tol` on every sample. `runtime` runs the trials.
pub fn search(
    model: &Model,
    opts: &QuantizeOptions,
    samples: &[Feed],
    tol: &Tolerance,
    runtime: &Options,
) -> Result<TargetOutcome> {
    if samples.is_empty() {
        return Err(Error::Other(
            "an accuracy target needs at least one sample".into(),
        ));
    }
    let mut seen = HashSet::new();
    let names: Vec<(String, String)> = decide(&model.graph, &opts.policy)
        .into_iter()
        .filter(|d| d.quantize && seen.insert(d.node.clone()))
        .map(|d| (d.node, d.op_type))
        .collect();
    let mut t = Probe {
        base: model,
        opts,
        trials: Trials::new(model, samples, tol, runtime)?,
    };
    let all = t.measure(None, &[])?;
    let mut candidates = Vec::with_capacity(names.len());
    for (node, op_type) in names {
        let r = t.measure(Some(HashSet::from([node.clone()])), &[])?;
        let (cosine, max_abs) = worst(&r);
        candidates.push(Candidate {
            node,
            op_type,
            sensitivity: Sensitivity {
                cosine,
                max_abs,
                score: score(&r, tol),
                rank: 0,
                kept_float: false,
            },
        });
    }
    // Most sensitive first; ties keep graph order.
    candidates.sort_by(|a, b| b.sensitivity.score.total_cmp(&a.sensitivity.score));
    for (i, c) in candidates.iter_mut().enumerate() {
        c.sensitivity.rank = i + 1;
    }
    let n = candidates.len();
    let top =
        |k: usize| -> Vec<String> { candidates[..k].iter().map(|c| c.node.clone()).collect() };
    let (met, kept, achieved) = if all.pass || n == 0 {
        (all.pass, 0, all.clone())
    } else {
        let last = t.measure(None, &top(n - 1))?;
        if !last.pass {
            (false, n - 1, last)
        } else {
            // Invariant: keeping `lo` float fails, keeping `hi` float passes.
            let (mut lo, mut hi, mut best) = (0usize, n - 1, last);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let r = t.measure(None, &top(mid))?;
                if r.pass {
                    hi = mid;
                    best = r;
                } else {
                    lo = mid;
                }
            }
            (true, hi, best)
        }
    };
    let kept_float = if met { top(kept) } else { Vec::new() };
    for c in &mut candidates[..kept_float.len()] {
        c.sensitivity.kept_float = true;
    }
    Ok(TargetOutcome {
        met,
        kept_float,
        candidates,
        all_quantized: all,
        achieved,
        trials: t.trials.count,
    })
}

impl TargetOutcome {
    /// The summary line: how many nodes stayed float and the figures reached.
    pub fn summary(&self, tol: &Tolerance) -> String {
        let (c, m) = worst(&self.achieved);
        let (ca, ma) = worst(&self.all_quantized);
        let mut s = format!(
            "target cosine {}{}: kept {} of {} candidate node(s) float; worst cosine {:.6}, max-abs {:.3e} (all quantized: {:.6}, {:.3e}); {} trial(s)",
            tol.min_cosine,
            tol.max_abs
                .map(|y| format!(", max-abs {y}"))
                .unwrap_or_default(),
            self.kept_float.len(),
            self.candidates.len(),
            c,
            m,
            ca,
            ma,
            self.trials
        );
        for o in &self.achieved.outputs {
            if let Some(e) = &o.encoder {
                s.push_str(&format!(
                    "; {}: valid-token cosine {:.6}, pooled {:.6}",
                    o.name, e.token_cosine_mean, e.pooled_cosine_min
                ));
            }
        }
        s
    }

    /// The one-line message when the target cannot be met.
    pub fn unreachable_message(&self, tol: &Tolerance) -> String {
        let failures: Vec<String> = self
            .achieved
            .outputs
            .iter()
            .filter(|o| !o.pass)
            .map(|o| format!("output '{}': {}", o.name, o.failures.join(", ")))
            .collect();
        let least = self
            .candidates
            .last()
            .map(|c| format!("only '{}' quantized", c.node))
            .unwrap_or_else(|| "no candidate".into());
        format!(
            "the accuracy target (cosine {}{}) cannot be met with any node quantized: with {least}, {}",
            tol.min_cosine,
            tol.max_abs
                .map(|y| format!(", max-abs {y}"))
                .unwrap_or_default(),
            failures.join("; ")
        )
    }

    /// The report's reason for a node kept float.
    pub fn kept_reason(c: &Candidate, of: usize) -> String {
        format!(
            "kept float for the accuracy target: sensitivity rank {} of {of} (quantized alone: worst cosine {:.6}, max-abs {:.3e}, {:.1}% of the budget)",
            c.sensitivity.rank,
            c.sensitivity.cosine,
            c.sensitivity.max_abs,
            100.0 * c.sensitivity.score
        )
    }
}
