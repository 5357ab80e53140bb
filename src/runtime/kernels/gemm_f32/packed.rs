//! Float GEMM on a B packed once (constant weights), with a fused bias + activation epilogue:
//! `C[m, n] = act(Σ_k A[m, k] · B[k, n] + bias[n])`.
//!
//! Why: for a constant B (a Linear's weight, an LSTM's W and R) a general GEMM re-packs all of
//! B on every call, which for the decoder of a word LM (B is 256×33278, 34 MB) costs about as
//! much as the product at small batch, and for the recurrent step (re-run every time step)
//! dominates. Here B is packed when the op is planned, into panels of `NR` columns stored
//! k-major (`panel[k·NR + j]`, zero-padded past N), so a tile streams its panel contiguously.
//!
//! Per call, A is packed into tiles of up to `MR` rows stored k-major (`tile[k·rows + r]`,
//! cheap: M·K floats); a tile of `rows` rows × one panel is accumulated in registers over all
//! of K and written once through the epilogue, so C is never read and needs no initialization.
//! Loop order: row blocks (packed A of one block stays in L2) → panels (split across threads)
//! → tiles of the block (the panel stays in L1/L2 while the block's tiles reuse it).
//!
//! Kernels, chosen at run time ([`Isa::best`]) when B is packed: AVX-512F (12×32 tiles),
//! AVX2+FMA (6×16), portable (4×16). Tiles with few rows split K over several accumulator sets
//! so that a one-row product (the recurrent step at batch 1) is not bound by FMA latency.
//! The sum order differs from a naive loop only by those splits and FMA contraction.

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::{PARALLEL_MIN_FLOPS, scalar};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// The activation fused into the output loop (of these float kernels and of the int8 ones,
/// which re-export it as `gemm_i8::Activation`), with the exact semantics of the runtime's ONNX
/// ops, so a fused Linear + activation equals the unfused nodes (bit for bit up to the sign of
/// a zero):
/// - `Relu`: `x > 0 ? x : 0` (NaN and -0.0 give +0.0, as `maxps(x, 0)` in the SIMD paths;
///   numerically equal to the Relu op's `f32::max(x, 0)`);
/// - `Clip { min, max }`: `x < min ? min : x`, then `x > max ? max : x` (NaN stays NaN; an
///   absent bound is ±infinity);
/// - `LeakyRelu { alpha }`: `x < 0 ? x * alpha : x`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Act {
    #[default]
    None,
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    LeakyRelu {
        alpha: f32,
    },
}

impl Act {
    /// The activation of one value, as the vector kernels compute it.
    #[inline(always)]
    pub fn eval(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => {
                if v > 0.0 {
                    v
                } else {
                    0.0
                }
            }
            Act::Clip { min, max } => {
                let v = if v < min { min } else { v };
                if v > max { max } else { v }
            }
            Act::LeakyRelu { alpha } => {
                if v < 0.0 {
                    v * alpha
                } else {
                    v
                }
            }
        }
    }
}

/// What the output loop applies after the product.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// One value per output column (len N), added to every row.
    pub bias: Option<&'a [f32]>,
    pub act: Act,
}

impl Epilogue<'_> {
    /// The plain product.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        act: Act::None,
    };
}

/// An instruction-set path of the packed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available path, unless `ONNX_DYNQ_F32_ISA` names another available one
    /// (`scalar`, `avx2`, `avx512`), which lets whole-model runs exercise every kernel.
    pub fn best() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("ONNX_DYNQ_F32_ISA").ok().and_then(|name| {
                Isa::available()
                    .into_iter()
                    .find(|isa| isa.name() == name.trim())
            });
            forced.unwrap_or_else(|| Isa::available()[0])
        })
    }

    /// All paths this CPU can run, fastest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// (columns per panel, most rows per tile).
    fn shape(self) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (avx512::NR, avx512::MR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (avx2::NR, avx2::MR),
            _ => (scalar::NR, scalar::MR),
        }
    }
}

/// Floats of padding that let the panels start on a 64-byte boundary.
const ALIGN: usize = 16;

/// B `[K, N]` packed for one [`Isa`]'s kernels.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    isa: Isa,
    nr: usize,
    /// Panels from `offset`: `ceil(N / nr)` panels of `K · nr` floats.
    data: Vec<f32>,
    offset: usize,
}

impl PackedB {
    /// Packs `b` (any strides) for the fastest available kernels.
    pub fn new(b: &ArrayView2<f32>) -> PackedB {
        PackedB::with_isa(b, Isa::best())
    }

