//! Int8 GEMM for the quantized ops: `C = (A - za) · (B - zb)` with 8-bit operands and exact
//! 32-bit accumulation, optionally followed by a fused float epilogue.
//!
//! # Semantics
//! A is `[M, K]` row-major activations, B is `[K, N]` weights, packed once into a [`PackedB`].
//! For every output element
//!
//! ```text
//! C[m,n] = Σ_k (A[m,k] - za[m]) * (B[k,n] - zb[n])
//!        = Σ_k A·B - zb[n]·rowsum_A[m] - za[m]·(colsum_B[n] - K·zb[n])
//! ```
//!
//! The kernels compute the raw `Σ A·B` on u8 × i8 data and apply the right-hand correction in
//! the output loop; `colsum_B[n] - K·zb[n]` is computed at packing time, `rowsum_A` per call and
//! only when some `zb[n] != 0`. All integer arithmetic wraps modulo 2^32 as ONNX
//! `MatMulInteger`'s int32 output does (no overflow for K < 66 000 with 8-bit inputs).
//!
//! The other ONNX `MatMulInteger` type combinations map exactly onto u8 × i8: an int8 A becomes
//! `A ^ 0x80` (= A + 128) with zero point `za + 128`, a uint8 B becomes `B ^ 0x80` (= B - 128)
//! with zero point `zb - 128`. So every combination runs on the fast kernels.
//!
//! [`gemm_u8i8_f32`] fuses the dequantization,
//! `out[m,n] = f32(C[m,n]) * (a_scale * b_scale[n]) + bias[n]`, then an optional
//! [`Activation`] (ReLU, Clip, LeakyRelu) with the semantics of the ONNX ops the runtime
//! implements (see [`Act::eval`](crate::runtime::kernels::gemm_f32::Act::eval)). Every kernel evaluates that expression in the same
//! order with separate multiply and add (no FMA), so all paths agree bit for bit.
//!
//! # Kernels
//! Chosen at run time from the CPU ([`Isa::best`]) when B is packed; B's layout is the chosen
//! kernel's:
//! - [`Isa::Avx512Vnni`]: `vpdpbusd` on 6×64 output tiles, B in 64-column panels of 4-deep K
//!   groups. A is read in place (no packing), so small-M calls (the recurrent step) cost nothing
//!   beyond the multiply.
//! - [`Isa::Avx2`]: `vpmaddubsw` on B stored with every K pair within `|b0| + |b1| <= 128`
//!   (so its saturating i16 pair sums stay exact) plus a sparse list of remainders added per
//!   row, when such remainders are rare (trained weights); else B widened to i16 at packing
//!   time and A to u16 per call, and `vpmaddwd` multiplies i16 pairs into i32. Both are exact
//!   for all inputs.
//! - [`Isa::Scalar`]: portable fallback.
//!
//! # Example
//! ```
//! use onnx_dynq::runtime::kernels::gemm_i8::{Epilogue, PackedB, gemm_u8i8_f32};
//! // B: int8 weights [K=3, N=2], symmetric (no zero point); packed once.
//! let b = PackedB::from_i8(&[1, -2, 3, 4, -5, 6], 3, 2, &[]).unwrap();
//! // A: one row of uint8 activations with zero point 10.
//! let a = [11u8, 12, 13];
//! let epi = Epilogue { b_scales: &[0.5], bias: Some(&[1.0, -1.0]), relu: true };
//! let mut out = [0f32; 2];
//! gemm_u8i8_f32(&a, 1, 3, 10, 0.1, &b, &epi, &mut out, 1).unwrap();
//! // (1·1 + 2·3 + 3·(-5)) · 0.1 · 0.5 + 1 = 0.6; (1·(-2) + 2·4 + 3·6) · 0.05 - 1 = 0.2
//! assert!((out[0] - 0.6).abs() < 1e-6 && (out[1] - 0.2).abs() < 1e-6);
//! ```
//!
//! # Threads
//! `threads > 1` splits the N panels over rayon's global pool for large shapes; small shapes
//! always run on the calling thread, which is also the default (`threads = 1`).

