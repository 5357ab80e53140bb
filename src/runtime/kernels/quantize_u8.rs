//! `DynamicQuantizeLinear`'s math over a float slice, vectorized: the fused int8 Linear step
//! quantizes its activation with it.
//!
//! Semantics (ONNX `DynamicQuantizeLinear`, opset 11): `rmin = min(0, min x)`,
//! `rmax = max(0, max x)`, scale and zero point from
//! [`dynamic_params`](crate::runtime::ops::quant::dynamic_params) (the op's own function, so
//! the two cannot drift apart), then `y = saturate(round_half_even(x / scale) + zp)` with the
//! division and rounding in f32. NaN inputs are ignored by the range and quantize to 0, as the
//! scalar op does. An all-zero input quantizes to all zeros whatever scale convention is used
//! (the ONNX reference reports 1/255, onnxruntime 1.0), so a consumer that only uses the
//! dequantized product cannot observe the difference.
//!
//! The AVX-512 and AVX2 paths compute the same IEEE operations (exact division, `roundscale` /
//! `roundps` to nearest even, `maxps`/`minps` clamps whose NaN handling matches the scalar
//! `clamp` + `as u8`), so they are bit-identical to the portable loop; the tests check that.

use crate::runtime::ops::quant::dynamic_params;

/// Quantizes `x` into `out` (resized to `x.len()`); returns (scale, zero point).
pub fn dynamic_quantize_into(x: &[f32], out: &mut Vec<u8>) -> (f32, u8) {
    out.clear();
    out.resize(x.len(), 0);
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        // SAFETY: the CPU has AVX-512 F/BW (checked above).
        return unsafe { quantize_by(x, out, avx512::min_max, avx512::quantize) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { quantize_by(x, out, avx2::min_max, avx2::quantize) };
    }
    scalar_quantize_into(x, out)
}

/// [`scalar_quantize_into`]'s steps with a SIMD path's range and quantize loops.
///
/// # Safety
/// The CPU must have the features the two functions are compiled for.
#[cfg(target_arch = "x86_64")]
unsafe fn quantize_by(
    x: &[f32],
    out: &mut [u8],
    min_max: unsafe fn(&[f32]) -> (f32, f32),
    quantize: unsafe fn(&[f32], f32, u8, &mut [u8]),
) -> (f32, u8) {
    // SAFETY: the caller checked the CPU features.
    let (lo, hi) = unsafe { min_max(x) };
    let (scale, zp) = dynamic_params(lo, hi);
    if lo == hi || !scale.is_finite() {
        out.fill(zp);
    } else {
        // SAFETY: as above.
        unsafe { quantize(x, scale, zp, out) };
    }
    (scale, zp)
}

