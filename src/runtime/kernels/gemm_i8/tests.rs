//! Every available kernel path against a naive i64 evaluation of the definition
//! `Σ_k (A - za)(B - zb)`, on random and extreme data, odd K, and M/N tails.

use super::pack::Avx2Layout;
use super::*;

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn u8s(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
    fn i8s(&mut self, len: usize) -> Vec<i8> {
        self.u8s(len).into_iter().map(|v| v as i8).collect()
    }
    fn f32s(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            .collect()
    }
}

/// A kernel path with, for AVX2, its B layout forced: the tests run every path on both
/// layouts, whatever the data (the automatic choice depends on it).
#[derive(Clone, Copy, Debug)]
struct Path(Isa, Avx2Layout);

fn paths() -> Vec<Path> {
    let mut out = Vec::new();
    for isa in Isa::available() {
        if isa == Isa::Avx2 {
            out.push(Path(isa, Avx2Layout::Wide));
            out.push(Path(isa, Avx2Layout::Bytes));
        } else {
            out.push(Path(isa, Avx2Layout::Auto));
        }
    }
    out
}

fn pack_i8(p: Path, b: &[i8], k: usize, n: usize, zp: &[i8]) -> Result<PackedB> {
    PackedB::from_i8_with_layout(p.0, p.1, b, k, n, zp)
}

fn pack_u8(p: Path, b: &[u8], k: usize, n: usize, zp: &[u8]) -> Result<PackedB> {
    PackedB::from_u8_with_layout(p.0, p.1, b, k, n, zp)
}

/// The definition, in i64 (none of the test shapes overflow i32).
fn reference(
    a: &[i64],
    za: &[i64],
    b: &[i64],
    zb: &[i64],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    for r in 0..m {
        let zar = if za.len() == 1 { za[0] } else { za[r] };
        for c in 0..n {
            let zbc = if zb.len() == 1 { zb[0] } else { zb[c] };
            let s: i64 = (0..k)
                .map(|kk| (a[r * k + kk] - zar) * (b[kk * n + c] - zbc))
                .sum();
            out[r * n + c] = i32::try_from(s).expect("test shapes stay in i32");
        }
    }
    out
}

fn widen<T: Copy + Into<i64>>(v: &[T]) -> Vec<i64> {
    v.iter().map(|&x| x.into()).collect()
}

/// The float epilogue, in the documented evaluation order.
fn reference_f32(acc: &[i32], n: usize, a_scale: f32, epi: &ActEpilogue) -> Vec<f32> {
    acc.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % n;
            let bs = if epi.b_scales.len() == 1 {
                epi.b_scales[0]
            } else {
                epi.b_scales[c]
            };
            let mut x = v as f32 * (a_scale * bs);
            if let Some(bias) = epi.bias {
                x += bias[c];
            }
            // The ONNX ops' definitions, written out independently of `Act::eval`.
            match epi.act {
                Activation::None => x,
                Activation::Relu => x.max(0.0),
                Activation::Clip { min, max } => {
                    if x < min {
                        x = min;
                    }
                    if x > max { max } else { x }
                }
                Activation::LeakyRelu { alpha } => {
                    if x < 0.0 {
                        x * alpha
                    } else {
                        x
                    }
                }
            }
        })
        .collect()
}

/// Shapes covering full tiles, every M tail of both SIMD tile heights, N tails inside and at
/// vector/panel boundaries, and K not a multiple of 2 or 4.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 3, 17),
    (2, 4, 16),
    (3, 5, 63),
    (4, 7, 64),
    (5, 8, 65),
    (6, 9, 8),
    (7, 31, 129),
    (8, 64, 15),
    (11, 33, 200),
    (13, 256, 257),
    (10, 256, 1024),
    (1, 256, 1024),
    (35, 100, 70),
    (12, 17, 40),
    (17, 3, 31),
    (4, 0, 9),
];

