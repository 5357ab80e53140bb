//! [`PackedB`]: the weights in the kernel's layout, packed once per session, plus the per-column
//! terms of the zero-point correction.
//!
//! Layouts (columns beyond N and K steps beyond K are zero, so they add nothing):
//! - scalar: B as given, `[K, N]` i8.
//! - AVX-512 VNNI: 64-column panels; per panel, for each group of 4 K steps, four 64-byte lines
//!   (16 columns each) of `[col][4 k]` bytes: one `vpdpbusd` operand per line.
//! - AVX2, wide: 16-column panels; per panel, for each pair of K steps, 32 i16 of `[col][2 k]`:
//!   two `vpmaddwd` operands.
//! - AVX2, bytes: 16-column panels; per panel, for each group of 4 K steps, 64 bytes of
//!   `[col][4 k]`: two `vpmaddubsw` operands. Each K pair `(b0, b1)` of a column (steps 2j and
//!   2j+1, the bytes `vpmaddubsw` sums) is stored so that `|b0| + |b1| <= 128`, which keeps
//!   `255 (|b0| + |b1|)` inside i16: the instruction never saturates. A pair beyond that keeps
//!   its smaller value and stores the larger one shrunk to `128 - |smaller|` (same sign); the
//!   difference goes into a per-panel list of [`Fix`]es that the kernel adds as `A[m, k] * value`
//!   to the i32 sums. Used when such pairs are rare ([`MAX_FIX_SHARE`]); otherwise the wide
//!   layout.

use super::{Isa, err};
use crate::error::Result;

/// A cache-line aligned block of packed bytes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [i8; 64]);

pub(crate) enum Data {
    Plain(Vec<i8>),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vnni(Vec<Line>),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Wide(Vec<i16>),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Bytes(BytesB),
}

/// The AVX2 byte layout (module doc): B with every K pair within `|b0| + |b1| <= 128`, plus the
/// sparse remainder.
pub(crate) struct BytesB {
    /// `panels * quads * 64` bytes; byte `((p * quads + k / 4) * 16 + col) * 4 + k % 4`.
    pub bytes: Vec<i8>,
    /// Panel p's fixes are `fixes[fix_start[p]..fix_start[p + 1]]`, sorted by (k, col).
    pub fix_start: Vec<usize>,
    pub fixes: Vec<Fix>,
}

/// A remainder of the byte layout: `B[k, panel column col] = stored + value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fix {
    pub k: u32,
    pub col: u32,
    pub value: i32,
}

/// The byte layout is used when at most `K * N / MAX_FIX_SHARE` K pairs need a fix: each fix
/// costs a few scalar operations per row, about 35 multiply-adds of the vector loop, so this
/// bounds their cost at ~3%.
pub(crate) const MAX_FIX_SHARE: usize = 1024;

/// How an AVX2 B is laid out; [`Avx2Layout::Auto`] picks bytes when fixes are rare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // only tests force a layout
pub(crate) enum Avx2Layout {
    Auto,
    Wide,
    Bytes,
}

/// Splits the K pair `(b0, b1)` into a part with `|b0| + |b1| <= 128` and the remainder of
/// the one value that changed: `(s0, s1, Some((index, remainder)))` or the pair unchanged.
pub(super) fn split_pair(b0: i8, b1: i8) -> (i8, i8, Option<(usize, i32)>) {
    let (m0, m1) = (i32::from(b0).abs(), i32::from(b1).abs());
    if m0 + m1 <= 128 {
        return (b0, b1, None);
    }
    // Shrink the larger magnitude to 128 - the smaller one (>= 0 since both are <= 128).
    let shrink = |v: i8, other: i32| -> (i8, i32) {
        let kept = (128 - other) * i32::from(v).signum();
        // |kept| < |v| <= 128 and kept has v's sign, so it fits i8.
        (kept as i8, i32::from(v) - kept)
    };
    if m0 >= m1 {
        let (s0, r) = shrink(b0, m1);
        (s0, b1, Some((0, r)))
    } else {
        let (s1, r) = shrink(b1, m0);
        (b0, s1, Some((1, r)))
    }
}

