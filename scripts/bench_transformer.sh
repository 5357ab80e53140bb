#!/usr/bin/env bash
# Transformer-encoder latency of the built-in runtime vs onnxruntime, float and rewritten int8,
# batch 8 x seq 16, 1 thread (issue 11). Release build; pass-through arguments:
# --model bench|minilm|PATH --batch 8 --seq 16 --repeat 20 --threads 1 --rounds 1.
# The bench model is made by `python fixtures/make_transformers.py --bench` (fixtures/large/);
# minilm needs scripts/requirements-test.txt. Compare the ratios, taken in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${ONNX_DYNQ_PYTHON:-.venv/bin/python}"
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
exec "$py" scripts/bench_transformer.py "$target/release/onnx-dynq" "$@"