mod pack;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;

#[cfg(test)]
mod tests;

pub use pack::PackedB;

use crate::error::{Error, Result};

/// An instruction-set path of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 (exact widening `vpmaddwd` path).
    Avx2,
    /// x86-64 AVX-512 F/BW + VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Isa {
    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The path [`PackedB::from_i8`] and friends pack for: the fastest available one, unless
    /// the environment variable `ONNX_DYNQ_INT8_ISA` names another available path (`scalar`,
    /// `avx2`, `avx512-vnni`), which lets whole-model runs exercise every kernel.
    pub fn best() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("ONNX_DYNQ_INT8_ISA").ok().and_then(|name| {
                Isa::available()
                    .into_iter()
                    .find(|isa| isa.name() == name.trim())
            });
            forced.unwrap_or_else(|| {
                [Isa::Avx512Vnni, Isa::Avx2]
                    .into_iter()
                    .find(|isa| isa.is_available())
                    .unwrap_or(Isa::Scalar)
            })
        })
    }

    /// All paths this CPU can run, fastest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Output columns per packed panel of B (the unit of work split between threads).
    pub(crate) fn panel_width(self) -> usize {
        match self {
            Isa::Scalar => scalar::NR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::NR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512_vnni::NR,
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::NR,
        }
    }
}

/// The float epilogue of [`gemm_u8i8_f32`]: scale, bias, optional ReLU. Its general form,
/// with any [`Activation`], is [`ActEpilogue`].
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// B's scales: one per tensor (len 1) or one per output column (len N).
    pub b_scales: &'a [f32],
    /// Added after scaling, one per output column (len N).
    pub bias: Option<&'a [f32]>,
    /// Clamp negative outputs to 0 (ReLU).
    pub relu: bool,
}

/// The float epilogue of [`gemm_u8i8_f32_act`] and [`gemm_u8i8_f32_vec`].
#[derive(Clone, Copy, Debug)]
pub struct ActEpilogue<'a> {
    /// B's scales: one per tensor (len 1) or one per output column (len N).
    pub b_scales: &'a [f32],
    /// Added after scaling, one per output column (len N).
    pub bias: Option<&'a [f32]>,
    /// Applied last.
    pub act: Activation,
}

impl<'a> From<&Epilogue<'a>> for ActEpilogue<'a> {
    fn from(e: &Epilogue<'a>) -> Self {
        ActEpilogue {
            b_scales: e.b_scales,
            bias: e.bias,
            act: if e.relu {
                Activation::Relu
            } else {
                Activation::None
            },
        }
    }
}

/// The activation a fused epilogue applies after scale and bias: the float kernels' [`Act`]
/// (one definition for both epilogues; its `eval` is the scalar form every SIMD path
/// reproduces).
///
/// [`Act`]: crate::runtime::kernels::gemm_f32::Act
pub use super::gemm_f32::Act as Activation;

/// A for [`matmul_integer`]: data `[M, K]` row-major with its zero points (len 0 = none,
/// 1 = per tensor, M = per row), either signedness.
#[derive(Clone, Copy, Debug)]
pub enum AInput<'a> {
    U8 {
        data: &'a [u8],
        zero_points: &'a [u8],
    },
    I8 {
        data: &'a [i8],
        zero_points: &'a [i8],
    },
}

/// Multiplies u8 A `[m, k]` (zero point `a_zero_point`, scale `a_scale`) by the packed B and
/// writes float `out [m, n]` through the fused scale/bias/ReLU epilogue.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_f32(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_point: u8,
    a_scale: f32,
    b: &PackedB,
    epilogue: &Epilogue,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let epi = ActEpilogue::from(epilogue);
    gemm_u8i8_f32_act(a, m, k, a_zero_point, a_scale, b, &epi, out, threads)
}

/// [`gemm_u8i8_f32`] with any [`Activation`] in the epilogue.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_f32_act(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_point: u8,
    a_scale: f32,
    b: &PackedB,
    epilogue: &ActEpilogue,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let (ptr, len) = (out.as_mut_ptr(), out.len());
    // SAFETY: ptr/len come from a live mutable slice.
    unsafe {
        gemm_f32_raw(
            a,
            m,
            k,
            &[a_zero_point],
            &[a_scale],
            b,
            epilogue,
            ptr,
            len,
            threads,
        )
    }
}

