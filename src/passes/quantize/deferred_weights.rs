//! Quantized weights whose values are computed while the model is written
//! ([`crate::ir::deferred`]): the rewriters get the scales and zero points now (they shape
//! the graph) and payloads that the save computes piece by piece.
//!
//! - Per tensor and per column, the ranges pass runs now and the values pass at save time.
//! - Per row with symmetric int8 (embedding tables, the default), every zero point is 0
//!   whatever the data, so nothing needs the data now: each row's range, scale and values
//!   are computed in one pass at save time, while the row is in cache, and the scales are
//!   written after the values (a [`RowScales`] met first computes its rows' ranges itself).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;

use super::weights::{
    CHUNK, FlatLayout, Params, QValues, QuantizedWeight, WeightQuantOptions, WeightSrc, WeightType,
    chunk_min_max, fill_run, flat_layout, needs_permute, quantize_weight, scale_zero_point,
};
use crate::ir::deferred::{self, Fill};

/// Like [`quantize_weight`], but the values of a large weight quantized as a whole, by rows
/// or by columns are left to be computed when the model is written
/// ([`crate::ir::deferred`]): only the ranges pass runs now. `take_values_tensor` then
/// gives an initializer whose payload is deferred.
pub fn quantize_weight_deferred<'a>(
    w: impl Into<WeightSrc<'a>>,
    axis: Option<usize>,
    opts: &WeightQuantOptions,
) -> QuantizedWeight {
    let w = w.into();
    if needs_permute(w.shape.len(), axis) || w.data.len() < deferred::MIN_DEFERRED {
        return quantize_weight(w, axis, opts);
    }
    if axis == Some(0)
        && opts.weight_type == WeightType::Int8
        && opts.symmetric
        && let Some(q) = rows_in_one_pass(&w, opts)
    {
        return q;
    }
    let layout = flat_layout(&w, axis, opts);
    let fill = DeferredValues {
        src: w.owned_bytes(),
        layout: layout.clone(),
        params: Params::of(opts),
    };
    let payload = deferred::deferred(Arc::new(fill));
    let mut q = layout.into_weight(&w.shape, axis, |_| QValues::empty(opts.weight_type));
    q.deferred = Some((w.shape.clone(), payload));
    q
}

/// The values pass of a weight, run piece by piece when the model is written.
struct DeferredValues {
    /// The float weight (little-endian), usually a slice of the memory-mapped input.
    src: Bytes,
    layout: FlatLayout,
    params: Params,
}

impl Fill for DeferredValues {
    fn len(&self) -> usize {
        self.src.len() / 4
    }

    fn granule(&self) -> usize {
        self.layout.granule()
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        let src: &[[u8; 4]] = bytemuck::cast_slice(&self.src);
        self.layout.fill(src, offset, out, &self.params);
        // The piece's file pages are done with (the ranges pass is over): one `madvise` per
        // piece rather than per parallel chunk keeps the resident input near a piece's size.
        crate::model::release_pages(bytemuck::cast_slice(&src[offset..offset + out.len()]));
    }

    fn identity(&self) -> Vec<u8> {
        let mut id = Vec::new();
        id.extend_from_slice(&(self.src.as_ptr() as usize).to_le_bytes());
        id.extend_from_slice(&self.src.len().to_le_bytes());
        id.extend_from_slice(&self.params.qmin.to_le_bytes());
        id.extend_from_slice(&self.params.qmax.to_le_bytes());
        let (tag, row, params): (u8, usize, &[(f32, i32)]) = match &self.layout {
            FlatLayout::Tensor { scale, zero_point } => {
                id.extend_from_slice(&scale.to_le_bytes());
                id.extend_from_slice(&zero_point.to_le_bytes());
                (0, 0, &[])
            }
            FlatLayout::Rows { row, params } => (1, *row, params),
            FlatLayout::Cols { params } => (2, 0, params),
        };
        id.push(tag);
        id.extend_from_slice(&row.to_le_bytes());
        for (s, z) in params {
            id.extend_from_slice(&s.to_le_bytes());
            id.extend_from_slice(&z.to_le_bytes());
        }
        id
    }
}

