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
//! The AVX-512 path computes the same IEEE operations (exact division, `roundscale` to nearest
//! even, `maxps`/`minps` clamps whose NaN handling matches the scalar `clamp` + `as u8`), so it
//! is bit-identical to the portable loop; the tests check that.

use crate::runtime::ops::quant::dynamic_params;

/// Quantizes `x` into `out` (resized to `x.len()`); returns (scale, zero point).
pub fn dynamic_quantize_into(x: &[f32], out: &mut Vec<u8>) -> (f32, u8) {
    out.clear();
    out.resize(x.len(), 0);
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        // SAFETY: the CPU has AVX-512 F/BW (checked above).
        unsafe {
            let (lo, hi) = avx512::min_max(x);
            let (scale, zp) = dynamic_params(lo, hi);
            if lo == hi || !scale.is_finite() {
                out.fill(zp);
            } else {
                avx512::quantize(x, scale, zp, out);
            }
            return (scale, zp);
        }
    }
    scalar_quantize_into(x, out)
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
        let z = f32::from(zp);
        for (o, &v) in out.iter_mut().zip(x) {
            // `as` saturates and maps NaN to 0.
            *o = ((v / scale).round_ties_even() + z).clamp(0.0, 255.0) as u8;
        }
    }
    (scale, zp)
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
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
        for len in [0usize, 1, 5, 15, 16, 17, 33, 100, 1000] {
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
