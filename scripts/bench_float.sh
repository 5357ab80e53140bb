#!/usr/bin/env bash
# Float latency of the built-in runtime vs onnxruntime on a tutorial-sized word LM (113.9 MB,
# built with random weights in a temporary folder). Release build; pass-through arguments:
# --batches 1,10 --repeat 20 --threads 1. The machine is noisy: compare the ratio, taken in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${ONNX_DYNQ_PYTHON:-.venv/bin/python}"
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
exec "$py" scripts/bench_float.py "$target/release/onnx-dynq" "$@"