fn check_i32_case(isa: Path, rng: &mut Rng, m: usize, k: usize, n: usize, per_col: bool) {
    let a = rng.u8s(m * k);
    let b = rng.i8s(k * n);
    let za = rng.u8s(1);
    let zb = rng.i8s(if per_col { n } else { 1 });
    let packed = pack_i8(isa, &b, k, n, &zb).unwrap();
    let mut out = vec![0i32; m * n];
    gemm_u8i8_i32(&a, m, k, &za, &packed, &mut out, 1).unwrap();
    let want = reference(&widen(&a), &widen(&za), &widen(&b), &widen(&zb), m, k, n);
    assert_eq!(out, want, "{isa:?} {m}x{k}x{n} per_col={per_col}");
}

#[test]
fn every_path_matches_reference_on_random_data() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for isa in paths() {
        for &(m, k, n) in SHAPES {
            check_i32_case(isa, &mut rng, m, k, n, false);
            check_i32_case(isa, &mut rng, m, k, n, true);
        }
    }
}

#[test]
fn this_machine_runs_the_simd_paths() {
    // The benchmark machine has AVX-512 VNNI; make a silent fallback to scalar visible.
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512vnni") {
        if std::env::var_os("ONNX_DYNQ_INT8_ISA").is_none() {
            assert_eq!(Isa::best(), Isa::Avx512Vnni);
        }
        assert!(Isa::available().contains(&Isa::Avx2));
    }
    assert!(Isa::available().contains(&Isa::Scalar));
}

#[test]
fn extreme_values_do_not_saturate() {
    // 255 * 127 * 2 and 255 * -128 * 2 overflow i16: a vpmaddubsw kernel would clamp these.
    for isa in paths() {
        for &(av, bv) in &[
            (255u8, 127i8),
            (255, -128),
            (0, -128),
            (0, 127),
            (128, -128),
        ] {
            for &(za, zb) in &[(0u8, 0i8), (255, -128), (0, 127), (128, 1)] {
                for &(m, k, n) in &[(7, 67, 33), (1, 256, 1024), (6, 4, 64)] {
                    let a = vec![av; m * k];
                    let b = vec![bv; k * n];
                    let packed = pack_i8(isa, &b, k, n, &[zb]).unwrap();
                    let mut out = vec![0i32; m * n];
                    gemm_u8i8_i32(&a, m, k, &[za], &packed, &mut out, 1).unwrap();
                    let want = (i32::from(av) - i32::from(za))
                        * (i32::from(bv) - i32::from(zb))
                        * k as i32;
                    assert!(
                        out.iter().all(|&v| v == want),
                        "{isa:?} a={av} b={bv} za={za} zb={zb} {m}x{k}x{n}: got {} want {want}",
                        out[0]
                    );
                }
            }
        }
    }
}

#[test]
fn alternating_extremes_match_reference() {
    // Mixed signs within one K group / pair exercise lane ordering and the correction terms.
    let (m, k, n) = (9, 45, 77);
    let a: Vec<u8> = (0..m * k)
        .map(|i| if i % 3 == 0 { 0 } else { 255 })
        .collect();
    let b: Vec<i8> = (0..k * n)
        .map(|i| if i % 5 < 2 { -128 } else { 127 })
        .collect();
    let zb: Vec<i8> = (0..n)
        .map(|c| if c % 2 == 0 { 127 } else { -128 })
        .collect();
    for isa in paths() {
        let packed = pack_i8(isa, &b, k, n, &zb).unwrap();
        let mut out = vec![0i32; m * n];
        gemm_u8i8_i32(&a, m, k, &[200], &packed, &mut out, 1).unwrap();
        let want = reference(&widen(&a), &[200], &widen(&b), &widen(&zb), m, k, n);
        assert_eq!(out, want, "{isa:?}");
    }
}