/// [`gemm_u8i8_f32_act`] on a raw output of `out_len` floats, which it only writes (so it may be
/// uninitialized); on success all `m * n` elements are written.
///
/// # Safety
/// `out` must be valid for writes of `out_len` floats and not aliased during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32_raw(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_points: &[u8],
    a_scales: &[f32],
    b: &PackedB,
    epilogue: &ActEpilogue,
    out: *mut f32,
    out_len: usize,
    threads: usize,
) -> Result<()> {
    check_shapes(a.len(), m, k, b, out_len)?;
    let n = b.n();
    for (what, len) in [
        ("zero points", a_zero_points.len()),
        ("scales", a_scales.len()),
    ] {
        if len != 1 && len != m {
            return Err(err(format!(
                "{len} A {what} for {m} rows (expected 1 or {m})"
            )));
        }
    }
    if epilogue.b_scales.len() != 1 && epilogue.b_scales.len() != n {
        return Err(err(format!(
            "{} B scales for {n} columns (expected 1 or {n})",
            epilogue.b_scales.len()
        )));
    }
    if let Some(bias) = epilogue.bias
        && bias.len() != n
    {
        return Err(err(format!(
            "bias has {} values for {n} columns",
            bias.len()
        )));
    }
    let za: Vec<i32> = a_zero_points.iter().map(|&z| i32::from(z)).collect();
    let out = Out::F32 {
        ptr: out,
        a_scales,
        b_scales: epilogue.b_scales,
        bias: epilogue.bias,
        act: epilogue.act,
    };
    run(a, m, k, &za, b, out, threads, true);
    Ok(())
}

/// Like [`gemm_u8i8_f32_act`], into a new `[m, n]` vector that is written once by the kernel
/// (never zero-filled first: for a large output the fill costs as much as the epilogue).
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_f32_vec(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_point: u8,
    a_scale: f32,
    b: &PackedB,
    epilogue: &ActEpilogue,
    threads: usize,
) -> Result<Vec<f32>> {
    gemm_u8i8_f32_rows_vec(a, m, k, &[a_zero_point], &[a_scale], b, epilogue, threads)
}

/// [`gemm_u8i8_f32_vec`] with A quantized per row: `a_zero_points` and `a_scales` each hold
/// one value (per tensor) or one per row (the per-token activations of `rewrite
/// --activations per-token`): `out[r, n] = f32(C[r, n]) * (a_scale[r] * b_scale[n]) + bias[n]`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_f32_rows_vec(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_points: &[u8],
    a_scales: &[f32],
    b: &PackedB,
    epilogue: &ActEpilogue,
    threads: usize,
) -> Result<Vec<f32>> {
    let len = m
        .checked_mul(b.n())
        .ok_or_else(|| err(format!("output {m}x{} overflows", b.n())))?;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let ptr = v.spare_capacity_mut().as_mut_ptr().cast::<f32>();
    // SAFETY: the pointer covers the vector's `len` allocated (uninitialized) floats, which
    // the kernels only write. On success all m * n of them are written (every kernel covers
    // every row and every column of every panel), so the length may be set.
    unsafe {
        gemm_f32_raw(
            a,
            m,
            k,
            a_zero_points,
            a_scales,
            b,
            epilogue,
            ptr,
            len,
            threads,
        )?;
        v.set_len(len);
    }
    Ok(v)
}

/// Raw `MatMulInteger` on u8 A `[m, k]` with zero points per tensor (len 1) or per row (len m):
/// writes int32 `out [m, n]`.
pub fn gemm_u8i8_i32(
    a: &[u8],
    m: usize,
    k: usize,
    a_zero_points: &[u8],
    b: &PackedB,
    out: &mut [i32],
    threads: usize,
) -> Result<()> {
    matmul_integer(
        AInput::U8 {
            data: a,
            zero_points: a_zero_points,
        },
        m,
        k,
        b,
        out,
        threads,
    )
}

