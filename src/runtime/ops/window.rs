//! Signal-processing constants: window functions and the mel filter bank (opset 17). Values
//! are computed in f64 and cast to `output_datatype` (default float; any numeric type the
//! runtime stores).
//!
//! - `HannWindow`: `sin²(πn/N)`; `HammingWindow`: `α - β·cos(2πn/N)` with `α = 25/46`,
//!   `β = 21/46`; `BlackmanWindow`: `0.42 - 0.5·cos(2πn/N) + 0.08·cos(4πn/N)`; for
//!   `n in 0..size`, where `N = size` when `periodic = 1` (default) and `size - 1` otherwise.
//!   `size` is an int32/int64 scalar.
//! - `MelWeightMatrix`: the `[dft_length/2 + 1, num_mel_bins]` matrix of triangular filters
//!   whose edges are `num_mel_bins + 2` points equally spaced on the mel scale
//!   (`2595·log10(1 + f/700)`) from `lower_edge_hertz` to `upper_edge_hertz`, each mapped to
//!   the spectrogram bin `floor((dft_length + 1)·f / sample_rate)`, as the reference computes
//!   them (bins outside the matrix are an error).

use std::f64::consts::PI;

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::util::{cast, dtype_of, elem_count, err, from_vec, ints, req, scalar_f64};
use super::{BuildCtx, FnOp, Op, Registry};

/// A window's value at `n` for period `period`.
type WindowFn = fn(f64, f64) -> f64;

fn hann(n: f64, period: f64) -> f64 {
    (PI * n / period).sin().powi(2)
}

fn hamming(n: f64, period: f64) -> f64 {
    let alpha = 25.0 / 46.0;
    alpha - (1.0 - alpha) * (2.0 * PI * n / period).cos()
}

fn blackman(n: f64, period: f64) -> f64 {
    0.42 - 0.5 * (2.0 * PI * n / period).cos() + 0.08 * (4.0 * PI * n / period).cos()
}

/// The `output_datatype` attribute (default float).
fn output_type(node: &Node) -> Result<DataType> {
    dtype_of(node.attr_or::<i64>("output_datatype", DataType::Float as i64)?)
}

/// A scalar integer input.
fn int_scalar(v: &Value, what: &str) -> Result<i64> {
    match ints(v, what)?.as_slice() {
        [x] => Ok(*x),
        other => Err(err(format!("{what} must be a scalar, got {other:?}"))),
    }
}

fn window(node: &Node, f: WindowFn) -> Result<Box<dyn Op>> {
    let to = output_type(node)?;
    let periodic = node.attr_or::<i64>("periodic", 1)? != 0;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let size = int_scalar(req(ins, 0)?, "size")?;
        let size = usize::try_from(size).map_err(|_| err(format!("size {size} is negative")))?;
        elem_count(&[size])?;
        let period = if periodic {
            size as f64
        } else {
            size as f64 - 1.0
        };
        let w: Vec<f64> = (0..size).map(|n| f(n as f64, period)).collect();
        Ok(vec![cast(&Value::F64(from_vec(&[size], w)?), to)?])
    })))
}

fn hann_window(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    window(node, hann)
}

fn hamming_window(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    window(node, hamming)
}

fn blackman_window(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    window(node, blackman)
}

fn mel_weight_matrix_f64(
    mel_bins: usize,
    dft_length: i64,
    sample_rate: i64,
    lower_hz: f64,
    upper_hz: f64,
) -> Result<ArrayD<f64>> {
    if dft_length <= 0 || sample_rate <= 0 {
        return Err(err(format!(
            "dft_length {dft_length} and sample_rate {sample_rate} must be positive"
        )));
    }
    let spec_bins = (dft_length / 2 + 1) as usize;
    let shape = [spec_bins, mel_bins];
    let mut out = vec![0.0; elem_count(&shape)?];
    let to_mel = |hz: f64| 2595.0 * (hz / 700.0).ln_1p() / std::f64::consts::LN_10;
    let (low, high) = (to_mel(lower_hz), to_mel(upper_hz));
    let points = mel_bins + 2;
    let step = (high - low) / points as f64;
    let edges: Vec<i64> = (0..points)
        .map(|i| {
            let hz = 700.0 * ((i as f64 * step + low) / 2595.0 * std::f64::consts::LN_10).exp_m1();
            (((dft_length + 1) as f64 * hz) / sample_rate as f64).floor() as i64
        })
        .collect();
    let mut set = |j: i64, i: usize, v: f64| -> Result<()> {
        match usize::try_from(j) {
            Ok(j) if j < spec_bins => {
                out[j * mel_bins + i] = v;
                Ok(())
            }
            _ => Err(err(format!(
                "filter edge at bin {j} is outside the {spec_bins} spectrogram bins \
                 (check lower_edge_hertz, upper_edge_hertz and sample_rate)"
            ))),
        }
    };
    for i in 0..mel_bins {
        let (lo, center, hi) = (edges[i], edges[i + 1], edges[i + 2]);
        if center == lo {
            set(center, i, 1.0)?;
        } else {
            for j in lo..=center {
                set(j, i, (j - lo) as f64 / (center - lo) as f64)?;
            }
        }
        for j in center..hi {
            set(j, i, (hi - j) as f64 / (hi - center) as f64)?;
        }
    }
    from_vec(&shape, out)
}

fn mel_weight_matrix(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let to = output_type(node)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let bins = int_scalar(req(ins, 0)?, "num_mel_bins")?;
        let bins =
            usize::try_from(bins).map_err(|_| err(format!("num_mel_bins {bins} is negative")))?;
        let m = mel_weight_matrix_f64(
            bins,
            int_scalar(req(ins, 1)?, "dft_length")?,
            int_scalar(req(ins, 2)?, "sample_rate")?,
            scalar_f64(req(ins, 3)?)?,
            scalar_f64(req(ins, 4)?)?,
        )?;
        Ok(vec![cast(&Value::F64(m), to)?])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "HannWindow", hann_window);
    r.register("", "HammingWindow", hamming_window);
    r.register("", "BlackmanWindow", blackman_window);
    r.register("", "MelWeightMatrix", mel_weight_matrix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_symmetric_and_peak_in_the_middle() {
        // Symmetric windows of odd length: 1 at the center (Blackman and Hann), ends at 0
        // (Hann) or 0.08 (Hamming).
        assert!((hann(2.0, 4.0) - 1.0).abs() < 1e-12);
        assert!(hann(0.0, 4.0).abs() < 1e-12);
        assert!((hamming(0.0, 4.0) - 4.0 / 46.0).abs() < 1e-12);
        assert!((blackman(2.0, 4.0) - 1.0).abs() < 1e-12);
        assert!((hann(1.0, 4.0) - hann(3.0, 4.0)).abs() < 1e-12);
    }

    #[test]
    fn mel_filters_rise_and_fall_and_check_bins() {
        let m = mel_weight_matrix_f64(2, 16, 8000, 0.0, 4000.0).unwrap();
        assert_eq!(m.shape(), &[9, 2]);
        // Every filter reaches 1 at its center bin.
        for i in 0..2 {
            let peak = m
                .index_axis(ndarray::Axis(1), i)
                .iter()
                .cloned()
                .fold(0.0, f64::max);
            assert_eq!(peak, 1.0);
        }
        // An upper edge past Nyquist maps past the last bin.
        assert!(mel_weight_matrix_f64(2, 16, 8000, 0.0, 40000.0).is_err());
    }
}
