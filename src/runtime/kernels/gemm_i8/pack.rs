//! [`PackedB`]: the weights in the kernel's layout, packed once per session, plus the per-column
//! terms of the zero-point correction.
//!
//! Layouts (columns beyond N and K steps beyond K are zero, so they add nothing):
//! - scalar: B as given, `[K, N]` i8.
//! - AVX-512 VNNI: 64-column panels; per panel, for each group of 4 K steps, four 64-byte lines
//!   (16 columns each) of `[col][4 k]` bytes: one `vpdpbusd` operand per line.
//! - AVX2: 16-column panels; per panel, for each pair of K steps, 32 i16 of `[col][2 k]`: two
//!   `vpmaddwd` operands.

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
        Self::pack(Isa::best(), k, n, plain, zb, true)
    }

    /// [`PackedB::from_i8`] for a given kernel path (errors if this CPU lacks it).
    pub fn from_i8_with_isa(
        isa: Isa,
        b: &[i8],
        k: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<Self> {
        check_len(b.len(), k, n)?;
        let zb = zero_points_i32(zero_points.iter().map(|&z| i32::from(z)), n)?;
        Self::pack(isa, k, n, b.to_vec(), zb, true)
    }

    /// [`PackedB::from_u8`] for a given kernel path (errors if this CPU lacks it).
    pub fn from_u8_with_isa(
        isa: Isa,
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
        Self::pack(isa, k, n, plain, zb, false)
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

    /// `plain` is B as int8 `[k, n]` row-major; `zb` has length n.
    fn pack(
        isa: Isa,
        k: usize,
        n: usize,
        plain: Vec<i8>,
        zb: Vec<i32>,
        signed: bool,
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
                // Index: ((panel * pairs + k / 2) * nr + col) * 2 + k % 2.
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
                Data::Wide(wide)
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
