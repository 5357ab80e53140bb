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
//! Per-tensor gives one scale; per-axis one scale per index along the axis.
//!
//! Speed and memory (a rewrite must take a small fraction of a second on a 100 MB model):
//! weights are read in place from the memory-mapped file whatever their alignment
//! ([`WeightSrc`]), by AVX2 kernels picked at run time (portable versions give the same
//! bytes), in parallel chunks on rayon's pool; a weight's file pages are released once it is
//! quantized, and large outputs use huge pages.

use std::borrow::Cow;

use bytes::Bytes;
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::onnx::tensor_proto::DataType;

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

impl QValues {
    /// No values, with the signedness of `weight_type` (a placeholder where the values are
    /// deferred or moved out: zero points still need the type).
    pub fn empty(weight_type: WeightType) -> Self {
        match weight_type {
            WeightType::Int8 => QValues::I8(ArrayD::zeros(IxDyn(&[0]))),
            WeightType::Uint8 => QValues::U8(ArrayD::zeros(IxDyn(&[0]))),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeight {
    /// Empty (with the right signedness) when `deferred` holds the values.
    pub values: QValues,
    /// The values' shape and deferred payload ([`quantize_weight_deferred`]).
    pub deferred: Option<(Vec<usize>, Bytes)>,
    /// The scales as a deferred float32 payload, when they are computed with the values
    /// (`scales` is then empty).
    pub deferred_scales: Option<Bytes>,
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

/// The float values of a weight: little-endian 4-byte groups at any alignment. An
/// initializer's `raw_data` is used where it lies in the memory-mapped file: protobuf puts
/// tensor bytes at arbitrary offsets, so they are rarely 4-byte aligned, and viewing them as
/// `&[f32]` would need a copy of the whole weight (68 MB for a 33278x512 embedding). The
/// kernels below load each value with `f32::from_le_bytes`, which compiles to plain
/// unaligned vector loads.
pub struct WeightSrc<'a> {
    pub(super) shape: Vec<usize>,
    pub(super) data: Cow<'a, [[u8; 4]]>,
    /// The initializer bytes this came from: their pages are released once quantized.
    mapped: Option<&'a Bytes>,
}

impl<'a> WeightSrc<'a> {
    /// A float32 initializer, read in place.
    pub fn from_tensor(t: &'a Tensor) -> Result<Self> {
        if t.data_type()? != DataType::Float {
            return Err(Error::tensor(t.name(), "is not float32"));
        }
        t.check_size()?;
        let shape = t.shape();
        let numel: usize = shape.iter().product();
        let (data, mapped): (Cow<'a, [[u8; 4]]>, _) = match &t.proto.raw_data {
            Some(raw) => (
                Cow::Borrowed(bytemuck::try_cast_slice(raw).map_err(|_| {
                    Error::tensor(t.name(), "raw_data is not a whole number of floats")
                })?),
                Some(raw),
            ),
            // The typed field holds native floats; the kernels read little-endian bytes.
            None if cfg!(target_endian = "little") => (
                Cow::Borrowed(bytemuck::cast_slice(&t.proto.float_data)),
                None,
            ),
            None => (
                Cow::Owned(t.proto.float_data.iter().map(|v| v.to_le_bytes()).collect()),
                None,
            ),
        };
        if data.len() != numel {
            return Err(Error::tensor(
                t.name(),
                format!(
                    "holds {} floats, its shape {shape:?} needs {numel}",
                    data.len()
                ),
            ));
        }
        Ok(WeightSrc {
            shape,
            data,
            mapped,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Owned values (e.g. float16 weights widened to f32).
    pub fn from_array(a: ArrayD<f32>) -> WeightSrc<'static> {
        let shape = a.shape().to_vec();
        WeightSrc {
            shape,
            data: Cow::Owned(a.iter().map(|v| v.to_le_bytes()).collect()),
            mapped: None,
        }
    }

    /// The same values borrowed, viewed with another shape of the same element count (row
    /// major, like `reshape`); `None` when the counts differ. Quantizing the view releases
    /// the mapped pages like quantizing `self` would.
    pub fn reshaped(&self, shape: &[usize]) -> Option<WeightSrc<'_>> {
        (shape.iter().product::<usize>() == self.data.len()).then(|| WeightSrc {
            shape: shape.to_vec(),
            data: Cow::Borrowed(&self.data[..]),
            mapped: self.mapped,
        })
    }

    /// The values as `Bytes` that outlive `self`: the mapped initializer itself when that
    /// is where they are, else a copy.
    pub(super) fn owned_bytes(&self) -> Bytes {
        let bytes: &[u8] = bytemuck::cast_slice(&self.data);
        match self.mapped {
            Some(m) if m.as_ptr() == bytes.as_ptr() && m.len() == bytes.len() => m.clone(),
            _ => Bytes::copy_from_slice(bytes),
        }
    }

    /// An owned array of the values (for the rarely used general path).
    fn to_array(&self) -> ArrayD<f32> {
        let v: Vec<f32> = self.data.iter().map(|&b| f32::from_le_bytes(b)).collect();
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("checked element count")
    }
}

impl<'a> From<ArrayViewD<'a, f32>> for WeightSrc<'a> {
    fn from(w: ArrayViewD<'a, f32>) -> Self {
        let shape = w.shape().to_vec();
        // The kernels read little-endian bytes: a contiguous view is borrowed as is where
        // that is the native order.
        let data = match w.to_slice() {
            Some(s) if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(s)),
            _ => Cow::Owned(w.iter().map(|v| v.to_le_bytes()).collect()),
        };
        WeightSrc {
            shape,
            data,
            mapped: None,
        }
    }
}

#[inline(always)]
fn load(b: [u8; 4]) -> f32 {
    f32::from_le_bytes(b)
}

/// Defines `$name` as a call of the portable `#[inline(always)]` function `$body`, or of
/// `avx2::$name` (hand-written AVX2) when the CPU has AVX2: the crate builds for baseline
/// x86-64 (SSE2), where the portable loops vectorize 4 wide at best and the float-to-int
/// conversions partly not at all.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident = $body:ident ($($a:ident: $t:ty),*) $(-> $r:ty)?) => {
        $(#[$m])*
        pub(super) fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present, checked just above.
                return unsafe { avx2::$name($($a),*) };
            }
            $body($($a),*)
        }
    };
}

