//! Weights stored transposed, `[N, K]` (Gemm with `transB=1`, what torch exports for a
//! Linear layer), quantized into the `[K, N]` int8 matrix that MatMulInteger reads.
//!
//! The output columns are the stored rows, so per-channel parameters are per stored row (one
//! contiguous pass each) and the per-tensor range is one pass over the whole weight. The
//! values pass reads the stored rows in strips of [`STRIP`] columns, quantizes each strip
//! with the vector kernel, and scatters it into `STRIP` rows of the output, which stay in
//! cache: no float copy of the transposed weight (the general path's strided copy took a
//! second and four times the weight's size in memory for a 134 MB Linear). The bytes are
//! those of quantizing the transposed matrix along its columns.

use std::sync::Arc;

use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;

use super::weights::{
    FlatLayout, Params, QValues, QuantizedWeight, WeightQuantOptions, WeightSrc, WeightType,
    fill_run, flat_layout,
};
use crate::ir::deferred::{self, Fill};

/// Stored columns (output rows) quantized together: 64 floats, two kernel iterations.
const STRIP: usize = 64;

/// Quantizes `w`, stored `[N, K]`, into values `[K, N]` with per-tensor or per-column (`N`)
/// parameters; with `defer`, large values are left to be computed when the model is written.
///
/// # Panics
/// If `w` is not 2-D (the rewriters pass checked 2-D weights).
pub fn quantize_weight_transposed(
    w: &WeightSrc,
    per_channel: bool,
    opts: &WeightQuantOptions,
    defer: bool,
) -> QuantizedWeight {
    let &[n, k] = w.shape() else {
        panic!("transposed weight of shape {:?} is not 2-D", w.shape())
    };
    // Per channel, the output columns are the stored rows.
    let layout = flat_layout(w, per_channel.then_some(0), opts);
    let fill = TransposedValues {
        src: w.owned_bytes(),
        n,
        k,
        layout: layout.clone(),
        params: Params::of(opts),
    };
    let int8 = opts.weight_type == WeightType::Int8;
    let shape = [k, n];
    let mut q = layout.into_weight(&shape, per_channel.then_some(1), |dims| {
        if defer && n * k >= deferred::MIN_DEFERRED {
            return empty(int8);
        }
        let bytes = deferred::compute(&fill);
        let dims = IxDyn(dims);
        if int8 {
            QValues::I8(
                ArrayD::from_shape_vec(dims, bytemuck::cast_vec::<u8, i8>(bytes))
                    .expect("one byte per element"),
            )
        } else {
            QValues::U8(ArrayD::from_shape_vec(dims, bytes).expect("one byte per element"))
        }
    });
    if defer && n * k >= deferred::MIN_DEFERRED {
        q.deferred = Some((shape.to_vec(), deferred::deferred(Arc::new(fill))));
    }
    q
}

fn empty(int8: bool) -> QValues {
    if int8 {
        QValues::I8(ArrayD::zeros(IxDyn(&[0])))
    } else {
        QValues::U8(ArrayD::zeros(IxDyn(&[0])))
    }
}

/// The `[K, N]` values of a weight stored `[N, K]`.
struct TransposedValues {
    /// The stored float weight (little-endian), usually a slice of the mapped input.
    src: Bytes,
    n: usize,
    k: usize,
    /// Per tensor, or per stored row.
    layout: FlatLayout,
    params: Params,
}

impl TransposedValues {
    fn scale_zero_point(&self, row: usize) -> (f32, f32) {
        match &self.layout {
            FlatLayout::Tensor { scale, zero_point } => (*scale, *zero_point as f32),
            FlatLayout::Rows { params, .. } => (params[row].0, params[row].1 as f32),
            FlatLayout::Cols { .. } => unreachable!("laid out per tensor or per stored row"),
        }
    }
}

impl Fill for TransposedValues {
    fn len(&self) -> usize {
        self.n * self.k
    }

    /// One output row: one stored column.
    fn granule(&self) -> usize {
        self.n.max(1)
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        let (n, k) = (self.n, self.k);
        if n == 0 {
            return;
        }
        let src: &[[u8; 4]] = bytemuck::cast_slice(&self.src);
        let first = offset / n;
        out.par_chunks_mut(STRIP * n)
            .enumerate()
            .for_each(|(t, block)| {
                let c0 = first + t * STRIP;
                let width = block.len() / n;
                let mut strip = [0u8; STRIP];
                for (r, row) in src.chunks_exact(k).enumerate() {
                    let (s, z) = self.scale_zero_point(r);
                    fill_run(
                        &row[c0..c0 + width],
                        &mut strip[..width],
                        s,
                        z,
                        &self.params,
                    );
                    for (j, &q) in strip[..width].iter().enumerate() {
                        block[j * n + r] = q;
                    }
                }
            });
    }

    fn identity(&self) -> Vec<u8> {
        let mut id = vec![b't'];
        id.extend_from_slice(&(self.src.as_ptr() as usize).to_le_bytes());
        id.extend_from_slice(&self.src.len().to_le_bytes());
        id.extend_from_slice(&self.n.to_le_bytes());
        id.extend_from_slice(&self.params.qmin.to_le_bytes());
        id.extend_from_slice(&self.params.qmax.to_le_bytes());
        for r in 0..self.n {
            let (s, z) = self.scale_zero_point(r);
            id.extend_from_slice(&s.to_le_bytes());
            id.extend_from_slice(&z.to_le_bytes());
            if matches!(self.layout, FlatLayout::Tensor { .. }) {
                break;
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::super::weights::quantize_weight;
    use super::super::weights::tests::{float_tensor_at, opts, tricky};
    use super::*;
    use ndarray::Array2;

    #[test]
    fn transposed_weights_quantize_like_the_transposed_matrix() {
        // Odd sizes: strips and pieces end mid-way.
        for (n, k) in [(300, 257), (7, 3), (1, 200), (65, 64)] {
            let values = tricky(n * k, (n + k) as u32);
            let t = float_tensor_at(&values, &[n, k], 1);
            let stored = Array2::from_shape_vec((n, k), values).unwrap();
            let transposed = stored.t().as_standard_layout().into_owned().into_dyn();
            for o in [
                WeightQuantOptions::default(),
                opts(WeightType::Uint8, false, false),
                opts(WeightType::Int8, false, true),
            ] {
                for per_channel in [false, true] {
                    let want = quantize_weight(transposed.view(), per_channel.then_some(1), &o);
                    for defer in [false, true] {
                        let w = WeightSrc::from_tensor(&t).unwrap();
                        let got = quantize_weight_transposed(&w, per_channel, &o, defer);
                        let case = format!("{n}x{k} {o:?} per_channel {per_channel} defer {defer}");
                        assert_eq!(got.scales, want.scales, "{case}");
                        assert_eq!(got.zero_points, want.zero_points, "{case}");
                        assert_eq!(got.axis, want.axis, "{case}");
                        assert_eq!(
                            got.values_tensor("v").proto.raw_data,
                            want.values_tensor("v").proto.raw_data,
                            "{case}"
                        );
                        assert_eq!(
                            defer && n * k >= deferred::MIN_DEFERRED,
                            got.deferred.is_some()
                        );
                    }
                }
            }
        }
    }
}
