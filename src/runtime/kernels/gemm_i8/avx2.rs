//! AVX2 kernels, exact for all 8-bit inputs, on one of two B layouts (see `pack`):
//! - bytes (usual for trained weights): `vpmaddubsw` multiplies u8 A by i8 B and sums byte
//!   pairs into i16, then `vpmaddwd` by ones sums i16 pairs into i32: 3 ops per 32
//!   multiply-adds. `vpmaddubsw` saturates its pair sums, so B is stored with
//!   `|b0| + |b1| <= 128` in every K pair (then `|a0 b0 + a1 b1| <= 255·128 = 32640`) and the
//!   rare remainders are added to the i32 sums afterwards, one scalar multiply per row each.
//!   ~1.2x the wide kernel's speed on Zen 3 (both are bound by the vector multiply ports).
//! - wide (B with many large K pairs, e.g. uniform random data): B is stored widened to i16
//!   and A is widened to u16 per call, so `vpmaddwd` forms i16 × i16 pair sums in i32 (at
//!   most 2·255·128, far from overflow): 2 ops per 16 multiply-adds.
//!
//! Tile: 6 rows × 16 columns = 12 ymm accumulators, 2 B vectors, 1 A broadcast, 1 product
//! (all 16 registers): each pair of B vectors loaded serves 12 multiplies.

// Indexed loops over the const-size register tile read like the math and unroll fully.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::runtime::kernels::simd_act::act_m256;

use super::pack::{BytesB, Data, Fix};
use super::{Job, Out, a_scale_of};

/// Columns per panel.
pub(crate) const NR: usize = 16;
/// ymm vectors per tile row.
const NV: usize = NR / 8;
/// Rows per full tile.
const MR: usize = 6;

/// Computes output panels `p0..p1` (all rows).
///
/// # Safety
/// The CPU must support AVX2 and `job` must be validated, with B packed for this kernel and
/// `job.a16` holding A widened (wide layout) or `job.a4` A padded (byte layout, K % 4 != 0).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn run_panels(job: &Job, p0: usize, p1: usize) {
    let wide = match &job.b.data {
        Data::Wide(wide) => wide,
        Data::Bytes(bytes) => return unsafe { run_panels_bytes(job, bytes, p0, p1) },
        _ => unreachable!("AVX2 kernel on a B packed for another kernel"),
    };
    let pairs = job.k.div_ceil(2);
    let n = job.b.n();
    for p in p0..p1 {
        // SAFETY: panel p holds pairs * 32 values.
        let bp = unsafe { wide.as_ptr().add(p * pairs * 32) };
        let n0 = p * NR;
        let ncols = NR.min(n - n0);
        let mut m0 = 0;
        // SAFETY (all tiles): rows m0..m0 + R are < m; stores are limited to ncols.
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

/// [`run_panels`] on the byte layout.
#[target_feature(enable = "avx2")]
unsafe fn run_panels_bytes(job: &Job, b: &BytesB, p0: usize, p1: usize) {
    let quads = job.k.div_ceil(4);
    let n = job.b.n();
    // A's rows as the kernel reads them: in place when K is a multiple of 4, else padded.
    let (a, stride) = if job.a4.is_empty() {
        (job.a, job.k)
    } else {
        (job.a4, quads * 4)
    };
    for p in p0..p1 {
        // SAFETY: panel p holds quads * 64 bytes.
        let bp = unsafe { b.bytes.as_ptr().add(p * quads * 64) };
        let fixes = &b.fixes[b.fix_start[p]..b.fix_start[p + 1]];
        let n0 = p * NR;
        let ncols = NR.min(n - n0);
        let mut m0 = 0;
        // SAFETY (all tiles): rows m0..m0 + R are < m; stores are limited to ncols.
        while m0 + MR <= job.m {
            unsafe { tile_bytes::<MR>(job, a, stride, bp, fixes, m0, n0, ncols) };
            m0 += MR;
        }
        match job.m - m0 {
            1 => unsafe { tile_bytes::<1>(job, a, stride, bp, fixes, m0, n0, ncols) },
            2 => unsafe { tile_bytes::<2>(job, a, stride, bp, fixes, m0, n0, ncols) },
            3 => unsafe { tile_bytes::<3>(job, a, stride, bp, fixes, m0, n0, ncols) },
            4 => unsafe { tile_bytes::<4>(job, a, stride, bp, fixes, m0, n0, ncols) },
            5 => unsafe { tile_bytes::<5>(job, a, stride, bp, fixes, m0, n0, ncols) },
            _ => {}
        }
    }
}

/// One tile on the byte layout: `a` is A with rows of `stride >= 4 * quads` bytes.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bytes<const R: usize>(
    job: &Job,
    a: &[u8],
    stride: usize,
    bp: *const i8,
    fixes: &[Fix],
    m0: usize,
    n0: usize,
    ncols: usize,
) {
    let quads = job.k.div_ceil(4);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); NV]; R];
    let a_rows: [*const u8; R] =
        std::array::from_fn(|r| unsafe { a.as_ptr().add((m0 + r) * stride) });
    let mut b = bp;
    for q in 0..quads {
        // SAFETY: quad q lies inside the panel and inside each (padded) A row.
        unsafe {
            let bv: [__m256i; NV] =
                std::array::from_fn(|j| _mm256_loadu_si256(b.add(32 * j).cast()));
            for r in 0..R {
                let av = _mm256_set1_epi32(a_rows[r].add(4 * q).cast::<i32>().read_unaligned());
                for j in 0..NV {
                    // Exact: every stored K pair has |b0| + |b1| <= 128 (see `pack`).
                    let pairs = _mm256_maddubs_epi16(av, bv[j]);
                    acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(pairs, ones));
                }
            }
            b = b.add(32 * NV);
        }
    }
    let mut sums = [[0i32; NR]; R];
    for r in 0..R {
        for j in 0..NV {
            // SAFETY: sums[r] has room for NV vectors.
            unsafe { _mm256_storeu_si256(sums[r].as_mut_ptr().add(8 * j).cast(), acc[r][j]) };
        }
    }
    // The parts of large K pairs the vector loop left out.
    for f in fixes {
        for r in 0..R {
            let s = &mut sums[r][f.col as usize];
            *s = s.wrapping_add(i32::from(job.a[(m0 + r) * job.k + f.k as usize]) * f.value);
        }
    }
    unsafe { epilogue::<R>(job, &sums, m0, n0, ncols) };
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const R: usize>(job: &Job, bp: *const i16, m0: usize, n0: usize, ncols: usize) {
    let pairs = job.k.div_ceil(2);
    let mut acc = [[_mm256_setzero_si256(); NV]; R];
    let a_rows: [*const u16; R] =
        std::array::from_fn(|r| unsafe { job.a16.as_ptr().add((m0 + r) * pairs * 2) });
    let mut b = bp;
    for q in 0..pairs {
        // SAFETY: pair q lies inside the panel and inside each padded A row.
        unsafe {
            let bv: [__m256i; NV] =
                std::array::from_fn(|j| _mm256_loadu_si256(b.add(16 * j).cast()));
            for r in 0..R {
                let av = _mm256_set1_epi32(a_rows[r].add(2 * q).cast::<i32>().read_unaligned());
                for j in 0..NV {
                    acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(av, bv[j]));
                }
            }
            b = b.add(16 * NV);
        }
    }
    // Hand the sums over through memory: the epilogue's data-dependent loops would otherwise
    // keep `acc` on the stack, and LLVM then spills every accumulator inside the K loop.
    let mut sums = [[0i32; NR]; R];
    for r in 0..R {
        for j in 0..NV {
            // SAFETY: sums[r] has room for NV vectors.
            unsafe { _mm256_storeu_si256(sums[r].as_mut_ptr().add(8 * j).cast(), acc[r][j]) };
        }
    }
    unsafe { epilogue::<R>(job, &sums, m0, n0, ncols) };
}

