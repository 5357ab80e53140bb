//! `kill -9` while `rewrite` writes a large model leaves either no output or the previous
//! complete one, never a partial file: the output is written to a temporary file beside it
//! (`.NAME.tmp-PID-XXXXXX`, hidden) and renamed into place. A killed run cannot remove its
//! temporary file; the next save to the same path removes it (its process is gone).

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use common::graphs::vi_sym;
use common::protos::{model_of, node};
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::onnx::{GraphProto, ModelProto, TensorProto};

/// Square MatMul weights of this side: 4 of them make a 256 MiB float model, 64 MiB int8.
const SIDE: usize = 4096;
const LAYERS: usize = 4;

fn large_model() -> ModelProto {
    // Not all zeros, so that the int8 values take real work to compute while writing.
    let floats: Vec<u8> = (0..SIDE * SIDE)
        .flat_map(|i| (((i % 251) as f32 - 125.0) * 0.01).to_le_bytes())
        .collect();
    let raw = Bytes::from(floats);
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    for l in 0..LAYERS {
        let (x, y) = (format!("h{l}"), format!("h{}", l + 1));
        let w = format!("w{l}");
        nodes.push(node(&format!("mm{l}"), "MatMul", &[&x, &w], &[&y]));
        inits.push(TensorProto {
            name: Some(w),
            dims: vec![SIDE as i64, SIDE as i64],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw.clone()),
            ..Default::default()
        });
    }
    model_of(GraphProto {
        name: Some("large".into()),
        node: nodes,
        initializer: inits,
        input: vec![vi_sym("h0", DataType::Float, &[-1, SIDE as i64])],
        output: vec![vi_sym(
            &format!("h{LAYERS}"),
            DataType::Float,
            &[-1, SIDE as i64],
        )],
        ..Default::default()
    })
}

/// The temporary files of `out` in its folder.
fn temps(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.tmp-", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn start_rewrite(input: &Path, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
        .args(["rewrite", input.to_str().unwrap(), out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts a rewrite and kills it (SIGKILL) once its temporary output holds at least
/// `at_bytes`. Returns false when the run finished first.
fn kill_during_write(input: &Path, out: &Path, at_bytes: u64) -> bool {
    let before: Vec<PathBuf> = temps(out);
    let mut child = start_rewrite(input, out);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let grown = temps(out)
            .into_iter()
            .filter(|t| !before.contains(t))
            .any(|t| std::fs::metadata(t).is_ok_and(|m| m.len() >= at_bytes));
        if grown {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "the rewrite never wrote its output"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn kill_9_leaves_no_output_or_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("large.onnx");
    std::fs::write(&input, large_model().encode_to_vec()).unwrap();
    let out = dir.path().join("large.int8.onnx");
    let int8_bytes = (LAYERS * SIDE * SIDE) as u64;

    // No previous output: a killed run leaves none.
    assert!(
        kill_during_write(&input, &out, 1),
        "the rewrite finished before it could be killed"
    );
    assert!(!out.exists(), "a killed run left {}", out.display());
    let left = temps(&out);
    assert_eq!(left.len(), 1, "{left:?}");

    // A complete run removes the killed run's temporary file and leaves none of its own.
    common::rewrite(&input, &out, &[]);
    let reference = std::fs::read(&out).unwrap();
    assert!(reference.len() as u64 > int8_bytes);
    assert_eq!(temps(&out), Vec::<PathBuf>::new());

    // Killed at several points of the write: the previous output stays, byte for byte.
    let mut killed = 0;
    for at in [1, int8_bytes / 8, int8_bytes / 2, int8_bytes * 7 / 8] {
        if kill_during_write(&input, &out, at) {
            killed += 1;
        }
        assert!(
            std::fs::read(&out).unwrap() == reference,
            "after a kill at {at} bytes, {} is not the previous output",
            out.display()
        );
        // Only hidden temporaries remain beside it, never a file a glob for models matches.
        for t in temps(&out) {
            assert!(t.file_name().unwrap().to_string_lossy().starts_with('.'));
        }
    }
    assert!(
        killed >= 3,
        "only {killed} of 4 runs were killed while writing"
    );
    // The next run cleans up after all of them.
    common::rewrite(&input, &out, &[]);
    assert_eq!(std::fs::read(&out).unwrap(), reference);
    assert_eq!(temps(&out), Vec::<PathBuf>::new());
}
