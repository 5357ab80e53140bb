//! Weights stored transposed, `[N, K]` (Gemm with `transB=1`, what torch exports for a
//! Linear layer), quantized into the `[K, N]` int8 matrix that MatMulInteger reads.
//!
//! The output columns are the stored rows, so per-channel parameters are per stored row (one
//! contiguous pass each) and the per-tensor range is one pass over the whole weight. The
//! values pass quantizes the stored rows as they lie (the fast sequential path), into an
//! int8 copy in huge pages, and the output is that copy transposed in 8x8-byte tiles: no
//! float copy of the transposed weight (the general path's strided copy took a second and
//! four times the weight's size in memory for a 134 MB Linear; reading the float rows in
//! column strips instead was TLB-bound). The bytes are those of quantizing the transposed
//! matrix along its columns.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;

use super::weights::{
    FlatLayout, Params, QValues, QuantizedWeight, WeightQuantOptions, WeightSrc, WeightType,
    flat_layout, output_buffer,
};
use crate::ir::deferred::{self, Fill};

/// Output rows per parallel work item.
const ROWS_PER_TASK: usize = 64;

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
        stored: Mutex::new(None),
    };
    let int8 = opts.weight_type == WeightType::Int8;
    let shape = [k, n];
    let mut q = layout.into_weight(&shape, per_channel.then_some(1), |dims| {
        if defer && n * k >= deferred::MIN_DEFERRED {
            return QValues::empty(opts.weight_type);
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

/// The `[K, N]` values of a weight stored `[N, K]`.
struct TransposedValues {
    /// The stored float weight (little-endian), usually a slice of the mapped input.
    src: Bytes,
    n: usize,
    k: usize,
    /// Per tensor, or per stored row.
    layout: FlatLayout,
    params: Params,
    /// The int8 values in the stored order `[N, K]`: made for the first piece, dropped
    /// after the last.
    stored: Mutex<Option<Arc<Vec<u8>>>>,
}

impl TransposedValues {
    /// The stored-order values; `last` takes them out of the cache.
    fn stored(&self, last: bool) -> Arc<Vec<u8>> {
        let mut cache = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        let q = cache
            .get_or_insert_with(|| {
                let src: &[[u8; 4]] = bytemuck::cast_slice(&self.src);
                let mut q = output_buffer(src.len());
                self.layout.fill_all(src, &mut q, &self.params);
                Arc::new(q)
            })
            .clone();
        if last {
            *cache = None;
        }
        q
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
        let last = offset + out.len() == self.len();
        transpose_columns(&self.stored(last), n, k, offset / n, out);
    }

    fn identity(&self) -> Vec<u8> {
        let mut id = vec![b't'];
        id.extend_from_slice(&(self.src.as_ptr() as usize).to_le_bytes());
        id.extend_from_slice(&self.src.len().to_le_bytes());
        id.extend_from_slice(&self.n.to_le_bytes());
        id.extend_from_slice(&self.params.qmin.to_le_bytes());
        id.extend_from_slice(&self.params.qmax.to_le_bytes());
        let params: &[(f32, i32)] = match &self.layout {
            FlatLayout::Tensor { scale, zero_point } => &[(*scale, *zero_point)],
            FlatLayout::Rows { params, .. } | FlatLayout::Cols { params } => params,
        };
        for (s, z) in params {
            id.extend_from_slice(&s.to_le_bytes());
            id.extend_from_slice(&z.to_le_bytes());
        }
        id
    }
}

/// `out[j * n + r] = src[r * k + first + j]`: columns `first ..` of the row-major `[n, k]`
/// bytes `src`, as rows (`out.len() / n` of them), in parallel blocks of output rows, each
/// built from 8x8-byte tiles (eight 8-byte loads, a register transpose, eight stores).
pub(super) fn transpose_columns(src: &[u8], n: usize, k: usize, first: usize, out: &mut [u8]) {
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(t, block)| {
            let c0 = first + t * ROWS_PER_TASK;
            let width = block.len() / n;
            let (full_w, full_n) = (width / 8 * 8, n / 8 * 8);
            for r0 in (0..full_n).step_by(8) {
                for j0 in (0..full_w).step_by(8) {
                    let mut tile = [0u64; 8];
                    for (i, t) in tile.iter_mut().enumerate() {
                        let at = (r0 + i) * k + c0 + j0;
                        *t = u64::from_le_bytes(src[at..at + 8].try_into().expect("8 bytes"));
                    }
                    for (jj, row) in transpose8(tile).iter().enumerate() {
                        let at = (j0 + jj) * n + r0;
                        block[at..at + 8].copy_from_slice(&row.to_le_bytes());
                    }
                }
            }
            // The edges: rows past the last full tile, columns past the last full tile.
            for r in 0..n {
                let cols = if r < full_n { full_w..width } else { 0..width };
                for j in cols {
                    block[j * n + r] = src[r * k + c0 + j];
                }
            }
        });
}

/// Transposes an 8x8 byte matrix held as eight little-endian rows: byte `j` of row `i`
/// becomes byte `i` of row `j`. Three rounds swap 4x4, 2x2 and 1x1 blocks.
fn transpose8(mut x: [u64; 8]) -> [u64; 8] {
    for (half, mask) in [
        (4, 0x0000_0000_FFFF_FFFFu64),
        (2, 0x0000_FFFF_0000_FFFF),
        (1, 0x00FF_00FF_00FF_00FF),
    ] {
        let shift = 8 * half;
        for i in 0..8 {
            if i & half == 0 {
                let (a, b) = (x[i], x[i + half]);
                x[i] = (a & mask) | ((b & mask) << shift);
                x[i + half] = ((a >> shift) & mask) | (b & !mask);
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::super::weights::quantize_weight;
    use super::super::weights::tests::{float_tensor_at, opts, tricky};
    use super::*;
    use ndarray::Array2;

    #[test]
    fn byte_tiles_and_columns_transpose() {
        let tile: [u64; 8] =
            std::array::from_fn(|i| u64::from_le_bytes(std::array::from_fn(|j| (i * 8 + j) as u8)));
        let t = transpose8(tile);
        for (j, row) in t.iter().enumerate() {
            for (i, b) in row.to_le_bytes().iter().enumerate() {
                assert_eq!(*b as usize, i * 8 + j);
            }
        }
        for (n, k, first, w) in [
            (19, 37, 5, 30),
            (8, 8, 0, 8),
            (130, 70, 0, 70),
            (3, 100, 90, 10),
        ] {
            let src: Vec<u8> = (0..n * k).map(|v| (v * 7 % 251) as u8).collect();
            let mut out = vec![0u8; w * n];
            transpose_columns(&src, n, k, first, &mut out);
            for j in 0..w {
                for r in 0..n {
                    assert_eq!(out[j * n + r], src[r * k + first + j], "{n}x{k} {j} {r}");
                }
            }
        }
    }

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