    /// Packs for a given path; an unavailable one falls back to the portable kernels.
    pub fn with_isa(b: &ArrayView2<f32>, isa: Isa) -> PackedB {
        let isa = if isa.is_available() { isa } else { Isa::Scalar };
        let (k, n) = b.dim();
        let nr = isa.shape().0;
        let panels = n.div_ceil(nr);
        let mut data = vec![0f32; panels * k * nr + ALIGN];
        let offset = data.as_ptr().align_offset(64).min(ALIGN);
        let body = &mut data[offset..offset + panels * k * nr];
        for (p, panel) in body
            .chunks_exact_mut((k * nr).max(1))
            .enumerate()
            .take(panels)
        {
            let c0 = p * nr;
            let cols = nr.min(n - c0);
            for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                let src = b.row(kk);
                for (j, v) in row[..cols].iter_mut().enumerate() {
                    *v = src[c0 + j];
                }
            }
        }
        PackedB {
            k,
            n,
            isa,
            nr,
            data,
            offset,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn panel(&self, p: usize) -> &[f32] {
        let len = self.k * self.nr;
        &self.data[self.offset + p * len..self.offset + (p + 1) * len]
    }
}

/// A raw output pointer shared by the threads that write disjoint column ranges.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every thread writes its own panels' columns only.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `offset` floats on. A method, so that closures capture the whole `Sync`
    /// wrapper rather than its raw-pointer field.
    ///
    /// # Safety
    /// `offset` must stay inside the output slice.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: forwarded contract.
        unsafe { self.0.add(offset) }
    }
}

/// Rows of A per block: the packed block (≤ 512 KB) stays in L2 while every panel passes.
fn block_rows(k: usize, mr: usize) -> usize {
    ((128 * 1024 / k.max(1)) / mr * mr).max(mr)
}

/// `c = act(a · b + bias)` where `c` holds `a.nrows()` rows of `b.n()` floats at stride `ldc`.
///
/// Panics when the shapes disagree (`a` must be `[M, b.k()]`, `c` at least
/// `(M - 1)·ldc + N` long with `ldc >= N`, the bias `N` long); callers check them first.
pub fn gemm_packed(a: &ArrayView2<f32>, b: &PackedB, epi: &Epilogue, c: &mut [f32], ldc: usize) {
    let (m, k) = a.dim();
    let n = b.n;
    assert!(k == b.k, "gemm_packed: A has {k} columns, B {} rows", b.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm_packed: output too small"
    );
    if let Some(bias) = epi.bias {
        assert!(
            bias.len() == n,
            "gemm_packed: bias of {} for N = {n}",
            bias.len()
        );
    }
    let (nr, mr) = b.isa.shape();
    let panels = n.div_ceil(nr);
    let mc = block_rows(k, mr);
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_FLOPS;
    let mut apack = vec![0f32; mc.min(m) * k];
    let out = OutPtr(c.as_mut_ptr());
    let mut m0 = 0;
    while m0 < m {
        let m1 = (m0 + mc).min(m);
        pack_a(a, m0, m1, mr, &mut apack);
        let apack = &apack[..];
        let run_panels = |p0: usize, p1: usize| {
            for p in p0..p1 {
                let panel = b.panel(p);
                let c0 = p * nr;
                let cols = nr.min(n - c0);
                let bias = epi.bias.map(|b| &b[c0..c0 + cols]);
                let mut i = m0;
                while i < m1 {
                    let rows = mr.min(m1 - i);
                    let at = &apack[(i - m0) * k..(i - m0 + rows) * k];
                    // SAFETY: rows i..i+rows, columns c0..c0+cols are inside `c` (checked
                    // above); threads own disjoint panels.
                    let cp = unsafe { out.at(i * ldc + c0) };
                    run_tile(b.isa, rows, k, at, panel, bias, epi.act, cp, ldc, cols);
                    i += rows;
                }
            }
        };
        if parallel {
            let chunk = panels.div_ceil(threads * 4).max(1);
            (0..panels.div_ceil(chunk))
                .into_par_iter()
                .for_each(|t| run_panels(t * chunk, ((t + 1) * chunk).min(panels)));
        } else {
            run_panels(0, panels);
        }
        m0 = m1;
    }
}

/// Packs rows `m0..m1` of `a` into tiles of up to `mr` rows, each k-major.
fn pack_a(a: &ArrayView2<f32>, m0: usize, m1: usize, mr: usize, out: &mut [f32]) {
    let k = a.ncols();
    let mut i = m0;
    while i < m1 {
        let rows = mr.min(m1 - i);
        let t = &mut out[(i - m0) * k..(i - m0 + rows) * k];
        for r in 0..rows {
            let row = a.row(i + r);
            match row.as_slice() {
                Some(s) => {
                    for (kk, &v) in s.iter().enumerate() {
                        t[kk * rows + r] = v;
                    }
                }
                None => {
                    for (kk, &v) in row.iter().enumerate() {
                        t[kk * rows + r] = v;
                    }
                }
            }
        }
        i += rows;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn run_tile(
    isa: Isa,
    rows: usize,
    k: usize,
    a: &[f32],
    panel: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    match isa {
        // SAFETY: the path was available when B was packed; `a` holds k·rows floats, the panel
        // k·NR, the bias `cols`, and `c` the tile's rows at stride ldc (see gemm_packed).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            avx512::tile_dyn(
                rows,
                k,
                a.as_ptr(),
                panel.as_ptr(),
                bias.map(<[f32]>::as_ptr),
                act,
                c,
                ldc,
                cols,
            )
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            avx2::tile_dyn(
                rows,
                k,
                a.as_ptr(),
                panel.as_ptr(),
                bias.map(<[f32]>::as_ptr),
                act,
                c,
                ldc,
                cols,
            )
        },
        _ => {
            // SAFETY: as above; the slice covers exactly the tile's rows.
            let out = unsafe { std::slice::from_raw_parts_mut(c, (rows - 1) * ldc + cols) };
            scalar::tile(rows, k, a, panel, bias, act, out, ldc, cols)
        }
    }
}