/// The wide layout of `plain` `[k, n]` in `nr`-column panels.
fn pack_wide(plain: &[i8], k: usize, n: usize, nr: usize) -> Vec<i16> {
    // Index: ((panel * pairs + k / 2) * nr + col) * 2 + k % 2.
    let panels = n.div_ceil(nr);
    let pairs = k.div_ceil(2);
    let mut wide = vec![0i16; panels * pairs * nr * 2];
    for p in 0..panels {
        for (kk, row) in plain.chunks_exact(n.max(1)).enumerate() {
            let base = (p * pairs + kk / 2) * nr;
            for (c, &v) in row[p * nr..n.min((p + 1) * nr)].iter().enumerate() {
                wide[(base + c) * 2 + kk % 2] = i16::from(v);
            }
        }
    }
    wide
}

/// The byte layout of `plain` `[k, n]` in `nr`-column panels.
fn pack_bytes(plain: &[i8], k: usize, n: usize, nr: usize) -> BytesB {
    let panels = n.div_ceil(nr);
    let quads = k.div_ceil(4);
    let mut bytes = vec![0i8; panels * quads * nr * 4];
    let mut fix_start = Vec::with_capacity(panels + 1);
    let mut fixes = Vec::new();
    let at = |kk: usize, col: usize| if kk < k { plain[kk * n + col] } else { 0 };
    for p in 0..panels {
        if let Some(&start) = fix_start.last() {
            fixes[start..].sort_unstable_by_key(|f: &Fix| (f.k, f.col));
        }
        fix_start.push(fixes.len());
        let width = nr.min(n - p * nr);
        for kk in (0..k).step_by(2) {
            let base = (p * quads + kk / 4) * nr;
            for c in 0..width {
                let (s0, s1, fix) = split_pair(at(kk, p * nr + c), at(kk + 1, p * nr + c));
                let idx = (base + c) * 4 + kk % 4;
                bytes[idx] = s0;
                bytes[idx + 1] = s1;
                if let Some((which, value)) = fix {
                    fixes.push(Fix {
                        k: (kk + which) as u32,
                        col: c as u32,
                        value,
                    });
                }
            }
        }
    }
    if let Some(&start) = fix_start.last() {
        fixes[start..].sort_unstable_by_key(|f: &Fix| (f.k, f.col));
    }
    fix_start.push(fixes.len());
    BytesB {
        bytes,
        fix_start,
        fixes,
    }
}

/// B `[K, N]` packed for one kernel path, with its zero points.
pub struct PackedB {
    pub(crate) isa: Isa,
    k: usize,
    n: usize,
    pub(crate) data: Data,
    /// `colsum_B[n] - K * zb[n]`, padded with zeros to whole panels.
    pub(crate) col_adj: Vec<i32>,
    /// B's zero point per column, padded with zeros to whole panels.
    pub(crate) zb: Vec<i32>,
    /// Some `zb[n] != 0`: the kernels then need A's row sums.
    pub(crate) has_zb: bool,
    /// The stored bytes are B itself (an int8 B), not `B - 128` of a uint8 B: the onnxruntime
    /// u8 x s8 emulation applies only then.
    pub(crate) signed: bool,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("isa", &self.isa)
            .field("k", &self.k)
            .field("n", &self.n)
            .field("has_zb", &self.has_zb)
            .finish()
    }
}

impl PackedB {
    /// Packs int8 B `[k, n]` row-major for the fastest available kernel. `zero_points` has
    /// length 0 (none), 1 (per tensor) or n (per column).
    pub fn from_i8(b: &[i8], k: usize, n: usize, zero_points: &[i8]) -> Result<Self> {
        Self::from_i8_with_isa(Isa::best(), b, k, n, zero_points)
    }

    /// Packs uint8 B `[k, n]` row-major (stored as `B - 128` in int8, zero points moved along).
    pub fn from_u8(b: &[u8], k: usize, n: usize, zero_points: &[u8]) -> Result<Self> {
        Self::from_u8_with_isa(Isa::best(), b, k, n, zero_points)
    }