#[test]
fn float_epilogue_is_bit_identical_across_paths() {
    let mut rng = Rng(42);
    for isa in paths() {
        for &(m, k, n) in SHAPES {
            let a = rng.u8s(m * k);
            let b = rng.i8s(k * n);
            let zb = rng.i8s(n);
            let za = rng.u8s(1)[0];
            let scales_col: Vec<f32> = rng.f32s(n).iter().map(|s| s.abs() * 0.01 + 1e-4).collect();
            let bias = rng.f32s(n);
            let packed = pack_i8(isa, &b, k, n, &zb).unwrap();
            let acc = reference(
                &widen(&a),
                &[i64::from(za)],
                &widen(&b),
                &widen(&zb),
                m,
                k,
                n,
            );
            for (scales, bias, act) in [
                (&scales_col[..], Some(&bias[..]), Activation::Relu),
                (&scales_col[..1], None, Activation::None),
                (&scales_col[..], None, Activation::Relu),
                (&scales_col[..1], Some(&bias[..]), Activation::None),
                (&scales_col[..], Some(&bias[..]), CLIP6),
                (
                    &scales_col[..1],
                    None,
                    Activation::Clip {
                        min: -0.5,
                        max: 0.25,
                    },
                ),
                (&scales_col[..], Some(&bias[..]), LEAKY),
                (
                    &scales_col[..1],
                    None,
                    Activation::LeakyRelu { alpha: -1.5 },
                ),
            ] {
                let epi = ActEpilogue {
                    b_scales: scales,
                    bias,
                    act,
                };
                let mut out = vec![f32::NAN; m * n];
                gemm_u8i8_f32_act(&a, m, k, za, 0.037, &packed, &epi, &mut out, 1).unwrap();
                // The vector form writes the same values.
                let v = gemm_u8i8_f32_vec(&a, m, k, za, 0.037, &packed, &epi, 1).unwrap();
                assert!(v.iter().zip(&out).all(|(x, y)| x.to_bits() == y.to_bits()));
                // The ReLU shorthand is the same epilogue.
                if matches!(act, Activation::None | Activation::Relu) {
                    let legacy = Epilogue {
                        b_scales: scales,
                        bias,
                        relu: act == Activation::Relu,
                    };
                    let mut o2 = vec![f32::NAN; m * n];
                    gemm_u8i8_f32(&a, m, k, za, 0.037, &packed, &legacy, &mut o2, 1).unwrap();
                    assert!(o2.iter().zip(&out).all(|(x, y)| x.to_bits() == y.to_bits()));
                }
                let want = reference_f32(&acc, n, 0.037, &epi);
                let same = out
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0));
                assert!(same, "{isa:?} {m}x{k}x{n} {act:?}");
            }
        }
    }
}

const CLIP6: Activation = Activation::Clip { min: 0.0, max: 6.0 };
const LEAKY: Activation = Activation::LeakyRelu { alpha: 0.01 };