dispatch!(
    /// Smallest and largest value of a chunk and `init`, ignoring NaN.
    fn chunk_min_max = chunk_min_max_body(c: &[[u8; 4]], init: (f32, f32)) -> (f32, f32)
);
dispatch!(
    /// Quantizes a run of values sharing one scale into bytes (two's complement for int8).
    fn fill_run = fill_run_body(v: &[[u8; 4]], o: &mut [u8], s: f32, z: f32, p: &Params)
);
dispatch!(
    /// Quantizes one row of a matrix whose columns have their own scales and zero points.
    fn fill_cols = fill_cols_body(v: &[[u8; 4]], o: &mut [u8], ss: &[f32], zs: &[f32], p: &Params)
);
dispatch!(
    /// Widens per-column ranges `lo`, `hi` by the rows of `b`.
    fn cols_min_max = cols_min_max_body(b: &[[u8; 4]], lo: &mut [f32], hi: &mut [f32])
);

/// The AVX2 versions of the loops: 8 lanes, unaligned loads straight from the file's bytes.
/// Same results as the portable versions (tested): `vminps`/`vmaxps` return their second
/// operand when the first is NaN, so NaN is ignored as `f32::min` does; `vroundps` rounds
/// half to even at every magnitude.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Params, load, quantize_one};

    #[target_feature(enable = "avx2")]
    pub unsafe fn chunk_min_max(c: &[[u8; 4]], init: (f32, f32)) -> (f32, f32) {
        let p = c.as_ptr() as *const f32;
        let n = c.len();
        let (mut lo0, mut hi0) = (_mm256_set1_ps(init.0), _mm256_set1_ps(init.1));
        let (mut lo1, mut hi1) = (lo0, hi0);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n floats; loadu takes any alignment.
            let (a, b) = unsafe { (_mm256_loadu_ps(p.add(i)), _mm256_loadu_ps(p.add(i + 8))) };
            lo0 = _mm256_min_ps(a, lo0);
            lo1 = _mm256_min_ps(b, lo1);
            hi0 = _mm256_max_ps(a, hi0);
            hi1 = _mm256_max_ps(b, hi1);
            i += 16;
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        // SAFETY: 8-float stores into 8-float arrays.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), _mm256_min_ps(lo0, lo1));
            _mm256_storeu_ps(h.as_mut_ptr(), _mm256_max_ps(hi0, hi1));
        }
        let (mut lo, mut hi) = init;
        for k in 0..8 {
            lo = lo.min(l[k]);
            hi = hi.max(h[k]);
        }
        for &b in &c[i..] {
            lo = lo.min(load(b));
            hi = hi.max(load(b));
        }
        (lo, hi)
    }

    /// Eight quantized values, as i32 masked to their low byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn eight(x: __m256, s: __m256, z: __m256, p: &Params) -> __m256i {
        let x = _mm256_div_ps(x, s);
        // NaN -> 0, as the portable path does.
        let x = _mm256_and_ps(x, _mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let y = _mm256_add_ps(r, z);
        let y = _mm256_min_ps(
            _mm256_max_ps(y, _mm256_set1_ps(p.qmin)),
            _mm256_set1_ps(p.qmax),
        );
        _mm256_and_si256(_mm256_cvtps_epi32(y), _mm256_set1_epi32(0xff))
    }

    /// 32 bytes from four vectors of eight masked i32, in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pack(q: [__m256i; 4]) -> __m256i {
        let a = _mm256_packus_epi32(q[0], q[1]);
        let b = _mm256_packus_epi32(q[2], q[3]);
        let c = _mm256_packus_epi16(a, b);
        _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn fill_run(v: &[[u8; 4]], o: &mut [u8], s: f32, z: f32, p: &Params) {
        let n = v.len().min(o.len());
        let (src, dst) = (v.as_ptr() as *const f32, o.as_mut_ptr());
        let (sv, zv) = (_mm256_set1_ps(s), _mm256_set1_ps(z));
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n elements in both slices; unaligned loads and stores.
            unsafe {
                let q = [0, 8, 16, 24].map(|k| eight(_mm256_loadu_ps(src.add(i + k)), sv, zv, p));
                _mm256_storeu_si256(dst.add(i) as *mut __m256i, pack(q));
            }
            i += 32;
        }
        for (o, &v) in o[i..n].iter_mut().zip(&v[i..n]) {
            *o = quantize_one(load(v), s, z, p.qmin, p.qmax) as u8;
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn fill_cols(v: &[[u8; 4]], o: &mut [u8], ss: &[f32], zs: &[f32], p: &Params) {
        let n = v.len().min(o.len()).min(ss.len()).min(zs.len());
        let (src, dst) = (v.as_ptr() as *const f32, o.as_mut_ptr());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n elements in all four slices; unaligned loads and stores.
            unsafe {
                let q = [0, 8, 16, 24].map(|k| {
                    let sv = _mm256_loadu_ps(ss.as_ptr().add(i + k));
                    let zv = _mm256_loadu_ps(zs.as_ptr().add(i + k));
                    eight(_mm256_loadu_ps(src.add(i + k)), sv, zv, p)
                });
                _mm256_storeu_si256(dst.add(i) as *mut __m256i, pack(q));
            }
            i += 32;
        }
        for k in i..n {
            o[k] = quantize_one(load(v[k]), ss[k], zs[k], p.qmin, p.qmax) as u8;
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn cols_min_max(b: &[[u8; 4]], lo: &mut [f32], hi: &mut [f32]) {
        let cols = lo.len().min(hi.len());
        if cols == 0 {
            return;
        }
        for r in b.chunks(cols) {
            let n = r.len();
            let src = r.as_ptr() as *const f32;
            let mut j = 0;
            while j + 8 <= n {
                // SAFETY: j + 8 <= n <= cols elements in `r`, `lo` and `hi`.
                unsafe {
                    let x = _mm256_loadu_ps(src.add(j));
                    let l = lo.as_mut_ptr().add(j);
                    let h = hi.as_mut_ptr().add(j);
                    _mm256_storeu_ps(l, _mm256_min_ps(x, _mm256_loadu_ps(l)));
                    _mm256_storeu_ps(h, _mm256_max_ps(x, _mm256_loadu_ps(h)));
                }
                j += 8;
            }
            for k in j..n {
                lo[k] = lo[k].min(load(r[k]));
                hi[k] = hi[k].max(load(r[k]));
            }
        }
    }
}

/// Smallest and largest value of a chunk, ignoring NaN like `f32::min`, written as selects
/// over 16 lanes so that it compiles to packed min/max instructions.
#[inline(always)]
fn chunk_min_max_body(c: &[[u8; 4]], init: (f32, f32)) -> (f32, f32) {
    let mut lo = [init.0; 16];
    let mut hi = [init.1; 16];
    let mut it = c.chunks_exact(16);
    for b in &mut it {
        for k in 0..16 {
            let v = load(b[k]);
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
        }
    }
    let (mut l, mut h) = init;
    for (&a, &b) in lo.iter().zip(&hi) {
        l = l.min(a);
        h = h.max(b);
    }
    for &b in it.remainder() {
        l = l.min(load(b));
        h = h.max(load(b));
    }
    (l, h)
}

/// Elements per parallel work item: big enough to amortize rayon's scheduling, small enough
/// to stay in L2 and to split a 1 MB LSTM weight across both cores.
pub(super) const CHUNK: usize = 1 << 15;

fn min_max(values: &[[u8; 4]]) -> (f32, f32) {
    values
        .par_chunks(CHUNK)
        .map(|c| chunk_min_max(c, (f32::INFINITY, f32::NEG_INFINITY)))
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        )
}