/// `MatMulInteger` for A of either signedness (B's signedness is handled by [`PackedB`]).
pub fn matmul_integer(
    a: AInput,
    m: usize,
    k: usize,
    b: &PackedB,
    out: &mut [i32],
    threads: usize,
) -> Result<()> {
    let a_len = match a {
        AInput::U8 { data, .. } => data.len(),
        AInput::I8 { data, .. } => data.len(),
    };
    check_shapes(a_len, m, k, b, out.len())?;
    let zp_len = match a {
        AInput::U8 { zero_points, .. } => zero_points.len(),
        AInput::I8 { zero_points, .. } => zero_points.len(),
    };
    if zp_len > 1 && zp_len != m {
        return Err(err(format!(
            "{zp_len} A zero points for {m} rows (expected 0, 1 or {m})"
        )));
    }
    let out = Out::I32(out.as_mut_ptr());
    match a {
        AInput::U8 { data, zero_points } => {
            let za: Vec<i32> = if zero_points.is_empty() {
                vec![0]
            } else {
                zero_points.iter().map(|&z| i32::from(z)).collect()
            };
            run(data, m, k, &za, b, out, threads, true);
        }
        AInput::I8 { data, zero_points } => {
            // A + 128 as u8 is the bit flip; the zero point moves with it.
            let shifted: Vec<u8> = data.iter().map(|&v| (v as u8) ^ 0x80).collect();
            let za: Vec<i32> = if zero_points.is_empty() {
                vec![128]
            } else {
                zero_points.iter().map(|&z| i32::from(z) + 128).collect()
            };
            run(&shifted, m, k, &za, b, out, threads, false);
        }
    }
    Ok(())
}

fn err(msg: String) -> Error {
    Error::Other(format!("int8 gemm: {msg}"))
}

fn check_shapes(a_len: usize, m: usize, k: usize, b: &PackedB, out_len: usize) -> Result<()> {
    if k != b.k() {
        return Err(err(format!("A has K = {k} but B has K = {}", b.k())));
    }
    if m.checked_mul(k) != Some(a_len) {
        return Err(err(format!("A has {a_len} values, expected {m}x{k}")));
    }
    if m.checked_mul(b.n()) != Some(out_len) {
        return Err(err(format!(
            "output has {out_len} values, expected {m}x{}",
            b.n()
        )));
    }
    Ok(())
}

/// Where and how a kernel writes its tile results.
#[derive(Clone, Copy)]
pub(crate) enum Out<'a> {
    I32(*mut i32),
    F32 {
        ptr: *mut f32,
        /// A's scales: one per tensor (len 1) or one per row (len m).
        a_scales: &'a [f32],
        b_scales: &'a [f32],
        bias: Option<&'a [f32]>,
        act: Activation,
    },
}

/// One validated GEMM call, as the kernels see it.
pub(crate) struct Job<'a> {
    /// A, `[m, k]` row-major.
    pub a: &'a [u8],
    /// A widened to u16 with rows padded to an even length (AVX2 wide layout only, else empty).
    pub a16: &'a [u16],
    /// A with rows padded to a multiple of 4 bytes (AVX2 byte layout when K % 4 != 0, else
    /// empty: the kernel then reads `a`).
    pub a4: &'a [u8],
    pub m: usize,
    pub k: usize,
    /// A's zero points: len 1 or m.
    pub za: &'a [i32],
    /// Σ_k A[m, k], present (len m) iff B has a nonzero zero point.
    pub row_sums: &'a [i32],
    pub b: &'a PackedB,
    /// `[m, n]` row-major output.
    pub out: Out<'a>,
}

// SAFETY: the raw output pointer is the only non-Sync part. Concurrent kernels receive
// disjoint panel ranges, so they write disjoint columns of the output.
unsafe impl Sync for Job<'_> {}

/// A's scale for `row`: per tensor (len 1) or per row.
#[inline(always)]
pub(crate) fn a_scale_of(a_scales: &[f32], row: usize) -> f32 {
    if a_scales.len() == 1 {
        a_scales[0]
    } else {
        a_scales[row]
    }
}

