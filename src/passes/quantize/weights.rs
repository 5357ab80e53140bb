//! Weight quantization math, as onnxruntime's `quantize_dynamic` does it
//! (REFERENCE.md §2):
//!
//! - the range always includes zero: `rmin = min(min w, 0)`, `rmax = max(max w, 0)`;
//! - ranges: int8 `[-128, 127]`, symmetric int8 `[-127, 127]`, reduce-range int8 `[-64, 64]`;
//!   uint8 `[0, 255]`, reduce-range uint8 `[0, 127]`;
//! - symmetric: `scale = max(|rmin|, |rmax|) * 2 / (qmax - qmin)`, zero point
//!   `round((qmax + qmin) / 2)` (0 for int8, 128 for uint8);
//! - asymmetric: `scale = (rmax - rmin) / (qmax - qmin)` in f64, stored as f32, and
//!   `zp = round(qmin - rmin / scale)`;
//! - a scale below the smallest normal f32 becomes 1 with zero point 0;
//! - `q = clamp(round_half_even(w / scale) + zp, qmin, qmax)`, the division in f32.
//!
//! Per-tensor gives one scale; per-axis one scale per index along the axis. Work is spread
//! over rayon's pool: large weights (a 33278x512 embedding) quantize in parallel.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use rayon::prelude::*;

