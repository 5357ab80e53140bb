//! A rewrite of a model whose weights live in external data keeps its resident size far
//! below the input's: the input is memory-mapped, and each weight's file pages are released
//! as the ranges pass and the values pass finish with them (issue 13; the 4 GiB figures are
//! in BENCHMARKS.md, from `scripts/bench_large.py`). Without the releases the peak RSS of
//! this rewrite includes all 320 MiB of mapped weights.

#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use prost::Message;

use common::graphs::vi_sym;
use common::protos::{model_of, node};
use onnx_dynq::onnx::attribute_proto::AttributeType;
use onnx_dynq::onnx::tensor_proto::{DataLocation, DataType};
use onnx_dynq::onnx::{
    AttributeProto, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};

/// Square weights of this side: 64 MiB of f32 each.
const SIDE: usize = 4096;
/// MatMul layers (weights `[K, N]`: the deferred path) before one Gemm with `transB = 1`
/// (weights `[N, K]`: the transposed path).
const MATMULS: usize = 4;

/// An external-data float tensor `[SIDE, SIDE]` at `offset` of `data.bin`.
fn external(name: &str, offset: usize) -> TensorProto {
    let bytes = SIDE * SIDE * 4;
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    TensorProto {
        name: Some(name.into()),
        dims: vec![SIDE as i64, SIDE as i64],
        data_type: Some(DataType::Float as i32),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            kv("location", "data.bin".into()),
            kv("offset", offset.to_string()),
            kv("length", bytes.to_string()),
        ],
        ..Default::default()
    }
}

/// Writes `model.onnx` and `data.bin` (MATMULS + 1 weights) into `dir`.
fn write_model(dir: &Path) {
    let weight_bytes = SIDE * SIDE * 4;
    // Not all equal, so that each weight has a real range and real values to compute.
    let one: Vec<u8> = (0..SIDE * SIDE)
        .flat_map(|i| (((i % 251) as f32 - 125.0) * 0.01).to_le_bytes())
        .collect();
    let mut data = std::fs::File::create(dir.join("data.bin")).unwrap();
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    for l in 0..=MATMULS {
        data.write_all(&one).unwrap();
        let (x, y, w) = (format!("h{l}"), format!("h{}", l + 1), format!("w{l}"));
        inits.push(external(&w, l * weight_bytes));
        let mut n = node(
            &format!("mm{l}"),
            if l < MATMULS { "MatMul" } else { "Gemm" },
            &[&x, &w],
            &[&y],
        );
        if l == MATMULS {
            n.attribute.push(AttributeProto {
                name: Some("transB".into()),
                r#type: Some(AttributeType::Int as i32),
                i: Some(1),
                ..Default::default()
            });
        }
        nodes.push(n);
    }
    let model: ModelProto = model_of(GraphProto {
        name: Some("external".into()),
        node: nodes,
        initializer: inits,
        input: vec![vi_sym("h0", DataType::Float, &[-1, SIDE as i64])],
        output: vec![vi_sym(
            &format!("h{}", MATMULS + 1),
            DataType::Float,
            &[-1, SIDE as i64],
        )],
        ..Default::default()
    });
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
}

/// Runs the CLI to completion: (exit status, peak resident bytes of that process). The
/// caller must hold little memory itself: a child's peak starts from its parent's resident
/// size at the fork (Linux carries it across the exec).
#[allow(clippy::zombie_processes)] // reaped by the wait4 below
fn run_measured(args: &[&str]) -> (i32, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    assert!(libc::WIFEXITED(status), "onnx-dynq did not exit normally");
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

#[test]
fn rewrite_releases_the_mapped_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    let input = dir.path().join("model.onnx");
    let out = dir.path().join("out.onnx");
    let (code, peak) = run_measured(&["rewrite", input.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(code, 0);
    let weights = (SIDE * SIDE * 4 * (MATMULS + 1)) as u64;
    // What stays resident: the binary, one window of each pass, the pieces in flight, and
    // the Gemm's int8 copy (16 MiB) for its transposed output. All the weights would be 320.
    assert!(
        peak < weights * 3 / 10,
        "peak RSS {} MiB of {} MiB of weights",
        peak >> 20,
        weights >> 20
    );
    // The output is complete and valid: int8 weights of a quarter of the size, nothing float.
    let written = std::fs::metadata(dir.path().join("out.onnx.data"))
        .unwrap()
        .len();
    assert_eq!(written, weights / 4, "one byte per weight");
}
