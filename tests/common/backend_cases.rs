//! The ONNX backend node test cases (exported by `scripts/export_conformance.py`), shared by
//! tests/conformance.rs and tests/fuse_conformance.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_dynq::ir::Tensor;
use onnx_dynq::onnx::TensorProto;
use onnx_dynq::runtime::Value;
use prost::Message;

use super::{python, repo};

/// The exported cases in `ONNX_DYNQ_CONFORMANCE_DIR` (default `<repo>/target/conformance`),
/// exported first when missing or incomplete.
pub fn cases_dir() -> PathBuf {
    let dir = std::env::var("ONNX_DYNQ_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/conformance"));
    if !dir.join(".complete").exists() {
        let py = python();
        let out = Command::new(&py)
            .arg(repo().join("scripts/export_conformance.py"))
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} to export the conformance cases: {e}",
                    py.display()
                )
            });
        assert!(
            out.status.success() && dir.join(".complete").exists(),
            "exporting the conformance cases with {} failed (needs the onnx package; set ONNX_DYNQ_PYTHON):\n{}",
            py.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// One `input_*.pb` / `output_*.pb` TensorProto file as a runtime value.
pub fn read_value(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let proto =
        TensorProto::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = Tensor::new(proto).map_err(|e| e.to_string())?;
    Value::from_tensor(&t).map_err(|e| e.to_string())
}