/// Per-column minimum and maximum (zero included) of a row-major matrix with `cols` columns.
fn column_min_max(flat: &[[u8; 4]], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let block = (cols * (CHUNK / cols).max(1)).max(1);
    flat.par_chunks(block)
        .map(|b| {
            let mut lo = vec![0f32; cols];
            let mut hi = vec![0f32; cols];
            cols_min_max(b, &mut lo, &mut hi);
            (lo, hi)
        })
        .reduce(|| (vec![0f32; cols], vec![0f32; cols]), merge_ranges)
}

/// Per-column ranges of two blocks of rows merged into one.
fn merge_ranges(
    (mut l1, mut h1): (Vec<f32>, Vec<f32>),
    (l2, h2): (Vec<f32>, Vec<f32>),
) -> (Vec<f32>, Vec<f32>) {
    for (a, b) in l1.iter_mut().zip(&l2) {
        *a = a.min(*b);
    }
    for (a, b) in h1.iter_mut().zip(&h2) {
        *a = a.max(*b);
    }
    (l1, h1)
}

/// Elements per window of the ranges pass (16 MiB of f32).
const RANGES_WINDOW: usize = 4 << 20;

/// `flat` cut into windows of about [`RANGES_WINDOW`] elements (whole `granule`s each), each
/// window's file pages released once the caller has read it and asks for the next. Without
/// this the ranges pass over every weight leaves the whole mapped input resident until the
/// values are written (4 GiB of RSS for a 4 GiB model); with it the pages come back in from
/// the page cache for the values pass, which costs little next to reading them, and one
/// `madvise` per 16 MiB keeps the calls (and their TLB flushes) rare.
fn released_windows(flat: &[[u8; 4]], granule: usize) -> impl Iterator<Item = &[[u8; 4]]> {
    let window = granule.max(1) * (RANGES_WINDOW / granule.max(1)).max(1);
    let mut previous: Option<&[[u8; 4]]> = None;
    flat.chunks(window)
        .map(Some)
        .chain(std::iter::once(None))
        .filter_map(move |next| {
            if let Some(done) = previous.take() {
                crate::model::release_pages(bytemuck::cast_slice(done));
            }
            previous = next;
            next
        })
}

