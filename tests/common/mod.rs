//! Helpers shared by the integration tests: the repository's fixtures, the CLI binary, and a
//! Python with onnx and onnxruntime for cross-checks.
//!
//! Python is found through `ONNX_DYNQ_PYTHON`, then `<repo>/.venv/bin/python`, then `python3`.
//! A test that needs it fails with a clear message when it is missing: `.ci/run` installs it.

#![allow(dead_code)]

pub mod fixture_io;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// Every committed fixture model, sorted.
pub fn fixture_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("fixtures"))
        .expect("fixtures folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures found");
    v
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ONNX_DYNQ_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Runs a Python snippet with `args` (as `sys.argv[1:]`) and returns its stdout. Panics with
/// the script's stderr when it fails, or when Python or its packages are missing.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let py = python();
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python ({}): {e}; set ONNX_DYNQ_PYTHON to a python with onnx, onnxruntime and numpy (.ci/run makes one)",
                py.display()
            )
        });
    if !out.status.success() {
        panic!(
            "python check failed ({}):\n{}\n{}",
            py.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnx-dynq"))
        .args(args)
        .output()
        .expect("run onnx-dynq")
}