    /// Packs int8 B given transposed, as `[n, k]` row-major (e.g. Gemm with `transB = 1`).
    pub fn from_i8_transposed(b_t: &[i8], k: usize, n: usize, zero_points: &[i8]) -> Result<Self> {
        check_len(b_t.len(), k, n)?;
        let zb = zero_points_i32(zero_points.iter().map(|&z| i32::from(z)), n)?;
        let plain = (0..k * n).map(|i| b_t[(i % n) * k + i / n]).collect();
        Self::pack(Isa::best(), k, n, plain, zb, true, Avx2Layout::Auto)
    }

    /// [`PackedB::from_i8`] for a given kernel path (errors if this CPU lacks it).
    pub fn from_i8_with_isa(
        isa: Isa,
        b: &[i8],
        k: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<Self> {
        Self::from_i8_with_layout(isa, Avx2Layout::Auto, b, k, n, zero_points)
    }

    /// [`PackedB::from_i8_with_isa`] with the AVX2 layout chosen (tests force each).
    pub(crate) fn from_i8_with_layout(
        isa: Isa,
        layout: Avx2Layout,
        b: &[i8],
        k: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<Self> {
        check_len(b.len(), k, n)?;
        let zb = zero_points_i32(zero_points.iter().map(|&z| i32::from(z)), n)?;
        Self::pack(isa, k, n, b.to_vec(), zb, true, layout)
    }

    /// [`PackedB::from_u8`] for a given kernel path (errors if this CPU lacks it).
    pub fn from_u8_with_isa(
        isa: Isa,
        b: &[u8],
        k: usize,
        n: usize,
        zero_points: &[u8],
    ) -> Result<Self> {
        Self::from_u8_with_layout(isa, Avx2Layout::Auto, b, k, n, zero_points)
    }

    /// [`PackedB::from_u8_with_isa`] with the AVX2 layout chosen (tests force each).
    pub(crate) fn from_u8_with_layout(
        isa: Isa,
        layout: Avx2Layout,
        b: &[u8],
        k: usize,
        n: usize,
        zero_points: &[u8],
    ) -> Result<Self> {
        check_len(b.len(), k, n)?;
        // B - zb = (B - 128) - (zb - 128), and B - 128 as i8 is B ^ 0x80.
        let zb = if zero_points.is_empty() {
            vec![-128; n]
        } else {
            zero_points_i32(zero_points.iter().map(|&z| i32::from(z) - 128), n)?
        };
        let plain = b.iter().map(|&v| (v ^ 0x80) as i8).collect();
        Self::pack(isa, k, n, plain, zb, false, layout)
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The kernel path this B is packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The byte layout this B is packed in: `plain`, `vnni`, `wide` (AVX2 `vpmaddwd`) or
    /// `bytes` (AVX2 exact `vpmaddubsw` with sparse fixes), for benchmarks and reports.
    pub fn layout_name(&self) -> &'static str {
        match &self.data {
            Data::Plain(_) => "plain",
            Data::Vnni(_) => "vnni",
            Data::Wide(_) => "wide",
            Data::Bytes(_) => "bytes",
        }
    }

    /// `plain` is B as int8 `[k, n]` row-major; `zb` has length n.
    fn pack(
        isa: Isa,
        k: usize,
        n: usize,
        plain: Vec<i8>,
        zb: Vec<i32>,
        signed: bool,
        layout: Avx2Layout,
    ) -> Result<Self> {
        if !isa.is_available() {
            return Err(err(format!(
                "{} kernel not available on this CPU",
                isa.name()
            )));
        }
        let nr = isa.panel_width();
        let panels = n.div_ceil(nr);
        let n_pad = panels * nr;
        let k_i32 = i32::try_from(k).map_err(|_| err(format!("K = {k} too large")))?;

        // Row by row, so large B is read sequentially.
        let mut col_adj = vec![0i32; n_pad];
        for row in plain.chunks_exact(n.max(1)) {
            for (s, &v) in col_adj.iter_mut().zip(row) {
                *s = s.wrapping_add(i32::from(v));
            }
        }
        for (adj, &z) in col_adj.iter_mut().zip(&zb) {
            *adj = adj.wrapping_sub(k_i32.wrapping_mul(z));
        }
        let has_zb = zb.iter().any(|&z| z != 0);
        let mut zb = zb;
        zb.resize(n_pad, 0);

        let data = match isa {
            Isa::Scalar => Data::Plain(plain),
            Isa::Avx512Vnni => {
                // Line index: (panel * groups + k / 4) * (nr / 16) + col / 16;
                // byte in line: (col % 16) * 4 + k % 4.
                let groups = k.div_ceil(4);
                let per_group = nr / 16;
                let mut lines = vec![Line([0; 64]); panels * groups * per_group];
                // Panel by panel, so the destination stays in L1 while rows are gathered.
                for p in 0..panels {
                    for (kk, row) in plain.chunks_exact(n.max(1)).enumerate() {
                        let base = (p * groups + kk / 4) * per_group;
                        for (c, &v) in row[p * nr..n.min((p + 1) * nr)].iter().enumerate() {
                            lines[base + c / 16].0[(c % 16) * 4 + kk % 4] = v;
                        }
                    }
                }
                Data::Vnni(lines)
            }
            Isa::Avx2 => {
                let bytes = (layout != Avx2Layout::Wide).then(|| pack_bytes(&plain, k, n, nr));
                match bytes {
                    Some(bytes)
                        if layout == Avx2Layout::Bytes
                            || bytes.fixes.len() <= k.saturating_mul(n) / MAX_FIX_SHARE =>
                    {
                        Data::Bytes(bytes)
                    }
                    _ => Data::Wide(pack_wide(&plain, k, n, nr)),
                }
            }
        };
        Ok(PackedB {
            isa,
            k,
            n,
            data,
            col_adj,
            zb,
            has_zb,
            signed,
        })
    }

    /// The stored B value at `(row, col)` (`row < k`, `col < n`), whatever the layout.
    pub(crate) fn stored(&self, row: usize, col: usize) -> i8 {
        let nr = self.isa.panel_width();
        let (p, c) = (col / nr, col % nr);
        match &self.data {
            Data::Plain(b) => b[row * self.n + col],
            Data::Vnni(lines) => {
                let groups = self.k.div_ceil(4);
                lines[(p * groups + row / 4) * (nr / 16) + c / 16].0[(c % 16) * 4 + row % 4]
            }
            Data::Wide(wide) => {
                let pairs = self.k.div_ceil(2);
                wide[((p * pairs + row / 2) * nr + c) * 2 + row % 2] as i8
            }
            Data::Bytes(b) => {
                let quads = self.k.div_ceil(4);
                let kept = b.bytes[((p * quads + row / 4) * nr + c) * 4 + row % 4];
                let fixes = &b.fixes[b.fix_start[p]..b.fix_start[p + 1]];
                let fix = fixes
                    .binary_search_by_key(&(row, c), |f| (f.k as usize, f.col as usize))
                    .map_or(0, |i| fixes[i].value);
                // kept + fix is the original int8 value.
                (i32::from(kept) + fix) as i8
            }
        }
    }
}

fn check_len(len: usize, k: usize, n: usize) -> Result<()> {
    if k.checked_mul(n) != Some(len) {
        return Err(err(format!("B has {len} values, expected {k}x{n}")));
    }
    Ok(())
}

/// Expands 0 / 1 / n zero points to n.
fn zero_points_i32(zps: impl ExactSizeIterator<Item = i32>, n: usize) -> Result<Vec<i32>> {
    match zps.len() {
        0 => Ok(vec![0; n]),
        1 => Ok(vec![zps.into_iter().next().unwrap_or(0); n]),
        len if len == n => Ok(zps.collect()),
        len => Err(err(format!(
            "{len} B zero points for {n} columns (expected 0, 1 or {n})"
        ))),
    }
}