/// Quantizes `w` per tensor (`axis = None`) or per index along `axis`.
///
/// Per tensor, along the first axis (rows: embedding tables, recurrent weights) and along
/// the last (columns: MatMul's `B`): one parallel pass for the ranges, one for the values,
/// both reading the source in place and the second writing 8-bit values directly (the two
/// passes are also what lets [`quantize_weight_deferred`] run the second one later). Other
/// axes go through a permuted copy. When the source is an initializer of a memory-mapped
/// file, its pages are released as they are read (16 MiB windows, `released_windows` and
/// `FlatLayout::fill_all`), or after the copy on the permuted path (they are clean and
/// file-backed: a later read just faults them in again), which keeps peak memory near a
/// window rather than the whole model.
pub fn quantize_weight<'a>(
    w: impl Into<WeightSrc<'a>>,
    axis: Option<usize>,
    opts: &WeightQuantOptions,
) -> QuantizedWeight {
    let w = w.into();
    if !needs_permute(w.shape.len(), axis) {
        return quantize_flat(&w, axis, opts);
    }
    let copy = w.to_array();
    if let Some(raw) = w.mapped {
        crate::model::release_pages(raw);
    }
    quantize_weight_permuted(copy.view(), axis, opts)
}

/// Whether quantizing along `axis` of a rank-`rank` weight takes the permuted path (scalars
/// and middle axes).
pub(super) fn needs_permute(rank: usize, axis: Option<usize>) -> bool {
    rank == 0 || axis.is_some_and(|a| a != 0 && a + 1 != rank)
}

fn quantize_flat(w: &WeightSrc, axis: Option<usize>, opts: &WeightQuantOptions) -> QuantizedWeight {
    let layout = flat_layout(w, axis, opts);
    let mut out = output_buffer(w.data.len());
    layout.fill_all(&w.data, &mut out, &Params::of(opts));
    layout.into_weight(&w.shape, axis, |dims| {
        let dims = IxDyn(dims);
        if opts.weight_type == WeightType::Int8 {
            QValues::I8(
                ArrayD::from_shape_vec(dims, bytemuck::cast_vec::<u8, i8>(out))
                    .expect("same shape"),
            )
        } else {
            QValues::U8(ArrayD::from_shape_vec(dims, out).expect("same shape"))
        }
    })
}

/// Quantization parameters of a weight quantized as a whole, by rows (first axis) or by
/// columns (last axis): what the values pass needs besides the values.
#[derive(Clone, Debug)]
pub(super) enum FlatLayout {
    Tensor { scale: f32, zero_point: i32 },
    Rows { row: usize, params: Vec<(f32, i32)> },
    Cols { params: Vec<(f32, i32)> },
}