impl Job<'_> {
    #[inline(always)]
    pub fn za(&self, row: usize) -> i32 {
        if self.za.len() == 1 {
            self.za[0]
        } else {
            self.za[row]
        }
    }

    #[inline(always)]
    pub fn row_sum(&self, row: usize) -> i32 {
        if self.row_sums.is_empty() {
            0
        } else {
            self.row_sums[row]
        }
    }

    /// Writes one corrected accumulator through the epilogue (shared by the scalar kernel and
    /// the SIMD kernels' tails; the SIMD epilogues compute the same expression).
    ///
    /// # Safety
    /// `row < m` and `col < n`.
    #[inline(always)]
    pub unsafe fn store_scalar(&self, row: usize, col: usize, acc: i32) {
        let corr = acc
            .wrapping_sub(self.za(row).wrapping_mul(self.b.col_adj[col]))
            .wrapping_sub(self.row_sum(row).wrapping_mul(self.b.zb[col]));
        let idx = row * self.b.n() + col;
        match self.out {
            Out::I32(ptr) => unsafe { *ptr.add(idx) = corr },
            Out::F32 {
                ptr,
                a_scales,
                b_scales,
                bias,
                act,
            } => {
                let bs = if b_scales.len() == 1 {
                    b_scales[0]
                } else {
                    b_scales[col]
                };
                let mut v = corr as f32 * (a_scale_of(a_scales, row) * bs);
                if let Some(bias) = bias {
                    v += bias[col];
                }
                v = act.eval(v);
                unsafe { *ptr.add(idx) = v };
            }
        }
    }
}

/// Below this many multiply-adds (~40 µs of single-core VNNI work) a call stays on one
/// thread: waking rayon workers costs more than it wins.
const PAR_MIN_MACS: usize = 1 << 24;

thread_local! {
    /// Set by [`with_ort_u8s8_saturation`] for the calls made inside it on this thread.
    static ORT_U8S8: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the u8 x s8 products of every GEMM it makes on this thread computed as
/// onnxruntime computes them on x86 CPUs with AVX2 (or AVX-512) but without VNNI: its kernel
/// multiplies byte pairs with `vpmaddubsw`, so `a[2j] b[2j] + a[2j+1] b[2j+1]` (consecutive K
/// steps, raw uint8 A times raw int8 B, before any zero point) saturates to i16 before the
/// int32 sum. The zero-point corrections stay exact. Only uint8 A with int8 B is affected
/// (onnxruntime's u8 x u8 and s8 x s8 products are exact), so only those calls change.
/// Used to predict what such a machine will compute, and to compare with onnxruntime there.
pub fn with_ort_u8s8_saturation<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = ORT_U8S8.with(|c| c.replace(on));
    let r = f();
    ORT_U8S8.with(|c| c.set(before));
    r
}

/// Whether this thread currently emulates onnxruntime's saturating u8 x s8 products.
pub fn ort_u8s8_saturation() -> bool {
    ORT_U8S8.with(|c| c.get())
}

/// `Σ_j sat_i16(a[2j] b[2j] + a[2j+1] b[2j+1])` for every row and column (see
/// [`with_ort_u8s8_saturation`]), through the usual zero-point and float epilogue.
fn run_saturating(job: &Job) {
    let (k, n) = (job.k, job.b.n());
    // B decoded once to `[n][k]`, so the pair loop reads it contiguously.
    let mut bt = vec![0i32; n * k];
    for col in 0..n {
        for row in 0..k {
            bt[col * k + row] = i32::from(job.b.stored(row, col));
        }
    }
    for row in 0..job.m {
        let a_row = &job.a[row * k..(row + 1) * k];
        for col in 0..n {
            let b_col = &bt[col * k..(col + 1) * k];
            let mut acc = 0i32;
            for (ap, bp) in a_row.chunks(2).zip(b_col.chunks(2)) {
                let pair: i32 = ap.iter().zip(bp).map(|(&a, &b)| i32::from(a) * b).sum();
                acc = acc.wrapping_add(pair.clamp(i32::from(i16::MIN), i32::from(i16::MAX)));
            }
            // SAFETY: row < m and col < n.
            unsafe { job.store_scalar(row, col, acc) };
        }
    }
}

