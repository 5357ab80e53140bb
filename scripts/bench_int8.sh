#!/usr/bin/env bash
# Int8 latency of the built-in runtime vs onnxruntime on the tutorial-sized word LM, rewritten
# by our `rewrite` (issue 5), and fused vs unfused kernels (issue 6). Release build; pass-through
# arguments: --batches 1,10 --repeat 20 --threads 1 --variants scan,mixed,ort --rounds 1.
# The machine is noisy: compare the ratios, taken in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${ONNX_DYNQ_PYTHON:-.venv/bin/python}"
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
exec "$py" scripts/bench_int8.py "$target/release/onnx-dynq" "$@"