use crate::ir::Tensor;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightType {
    #[default]
    Int8,
    Uint8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightQuantOptions {
    pub weight_type: WeightType,
    pub symmetric: bool,
    pub reduce_range: bool,
}

impl Default for WeightQuantOptions {
    fn default() -> Self {
        WeightQuantOptions {
            weight_type: WeightType::Int8,
            symmetric: true,
            reduce_range: false,
        }
    }
}

impl WeightQuantOptions {
    /// The integer range `[qmin, qmax]` of quantized values.
    pub fn qrange(&self) -> (i32, i32) {
        match (self.weight_type, self.reduce_range, self.symmetric) {
            (WeightType::Uint8, false, _) => (0, 255),
            (WeightType::Uint8, true, _) => (0, 127),
            (WeightType::Int8, true, _) => (-64, 64),
            (WeightType::Int8, false, true) => (-127, 127),
            (WeightType::Int8, false, false) => (-128, 127),
        }
    }
}

/// Quantized values of either signedness.
#[derive(Clone, Debug, PartialEq)]
pub enum QValues {
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeight {
    pub values: QValues,
    /// One per tensor, or one per index along `axis`.
    pub scales: Vec<f32>,
    pub zero_points: Vec<i32>,
    pub axis: Option<usize>,
}

/// Round half to even (numpy's `round`), in f32.
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Scale and zero point for a value range.
pub fn scale_zero_point(min: f32, max: f32, opts: &WeightQuantOptions) -> (f32, i32) {
    let (qmin, qmax) = opts.qrange();
    let rmin = min.min(0.0) as f64;
    let rmax = max.max(0.0) as f64;
    let (scale, zp) = if opts.symmetric {
        let absmax = rmin.abs().max(rmax.abs());
        let scale = absmax * 2.0 / (qmax - qmin) as f64;
        let zp = ((qmax + qmin) as f64 / 2.0).round_ties_even() as i32;
        (scale, zp)
    } else {
        let scale = (rmax - rmin) / (qmax - qmin) as f64;
        let zp = if scale > 0.0 {
            (qmin as f64 - rmin / scale).round_ties_even() as i32
        } else {
            0
        };
        (scale, zp)
    };
    let scale32 = scale as f32;
    // Also catches NaN (a weight holding NaN or inf).
    if scale32.is_nan() || scale32 < f32::MIN_POSITIVE {
        return (1.0, 0);
    }
    (scale32, zp.clamp(qmin, qmax))
}

/// Smallest and largest value of a chunk, ignoring NaN like `f32::min`, written as selects
/// over 16 lanes so that it compiles to packed min/max instructions.
fn chunk_min_max(c: &[f32], init: (f32, f32)) -> (f32, f32) {
    let mut lo = [init.0; 16];
    let mut hi = [init.1; 16];
    let mut it = c.chunks_exact(16);
    for b in &mut it {
        for k in 0..16 {
            lo[k] = if b[k] < lo[k] { b[k] } else { lo[k] };
            hi[k] = if b[k] > hi[k] { b[k] } else { hi[k] };
        }
    }
    let (mut l, mut h) = init;
    for &v in lo.iter().chain(it.remainder()) {
        l = l.min(v);
    }
    for &v in hi.iter().chain(it.remainder()) {
        h = h.max(v);
    }
    (l, h)
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .par_chunks(1 << 16)
        .map(|c| chunk_min_max(c, (f32::INFINITY, f32::NEG_INFINITY)))
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        )
}

fn quantize_into(values: &[f32], out: &mut [i32], scale: f32, zp: i32, qmin: i32, qmax: i32) {
    out.par_chunks_mut(1 << 16)
        .zip(values.par_chunks(1 << 16))
        .for_each(|(o, v)| {
            for (o, &v) in o.iter_mut().zip(v) {
                *o = (round_half_even(v / scale) as i32)
                    .saturating_add(zp)
                    .clamp(qmin, qmax);
            }
        });
}

/// Quantizes `w` per tensor (`axis = None`) or per index along `axis`.
///
/// Per tensor, along the first axis (rows) and along the last axis (columns, the MatMul
/// case) it works in one pass over a contiguous copy at most, writing 8-bit values directly:
/// a 33278x512 embedding needs no buffer wider than its int8 result. Other axes go through
/// a permuted copy.
pub fn quantize_weight(
    w: ArrayViewD<f32>,
    axis: Option<usize>,
    opts: &WeightQuantOptions,
) -> QuantizedWeight {
    let rank = w.ndim();
    if rank == 0 || axis.is_some_and(|a| a != 0 && a + 1 != rank) {
        return quantize_weight_permuted(w, axis, opts);
    }
    let shape = w.shape().to_vec();
    let data = w.as_standard_layout();
    let flat = data.as_slice().expect("standard layout is contiguous");
    let (qmin, qmax) = opts.qrange();
    // Per-element parameters come from `param_of(index)`.
    let (scales, zero_points): (Vec<f32>, Vec<i32>) = match axis {
        None => {
            let (lo, hi) = if flat.is_empty() {
                (0.0, 0.0)
            } else {
                min_max(flat)
            };
            let (s, z) = scale_zero_point(lo, hi, opts);
            (vec![s], vec![z])
        }
        Some(0) => {
            let channels = shape[0];
            let row = flat.len() / channels.max(1);
            if row == 0 {
                (0..channels)
                    .map(|_| scale_zero_point(0.0, 0.0, opts))
                    .unzip()
            } else {
                flat.par_chunks(row)
                    .with_min_len((1 << 14) / row.max(1) + 1)
                    .map(|v| {
                        let (lo, hi) = chunk_min_max(v, (0.0, 0.0));
                        scale_zero_point(lo, hi, opts)
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .unzip()
            }
        }
        Some(_) => {
            let cols = shape[rank - 1];
            let block = (cols * 256).max(1);
            let (lo, hi) = if cols == 0 {
                (vec![], vec![])
            } else {
                flat.par_chunks(block)
                    .map(|b| {
                        let mut lo = vec![0f32; cols];
                        let mut hi = vec![0f32; cols];
                        for r in b.chunks(cols) {
                            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r) {
                                *l = l.min(x);
                                *h = h.max(x);
                            }
                        }
                        (lo, hi)
                    })
                    .reduce(
                        || (vec![0f32; cols], vec![0f32; cols]),
                        |(mut l1, mut h1), (l2, h2)| {
                            for (a, b) in l1.iter_mut().zip(&l2) {
                                *a = a.min(*b);
                            }
                            for (a, b) in h1.iter_mut().zip(&h2) {
                                *a = a.max(*b);
                            }
                            (l1, h1)
                        },
                    )
            };
            lo.iter()
                .zip(&hi)
                .map(|(&l, &h)| scale_zero_point(l, h, opts))
                .unzip()
        }
    };
    let layout = match axis {
        None => Layout::Tensor,
        Some(0) => Layout::Rows(flat.len() / shape[0].max(1)),
        Some(_) => Layout::Cols(shape[rank - 1]),
    };
    let p = Params {
        scales: &scales,
        zero_points: &zero_points,
        qmin,
        qmax,
    };
    let values = match opts.weight_type {
        WeightType::Int8 => {
            let mut out = vec![0i8; flat.len()];
            fill(flat, &mut out, layout, &p, |q| q as i8);
            QValues::I8(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("same shape"))
        }
        WeightType::Uint8 => {
            let mut out = vec![0u8; flat.len()];
            fill(flat, &mut out, layout, &p, |q| q as u8);
            QValues::U8(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("same shape"))
        }
    };
    QuantizedWeight {
        values,
        scales,
        zero_points,
        axis,
    }
}

/// Which scale each element of a contiguous weight uses.
#[derive(Clone, Copy)]
enum Layout {
    Tensor,
    /// One per row of this many elements.
    Rows(usize),
    /// One per column of a row-major matrix with this many columns.
    Cols(usize),
}

struct Params<'a> {
    scales: &'a [f32],
    zero_points: &'a [i32],
    qmin: i32,
    qmax: i32,
}

/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even (the default rounding mode), without a libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `clamp(round_half_even(v / scale) + zp, qmin, qmax)`, vectorizable. Magnitudes of 2^22
/// and more are clamped whatever their rounding, and NaN becomes 0 as `as i32` makes it.
#[inline(always)]
fn quantize_one(v: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
    let x = v / scale;
    let r = if x.abs() < 4_194_304.0 {
        (x + ROUND_MAGIC) - ROUND_MAGIC
    } else {
        x
    };
    (r as i32).saturating_add(zp).clamp(qmin, qmax)
}

fn fill<T: Copy + Send>(
    flat: &[f32],
    out: &mut [T],
    layout: Layout,
    p: &Params,
    conv: impl Fn(i32) -> T + Sync,
) {
    const CHUNK: usize = 1 << 16;
    let (qmin, qmax) = (p.qmin, p.qmax);
    match layout {
        Layout::Tensor => {
            let (s, z) = (p.scales[0], p.zero_points[0]);
            out.par_chunks_mut(CHUNK)
                .zip(flat.par_chunks(CHUNK))
                .for_each(|(o, v)| {
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o = conv(quantize_one(v, s, z, qmin, qmax));
                    }
                });
        }
        Layout::Rows(row) if row > 0 => {
            out.par_chunks_mut(row)
                .zip(flat.par_chunks(row))
                .zip(p.scales.par_iter().zip(p.zero_points.par_iter()))
                .with_min_len((CHUNK / row).max(1))
                .for_each(|((o, v), (&s, &z))| {
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o = conv(quantize_one(v, s, z, qmin, qmax));
                    }
                });
        }
        Layout::Cols(cols) if cols > 0 => {
            let (ss, zs) = (&p.scales[..cols], &p.zero_points[..cols]);
            out.par_chunks_mut(cols)
                .zip(flat.par_chunks(cols))
                .with_min_len((CHUNK / cols).max(1))
                .for_each(|(o, v)| {
                    for (((o, &v), &s), &z) in o.iter_mut().zip(v).zip(ss).zip(zs) {
                        *o = conv(quantize_one(v, s, z, qmin, qmax));
                    }
                });
        }
        _ => {}
    }
}