/// NaN, infinities and signed zeros reach the activation through the bias; every path must
/// treat them as the scalar definition does (NaN stays NaN through Clip and LeakyRelu, ReLU
/// turns it into 0).
#[test]
fn activations_agree_on_special_values() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        -7.0,
        7.0,
        3.0,
        -1e-30,
    ];
    let (m, k, n) = (7, 5, 70);
    let mut rng = Rng(3);
    let a = rng.u8s(m * k);
    let b = rng.i8s(k * n);
    let bias: Vec<f32> = (0..n).map(|c| specials[c % specials.len()]).collect();
    for isa in paths() {
        let packed = pack_i8(isa, &b, k, n, &[]).unwrap();
        let acc = reference(&widen(&a), &[5], &widen(&b), &[0], m, k, n);
        for act in [
            Activation::None,
            Activation::Relu,
            CLIP6,
            Activation::Clip {
                min: f32::NEG_INFINITY,
                max: 1.0,
            },
            LEAKY,
        ] {
            let epi = ActEpilogue {
                b_scales: &[0.001],
                bias: Some(&bias),
                act,
            };
            let mut out = vec![0f32; m * n];
            gemm_u8i8_f32_act(&a, m, k, 5, 0.5, &packed, &epi, &mut out, 1).unwrap();
            let want = reference_f32(&acc, n, 0.5, &epi);
            for (i, (x, y)) in out.iter().zip(&want).enumerate() {
                assert!(
                    x == y || (x.is_nan() && y.is_nan()),
                    "{isa:?} {act:?} at {i}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn all_matmul_integer_type_combinations() {
    let mut rng = Rng(7);
    let (m, k, n) = (5, 70, 37);
    for isa in paths() {
        let a_u8 = rng.u8s(m * k);
        let a_i8 = rng.i8s(m * k);
        let b_u8 = rng.u8s(k * n);
        let b_i8 = rng.i8s(k * n);
        let za_row_u8 = rng.u8s(m);
        let za_row_i8 = rng.i8s(m);
        let zb_u8 = rng.u8s(n);
        let zb_i8 = rng.i8s(1);

        let packed_i8 = pack_i8(isa, &b_i8, k, n, &zb_i8).unwrap();
        let packed_u8 = pack_u8(isa, &b_u8, k, n, &zb_u8).unwrap();
        let packed_u8_nozp = pack_u8(isa, &b_u8, k, n, &[]).unwrap();
        let cases: Vec<(AInput, &PackedB, Vec<i32>)> = vec![
            (
                AInput::U8 {
                    data: &a_u8,
                    zero_points: &za_row_u8,
                },
                &packed_u8,
                reference(
                    &widen(&a_u8),
                    &widen(&za_row_u8),
                    &widen(&b_u8),
                    &widen(&zb_u8),
                    m,
                    k,
                    n,
                ),
            ),
            (
                AInput::I8 {
                    data: &a_i8,
                    zero_points: &za_row_i8,
                },
                &packed_i8,
                reference(
                    &widen(&a_i8),
                    &widen(&za_row_i8),
                    &widen(&b_i8),
                    &widen(&zb_i8),
                    m,
                    k,
                    n,
                ),
            ),
            (
                AInput::I8 {
                    data: &a_i8,
                    zero_points: &[],
                },
                &packed_u8_nozp,
                reference(&widen(&a_i8), &[0], &widen(&b_u8), &[0], m, k, n),
            ),
            (
                AInput::U8 {
                    data: &a_u8,
                    zero_points: &[],
                },
                &packed_i8,
                reference(&widen(&a_u8), &[0], &widen(&b_i8), &widen(&zb_i8), m, k, n),
            ),
        ];
        for (i, (a, b, want)) in cases.into_iter().enumerate() {
            let mut out = vec![0i32; m * n];
            matmul_integer(a, m, k, b, &mut out, 1).unwrap();
            assert_eq!(out, want, "{isa:?} case {i}");
        }
    }
}

#[test]
fn transposed_packing_matches() {
    let mut rng = Rng(99);
    let (m, k, n) = (3, 21, 19);
    let a = rng.u8s(m * k);
    let b = rng.i8s(k * n);
    let b_t: Vec<i8> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    let p1 = PackedB::from_i8(&b, k, n, &[3]).unwrap();
    let p2 = PackedB::from_i8_transposed(&b_t, k, n, &[3]).unwrap();
    let (mut o1, mut o2) = (vec![0; m * n], vec![0; m * n]);
    gemm_u8i8_i32(&a, m, k, &[9], &p1, &mut o1, 1).unwrap();
    gemm_u8i8_i32(&a, m, k, &[9], &p2, &mut o2, 1).unwrap();
    assert_eq!(o1, o2);
}

#[test]
fn threaded_split_matches_single_thread() {
    let mut rng = Rng(5);
    // Large enough to pass the parallel threshold; N not a multiple of any panel width.
    let (m, k, n) = (100, 512, 333);
    assert!(m * k * n >= PAR_MIN_MACS);
    let a = rng.u8s(m * k);
    let b = rng.i8s(k * n);
    for isa in paths() {
        let packed = pack_i8(isa, &b, k, n, &[-3]).unwrap();
        let (mut o1, mut o4) = (vec![0; m * n], vec![0; m * n]);
        gemm_u8i8_i32(&a, m, k, &[17], &packed, &mut o1, 1).unwrap();
        gemm_u8i8_i32(&a, m, k, &[17], &packed, &mut o4, 4).unwrap();
        assert_eq!(o1, o4, "{isa:?}");
        let want = reference(&widen(&a), &[17], &widen(&b), &[-3], m, k, n);
        assert_eq!(o1, want, "{isa:?}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let b = PackedB::from_i8(&[1; 6], 2, 3, &[]).unwrap();
    let mut out = vec![0i32; 6];
    assert!(gemm_u8i8_i32(&[1; 5], 2, 2, &[0], &b, &mut out, 1).is_err());
    assert!(gemm_u8i8_i32(&[1; 6], 2, 3, &[0], &b, &mut out, 1).is_err());
    assert!(gemm_u8i8_i32(&[1; 4], 2, 2, &[0, 0, 0], &b, &mut out, 1).is_err());
    assert!(gemm_u8i8_i32(&[1; 4], 2, 2, &[0], &b, &mut out[..5], 1).is_err());
    let mut outf = vec![0f32; 6];
    let epi = Epilogue {
        b_scales: &[1.0, 2.0],
        bias: None,
        relu: false,
    };
    assert!(gemm_u8i8_f32(&[1; 4], 2, 2, 0, 1.0, &b, &epi, &mut outf, 1).is_err());
    let epi = Epilogue {
        b_scales: &[1.0],
        bias: Some(&[0.0; 2]),
        relu: false,
    };
    assert!(gemm_u8i8_f32(&[1; 4], 2, 2, 0, 1.0, &b, &epi, &mut outf, 1).is_err());
    assert!(PackedB::from_i8(&[1; 5], 2, 3, &[]).is_err());
    assert!(PackedB::from_i8(&[1; 6], 2, 3, &[0, 0]).is_err());
}

/// Python for the onnxruntime cross-check: `ONNX_DYNQ_PYTHON`, `<repo>/.venv/bin/python`,
/// then `python3` (as the integration tests find it).
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ONNX_DYNQ_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// Runs one ONNX `MatMulInteger` in onnxruntime on raw little-endian files in `dir`.
const ORT_MATMUL_INTEGER: &str = r#"
import sys, os, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
d, m, k, n, ta, tb = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5], sys.argv[6]
npt = {"u8": np.uint8, "i8": np.int8}
ott = {"u8": TensorProto.UINT8, "i8": TensorProto.INT8}
rd = lambda name, t: np.fromfile(os.path.join(d, name), dtype=npt[t])
a, b = rd("a", ta).reshape(m, k), rd("b", tb).reshape(k, n)
za, zb = rd("za", ta).reshape(()), rd("zb", tb).reshape(n)
g = helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])], "g",
    [helper.make_tensor_value_info("a", ott[ta], [m, k]),
     helper.make_tensor_value_info("b", ott[tb], [k, n]),
     helper.make_tensor_value_info("za", ott[ta], []),
     helper.make_tensor_value_info("zb", ott[tb], [n])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
onnx.checker.check_model(model)
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
y = s.run(None, {"a": a, "b": b, "za": za, "zb": zb})[0]
assert y.dtype == np.int32 and y.shape == (m, n)
y.tofile(os.path.join(d, "y"))
"#;

#[test]
fn matches_onnxruntime_matmul_integer() {
    let mut rng = Rng(2024);
    let (m, k, n) = (7, 259, 70);
    let dir = tempfile::tempdir().expect("temp dir");
    for (ta, tb) in [("u8", "i8"), ("u8", "u8"), ("i8", "i8")] {
        let a = rng.u8s(m * k);
        let b = rng.u8s(k * n);
        let za = rng.u8s(1);
        let zb = rng.u8s(n);
        for (name, data) in [("a", &a), ("b", &b), ("za", &za), ("zb", &zb)] {
            std::fs::write(dir.path().join(name), data).expect("write input");
        }
        let py = python();
        let status = std::process::Command::new(&py)
            .arg("-c")
            .arg(ORT_MATMUL_INTEGER)
            .arg(dir.path())
            .args([m, k, n].map(|v| v.to_string()))
            .args([ta, tb])
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run python ({}): {e}; set ONNX_DYNQ_PYTHON to a python with onnx, onnxruntime and numpy",
                    py.display()
                )
            });
        assert!(
            status.success(),
            "onnxruntime MatMulInteger {ta}x{tb} failed"
        );
        let want: Vec<i32> = std::fs::read(dir.path().join("y"))
            .expect("read output")
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let as_i8 = |v: &[u8]| v.iter().map(|&x| x as i8).collect::<Vec<i8>>();
        for isa in paths() {
            let packed = if tb == "u8" {
                pack_u8(isa, &b, k, n, &zb)
            } else {
                pack_i8(isa, &as_i8(&b), k, n, &as_i8(&zb))
            }
            .unwrap();
            let (a_i8, za_i8) = (as_i8(&a), as_i8(&za));
            let input = if ta == "u8" {
                AInput::U8 {
                    data: &a,
                    zero_points: &za,
                }
            } else {
                AInput::I8 {
                    data: &a_i8,
                    zero_points: &za_i8,
                }
            };
            let mut out = vec![0i32; m * n];
            matmul_integer(input, m, k, &packed, &mut out, 1).unwrap();
            let mut like_ort = vec![0i32; m * n];
            with_ort_u8s8_saturation(true, || {
                matmul_integer(input, m, k, &packed, &mut like_ort, 1).unwrap()
            });
            // Exact everywhere, except onnxruntime's u8 x s8 kernel on x86 CPUs without VNNI,
            // which sums byte pairs in saturating i16 (vpmaddubsw): the emulation must then
            // reproduce it exactly.
            if out != want {
                assert_eq!(
                    (ta, tb),
                    ("u8", "i8"),
                    "{isa:?}: onnxruntime differs on {ta}x{tb}"
                );
                assert_eq!(like_ort, want, "{isa:?} {ta}x{tb} (saturating emulation)");
            } else if (ta, tb) != ("u8", "i8") {
                assert_eq!(
                    like_ort, out,
                    "{isa:?}: emulation changed an exact {ta}x{tb} product"
                );
            }
        }
    }
}

