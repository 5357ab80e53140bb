//! Portable kernel: B row-major, one row of A against a 256-column chunk at a time, i32
//! accumulators on the stack.

use super::Job;
use super::pack::Data;

/// Columns per panel (one stack accumulator row).
pub(crate) const NR: usize = 256;

pub(crate) fn run_panels(job: &Job, p0: usize, p1: usize) {
    let Data::Plain(b) = &job.b.data else {
        unreachable!("scalar kernel on a B packed for another kernel");
    };
    let (k, n) = (job.k, job.b.n());
    for p in p0..p1 {
        let c0 = p * NR;
        let width = NR.min(n - c0);
        for row in 0..job.m {
            let mut acc = [0i32; NR];
            let acc = &mut acc[..width];
            let a_row = &job.a[row * k..(row + 1) * k];
            for (kk, &av) in a_row.iter().enumerate() {
                let av = i32::from(av);
                let b_row = &b[kk * n + c0..kk * n + c0 + width];
                for (s, &bv) in acc.iter_mut().zip(b_row) {
                    *s = s.wrapping_add(av * i32::from(bv));
                }
            }
            for (j, &s) in acc.iter().enumerate() {
                // SAFETY: row < m and c0 + j < n.
                unsafe { job.store_scalar(row, c0 + j, s) };
            }
        }
    }
}