/// The general path: moves `axis` to the front, quantizes each channel, moves it back.
fn quantize_weight_permuted(
    w: ArrayViewD<f32>,
    axis: Option<usize>,
    opts: &WeightQuantOptions,
) -> QuantizedWeight {
    let (qmin, qmax) = opts.qrange();
    let shape = w.shape().to_vec();
    let (q, scales, zero_points) = match axis {
        None => {
            let flat = w.as_standard_layout();
            let flat = flat.as_slice().expect("standard layout is contiguous");
            let (lo, hi) = if flat.is_empty() {
                (0.0, 0.0)
            } else {
                min_max(flat)
            };
            let (scale, zp) = scale_zero_point(lo, hi, opts);
            let mut q = vec![0i32; flat.len()];
            quantize_into(flat, &mut q, scale, zp, qmin, qmax);
            (
                ArrayD::from_shape_vec(IxDyn(&shape), q).expect("same shape"),
                vec![scale],
                vec![zp],
            )
        }
        Some(a) => {
            // Move the axis to the front so each channel is one contiguous row.
            let mut perm: Vec<usize> = (0..shape.len()).collect();
            perm.remove(a);
            perm.insert(0, a);
            let moved = w
                .view()
                .permuted_axes(perm.clone())
                .as_standard_layout()
                .into_owned();
            let channels = shape[a];
            let row = moved.len() / channels.max(1);
            let data = moved.as_slice().expect("standard layout");
            let mut q = vec![0i32; data.len()];
            let params: Vec<(f32, i32)> = q
                .par_chunks_mut(row.max(1))
                .zip(data.par_chunks(row.max(1)))
                .map(|(o, v)| {
                    let (lo, hi) = v
                        .iter()
                        .fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                    let (scale, zp) = scale_zero_point(lo, hi, opts);
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o = (round_half_even(v / scale) as i32)
                            .saturating_add(zp)
                            .clamp(qmin, qmax);
                    }
                    (scale, zp)
                })
                .collect();
            let moved_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let qm = ArrayD::from_shape_vec(IxDyn(&moved_shape), q).expect("same shape");
            // Undo the permutation.
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            let back = qm.permuted_axes(inverse).as_standard_layout().into_owned();
            let (s, z) = if channels == 0 {
                (vec![], vec![])
            } else {
                params.into_iter().unzip()
            };
            (back, s, z)
        }
    };
    let values = match opts.weight_type {
        WeightType::Int8 => QValues::I8(q.mapv(|v| v as i8)),
        WeightType::Uint8 => QValues::U8(q.mapv(|v| v as u8)),
    };
    QuantizedWeight {
        values,
        scales,
        zero_points,
        axis,
    }
}