/// The ranges pass: one parallel read of the weight. Per rows, each row's range; per
/// columns, each column's.
pub(super) fn flat_layout(
    w: &WeightSrc,
    axis: Option<usize>,
    opts: &WeightQuantOptions,
) -> FlatLayout {
    let shape = &w.shape;
    let flat: &[[u8; 4]] = &w.data;
    match axis {
        None => {
            let (lo, hi) = released_windows(flat, 1)
                .map(min_max)
                .fold((f32::INFINITY, f32::NEG_INFINITY), |a, b| {
                    (a.0.min(b.0), a.1.max(b.1))
                });
            let (lo, hi) = if flat.is_empty() {
                (0.0, 0.0)
            } else {
                (lo, hi)
            };
            let (scale, zero_point) = scale_zero_point(lo, hi, opts);
            FlatLayout::Tensor { scale, zero_point }
        }
        Some(0) => {
            let rows = shape[0];
            let row = flat.len() / rows.max(1);
            let params = if row == 0 {
                (0..rows)
                    .map(|_| scale_zero_point(0.0, 0.0, opts))
                    .collect()
            } else {
                let block = row * (CHUNK / row).max(1);
                released_windows(flat, row)
                    .flat_map(|window| {
                        window
                            .par_chunks(block)
                            .map(|vb| {
                                vb.chunks(row)
                                    .map(|v| {
                                        let (lo, hi) = chunk_min_max(v, (0.0, 0.0));
                                        scale_zero_point(lo, hi, opts)
                                    })
                                    .collect::<Vec<_>>()
                            })
                            .collect::<Vec<_>>()
                    })
                    .flatten()
                    .collect()
            };
            FlatLayout::Rows { row, params }
        }
        Some(_) => {
            let cols = shape[shape.len() - 1];
            let params = if cols == 0 {
                vec![]
            } else {
                let (lo, hi) = released_windows(flat, cols)
                    .map(|window| column_min_max(window, cols))
                    .reduce(merge_ranges)
                    .unwrap_or_else(|| (vec![0f32; cols], vec![0f32; cols]));
                lo.iter()
                    .zip(&hi)
                    .map(|(&l, &h)| scale_zero_point(l, h, opts))
                    .collect()
            };
            FlatLayout::Cols { params }
        }
    }
}

impl FlatLayout {
    /// Elements a piece of the values must start and end on.
    pub(super) fn granule(&self) -> usize {
        match self {
            FlatLayout::Tensor { .. } => 1,
            FlatLayout::Rows { row, .. } => (*row).max(1),
            FlatLayout::Cols { params } => params.len().max(1),
        }
    }

    /// The whole values pass of `src` into `out`, in windows of [`RANGES_WINDOW`] elements
    /// whose file pages are released once quantized: the resident input stays near one
    /// window (one `madvise` per 16 MiB; per parallel chunk, the calls were a quarter of the
    /// CPU time of a rewrite, twice what unmapping at exit costs).
    pub(super) fn fill_all(&self, src: &[[u8; 4]], out: &mut [u8], p: &Params) {
        let granule = self.granule();
        let window = granule * (RANGES_WINDOW / granule).max(1);
        for (i, o) in out.chunks_mut(window).enumerate() {
            let first = i * window;
            self.fill(src, first, o, p);
            crate::model::release_pages(bytemuck::cast_slice(&src[first..first + o.len()]));
        }
    }

    /// The values pass over `src`, the elements from `first` on (a multiple of the
    /// granule), into `out` (one byte per element), in parallel chunks.
    pub(super) fn fill(&self, src: &[[u8; 4]], first: usize, out: &mut [u8], p: &Params) {
        let src = &src[first..first + out.len()];
        match self {
            FlatLayout::Tensor { scale, zero_point } => {
                let z = *zero_point as f32;
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, v)| {
                        fill_run(v, o, *scale, z, p);
                    });
            }
            FlatLayout::Rows { row, params } => {
                if *row == 0 {
                    return;
                }
                let first_row = first / row;
                let block = row * (CHUNK / row).max(1);
                out.par_chunks_mut(block)
                    .zip(src.par_chunks(block))
                    .enumerate()
                    .for_each(|(b, (ob, vb))| {
                        let rows = first_row + b * (block / row);
                        for ((o, v), &(s, z)) in ob
                            .chunks_mut(*row)
                            .zip(vb.chunks(*row))
                            .zip(&params[rows..])
                        {
                            fill_run(v, o, s, z as f32, p);
                        }
                    });
            }
            FlatLayout::Cols { params } => {
                let cols = params.len();
                if cols == 0 {
                    return;
                }
                let (ss, zs): (Vec<f32>, Vec<f32>) =
                    params.iter().map(|&(s, z)| (s, z as f32)).unzip();
                out.par_chunks_mut(cols)
                    .zip(src.par_chunks(cols))
                    .with_min_len((CHUNK / cols).max(1))
                    .for_each(|(o, v)| {
                        fill_cols(v, o, &ss, &zs, p);
                    });
            }
        }
    }

    /// The weight with these parameters and the values `values(shape)` gives.
    pub(super) fn into_weight(
        self,
        shape: &[usize],
        axis: Option<usize>,
        values: impl FnOnce(&[usize]) -> QValues,
    ) -> QuantizedWeight {
        let (scales, zero_points) = match self {
            FlatLayout::Tensor { scale, zero_point } => (vec![scale], vec![zero_point]),
            FlatLayout::Rows { params, .. } | FlatLayout::Cols { params } => {
                params.into_iter().unzip()
            }
        };
        QuantizedWeight {
            values: values(shape),
            deferred: None,
            deferred_scales: None,
            scales,
            zero_points,
            axis,
        }
    }
}

