//! AVX-512F tiles: up to 12 rows × 32 columns (two zmm registers per row), 24 accumulators.

use std::arch::x86_64::*;

use crate::runtime::kernels::simd_act::act_m512;

use super::Act;

/// Columns per packed panel of B.
pub const NR: usize = 32;
/// Most rows per tile.
pub const MR: usize = 12;

/// `c[r·ldc + j] = act(Σ_k a[k·R + r] · b[k·NR + j] + bias[j])` for `r < R`, `j < cols`.
///
/// `U` independent accumulator sets split the k loop so that few-row tiles are not bound by
/// the FMA latency (each set is a separate dependency chain); they are summed at the end.
///
/// # Safety
/// AVX-512F must be available; `a` holds `k·R` floats, `b` `k·NR`, `bias` (when given) `cols`,
/// and `c` rows `0..R` of `cols` floats at stride `ldc`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile<const R: usize, const U: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    bias: Option<*const f32>,
    act: Act,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    // SAFETY (whole body): pointer arithmetic stays inside the extents the caller guarantees.
    unsafe {
        let mut sum = tile_sums!(
            k,
            a,
            b,
            R,
            U,
            NR,
            16,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps
        );
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as u16
        };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols <= 16 {
            0
        } else {
            ((1u32 << (cols - 16)) - 1) as u16
        };
        if let Some(bias) = bias {
            let v0 = _mm512_maskz_loadu_ps(m0, bias);
            let v1 = _mm512_maskz_loadu_ps(m1, bias.add(16));
            for s in sum.iter_mut() {
                s[0] = _mm512_add_ps(s[0], v0);
                s[1] = _mm512_add_ps(s[1], v1);
            }
        }
        for s in sum.iter_mut() {
            for v in s.iter_mut() {
                *v = act_m512(*v, act);
            }
        }
        for (r, s) in sum.iter().enumerate() {
            let cp = c.add(r * ldc);
            if cols == NR {
                _mm512_storeu_ps(cp, s[0]);
                _mm512_storeu_ps(cp.add(16), s[1]);
            } else {
                _mm512_mask_storeu_ps(cp, m0, s[0]);
                _mm512_mask_storeu_ps(cp.add(16), m1, s[1]);
            }
        }
    }
}

/// Runs the tile for `rows` (1..=[`MR`]) rows, choosing accumulator sets by row count.
///
/// # Safety
/// As [`tile`], with `R = rows`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_dyn(
    rows: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    bias: Option<*const f32>,
    act: Act,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match rows {
            1 => tile::<1, 4>(k, a, b, bias, act, c, ldc, cols),
            2 => tile::<2, 4>(k, a, b, bias, act, c, ldc, cols),
            3 => tile::<3, 2>(k, a, b, bias, act, c, ldc, cols),
            4 => tile::<4, 2>(k, a, b, bias, act, c, ldc, cols),
            5 => tile::<5, 2>(k, a, b, bias, act, c, ldc, cols),
            6 => tile::<6, 1>(k, a, b, bias, act, c, ldc, cols),
            7 => tile::<7, 1>(k, a, b, bias, act, c, ldc, cols),
            8 => tile::<8, 1>(k, a, b, bias, act, c, ldc, cols),
            9 => tile::<9, 1>(k, a, b, bias, act, c, ldc, cols),
            10 => tile::<10, 1>(k, a, b, bias, act, c, ldc, cols),
            11 => tile::<11, 1>(k, a, b, bias, act, c, ldc, cols),
            _ => tile::<12, 1>(k, a, b, bias, act, c, ldc, cols),
        }
    }
}
