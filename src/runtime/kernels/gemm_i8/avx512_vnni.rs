//! AVX-512 VNNI kernel: `vpdpbusd` multiplies 4 u8 of A by 4 i8 of B and adds the four
//! products into an i32 lane, exactly (no intermediate saturation).
//!
//! Tile: 6 rows × 64 columns = 24 zmm accumulators + 4 B lines + 1 A broadcast (of 32 zmm).
//! Each step of 4 K values broadcasts 4 bytes of an A row and issues 4 `vpdpbusd`s per row.
//! A is read in place; the K tail (K % 4) is assembled from the remaining bytes, and B's
//! packed zeros beyond K make the padding inert.

// Indexed loops over the const-size register tile read like the math and unroll fully.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::runtime::kernels::simd_act::act_m512;

use super::pack::Data;
use super::{Job, Out};

/// Columns per panel.
pub(crate) const NR: usize = 64;
/// zmm vectors per tile row.
const NV: usize = NR / 16;
/// Rows per full tile.
const MR: usize = 6;

/// Computes output panels `p0..p1` (all rows).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VNNI and `job` must be validated with B packed for this
/// kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn run_panels(job: &Job, p0: usize, p1: usize) {
    let Data::Vnni(lines) = &job.b.data else {
        unreachable!("VNNI kernel on a B packed for another kernel");
    };
    let groups = job.k.div_ceil(4);
    let n = job.b.n();
    for p in p0..p1 {
        // SAFETY: panel p holds groups * NV lines.
        let bp = unsafe { lines.as_ptr().add(p * groups * NV) }.cast::<i8>();
        let n0 = p * NR;
        let ncols = NR.min(n - n0);
        let mut m0 = 0;
        // SAFETY (all tiles): rows m0.. m0 + R are < m; columns are masked to ncols.
        while m0 + MR <= job.m {
            unsafe { tile::<MR>(job, bp, m0, n0, ncols) };
            m0 += MR;
        }
        match job.m - m0 {
            1 => unsafe { tile::<1>(job, bp, m0, n0, ncols) },
            2 => unsafe { tile::<2>(job, bp, m0, n0, ncols) },
            3 => unsafe { tile::<3>(job, bp, m0, n0, ncols) },
            4 => unsafe { tile::<4>(job, bp, m0, n0, ncols) },
            5 => unsafe { tile::<5>(job, bp, m0, n0, ncols) },
            _ => {}
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize>(job: &Job, bp: *const i8, m0: usize, n0: usize, ncols: usize) {
    let k = job.k;
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let a_rows: [*const u8; R] =
        std::array::from_fn(|r| unsafe { job.a.as_ptr().add((m0 + r) * k) });
    let mut b = bp;
    for g in 0..k / 4 {
        // SAFETY: group g < groups lies inside the panel; A rows have k >= 4g + 4 bytes.
        unsafe {
            let bv: [__m512i; NV] =
                std::array::from_fn(|j| _mm512_loadu_si512(b.add(64 * j).cast()));
            for r in 0..R {
                let av = _mm512_set1_epi32(a_rows[r].add(4 * g).cast::<i32>().read_unaligned());
                for j in 0..NV {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, bv[j]);
                }
            }
            b = b.add(64 * NV);
        }
    }
    let rem = k % 4;
    if rem != 0 {
        let g = k / 4;
        // SAFETY: the tail group is the panel's last; A bytes are copied only up to k.
        unsafe {
            let bv: [__m512i; NV] =
                std::array::from_fn(|j| _mm512_loadu_si512(b.add(64 * j).cast()));
            for r in 0..R {
                let mut bytes = [0u8; 4];
                std::ptr::copy_nonoverlapping(a_rows[r].add(4 * g), bytes.as_mut_ptr(), rem);
                let av = _mm512_set1_epi32(i32::from_le_bytes(bytes));
                for j in 0..NV {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, bv[j]);
                }
            }
        }
    }
    // Hand the sums over through memory: the epilogue's data-dependent loops would otherwise
    // keep `acc` on the stack, and LLVM then spills every accumulator inside the K loop.
    let mut sums = [[0i32; NR]; R];
    for r in 0..R {
        for j in 0..NV {
            // SAFETY: sums[r] has room for NV vectors.
            unsafe { _mm512_storeu_si512(sums[r].as_mut_ptr().add(16 * j).cast(), acc[r][j]) };
        }
    }
    unsafe { epilogue::<R>(job, &sums, m0, n0, ncols) };
}

/// Zero-point correction, then either int32 stores or the float scale/bias/activation, masked to the
/// panel's valid columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn epilogue<const R: usize>(
    job: &Job,
    sums: &[[i32; NR]; R],
    m0: usize,
    n0: usize,
    ncols: usize,
) {
    let n = job.b.n();
    let za: [__m512i; R] = std::array::from_fn(|r| _mm512_set1_epi32(job.za(m0 + r)));
    let rs: [__m512i; R] = std::array::from_fn(|r| _mm512_set1_epi32(job.row_sum(m0 + r)));
    for j in 0..NV {
        let c = n0 + 16 * j;
        if c >= n0 + ncols {
            break;
        }
        let left = n0 + ncols - c;
        let mask: __mmask16 = if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as u16
        };
        // SAFETY: col_adj and zb are padded to whole panels; user slices are read masked.
        unsafe {
            let adj = _mm512_loadu_si512(job.b.col_adj.as_ptr().add(c).cast());
            let zb = _mm512_loadu_si512(job.b.zb.as_ptr().add(c).cast());
            let corr: [__m512i; R] = std::array::from_fn(|r| {
                let acc = _mm512_loadu_si512(sums[r].as_ptr().add(16 * j).cast());
                let v = _mm512_sub_epi32(acc, _mm512_mullo_epi32(za[r], adj));
                if job.b.has_zb {
                    _mm512_sub_epi32(v, _mm512_mullo_epi32(rs[r], zb))
                } else {
                    v
                }
            });
            match job.out {
                Out::I32(ptr) => {
                    for r in 0..R {
                        _mm512_mask_storeu_epi32(ptr.add((m0 + r) * n + c), mask, corr[r]);
                    }
                }
                Out::F32 {
                    ptr,
                    a_scales,
                    b_scales,
                    bias,
                    act,
                } => {
                    let b_scale = if b_scales.len() == 1 {
                        _mm512_set1_ps(b_scales[0])
                    } else {
                        _mm512_maskz_loadu_ps(mask, b_scales.as_ptr().add(c))
                    };
                    // The product a_scale * b_scale is formed first, as the scalar tail does.
                    let tensor_scale = (a_scales.len() == 1)
                        .then(|| _mm512_mul_ps(_mm512_set1_ps(a_scales[0]), b_scale));
                    let bias = bias.map(|bias| _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(c)));
                    for r in 0..R {
                        let scale = tensor_scale.unwrap_or_else(|| {
                            _mm512_mul_ps(_mm512_set1_ps(a_scales[m0 + r]), b_scale)
                        });
                        let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr[r]), scale);
                        if let Some(bias) = bias {
                            v = _mm512_add_ps(v, bias);
                        }
                        v = act_m512(v, act);
                        _mm512_mask_storeu_ps(ptr.add((m0 + r) * n + c), mask, v);
                    }
                }
            }
        }
    }
}