/// A zeroed buffer for `n` quantized values. Large ones ask for transparent huge pages: the
/// kernel then faults in (and zeroes) 2 MB at a time instead of 4 KB, which was a sixth of
/// the CPU time of a rewrite of a 100 MB model.
pub(super) fn output_buffer(n: usize) -> Vec<u8> {
    let v = vec![0u8; n];
    #[cfg(target_os = "linux")]
    if n >= 4 << 20 {
        let page = 4096;
        let start = (v.as_ptr() as usize).next_multiple_of(page);
        let end = (v.as_ptr() as usize + n) / page * page;
        if end > start {
            // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs it, never its contents. Failure (no THP) is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// The clamping range, as floats.
#[derive(Clone, Copy, Debug)]
pub(super) struct Params {
    pub(super) qmin: f32,
    pub(super) qmax: f32,
}

impl Params {
    pub(super) fn of(opts: &WeightQuantOptions) -> Self {
        let (qmin, qmax) = opts.qrange();
        Params {
            qmin: qmin as f32,
            qmax: qmax as f32,
        }
    }
}

/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even (the default rounding mode), without a libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `clamp(round_half_even(v / scale) + zp, qmin, qmax)`, vectorizable: the rounding is the
/// magic-number trick, the zero point is added and the clamp done in f32 (exact: every
/// value involved is an integer below 2^23). Magnitudes of 2^22 and more are clamped
/// whatever their rounding, and NaN quantizes to the zero point, as `as i32` (0) did.
#[inline(always)]
fn quantize_one(v: f32, scale: f32, zp: f32, qmin: f32, qmax: f32) -> i32 {
    let x = v / scale;
    let x = if x.is_nan() { 0.0 } else { x };
    let r = if x.abs() < 4_194_304.0 {
        (x + ROUND_MAGIC) - ROUND_MAGIC
    } else {
        x
    };
    let y = r + zp;
    let y = if y < qmin { qmin } else { y };
    let y = if y > qmax { qmax } else { y };
    // SAFETY: `y` is finite and within [qmin, qmax] (a subrange of i32): NaN was replaced
    // by 0 above, and infinities are clamped like any other value.
    unsafe { y.to_int_unchecked::<i32>() }
}

#[inline(always)]
fn fill_run_body(v: &[[u8; 4]], o: &mut [u8], s: f32, z: f32, p: &Params) {
    for (o, &v) in o.iter_mut().zip(v) {
        *o = quantize_one(load(v), s, z, p.qmin, p.qmax) as u8;
    }
}

#[inline(always)]
fn fill_cols_body(v: &[[u8; 4]], o: &mut [u8], ss: &[f32], zs: &[f32], p: &Params) {
    for (((o, &v), &s), &z) in o.iter_mut().zip(v).zip(ss).zip(zs) {
        *o = quantize_one(load(v), s, z, p.qmin, p.qmax) as u8;
    }
}

#[inline(always)]
fn cols_min_max_body(b: &[[u8; 4]], lo: &mut [f32], hi: &mut [f32]) {
    for r in b.chunks(lo.len()) {
        for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r) {
            let x = load(x);
            *l = if x < *l { x } else { *l };
            *h = if x > *h { x } else { *h };
        }
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
            let (lo, hi) = flat
                .iter()
                .fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let (scale, zp) = scale_zero_point(lo, hi, opts);
            let q: Vec<i32> = flat
                .iter()
                .map(|&v| {
                    (round_half_even(v / scale) as i32)
                        .saturating_add(zp)
                        .clamp(qmin, qmax)
                })
                .collect();
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
        deferred: None,
        deferred_scales: None,
        scales,
        zero_points,
        axis,
    }
}

impl QuantizedWeight {
    /// The quantized values as an initializer.
    pub fn values_tensor(&self, name: &str) -> Tensor {
        match &*self.values_now() {
            QValues::I8(a) => Tensor::from_array(name, &a.view()),
            QValues::U8(a) => Tensor::from_array(name, &a.view()),
        }
    }

    /// The quantized values as an initializer, moved out without a copy (`values` is left
    /// empty): the int8 copy of a large table is not duplicated on its way into the model.
    pub fn take_values_tensor(&mut self, name: &str) -> Tensor {
        if let Some((shape, payload)) = self.deferred.take() {
            let dtype = match self.values {
                QValues::I8(_) => crate::onnx::tensor_proto::DataType::Int8,
                QValues::U8(_) => crate::onnx::tensor_proto::DataType::Uint8,
            };
            return Tensor {
                proto: crate::onnx::TensorProto {
                    name: Some(name.to_string()),
                    dims: shape.iter().map(|&d| d as i64).collect(),
                    data_type: Some(dtype as i32),
                    raw_data: Some(payload),
                    ..Default::default()
                },
            };
        }
        // The placeholder keeps the signedness: zero_point_tensor reads it afterwards.
        let empty = QValues::empty(match &self.values {
            QValues::I8(_) => WeightType::Int8,
            QValues::U8(_) => WeightType::Uint8,
        });
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
        match &self.deferred_scales {
            Some(payload) => Tensor {
                proto: crate::onnx::TensorProto {
                    name: Some(name.to_string()),
                    dims: shape.iter().map(|&d| d as i64).collect(),
                    data_type: Some(DataType::Float as i32),
                    raw_data: Some(payload.clone()),
                    ..Default::default()
                },
            },
            None => Tensor::from_vec(name, shape, self.scales.clone()),
        }
    }

    /// The scales, computed now if they were deferred.
    pub fn scales_now(&self) -> Cow<'_, [f32]> {
        let Some(payload) = &self.deferred_scales else {
            return Cow::Borrowed(&self.scales);
        };
        let bytes = crate::ir::deferred::materialize(payload).unwrap_or_else(|| payload.clone());
        Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Appends the values, scales and zero points (the last two shaped `shape`) to `out` as
    /// initializers named after `base`; returns their names in that order.
    pub fn push_initializers(
        &mut self,
        out: &mut Vec<Tensor>,
        names: &mut crate::ir::NameGen,
        base: &str,
        shape: &[usize],
    ) -> [String; 3] {
        let n = [
            names.fresh(&format!("{base}_quantized")),
            names.fresh(&format!("{base}_scale")),
            names.fresh(&format!("{base}_zero_point")),
        ];
        out.push(self.take_values_tensor(&n[0]));
        out.push(self.scale_tensor(&n[1], shape));
        out.push(self.zero_point_tensor(&n[2], shape));
        n
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

    /// The values, computed now if they were deferred.
    fn values_now(&self) -> Cow<'_, QValues> {
        let Some((shape, payload)) = &self.deferred else {
            return Cow::Borrowed(&self.values);
        };
        let bytes = crate::ir::deferred::materialize(payload)
            .map_or_else(|| payload.to_vec(), |b| b.to_vec());
        let dims = IxDyn(shape);
        Cow::Owned(match self.values {
            QValues::I8(_) => QValues::I8(
                ArrayD::from_shape_vec(dims, bytemuck::cast_vec::<u8, i8>(bytes))
                    .expect("the payload has one byte per element"),
            ),
            QValues::U8(_) => QValues::U8(
                ArrayD::from_shape_vec(dims, bytes).expect("the payload has one byte per element"),
            ),
        })
    }

    /// Dequantized values (for accuracy checks and weight-only reference math).
    pub fn dequantize(&self) -> ArrayD<f32> {
        let q: ArrayD<f32> = match &*self.values_now() {
            QValues::I8(a) => a.mapv(|v| v as f32),
            QValues::U8(a) => a.mapv(|v| v as f32),
        };
        let scales = self.scales_now();
        match self.axis {
            None => q.mapv(|v| (v - self.zero_points[0] as f32) * scales[0]),
            Some(a) => {
                let mut out = q;
                for (i, mut lane) in out.axis_iter_mut(Axis(a)).enumerate() {
                    let (s, z) = (scales[i], self.zero_points[i] as f32);
                    lane.mapv_inplace(|v| (v - z) * s);
                }
                out
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ndarray::arr2;

    pub(in crate::passes::quantize) fn opts(
        weight_type: WeightType,
        symmetric: bool,
        reduce_range: bool,
    ) -> WeightQuantOptions {
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
                let got = quantize_one(v, 1.0, zp as f32, qmin as f32, qmax as f32);
                assert_eq!(got, want, "{v}");
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
    fn weights_larger_than_a_window_match_the_permuted_path() {
        // More elements than RANGES_WINDOW, with rows and columns that do not divide it: the
        // ranges and values passes each take several windows, the last one partial, and the
        // extremes sit in the last window.
        let (rows, cols) = (1031, 4099);
        assert!(rows * cols > RANGES_WINDOW);
        let mut w = ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |ix| {
            ((ix[0] * 7 + ix[1] * 13) % 101) as f32 * 0.01 - 0.5
        });
        w[[rows - 1, 5]] = 3.0;
        w[[rows - 2, cols - 1]] = -2.5;
        let o = opts(WeightType::Uint8, false, false);
        for axis in [None, Some(0), Some(1)] {
            let fast = quantize_weight(w.view(), axis, &o);
            let slow = quantize_weight_permuted(w.view(), axis, &o);
            assert_eq!(fast, slow, "axis {axis:?}");
        }
        let windows: Vec<usize> = released_windows(&vec![[0u8; 4]; rows * cols], cols)
            .map(<[_]>::len)
            .collect();
        assert_eq!(windows.iter().sum::<usize>(), rows * cols);
        assert!(windows.iter().all(|n| n % cols == 0) && windows.len() == 2);
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

    /// Values that stress the kernels: ties, NaN, infinities, huge and tiny magnitudes.
    pub(in crate::passes::quantize) fn tricky(n: usize, seed: u32) -> Vec<f32> {
        let specials = [
            0.5f32,
            -0.5,
            1.5,
            2.5,
            -2.5,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            -0.0,
            1e-40,
            4_194_303.5,
            8_388_607.5,
        ];
        let mut state = seed;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                if i % 7 == 3 {
                    specials[(state >> 16) as usize % specials.len()]
                } else {
                    ((state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 300.0
                }
            })
            .collect()
    }

    #[test]
    fn simd_kernels_match_the_portable_ones() {
        for n in [0usize, 1, 15, 16, 31, 32, 33, 100, 1000] {
            let v: Vec<[u8; 4]> = tricky(n, n as u32 + 1)
                .iter()
                .map(|x| x.to_le_bytes())
                .collect();
            for init in [(0.0f32, 0.0f32), (f32::INFINITY, f32::NEG_INFINITY)] {
                let (a, b) = (chunk_min_max(&v, init), chunk_min_max_body(&v, init));
                assert_eq!(
                    (a.0.to_bits(), a.1.to_bits()),
                    (b.0.to_bits(), b.1.to_bits())
                );
            }
            for (qmin, qmax, z) in [(-127, 127, 0), (0, 255, 128), (-64, 64, 0), (0, 255, 3)] {
                let p = Params {
                    qmin: qmin as f32,
                    qmax: qmax as f32,
                };
                for s in [1.0f32, 0.37, 1e-3] {
                    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                    fill_run(&v, &mut a, s, z as f32, &p);
                    fill_run_body(&v, &mut b, s, z as f32, &p);
                    assert_eq!(a, b, "n {n} scale {s} range {qmin}..{qmax}");
                }
                let ss: Vec<f32> = (0..n).map(|i| 0.1 + i as f32 * 0.01).collect();
                let zs: Vec<f32> = (0..n).map(|i| (z + (i % 3) as i32) as f32).collect();
                let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                fill_cols(&v, &mut a, &ss, &zs, &p);
                fill_cols_body(&v, &mut b, &ss, &zs, &p);
                assert_eq!(a, b, "n {n} per column");
            }
            for cols in [1usize, 7, 8, 9, 40] {
                let (mut l1, mut h1) = (vec![0f32; cols], vec![0f32; cols]);
                let (mut l2, mut h2) = (vec![0f32; cols], vec![0f32; cols]);
                cols_min_max(&v, &mut l1, &mut h1);
                cols_min_max_body(&v, &mut l2, &mut h2);
                assert_eq!((l1, h1), (l2, h2), "n {n} cols {cols}");
            }
        }
    }

    /// A float32 initializer whose `raw_data` starts `offset` bytes into its buffer, as
    /// tensors in a memory-mapped file start at any alignment.
    pub(in crate::passes::quantize) fn float_tensor_at(
        values: &[f32],
        dims: &[usize],
        offset: usize,
    ) -> Tensor {
        let mut buf = vec![0u8; offset];
        buf.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        Tensor::new(crate::onnx::TensorProto {
            name: Some("w".into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(bytes::Bytes::from(buf).slice(offset..)),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn unaligned_initializers_quantize_in_place_like_aligned_arrays() {
        let values = tricky(64 * 33, 9);
        let w = ArrayD::from_shape_vec(IxDyn(&[64, 33]), values.clone()).unwrap();
        for offset in 0..4 {
            let t = float_tensor_at(&values, &[64, 33], offset);
            for axis in [None, Some(0), Some(1)] {
                for o in [
                    WeightQuantOptions::default(),
                    opts(WeightType::Uint8, false, false),
                ] {
                    let src = WeightSrc::from_tensor(&t).unwrap();
                    assert_eq!(
                        quantize_weight(src, axis, &o),
                        quantize_weight_permuted(w.view(), axis, &o),
                        "offset {offset} axis {axis:?} {o:?}"
                    );
                }
            }
        }
        let f16 = Tensor::from_vec("h", &[1], vec![half::f16::ONE]);
        assert!(WeightSrc::from_tensor(&f16).is_err());
    }
}