/// A table quantized by rows in one pass: the values and the scales both come from here.
struct RowPass {
    /// The float table `[rows, row]` (little-endian).
    src: Bytes,
    row: usize,
    opts: WeightQuantOptions,
    /// Each row's scale once its values are computed (NaN before).
    scales: Mutex<Vec<f32>>,
}

impl RowPass {
    fn rows(&self) -> usize {
        self.src.len() / 4 / self.row
    }

    fn values(&self) -> &[[u8; 4]] {
        bytemuck::cast_slice(&self.src)
    }

    fn scale_of(&self, r: usize) -> f32 {
        let v = &self.values()[r * self.row..(r + 1) * self.row];
        let (lo, hi) = chunk_min_max(v, (0.0, 0.0));
        scale_zero_point(lo, hi, &self.opts).0
    }

    fn identity(&self, tag: u8) -> Vec<u8> {
        let mut id = vec![tag];
        id.extend_from_slice(&(self.src.as_ptr() as usize).to_le_bytes());
        id.extend_from_slice(&self.src.len().to_le_bytes());
        id.extend_from_slice(&self.row.to_le_bytes());
        id.push(self.opts.reduce_range as u8);
        id
    }
}

/// The int8 values of a [`RowPass`], `[rows, row]`.
struct RowValues(Arc<RowPass>);

/// The scales of a [`RowPass`], `[rows]` float32.
struct RowScales(Arc<RowPass>);

impl Fill for RowValues {
    fn len(&self) -> usize {
        self.0.src.len() / 4
    }

