//! Int8 GEMM throughput: this crate's kernels (each available path) against rten-gemm's
//! u8 × i8 → i32 and an f32 sgemm (ndarray's general_mat_mul = matrixmultiply), all
//! single-threaded, plus our 2-thread split and the machine's measured `vpdpbusd` peak.
//!
//! Run: `cargo bench --bench gemm_i8`. GOP/s = 2·M·N·K / time (best of several timed batches,
//! which is the most stable statistic on a shared machine).
//!
//! Each shape runs with two kinds of weights: uniform random bytes, and bell-shaped ones like
//! a trained layer's quantized symmetrically. On AVX2 they can take different layouts: the
//! exact `vpmaddubsw` kernel needs K pairs with |b0| + |b1| <= 128 but for a few corrections,
//! which uniform bytes break everywhere (they keep the `vpmaddwd` layout).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ndarray::Array2;
use onnx_dynq::runtime::kernels::gemm_i8::{Epilogue, Isa, PackedB, gemm_u8i8_f32, gemm_u8i8_i32};

const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("seq 35", 35, 256, 1024),
    ("seq 350", 350, 256, 1024),
    ("step b=1", 1, 256, 1024),
    ("step b=10", 10, 256, 1024),
    ("decoder", 35, 256, 33278),
    ("MiniLM FFN", 128, 384, 1536),
];

/// Best seconds per call over many short batches (~1 ms each, ~1 s in total). Short batches
/// make it likely that some ran without being preempted on a shared machine.
fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-7);
    let per_batch = ((0.001 / once) as usize).clamp(1, 100_000);
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut batches = 0;
    while batches < 5 || (start.elapsed() < Duration::from_millis(1000) && batches < 2000) {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / per_batch as f64);
        batches += 1;
    }
    best
}

fn gops(m: usize, k: usize, n: usize, secs: f64) -> f64 {
    2.0 * (m * k * n) as f64 / secs / 1e9
}

fn cpu_mhz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

