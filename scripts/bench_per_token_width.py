#!/usr/bin/env python3
"""What per-token activations cost in onnxruntime by layer width (issue 12: where `--activations
auto` stops choosing per-token, activation_choice::PER_TOKEN_MIN_DIM).

For each width H it builds six layers of Linear H -> 4H, Relu, Linear 4H -> H (random weights,
opset 17, input [8, 16, H]: 128 rows, as the MiniLM benchmarks), rewrites it with
`--activations per-token` and with `--activations per-tensor` (default uint8 per-channel
weights otherwise), and times float and both rewrites in onnxruntime (1 thread; every file once
per round, the median of --rounds rounds of 30 runs).

Usage: python scripts/bench_per_token_width.py ONNX_DYNQ_BINARY [WORKDIR] [--widths 128,256,384,768]
       [--rounds 3]
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import binary_and_workdir  # noqa: E402


def mlp(path, width, layers=6):
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for layer in range(layers):
        for j, (k, n) in enumerate([(width, 4 * width), (4 * width, width)]):
            w = f"w{layer}_{j}"
            inits.append(numpy_helper.from_array(
                (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), w))
            y = f"y{layer}_{j}"
            nodes.append(helper.make_node("MatMul", [x, w], [y], name=f"mm{layer}_{j}"))
            if j == 0:
                nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
                y += "_relu"
            x = y
    shape = [8, 16, width]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def session(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def timed(s, feeds, runs=30):
    s.run(None, feeds)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


def main() -> int:
    parsed = binary_and_workdir(__doc__)
    if parsed is None:
        return 2
    binary, work, opt, _ = parsed
    widths = [int(w) for w in opt("--widths", "128,256,384,768").split(",")]
    rounds = int(opt("--rounds", "3"))
    print(f"onnxruntime {ort.__version__}, 1 thread, median of {rounds} rounds of 30 runs")
    for width in widths:
        files = {"float": work / f"mlp{width}.onnx"}
        mlp(files["float"], width)
        for mode in ["per-token", "per-tensor"]:
            files[mode] = work / f"mlp{width}_{mode}.onnx"
            subprocess.run([binary, "rewrite", str(files["float"]), str(files[mode]),
                            "--activations", mode], check=True, capture_output=True)
        feeds = {"x": np.random.default_rng(1).standard_normal((8, 16, width)).astype(np.float32)}
        sessions = {k: session(p) for k, p in files.items()}
        times = {k: [] for k in files}
        for _ in range(rounds):
            for k, s in sessions.items():
                times[k].append(timed(s, feeds))
        t = {k: float(np.median(v)) for k, v in times.items()}
        print(f"width {width:4d}: float {t['float']:7.2f} ms; per-token {t['per-token']:7.2f} ms "
              f"({t['float'] / t['per-token']:.2f}x float); per-tensor {t['per-tensor']:7.2f} ms "
              f"({t['float'] / t['per-tensor']:.2f}x float)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
