#!/usr/bin/env python3
"""Latency of com.microsoft DynamicQuantizeLSTM: our runtime vs onnxruntime on the same file.

Usage: bench_qlstm.py ONNX_DYNQ_BINARY [--batches 1,10] [--repeat 50] [--threads 1]
       [--layers 2] [--hidden 256] [--seq 35]

Builds (onnx.helper, random weights, fixed seed) a stack of one-direction LSTMs (input size =
hidden, initial states given), rewrites it with `onnx-dynq rewrite` (default `--lstm ort`:
every LSTM becomes DynamicQuantizeLSTM), then per batch size times onnxruntime (warm-up, N
runs, intra-op threads as given) and `onnx-dynq run --repeat N --json` on the same quantized
file and inputs, prints p50/p90 of both, their ratio, and the largest output difference.
Nothing is written outside a temporary folder.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build(path: Path, layers: int, hid: int, seq: int) -> None:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr, name))
        return name

    x = "x"
    s = 1.0 / np.sqrt(hid)
    hs, cs = [], []
    for layer in range(layers):
        w = init(f"W{layer}", rng.uniform(-s, s, (1, 4 * hid, hid)).astype(np.float32))
        r = init(f"R{layer}", rng.uniform(-s, s, (1, 4 * hid, hid)).astype(np.float32))
        b = init(f"B{layer}", rng.uniform(-s, s, (1, 8 * hid)).astype(np.float32))
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, w, r, b, "", f"h0_{layer}", f"c0_{layer}"],
                [f"y{layer}", f"hn{layer}", f"cn{layer}"],
                hidden_size=hid,
            )
        )
        sq = init(f"sq{layer}", np.array([1], np.int64))
        nodes.append(helper.make_node("Squeeze", [f"y{layer}", sq], [f"x{layer + 1}"]))
        x = f"x{layer + 1}"
        hs.append(f"hn{layer}")
        cs.append(f"cn{layer}")
    nodes.append(helper.make_node("Concat", hs, ["hn"], axis=0))
    nodes.append(helper.make_node("Concat", cs, ["cn"], axis=0))
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", hid])]
    for layer in range(layers):
        for n in ("h0", "c0"):
            ins.append(helper.make_tensor_value_info(f"{n}_{layer}", TensorProto.FLOAT, [1, "batch", hid]))
    outs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, "batch", hid]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [layers, "batch", hid]),
        helper.make_tensor_value_info("cn", TensorProto.FLOAT, [layers, "batch", hid]),
    ]
    graph = helper.make_graph(nodes, "lstm_bench", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> int:
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    binary = args[0]
    opt = lambda k, d: args[args.index(k) + 1] if k in args else d
    batches = [int(b) for b in opt("--batches", "1,10").split(",")]
    repeat = int(opt("--repeat", "50"))
    threads = int(opt("--threads", "1"))
    layers, hid, seq = int(opt("--layers", "2")), int(opt("--hidden", "256")), int(opt("--seq", "35"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_model, model = tmp / "lstm.onnx", tmp / "lstm.q.onnx"
        build(float_model, layers, hid, seq)
        subprocess.run([binary, "rewrite", str(float_model), str(model)], check=True, stdout=subprocess.DEVNULL)
        ops = [n.op_type for n in onnx.load(str(model)).graph.node]
        assert ops.count("DynamicQuantizeLSTM") == layers, ops
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        print(f"{layers} x DynamicQuantizeLSTM, hidden {hid}, seq {seq}, threads {threads}, {repeat} runs")
        for batch in batches:
            rng = np.random.default_rng(batch)
            feed = {"x": rng.standard_normal((seq, batch, hid)).astype(np.float32)}
            for layer in range(layers):
                for n in ("h0", "c0"):
                    feed[f"{n}_{layer}"] = (rng.standard_normal((1, batch, hid)) * 0.5).astype(np.float32)
            for k, v in feed.items():
                np.save(tmp / f"{k}.npy", v)
            ref = sess.run(None, feed)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t) * 1e3)
            times.sort()
            pct = lambda p: times[max(0, int(np.ceil(p / 100 * len(times))) - 1)]
            ort_p50, ort_p90 = pct(50), pct(90)
            cmd = [binary, "run", str(model), "--repeat", str(repeat), "--json", "--threads", str(threads),
                   "--output", str(tmp / "out.npz")]
            for k in feed:
                cmd += ["--input", f"{k}={tmp / (k + '.npy')}"]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            ours = np.load(tmp / "out.npz")
            diff = max(float(np.abs(ours[n] - r).max()) for n, r in zip(["y", "hn", "cn"], ref))
            p50, p90 = out["latency_ms"]["p50"], out["latency_ms"]["p90"]
            print(
                f"batch {batch:3d}: onnxruntime p50 {ort_p50:7.3f} ms p90 {ort_p90:7.3f} ms | "
                f"onnx-dynq p50 {p50:7.3f} ms p90 {p90:7.3f} ms | ratio {p50 / ort_p50:5.2f}x | "
                f"max |diff| {diff:.2e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
