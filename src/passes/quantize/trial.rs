//! Quantize-and-measure trials, shared by the searches that judge a rewrite by running it
//! (accuracy targets, [`super::target`]; smoothing's alpha, [`super::smooth_alpha`]): the
//! float model runs once on the samples, then each candidate model is quantized, run in the
//! built-in runtime on the same samples and compared with those outputs as `verify` compares
//! them (for an encoder output also its valid-token and pooled cosines).

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::session::NamedValues;
use crate::runtime::{Options, Session};
use crate::samples::Feed;
use crate::verify::{Report, Tolerance, compare_runs};

use super::{QuantizeOptions, quantize};

/// The float outputs to measure candidates against, and how many trials were run.
pub struct Trials<'a> {
    samples: &'a [Feed],
    float_outputs: Vec<NamedValues>,
    mask: Option<String>,
    tol: Tolerance,
    runtime: &'a Options,
    pub count: usize,
}

impl<'a> Trials<'a> {
    /// Runs `float` (the model before quantization) on every sample. `tol` decides each
    /// report's pass flags.
    pub fn new(
        float: &Model,
        samples: &'a [Feed],
        tol: &Tolerance,
        runtime: &'a Options,
    ) -> Result<Self> {
        if samples.is_empty() {
            return Err(Error::Other(
                "measuring a quantized model needs at least one sample".into(),
            ));
        }
        let session = Session::new(float, runtime)?;
        let float_outputs = samples
            .iter()
            .map(|s| session.run(s.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Trials {
            samples,
            float_outputs,
            mask: crate::samples::mask_input(&float.graph),
            tol: tol.clone(),
            runtime,
            count: 0,
        })
    }

    /// Quantizes `model` (a float model, consumed) with `opts`, runs it on every sample and
    /// compares with the float outputs.
    pub fn quantize_and_measure(
        &mut self,
        mut model: Model,
        opts: &QuantizeOptions,
    ) -> Result<Report> {
        let mut opts = opts.clone();
        // The trial runs the quantized values at once; nothing is saved from it.
        opts.defer_values = false;
        quantize(&mut model, &opts, &mut |_, _, _| {})?;
        let session = Session::new(&model, self.runtime)?;
        let mut outs = Vec::with_capacity(self.samples.len());
        for s in self.samples {
            outs.push(session.run(s.clone())?.into_iter().collect());
        }
        self.count += 1;
        compare_runs(
            &self.float_outputs,
            &outs,
            self.samples,
            self.mask.as_deref(),
            &self.tol,
        )
    }
}

/// The worst cosine (for an encoder output, of its valid-token and pooled cosines too) and
/// the largest max-abs error over a report's outputs.
pub fn worst(r: &Report) -> (f64, f64) {
    r.outputs.iter().fold((1.0f64, 0.0f64), |(c, m), o| {
        (c.min(o.worst_cosine()), m.max(o.metrics.max_abs))
    })
}
