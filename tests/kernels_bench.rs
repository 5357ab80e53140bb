//! Timings of the recurrent and conv/pool ops on model-sized shapes, next to onnxruntime (one
//! thread) on the same shapes (`tests/kernels_cases.py bench`). Ignored by default; run with
//! `cargo test --release --test kernels_bench -- --ignored --nocapture`.
//! Compare ratios within one run only: the machines are noisy.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use onnx_dynq::ir::Node;
use onnx_dynq::ir::attrs::{attr_int, attr_ints, attr_string};
use onnx_dynq::runtime::Value;
use onnx_dynq::runtime::ops::{BuildCtx, Registry, conv, rnn};

use common::python;

fn rand(shape: &[usize], seed: u64, scale: f32) -> Value {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect();
    Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// Median wall time and mean CPU time (all threads) in ms of running a node built with
/// constant weights.
fn time_node(node: &Node, inputs: &[Value], n_const_from: usize) -> (f64, f64) {
    let mut r = Registry::default();
    rnn::register(&mut r);
    conv::register(&mut r);
    let consts: Vec<Option<&Value>> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| (i >= n_const_from).then_some(v))
        .collect();
    let op = r.get("", node.op_type()).unwrap()(
        node,
        &BuildCtx {
            opset: 22,
            const_inputs: consts,
        },
    )
    .unwrap();
    let refs: Vec<Option<&Value>> = inputs.iter().map(Some).collect();
    op.run(&refs).unwrap();
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(op.run(&refs).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let runs = 20;
    let cpu0 = process_cpu_ns();
    for _ in 0..runs {
        std::hint::black_box(op.run(&refs).unwrap());
    }
    let cpu = (process_cpu_ns() - cpu0) as f64 / 1e6 / runs as f64;
    (times[times.len() / 2], cpu)
}

/// CPU time consumed by all threads of this process, in ns (from /proc: robust against the
/// machine's load, unlike wall time).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn rnn_case(op: &str, seq: usize, batch: usize, h: usize, dirs: usize) -> (f64, f64) {
    let g = if op == "LSTM" { 4 } else { 3 };
    let dir = if dirs == 2 {
        "bidirectional"
    } else {
        "forward"
    };
    let node = Node::new(
        "bench",
        op,
        "",
        vec!["X".into(), "W".into(), "R".into(), "B".into()],
        vec!["Y".into(), "Y_h".into()],
    )
    .with_attr(attr_int("hidden_size", h as i64))
    .with_attr(attr_string("direction", dir));
    let inputs = [
        rand(&[seq, batch, h], 1, 1.0),
        rand(&[dirs, g * h, h], 2, 0.1),
        rand(&[dirs, g * h, h], 3, 0.1),
        rand(&[dirs, 2 * g * h], 4, 1.0),
    ];
    time_node(&node, &inputs, 1)
}

fn conv_case(x: &[usize], w: &[usize], group: usize) -> (f64, f64) {
    let p = (w[2] / 2) as i64;
    let node = Node::new(
        "bench",
        "Conv",
        "",
        vec!["X".into(), "W".into(), "B".into()],
        vec!["Y".into()],
    )
    .with_attr(attr_int("group", group as i64))
    .with_attr(attr_ints("pads", vec![p; 4]));
    let inputs = [rand(x, 1, 1.0), rand(w, 2, 0.1), rand(&[w[0]], 3, 1.0)];
    time_node(&node, &inputs, 1)
}

#[test]
#[ignore = "benchmark: run explicitly in release mode"]
fn kernel_timings() {
    let ours: Vec<(&str, (f64, f64))> = vec![
        ("lstm_seq35_b1_256", rnn_case("LSTM", 35, 1, 256, 1)),
        ("lstm_seq35_b10_256", rnn_case("LSTM", 35, 10, 256, 1)),
        ("lstm_bidir_seq100_b1_128", rnn_case("LSTM", 100, 1, 128, 2)),
        ("gru_seq35_b10_256", rnn_case("GRU", 35, 10, 256, 1)),
        (
            "conv_64x56x56_3x3",
            conv_case(&[1, 64, 56, 56], &[64, 64, 3, 3], 1),
        ),
        (
            "conv_dw_128x56x56_3x3",
            conv_case(&[1, 128, 56, 56], &[128, 1, 3, 3], 128),
        ),
        (
            "conv_1x1_256to64_28x28",
            conv_case(&[1, 256, 28, 28], &[64, 256, 1, 1], 1),
        ),
        ("maxpool_64x112x112_3x3s2", {
            let node = Node::new("bench", "MaxPool", "", vec!["X".into()], vec!["Y".into()])
                .with_attr(attr_ints("kernel_shape", vec![3, 3]))
                .with_attr(attr_ints("strides", vec![2, 2]))
                .with_attr(attr_ints("pads", vec![1; 4]));
            time_node(&node, &[rand(&[1, 64, 112, 112], 1, 1.0)], 1)
        }),
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels_cases.py");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(&script)
        .arg("bench")
        .arg(tmp.path())
        .output()
        .expect("python with onnxruntime (set ONNX_DYNQ_PYTHON)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ort: HashMap<String, (f64, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let n = p.next()?;
            Some((
                n.to_string(),
                (p.next()?.parse().ok()?, p.next()?.parse().ok()?),
            ))
        })
        .collect();
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "case (ms)", "ours wall", "ours cpu", "ort wall", "ort cpu", "cpu x"
    );
    for (name, (w, c)) in ours {
        let (ow, oc) = ort.get(name).copied().unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{name:<26} {w:>9.3} {c:>9.3} {ow:>9.3} {oc:>9.3} {:>7.2}",
            c / oc
        );
    }
}
