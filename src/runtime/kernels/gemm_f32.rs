//! Float matrix products `C = alpha * A·B + beta * C` on strided 2-D views, backed by the
//! `gemm` crate (0.19).
//!
//! Chosen over `matrixmultiply` (ndarray's `general_mat_mul`) by measurement on this machine
//! kind (2 vCPU Xeon, release build, one thread, noisy shared host): 35x256x1024 0.63 ms vs
//! 0.46-0.67 ms (a tie), 350x256x1024 2.6-3.5 ms vs 2.7-3.7 ms, 1x512x33278 10-11.5 ms vs
//! 33-37 ms (the decoder of a word LM at batch 1, where `matrixmultiply` has no gemv path),
//! 35x256x33278 21.9 ms vs 28.1 ms. Transposed operands are passed as strides, never copied.
//!
//! For a constant B (weights), [`PackedB`] + [`gemm_packed`] pack B once and fuse a bias and
//! activation into the output loop (module `packed`); this file's [`gemm`] serves everything
//! else.
//!
//! Threading: products of at least [`PARALLEL_MIN_FLOPS`] multiply-adds use the current rayon
//! pool (the session installs its own pool when a thread count is set); smaller ones stay on the
//! calling thread, where splitting costs more than it saves.

use ndarray::{ArrayView2, ArrayViewMut2};

