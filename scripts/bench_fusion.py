#!/usr/bin/env python3
"""Fused Linear epilogue vs the unfused graph, in the built-in runtime.

Usage: bench_fusion.py ONNX_DYNQ_BINARY [--repeat 50] [--threads 1]

Builds (random weights, fixed seed, in a temporary folder) two MLPs of three Linear layers
with ReLU between them, as PyTorch exports them: `Gemm(transB=1) + Relu` and
`MatMul + Add + Relu`; and the decoder of a word LM alone (`MatMul [35*batch, 256] x
[256, 33278] + Add`). Times `onnx-dynq run --repeat N` with and without
`--no-kernel-fusion` (alternating, best p50 of 3 rounds each), prints both and the ratio, and
checks that both give the same outputs within 1e-5.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cli  # noqa: E402


def mlp(path: Path, form: str, batch: int, width: int, layers: int = 3) -> dict:
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.uniform(-1, 1, (width, width)) / np.sqrt(width)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, (width,)).astype(np.float32)
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        if form == "gemm":
            inits.append(numpy_helper.from_array(w.T.copy(), f"w{i}"))
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]))
        last = i == layers - 1
        nodes.append(helper.make_node("Relu", [f"z{i}"], ["y" if last else f"h{i}"]))
        x = f"h{i}"
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return {"x": rng.standard_normal((batch, width)).astype(np.float32)}


def decoder(path: Path, rows: int) -> dict:
    rng = np.random.default_rng(1)
    w = rng.uniform(-1 / 16, 1 / 16, (256, 33278)).astype(np.float32)
    b = rng.uniform(-1 / 16, 1 / 16, (33278,)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])],
        "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 33278])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {"x": rng.standard_normal((rows, 256)).astype(np.float32)}


def timed(binary, model, feed_args, repeat, threads, fused, out):
    cmd = [binary, "run", str(model), "--repeat", str(repeat), "--json", "--threads", str(threads),
           "--output", str(out)] + feed_args
    if not fused:
        cmd.append("--no-kernel-fusion")
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return r["latency_ms"]["p50"]


def main() -> int:
    parsed = cli(__doc__, repeat="50")
    if parsed is None:
        return 2
    binary, _opt, _batches, repeat, threads = parsed
    cases = [
        ("MLP Gemm+Relu 3x1024, batch 64", lambda p: mlp(p, "gemm", 64, 1024)),
        ("MLP MatMul+Add+Relu 3x1024, batch 64", lambda p: mlp(p, "matmul", 64, 1024)),
        ("MLP Gemm+Relu 3x256, batch 1", lambda p: mlp(p, "gemm", 1, 256)),
        ("decoder MatMul+Add 35x256x33278", lambda p: decoder(p, 35)),
        ("decoder MatMul+Add 350x256x33278", lambda p: decoder(p, 350)),
    ]
    print(f"threads {threads}, {repeat} runs, p50 (best of 3 alternating rounds)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, make in cases:
            model = tmp / "m.onnx"
            feed = make(model)
            feed_args = []
            for k, v in feed.items():
                np.save(tmp / f"{k}.npy", v)
                feed_args += ["--input", f"{k}={tmp / (k + '.npy')}"]
            best = {True: float("inf"), False: float("inf")}
            for _ in range(3):
                for fused in (True, False):
                    out = tmp / f"out_{fused}.npz"
                    best[fused] = min(best[fused], timed(binary, model, feed_args, repeat, threads, fused, out))
            a, b = np.load(tmp / "out_True.npz"), np.load(tmp / "out_False.npz")
            diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
            assert diff <= 1e-5, f"{name}: fused and unfused differ by {diff}"
            print(f"{name:40s} fused {best[True]:8.3f} ms | unfused {best[False]:8.3f} ms | "
                  f"unfused/fused {best[False] / best[True]:5.2f}x | max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
