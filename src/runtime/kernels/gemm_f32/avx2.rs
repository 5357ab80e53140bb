//! AVX2+FMA tiles: up to 6 rows × 16 columns (two ymm registers per row), 12 accumulators.

use std::arch::x86_64::*;

use crate::runtime::kernels::simd_act::act_m256;

use super::Act;

/// Columns per packed panel of B.
pub const NR: usize = 16;
/// Most rows per tile.
pub const MR: usize = 6;

/// `c[r·ldc + j] = act(Σ_k a[k·R + r] · b[k·NR + j] + bias[j])` for `r < R`, `j < cols`,
/// with `U` accumulator sets as in the AVX-512 tile.
///
/// # Safety
/// AVX2 and FMA must be available; extents as for the AVX-512 tile.
#[target_feature(enable = "avx2,fma")]
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
            8,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_add_ps
        );
        let mut bias_pad = [0f32; NR];
        if let Some(bias) = bias {
            std::ptr::copy_nonoverlapping(bias, bias_pad.as_mut_ptr(), cols);
            let v0 = _mm256_loadu_ps(bias_pad.as_ptr());
            let v1 = _mm256_loadu_ps(bias_pad.as_ptr().add(8));
            for s in sum.iter_mut() {
                s[0] = _mm256_add_ps(s[0], v0);
                s[1] = _mm256_add_ps(s[1], v1);
            }
        }
        for s in sum.iter_mut() {
            for v in s.iter_mut() {
                *v = act_m256(*v, act);
            }
        }
        for (r, s) in sum.iter().enumerate() {
            let cp = c.add(r * ldc);
            if cols == NR {
                _mm256_storeu_ps(cp, s[0]);
                _mm256_storeu_ps(cp.add(8), s[1]);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), s[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), s[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), cp, cols);
            }
        }
    }
}

/// Runs the tile for `rows` (1..=[`MR`]) rows.
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
            2 => tile::<2, 2>(k, a, b, bias, act, c, ldc, cols),
            3 => tile::<3, 2>(k, a, b, bias, act, c, ldc, cols),
            4 => tile::<4, 1>(k, a, b, bias, act, c, ldc, cols),
            5 => tile::<5, 1>(k, a, b, bias, act, c, ldc, cols),
            _ => tile::<6, 1>(k, a, b, bias, act, c, ldc, cols),
        }
    }
}
