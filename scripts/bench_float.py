#!/usr/bin/env python3
"""Float latency of the built-in runtime vs onnxruntime on the tutorial-sized word LM.

Usage (from anywhere; run it with a python that has onnxruntime, e.g. .venv/bin/python):

    .venv/bin/python scripts/bench_float.py [--model PATH] [--runs 20] [--batches 1,10]

The model defaults to fixtures/large/bench_lm.onnx (gitignored). When it is missing it is
generated with `fixtures/make_fixtures.py --bench-lm`, which needs torch: the python for that
is $BENCH_TORCH_PYTHON, default /work/venv-torch/bin/python.

Both engines run on one thread, seq 35, the same shapes, after one warm-up run; latency is
p50/p90 (nearest rank) over --runs timed runs. Ours: `onnx-dynq run --repeat N --json` from a
release build (`cargo build --release`, honouring $CARGO_TARGET_DIR). Token ids are uniform in
the vocabulary for both (ours via --int-range). Prints a markdown table and the ratio ours/ort.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEQ = 35


def percentile(sorted_ms, p):
    # Nearest rank, as `onnx-dynq run --repeat` does.
    rank = max(1, int(np.ceil(p / 100.0 * len(sorted_ms))))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def ensure_model(path):
    if path.exists():
        return
    py = os.environ.get("BENCH_TORCH_PYTHON", "/work/venv-torch/bin/python")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} with {py} ...", file=sys.stderr)
    subprocess.run([py, str(REPO / "fixtures/make_fixtures.py"), "--bench-lm", str(path)],
                   check=True)


def build_ours():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    exe = target / "release" / "onnx-dynq"
    if not exe.exists():
        sys.exit(f"no binary at {exe}")
    return exe


def model_info(path):
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    # The vocabulary is the first dim of the embedding table, the initializer Gather reads.
    vocab = None
    gathers = [n for n in m.graph.node if n.op_type == "Gather"]
    inits = {i.name: i for i in m.graph.initializer}
    for g in gathers:
        if g.input[0] in inits:
            vocab = inits[g.input[0]].dims[0]
    if vocab is None:
        sys.exit("cannot find the embedding table (a Gather over an initializer)")
    return vocab


def bench_ours(exe, model, batch, runs, vocab):
    out = subprocess.run(
        [str(exe), "run", str(model), "--random-inputs", "--seed", "1",
         "--dim", f"batch={batch}", "--int-range", str(vocab), "--threads", "1",
         "--repeat", str(runs), "--json"],
        check=True, capture_output=True, text=True)
    lat = json.loads(out.stdout)["latency_ms"]
    return lat["p50"], lat["p90"]


def bench_ort(model, batch, runs, vocab):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {}
    for i in s.get_inputs():
        shape = [batch if isinstance(d, str) or d is None else d for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, vocab, size=shape, dtype=np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    s.run(None, feeds)  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return percentile(times, 50), percentile(times, 90), ort.__version__


def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "fixtures/large/bench_lm.onnx")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--batches", default="1,10")
    args = ap.parse_args()

    ensure_model(args.model)
    exe = build_ours()
    vocab = model_info(args.model)
    rows = []
    ort_version = "?"
    for b in [int(x) for x in args.batches.split(",")]:
        o50, o90 = bench_ours(exe, args.model, b, args.runs, vocab)
        r50, r90, ort_version = bench_ort(args.model, b, args.runs, vocab)
        rows.append((b, o50, o90, r50, r90))

    print(f"model {args.model.name}, seq {SEQ}, 1 thread, {args.runs} runs after 1 warm-up; "
          f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; "
          f"load average {os.getloadavg()[0]:.2f}; onnxruntime {ort_version}")
    print()
    print("| batch | ours p50 ms | ours p90 ms | ort p50 ms | ort p90 ms | ours/ort (p50) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b, o50, o90, r50, r90 in rows:
        print(f"| {b} | {o50:.2f} | {o90:.2f} | {r50:.2f} | {r90:.2f} | {o50 / r50:.2f}x |")


if __name__ == "__main__":
    main()