/// Zero-point correction and output; partial vectors go through [`Job::store_scalar`], which
/// computes the same expression.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn epilogue<const R: usize>(
    job: &Job,
    sums: &[[i32; NR]; R],
    m0: usize,
    n0: usize,
    ncols: usize,
) {
    let n = job.b.n();
    for j in 0..NV {
        let c = n0 + 8 * j;
        if c >= n0 + ncols {
            break;
        }
        let left = n0 + ncols - c;
        if left < 8 {
            for (r, sums_r) in sums.iter().enumerate() {
                for (i, &v) in sums_r[8 * j..8 * j + left].iter().enumerate() {
                    // SAFETY: row and columns are in range.
                    unsafe { job.store_scalar(m0 + r, c + i, v) };
                }
            }
            continue;
        }
        // SAFETY: full vector: columns c..c + 8 are < n; col_adj and zb are padded anyway.
        unsafe {
            let adj = _mm256_loadu_si256(job.b.col_adj.as_ptr().add(c).cast());
            let zb = _mm256_loadu_si256(job.b.zb.as_ptr().add(c).cast());
            // A per-tensor zero point's correction is the same for every row.
            let za_adj =
                (job.za.len() == 1).then(|| _mm256_mullo_epi32(_mm256_set1_epi32(job.za[0]), adj));
            let corrected = |r: usize| {
                let row = m0 + r;
                let za_adj = za_adj
                    .unwrap_or_else(|| _mm256_mullo_epi32(_mm256_set1_epi32(job.za(row)), adj));
                let mut corr = _mm256_sub_epi32(
                    _mm256_loadu_si256(sums[r].as_ptr().add(8 * j).cast()),
                    za_adj,
                );
                if job.b.has_zb {
                    corr = _mm256_sub_epi32(
                        corr,
                        _mm256_mullo_epi32(_mm256_set1_epi32(job.row_sum(row)), zb),
                    );
                }
                corr
            };
            match job.out {
                Out::I32(ptr) => {
                    for r in 0..R {
                        _mm256_storeu_si256(ptr.add((m0 + r) * n + c).cast(), corrected(r));
                    }
                }
                Out::F32 {
                    ptr,
                    a_scales,
                    b_scales,
                    bias,
                    act,
                } => {
                    let col_scales =
                        (b_scales.len() != 1).then(|| _mm256_loadu_ps(b_scales.as_ptr().add(c)));
                    let bias = bias.map(|b| _mm256_loadu_ps(b.as_ptr().add(c)));
                    for r in 0..R {
                        let row = m0 + r;
                        let a_scale = a_scale_of(a_scales, row);
                        let scale = match col_scales {
                            None => _mm256_set1_ps(a_scale * b_scales[0]),
                            Some(bs) => _mm256_mul_ps(_mm256_set1_ps(a_scale), bs),
                        };
                        let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(corrected(r)), scale);
                        if let Some(bias) = bias {
                            v = _mm256_add_ps(v, bias);
                        }
                        v = act_m256(v, act);
                        _mm256_storeu_ps(ptr.add(row * n + c), v);
                    }
                }
            }
        }
    }
}