/// Measured throughput of 512-bit `vpdpbusd` on independent accumulators, in GOP/s
/// (64 MACs = 128 int8 ops per instruction).
#[cfg(target_arch = "x86_64")]
fn vnni_peak_gops() -> Option<f64> {
    use std::arch::x86_64::*;
    if !Isa::Avx512Vnni.is_available() {
        return None;
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn chains(iters: usize) -> i32 {
        let a = _mm512_set1_epi32(0x0101_0101);
        let b = _mm512_set1_epi32(0x0102_0301);
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }
    let iters = 20_000;
    // SAFETY: the CPU has the features (checked above).
    let secs = time_it(|| {
        black_box(unsafe { chains(black_box(iters)) });
    });
    Some((iters * 12 * 128) as f64 / secs / 1e9)
}

fn main() {
    // `cargo test --all-targets` also runs this binary, unoptimized and without `--bench`;
    // timings there mean nothing and take minutes, and the kernels have their own tests.
    if !std::env::args().any(|a| a == "--bench") {
        println!("not timing: run with `cargo bench`");
        return;
    }
    let mhz = cpu_mhz();
    println!("# int8 GEMM benchmark (single thread unless noted)");
    println!(
        "CPU clock from /proc/cpuinfo: {}",
        mhz.map_or("unknown".into(), |m| format!("{m:.0} MHz"))
    );
    println!("available paths: {:?}", Isa::available());
    #[cfg(target_arch = "x86_64")]
    if let Some(peak) = vnni_peak_gops() {
        // One 512-bit vpdpbusd per cycle = 64 MACs = 128 int8 ops per cycle per core.
        println!(
            "measured vpdpbusd zmm peak (12 independent chains): {peak:.1} GOP/s \
             = 128 ops/cycle at an effective {:.2} GHz",
            peak / 128.0
        );
    }
    if let Some(m) = mhz {
        println!(
            "at the cpuinfo (nominal) clock: 128 ops/cycle x {:.2} GHz = {:.1} GOP/s \
             (the core boosts above it, see the measured peak)",
            m / 1e3,
            128.0 * m / 1e3
        );
    }
    {
        let (k, n) = (256, 33278);
        let b: Vec<i8> = (0..k * n).map(|i| (i * 7 % 251) as i8).collect();
        let t = time_it(|| {
            black_box(PackedB::from_i8(&b, k, n, &[]).expect("pack"));
        });
        println!(
            "packing B {k}x{n} for {}: {:.1} ms (once per session)",
            Isa::best().name(),
            t * 1e3
        );
    }

    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("rayon pool");
    let rten = rten_gemm::GemmExecutor::<u8, i8, i32>::default();
    println!("rten-gemm int8 kernel: {}", rten.kernel_name());
    println!();

    let mut header = String::from("| shape (MxKxN) |");
    let mut sep = String::from("|---|");
    for isa in Isa::available() {
        header += &format!(" ours {} i32 |", isa.name());
        sep += "---:|";
    }
    header += " ours best f32 epilogue | ours best i32, 2 threads | rten-gemm i32 | f32 sgemm (matrixmultiply) |";
    sep += "---:|---:|---:|---:|";
    println!("GOP/s (2·M·N·K / time):\n");
    println!("{header}\n{sep}");

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (&(name, m, k, n), weights) in SHAPES
        .iter()
        .flat_map(|s| [(s, "uniform"), (s, "trained-like")])
    {
        let a: Vec<u8> = (0..m * k).map(|_| next() as u8).collect();
        let b: Vec<i8> = if weights == "uniform" {
            (0..k * n).map(|_| next() as i8).collect()
        } else {
            // A sum of twelve uniforms (close to a normal of deviation 1, bounded by 6) with
            // 6 mapped to 127: a deviation of 21 levels, as a trained layer quantized per
            // tensor whose extreme weight lies 6 deviations out.
            (0..k * n)
                .map(|_| {
                    let x: f32 = (0..12)
                        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                        .sum();
                    (x / 6.0 * 127.0).round() as i8
                })
                .collect()
        };
        let mut row = format!("| {name} {m}x{k}x{n}, {weights} |");
        let mut out_i32 = vec![0i32; m * n];

        for isa in Isa::available() {
            if isa == Isa::Scalar && m * k * n > 50_000_000 {
                row += " (skipped) |";
                continue;
            }
            let packed = PackedB::from_i8_with_isa(isa, &b, k, n, &[]).expect("pack");
            let t = time_it(|| {
                gemm_u8i8_i32(&a, m, k, &[3], &packed, &mut out_i32, 1).expect("gemm");
            });
            row += &format!(" {:.1} ({}) |", gops(m, k, n, t), packed.layout_name());
        }

        let packed = PackedB::from_i8(&b, k, n, &[]).expect("pack");
        let scales = vec![0.01f32; n];
        let bias = vec![0.5f32; n];
        let epi = Epilogue {
            b_scales: &scales,
            bias: Some(&bias),
            relu: true,
        };
        let mut out_f32 = vec![0f32; m * n];
        let t = time_it(|| {
            gemm_u8i8_f32(&a, m, k, 3, 0.02, &packed, &epi, &mut out_f32, 1).expect("gemm");
        });
        row += &format!(" {:.1} |", gops(m, k, n, t));
        let t = time_it(|| {
            gemm_u8i8_i32(&a, m, k, &[3], &packed, &mut out_i32, 2).expect("gemm");
        });
        row += &format!(" {:.1} |", gops(m, k, n, t));
        let ours = out_i32.clone();

        // rten-gemm: prepacked B, per-row A zero point, no B zero point; 1-thread pool.
        let b_view = rten_tensor::NdTensorView::from_data([k, n], &b[..]);
        let rten_b = rten.prepack_b(b_view);
        let za = vec![3u8; m];
        let t = one_thread.install(|| {
            time_it(|| {
                let a_view = rten_tensor::NdTensorView::from_data([m, k], &a[..]);
                rten.gemm(
                    &mut out_i32,
                    rten_gemm::GemmInputA::Unpacked(a_view),
                    rten_gemm::GemmInputB::Packed(&rten_b),
                    rten_gemm::GemmOptions {
                        a_quant: Some(rten_gemm::QuantParams { zero_point: &za }),
                        ..Default::default()
                    },
                )
                .expect("rten gemm");
            })
        });
        let agree = if ours == out_i32 { "" } else { " (differs!)" };
        row += &format!(" {:.1}{agree} |", gops(m, k, n, t));

        let af = Array2::from_shape_fn((m, k), |(i, j)| f32::from(a[i * k + j]));
        let bf = Array2::from_shape_fn((k, n), |(i, j)| f32::from(b[i * n + j]));
        let mut cf = Array2::<f32>::zeros((m, n));
        let t = time_it(|| {
            ndarray::linalg::general_mat_mul(1.0, &af, &bf, 0.0, &mut cf);
        });
        row += &format!(" {:.1} |", gops(m, k, n, t));
        println!("{row}");
    }
}