#[test]
fn split_pairs_fit_vpmaddubsw_and_add_back_up() {
    for b0 in i8::MIN..=i8::MAX {
        for b1 in i8::MIN..=i8::MAX {
            let (s0, s1, fix) = pack::split_pair(b0, b1);
            let (s0, s1) = (i32::from(s0), i32::from(s1));
            // The worst vpmaddubsw pair sum, 255 (|s0| + |s1|), stays within i16.
            assert!(
                255 * (s0.abs() + s1.abs()) <= i32::from(i16::MAX),
                "{b0} {b1}"
            );
            let (mut r0, mut r1) = (0, 0);
            match fix {
                None => assert!(i32::from(b0).abs() + i32::from(b1).abs() <= 128),
                Some((0, r)) => r0 = r,
                Some((1, r)) => r1 = r,
                Some(other) => panic!("fix {other:?} for {b0} {b1}"),
            }
            assert_eq!((s0 + r0, s1 + r1), (i32::from(b0), i32::from(b1)));
        }
    }
}

/// Trained-like weights: mostly small, with large values scattered so that some K pairs (of
/// either order and sign, and at the end of an odd K) exceed `|b0| + |b1| <= 128`.
fn trained_like(rng: &mut Rng, k: usize, n: usize) -> Vec<i8> {
    let mut b: Vec<i8> = rng.i8s(k * n).into_iter().map(|v| v / 4).collect();
    let big = [127i8, -128, 100, -100, 65, -65, 64, 1, -1];
    for v in b.iter_mut() {
        if rng.next().is_multiple_of(37) {
            *v = big[(rng.next() % big.len() as u64) as usize];
        }
    }
    b
}

