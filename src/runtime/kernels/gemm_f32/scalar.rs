//! Portable tiles: up to 4 rows × 16 columns, plain loops the compiler may vectorize.

use super::Act;

/// Columns per packed panel of B.
pub const NR: usize = 16;
/// Most rows per tile.
pub const MR: usize = 4;

/// `c[r·ldc + j] = act(Σ_k a[k·rows + r] · b[k·NR + j] + bias[j])` for `r < rows`,
/// `j < cols`. `a` holds `k·rows` floats, `b` `k·NR`, `bias` `cols`.
#[allow(clippy::too_many_arguments)]
pub fn tile(
    rows: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let bk: &[f32; NR] = b[kk * NR..(kk + 1) * NR].try_into().expect("panel row");
        for (r, acc) in acc.iter_mut().enumerate().take(rows) {
            let av = a[kk * rows + r];
            for (v, &bv) in acc.iter_mut().zip(bk) {
                *v += av * bv;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let row = &mut c[r * ldc..r * ldc + cols];
        for (j, out) in row.iter_mut().enumerate() {
            let v = match bias {
                Some(b) => acc[j] + b[j],
                None => acc[j],
            };
            *out = act.eval(v);
        }
    }
}
