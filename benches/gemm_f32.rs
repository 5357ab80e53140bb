//! Float GEMM throughput on the word-LM shapes: the `gemm` crate (B re-packed per call, what
//! `MatMul` used before) against the packed kernels on each available path (B packed once),
//! single-threaded.
//!
//! Run: `cargo bench --bench gemm_f32 [-- FILTER]` (FILTER: a substring of the shape names).
//! GFLOP/s = 2·M·N·K / time, where time is the calling thread's CPU time per call, best of
//! several timed batches: on a shared machine, time spent descheduled does not count.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ndarray::Array2;
use onnx_dynq::runtime::kernels::gemm_f32::{Epilogue, Isa, PackedB, gemm, gemm_packed};

const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("LSTM X·Wᵀ seq 35", 35, 256, 1024),
    ("LSTM X·Wᵀ seq 350", 350, 256, 1024),
    ("LSTM step b=1", 1, 256, 1024),
    ("LSTM step b=10", 10, 256, 1024),
    ("decoder b=1", 35, 256, 33278),
    ("decoder b=10", 350, 256, 33278),
];

/// CPU time of the calling thread: on a shared machine, time spent descheduled does not count.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current thread's CPU clock into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-7);
    let per_batch = ((0.002 / once) as usize).clamp(1, 100_000);
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut batches = 0;
    while batches < 3 || (start.elapsed() < Duration::from_millis(1500) && batches < 2000) {
        let t = thread_cpu_secs();
        for _ in 0..per_batch {
            f();
        }
        best = best.min((thread_cpu_secs() - t) / per_batch as f64);
        batches += 1;
    }
    best
}

fn main() {
    // `cargo test --all-targets` also runs this binary, unoptimized and without `--bench`;
    // timings there mean nothing and take minutes, and the kernels have their own tests.
    if !std::env::args().any(|a| a == "--bench") {
        println!("not timing: run with `cargo bench`");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    pool.install(|| {
        println!(
            "{:<20} {:>14} {}",
            "shape (MxKxN)",
            "gemm crate",
            Isa::available()
                .iter()
                .map(|i| format!("{:>16}", format!("packed {}", i.name())))
                .collect::<String>()
        );
        for &(name, m, k, n) in SHAPES {
            if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                continue;
            }
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 17) as f32 * 0.1);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.1);
            let mut c = Array2::<f32>::zeros((m, n));
            let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
            let t = time_it(|| {
                gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
                black_box(&c);
            });
            let mut line = format!("{name:<20} {:>8.3} ms {:>4.0}", t * 1e3, gf(t));
            for isa in Isa::available() {
                let p = PackedB::with_isa(&b.view(), isa);
                let out = c.as_slice_mut().unwrap();
                let t = time_it(|| {
                    gemm_packed(&a.view(), &p, &Epilogue::NONE, out, n);
                    black_box(&out);
                });
                line += &format!(" {:>9.3} ms {:>4.0}", t * 1e3, gf(t));
            }
            println!("{line}");
        }
        println!("(thread CPU ms per call, best of batches; GFLOP/s; 1 thread)");
    });
}