/// `QuantizeLinear` to uint8 with a given scale and zero point:
/// `out[i] = saturate(round_half_even(x[i] / scale) + zp)`, NaN to 0 as the op does (the
/// per-token step's row quantization). `out.len()` must equal `x.len()`.
pub fn quantize_with_into(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if scale.is_normal() && scale > 0.0 && avx512_available() {
        // SAFETY: the CPU has AVX-512 F/BW (checked above).
        unsafe { avx512::quantize(x, scale, zp, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { avx2::quantize(x, scale, zp, out) };
        return;
    }
    quantize_scalar(x, scale, zp, out);
}

/// The element formula, `saturate(round_half_even(x / scale) + zp)`, one value at a time (the
/// definition, and the SIMD paths' tails).
fn quantize_scalar(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    let z = f32::from(zp);
    for (o, &v) in out.iter_mut().zip(x) {
        // `as` saturates and maps NaN to 0.
        *o = ((v / scale).round_ties_even() + z).clamp(0.0, 255.0) as u8;
    }
}

/// The portable definition (also the reference for the SIMD path's tests).
pub fn scalar_quantize_into(x: &[f32], out: &mut [u8]) -> (f32, u8) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, zp) = dynamic_params(lo, hi);
    if lo == hi || !scale.is_finite() {
        out.fill(zp);
    } else {
        quantize_scalar(x, scale, zp, out);
    }
    (scale, zp)
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// The AVX2 path (x86-64 without AVX-512): 8 lanes, tails done by the scalar formula.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `(min(0, min x), max(0, max x))`, NaN ignored: `minps(v, acc)` returns `acc` when `v`
    /// is NaN, and so do `f32::min`/`max` in the tail. Four accumulator pairs hide the
    /// `minps` latency.
    #[target_feature(enable = "avx2")]
    pub unsafe fn min_max(x: &[f32]) -> (f32, f32) {
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        let chunks = x.chunks_exact(32);
        let tail = chunks.remainder();
        for c in chunks {
            for j in 0..4 {
                // SAFETY: c has 32 floats.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * j)) };
                lo[j] = _mm256_min_ps(v, lo[j]);
                hi[j] = _mm256_max_ps(v, hi[j]);
            }
        }
        let lo = _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]));
        let hi = _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3]));
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        // SAFETY: 8 floats each.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
        }
        let mut lo = l.iter().fold(0f32, |a, &v| a.min(v));
        let mut hi = h.iter().fold(0f32, |a, &v| a.max(v));
        for &v in tail {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        (lo, hi)
    }

    /// `saturate(round_half_even(x / scale) + zp)` into `out` (same length as `x`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
        let s = _mm256_set1_ps(scale);
        let z = _mm256_set1_ps(f32::from(zp));
        let zero = _mm256_setzero_ps();
        let top = _mm256_set1_ps(255.0);
        // Integral values in [0, 255] as i32 lanes.
        let q = |v: __m256| -> __m256i {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_div_ps(v, s),
            );
            // max(r + zp, 0) maps NaN to 0 (second operand); then min(·, 255).
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, z), zero), top))
        };
        // packus works within 128-bit lanes: this puts the 4-byte groups back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n = x.len().min(out.len());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: 32 floats at i are inside x, 32 bytes at i inside out.
            unsafe {
                let p = x.as_ptr().add(i);
                let ab = _mm256_packus_epi32(q(_mm256_loadu_ps(p)), q(_mm256_loadu_ps(p.add(8))));
                let cd = _mm256_packus_epi32(
                    q(_mm256_loadu_ps(p.add(16))),
                    q(_mm256_loadu_ps(p.add(24))),
                );
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
                _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), bytes);
            }
            i += 32;
        }
        super::quantize_scalar(&x[i..n], scale, zp, &mut out[i..n]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `(min(0, min x), max(0, max x))`, NaN ignored: `minps(v, acc)` returns `acc` when `v` is
    /// NaN, and masked-off tail lanes load as 0, which the range includes anyway.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn min_max(x: &[f32]) -> (f32, f32) {
        let mut lo = _mm512_setzero_ps();
        let mut hi = _mm512_setzero_ps();
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            // SAFETY: c has 16 floats.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            lo = _mm512_min_ps(v, lo);
            hi = _mm512_max_ps(v, hi);
        }
        if !tail.is_empty() {
            let mask = ((1u32 << tail.len()) - 1) as u16;
            // SAFETY: only the tail's lanes are read.
            let v = unsafe { _mm512_maskz_loadu_ps(mask, tail.as_ptr()) };
            lo = _mm512_min_ps(v, lo);
            hi = _mm512_max_ps(v, hi);
        }
        (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
    }

    /// `saturate(round_half_even(x / scale) + zp)` into `out` (same length as `x`).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
        let s = _mm512_set1_ps(scale);
        let z = _mm512_set1_ps(f32::from(zp));
        let zero = _mm512_setzero_ps();
        let top = _mm512_set1_ps(255.0);
        let q = |v: __m512| -> __m128i {
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_div_ps(v, s),
            );
            // max(r + zp, 0) maps NaN to 0 (second operand); then min(·, 255).
            let r = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, z), zero), top);
            _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r))
        };
        let n = x.len();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: 16 floats at i are inside x, 16 bytes at i inside out.
            unsafe {
                let b = q(_mm512_loadu_ps(x.as_ptr().add(i)));
                _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), b);
            }
            i += 16;
        }
        if i < n {
            let mask = ((1u32 << (n - i)) - 1) as u16;
            // SAFETY: masked to the n - i remaining lanes.
            unsafe {
                let b = q(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)));
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), mask, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(x: &[f32]) {
        let mut fast = Vec::new();
        let (s1, z1) = dynamic_quantize_into(x, &mut fast);
        let mut slow = vec![0u8; x.len()];
        let (s2, z2) = scalar_quantize_into(x, &mut slow);
        assert_eq!((s1.to_bits(), z1), (s2.to_bits(), z2), "{x:?}");
        assert_eq!(fast, slow, "{x:?}");
        // And the op's own implementation.
        let (y, s3, z3) = crate::runtime::ops::quant::dynamic_quantize(x);
        assert_eq!((y, s3.to_bits(), z3), (slow, s2.to_bits(), z2));
    }

    #[test]
    fn simd_matches_scalar_and_the_op() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for len in [0usize, 1, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000] {
            let x: Vec<f32> = (0..len).map(|_| next() * 3.0).collect();
            check(&x);
            let pos: Vec<f32> = x.iter().map(|v| v.abs() + 0.5).collect();
            check(&pos);
            let neg: Vec<f32> = x.iter().map(|v| -v.abs()).collect();
            check(&neg);
        }
        // Ties: with range [-1, 254/255·…] values land on exact .5 steps.
        let scale = 2.0f32 / 255.0;
        let ties: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0 + 0.5) * scale).collect();
        check(&ties);
    }

    #[test]
    fn quantize_with_matches_the_formula() {
        let x: Vec<f32> = (0..77)
            .map(|i| (i as f32 - 38.0) * 0.37 + if i % 5 == 0 { 0.5 } else { 0.0 })
            .chain([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -0.0,
                1e30,
                -1e30,
            ])
            .collect();
        for (scale, zp) in [(0.1f32, 128u8), (0.5, 0), (1.0, 255), (0.037, 17)] {
            for len in [0, 1, 7, 31, 32, 33, 64, x.len()] {
                let mut fast = vec![0u8; len];
                quantize_with_into(&x[..len], scale, zp, &mut fast);
                let mut slow = vec![0u8; len];
                quantize_scalar(&x[..len], scale, zp, &mut slow);
                assert_eq!(fast, slow, "scale {scale} zp {zp} len {len}");
            }
        }
    }

    #[test]
    fn special_values() {
        check(&[0.0; 19]);
        check(&[f32::NAN, 1.0, -2.0, f32::NAN, 0.5]);
        check(&[f32::INFINITY, 1.0]);
        check(&[f32::MAX, f32::MIN]);
        check(&[-0.0, 0.0, -0.0]);
        let mut x = vec![0.25f32; 37];
        x[36] = f32::NAN;
        check(&x);
    }
}
