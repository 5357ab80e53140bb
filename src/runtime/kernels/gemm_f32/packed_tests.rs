//! The packed kernels against a naive f64 product, on every available path, with edge tiles
//! (rows not a multiple of the tile height, columns not a multiple of the panel width), every
//! epilogue, strided and transposed A, and K = 0.

use ndarray::{Array2, ShapeBuilder};

use super::*;

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn reference(a: &Array2<f32>, b: &Array2<f32>, bias: Option<&[f32]>, act: Act) -> Array2<f64> {
    let (m, k) = a.dim();
    let n = b.ncols();
    Array2::from_shape_fn((m, n), |(i, j)| {
        let mut s: f64 = (0..k).map(|p| a[[i, p]] as f64 * b[[p, j]] as f64).sum();
        if let Some(bias) = bias {
            s += bias[j] as f64;
        }
        match act {
            Act::None => s,
            Act::Relu => s.max(0.0),
            Act::Clip { min, max } => s.max(min as f64).min(max as f64),
            Act::LeakyRelu { alpha } => {
                if s < 0.0 {
                    s * alpha as f64
                } else {
                    s
                }
            }
        }
    })
}

fn check(isa: Isa, m: usize, k: usize, n: usize, epi: &Epilogue, transposed_a: bool) {
    let a = if transposed_a {
        Array2::from_shape_vec((m, k).f(), values(m * k, 1)).unwrap()
    } else {
        Array2::from_shape_vec((m, k), values(m * k, 1)).unwrap()
    };
    let b = Array2::from_shape_vec((k, n), values(k * n, 2)).unwrap();
    let packed = PackedB::with_isa(&b.view(), isa);
    assert_eq!(packed.isa(), isa);
    // Extra columns in the output rows (ldc > n) must stay untouched.
    let ldc = n + 3;
    let mut c = vec![f32::NAN; m * ldc];
    gemm_packed(&a.view(), &packed, epi, &mut c, ldc);
    let want = reference(&a, &b, epi.bias, epi.act);
    let abs_sum = reference(&a.mapv(f32::abs), &b.mapv(f32::abs), None, Act::None);
    for i in 0..m {
        for j in 0..n {
            let (got, w) = (c[i * ldc + j] as f64, want[[i, j]]);
            let tol = 1e-6 * (abs_sum[[i, j]] + 1.0);
            assert!(
                (got - w).abs() <= tol,
                "{} {m}x{k}x{n} {epi:?} at ({i},{j}): {got} vs {w}",
                isa.name()
            );
        }
        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
    }
}

#[test]
fn packed_matches_f64_reference_on_every_path() {
    let bias: Vec<f32> = values(100, 3);
    for isa in Isa::available() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 5),
            (2, 33, 17),
            (3, 64, 31),
            (5, 16, 32),
            (7, 9, 33),
            (10, 256, 64),
            (12, 40, 48),
            (13, 70, 65),
            (25, 19, 100),
            (37, 5, 47),
        ] {
            for act in [
                Act::None,
                Act::Relu,
                Act::Clip {
                    min: -0.5,
                    max: 0.25,
                },
                Act::LeakyRelu { alpha: 0.1 },
            ] {
                for with_bias in [false, true] {
                    let epi = Epilogue {
                        bias: with_bias.then(|| &bias[..n]),
                        act,
                    };
                    check(isa, m, k, n, &epi, false);
                }
            }
            check(isa, m, k, n, &Epilogue::NONE, true);
        }
    }
}

#[test]
fn empty_k_gives_the_epilogue_of_zero() {
    for isa in Isa::available() {
        let a = Array2::<f32>::zeros((3, 0));
        let b = Array2::<f32>::zeros((0, 5));
        let packed = PackedB::with_isa(&b.view(), isa);
        let bias = [1.0f32, -2.0, 3.0, -4.0, 0.5];
        let mut c = vec![f32::NAN; 15];
        let epi = Epilogue {
            bias: Some(&bias),
            act: Act::Relu,
        };
        gemm_packed(&a.view(), &packed, &epi, &mut c, 5);
        for row in c.chunks(5) {
            assert_eq!(row, [1.0, 0.0, 3.0, 0.0, 0.5]);
        }
    }
}

/// Large enough to take the multi-block and multi-threaded paths.
#[test]
fn large_product_on_two_threads() {
    let (m, k, n) = (700, 300, 90);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| check(Isa::best(), m, k, n, &Epilogue::NONE, false));
}