/// The k loop of the packed f32 tiles (`avx2.rs`, `avx512.rs`), written once for both vector
/// widths: `U` independent accumulator sets of `R` rows × two vectors (`$nr` columns, `$half`
/// per vector), each step broadcasting one A value per row against two B vectors; returns the
/// sets summed. Expands inside the caller's `unsafe` block and `target_feature` function, so
/// the intrinsics inline there.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_sums {
    ($k:expr, $a:expr, $b:expr, $r:ident, $u:ident, $nr:expr, $half:expr,
     $zero:ident, $load:ident, $set1:ident, $fma:ident, $add:ident) => {{
        let (k, a, b) = ($k, $a, $b);
        let mut acc = [[[$zero(); 2]; $r]; $u];
        let mut kk = 0;
        while kk + $u <= k {
            for (u, acc) in acc.iter_mut().enumerate() {
                let bp = b.add((kk + u) * $nr);
                let (b0, b1) = ($load(bp), $load(bp.add($half)));
                let ap = a.add((kk + u) * $r);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = $set1(*ap.add(r));
                    acc[0] = $fma(av, b0, acc[0]);
                    acc[1] = $fma(av, b1, acc[1]);
                }
            }
            kk += $u;
        }
        while kk < k {
            let bp = b.add(kk * $nr);
            let (b0, b1) = ($load(bp), $load(bp.add($half)));
            let ap = a.add(kk * $r);
            for (r, acc) in acc[0].iter_mut().enumerate() {
                let av = $set1(*ap.add(r));
                acc[0] = $fma(av, b0, acc[0]);
                acc[1] = $fma(av, b1, acc[1]);
            }
            kk += 1;
        }
        let mut sum = acc[0];
        for acc in &acc[1..] {
            for (s, a) in sum.iter_mut().zip(acc) {
                s[0] = $add(s[0], a[0]);
                s[1] = $add(s[1], a[1]);
            }
        }
        sum
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod packed;
#[cfg(test)]
mod packed_tests;
mod scalar;

pub use packed::{Act, Epilogue, Isa, PackedB, gemm_packed};

#[cfg(test)]
mod buffer_tests {
    use super::*;

    #[test]
    fn recycled_buffers_are_reused_by_size() {
        let v = vec![1f32; RECYCLE_MIN * 3];
        let p = v.as_ptr();
        recycle(v);
        // Too small a request for that buffer (it would waste more than half): fresh, zeroed.
        let small = output_buffer(RECYCLE_MIN);
        assert!(small.iter().all(|&x| x == 0.0) && small.as_ptr() != p);
        let again = output_buffer(RECYCLE_MIN * 2);
        assert_eq!((again.as_ptr(), again.len()), (p, RECYCLE_MIN * 2));
        // Tiny buffers are not kept.
        recycle(vec![0f32; 8]);
        assert_eq!(RECYCLED.with(|r| r.borrow().len()), 0);
    }
}

/// Below this many multiply-adds (m·n·k) a product runs on one thread.
pub const PARALLEL_MIN_FLOPS: usize = 1 << 23;

/// Outputs at least this large (bytes) ask the kernel for transparent huge pages.
const HUGE_BUFFER_BYTES: usize = 4 << 20;
/// Buffers at least this large (floats) are worth keeping for reuse.
const RECYCLE_MIN: usize = 16 << 10;
/// At most this many recycled buffers, and this many floats in all, per thread.
const RECYCLE_MAX_COUNT: usize = 16;
const RECYCLE_MAX_FLOATS: usize = 64 << 20;

thread_local! {
    static RECYCLED: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Offers a dead buffer for reuse by a later [`output_buffer`] call on this thread (the
/// session hands over intermediate values when their last reader is done). Small buffers and
/// any beyond the per-thread bound are simply freed.
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < RECYCLE_MIN {
        return;
    }
    RECYCLED.with(|r| {
        let mut r = r.borrow_mut();
        let held: usize = r.iter().map(Vec::capacity).sum();
        if r.len() < RECYCLE_MAX_COUNT && held + v.capacity() <= RECYCLE_MAX_FLOATS {
            r.push(v);
        }
    });
}

/// A `len`-float buffer for an output that the caller overwrites in full: its contents are
/// unspecified (zeros, or a recycled buffer's old values).
///
/// Why: a multi-MB output is otherwise a fresh `mmap` (or fresh heap pages after glibc trimmed
/// the heap) on every run, and first-touch page faults on 4 KB pages cost a fifth of a
/// word-LM run at batch 10. So a buffer [`recycle`]d on this thread with a capacity between
/// `len` and `2·len` is reused; otherwise a zeroed one is allocated (calloc: fresh pages are
/// not written), and on Linux one of 4 MB or more is advised as a huge-page candidate
/// (`MADV_HUGEPAGE`, as numpy does for its large arrays), which cuts the faults by 512x where
/// the system allows transparent huge pages.
pub fn output_buffer(len: usize) -> Vec<f32> {
    if len >= RECYCLE_MIN {
        let reused = RECYCLED.with(|r| {
            let mut r = r.borrow_mut();
            let best = r
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| r.swap_remove(i))
        });
        if let Some(mut v) = reused {
            v.resize(len, 0.0);
            return v;
        }
    }
    let v = vec![0f32; len];
    #[cfg(target_os = "linux")]
    if len * std::mem::size_of::<f32>() >= HUGE_BUFFER_BYTES {
        const PAGE: usize = 4096;
        let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (v.as_ptr() as usize + len * std::mem::size_of::<f32>()) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside the allocation `v` owns; MADV_HUGEPAGE changes no
            // contents (zero pages stay zero), only how future faults are served. A failure is
            // harmless and ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// Element types the kernel multiplies.
pub trait GemmElem: Copy + 'static + num_traits::Zero + num_traits::One {}
impl GemmElem for f32 {}
impl GemmElem for f64 {}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `c = alpha * a·b + beta * c`. With `beta == 0` the old contents of `c` are not read (so NaN
/// or garbage there does not leak into the result).
///
/// Shapes must agree (`a` m×k, `b` k×n, `c` m×n); callers check them and this asserts.
pub fn gemm<T: GemmElem + PartialEq>(
    alpha: T,
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    beta: T,
    c: &mut ArrayViewMut2<T>,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(k == k2 && c.dim() == (m, n), "gemm shape mismatch");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: the product is zero.
        c.mapv_inplace(|x| {
            if beta == T::zero() {
                T::zero()
            } else {
                x * beta
            }
        });
        return;
    }
    let [ars, acs] = [a.strides()[0], a.strides()[1]];
    let [brs, bcs] = [b.strides()[0], b.strides()[1]];
    let [crs, ccs] = [c.strides()[0], c.strides()[1]];
    let read_dst = beta != T::zero();
    // SAFETY: the pointers and strides come from live ndarray views whose extents are (m, k),
    // (k, n) and (m, n), so every index gemm touches is inside its view; `c` is borrowed
    // mutably, so it aliases neither input. The `gemm` crate's convention is
    // dst = alpha_gemm * dst + beta_gemm * lhs·rhs, hence the swapped scalars.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            ccs,
            crs,
            read_dst,
            a.as_ptr(),
            acs,
            ars,
            b.as_ptr(),
            bcs,
            brs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    fn naive(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f32> {
        let (m, k) = a.dim();
        let n = b.dim().1;
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[[i, p]] * b[[p, j]]).sum())
    }

    #[test]
    fn matches_naive_with_transposes_and_scalars() {
        for &(m, k, n) in &[(1, 7, 5), (3, 4, 2), (17, 33, 9), (64, 70, 65)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 3 + j * 7) % 11) as f32 - 5.0);
            let bt = Array2::from_shape_fn((n, k), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.5);
            let b = bt.t();
            let c0 = Array2::from_shape_fn((m, n).f(), |(i, j)| (i + j) as f32);
            let mut c = c0.clone();
            gemm(2.0, &a.view(), &b, 0.5, &mut c.view_mut());
            let want = naive(&a.view(), &b) * 2.0 + &c0 * 0.5;
            for (x, y) in c.iter().zip(want.iter()) {
                assert!(
                    (x - y).abs() <= 1e-3 * y.abs().max(1.0),
                    "{m}x{k}x{n}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_output() {
        let a = Array2::<f32>::ones((2, 3));
        let b = Array2::<f32>::ones((3, 2));
        let mut c = Array2::from_elem((2, 2), f32::NAN);
        gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
        assert_eq!(c, Array2::from_elem((2, 2), 3.0));
    }
}
