//! The fused-epilogue activation ([`Act`]) on SIMD vectors, shared by the float
//! (`gemm_f32`) and int8 (`gemm_i8`) kernels so that both compute [`Act::eval`] lane by lane.
//! `maxps`/`minps` return their second operand when either is NaN, which gives the scalar
//! definition's NaN behaviour with the operand orders below (Relu gives 0, Clip keeps NaN).

use std::arch::x86_64::*;

use super::gemm_f32::Act;

/// [`Act::eval`] on 8 lanes.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn act_m256(v: __m256, act: Act) -> __m256 {
    match act {
        Act::None => v,
        Act::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
        Act::Clip { min, max } => {
            let v = _mm256_max_ps(_mm256_set1_ps(min), v);
            _mm256_min_ps(_mm256_set1_ps(max), v)
        }
        Act::LeakyRelu { alpha } => {
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
            _mm256_blendv_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(alpha)), neg)
        }
    }
}

/// [`Act::eval`] on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn act_m512(v: __m512, act: Act) -> __m512 {
    match act {
        Act::None => v,
        Act::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
        Act::Clip { min, max } => {
            let v = _mm512_max_ps(_mm512_set1_ps(min), v);
            _mm512_min_ps(_mm512_set1_ps(max), v)
        }
        Act::LeakyRelu { alpha } => {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
            _mm512_mask_mul_ps(v, neg, v, _mm512_set1_ps(alpha))
        }
    }
}