impl QuantizedWeight {
    /// The quantized values as an initializer.
    pub fn values_tensor(&self, name: &str) -> Tensor {
        match &self.values {
            QValues::I8(a) => Tensor::from_array(name, &a.view()),
            QValues::U8(a) => Tensor::from_array(name, &a.view()),
        }
    }

    /// The quantized values as an initializer, moved out without a copy (`values` is left
    /// empty): the int8 copy of a large table is not duplicated on its way into the model.
    pub fn take_values_tensor(&mut self, name: &str) -> Tensor {
        // The placeholder keeps the signedness: zero_point_tensor reads it afterwards.
        let empty = match &self.values {
            QValues::I8(_) => QValues::I8(ArrayD::zeros(IxDyn(&[0]))),
            QValues::U8(_) => QValues::U8(ArrayD::zeros(IxDyn(&[0]))),
        };
        let (dims, dtype, bytes) = match std::mem::replace(&mut self.values, empty) {
            QValues::I8(a) if a.is_standard_layout() => {
                let dims = a.shape().to_vec();
                let (v, _) = a.into_raw_vec_and_offset();
                (
                    dims,
                    crate::onnx::tensor_proto::DataType::Int8,
                    bytemuck::cast_vec::<i8, u8>(v),
                )
            }
            QValues::U8(a) if a.is_standard_layout() => {
                let dims = a.shape().to_vec();
                let (v, _) = a.into_raw_vec_and_offset();
                (dims, crate::onnx::tensor_proto::DataType::Uint8, v)
            }
            other => {
                let t = match &other {
                    QValues::I8(a) => Tensor::from_array(name, &a.view()),
                    QValues::U8(a) => Tensor::from_array(name, &a.view()),
                };
                return t;
            }
        };
        Tensor {
            proto: crate::onnx::TensorProto {
                name: Some(name.to_string()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(dtype as i32),
                raw_data: Some(bytes::Bytes::from(bytes)),
                ..Default::default()
            },
        }
    }

    /// Scales as an initializer of the given shape (`[]` for per-tensor, `[N]` per-axis, or
    /// e.g. `[D, 4H]` for recurrent weights).
    pub fn scale_tensor(&self, name: &str, shape: &[usize]) -> Tensor {
        Tensor::from_vec(name, shape, self.scales.clone())
    }

    /// Zero points as an initializer of the given shape, typed like the values.
    pub fn zero_point_tensor(&self, name: &str, shape: &[usize]) -> Tensor {
        match &self.values {
            QValues::I8(_) => Tensor::from_vec(
                name,
                shape,
                self.zero_points.iter().map(|&z| z as i8).collect(),
            ),
            QValues::U8(_) => Tensor::from_vec(
                name,
                shape,
                self.zero_points.iter().map(|&z| z as u8).collect(),
            ),
        }
    }

    /// Dequantized values (for accuracy checks and weight-only reference math).
    pub fn dequantize(&self) -> ArrayD<f32> {
        let q: ArrayD<f32> = match &self.values {
            QValues::I8(a) => a.mapv(|v| v as f32),
            QValues::U8(a) => a.mapv(|v| v as f32),
        };
        match self.axis {
            None => q.mapv(|v| (v - self.zero_points[0] as f32) * self.scales[0]),
            Some(a) => {
                let mut out = q;
                for (i, mut lane) in out.axis_iter_mut(Axis(a)).enumerate() {
                    let (s, z) = (self.scales[i], self.zero_points[i] as f32);
                    lane.mapv_inplace(|v| (v - z) * s);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    fn opts(weight_type: WeightType, symmetric: bool, reduce_range: bool) -> WeightQuantOptions {
        WeightQuantOptions {
            weight_type,
            symmetric,
            reduce_range,
        }
    }

    #[test]
    fn symmetric_int8_per_tensor_matches_hand_computation() {
        let w = arr2(&[[0.5f32, -1.27], [0.0, 1.0]]).into_dyn();
        let q = quantize_weight(w.view(), None, &WeightQuantOptions::default());
        // absmax 1.27 -> scale 1.27*2/254 = 0.01
        assert!((q.scales[0] - 0.01).abs() < 1e-9);
        assert_eq!(q.zero_points, vec![0]);
        assert_eq!(
            q.values,
            QValues::I8(arr2(&[[50i8, -127], [0, 100]]).into_dyn())
        );
    }

    #[test]
    fn asymmetric_uint8_includes_zero_in_range() {
        // All positive: rmin is forced to 0, so zp is 0.
        let w = arr2(&[[1.0f32, 2.55]]).into_dyn();
        let q = quantize_weight(w.view(), None, &opts(WeightType::Uint8, false, false));
        assert!((q.scales[0] - 0.01).abs() < 1e-7);
        assert_eq!(q.zero_points, vec![0]);
        assert_eq!(q.values, QValues::U8(arr2(&[[100u8, 255]]).into_dyn()));
        // Negative and positive: zp = round(0 - (-1)/scale).
        let w = arr2(&[[-1.0f32, 1.55]]).into_dyn();
        let q = quantize_weight(w.view(), None, &opts(WeightType::Uint8, false, false));
        assert!((q.scales[0] - 0.01).abs() < 1e-7);
        assert_eq!(q.zero_points, vec![100]);
        assert_eq!(q.values, QValues::U8(arr2(&[[0u8, 255]]).into_dyn()));
    }

    #[test]
    fn rounds_half_to_even() {
        // scale 1/127 * 127 = 1: w = 2.5 -> 2, 3.5 -> 4, -0.5 -> -0
        let w = arr2(&[[127.0f32, 2.5, 3.5, -0.5]]).into_dyn();
        let q = quantize_weight(w.view(), None, &WeightQuantOptions::default());
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.values, QValues::I8(arr2(&[[127i8, 2, 4, 0]]).into_dyn()));
    }

    #[test]
    fn all_zero_and_constant_tensors() {
        let z = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
        for o in [
            opts(WeightType::Int8, true, false),
            opts(WeightType::Uint8, false, false),
            opts(WeightType::Uint8, true, false),
        ] {
            let q = quantize_weight(z.view(), None, &o);
            assert_eq!(
                (q.scales.clone(), q.zero_points.clone()),
                (vec![1.0], vec![0]),
                "{o:?}"
            );
        }
        let c = ArrayD::<f32>::from_elem(IxDyn(&[2, 2]), -3.0);
        let q = quantize_weight(c.view(), None, &opts(WeightType::Uint8, false, false));
        // range [-3, 0]: scale 3/255, zp 255, every value 0.
        assert_eq!(q.zero_points, vec![255]);
        assert_eq!(q.values, QValues::U8(ArrayD::zeros(IxDyn(&[2, 2]))));
        let q = quantize_weight(c.view(), None, &WeightQuantOptions::default());
        assert_eq!(
            q.values,
            QValues::I8(ArrayD::from_elem(IxDyn(&[2, 2]), -127))
        );
    }

    #[test]
    fn reduce_range_and_symmetric_uint8_zero_point() {
        let w = arr2(&[[-0.64f32, 0.32]]).into_dyn();
        let q = quantize_weight(w.view(), None, &opts(WeightType::Int8, true, true));
        assert!((q.scales[0] - 0.01).abs() < 1e-7);
        assert_eq!(q.values, QValues::I8(arr2(&[[-64i8, 32]]).into_dyn()));
        let q = quantize_weight(w.view(), None, &opts(WeightType::Uint8, true, false));
        assert_eq!(q.zero_points, vec![128]);
    }

    #[test]
    fn magic_rounding_matches_round_half_even() {
        let specials = [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            126.5,
            127.5,
            -127.5,
            -128.5,
            0.49999997,
            4_194_303.5,
            4_194_304.0,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            1e-30,
        ];
        let mut state = 7u32;
        let randoms = (0..100_000).map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            ((state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 600.0
        });
        for v in specials.into_iter().chain(randoms) {
            for (qmin, qmax, zp) in [(-128, 127, 0), (0, 255, 128), (-64, 64, 0), (0, 255, 3)] {
                let want = (round_half_even(v / 1.0) as i32)
                    .saturating_add(zp)
                    .clamp(qmin, qmax);
                assert_eq!(quantize_one(v, 1.0, zp, qmin, qmax), want, "{v}");
            }
        }
    }

    #[test]
    fn fast_paths_match_the_permuted_path() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) as f32 / (1 << 24) as f32 * 4.0 - 1.5
        };
        let w = ArrayD::from_shape_fn(IxDyn(&[37, 300]), |_| next());
        let w3 = ArrayD::from_shape_fn(IxDyn(&[3, 5, 7]), |_| next());
        for o in [
            opts(WeightType::Int8, true, false),
            opts(WeightType::Int8, false, false),
            opts(WeightType::Uint8, false, true),
            opts(WeightType::Uint8, true, false),
        ] {
            for (a, axis) in [
                (&w, None),
                (&w, Some(0)),
                (&w, Some(1)),
                (&w3, Some(0)),
                (&w3, Some(2)),
                (&w3, None),
            ] {
                let fast = quantize_weight(a.view(), axis, &o);
                let slow = quantize_weight_permuted(a.view(), axis, &o);
                assert_eq!(fast, slow, "{o:?} axis {axis:?}");
            }
            let t = w.t();
            assert_eq!(
                quantize_weight(t.view(), Some(1), &o),
                quantize_weight_permuted(t.view(), Some(1), &o)
            );
        }
    }

    #[test]
    fn per_channel_scales_follow_the_axis() {
        let w = arr2(&[[1.0f32, -0.5], [-2.54, 0.25]]).into_dyn();
        let q = quantize_weight(w.view(), Some(1), &WeightQuantOptions::default());
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 0.02).abs() < 1e-7);
        assert!((q.scales[1] - 1.0 / 254.0).abs() < 1e-7);
        assert_eq!(
            q.values,
            QValues::I8(arr2(&[[50i8, -127], [-127, 64]]).into_dyn())
        );
        let deq = q.dequantize();
        assert!((deq[[1, 0]] + 2.54).abs() < 1e-6);
        let copied = q.values_tensor("w");
        let mut q = q;
        assert_eq!(q.take_values_tensor("w"), copied);
        assert_eq!(
            q.zero_point_tensor("z", &[2]).data_type().unwrap(),
            crate::onnx::tensor_proto::DataType::Int8
        );
        let mut u = quantize_weight(w.view(), None, &opts(WeightType::Uint8, false, false));
        let _ = u.take_values_tensor("u");
        assert_eq!(
            u.zero_point_tensor("z", &[]).data_type().unwrap(),
            crate::onnx::tensor_proto::DataType::Uint8
        );
    }
}