    fn granule(&self) -> usize {
        self.0.row
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        let t = &*self.0;
        let row = t.row;
        let src = &t.values()[offset..offset + out.len()];
        let p = Params::of(&t.opts);
        let block = row * (CHUNK / row).max(1);
        let scales: Vec<f32> = out
            .par_chunks_mut(block)
            .zip(src.par_chunks(block))
            .map(|(ob, vb)| {
                ob.chunks_mut(row)
                    .zip(vb.chunks(row))
                    .map(|(o, v)| {
                        let (lo, hi) = chunk_min_max(v, (0.0, 0.0));
                        let (s, z) = scale_zero_point(lo, hi, &t.opts);
                        fill_run(v, o, s, z as f32, &p);
                        s
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .concat();
        // One pass reads each row: its file pages are done with.
        crate::model::release_pages(bytemuck::cast_slice(src));
        let first = offset / row;
        let mut known = t.scales.lock().unwrap_or_else(|e| e.into_inner());
        known[first..first + scales.len()].copy_from_slice(&scales);
    }

    fn identity(&self) -> Vec<u8> {
        self.0.identity(b'v')
    }
}

impl Fill for RowScales {
    fn len(&self) -> usize {
        self.0.rows() * 4
    }

    fn granule(&self) -> usize {
        4
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        let t = &*self.0;
        let first = offset / 4;
        let known: Vec<f32> = {
            let k = t.scales.lock().unwrap_or_else(|e| e.into_inner());
            k[first..first + out.len() / 4].to_vec()
        };
        for (i, (o, s)) in out.chunks_exact_mut(4).zip(known).enumerate() {
            let s = if s.is_nan() { t.scale_of(first + i) } else { s };
            o.copy_from_slice(&s.to_le_bytes());
        }
    }

    fn identity(&self) -> Vec<u8> {
        self.0.identity(b's')
    }
}

/// Symmetric int8 by rows, values and scales both deferred (`None` for a table without
/// columns).
fn rows_in_one_pass(w: &WeightSrc, opts: &WeightQuantOptions) -> Option<QuantizedWeight> {
    let rows = w.shape[0];
    let row = w.data.len() / rows.max(1);
    if row == 0 {
        return None;
    }
    let pass = Arc::new(RowPass {
        src: w.owned_bytes(),
        row,
        opts: *opts,
        scales: Mutex::new(vec![f32::NAN; rows]),
    });
    let values = deferred::deferred(Arc::new(RowValues(pass.clone())));
    let scales = deferred::deferred(Arc::new(RowScales(pass)));
    Some(QuantizedWeight {
        values: QValues::empty(WeightType::Int8),
        deferred: Some((w.shape.clone(), values)),
        deferred_scales: Some(scales),
        scales: Vec::new(),
        zero_points: vec![0; rows],
        axis: Some(0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::weights::tests::{float_tensor_at, opts, tricky};
    use super::*;
    use crate::ir::deferred::{Lookup, lookup, materialize, pieces};
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn deferred_values_equal_the_eager_ones() {
        // Large enough to be deferred; odd sizes so pieces end mid-chunk.
        let (rows, cols) = (331, 217);
        let t = float_tensor_at(&tricky(rows * cols, 5), &[rows, cols], 1);
        for axis in [None, Some(0), Some(1)] {
            for o in [
                WeightQuantOptions::default(),
                opts(WeightType::Uint8, false, false),
                opts(WeightType::Int8, false, true),
            ] {
                let eager = quantize_weight(WeightSrc::from_tensor(&t).unwrap(), axis, &o);
                let mut lazy =
                    quantize_weight_deferred(WeightSrc::from_tensor(&t).unwrap(), axis, &o);
                assert!(lazy.deferred.is_some(), "{axis:?} {o:?} was not deferred");
                assert_eq!(
                    (&lazy.scales_now()[..], &lazy.zero_points),
                    (&eager.scales[..], &eager.zero_points)
                );
                assert_eq!(
                    lazy.scale_tensor("s", &[lazy.scales_now().len()])
                        .proto
                        .raw_data,
                    eager
                        .scale_tensor("s", &[eager.scales.len()])
                        .proto
                        .raw_data
                );
                // (Bit patterns: the tricky values include infinities, which dequantize to NaN.)
                let bits = |a: ArrayD<f32>| a.mapv(f32::to_bits);
                assert_eq!(bits(lazy.dequantize()), bits(eager.dequantize()));
                assert_eq!(lazy.values_tensor("v"), eager.values_tensor("v"));
                let payload = lazy.take_values_tensor("v").proto.raw_data.unwrap();
                assert!(matches!(lookup(&payload), Lookup::Whole(_)));
                let computed = materialize(&payload).unwrap();
                assert_eq!(
                    computed,
                    eager.values_tensor("v").proto.raw_data.unwrap(),
                    "{axis:?} {o:?}"
                );
                // Piece by piece, on granule boundaries, gives the same bytes.
                if let Lookup::Whole(fill) = lookup(&payload) {
                    let mut pieced = vec![0u8; fill.len()];
                    for (a, b) in pieces(&*fill, 5000) {
                        fill.fill(a, &mut pieced[a..b]);
                    }
                    assert_eq!(&pieced[..], &computed[..]);
                }
            }
        }
        // Small weights are quantized at once.
        let small = ArrayD::from_shape_vec(IxDyn(&[4, 5]), tricky(20, 1)).unwrap();
        assert!(
            quantize_weight_deferred(small.view(), None, &WeightQuantOptions::default())
                .deferred
                .is_none()
        );
    }

    #[test]
    fn row_scales_are_right_whichever_payload_is_computed_first() {
        // Enough rows for the scales to be deferred too.
        let (rows, cols) = (17_000, 4);
        let t = float_tensor_at(&tricky(rows * cols, 8), &[rows, cols], 3);
        let o = WeightQuantOptions::default();
        let eager = quantize_weight(WeightSrc::from_tensor(&t).unwrap(), Some(0), &o);
        let want_values = eager.values_tensor("v").proto.raw_data.unwrap();
        let want_scales = eager.scale_tensor("s", &[rows]).proto.raw_data.unwrap();
        for values_first in [true, false] {
            let mut q = quantize_weight_deferred(WeightSrc::from_tensor(&t).unwrap(), Some(0), &o);
            let values = q.take_values_tensor("v").proto.raw_data.unwrap();
            let scales = q.scale_tensor("s", &[rows]).proto.raw_data.unwrap();
            assert!(matches!(lookup(&scales), Lookup::Whole(_)));
            let (v, s) = if values_first {
                let v = materialize(&values).unwrap();
                (v, materialize(&scales).unwrap())
            } else {
                let s = materialize(&scales).unwrap();
                (materialize(&values).unwrap(), s)
            };
            assert_eq!(v, want_values, "values first: {values_first}");
            assert_eq!(s, want_scales, "values first: {values_first}");
            assert_eq!(q.zero_points, eager.zero_points);
        }
    }
}