#[test]
fn byte_layout_with_fixes_matches_reference() {
    let mut rng = Rng(0xfeed);
    for &(m, k, n) in SHAPES {
        for per_col in [false, true] {
            let a = rng.u8s(m * k);
            let b = trained_like(&mut rng, k, n);
            let za = rng.u8s(1);
            let zb = rng.i8s(if per_col { n } else { 1 });
            let want = reference(&widen(&a), &widen(&za), &widen(&b), &widen(&zb), m, k, n);
            for isa in paths() {
                let packed = pack_i8(isa, &b, k, n, &zb).unwrap();
                for threads in [1, 3] {
                    let mut out = vec![0i32; m * n];
                    gemm_u8i8_i32(&a, m, k, &za, &packed, &mut out, threads).unwrap();
                    assert_eq!(out, want, "{isa:?} {m}x{k}x{n} per_col={per_col}");
                }
                // The stored form decodes back to B (the onnxruntime emulation reads it).
                for kk in 0..k {
                    for c in 0..n {
                        assert_eq!(packed.stored(kk, c), b[kk * n + c], "{isa:?} ({kk}, {c})");
                    }
                }
            }
        }
    }
}

#[test]
fn byte_layout_at_the_saturation_edge() {
    // Pairs with |b0| + |b1| exactly 128 need no fix and reach 255 * 128 = 32640 with A = 255;
    // one more unit would need a fix. Every K remainder mod 4 is covered.
    let pairs: [(i8, i8); 8] = [
        (64, 64),
        (-128, 0),
        (0, -128),
        (127, 1),
        (-1, -127),
        (-64, -64),
        (65, 64),
        (-128, -128),
    ];
    for k in [8, 9, 10, 11, 64] {
        let n = 40;
        let m = 7;
        let b: Vec<i8> = (0..k * n)
            .map(|i| {
                let (kk, c) = (i / n, i % n);
                let (b0, b1) = pairs[(c + kk / 2) % pairs.len()];
                if kk % 2 == 0 { b0 } else { b1 }
            })
            .collect();
        for av in [255u8, 254, 0, 128] {
            let a = vec![av; m * k];
            let want = reference(&widen(&a), &[0], &widen(&b), &[0], m, k, n);
            for isa in paths() {
                let packed = pack_i8(isa, &b, k, n, &[]).unwrap();
                let mut out = vec![0i32; m * n];
                gemm_u8i8_i32(&a, m, k, &[0], &packed, &mut out, 1).unwrap();
                assert_eq!(out, want, "{isa:?} k={k} a={av}");
            }
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_layout_follows_the_weights() {
    if !Isa::Avx2.is_available() {
        return;
    }
    let mut rng = Rng(11);
    let (k, n) = (384, 384);
    let layout = |b: &[i8]| match PackedB::from_i8_with_isa(Isa::Avx2, b, k, n, &[])
        .unwrap()
        .data
    {
        pack::Data::Bytes(bytes) => Some(bytes.fixes.len()),
        _ => None,
    };
    // Trained weights: large pairs are rare, the byte layout with a few fixes.
    let mut small: Vec<i8> = rng.i8s(k * n).into_iter().map(|v| v / 8).collect();
    small[5 * n + 7] = 127;
    small[4 * n + 7] = 100;
    small[200 * n + 3] = -128;
    small[201 * n + 3] = -128;
    assert_eq!(layout(&small), Some(2));
    // Uniform full-range weights: most pairs are large, the wide layout.
    assert_eq!(layout(&rng.i8s(k * n)), None);
}