/// `a_unsigned`: A is a uint8 tensor (not an int8 one shifted to uint8 by the caller).
#[allow(clippy::too_many_arguments)]
fn run(
    a: &[u8],
    m: usize,
    k: usize,
    za: &[i32],
    b: &PackedB,
    out: Out,
    threads: usize,
    a_unsigned: bool,
) {
    if m == 0 || b.n() == 0 {
        return;
    }
    let row_sums: Vec<i32> = if b.has_zb {
        (0..m)
            .map(|r| a[r * k..(r + 1) * k].iter().map(|&v| i32::from(v)).sum())
            .collect()
    } else {
        Vec::new()
    };
    if a_unsigned && b.signed && ort_u8s8_saturation() {
        run_saturating(&Job {
            a,
            a16: &[],
            a4: &[],
            m,
            k,
            za,
            row_sums: &row_sums,
            b,
            out,
        });
        return;
    }
    // The AVX2 wide layout reads A as u16 pairs; reuse a per-thread buffer so steady-state
    // calls do not allocate. It is taken out of the cell (not borrowed) so a re-entrant call on
    // this thread (rayon work stealing) just allocates its own.
    let wide = matches!(b.data, pack::Data::Wide(_));
    let mut a16 = if wide {
        let mut buf = A16_SCRATCH.with(|c| c.take());
        widen_a(a, m, k, &mut buf);
        buf
    } else {
        Vec::new()
    };
    // The byte layout reads A 4 bytes at a time: rows are padded unless K is a multiple of 4
    // (rare in models, so no scratch reuse).
    let a4 = if matches!(b.data, pack::Data::Bytes(_)) && !k.is_multiple_of(4) {
        pad_a(a, m, k)
    } else {
        Vec::new()
    };
    let job = Job {
        a,
        a16: &a16,
        a4: &a4,
        m,
        k,
        za,
        row_sums: &row_sums,
        b,
        out,
    };
    let panels = b.n().div_ceil(b.isa.panel_width());
    let macs = m.saturating_mul(k).saturating_mul(b.n());
    let t = if threads > 1 && macs >= PAR_MIN_MACS {
        threads.min(panels)
    } else {
        1
    };
    if t <= 1 {
        run_panels(&job, 0, panels);
    } else {
        use rayon::prelude::*;
        (0..t).into_par_iter().for_each(|i| {
            run_panels(&job, panels * i / t, panels * (i + 1) / t);
        });
    }
    if wide {
        a16.clear();
        A16_SCRATCH.with(|c| c.set(a16));
    }
}

thread_local! {
    static A16_SCRATCH: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A as u16 rows of `k` rounded up to even, zero padded.
fn widen_a(a: &[u8], m: usize, k: usize, buf: &mut Vec<u16>) {
    let kp = k.div_ceil(2) * 2;
    buf.clear();
    buf.resize(m * kp, 0);
    if k == 0 {
        return;
    }
    for (dst, src) in buf.chunks_exact_mut(kp).zip(a.chunks_exact(k)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = u16::from(s);
        }
    }
}

/// A as rows of `k` rounded up to a multiple of 4, zero padded.
fn pad_a(a: &[u8], m: usize, k: usize) -> Vec<u8> {
    let kq = k.div_ceil(4) * 4;
    let mut buf = vec![0u8; m * kq];
    if k > 0 {
        for (dst, src) in buf.chunks_exact_mut(kq).zip(a.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
    }
    buf
}

fn run_panels(job: &Job, p0: usize, p1: usize) {
    match job.b.isa {
        Isa::Scalar => scalar::run_panels(job, p0, p1),
        // SAFETY: a PackedB only exists for an ISA the CPU has (checked when packing).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::run_panels(job, p0, p1) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { avx512_vnni::run_panels(job, p0, p1) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::run_panels(job, p0, p1),
    }
}
